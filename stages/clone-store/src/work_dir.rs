//! A stage replica's private working folder: temporary directories for work in
//! progress (a clone being made, a pack being indexed), each locked (flock) by the
//! process using it and removed when dropped. At start-up the directories no process
//! holds are removed (what a crash left behind), never another process's work in
//! progress, so a folder shared by mistake cannot break a peer either.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use anyhow::Context as _;

pub struct WorkDir {
    root: PathBuf,
}

impl WorkDir {
    /// Creates the folder if needed and clears what crashed processes left in it.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create working folder {}", root.display()))?;
        let root = root.canonicalize()?;
        for entry in std::fs::read_dir(&root)?.flatten() {
            let path = entry.path();
            let abandoned = std::fs::File::open(&path).is_ok_and(|dir| dir.try_lock().is_ok());
            if abandoned {
                tracing::info!(path = %path.display(), "removing work a crash left behind");
                remove(&path)?;
            }
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh directory in the folder, locked and kept for as long as the returned
    /// value lives.
    pub fn temporary(&self) -> anyhow::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(format!("{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let lock = std::fs::File::open(&path)?;
        lock.try_lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(TempDir { path, _lock: lock })
    }
}

/// A locked temporary directory, removed when dropped.
pub struct TempDir {
    path: PathBuf,
    _lock: std::fs::File,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temporary directory");
        }
    }
}

/// Removes a directory tree; one already gone is not an error.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clears_abandoned_work_but_not_a_peers_work_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let work = WorkDir::open(dir.path()).unwrap();
        let in_progress = work.temporary().unwrap();
        std::fs::create_dir_all(in_progress.path().join("objects")).unwrap();
        // What a crashed process left: a directory nobody holds a lock on.
        let abandoned = dir.path().join("4242-1-0");
        std::fs::create_dir_all(abandoned.join("objects")).unwrap();

        // Another process starts on the same folder.
        WorkDir::open(dir.path()).unwrap();
        assert!(!abandoned.exists(), "the abandoned work stayed");
        assert!(in_progress.path().exists(), "work in progress was removed");

        let path = in_progress.path().to_path_buf();
        drop(in_progress);
        assert!(!path.exists(), "a dropped directory stayed");
    }
}
