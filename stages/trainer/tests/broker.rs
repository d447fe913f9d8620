//! The trainer binary on the real broker: killed with SIGKILL mid-run and restarted, the
//! batches in its checkpoints are exactly the batches produced, none twice; its HTTP
//! port serves the original trainer metrics, /health, /ready and /status.

mod corpus;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use codelupe_runtime::AvroRecord;
use codelupe_testkit::{
    brokers, create_topics, free_port, http_get, produce_all, produce_to_partition, unique,
    wait_for, KillOnDrop,
};
use codelupe_trainer::checkpoint;

fn start(config: &Path, topology: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_codelupe-trainer"))
            .arg("--config")
            .arg(config)
            .arg("--topology")
            .arg(topology)
            .arg("stage")
            .env("CODELUPE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A batch as its record on the input topic: (key, value).
fn record(b: &codelupe_runtime::records::TrainingBatch) -> (String, Vec<u8>) {
    (b.batch_id.clone(), b.encode().unwrap())
}

/// Every batch id in every checkpoint, in order.
fn trained(root: &Path) -> Vec<String> {
    checkpoint::list(root)
        .unwrap()
        .into_iter()
        .flat_map(|(_, state)| state.batches)
        .collect()
}

/// A trainer's topology and config over fresh topics: the input with `partitions`
/// partitions, checkpoints under `dir`, the metrics port.
struct Setup {
    input: String,
    /// The trainer's consumer group.
    group: String,
    dead_letters: String,
    topology: std::path::PathBuf,
    config: std::path::PathBuf,
    root: std::path::PathBuf,
    port: u16,
}

impl Setup {
    /// How far the trainer's group is behind on its input.
    fn lag_reader(&self) -> codelupe_runtime::kafka::LagReader {
        let clients = codelupe_runtime::kafka::KafkaClients::new(
            brokers(),
            &codelupe_runtime::config::KafkaConfig::default(),
        );
        codelupe_runtime::kafka::LagReader::new(&clients, &self.group, &self.input).unwrap()
    }
}

async fn setup(dir: &Path, tokenizer: &Path, partitions: i32, options: &str) -> Setup {
    let suffix = unique("t");
    let (input, dead) = (
        format!("training-batches-{suffix}"),
        format!("dead-letters-{suffix}"),
    );
    create_topics(&[(&input, partitions), (&dead, 1)]).await;
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let port = free_port();
    let topology = dir.join("topology.yaml");
    std::fs::write(
        &topology,
        format!(
            "topics:\n\
             \x20 {input}: {{partitions: {partitions}, retention_ms: -1, cleanup_policy: delete, schema: {s}/training-batches.avsc}}\n\
             \x20 {dead}: {{partitions: 1, retention_ms: -1, cleanup_policy: delete, schema: {s}/dead-letter.avsc}}\n\
             stages:\n\
             \x20 trainer: {{input: {input}, group: trainer-{suffix}, metrics: {{port: {port}, path: /prometheus}}, replicas: 1, binary: codelupe-trainer}}\n",
            s = schemas.display()
        ),
    )
    .unwrap();
    let root = dir.join("checkpoints");
    let config = dir.join("config.yaml");
    // Scoring checkpoints by execution is its own test's subject.
    let pass_at_k = if options.contains("pass_at_k") {
        ""
    } else {
        "      pass_at_k: {enabled: false}\n"
    };
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: {}\n  dead_letter_topic: {dead}\n\
             stages:\n  trainer:\n    metrics_bind: 127.0.0.1\n    options:\n\
             \x20     tokenizer: {}\n      checkpoint_dir: {}\n      device: cpu\n\
             \x20     keep_checkpoints: 1000\n      optimizer: {{warmup_steps: 5}}\n{options}{pass_at_k}",
            brokers(),
            tokenizer.display(),
            root.display()
        ),
    )
    .unwrap();
    Setup {
        group: format!("trainer-{suffix}"),
        dead_letters: dead,
        input,
        topology,
        config,
        root,
        port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_and_restarted_every_batch_is_trained_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 40);
    assert_eq!(corpus.train.len(), 40);
    let Setup {
        input,
        topology,
        config,
        root,
        port,
        ..
    } = setup(
        dir.path(),
        &corpus.tokenizer_path,
        3,
        "      steps_per_run: 5\n      idle_checkpoint_ms: 4000\n      eval_batches: 2\n",
    )
    .await;

    // First 23 train batches (and the eval ones): four full runs of 5, then 3 trained
    // into a fifth run when the kill comes.
    let mut first: Vec<_> = corpus.eval.iter().map(record).collect();
    first.extend(corpus.train[..23].iter().map(record));
    produce_all(&input, first).await;
    let trainer = start(&config, &topology);
    wait_for("four checkpoints", Duration::from_secs(240), || {
        checkpoint::list(&root).map_or(0, |c| c.len()) >= 4
    });
    let (status, metrics) = http_get(port, "/prometheus").unwrap();
    assert_eq!(status, 200);
    for name in [
        "trainer_training_runs_total",
        "trainer_files_trained_total",
        "trainer_samples_trained_total",
        "trainer_current_loss",
        "trainer_current_eval_loss",
        "trainer_gpu_memory_bytes",
        "trainer_dataset_size{split=\"train\"}",
        "trainer_dataset_size{split=\"eval\"}",
        "trainer_training_duration_seconds_bucket",
        "trainer_tokens_per_second",
        "trainer_learning_rate",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert_eq!(http_get(port, "/health").unwrap().0, 200);
    assert_eq!(http_get(port, "/ready").unwrap().0, 200);
    let (_, status) = http_get(port, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["step"].as_u64().unwrap() >= 15, "{status}");
    assert!(status["last_checkpoint"].is_string(), "{status}");
    // The fifth run has trained on batches no checkpoint holds yet.
    std::thread::sleep(Duration::from_millis(1500));
    let before_kill = trained(&root).len();
    assert!(
        before_kill < 23,
        "{before_kill} batches checkpointed before the kill"
    );
    drop(trainer); // SIGKILL

    // The rest, and one batch made with another tokenizer, which is refused.
    let mut foreign = corpus.train[0].clone();
    foreign.batch_id = "made-with-another-tokenizer".into();
    foreign.tokenizer_fingerprint = "0123456789abcdef".into();
    let mut rest: Vec<_> = corpus.train[23..].iter().map(record).collect();
    rest.insert(5, record(&foreign));
    produce_all(&input, rest).await;
    let mut trainer = start(&config, &topology);
    wait_for("every batch checkpointed", Duration::from_secs(240), || {
        trained(&root).len() >= corpus.train.len()
    });
    let (_, metrics) = http_get(port, "/prometheus").unwrap();
    assert!(
        metrics.contains("trainer_batches_skipped_total{reason=\"tokenizer_mismatch\"} 1"),
        "{metrics}"
    );
    Command::new("kill")
        .args(["-TERM", &trainer.0.id().to_string()])
        .status()
        .unwrap();
    assert!(trainer.0.wait().unwrap().success());

    let ids = trained(&root);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "a batch trained twice: {ids:?}");
    let produced: HashSet<&String> = corpus.train.iter().map(|b| &b.batch_id).collect();
    assert_eq!(distinct, produced, "trained = produced");
    let states = checkpoint::list(&root).unwrap();
    let last = &states.last().unwrap().1;
    assert!(last.eval_loss.is_some(), "evaluated on the fixed eval set");
    assert_eq!(
        last.offsets.values().sum::<i64>() as usize,
        corpus.train.len() + corpus.eval.len() + 1,
        "the offsets cover every record"
    );
    eprintln!(
        "{} batches, {} checkpoints, {before_kill} checkpointed before the kill",
        ids.len(),
        states.len()
    );
}

