//! Fixtures shared by the end-to-end tests and the benchmarks: git repositories made
//! here or imported from real code (crate sources Cargo downloaded), served by a real
//! `git daemon` on 127.0.0.1, and a throttling TCP proxy to make a clone slow enough
//! to kill halfway.

pub mod bench;
pub mod corpus;
pub mod dataset;
pub mod hostile;
pub mod kafka;
pub mod neardup;
pub mod packs;
pub mod reference;
pub mod schemas;
pub use corpus::{code_file, code_files, document_pieces, documents_ended, is_rust, packed_twice};
pub use hostile::{RecordingHost, StalledServer};
pub use kafka::*;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codelupe_clone_store::{self as clone_store, CloneStore, PackRef};
use codelupe_runtime::records::RepoClone;

/// A bare repository at `path` with `files` (path, content) in two commits (the first
/// commit holds only the first file), plus an optional symlink entry at the top. Returns
/// the HEAD commit id.
pub fn bare_repo(path: &Path, files: &[(&str, Vec<u8>)], symlink: Option<(&str, &str)>) -> String {
    let repo = git2::Repository::init_bare(path).unwrap();
    let sig = git2::Signature::new(
        "fixture",
        "fixture@example.com",
        &git2::Time::new(1_700_000_000, 0),
    )
    .unwrap();
    let mut parent: Option<git2::Oid> = None;
    for upto in [1, files.len()] {
        let mut entries: Vec<(String, git2::Oid, i32)> = files[..upto]
            .iter()
            .map(|(name, content)| (name.to_string(), repo.blob(content).unwrap(), 0o100644))
            .collect();
        if upto == files.len() {
            if let Some((name, target)) = symlink {
                entries.push((
                    name.to_string(),
                    repo.blob(target.as_bytes()).unwrap(),
                    0o120000,
                ));
            }
        }
        let tree = repo.find_tree(write_tree(&repo, &entries)).unwrap();
        let parents: Vec<git2::Commit> = parent
            .iter()
            .map(|p| repo.find_commit(*p).unwrap())
            .collect();
        let refs: Vec<&git2::Commit> = parents.iter().collect();
        parent = Some(
            repo.commit(Some("HEAD"), &sig, &sig, "fixture", &tree, &refs)
                .unwrap(),
        );
    }
    parent.unwrap().to_string()
}

/// A bare repository whose one commit names one subtree `fanout` times, `depth` levels
/// deep, over a single small blob: fanout^depth paths in a few hundred bytes of
/// objects (a git "tree bomb"). Returns the commit id.
pub fn tree_bomb(path: &Path, fanout: usize, depth: usize) -> String {
    let repo = git2::Repository::init_bare(path).unwrap();
    let blob = repo.blob(b"fn main() {}\n").unwrap();
    let mut builder = repo.treebuilder(None).unwrap();
    builder.insert("leaf.rs", blob, 0o100644).unwrap();
    let mut tree = builder.write().unwrap();
    for _ in 0..depth {
        let mut builder = repo.treebuilder(None).unwrap();
        for i in 0..fanout {
            builder.insert(format!("d{i}"), tree, 0o040000).unwrap();
        }
        tree = builder.write().unwrap();
    }
    let sig = git2::Signature::new(
        "bomb",
        "bomb@example.com",
        &git2::Time::new(1_700_000_000, 0),
    )
    .unwrap();
    let tree = repo.find_tree(tree).unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "bomb", &tree, &[])
        .unwrap()
        .to_string()
}

/// Writes nested trees for (path, blob, mode) entries; returns the root tree.
fn write_tree(repo: &git2::Repository, entries: &[(String, git2::Oid, i32)]) -> git2::Oid {
    let mut builder = repo.treebuilder(None).unwrap();
    let mut subdirs: std::collections::BTreeMap<String, Vec<(String, git2::Oid, i32)>> =
        Default::default();
    for (path, oid, mode) in entries {
        match path.split_once('/') {
            Some((dir, rest)) => {
                subdirs
                    .entry(dir.to_string())
                    .or_default()
                    .push((rest.to_string(), *oid, *mode))
            }
            None => {
                builder.insert(path, *oid, *mode).unwrap();
            }
        }
    }
    for (dir, children) in subdirs {
        builder
            .insert(&dir, write_tree(repo, &children), 0o040000)
            .unwrap();
    }
    builder.write().unwrap()
}

