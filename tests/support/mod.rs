//! Shared by the end-to-end tests: the codelupe binary, topologies with topics of a
//! test's own, and Prometheus's own tools; the broker helpers are in the testkit.
#![allow(dead_code)]

pub mod fake_github;

#[allow(unused_imports)] // each test binary uses a different part
pub use codelupe_testkit::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use codelupe_runtime::records::{now_ms, RepoUrl};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// A metric of the stage serving metrics on `port`, summed over its series; None while
/// unreachable.
pub fn scraped(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// The runtime's test stage: passes each repository through unchanged, keyed by name.
pub struct Relay;

impl codelupe_runtime::Transform for Relay {
    type Input = RepoUrl;
    type Output = RepoUrl;
    type Reason = codelupe_runtime::labels::NoReason;

    async fn transform(
        &self,
        input: RepoUrl,
    ) -> Result<Vec<codelupe_runtime::Keyed<RepoUrl>>, codelupe_runtime::TransformError<Self::Reason>>
    {
        Ok(relayed(input))
    }
}

/// What [`Relay`] makes of a repository.
pub fn relayed(input: RepoUrl) -> Vec<codelupe_runtime::Keyed<RepoUrl>> {
    vec![codelupe_runtime::Keyed {
        key: input.full_name.clone(),
        value: input,
    }]
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn codelupe() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_codelupe"));
    command.current_dir(repo_root()).env("CODELUPE_LOG", "warn");
    command
}

/// `codelupe tokenizer train` with `vocab_size` on the source folders `sources`,
/// saved to `out`; what it printed.
pub fn train_tokenizer(sources: &[PathBuf], vocab_size: u32, out: &Path) -> String {
    let mut command = codelupe();
    command.args([
        "tokenizer",
        "train",
        "--vocab-size",
        &vocab_size.to_string(),
        "-o",
    ]);
    command.arg(out);
    for source in sources {
        command.arg("--from-dir").arg(source);
    }
    let result = command.output().unwrap();
    assert!(result.status.success(), "{}", text(&result));
    text(&result)
}

/// A topology file declaring a test stage `relay` from `input` to `output`, with the
/// repository's schemas, for the runtime's own tests.
pub fn relay_topology(
    dir: &Path,
    input: &str,
    output: &str,
    dead: &str,
    partitions: i32,
) -> PathBuf {
    let schemas = repo_root().join("schemas");
    let text = format!(
        "topics:\n\
         \x20 {input}: {{partitions: {partitions}, retention_ms: 3600000, cleanup_policy: delete, schema: {s}/repo-urls.avsc}}\n\
         \x20 {output}: {{partitions: {partitions}, retention_ms: 3600000, cleanup_policy: delete, schema: {s}/repo-urls.avsc}}\n\
         \x20 {dead}: {{partitions: 1, retention_ms: 3600000, cleanup_policy: delete, schema: {s}/dead-letter.avsc}}\n\
         stages:\n\
         \x20 relay: {{input: {input}, output: {output}, group: {input}-relay, metrics: {{port: 0, path: /metrics}}, replicas: {replicas}}}\n",
        replicas = partitions.min(2),
        s = schemas.display()
    );
    let path = dir.join("topology.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The relay stage of [`relay_topology`] resolved in this process over `[input, output,
/// dead letters]`, with `config` (its dead-letter topic set here): the stage, its Kafka
/// clients and the token that stops it.
pub fn relay_stage(
    dir: &Path,
    [input, output, dead]: [&str; 3],
    partitions: i32,
    mut config: codelupe_runtime::config::Config,
) -> (
    codelupe_runtime::StageRuntime,
    codelupe_runtime::kafka::KafkaClients,
    tokio_util::sync::CancellationToken,
) {
    let topology = codelupe_runtime::topology::Topology::load(&relay_topology(
        dir, input, output, dead, partitions,
    ))
    .unwrap();
    config.kafka.dead_letter_topic = dead.to_string();
    let clients = codelupe_runtime::kafka::KafkaClients::new(brokers(), &config.kafka);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stage = codelupe_runtime::StageRuntime::resolve(
        "relay",
        &topology,
        &config,
        clients.clone(),
        shutdown.clone(),
    )
    .unwrap();
    (stage, clients, shutdown)
}

/// The repository's topology.yaml with every topic renamed `<topic>-<suffix>`, so a test
/// (and each rerun) gets topics of its own.
pub fn renamed_topology(dir: &Path, suffix: &str) -> PathBuf {
    let original = std::fs::read_to_string(repo_root().join("topology.yaml")).unwrap();
    let topology =
        codelupe_runtime::topology::Topology::load(&repo_root().join("topology.yaml")).unwrap();
    let mut renamed = original.replace(
        "schema: schemas/",
        &format!("schema: {}/schemas/", repo_root().display()),
    );
    for topic in topology.topics.keys() {
        renamed = renamed
            .replace(&format!("  {topic}:\n"), &format!("  {topic}-{suffix}:\n"))
            .replace(
                &format!("input: {topic}\n"),
                &format!("input: {topic}-{suffix}\n"),
            )
            .replace(
                &format!("output: {topic}\n"),
                &format!("output: {topic}-{suffix}\n"),
            );
    }
    let path = dir.join("topology.yaml");
    std::fs::write(&path, renamed).unwrap();
    path
}

/// `codelupe topology apply` of `topology` on the test broker; returns what it printed.
pub fn apply_topology(topology: &Path) -> String {
    let out = codelupe()
        .args([
            "--topology",
            topology.to_str().unwrap(),
            "topology",
            "apply",
            "--brokers",
            &brokers(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Topics of a test's own (the repository's topology renamed with a fresh suffix),
/// created on the broker. Returns the suffix and the topology file.
pub fn fresh_topics(dir: &Path, prefix: &str) -> (String, PathBuf) {
    let suffix = unique(prefix);
    let topology = renamed_topology(dir, &suffix);
    apply_topology(&topology);
    (suffix, topology)
}

/// The stages of the repository's topology.yaml.
pub fn pipeline_stages() -> Vec<String> {
    let topology =
        codelupe_runtime::topology::Topology::load(&repo_root().join("topology.yaml")).unwrap();
    topology.stages.into_keys().collect()
}

/// The repository's topology with topics and consumer groups of a run's own (suffixed
/// `suffix`), created on the broker: for a whole pipeline on the shared test broker.
pub fn topology_of_its_own(dir: &Path, suffix: &str) -> PathBuf {
    replicated_topology_of_its_own(dir, suffix, 1)
}

/// [`topology_of_its_own`] with every topic replicated `replication_factor` times.
pub fn replicated_topology_of_its_own(
    dir: &Path,
    suffix: &str,
    replication_factor: i32,
) -> PathBuf {
    let path = renamed_topology(dir, suffix);
    let mut text = std::fs::read_to_string(&path).unwrap();
    if replication_factor != 1 {
        text = text.replace(
            "\n    partitions: ",
            &format!("\n    replication_factor: {replication_factor}\n    partitions: "),
        );
    }
    for stage in pipeline_stages() {
        text = text.replace(
            &format!("group: codelupe-{stage}\n"),
            &format!("group: codelupe-{stage}-{suffix}\n"),
        );
    }
    std::fs::write(&path, text).unwrap();
    apply_topology(&path);
    path
}

/// The consumer group of a stage (`batcher`) or of a stage's loop (`neardup-lookup`)
/// in a [`topology_of_its_own`] with `suffix`.
pub fn group_of_its_own(name: &str, suffix: &str) -> String {
    match name.split_once('-') {
        Some((stage, part)) => format!("codelupe-{stage}-{suffix}-{part}"),
        None => format!("codelupe-{name}-{suffix}"),
    }
}

/// Every consumer group of the pipeline, by its stage (`batcher`) or a stage's loop
/// (`neardup-lookup`), with the topic it reads.
pub const GROUP_INPUTS: &[(&str, &str)] = &[
    ("downloader", "repo-urls"),
    ("processor", "repo-clones"),
    ("neardup", "code-files"),
    ("neardup-lookup", "neardup-probes"),
    ("neardup-judge", "neardup-gather"),
    ("batcher", "distinct-files"),
    ("export", "distinct-files"),
    ("export-repositories", "repo-summaries"),
    ("export-near-duplicates", "near-duplicates"),
    ("trainer", "training-batches"),
];

/// Lag readers of the groups of a [`topology_of_its_own`] with `suffix`, each with its
/// name: every group of [`GROUP_INPUTS`] but those named in `except`.
pub fn lag_readers(
    suffix: &str,
    except: &[&str],
) -> Vec<(String, codelupe_runtime::kafka::LagReader)> {
    let config = codelupe_runtime::config::KafkaConfig::default();
    let clients = codelupe_runtime::kafka::KafkaClients::new(brokers(), &config);
    GROUP_INPUTS
        .iter()
        .filter(|(name, _)| !except.contains(name))
        .map(|(name, input)| {
            let group = group_of_its_own(name, suffix);
            let topic = format!("{input}-{suffix}");
            let reader = codelupe_runtime::kafka::LagReader::new(&clients, &group, &topic);
            (name.to_string(), reader.unwrap())
        })
        .collect()
}

/// Headless Chromium on `url` with `args` (`--dump-dom`: the page as rendered).
pub fn chromium(args: &[&str], url: &str) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,800",
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium is installed (setup/deps.sh test)")
}

/// The value of a counter or gauge in `registry`, summed over its series (those with a
/// label of value `label`, if given). Histograms read as 0.
pub fn metric(registry: &prometheus::Registry, name: &str, label: Option<&str>) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| label.is_none_or(|l| m.get_label().iter().any(|p| p.value() == l)))
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

pub fn repo_url(i: usize) -> RepoUrl {
    RepoUrl {
        full_name: format!("owner{}/repo-{i}", i % 97),
        clone_url: format!("https://github.com/owner{}/repo-{i}.git", i % 97),
        default_branch: Some("main".into()),
        language: Some("Rust".into()),
        stars: i as i64,
        forks: 1,
        size_kb: 10,
        topics: vec!["test".into()],
        license_spdx: Some("MIT".into()),
        archived: false,
        fork: false,
        created_at_ms: Some(0),
        pushed_at_ms: Some(now_ms()),
        description: None,
        source: "test".into(),
        discovered_at_ms: now_ms(),
    }
}

/// A `repo-urls` record of `full_name` at `clone_url` that passes the downloader's
/// default filter (a licensed, described Rust repository with stars, pushed in 2023).
pub fn url_record(full_name: &str, clone_url: &str) -> RepoUrl {
    RepoUrl {
        full_name: full_name.into(),
        clone_url: clone_url.into(),
        default_branch: Some("main".into()),
        language: Some("Rust".into()),
        stars: 120,
        forks: 4,
        size_kb: 10,
        topics: vec!["cli".into()],
        license_spdx: Some("MIT".into()),
        archived: false,
        fork: false,
        created_at_ms: Some(0),
        pushed_at_ms: Some(1_700_000_000_000),
        description: Some("a fixture".into()),
        source: "test".into(),
        discovered_at_ms: now_ms(),
    }
}

/// Sum of the high watermarks of `topic` (records ever written to it, transaction
/// markers included); 0 while the topic's metadata has not reached the client yet.
pub fn topic_size(topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = codelupe_testkit::kafka::client().create().unwrap();
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map(|(_, high)| high)
                .unwrap_or(0)
        })
        .sum()
}

/// Names from the original system that promtool's lint objects to. They are a contract
/// (dashboards and alerts query them), so they stay; nothing else may draw a lint.
pub const CONTRACT_NAMES_LINT_FLAGS: &[&str] = &[
    "downloader_last_repo_size_kb", // "should not contain abbreviated units"
    "processor_worker_count",       // "should not have _count suffix"
];

/// `promtool check metrics` on an exposition: it must parse (exit 1 is a parse error),
/// and lint findings (exit 3) may only concern [`CONTRACT_NAMES_LINT_FLAGS`].
pub fn promtool_check_metrics(name: &str, exposition: &str) {
    // promtool is installed by setup/deps.sh (Debian package prometheus).
    let out = output_given(
        Command::new("promtool").args(["check", "metrics"]),
        exposition.as_bytes(),
    );
    let report = text(&out);
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            for finding in report.lines().filter(|l| !l.trim().is_empty()) {
                let metric = finding.split_whitespace().next().unwrap_or_default();
                assert!(
                    CONTRACT_NAMES_LINT_FLAGS.contains(&metric),
                    "promtool check metrics for {name}: {finding}"
                );
            }
        }
        _ => panic!("promtool check metrics failed for {name}:\n{report}"),
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What `datasets` and DuckDB saw of the dataset (tests/export/read_dataset.py).
pub fn read_with_python_clients(dataset: &Path) -> serde_json::Value {
    let venv = std::env::var("DATA_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/codelupe/data-venv",
            std::env::var("HOME").unwrap()
        )
    });
    let python = Path::new(&venv).join("bin/python");
    assert!(
        python.exists(),
        "no {}: source setup/datatools.sh (tests/run does)",
        python.display()
    );
    let out = Command::new(python)
        .arg(repo_root().join("tests/export/read_dataset.py"))
        .arg(dataset)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `codelupe stage NAME` as its own process with this config and topology, its metrics
/// on `port`; SIGKILLed when dropped.
pub fn start_stage(stage: &str, config: &Path, topology: &Path, port: u16) -> KillOnDrop {
    let child = codelupe()
        .arg("--config")
        .arg(config)
        .arg("--topology")
        .arg(topology)
        .args(["stage", stage])
        .env(
            format!("CODELUPE_STAGES__{}__METRICS_PORT", stage.to_uppercase()),
            port.to_string(),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}
