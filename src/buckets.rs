//! The per-customer stages of a night that reads every file (sessions and the customers'
//! history), a bucket of customers at a time. Every session and every history row is one
//! customer's (see `sessions::sessionize`, `history::History`), so the buckets' results,
//! put together and sorted, are what one pass over all the events gives (tested); each
//! bucket's events are written to the night's kept events file as soon as they have their
//! sessions, so that after this stage no copy of the events stays in memory.

use std::path::Path;

use polars::prelude::*;

use crate::config::Job;
use crate::error::{Context, Result};
use crate::history::History;
use crate::schema::event as ev;

/// About this many events make a bucket: each holds a few hundred megabytes while it is
/// sessionised, instead of the night's gigabytes.
pub const EVENTS_PER_BUCKET: usize = 1 << 20;

const BUCKET: &str = "_bucket";
const ROW: &str = "_bucket_row";
/// Rows per row group of the kept events file (polars' default for a whole frame).
const ROW_GROUP: usize = 512 * 512;

/// What the per-customer stages made of a night's events.
pub struct Bucketed {
    /// Sorted by customer, start and session, as `sessions::sessionize` sorts them.
    pub sessions: DataFrame,
    pub history: History,
    pub events: usize,
    /// Of the time taken, what building the history took (the rest: sessions, and writing
    /// the events).
    pub history_took: std::time::Duration,
}

/// The number of buckets for `events` events.
pub fn buckets_for(events: usize) -> usize {
    events.div_ceil(EVENTS_PER_BUCKET).max(1)
}

/// A customer's bucket of `count`: the high half of its place on the ring, so that buckets
/// cut a shard's customers (the ring modulo the shard count) evenly.
fn bucket_of(id: &str, count: usize) -> u32 {
    ((crate::util::customer_hash(id) >> 32) % count as u64) as u32
}

/// Sessions and history of `events`, `count` buckets of customers at a time; the events,
/// with their `session_id`, are written bucket after bucket to `kept` (Parquet without
/// compression or statistics, as the state's stage frames are).
pub fn sessions_and_history(
    events: DataFrame,
    count: usize,
    job: &Job,
    kept: &Path,
) -> Result<Bucketed> {
    let total = events.height();
    let (events, bounds) = into_buckets(events, count)?;
    let mut writer: Option<polars::io::parquet::write::BatchedWriter<std::fs::File>> = None;
    let mut sessions = Vec::new();
    let mut histories = Vec::new();
    let mut history_took = std::time::Duration::ZERO;
    for (offset, len) in bounds {
        let (part, part_sessions) = crate::sessions::sessionize(
            events.slice(offset as i64, len),
            job.session_inactivity_minutes,
            None,
        )?;
        let started = std::time::Instant::now();
        histories.push(History::build(&part, &job.features, &job.model.label)?);
        history_took += started.elapsed();
        sessions.push(part_sessions);
        let writer = match &mut writer {
            Some(w) => w,
            None => writer.insert(
                ParquetWriter::new(
                    std::fs::File::create(kept).ctx(format!("creating {}", kept.display()))?,
                )
                .with_compression(ParquetCompression::Uncompressed)
                .with_statistics(StatisticsOptions::empty())
                .batched(part.schema())
                .ctx(format!("writing {}", kept.display()))?,
            ),
        };
        for start in (0..len).step_by(ROW_GROUP) {
            let mut group = part.slice(start as i64, ROW_GROUP);
            group.rechunk_mut_par();
            writer
                .write_batch(&group)
                .ctx(format!("writing {}", kept.display()))?;
        }
    }
    drop(events);
    writer
        .expect("a night has at least one bucket")
        .finish()
        .ctx(format!("writing {}", kept.display()))?;
    let sessions = concat(
        sessions.into_iter().map(|s| s.lazy()).collect::<Vec<_>>(),
        UnionArgs::default(),
    )
    .ctx("the sessions of every bucket")?
    .sort(
        [ev::CUSTOMER_ID, crate::sessions::START, ev::SESSION_ID],
        Default::default(),
    )
    .collect()
    .ctx("the sessions of every bucket")?;
    let started = std::time::Instant::now();
    let history = History::append(histories)?;
    history_took += started.elapsed();
    Ok(Bucketed {
        sessions,
        history,
        events: total,
        history_took,
    })
}