/// Bytes that do not compress, so a pack is as big as its content.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A port for a server a test starts (a stage's metrics, a fake service), free now and
/// below the kernel's ephemeral range: a port from that range (what binding port 0
/// gives) can be taken meanwhile as the local end of any outgoing connection, such as a
/// Kafka client's, and stay taken: a fault-harness replica given one could never bind
/// it (a CI run's downloader failed 48 starts in a row on "Address already in use").
/// Never the same port twice in one process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Above the fixed ports of this project's servers (metrics 9091-9096, the test
    // broker 19092-19093, the S3 server 18333 and 19333-19335). A kernel whose
    // ephemeral range starts lower leaves no such room: any port then.
    let (low, high) = (
        20_000,
        if ephemeral_low > 21_000 {
            ephemeral_low
        } else {
            60_000
        },
    );
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..10_000 {
        let port = fastrand::u16(low..high);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// The daemon binary itself: `git daemon` would run it as a grandchild that outlives
/// a kill of the `git` wrapper.
pub fn git_daemon() -> PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git is installed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("git-daemon")
}

pub struct GitDaemon {
    _process: KillOnDrop,
    pub port: u16,
    pub base: PathBuf,
}

impl GitDaemon {
    /// `git daemon` exporting every repository under `base` on 127.0.0.1.
    pub fn start(base: &Path) -> Self {
        let port = free_port();
        let process = Command::new(git_daemon())
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--informative-errors")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon runs (Debian package git)");
        let daemon = Self {
            _process: KillOnDrop(process),
            port,
            base: base.to_path_buf(),
        };
        wait_for("git daemon", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        daemon
    }

    pub fn url(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{path}", self.port)
    }
}

/// Forwards 127.0.0.1:<port> to `target`, sending server→client bytes at about
/// `bytes_per_second`.
pub fn throttling_proxy(target: u16, bytes_per_second: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let chunk = (bytes_per_second / 20).max(1);
                let mut buf = vec![0; chunk];
                loop {
                    match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

/// A bare repository at `bare` holding everything under `tree` in one commit (made with
/// the git CLI, as a user would). Returns the commit id.
pub fn import_tree(tree: &Path, bare: &Path, work: &Path) -> String {
    let run = |cmd: &mut Command| {
        let status = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{cmd:?}");
    };
    let copy = work.join(tree.file_name().unwrap());
    run(Command::new("cp").arg("-r").arg(tree).arg(&copy));
    // Nested git metadata or ignore rules in the copy would hide files from the import.
    let _ = std::fs::remove_dir_all(copy.join(".git"));
    run(Command::new("git").args(["init", "-q"]).current_dir(&copy));
    run(Command::new("git")
        .args(["add", "-A", "-f"])
        .current_dir(&copy));
    run(Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "-m",
            "import",
        ])
        .current_dir(&copy));
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&copy)
        .arg(bare));
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&copy)
        .output()
        .unwrap();
    String::from_utf8(head.stdout).unwrap().trim().to_string()
}

/// A `repo-clones` record of `full_name` at `commit` whose pack is `pack`, as the
/// downloader publishes one (no GitHub license reported).
pub fn clone_record(full_name: &str, pack: &PackRef, commit: &str) -> RepoClone {
    RepoClone {
        full_name: full_name.into(),
        clone_uri: pack.uri.clone(),
        commit_id: commit.into(),
        default_branch: Some("main".into()),
        size_bytes: 0,
        file_count: 0,
        lines_by_language: Default::default(),
        quality_score: 50.0,
        cloned_at_ms: codelupe_runtime::records::now_ms(),
        license_reported: None,
        pack_bytes: pack.bytes,
        pack_sha256: pack.sha256.clone(),
        stars: Some(100),
    }
}

/// A `repo-clones` record of `full_name` at `commit` with no pack in any store: for
/// examining a repository where it lies (`Processor::examine`).
pub fn unstored_clone_record(full_name: &str, commit: &str) -> RepoClone {
    let nowhere = PackRef {
        uri: String::new(),
        bytes: 0,
        sha256: String::new(),
    };
    clone_record(full_name, &nowhere, commit)
}

