//! The per-customer stages of a night that reads every file (sessions and the customers'
//! history), a bucket of customers at a time. Every session and every history row is one
//! customer's (see `sessions::sessionize`, `history::History`), so the buckets' results,
//! put together and sorted, are what one pass over all the events gives (tested).
//!
//! Each bucket is sessionised in turn and handed to a writer thread that appends it to the
//! night's kept events file while the next bucket is worked on. With more than one bucket,
//! the buckets are gathered from the night's events; when those take more memory than
//! `[sessions] write_buckets_above_mib`, each bucket is first written to a scratch file of its
//! own and the night's events are let go, so this stage holds one bucket's events (and the one
//! being written), not the night's. Writing them aside costs time (at 10M events about 15 s
//! on the benchmark machine, where holding them costs 1.6 GB more at the peak), so it is done
//! only under that memory pressure. When ingest wrote a night's rows aside, each of its
//! buckets' events is appended to the files of their customers' buckets
//! (`append_by_customer`, `BucketFiles`) and the night's events are never held
//! (`sessions_and_history_written`).

use std::path::Path;

use polars::prelude::*;

use crate::config::Job;
use crate::error::{Context, Result};
use crate::history::History;
use crate::schema::event as ev;

/// The prefix of scratch directories (buckets written aside, the kept events being written):
/// a run clears what a crashed run left under this prefix in the state location.
pub const SCRATCH_PREFIX: &str = ".events-writing-";

/// About this many events make a bucket by default (`[sessions] events_per_bucket`): each
/// holds a few hundred megabytes while it is sessionised, instead of the night's gigabytes.
pub const EVENTS_PER_BUCKET: usize = 1 << 20;

const BUCKET: &str = "_bucket";
/// Rows per row group of the kept events file (polars' default for a whole frame).
const ROW_GROUP: usize = 512 * 512;

/// What the per-customer stages made of a night's events.
pub struct Bucketed {
    /// Sorted by customer, start and session, as `sessions::sessionize` sorts them.
    pub sessions: DataFrame,
    pub history: History,
    pub events: usize,
    /// Of the time taken, what building the history took (the rest: sessions).
    pub history_took: std::time::Duration,
    /// The events with their `session_id`, still being written.
    pub kept: KeptFile,
}

/// The events a night keeps, written bucket after bucket on a thread of their own while the
/// next bucket is sessionised and, after the last, while the later stages run: into a
/// scratch directory, removed with this (the night's state links the file).
pub struct KeptFile {
    dir: tempfile::TempDir,
    writer: std::sync::Mutex<Writer>,
}

enum Writer {
    Running(std::thread::JoinHandle<Result<()>>),
    Written,
    Failed(String),
}

/// The kept events file in a `KeptFile`'s directory.
const KEPT_FILE: &str = "events.parquet";

