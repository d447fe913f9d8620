//! Bare, shallow clones with git2: which URLs may be cloned, the transfer limits
//! enforced while bytes arrive, and the measurements of the HEAD tree.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use git2::{Cred, ErrorClass, ErrorCode, FetchOptions, RemoteCallbacks};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UrlPolicy {
    /// Network schemes accepted: `https` by default; `git` and `http` only when listed.
    pub allowed_schemes: Vec<String>,
    pub allowed_hosts: Vec<String>,
    /// `file://` URLs and local paths (tests, offline runs).
    pub allow_local: bool,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        Self {
            allowed_schemes: vec!["https".into()],
            allowed_hosts: vec!["github.com".into()],
            allow_local: false,
        }
    }
}

/// Where a clone URL points, once accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub url: String,
    /// Store directory for the host (`local` for files).
    pub host: String,
    /// libgit2 cannot fetch shallow over the local transport.
    pub shallow: bool,
}

impl UrlPolicy {
    pub fn check(&self, url: &str) -> Result<Source, String> {
        let local = |path: &str| {
            if !self.allow_local {
                return Err(format!("local sources are disabled: {url}"));
            }
            if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(format!(
                    "local source must be an absolute path without ..: {url}"
                ));
            }
            Ok(Source {
                url: url.to_string(),
                host: "local".into(),
                shallow: false,
            })
        };
        if let Some(path) = url.strip_prefix("file://") {
            return local(path);
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return local(url);
        };
        if !self
            .allowed_schemes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
        {
            return Err(format!("scheme {scheme} is not allowed"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err("credentials in the URL are refused; configure a token".into());
        }
        let host = authority
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
        {
            return Err(format!("host {host} is not allowed"));
        }
        Ok(Source {
            url: url.to_string(),
            host,
            shallow: true,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// Why a clone failed; `reason` is the metric and dead-letter label.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CloneFailure {
    pub reason: &'static str,
    pub message: String,
    /// Worth another attempt (network trouble), as opposed to a property of the repository.
    pub transient: bool,
}

const ABORT_NONE: u8 = 0;
const ABORT_TOO_LARGE: u8 = 1;
const ABORT_TIMEOUT: u8 = 2;

/// Clones `source` bare (and shallow where the transport allows) into `into`, aborting
/// as soon as the transfer passes `limits`. The token, if any, is handed over by the
/// credentials callback: it is never part of the URL and never written to disk.
pub fn clone_bare(
    source: &Source,
    into: &Path,
    limits: Limits,
    token: Option<&str>,
) -> Result<git2::Repository, CloneFailure> {
    let started = Instant::now();
    let aborted = AtomicU8::new(ABORT_NONE);
    let mut callbacks = RemoteCallbacks::new();
    callbacks.transfer_progress(|progress| {
        if progress.received_bytes() as u64 > limits.max_bytes {
            aborted.store(ABORT_TOO_LARGE, Ordering::Relaxed);
            return false;
        }
        if started.elapsed() > limits.timeout {
            aborted.store(ABORT_TIMEOUT, Ordering::Relaxed);
            return false;
        }
        true
    });
    callbacks.sideband_progress(|_| {
        started.elapsed() <= limits.timeout || {
            aborted.store(ABORT_TIMEOUT, Ordering::Relaxed);
            false
        }
    });
    let mut asked = false;
    callbacks.credentials(|_url, _username, _allowed| match token {
        // Asked twice means the token was refused: stop instead of looping.
        Some(token) if !asked => {
            asked = true;
            Cred::userpass_plaintext("x-access-token", token)
        }
        _ => Err(git2::Error::from_str("authentication required")),
    });
    let mut fetch = FetchOptions::new();
    fetch.remote_callbacks(callbacks);
    if source.shallow {
        fetch.depth(1);
    }
    let result = git2::build::RepoBuilder::new()
        .bare(true)
        .fetch_options(fetch)
        .clone(&source.url, into);
    result.map_err(|e| match aborted.load(Ordering::Relaxed) {
        ABORT_TOO_LARGE => CloneFailure {
            reason: "too_large",
            message: format!("transfer passed the {} byte cap", limits.max_bytes),
            transient: false,
        },
        ABORT_TIMEOUT => CloneFailure {
            reason: "timeout",
            message: format!("clone took longer than {:?}", limits.timeout),
            transient: true,
        },
        _ => classify(&e),
    })
}

fn classify(e: &git2::Error) -> CloneFailure {
    let message = e.message().to_string();
    let lower = message.to_ascii_lowercase();
    let (reason, transient) = if e.code() == ErrorCode::Auth || lower.contains("authentication") {
        ("auth", false)
    } else if e.code() == ErrorCode::NotFound
        || lower.contains("not found")
        || lower.contains("does not exist")
        || lower.contains("no such repository")
        || lower.contains("does not appear to be a git repository")
        || lower.contains("access denied")
    {
        ("not_found", false)
    } else if matches!(
        e.class(),
        ErrorClass::Odb | ErrorClass::Indexer | ErrorClass::Zlib | ErrorClass::Object
    ) {
        ("corrupt", false)
    } else if e.code() == ErrorCode::Timeout || lower.contains("timed out") {
        ("timeout", true)
    } else {
        (
            "network",
            matches!(
                e.class(),
                ErrorClass::Net | ErrorClass::Http | ErrorClass::Ssl | ErrorClass::Os
            ),
        )
    };
    CloneFailure {
        reason,
        message,
        transient,
    }
}

/// What the HEAD tree holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TreeStats {
    pub commit_id: String,
    pub default_branch: Option<String>,
    pub file_count: i64,
    pub size_bytes: i64,
    pub lines_by_language: BTreeMap<String, i64>,
}

impl TreeStats {
    pub fn lines_of_code(&self) -> i64 {
        self.lines_by_language.values().sum()
    }
}

/// Largest blob whose lines are counted; bigger files are data, not code.
const MAX_COUNTED_BLOB: usize = 1 << 20;

/// Reads HEAD's tree straight from the object database: no checkout, and symlinks are
/// never followed (they are blobs holding a path).
pub fn measure(repo: &git2::Repository) -> Result<TreeStats, CloneFailure> {
    let corrupt = |e: git2::Error| CloneFailure {
        reason: "corrupt",
        message: e.message().to_string(),
        transient: false,
    };
    let head = repo.head().map_err(corrupt)?;
    let commit = head.peel_to_commit().map_err(corrupt)?;
    let mut stats = TreeStats {
        commit_id: commit.id().to_string(),
        default_branch: head.shorthand().ok().map(String::from),
        ..Default::default()
    };
    let tree = commit.tree().map_err(corrupt)?;
    let mut failure = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        // Regular files only: no symlinks (0o120000), no submodules.
        if entry.kind() != Some(git2::ObjectType::Blob)
            || !matches!(entry.filemode(), 0o100644 | 0o100755)
        {
            return git2::TreeWalkResult::Ok;
        }
        let blob = match repo.find_blob(entry.id()) {
            Ok(blob) => blob,
            Err(e) => {
                failure = Some(corrupt(e));
                return git2::TreeWalkResult::Abort;
            }
        };
        stats.file_count += 1;
        stats.size_bytes += blob.size() as i64;
        let path = format!("{dir}{}", entry.name().unwrap_or_default());
        if let Some(language) = codelupe_runtime::language::of_path(&path) {
            let content = blob.content();
            if content.len() <= MAX_COUNTED_BLOB && !content.iter().take(8000).any(|&b| b == 0) {
                let lines = bytecount_lines(content);
                *stats
                    .lines_by_language
                    .entry(language.to_string())
                    .or_default() += lines;
            }
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(corrupt)?;
    match failure {
        Some(f) => Err(f),
        None => Ok(stats),
    }
}

fn bytecount_lines(content: &[u8]) -> i64 {
    let newlines = content.iter().filter(|&&b| b == b'\n').count() as i64;
    newlines + i64::from(content.last().is_some_and(|&b| b != b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_defaults_to_https_github_only() {
        let p = UrlPolicy::default();
        assert!(p.check("https://github.com/a/b.git").unwrap().shallow);
        for refused in [
            "file:///etc",
            "/srv/repos/a.git",
            "git://github.com/a/b.git",
            "http://github.com/a/b.git",
            "https://evil.example.com/a/b.git",
            "https://user:secret@github.com/a/b.git",
            "ssh://github.com/a/b.git",
        ] {
            assert!(p.check(refused).is_err(), "{refused}");
        }
        let local = UrlPolicy {
            allow_local: true,
            ..Default::default()
        };
        assert!(!local.check("file:///srv/a.git").unwrap().shallow);
        assert!(local.check("file:///srv/../etc").is_err());
        let git = UrlPolicy {
            allowed_schemes: vec!["git".into()],
            allowed_hosts: vec!["127.0.0.1".into()],
            ..Default::default()
        };
        assert_eq!(
            git.check("git://127.0.0.1:9418/a.git").unwrap().host,
            "127.0.0.1"
        );
    }

    #[test]
    fn lines_are_counted_with_or_without_a_final_newline() {
        assert_eq!(bytecount_lines(b""), 0);
        assert_eq!(bytecount_lines(b"a\nb\n"), 2);
        assert_eq!(bytecount_lines(b"a\nb"), 2);
    }
}
