//! The fault harness: the whole pipeline on the real broker (every stage as its own
//! process, two replicas of each scalable one) over real crates and hostile
//! repositories, while replicas are SIGKILLed and restarted, the broker is stopped and
//! started (or, on a three-broker cluster, the brokers leading an input partition and
//! coordinating transactions and a group are SIGKILLed), and poison is produced with
//! kcat into every topic. At the end every topic
//! is read with a read_committed consumer and one table says, per stage, inputs,
//! outputs, lost, duplicated and dead-lettered, and what became of each poison record.
//!
//! This reduced form runs in the suite; the long form (a larger corpus, more kills) is
//! `tests/faults/long`.

#[path = "../support/mod.rs"]
mod support;

mod brokers;
mod cluster;
mod corpus;
mod ledger;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::*;

use brokers::{BrokerFault, Outage, ThreeBrokers};
use cluster::{Cluster, TOKEN};
use corpus::Corpus;
use ledger::{Ledger, Topics};

/// The processor's parse budget in the run and in the ledger's judgement, far above
/// what the 1 MB C file needs on a loaded 2-core machine in a debug build.
pub const PARSE_TIMEOUT_MS: u64 = 120_000;

/// The scenarios share the broker they stop: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Scale {
    crates: &'static [&'static str],
    kills: usize,
    /// Between faults.
    every: Duration,
    outage: Duration,
    /// The most time, after the last fault, for every group's lag to reach 0.
    settle: Duration,
}

/// `FAULT_HARNESS=long` (tests/faults/long) for the long form.
fn scale() -> Scale {
    if std::env::var("FAULT_HARNESS").as_deref() == Ok("long") {
        Scale {
            crates: &[
                "bytes-1",
                "memchr-2",
                "regex-syntax-0",
                "aho-corasick-1",
                "http-1",
                "url-2",
                "indexmap-2",
                "h2-0",
                "hyper-1",
                "tokio-util-0",
                "chrono-0",
                "futures-util-0",
            ],
            kills: 15,
            every: Duration::from_secs(12),
            outage: Duration::from_secs(15),
            settle: Duration::from_secs(300),
        }
    } else {
        Scale {
            crates: &["itoa-1", "httparse-1", "smallvec-1"],
            kills: 5,
            every: Duration::from_secs(4),
            outage: Duration::from_secs(5),
            settle: Duration::from_secs(240),
        }
    }
}

/// The run's random choices, seeded: the run prints its seed, FAULT_SEED replays it.
fn dice() -> fastrand::Rng {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fault harness: FAULT_SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

fn write_config(dir: &Path, suffix: &str, delivery: &str, api: &str) -> std::path::PathBuf {
    let path = dir.join("codelupe.yaml");
    let (store, tokenizer) = (dir.join("store"), dir.join("tokenizer.json"));
    let text = format!(
        "kafka:
  brokers: {brokers}
  dead_letter_topic: dead-letters-{suffix}
  # A killed member's partitions move after 6 s, not the default 45.
  consumer: {{session.timeout.ms: '6000', heartbeat.interval.ms: '1000'}}
clone_store: {{url: {store}}}
stages:
  crawler:
    metrics_bind: 127.0.0.1
    options:
      source: github
      github: {{api_url: '{api}', languages: [Rust], since: 2024-01-01, until: 2024-12-31, max_backoff_s: 1}}
      state_topic: crawler-state-{suffix}
      transactional_id: crawler-{suffix}
      interval_s: 5
  downloader:
    metrics_bind: 127.0.0.1
    delivery: {delivery}
    transient_give_up_s: 20
    options:
      urls: {{allowed_schemes: [git, http], allowed_hosts: [127.0.0.1]}}
      filter: {{min_stars: 0, languages: [], exclude_words: []}}
      read_timeout_s: 3
      store_readers: [codelupe-processor-{suffix}]
  processor:
    metrics_bind: 127.0.0.1
    delivery: {delivery}
    # The verdict must not depend on the machine's load: a parse over its time budget
    # is skipped (parse_failed), and the ledger judges every file again.
    options: {{parse_timeout_ms: {PARSE_TIMEOUT_MS}}}
  neardup:
    metrics_bind: 127.0.0.1
    delivery: {delivery}
    options: {{probes_topic: neardup-probes-{suffix}, index_topic: neardup-index-{suffix}, gather_topic: neardup-gather-{suffix}, dropped_topic: near-duplicates-{suffix}}}
  batcher:
    metrics_bind: 127.0.0.1
    delivery: {delivery}
    options: {{tokenizer: {tokenizer}, sequence_length: 512, seen_topic: batcher-seen-{suffix}, flush_idle_ms: 2000}}
  export:
    metrics_bind: 127.0.0.1
    delivery: {delivery}
    # Small files, so kills land between puts and commits.
    options: {{dataset: {dataset}, file_max_rows: 25, flush_idle_ms: 2000}}
  trainer:
    metrics_bind: 127.0.0.1
    options: {{tokenizer: {tokenizer}, checkpoint_dir: {checkpoints}, device: cpu, bf16: false, steps_per_run: 20, idle_checkpoint_ms: 3000, eval_batches: 2}}
",
        brokers = brokers(),
        store = store.display(),
        tokenizer = tokenizer.display(),
        checkpoints = dir.join("checkpoints").display(),
        dataset = dir.join("dataset").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Lines of the replicas' logs (every life of every replica) containing `needle`.
fn logged(dir: &Path, stage: &str, needle: &str) -> usize {
    std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(stage))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        })
        .sum()
}