impl KeptFile {
    /// Starts the writer thread, which writes every frame `sessions_and_history` sends it
    /// (Parquet without compression or statistics, as the state's stage frames are).
    fn start(dir: tempfile::TempDir) -> (KeptFile, std::sync::mpsc::SyncSender<DataFrame>) {
        // No frame waits: the writer holds the bucket it writes, the caller the next one.
        let (send, frames) = std::sync::mpsc::sync_channel::<DataFrame>(0);
        let path = dir.path().join(KEPT_FILE);
        let handle = std::thread::spawn(move || -> Result<()> {
            let mut writer: Option<polars::io::parquet::write::BatchedWriter<std::fs::File>> = None;
            for part in frames {
                let writer = match &mut writer {
                    Some(w) => w,
                    None => writer.insert(
                        ParquetWriter::new(
                            std::fs::File::create(&path)
                                .ctx(format!("creating {}", path.display()))?,
                        )
                        .with_compression(ParquetCompression::Uncompressed)
                        .with_statistics(StatisticsOptions::empty())
                        .batched(part.schema())
                        .ctx(format!("writing {}", path.display()))?,
                    ),
                };
                for start in (0..part.height()).step_by(ROW_GROUP) {
                    let mut group = part.slice(start as i64, ROW_GROUP);
                    group.rechunk_mut_par();
                    writer
                        .write_batch(&group)
                        .ctx(format!("writing {}", path.display()))?;
                }
            }
            writer
                .expect("a night has at least one bucket")
                .finish()
                .ctx(format!("writing {}", path.display()))?;
            Ok(())
        });
        let kept = KeptFile {
            dir,
            writer: std::sync::Mutex::new(Writer::Running(handle)),
        };
        (kept, send)
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file, once every frame is written.
    pub fn wait(&self) -> Result<std::path::PathBuf> {
        let failed = |message: String| crate::error::Error::Io {
            context: "writing the kept events".into(),
            source: std::io::Error::other(message),
        };
        let mut writer = self
            .writer
            .lock()
            .expect("the writer's state is never poisoned");
        if let Writer::Running(_) = *writer {
            let Writer::Running(handle) = std::mem::replace(&mut *writer, Writer::Written) else {
                unreachable!("matched above")
            };
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    *writer = Writer::Failed(e.to_string());
                    return Err(e);
                }
                Err(_) => *writer = Writer::Failed("the writer thread panicked".into()),
            }
        }
        match &*writer {
            Writer::Failed(message) => Err(failed(message.clone())),
            _ => Ok(self.dir.path().join(KEPT_FILE)),
        }
    }
}

impl Drop for KeptFile {
    /// The writer ends once its frames are written (their sender is gone by now); the
    /// directory goes after it.
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

/// The number of buckets for `events` events, `per_bucket` to a bucket.
pub fn buckets_for(events: usize, per_bucket: usize) -> usize {
    events.div_ceil(per_bucket.max(1)).max(1)
}

/// A customer's bucket of `count`: the high half of its place on the ring, so that buckets
/// cut a shard's customers (the ring modulo the shard count) evenly.
fn bucket_of(id: &str, count: usize) -> u32 {
    ((crate::util::customer_hash(id) >> 32) % count as u64) as u32
}

/// The variable with which polars (and so `write_buckets_above`) is told the memory the
/// process may use, in bytes.
const MEMORY_OVERRIDE: &str = "POLARS_OVERRIDE_TOTAL_MEMORY";

/// Checks `MEMORY_OVERRIDE` before a run starts: polars stops the process (a panic) on a
/// value that is not a number of bytes, when it first reads it, midway through a run.
pub fn check_memory_override() -> Result<()> {
    match std::env::var(MEMORY_OVERRIDE) {
        Ok(value) if value.parse::<u64>().is_err() => Err(crate::error::ConfigError::one(
            MEMORY_OVERRIDE,
            format!(
                "expected the memory the run may use as a whole number of bytes (e.g. 3221225472 for 3 GiB), found {value:?}"
            ),
        )
        .into()),
        _ => Ok(()),
    }
}

/// The in-memory size (bytes) of a night's events above which `sessions_and_history` writes
/// its buckets aside: `[sessions] write_buckets_above_mib`, else a quarter of the memory this
/// process may use (the machine's, or its cgroup's limit, as polars reads it).
pub fn write_buckets_above(job: &Job) -> u64 {
    match job.write_buckets_above_mib {
        Some(mib) => mib.saturating_mul(1 << 20),
        None => polars_utils::sys::total_memory() / 4,
    }
}

/// Sessions and history of `events`, `count` buckets of customers at a time; the events,
/// with their `session_id`, are written bucket after bucket into `scratch` (`KeptFile`).
/// Events taking more than `write_buckets_above(job)` bytes are written aside by bucket
/// first.
pub fn sessions_and_history(
    events: DataFrame,
    count: usize,
    job: &Job,
    scratch: tempfile::TempDir,
) -> Result<Bucketed> {
    let total = events.height();
    let size = events.estimated_size() as u64;
    let write_above = write_buckets_above(job);
    let parts = if count == 1 {
        Parts::Held(Some(events))
    } else if size <= write_above {
        tracing::info!(
            mib = size >> 20,
            at_most_mib = write_above >> 20,
            "buckets taken from the events in memory"
        );
        Parts::Gathered(Gathered::new(events, count)?)
    } else {
        // Each bucket is written to the scratch directory, and the night's events let go,
        // before the first is sessionised; then they are read back one at a time.
        tracing::info!(
            mib = size >> 20,
            at_most_mib = write_above >> 20,
            "buckets written aside: the events take more memory than the stage may hold"
        );
        let started = std::time::Instant::now();
        let spilled = spill(Gathered::new(events, count)?, scratch.path())?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "events written by bucket"
        );
        Parts::Spilled(spilled)
    };
    each_bucket(parts, count, total, job, scratch)
}

