//! The clone store as a claim check on a real S3-compatible server (SeaweedFS on
//! 127.0.0.1, started by tests/run with signed access only): two downloader and three
//! processor replicas, each with a private working folder and no folder shared,
//! deliver every kept file of real code; one replica of each SIGKILLed mid-work and
//! restarted leaves nothing partial that a reader would take as complete, and loses
//! nothing.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use codelupe_clone_store::CloneStore;
use codelupe_processor::metrics::ProcessorMetrics;
use codelupe_processor::{Processor, ProcessorOptions, Verdict};
use codelupe_runtime::records::{CodeFile, RepoClone};
use codelupe_runtime::AvroRecord;
use sha2::{Digest, Sha256};
use support::*;

/// The test bucket with a prefix of the test's own.
fn s3_store(prefix: &str) -> String {
    let bucket = std::env::var("TEST_S3_BUCKET").expect(
        "TEST_S3_BUCKET is not set: these tests need the S3 server; run `bash tests/run` \
         (or `tests/s3/server.sh up` and `eval \"$(tests/s3/server.sh env)\"`)",
    );
    format!("s3://{bucket}/{prefix}")
}

/// One replica: its own config (metrics port, working folder), its own process.
fn replica(
    dir: &Path,
    stage: &str,
    i: usize,
    topology: &Path,
    suffix: &str,
    store: &str,
) -> Replica {
    let work = dir.join(format!("{stage}-{i}-work"));
    let config = dir.join(format!("{stage}-{i}.yaml"));
    let port = free_port();
    let options = match stage {
        "downloader" => format!(
            "{{work_dir: {}, urls: {{allowed_schemes: [git], allowed_hosts: [127.0.0.1]}}, \
             filter: {{min_stars: 0, languages: [], exclude_words: []}}}}",
            work.display()
        ),
        _ => format!("{{work_dir: {}, workers: 1}}", work.display()),
    };
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: {}\n  dead_letter_topic: dead-letters-{suffix}\n  \
             consumer: {{session.timeout.ms: 6000, heartbeat.interval.ms: 1000}}\n\
             clone_store: {{url: '{store}'}}\nstages:\n  {stage}:\n    metrics_port: {port}\n    metrics_bind: 127.0.0.1\n    \
             options: {options}\n",
            brokers()
        ),
    )
    .unwrap();
    let mut replica = Replica {
        stage: stage.into(),
        config,
        topology: topology.to_path_buf(),
        work,
        process: None,
    };
    replica.start();
    replica
}

struct Replica {
    stage: String,
    config: PathBuf,
    topology: PathBuf,
    work: PathBuf,
    process: Option<KillOnDrop>,
}

impl Replica {
    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_codelupe"))
            .current_dir(repo_root())
            .args([
                "--config",
                self.config.to_str().unwrap(),
                "--topology",
                self.topology.to_str().unwrap(),
                "stage",
                &self.stage,
            ])
            .env("CODELUPE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.process = Some(KillOnDrop(child));
    }

    fn sigkill(&mut self) {
        let mut process = self.process.take().unwrap();
        process.0.kill().unwrap();
        process.0.wait().unwrap();
    }