/// Each checkpoint is evaluated on each language's tokens of the eval set (which takes
/// a batch of C past its first, Rust-only batch), and scored on HumanEval by a niced
/// child process while training goes on; both reach the metrics, /status and the
/// checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_evaluated_by_language_and_scored_by_execution() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build_from(dir.path(), corpus::mixed_files(), 10);
    let s = setup(
        dir.path(),
        &corpus.tokenizer_path,
        1,
        "      steps_per_run: 5\n      idle_checkpoint_ms: 2000\n      eval_batches: 1\n\
         \x20     eval_batches_max: 8\n      pass_at_k: {limit: 4, max_tokens: 32}\n",
    )
    .await;
    let mut records: Vec<_> = corpus.eval.iter().map(record).collect();
    records.extend(corpus.train.iter().map(record));
    produce_all(&s.input, records).await;
    let _trainer = start(&s.config, &s.topology);
    let series = "trainer_eval_pass_at_k{benchmark=\"humaneval\",k=\"1\"}";
    wait_for("a checkpoint scored", Duration::from_secs(240), || {
        http_get(s.port, "/prometheus").is_ok_and(|(_, m)| m.contains(series))
    });
    let (_, metrics) = http_get(s.port, "/prometheus").unwrap();
    for language in ["C", "Rust"] {
        let series = format!("trainer_eval_loss{{language=\"{language}\"}}");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    let scored: Vec<serde_json::Value> = checkpoint::list(&s.root)
        .unwrap()
        .iter()
        .filter_map(|(dir, _)| std::fs::read(dir.join("eval/humaneval.json")).ok())
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .collect();
    assert!(!scored.is_empty(), "no report in any checkpoint's eval/");
    for report in &scored {
        assert_eq!(report["problems"], 4, "{report}");
        let pass_at_1 = report["pass_at_k"]["1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&pass_at_1), "{report}");
    }
    let (_, status) = http_get(s.port, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let headline = status["pass_at_k"]["headline"].as_str().unwrap_or_default();
    assert!(headline.starts_with("humaneval: pass@1 "), "{status}");
    let by_language = status["eval_loss_by_language"].as_object().unwrap();
    assert_eq!(
        by_language.keys().collect::<Vec<_>>(),
        ["C", "Rust"],
        "{status}"
    );
    let (_, last) = checkpoint::list(&s.root).unwrap().pop().unwrap();
    assert_eq!(last.eval_loss_by_language.len(), 2, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_the_input_after_start_are_trained() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 12);
    let s = setup(
        dir.path(),
        &corpus.tokenizer_path,
        1,
        "      steps_per_run: 4\n      idle_checkpoint_ms: 2000\n      eval_batches: 0\n      partition_check_ms: 500\n",
    )
    .await;
    produce_all(&s.input, corpus.train[..4].iter().map(record).collect()).await;
    let trainer = start(&s.config, &s.topology);
    wait_for(
        "the first partition trained",
        Duration::from_secs(240),
        || trained(&s.root).len() >= 4,
    );

    // The topic grows to 3 partitions; every later batch lands on one of them.
    codelupe_testkit::kafka::grow_partitions(&s.input, 3).await;
    let rest: Vec<_> = corpus.train[4..].iter().map(record).collect();
    for (i, (key, value)) in rest.into_iter().enumerate() {
        produce_to_partition(&s.input, 1 + (i % 2) as i32, &key, &value).await;
    }
    wait_for(
        "the added partitions trained",
        Duration::from_secs(240),
        || trained(&s.root).len() >= corpus.train.len(),
    );
    drop(trainer);
    let ids: HashSet<String> = trained(&s.root).into_iter().collect();
    let produced: HashSet<String> = corpus.train.iter().map(|b| b.batch_id.clone()).collect();
    assert_eq!(ids, produced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_ending_in_batches_it_does_not_train_is_committed_to_its_end_and_the_undecodable_dead_lettered(
) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 4);
    assert!(!corpus.eval.is_empty());
    let s = setup(
        dir.path(),
        &corpus.tokenizer_path,
        1,
        "      steps_per_run: 100\n      idle_checkpoint_ms: 1000\n      eval_batches: 0\n",
    )
    .await;
    produce_all(&s.input, corpus.train.iter().map(record).collect()).await;
    let _trainer = start(&s.config, &s.topology);
    wait_for(
        "the train batches checkpointed",
        Duration::from_secs(240),
        || trained(&s.root).len() == corpus.train.len(),
    );
    // Then a tail it does not train: eval batches beyond the eval set (0 here) and a
    // value that is not Avro, both skipped.
    for batch in &corpus.eval {
        let (key, value) = record(batch);
        produce_to_partition(&s.input, 0, &key, &value).await;
    }
    produce_to_partition(&s.input, 0, "poison", b"not avro").await;
    let mut lag = s.lag_reader();
    wait_for(
        "the skipped tail committed",
        Duration::from_secs(60),
        || lag.lag().unwrap() == 0,
    );
    // Its own lag series (from librdkafka's statistics, as every stage's) reaches 0 too:
    // the offsets of the tail it skipped are stored.
    let series = format!(
        "codelupe_consumer_lag{{partition=\"0\",topic=\"{}\"}} 0",
        s.input
    );
    wait_for(
        "the trainer's own lag at 0",
        Duration::from_secs(30),
        || http_get(s.port, "/prometheus").is_ok_and(|(_, m)| m.contains(&series)),
    );
    // The undecodable value is dead-lettered like every stage's.
    let letters: Vec<codelupe_runtime::records::DeadLetter> =
        codelupe_testkit::read_all(&s.dead_letters, Duration::from_secs(2))
            .iter()
            .map(|(_, v)| codelupe_runtime::records::DeadLetter::decode(v).unwrap())
            .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0].stage.as_str(), letters[0].reason.as_str()),
        ("trainer", "decode")
    );
    assert_eq!(letters[0].key.as_deref(), Some(&b"poison"[..]));
    assert_eq!(letters[0].value.as_deref(), Some(&b"not avro"[..]));
}

