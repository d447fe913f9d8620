//! Clone time of the downloader's clone (git2, bare, depth 1) against the git CLI's
//! `git clone --bare --depth 1`, over git:// from a `git daemon` on 127.0.0.1, on
//! repositories made from real code: crate sources Cargo downloaded for this build.
//! Alternates the two per round and prints medians and their ratio.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codelupe_downloader::clone::{clone_bare, measure, Limits, Source};

const ROUNDS: usize = 7;
const CRATES: &[&str] = &[
    "tokio-1",
    "serde_json-1",
    "hyper-1",
    "git2-0",
    "rdkafka-sys-4",
];

fn run(cmd: &mut Command) {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?}");
}

/// A bare repository holding one crate's sources in one commit.
fn fixture(crate_dir: &Path, srv: &Path, work: &Path) -> String {
    let name = crate_dir.file_name().unwrap().to_string_lossy().to_string();
    let tree = work.join(&name);
    run(Command::new("cp").arg("-r").arg(crate_dir).arg(&tree));
    run(Command::new("git").args(["init", "-q"]).current_dir(&tree));
    run(Command::new("git").args(["add", "-A"]).current_dir(&tree));
    run(Command::new("git")
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@example.com",
            "commit",
            "-q",
            "-m",
            "import",
        ])
        .current_dir(&tree));
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&tree)
        .arg(srv.join(format!("{name}.git"))));
    name
}

fn registry_crates() -> Vec<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let mut found = Vec::new();
    for index in std::fs::read_dir(home.join("registry/src"))
        .unwrap()
        .flatten()
    {
        for prefix in CRATES {
            let mut versions: Vec<PathBuf> = std::fs::read_dir(index.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{prefix}."))
                })
                .collect();
            versions.sort();
            if let Some(last) = versions.pop() {
                found.push(last);
            }
        }
    }
    found
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, work, out) = (
        dir.path().join("srv"),
        dir.path().join("work"),
        dir.path().join("out"),
    );
    for d in [&srv, &work, &out] {
        std::fs::create_dir_all(d).unwrap();
    }
    let names: Vec<String> = registry_crates()
        .iter()
        .map(|c| fixture(c, &srv, &work))
        .collect();
    assert!(
        !names.is_empty(),
        "no crate sources found under the Cargo registry"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The daemon binary itself, so killing it at the end leaves no orphan.
    let exec_path = Command::new("git")
        .arg("--exec-path")
        .output()
        .unwrap()
        .stdout;
    let daemon_bin = PathBuf::from(String::from_utf8(exec_path).unwrap().trim()).join("git-daemon");
    let mut daemon = Command::new(daemon_bin)
        .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", srv.display()))
        .arg(&srv)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let limits = Limits {
        max_bytes: 1 << 30,
        timeout: Duration::from_secs(600),
    };
    println!("repository              size MiB   git CLI ms   git2 clone ms   ratio   git2 clone+measure ms   ratio");
    let (mut total_cli, mut total_ours, mut total_measured) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for name in &names {
        let url = format!("git://127.0.0.1:{port}/{name}.git");
        let source = Source {
            url: url.clone(),
            host: "127.0.0.1".into(),
            shallow: true,
        };
        let (mut cli, mut ours, mut measured) = (Vec::new(), Vec::new(), Vec::new());
        let mut size = 0;
        for round in 0..ROUNDS {
            let target = out.join(format!("cli-{name}-{round}"));
            let t = Instant::now();
            run(Command::new("git")
                .args(["clone", "-q", "--bare", "--depth", "1"])
                .arg(&url)
                .arg(&target));
            cli.push(t.elapsed());

            let target = out.join(format!("ours-{name}-{round}"));
            let t = Instant::now();
            let repo = clone_bare(&source, &target, limits, None).unwrap();
            ours.push(t.elapsed());
            let stats = measure(&repo).unwrap();
            measured.push(t.elapsed());
            size = stats.size_bytes;
        }
        let (c, o, m) = (median(cli), median(ours), median(measured));
        total_cli += c;
        total_ours += o;
        total_measured += m;
        println!(
            "{name:<24}{:>8.1}{:>13.1}{:>16.1}{:>8.2}{:>24.1}{:>8.2}",
            size as f64 / (1 << 20) as f64,
            c.as_secs_f64() * 1e3,
            o.as_secs_f64() * 1e3,
            o.as_secs_f64() / c.as_secs_f64(),
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / c.as_secs_f64(),
        );
    }
    println!(
        "all ({} repositories, median of {ROUNDS} alternating rounds each): clone ratio {:.2}x, clone+measure ratio {:.2}x (goal <= 1.1x)",
        names.len(),
        total_ours.as_secs_f64() / total_cli.as_secs_f64(),
        total_measured.as_secs_f64() / total_cli.as_secs_f64()
    );
    daemon.kill().ok();
    daemon.wait().ok();
}
