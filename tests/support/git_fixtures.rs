//! Git repositories made by the tests, served by a real `git daemon` on 127.0.0.1, and
//! a throttling TCP proxy to make a clone slow enough to kill halfway.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::KillOnDrop;

/// A bare repository at `path` with `files` (path, content) in two commits (the first
/// commit holds only the first file), plus an optional symlink entry. Returns the HEAD
/// commit id.
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
        let mut builder = repo.treebuilder(None).unwrap();
        let mut subtrees: std::collections::BTreeMap<String, Vec<(String, git2::Oid)>> =
            Default::default();
        for (name, content) in &files[..upto] {
            let blob = repo.blob(content).unwrap();
            match name.split_once('/') {
                Some((dir, file)) => subtrees
                    .entry(dir.to_string())
                    .or_default()
                    .push((file.to_string(), blob)),
                None => {
                    builder.insert(name, blob, 0o100644).unwrap();
                }
            }
        }
        for (dir, entries) in subtrees {
            let mut sub = repo.treebuilder(None).unwrap();
            for (file, blob) in entries {
                sub.insert(&file, blob, 0o100644).unwrap();
            }
            builder
                .insert(&dir, sub.write().unwrap(), 0o040000)
                .unwrap();
        }
        if upto == files.len() {
            if let Some((name, target)) = symlink {
                let blob = repo.blob(target.as_bytes()).unwrap();
                builder.insert(name, blob, 0o120000).unwrap();
            }
        }
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        super::wait_for("git daemon", Duration::from_secs(10), || {
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
