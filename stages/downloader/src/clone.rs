//! Bare, shallow clones with git2: which URLs may be cloned, the transfer limits
//! enforced while bytes arrive, and the measurements of the HEAD tree.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use codelupe_clone_store::tree::{self, TreeError, TreeLimits};

use crate::metrics::Failure;
use git2::{
    AutotagOption, Cred, ErrorClass, ErrorCode, FetchOptions, RemoteCallbacks, RemoteRedirect,
};
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
        // The split above must read the URL as a URL parser does: a port that is no
        // number, or a control character, makes them disagree, and then the transport
        // may connect somewhere other than where the policy looked.
        let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e}): {url}"))?;
        let parsed_host = parsed.host_str().unwrap_or_default();
        if !parsed_host.eq_ignore_ascii_case(&host)
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(format!(
                "ambiguous URL (a parser reads host {parsed_host:?}): {url}"
            ));
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

/// The GitHub token and the one host it may be handed to.
#[derive(Debug, Clone, Copy)]
pub struct Token<'a> {
    pub secret: &'a str,
    pub host: &'a str,
}

impl Token<'_> {
    /// Only `host` over https, on the default port, asks for it: not a host a
    /// redirect led to, not plain http where anyone on the path reads it.
    pub fn may_go_to(&self, url: &str) -> bool {
        let Some(rest) = url.strip_prefix("https://") else {
            return false;
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        !authority.contains('@')
            && host.eq_ignore_ascii_case(self.host)
            && port.is_none_or(|p| p == "443")
    }
}

/// Why a clone failed; `reason` is the metric and dead-letter label.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CloneFailure {
    pub reason: Failure,
    pub message: String,
    /// Worth another attempt (network trouble), as opposed to a property of the repository.
    pub transient: bool,
}

const ABORT_NONE: u8 = 0;
const ABORT_TOO_LARGE: u8 = 1;
const ABORT_TIMEOUT: u8 = 2;

/// Where the fetch puts the remote's HEAD before it is named after its branch.
const FETCHED_HEAD: &str = "refs/remotes/origin/HEAD";

/// Clones the default branch of `source` bare (and shallow where the transport allows)
/// into `into`, as `git clone --bare --depth 1 --single-branch` does: one branch's tip,
/// no other branches, no tags. Aborts as soon as the transfer passes `limits`, and
/// follows no redirect to another host. The token is handed over by the credentials
/// callback, and only to [`Token::host`] over https: it is never part of the URL and
/// never written to disk.
pub fn clone_bare(
    source: &Source,
    into: &Path,
    limits: Limits,
    token: Option<Token<'_>>,
) -> Result<git2::Repository, CloneFailure> {
    let aborted = AtomicU8::new(ABORT_NONE);
    let mut fetch = FetchOptions::new();
    fetch
        .remote_callbacks(callbacks(Instant::now(), &aborted, limits, token))
        .follow_redirects(RemoteRedirect::None)
        .download_tags(AutotagOption::None);
    if source.shallow {
        fetch.depth(1);
    }
    let store = |e: git2::Error| CloneFailure {
        reason: Failure::Store,
        message: format!("{}: {}", into.display(), e.message()),
        transient: true,
    };
    let repo = git2::Repository::init_bare(into).map_err(store)?;
    let branch = {
        // Anonymous: the URL is not written into the clone's config.
        let mut remote = repo.remote_anonymous(&source.url).map_err(store)?;
        let fetched = remote.fetch(&[format!("+HEAD:{FETCHED_HEAD}")], Some(&mut fetch), None);
        fetched.map_err(|e| match aborted.load(Ordering::Relaxed) {
            ABORT_TOO_LARGE => CloneFailure {
                reason: Failure::TooLarge,
                message: format!("transfer passed the {} byte cap", limits.max_bytes),
                transient: false,
            },
            // The whole clone's cap, unlike a server gone silent (a network timeout):
            // a property of the repository, so dead-lettered (replayable once raised).
            ABORT_TIMEOUT => CloneFailure {
                reason: Failure::Timeout,
                message: format!("clone took longer than {:?}", limits.timeout),
                transient: false,
            },
            _ => classify(&e),
        })?;
        // The advertisement stays readable after the fetch disconnects.
        remote
            .default_branch()
            .ok()
            .and_then(|name| name.as_str().ok().map(String::from))
    };
    name_head(&repo, branch).map_err(|e| match e {
        None => CloneFailure {
            reason: Failure::Empty,
            message: "the repository has no HEAD to clone".into(),
            transient: false,
        },
        Some(e) => store(e),
    })?;
    Ok(repo)
}