/// `sessions_and_history` of events already written by bucket of customers
/// (`append_by_customer`), `events` of them.
pub fn sessions_and_history_written(
    spilled: Spilled,
    events: usize,
    job: &Job,
    scratch: tempfile::TempDir,
) -> Result<Bucketed> {
    let count = spilled.buckets();
    each_bucket(Parts::Spilled(spilled), count, events, job, scratch)
}

/// Appends each row of `events` to the file of its customer's bucket.
pub fn append_by_customer(files: &mut BucketFiles, events: &DataFrame) -> Result<()> {
    let count = files.buckets();
    let ids = events
        .column(ev::CUSTOMER_ID)
        .ctx("customer ids")?
        .str()
        .ctx("customer ids")?;
    // Identity gives every event a customer; were one without, it would go to bucket 0.
    let buckets = ids
        .iter()
        .map(|id| id.map_or(0, |id| bucket_of(id, count) as usize));
    files.append(events, buckets)
}

/// Sessions and history of each of the `count` buckets of `parts` (`total` events) in turn.
fn each_bucket(
    mut parts: Parts,
    count: usize,
    total: usize,
    job: &Job,
    scratch: tempfile::TempDir,
) -> Result<Bucketed> {
    // `send` is declared after `kept`, so it is dropped first on every way out: dropping `kept`
    // waits for the writer, which ends only once `send` is gone.
    let (kept, send) = KeptFile::start(scratch);
    let mut sessions = Vec::new();
    let mut histories = Vec::new();
    let mut history_took = std::time::Duration::ZERO;
    for bucket in 0..count {
        let started = std::time::Instant::now();
        let Some(part) = parts.take(bucket)? else {
            continue;
        };
        let (part, part_sessions) =
            crate::sessions::sessionize(part, job.session_inactivity_minutes, None)?;
        let sessionised = started.elapsed();
        let started = std::time::Instant::now();
        histories.push(History::build(&part, &job.features, &job.model.label)?);
        history_took += started.elapsed();
        tracing::debug!(
            bucket,
            events = part.height(),
            sessions_ms = sessionised.as_millis() as u64,
            history_ms = started.elapsed().as_millis() as u64,
            "bucket done"
        );
        sessions.push(part_sessions);
        if send.send(part).is_err() {
            // The writer stops early only on an error, which says why.
            kept.wait()?;
            return Err(crate::error::Error::Io {
                context: "writing the kept events".into(),
                source: std::io::Error::other("the writer stopped"),
            });
        }
    }
    drop(send);
    drop(parts);
    // One bucket's results are sorted already.
    let sessions = if sessions.len() == 1 {
        sessions.remove(0)
    } else {
        concat(
            sessions.into_iter().map(|s| s.lazy()).collect::<Vec<_>>(),
            UnionArgs::default(),
        )
        .ctx("the sessions of every bucket")?
        .sort(
            [ev::CUSTOMER_ID, crate::sessions::START, ev::SESSION_ID],
            Default::default(),
        )
        .collect()
        .ctx("the sessions of every bucket")?
    };
    let started = std::time::Instant::now();
    let history = if histories.len() == 1 {
        histories.remove(0)
    } else {
        History::append(histories)?
    };
    history_took += started.elapsed();
    Ok(Bucketed {
        sessions,
        history,
        events: total,
        history_took,
        kept,
    })
}

