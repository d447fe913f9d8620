//! Listing a commit's files from a clone without trusting the clone. A few hundred
//! kilobytes of git objects can describe a tree of 10^10 paths (trees that name the
//! same subtree ten times, ten levels deep) or a blob of gigabytes that compresses to
//! nothing, so the walk is capped in entries and time, sizes come from object headers
//! (nothing is inflated to learn them), and callers read only blobs they will keep,
//! within a total they state.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// Caps on one tree walk; the defaults are far above any real repository (the Linux
/// kernel has under 100,000 paths).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TreeLimits {
    /// Entries visited, directories included.
    pub max_entries: u64,
    /// Bytes of blobs a stage may inflate from one tree.
    pub max_read_bytes: u64,
    /// Wall time of the walk.
    pub max_walk_ms: u64,
}

impl Default for TreeLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_read_bytes: 4 << 30,
            max_walk_ms: 120_000,
        }
    }
}

/// One regular file (mode 100644 or 100755) of the tree; symlinks and submodules are
/// never listed.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub id: git2::Oid,
    /// From the object's header.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Past a cap: the repository is hostile or absurd; dead-letter it, do not retry.
    #[error("{0}")]
    Bomb(String),
    /// The object database is missing or damaged objects.
    #[error("{}", .0.message())]
    Corrupt(#[from] git2::Error),
}

/// Every regular file of `tree`, in tree order, or an error once the walk passes
/// `limits` or meets an object it cannot read.
pub fn files(
    repo: &git2::Repository,
    tree: &git2::Tree<'_>,
    limits: &TreeLimits,
) -> Result<Vec<FileEntry>, TreeError> {
    let odb = repo.odb()?;
    let started = Instant::now();
    let max_walk = Duration::from_millis(limits.max_walk_ms);
    let mut visited: u64 = 0;
    let mut files = Vec::new();
    let mut stopped: Option<TreeError> = None;
    let walked = tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        visited += 1;
        if visited > limits.max_entries {
            stopped = Some(TreeError::Bomb(format!(
                "the tree has more than {} entries",
                limits.max_entries
            )));
            return git2::TreeWalkResult::Abort;
        }
        if started.elapsed() > max_walk {
            stopped = Some(TreeError::Bomb(format!(
                "walking the tree took longer than {max_walk:?} ({visited} entries)"
            )));
            return git2::TreeWalkResult::Abort;
        }
        if entry.kind() != Some(git2::ObjectType::Blob)
            || !matches!(entry.filemode(), 0o100644 | 0o100755)
        {
            return git2::TreeWalkResult::Ok;
        }
        match odb.read_header(entry.id()) {
            Ok((size, _)) => files.push(FileEntry {
                path: format!("{dir}{}", entry.name().unwrap_or_default()),
                id: entry.id(),
                size: size as u64,
            }),
            Err(e) => {
                stopped = Some(TreeError::Corrupt(e));
                return git2::TreeWalkResult::Abort;
            }
        }
        git2::TreeWalkResult::Ok
    });
    if let Some(e) = stopped {
        return Err(e);
    }
    walked?;
    Ok(files)
}

/// Refuses a tree whose blobs to be read add up to more than `limits.max_read_bytes`.
pub fn check_read_budget<'a>(
    to_read: impl IntoIterator<Item = &'a FileEntry>,
    limits: &TreeLimits,
) -> Result<(), TreeError> {
    let total: u64 = to_read.into_iter().map(|f| f.size).sum();
    if total > limits.max_read_bytes {
        return Err(TreeError::Bomb(format!(
            "its files add up to {total} bytes, over the {} byte read cap",
            limits.max_read_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `src/a.rs`, `src/b.rs` (13 bytes each), `README` (5 bytes) and a symlink.
    fn small_tree(repo: &git2::Repository) -> git2::Oid {
        let code = repo.blob(b"fn main() {}\n").unwrap();
        let mut src = repo.treebuilder(None).unwrap();
        src.insert("a.rs", code, 0o100644).unwrap();
        src.insert("b.rs", code, 0o100755).unwrap();
        let src = src.write().unwrap();
        let mut root = repo.treebuilder(None).unwrap();
        root.insert("src", src, 0o040000).unwrap();
        root.insert("README", repo.blob(b"hello").unwrap(), 0o100644)
            .unwrap();
        root.insert("link", repo.blob(b"/etc/passwd").unwrap(), 0o120000)
            .unwrap();
        root.write().unwrap()
    }

    #[test]
    fn sizes_come_from_headers_and_only_regular_files_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let tree = repo.find_tree(small_tree(&repo)).unwrap();
        let listed = files(&repo, &tree, &TreeLimits::default()).unwrap();
        let listed: Vec<(&str, u64)> = listed.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(listed, [("README", 5), ("src/a.rs", 13), ("src/b.rs", 13)]);
    }

    #[test]
    fn the_walk_stops_at_the_entry_cap_and_reads_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let tree = repo.find_tree(small_tree(&repo)).unwrap();
        // Five entries: README, link, src, src/a.rs, src/b.rs.
        let capped = TreeLimits {
            max_entries: 4,
            ..Default::default()
        };
        let err = files(&repo, &tree, &capped).unwrap_err();
        assert!(matches!(err, TreeError::Bomb(_)), "{err}");
        assert!(err.to_string().contains("more than 4 entries"), "{err}");
        let listed = files(
            &repo,
            &tree,
            &TreeLimits {
                max_entries: 5,
                ..capped
            },
        )
        .unwrap();
        let tight = TreeLimits {
            max_read_bytes: 20,
            ..Default::default()
        };
        assert!(check_read_budget(&listed[..2], &tight).is_ok());
        assert!(matches!(
            check_read_budget(&listed, &tight),
            Err(TreeError::Bomb(_))
        ));
    }
}