/// Batches that decode and carry the trainer's tokenizer fingerprint, yet no trainable
/// tokens (an id past the vocabulary, a negative id, a length of -1 with no tokens),
/// are dead-lettered; the trainer goes on to train what follows them instead of
/// panicking in libtorch on the same record at every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_batches_with_the_right_fingerprint_are_dead_lettered_not_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 4);
    let s = setup(
        dir.path(),
        &corpus.tokenizer_path,
        1,
        "      steps_per_run: 100\n      idle_checkpoint_ms: 1000\n      eval_batches: 0\n",
    )
    .await;
    let forge = |id: &str, edit: &dyn Fn(&mut codelupe_runtime::records::TrainingBatch)| {
        let mut batch = corpus.train[0].clone();
        batch.batch_id = id.into();
        edit(&mut batch);
        record(&batch)
    };
    let mut records = vec![
        forge("id-past-the-vocabulary", &|b| b.token_ids[1] = 1_000_000),
        forge("negative-id", &|b| b.token_ids[0] = -5),
        forge("no-sequence", &|b| {
            b.sequence_length = -1;
            b.token_ids.clear();
        }),
    ];
    records.extend(corpus.train.iter().map(record));
    produce_all(&s.input, records).await;
    let mut trainer = start(&s.config, &s.topology);
    wait_for(
        "the batches after the forged ones checkpointed",
        Duration::from_secs(240),
        || trained(&s.root).len() == corpus.train.len(),
    );
    assert!(
        trainer.0.try_wait().unwrap().is_none(),
        "the trainer exited"
    );
    let letters: Vec<codelupe_runtime::records::DeadLetter> =
        codelupe_testkit::read_all(&s.dead_letters, Duration::from_secs(2))
            .iter()
            .map(|(_, v)| codelupe_runtime::records::DeadLetter::decode(v).unwrap())
            .collect();
    let keys: Vec<_> = letters.iter().map(|l| l.key.clone().unwrap()).collect();
    assert_eq!(
        keys,
        [
            &b"id-past-the-vocabulary"[..],
            b"negative-id",
            b"no-sequence"
        ],
        "{letters:?}"
    );
    assert!(letters[0].error.contains("token id 1000000"), "{letters:?}");
    assert!(
        letters[2].error.contains("sequence length -1"),
        "{letters:?}"
    );
}