/// Progress callbacks that abort the transfer past `limits` (saying why in `aborted`),
/// and credentials that hand `token` over once, only where it may go.
fn callbacks<'a>(
    started: Instant,
    aborted: &'a AtomicU8,
    limits: Limits,
    token: Option<Token<'a>>,
) -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.transfer_progress(move |progress| {
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
    callbacks.sideband_progress(move |_| {
        started.elapsed() <= limits.timeout || {
            aborted.store(ABORT_TIMEOUT, Ordering::Relaxed);
            false
        }
    });
    let mut asked = false;
    callbacks.credentials(move |url, _username, _allowed| match token {
        // Asked twice means the token was refused: stop instead of looping.
        Some(token) if !asked && token.may_go_to(url) => {
            asked = true;
            Cred::userpass_plaintext("x-access-token", token.secret)
        }
        _ => Err(git2::Error::from_str("authentication required")),
    });
    callbacks
}

/// Points HEAD at the fetched commit under the remote's default branch (detached when
/// the server does not say which). `Err(None)`: nothing was fetched.
fn name_head(repo: &git2::Repository, branch: Option<String>) -> Result<(), Option<git2::Error>> {
    let head = repo.refname_to_id(FETCHED_HEAD).map_err(|_| None)?;
    repo.find_reference(FETCHED_HEAD)
        .and_then(|mut r| r.delete())?;
    match branch.filter(|b| b.starts_with("refs/heads/")) {
        Some(branch) => {
            repo.reference(&branch, head, true, "clone: default branch")?;
            repo.set_head(&branch)?;
        }
        // A server that does not say which branch HEAD is: keep the commit, unnamed.
        None => repo.set_head_detached(head)?,
    }
    Ok(())
}

/// libgit2's socket timeouts, for connecting and for each read, process-wide: a
/// server that accepts and then sends nothing fails the clone instead of holding it.
pub fn set_server_timeout(timeout: Duration) -> anyhow::Result<()> {
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: libgit2 options are plain process-wide ints; set before any clone
    // of this downloader runs, to the same value by every downloader of the process.
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms)?;
        git2::opts::set_server_timeout_in_milliseconds(ms)?;
    }
    Ok(())
}

fn classify(e: &git2::Error) -> CloneFailure {
    let message = e.message().to_string();
    let lower = message.to_ascii_lowercase();
    let (reason, transient) = if lower.contains("cannot redirect") {
        // A redirect to another host: the URL policy holds for every hop.
        (Failure::RefusedUrl, false)
    } else if e.code() == ErrorCode::Auth || lower.contains("authentication") {
        (Failure::Auth, false)
    } else if e.code() == ErrorCode::NotFound
        || lower.contains("not found")
        || lower.contains("does not exist")
        || lower.contains("no such repository")
        || lower.contains("does not appear to be a git repository")
        || lower.contains("access denied")
    {
        (Failure::NotFound, false)
    } else if lower.contains("overly large object") {
        // A delta declaring an object past clone_store::MAX_PACK_OBJECT_BYTES.
        (Failure::TooLarge, false)
    } else if matches!(
        e.class(),
        ErrorClass::Odb | ErrorClass::Indexer | ErrorClass::Zlib | ErrorClass::Object
    ) {
        (Failure::Corrupt, false)
    } else if e.code() == ErrorCode::Timeout || lower.contains("timed out") {
        (Failure::Timeout, true)
    } else {
        (
            Failure::Network,
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
const MAX_COUNTED_BLOB: u64 = 1 << 20;

/// Reads HEAD's tree straight from the object database: no checkout, and symlinks are
/// never followed (they are blobs holding a path). Sizes come from object headers;
/// only blobs small enough to be code are inflated, to count their lines.
pub fn measure(repo: &git2::Repository, limits: &TreeLimits) -> Result<TreeStats, CloneFailure> {
    let corrupt = |e: git2::Error| CloneFailure {
        reason: Failure::Corrupt,
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
    let refused = |e: TreeError| CloneFailure {
        reason: match e {
            TreeError::Bomb(_) => Failure::TreeBomb,
            TreeError::Corrupt(_) => Failure::Corrupt,
        },
        message: e.to_string(),
        transient: false,
    };
    let files = tree::files(repo, &tree, limits).map_err(refused)?;
    // Lines of the code the processor keeps by default (not licence texts or lock files).
    let kept = codelupe_runtime::language::Kept::default();
    let counted: Vec<(&tree::FileEntry, &str)> = files
        .iter()
        .filter(|f| f.size <= MAX_COUNTED_BLOB)
        .filter_map(|f| Some((f, kept.of_path(&f.path)?)))
        .collect();
    tree::check_read_budget(counted.iter().map(|(f, _)| *f), limits).map_err(refused)?;
    stats.file_count = files.len() as i64;
    stats.size_bytes = files.iter().map(|f| f.size as i64).sum();
    for (file, language) in counted {
        let blob = repo.find_blob(file.id).map_err(corrupt)?;
        let content = blob.content();
        if !content.iter().take(8000).any(|&b| b == 0) {
            *stats
                .lines_by_language
                .entry(language.to_string())
                .or_default() += bytecount_lines(content);
        }
    }
    Ok(stats)
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
    fn a_url_a_parser_reads_otherwise_is_refused() {
        let policy = UrlPolicy::default();
        // Found by the url_list fuzz target: the port was never read.
        for url in [
            "https://github.com:99999/owner/repo",
            "https://github.com:4\u{6}\0/owner/repo",
            "https://github.com:x/owner/repo",
        ] {
            assert!(policy.check(url).is_err(), "{url:?}");
        }
        assert!(policy
            .check("https://GitHub.com:443/owner/repo.git")
            .is_ok());
    }

    #[test]
    fn the_token_goes_to_its_host_over_https_only() {
        let token = Token {
            secret: "t",
            host: "github.com",
        };
        for url in [
            "https://github.com/a/b.git/info/refs?service=git-upload-pack",
            "https://GitHub.com:443/a/b.git",
        ] {
            assert!(token.may_go_to(url), "{url}");
        }
        for url in [
            "http://github.com/a/b.git",
            "git://github.com/a/b.git",
            "https://github.com.evil.example/a/b.git",
            "https://evil.example/github.com/a/b.git",
            "https://github.com:8443/a/b.git",
            "https://x@github.com/a/b.git",
        ] {
            assert!(!token.may_go_to(url), "{url}");
        }
    }

    #[test]
    fn lines_are_counted_with_or_without_a_final_newline() {
        assert_eq!(bytecount_lines(b""), 0);
        assert_eq!(bytecount_lines(b"a\nb\n"), 2);
        assert_eq!(bytecount_lines(b"a\nb"), 2);
    }
}
