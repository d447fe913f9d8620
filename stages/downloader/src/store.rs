//! The clone store: one bare repository per source repository, at a path derived
//! safely from the host and full name, written by clone-to-temporary-then-rename so
//! a half clone never looks finished.
//!
//! Layout: `<root>/<host>/<owner>/<name>.git`, each part lowercased and checked (no
//! empty, `.` or `..` parts, no separators), so `a-b/c` and `a/b-c` cannot collide and
//! nothing lands outside the root. Temporary clones live in `<root>/.tmp/`, each locked
//! (flock) by the process making it; at start-up the ones no process holds are removed
//! (what a crash left behind), never another replica's clone in progress.
//!
//! Retention: `sweep` deletes clones older than the retention period, then the oldest
//! clones while the store is over its byte budget. The processor must have read a clone
//! by then; if it has not, it dead-letters the record and republishing the repository
//! brings the clone back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

const MARKER: &str = "codelupe-clone.json";

/// What a finished clone holds, written into it last before the rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub full_name: String,
    pub commit_id: String,
    pub default_branch: Option<String>,
    pub pushed_at_ms: Option<i64>,
    pub size_bytes: i64,
    pub file_count: i64,
    pub lines_by_language: BTreeMap<String, i64>,
    pub cloned_at_ms: i64,
}

impl Marker {
    /// Whether this clone is `repo` as it is now (nothing pushed since it was made).
    pub fn is_current_for(&self, repo: &codelupe_runtime::records::RepoUrl) -> bool {
        let unchanged = match (self.pushed_at_ms, repo.pushed_at_ms) {
            (Some(had), Some(now)) => had >= now,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        unchanged && self.full_name == repo.full_name
    }
}

pub struct CloneStore {
    root: PathBuf,
}

impl CloneStore {
    /// Creates the store if needed and clears temporary clones a crash left behind:
    /// those whose lock no live process holds.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create clone store {}", root.display()))?;
        let root = root.canonicalize()?;
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)?.flatten() {
            let path = entry.path();
            let abandoned = std::fs::File::open(&path).is_ok_and(|dir| dir.try_lock().is_ok());
            if abandoned {
                tracing::info!(path = %path.display(), "removing an unfinished clone");
                remove(&path)?;
            }
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `full_name` from `host` lives; None if a part is unsafe.
    pub fn path_for(&self, host: &str, full_name: &str) -> Option<PathBuf> {
        let (owner, name) = full_name.split_once('/')?;
        let name = name.strip_suffix(".git").unwrap_or(name);
        let mut path = self.root.clone();
        for part in [host, owner] {
            path.push(safe_part(part)?);
        }
        path.push(format!("{}.git", safe_part(name)?));
        Some(path)
    }

    /// A fresh temporary directory inside the store (same filesystem, so rename is
    /// atomic), locked for as long as the returned value lives.
    pub fn temporary(&self) -> anyhow::Result<TempClone> {
        let path = self.unique_temporary_path();
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let lock = std::fs::File::open(&path)?;
        lock.try_lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(TempClone { path, _lock: lock })
    }

    fn unique_temporary_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(".tmp")
            .join(format!("{}-{nanos}-{n}", std::process::id()))
    }