/// A commit that fails in a broker outage is retried while the trainer lives; if it is
/// killed first, the group's offsets stay behind its checkpoint's. The restarted trainer
/// commits its checkpoint's offsets even when no new batch arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_lost_before_a_restart_is_made_by_the_restarted_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 4);
    let s = setup(
        dir.path(),
        &corpus.tokenizer_path,
        2,
        "      steps_per_run: 100\n      idle_checkpoint_ms: 1000\n      eval_batches: 0\n",
    )
    .await;
    produce_all(&s.input, corpus.train.iter().map(record).collect()).await;
    let mut lag = s.lag_reader();
    let trainer = start(&s.config, &s.topology);
    wait_for("the batches committed", Duration::from_secs(240), || {
        trained(&s.root).len() == corpus.train.len() && lag.lag().unwrap() == 0
    });
    drop(trainer); // SIGKILL

    // The group's offsets back at the start, as if the last commit had failed.
    codelupe_testkit::kafka::commit_group(
        &s.group,
        &s.input,
        codelupe_testkit::kafka::At::Beginning,
    );
    assert_eq!(lag.lag().unwrap(), corpus.train.len() as i64);
    let _trainer = start(&s.config, &s.topology);
    wait_for(
        "the checkpoint's offsets committed",
        Duration::from_secs(60),
        || lag.lag().unwrap() == 0,
    );
    assert_eq!(
        trained(&s.root).len(),
        corpus.train.len(),
        "nothing retrained"
    );
}