/// A night's events by bucket: held (the one bucket), gathered bucket by bucket from the
/// events held, or written one file a bucket.
enum Parts {
    Held(Option<DataFrame>),
    Gathered(Gathered),
    Spilled(Spilled),
}

/// The night's events and each bucket's rows (`None`: a bucket without events).
struct Gathered {
    events: DataFrame,
    rows: Vec<Option<IdxCa>>,
}

impl Gathered {
    fn new(events: DataFrame, count: usize) -> Result<Gathered> {
        let rows = bucket_rows(&events, count)?;
        Ok(Gathered { events, rows })
    }

    /// Bucket `bucket`'s events, gathered once (`None`: it has none).
    fn take(&mut self, bucket: usize) -> Result<Option<DataFrame>> {
        self.rows[bucket]
            .take()
            .map(|rows| crate::util::take_by_columns(self.events.clone(), &rows))
            .transpose()
    }
}

/// Rows written by bucket, one file a bucket (`None`: a bucket without rows), in a directory
/// removed with this.
pub struct Spilled {
    _dir: tempfile::TempDir,
    files: Vec<Option<std::path::PathBuf>>,
}

impl Spilled {
    pub fn buckets(&self) -> usize {
        self.files.len()
    }

    /// Bucket `bucket`'s file (`None`: it has none).
    pub fn file(&self, bucket: usize) -> Option<&Path> {
        self.files[bucket].as_deref()
    }

    /// Bucket `bucket`'s rows (`None`: it has none).
    pub fn read(&self, bucket: usize) -> Result<Option<DataFrame>> {
        self.files[bucket]
            .as_ref()
            .map(|file| crate::util::categorical(crate::util::read_parquet(file)?))
            .transpose()
    }

    /// Bucket `bucket`'s rows, once: its file is removed (`None`: it has none), so that the
    /// disk holds no more than the buckets still to come.
    pub fn take(&mut self, bucket: usize) -> Result<Option<DataFrame>> {
        let part = self.read(bucket)?;
        if let Some(file) = self.files[bucket].take() {
            std::fs::remove_file(&file).ctx(format!("removing {}", file.display()))?;
        }
        Ok(part)
    }
}

/// Rows written by bucket as they come: each bucket's rows are appended to a file of its own
/// (Parquet, LZ4 without statistics, opened with its first rows) in a scratch directory, then
/// read back a bucket at a time (`Spilled`). LZ4, because a night too large to hold is also
/// large on disk: 100M events took 18 GB uncompressed before ingest had read them all.
pub struct BucketFiles {
    dir: tempfile::TempDir,
    writers: Vec<Option<polars::io::parquet::write::BatchedWriter<std::fs::File>>>,
}

/// The file of bucket `bucket` in `dir`.
fn bucket_file(dir: &Path, bucket: usize) -> std::path::PathBuf {
    dir.join(format!("{bucket}.parquet"))
}

impl BucketFiles {
    /// `count` buckets in a new directory under `within` (the system's temporary directory
    /// without one).
    pub fn create(within: Option<&Path>, count: usize) -> Result<BucketFiles> {
        let mut builder = tempfile::Builder::new();
        builder.prefix(SCRATCH_PREFIX);
        let within = within.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = builder.tempdir_in(&within).ctx(format!(
            "creating a scratch directory in {}",
            within.display()
        ))?;
        Ok(BucketFiles {
            dir,
            writers: (0..count).map(|_| None).collect(),
        })
    }

    pub fn buckets(&self) -> usize {
        self.writers.len()
    }

    /// Appends each row of `rows` to its bucket, `buckets` giving each row's, in order.
    pub fn append(&mut self, rows: &DataFrame, buckets: impl Iterator<Item = usize>) -> Result<()> {
        let mut of_bucket: Vec<Vec<IdxSize>> = vec![Vec::new(); self.writers.len()];
        for (row, bucket) in buckets.enumerate() {
            of_bucket[bucket].push(row as IdxSize);
        }
        for (bucket, idx) in of_bucket.into_iter().enumerate() {
            if !idx.is_empty() {
                let idx = IdxCa::from_vec("rows".into(), idx);
                self.append_to(bucket, crate::util::take_by_columns(rows.clone(), &idx)?)?;
            }
        }
        Ok(())
    }

