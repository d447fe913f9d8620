//! Clone time of the downloader's clone (git2, bare, depth 1) against the git CLI's
//! `git clone --bare --depth 1`, over git:// from a `git daemon` on 127.0.0.1, on
//! repositories made from real code: crate sources Cargo downloaded for this build.
//! Alternates the two per round and prints medians and their ratio. Then what fetching
//! the default branch alone saves on a repository with many branches, against a
//! depth-1 clone of every branch (what the downloader fetched before).

use std::process::Command;
use std::time::{Duration, Instant};

use codelupe_clone_store::tree::TreeLimits;
use codelupe_downloader::clone::{clone_bare, measure, Limits, Source};
use codelupe_testkit::bench::{disk_bytes, median, served_crates, ROUNDS};
use codelupe_testkit::{bare_repo, incompressible, GitDaemon};

fn main() {
    // Five repositories (cloning is slower than reading files), rdkafka-sys the largest.
    let (dir, names, daemon) = served_crates(5);
    let out = dir.path().join("out");
    let port = daemon.port;
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
            let status = Command::new("git")
                .args(["clone", "-q", "--bare", "--depth", "1"])
                .arg(&url)
                .arg(&target)
                .status()
                .unwrap();
            assert!(status.success(), "git clone {url}");
            cli.push(t.elapsed());

            let target = out.join(format!("ours-{name}-{round}"));
            let t = Instant::now();
            let repo = clone_bare(&source, &target, limits, None).unwrap();
            ours.push(t.elapsed());
            let stats = measure(&repo, &TreeLimits::default()).unwrap();
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
    branches_saving(&dir.path().join("srv"), &out, &daemon, limits);
}

const BRANCHES: usize = 40;

/// A repository whose 40 branches each add a 100 kB file: cloned by the downloader
/// (default branch) and by `git clone --bare --depth 1 --no-single-branch`.
fn branches_saving(
    srv: &std::path::Path,
    out: &std::path::Path,
    daemon: &GitDaemon,
    limits: Limits,
) {
    let bare = srv.join("branchy.git");
    let head = bare_repo(&bare, &[("main.rs", b"fn main() {}\n".to_vec())], None);
    let repo = git2::Repository::open_bare(&bare).unwrap();
    let parent = repo
        .find_commit(git2::Oid::from_str(&head).unwrap())
        .unwrap();
    let sig = git2::Signature::now("b", "b@example.com").unwrap();
    for i in 0..BRANCHES {
        let blob = repo.blob(&incompressible(100_000, i as u64 + 11)).unwrap();
        let mut tree = repo.treebuilder(Some(&parent.tree().unwrap())).unwrap();
        tree.insert("data.bin", blob, 0o100644).unwrap();
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        repo.commit(
            Some(&format!("refs/heads/b{i}")),
            &sig,
            &sig,
            "b",
            &tree,
            &[&parent],
        )
        .unwrap();
    }
    let url = format!("git://127.0.0.1:{}/branchy.git", daemon.port);
    let every = out.join("branchy-every.git");
    let t = Instant::now();
    let status = Command::new("git")
        .args([
            "clone",
            "-q",
            "--bare",
            "--depth",
            "1",
            "--no-single-branch",
        ])
        .arg(&url)
        .arg(&every)
        .status()
        .unwrap();
    assert!(status.success());
    let every_time = t.elapsed();
    let ours = out.join("branchy-ours.git");
    let source = Source {
        url,
        host: "127.0.0.1".into(),
        shallow: true,
    };
    let t = Instant::now();
    clone_bare(&source, &ours, limits, None).unwrap();
    let ours_time = t.elapsed();
    let (every_bytes, ours_bytes) = (disk_bytes(&every), disk_bytes(&ours));
    println!(
        "{BRANCHES} branches: default branch only {:.1} KiB in {:.1} ms, every branch {:.1} KiB in {:.1} ms: {:.1}% of the bytes",
        ours_bytes as f64 / 1024.0,
        ours_time.as_secs_f64() * 1e3,
        every_bytes as f64 / 1024.0,
        every_time.as_secs_f64() * 1e3,
        100.0 * ours_bytes as f64 / every_bytes as f64
    );
}