/// `events` sorted by bucket (in their order within one), without a second copy, and each
/// non-empty bucket's (offset, length). With no events, one empty bucket.
fn into_buckets(events: DataFrame, count: usize) -> Result<(DataFrame, Vec<(usize, usize)>)> {
    if count == 1 || events.height() == 0 {
        let height = events.height();
        return Ok((events, vec![(0, height)]));
    }
    let ids = events
        .column(ev::CUSTOMER_ID)
        .ctx("customer ids")?
        .as_materialized_series()
        .unique()
        .ctx("customer ids")?;
    let buckets: Vec<u32> = ids
        .str()
        .ctx("customer ids")?
        .iter()
        .map(|id| id.map_or(0, |id| bucket_of(id, count)))
        .collect();
    let map = DataFrame::new(
        ids.len(),
        vec![ids.into_column(), Column::new(BUCKET.into(), buckets)],
    )
    .ctx("customer buckets")?;
    let keys = events
        .select([ev::CUSTOMER_ID])
        .ctx("customer ids")?
        .lazy()
        .with_row_index(ROW, None)
        .join(
            map.lazy(),
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            crate::util::left_join_ordered(),
        )
        .sort([BUCKET, ROW], Default::default())
        .select([col(BUCKET), col(ROW)])
        .collect()
        .ctx("customer buckets")?;
    let order = keys
        .column(ROW)
        .ctx("bucket order")?
        .idx()
        .ctx("bucket order")?;
    let mut bounds = Vec::new();
    let mut start = 0;
    let sorted_buckets = keys
        .column(BUCKET)
        .ctx("buckets")?
        .u32()
        .ctx("buckets")?
        .rechunk();
    let values = sorted_buckets.cont_slice().ctx("buckets")?;
    for i in 1..=values.len() {
        if i == values.len() || values[i] != values[i - 1] {
            bounds.push((start, i - start));
            start = i;
        }
    }
    Ok((crate::util::take_by_columns(events, order)?, bounds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InputDef, Layout};
    use crate::generate::{GenerateOptions, generate};

    /// The demo's events of a few hundred customers, with their customer ids.
    fn resolved_events(dir: &Path, job: &Job) -> DataFrame {
        let out = dir.join("events");
        generate(&GenerateOptions {
            customers: 300,
            days: 40,
            seed: 11,
            start: chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            out: out.clone(),
        })
        .unwrap();
        let inputs = [InputDef {
            url: out.display().to_string(),
            layout: Layout::LakeLoader,
        }];
        let ingested = crate::ingest::ingest(&inputs, None, &job.quality).unwrap();
        crate::identity::resolve(
            &ingested.events,
            None,
            &job.identity_limits,
            &crate::identity::Suppression::default(),
        )
        .unwrap()
        .events
    }

    #[test]
    fn buckets_give_what_one_pass_over_all_the_events_gives() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job::load(None).unwrap();
        let events = resolved_events(dir.path(), &job);
        let run = |count: usize| {
            let kept = dir.path().join(format!("kept-{count}.parquet"));
            let b = sessions_and_history(events.clone(), count, &job, &kept).unwrap();
            // The kept events, in an order that does not depend on the buckets.
            let kept = crate::util::read_parquet(&kept)
                .unwrap()
                .sort([ev::EVENT_ID], Default::default())
                .unwrap();
            (b, kept)
        };
        let (one, kept_one) = run(1);
        assert_eq!(into_buckets(events.clone(), 4).unwrap().1.len(), 4);
        let (four, kept_four) = run(4);
        assert!(one.sessions.height() > 100 && one.events == events.height());
        assert!(
            one.sessions.equals_missing(&four.sessions),
            "sessions differ:\n{}\n{}",
            one.sessions,
            four.sessions
        );
        assert_eq!(
            one.history.fingerprint().unwrap(),
            four.history.fingerprint().unwrap()
        );
        assert_eq!(kept_one.height(), events.height());
        assert!(kept_one.equals_missing(&kept_four));
        assert!(kept_one.column(ev::SESSION_ID).unwrap().null_count() == 0);
    }

    #[test]
    fn buckets_grow_with_the_events() {
        assert_eq!(buckets_for(0), 1);
        assert_eq!(buckets_for(1), 1);
        assert_eq!(buckets_for(EVENTS_PER_BUCKET), 1);
        assert_eq!(buckets_for(EVENTS_PER_BUCKET + 1), 2);
    }

    #[test]
    fn buckets_cut_a_shard_evenly() {
        // The customers of shard 0 of 2 (even places on the ring) fall into all 4 buckets.
        let mut seen = [0usize; 4];
        for i in 0..4000 {
            let id = format!("c{i}");
            if crate::util::customer_hash(&id).is_multiple_of(2) {
                seen[bucket_of(&id, 4) as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n > 400), "{seen:?}");
    }
}
