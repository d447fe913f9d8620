//! The downloader against repositories served by `git daemon` on 127.0.0.1: eligible
//! ones become packs of the right commit in the clone store, ineligible ones are
//! filtered with their reason, hostile inputs are refused or capped and leave nothing
//! behind, a downloader killed mid-clone never uses the half clone, and retention
//! pauses uploads rather than delete a pack the processor has not finished.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codelupe_clone_store::{self as clone_store, CloneStore};
use codelupe_downloader::clone::{clone_bare, Limits, Source, Token, UrlPolicy};
use codelupe_downloader::filter::FilterOptions;
use codelupe_downloader::metrics::DownloaderMetrics;
use codelupe_downloader::{Downloader, DownloaderOptions};
use codelupe_runtime::labels::LabelSet;
use codelupe_runtime::records::{RepoClone, RepoUrl};
use codelupe_runtime::{AvroRecord, Transform};
use codelupe_testkit::packs::delta_bomb;
use support::*;

const RUST: &str = "fn main() {\n    let x = 1;\n    let y = 2;\n    println!(\"{}\", x + y);\n}\n";
const PYTHON: &str = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n";

/// The working folder of a test's downloader, beside its store.
fn work_dir(store: &Path) -> PathBuf {
    store.with_file_name("work")
}

fn options(store: &Path) -> DownloaderOptions {
    DownloaderOptions {
        store: store.display().to_string(),
        work_dir: work_dir(store),
        urls: UrlPolicy {
            allowed_schemes: vec!["git".into()],
            allowed_hosts: vec!["127.0.0.1".into()],
            allow_local: false,
        },
        filter: FilterOptions {
            exclude_words: vec!["test".into()],
            ..Default::default()
        },
        max_clone_bytes: 1 << 20,
        clone_timeout_s: 60,
        // libgit2's timeout is process-wide: every downloader of this test binary
        // sets the same one.
        read_timeout_s: 5,
        ..Default::default()
    }
}

/// Every path under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The repository a record's pack holds, read back as the processor reads it.
async fn unpacked(store: &Path, clone: &RepoClone, into: &Path) -> git2::Repository {
    let store = CloneStore::open(store.to_str().unwrap()).unwrap();
    let pack = store
        .read_pack(&codelupe_clone_store::PackRef::from(clone))
        .await
        .unwrap();
    clone_store::unpack(&pack, into).unwrap()
}

/// The packs in the store at `store`, by URI.
async fn packs(store: &Path) -> Vec<String> {
    let store = CloneStore::open(store.to_str().unwrap()).unwrap();
    let mut uris: Vec<String> = store
        .packs()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.uri)
        .collect();
    uris.sort();
    uris
}

fn downloader(options: DownloaderOptions) -> (Downloader, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = DownloaderMetrics::register(&registry).unwrap();
    (Downloader::new(options, metrics).unwrap(), registry)
}

/// A config for `codelupe stage downloader` over the topics of `suffix`, cloning into
/// `store` from git daemons on 127.0.0.1; the extra lines go under `kafka`, under the
/// stage and under its options.
fn write_config(
    path: &Path,
    suffix: &str,
    store: &Path,
    kafka_extra: &str,
    stage_extra: &str,
    options_extra: &str,
) {
    std::fs::write(
        path,
        format!(
            "kafka:\n  brokers: {}\n  dead_letter_topic: dead-letters-{suffix}\n{kafka_extra}\
             clone_store: {{url: {}}}\nstages:\n  downloader:\n    metrics_port: {}\n    metrics_bind: 127.0.0.1\n{stage_extra}\
             \x20   options:\n      work_dir: {}\n      urls: {{allowed_schemes: [git], allowed_hosts: [127.0.0.1]}}\n{options_extra}",
            brokers(),
            store.display(),
            free_port(),
            work_dir(store).display()
        ),
    )
    .unwrap();
}

