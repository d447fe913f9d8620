//! `codelupe topology` and the start-up errors, through the real binary.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// The one `error:` line of a failed command, asserting there is exactly one.
fn error_line(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{}",
        text(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    errors[0].to_string()
}

#[test]
fn the_repository_topology_checks_out() {
    let out = codelupe().args(["topology", "check"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("13 topics, 7 stages: ok"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_topology_referencing_a_missing_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(repo_root().join("topology.yaml")).unwrap();
    let broken = original
        .replace(
            "schema: schemas/",
            &format!("schema: {}/schemas/", repo_root().display()),
        )
        .replace("schemas/code-files.avsc", "schemas/no-such-file.avsc");
    let path = dir.path().join("topology.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = codelupe()
        .args(["--topology", path.to_str().unwrap(), "topology", "check"])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("topic code-files") && line.contains("no-such-file.avsc"),
        "{line}"
    );
}

#[test]
fn an_unknown_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("codelupe.yaml");
    std::fs::write(
        &config,
        "kafka:\n  brokers: 127.0.0.1:1\nstages:\n  processor:\n    max_in_fligth: 3\n",
    )
    .unwrap();
    let out = codelupe()
        .args(["--config", config.to_str().unwrap(), "topology", "check"])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("stages.processor") && line.contains("max_in_fligth"),
        "{line}"
    );

    let out = codelupe()
        .args(["topology", "check"])
        .env("CODELUPE_KAFKA__BROKER", "x:1")
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(line.contains("kafka") && line.contains("broker"), "{line}");

    std::fs::write(&config, "stages:\n  procesor: {}\n").unwrap();
    let out = codelupe()
        .args(["--config", config.to_str().unwrap(), "topology", "check"])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(line.contains("stages.procesor"), "{line}");
}

#[test]
fn an_unreachable_broker_fails_after_retries() {
    let out = codelupe()
        .args(["topology", "apply", "--brokers", "127.0.0.1:1"])
        .env("CODELUPE_KAFKA__CONNECT_ATTEMPTS", "3")
        .env("CODELUPE_KAFKA__CONNECT_BACKOFF_MS", "50")
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("cannot reach Kafka at 127.0.0.1:1 after 3 attempts"),
        "{line}"
    );
}

#[test]
fn generate_hands_over_to_the_trainer_binary_or_says_how_to_build_it() {
    let out = codelupe()
        .args(["generate", "--checkpoint", "/nonexistent", "--prompt", "fn"])
        .output()
        .unwrap();
    let line = error_line(&out);
    let trainer =
        Path::new(env!("CARGO_BIN_EXE_codelupe")).with_file_name(codelupe_trainer_api::BINARY);
    if trainer.exists() {
        // The trainer's own error: the hand-over passed the arguments through.
        assert!(line.contains("no checkpoint in /nonexistent"), "{line}");
    } else {
        assert!(
            line.contains("cargo build --release -p codelupe-trainer"),
            "{line}"
        );
    }
}

fn kcat_partitions(topic: &str) -> usize {
    let out = Command::new("kcat")
        .args(["-b", &brokers(), "-L", "-t", topic])
        .output()
        .expect("kcat is installed");
    let listing = String::from_utf8_lossy(&out.stdout);
    let header = format!("topic \"{topic}\" with ");
    let line = listing
        .lines()
        .find(|l| l.contains(&header))
        .unwrap_or_else(|| panic!("kcat does not list {topic}:\n{listing}"));
    line.split(&header)
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn apply_is_idempotent_grows_partitions_and_reports_drift() {
    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("t");
    let path = renamed_topology(dir.path(), &suffix);
    let renamed = std::fs::read_to_string(&path).unwrap();
    let topology =
        codelupe_runtime::topology::Topology::load(&repo_root().join("topology.yaml")).unwrap();
    let topics: Vec<&str> = topology.topics.keys().map(String::as_str).collect();

    let first = apply_topology(&path);
    assert_eq!(first.matches("created ").count(), topics.len(), "{first}");
    let second = apply_topology(&path);
    assert!(
        second.contains(&format!("no changes: {} topics match", topics.len())),
        "{second}"
    );
    assert!(
        !second.contains("created") && !second.contains("drift"),
        "{second}"
    );
    for topic in &topics {
        assert_eq!(
            kcat_partitions(&format!("{topic}-{suffix}")),
            topology.topics[*topic].partitions as usize,
            "{topic}"
        );
    }

    // Grow one topic, shorten another's retention: grown, and drift reported.
    let edited = renamed
        .replacen(
            &format!("training-batches-{suffix}:\n    partitions: 3\n"),
            &format!("training-batches-{suffix}:\n    partitions: 5\n"),
            1,
        )
        .replace("retention_ms: 1209600000", "retention_ms: 86400000");
    std::fs::write(&path, &edited).unwrap();
    let third = apply_topology(&path);
    assert!(
        third.contains(&format!("grew training-batches-{suffix} to 5 partitions")),
        "{third}"
    );
    assert!(third.contains(&format!("drift: topic code-files-{suffix}: retention.ms is 1209600000, topology declares 86400000")), "{third}");
    assert_eq!(kcat_partitions(&format!("training-batches-{suffix}")), 5);
}

#[test]
fn the_committed_prometheus_config_is_rendered_from_the_topology_and_valid() {
    let rendered = codelupe()
        .args([
            "topology",
            "prometheus",
            "--rule-file",
            "codelupe_alerts.yml",
        ])
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", text(&rendered));
    let committed = std::fs::read_to_string(repo_root().join("configs/prometheus.yml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rendered.stdout),
        committed,
        "configs/prometheus.yml is stale: regenerate with `codelupe topology prometheus --rule-file codelupe_alerts.yml > configs/prometheus.yml`"
    );
    for (name, config) in [("dns", committed.clone()), ("static", String::new())] {
        let dir = tempfile::tempdir().unwrap();
        let config = if name == "static" {
            let out = codelupe()
                .args(["topology", "prometheus", "--static-host", "127.0.0.1"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        } else {
            std::fs::copy(
                repo_root().join("configs/codelupe_alerts.yml"),
                dir.path().join("codelupe_alerts.yml"),
            )
            .unwrap();
            config
        };
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, &config).unwrap();
        let out = Command::new("promtool")
            .args(["check", "config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out));
        for stage in ["crawler", "downloader", "processor", "batcher", "trainer"] {
            assert!(
                config.contains(&format!("job_name: {stage}")),
                "{name}: {stage}"
            );
        }
    }
}

/// `StageDown` fires for every stage topology.yaml declares: promtool's rule tests,
/// one series of failed scrapes per stage.
#[test]
fn the_stage_down_alert_covers_every_stage_of_the_topology() {
    let topology =
        codelupe_runtime::topology::Topology::load(&repo_root().join("topology.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_root().join("configs/codelupe_alerts.yml"),
        dir.path().join("codelupe_alerts.yml"),
    )
    .unwrap();
    let mut series = String::new();
    let mut expected = String::new();
    for stage in topology.stages.keys() {
        series.push_str(&format!(
            "      - series: 'up{{job=\"{stage}\", instance=\"{stage}:1\"}}'\n        values: '0x5'\n"
        ));
        expected.push_str(&format!(
            "          - exp_labels: {{severity: critical, job: {stage}, instance: \"{stage}:1\"}}\n\
             \x20           exp_annotations: {{summary: \"{stage} replica {stage}:1 is not answering scrapes\"}}\n"
        ));
    }
    let test = format!(
        "rule_files: [codelupe_alerts.yml]\nevaluation_interval: 1m\ntests:\n\
         \x20 - interval: 1m\n    input_series:\n{series}\
         \x20   alert_rule_test:\n      - eval_time: 3m\n        alertname: StageDown\n\
         \x20       exp_alerts:\n{expected}"
    );
    let path = dir.path().join("stage_down_test.yml");
    std::fs::write(&path, test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_alert_rules_are_valid() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo_root().join("configs/codelupe_alerts.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_stage_whose_records_can_outgrow_its_output_topic_refuses_to_start() {
    use codelupe_runtime::config::Config;
    use codelupe_runtime::kafka::KafkaClients;
    use codelupe_runtime::topology::Topology;
    use codelupe_runtime::StageRuntime;
    let largest = codelupe_processor::ProcessorOptions::default().max_bytes
        + codelupe_processor::RECORD_METADATA_BYTES;
    let processor = |topology: &Topology| {
        let config = Config::default();
        StageRuntime::resolve(
            "processor",
            topology,
            &config,
            KafkaClients::new("127.0.0.1:1", &config.kafka),
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap()
    };
    // The repository's topology gives code-files room for the processor's largest file.
    let ours = Topology::load(&repo_root().join("topology.yaml")).unwrap();
    processor(&ours)
        .check_output_fits(largest, "max_bytes")
        .unwrap();
    // At Kafka's default limit, a 1 MiB file and its metadata would not fit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.yaml");
    let text = std::fs::read_to_string(repo_root().join("topology.yaml"))
        .unwrap()
        .replace(
            "schema: schemas/",
            &format!("schema: {}/schemas/", repo_root().display()),
        )
        .replace(
            "max.message.bytes: \"2097152\"",
            "max.message.bytes: \"1048588\"",
        );
    std::fs::write(&path, text).unwrap();
    let defaults = Topology::load(&path).unwrap();
    let error = processor(&defaults)
        .check_output_fits(largest, "max_bytes")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("topic code-files takes at most 1048588 (max.message.bytes)"),
        "{error}"
    );
}
