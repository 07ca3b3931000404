//! One run of the job, stage by stage in data-flow order:
//! ingest -> identity -> sessions -> labels -> features -> model -> score -> audience -> publish.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use chrono::NaiveDate;
use polars::prelude::*;
use serde::Serialize;
use tracing::info;

use crate::audience::{self, AudienceReport};
use crate::config::{InputDef, Job};
use crate::error::{Context, Result};
use crate::ingest::{self, IngestCounts};
use crate::labels::{self, Cutoffs};
use crate::model::{self, Artifact, Metrics};
use crate::publish::Staging;
use crate::schema::{event as ev, output};
use crate::snapshots::Snapshots;
use crate::util::{date_to_micros, link_or_copy, write_parquet};
use crate::{features, identity, score, sessions};

/// What a run is asked to do; `None` fields come from the job file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub job: Option<PathBuf>,
    /// Event sources; when given, they replace the job's.
    pub inputs: Vec<InputDef>,
    pub output: Option<String>,
    pub as_of: Option<NaiveDate>,
    pub horizon_days: Option<i64>,
    /// State location; default: the job's, else `<output>/_state`.
    pub state: Option<String>,
    /// Where the run starts: from the raw events (default), or from the features, reusing
    /// the canonical events, identities and sessions a run of the same night kept.
    pub from_stage: Stage,
    /// Merge the parts of this many shards (`run_shard`) instead of computing the
    /// per-customer stages.
    pub merge_shards: Option<usize>,
    /// Read every event even when the night before's state would let the run read only the
    /// files loaded since.
    pub full_refresh: bool,
}

/// The stage a run starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Everything, from the raw events.
    #[default]
    Ingest,
    /// Features, model, scores, audiences and publish, from what the night's run kept:
    /// the tuning loop after editing feature, model or audience files.
    Features,
}

/// What ingest and identity know about the whole night, whichever customers a run computes:
/// the identity outputs and state, the quarantine, the counts, and the day of the first event
/// (which places the cutoffs).
#[derive(Clone)]
struct Night {
    as_of: NaiveDate,
    first_day: NaiveDate,
    customers: DataFrame,
    identity: IdentityFrames,
    quarantine: DataFrame,
    counts: IngestCounts,
    suppressed_customers: usize,
    suppressed_events: usize,
}

/// What a night keeps of identity's `Resolved`: the customers, the frames it publishes and
/// keeps, and what suppression removed.
struct NightIdentity {
    customers: DataFrame,
    frames: IdentityFrames,
    suppressed_customers: usize,
    suppressed_events: usize,
}

impl From<identity::Resolved> for NightIdentity {
    fn from(resolved: identity::Resolved) -> NightIdentity {
        NightIdentity {
            customers: resolved.customers,
            frames: IdentityFrames::Held {
                frames: Box::new([resolved.identity, resolved.changes, resolved.shared]),
                state: Box::new(resolved.state),
            },
            suppressed_customers: resolved.suppressed_customers,
            suppressed_events: resolved.suppressed_events,
        }
    }
}

/// The identity frames a night publishes and keeps (`IDENTITY_FRAMES`) and the identity state
/// for the next night: held, or written into a scratch directory as soon as identity ends, for
/// a night whose events were written aside, so that the sessions and the later stages do not
/// hold them (100M events: about 900 MB by polars' estimate).
#[derive(Clone)]
enum IdentityFrames {
    Held {
        frames: Box<[DataFrame; 3]>,
        state: Box<identity::IdentityState>,
    },
    /// The frames as they are published, and the state as `IdentityState::write` writes it;
    /// the frames' rows.
    Written {
        dir: std::sync::Arc<tempfile::TempDir>,
        rows: [usize; 3],
    },
    /// What a night kept in its state directory `dir` (`keep`), not read: a rerun from the
    /// features stage only passes them on (100M events: about 1.3 GB held); the frames' rows.
    Kept { dir: PathBuf, rows: [usize; 3] },
}

const IDENTITY_FRAMES: [&str; 3] = ["identity", "identity_changes", "identity_shared"];

impl IdentityFrames {
    /// These frames, written into a scratch directory under `within`.
    fn write_aside(self, within: &std::path::Path) -> Result<IdentityFrames> {
        let IdentityFrames::Held { frames, state } = self else {
            return Ok(self);
        };
        let dir = NightEvents::scratch(within)?;
        for (name, df) in IDENTITY_FRAMES.iter().zip(frames.iter()) {
            write_parquet(df, &dir.path().join(format!("{name}.parquet")))?;
        }
        state.write(dir.path())?;
        Ok(IdentityFrames::Written {
            dir: std::sync::Arc::new(dir),
            rows: frames.each_ref().map(DataFrame::height),
        })
    }

    /// The rows of each of `IDENTITY_FRAMES`.
    fn rows(&self) -> [usize; 3] {
        match self {
            IdentityFrames::Held { frames, .. } => frames.each_ref().map(DataFrame::height),
            IdentityFrames::Written { rows, .. } | IdentityFrames::Kept { rows, .. } => *rows,
        }
    }

    /// Writes (or links) the frames into `dir`, as they are published.
    fn publish(&self, dir: &std::path::Path) -> Result<()> {
        for (i, name) in IDENTITY_FRAMES.iter().enumerate() {
            let to = dir.join(format!("{name}.parquet"));
            match self {
                IdentityFrames::Held { frames, .. } => write_parquet(&frames[i], &to)?,
                IdentityFrames::Written { dir, .. } => {
                    link_or_copy(&dir.path().join(format!("{name}.parquet")), &to)?
                }
                // Kept as a stage frame: published again, one frame at a time.
                IdentityFrames::Kept { dir, .. } => {
                    write_parquet(&read_stage_frame(&dir.join(STAGE_DIR), name)?, &to)?
                }
            }
        }
        Ok(())
    }

    /// Writes (or links) the state into the state directory `dir`, and the frames into its
    /// `stage`.
    fn keep(&self, dir: &std::path::Path) -> Result<()> {
        let stage = dir.join(STAGE_DIR);
        match self {
            IdentityFrames::Held { frames, state } => {
                state.write(dir)?;
                for (name, df) in IDENTITY_FRAMES.iter().zip(frames.iter()) {
                    write_stage_frame(&stage, name, df)?;
                }
            }
            IdentityFrames::Written { dir: written, .. } => {
                link_identity(written.path(), written.path(), dir)?
            }
            IdentityFrames::Kept { dir: kept, .. } => {
                link_identity(kept, &kept.join(STAGE_DIR), dir)?
            }
        }
        Ok(())
    }
}

/// Links the identity state in `state` and the frames in `frames` into the state directory
/// `dir` and its `stage`.
fn link_identity(
    state: &std::path::Path,
    frames: &std::path::Path,
    dir: &std::path::Path,
) -> Result<()> {
    for file in identity::IdentityState::FILES {
        link_or_copy(&state.join(file), &dir.join(file))?;
    }
    let stage = dir.join(STAGE_DIR);
    std::fs::create_dir_all(&stage).ctx(format!("creating {}", stage.display()))?;
    for name in IDENTITY_FRAMES {
        let file = format!("{name}.parquet");
        link_or_copy(&frames.join(&file), &stage.join(&file))?;
    }
    Ok(())
}

/// What the stages up to sessions produce: the night, and the events and sessions of the
/// customers this run computes (all of them, or one shard's). Kept in state (`stage/`) so
/// that `--from-stage features` need not read raw events.
struct Prepared {
    night: Night,
    /// The events this run read: all of them, or those since the night before.
    events: NightEvents,
    /// Every session of the customers this run computes.
    sessions: Sessions,
    /// What the per-customer stages need of all their events.
    history: crate::history::Stored,
    /// Fingerprint of the history (keys the cache; see `util::fingerprint`).
    fingerprint: String,
    /// What the next night starts from.
    increment: Increment,
    /// Events used by this night and the nights before (`rows.events`).
    events_used: usize,
}

