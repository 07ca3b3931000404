//! History: what the per-customer stages need of a customer's events, kept as per-customer
//! aggregates that two sets of events combine into those of both. The features' daily
//! aggregates (`features::Daily`), the label events' daily totals (`labels::label_days`) and
//! the latest contact and consent signals (`consent::signals`): a night's history is the
//! night before's combined with the night's new events, which gives what one run over all
//! the events would (`combine`; tested).

use std::path::Path;

use polars::prelude::*;

use crate::buckets::CustomerBuckets;
use crate::config::{FeatureSet, LabelDef};
use crate::error::{Context, Result};
use crate::features::Daily;
use crate::schema::event as ev;

#[derive(Clone)]
pub struct History {
    pub daily: Daily,
    /// `labels::label_days`.
    pub labels: DataFrame,
    /// `consent::signals`.
    pub signals: DataFrame,
}

const LABELS: &str = "label_days.parquet";
const SIGNALS: &str = "signals.parquet";

/// The event columns a history is built from: each event's customer, time and type, every
/// field a feature or label may read (`config::EVENT_FIELDS`, so that edited definitions
/// rebuild the history from them) and the contact and consent signals. The events a night
/// keeps for `--from-stage features` are these columns (`kept_events`); identity's raw
/// identifiers, the tracker's own session id and what no definition reads are left out.
pub fn event_columns() -> Vec<&'static str> {
    [ev::CUSTOMER_ID, ev::TSTAMP, ev::EVENT_TYPE]
        .into_iter()
        .chain(crate::config::EVENT_FIELDS.iter().map(|(name, _)| *name))
        .chain([
            ev::EMAIL,
            ev::USER_ID,
            ev::PHONE,
            ev::CONSENT_ADS,
            ev::CONSENT_EMAIL,
        ])
        .collect()
}

/// `events` (a night's, with `customer_id` and `session_id`) as a night keeps them: their
/// `event_columns`. Writing the kept events is a large part of a night that reads every file
/// (10M events: about 7 s of processor time, over a quarter of it for the columns left out).
pub fn kept_events(events: &DataFrame) -> Result<DataFrame> {
    events
        .select(event_columns())
        .ctx("the events kept for --from-stage features")
}

impl History {
    /// The history of `events` (canonical events with `customer_id` and `session_id`).
    pub fn build(events: &DataFrame, features: &FeatureSet, label: &LabelDef) -> Result<History> {
        let mut laps = crate::util::Laps::start("history");
        let daily = Daily::build(events, features)?;
        laps.lap("daily aggregates");
        let labels = crate::labels::label_days(events, label)?;
        laps.lap("label days");
        let signals = crate::consent::signals(events)?;
        laps.lap("consent signals");
        Ok(History {
            daily,
            labels,
            signals,
        })
    }

    /// The history of all the events of `parts`; with `rename` (`previous_id`,
    /// `customer_id`), a previous id's history becomes its new id's (identity merges).
    pub fn combine(
        parts: Vec<History>,
        features: &FeatureSet,
        rename: Option<&DataFrame>,
    ) -> Result<History> {
        let mut daily = Vec::new();
        let mut labels = Vec::new();
        let mut signals = Vec::new();
        for p in parts {
            daily.push(p.daily);
            labels.push(p.labels);
            signals.push(p.signals);
        }
        Ok(History {
            daily: Daily::combine(daily, features, rename)?,
            labels: crate::labels::combine_days(labels, rename)?,
            signals: crate::consent::combine_signals(signals, rename)?,
        })
    }

    /// The night before's history combined with a night's (`night`, of the night's events):
    /// only the daily aggregates of the days the night touched (its (customer, day) pairs,
    /// and every day of a customer merged by `rename`) and the labels and signals of its
    /// customers are combined again, the other rows are taken as they are.
    ///
    /// The night before's history is `before` as it was kept: a base written whole on an
    /// earlier night, and the daily aggregates changed since (`Changes`, none when the base
    /// is the night before's own). Gives the night's whole history and its daily aggregates
    /// changed since the same base, which is what the night keeps unless it writes its
    /// history whole (`Changes::worth_keeping`).
    pub fn add_night(
        before: History,
        changed: Option<Changes>,
        night: History,
        features: &FeatureSet,
        rename: &DataFrame,
    ) -> Result<(History, Changes)> {
        let column = |name: &str| -> Result<Series> {
            Ok(rename
                .column(name)
                .ctx("renames")?
                .as_materialized_series()
                .clone())
        };
        let previous = column(crate::features::RENAME_FROM)?;
        let renamed = concat_series(&[previous.clone(), column(crate::features::RENAME_TO)?])?;
        let mut laps = crate::util::Laps::start("adding the night");
        let touched = concat_series(&[night.daily.customer_ids()?, renamed.clone()])?;
        let days = night.daily.days()?;
        // The base's rows of the days changed since it was written, and of the customers
        // merged away since, are stale: taken out with tonight's, and dropped.
        let (again, untouched, changed, removed) = match changed {
            None => {
                let (again, untouched) = before.split(&days, &touched, &renamed)?;
                (again, untouched, None, previous.clear())
            }
            Some(Changes { daily, removed }) => {
                let stale_days = daily.days()?;
                let base_days = concat(
                    [days.clone().lazy(), stale_days.clone().lazy()],
                    UnionArgs::default(),
                )
                .ctx("adding the night")?
                .unique(None, UniqueKeepStrategy::Any)
                .collect()
                .ctx("adding the night")?;
                let base_customers = concat_series(&[renamed.clone(), removed.clone()])?;
                let (mut again, untouched) = before.split(&base_days, &touched, &base_customers)?;
                let (changed_again, changed) = daily.split(&days, &renamed)?;
                again.daily = Daily::append(vec![
                    again.daily.without(&stale_days, &removed)?,
                    changed_again,
                ])?;
                (again, untouched, Some(changed), removed)
            }
        };
        laps.lap("split");
        let combined = History::combine(vec![again, night], features, Some(rename))?;
        laps.lap("combined");
        let changed = match changed {
            Some(changed) => changed.merge(combined.daily.clone())?,
            None => combined.daily.clone(),
        };
        let all = untouched.merge(History {
            daily: changed.clone(),
            ..combined
        })?;
        laps.lap("merged");
        let removed = concat_series(&[removed, previous])?
            .sort(Default::default())
            .ctx("adding the night")?;
        Ok((
            all,
            Changes {
                daily: changed,
                removed,
            },
        ))
    }

