//! The clone store: one bare repository per source repository, at a path derived
//! safely from the host and full name, written by clone-to-temporary-then-rename so
//! a half clone never looks finished.
//!
//! Layout: `<root>/<host>/<owner>/<name>.git`, each part lowercased and checked (no
//! empty, `.` or `..` parts, no separators), so `a-b/c` and `a/b-c` cannot collide and
//! nothing lands outside the root. Temporary clones live in `<root>/.tmp/` and are
//! removed at start-up (what a crash left behind).
//!
//! Retention: `sweep` deletes clones older than the retention period, then the oldest
//! clones while the store is over its byte budget. The processor must have read a clone
//! by then; if it has not, it dead-letters the record and republishing the repository
//! brings the clone back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

pub struct CloneStore {
    root: PathBuf,
}

impl CloneStore {
    /// Creates the store if needed and clears temporary clones a crash left behind.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create clone store {}", root.display()))?;
        let root = root.canonicalize()?;
        let tmp = root.join(".tmp");
        if tmp.exists() {
            for entry in std::fs::read_dir(&tmp)?.flatten() {
                tracing::info!(path = %entry.path().display(), "removing an unfinished clone");
                std::fs::remove_dir_all(entry.path()).ok();
            }
        }
        std::fs::create_dir_all(&tmp)?;
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

    /// A fresh temporary directory inside the store (same filesystem, so rename is atomic).
    pub fn temporary(&self) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.root
            .join(".tmp")
            .join(format!("{}-{nanos}", std::process::id()))
    }

    pub fn marker(path: &Path) -> Option<Marker> {
        let text = std::fs::read_to_string(path.join(MARKER)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the marker into the finished temporary clone and renames it into place,
    /// replacing an older clone of the same repository.
    pub fn commit(
        &self,
        temporary: &Path,
        destination: &Path,
        marker: &Marker,
    ) -> anyhow::Result<()> {
        std::fs::write(temporary.join(MARKER), serde_json::to_vec_pretty(marker)?)?;
        let parent = destination.parent().context("clone path has a parent")?;
        std::fs::create_dir_all(parent)?;
        if destination.exists() {
            let old = self.temporary();
            std::fs::rename(destination, &old)?;
            std::fs::rename(temporary, destination)?;
            std::fs::remove_dir_all(&old).ok();
        } else {
            std::fs::rename(temporary, destination)?;
        }
        Ok(())
    }

    /// Deletes clones past `retention`, then the oldest while over `budget_bytes`.
    /// Returns how many were deleted.
    pub fn sweep(&self, retention: Duration, budget_bytes: Option<u64>) -> anyhow::Result<usize> {
        let mut clones = Vec::new();
        collect_clones(&self.root, 0, &mut clones);
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
            std::fs::remove_dir_all(&path)?;
            total = total.saturating_sub(marker.size_bytes.max(0) as u64);
            deleted += 1;
        }
        Ok(deleted)
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
            let tmp = store.temporary();
            std::fs::create_dir_all(&tmp).unwrap();
            let dest = store.path_for("h", name).unwrap();
            store
                .commit(&tmp, &dest, &marker(name, now - age_h * 3_600_000, size))
                .unwrap();
            assert_eq!(CloneStore::marker(&dest).unwrap().full_name, name);
        }
        // 72 h retention removes o/old; a 1000-byte budget then removes the older of the rest.
        let deleted = store
            .sweep(Duration::from_secs(72 * 3600), Some(1000))
            .unwrap();
        assert_eq!(deleted, 2);
        assert!(!store.path_for("h", "o/old").unwrap().exists());
        assert!(!store.path_for("h", "o/mid").unwrap().exists());
        assert!(store.path_for("h", "o/new").unwrap().exists());
    }

    #[test]
    fn open_clears_unfinished_clones() {
        let dir = tempfile::tempdir().unwrap();
        let store = CloneStore::open(dir.path()).unwrap();
        let tmp = store.temporary();
        std::fs::create_dir_all(tmp.join("objects")).unwrap();
        CloneStore::open(dir.path()).unwrap();
        assert!(!tmp.exists());
    }
}
