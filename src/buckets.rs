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

/// What the per-customer stages made of a night's events.
pub struct Bucketed {
    /// Written by bucket when the events were (`Parts::Spilled`), else held.
    pub history: crate::history::Stored,
    pub events: usize,
    /// The number of sessions.
    pub sessions: usize,
    /// Of the time taken, what building the history took (the rest: sessions).
    pub history_took: std::time::Duration,
    /// The events with their `session_id`, and the sessions (sorted by customer, start and
    /// session, as `sessions::sessionize` sorts them), still being written.
    pub kept: KeptFile,
}

/// The events and sessions a night keeps, written bucket after bucket on a thread of their
/// own while the next bucket is sessionised and, after the last, while the later stages run:
/// into a scratch directory, removed with this (the night's state links the files). The
/// buckets are ranges of customers in order (`CustomerBuckets`), so the files, appended in
/// bucket order, are sorted as the night's rows would be.
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
/// The sessions file in a `KeptFile`'s directory.
const SESSIONS_FILE: &str = "sessions.parquet";

impl KeptFile {
    /// Starts the writer thread, which appends the events and sessions of every bucket
    /// `sessions_and_history` sends it: the events as the state's stage frames are written
    /// (without compression or statistics), the sessions as the published files are.
    fn start(
        dir: tempfile::TempDir,
    ) -> (
        KeptFile,
        std::sync::mpsc::SyncSender<(DataFrame, DataFrame)>,
    ) {
        // No bucket waits: the writer holds the bucket it writes, the caller the next one.
        let (send, buckets) = std::sync::mpsc::sync_channel::<(DataFrame, DataFrame)>(0);
        let events_path = dir.path().join(KEPT_FILE);
        let sessions_path = dir.path().join(SESSIONS_FILE);
        let handle = std::thread::spawn(move || -> Result<()> {
            use crate::util::ParquetAppender;
            let mut files: Option<(ParquetAppender, ParquetAppender)> = None;
            for (events, sessions) in buckets {
                let (kept, sessions_file) = match &mut files {
                    Some(files) => files,
                    None => files.insert((
                        ParquetAppender::create(
                            &events_path,
                            events.schema(),
                            ParquetCompression::Uncompressed,
                            StatisticsOptions::empty(),
                        )?,
                        ParquetAppender::create(
                            &sessions_path,
                            sessions.schema(),
                            crate::util::published(),
                            StatisticsOptions::default(),
                        )?,
                    )),
                };
                kept.append(&events)?;
                drop(events);
                sessions_file.append(&sessions)?;
            }
            let (kept, sessions) = files.expect("a night has at least one bucket");
            kept.finish()?;
            sessions.finish()
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

    /// The events file, once every bucket is written.
    pub fn events(&self) -> Result<std::path::PathBuf> {
        self.wait()?;
        Ok(self.dir.path().join(KEPT_FILE))
    }

    /// The sessions file, once every bucket is written.
    pub fn sessions(&self) -> Result<std::path::PathBuf> {
        self.wait()?;
        Ok(self.dir.path().join(SESSIONS_FILE))
    }

    fn wait(&self) -> Result<()> {
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
            _ => Ok(()),
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

/// Buckets of customers as ranges of their ids, each about as many customers: bucket `i`
/// holds the ids from its lower bound up to the next bucket's. Taken in order, the buckets'
/// customers are in order, so each bucket's sessions and history, sorted by customer and
/// appended in turn, are sorted as one pass over all the events sorts them: neither the
/// night's sessions nor its history need be held to be sorted. (A shard's customers, cut by
/// a hash of their ids, fall evenly into any ranges.)
pub struct CustomerBuckets {
    /// The lower bounds of buckets 1 and up.
    bounds: Vec<String>,
}

impl CustomerBuckets {
    /// `count` buckets of the customer ids `ids` (a string column; repeats and nulls are
    /// ignored).
    pub fn cut(ids: &Column, count: usize) -> Result<CustomerBuckets> {
        let unique = ids.as_materialized_series().unique().ctx("customer ids")?;
        let mut sorted: Vec<&str> = unique.str().ctx("customer ids")?.iter().flatten().collect();
        sorted.sort_unstable();
        let bounds = (1..count.max(1))
            .map(|i| {
                sorted
                    .get(i * sorted.len() / count)
                    .map_or_else(String::new, |id| id.to_string())
            })
            .collect();
        Ok(CustomerBuckets { bounds })
    }

    /// The buckets whose lower bounds, from the second bucket on, are `bounds` (ascending).
    pub fn from_bounds(bounds: Vec<String>) -> CustomerBuckets {
        debug_assert!(bounds.is_sorted());
        CustomerBuckets { bounds }
    }

    pub fn count(&self) -> usize {
        self.bounds.len() + 1
    }

    /// The bucket of customer `id`.
    pub fn of(&self, id: &str) -> usize {
        self.bounds.partition_point(|bound| bound.as_str() <= id)
    }
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
/// with their `session_id`, and the sessions are written bucket after bucket into `scratch`
/// (`KeptFile`). Events taking more than `write_buckets_above(job)` bytes are written aside
/// by bucket first.
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

/// Appends each row of `events` to the file of its customer's bucket of `buckets`.
pub fn append_by_customer(
    files: &mut BucketFiles,
    buckets: &CustomerBuckets,
    events: &DataFrame,
) -> Result<()> {
    let ids = events
        .column(ev::CUSTOMER_ID)
        .ctx("customer ids")?
        .str()
        .ctx("customer ids")?;
    // Identity gives every event a customer; were one without, it would go to bucket 0.
    files.append(
        events,
        ids.iter().map(|id| id.map_or(0, |id| buckets.of(id))),
    )
}

/// Sessions and history of each of the `count` buckets of `parts` (`total` events) in turn.
fn each_bucket(
    mut parts: Parts,
    count: usize,
    total: usize,
    job: &Job,
    scratch: tempfile::TempDir,
) -> Result<Bucketed> {
    // Events too many to hold have a history too large to hold: it is written bucket by
    // bucket beside the events.
    let mut written = match parts {
        Parts::Spilled(_) => Some(crate::history::Writer::create(scratch.path())?),
        _ => None,
    };
    // `send` is declared after `kept`, so it is dropped first on every way out: dropping `kept`
    // waits for the writer, which ends only once `send` is gone.
    let (kept, send) = KeptFile::start(scratch);
    let mut sessions = 0;
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
        let history = History::build(&part, &job.features, &job.model.label)?;
        match &mut written {
            Some(writer) => writer.add(history)?,
            None => histories.push(history),
        }
        history_took += started.elapsed();
        if written.is_some() {
            crate::util::release_freed_memory();
        }
        tracing::debug!(
            bucket,
            events = part.height(),
            sessions_ms = sessionised.as_millis() as u64,
            history_ms = started.elapsed().as_millis() as u64,
            "bucket done"
        );
        sessions += part_sessions.height();
        if send
            .send((crate::history::kept_events(&part)?, part_sessions))
            .is_err()
        {
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
    let started = std::time::Instant::now();
    let history = match written {
        Some(writer) => crate::history::Stored::Written(std::sync::Arc::new(writer.finish())),
        None if histories.len() == 1 => crate::history::Stored::Held(Box::new(histories.remove(0))),
        None => crate::history::Stored::Held(Box::new(History::append(histories)?)),
    };
    history_took += started.elapsed();
    Ok(Bucketed {
        history,
        events: total,
        sessions,
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

/// Rows written by bucket, a few files a bucket (none: a bucket without rows), in a directory
/// removed with this.
pub struct Spilled {
    _dir: tempfile::TempDir,
    files: Vec<Vec<std::path::PathBuf>>,
}

impl Spilled {
    pub fn buckets(&self) -> usize {
        self.files.len()
    }

    /// Bucket `bucket`'s files, in the order its rows were appended.
    pub fn files(&self, bucket: usize) -> &[std::path::PathBuf] {
        &self.files[bucket]
    }

    /// Bucket `bucket`'s rows (`None`: it has none).
    pub fn read(&self, bucket: usize) -> Result<Option<DataFrame>> {
        self.read_columns(bucket, None)
    }

    /// Bucket `bucket`'s rows (`None`: it has none), only `columns` of them if they are given:
    /// a pass that needs a few columns reads only those (identity's combinations: 7 of 45).
    pub fn read_columns(
        &self,
        bucket: usize,
        columns: Option<&[&str]>,
    ) -> Result<Option<DataFrame>> {
        let mut rows: Option<DataFrame> = None;
        for file in &self.files[bucket] {
            let part = crate::util::read_parquet_columns(file, columns)?;
            match &mut rows {
                None => rows = Some(part),
                Some(rows) => {
                    rows.vstack_mut_owned(part)
                        .ctx(format!("reading {}", file.display()))?;
                }
            }
        }
        // In one chunk: a bucket written in batches reads back as a chunk a batch (100 at
        // 100M events), and every gather over a frame of many chunks looks up each row's.
        // A column at a time (10M in 10 buckets: peak 2.6 GB, against 2.9 GB for all the
        // columns at once).
        rows.map(|mut rows| crate::util::categorical(std::mem::take(rows.rechunk_mut())))
            .transpose()
    }

    /// Bucket `bucket`'s rows, once: its files are removed (`None`: it has none), so that the
    /// disk holds no more than the buckets still to come.
    pub fn take(&mut self, bucket: usize) -> Result<Option<DataFrame>> {
        let part = self.read(bucket)?;
        self.remove(bucket)?;
        Ok(part)
    }

    /// Removes bucket `bucket`'s files: it has no rows from now on.
    pub fn remove(&mut self, bucket: usize) -> Result<()> {
        for file in std::mem::take(&mut self.files[bucket]) {
            std::fs::remove_file(&file).ctx(format!("removing {}", file.display()))?;
        }
        Ok(())
    }

    /// A frame of no rows with the columns of the rows written (none without a file).
    pub fn empty(&self) -> Result<DataFrame> {
        match self.files.iter().flatten().next() {
            Some(file) => Ok(crate::util::categorical(crate::util::read_parquet(file)?)?.clear()),
            None => Ok(DataFrame::empty()),
        }
    }
}

/// Rows written by bucket as they come: each batch of a bucket's rows is written to a file of
/// its own (Parquet, LZ4 without statistics) in a scratch directory, then read back a bucket
/// at a time (`Spilled`). A file a batch, not one file a bucket kept open: a Parquet writer
/// holds the description of every page it wrote until it is closed, which for 100 buckets
/// each given a batch from every group of files read held gigabytes at 100M events. LZ4,
/// because a night too large to hold is also large on disk: 100M events took 18 GB
/// uncompressed before ingest had read them all.
pub struct BucketFiles {
    dir: tempfile::TempDir,
    files: Vec<Vec<std::path::PathBuf>>,
}

impl BucketFiles {
    /// `count` buckets in a new directory under `within` (the system's temporary directory
    /// without one).
    pub fn create(within: Option<&Path>, count: usize) -> Result<BucketFiles> {
        let within = within.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = crate::util::scratch_dir(&within, SCRATCH_PREFIX)?;
        Ok(BucketFiles {
            dir,
            files: vec![Vec::new(); count],
        })
    }

    pub fn buckets(&self) -> usize {
        self.files.len()
    }

    /// Appends each row of `rows` to its bucket, `buckets` giving each row's, in order.
    pub fn append(&mut self, rows: &DataFrame, buckets: impl Iterator<Item = usize>) -> Result<()> {
        let mut of_bucket: Vec<Vec<IdxSize>> = vec![Vec::new(); self.files.len()];
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
    /// unless given an empty frame first).
    pub fn append_to(&mut self, bucket: usize, part: DataFrame) -> Result<()> {
        let files = &mut self.files[bucket];
        if part.height() == 0 && !files.is_empty() {
            return Ok(());
        }
        let file = self
            .dir
            .path()
            .join(format!("{bucket}-{}.parquet", files.len()));
        crate::util::write_scratch(&part, &file)?;
        files.push(file);
        Ok(())
    }

    pub fn finish(self) -> Result<Spilled> {
        Ok(Spilled {
            _dir: self.dir,
            files: self.files,
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
    let ids = events.column(ev::CUSTOMER_ID).ctx("customer ids")?;
    let buckets = CustomerBuckets::cut(ids, count)?;
    let mut rows: Vec<Vec<IdxSize>> = vec![Vec::new(); count];
    // Identity gives every event a customer; were one without, it would go to bucket 0.
    for (row, id) in ids.str().ctx("customer ids")?.iter().enumerate() {
        rows[id.map_or(0, |id| buckets.of(id))].push(row as IdxSize);
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
            // The kept events in an order that does not depend on the buckets (sessions do not
            // sort them); the sessions, sorted, are the bytes of one bucket's.
            let kept = crate::util::read_parquet(&b.kept.events().unwrap())
                .unwrap()
                .sort([ev::EVENT_ID], Default::default())
                .unwrap();
            let sessions = std::fs::read(b.kept.sessions().unwrap()).unwrap();
            (b, kept, sessions)
        };
        let (one, kept_one, sessions_one) = run(1, 0);
        assert!(bucket_rows(&events, 4).unwrap().iter().all(Option::is_some));
        assert!(one.sessions > 100 && one.events == events.height());
        assert_eq!(kept_one.height(), events.height());
        for write_above in [0, u64::MAX] {
            let (four, kept_four, sessions_four) = run(4, write_above);
            assert_eq!(one.sessions, four.sessions);
            assert!(sessions_one == sessions_four, "the sessions files differ");
            assert_eq!(
                one.history.fingerprint().unwrap(),
                four.history.fingerprint().unwrap()
            );
            // Written aside, the history is written by bucket; the state's files are the
            // bytes of the whole history's.
            assert_eq!(
                matches!(four.history, crate::history::Stored::Written(_)),
                write_above == 0
            );
            let files = |history: &crate::history::Stored, name: &str| {
                let to = dir.path().join(format!("{name}-{write_above}"));
                history.write(&to).unwrap();
                // A history written by bucket records how its buckets cut it.
                assert_eq!(
                    to.join("parts.json").exists(),
                    matches!(history, crate::history::Stored::Written(_))
                );
                let mut files: Vec<_> = std::fs::read_dir(&to)
                    .unwrap()
                    .filter(|e| e.as_ref().unwrap().file_name() != "parts.json")
                    .map(|e| {
                        let path = e.unwrap().path();
                        (
                            path.file_name().unwrap().to_owned(),
                            std::fs::read(path).unwrap(),
                        )
                    })
                    .collect();
                files.sort();
                files
            };
            let whole = files(&one.history, "one");
            assert!(whole.len() > 3);
            assert!(
                whole == files(&four.history, "four"),
                "the history files differ"
            );
            assert_eq!(kept_one.schema(), kept_four.schema());
            assert!(kept_one.equals_missing(&kept_four));
        }
        assert!(kept_one.column(ev::SESSION_ID).unwrap().null_count() == 0);
        // One pass sorts the sessions by customer, start and session.
        let sessions = crate::util::read_parquet(&one.kept.sessions().unwrap()).unwrap();
        let sorted = sessions
            .sort(
                [ev::CUSTOMER_ID, crate::sessions::START, ev::SESSION_ID],
                Default::default(),
            )
            .unwrap();
        assert!(sessions.equals_missing(&sorted));
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
        let err = one.kept.events().unwrap_err().to_string();
        assert!(err.contains("creating") && err.contains(KEPT_FILE), "{err}");
        // The same answer the second time (the night's state asks again).
        assert!(one.kept.sessions().is_err());
        // Four buckets gathered from memory: the writer stops before the buckets are all sent
        // (in practice at the first; the run then answers with the writer's error), or after
        // (its error then comes when the file is asked for).
        let held = Job {
            write_buckets_above_mib: Some(u64::MAX),
            ..job.clone()
        };
        let err = match sessions_and_history(events.clone(), 4, &held, gone()) {
            Err(e) => e.to_string(),
            Ok(b) => b.kept.events().unwrap_err().to_string(),
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
    fn buckets_are_ranges_of_customers_in_order_of_about_as_many_each() {
        // Ids in no order, some repeated, one null: 4 buckets of 1000 customers.
        let ids: Vec<Option<String>> = (0..5000)
            .map(|i| {
                (i != 17).then(|| {
                    format!(
                        "c_{:x}",
                        crate::util::customer_hash(&format!("{}", i % 4000))
                    )
                })
            })
            .collect();
        let ids = Column::new("customer_id".into(), ids);
        let buckets = CustomerBuckets::cut(&ids, 4).unwrap();
        assert_eq!(buckets.count(), 4);
        let mut by_bucket: Vec<Vec<String>> = vec![Vec::new(); 4];
        for id in ids.str().unwrap().iter().flatten() {
            by_bucket[buckets.of(id)].push(id.to_string());
        }
        for bucket in &mut by_bucket {
            bucket.sort();
            bucket.dedup();
            assert_eq!(bucket.len(), 1000);
        }
        // Every id of a bucket comes before every id of the next.
        for pair in by_bucket.windows(2) {
            assert!(pair[0].last() < pair[1].first());
        }
        // More buckets than customers: the others are empty, none is out of range.
        let few = CustomerBuckets::cut(&Column::new("customer_id".into(), ["b", "a"]), 5).unwrap();
        assert_eq!(few.count(), 5);
        assert!(few.of("a") < few.of("b") && few.of("b") < 5);
    }
}