    /// The histories of `parts`, whose customers are distinct, as one: what `build` gives
    /// for all their events.
    pub fn append(parts: Vec<History>) -> Result<History> {
        let mut daily = Vec::new();
        let mut labels = Vec::new();
        let mut signals = Vec::new();
        for p in parts {
            daily.push(p.daily);
            labels.push(p.labels.lazy());
            signals.push(p.signals.lazy());
        }
        let sorted = |frames: Vec<LazyFrame>, keys: &[&str]| -> Result<DataFrame> {
            concat(frames, UnionArgs::default())
                .ctx("appending history")?
                .sort(keys.to_vec(), Default::default())
                .collect()
                .ctx("appending history")
        };
        Ok(History {
            daily: Daily::append(daily)?,
            labels: sorted(labels, &[ev::CUSTOMER_ID, crate::labels::DAY])?,
            signals: sorted(signals, &[ev::CUSTOMER_ID])?,
        })
    }

    /// The rows of `self` (those marked `util::KEEP`, as `split` leaves them) and of `other`,
    /// each sorted as `build` sorts and with no key in both, in one history sorted as
    /// `append` sorts it.
    fn merge(self, other: History) -> Result<History> {
        let merge = crate::util::merge_sorted;
        Ok(History {
            daily: self.daily.merge(other.daily)?,
            labels: merge(
                self.labels,
                other.labels,
                &[ev::CUSTOMER_ID, crate::labels::DAY],
            )?,
            signals: merge(
                self.signals,
                crate::util::sort_by_columns(other.signals, &[ev::CUSTOMER_ID])?,
                &[ev::CUSTOMER_ID],
            )?,
        })
    }

    /// (the rows to combine again with a night's, all rows with the others marked
    /// `util::KEEP`, for `merge`): the daily aggregates of the (customer, day) pairs in `days`
    /// and of every day of the customers in `renamed`, the labels and signals of the customers
    /// in `touched`.
    fn split(
        self,
        days: &DataFrame,
        touched: &Series,
        renamed: &Series,
    ) -> Result<(History, History)> {
        let split = |df: DataFrame| -> Result<(DataFrame, DataFrame)> {
            let again = crate::util::rows_in(&df, ev::CUSTOMER_ID, touched.clone())?;
            crate::util::split_marked(df, &again)
        };
        let (daily_in, daily_out) = self.daily.split(days, renamed)?;
        let (labels_in, labels_out) = split(self.labels)?;
        let (signals_in, signals_out) = split(self.signals)?;
        Ok((
            History {
                daily: daily_in,
                labels: labels_in,
                signals: signals_in,
            },
            History {
                daily: daily_out,
                labels: labels_out,
                signals: signals_out,
            },
        ))
    }

    /// Every frame through `f`, which keeps its columns and its order (a filter).
    fn map(self, f: impl Fn(DataFrame) -> Result<DataFrame>) -> Result<History> {
        Ok(History {
            daily: self.daily.map(&f)?,
            labels: f(self.labels)?,
            signals: f(self.signals)?,
        })
    }

    /// The rows of the customers in `ids` (`within`), or of the others.
    fn of_customers(self, ids: &Series, within: bool) -> Result<History> {
        self.map(|df| {
            let mask = crate::util::rows_in(&df, ev::CUSTOMER_ID, ids.clone())?;
            let mask = if within { mask } else { !&mask };
            df.filter(&mask).ctx("the history of some customers")
        })
    }

    /// The customers of this history that are not in `customers` (a `customer_id` column),
    /// sorted.
    pub fn dropped(&self, customers: &DataFrame) -> Result<Series> {
        let ids = customers
            .column(ev::CUSTOMER_ID)
            .ctx("the history's customers")?
            .as_materialized_series()
            .clone();
        let of = |df: &DataFrame| -> Result<Series> {
            Ok(df
                .column(ev::CUSTOMER_ID)
                .ctx("the history's customers")?
                .as_materialized_series()
                .clone())
        };
        let all = concat_series(&[
            self.daily.customer_ids()?,
            of(&self.labels)?,
            of(&self.signals)?,
        ])?
        .unique()
        .ctx("the history's customers")?
        .into_frame();
        all.filter(&!&crate::util::rows_in(&all, ev::CUSTOMER_ID, ids)?)
            .ctx("the history's customers")?
            .column(ev::CUSTOMER_ID)
            .ctx("the history's customers")?
            .as_materialized_series()
            .sort(Default::default())
            .ctx("the history's customers")
    }

    /// Every frame with the file name it is kept under.
    fn frames(&self) -> Vec<(String, &DataFrame)> {
        let mut out = self.daily.frames();
        out.push((LABELS.into(), &self.labels));
        out.push((SIGNALS.into(), &self.signals));
        out
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
        for (name, df) in self.frames() {
            crate::util::write_state(df, &dir.join(name))?;
        }
        Ok(())
    }

    pub fn read(dir: &Path, features: &FeatureSet) -> Result<History> {
        Ok(History {
            daily: Daily::read(dir, features)?,
            labels: crate::util::read_parquet(&dir.join(LABELS))?,
            signals: crate::util::read_parquet(&dir.join(SIGNALS))?,
        })
    }

