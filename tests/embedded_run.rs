//! `codelupe run` on its embedded default, as a newcomer runs it in a fresh checkout: no
//! Kafka installed, no network. Every stage's metrics port answers for 30 s with valid
//! exposition, a real Prometheus scrapes them and answers the original system's
//! dashboard queries, `codelupe tail` decodes records from the running broker, the
//! trainer writes a checkpoint that `codelupe generate` samples from, headless Chromium
//! renders the live page with every stage and a loss curve, and Ctrl-C stops it with a
//! summary.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const ENDPOINTS: &[(&str, u16, &str)] = &[
    ("downloader", 9091, "/metrics"),
    ("crawler", 9092, "/metrics"),
    ("processor", 9093, "/metrics"),
    ("batcher", 9094, "/metrics"),
    ("neardup", 9095, "/metrics"),
    ("export", 9096, "/metrics"),
    ("trainer", 8090, "/prometheus"),
];
const LIVE_PAGE_PORT: u16 = 9080;
/// The bound: within this, every port answers and a checkpoint is on disk.
const FIRST_CHECKPOINT_WITHIN: Duration = Duration::from_secs(600);

/// A fresh clone of this repository, as a newcomer has it.
fn fresh_checkout(dir: &Path) -> PathBuf {
    let work = dir.join("codelupe");
    let status = Command::new("git")
        .args(["clone", "--quiet"])
        .arg(repo_root())
        .arg(&work)
        .status()
        .unwrap();
    assert!(status.success(), "git clone of the repository");
    work
}

fn newest_checkpoint(root: &Path) -> Option<PathBuf> {
    let mut done: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state.json").is_file())
        .collect();
    done.sort();
    done.pop()
}

#[test]
fn run_trains_a_model_with_every_port_the_live_page_and_tail_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let work = fresh_checkout(dir.path());
    let start = Instant::now();
    let mut guard = started(&work);
    let run = &mut guard.0;
    let prometheus = start_prometheus();
    every_port_serves_its_metrics_and_is_ready(run, start);
    check_seed_queries(&prometheus);
    check_tail(&work);

    let checkpoints = work.join(".codelupe/checkpoints");
    wait_for(
        "the trainer's first checkpoint",
        FIRST_CHECKPOINT_WITHIN.saturating_sub(start.elapsed()),
        || newest_checkpoint(&checkpoints).is_some(),
    );
    check_live_page();

    let summary = stopped_by_ctrl_c(run);
    check_summary_names_its_model(&summary, &checkpoints);
    assert!(
        !work.join(".codelupe/broker").exists(),
        "the embedded broker's address outlived the run"
    );
    check_dataset(&work, &summary);
    check_a_second_run_goes_on(&work, &summary);
    check_generate(&work);
}