/// `codelupe stage downloader` as its own process, killed when dropped.
fn downloader_process(config: &Path, topology: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_codelupe"))
            .current_dir(repo_root())
            .args([
                "--config",
                config.to_str().unwrap(),
                "--topology",
                topology.to_str().unwrap(),
                "stage",
                "downloader",
            ])
            .env("CODELUPE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test]
async fn eligible_repositories_become_packs_of_the_right_commit() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let head = bare_repo(
        &srv.join("alice/good.git"),
        &[
            ("README.md", b"# good\n".to_vec()),
            ("src/main.rs", RUST.into()),
            ("lib.py", PYTHON.into()),
        ],
        Some(("passwd-link", "/etc/passwd")),
    );
    let daemon = GitDaemon::start(&srv);
    let store = dir.path().join("store");
    let (downloader, registry) = downloader(options(&store));

    let out = downloader
        .transform(url_record("alice/good", &daemon.url("alice/good.git")))
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    let clone: &RepoClone = &out[0].value;
    assert_eq!(out[0].key, "alice/good");
    assert_eq!(clone.commit_id, head);
    assert_eq!(
        clone.file_count, 3,
        "regular files only: the symlink is not a file"
    );
    assert_eq!(clone.lines_by_language.get("Rust"), Some(&5));
    assert_eq!(clone.lines_by_language.get("Python"), Some(&5));
    assert!(clone.quality_score > 0.0 && clone.quality_score <= 100.0);
    // GitHub's word on the license goes on to the processor, which checks it.
    assert_eq!(clone.license_reported.as_deref(), Some("MIT"));
    RepoClone::decode(&clone.encode().unwrap()).unwrap();

    let path = clone.clone_uri.strip_prefix("file://").unwrap();
    assert!(Path::new(path).starts_with(store.canonicalize().unwrap()));
    assert_eq!(
        clone.pack_bytes as u64,
        std::fs::metadata(path).unwrap().len()
    );
    assert!(path.ends_with(&format!("/packs/{}.pack", clone.pack_sha256)));
    let repo = unpacked(&store, clone, &dir.path().join("read.git")).await;
    let commit = repo
        .find_commit(git2::Oid::from_str(&head).unwrap())
        .unwrap();
    // The symlink is a blob holding a path; cloning bare never follows or creates it.
    let tree = commit.tree().unwrap();
    let link = tree.get_name("passwd-link").unwrap();
    assert_eq!(link.filemode(), 0o120000);
    assert_eq!(repo.find_blob(link.id()).unwrap().content(), b"/etc/passwd");
    for entry in listing(&store) {
        let p = store.join(&entry);
        assert!(
            !p.symlink_metadata().unwrap().file_type().is_symlink(),
            "symlink in the store: {entry}"
        );
        assert!(
            !entry.ends_with("main.rs") && !entry.contains("passwd"),
            "checked-out file in the store: {entry}"
        );
    }
    assert_eq!(
        metric(&registry, "downloader_repos_downloaded_total", None),
        1.0
    );
    assert_eq!(
        metric(&registry, "downloader_quality_passed_total", None),
        1.0
    );
    assert!(
        listing(&work_dir(&store)).is_empty(),
        "the clone stayed in the working folder"
    );

    // Cloned already at this push: published again without touching the network.
    std::fs::remove_dir_all(srv.join("alice/good.git")).unwrap();
    let again = downloader
        .transform(url_record("alice/good", &daemon.url("alice/good.git")))
        .await
        .unwrap();
    assert_eq!(again[0].value.commit_id, head);
    assert_eq!(
        metric(&registry, "downloader_repos_downloaded_total", None),
        1.0
    );

    // Ineligible: filtered with the first rule they fail; "fastest" is not "test".
    let few_stars = RepoUrl {
        stars: 3,
        ..url_record("bob/small", &daemon.url("bob/small.git"))
    };
    assert!(downloader.transform(few_stars).await.unwrap().is_empty());
    let worded = url_record("bob/test-utils", &daemon.url("bob/test-utils.git"));
    assert!(downloader.transform(worded).await.unwrap().is_empty());
    let archived = RepoUrl {
        archived: true,
        ..url_record("bob/old", &daemon.url("bob/old.git"))
    };
    assert!(downloader.transform(archived).await.unwrap().is_empty());
    assert_eq!(
        metric(&registry, "downloader_quality_filtered_total", None),
        3.0
    );
    for reason in ["stars", "excluded_word", "archived"] {
        assert_eq!(
            metric(
                &registry,
                "downloader_quality_filtered_reasons_total",
                Some(reason)
            ),
            1.0,
            "{reason}"
        );
    }
    bare_repo(&srv.join("bob/fastest.git"), &[("a.rs", RUST.into())], None);
    let fastest = url_record("bob/fastest", &daemon.url("bob/fastest.git"));
    assert_eq!(downloader.transform(fastest).await.unwrap().len(), 1);
}

#[tokio::test]
async fn hostile_inputs_are_refused_or_capped_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    bare_repo(
        &srv.join("mallory/huge.git"),
        &[
            ("a.rs", RUST.into()),
            ("blob.bin", incompressible(3 << 20, 7)),
        ],
        None,
    );
    bare_repo(
        &srv.join("mallory/fine.git"),
        &[("a.rs", RUST.into())],
        None,
    );
    tree_bomb(&srv.join("mallory/paths.git"), 10, 10);
    // A few KiB sent whose delta declares an object one MiB over the cap.
    let bomb_copies = clone_store::MAX_PACK_OBJECT_BYTES / (1 << 20) + 1;
    delta_bomb(&srv.join("mallory/delta.git"), bomb_copies);
    let daemon = GitDaemon::start(&srv);
    let store = dir.path().join("store");
    let (downloader, registry) = downloader(options(&store));

    let cases = [
        (url_record("mallory/etc", "file:///etc"), "refused_url"),
        (url_record("mallory/local", "/etc"), "refused_url"),
        (
            url_record("../escape", &daemon.url("mallory/fine.git")),
            "refused_url",
        ),
        (
            url_record("mallory/..", &daemon.url("mallory/fine.git")),
            "refused_url",
        ),
        (
            url_record(
                "mallory/elsewhere",
                &format!("git://localhost:{}/mallory/fine.git", daemon.port),
            ),
            "refused_url",
        ),
        (
            url_record(
                "mallory/https-elsewhere",
                "https://evil.example.com/mallory/fine.git",
            ),
            "refused_url",
        ),
        (
            url_record("mallory/huge", &daemon.url("mallory/huge.git")),
            "too_large",
        ),
        (
            url_record("mallory/delta", &daemon.url("mallory/delta.git")),
            "too_large",
        ),
        (
            url_record("mallory/missing", &daemon.url("mallory/missing.git")),
            "not_found",
        ),
        // 10^10 paths: refused at the entry cap, not walked.
        (
            url_record("mallory/paths", &daemon.url("mallory/paths.git")),
            "tree_bomb",
        ),
    ];
    for (record, reason) in cases {
        let name = record.full_name.clone();
        let err = downloader.transform(record).await.expect_err(&name);
        assert_eq!(err.reason.label(), reason, "{name}: {err}");
        assert!(!err.retryable, "{name}");
    }
    assert_eq!(
        metric(
            &registry,
            "downloader_repos_failed_total",
            Some("refused_url")
        ),
        6.0
    );
    assert_eq!(
        metric(
            &registry,
            "downloader_repos_failed_total",
            Some("too_large")
        ),
        2.0
    );
    assert!(listing(&store).is_empty(), "nothing left in the store");
    assert!(
        listing(&work_dir(&store)).is_empty(),
        "nor in the working folder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_clone_it_never_uses_the_half_clone_and_publishes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let quick = bare_repo(&srv.join("carol/quick.git"), &[("a.rs", RUST.into())], None);
    let slow = bare_repo(
        &srv.join("carol/slow.git"),
        &[
            ("a.rs", RUST.into()),
            ("data.bin", incompressible(1_500_000, 3)),
        ],
        None,
    );
    let daemon = GitDaemon::start(&srv);
    // ~150 KB/s: the slow clone takes about 10 s.
    let proxy = throttling_proxy(daemon.port, 150_000);

    let (suffix, topology) = fresh_topics(dir.path(), "d");
    let store = dir.path().join("store");
    let config = dir.path().join("codelupe.yaml");
    write_config(
        &config,
        &suffix,
        &store,
        "  consumer: {session.timeout.ms: 6000, heartbeat.interval.ms: 1000}\n",
        "",
        "      max_clone_bytes: 10000000\n",
    );
    let input = format!("repo-urls-{suffix}");
    let output = format!("repo-clones-{suffix}");
    let via_proxy = |name: &str| format!("git://127.0.0.1:{proxy}/{name}.git");
    let records = ["carol/slow", "carol/quick"].map(|name| {
        (
            name.to_string(),
            url_record(name, &via_proxy(name)).encode().unwrap(),
        )
    });
    produce_all(&input, records.to_vec()).await;
    let stage = || downloader_process(&config, &topology);
    let work = work_dir(&store);
    let mut first = stage();
    wait_for("a clone in progress", Duration::from_secs(60), || {
        std::fs::read_dir(&work).is_ok_and(|mut d| d.next().is_some())
    });
    std::thread::sleep(Duration::from_secs(2));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(
        packs(&store).await.len() <= 1,
        "a pack of the half clone is in the store"
    );
    let stale: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!stale.is_empty(), "the killed clone was mid-transfer");

    let _second = stage();
    let out = output.clone();
    wait_for("both clones published", Duration::from_secs(120), || {
        let names: std::collections::HashSet<String> = read_all(&out, Duration::from_secs(1))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        names.contains("carol/slow") && names.contains("carol/quick")
    });
    for (key, value) in read_all(&output, Duration::from_secs(1)) {
        let clone = RepoClone::decode(&value).unwrap();
        let expected = if key == "carol/slow" { &slow } else { &quick };
        assert_eq!(&clone.commit_id, expected, "{key}");
        let read = tempfile::tempdir().unwrap();
        let repo = unpacked(&store, &clone, &read.path().join("r.git")).await;
        let commit = git2::Oid::from_str(expected).unwrap();
        let tree = repo.find_commit(commit).unwrap().tree().unwrap();
        assert!(tree.get_name("a.rs").is_some(), "{key}");
    }
    // Only the killed process's clone: a replayed record may have one of its own in
    // progress.
    let left: Vec<&String> = stale
        .iter()
        .filter(|name| work.join(name).exists())
        .collect();
    assert!(
        left.is_empty(),
        "the stale temporary clone stayed: {left:?}"
    );
}