    /// Fingerprint of every frame: one history, one fingerprint, however it was built.
    pub fn fingerprint(&self) -> Result<String> {
        let parts = self
            .frames()
            .into_iter()
            .map(|(name, df)| Ok(format!("{name}:{}", crate::util::fingerprint(df)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(crate::util::sha256_hex(&parts.join("\n")))
    }

    /// The first day (UTC) with an event.
    pub fn first_day(&self) -> Result<Option<chrono::NaiveDate>> {
        self.daily.first_day()
    }
}

/// The daily aggregates changed since a history's base was written whole, which a night
/// keeps beside the base (linked, not written again) instead of its whole history: the rows of
/// every (customer, day) pair changed since (the base's rows of those pairs are stale), and
/// the customers of the base that are gone since (merged into others by identity, or
/// dropped). The labels and signals (a row or a few per customer) are kept whole every night.
///
/// The daily aggregates are most of a night's state (10M events over 180 days: 200 MB of its
/// 330 MB, and 1.9 s of processor time to write), and a night changes a day's worth of them.
#[derive(Clone)]
pub struct Changes {
    pub daily: Daily,
    /// Sorted customer ids.
    pub removed: Series,
}

/// Where a night keeps its `Changes`, in its history's directory.
const CHANGES_DIR: &str = "changed";
const REMOVED: &str = "removed.parquet";

impl Changes {
    /// Whether a night keeps these with its history's base rather than its history whole:
    /// while they are at most an eighth of its days, so that a night reads at most about an
    /// eighth more than the whole history, and writes it whole about every 20 nights at 10M
    /// events over 180 days.
    pub fn worth_keeping(&self, whole: &History) -> bool {
        self.daily.days_count() * 8 <= whole.daily.days_count()
    }

    /// Writes the history of a night that keeps these into `dir`: the base's daily aggregates
    /// linked from `base` (the night before's history directory), the labels and signals of
    /// `whole` (the night's history) and these changes.
    pub fn write(&self, base: &Path, whole: &History, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir.join(CHANGES_DIR))
            .ctx(format!("creating {}", dir.display()))?;
        for (name, _) in whole.daily.frames() {
            crate::util::link_or_copy(&base.join(&name), &dir.join(&name))?;
        }
        if base.join(PARTS).exists() {
            crate::util::link_or_copy(&base.join(PARTS), &dir.join(PARTS))?;
        }
        crate::util::write_state(&whole.labels, &dir.join(LABELS))?;
        crate::util::write_state(&whole.signals, &dir.join(SIGNALS))?;
        for (name, df) in self.daily.frames() {
            crate::util::write_state(df, &dir.join(CHANGES_DIR).join(name))?;
        }
        crate::util::write_state(
            &DataFrame::new(
                self.removed.len(),
                vec![
                    self.removed
                        .clone()
                        .with_name(ev::CUSTOMER_ID.into())
                        .into_column(),
                ],
            )
            .ctx("removed customers")?,
            &dir.join(CHANGES_DIR).join(REMOVED),
        )
    }

    /// Where the changes are kept in `dir` (a history's directory).
    pub fn dir(dir: &Path) -> std::path::PathBuf {
        dir.join(CHANGES_DIR)
    }

    /// The changes kept in `dir` (a history's directory), if any.
    pub fn read(dir: &Path, features: &FeatureSet) -> Result<Option<Changes>> {
        let changed = Changes::dir(dir);
        if !changed.exists() {
            return Ok(None);
        }
        let removed = crate::util::read_parquet(&changed.join(REMOVED))?;
        Ok(Some(Changes {
            daily: Daily::read(&changed, features)?,
            removed: removed
                .column(ev::CUSTOMER_ID)
                .ctx("removed customers")?
                .as_materialized_series()
                .clone(),
        }))
    }

    /// These changes with each row's bucket of `buckets`, taken a bucket at a time
    /// (`ChangesByBucket::bucket`): each row's bucket is looked up once.
    fn by_bucket(self, buckets: &CustomerBuckets) -> Result<ChangesByBucket> {
        let removed = self.removed.with_name(ev::CUSTOMER_ID.into()).into_frame();
        Ok(ChangesByBucket {
            daily: self.daily.map(|df| with_bucket(df, buckets))?,
            removed: with_bucket(removed, buckets)?,
        })
    }

    /// The whole history: `base`'s rows with the stale ones replaced.
    pub fn apply(self, base: History) -> Result<History> {
        let (_, kept) = base.daily.split(&self.daily.days()?, &self.removed)?;
        Ok(History {
            daily: kept.merge(self.daily)?,
            ..base
        })
    }
}

/// A night's history as the per-customer stages take it: held, or written a bucket of
/// customers at a time (`Writer`) and never held whole, the later stages reading one bucket
/// at a time (`parts`).
#[derive(Clone)]
pub enum Stored {
    Held(Box<History>),
    Written(std::sync::Arc<Written>),
}

/// A history written by bucket: one directory a bucket (`History::write`), the buckets
/// ranges of customers in order (`buckets::CustomerBuckets`), so their frames appended in
/// turn are sorted as the whole history's (`Stored::write`).
pub struct Written {
    dir: tempfile::TempDir,
    buckets: Vec<std::path::PathBuf>,
    /// The frames' names, in `History::frames` order.
    names: Vec<String>,
    fingerprint: String,
}

/// Writes a history a bucket at a time (`add`), in order of the buckets' customers.
pub struct Writer {
    dir: tempfile::TempDir,
    buckets: Vec<std::path::PathBuf>,
    fingerprints: Vec<(String, crate::util::Fingerprint)>,
}

impl Writer {
    /// A writer into a new directory under `within`.
    pub fn create(within: &Path) -> Result<Writer> {
        Ok(Writer::within(crate::util::scratch_dir(
            within, "history-",
        )?))
    }

    /// A writer into `dir`, removed with the history written.
    pub fn within(dir: tempfile::TempDir) -> Writer {
        Writer {
            dir,
            buckets: Vec::new(),
            fingerprints: Vec::new(),
        }
    }

    /// Writes the history of the next bucket of customers (`History::build` sorts it as
    /// `append` sorts the whole).
    pub fn add(&mut self, history: History) -> Result<()> {
        let dir = self.dir.path().join(self.buckets.len().to_string());
        history.write(&dir)?;
        let frames = history.frames();
        if self.fingerprints.is_empty() {
            self.fingerprints = frames
                .iter()
                .map(|(name, _)| (name.clone(), crate::util::Fingerprint::default()))
                .collect();
        }
        for ((name, df), (kept, fingerprint)) in frames.iter().zip(&mut self.fingerprints) {
            debug_assert_eq!(name, kept);
            fingerprint.add(df)?;
        }
        self.buckets.push(dir);
        Ok(())
    }

    pub fn finish(self) -> Written {
        let names = self.fingerprints.iter().map(|(n, _)| n.clone()).collect();
        let lines: Vec<String> = self
            .fingerprints
            .into_iter()
            .map(|(name, f)| format!("{name}:{}", f.finish()))
            .collect();
        Written {
            dir: self.dir,
            buckets: self.buckets,
            names,
            fingerprint: crate::util::sha256_hex(&lines.join("\n")),
        }
    }
}

impl Written {
    /// The directory the buckets are written in, for scratch files beside them.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Stored {
    /// `History::fingerprint` of the whole history.
    pub fn fingerprint(&self) -> Result<String> {
        match self {
            Stored::Held(history) => history.fingerprint(),
            Stored::Written(written) => Ok(written.fingerprint.clone()),
        }
    }

    /// The number of parts `part` gives.
    pub fn parts(&self) -> usize {
        match self {
            Stored::Held(_) => 1,
            Stored::Written(written) => written.buckets.len(),
        }
    }

    /// Part `i` of the history: the whole held history, or the history of bucket `i`.
    pub fn part(&self, i: usize, features: &FeatureSet) -> Result<std::borrow::Cow<'_, History>> {
        match self {
            Stored::Held(history) => Ok(std::borrow::Cow::Borrowed(history.as_ref())),
            Stored::Written(written) => Ok(std::borrow::Cow::Owned(History::read(
                &written.buckets[i],
                features,
            )?)),
        }
    }

    /// The contact and consent signals of part `i` (`part`'s `signals`), without its other
    /// frames.
    pub fn signals(&self, i: usize) -> Result<DataFrame> {
        match self {
            Stored::Held(history) => Ok(history.signals.clone()),
            Stored::Written(written) => {
                crate::util::read_parquet(&written.buckets[i].join(SIGNALS))
            }
        }
    }

    /// What `History::write` writes of the whole history; written by bucket, each frame is
    /// the buckets' appended in turn.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let written = match self {
            Stored::Held(history) => return history.write(dir),
            Stored::Written(written) => written,
        };
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
        let mut parts = Parts {
            firsts: Vec::new(),
            rows: Default::default(),
        };
        for name in &written.names {
            let mut file: Option<crate::util::ParquetAppender> = None;
            for bucket in &written.buckets {
                let part = crate::util::read_parquet(&bucket.join(name))?;
                if name == crate::features::DAILY_EVENTS {
                    parts.firsts.push(first_customer(&part)?);
                }
                if name != LABELS && name != SIGNALS {
                    parts
                        .rows
                        .entry(name.clone())
                        .or_default()
                        .push(part.height());
                }
                let file = match &mut file {
                    Some(f) => f,
                    None => file.insert(crate::util::ParquetAppender::create(
                        &dir.join(name),
                        part.schema(),
                        ParquetCompression::Lz4Raw,
                        StatisticsOptions::empty(),
                    )?),
                };
                file.append(&part)?;
            }
            if let Some(file) = file {
                file.finish()?;
            }
        }
        std::fs::write(
            dir.join(PARTS),
            serde_json::to_string(&parts).expect("json") + "\n",
        )
        .ctx(format!("writing {}", dir.join(PARTS).display()))
    }

    /// The history kept in `dir` (`History::write`, `Stored::write`, and the `Changes`
    /// kept beside its base) as the night that kept it held it: whole, or, written from
    /// buckets, read back a bucket at a time into a scratch directory under `within` (with
    /// `prefix`) and never held whole (100M events: a rerun from the features stage peaked at
    /// 19.5 GB holding it whole, its snapshots held with it, and at 2.6 GB by bucket).
    pub fn read(dir: &Path, features: &FeatureSet, within: &Path, prefix: &str) -> Result<Stored> {
        let Some(kept) = KeptByBucket::open(dir, features)? else {
            let base = History::read(dir, features)?;
            return Ok(Stored::Held(Box::new(
                match Changes::read(dir, features)? {
                    Some(changes) => changes.apply(base)?,
                    None => base,
                },
            )));
        };
        let mut writer = Writer::within(crate::util::scratch_dir(within, prefix)?);
        for i in 0..kept.count() {
            writer.add(kept.part(i, features)?)?;
        }
        Ok(Stored::Written(std::sync::Arc::new(writer.finish())))
    }

    /// The night before's history (`kept`) with a night's (`night`, of its events under
    /// today's ids) added, a bucket of customers at a time: `History::add_night` of each
    /// bucket, written by bucket under `within` (with `prefix`) and never held whole, with
    /// its first day. `rename`
    /// (`previous_id`, `customer_id`) moves the days of a customer merged away into the bucket
    /// of the customer it merged into. Err: the customers of the history that are not among
    /// `customers` (the night's), sorted, as `History::dropped` gives them.
    pub fn add_night(
        kept: &KeptByBucket,
        night: History,
        features: &FeatureSet,
        rename: &DataFrame,
        customers: &DataFrame,
        within: &Path,
        prefix: &str,
    ) -> Result<std::result::Result<(Stored, Option<chrono::NaiveDate>), Series>> {
        let ids = |name: &str| -> Result<Vec<String>> {
            Ok(crate::util::strings(rename, name)?
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect())
        };
        let (from, to) = (
            ids(crate::features::RENAME_FROM)?,
            ids(crate::features::RENAME_TO)?,
        );
        // The bucket each merged-away customer's days go to, and the buckets they come from.
        let target: Vec<usize> = to.iter().map(|id| kept.buckets.of(id)).collect();
        let sources: std::collections::BTreeSet<usize> =
            from.iter().map(|id| kept.buckets.of(id)).collect();
        let from_all = Series::new(ev::CUSTOMER_ID.into(), &from);
        let mut laps = crate::util::Laps::start("history by bucket");
        let mut moved = Vec::new();
        for &j in &sources {
            // Compacted: the few rows taken keep their part's text alive (100M events: the
            // whole history, 2.8 GB, held by the merged-away customers' days).
            moved.push(
                kept.part(j, features)?
                    .of_customers(&from_all, true)?
                    .map(|df| Ok(crate::util::compact_text(df)))?,
            );
        }
        let moved = (!moved.is_empty())
            .then(|| History::append(moved))
            .transpose()?;
        laps.lap("moved days read");
        let night = night.map(|df| with_bucket(df, &kept.buckets))?;
        laps.lap("night's buckets");
        let mut writer = Writer::within(crate::util::scratch_dir(within, prefix)?);
        let mut first_day: Option<chrono::NaiveDate> = None;
        for i in 0..kept.count() {
            let mut before = kept.part(i, features)?;
            laps.lap("part read");
            if sources.contains(&i) {
                before = before.of_customers(&from_all, false)?;
            }
            let into = |names: &[String]| -> Vec<String> {
                names
                    .iter()
                    .zip(&target)
                    .filter(|(_, t)| **t == i)
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            let (from_i, to_i) = (into(&from), into(&to));
            if let Some(moved) = &moved
                && !from_i.is_empty()
            {
                let ids = Series::new(ev::CUSTOMER_ID.into(), &from_i);
                before = History::append(vec![before, moved.clone().of_customers(&ids, true)?])?;
            }
            let rename_i = DataFrame::new(
                from_i.len(),
                vec![
                    Column::new(crate::features::RENAME_FROM.into(), &from_i),
                    Column::new(crate::features::RENAME_TO.into(), &to_i),
                ],
            )
            .ctx("renames of a bucket of customers")?;
            let night_i = night.clone().map(|df| rows_of_bucket(&df, i))?;
            let (history, _) = History::add_night(before, None, night_i, features, &rename_i)?;
            let dropped = history.dropped(customers)?;
            if !dropped.is_empty() {
                return Ok(Err(dropped));
            }
            first_day = match (first_day, history.first_day()?) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            writer.add(history)?;
            laps.lap("part written");
        }
        Ok(Ok((
            Stored::Written(std::sync::Arc::new(writer.finish())),
            first_day,
        )))
    }
}

