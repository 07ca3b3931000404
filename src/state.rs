//! State kept between runs (the identity graph, the model in production, audience members),
//! one directory per night: `night-YYYY-MM-DD/` holds the state *after* that night's run.
//!
//! A run as of T starts from the latest night strictly before T, so a rerun of T starts from
//! exactly what the first run of T started from: a night is never applied twice, and a rerun
//! gives byte-identical outputs. A run writes its night into a hidden directory and renames it
//! into place (one atomic step) only after its outputs are published; a crash at any moment
//! leaves every committed night complete, and the next commit clears what the crash left
//! behind. The newest `keep` nights are kept, so recent nights can be rerun or backfilled.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::error::{ConfigError, ConfigProblem, Context, Result};

const PREFIX: &str = "night-";
/// Where a night being written, or one being replaced, waits (hidden, never read).
const PENDING: &str = ".pending-";
const REPLACED: &str = ".replaced-";
/// The first night ever committed here: nights before it start from an empty state.
const FIRST: &str = "FIRST_NIGHT";

/// A state location on local disk.
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a committed night (it may not exist).
    pub fn night(&self, night: NaiveDate) -> PathBuf {
        self.night_dir(night)
    }

    /// Where a night is: in place, or still aside when a replacement of it crashed between
    /// its two renames (then the old night is still the truth; the next commit puts it back).
    /// Reading never moves anything, so runs that do not hold the state's lock (shards) can
    /// read while another run commits.
    fn night_dir(&self, night: NaiveDate) -> PathBuf {
        let name = format!("{PREFIX}{night}");
        let aside = self.root.join(format!("{REPLACED}{name}"));
        let dir = self.root.join(name);
        if !dir.exists() && aside.exists() {
            aside
        } else {
            dir
        }
    }

    /// The committed nights, oldest first.
    pub fn nights(&self) -> Result<Vec<NaiveDate>> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let mut nights = Vec::new();
        for entry in
            std::fs::read_dir(&self.root).ctx(format!("listing {}", self.root.display()))?
        {
            let name = entry.ctx("listing state")?.file_name();
            let name = name.to_string_lossy();
            if let Some(night) = name
                .strip_prefix(PREFIX)
                .or_else(|| name.strip_prefix(REPLACED)?.strip_prefix(PREFIX))
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            {
                nights.push(night);
            }
        }
        nights.sort();
        nights.dedup();
        Ok(nights)
    }

    /// A crash between the two renames of a replacement leaves the old night aside: put it
    /// back (the replacing run did not finish, so the old night is still the truth).
    fn recover(&self) -> Result<()> {
        for entry in
            std::fs::read_dir(&self.root).ctx(format!("listing {}", self.root.display()))?
        {
            let entry = entry.ctx("listing state")?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(night) = name.strip_prefix(REPLACED) {
                let target = self.root.join(night);
                if target.exists() {
                    std::fs::remove_dir_all(entry.path()).ctx(format!("removing {name}"))?;
                } else {
                    std::fs::rename(entry.path(), &target).ctx(format!("restoring {night}"))?;
                }
            }
        }
        Ok(())
    }

    /// The state a run as of `as_of` starts from: the latest night before it, or `None` when
    /// no night before it was ever run here (the first night, or a rerun of it). Fails when
    /// the nights before `as_of` were dropped (`keep_nights`): starting afresh would give
    /// every customer a new id.
    pub fn before(&self, as_of: NaiveDate) -> Result<Option<PathBuf>> {
        let nights = self.nights()?;
        let first = std::fs::read_to_string(self.root.join(FIRST))
            .ok()
            .and_then(|d| NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").ok())
            .or(nights.first().copied());
        match nights.iter().rev().find(|n| **n < as_of) {
            Some(night) => Ok(Some(self.night_dir(*night))),
            None if first.is_none_or(|f| as_of <= f) => Ok(None),
            None => Err(ConfigError(vec![ConfigProblem {
                file: self.root.display().to_string(),
                key: String::new(),
                message: format!(
                    "no state before --as-of {as_of}: the oldest night kept is {}; rerun only \
                     kept nights, keep more (state.keep_nights), or backfill into a new --state",
                    nights[0]
                ),
            }])
            .into()),
        }
    }

    /// Writes the state after `night` with `write`, then puts it in place (replacing an
    /// earlier run of the same night) and drops all but the newest `keep` nights.
    pub fn commit(
        &self,
        night: NaiveDate,
        keep: usize,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.root).ctx(format!("creating {}", self.root.display()))?;
        self.recover()?;
        let first = self.root.join(FIRST);
        if !first.exists() {
            std::fs::write(&first, night.to_string()).ctx("writing the first night")?;
        }
        let name = format!("{PREFIX}{night}");
        let pending = self.root.join(format!("{PENDING}{name}"));
        if pending.exists() {
            // Left by a run that crashed while writing.
            std::fs::remove_dir_all(&pending).ctx(format!("removing {}", pending.display()))?;
        }
        std::fs::create_dir_all(&pending).ctx(format!("creating {}", pending.display()))?;
        write(&pending)?;
        let target = self.night_dir(night);
        if target.exists() {
            let aside = self.root.join(format!("{REPLACED}{name}"));
            std::fs::rename(&target, &aside).ctx(format!("moving aside {name}"))?;
            std::fs::rename(&pending, &target).ctx(format!("committing {name}"))?;
            std::fs::remove_dir_all(&aside).ctx(format!("removing the replaced {name}"))?;
        } else {
            std::fs::rename(&pending, &target).ctx(format!("committing {name}"))?;
        }
        let nights = self.nights()?;
        for old in nights.iter().take(nights.len().saturating_sub(keep.max(1))) {
            let dir = self.night_dir(*old);
            std::fs::remove_dir_all(&dir).ctx(format!("removing {}", dir.display()))?;
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, d).unwrap()
    }

    fn write(text: &'static str) -> impl FnOnce(&Path) -> Result<()> {
        move |d: &Path| std::fs::write(d.join("a"), text).ctx("w")
    }

    #[test]
    fn a_run_starts_from_the_night_before_it_and_a_rerun_replaces_its_night() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::new(root.path());
        assert!(state.before(day(5)).unwrap().is_none(), "first run");
        state.commit(day(5), 7, write("five")).unwrap();
        state.commit(day(6), 7, write("six")).unwrap();
        let read = |p: Option<PathBuf>| std::fs::read_to_string(p.unwrap().join("a")).unwrap();
        assert_eq!(read(state.before(day(7)).unwrap()), "six");
        // A rerun of the 6th starts from the 5th, not from its own earlier result.
        assert_eq!(read(state.before(day(6)).unwrap()), "five");
        state.commit(day(6), 7, write("six again")).unwrap();
        assert_eq!(read(state.before(day(7)).unwrap()), "six again");
        // A rerun of the first night starts from nothing, as the first run did.
        assert!(state.before(day(5)).unwrap().is_none());
        assert!(state.before(day(2)).unwrap().is_none());
        // Only the newest `keep` nights stay; before them: a clear error, not a fresh start.
        state.commit(day(7), 2, write("seven")).unwrap();
        assert_eq!(state.nights().unwrap(), vec![day(6), day(7)]);
        let err = state.before(day(6)).unwrap_err().to_string();
        assert!(err.contains("no state before --as-of 2026-01-06"), "{err}");
    }

    #[test]
    fn a_crash_at_any_step_of_a_commit_leaves_complete_nights() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::new(root.path());
        state.commit(day(5), 7, write("one")).unwrap();
        // A run dies half-way through writing its night: nothing changes.
        let failed = state.commit(day(6), 7, |d| {
            std::fs::write(d.join("a"), "half").unwrap();
            Err(crate::error::Error::Io {
                context: "killed".into(),
                source: std::io::Error::other("crash"),
            })
        });
        assert!(failed.is_err());
        assert_eq!(state.nights().unwrap(), vec![day(5)]);
        // A rerun of the 5th died between moving the old night aside and renaming the new
        // one in: the old night comes back.
        std::fs::rename(
            root.path().join("night-2026-01-05"),
            root.path().join(".replaced-night-2026-01-05"),
        )
        .unwrap();
        assert_eq!(state.nights().unwrap(), vec![day(5)]);
        // Read where it is (reading moves nothing: runs without the lock read too).
        assert_eq!(
            std::fs::read_to_string(state.night(day(5)).join("a")).unwrap(),
            "one"
        );
        assert!(root.path().join(".replaced-night-2026-01-05").exists());
        // The next run commits cleanly and clears the leftovers.
        state.commit(day(6), 7, write("two")).unwrap();
        let left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            left,
            vec!["FIRST_NIGHT", "night-2026-01-05", "night-2026-01-06"]
        );
    }
}