    /// Appends every row of `part` to bucket `bucket` (a bucket given no row has no file,
    /// unless given an empty frame).
    pub fn append_to(&mut self, bucket: usize, mut part: DataFrame) -> Result<()> {
        let file = bucket_file(self.dir.path(), bucket);
        let writer = match &mut self.writers[bucket] {
            Some(w) => w,
            slot => slot.insert(
                ParquetWriter::new(
                    std::fs::File::create(&file).ctx(format!("creating {}", file.display()))?,
                )
                .with_compression(ParquetCompression::Lz4Raw)
                .with_statistics(StatisticsOptions::empty())
                .batched(part.schema())
                .ctx(format!("writing {}", file.display()))?,
            ),
        };
        if part.height() == 0 {
            return Ok(());
        }
        part.rechunk_mut_par();
        writer
            .write_batch(&part)
            .ctx(format!("writing {}", file.display()))
    }

    pub fn finish(self) -> Result<Spilled> {
        let mut files = Vec::with_capacity(self.writers.len());
        for (bucket, writer) in self.writers.into_iter().enumerate() {
            files.push(match writer {
                None => None,
                Some(w) => {
                    let file = bucket_file(self.dir.path(), bucket);
                    w.finish().ctx(format!("writing {}", file.display()))?;
                    Some(file)
                }
            });
        }
        Ok(Spilled {
            _dir: self.dir,
            files,
        })
    }
}

impl Parts {
    /// Bucket `bucket`'s events, once (`None`: it has none).
    fn take(&mut self, bucket: usize) -> Result<Option<DataFrame>> {
        match self {
            // A night without events has its one bucket, empty.
            Parts::Held(events) => Ok(events.take()),
            Parts::Gathered(gathered) => gathered.take(bucket),
            Parts::Spilled(spilled) => spilled.take(bucket),
        }
    }
}

/// Writes the events of each bucket to a file of its own (`BucketFiles`) in a directory under
/// `dir`, in the events' order, and lets the events go.
fn spill(mut gathered: Gathered, dir: &Path) -> Result<Spilled> {
    let count = gathered.rows.len();
    let mut files = BucketFiles::create(Some(dir), count)?;
    for bucket in 0..count {
        let started = std::time::Instant::now();
        let Some(part) = gathered.take(bucket)? else {
            continue;
        };
        let taken = started.elapsed();
        files.append_to(bucket, part)?;
        tracing::debug!(
            bucket,
            gather_ms = taken.as_millis() as u64,
            write_ms = (started.elapsed() - taken).as_millis() as u64,
            "bucket written"
        );
    }
    files.finish()
}