/// A history kept by bucket (`Stored::write`, with the `Changes` kept beside its base), read
/// a bucket of customers at a time (`part`), never whole.
pub struct KeptByBucket {
    dir: std::path::PathBuf,
    parts: Parts,
    /// The bucket of `parts` each part starts at: buckets without days are read with a
    /// neighbour, the first part from the first bucket.
    starts: Vec<usize>,
    /// The parts' ranges of customers.
    buckets: CustomerBuckets,
    /// Labels and signals (a row or a few per customer), with their part (`with_bucket`).
    labels: DataFrame,
    signals: DataFrame,
    changes: Option<ChangesByBucket>,
}

impl KeptByBucket {
    /// Whether the history kept in `dir` was kept by bucket.
    pub fn is_kept(dir: &Path) -> bool {
        dir.join(PARTS).exists()
    }

    /// The history kept in `dir`, if it was kept by bucket (else `History::read` reads it).
    pub fn open(dir: &Path, features: &FeatureSet) -> Result<Option<KeptByBucket>> {
        let context = || format!("reading {}", dir.join(PARTS).display());
        let parts: Parts = match std::fs::read_to_string(dir.join(PARTS)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            text => serde_json::from_str(&text.ctx(context())?)
                .map_err(std::io::Error::other)
                .ctx(context())?,
        };
        let mut starts: Vec<usize> = (0..parts.firsts.len())
            .filter(|&b| parts.firsts[b].is_some())
            .collect();
        match starts.first_mut() {
            Some(first) => *first = 0,
            None => starts.push(0),
        }
        let buckets = CustomerBuckets::from_bounds(
            starts[1..]
                .iter()
                .map(|&b| parts.firsts[b].clone().expect("a bucket with days"))
                .collect(),
        );
        let whole = |name: &str| with_bucket(crate::util::read_parquet(&dir.join(name))?, &buckets);
        tracing::info!(
            parts = starts.len(),
            "the history kept by bucket, read back a bucket at a time"
        );
        let changes = Changes::read(dir, features)?
            .map(|c| c.by_bucket(&buckets))
            .transpose()?;
        Ok(Some(KeptByBucket {
            dir: dir.to_path_buf(),
            labels: whole(LABELS)?,
            signals: whole(SIGNALS)?,
            parts,
            starts,
            buckets,
            changes,
        }))
    }