fn first_record(topic: &str) -> Vec<u8> {
    let mut found = None;
    wait_for(
        &format!("a record in {topic}"),
        Duration::from_secs(180),
        || {
            // Not the harness's own poison (a wrong fingerprint carries the header too).
            found = read_all(topic, Duration::from_millis(500))
                .into_iter()
                .filter(|(key, _)| !key.starts_with("poison-"))
                .map(|(_, v)| v)
                .find(|v| v.len() > 10 && v[..2] == [0xC3, 0x01]);
            found.is_some()
        },
    );
    found.unwrap()
}

/// The Kafka a scenario runs on.
#[derive(Clone, Copy, PartialEq)]
enum Kafka {
    /// The suite's broker, stopped once mid-run.
    OneBroker,
    /// A cluster of three, whose input leader and coordinators are killed mid-run.
    ThreeBrokers,
}

fn scenario(delivery: &str, kafka: Kafka) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let three = (kafka == Kafka::ThreeBrokers).then(ThreeBrokers::up);
    let scale = scale();
    let mut dice = dice();
    let dir = tempfile::tempdir().unwrap();
    // FAULT_KEEP=1 keeps the run's folder (logs, store, checkpoints) to look into.
    let dir = if std::env::var_os("FAULT_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("fault harness: keeping {}", kept.display());
        kept
    } else {
        dir.path().to_path_buf()
    };
    let dir = dir.as_path();
    let corpus = Corpus::build(dir, scale.crates);
    train_tokenizer(&corpus.crate_roots, 2000, &dir.join("tokenizer.json"));
    let suffix = unique("faults");
    let replication = if three.is_some() { 3 } else { 1 };
    let topology = replicated_topology_of_its_own(dir, &suffix, replication);
    let config = write_config(dir, &suffix, delivery, &corpus.github.url);
    let topic = |name: &str| format!("{name}-{suffix}");

    let mut cluster = Cluster::start(&config, &topology, &dir.join("logs"), &suffix);
    let started = Instant::now();

    poisoned_and_forged(&mut cluster, &topic, dir);
    eprintln!(
        "fault harness: poison and forged records produced after {:?}",
        started.elapsed()
    );

    faulted(&mut cluster, &scale, &mut dice, three.as_ref(), &suffix);
    let last_fault = Instant::now();

    let (settled, lags) = settled(&mut cluster, &suffix, &scale, last_fault);
    let not_ready = cluster.not_ready();
    let exit_reasons = cluster.exit_reasons();
    let looping = cluster.crash_looping();
    let unclean = cluster.stop();

    let ledger = ledger_of(&topic, &corpus, dir);
    let state_skipped = logged(dir, "crawler", "undecodable state entry skipped");
    let (replayed, refused) = cluster::replay_forged(&config, &topology);
    let listed = codelupe()
        .args(["--config", config.to_str().unwrap()])
        .args(["--topology", topology.to_str().unwrap()])
        .args(["dead-letters", "list"])
        .output()
        .unwrap();

    let kafka_faults = match kafka {
        Kafka::OneBroker => format!("one broker, stopped once for {:?}", scale.outage),
        Kafka::ThreeBrokers => format!(
            "three brokers, replication 3, min.insync 2; input leader, transaction and \
             group coordinators SIGKILLed, each down {:?}",
            scale.outage
        ),
    };
    eprintln!(
        "\nfault harness ({delivery}, {} repositories, {} kills, {kafka_faults})\n\n{}",
        corpus.repos.len(),
        scale.kills,
        ledger.table()
    );
    eprintln!(
        "crawler-state poison: {state_skipped} entries skipped at crawler start-ups\n\
         batcher-seen poison: keys that are no content hash, ignored by the dedup load\n\
         lag 0 in every group and every replica ready {} after the last fault (bound {:?}); lags {lags:?}\n\
         stopped uncleanly: {unclean:?}; not ready: {not_ready:?}\n\
         {exit_reasons}problems: {:#?}",
        settled.map_or("never".to_string(), |d| format!("{:.0?}", d)),
        scale.settle,
        ledger.problems,
    );

    assert!(
        settled.is_some(),
        "lag did not return to 0: {lags:?}, not ready {not_ready:?}"
    );
    assert_eq!(ledger.lost(), 0, "records lost");
    assert!(ledger.problems.is_empty(), "{:#?}", ledger.problems);
    check_poison_and_forged(&ledger, &topic, &listed, &replayed, &refused);
    check_the_token_went_only_to_github(&corpus);
    check_once_and_the_export(delivery, &ledger, dir);
    assert!(unclean.is_empty(), "stopped uncleanly: {unclean:?}");
    // A replica that keeps ending on its own is crash-looping on some record.
    assert!(
        looping.is_empty(),
        "crash loop: {looping:?}\n{exit_reasons}"
    );
}