#[tokio::test]
async fn only_the_default_branch_tip_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let bare = srv.join("dora/branches.git");
    let head = bare_repo(&bare, &[("a.rs", RUST.into())], None);
    // Another branch and a tag, holding a blob the default branch does not.
    let served = git2::Repository::open_bare(&bare).unwrap();
    let default_branch = served.head().unwrap().shorthand().unwrap().to_string();
    let side_blob = served.blob(b"only on the side branch\n").unwrap();
    let mut tree = served.treebuilder(None).unwrap();
    tree.insert("side.txt", side_blob, 0o100644).unwrap();
    let tree = served.find_tree(tree.write().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@example.com").unwrap();
    let parent = served
        .find_commit(git2::Oid::from_str(&head).unwrap())
        .unwrap();
    let side = served
        .commit(
            Some("refs/heads/side"),
            &sig,
            &sig,
            "side",
            &tree,
            &[&parent],
        )
        .unwrap();
    served
        .tag_lightweight("v1", &served.find_object(side, None).unwrap(), false)
        .unwrap();
    let daemon = GitDaemon::start(&srv);
    let store = dir.path().join("store");
    let (downloader, _) = downloader(options(&store));

    let out = downloader
        .transform(url_record(
            "dora/branches",
            &daemon.url("dora/branches.git"),
        ))
        .await
        .unwrap();
    let clone = &out[0].value;
    assert_eq!(clone.commit_id, head);
    assert_eq!(
        clone.default_branch.as_deref(),
        Some(default_branch.as_str())
    );
    // The pack holds the tip's objects only.
    let packed = unpacked(&store, clone, &dir.path().join("packed.git")).await;
    assert!(packed
        .find_commit(git2::Oid::from_str(&head).unwrap())
        .is_ok());
    assert!(
        packed.find_commit(side).is_err(),
        "the side branch was packed"
    );
    assert!(
        packed.find_blob(side_blob).is_err(),
        "the side branch's blob was packed"
    );

    // And the clone it was made from fetched no more: the clone itself, as the
    // downloader makes it in its working folder.
    let source = options(&store)
        .urls
        .check(&daemon.url("dora/branches.git"))
        .unwrap();
    let limits = Limits {
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(60),
    };
    let repo = clone_bare(&source, &dir.path().join("clone.git"), limits, None).unwrap();
    let refs: Vec<String> = repo
        .references()
        .unwrap()
        .names()
        .map(|n| n.unwrap().to_string())
        .collect();
    assert_eq!(
        refs,
        [format!("refs/heads/{default_branch}")],
        "one branch, no tags"
    );
    assert_eq!(
        repo.head().unwrap().shorthand(),
        Ok(default_branch.as_str())
    );
    assert!(
        repo.find_commit(side).is_err(),
        "the side branch was fetched"
    );
    assert!(
        repo.find_blob(side_blob).is_err(),
        "the side branch's blob was fetched"
    );
    assert!(repo.is_shallow());
    let remotes = repo.remotes().unwrap();
    assert!(
        remotes.is_empty(),
        "the URL is not kept in the clone's config"
    );
}