    /// The number of parts.
    pub fn count(&self) -> usize {
        self.starts.len()
    }

    /// The history of the customers of part `i`, the changes kept applied.
    pub fn part(&self, i: usize, features: &FeatureSet) -> Result<History> {
        let (start, dir) = (self.starts[i], &self.dir);
        let end = self
            .starts
            .get(i + 1)
            .copied()
            .unwrap_or(self.parts.firsts.len());
        let daily = Daily::read_with(features, |name| {
            let rows = self
                .parts
                .rows
                .get(&name)
                .ok_or_else(|| std::io::Error::other(format!("no rows recorded for {name}")))
                .ctx(format!("reading {}", dir.join(PARTS).display()))?;
            let offset = rows[..start].iter().sum();
            let len = rows[start..end].iter().sum();
            crate::util::read_parquet_rows(&dir.join(&name), offset, len)
        })?;
        let history = History {
            daily,
            labels: rows_of_bucket(&self.labels, i)?,
            signals: rows_of_bucket(&self.signals, i)?,
        };
        match &self.changes {
            Some(changes) => changes.bucket(i)?.apply(history),
            None => Ok(history),
        }
    }
}

/// `Changes` with each row's bucket (`with_bucket`).
struct ChangesByBucket {
    daily: Daily,
    removed: DataFrame,
}

impl ChangesByBucket {
    /// The changes of the customers in bucket `i`.
    fn bucket(&self, i: usize) -> Result<Changes> {
        Ok(Changes {
            daily: self.daily.clone().map(|df| rows_of_bucket(&df, i))?,
            removed: rows_of_bucket(&self.removed, i)?
                .column(ev::CUSTOMER_ID)
                .ctx("removed customers")?
                .as_materialized_series()
                .clone(),
        })
    }
}

/// Where a history written whole from its buckets (`Stored::write`) records how they cut it,
/// in its directory.
const PARTS: &str = "parts.json";

/// How the buckets of a history written by bucket cut it (`Stored::write`), for reading it
/// back a bucket at a time (`Stored::read`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Parts {
    /// Each bucket's first customer with days (none: a bucket without days).
    firsts: Vec<Option<String>>,
    /// Each daily frame's rows (by file name) in each bucket.
    rows: std::collections::BTreeMap<String, Vec<usize>>,
}

/// The first customer of a frame sorted by customer, if it has rows.
fn first_customer(df: &DataFrame) -> Result<Option<String>> {
    if df.height() == 0 {
        return Ok(None);
    }
    Ok(df
        .column(ev::CUSTOMER_ID)
        .ctx("the history's customers")?
        .str()
        .ctx("the history's customers")?
        .get(0)
        .map(str::to_string))
}

/// The column `with_bucket` adds.
const BUCKET: &str = "_bucket";

