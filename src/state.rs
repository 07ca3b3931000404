//! State kept between runs (the identity graph, the model in production), committed
//! atomically: a run writes every state file into a new generation directory, then replaces
//! the `CURRENT` pointer (written aside, then renamed: one atomic step), then removes older
//! generations. A crash at any moment leaves `CURRENT` naming a complete generation, and the
//! next commit clears what the crash left behind.

use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

const CURRENT: &str = "CURRENT";
const PREFIX: &str = "gen-";

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

    /// The committed generation, or None before the first successful run.
    pub fn current(&self) -> Result<Option<PathBuf>> {
        let pointer = self.root.join(CURRENT);
        if !pointer.exists() {
            return Ok(None);
        }
        let name =
            std::fs::read_to_string(&pointer).ctx(format!("reading {}", pointer.display()))?;
        Ok(Some(self.root.join(name.trim())))
    }

    fn generation_number(name: &str) -> Option<u64> {
        name.strip_prefix(PREFIX)?.parse().ok()
    }

    /// Writes a new generation with `write`, then makes it current.
    pub fn commit(&self, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.root).ctx(format!("creating {}", self.root.display()))?;
        let current = self.current()?;
        let last = current
            .as_ref()
            .and_then(|p| p.file_name())
            .and_then(|n| Self::generation_number(&n.to_string_lossy()))
            .unwrap_or(0);
        let name = format!("{PREFIX}{:06}", last + 1);
        let dir = self.root.join(&name);
        if dir.exists() {
            // Left by a run that crashed before switching CURRENT.
            std::fs::remove_dir_all(&dir).ctx(format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
        write(&dir)?;
        let tmp = self.root.join(format!(".{CURRENT}.tmp"));
        std::fs::write(&tmp, &name).ctx("writing the state pointer")?;
        std::fs::rename(&tmp, self.root.join(CURRENT)).ctx("switching the state pointer")?;
        for entry in
            std::fs::read_dir(&self.root).ctx(format!("listing {}", self.root.display()))?
        {
            let entry = entry.ctx("listing state")?;
            let other = entry.file_name().to_string_lossy().to_string();
            if other != name && Self::generation_number(&other).is_some() {
                std::fs::remove_dir_all(entry.path()).ctx(format!("removing {other}"))?;
            }
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_before_the_pointer_switch_leaves_the_previous_state() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::new(root.path());
        assert!(state.current().unwrap().is_none());
        let first = state
            .commit(|d| std::fs::write(d.join("a"), "one").ctx("w"))
            .unwrap();
        assert_eq!(state.current().unwrap().as_deref(), Some(first.as_path()));
        // A run dies half-way through writing its generation: nothing changes.
        let failed = state.commit(|d| {
            std::fs::write(d.join("a"), "half").unwrap();
            Err(crate::error::Error::Io {
                context: "killed".into(),
                source: std::io::Error::other("crash"),
            })
        });
        assert!(failed.is_err());
        let cur = state.current().unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(cur.join("a")).unwrap(), "one");
        // The next run commits cleanly and clears the leftovers.
        let third = state
            .commit(|d| std::fs::write(d.join("a"), "two").ctx("w"))
            .unwrap();
        assert_eq!(std::fs::read_to_string(third.join("a")).unwrap(), "two");
        let gens: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(PREFIX))
            .collect();
        assert_eq!(gens.len(), 1, "{gens:?}");
    }
}