/// `codelupe run` in `work` until every stage's port answers.
fn started(work: &Path) -> KillOnDrop {
    let mut guard = KillOnDrop(
        codelupe()
            .current_dir(work)
            .arg("run")
            .env_remove("CODELUPE_KAFKA__BROKERS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let run = &mut guard.0;
    wait_for(
        "the crawler's metrics port",
        Duration::from_secs(60),
        || {
            fail_if_exited(run, "at start");
            http_get(9092, "/healthz").is_ok()
        },
    );
    for (stage, port, _) in ENDPOINTS {
        // The trainer, a child process, binds a moment later.
        wait_for(stage, Duration::from_secs(60), || {
            http_get(*port, "/healthz").is_ok()
        });
    }
    guard
}

/// For 30 s (two rounds at least) every port serves valid exposition with its
/// stage's own metrics; past 30 s every stage is ready, the crawler has published and
/// the batcher has made a batch; the run is still going.
fn every_port_serves_its_metrics_and_is_ready(run: &mut std::process::Child, start: Instant) {
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(30) || rounds < 2 {
        for (stage, port, path) in ENDPOINTS {
            let (status, body) = http_get(*port, path).unwrap_or_else(|e| {
                panic!("{stage} on :{port}{path} after {:?}: {e}", start.elapsed())
            });
            assert_eq!(status, 200, "{stage} :{port}{path}");
            assert!(
                body.contains(&format!("{stage}_")),
                "{stage}'s own metrics are missing:\n{body}"
            );
            assert!(
                body.contains("process_resident_memory_bytes"),
                "{stage}: process metrics"
            );
            if rounds == 0 {
                promtool_check_metrics(stage, &body);
                assert_eq!(
                    http_get(*port, "/healthz").unwrap().0,
                    200,
                    "{stage} /healthz"
                );
            }
            if start.elapsed() >= Duration::from_secs(30) {
                check_ready_and_flowing(stage, *port, &body);
            }
        }
        rounds += 1;
        std::thread::sleep(Duration::from_secs(5));
    }
    fail_if_exited(run, "on its own");
}

/// Fails, with its stderr, if the run has ended (`when`: how the message says it).
fn fail_if_exited(run: &mut std::process::Child, when: &str) {
    if let Some(status) = run.try_wait().unwrap() {
        let mut stderr = String::new();
        std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        panic!("codelupe run exited {when} with {status}:\n{stderr}");
    }
}

/// One stage past 30 s: ready, and the files of this checkout on their way.
fn check_ready_and_flowing(stage: &str, port: u16, body: &str) {
    let (ready, why) = http_get(port, "/readyz").unwrap();
    assert_eq!(ready, 200, "{stage} /readyz: {why}");
    if stage == "crawler" {
        // The offline default crawls the git repositories under the working
        // directory: at least this checkout.
        let published = body
            .lines()
            .find_map(|l| l.strip_prefix("crawler_repos_indexed_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            published >= 1.0,
            "the embedded crawler published nothing:\n{body}"
        );
    }
    if stage == "batcher" {
        // This checkout's files went all the way through to training batches.
        let batches: f64 = body
            .lines()
            .filter_map(|l| l.strip_prefix("batcher_batches_produced_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            batches >= 1.0,
            "the embedded batcher made no batch:\n{body}"
        );
    }
}

/// Ctrl-C stops the run within 60 s, successfully, with every port closed;
/// returns the summary it printed.
fn stopped_by_ctrl_c(run: &mut std::process::Child) -> String {
    Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap();
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "codelupe run did not stop within 60 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    std::io::Read::read_to_string(run.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status}:\n{stderr}");
    for (_, port, _) in ENDPOINTS {
        assert!(
            http_get(*port, "/healthz").is_err(),
            "port {port} still open after exit"
        );
    }
    stdout
}

/// The summary names the model it made and how to try it.
fn check_summary_names_its_model(stdout: &str, checkpoints: &Path) {
    let newest = newest_checkpoint(checkpoints).unwrap();
    let name = newest.file_name().unwrap().to_str().unwrap();
    for expected in [
        "summary after",
        "repositories  1 found",
        " kept; skipped: ",
        "optimiser steps",
        &format!("checkpoint    .codelupe/checkpoints/{name}"),
        "generate --checkpoint .codelupe/checkpoints --prompt",
    ] {
        assert!(
            stdout.contains(expected),
            "summary lacks {expected:?}:\n{stdout}"
        );
    }
}

/// A second run in the same folder goes on from the checkpoint with another
/// pass over the files (the embedded broker starts empty), instead of waiting past
/// their end.
fn check_a_second_run_goes_on(work: &Path, stdout: &str) {
    let steps = |summary: &str| -> u64 {
        summary
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("training")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no step count in the summary:\n{summary}"))
    };
    let second = codelupe()
        .current_dir(work)
        .args(["run", "--for", "90s"])
        .env_remove("CODELUPE_KAFKA__BROKERS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", text(&second));
    let second = String::from_utf8_lossy(&second.stdout);
    assert!(
        steps(&second) > steps(stdout),
        "the second run trained nothing more:\n{stdout}\n{second}"
    );
}

/// `codelupe generate` samples from the checkpoints.
fn check_generate(work: &Path) {
    let generated = codelupe()
        .current_dir(work)
        .args(["generate", "--checkpoint", ".codelupe/checkpoints"])
        .args(["--prompt", "fn main(", "--max-tokens", "24"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", text(&generated));
    assert!(
        !String::from_utf8_lossy(&generated.stdout).trim().is_empty(),
        "generate printed nothing: {}",
        text(&generated)
    );
}

/// The run's export, read by `datasets` and DuckDB: a row for each file the
/// near-duplicate stage kept, as the summary says.
fn check_dataset(work: &Path, summary: &str) {
    let kept: u64 = summary
        .lines()
        .find_map(|l| {
            let judged = l.trim().strip_prefix("near-dups")?;
            judged
                .split(", ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no near-duplicate count in the summary:\n{summary}"));
    assert!(kept > 0, "{summary}");
    assert!(
        summary.contains(&format!("dataset       {kept} rows")),
        "the summary's dataset line:\n{summary}"
    );
    let seen = read_with_python_clients(&work.join(".codelupe/dataset"));
    assert_eq!(seen["datasets_rows"], kept, "rows datasets read");
    assert_eq!(
        seen["duckdb_hashes"].as_array().unwrap().len() as u64,
        kept,
        "rows DuckDB read"
    );
    // The catalogue: a row per repository the processor read, and the card's filter
    // counts as the stages' summary lines give them.
    let published: u64 = summary
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("files")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no processor count in the summary:\n{summary}"));
    let repositories = &seen["repositories"];
    assert!(
        repositories["datasets_rows"].as_u64() > Some(0),
        "no repository in the catalogue: {seen}"
    );
    let card = std::fs::read_to_string(work.join(".codelupe/dataset/README.md")).unwrap();
    for line in [
        format!("| published by the processor | {published} |"),
        format!("| in this dataset | {kept} |"),
    ] {
        assert!(card.contains(&line), "{line}\n{card}");
    }
}

/// `codelupe tail` finds the running embedded broker and prints decoded records.
fn check_tail(work: &Path) {
    let out = codelupe()
        .current_dir(work)
        .args(["tail", "code-files", "--max", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in lines {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let value = &record["value"];
        assert_eq!(record["key"], value["content_hash"], "{line}");
        assert!(
            !value["content"].as_str().unwrap_or_default().is_empty(),
            "{line}"
        );
        assert!(value["path"].as_str().is_some(), "{line}");
    }
}

/// The live page in headless Chromium: every stage, and a loss curve of two points or
/// more drawn on a canvas. A screenshot is left in the test's temporary target folder.
fn check_live_page() {
    wait_for(
        "two optimiser steps on the live page",
        Duration::from_secs(300),
        || {
            let Ok((200, board)) = http_get(LIVE_PAGE_PORT, "/api/board") else {
                return false;
            };
            let board: serde_json::Value = serde_json::from_str(&board).unwrap();
            board["train_loss"].as_array().map_or(0, Vec::len) >= 2
        },
    );
    let url = format!("http://127.0.0.1:{LIVE_PAGE_PORT}/");
    let dom = chromium(&["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for (stage, _, _) in ENDPOINTS {
        assert!(
            dom.contains(&format!("data-stage=\"{stage}\"")),
            "the live page does not show {stage}:\n{dom}"
        );
    }
    for topic in [
        "repo-urls",
        "repo-clones",
        "code-files",
        "distinct-files",
        "training-batches",
    ] {
        assert!(
            dom.contains(&format!("data-topic=\"{topic}\"")),
            "{topic}:\n{dom}"
        );
    }
    let points: usize = dom
        .split("data-loss-points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next()?.parse().ok())
        .unwrap_or(0);
    assert!(points >= 2, "loss curve of {points} points:\n{dom}");
    assert!(dom.contains("<canvas"), "no chart was drawn:\n{dom}");
    // An eval curve per language of the eval set, once the first evaluation is in.
    wait_for("eval losses by language", Duration::from_secs(300), || {
        let Ok((200, board)) = http_get(LIVE_PAGE_PORT, "/api/board") else {
            return false;
        };
        let board: serde_json::Value = serde_json::from_str(&board).unwrap();
        board["eval_loss_by_language"]
            .as_object()
            .is_some_and(|languages| !languages.is_empty())
    });
    let dom = chromium(&["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let languages = dom
        .split("data-eval-languages=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default();
    assert!(!languages.is_empty(), "no eval curve per language:\n{dom}");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    let screenshot = chromium(&[&format!("--screenshot={}", shot.display())], &url);
    assert!(screenshot.status.success(), "{}", text(&screenshot));
    assert!(std::fs::metadata(&shot)
        .map(|m| m.len() > 10_000)
        .unwrap_or(false));
}

struct Prometheus {
    _process: KillOnDrop,
    _data: tempfile::TempDir,
    port: u16,
}

/// Prometheus from Debian's package, scraping every stage each second with the scrape
/// config rendered from topology.yaml.
fn start_prometheus() -> Prometheus {
    let data = tempfile::tempdir().unwrap();
    let rendered = codelupe()
        .args(["topology", "prometheus", "--static-host", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", text(&rendered));
    let config = String::from_utf8(rendered.stdout)
        .unwrap()
        .replace("scrape_interval: 15s", "scrape_interval: 3s")
        .replace("scrape_interval: 30s", "scrape_interval: 3s");
    let config_path = data.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = codelupe_testkit::free_port();
    let process = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            data.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (Debian package prometheus)");
    let prometheus = Prometheus {
        _process: KillOnDrop(process),
        _data: data,
        port,
    };
    wait_for("Prometheus ready", Duration::from_secs(30), || {
        matches!(http_get(port, "/-/ready"), Ok((200, _)))
    });
    prometheus
}

fn query(prometheus: &Prometheus, promql: &str) -> serde_json::Value {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) =
        http_get(prometheus.port, &format!("/api/v1/query?query={encoded}")).unwrap();
    assert_eq!(status, 200, "{promql}: {body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["status"], "success", "{promql}: {body}");
    value
}

/// Histograms expose only `_bucket`, `_sum` and `_count` series, so these two seed
/// queries over a histogram's bare name return nothing, exactly as they did against the
/// original system; the dashboard carries a working average beside them.
const SEED_QUERIES_OVER_HISTOGRAM_NAMES: &[&str] = &[
    "avg(processor_file_quality_score)",
    "trainer_training_duration_seconds",
];

fn check_seed_queries(prometheus: &Prometheus) {
    for job in ["crawler", "downloader", "processor", "batcher", "trainer"] {
        let up = query(
            prometheus,
            &format!("max_over_time(up{{job=\"{job}\"}}[1m])"),
        );
        assert_eq!(
            up["data"]["result"][0]["value"][1], "1",
            "{job} is not up in Prometheus: {up}"
        );
    }
    let seeds = std::fs::read_to_string(repo_root().join("configs/seed-queries.promql")).unwrap();
    let seeds: Vec<_> = seeds
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(seeds.len(), 15);
    // A scrape that fails under load marks its series stale for a moment; give the
    // queries a few scrapes to agree before judging.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    for promql in seeds {
        let expect_empty = SEED_QUERIES_OVER_HISTOGRAM_NAMES.contains(&promql);
        loop {
            let result = query(prometheus, promql)["data"]["result"].clone();
            let empty = result.as_array().is_none_or(|r| r.is_empty());
            if empty == expect_empty {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "seed query {promql} returned {result}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let dashboard =
        std::fs::read_to_string(repo_root().join("configs/grafana/dashboards/codelupe.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        query(prometheus, panel["targets"][0]["expr"].as_str().unwrap());
    }
}
