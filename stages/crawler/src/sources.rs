//! Offline sources: a list of repository URLs, and a folder scanned for git
//! repositories.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use codelupe_runtime::records::{now_ms, RepoUrl};

/// One line of a URL list: `https://host/owner/name[.git]` or `owner/name` (GitHub).
pub fn parse_line(line: &str) -> Result<Option<RepoUrl>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (host, path) = if let Some(rest) = line.strip_prefix("https://") {
        rest.split_once('/')
            .ok_or_else(|| format!("no owner/name after the host in {line:?}"))?
    } else if line.contains("://") {
        return Err(format!("only https URLs are accepted: {line:?}"));
    } else {
        ("github.com", line)
    };
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let mut parts = path.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected owner/name, got {path:?}"));
    };
    if !valid_host(host) {
        return Err(format!("invalid host {host:?}"));
    }
    for part in [owner, name] {
        if !valid_segment(part) {
            return Err(format!("invalid owner or name {part:?}"));
        }
    }
    let clone_url = format!("https://{host}/{owner}/{name}.git");
    // The host as a URL parser reads it: a port that is no number (`host:99999`) passes
    // the character check above, and a number is an IPv4 address (`3` is 0.0.0.3), which
    // the downloader's policy, matching hosts as written, would refuse.
    let parsed =
        reqwest::Url::parse(&clone_url).map_err(|e| format!("invalid host {host:?}: {e}"))?;
    let written = host.split(':').next().unwrap_or_default();
    match parsed.host_str() {
        Some(read) if read.eq_ignore_ascii_case(written) => {}
        read => return Err(format!("host {host:?} reads as {read:?}")),
    }
    Ok(Some(minimal_record(
        format!("{owner}/{name}"),
        clone_url,
        "url_list",
    )))
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_host(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
}

fn minimal_record(full_name: String, clone_url: String, source: &str) -> RepoUrl {
    RepoUrl {
        full_name,
        clone_url,
        default_branch: None,
        language: None,
        stars: 0,
        forks: 0,
        size_kb: 0,
        topics: Vec::new(),
        license_spdx: None,
        archived: false,
        fork: false,
        created_at_ms: None,
        pushed_at_ms: None,
        description: None,
        source: source.into(),
        discovered_at_ms: now_ms(),
    }
}

/// A problem with one line, reported and skipped.
#[derive(Debug, PartialEq)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// Reads a URL list from a file, or standard input for `-`.
pub fn read_url_list(path: &Path) -> anyhow::Result<(Vec<RepoUrl>, Vec<BadLine>)> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .with_context(|| format!("cannot open URL list {}", path.display()))?,
        ))
    };
    let mut repos = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading URL list {}", path.display()))?;
        match parse_line(&line) {
            Ok(Some(repo)) => repos.push(repo),
            Ok(None) => {}
            Err(message) => bad.push(BadLine {
                line: i + 1,
                message,
            }),
        }
    }
    Ok((repos, bad))
}

/// Git repositories (bare or with a work tree) under `root`, at most `max_depth` folders
/// down; a repository's own folders are not searched further.
pub fn scan_folder(root: &Path, max_depth: usize) -> anyhow::Result<Vec<RepoUrl>> {
    let root = root
        .canonicalize()
        .with_context(|| format!("cannot read local folder {}", root.display()))?;
    let mut found = Vec::new();
    let mut stack = vec![(root.clone(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if let Some(repo) = open_repository(&root, &dir)? {
            found.push(repo);
            continue;
        }
        if depth >= max_depth {
            continue;
        }
        let mut children: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        children.sort();
        stack.extend(children.into_iter().rev().map(|c| (c, depth + 1)));
    }
    Ok(found)
}

fn open_repository(root: &Path, dir: &Path) -> anyhow::Result<Option<RepoUrl>> {
    let is_repo =
        dir.join(".git").exists() || (dir.join("HEAD").is_file() && dir.join("objects").is_dir());
    if !is_repo {
        return Ok(None);
    }
    let repo = match git2::Repository::open(dir) {
        Ok(repo) => repo,
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = %e, "not a readable git repository; skipped");
            return Ok(None);
        }
    };
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    let parts: Vec<String> = relative
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".git")
                .to_string()
        })
        .collect();
    let full_name = match parts.as_slice() {
        [] => format!(
            "local/{}",
            root.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        [name] => format!("local/{name}"),
        [.., owner, name] => format!("{owner}/{name}"),
    };
    let head = repo.head().ok();
    let mut record = minimal_record(
        full_name,
        format!("file://{}", dir.display()),
        "local_folder",
    );
    record.default_branch = head
        .as_ref()
        .and_then(|h| h.shorthand().ok().map(String::from));
    record.pushed_at_ms = head
        .and_then(|h| h.peel_to_commit().ok())
        .map(|c| c.time().seconds() * 1000);
    // Like GitHub's `size`: the repository's object store, not a work tree or build output.
    record.size_kb = (folder_size(repo.path()) / 1024) as i64;
    Ok(Some(record))
}

fn folder_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_list_lines() {
        let r = parse_line("https://github.com/rust-lang/rust.git")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.full_name.as_str(), r.clone_url.as_str()),
            ("rust-lang/rust", "https://github.com/rust-lang/rust.git")
        );
        let r = parse_line("  tokio-rs/mini-redis  ").unwrap().unwrap();
        assert_eq!(r.clone_url, "https://github.com/tokio-rs/mini-redis.git");
        let r = parse_line("https://gitlab.example.com/a/b/")
            .unwrap()
            .unwrap();
        assert_eq!(r.clone_url, "https://gitlab.example.com/a/b.git");
        assert_eq!(parse_line("# comment").unwrap(), None);
        assert_eq!(parse_line("").unwrap(), None);
        for bad in [
            "http://github.com/a/b",
            "file:///etc",
            "a/b/c",
            "../b",
            "a",
            "https://github.com/a/..",
            "ftp://x/a/b",
            // Found by the url_list fuzz target: a port out of range, a numeric host.
            "https://github.com:99999/a/b",
            "https://3/a/b",
        ] {
            assert!(parse_line(bad).is_err(), "{bad} should be refused");
        }
    }
}
