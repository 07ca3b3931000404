//! Publish: a run writes everything into a staging directory beside its final place, then
//! writes `manifest.json` (every file with size and SHA-256) and `_SUCCESS`, and only then
//! renames the directory to `<output>/<as-of>/`. A crash leaves no half-written run visible;
//! a rerun of the same date replaces the previous outputs.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};

pub const MANIFEST: &str = "manifest.json";
pub const SUCCESS: &str = "_SUCCESS";
/// This execution's record (timings, memory): differs between identical runs, so it is not
/// in the manifest.
pub const RUN_RECORD: &str = "run.json";

/// An exclusive lock on a location (output or state), held for the whole run. It is an OS
/// file lock: if the process dies, even by `kill -9`, the kernel releases it, so a stale
/// lock file never blocks the next run.
pub struct RunLock {
    _file: std::fs::File,
}

pub const LOCK_FILE: &str = ".propel.lock";

impl RunLock {
    /// Takes the lock on `dir`, or fails at once with [`Error::LockHeld`].
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::LockHeld {
                    path,
                    holder: if holder.trim().is_empty() {
                        "unknown holder".into()
                    } else {
                        holder.trim().to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).ctx(format!("locking {}", path.display()));
            }
        }
        use std::io::Write;
        file.set_len(0).ctx("writing lock holder")?;
        write!(file, "pid {}", std::process::id()).ctx("writing lock holder")?;
        Ok(RunLock { _file: file })
    }
}

/// A run's output directory while it is being written.
pub struct Staging {
    pub dir: PathBuf,
    target: PathBuf,
}

#[derive(Debug, serde::Serialize)]
struct ManifestEntry {
    path: String,
    bytes: u64,
    sha256: String,
}

impl Staging {
    /// Creates `<root>/.staging-<name>-<pid>/`, removing leftovers of a crashed run first.
    pub fn create(root: &Path, name: &str) -> Result<Staging> {
        std::fs::create_dir_all(root).ctx(format!("creating {}", root.display()))?;
        let prefix = format!(".staging-{name}-");
        for entry in std::fs::read_dir(root).ctx(format!("listing {}", root.display()))? {
            let entry = entry.ctx("listing output")?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_dir_all(entry.path())
                    .ctx(format!("removing stale {}", entry.path().display()))?;
            }
        }
        let dir = root.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
        Ok(Staging {
            dir,
            target: root.join(name),
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes the manifest and the success marker, then moves the run into place.
    pub fn publish(self) -> Result<PathBuf> {
        let mut files = Vec::new();
        collect_files(&self.dir, &self.dir, &mut files)?;
        files.sort();
        let mut entries = Vec::new();
        for rel in files.into_iter().filter(|f| f != RUN_RECORD) {
            let bytes = std::fs::read(self.dir.join(&rel)).ctx(format!("reading {rel}"))?;
            entries.push(ManifestEntry {
                path: rel,
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            });
        }
        let manifest = serde_json::json!({ "files": entries });
        std::fs::write(
            self.dir.join(MANIFEST),
            serde_json::to_string_pretty(&manifest).expect("json") + "\n",
        )
        .ctx("writing manifest.json")?;
        std::fs::write(self.dir.join(SUCCESS), b"").ctx("writing _SUCCESS")?;
        if self.target.exists() {
            let old = self.target.with_file_name(format!(
                ".replaced-{}-{}",
                self.target.file_name().expect("named").to_string_lossy(),
                std::process::id()
            ));
            std::fs::rename(&self.target, &old)
                .ctx(format!("moving aside {}", self.target.display()))?;
            std::fs::rename(&self.dir, &self.target)
                .ctx(format!("publishing {}", self.target.display()))?;
            std::fs::remove_dir_all(&old).ctx(format!("removing {}", old.display()))?;
        } else {
            std::fs::rename(&self.dir, &self.target)
                .ctx(format!("publishing {}", self.target.display()))?;
        }
        Ok(self.target)
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).ctx(format!("listing {}", dir.display()))? {
        let path = entry.ctx("listing staging")?.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_is_all_or_nothing_and_a_rerun_replaces() {
        let root = tempfile::tempdir().unwrap();
        // A crashed run left a staging directory: it is never visible as a run and is cleaned.
        std::fs::create_dir_all(root.path().join(".staging-2026-01-02-999")).unwrap();
        let s = Staging::create(root.path(), "2026-01-02").unwrap();
        assert!(!root.path().join(".staging-2026-01-02-999").exists());
        std::fs::write(s.path("a.txt"), "one").unwrap();
        assert!(
            !root.path().join("2026-01-02").exists(),
            "nothing visible before publish"
        );
        let out = s.publish().unwrap();
        assert!(out.join(SUCCESS).exists());
        let manifest = std::fs::read_to_string(out.join(MANIFEST)).unwrap();
        assert!(
            manifest.contains("\"a.txt\"")
                && manifest.contains(&hex::encode(Sha256::digest(b"one")))
        );
        // Rerun: the old outputs are replaced as a whole.
        let s = Staging::create(root.path(), "2026-01-02").unwrap();
        std::fs::write(s.path("b.txt"), "two").unwrap();
        let out = s.publish().unwrap();
        assert!(out.join("b.txt").exists() && !out.join("a.txt").exists());
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("2026-01-02")]);
    }
}