/// As the downloader does: packs `commit` of the bare repository at `bare`, writes the
/// pack to `store`, and returns the record that references it.
pub async fn stored_clone(
    store: &CloneStore,
    full_name: &str,
    bare: &Path,
    commit: &str,
) -> RepoClone {
    let pack = {
        let repo = git2::Repository::open_bare(bare).unwrap();
        clone_store::pack_commit(&repo, git2::Oid::from_str(commit).unwrap()).unwrap()
    };
    let reference = store.put_pack(pack.into()).await.unwrap();
    clone_record(full_name, &reference, commit)
}

/// Crate sources Cargo downloaded for this build: real code no one here wrote. One
/// unpacked crate for each of `prefixes` (`serde_json-1`: a 1.x): the version the workspace's Cargo.lock names when it is
/// unpacked, else the highest. What a test reads must not change with the other
/// versions the registry holds (a `cargo install` unpacks its own).
pub fn registry_crates(prefixes: &[&str]) -> Vec<PathBuf> {
    let all = all_registry_crates();
    let locked = locked_crates();
    prefixes
        .iter()
        .filter_map(|prefix| pick_crate(prefix, &all, &locked))
        .collect()
}

/// The `name-version` of every registry package in the workspace's Cargo.lock.
fn locked_crates() -> BTreeSet<String> {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut names = text.lines().filter_map(|l| l.strip_prefix("name = "));
    let mut versions = text.lines().filter_map(|l| l.strip_prefix("version = "));
    std::iter::from_fn(|| Some((names.next()?, versions.next()?)))
        .map(|(name, version)| format!("{}-{}", name.trim_matches('"'), version.trim_matches('"')))
        .collect()
}

/// Of the crates under `all` whose folder is `prefix.…`, the locked one, else the
/// highest version (compared as numbers: 0.8.12 above 0.8.5).
fn pick_crate(prefix: &str, all: &[PathBuf], locked: &BTreeSet<String>) -> Option<PathBuf> {
    let crate_name = prefix.rsplit_once('-').map_or(prefix, |(name, _)| name);
    let folder = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    let version = |p: &PathBuf| -> Vec<u64> {
        let name = folder(p);
        let numbers = name[crate_name.len() + 1..].split(['.', '-', '+']);
        numbers.map(|n| n.parse().unwrap_or(0)).collect()
    };
    all.iter()
        .filter(|p| folder(p).starts_with(&format!("{prefix}.")))
        .max_by_key(|p| (locked.contains(&folder(p)), version(p)))
        .cloned()
}

/// Every unpacked crate of the local cargo registry (the workspace's dependencies at
/// least), sorted.
pub fn all_registry_crates() -> Vec<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let mut crates: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .unwrap()
        .flatten()
        .flat_map(|index| std::fs::read_dir(index.path()).unwrap().flatten())
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    crates
}

/// The standard output of `command`, which must succeed (its standard error if not).
pub fn stdout_of(command: &mut Command) -> String {
    succeeded(command.output().unwrap())
}

/// The standard output of `command` given `input` on its standard input, which must
/// succeed (its standard error if not).
pub fn stdout_given(command: &mut Command, input: &[u8]) -> String {
    succeeded(output_given(command, input))
}

/// What `command` wrote and how it ended, given `input` on its standard input.
pub fn output_given(command: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the child when dropped, so a failed assertion never leaves a process holding
/// ports for the next test.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locked_version_of_a_registry_crate_is_read_whatever_else_is_unpacked() {
        let all: Vec<PathBuf> = ["regex-syntax-0.8.12", "regex-syntax-0.8.5", "serde-1.0.228"]
            .iter()
            .map(|n| PathBuf::from("/registry").join(n))
            .collect();
        let locked = BTreeSet::from(["regex-syntax-0.8.5".to_string()]);
        let picked = |locked: &BTreeSet<String>| pick_crate("regex-syntax-0", &all, locked);
        assert_eq!(picked(&locked), Some(all[1].clone()));
        // Nothing locked: the highest version as numbers, not as text.
        assert_eq!(picked(&BTreeSet::new()), Some(all[0].clone()));
    }

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_never_repeat() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let ephemeral_low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        let ports: Vec<u16> = (0..200).map(|_| super::free_port()).collect();
        if ephemeral_low > 21_000 {
            assert!(
                ports.iter().all(|&p| (20_000..ephemeral_low).contains(&p)),
                "{ports:?}"
            );
        }
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