#[tokio::test]
async fn a_server_that_stops_sending_fails_the_clone_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let stalled = StalledServer::start();
    let store = dir.path().join("store");
    let (downloader, _) = downloader(options(&store));
    let url = format!("git://127.0.0.1:{}/erin/stalled.git", stalled.port);
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(90),
        downloader.transform(url_record("erin/stalled", &url)),
    )
    .await
    .expect("the clone is still waiting on a server that sends nothing")
    .unwrap_err();
    assert_eq!(err.reason.label(), "timeout", "{err}");
    assert!(
        err.transient,
        "a stalled host is an outage, not a dead letter"
    );
    assert_eq!(stalled.connections(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "gave up after {:?}, not after the 5 s read timeout",
        started.elapsed()
    );
    assert!(listing(&store).is_empty(), "nothing left in the store");
    assert!(
        listing(&work_dir(&store)).is_empty(),
        "nor in the working folder"
    );
}

#[test]
fn no_redirect_to_another_host_is_followed_and_the_token_goes_to_its_host_only() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = RecordingHost::start("404 Not Found", Vec::new());
    let redirecting = RecordingHost::start(
        "302 Found",
        vec![format!(
            "Location: http://localhost:{}/m/r.git/info/refs?service=git-upload-pack",
            elsewhere.port
        )],
    );
    let asking = RecordingHost::start(
        "401 Unauthorized",
        vec!["WWW-Authenticate: Basic realm=\"git\"".into()],
    );
    let limits = Limits {
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(30),
    };
    let secret = "ghp_the-token-under-test";
    for (i, host) in [&redirecting, &asking].into_iter().enumerate() {
        let source = Source {
            url: format!("http://127.0.0.1:{}/m/r.git", host.port),
            host: "127.0.0.1".into(),
            shallow: true,
        };
        // Named as the token's host, but asked over plain http: no token either.
        let token = Token {
            secret,
            host: "127.0.0.1",
        };
        let Err(failure) = clone_bare(
            &source,
            &dir.path().join(i.to_string()),
            limits,
            Some(token),
        ) else {
            panic!("nothing to clone at {}", source.url)
        };
        assert!(!failure.transient, "{failure}");
        assert_eq!(
            failure.reason.label(),
            ["refused_url", "auth"][i],
            "{failure}"
        );
        assert!(!host.requests().is_empty());
    }
    assert!(
        elsewhere.requests().is_empty(),
        "an off-site redirect was followed: {:?}",
        elsewhere.requests()
    );
    let sent = asking.requests();
    assert!(
        sent.iter().all(|r| r.header("authorization").is_none()),
        "credentials went to a host over http: {sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_while_a_clone_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let stalled = StalledServer::start();
    let (suffix, topology) = fresh_topics(dir.path(), "stuck");
    let store = dir.path().join("store");
    let config = dir.path().join("codelupe.yaml");
    // A read timeout far beyond the test: the clone stays stuck in libgit2.
    write_config(
        &config,
        &suffix,
        &store,
        "",
        "    drain_timeout_ms: 2000\n",
        "      read_timeout_s: 3600\n",
    );
    let url = format!("git://127.0.0.1:{}/erin/stuck.git", stalled.port);
    produce_all(
        &format!("repo-urls-{suffix}"),
        vec![(
            "erin/stuck".into(),
            url_record("erin/stuck", &url).encode().unwrap(),
        )],
    )
    .await;
    let mut stage = downloader_process(&config, &topology);
    wait_for(
        "the clone to reach the server",
        Duration::from_secs(60),
        || stalled.connections() > 0,
    );
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &stage.0.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(status) = stage.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM with a 2 s drain"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exited with {status}");
    println!("exited {:?} after SIGTERM", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_the_downloader_waits_and_only_finished_packs_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let names = ["frank/a", "frank/b", "frank/c", "frank/d"];
    let mut pack_bytes = 0;
    for (i, name) in names.iter().enumerate() {
        let bare = srv.join(format!("{name}.git"));
        let content = format!("{RUST}// repository {i}\n");
        let head = bare_repo(&bare, &[("a.rs", content.into_bytes())], None);
        let repo = git2::Repository::open_bare(&bare).unwrap();
        let pack = clone_store::pack_commit(&repo, git2::Oid::from_str(&head).unwrap()).unwrap();
        pack_bytes = pack_bytes.max(pack.len());
    }
    let daemon = GitDaemon::start(&srv);
    let (suffix, topology) = fresh_topics(dir.path(), "sweep");
    let store = dir.path().join("store");
    let config = dir.path().join("codelupe.yaml");
    // Room for one pack and a half: a backlog of four is over the budget.
    write_config(
        &config,
        &suffix,
        &store,
        "",
        "",
        &format!(
            "      max_store_bytes: {}\n      sweep_interval_s: 1\n      sweep_grace_s: 3\n",
            pack_bytes * 3 / 2
        ),
    );
    let records = names.map(|name| {
        (
            name.to_string(),
            url_record(name, &daemon.url(&format!("{name}.git")))
                .encode()
                .unwrap(),
        )
    });
    produce_all(&format!("repo-urls-{suffix}"), records.to_vec()).await;
    let _stage = downloader_process(&config, &topology);
    let clones = format!("repo-clones-{suffix}");
    // Everything read from the topic so far: one read that stops early (its idle time
    // passed before a partition's records came) cannot make a record vanish.
    let seen = std::cell::RefCell::new(Vec::<RepoClone>::new());
    let published = || -> Vec<RepoClone> {
        let mut seen = seen.borrow_mut();
        for (_, value) in read_all(&clones, Duration::from_secs(2)) {
            let clone = RepoClone::decode(&value).unwrap();
            if !seen.contains(&clone) {
                seen.push(clone);
            }
        }
        seen.clone()
    };
    wait_for("the first pack published", Duration::from_secs(60), || {
        !published().is_empty()
    });
    // Records come back in partition order: the newest is the one not seen before.
    let mut finished: Vec<RepoClone> = Vec::new();
    for step in 1..=names.len() {
        // Several sweeps while the processor has committed nothing more: the stage
        // waits, and the pack the unread record names stays.
        std::thread::sleep(Duration::from_secs(4));
        let now = published();
        assert_eq!(
            now.len(),
            step,
            "published past the budget of {}: {:?}",
            pack_bytes * 3 / 2,
            now.iter()
                .map(|c| (&c.full_name, c.pack_bytes, c.cloned_at_ms))
                .collect::<Vec<_>>()
        );
        let newest: Vec<&RepoClone> = now
            .iter()
            .filter(|c| !finished.iter().any(|f| f.full_name == c.full_name))
            .collect();
        assert_eq!(
            newest.len(),
            1,
            "{:?}",
            now.iter()
                .map(|c| (&c.full_name, c.cloned_at_ms))
                .collect::<Vec<_>>()
        );
        let stored = packs(&store).await;
        assert!(
            stored.contains(&newest[0].clone_uri),
            "an unread pack was deleted"
        );
        for done in &finished {
            assert!(
                !stored.contains(&done.clone_uri),
                "a finished pack was not reclaimed for the next: {}",
                done.full_name
            );
        }
        if step == names.len() {
            break;
        }
        // The processor finishes what was published: its pack makes room for the next.
        finished.push(newest[0].clone());
        codelupe_testkit::kafka::commit_group(
            "codelupe-processor",
            &clones,
            codelupe_testkit::kafka::At::End,
        );
        wait_for("the next pack published", Duration::from_secs(60), || {
            published().len() > step
        });
    }
}