/// `df` with the bucket of `buckets` of each row's customer (`BUCKET`; bucket 0 for none).
fn with_bucket(mut df: DataFrame, buckets: &CustomerBuckets) -> Result<DataFrame> {
    let of: UInt32Chunked = df
        .column(ev::CUSTOMER_ID)
        .ctx("the history's customers")?
        .str()
        .ctx("the history's customers")?
        .iter()
        .map(|id| Some(id.map_or(0, |id| buckets.of(id)) as u32))
        .collect();
    df.with_column(of.with_name(BUCKET.into()).into_column())
        .ctx("the history's buckets")?;
    Ok(df)
}

/// The rows of `df` (`with_bucket`'s) in bucket `i`, without their bucket.
fn rows_of_bucket(df: &DataFrame, i: usize) -> Result<DataFrame> {
    let of = df
        .column(BUCKET)
        .ctx("the history's buckets")?
        .u32()
        .ctx("the history's buckets")?;
    df.filter(&of.equal(i as u32))
        .ctx("the history of a bucket of customers")?
        .drop(BUCKET)
        .ctx("the history of a bucket of customers")
}

/// The distinct values of `parts`, one string series.
fn concat_series(parts: &[Series]) -> Result<Series> {
    let mut all = parts[0].clone();
    for p in &parts[1..] {
        all.append(p).ctx("customer ids")?;
    }
    all.unique().ctx("customer ids")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    /// Canonical events of a few customers over a few weeks: every feature kind of the
    /// default set and of `features::tests`, with ties in time.
    fn events(seed: u64) -> DataFrame {
        let mut df = crate::features::tests::random_events(seed);
        let n = df.height();
        let some = |i: usize, every: usize| i.is_multiple_of(every);
        for c in [
            Column::new(
                ev::EVENT_ID.into(),
                (0..n)
                    .map(|i| format!("e{:05}", (i * 7919) % n))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                ev::EMAIL.into(),
                (0..n)
                    .map(|i| some(i, 5).then(|| format!("{}@x.com", i % 3)))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                ev::USER_ID.into(),
                (0..n)
                    .map(|i| some(i, 7).then(|| format!("u{}@y.com", i % 4)))
                    .collect::<Vec<_>>(),
            ),
            Column::new(ev::PHONE.into(), vec![None::<&str>; n]),
            Column::new(
                ev::CONSENT_ADS.into(),
                (0..n)
                    .map(|i| some(i, 3).then_some(i % 2 == 0))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                ev::CONSENT_EMAIL.into(),
                (0..n)
                    .map(|i| some(i, 4).then_some(i % 3 == 0))
                    .collect::<Vec<_>>(),
            ),
        ] {
            df.with_column(c).unwrap();
        }
        df
    }

    fn sorted(df: &DataFrame, by: &[&str]) -> DataFrame {
        df.clone()
            .lazy()
            .sort(by.to_vec(), Default::default())
            .collect()
            .unwrap()
    }

    /// The default feature set and a label over a week.
    fn definitions() -> (FeatureSet, LabelDef) {
        let features = FeatureSet::parse(&Source::embedded(
            "default.toml",
            include_str!("../features/default.toml"),
        ))
        .unwrap();
        let label = crate::config::ModelDef::parse(&Source::embedded(
            "m.toml",
            "[label]\nhorizon_days = 7\nsum_field = \"line_value\"\nmin_sum = 20\n",
        ))
        .unwrap()
        .label;
        (features, label)
    }

    #[test]
    fn the_kept_events_rebuild_the_history_of_features_over_every_field() {
        use crate::config::FieldType;
        let (_, label) = definitions();
        // A feature reading each field a feature may read, filtered on it.
        let mut toml = String::new();
        for (name, kind) in crate::config::EVENT_FIELDS {
            let agg = match kind {
                FieldType::Number => "sum",
                _ => "count_distinct",
            };
            toml += &format!(
                "[[feature]]\nname = \"f_{name}\"\nagg = \"{agg}\"\nfield = \"{name}\"\n\
                 where = [{{ field = \"{name}\", op = \"not_null\" }}]\n\n"
            );
        }
        let features = FeatureSet::parse(&Source::embedded("every_field.toml", &toml)).unwrap();
        // Every canonical column (those the test events lack, null).
        let mut all = events(1);
        for (name, dtype) in crate::ingest::canonical_columns() {
            if all.column(name).is_err() {
                let nulls = Column::full_null(name.into(), all.height(), &dtype);
                all.with_column(nulls).unwrap();
            }
        }
        let kept = kept_events(&all).unwrap();
        assert!(kept.width() < all.width(), "{:?}", kept.get_column_names());
        let whole = History::build(&all, &features, &label).unwrap();
        let rebuilt = History::build(&kept, &features, &label).unwrap();
        for ((name, a), (_, b)) in whole.frames().into_iter().zip(rebuilt.frames()) {
            assert!(a.equals_missing(b), "{name}:\n{a}\n{b}");
        }
        assert!(whole.signals.height() > 0 && whole.labels.height() > 0);
    }

    #[test]
    fn the_customers_a_history_has_beyond_the_night_s_are_found() {
        let (features, label) = definitions();
        let history = History::build(&events(1), &features, &label).unwrap();
        let ids = history
            .daily
            .customer_ids()
            .unwrap()
            .sort(Default::default())
            .unwrap();
        assert!(ids.len() > 2);
        let customers = |ids: Series| ids.into_frame();
        assert!(history.dropped(&customers(ids.clone())).unwrap().is_empty());
        // Two customers the night does not have.
        let kept = ids.slice(2, ids.len() - 2);
        let dropped = history.dropped(&customers(kept)).unwrap();
        assert!(dropped.equals(&ids.slice(0, 2)), "{dropped:?}");
    }

    /// Every frame of `a` and `b` equal, and their fingerprints.
    fn assert_same(a: &History, b: &History) {
        for ((name, x), (_, y)) in a.frames().into_iter().zip(b.frames()) {
            assert!(x.equals_missing(y), "{name}:\n{x}\n{y}");
        }
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
    }

    /// The whole history of `stored`, its parts appended.
    fn whole(stored: &Stored, features: &FeatureSet) -> History {
        History::append(
            (0..stored.parts())
                .map(|i| stored.part(i, features).unwrap().into_owned())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_history_written_from_buckets_is_read_back_by_bucket_with_its_changes() {
        let (features, label) = definitions();
        let all = events(1);
        let history = History::build(&all, &features, &label).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // Written a bucket of customers at a time, as a night written aside writes it: two
        // of the six buckets have no customers (bounds below every id, and repeated).
        let customers = history
            .daily
            .customer_ids()
            .unwrap()
            .sort(Default::default())
            .unwrap();
        let customers: Vec<String> = customers
            .str()
            .unwrap()
            .iter()
            .map(|c| c.unwrap().to_string())
            .collect();
        let mut bounds = vec![String::new(), String::new()];
        bounds.extend((1..4).map(|i| customers[i * customers.len() / 4].clone()));
        let buckets = CustomerBuckets::from_bounds(bounds);
        let all = with_bucket(all, &buckets).unwrap();
        let mut writer = Writer::create(tmp.path()).unwrap();
        for i in 0..buckets.count() {
            let part = rows_of_bucket(&all, i).unwrap();
            writer
                .add(History::build(&part, &features, &label).unwrap())
                .unwrap();
        }
        let stored = Stored::Written(std::sync::Arc::new(writer.finish()));
        let base = tmp.path().join("base");
        stored.write(&base).unwrap();
        let read = Stored::read(&base, &features, tmp.path(), "read-").unwrap();
        assert!(matches!(read, Stored::Written(_)));
        // The empty buckets are read with their neighbours.
        assert_eq!(read.parts(), 4);
        assert_eq!(read.fingerprint().unwrap(), history.fingerprint().unwrap());
        assert_same(&whole(&read, &features), &history);

        // The night after kept its changes beside this base: the days of another night's
        // events of every third customer replace theirs, and two customers are gone.
        let every_third = customers.iter().step_by(3).cloned().collect::<Vec<_>>();
        let every_third = Series::new("c".into(), every_third);
        let other = History::build(&events(2), &features, &label).unwrap();
        let changes = Changes {
            daily: other
                .daily
                .map(|df| {
                    let mask = crate::util::rows_in(&df, ev::CUSTOMER_ID, every_third.clone())?;
                    df.filter(&mask).ctx("test")
                })
                .unwrap(),
            removed: Series::new(ev::CUSTOMER_ID.into(), &customers[1..3]),
        };
        let after = changes.clone().apply(history.clone()).unwrap();
        let night = tmp.path().join("night");
        changes.write(&base, &after, &night).unwrap();
        let read = Stored::read(&night, &features, tmp.path(), "read-").unwrap();
        assert!(matches!(read, Stored::Written(_)));
        assert_same(&whole(&read, &features), &after);
        assert_eq!(read.fingerprint().unwrap(), after.fingerprint().unwrap());

        // A history written whole is read whole.
        let held = tmp.path().join("held");
        history.write(&held).unwrap();
        let read = Stored::read(&held, &features, tmp.path(), "read-").unwrap();
        assert!(matches!(read, Stored::Held(_)));
        assert_same(&whole(&read, &features), &history);
    }

    #[test]
    fn nights_combined_with_renames_equal_one_history_of_all_events() {
        let (features, label) = definitions();
        for seed in [1, 2] {
            let all = events(seed);
            let n = all.height();
            // Night 1: every other row (so days and sessions are split between the nights),
            // under customer ids that night 2 merges into the real ones.
            let odd = Series::new("m".into(), (0..n).map(|i| i % 2 == 1).collect::<Vec<_>>());
            let mut first = all.filter(odd.bool().unwrap()).unwrap();
            let ids = first
                .column(ev::CUSTOMER_ID)
                .unwrap()
                .str()
                .unwrap()
                .apply(|c| c.map(|c| format!("old-{c}").into()));
            first
                .with_column(ids.into_column().with_name(ev::CUSTOMER_ID.into()))
                .unwrap();
            let second = all.filter(&!odd.bool().unwrap()).unwrap();
            let rename = crate::features::tests::random_events(seed)
                .lazy()
                .select([col(ev::CUSTOMER_ID).unique()])
                .select([
                    (lit("old-") + col(ev::CUSTOMER_ID)).alias(crate::features::RENAME_FROM),
                    col(ev::CUSTOMER_ID).alias(crate::features::RENAME_TO),
                ])
                .collect()
                .unwrap();
            let whole = History::build(&all, &features, &label).unwrap();
            let combined = History::combine(
                vec![
                    History::build(&first, &features, &label).unwrap(),
                    History::build(&second, &features, &label).unwrap(),
                ],
                &features,
                Some(&rename),
            )
            .unwrap();
            for ((name, a), (_, b)) in whole.frames().into_iter().zip(combined.frames()) {
                if !name.starts_with("daily_values") {
                    assert!(a.height() > 10, "{name}: {}", a.height());
                }
                assert!(a.equals_missing(b), "seed {seed}, {name}:\n{a}\n{b}");
            }
            assert_eq!(
                whole.fingerprint().unwrap(),
                combined.fingerprint().unwrap()
            );
            // A night that touches some customers only: c1* appear in night 1 only, c2* are
            // renamed, the rest carry on.
            let is = |p: &str| col(ev::CUSTOMER_ID).str().starts_with(lit(p));
            let night1 = all
                .clone()
                .lazy()
                .with_row_index("_i", None)
                .filter(col("_i").lt(lit((n / 2) as u32)).or(is("c1")))
                .with_column(
                    when(is("c2"))
                        .then(lit("old-") + col(ev::CUSTOMER_ID))
                        .otherwise(col(ev::CUSTOMER_ID))
                        .alias(ev::CUSTOMER_ID),
                )
                .drop(cols(["_i"]))
                .collect()
                .unwrap();
            let night2 = all
                .clone()
                .lazy()
                .with_row_index("_i", None)
                .filter(col("_i").gt_eq(lit((n / 2) as u32)).and(is("c1").not()))
                .drop(cols(["_i"]))
                .collect()
                .unwrap();
            let renamed = rename
                .clone()
                .lazy()
                .filter(col(crate::features::RENAME_TO).str().starts_with(lit("c2")))
                .collect()
                .unwrap();
            let (added, _) = History::add_night(
                History::build(&night1, &features, &label).unwrap(),
                None,
                History::build(&night2, &features, &label).unwrap(),
                &features,
                &renamed,
            )
            .unwrap();
            for ((name, a), (_, b)) in whole.frames().into_iter().zip(added.frames()) {
                assert!(
                    a.equals_missing(b),
                    "add_night, seed {seed}, {name}:\n{a}\n{b}"
                );
            }
            // The same night added a bucket at a time to night 1's history kept by bucket:
            // the merged-away ids ("old-c2...") sort after every customer, so their days
            // move from the last bucket into the buckets of their new ids.
            let tmp = tempfile::tempdir().unwrap();
            let before = History::build(&night1, &features, &label).unwrap();
            let ids = crate::util::strings(
                &before
                    .daily
                    .customer_ids()
                    .unwrap()
                    .sort(Default::default())
                    .unwrap()
                    .into_frame(),
                ev::CUSTOMER_ID,
            )
            .unwrap();
            let buckets = CustomerBuckets::from_bounds(
                (1..4)
                    .map(|k| ids[k * ids.len() / 4].clone().unwrap())
                    .collect(),
            );
            let by_bucket = before.map(|df| with_bucket(df, &buckets)).unwrap();
            let mut writer = Writer::create(tmp.path()).unwrap();
            for i in 0..buckets.count() {
                writer
                    .add(by_bucket.clone().map(|df| rows_of_bucket(&df, i)).unwrap())
                    .unwrap();
            }
            let base = tmp.path().join("base");
            Stored::Written(std::sync::Arc::new(writer.finish()))
                .write(&base)
                .unwrap();
            let kept = KeptByBucket::open(&base, &features).unwrap().unwrap();
            assert_eq!(kept.count(), 4);
            let old = kept.buckets.of(&format!("old-{}", ids[0].clone().unwrap()));
            assert!(
                crate::util::strings(&renamed, crate::features::RENAME_TO)
                    .unwrap()
                    .iter()
                    .any(|id| kept.buckets.of(id.as_deref().unwrap()) != old),
                "a merge across buckets"
            );
            let customers = whole.daily.customer_ids().unwrap().into_frame();
            let (stored, first_day) = Stored::add_night(
                &kept,
                History::build(&night2, &features, &label).unwrap(),
                &features,
                &renamed,
                &customers,
                tmp.path(),
                "night-",
            )
            .unwrap()
            .unwrap();
            assert_same(&self::whole(&stored, &features), &whole);
            assert_eq!(first_day, whole.first_day().unwrap());
            // A customer of the history the night does not know is reported, not dropped.
            let fewer = customers.slice(1, customers.height());
            let dropped = Stored::add_night(
                &kept,
                History::build(&night2, &features, &label).unwrap(),
                &features,
                &renamed,
                &fewer,
                tmp.path(),
                "night-",
            )
            .unwrap()
            .err()
            .expect("a customer unknown to the night");
            assert_eq!(dropped.len(), 1);
            // And so the features, which is what counts.
            let cutoffs: Vec<i64> = [1031, 1055, 1075]
                .iter()
                .map(|d| d * crate::util::MICROS_PER_DAY)
                .collect();
            let f = |h: &History| {
                crate::features::compute_from(
                    &h.daily,
                    &cutoffs,
                    &features,
                    crate::config::Population::AllSeen,
                )
                .unwrap()
                .collect()
                .unwrap()
            };
            let by = [ev::CUSTOMER_ID, crate::schema::output::CUTOFF];
            assert!(sorted(&f(&whole), &by).equals_missing(&sorted(&f(&combined), &by)));
        }
    }

    /// Three nights kept as their base and the daily aggregates changed since: each night's
    /// history, read back from what it keeps, is its whole history, and the last the history
    /// of all the events (a customer merged on the third night, days of the first two nights
    /// changed by the second and third).
    #[test]
    fn nights_kept_as_a_base_and_changes_give_the_whole_history() {
        let (features, label) = definitions();
        let tmp = tempfile::tempdir().unwrap();
        for seed in [1, 2] {
            let all = events(seed);
            let n = all.height() as u32;
            let is = |p: &str| col(ev::CUSTOMER_ID).str().starts_with(lit(p));
            // Every third row to each night, so that the nights share days; c2* under old ids
            // until the third night merges them.
            let night = |k: u32, old: bool| {
                let mut rows = all
                    .clone()
                    .lazy()
                    .with_row_index("_i", None)
                    .filter((col("_i") % lit(3u32)).eq(lit(k)));
                if old {
                    rows = rows.with_column(
                        when(is("c2"))
                            .then(lit("old-") + col(ev::CUSTOMER_ID))
                            .otherwise(col(ev::CUSTOMER_ID))
                            .alias(ev::CUSTOMER_ID),
                    );
                }
                let rows = rows.drop(cols(["_i"])).collect().unwrap();
                assert!(rows.height() as u32 >= n / 4);
                History::build(&rows, &features, &label).unwrap()
            };
            let rename = all
                .clone()
                .lazy()
                .filter(is("c2"))
                .select([col(ev::CUSTOMER_ID).unique().sort(Default::default())])
                .select([
                    (lit("old-") + col(ev::CUSTOMER_ID)).alias(crate::features::RENAME_FROM),
                    col(ev::CUSTOMER_ID).alias(crate::features::RENAME_TO),
                ])
                .collect()
                .unwrap();
            assert!(rename.height() > 0);
            let none = rename.clear();
            let dir = |k: usize| tmp.path().join(format!("{seed}-{k}"));
            let kept = |k: usize| {
                let base = History::read(&dir(k), &features).unwrap();
                let changes = Changes::read(&dir(k), &features).unwrap();
                (base, changes)
            };
            let same = |a: &History, b: &History, what: &str| {
                for ((name, a), (_, b)) in a.frames().into_iter().zip(b.frames()) {
                    assert!(
                        a.equals_missing(b),
                        "seed {seed}, {what}, {name}:\n{a}\n{b}"
                    );
                }
            };
            night(0, true).write(&dir(0)).unwrap();
            let mut whole = None;
            for (k, old) in [(1, true), (2, false)] {
                let (base, changes) = kept(k as usize - 1);
                let rename = if old { &none } else { &rename };
                let (history, changes) =
                    History::add_night(base, changes, night(k, old), &features, rename).unwrap();
                let base = dir(if k == 1 { 0 } else { 1 });
                changes.write(&base, &history, &dir(k as usize)).unwrap();
                let (read, changes) = kept(k as usize);
                let read = changes.expect("changes kept").apply(read).unwrap();
                same(&history, &read, "read back");
                whole = Some(history);
            }
            same(
                &History::build(&all, &features, &label).unwrap(),
                &whole.unwrap(),
                "three nights",
            );
        }
    }
}
