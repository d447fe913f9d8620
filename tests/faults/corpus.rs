//! What the harness feeds the pipeline: real crates from the local cargo registry as
//! repositories on `git daemon`, hostile repositories and hosts made here, and the
//! fake GitHub API that lists them all.

use std::path::Path;

use chrono::{TimeZone, Utc};

use crate::support::fake_github::{FakeGithub, FakeRepo};
use crate::support::hostile::{RecordingHost, StalledServer};
use crate::support::{bare_repo, import_tree, registry_crates, tree_bomb, GitDaemon};

/// How each hostile repository must end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    /// Cloned, its kept files reach `training-batches`.
    Kept,
    /// Dead-lettered by the downloader with this reason.
    DeadLetter(&'static str),
}

pub struct Corpus {
    pub github: FakeGithub,
    pub repos: Vec<(String, Expect)>,
    /// The crate folders imported (the tokenizer is fitted on them).
    pub crate_roots: Vec<std::path::PathBuf>,
    pub redirecting: RecordingHost,
    pub elsewhere: RecordingHost,
    pub stalled: StalledServer,
    _daemon: GitDaemon,
}

/// A valid C file of about `len` bytes, varied enough to pass the quality filters.
fn large_c_source(len: usize) -> Vec<u8> {
    let mut out = String::from("#include <stdio.h>\n\n");
    let mut i = 0u64;
    while out.len() < len {
        out.push_str(&format!(
            "/* step {i}: accumulate a weighted sum over the first {n} values */\n\
             static long step_{i}(const long *values, int count) {{\n\
             \x20   long total = {seed};\n\
             \x20   for (int k = 0; k < count && k < {n}; k++) {{\n\
             \x20       total += values[k] * {w} - (k % {m});\n\
             \x20   }}\n\
             \x20   return total;\n\
             }}\n\n",
            n = 3 + i % 29,
            seed = i * 7 % 101,
            w = 1 + i % 13,
            m = 2 + i % 5,
        ));
        i += 1;
    }
    out.push_str("int main(void) {\n    long v[4] = {1, 2, 3, 4};\n    printf(\"%ld\\n\", step_0(v, 4));\n    return 0;\n}\n");
    out.into_bytes()
}

impl Corpus {
    /// `crates` crates from the registry (real code) plus the hostile repositories.
    pub fn build(dir: &Path, crates: &[&str]) -> Self {
        let srv = dir.join("srv");
        let work = dir.join("import");
        std::fs::create_dir_all(&work).unwrap();
        let crate_roots = registry_crates(crates);
        assert_eq!(
            crate_roots.len(),
            crates.len(),
            "crates {crates:?} in the registry"
        );
        let mut repos = Vec::new();
        for root in &crate_roots {
            let name = root.file_name().unwrap().to_string_lossy().into_owned();
            import_tree(root, &srv.join(format!("crates/{name}.git")), &work);
            repos.push((format!("crates/{name}"), Expect::Kept));
        }
        // A source file just under the processor's 1 MiB cap and above Kafka's default
        // record limit.
        bare_repo(
            &srv.join("mallory/big-c.git"),
            &[("src/big.c", large_c_source(1_020_060))],
            None,
        );
        repos.push(("mallory/big-c".into(), Expect::Kept));
        // A symlink out of the repository and a file that is not UTF-8.
        let mut not_utf8 = b"fn main() {\n    let s = \"".to_vec();
        not_utf8.extend([0xFF, 0xFE, 0xC0, 0x80]);
        not_utf8.extend(b"\";\n    println!(\"{}\", s.len());\n}\n");
        bare_repo(
            &srv.join("mallory/odd.git"),
            &[
                ("src/not_utf8.rs", not_utf8),
                (
                    "src/lib.rs",
                    b"pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\npub fn sub(a: i32, b: i32) -> i32 {\n    a - b\n}\n".to_vec(),
                ),
            ],
            Some(("src/passwd.rs", "/etc/passwd")),
        );
        repos.push(("mallory/odd".into(), Expect::Kept));
        tree_bomb(&srv.join("mallory/paths.git"), 10, 10);
        repos.push(("mallory/paths".into(), Expect::DeadLetter("tree_bomb")));
        repos.push(("mallory/redirect".into(), Expect::DeadLetter("refused_url")));
        repos.push(("mallory/stalled".into(), Expect::DeadLetter("timeout")));

        let daemon = GitDaemon::start(&srv);
        let elsewhere = RecordingHost::start("404 Not Found", Vec::new());
        let redirecting = RecordingHost::start(
            "302 Found",
            vec![format!(
                "Location: http://localhost:{}/mallory/redirect.git/info/refs?service=git-upload-pack",
                elsewhere.port
            )],
        );
        let stalled = StalledServer::start();
        let start = Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp();
        let listed = repos
            .iter()
            .enumerate()
            .map(|(i, (name, _))| FakeRepo {
                full_name: name.clone(),
                language: "Rust".into(),
                pushed_at: start + i as i64 * 86_400,
                stars: 100,
                clone_url: Some(match name.as_str() {
                    "mallory/redirect" => {
                        format!("http://127.0.0.1:{}/mallory/redirect.git", redirecting.port)
                    }
                    "mallory/stalled" => {
                        format!("git://127.0.0.1:{}/mallory/stalled.git", stalled.port)
                    }
                    _ => daemon.url(&format!("{name}.git")),
                }),
            })
            .collect();
        Self {
            github: FakeGithub::start(listed, std::time::Duration::ZERO),
            repos,
            crate_roots,
            redirecting,
            elsewhere,
            stalled,
            _daemon: daemon,
        }
    }
}