/// Poison into every topic once records flow, each shaped from a real one, then the
/// forged records (well-formed and hostile).
fn poisoned_and_forged(cluster: &mut Cluster, topic: &impl Fn(&str) -> String, dir: &Path) {
    for name in [
        "repo-urls",
        "repo-clones",
        "code-files",
        "neardup-probes",
        "neardup-index",
        "neardup-gather",
        "distinct-files",
        "training-batches",
        "crawler-state",
        "batcher-seen",
        "dead-letters",
    ] {
        let real = first_record(&topic(name));
        cluster::poison(&topic(name), &real, dir);
        cluster.restart_exited();
    }
    cluster::forge(topic, |name| first_record(&topic(name)));
}

/// SIGKILLs a random replica of a random stage, again and again; stops the one broker
/// once, or kills the three brokers' input leader and coordinators in turn.
fn faulted(
    cluster: &mut Cluster,
    scale: &Scale,
    dice: &mut fastrand::Rng,
    three: Option<&ThreeBrokers>,
    suffix: &str,
) {
    for k in 0..scale.kills {
        std::thread::sleep(scale.every);
        let i = dice.usize(..cluster.replicas.len());
        let down_for = Duration::from_millis(500 * dice.u64(1..=4));
        eprintln!(
            "fault harness: kill {} of {}: {} (down {down_for:?})",
            k + 1,
            scale.kills,
            cluster.replicas[i].name()
        );
        cluster.kill_and_restart(i, down_for);
        match three {
            None if k == scale.kills / 2 => {
                eprintln!("fault harness: broker stopped for {:?}", scale.outage);
                let outage = Outage::begin();
                std::thread::sleep(scale.outage);
                outage.end();
            }
            Some(three) => {
                if let Some(fault) = BrokerFault::at(k, scale.kills) {
                    let killed = three.kill(fault, suffix, scale.outage);
                    eprintln!("fault harness: SIGKILLed {killed}, down {:?}", scale.outage);
                }
            }
            None => {}
        }
        cluster.restart_exited();
    }
}