    /// What is in this replica's working folder now.
    fn work_in_progress(&self) -> Vec<String> {
        std::fs::read_dir(&self.work)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Waits until one of `replicas` has work in its folder, SIGKILLs it there, and
/// returns which one and what it left.
fn kill_one_at_work(replicas: &mut [Replica], what: &str) -> (usize, Vec<String>) {
    wait_for(what, Duration::from_secs(120), || {
        replicas.iter().any(|r| !r.work_in_progress().is_empty())
    });
    let busy = replicas
        .iter()
        .position(|r| !r.work_in_progress().is_empty())
        .unwrap_or(0);
    replicas[busy].sigkill();
    (busy, replicas[busy].work_in_progress())
}

/// Every pack in the store is whole: its bytes hash to its name.
async fn every_pack_is_whole(store: &CloneStore) -> usize {
    let packs = store.packs().await.unwrap();
    for pack in &packs {
        let name = pack.uri.rsplit('/').next().unwrap();
        let sha256 = name.strip_suffix(".pack").unwrap();
        let reference = codelupe_clone_store::PackRef {
            uri: pack.uri.clone(),
            bytes: pack.bytes as i64,
            sha256: sha256.to_string(),
        };
        let bytes = store.read_pack(&reference).await.unwrap();
        assert_eq!(format!("{:x}", Sha256::digest(&bytes)), sha256);
    }
    packs.len()
}

/// A served repository: its name, its bare repository and its commit.
type Served = (String, PathBuf, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloaders_and_three_processors_meet_only_in_the_s3_store() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let repos = served_crates_of_the_registry(dir.path(), &srv);
    let daemon = GitDaemon::start(&srv);
    let expected = kept_by_the_processors_library(dir.path(), &repos);

    let (suffix, topology) = fresh_topics(dir.path(), "s3");
    let store_url = s3_store(&suffix);
    let records: Vec<(String, Vec<u8>)> = repos
        .iter()
        .map(|(full_name, _, _)| {
            let url = daemon.url(&format!("{full_name}.git"));
            (
                full_name.clone(),
                url_record(full_name, &url).encode().unwrap(),
            )
        })
        .collect();
    produce_all(&format!("repo-urls-{suffix}"), records).await;

    let start =
        |stage: &str, i: usize| replica(dir.path(), stage, i, &topology, &suffix, &store_url);
    let mut downloaders = [start("downloader", 0), start("downloader", 1)];
    let mut processors = [
        start("processor", 0),
        start("processor", 1),
        start("processor", 2),
    ];
    let store = CloneStore::open(&store_url).unwrap();
    let killed = one_of_each_killed_at_work_and_restarted(
        &mut downloaders,
        &mut processors,
        &store,
        expected.len(),
    )
    .await;

    every_kept_file_arrives_and_none_else(&suffix, &expected);
    check_every_record_names_a_whole_pack_of_its_commit(&suffix, &store, &store_url, &repos).await;
    check_no_work_is_left(&downloaders, &processors, &killed);
}

/// Eight crates of the local registry, each imported as one commit into a bare
/// repository under `srv`.
fn served_crates_of_the_registry(dir: &Path, srv: &Path) -> Vec<Served> {
    let import_work = dir.join("import");
    std::fs::create_dir_all(&import_work).unwrap();
    let crates = registry_crates(&[
        "serde_json-1",
        "regex-syntax-0",
        "tree-sitter-python-0",
        "itoa-1",
        "memchr-2",
        "hashbrown-0",
        "either-1",
        "anyhow-1",
    ]);
    assert!(crates.len() >= 6, "crate sources: {crates:?}");
    let mut repos = Vec::new();
    for source in &crates {
        let name = source.file_name().unwrap().to_string_lossy().to_string();
        let full_name = format!("crates/{name}");
        let bare = srv.join(format!("{full_name}.git"));
        let commit = import_tree(source, &bare, &import_work);
        repos.push((full_name, bare, commit));
    }
    repos
}

/// What must arrive: every file the processor's own library keeps, judged here from
/// the served repositories, as (repository, path, content hash).
fn kept_by_the_processors_library(
    dir: &Path,
    repos: &[Served],
) -> BTreeSet<(String, String, String)> {
    let judge = Processor::new(
        ProcessorOptions {
            store: dir.join("unused-store").display().to_string(),
            work_dir: dir.join("judge-work"),
            ..Default::default()
        },
        ProcessorMetrics::register(&prometheus::Registry::new()).unwrap(),
    )
    .unwrap();
    let mut expected = BTreeSet::new();
    for (full_name, bare, commit) in repos {
        let repo = git2::Repository::open_bare(bare).unwrap();
        let record = unstored_clone_record(full_name, commit);
        for (path, verdict) in judge.examine(&repo, &record).unwrap().verdicts {
            if let Verdict::Keep(file) = verdict {
                expected.insert((full_name.clone(), path, file.content_hash));
            }
        }
    }
    assert!(
        expected.len() > 50,
        "too few kept files: {}",
        expected.len()
    );
    expected
}

/// Which replica of each stage was killed, and what it left in its working folder.
struct Killed {
    downloader: (usize, Vec<String>),
    processor: (usize, Vec<String>),
}

/// One downloader killed while it clones and uploads, one processor while it reads;
/// nothing partial is visible in the store; both restarted.
async fn one_of_each_killed_at_work_and_restarted(
    downloaders: &mut [Replica],
    processors: &mut [Replica],
    store: &CloneStore,
    expected: usize,
) -> Killed {
    let (victim, stale_clones) = kill_one_at_work(downloaders, "a downloader cloning");
    let (reader, stale_reads) = kill_one_at_work(processors, "a processor reading");
    println!(
        "{expected} files expected; killed a downloader with {stale_clones:?} and a processor with {stale_reads:?} in progress"
    );
    // Nothing partial is visible: every pack in the store is whole.
    every_pack_is_whole(store).await;
    downloaders[victim].start();
    processors[reader].start();
    Killed {
        downloader: (victim, stale_clones),
        processor: (reader, stale_reads),
    }
}

/// Waits for every expected file in code-files, then requires exactly those and no
/// dead letter.
fn every_kept_file_arrives_and_none_else(
    suffix: &str,
    expected: &BTreeSet<(String, String, String)>,
) {
    let files_topic = format!("code-files-{suffix}");
    let arrived = || -> Vec<CodeFile> {
        read_all(&files_topic, Duration::from_secs(2))
            .into_iter()
            .map(|(_, v)| CodeFile::decode(&v).unwrap())
            .collect()
    };
    let wanted = expected.len();
    wait_for(
        "every kept file in code-files",
        Duration::from_secs(300),
        || {
            let files = arrived();
            let distinct: BTreeSet<(String, String)> = files
                .iter()
                .map(|f| (f.repo_full_name.clone(), f.path.clone()))
                .collect();
            distinct.len() >= wanted
        },
    );
    let got: BTreeSet<(String, String, String)> = arrived()
        .into_iter()
        .map(|f| (f.repo_full_name, f.path, f.content_hash))
        .collect();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let extra: Vec<_> = got.difference(expected).take(5).collect();
    assert!(extra.is_empty(), "not expected: {extra:?}");
    assert!(
        read_all(&format!("dead-letters-{suffix}"), Duration::from_secs(2)).is_empty(),
        "dead letters"
    );
}

/// Every record is a reference into the S3 store, to a whole pack of its commit.
async fn check_every_record_names_a_whole_pack_of_its_commit(
    suffix: &str,
    store: &CloneStore,
    store_url: &str,
    repos: &[Served],
) {
    let clones: Vec<RepoClone> = read_all(&format!("repo-clones-{suffix}"), Duration::from_secs(2))
        .into_iter()
        .map(|(_, v)| RepoClone::decode(&v).unwrap())
        .collect();
    let by_name: HashMap<&str, &str> = repos
        .iter()
        .map(|(n, _, c)| (n.as_str(), c.as_str()))
        .collect();
    for clone in &clones {
        assert!(
            clone.clone_uri.starts_with(&format!("{store_url}/packs/")),
            "{}",
            clone.clone_uri
        );
        assert_eq!(by_name[clone.full_name.as_str()], clone.commit_id);
        store
            .read_pack(&codelupe_clone_store::PackRef::from(clone))
            .await
            .unwrap();
    }
    assert!(every_pack_is_whole(store).await >= repos.len());
}

/// The restarted replicas cleared what the killed ones left; nothing else is left in
/// any working folder once the work is done.
fn check_no_work_is_left(downloaders: &[Replica], processors: &[Replica], killed: &Killed) {
    let (victim, stale_clones) = &killed.downloader;
    let (reader, stale_reads) = &killed.processor;
    for (replica, stale) in [
        (&downloaders[*victim], stale_clones),
        (&processors[*reader], stale_reads),
    ] {
        let left: Vec<&String> = stale
            .iter()
            .filter(|name| replica.work.join(name).exists())
            .collect();
        assert!(
            left.is_empty(),
            "{}: stale work stayed: {left:?}",
            replica.stage
        );
    }
    for replica in downloaders.iter().chain(processors) {
        assert!(
            replica.work_in_progress().is_empty(),
            "{} left {:?}",
            replica.stage,
            replica.work_in_progress()
        );
    }
}