/// Removes what runs that crashed left in `dir` under names starting with `prefixes`, but
/// not `keep` (this run's own); the caller holds `dir`'s lock, so no other run writes there.
fn clear_aside(
    dir: &std::path::Path,
    prefixes: &[&str],
    keep: Option<&std::path::Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).ctx(format!("listing {}", dir.display()))? {
        let entry = entry.ctx(format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if prefixes.iter().any(|p| name.starts_with(p)) && keep != Some(entry.path().as_path()) {
            std::fs::remove_dir_all(entry.path())
                .ctx(format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Files a night keeps, written on a thread of their own into a scratch directory (under the
/// state location) from the moment their frames are known, and linked into the night's state
/// when it is kept: a night read incrementally writes its sessions (the largest file it
/// publishes, gathered a row group at a time: `util::Merged`), events and ingest frames while
/// it merges its history, and lets them go before its features. Against writing them beside
/// the features (10M over 180 days, four runs each, alternating): 7.26-7.66 s at a 2.8 GB
/// peak against 7.63-7.79 s at 3.2 GB.
struct Aside {
    writing: std::sync::Mutex<Option<std::thread::JoinHandle<Result<()>>>>,
    /// Why the writing failed, once `file` has seen it fail.
    failed: std::sync::OnceLock<String>,
    dir: tempfile::TempDir,
}

impl Aside {
    /// Starts `write` into a scratch directory under `state` (the state location).
    fn start(
        state: &std::path::Path,
        what: &'static str,
        write: impl FnOnce(&std::path::Path) -> Result<()> + Send + 'static,
    ) -> Result<std::sync::Arc<Aside>> {
        let dir = NightEvents::scratch(state)?;
        let to = dir.path().to_path_buf();
        let writing = std::thread::spawn(move || {
            let t = Instant::now();
            write(&to)?;
            tracing::debug!(what, ms = t.elapsed().as_millis() as u64, "written aside");
            Ok(())
        });
        Ok(std::sync::Arc::new(Aside {
            writing: std::sync::Mutex::new(Some(writing)),
            failed: std::sync::OnceLock::new(),
            dir,
        }))
    }

    /// The file `name` of the directory, once everything is written.
    fn file(&self, name: &str) -> Result<PathBuf> {
        let failed = |why: &str| crate::error::Error::Io {
            context: "writing the night's state aside".into(),
            source: std::io::Error::other(why.to_string()),
        };
        let writing = self.writing.lock().expect("not poisoned").take();
        if let Some(writing) = writing {
            let written = writing
                .join()
                .unwrap_or_else(|_| Err(failed("the writer thread panicked")));
            if let Err(e) = written {
                let _ = self.failed.set(e.to_string());
                return Err(e);
            }
        }
        match self.failed.get() {
            Some(why) => Err(failed(why)),
            None => Ok(self.dir.path().join(name)),
        }
    }
}

impl Drop for Aside {
    /// Waits for the writer, so that its directory is not removed under it (a night that
    /// turns out to need every file drops what it started).
    fn drop(&mut self) {
        if let Some(writing) = self.writing.get_mut().expect("not poisoned").take() {
            let _ = writing.join();
        }
    }
}

/// A night's events as they are kept: written by `buckets` to a scratch file that the night's
/// state links (removed with the last reference), being written aside (a night that read
/// only its new files), or the file a night kept.
#[derive(Clone)]
enum NightEvents {
    Written(std::sync::Arc<crate::buckets::KeptFile>),
    /// Being written aside (a night read incrementally).
    Aside(std::sync::Arc<Aside>),
    /// The file a night's state kept, not read (`--from-stage features` reads the events
    /// only to build their history again, a part at a time: `history_of_kept_events`).
    Kept(PathBuf),
}

impl NightEvents {
    /// A scratch directory under `dir` (the state location, or a shard's directory) for the
    /// events `buckets` writes; what a run that crashed left there is removed under the
    /// directory's lock (`run`, `Part::write`).
    fn scratch(dir: &std::path::Path) -> Result<tempfile::TempDir> {
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
        crate::util::scratch_dir(dir, EVENTS_WRITING)
    }

    /// The scratch directory of written events.
    fn scratch_dir(&self) -> Option<&std::path::Path> {
        match self {
            NightEvents::Aside(_) | NightEvents::Kept(_) => None,
            NightEvents::Written(kept) => Some(kept.dir()),
        }
    }

    /// Writes (or links) the events into `stage`.
    fn write(&self, stage: &std::path::Path) -> Result<()> {
        let file = match self {
            NightEvents::Written(kept) => kept.events()?,
            NightEvents::Aside(aside) => aside.file(&format!("{EVENTS_FRAME}.parquet"))?,
            NightEvents::Kept(file) => file.clone(),
        };
        std::fs::create_dir_all(stage).ctx(format!("creating {}", stage.display()))?;
        link_or_copy(&file, &stage.join(format!("{EVENTS_FRAME}.parquet")))
    }
}

/// A night's sessions, sorted by customer, start and session: in memory (a night that read
/// only its new files, what `--from-stage features` read back, the merged shards'), or the
/// file `buckets` wrote beside the night's events, never held (the largest frame a night
/// publishes: 1.4 GB at 10M events).
#[derive(Clone)]
enum Sessions {
    Frame(DataFrame),
    Written {
        kept: std::sync::Arc<crate::buckets::KeptFile>,
        rows: usize,
    },
    /// Being written aside as published (a night read incrementally).
    Aside {
        aside: std::sync::Arc<Aside>,
        rows: usize,
    },
    /// The file a night's state kept, not read (`--from-stage features`).
    Kept {
        file: PathBuf,
        rows: usize,
    },
}

impl Sessions {
    /// The sessions file of a night's state, unread (its rows from its metadata).
    fn kept(file: PathBuf) -> Result<Sessions> {
        let rows = crate::util::parquet_rows(&file)?;
        Ok(Sessions::Kept { file, rows })
    }

    fn rows(&self) -> usize {
        match self {
            Sessions::Frame(sessions) => sessions.height(),
            Sessions::Written { rows, .. }
            | Sessions::Aside { rows, .. }
            | Sessions::Kept { rows, .. } => *rows,
        }
    }

    /// Writes (or links) the sessions as they are published to `file`.
    fn write(&self, file: &std::path::Path) -> Result<()> {
        match self {
            Sessions::Frame(sessions) => write_parquet(sessions, file),
            Sessions::Written { kept, .. } => link_or_copy(&kept.sessions()?, file),
            Sessions::Aside { aside, .. } => {
                link_or_copy(&aside.file(&format!("{SESSIONS_FRAME}.parquet"))?, file)
            }
            Sessions::Kept { file: kept, .. } => link_or_copy(kept, file),
        }
    }
}

/// How a night read its events: every file, or only those loaded since the night before
/// (whose state it started from).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "read")]
pub enum Refresh {
    Incremental { from: NaiveDate },
    Full { reason: String },
}

/// The state a night keeps for the next one to start from (`<night>/increment/`).
enum Increment {
    New(Box<Fresh>),
    /// The same night's, linked (a rerun from the features stage).
    Linked(PathBuf),
    /// Nothing: the next night reads every event.
    None,
}

/// What a night that read its files keeps for the next.
struct Fresh {
    ingest: IngestFrames,
    /// The keys of the events this night kept, added to `key_files`.
    new_keys: NewKeys,
    /// The night before's key files (one per night), linked into this night's.
    key_files: Vec<PathBuf>,
    /// The kept events of the nights since the last full read (one file per night, each
    /// under the customer ids of its night), linked into this night's, and the renames
    /// that bring their ids to this night's (`previous_id`, `customer_id`): with this
    /// night's kept events, every event, for `--from-stage features`.
    events_before: Vec<(String, PathBuf)>,
    renames: DataFrame,
    /// The daily aggregates changed since the history's base, with the directory of the night
    /// before's history, which holds the base: kept instead of the whole history while they
    /// are worth it (`history::Changes`).
    history_changes: Option<(PathBuf, crate::history::Changes)>,
    record: IncrementRecord,
}

const INCREMENT_DIR: &str = "increment";
const INCREMENT_RECORD: &str = "increment.json";
const KEYS_DIR: &str = "keys";
const HISTORY_DIR: &str = "history";
const EVENTS_BEFORE_DIR: &str = "events-before";
const RENAMES_FRAME: &str = "renames";
const INGEST_FRAMES: [&str; 3] = ["session_starts", "orders", "deferred"];

/// The ingest state a night keeps (`INGEST_FRAMES`): written on a thread of its own while the
/// night goes on, or, when the night's events were written aside, written before identity (at
/// 100M events the tracker sessions' times take a gigabyte, which the later stages need not
/// hold).
enum IngestFrames {
    /// Written before identity (a night whose rows were written aside, at whose size the
    /// frames are worth not holding).
    Written(tempfile::TempDir),
    /// Being written aside, on a thread of its own.
    Aside(std::sync::Arc<Aside>),
}

impl IngestFrames {
    /// The frames of `state`, written into a scratch directory under `dir`: at once when
    /// `now`, else aside.
    fn of(state: ingest::IngestState, now: bool, dir: &std::path::Path) -> Result<IngestFrames> {
        if !now {
            return Ok(IngestFrames::Aside(Aside::start(
                dir,
                "ingest frames",
                move |to| write_ingest_frames(&state, to),
            )?));
        }
        let scratch = NightEvents::scratch(dir)?;
        write_ingest_frames(&state, scratch.path())?;
        Ok(IngestFrames::Written(scratch))
    }

    /// Writes (or links) the frames into `to`.
    fn write(&self, to: &std::path::Path) -> Result<()> {
        match self {
            IngestFrames::Written(scratch) => {
                for name in INGEST_FRAMES {
                    let file = format!("{name}.parquet");
                    link_or_copy(&scratch.path().join(&file), &to.join(&file))?;
                }
                Ok(())
            }
            IngestFrames::Aside(aside) => {
                for name in INGEST_FRAMES {
                    let file = format!("{name}.parquet");
                    link_or_copy(&aside.file(&file)?, &to.join(&file))?;
                }
                Ok(())
            }
        }
    }
}

/// The keys of the events a night kept (`ingest::Ingested::new_keys`). Those held are
/// written aside as soon as ingest ends, on a thread of their own, while identity leaves a
/// core idle (10M events: 520 MB, mostly event ids, which were written beside the features and
/// the model); those written a file per bucket of rows are linked as they are.
enum NewKeys {
    Aside(std::sync::Arc<Aside>),
    Written(crate::buckets::Spilled),
}

/// The file `NewKeys::Aside` writes.
const NEW_KEYS_FILE: &str = "keys.parquet";

impl NewKeys {
    fn of(keys: ingest::Stored, state: &std::path::Path) -> Result<NewKeys> {
        Ok(match keys {
            ingest::Stored::Memory(keys) => {
                NewKeys::Aside(Aside::start(state, "event keys", move |to| {
                    crate::util::write_state(&keys, &to.join(NEW_KEYS_FILE))
                })?)
            }
            ingest::Stored::Disk(files) => NewKeys::Written(files),
        })
    }

    /// Links the keys into `dir` (the increment's keys directory), named by the night `as_of`
    /// (the next night reads every file of the directory).
    fn link(&self, dir: &std::path::Path, as_of: &str) -> Result<()> {
        match self {
            NewKeys::Aside(aside) => link_or_copy(
                &aside.file(NEW_KEYS_FILE)?,
                &dir.join(format!("{as_of}.parquet")),
            ),
            NewKeys::Written(files) => {
                for (i, file) in files.files(0).iter().enumerate() {
                    link_or_copy(file, &dir.join(format!("{as_of}-{i:04}.parquet")))?;
                }
                Ok(())
            }
        }
    }
}

fn write_ingest_frames(state: &ingest::IngestState, to: &std::path::Path) -> Result<()> {
    let path = |name: &str| to.join(format!("{name}.parquet"));
    state.sessions.write(&path(INGEST_FRAMES[0]))?;
    for (name, df) in INGEST_FRAMES[1..]
        .iter()
        .zip([&state.orders, &state.deferred])
    {
        crate::util::write_state(df, &path(name))?;
    }
    Ok(())
}

/// `increment.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct IncrementRecord {
    propel_version: String,
    /// `STATE_FORMAT` of the propel that kept the state (0: before it was recorded).
    #[serde(default)]
    format: u32,
    /// `increment_definitions`: a night starts from the night before's state only under the
    /// same definitions.
    definitions: String,
    as_of: NaiveDate,
    /// Events used by this night and the nights before it.
    events: usize,
    /// Per input, the files read so far.
    files: Vec<Vec<String>>,
    refresh: Refresh,
    /// The ingest counts of every file read so far (what one read of them all counts).
    counts: IngestCounts,
    /// What this night read.
    night: IngestCounts,
}

/// `run.json`'s account of what a night read.
#[derive(Serialize, Clone)]
struct NightRead {
    #[serde(flatten)]
    refresh: Refresh,
    counts: IngestCounts,
}

/// The counts of every file read, from those of the nights before (`before`) and this
/// night's (`night`, which brought in the events `before` left after its as-of date).
fn cumulative(before: &IngestCounts, night: &IngestCounts) -> IngestCounts {
    IngestCounts {
        files: before.files + night.files,
        files_pruned: night.files_pruned,
        read: before.read + night.read,
        carried: 0,
        used: before.used + night.used,
        duplicates: before.duplicates + night.duplicates,
        quarantined: before.quarantined + night.quarantined,
        after_as_of: night.after_as_of,
    }
}

/// Everything the kept state of a night depends on besides the events: the feature and
/// label definitions, sessions, the quality rules and the identity guards (a suppression
/// list is applied every night, so it may change).
/// The layout of the state a night keeps for the next (`IncrementRecord::format`): a night
/// starts from a state of its own format only. 1: the event keys carry their ids' hashes
/// (`ingest::KEY_HASH`). 2: the tracker sessions' times are keyed by their ids' 128-bit hash
/// (`ingest::IngestState::sessions`). 3: the history's daily aggregates may be kept as the
/// base a night before wrote and the rows changed since (`history::Changes`).
const STATE_FORMAT: u32 = 3;

fn increment_definitions(job: &Job) -> String {
    crate::util::sha256_hex(&format!(
        "{}\n{:?}\n{}\n{:?}\n{:?}",
        job.features.hash,
        job.model.label,
        job.session_inactivity_minutes,
        job.quality,
        job.identity_limits,
    ))
}

impl Increment {
    /// How the night read its events (none: it merged shards, or reran from its features
    /// stage with other definitions).
    fn read(&self) -> Option<NightRead> {
        let of = |r: &IncrementRecord| NightRead {
            refresh: r.refresh.clone(),
            counts: r.night.clone(),
        };
        match self {
            Increment::New(fresh) => Some(of(&fresh.record)),
            Increment::Linked(dir) => std::fs::read_to_string(dir.join(INCREMENT_RECORD))
                .ok()
                .and_then(|text| serde_json::from_str::<IncrementRecord>(&text).ok())
                .map(|r| of(&r)),
            Increment::None => None,
        }
    }

    /// Writes (or links) the state into `dir`, the night being committed.
    fn write(&self, history: &crate::history::Stored, dir: &std::path::Path) -> Result<()> {
        let to = dir.join(INCREMENT_DIR);
        match self {
            Increment::None => Ok(()),
            Increment::Linked(from) => link_tree(from, &to),
            Increment::New(fresh) => {
                let Fresh {
                    ingest,
                    new_keys,
                    key_files,
                    events_before,
                    renames,
                    history_changes,
                    record,
                } = fresh.as_ref();
                let named = |files: &[PathBuf]| -> Vec<(String, PathBuf)> {
                    files
                        .iter()
                        .map(|f| {
                            (
                                f.file_name().expect("a file").to_string_lossy().into(),
                                f.clone(),
                            )
                        })
                        .collect()
                };
                for (dir, files) in [
                    (KEYS_DIR, named(key_files)),
                    (EVENTS_BEFORE_DIR, events_before.clone()),
                ] {
                    let dir = to.join(dir);
                    std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
                    for (name, file) in files {
                        link_or_copy(&file, &dir.join(name))?;
                    }
                }
                new_keys.link(&to.join(KEYS_DIR), &record.as_of.to_string())?;
                ingest.write(&to)?;
                crate::util::write_state(renames, &to.join(format!("{RENAMES_FRAME}.parquet")))?;
                match (history_changes, history) {
                    (Some((base, changes)), crate::history::Stored::Held(whole)) => {
                        changes.write(base, whole, &to.join(HISTORY_DIR))?
                    }
                    _ => history.write(&to.join(HISTORY_DIR))?,
                }
                std::fs::write(
                    to.join(INCREMENT_RECORD),
                    serde_json::to_string_pretty(record).expect("json") + "\n",
                )
                .ctx("writing increment.json")
            }
        }
    }
}

/// Links every file under `from` into the same place under `to`.
fn link_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to).ctx(format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).ctx(format!("listing {}", from.display()))? {
        let entry = entry.ctx("listing state")?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            link_tree(&entry.path(), &target)?;
        } else {
            link_or_copy(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// What a night starts from when it reads only the files loaded since the night before.
struct Before {
    /// The quarantined rows of every file read so far.
    quarantine: DataFrame,
    /// The kept events of the nights since the last full read, that night's included (by
    /// file name), and the renames that bring them to the night before's ids (see
    /// `Increment::New`).
    events_before: Vec<(String, PathBuf)>,
    renames: DataFrame,
    record: IncrementRecord,
    ingest: ingest::IngestState,
    key_files: Vec<PathBuf>,
    /// The history and sessions as the night before kept them, and the directory its
    /// history is kept in.
    kept: Kept,
    history_dir: PathBuf,
    identity: identity::IdentityState,
}

/// The night before's history and sessions: held, or, when they would take more memory than
/// a night holds its events in (`buckets::write_buckets_above`), read a bucket of customers
/// (the sessions a row group) at a time as the night adds its own (100M events over 180 days:
/// 7.5 GB of history and 6.4 GB of sessions held).
enum Kept {
    Held {
        /// The history's base and the daily aggregates changed since.
        history: Box<crate::history::History>,
        changes: Option<crate::history::Changes>,
        sessions: DataFrame,
    },
    /// The directory of the history (opened, `history::KeptByBucket`, when the night adds its
    /// own: its labels and signals, 300 MB at 100M events, are not held through ingest and
    /// identity) and the sessions' file.
    ByBucket { history: PathBuf, sessions: PathBuf },
}

impl Kept {
    /// The history kept in `history` and the sessions in `sessions`, held unless the history
    /// was kept by bucket and both would take more than `job` holds.
    fn read(history: &std::path::Path, sessions: &std::path::Path, job: &Job) -> Result<Kept> {
        if crate::history::KeptByBucket::is_kept(history) {
            let mut files = vec![sessions.to_path_buf()];
            for dir in [history.to_path_buf(), crate::history::Changes::dir(history)] {
                let entries = match std::fs::read_dir(&dir) {
                    // No changes kept beside the base.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    entries => entries.ctx(format!("listing {}", dir.display()))?,
                };
                for entry in entries {
                    let path = entry.ctx(format!("listing {}", dir.display()))?.path();
                    if path.extension().is_some_and(|e| e == "parquet") {
                        files.push(path);
                    }
                }
            }
            let mut bytes = 0;
            for file in &files {
                bytes += crate::util::held_size(file)?;
            }
            let limit = crate::buckets::write_buckets_above(job);
            if bytes > limit {
                info!(
                    mib = bytes >> 20,
                    limit_mib = limit >> 20,
                    "the history and sessions of the nights before, too large to hold, read a bucket at a time"
                );
                return Ok(Kept::ByBucket {
                    history: history.to_path_buf(),
                    sessions: sessions.to_path_buf(),
                });
            }
        }
        Ok(Kept::Held {
            history: Box::new(crate::history::History::read(history, &job.features)?),
            changes: crate::history::Changes::read(history, &job.features)?,
            sessions: crate::util::read_parquet(sessions)?,
        })
    }
}

/// The night before `as_of` (or the newest night) and its kept state, or why a night cannot
/// start from it.
fn night_before(
    state: &crate::state::StateDir,
    as_of: Option<NaiveDate>,
    job: &Job,
) -> Result<std::result::Result<Before, String>> {
    let dir = match as_of {
        Some(d) => state.before(d)?,
        None => state.nights()?.last().map(|n| state.night(*n)),
    };
    let Some(dir) = dir else {
        return Ok(Err("no night before this one in the state".into()));
    };
    let inc = dir.join(INCREMENT_DIR);
    let record: Option<IncrementRecord> = std::fs::read_to_string(inc.join(INCREMENT_RECORD))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let Some(record) = record else {
        return Ok(Err(format!(
            "the night before ({}) kept no state to start from (it ran in shards, from the features stage with other definitions, or with another version of propel)",
            dir.display()
        )));
    };
    if record.propel_version != env!("CARGO_PKG_VERSION") {
        return Ok(Err(format!(
            "the night before ran with propel {}",
            record.propel_version
        )));
    }
    if record.format != STATE_FORMAT {
        return Ok(Err(format!(
            "the night before kept its state in another format ({}; this propel reads {STATE_FORMAT})",
            record.format
        )));
    }
    if record.definitions != increment_definitions(job) {
        return Ok(Err(
            "the feature, label, session, quality or identity definitions (or how this propel computes the features) changed since the night before".into(),
        ));
    }
    let read = |name: &str| crate::util::read_parquet(&inc.join(format!("{name}.parquet")));
    let mut key_files: Vec<PathBuf> = std::fs::read_dir(inc.join(KEYS_DIR))
        .ctx("listing the kept event keys")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    key_files.sort();
    let mut laps = crate::util::Laps::start("reading the night before's state");
    let Some(identity) = identity::IdentityState::load(&dir)? else {
        return Ok(Err("the night before kept no identity graph".into()));
    };
    laps.lap("identity");
    let mut events_before: Vec<(String, PathBuf)> = kept_events_before(&inc)?
        .into_iter()
        .map(|f| (f.file_name().expect("a file").to_string_lossy().into(), f))
        .collect();
    // That night's own kept events, named by the night.
    let own = dir.join(STAGE_DIR).join(format!("{EVENTS_FRAME}.parquet"));
    if !own.exists() {
        return Ok(Err("the night before kept no events".into()));
    }
    events_before.push((format!("{}.parquet", record.as_of), own));
    let ingest = ingest::IngestState {
        files: record.files.clone(),
        sessions: ingest::SessionStarts::Kept(inc.join(format!("{}.parquet", INGEST_FRAMES[0]))),
        orders: read(INGEST_FRAMES[1])?,
        deferred: read(INGEST_FRAMES[2])?,
    };
    laps.lap("ingest");
    let history_dir = inc.join(HISTORY_DIR);
    let kept = Kept::read(
        &history_dir,
        &dir.join(STAGE_DIR)
            .join(format!("{SESSIONS_FRAME}.parquet")),
        job,
    )?;
    laps.lap("history and sessions");
    Ok(Ok(Before {
        ingest,
        kept,
        history_dir,
        quarantine: read_stage_frame(&dir.join(STAGE_DIR), "quarantine")?,
        renames: read(RENAMES_FRAME)?,
        events_before,
        identity,
        key_files,
        record,
    }))
}

/// The files under `<increment>/events-before/`, by night.
fn kept_events_before(inc: &std::path::Path) -> Result<Vec<PathBuf>> {
    let dir = inc.join(EVENTS_BEFORE_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ctx(format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    Ok(files)
}

/// `renames` followed by `now` (both `previous_id`, `customer_id`): where every id renamed so
/// far goes now.
fn compose_renames(renames: &DataFrame, now: &DataFrame) -> Result<DataFrame> {
    let (from, to) = (features::RENAME_FROM, features::RENAME_TO);
    let moved = renames
        .clone()
        .lazy()
        .join(
            now.clone()
                .lazy()
                .select([col(from).alias(to), col(to).alias("_now")]),
            [col(to)],
            [col(to)],
            crate::util::left_join_ordered(),
        )
        .select([col(from), coalesce(&[col("_now"), col(to)]).alias(to)]);
    concat([moved, now.clone().lazy()], UnionArgs::default())
        .ctx("identity renames")?
        .unique(Some(cols([from])), UniqueKeepStrategy::First)
        .sort([from], Default::default())
        .collect()
        .ctx("identity renames")
}

/// The files of every event a night kept for `--from-stage features`: those of the nights
/// since the last full read (under their nights' ids, which `renames` brings to today's),
/// then its own. A night that read only its new files kept only their events.
struct KeptEventFiles {
    before: Vec<PathBuf>,
    renames: Option<DataFrame>,
    own: PathBuf,
}

impl KeptEventFiles {
    /// The kept events of the night whose increment is `inc` and whose own kept events are
    /// `own`.
    fn of(inc: &std::path::Path, own: &std::path::Path) -> Result<KeptEventFiles> {
        let before = match inc.join(EVENTS_BEFORE_DIR).exists() {
            true => kept_events_before(inc)?,
            false => Vec::new(),
        };
        let renames = match before.is_empty() {
            true => None,
            false => Some(crate::util::read_parquet(
                &inc.join(format!("{RENAMES_FRAME}.parquet")),
            )?),
        };
        Ok(KeptEventFiles {
            before,
            renames,
            own: own.to_path_buf(),
        })
    }

    fn files(&self) -> impl Iterator<Item = &std::path::Path> {
        self.before.iter().chain([&self.own]).map(PathBuf::as_path)
    }

    /// Every event, handed to `each` at most `rows` at a time (at least once, if with none),
    /// under today's ids, the suppressed customers' (those not in `customers`) left out.
    fn each(
        &self,
        customers: &DataFrame,
        rows: usize,
        mut each: impl FnMut(DataFrame) -> Result<()>,
    ) -> Result<()> {
        let names: Vec<Expr> = crate::util::scan_parquet(&self.own)?
            .collect_schema()
            .ctx("the kept events")?
            .iter_names()
            .map(|n| col(n.clone()))
            .collect();
        let today = |df: DataFrame| -> Result<DataFrame> {
            features::renamed(df.lazy(), self.renames.as_ref())
                .join(
                    customers.clone().lazy().select([col(ev::CUSTOMER_ID)]),
                    [col(ev::CUSTOMER_ID)],
                    [col(ev::CUSTOMER_ID)],
                    JoinArgs::new(JoinType::Semi),
                )
                .select(names.clone())
                .collect()
                .ctx("the events kept by the nights before")
        };
        for file in self.files() {
            let total = crate::util::parquet_rows(file)?;
            let mut offset = 0;
            loop {
                let part =
                    crate::util::categorical(crate::util::read_parquet_rows(file, offset, rows)?)?;
                each(match file == self.own {
                    true => part,
                    false => today(part)?,
                })?;
                offset = offset.saturating_add(rows);
                if offset >= total {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The history of every event a night kept, built again for `job`'s definitions: from the
/// events held, or, when their files take more than a night holds its events in
/// (`buckets::write_buckets_above`), written by bucket of customers under `scratch` and built
/// a bucket at a time (100M events: about 9 GB of kept events). Gives the history and the
/// events it was built from.
fn history_of_kept_events(
    kept: &KeptEventFiles,
    customers: &DataFrame,
    job: &Job,
    scratch: &std::path::Path,
) -> Result<(crate::history::Stored, usize)> {
    let (mut rows, mut bytes) = (0, 0);
    for file in kept.files() {
        rows += crate::util::parquet_rows(file)?;
        bytes += std::fs::metadata(file)
            .ctx(format!("reading {}", file.display()))?
            .len();
    }
    let build = |events: &DataFrame| {
        crate::history::History::build(events, &job.features, &job.model.label)
    };
    if bytes <= crate::buckets::write_buckets_above(job) {
        let mut parts = Vec::new();
        kept.each(customers, usize::MAX, |part| {
            parts.push(part.lazy());
            Ok(())
        })?;
        let events = concat(parts, UnionArgs::default())
            .ctx("the kept events")?
            .collect()
            .ctx("the kept events")?;
        let history = build(&events)?;
        return Ok((
            crate::history::Stored::Held(Box::new(history)),
            events.height(),
        ));
    }
    let count = crate::buckets::buckets_for(rows, job.events_per_bucket);
    tracing::info!(
        mib = bytes >> 20,
        buckets = count,
        "the history built again from the kept events a bucket at a time"
    );
    let buckets = crate::buckets::CustomerBuckets::cut(
        customers
            .column(ev::CUSTOMER_ID)
            .ctx("the night's customers")?,
        count,
    )?;
    let mut written = crate::buckets::BucketFiles::create(Some(scratch), count)?;
    let mut events = 0;
    kept.each(customers, job.events_per_bucket, |part| {
        events += part.height();
        crate::buckets::append_by_customer(&mut written, &buckets, &part)
    })?;
    let written = written.finish()?;
    let mut history = crate::history::Writer::within(NightEvents::scratch(scratch)?);
    for i in 0..count {
        if let Some(part) = written.read(i)? {
            history.add(build(&crate::util::categorical(part)?)?)?;
        }
    }
    Ok((
        crate::history::Stored::Written(std::sync::Arc::new(history.finish())),
        events,
    ))
}

#[derive(Serialize, serde::Deserialize)]
struct NightCounts {
    as_of: NaiveDate,
    first_day: NaiveDate,
    counts: IngestCounts,
    suppressed_customers: usize,
    suppressed_events: usize,
    /// Set when the night ran in this many shards: its events are kept with the shards.
    #[serde(default)]
    shards: Option<usize>,
}

const STAGE_DIR: &str = "stage";
const COUNTS_FILE: &str = "counts.json";
/// The night's stage frames besides `IDENTITY_FRAMES`.
const NIGHT_FRAMES: [&str; 2] = ["customers", "quarantine"];

/// Writes a kept stage frame. It is written every night and read back whole, if at all, only
/// by `--from-stage features`: no compression and no statistics, which cost a third of the
/// writing time for a sixth more bytes (1M events: 1.7 s and 102 MB against 2.7 s and 88 MB
/// with LZ4 and statistics).
fn write_stage_frame(stage: &std::path::Path, name: &str, df: &DataFrame) -> Result<()> {
    crate::util::write_parquet_with(
        df,
        &stage.join(format!("{name}.parquet")),
        ParquetCompression::Uncompressed,
        StatisticsOptions::empty(),
    )
}

/// Writes the events and sessions a night or a shard keeps. The sessions are written as they
/// are published (`sessions.parquet`), so that the run links the one file into its output
/// instead of writing the largest frame it publishes twice.
fn write_events_and_sessions(
    stage: &std::path::Path,
    events: &NightEvents,
    sessions: &Sessions,
) -> Result<()> {
    events.write(stage)?;
    sessions.write(&stage.join(format!("{SESSIONS_FRAME}.parquet")))
}

fn read_stage_frame(stage: &std::path::Path, name: &str) -> Result<DataFrame> {
    crate::util::read_parquet(&stage.join(format!("{name}.parquet")))
}

/// "--from-stage features" asked of a directory that kept nothing to start from.
fn nothing_kept(dir: &std::path::Path, night: NaiveDate) -> crate::error::Error {
    crate::error::ConfigError::one(dir.display().to_string(), format!(
            "--from-stage features needs the night {night} run in full first (no kept stage outputs here)"
        ))
    .into()
}

impl Night {
    /// The night of identity's `resolved` (whose events have been taken).
    fn of(
        as_of: NaiveDate,
        first_day: NaiveDate,
        resolved: NightIdentity,
        quarantine: DataFrame,
        counts: IngestCounts,
    ) -> Night {
        Night {
            as_of,
            first_day,
            customers: resolved.customers,
            identity: resolved.frames,
            quarantine,
            counts,
            suppressed_customers: resolved.suppressed_customers,
            suppressed_events: resolved.suppressed_events,
        }
    }

    fn counts(&self, shards: Option<usize>) -> NightCounts {
        NightCounts {
            as_of: self.as_of,
            first_day: self.first_day,
            counts: self.counts.clone(),
            suppressed_customers: self.suppressed_customers,
            suppressed_events: self.suppressed_events,
            shards,
        }
    }

    /// Writes the identity state and the night's stage outputs into a state directory;
    /// `shards`: the night ran in this many shards, which keep its events.
    fn write(&self, dir: &std::path::Path, shards: Option<usize>) -> Result<()> {
        self.identity.keep(dir)?;
        let stage = dir.join(STAGE_DIR);
        for (name, df) in NIGHT_FRAMES.iter().zip([&self.customers, &self.quarantine]) {
            write_stage_frame(&stage, name, df)?;
        }
        std::fs::write(
            stage.join(COUNTS_FILE),
            serde_json::to_string_pretty(&self.counts(shards)).expect("json"),
        )
        .ctx("writing stage/counts.json")
    }

    /// What a run of `night` kept in `dir`, with the number of shards it ran in.
    fn load(dir: &std::path::Path, night: NaiveDate) -> Result<(Night, Option<usize>)> {
        let stage = dir.join(STAGE_DIR);
        let text = std::fs::read_to_string(stage.join(COUNTS_FILE))
            .map_err(|_| nothing_kept(dir, night))?;
        // Unreadable: kept by another version of propel.
        let counts: NightCounts =
            serde_json::from_str(&text).map_err(|_| nothing_kept(dir, night))?;
        let read = |name: &str| read_stage_frame(&stage, name);
        // The identity state and frames are passed on unread (`IdentityFrames::Kept`).
        if !identity::IdentityState::FILES
            .iter()
            .all(|f| dir.join(f).exists())
        {
            return Err(nothing_kept(dir, night));
        }
        let mut identity_rows = [0; 3];
        for (rows, name) in identity_rows.iter_mut().zip(IDENTITY_FRAMES) {
            *rows = crate::util::parquet_rows(&stage.join(format!("{name}.parquet")))?;
        }
        Ok((
            Night {
                as_of: counts.as_of,
                first_day: counts.first_day,
                customers: read("customers")?,
                identity: IdentityFrames::Kept {
                    dir: dir.to_path_buf(),
                    rows: identity_rows,
                },
                quarantine: read("quarantine")?,
                counts: counts.counts,
                suppressed_customers: counts.suppressed_customers,
                suppressed_events: counts.suppressed_events,
            },
            counts.shards,
        ))
    }

    /// Digest of what every shard of the night must agree on: the counts and the customers.
    fn digest(&self) -> Result<String> {
        let counts = serde_json::to_string(&self.counts(None)).expect("json");
        let customers = crate::util::fingerprint(&self.customers)?;
        Ok(crate::util::sha256_hex(&format!("{counts}\n{customers}")))
    }

    fn cutoffs(&self, job: &Job) -> Result<Cutoffs> {
        Cutoffs::plan(self.first_day, self.as_of, &job.model)
    }
}

impl Prepared {
    /// Writes the night and the events and sessions into a state directory.
    fn write(&self, dir: &std::path::Path) -> Result<()> {
        self.night.write(dir, None)?;
        write_events_and_sessions(&dir.join(STAGE_DIR), &self.events, &self.sessions)
    }

    /// What the run of `night` kept in `dir` (a night's state, or a shard's part), for the
    /// definitions of `job`; a history the night wrote by bucket is read back by bucket into
    /// `scratch` (a directory whose lock the caller holds).
    fn load(
        dir: &std::path::Path,
        night: NaiveDate,
        job: &Job,
        scratch: &std::path::Path,
    ) -> Result<Prepared> {
        let (kept, shards) = Night::load(dir, night)?;
        if let Some(n) = shards {
            return Err(crate::error::ConfigError::one(
                dir.display().to_string(),
                format!(
                    "the night {night} ran in {n} shards, which keep its events: rerun each with \
                     --from-stage features --shard I/{n}, then --merge-shards {n}"
                ),
            )
            .into());
        }
        let stage = dir.join(STAGE_DIR);
        let events_file = stage.join(format!("{EVENTS_FRAME}.parquet"));
        let inc = dir.join(INCREMENT_DIR);
        let record: Option<IncrementRecord> = std::fs::read_to_string(inc.join(INCREMENT_RECORD))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .filter(|r: &IncrementRecord| r.propel_version == env!("CARGO_PKG_VERSION"));
        // The history kept, when the definitions it was built for are the job's; else built
        // again from the kept events, which only a night that read every file has.
        let (history, increment, events_used) = match record {
            Some(r) if r.definitions == increment_definitions(job) => (
                crate::history::Stored::read(
                    &inc.join(HISTORY_DIR),
                    &job.features,
                    scratch,
                    EVENTS_WRITING,
                )?,
                Increment::Linked(inc),
                r.events,
            ),
            _ => {
                let (history, events) = history_of_kept_events(
                    &KeptEventFiles::of(&inc, &events_file)?,
                    &kept.customers,
                    job,
                    scratch,
                )?;
                (history, Increment::None, events)
            }
        };
        Ok(Prepared {
            night: kept,
            fingerprint: history.fingerprint()?,
            sessions: Sessions::kept(stage.join(format!("{SESSIONS_FRAME}.parquet")))?,
            history,
            increment,
            events_used,
            events: NightEvents::Kept(events_file),
        })
    }
}

/// What a night keeps in state besides the model and the audiences: the identity graph, the
/// stage outputs (with the events and sessions, for `--from-stage features`) and what the
/// next night starts from (`Increment`). All of it is known once the night is prepared, so
/// it is written on a thread of its own while the features are computed, the model trains
/// and the audiences are built, into a directory beside the nights, and moved into the night
/// when it is committed.
struct Keeping {
    dir: PathBuf,
    handle: Option<std::thread::JoinHandle<Result<()>>>,
}

/// The events and sessions a night keeps (the largest files of its state).
enum KeptEvents {
    Frames {
        events: NightEvents,
        sessions: Sessions,
    },
    /// The night the run started from (the same events: a rerun from the features stage),
    /// found in `state`.
    Linked { state: PathBuf, night: NaiveDate },
}

/// Where `Keeping` writes, under the state root, by process id.
const STAGE_WRITING: &str = ".stage-writing-";
/// Where `buckets` writes a night's events (`NightEvents::scratch`), under the state root or
/// a shard's directory.
const EVENTS_WRITING: &str = crate::buckets::SCRATCH_PREFIX;
const EVENTS_FRAME: &str = "events";
const SESSIONS_FRAME: &str = "sessions";
const STAGE_EVENT_FRAMES: [&str; 2] = [EVENTS_FRAME, SESSIONS_FRAME];
/// A part's per-customer results beside its stage (`Part::write`, `merge_parts`).
const SNAPSHOTS_FRAME: &str = "snapshots";
const CONTACTS_FRAME: &str = "contacts";

impl KeptEvents {
    fn write(&self, stage: &std::path::Path) -> Result<()> {
        match self {
            KeptEvents::Frames { events, sessions } => {
                write_events_and_sessions(stage, events, sessions)
            }
            KeptEvents::Linked { state, night } => {
                let from = crate::state::StateDir::new(state.clone())
                    .night(*night)
                    .join(STAGE_DIR);
                std::fs::create_dir_all(stage).ctx(format!("creating {}", stage.display()))?;
                for name in STAGE_EVENT_FRAMES {
                    let file = format!("{name}.parquet");
                    link_or_copy(&from.join(&file), &stage.join(&file))?;
                }
                Ok(())
            }
        }
    }
}

impl Keeping {
    /// Starts writing `night`, its events, and the state for the next night (`increment`,
    /// with `history`), under the state location, whose lock the caller holds.
    fn start(
        state: &std::path::Path,
        night: Night,
        events: KeptEvents,
        history: crate::history::Stored,
        increment: Increment,
    ) -> Result<Self> {
        let dir = state.join(format!("{STAGE_WRITING}{}", std::process::id()));
        std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
        let to = dir.clone();
        let handle = std::thread::spawn(move || {
            let t = Instant::now();
            // Three writers side by side, each encoding and compressing on a thread of its
            // own: once the run has nothing else to do, the night waits for the longest of
            // them, not for their sum on one core.
            let timed = |what: &'static str, write: &dyn Fn() -> Result<()>| {
                let t = Instant::now();
                write()?;
                tracing::debug!(what, ms = t.elapsed().as_millis() as u64, "state written");
                Ok(())
            };
            let written: Vec<std::thread::Result<Result<()>>> = std::thread::scope(|s| {
                [
                    s.spawn(|| timed("night", &|| night.write(&to, None))),
                    s.spawn(|| timed("events and sessions", &|| events.write(&to.join(STAGE_DIR)))),
                    s.spawn(|| timed("increment", &|| increment.write(&history, &to))),
                ]
                .into_iter()
                .map(|h| h.join())
                .collect()
            });
            for w in written {
                w.map_err(|_| crate::error::Error::Io {
                    context: "writing the night's state".into(),
                    source: std::io::Error::other("a writer thread panicked"),
                })??;
            }
            info!(
                ms = t.elapsed().as_millis() as u64,
                "the night's state kept"
            );
            Ok(())
        });
        Ok(Keeping {
            dir,
            handle: Some(handle),
        })
    }

    /// Waits until the files are written: before publishing, so that a night whose state
    /// cannot be kept is not published either.
    fn wait(&mut self) -> Result<()> {
        if let Some(h) = self.handle.take() {
            h.join().map_err(|_| crate::error::Error::Io {
                context: "writing the night's state".into(),
                source: std::io::Error::other("the writer thread panicked"),
            })??;
        }
        Ok(())
    }

    /// The night's sessions as published (`write_events_and_sessions`), once written.
    fn sessions(&mut self) -> Result<PathBuf> {
        self.wait()?;
        Ok(self
            .dir
            .join(STAGE_DIR)
            .join(format!("{SESSIONS_FRAME}.parquet")))
    }

    /// Moves what was written into `night`, the directory of the night being committed.
    fn finish(&mut self, night: &std::path::Path) -> Result<()> {
        self.wait()?;
        for entry in std::fs::read_dir(&self.dir).ctx(format!("listing {}", self.dir.display()))? {
            let entry = entry.ctx("listing the kept state")?;
            std::fs::rename(entry.path(), night.join(entry.file_name())).ctx(format!(
                "moving {} into the night",
                entry.file_name().to_string_lossy()
            ))?;
        }
        Ok(())
    }
}

impl Drop for Keeping {
    /// A run that fails (or a model that is refused) leaves nothing beside the nights.
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stage results stored under `<state>/cache/`, named by the SHA-256 of everything they
/// depend on (propel's version, the events, the definitions, the cutoffs), so a rerun whose
/// inputs did not change reuses them and gives the same bytes.
#[derive(Clone)]
struct Cache {
    dir: PathBuf,
    events: String,
}

impl Cache {
    /// Entries kept per kind (the newest).
    const KEEP: usize = 4;

    fn path(&self, kind: &str, key: &str, ext: &str) -> PathBuf {
        let digest = crate::util::sha256_hex(&format!(
            "{}\n{}\n{key}",
            env!("CARGO_PKG_VERSION"),
            self.events
        ));
        self.dir.join(format!("{kind}-{}.{ext}", &digest[..32]))
    }

    /// Whether `name` is an entry being written (`store`), not an entry.
    fn writing(name: &str) -> bool {
        name.contains(".tmp-")
    }

    /// Removes what a run that crashed was writing into the cache under `state` (the lock is
    /// held: no live run writes there).
    fn clear_torn(state: &std::path::Path) -> Result<()> {
        let dir = state.join("cache");
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            entries => entries.ctx(format!("listing {}", dir.display()))?,
        };
        for entry in entries {
            let entry = entry.ctx(format!("listing {}", dir.display()))?;
            if Self::writing(&entry.file_name().to_string_lossy()) {
                std::fs::remove_file(entry.path())
                    .ctx(format!("removing {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    fn prune(&self, kind: &str) -> Result<()> {
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)
            .ctx("listing the cache")?
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.starts_with(&format!("{kind}-")) && !Self::writing(&name)
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        entries.sort();
        for (_, old) in entries.iter().rev().skip(Self::KEEP) {
            std::fs::remove_file(old).ctx(format!("removing {}", old.display()))?;
        }
        Ok(())
    }

    /// Writes `bytes` aside, then renames: a crash never leaves a torn entry.
    fn store(
        &self,
        path: &std::path::Path,
        write: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).ctx(format!("creating {}", self.dir.display()))?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        write(&tmp)?;
        std::fs::rename(&tmp, path).ctx(format!("writing {}", path.display()))
    }

    fn json<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let path = self.path(kind, key, "json");
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(value) = serde_json::from_str(&text)
        {
            info!(kind, "reused from the cache");
            return Ok(value);
        }
        let value = compute()?;
        let text = serde_json::to_string(&value).expect("json");
        self.store(&path, |tmp| {
            std::fs::write(tmp, &text).ctx("writing the cache")
        })?;
        self.prune(kind)?;
        Ok(value)
    }
}

/// Ingest, identity, sessions and the customers' history: from the files loaded since the
/// night before, combined with its state, when that gives what reading every file would
/// (`prepare_incremental`); otherwise from every file. With `shard`, the events, sessions
/// and history kept are that shard's customers' (identity always resolves the whole night),
/// and every file is read.
fn prepare(
    inputs: &[InputDef],
    as_of: Option<NaiveDate>,
    job: &Job,
    state: &crate::state::StateDir,
    shard: Option<Shard>,
    full_refresh: bool,
    timer: &mut Timer,
) -> Result<Prepared> {
    let reason = if full_refresh {
        "--full-refresh".to_string()
    } else if shard.is_some() {
        "shards read every file".to_string()
    } else if !suppression(job)?.is_empty() {
        // The identity graph forgets suppressed people: only every file tells whether an
        // identifier seen tonight is one of theirs.
        "a suppression list is configured".to_string()
    } else {
        match night_before(state, as_of, job)? {
            Err(why) => why,
            Ok(before) => match prepare_incremental(inputs, as_of, job, before, state, timer)? {
                Ok(prep) => return Ok(prep),
                Err(why) => why,
            },
        }
    };
    info!(reason = %reason, "reading every event file");
    prepare_full(inputs, as_of, job, state, shard, reason, timer)
}

fn suppression(job: &Job) -> Result<identity::Suppression> {
    match &job.suppression {
        Some(p) => identity::Suppression::load(p),
        None => Ok(identity::Suppression::default()),
    }
}

fn warn_shared(resolved: &identity::Resolved) {
    if resolved.shared.height() > 0 {
        tracing::warn!(
            count = resolved.shared.height(),
            "shared identifiers ignored by the identity guards (see identity_shared.parquet)"
        );
    }
}

/// `prepare` from every file.
fn prepare_full(
    inputs: &[InputDef],
    as_of: Option<NaiveDate>,
    job: &Job,
    state: &crate::state::StateDir,
    shard: Option<Shard>,
    reason: String,
    timer: &mut Timer,
) -> Result<Prepared> {
    info!(inputs = ?inputs, "ingest");
    let memory = ingest::Memory {
        hold_up_to: crate::buckets::write_buckets_above(job),
        rows_per_bucket: job.events_per_bucket,
        // Under the state location, where a crashed run's leftovers are cleared; a shard
        // (which may run beside others on the same state) writes under the system's temporary
        // directory, since its own directory is named by the night ingest finds.
        scratch: match shard {
            Some(_) => None,
            None => Some(state.root().to_path_buf()),
        },
    };
    let ingest::Ingested {
        events,
        quarantine,
        counts,
        as_of,
        new_keys,
        state: ingest_state,
    } = ingest::ingest_with(inputs, as_of, &job.quality, &memory)?;
    let files = ingest_state.files.clone();
    // A shard keeps no ingest state or event keys.
    let ingest_frames = match shard {
        Some(_) => None,
        None => Some((
            IngestFrames::of(
                ingest_state,
                matches!(events, ingest::Events::Aside(_)),
                state.root(),
            )?,
            NewKeys::of(new_keys, state.root())?,
        )),
    };
    timer.lap("ingest");

    let previous = match state.before(as_of)? {
        Some(dir) => identity::IdentityState::load(&dir)?,
        None => None,
    };
    // Sessions and history a bucket of customers at a time; the events are written to disk as
    // they go.
    let scratch_root = &match shard {
        Some(shard) => shard.dir(state, as_of),
        None => state.root().to_path_buf(),
    };
    let scratch = NightEvents::scratch(scratch_root)?;
    let (resolved, first_day, bucketed): (NightIdentity, _, _) = match events {
        ingest::Events::Memory(raw) => {
            let (resolved, resolved_events) = identity::resolve(
                &raw,
                previous.as_ref(),
                &job.identity_limits,
                &suppression(job)?,
            )?;
            warn_shared(&resolved);
            // The resolved rows share their columns with the raw ones: let them go, so that
            // the columns sessionising rewrites are the only copy.
            drop(raw);
            let first_day = (resolved_events.height() > 0)
                .then(|| crate::util::event_date_range(&resolved_events))
                .transpose()?
                .map(|(first, _)| first)
                .ok_or(crate::error::InputError::AllSuppressed { used: counts.used })?;
            let events = match shard {
                Some(shard) => shard.select(resolved_events)?,
                None => resolved_events,
            };
            timer.lap("identity");
            let buckets = crate::buckets::buckets_for(events.height(), job.events_per_bucket);
            info!(buckets, "sessions and history");
            let bucketed = crate::buckets::sessions_and_history(events, buckets, job, scratch)?;
            (resolved.into(), first_day, bucketed)
        }
        // Events too many to hold: identity from each bucket's identifier combinations, then
        // each bucket's events, with their customer, written by bucket of customers.
        ingest::Events::Aside(written) => {
            // Each bucket of event ids has most of the night's identifier combinations: they
            // are gathered into one set (`CombinationSet`).
            let mut combinations = identity::CombinationSet::default();
            let mut laps = crate::util::Laps::start("identity");
            for bucket in 0..written.buckets() {
                let columns = identity::COMBINATION_COLUMNS;
                let Some(part) = written.read_columns(bucket, Some(&columns))? else {
                    continue;
                };
                laps.lap("bucket read");
                combinations.add(&part)?;
                drop(part);
                laps.lap("combined");
            }
            let combinations = combinations.finish()?;
            laps.lap("combinations");
            let mut resolved = identity::resolve_combinations(
                combinations,
                previous.as_ref(),
                &job.identity_limits,
                &suppression(job)?,
            )?;
            warn_shared(&resolved);
            let buckets = crate::buckets::CustomerBuckets::cut(
                resolved
                    .customers
                    .column(ev::CUSTOMER_ID)
                    .ctx("customers")?,
                crate::buckets::buckets_for(counts.used, job.events_per_bucket),
            )?;
            let mut by_customer =
                crate::buckets::BucketFiles::create(Some(scratch.path()), buckets.count())?;
            let keys = std::mem::take(&mut resolved.keys);
            let customers = identity::Customers::of(&keys)?;
            // What the night publishes and keeps of identity is written now: the buckets and
            // the stages after them need only the customers.
            let mut resolved = NightIdentity::from(resolved);
            resolved.frames = resolved.frames.write_aside(scratch_root)?;
            let (mut first_day, mut events) = (None, 0);
            let mut written = written;
            for bucket in 0..written.buckets() {
                let Some(part) = written.take(bucket)? else {
                    continue;
                };
                laps.lap("bucket read again");
                let read = part.height();
                let part = identity::customer_ids(part, &customers)?;
                resolved.suppressed_events += read - part.height();
                if part.height() == 0 {
                    continue;
                }
                let day = crate::util::event_date_range(&part)?.0;
                first_day = Some(first_day.map_or(day, |d: NaiveDate| d.min(day)));
                let part = match shard {
                    Some(shard) => shard.select(part)?,
                    None => part,
                };
                events += part.height();
                crate::buckets::append_by_customer(&mut by_customer, &buckets, &part)?;
                laps.lap("written by customer");
            }
            drop((written, customers));
            drop(keys);
            let first_day =
                first_day.ok_or(crate::error::InputError::AllSuppressed { used: counts.used })?;
            timer.lap("identity");
            info!(buckets = buckets.count(), "sessions and history");
            let bucketed = crate::buckets::sessions_and_history_written(
                by_customer.finish()?,
                events,
                job,
                scratch,
            )?;
            (resolved, first_day, bucketed)
        }
    };
    let crate::buckets::Bucketed {
        sessions,
        history,
        events,
        history_took,
        kept,
    } = bucketed;
    timer.lap_before("sessions", history_took);
    let increment = match ingest_frames {
        None => Increment::None,
        Some((ingest_frames, new_keys)) => Increment::New(Box::new(Fresh {
            ingest: ingest_frames,
            new_keys,
            key_files: Vec::new(),
            events_before: Vec::new(),
            history_changes: None,
            renames: DataFrame::new(
                0,
                vec![
                    Column::new_empty(features::RENAME_FROM.into(), &DataType::String),
                    Column::new_empty(features::RENAME_TO.into(), &DataType::String),
                ],
            )
            .ctx("identity renames")?,
            record: IncrementRecord {
                propel_version: env!("CARGO_PKG_VERSION").into(),
                format: STATE_FORMAT,
                definitions: increment_definitions(job),
                as_of,
                events,
                files,
                refresh: Refresh::Full { reason },
                counts: counts.clone(),
                night: counts.clone(),
            },
        })),
    };
    let kept = std::sync::Arc::new(kept);
    let prep = Prepared {
        night: Night::of(as_of, first_day, resolved, quarantine, counts),
        sessions: Sessions::Written {
            kept: kept.clone(),
            rows: sessions,
        },
        fingerprint: history.fingerprint()?,
        history,
        events_used: events,
        events: NightEvents::Written(kept),
        increment,
    };
    timer.lap("history");
    Ok(prep)
}

/// `prepare` from the files loaded since the night before, combined with its state: the
/// same night as one read of every file gives, or why not.
fn prepare_incremental(
    inputs: &[InputDef],
    as_of: Option<NaiveDate>,
    job: &Job,
    before: Before,
    state: &crate::state::StateDir,
    timer: &mut Timer,
) -> Result<std::result::Result<Prepared, String>> {
    info!(inputs = ?inputs, since = %before.record.as_of, "ingest");
    let previous = ingest::Previous {
        state: &before.ingest,
        keys: &before.key_files,
    };
    // A night's new files are read whole (they are one day's).
    let mut ingested = match ingest::ingest_from(
        inputs,
        as_of,
        &job.quality,
        Some(&previous),
        &ingest::Memory::held(),
    )? {
        Ok(i) => i,
        Err(ingest::FullRefresh(why)) => return Ok(Err(why)),
    };
    // The night before's ingest state is the night's now (100M events over 180 days: 1.2 GB
    // held), which is written aside and let go.
    drop(before.ingest);
    if ingested.as_of <= before.record.as_of {
        return Ok(Err(format!(
            "the as-of date {} is not after the night before's ({})",
            ingested.as_of, before.record.as_of
        )));
    }
    let ingest_frames = {
        let kept = ingest::IngestState {
            files: Vec::new(),
            sessions: std::mem::replace(
                &mut ingested.state.sessions,
                ingest::SessionStarts::Held(DataFrame::empty()),
            ),
            orders: std::mem::take(&mut ingested.state.orders),
            deferred: std::mem::take(&mut ingested.state.deferred),
        };
        IngestFrames::of(kept, false, state.root())?
    };
    let new_keys = NewKeys::of(ingested.new_keys, state.root())?;
    timer.lap("ingest");

    let (resolved, resolved_events) = identity::resolve(
        &ingested.events.frame()?,
        Some(&before.identity),
        &job.identity_limits,
        &suppression(job)?,
    )?;
    // The resolved events and identity are the night's now.
    drop(ingested.events);
    drop(before.identity);
    warn_shared(&resolved);
    let changes = &resolved.changes;
    let split = changes
        .clone()
        .lazy()
        .filter(col("reason").eq(lit("split")))
        .collect()
        .ctx("identity changes")?;
    if let Some(id) = crate::util::strings(&split, "previous_id")?
        .into_iter()
        .next()
    {
        return Ok(Err(format!(
            "identity split customer {} (a guard cut its identifiers apart): its events must be read again",
            id.unwrap_or_default()
        )));
    }
    // A previous id that still names a customer, or that went to two customers, was cut
    // apart: part of its events belongs elsewhere.
    let cut = changes
        .clone()
        .lazy()
        .filter(
            col("previous_id")
                .is_in(
                    lit(resolved
                        .customers
                        .column(ev::CUSTOMER_ID)
                        .ctx("customers")?
                        .as_materialized_series()
                        .clone())
                    .implode(false),
                    false,
                )
                .or(len()
                    .over([col("previous_id")])
                    .ctx("identity changes")?
                    .gt(lit(1))),
        )
        .limit(1)
        .collect()
        .ctx("identity changes")?;
    if let Some(id) = crate::util::strings(&cut, "previous_id")?
        .into_iter()
        .next()
    {
        return Ok(Err(format!(
            "identity cut customer {} apart: its events must be read again",
            id.unwrap_or_default()
        )));
    }
    let rename = changes
        .clone()
        .lazy()
        .select([
            col("previous_id").alias(features::RENAME_FROM),
            col(ev::CUSTOMER_ID).alias(features::RENAME_TO),
        ])
        .collect()
        .ctx("identity changes")?;
    let mut resolved = NightIdentity::from(resolved);
    // A night that reads its state by bucket writes the identity frames and graph aside at
    // once (100M events: 450 MB by polars' estimate, held through the history).
    if matches!(before.kept, Kept::ByBucket { .. }) {
        resolved.frames = resolved.frames.write_aside(state.root())?;
    }
    timer.lap("identity");

    let mut laps = crate::util::Laps::start("incremental");
    let ids = |df: &DataFrame, names: &[&str]| -> Result<Series> {
        let mut all = Series::new_empty(ev::CUSTOMER_ID.into(), &DataType::String);
        for name in names {
            let ids = df
                .column(name)
                .ctx("customer ids")?
                .as_materialized_series();
            all.append(&ids.clone().with_name(ev::CUSTOMER_ID.into()))
                .ctx("customer ids")?;
        }
        all.unique().ctx("customer ids")
    };
    // The gap sessions the night's continue: of the sessions held, carried over to today's
    // ids, or of the night's customers among those kept by bucket.
    let (carry, kept) = match before.kept {
        Kept::Held {
            history,
            changes,
            sessions,
        } => {
            let sessions = match sessions::carried_over(sessions, &rename, &resolved.customers)? {
                Ok(s) => s,
                Err(why) => return Ok(Err(why)),
            };
            laps.lap("carried over");
            let carry = sessions::gap_carry(&sessions)?;
            let kept = Kept::Held {
                history,
                changes,
                sessions,
            };
            (carry, kept)
        }
        Kept::ByBucket { history, sessions } => {
            let customers = ids(&resolved_events, &[ev::CUSTOMER_ID])?;
            let carry = sessions::kept_gap_carry(&sessions, &customers)?;
            (carry, Kept::ByBucket { history, sessions })
        }
    };
    laps.lap("gap carry");
    let (events, sessions_now) = sessions::sessionize(
        resolved_events,
        job.session_inactivity_minutes,
        Some(&carry),
    )?;
    laps.lap("sessionized");
    let sessions_file = format!("{SESSIONS_FRAME}.parquet");
    let (held_history, history_kept, sessions) = match kept {
        Kept::Held {
            history,
            changes,
            sessions,
        } => {
            let sessions = match sessions::combine(sessions, sessions_now)? {
                Ok(s) => s,
                Err(why) => return Ok(Err(why)),
            };
            laps.lap("sessions combined");
            let sessions = Sessions::Aside {
                rows: sessions.height(),
                aside: Aside::start(state.root(), "sessions", move |to| {
                    sessions.write_parquet(&to.join(sessions_file))
                })?,
            };
            (Some((history, changes)), None, sessions)
        }
        // Only the sessions the night continues, and every session of the customers identity
        // merged, are read and combined with the night's; the others are copied as they are.
        Kept::ByBucket { history, sessions } => {
            let merged = ids(&rename, &[features::RENAME_FROM, features::RENAME_TO])?;
            let before = sessions::kept_of(&sessions, &sessions_now, &merged)?;
            laps.lap("sessions read");
            let replaced = sessions::keys(&before)?;
            let before = match sessions::carried_over(before, &rename, &resolved.customers)? {
                Ok(s) => s,
                Err(why) => return Ok(Err(why)),
            };
            laps.lap("carried over");
            let combined = match sessions::combine(before, sessions_now)? {
                Ok(s) => s.gather()?,
                Err(why) => return Ok(Err(why)),
            };
            laps.lap("sessions combined");
            let rows = crate::util::parquet_rows(&sessions)? - replaced.len() + combined.height();
            let aside = Aside::start(state.root(), "sessions", move |to| {
                let written =
                    sessions::merge_kept(&sessions, &replaced, combined, &to.join(sessions_file))?;
                if written != rows {
                    return Err(crate::error::Error::Io {
                        context: "merging the sessions".into(),
                        source: std::io::Error::other(format!(
                            "{written} sessions written, {rows} expected"
                        )),
                    });
                }
                Ok(())
            })?;
            (None, Some(history), Sessions::Aside { rows, aside })
        }
    };
    let kept_events = {
        let events = crate::history::kept_events(&events)?;
        NightEvents::Aside(Aside::start(state.root(), "events", move |to| {
            write_stage_frame(to, EVENTS_FRAME, &events)
        })?)
    };
    timer.lap("sessions");

    let night_history = crate::history::History::build(&events, &job.features, &job.model.label)?;
    let events_used = before.record.events + events.height();
    drop(events);
    // Every customer of the history is the night's (it runs with no suppression list, and
    // identity renames merged ones): should one not be, every file says what the history is.
    // (Filtering the history against the customers anyway copied it: 0.3 s of the 10M night.)
    let not_the_nights = |dropped: Series| {
        format!(
            "{} customers of the history (such as {}) are not among the night's",
            dropped.len(),
            dropped
                .str()
                .ok()
                .and_then(|s| s.get(0))
                .unwrap_or_default()
        )
    };
    let (history, history_changes, first_day) = match (held_history, history_kept) {
        (Some((history, changes)), _) => {
            let (history, changes) = crate::history::History::add_night(
                *history,
                changes,
                night_history,
                &job.features,
                &rename,
            )?;
            laps.lap("history added");
            let dropped = history.dropped(&resolved.customers)?;
            if !dropped.is_empty() {
                return Ok(Err(not_the_nights(dropped)));
            }
            let history_changes = changes
                .worth_keeping(&history)
                .then_some((before.history_dir, changes));
            laps.lap("history checked");
            let first_day = history.first_day()?;
            (
                crate::history::Stored::Held(Box::new(history)),
                history_changes,
                first_day,
            )
        }
        (None, Some(kept)) => {
            let kept = crate::history::KeptByBucket::open(&kept, &job.features)?
                .expect("a history kept by bucket");
            match crate::history::Stored::add_night(
                &kept,
                night_history,
                &job.features,
                &rename,
                &resolved.customers,
                state.root(),
                EVENTS_WRITING,
            )? {
                Ok((history, first_day)) => {
                    laps.lap("history added by bucket");
                    (history, None, first_day)
                }
                Err(dropped) => return Ok(Err(not_the_nights(dropped))),
            }
        }
        (None, None) => unreachable!("the history is held or kept by bucket"),
    };
    let first_day = first_day.expect("a night with events has a first day");
    let files = ingested.state.files.clone();
    // What one read of every file counts and quarantines.
    let counts = cumulative(&before.record.counts, &ingested.counts);
    let quarantine = if ingested.quarantine.height() == 0 {
        before.quarantine
    } else if before.quarantine.height() == 0 {
        ingested.quarantine
    } else {
        // A full read lists them by input, then file and row: a stable sort by input of
        // the nights before's rows followed by tonight's.
        before
            .quarantine
            .vstack(&ingested.quarantine)
            .ctx("quarantined rows")?
            .lazy()
            .sort(
                [ingest::INPUT],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .collect()
            .ctx("quarantined rows")?
    };
    let increment = Increment::New(Box::new(Fresh {
        ingest: ingest_frames,
        new_keys,
        key_files: before.key_files,
        events_before: before.events_before,
        renames: compose_renames(&before.renames, &rename)?,
        history_changes,
        record: IncrementRecord {
            propel_version: env!("CARGO_PKG_VERSION").into(),
            format: STATE_FORMAT,
            definitions: increment_definitions(job),
            as_of: ingested.as_of,
            events: events_used,
            files,
            refresh: Refresh::Incremental {
                from: before.record.as_of,
            },
            counts: counts.clone(),
            night: ingested.counts,
        },
    }));
    let prep = Prepared {
        night: Night::of(ingested.as_of, first_day, resolved, quarantine, counts),
        sessions,
        fingerprint: history.fingerprint()?,
        history,
        events_used,
        events: kept_events,
        increment,
    };
    timer.lap("history");
    Ok(Ok(prep))
}

/// One of `count` slices of the customers, cut by `util::customer_hash`: the per-customer
/// stages (sessions, labels, features, consent) of a night can run as `count` separate
/// processes, on as many machines, and a merge step (`--merge-shards`) trains, scores and
/// publishes from their parts as one run over all customers would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// From 0 to `count - 1`.
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let expected = || format!("expected I/N with 0 <= I < N (e.g. 0/4), found {s:?}");
        let (i, n) = s.split_once('/').ok_or_else(expected)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| expected())?,
            n.trim().parse().map_err(|_| expected())?,
        );
        if index >= count {
            return Err(expected());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Where a shard keeps its part, under the state location.
const SHARDS_DIR: &str = "shards";
const PART_DIR: &str = "part";
const PART_RECORD: &str = "part.json";

impl Shard {
    /// The events of this shard's customers.
    fn select(&self, events: DataFrame) -> Result<DataFrame> {
        let ids = events.select([ev::CUSTOMER_ID]).ctx("customer ids")?;
        let distinct = ids
            .column(ev::CUSTOMER_ID)
            .ctx("customer ids")?
            .as_materialized_series()
            .unique()
            .ctx("customer ids")?;
        let mine: Vec<&str> = distinct
            .str()
            .ctx("customer ids")?
            .iter()
            .flatten()
            .filter(|id| crate::util::customer_hash(id) % self.count as u64 == self.index as u64)
            .collect();
        let mine = Series::new("mine".into(), mine);
        let mask = ids
            .lazy()
            .select([col(ev::CUSTOMER_ID).is_in(lit(mine).implode(false), false)])
            .collect()
            .ctx("selecting the shard's customers")?;
        let mask = mask[0].bool().ctx("shard mask")?.clone();
        crate::util::filter_by_columns(events, &mask)
    }

    /// The directory of this shard of `night`: its lock, and its part once complete.
    fn dir(&self, state: &crate::state::StateDir, night: NaiveDate) -> PathBuf {
        state
            .root()
            .join(SHARDS_DIR)
            .join(night.to_string())
            .join(self.count.to_string())
            .join(self.index.to_string())
    }
}

/// What the per-customer stages (labels, features, consent) produce for the customers of a
/// run, all of them or one shard's; the merge step concatenates the shards' parts.
struct Part {
    snapshots: Snapshots,
    /// Held snapshots being written to the cache beside the later stages (`cached` waits).
    caching: Option<std::thread::JoinHandle<Result<()>>>,
    /// Consent and contact points, sorted by customer.
    contacts: DataFrame,
    sessions: Sessions,
    events: usize,
    /// Keys the model cache: the events' fingerprint (a merge's: of its parts').
    fingerprint: String,
}

/// Everything the snapshots depend on besides the events.
fn snapshots_key(job: &Job, cutoffs: &Cutoffs) -> String {
    format!(
        "{}{:?}{:?}{:?}{}",
        job.features.hash, cutoffs, job.model.label, job.model.population, job.model.horizon_days
    )
}

/// Labels, features and consent for the customers of `prep`, a part of its history (a
/// bucket of customers, when it was written by bucket) at a time. The snapshots of a history
/// written by bucket are written by bucket too, into the cache, and never held.
fn per_customer(
    prep: &Prepared,
    job: &Job,
    cutoffs: &Cutoffs,
    cache: &Cache,
    timer: &mut Timer,
) -> Result<Part> {
    let history = &prep.history;
    let parts = history.parts();
    let mut contacts = Vec::with_capacity(parts);
    // The labels join the features as they are computed (below).
    timer.lap("labels");
    // Features, labels and contact points of a part of the history.
    let of = |part: &crate::history::History| -> Result<(DataFrame, DataFrame)> {
        let positives = labels::positives(
            &part.labels,
            &cutoffs.labelled_micros(),
            job.model.horizon_days,
            &job.model.label,
        )?;
        let snapshots = features::compute_from(
            &part.daily,
            &cutoffs.all_micros(),
            &job.features,
            job.model.population,
        )?
        .join(
            positives,
            [col(ev::CUSTOMER_ID), col(output::CUTOFF)],
            [col(ev::CUSTOMER_ID), col(output::CUTOFF)],
            crate::util::left_join_ordered(),
        )
        .with_column(col(output::LABEL).fill_null(lit(false)))
        .collect()
        .ctx("computing features")?;
        Ok((
            snapshots,
            crate::consent::contacts(&part.signals, &job.privacy)?,
        ))
    };
    // A rerun from the features stage reuses results whose inputs did not change (the kept
    // events, the definitions, the cutoffs): editing one file recomputes what depends on it.
    let cached = cache.path("snapshots", &snapshots_key(job, cutoffs), "parquet");
    let mut caching = None;
    let snapshots = if cached.exists() {
        info!(kind = "snapshots", "reused from the cache");
        for i in 0..parts {
            contacts.push(crate::consent::contacts(
                &history.signals(i)?,
                &job.privacy,
            )?);
        }
        Snapshots::file(cached.clone())?
    } else {
        let started = std::time::Instant::now();
        let snapshots = match history {
            crate::history::Stored::Held(history) => {
                let (snapshots, part_contacts) = of(history)?;
                contacts.push(part_contacts);
                let snapshots = Snapshots::Held(snapshots);
                // Written to the cache while the later stages read them from memory.
                let (to, held, cache) = (cached.clone(), snapshots.clone(), cache.clone());
                caching = Some(std::thread::spawn(move || {
                    cache.store(&to, |tmp| held.write(tmp))?;
                    cache.prune("snapshots")
                }));
                snapshots
            }
            crate::history::Stored::Written(written) => {
                let mut writer = crate::snapshots::Writer::create(written.dir())?;
                for i in 0..parts {
                    let (snapshots, part_contacts) = of(&*history.part(i, &job.features)?)?;
                    writer.add(&snapshots)?;
                    contacts.push(part_contacts);
                }
                cache.store(&cached, |tmp| writer.finish(tmp))?;
                cache.prune("snapshots")?;
                Snapshots::file(cached.clone())?
            }
        };
        tracing::debug!(
            kind = "snapshots",
            ms = started.elapsed().as_millis() as u64,
            "computed and cached"
        );
        snapshots
    };
    let contacts = if contacts.len() == 1 {
        contacts.remove(0)
    } else {
        // Buckets of customers in order: appended, they are sorted.
        stacked(contacts, "contacts")?.collect().ctx("contacts")?
    };
    Ok(Part {
        snapshots,
        caching,
        contacts,
        sessions: prep.sessions.clone(),
        events: prep.events_used,
        fingerprint: prep.fingerprint.clone(),
    })
}

/// The rows of `frames`, one after the other.
fn stacked(frames: Vec<DataFrame>, what: &str) -> Result<LazyFrame> {
    concat(
        frames.into_iter().map(DataFrame::lazy).collect::<Vec<_>>(),
        UnionArgs::default(),
    )
    .ctx(what.to_string())
}

/// `part.json`: which night, shard and definitions a shard's part was computed for.
#[derive(Serialize, serde::Deserialize)]
struct PartRecord {
    propel_version: String,
    as_of: NaiveDate,
    shard: usize,
    shards: usize,
    /// `Night::digest`: every shard of a night must have seen the same night.
    night: String,
    /// `starts_from`: the state the night started from, which the merge starts from too.
    starts_from: Option<String>,
    /// `shard_definitions`: what the shard's stages were computed with.
    definitions: String,
    events: usize,
    fingerprint: String,
}

/// Everything a shard's stages depend on besides the events: the snapshots' definitions and
/// cutoffs, and the sessions', consent's, quality rules' and identity's settings.
fn shard_definitions(job: &Job, cutoffs: &Cutoffs) -> String {
    crate::util::sha256_hex(&format!(
        "{}\n{}\n{:?}\n{:?}\n{:?}\n{:?}",
        snapshots_key(job, cutoffs),
        job.session_inactivity_minutes,
        job.privacy,
        job.quality,
        job.identity_limits,
        job.suppression
    ))
}

/// Digest of the state a run as of `as_of` starts from (the files of the night before it:
/// identity graph, model, audience members, profiles), or `None` for a first night.
fn starts_from(state: &crate::state::StateDir, as_of: NaiveDate) -> Result<Option<String>> {
    let Some(dir) = state.before(as_of)? else {
        return Ok(None);
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ctx(format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for file in files {
        hasher.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update(&std::fs::read(&file).ctx(format!("reading {}", file.display()))?);
    }
    Ok(Some(hasher.finalize().to_hex().to_string()))
}

/// Hidden entries of a shard's directory: a part being written, a part being replaced.
const PART_PENDING: &str = ".pending-part-";
const PART_REPLACED: &str = ".replaced-part-";

impl Part {
    /// Waits until the snapshots are in the cache (a run waits before it publishes, so that
    /// a cache that cannot be written fails the run, as it did when written in turn).
    fn cached(&mut self) -> Result<()> {
        match self.caching.take() {
            Some(h) => h.join().map_err(|_| crate::error::Error::Io {
                context: "writing the snapshots to the cache".into(),
                source: std::io::Error::other("the writer thread panicked"),
            })?,
            None => Ok(()),
        }
    }

    /// Writes a shard's part (with what `--from-stage features --shard` restarts from) into
    /// its directory `dir`, whose lock the caller holds: aside first, then renamed into place
    /// (a crash leaves the old part, or none, which the merge reports as not completed).
    fn write(&self, prep: &Prepared, record: &PartRecord, dir: &std::path::Path) -> Result<()> {
        clear_aside(
            dir,
            &[PART_PENDING, PART_REPLACED, EVENTS_WRITING],
            prep.events.scratch_dir(),
        )?;
        let pending = dir.join(format!("{PART_PENDING}{}", std::process::id()));
        prep.write(&pending)?;
        self.snapshots
            .write(&pending.join(format!("{SNAPSHOTS_FRAME}.parquet")))?;
        write_stage_frame(&pending, CONTACTS_FRAME, &self.contacts)?;
        std::fs::write(
            pending.join(PART_RECORD),
            serde_json::to_string_pretty(record).expect("json") + "\n",
        )
        .ctx("writing part.json")?;
        let part = dir.join(PART_DIR);
        if part.exists() {
            let aside = dir.join(format!("{PART_REPLACED}{}", std::process::id()));
            std::fs::rename(&part, &aside).ctx(format!("moving aside {}", part.display()))?;
            std::fs::rename(&pending, &part).ctx(format!("writing {}", part.display()))?;
            std::fs::remove_dir_all(&aside).ctx(format!("removing {}", aside.display()))
        } else {
            std::fs::rename(&pending, &part).ctx(format!("writing {}", part.display()))
        }
    }
}

/// The night and the merged parts of its `count` shards, checked to belong together: every
/// shard present, the same night, started from the state the merge starts from, computed
/// with the merge's definitions and cutoffs (none to train on when `training` reuses the
/// model in production). The shards' locks are held while their parts are read.
fn merge_parts(
    state: &crate::state::StateDir,
    as_of: NaiveDate,
    count: usize,
    job: &Job,
    training: &Training,
) -> Result<(Night, Cutoffs, Part)> {
    let problem = |dir: &std::path::Path, message: String| -> crate::error::Error {
        crate::error::ConfigError::one(dir.display().to_string(), message).into()
    };
    let mut parts = Vec::with_capacity(count);
    let mut _locks = Vec::with_capacity(count);
    for index in 0..count {
        let shard = Shard { index, count };
        _locks.push(crate::publish::RunLock::acquire(&shard.dir(state, as_of))?);
        let dir = shard.dir(state, as_of).join(PART_DIR);
        let rerun = format!("`propel run --shard {shard} --as-of {as_of}` (same job)");
        let text = std::fs::read_to_string(dir.join(PART_RECORD)).map_err(|_| {
            problem(
                &dir,
                format!("shard {shard} of the night {as_of} has not completed: run {rerun} before the merge"),
            )
        })?;
        let record: PartRecord = serde_json::from_str(&text).map_err(|e| {
            problem(
                &dir,
                format!("part.json of shard {shard} is unreadable ({e}; another propel version?): rerun {rerun}"),
            )
        })?;
        if record.propel_version != env!("CARGO_PKG_VERSION") {
            return Err(problem(
                &dir,
                format!(
                    "shard {shard} ran propel {}, this merge is {}: rerun {rerun}",
                    record.propel_version,
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        parts.push((shard, dir, record));
    }
    let (night, _) = Night::load(&parts[0].1, as_of)?;
    let digest = night.digest()?;
    let cutoffs = training.cutoffs(night.cutoffs(job)?);
    let definitions = shard_definitions(job, &cutoffs);
    let start = starts_from(state, as_of)?;
    for (shard, dir, record) in &parts {
        let rerun = "rerun every shard of the night, then the merge";
        if record.starts_from != start {
            return Err(problem(
                dir,
                format!(
                    "shard {shard} started from another state than this merge (a night before \
                     {as_of} was run or rerun since): {rerun}"
                ),
            ));
        }
        if record.night != digest {
            return Err(problem(
                dir,
                format!(
                    "shard {shard} saw another night than shard 0/{count} (other events or \
                     identity settings): {rerun} with the same inputs"
                ),
            ));
        }
        if record.definitions != definitions {
            return Err(problem(
                dir,
                format!(
                    "shard {shard} was computed with other features, labels, cutoffs, sessions, \
                     consent or quality settings than this job: {rerun} with the merge's job files"
                ),
            ));
        }
    }
    // The sessions are in each part's stage, the snapshots and contacts beside it.
    let sorted = |name: &str, by: &[&str]| -> Result<DataFrame> {
        let frames = parts
            .iter()
            .map(|(_, dir, _)| {
                let at = if name == SESSIONS_FRAME {
                    dir.join(STAGE_DIR)
                } else {
                    dir.clone()
                };
                Ok(read_stage_frame(&at, name)?.lazy())
            })
            .collect::<Result<Vec<_>>>()?;
        concat(frames, UnionArgs::default())
            .and_then(|all| all.sort(by.to_vec(), Default::default()).collect())
            .ctx(format!("merging the shards' {name}"))
    };
    let fingerprints: Vec<&str> = parts.iter().map(|p| p.2.fingerprint.as_str()).collect();
    let part = Part {
        snapshots: Snapshots::Held(sorted(SNAPSHOTS_FRAME, &[output::CUTOFF, ev::CUSTOMER_ID])?),
        caching: None,
        contacts: sorted(CONTACTS_FRAME, &[ev::CUSTOMER_ID])?,
        sessions: Sessions::Frame(sorted(
            SESSIONS_FRAME,
            &[ev::CUSTOMER_ID, sessions::START, ev::SESSION_ID],
        )?),
        events: parts.iter().map(|p| p.2.events).sum(),
        fingerprint: crate::util::sha256_hex(&fingerprints.join("\n")),
    };
    Ok((night, cutoffs, part))
}

/// What a shard run did.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSummary {
    pub as_of: NaiveDate,
    pub shard: String,
    pub customers: usize,
    pub events: usize,
    pub part: PathBuf,
}

/// Runs the per-customer stages for one shard of the customers and keeps its part for the
/// merge step; publishes nothing and leaves the night's state as it is.
pub fn run_shard(opts: &RunOptions, shard: Shard) -> Result<ShardSummary> {
    let (job, inputs, _, state_dir) = settings(opts)?;
    let state = crate::state::StateDir::new(state_dir);
    let mut timer = Timer::start(opts.as_of);
    let lock = |as_of: NaiveDate| crate::publish::RunLock::acquire(&shard.dir(&state, as_of));
    // The state the shard starts from, read when its identity is resolved.
    let (prep, start, _lock) = match opts.from_stage {
        Stage::Ingest => {
            let early = opts.as_of.map(lock).transpose()?;
            let start = opts.as_of.map(|d| starts_from(&state, d)).transpose()?;
            let prep = prepare(
                &inputs,
                opts.as_of,
                &job,
                &state,
                Some(shard),
                true,
                &mut timer,
            )?;
            let (held, start) = match (early, start) {
                (Some(held), Some(start)) => (held, start),
                _ => (
                    lock(prep.night.as_of)?,
                    starts_from(&state, prep.night.as_of)?,
                ),
            };
            (prep, start, held)
        }
        Stage::Features => {
            let as_of = opts.as_of.ok_or_else(|| {
                crate::error::ConfigError::one(
                    "--as-of",
                    "--from-stage features with --shard needs the night's --as-of",
                )
            })?;
            let held = lock(as_of)?;
            let part = shard.dir(&state, as_of).join(PART_DIR);
            let prep = Prepared::load(&part, as_of, &job, &shard.dir(&state, as_of))?;
            let kept: PartRecord = std::fs::read_to_string(part.join(PART_RECORD))
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .ok_or_else(|| nothing_kept(&part, as_of))?;
            for stage in ["ingest", "identity", "sessions", "history"] {
                timer.lap(stage);
            }
            (prep, kept.starts_from, held)
        }
    };
    let as_of = prep.night.as_of;
    // A night that reuses the model in production needs no training snapshots; the merge
    // decides the same from the same state.
    let training = Training::plan(&job, state.before(as_of)?.as_deref(), as_of)?;
    let cutoffs = training.cutoffs(prep.night.cutoffs(&job)?);
    // Shards run side by side: each has a cache of its own.
    let cache = Cache {
        dir: shard.dir(&state, as_of).join("cache"),
        events: prep.fingerprint.clone(),
    };
    let mut part = per_customer(&prep, &job, &cutoffs, &cache, &mut timer)?;
    part.cached()?;
    timer.lap("features");
    let record = PartRecord {
        propel_version: env!("CARGO_PKG_VERSION").into(),
        as_of,
        shard: shard.index,
        shards: shard.count,
        night: prep.night.digest()?,
        starts_from: start,
        definitions: shard_definitions(&job, &cutoffs),
        events: part.events,
        fingerprint: part.fingerprint.clone(),
    };
    let dir = shard.dir(&state, as_of);
    part.write(&prep, &record, &dir)?;
    let took = serde_json::json!({
        "propel_version": env!("CARGO_PKG_VERSION"),
        "shard": shard.to_string(),
        "timings_ms": timer.timings,
        "total_ms": timer.began.elapsed().as_millis() as u64,
        "peak_rss_mib": crate::util::peak_rss_mib(),
        "peak_rss_mib_by_stage": timer.peaks,
    });
    std::fs::write(
        dir.join(PART_DIR).join(crate::publish::RUN_RECORD),
        serde_json::to_string_pretty(&took).expect("json") + "\n",
    )
    .ctx("writing the shard's run.json")?;
    info!(shard = %shard, part = %dir.display(), "shard part kept for the merge");
    Ok(ShardSummary {
        as_of,
        shard: shard.to_string(),
        customers: part.contacts.height(),
        events: part.events,
        part: dir.join(PART_DIR),
    })
}

/// The newest night that has shard parts in `state`, for a merge without `--as-of`.
fn newest_sharded_night(state: &crate::state::StateDir) -> Result<NaiveDate> {
    let dir = state.root().join(SHARDS_DIR);
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            NaiveDate::parse_from_str(&e.file_name().to_string_lossy(), "%Y-%m-%d").ok()
        })
        .max()
        .ok_or_else(|| {
            crate::error::ConfigError::one(
                dir.display().to_string(),
                "--merge-shards found no shard parts here: run the shards first (--shard I/N)",
            )
            .into()
        })
}

/// Drops the shard parts of nights older than every night kept in `state`.
fn prune_shards(state: &crate::state::StateDir) -> Result<()> {
    let Some(oldest) = state.nights()?.first().copied() else {
        return Ok(());
    };
    let dir = state.root().join(SHARDS_DIR);
    for entry in std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if NaiveDate::parse_from_str(&name, "%Y-%m-%d").is_ok_and(|night| night < oldest) {
            std::fs::remove_dir_all(entry.path()).ctx(format!("removing shards/{name}"))?;
        }
    }
    Ok(())
}

/// What a run did, for the summary and for tests.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub output_dir: PathBuf,
    pub as_of: NaiveDate,
    pub customers_scored: usize,
    pub validation: Metrics,
    pub audiences: Vec<AudienceReport>,
    pub warnings: Vec<String>,
    pub counts: IngestCounts,
}

#[derive(Serialize)]
struct MetricsFile<'a> {
    propel_version: &'a str,
    as_of: String,
    horizon_days: i64,
    cutoffs: &'a Cutoffs,
    /// Validation metrics of the model that scored this run: auc, pr_auc, log_loss,
    /// brier, ece, lift_top_decile, precision_at_5/10/20, positive_rate, deciles,
    /// calibration_curve.
    #[serde(flatten)]
    validation: &'a Metrics,
    model: ModelSummary<'a>,
    /// Whether this night trained a model or reused the one in production, and why.
    training: &'a Training,
    /// The promotion gate's verdict, on nights that train.
    gate: Option<&'a Gate>,
    n_train: usize,
    n_train_positive: usize,
    n_validation: usize,
    rows: BTreeMap<&'static str, usize>,
    ingest: &'a IngestCounts,
    audiences: &'a [AudienceReport],
    /// Customers by consent to advertising and to e-mail: given, refused, unknown.
    consent: BTreeMap<&'static str, BTreeMap<&'static str, usize>>,
    warnings: &'a [String],
    /// The features that move scores most (mean |contribution| to the log-odds).
    drivers: &'a [crate::report::Driver],
    /// Per feature: null rate, statistics, PSI against the previous night, univariate AUC.
    features: &'a [crate::feature_report::FeatureStat],
}

/// `run.json`: how this execution went (wall-clock time per stage, peak memory, when). It is
/// the one file that differs between two runs of the same night, so it stays out of the
/// manifest; every other output is byte-identical.
#[derive(Serialize)]
struct RunRecord {
    propel_version: &'static str,
    as_of: String,
    started_utc: String,
    finished_utc: String,
    timings_ms: BTreeMap<&'static str, u128>,
    total_ms: u128,
    peak_rss_mib: Option<u64>,
    /// Peak resident memory reached by the end of each stage (MiB): where memory grows.
    peak_rss_mib_by_stage: BTreeMap<&'static str, u64>,
    rows: BTreeMap<&'static str, usize>,
    /// How the night read its events: only the files loaded since the night before
    /// (`incremental`), or every file (`full`, with the reason), and the night's counts
    /// (`metrics.json` counts every file read so far, as one read of them all would).
    #[serde(skip_serializing_if = "Option::is_none")]
    read: Option<NightRead>,
}

#[derive(Serialize)]
struct ModelSummary<'a> {
    kind: &'a str,
    l2: f64,
    calibration: model::Calibration,
    selection: Option<&'a model::Selection>,
}

/// The stages of a run, in order.
pub const STAGES: [&str; 10] = [
    "ingest", "identity", "sessions", "history", "labels", "features", "model", "score",
    "audience", "publish",
];

/// Times the stages and shows them: a `run` span that every log line of the run sits in, with
/// a progress bar of the stages on a terminal.
struct Timer {
    began: Instant,
    start: Instant,
    timings: BTreeMap<&'static str, u128>,
    peaks: BTreeMap<&'static str, u64>,
    /// Page faults and system time at the last lap.
    usage: crate::util::Usage,
    span: tracing::span::EnteredSpan,
}

impl Timer {
    fn start(as_of: Option<NaiveDate>) -> Timer {
        use tracing_indicatif::span_ext::IndicatifSpanExt;
        let span = tracing::info_span!("run", as_of = as_of.map(|d| d.to_string()));
        span.pb_set_style(
            &indicatif::ProgressStyle::with_template(
                "{spinner} propel {span_fields} [{bar:18}] {pos}/{len} {msg} ({elapsed})",
            )
            .expect("valid template"),
        );
        span.pb_set_length(STAGES.len() as u64);
        span.pb_set_message(STAGES[0]);
        Timer {
            began: Instant::now(),
            start: Instant::now(),
            timings: BTreeMap::new(),
            peaks: BTreeMap::new(),
            usage: crate::util::Usage::now(),
            span: span.entered(),
        }
    }

    /// Records the end of `stage`, which ran interleaved with the next one (bucket by
    /// bucket): `next_took` of the time since the last lap was the next stage's.
    fn lap_before(&mut self, stage: &'static str, next_took: std::time::Duration) {
        let next_took = next_took.min(self.start.elapsed());
        self.start += next_took;
        self.lap(stage);
        self.start -= next_took;
    }

    /// Records the end of `stage`; the next one starts.
    fn lap(&mut self, stage: &'static str) {
        use tracing_indicatif::span_ext::IndicatifSpanExt;
        let ms = self.start.elapsed().as_millis();
        let used = self.usage.lap();
        info!(
            stage,
            ms = ms as u64,
            faults = used.faults,
            system_ms = used.system_ms,
            "stage done"
        );
        self.timings.insert(stage, ms);
        if let Some(mib) = crate::util::peak_rss_mib() {
            self.peaks.insert(stage, mib);
        }
        self.start = Instant::now();
        self.span.pb_inc(1);
        if let Some(next) = STAGES.iter().skip_while(|s| **s != stage).nth(1) {
            self.span.pb_set_message(next);
        }
    }
}

/// The model kept in the state location: the one in production.
const MODEL_STATE: &str = "model.json";

/// The state file saying when a model was last trained, and on which definitions.
const TRAINED_STATE: &str = "trained.json";

/// The last night that trained a model (whether or not the gate promoted it), and the
/// definitions of the model in production.
#[derive(Serialize, serde::Deserialize)]
struct LastTrained {
    as_of: NaiveDate,
    /// `training_definitions` of the model in production (empty when unknown).
    definitions: String,
}

/// What a trained model depends on besides the events: propel's version, the feature and
/// model definitions.
fn training_definitions(job: &Job) -> String {
    format!(
        "{} {} {}",
        env!("CARGO_PKG_VERSION"),
        job.features.hash,
        job.model.training_digest()
    )
}

/// Whether a night trains a model or scores with the one in production (`[model]
/// retrain_every_days`), and why.
#[derive(Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
enum Training {
    /// This night trains a model; the promotion gate decides which model scores.
    Trained {
        reason: String,
        /// `training_definitions` of the model in production before, which stays when the
        /// gate keeps it.
        #[serde(skip)]
        before: String,
    },
    /// The model in production scores: the last training was as of `last_trained` on the
    /// same definitions, the next is due on `due`.
    Reused {
        last_trained: NaiveDate,
        due: NaiveDate,
        #[serde(skip)]
        model: Box<Artifact>,
    },
}

impl Training {
    /// Decides for a night as of `as_of` starting from `current_state`.
    fn plan(job: &Job, current_state: Option<&std::path::Path>, as_of: NaiveDate) -> Result<Self> {
        let every = job.model.retrain_every_days;
        let last: Option<LastTrained> = match current_state.map(|d| d.join(TRAINED_STATE)) {
            Some(path) if path.exists() => {
                let text =
                    std::fs::read_to_string(&path).ctx(format!("reading {}", path.display()))?;
                serde_json::from_str(&text).ok()
            }
            _ => None,
        };
        let before = last
            .as_ref()
            .map(|l| l.definitions.clone())
            .unwrap_or_default();
        let train = |reason: String| {
            Ok(Training::Trained {
                reason,
                before: before.clone(),
            })
        };
        if every <= 1 {
            return train("a model is trained every night".into());
        }
        let (Some(dir), Some(last)) = (current_state, last.as_ref()) else {
            return train("the state records no earlier training".into());
        };
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).ctx(format!("reading {}", path.display()))
        };
        let due = last.as_of + chrono::Duration::days(every);
        if as_of >= due {
            return train(format!(
                "due: last trained as of {}, every {every} days",
                last.as_of
            ));
        }
        if last.definitions != training_definitions(job) {
            return train(format!(
                "the model in production was trained on other feature or model definitions (or \
                 another propel version) than this night's; last training as of {}",
                last.as_of
            ));
        }
        let model: Artifact = match serde_json::from_str(&read(MODEL_STATE)?) {
            Ok(model) => model,
            Err(e) => return train(format!("the model in production is unreadable ({e})")),
        };
        Ok(Training::Reused {
            last_trained: last.as_of,
            due,
            model: Box::new(model),
        })
    }

    /// The cutoffs the night needs: none to train on when it reuses the model.
    fn cutoffs(&self, mut cutoffs: Cutoffs) -> Cutoffs {
        if let Training::Reused { .. } = self {
            cutoffs.training.clear();
        }
        cutoffs
    }

    /// What to keep in state for the nights after `as_of`; `promoted`: the gate's verdict on
    /// a night that trained. A model the gate kept keeps its definitions, so a night after a
    /// change of definitions whose new model was refused trains again.
    fn last_trained(&self, job: &Job, as_of: NaiveDate, promoted: bool) -> LastTrained {
        match self {
            Training::Trained { before, .. } => LastTrained {
                as_of,
                definitions: if promoted {
                    training_definitions(job)
                } else {
                    before.clone()
                },
            },
            Training::Reused { last_trained, .. } => LastTrained {
                as_of: *last_trained,
                definitions: training_definitions(job),
            },
        }
    }

    /// One line for the report.
    fn describe(&self, every: i64) -> String {
        match self {
            Training::Trained { reason, .. } => format!("trained this night ({reason})"),
            Training::Reused {
                last_trained,
                due,
                model,
            } => format!(
                "the model in production scores (trained for the validation cutoff {}); the last \
                 training was as of {last_trained}, one every {every} days, the next on {due}",
                model.validation_cutoff
            ),
        }
    }
}

/// The outcome of the promotion gate.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub promoted: bool,
    pub reason: String,
    pub new_auc: f64,
    pub previous_auc: Option<f64>,
    pub tolerance: f64,
    /// The model that scores this run.
    #[serde(skip)]
    pub model: Artifact,
}

/// A new model replaces the previous one unless its validation AUC is worse by more than
/// the tolerance (both measured on this run's validation cutoff); otherwise the previous
/// model scores the run.
pub(crate) fn promotion_gate(
    state_dir: Option<&std::path::Path>,
    new: Artifact,
    x_val: &ndarray::Array2<f64>,
    y_val: &ndarray::Array1<bool>,
    job: &Job,
) -> Result<Gate> {
    let tolerance = job.model.gate_tolerance;
    let new_auc = new.validation.auc;
    let path = state_dir.map(|d| d.join(MODEL_STATE)).unwrap_or_default();
    let gate = |promoted, reason: String, previous_auc, model| Gate {
        promoted,
        reason,
        new_auc,
        previous_auc,
        tolerance,
        model,
    };
    if state_dir.is_none() || !path.exists() {
        return Ok(gate(true, "no previous model".into(), None, new));
    }
    let text = std::fs::read_to_string(&path).ctx(format!("reading {}", path.display()))?;
    let mut previous: Artifact = match serde_json::from_str(&text) {
        Ok(a) => a,
        Err(e) => {
            return Ok(gate(
                true,
                format!("previous model unreadable ({e}); replaced"),
                None,
                new,
            ));
        }
    };
    if let Err(e) = previous.check_features(&new.feature_names, &new.feature_set_hash, &path) {
        return Ok(gate(
            true,
            format!("feature definitions changed, previous model cannot score them: {e}"),
            None,
            new,
        ));
    }
    let p = previous.predict(x_val);
    previous.validation = Metrics::compute(&p, y_val.as_slice().expect("contiguous"));
    let previous_auc = previous.validation.auc;
    if new_auc.is_nan() || (previous_auc.is_finite() && new_auc < previous_auc - tolerance) {
        Ok(gate(
            false,
            format!(
                "validation AUC {new_auc:.4} is below the previous model's {previous_auc:.4} by more than {tolerance}"
            ),
            Some(previous_auc),
            previous,
        ))
    } else {
        Ok(gate(
            true,
            format!("validation AUC {new_auc:.4} vs previous {previous_auc:.4}"),
            Some(previous_auc),
            new,
        ))
    }
}

/// What the model stage hands on: the model that scores this run, measured on the validation
/// cutoff, the gate's verdict when the night trained one, and the validation rows' matrix,
/// labels and scores.
struct Modelled {
    model: Artifact,
    gate: Option<Gate>,
    x_val: ndarray::Array2<f64>,
    y_val: ndarray::Array1<bool>,
    validation_scores: DataFrame,
}

/// The validation rows scored by `model` (validation.parquet).
fn validation_scores(
    validation: &DataFrame,
    model: &Artifact,
    x_val: &ndarray::Array2<f64>,
) -> Result<DataFrame> {
    validation
        .clone()
        .lazy()
        .select([
            col(ev::CUSTOMER_ID),
            col(output::CUTOFF)
                .cast(DataType::Datetime(TimeUnit::Microseconds, None))
                .cast(DataType::Date),
            lit(Series::new(output::SCORE.into(), model.predict(x_val))),
            col(output::LABEL),
        ])
        .collect()
        .ctx("validation scores")
}

/// A night between trainings: the model in production, measured on this night's validation
/// cutoff.
fn reuse_stage(
    mut model: Artifact,
    validation: &DataFrame,
    job: &Job,
    model_state: &std::path::Path,
) -> Result<Modelled> {
    let names = job.features.names();
    model.check_features(&names, &job.features.hash, model_state)?;
    let x_val = model::to_matrix(validation, &names)?;
    let y_val = model::to_labels(validation, output::LABEL)?;
    model.validation = Metrics::compute(
        &model.predict(&x_val),
        y_val.as_slice().expect("contiguous"),
    );
    info!(auc = model.validation.auc, "model in production measured");
    let validation_scores = validation_scores(validation, &model, &x_val)?;
    Ok(Modelled {
        model,
        gate: None,
        x_val,
        y_val,
        validation_scores,
    })
}

/// The snapshots the model stage learns and is measured on, and the cache key of everything
/// they were computed from.
struct ModelRows<'a> {
    train: &'a DataFrame,
    validation: &'a DataFrame,
    key: &'a str,
}

/// Trains on the training snapshots (or reuses the cached model of identical inputs),
/// measures on the validation cutoff, and passes the promotion gate against the model in
/// `current_state` (`model_state` names where it lives, for error messages).
fn model_stage(
    job: &Job,
    cutoffs: &Cutoffs,
    rows: ModelRows,
    cache: &Cache,
    current_state: Option<&std::path::Path>,
    model_state: &std::path::Path,
) -> Result<Modelled> {
    let ModelRows {
        train,
        validation,
        key: snapshots_key,
    } = rows;
    let names = job.features.names();
    let x_train = model::to_matrix(train, &names)?;
    let y_train = model::to_labels(train, output::LABEL)?;
    let train_cutoffs: Vec<i64> = train
        .column(output::CUTOFF)
        .ctx("cutoff")?
        .i64()
        .ctx("cutoff")?
        .iter()
        .map(|c| c.expect("cutoff set"))
        .collect();
    let x_val = model::to_matrix(validation, &names)?;
    let y_val = model::to_labels(validation, output::LABEL)?;
    let model_key = format!("{snapshots_key}{:?}{names:?}", job.model);
    let artifact: Artifact = cache.json("model", &model_key, || {
        let trained = model::train(
            &x_train,
            &y_train,
            &train_cutoffs,
            job.model.horizon_days * crate::util::MICROS_PER_DAY,
            &job.model,
        )?;
        let mut artifact = Artifact {
            propel_version: env!("CARGO_PKG_VERSION").into(),
            kind: match trained.family {
                model::Family::LogisticRegression => "logistic_regression".into(),
                model::Family::GradientBoosting => "gradient_boosting".into(),
            },
            feature_names: names.clone(),
            feature_set_hash: job.features.hash.clone(),
            scaler: trained.scaler,
            coefficients: trained.coefficients,
            intercept: trained.intercept,
            calibration: trained.calibration,
            l2: trained.l2,
            booster: trained.booster,
            selection: trained.selection,
            horizon_days: job.model.horizon_days,
            training_cutoffs: cutoffs.training.iter().map(|d| d.to_string()).collect(),
            validation_cutoff: cutoffs.validation.to_string(),
            n_train: train.height(),
            n_train_positive: y_train.iter().filter(|&&l| l).count(),
            validation: Metrics::compute(&[], &[]),
        };
        let p_val = artifact.predict(&x_val);
        artifact.validation = Metrics::compute(&p_val, y_val.as_slice().expect("contiguous"));
        Ok(artifact)
    })?;
    info!(
        auc = artifact.validation.auc,
        n_train = artifact.n_train,
        "model trained"
    );
    let gate = promotion_gate(current_state, artifact, &x_val, &y_val, job)?;
    if !gate.promoted {
        tracing::warn!(reason = %gate.reason, "new model not promoted: the previous model scores this run");
    }
    // Whatever model scores must have been trained on exactly these feature definitions.
    let model = gate.model.clone();
    model.check_features(&names, &job.features.hash, model_state)?;
    let validation_scores = validation_scores(validation, &model, &x_val)?;
    Ok(Modelled {
        model,
        gate: Some(gate),
        x_val,
        y_val,
        validation_scores,
    })
}

/// Customers by consent decision, for metrics.json.
fn consent_counts(
    table: &DataFrame,
) -> Result<BTreeMap<&'static str, BTreeMap<&'static str, usize>>> {
    use crate::consent::column as cc;
    let mut out = BTreeMap::new();
    for (purpose, ok, why) in [
        ("ads", cc::ADS_OK, cc::ADS_WHY_NOT),
        ("email", cc::EMAIL_OK, cc::EMAIL_WHY_NOT),
    ] {
        let given = table.column(ok).ctx(ok)?.bool().ctx(ok)?.sum().unwrap_or(0) as usize;
        let why = table.column(why).ctx(why)?.str().ctx(why)?.clone();
        let count = |r: &str| why.iter().filter(|v| *v == Some(r)).count();
        out.insert(
            purpose,
            BTreeMap::from([
                ("given", given),
                ("refused", count("refused")),
                ("unknown", count("unknown")),
            ]),
        );
    }
    Ok(out)
}

/// The job a run executes, with the command line's overrides applied: the job, its inputs,
/// the output root and the state location.
fn settings(opts: &RunOptions) -> Result<(Job, Vec<InputDef>, PathBuf, PathBuf)> {
    let mut job = Job::load(opts.job.as_deref())?;
    if let Some(h) = opts.horizon_days {
        if h <= 0 {
            return Err(crate::error::ConfigError::one(
                "--horizon",
                format!("expected a positive number of days, found {h}"),
            )
            .into());
        }
        job.model.horizon_days = h;
    }
    let inputs = if opts.inputs.is_empty() {
        job.inputs.clone()
    } else {
        opts.inputs.clone()
    };
    if inputs.is_empty() && opts.from_stage == Stage::Ingest && opts.merge_shards.is_none() {
        return Err(crate::error::ConfigError(vec![crate::error::ConfigProblem {
            file: "job".into(),
            key: "input.url".into(),
            message:
                "no input: give --input URL (or --flat-input URL), or set input.url in the job file"
                    .into(),
        }])
        .into());
    }
    let output_root = PathBuf::from(opts.output.clone().unwrap_or(job.output.clone()));
    let state_dir = PathBuf::from(
        opts.state
            .clone()
            .or(job.state.clone())
            .unwrap_or_else(|| output_root.join("_state").display().to_string()),
    );
    Ok((job, inputs, output_root, state_dir))
}

/// Runs the whole job; see the module documentation. With `merge_shards`, the per-customer
/// stages come from the parts the shards kept (`run_shard`).
pub fn run(opts: &RunOptions) -> Result<RunSummary> {
    let (job, inputs, output_root, state_dir) = settings(opts)?;
    // One run at a time per output and state location.
    let _locks = [output_root.clone(), state_dir.clone()]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|dir| crate::publish::RunLock::acquire(&dir))
        .collect::<Result<Vec<_>>>()?;
    let started_utc = chrono::Utc::now();
    let mut timer = Timer::start(opts.as_of);
    // What a run that crashed was writing aside (the lock is held: no live run writes there).
    clear_aside(&state_dir, &[STAGE_WRITING, EVENTS_WRITING], None)?;
    Cache::clear_torn(&state_dir)?;

    let state = crate::state::StateDir::new(state_dir.clone());
    let cache = |fingerprint: &str| Cache {
        dir: state.root().join("cache"),
        events: fingerprint.to_string(),
    };
    // The night, the cutoffs, the per-customer stages' results, and the events and sessions
    // to keep in state (not when the shards keep them).
    // Whether the night trains a model or scores with the one in production.
    let plan_training =
        |as_of: NaiveDate| Training::plan(&job, state.before(as_of)?.as_deref(), as_of);
    let (night, training, cutoffs, mut part, mut kept) = match opts.merge_shards {
        Some(count) => {
            let as_of = match opts.as_of {
                Some(d) => d,
                None => newest_sharded_night(&state)?,
            };
            let training = plan_training(as_of)?;
            let (night, cutoffs, part) = merge_parts(&state, as_of, count, &job, &training)?;
            for stage in [
                "ingest", "identity", "sessions", "history", "labels", "features",
            ] {
                timer.lap(stage);
            }
            (night, training, cutoffs, part, None)
        }
        None => {
            let mut prep = match opts.from_stage {
                Stage::Ingest => prepare(
                    &inputs,
                    opts.as_of,
                    &job,
                    &state,
                    None,
                    opts.full_refresh,
                    &mut timer,
                )?,
                Stage::Features => {
                    let as_of = match opts.as_of {
                        Some(d) => d,
                        None => *state.nights()?.last().ok_or_else(|| {
                            crate::error::ConfigError::one(state.root().display().to_string(), "--from-stage features needs a night already run; none is kept here")
                        })?,
                    };
                    let prep = Prepared::load(&state.night(as_of), as_of, &job, state.root())?;
                    for stage in ["ingest", "identity", "sessions", "history"] {
                        timer.lap(stage);
                    }
                    prep
                }
            };
            let read = prep.increment.read();
            let events = match opts.from_stage {
                Stage::Ingest => KeptEvents::Frames {
                    events: prep.events.clone(),
                    sessions: prep.sessions.clone(),
                },
                Stage::Features => KeptEvents::Linked {
                    state: state.root().to_path_buf(),
                    night: prep.night.as_of,
                },
            };
            let keeping = Keeping::start(
                state.root(),
                prep.night.clone(),
                events,
                prep.history.clone(),
                std::mem::replace(&mut prep.increment, Increment::None),
            )?;
            let training = plan_training(prep.night.as_of)?;
            let cutoffs = training.cutoffs(prep.night.cutoffs(&job)?);
            let part = per_customer(&prep, &job, &cutoffs, &cache(&prep.fingerprint), &mut timer)?;
            (prep.night, training, cutoffs, part, Some((keeping, read)))
        }
    };
    info!(training = %training.describe(job.model.retrain_every_days), "model");
    let as_of = night.as_of;
    let current_state = state.before(as_of)?;
    let cache = cache(&part.fingerprint);
    let snapshots_key = snapshots_key(&job, &cutoffs);
    let snapshots = &part.snapshots;
    let validation = snapshots.at(&[date_to_micros(cutoffs.validation)])?;
    let model_state = state.root().join(MODEL_STATE);
    let modelled = match &training {
        Training::Trained { .. } => {
            let train = model::training_rows(
                snapshots.lazy()?,
                &cutoffs.training_micros(),
                job.model.max_training_rows,
            )?;
            timer.lap("features");
            model_stage(
                &job,
                &cutoffs,
                ModelRows {
                    train: &train,
                    validation: &validation,
                    key: &snapshots_key,
                },
                &cache,
                current_state.as_deref(),
                &model_state,
            )?
        }
        Training::Reused { model, .. } => {
            timer.lap("features");
            reuse_stage((**model).clone(), &validation, &job, &model_state)?
        }
    };
    let Modelled {
        model: artifact,
        gate,
        x_val,
        y_val,
        validation_scores,
    } = modelled;
    let names = job.features.names();
    // What the feature report needs of the validation snapshot; the snapshot and its matrix
    // go before the scoring snapshot is read (at 100M events each takes 0.7 GB).
    let validation_aucs =
        crate::feature_report::univariate_aucs(&x_val, y_val.as_slice().expect("contiguous"));
    drop((validation, x_val, y_val));
    timer.lap("model");

    let scoring = snapshots
        .at(&[date_to_micros(cutoffs.scoring)])?
        .drop_many([output::CUTOFF, output::LABEL]);
    let score::Scored {
        scores,
        contributions,
    } = score::score(&scoring, &artifact, &night.customers, job.model.reasons)?;
    timer.lap("score");

    let staging = Staging::create(&output_root, &as_of.to_string())?;
    let ranked = score::ranked(&scores)?;
    // The scores with the features the audiences' rules read, and consent.
    let rules_read: Vec<PlSmallStr> = job
        .audiences
        .audiences
        .iter()
        .filter_map(|a| a.rule.as_ref())
        .flat_map(|(_, rule)| rule.clone().meta().root_names())
        .filter(|c| names.iter().any(|n| n == c.as_str()))
        .chain([ev::CUSTOMER_ID.into()])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let table = ranked
        .clone()
        .lazy()
        .join(
            scoring.select(rules_read).ctx("audience rules")?.lazy(),
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            crate::util::left_join_ordered(),
        )
        .join(
            part.contacts.clone().lazy(),
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            crate::util::left_join_ordered(),
        )
        .with_columns([
            col(crate::consent::column::ADS_OK).fill_null(lit(false)),
            col(crate::consent::column::EMAIL_OK).fill_null(lit(false)),
        ])
        .collect()
        .ctx("joining scores, features and consent")?;
    let previous_members = match &current_state {
        Some(dir) if dir.join(audience::MEMBERS_STATE).exists() => Some(crate::util::read_parquet(
            &dir.join(audience::MEMBERS_STATE),
        )?),
        _ => None,
    };
    let delivered = audience::deliver(
        &table,
        &job.audiences,
        &job.privacy,
        previous_members.as_ref(),
        &staging.dir,
    )?;
    let mut warnings = job.audiences.skipped.clone();
    warnings.extend(delivered.warnings.iter().cloned());
    let previous_profiles: Option<Vec<crate::feature_report::Profile>> = match &current_state {
        Some(dir) if dir.join(crate::feature_report::PROFILE_STATE).exists() => {
            let path = dir.join(crate::feature_report::PROFILE_STATE);
            let text = std::fs::read_to_string(&path).ctx(format!("reading {}", path.display()))?;
            serde_json::from_str(&text).ok()
        }
        _ => None,
    };
    let (feature_stats, profiles) = crate::feature_report::report(
        &names,
        &scoring,
        &validation_aucs,
        previous_profiles.as_deref(),
    )?;
    for f in feature_stats.iter().filter(|f| f.drift == "warning") {
        warnings.push(format!(
            "feature {} drifted: PSI {:.2} against the previous night (above {})",
            f.name,
            f.psi.unwrap_or_default(),
            crate::feature_report::PSI_WARNING
        ));
    }
    if let Some(gate) = gate.as_ref().filter(|g| !g.promoted) {
        warnings.push(format!("new model not promoted: {}", gate.reason));
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let audiences = delivered.reports.clone();
    let consent = consent_counts(&table)?;
    let describe = |name: &str| {
        job.features
            .features
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.description.clone())
            .unwrap_or_default()
    };
    let drivers = crate::report::drivers(&artifact, &contributions, describe, 10);
    let exclusions: BTreeMap<String, usize> = BTreeMap::from([
        (
            "no_ad_consent".to_string(),
            consent["ads"]["refused"] + consent["ads"]["unknown"],
        ),
        (
            "no_email_consent".to_string(),
            consent["email"]["refused"] + consent["email"]["unknown"],
        ),
        ("suppressed".to_string(), night.suppressed_customers),
    ]);
    crate::report::write(
        &staging.dir,
        &crate::report::Summary {
            as_of: as_of.to_string(),
            propel_version: env!("CARGO_PKG_VERSION"),
            customers_scored: scores.height(),
            horizon_days: job.model.horizon_days,
            auc: artifact.validation.auc,
            pr_auc: artifact.validation.pr_auc,
            base_rate: artifact.validation.positive_rate,
            ece: artifact.validation.ece,
            lift_top_decile: artifact.validation.lift_top_decile,
            model_kind: artifact.kind.clone(),
            promoted: gate.as_ref().map(|g| g.promoted),
            gate_reason: gate.as_ref().map(|g| g.reason.clone()),
            training: training.describe(job.model.retrain_every_days),
            validation_cutoff: cutoffs.validation.to_string(),
            n_validation: artifact.validation.n,
        },
        &scores
            .column(output::SCORE)
            .ctx("score")?
            .f64()
            .ctx("score")?
            .into_no_null_iter()
            .collect::<Vec<_>>(),
        &artifact.validation,
        &audiences,
        &drivers,
        &exclusions,
        &warnings,
        &feature_stats,
    )?;
    timer.lap("audience");

    // The sessions a night keeps are the file it publishes; linking them waits until the
    // night's state is written, so that a night whose state cannot be kept is not published.
    match kept.as_mut() {
        Some((keeping, _)) => {
            link_or_copy(&keeping.sessions()?, &staging.path("sessions.parquet"))?
        }
        None => part.sessions.write(&staging.path("sessions.parquet"))?,
    }
    for (name, df) in [
        ("scores", &scores),
        ("features", &scoring),
        ("validation", &validation_scores),
        ("quarantine", &night.quarantine),
    ] {
        // An empty quarantine is no file: nothing was quarantined.
        if name != "quarantine" || df.height() > 0 {
            let mut df = df.clone();
            if name == "quarantine" {
                df = df.drop(ingest::INPUT).ctx("quarantine")?;
            }
            write_parquet(&df, &staging.path(&format!("{name}.parquet")))?;
        }
    }
    night.identity.publish(&staging.dir)?;
    let model_dir = staging.path("model");
    std::fs::create_dir_all(&model_dir).ctx("creating model/")?;
    std::fs::write(
        model_dir.join("model.json"),
        serde_json::to_string_pretty(&artifact).expect("json") + "\n",
    )
    .ctx("writing model/model.json")?;
    let mut rows = BTreeMap::new();
    rows.insert("events", part.events);
    let [identifiers, merges, shared] = night.identity.rows();
    rows.insert("identifiers", identifiers);
    rows.insert("customers", night.customers.height());
    rows.insert("sessions", part.sessions.rows());
    rows.insert("snapshot_rows", snapshots.rows());
    rows.insert("scored", scores.height());
    rows.insert("identity_merges", merges);
    rows.insert("identity_shared_identifiers", shared);
    rows.insert("suppressed_customers", night.suppressed_customers);
    rows.insert("suppressed_events", night.suppressed_events);
    timer.lap("publish");
    let metrics = MetricsFile {
        propel_version: env!("CARGO_PKG_VERSION"),
        as_of: as_of.to_string(),
        horizon_days: job.model.horizon_days,
        cutoffs: &cutoffs,
        validation: &artifact.validation,
        model: ModelSummary {
            kind: &artifact.kind,
            l2: artifact.l2,
            calibration: artifact.calibration,
            selection: artifact.selection.as_ref(),
        },
        training: &training,
        gate: gate.as_ref(),
        n_train: artifact.n_train,
        n_train_positive: artifact.n_train_positive,
        n_validation: artifact.validation.n,
        rows,
        ingest: &night.counts,
        audiences: &audiences,
        consent,
        warnings: &warnings,
        drivers: &drivers,
        features: &feature_stats,
    };
    std::fs::write(
        staging.path("metrics.json"),
        serde_json::to_string_pretty(&metrics).expect("json") + "\n",
    )
    .ctx("writing metrics.json")?;
    let record = RunRecord {
        propel_version: env!("CARGO_PKG_VERSION"),
        as_of: as_of.to_string(),
        started_utc: started_utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_utc: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        total_ms: timer.began.elapsed().as_millis(),
        timings_ms: timer.timings.clone(),
        peak_rss_mib_by_stage: timer.peaks.clone(),
        peak_rss_mib: crate::util::peak_rss_mib(),
        rows: metrics.rows.clone(),
        read: kept.as_ref().and_then(|(_, read)| read.clone()),
    };
    std::fs::write(
        staging.path(crate::publish::RUN_RECORD),
        serde_json::to_string_pretty(&record).expect("json") + "\n",
    )
    .ctx("writing run.json")?;
    part.cached()?;
    let output_dir = staging.publish()?;
    info!(output = %output_dir.display(), "published");
    audience::log_activations(&output_root, as_of, &audiences)?;
    // State advances only once the run's outputs are published, in one atomic commit: the
    // identity graph and the model in production (the new one if promoted, else the same).
    state.commit(as_of, job.state_keep_nights, |dir| {
        match kept.as_mut() {
            Some((keeping, _)) => keeping.finish(dir)?,
            None => night.write(dir, opts.merge_shards)?,
        }
        write_parquet(&delivered.members, &dir.join(audience::MEMBERS_STATE))?;
        std::fs::write(
            dir.join(crate::feature_report::PROFILE_STATE),
            serde_json::to_string(&profiles).expect("json"),
        )
        .ctx("writing the feature profiles")?;
        std::fs::write(
            dir.join(TRAINED_STATE),
            serde_json::to_string(&training.last_trained(
                &job,
                as_of,
                gate.as_ref().is_none_or(|g| g.promoted),
            ))
            .expect("json"),
        )
        .ctx("writing the last training")?;
        std::fs::write(
            dir.join(MODEL_STATE),
            serde_json::to_string_pretty(&artifact).expect("json") + "\n",
        )
        .ctx("writing model state")
    })?;
    info!("state committed");
    prune_shards(&state)?;
    Ok(RunSummary {
        output_dir,
        as_of,
        customers_scored: scores.height(),
        validation: artifact.validation,
        audiences,
        warnings,
        counts: night.counts.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scaler;
    use ndarray::{Array1, Array2};

    fn artifact(coefficient: f64, hash: &str) -> Artifact {
        let mut a = Artifact::probe(
            Scaler {
                mean: vec![0.0],
                scale: vec![1.0],
            },
            vec![coefficient],
            0.0,
        );
        a.feature_names = vec!["x".into()];
        a.feature_set_hash = hash.into();
        a
    }

    #[test]
    fn the_gate_keeps_a_better_previous_model_and_lets_better_or_new_features_through() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = Job::load(None).unwrap();
        job.model.gate_tolerance = 0.01;
        // Validation: the label is x > 0, so a positive coefficient ranks perfectly.
        let x = Array2::from_shape_fn((40, 1), |(i, _)| i as f64 - 19.5);
        let y: Array1<bool> = (0..40).map(|i| i >= 20).collect();
        let with_metrics = |mut a: Artifact| {
            let p = a.predict(&x);
            a.validation = Metrics::compute(&p, y.as_slice().unwrap());
            a
        };
        let good = with_metrics(artifact(1.0, "h"));
        let bad = with_metrics(artifact(-1.0, "h"));
        // No previous model: promoted.
        let g = promotion_gate(Some(dir.path()), bad.clone(), &x, &y, &job).unwrap();
        assert!(g.promoted && g.reason == "no previous model");
        // A good model in production, a worse challenger: refused, the previous one scores.
        std::fs::write(
            dir.path().join(MODEL_STATE),
            serde_json::to_string(&good).unwrap(),
        )
        .unwrap();
        let g = promotion_gate(Some(dir.path()), bad.clone(), &x, &y, &job).unwrap();
        assert!(!g.promoted, "{}", g.reason);
        assert_eq!(g.model.coefficients, vec![1.0]);
        assert!(
            g.reason.contains("below the previous model's 1.0000"),
            "{}",
            g.reason
        );
        // An equally good challenger: promoted.
        let g = promotion_gate(Some(dir.path()), good.clone(), &x, &y, &job).unwrap();
        assert!(g.promoted);
        // Changed feature definitions: the previous model cannot score them; promoted.
        let g = promotion_gate(
            Some(dir.path()),
            with_metrics(artifact(-1.0, "other")),
            &x,
            &y,
            &job,
        )
        .unwrap();
        assert!(
            g.promoted && g.reason.contains("feature definitions changed"),
            "{}",
            g.reason
        );
    }

    #[test]
    fn nights_between_trainings_reuse_the_model_unless_due_or_its_definitions_differ() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = Job::load(None).unwrap();
        job.model.retrain_every_days = 7;
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let decision = |job: &Job, as_of| match Training::plan(job, Some(dir.path()), as_of) {
            Ok(Training::Trained { reason, .. }) => format!("trained: {reason}"),
            Ok(Training::Reused { due, .. }) => format!("reused until {due}"),
            Err(e) => format!("error: {e}"),
        };
        let keep = |training: Training, as_of, promoted| {
            let last = training.last_trained(&job, as_of, promoted);
            std::fs::write(
                dir.path().join(TRAINED_STATE),
                serde_json::to_string(&last).unwrap(),
            )
            .unwrap();
        };
        let mut model = artifact(1.0, &job.features.hash);
        let p: Vec<f64> = (0..40).map(|i| i as f64 / 40.0).collect();
        let y: Vec<bool> = (0..40).map(|i| i >= 20).collect();
        model.validation = Metrics::compute(&p, &y);
        std::fs::write(
            dir.path().join(MODEL_STATE),
            serde_json::to_string(&model).unwrap(),
        )
        .unwrap();
        assert!(decision(&job, day(1)).contains("no earlier training"));
        keep(
            Training::plan(&job, Some(dir.path()), day(1)).unwrap(),
            day(1),
            true,
        );
        assert_eq!(decision(&job, day(2)), "reused until 2026-11-08");
        assert_eq!(decision(&job, day(7)), "reused until 2026-11-08");
        assert!(decision(&job, day(8)).contains("due: last trained as of 2026-11-01"));
        let mut other = job.clone();
        other.model.horizon_days += 1;
        assert!(decision(&other, day(2)).contains("other feature or model definitions"));
        // A night of other definitions whose model the gate refused: the model kept has the
        // old definitions, so the night after (with the new ones) trains again...
        let refused = Training::plan(&other, Some(dir.path()), day(2)).unwrap();
        let last = refused.last_trained(&other, day(2), false);
        assert_eq!(last.definitions, training_definitions(&job));
        std::fs::write(
            dir.path().join(TRAINED_STATE),
            serde_json::to_string(&last).unwrap(),
        )
        .unwrap();
        assert!(decision(&other, day(3)).contains("other feature or model definitions"));
        // ... while the old definitions reuse it until 7 days after that training.
        assert_eq!(decision(&job, day(3)), "reused until 2026-11-09");
        // Nightly training ignores the state.
        job.model.retrain_every_days = 1;
        assert!(decision(&job, day(3)).contains("every night"));
    }
}