/// Waits, up to the scale's bound after the last fault, for every group's lag to be 0
/// and every replica ready; how long it took (None: never), and the lags last read.
fn settled(
    cluster: &mut Cluster,
    suffix: &str,
    scale: &Scale,
    last_fault: Instant,
) -> (Option<Duration>, Vec<(String, i64)>) {
    let mut readers = lag_readers(suffix, &[]);
    let mut lags: Vec<(String, i64)>;
    let settled = loop {
        cluster.restart_exited();
        lags = readers
            .iter_mut()
            .map(|(stage, r)| (stage.clone(), r.lag().unwrap_or(-1)))
            .collect();
        if lags.iter().all(|(_, lag)| *lag == 0) && cluster.not_ready().is_empty() {
            break Some(last_fault.elapsed());
        }
        if last_fault.elapsed() > scale.settle {
            break None;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    (settled, lags)
}

/// What became of every record, read from the topics, the store and the dataset.
fn ledger_of(topic: &impl Fn(&str) -> String, corpus: &Corpus, dir: &Path) -> Ledger {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Ledger::read(
            &Topics {
                repo_urls: topic("repo-urls"),
                repo_clones: topic("repo-clones"),
                code_files: topic("code-files"),
                distinct_files: topic("distinct-files"),
                near_duplicates: topic("near-duplicates"),
                repo_summaries: topic("repo-summaries"),
                training_batches: topic("training-batches"),
                dead_letters: topic("dead-letters"),
            },
            &corpus.repos,
            &dir.join("store"),
            &dir.join("tokenizer.json"),
            &dir.join("dataset"),
        ))
}

/// Every poison dead-lettered from every input, the forged records dead-lettered by
/// the stage they were aimed at, every letter bounded, and a forged letter never
/// replayed.
fn check_poison_and_forged(
    ledger: &Ledger,
    topic: &impl Fn(&str) -> String,
    listed: &std::process::Output,
    replayed: &str,
    refused: &str,
) {
    for input in [
        "repo-urls",
        "repo-clones",
        "code-files",
        "neardup-probes",
        "neardup-gather",
        "distinct-files",
        "training-batches",
    ] {
        for kind in cluster::POISON {
            assert!(
                ledger
                    .poison
                    .contains_key(&(topic(input), kind.to_string())),
                "poison {kind} in {input} was not dead-lettered"
            );
        }
    }
    assert!(
        listed.status.success(),
        "dead-letters list: {}",
        text(listed)
    );
    for (input, kind, stage) in [
        ("repo-urls", "forged-huge-url", "downloader"),
        ("training-batches", "forged-token-id", "trainer"),
    ] {
        let outcome = ledger.poison.get(&(topic(input), kind.to_string()));
        assert!(
            outcome.is_some_and(|o| o.starts_with(&format!("dead-lettered by {stage}"))),
            "{kind} in {input}: {outcome:?}"
        );
    }
    assert!(
        ledger.largest_letter <= codelupe_runtime::records::DeadLetter::MAX_BYTES,
        "a dead letter of {} bytes",
        ledger.largest_letter
    );
    assert!(
        replayed.contains("replayed 0 of 1")
            && refused.contains("is not the input of stage batcher"),
        "a forged letter was replayed: {replayed} {refused}"
    );
}

/// The token went nowhere but GitHub: neither the redirecting host nor the host it
/// pointed at saw it, and the redirect was not followed.
fn check_the_token_went_only_to_github(corpus: &Corpus) {
    assert!(
        !corpus.redirecting.requests().is_empty(),
        "the redirecting host was asked"
    );
    for seen in corpus.redirecting.requests() {
        assert!(seen.header("authorization").is_none(), "{seen:?}");
        assert!(!format!("{seen:?}").contains(TOKEN), "{seen:?}");
    }
    assert!(
        corpus.elsewhere.requests().is_empty(),
        "a redirect was followed"
    );
    assert!(
        corpus.stalled.connections() > 0,
        "the stalled host was asked"
    );
}

/// No stage duplicated in `exactly_once`; the export, exactly once whatever the mode,
/// as `datasets` and DuckDB read it.
fn check_once_and_the_export(delivery: &str, ledger: &Ledger, dir: &Path) {
    if delivery == "exactly_once" {
        for row in &ledger.rows {
            if ["downloader", "processor", "neardup", "batcher"].contains(&row.stage) {
                assert_eq!(
                    row.duplicated, 0,
                    "{} duplicated in exactly_once",
                    row.stage
                );
            }
        }
    }
    // The export is exactly once by construction, whatever the delivery mode: a row
    // of the dataset for each record of distinct-files, and every file whole Parquet.
    let export = ledger.rows.iter().find(|r| r.stage == "export").unwrap();
    assert_eq!(export.duplicated, 0, "export rows written twice");
    let catalogue = ledger
        .rows
        .iter()
        .find(|r| r.stage == "export-repositories");
    let catalogue = catalogue.unwrap();
    assert!(catalogue.inputs > 0, "no repository summary on the topic");
    assert_eq!(
        (catalogue.lost, catalogue.duplicated),
        (0, 0),
        "each repository summary once in the repositories table"
    );
    // What a user reads of it: `datasets` and DuckDB see the ledger's rows, and the
    // card's default config loads them all.
    let seen = read_with_python_clients(&dir.join("dataset"));
    for (client, rows) in [
        ("datasets", &seen["datasets_rows"]),
        (
            "DuckDB",
            &serde_json::json!(seen["duckdb_hashes"].as_array().map(Vec::len)),
        ),
        (
            "the card's default config",
            &seen["card_configs"]["default"],
        ),
    ] {
        assert_eq!(
            *rows,
            serde_json::json!(export.outputs),
            "rows {client} read"
        );
    }
}

#[test]
fn at_least_once_loses_nothing_under_kills_an_outage_and_poison() {
    scenario("at_least_once", Kafka::OneBroker);
}

#[test]
fn exactly_once_loses_and_duplicates_nothing_under_kills_an_outage_and_poison() {
    scenario("exactly_once", Kafka::OneBroker);
}

/// In the long form only (tests/faults/long): five minutes more of CI for the mode
/// whose guarantees the exactly-once run already covers.
#[test]
#[ignore = "the long form's: tests/faults/long"]
fn at_least_once_on_three_brokers_loses_nothing_when_leaders_and_coordinators_die() {
    scenario("at_least_once", Kafka::ThreeBrokers);
}

#[test]
fn exactly_once_on_three_brokers_loses_and_duplicates_nothing_when_leaders_and_coordinators_die() {
    scenario("exactly_once", Kafka::ThreeBrokers);
}