/// The rows of each of `count` buckets, in their order (`None`: a bucket without events).
fn bucket_rows(events: &DataFrame, count: usize) -> Result<Vec<Option<IdxCa>>> {
    let ids = events
        .column(ev::CUSTOMER_ID)
        .ctx("customer ids")?
        .as_materialized_series()
        .unique()
        .ctx("customer ids")?;
    let buckets: Vec<Option<u32>> = ids
        .str()
        .ctx("customer ids")?
        .iter()
        .map(|id| id.map(|id| bucket_of(id, count)))
        .collect();
    let map = DataFrame::new(
        ids.len(),
        vec![ids.into_column(), Column::new(BUCKET.into(), buckets)],
    )
    .ctx("customer buckets")?;
    let of_events = events
        .select([ev::CUSTOMER_ID])
        .ctx("customer ids")?
        .lazy()
        .join(
            map.lazy(),
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            crate::util::left_join_ordered(),
        )
        // Identity gives every event a customer; were one without, it would go to bucket 0.
        .select([col(BUCKET).fill_null(lit(0u32))])
        .collect()
        .ctx("customer buckets")?;
    let mut rows: Vec<Vec<IdxSize>> = vec![Vec::new(); count];
    for (row, bucket) in of_events
        .column(BUCKET)
        .ctx("buckets")?
        .u32()
        .ctx("buckets")?
        .into_no_null_iter()
        .enumerate()
    {
        rows[bucket as usize].push(row as IdxSize);
    }
    Ok(rows
        .into_iter()
        .map(|r| (!r.is_empty()).then(|| IdxCa::from_vec("rows".into(), r)))
        .collect())
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
            &ingested.events.frame().unwrap(),
            None,
            &job.identity_limits,
            &crate::identity::Suppression::default(),
        )
        .unwrap()
        .1
    }

    #[test]
    fn buckets_give_what_one_pass_over_all_the_events_gives() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job::load(None).unwrap();
        let events = resolved_events(dir.path(), &job);
        // `write_above_mib`: 0 writes every bucket aside, u64::MAX gathers them from memory.
        let run = |count: usize, write_above_mib: u64| {
            let job = Job {
                write_buckets_above_mib: Some(write_above_mib),
                ..job.clone()
            };
            let b = sessions_and_history(
                events.clone(),
                count,
                &job,
                tempfile::tempdir_in(dir.path()).unwrap(),
            )
            .unwrap();
            // The kept events, in an order that does not depend on the buckets.
            let kept = crate::util::read_parquet(&b.kept.wait().unwrap())
                .unwrap()
                .sort([ev::EVENT_ID], Default::default())
                .unwrap();
            (b, kept)
        };
        let (one, kept_one) = run(1, 0);
        assert!(bucket_rows(&events, 4).unwrap().iter().all(Option::is_some));
        assert!(one.sessions.height() > 100 && one.events == events.height());
        assert_eq!(kept_one.height(), events.height());
        for write_above in [0, u64::MAX] {
            let (four, kept_four) = run(4, write_above);
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
            assert_eq!(kept_one.schema(), kept_four.schema());
            assert!(kept_one.equals_missing(&kept_four));
        }
        assert!(kept_one.column(ev::SESSION_ID).unwrap().null_count() == 0);
    }

    #[test]
    fn a_scratch_directory_that_cannot_be_written_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job::load(None).unwrap();
        let events = resolved_events(dir.path(), &job);
        let gone = || {
            let scratch = tempfile::tempdir_in(dir.path()).unwrap();
            std::fs::remove_dir(scratch.path()).unwrap();
            scratch
        };
        // One bucket: the writer thread fails to create the kept file, and says so when the
        // file is asked for.
        let one = sessions_and_history(events.clone(), 1, &job, gone()).unwrap();
        let err = one.kept.wait().unwrap_err().to_string();
        assert!(err.contains("creating") && err.contains(KEPT_FILE), "{err}");
        // The same answer the second time (the night's state asks again).
        assert!(one.kept.wait().is_err());
        // Four buckets gathered from memory: the writer stops before the buckets are all sent
        // (in practice at the first; the run then answers with the writer's error), or after
        // (its error then comes when the file is asked for).
        let held = Job {
            write_buckets_above_mib: Some(u64::MAX),
            ..job.clone()
        };
        let err = match sessions_and_history(events.clone(), 4, &held, gone()) {
            Err(e) => e.to_string(),
            Ok(b) => b.kept.wait().unwrap_err().to_string(),
        };
        assert!(err.contains("creating") && err.contains(KEPT_FILE), "{err}");
        // More: the buckets cannot be written aside.
        let aside = Job {
            write_buckets_above_mib: Some(0),
            ..job
        };
        let err = sessions_and_history(events, 4, &aside, gone())
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains("creating a scratch directory in"), "{err}");
    }

    #[test]
    fn buckets_grow_with_the_events() {
        assert_eq!(buckets_for(0, EVENTS_PER_BUCKET), 1);
        assert_eq!(buckets_for(1, EVENTS_PER_BUCKET), 1);
        assert_eq!(buckets_for(EVENTS_PER_BUCKET, EVENTS_PER_BUCKET), 1);
        assert_eq!(buckets_for(EVENTS_PER_BUCKET + 1, EVENTS_PER_BUCKET), 2);
        assert_eq!(buckets_for(10, 3), 4);
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