    pub fn marker(path: &Path) -> Option<Marker> {
        let text = std::fs::read_to_string(path.join(MARKER)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the marker into the finished temporary clone and renames it into place,
    /// replacing an older clone of the same repository. On failure the temporary clone
    /// is removed.
    pub fn commit(
        &self,
        temporary: TempClone,
        destination: &Path,
        marker: &Marker,
    ) -> anyhow::Result<()> {
        let placed = self.place(temporary.path(), destination, marker);
        if placed.is_err() {
            temporary.discard();
        }
        placed
    }

    fn place(&self, from: &Path, destination: &Path, marker: &Marker) -> anyhow::Result<()> {
        std::fs::write(from.join(MARKER), serde_json::to_vec_pretty(marker)?)?;
        let parent = destination.parent().context("clone path has a parent")?;
        std::fs::create_dir_all(parent)?;
        if destination.exists() {
            // Moved aside unlocked: if this process dies before removing it, the next
            // start-up does.
            let old = self.unique_temporary_path();
            std::fs::rename(destination, &old)?;
            std::fs::rename(from, destination)?;
            remove(&old)?;
        } else {
            std::fs::rename(from, destination)?;
        }
        Ok(())
    }

    /// Deletes clones past `retention`, then the oldest while over `budget_bytes`.
    /// Returns how many were deleted.
    /// Clones placed within `grace` are kept whatever the budget: their `repo-clones`
    /// record may not be published yet, so no reader's lag can vouch for them.
    pub fn sweep(
        &self,
        retention: Duration,
        budget_bytes: Option<u64>,
        grace: Duration,
    ) -> anyhow::Result<usize> {
        let mut clones = Vec::new();
        collect_clones(&self.root, 0, &mut clones);
        let young = codelupe_runtime::records::now_ms() - grace.as_millis() as i64;
        clones.retain(|(_, marker)| marker.cloned_at_ms <= young);
        clones.sort_by_key(|(_, marker)| marker.cloned_at_ms);
        let now = codelupe_runtime::records::now_ms();
        let mut total: u64 = clones.iter().map(|(_, m)| m.size_bytes.max(0) as u64).sum();
        let mut deleted = 0;
        for (path, marker) in clones {
            let expired = now - marker.cloned_at_ms > retention.as_millis() as i64;
            let over_budget = budget_bytes.is_some_and(|b| total > b);
            if !expired && !over_budget {
                continue;
            }
            tracing::info!(path = %path.display(), expired, over_budget, "removing clone");
            remove(&path)?;
            total = total.saturating_sub(marker.size_bytes.max(0) as u64);
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// A temporary clone in `.tmp/`, locked while this value lives.
pub struct TempClone {
    path: PathBuf,
    _lock: std::fs::File,
}

impl TempClone {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes what the failed clone left.
    pub fn discard(self) {
        remove(&self.path).ok();
    }
}

/// Removes a directory tree; one another replica removed first is not an error.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn collect_clones(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, Marker)>) {
    if depth > 3 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir())
            || path.file_name().is_some_and(|n| n == ".tmp")
        {
            continue;
        }
        match CloneStore::marker(&path) {
            Some(marker) => out.push((path, marker)),
            None => collect_clones(&path, depth + 1, out),
        }
    }
}

/// A path part that is safe and unambiguous: lowercased ASCII letters, digits, `-`,
/// `_` and `.`, not `.` or `..`, not starting with `.`.
fn safe_part(part: &str) -> Option<String> {
    let ok = !part.is_empty()
        && part.len() <= 100
        && !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then(|| part.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(name: &str, cloned_at_ms: i64, size_bytes: i64) -> Marker {
        Marker {
            full_name: name.into(),
            commit_id: "c".into(),
            default_branch: None,
            pushed_at_ms: None,
            size_bytes,
            file_count: 0,
            lines_by_language: BTreeMap::new(),
            cloned_at_ms,
        }
    }

    #[test]
    fn paths_are_safe_and_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let store = CloneStore::open(dir.path()).unwrap();
        let a = store.path_for("github.com", "a-b/c").unwrap();
        let b = store.path_for("github.com", "a/b-c").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(store.root()) && b.starts_with(store.root()));
        assert_eq!(
            store.path_for("github.com", "Owner/Repo.git"),
            store.path_for("github.com", "owner/repo")
        );
        for bad in [
            "../x",
            "a/..",
            "a/.git",
            "/etc/passwd",
            "a",
            "a/b/c",
            "a/",
            "a/b\\c",
        ] {
            assert_eq!(store.path_for("github.com", bad), None, "{bad}");
        }
        assert_eq!(store.path_for("..", "a/b"), None);
    }

    #[test]
    fn commit_replaces_and_sweep_applies_retention_then_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = CloneStore::open(dir.path()).unwrap();
        let now = codelupe_runtime::records::now_ms();
        for (name, age_h, size) in [("o/old", 100, 10), ("o/mid", 2, 600), ("o/new", 1, 600)] {
            let tmp = store.temporary().unwrap();
            let dest = store.path_for("h", name).unwrap();
            store
                .commit(tmp, &dest, &marker(name, now - age_h * 3_600_000, size))
                .unwrap();
            assert_eq!(CloneStore::marker(&dest).unwrap().full_name, name);
        }
        // 72 h retention removes o/old; a 1000-byte budget then removes the older of the rest.
        let deleted = store
            .sweep(Duration::from_secs(72 * 3600), Some(1000), Duration::ZERO)
            .unwrap();
        assert_eq!(deleted, 2);
        assert!(!store.path_for("h", "o/old").unwrap().exists());
        assert!(!store.path_for("h", "o/mid").unwrap().exists());
        assert!(store.path_for("h", "o/new").unwrap().exists());
    }

    #[test]
    fn open_clears_abandoned_clones_but_not_a_peers_clone_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = CloneStore::open(dir.path()).unwrap();
        let in_progress = store.temporary().unwrap();
        std::fs::create_dir_all(in_progress.path().join("objects")).unwrap();
        // What a crashed process left: a directory nobody holds a lock on.
        let abandoned = dir.path().join(".tmp/4242-1-0");
        std::fs::create_dir_all(abandoned.join("objects")).unwrap();

        // Another replica starts on the same store.
        CloneStore::open(dir.path()).unwrap();
        assert!(!abandoned.exists(), "the abandoned clone stayed");
        assert!(
            in_progress.path().exists(),
            "a clone in progress was removed"
        );

        let path = in_progress.path().to_path_buf();
        drop(in_progress);
        CloneStore::open(dir.path()).unwrap();
        assert!(!path.exists(), "released: nobody holds it any more");
    }

    #[test]
    fn a_clone_another_replica_removed_first_does_not_stop_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("h/o/gone.git");
        assert!(remove(&gone).is_ok());
        std::fs::create_dir_all(gone.join("objects")).unwrap();
        remove(&gone).unwrap();
        assert!(!gone.exists());
    }
}
