//! The whole data pipeline on the test broker, every stage its own process as in
//! production: crawler (against a stand-in GitHub API listing the corpus) → downloader
//! (bare clones over `git daemon` on loopback) → processor → neardup → batcher, over crates from
//! the local cargo registry made into repositories, at 1× and 4× a corpus. Prints
//! files/s and tokens/s end to end, time to the first batch, and each stage's CPU time,
//! peak RSS and input lag; names the bottleneck, the stage that spent the most CPU on
//! the 4× corpus (the stages share the machine's cores), and runs it alone over that
//! corpus again at 1 and 2 replicas, then at 1 and 2 replicas of one core each (a
//! replica of the processor or the batcher works on every core already). Last, peak
//! RSS at 1× against 4×.
//!
//! `bash benches/whole-pipeline.sh` (starts the test broker; PIPELINE_CRATES sets the
//! 1× corpus, default 40 crates; PIPELINE_MEMORY_ONLY=1 skips the runs alone). The trainer is left out: on this 2-core VM it trains
//! at thousands of tokens/s (its own bench), and beside it every other stage starves.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use codelupe_runtime::config::KafkaConfig;
use codelupe_runtime::kafka::{KafkaClients, LagReader};
use codelupe_testkit::bench::proc_status_kb;
use support::fake_github::{FakeGithub, FakeRepo};
use support::*;

/// The data stages in pipeline order, with the topic each reads.
const STAGES: [(&str, Option<&str>); 5] = [
    ("crawler", None),
    ("downloader", Some("repo-urls")),
    ("processor", Some("repo-clones")),
    ("neardup", Some("code-files")),
    ("batcher", Some("distinct-files")),
];
const SAMPLE: Duration = Duration::from_millis(250);
const BOUND: Duration = Duration::from_secs(1800);

/// The corpus: crates as bare repositories on `git daemon`, listed by a stand-in GitHub.
struct Corpus {
    github: FakeGithub,
    repos: usize,
    bytes: u64,
    _daemon: GitDaemon,
}

impl Corpus {
    fn build(dir: &Path, crates: &[PathBuf]) -> Self {
        let (srv, work) = (dir.join("srv"), dir.join("import"));
        std::fs::create_dir_all(&work).unwrap();
        for root in crates {
            let name = root.file_name().unwrap().to_string_lossy().into_owned();
            import_tree(root, &srv.join(format!("crates/{name}.git")), &work);
        }
        let daemon = GitDaemon::start(&srv);
        let start = 1_704_067_200; // 2024-01-01
        let listed = crates
            .iter()
            .enumerate()
            .map(|(i, root)| {
                let name = root.file_name().unwrap().to_string_lossy().into_owned();
                FakeRepo {
                    full_name: format!("crates/{name}"),
                    language: "Rust".into(),
                    pushed_at: start + i as i64 * 3_600,
                    stars: 100,
                    clone_url: Some(daemon.url(&format!("crates/{name}.git"))),
                }
            })
            .collect();
        Self {
            github: FakeGithub::start(listed, Duration::ZERO),
            repos: crates.len(),
            bytes: crates.iter().map(|c| tree_bytes(c)).sum(),
            _daemon: daemon,
        }
    }
}

fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// One run's topics, groups, config and working folders.
struct Run {
    dir: PathBuf,
    suffix: String,
    topology: PathBuf,
    config: PathBuf,
}

impl Run {
    fn new(dir: &Path, api: &str, tokenizer: &Path) -> Self {
        let suffix = unique("pipeline");
        let dir = dir.join(&suffix);
        std::fs::create_dir_all(&dir).unwrap();
        let topology = renamed_topology(&dir, &suffix);
        apply_topology(&topology);
        let config = dir.join("codelupe.yaml");
        std::fs::write(
            &config,
            format!(
                "kafka: {{brokers: '{brokers}', dead_letter_topic: dead-letters-{suffix}}}
clone_store: {{url: {store}}}
stages:
  crawler:
    metrics_bind: 127.0.0.1
    options:
      source: github
      github: {{api_url: '{api}', languages: [Rust], since: 2024-01-01, until: 2024-12-31}}
      state_topic: crawler-state-{suffix}
      transactional_id: crawler-{suffix}
  downloader:
    metrics_bind: 127.0.0.1
    options:
      urls: {{allowed_schemes: [git], allowed_hosts: [127.0.0.1]}}
      filter: {{min_stars: 0, languages: [], exclude_words: []}}
      store_readers: [never-reads-{suffix}]
  processor:
    metrics_bind: 127.0.0.1
  neardup:
    metrics_bind: 127.0.0.1
    options: {{probes_topic: neardup-probes-{suffix}, index_topic: neardup-index-{suffix}, gather_topic: neardup-gather-{suffix}, dropped_topic: near-duplicates-{suffix}}}
  batcher:
    metrics_bind: 127.0.0.1
    options: {{tokenizer: {tokenizer}, seen_topic: batcher-seen-{suffix}, flush_idle_ms: 1000}}
",
                brokers = brokers(),
                store = dir.join("store").display(),
                tokenizer = tokenizer.display(),
            ),
        )
        .unwrap();
        Self {
            dir,
            suffix,
            topology,
            config,
        }
    }

    fn topic(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    /// A replica of `stage` in group `group`, with `env` on top.
    fn spawn(&self, stage: &str, group: &str, replica: usize, env: &[(&str, &str)]) -> Process {
        let port = free_port();
        let log_path = self.dir.join(format!("{stage}-{group}-{replica}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let upper = stage.to_uppercase();
        let child = Command::new(env!("CARGO_BIN_EXE_codelupe"))
            .current_dir(repo_root())
            .arg("--config")
            .arg(&self.config)
            .arg("--topology")
            .arg(&self.topology)
            .args(["stage", stage])
            .env(
                format!("CODELUPE_STAGES__{upper}__METRICS_PORT"),
                port.to_string(),
            )
            .env(format!("CODELUPE_STAGES__{upper}__GROUP"), group)
            .envs(env.iter().copied())
            .env(
                "CODELUPE_LOG",
                std::env::var("PIPELINE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Process {
            log: log_path,
            port,
            child,
            peak_rss_kb: 0,
            peak_heap: Heap::default(),
            cpu_s: 0.0,
        }
    }
}

/// A process's CPU time so far (user and system), from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis; utime and stime are the 14th
    // and 15th of the whole line.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The machine's CPU time so far, busy and in all (every core), from /proc/stat.
fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks[3] + ticks.get(4).copied().unwrap_or(0.0);
    let all: f64 = ticks.iter().take(8).sum();
    ((all - idle) / 100.0, all / 100.0)
}

/// The test broker's process (its JVM), whose CPU the stages share the machine with.
fn broker_pid() -> Option<u32> {
    let port = std::env::var("KAFKA_PORT").unwrap_or_else(|_| "19092".into());
    let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
    std::fs::read_to_string(format!("{tmp}/codelupe-kafka-{port}/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct Process {
    log: PathBuf,
    port: u16,
    child: Child,
    peak_rss_kb: u64,
    peak_heap: Heap,
    cpu_s: f64,
}

/// The most a stage's allocators held at one sample, in bytes: live data and what they
/// kept resident (its `codelupe_heap_*_bytes`, both allocators summed).
#[derive(Default, Clone, Copy)]
struct Heap {
    live: f64,
    held: f64,
}

impl Process {
    /// Reads the process's peak RSS and CPU time so far from /proc, and its heap now
    /// from its metrics.
    fn sample(&mut self) {
        let pid = self.child.id();
        if let Some(kb) = proc_status_kb(&pid.to_string(), "VmHWM:") {
            self.peak_rss_kb = self.peak_rss_kb.max(kb);
        }
        let metrics = self.metrics();
        let heap = &mut self.peak_heap;
        heap.live = heap.live.max(sum_of(&metrics, "codelupe_heap_live_bytes"));
        heap.held = heap.held.max(sum_of(&metrics, "codelupe_heap_held_bytes"));
        if let Some(cpu_s) = cpu_seconds(pid) {
            self.cpu_s = cpu_s;
        }
    }

    /// Panics, with the end of its log, if the process has ended.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!("{} ended ({status}): {tail:?}", self.log.display());
        }
    }

    /// Its metrics page; empty while it does not answer.
    fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    fn metric(&self, name: &str) -> f64 {
        sum_of(&self.metrics(), name)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The sum of a metric's series on a metrics page.
fn sum_of(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a sampling loop saw of each stage.
#[derive(Default)]
struct StageFigures {
    cpu_s: f64,
    peak_rss_kb: u64,
    peak_heap: Heap,
    lag_seconds: f64,
    max_lag: i64,
}

struct PipelineFigures {
    elapsed: Duration,
    first_batch: Option<Duration>,
    files: i64,
    tokens: f64,
    stages: BTreeMap<&'static str, StageFigures>,
}

/// The process of `stage` among the pipeline's.
fn of<'a>(processes: &'a [(&str, Process)], stage: &str) -> &'a Process {
    &processes.iter().find(|(s, _)| *s == stage).unwrap().1
}

/// Every data stage at one replica until the corpus has gone through.
fn run_pipeline(run: &Run, corpus: &Corpus) -> PipelineFigures {
    let clients = KafkaClients::new(brokers(), &KafkaConfig::default());
    let started = Instant::now();
    let mut processes: Vec<(&'static str, Process)> = STAGES
        .iter()
        .map(|(stage, _)| {
            let group = format!("codelupe-{stage}-{}", run.suffix);
            (*stage, run.spawn(stage, &group, 0, &[]))
        })
        .collect();
    let mut lags: Vec<(&'static str, LagReader)> = STAGES
        .iter()
        .filter_map(|(stage, input)| {
            let group = format!("codelupe-{stage}-{}", run.suffix);
            Some((
                *stage,
                LagReader::new(&clients, &group, &run.topic((*input)?)).unwrap(),
            ))
        })
        .collect();
    let mut stages: BTreeMap<&'static str, StageFigures> = BTreeMap::new();
    let (mut first_batch, mut settled_since) = (None, None);
    loop {
        std::thread::sleep(SAMPLE);
        for (stage, process) in &mut processes {
            process.assert_running();
            process.sample();
            let figures = stages.entry(stage).or_default();
            figures.cpu_s = process.cpu_s;
            figures.peak_rss_kb = process.peak_rss_kb;
            figures.peak_heap = process.peak_heap;
        }
        let mut all_zero = true;
        for (stage, reader) in &mut lags {
            let lag = reader.lag().unwrap_or(-1);
            let figures = stages.entry(stage).or_default();
            figures.lag_seconds += lag.max(0) as f64 * SAMPLE.as_secs_f64();
            figures.max_lag = figures.max_lag.max(lag);
            all_zero &= lag == 0;
        }
        let batcher = of(&processes, "batcher");
        if first_batch.is_none()
            && batcher.metric(codelupe_batcher::metrics::BATCHES_PRODUCED) > 0.0
        {
            first_batch = Some(started.elapsed());
        }
        let crawler = of(&processes, "crawler");
        let listed =
            crawler.metric(codelupe_crawler::metrics::REPOS_INDEXED) as usize >= corpus.repos;
        // Done when everything listed has passed every stage and stays so for a second
        // (the batcher seals its last partial batch after a second of quiet).
        if listed && all_zero && first_batch.is_some() {
            let since = *settled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                break;
            }
        } else {
            settled_since = None;
        }
        assert!(started.elapsed() < BOUND, "the pipeline did not finish");
    }
    let elapsed = started.elapsed() - settled_since.unwrap().elapsed();
    let tokens = of(&processes, "batcher").metric(codelupe_batcher::metrics::TOKENS_PRODUCED);
    for (_, p) in processes {
        p.stop();
    }
    PipelineFigures {
        elapsed,
        first_batch,
        files: topic_size(&run.topic("code-files"), 12),
        tokens,
        stages,
    }
}

/// `stage` alone over its whole input again, in a fresh group, at `replicas` replicas
/// (`env` on top): input records per second while every replica had records to work on
/// (see [`BusyWindow`]), and draining the backlog, from a second after every replica
/// was ready (the group's join and the state loads do not count) to the group's lag
/// at 0.
fn stage_alone(
    run: &Run,
    stage: &str,
    input: &str,
    replicas: usize,
    env: &[(&str, &str)],
) -> Rates {
    let clients = KafkaClients::new(brokers(), &KafkaConfig::default());
    let group = unique(&format!("alone-{stage}"));
    let mut env = env.to_vec();
    // State from an earlier run would drop every file (the batcher's dedup marks) or
    // mix with this run's (the near-duplicate stage's index and its own topics).
    let seen = format!("batcher-seen-{group}");
    let own: Vec<(String, String, i32, &str)> = match stage {
        "batcher" => vec![(
            "CODELUPE_STAGES__BATCHER__OPTIONS__SEEN_TOPIC".into(),
            seen,
            12,
            "compact",
        )],
        "neardup" => [
            ("PROBES", "neardup-probes", 6, "delete"),
            ("INDEX", "neardup-index", 6, "compact"),
            ("GATHER", "neardup-gather", 12, "delete"),
            ("DROPPED", "near-duplicates", 3, "delete"),
        ]
        .into_iter()
        .map(|(option, topic, partitions, policy)| {
            (
                format!("CODELUPE_STAGES__NEARDUP__OPTIONS__{option}_TOPIC"),
                format!("{topic}-{group}"),
                partitions,
                policy,
            )
        })
        .collect(),
        _ => Vec::new(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (_, topic, partitions, policy) in &own {
        runtime.block_on(create_topic_with(
            topic,
            *partitions,
            &[("cleanup.policy", policy), ("max.message.bytes", "2097152")],
        ));
    }
    env.extend(
        own.iter()
            .map(|(var, topic, _, _)| (var.as_str(), topic.as_str())),
    );
    let started = Instant::now();
    let mut processes: Vec<Process> = (0..replicas)
        .map(|i| run.spawn(stage, &group, i, &env))
        .collect();
    let mut reader = LagReader::new(&clients, &group, &run.topic(input)).unwrap();
    let ready = |p: &Process| matches!(http_get(p.port, "/readyz"), Ok((200, _)));
    let mut window: Option<(Instant, i64)> = None;
    // (replicas, broker, machine busy, machine all) CPU seconds when the window opened.
    let mut window_cpu: Option<[f64; 4]> = None;
    let mut all_ready_at: Option<Instant> = None;
    let consumed = consumed_metric(stage);
    let mut counts = Vec::new();
    let ended = loop {
        std::thread::sleep(Duration::from_millis(100));
        processes.iter_mut().for_each(Process::assert_running);
        if all_ready_at.is_none() && processes.iter().all(ready) {
            all_ready_at = Some(Instant::now());
        }
        counts.push((
            Instant::now(),
            processes.iter().map(|p| p.metric(consumed)).collect(),
        ));
        let lag = reader.lag().unwrap_or(-1);
        if window.is_none()
            && all_ready_at.is_some_and(|at| at.elapsed() >= Duration::from_secs(1))
            && lag > 0
        {
            window = Some((Instant::now(), lag));
            window_cpu = Some(cpu_now(&mut processes));
        }
        if window.is_some() && lag == 0 {
            break Instant::now();
        }
        assert!(started.elapsed() < BOUND, "{stage} did not finish");
    };
    let [replicas_to, broker_to, busy_to, all_to] = cpu_now(&mut processes);
    let [replicas_from, broker_from, busy_from, all_from] = window_cpu.unwrap();
    let cpu: f64 = processes.iter().map(|p| p.cpu_s).sum();
    for p in processes {
        p.stop();
    }
    let (from, backlog) = window.unwrap();
    let drain = backlog as f64 / (ended - from).as_secs_f64();
    let busy = BusyWindow::of(&counts).unwrap_or_else(|| {
        panic!(
            "{replicas} replicas of {stage} never all worked at once on this backlog: \
             raise PIPELINE_CRATES"
        )
    });
    let cores = env
        .iter()
        .any(|(k, _)| k.ends_with("WORKERS") || *k == "RAYON_NUM_THREADS");
    println!(
        "  {stage} alone, {replicas} replica(s){}: {:.0} {input} records/s while every \
         replica had work ({:.0} records in {:.1} s, from {:.1} s after the start); \
         {drain:.0} records/s draining the backlog ({backlog} timed; {:.0}% of a core on \
         average)",
        if cores { ", one core each" } else { "" },
        busy.rate,
        busy.records,
        busy.seconds,
        (busy.from - started).as_secs_f64(),
        100.0 * cpu / started.elapsed().as_secs_f64()
    );
    // Where the machine's cores went while it was timed: the replicas, the broker,
    // everything else, idle.
    let machine = (all_to - all_from).max(f64::EPSILON);
    let (stage_cpu, broker_cpu) = (replicas_to - replicas_from, broker_to - broker_from);
    let busy_cpu = busy_to - busy_from;
    println!(
        "    draining, shares of all cores: {stage} {:.0}%, broker {:.0}%, \
         everything else {:.0}%, idle {:.0}%",
        100.0 * stage_cpu / machine,
        100.0 * broker_cpu / machine,
        100.0 * (busy_cpu - stage_cpu - broker_cpu).max(0.0) / machine,
        100.0 * (machine - busy_cpu) / machine
    );
    Rates {
        busy: busy.rate,
        drain,
    }
}

struct Rates {
    busy: f64,
    drain: f64,
}

/// The counter of records a stage has read (its descriptor's flow).
fn consumed_metric(stage: &str) -> &'static str {
    let descriptors = [
        &codelupe_downloader::DESCRIPTOR,
        &codelupe_processor::DESCRIPTOR,
        &codelupe_neardup::DESCRIPTOR,
        &codelupe_batcher::DESCRIPTOR,
    ];
    descriptors
        .iter()
        .find(|d| d.name == stage)
        .and_then(|d| d.flow.as_ref())
        .map(|flow| flow.consumed)
        .unwrap_or_else(|| panic!("{stage} reads no topic the bench runs it alone on"))
}

/// The span in which every replica was taking in records: from the first sample at
/// which each had read more than a second before, to the last record read by the
/// replica that ran out of work first. A backlog split by partition runs out unevenly
/// (a replica that joined later, or had more of its partitions' records, works on
/// alone), and a group takes two rebalances to give a joining replica partitions
/// (incremental rebalancing, each round a heartbeat apart): neither is the stage's
/// throughput with every replica working.
struct BusyWindow {
    from: Instant,
    records: f64,
    seconds: f64,
    rate: f64,
}

impl BusyWindow {
    /// `counts`: each replica's counter, sampled every 100 ms.
    fn of(counts: &[(Instant, Vec<f64>)]) -> Option<Self> {
        let second_before = |k: usize| {
            let (at, _) = counts[k];
            (0..k)
                .rev()
                .find(|&j| at - counts[j].0 >= Duration::from_secs(1))
        };
        let all_working = |k: usize| {
            second_before(k).is_some_and(|j| {
                let (now, then) = (&counts[k].1, &counts[j].1);
                now.iter().zip(then).all(|(n, t)| n > t)
            })
        };
        let open = (0..counts.len()).find(|&k| all_working(k))?;
        let replicas = counts[open].1.len();
        // Each replica's last new record; the earliest of them closes the window.
        let close = (0..replicas)
            .map(|i| {
                let last = counts.last().unwrap().1[i];
                (open..counts.len())
                    .find(|&k| counts[k].1[i] >= last)
                    .unwrap()
            })
            .min()
            .unwrap();
        if close <= open {
            return None;
        }
        let records: f64 = counts[close]
            .1
            .iter()
            .zip(&counts[open].1)
            .map(|(c, o)| c - o)
            .sum();
        let seconds = (counts[close].0 - counts[open].0).as_secs_f64();
        Some(Self {
            from: counts[open].0,
            records,
            seconds,
            rate: records / seconds,
        })
    }
}

/// [replicas, broker, machine busy, machine all] CPU seconds so far.
fn cpu_now(processes: &mut [Process]) -> [f64; 4] {
    for p in processes.iter_mut() {
        p.sample();
    }
    let replicas = processes.iter().map(|p| p.cpu_s).sum();
    let broker = broker_pid().and_then(cpu_seconds).unwrap_or(0.0);
    let (busy, all) = machine_cpu_seconds();
    [replicas, broker, busy, all]
}

fn print_pipeline(label: &str, corpus: &Corpus, f: &PipelineFigures) {
    let secs = f.elapsed.as_secs_f64();
    println!(
        "{label}: {} repositories ({:.1} MiB of sources): {} files, {:.0} tokens in {:.1} s = \
         {:.1} files/s, {:.0} tokens/s; first batch after {:.1} s",
        corpus.repos,
        corpus.bytes as f64 / (1 << 20) as f64,
        f.files,
        f.tokens,
        secs,
        f.files as f64 / secs,
        f.tokens / secs,
        f.first_batch.unwrap_or_default().as_secs_f64(),
    );
    println!("  stage       CPU s  CPU %  peak RSS MB  heap live MB  heap held MB  max lag  lag·s");
    for (stage, _) in STAGES {
        let s = &f.stages[stage];
        println!(
            "  {stage:<10} {:>6.1} {:>6.0} {:>12.1} {:>13.1} {:>13.1} {:>8} {:>6.1}",
            s.cpu_s,
            100.0 * s.cpu_s / secs,
            s.peak_rss_kb as f64 / 1024.0,
            s.peak_heap.live / MB,
            s.peak_heap.held / MB,
            s.max_lag,
            s.lag_seconds
        );
    }
}

fn main() {
    let size: usize = std::env::var("PIPELINE_CRATES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    // Crates of ordinary size: the registry also holds generated giants (bindings).
    let all: Vec<PathBuf> = all_registry_crates()
        .into_iter()
        .filter(|c| (20_000..3_000_000).contains(&tree_bytes(c)))
        .collect();
    assert!(
        all.len() >= 4 * size,
        "{} crates in the registry, {} needed for the 4x corpus",
        all.len(),
        4 * size
    );
    // Spread over the registry, so the corpus is not one family of crates.
    let step = all.len() / (4 * size);
    let mut picked: Vec<PathBuf> = (0..4 * size).map(|i| all[i * step].clone()).collect();
    // The 1x corpus is every fourth crate by size, largest first: it holds the largest
    // crate and the 4x corpus's spread of sizes, so a peak that grows from 1x to 4x
    // grows with the volume, not with a bigger repository met on the way.
    picked.sort_by_cached_key(|c| std::cmp::Reverse(tree_bytes(c)));
    let one_x: Vec<PathBuf> = picked.iter().step_by(4).cloned().collect();
    let temp = tempfile::tempdir().unwrap();
    // PIPELINE_KEEP=1 keeps the stages' logs (PIPELINE_LOG=info makes them talk).
    let (dir, _removed_at_end) = if std::env::var_os("PIPELINE_KEEP").is_some() {
        let kept = temp.keep();
        println!("keeping {}", kept.display());
        (kept, None)
    } else {
        (temp.path().to_path_buf(), Some(temp))
    };
    let tokenizer = dir.join("tokenizer.json");
    train_tokenizer(&one_x, 8192, &tokenizer);

    let corpus = Corpus::build(&dir.join("1x"), &one_x);
    let run = Run::new(&dir, &corpus.github.url, &tokenizer);
    let one = run_pipeline(&run, &corpus);
    print_pipeline("whole pipeline, 1x corpus", &corpus, &one);
    let corpus4 = Corpus::build(&dir.join("4x"), &picked);
    let run4 = Run::new(&dir, &corpus4.github.url, &tokenizer);
    let four = run_pipeline(&run4, &corpus4);
    print_pipeline("whole pipeline, 4x corpus", &corpus4, &four);

    // Every stage shares this machine's cores, so the one that spends the most CPU
    // on the corpus bounds the rest. (Lag alone misleads: the batcher's counts the
    // files in its open batch, committed only once the batch is sealed.)
    let bottleneck = STAGES
        .iter()
        .map(|(stage, _)| *stage)
        .max_by(|a, b| four.stages[a].cpu_s.total_cmp(&four.stages[b].cpu_s))
        .unwrap();
    println!("bottleneck: {bottleneck} (the most CPU time on the 4x corpus)");
    if std::env::var_os("PIPELINE_MEMORY_ONLY").is_none() {
        alone(&run4, bottleneck);
    }
    print_memory(&one, &four);
}

/// The bottleneck alone over the 4x corpus at 1 and 2 replicas.
fn alone(run4: &Run, bottleneck: &str) {
    let input = STAGES
        .iter()
        .find(|(stage, _)| *stage == bottleneck)
        .and_then(|(_, input)| *input)
        .expect("the crawler is never the bottleneck: it reads no topic");
    let single = stage_alone(run4, bottleneck, input, 1, &[]);
    let double = stage_alone(run4, bottleneck, input, 2, &[]);
    print_scaling(bottleneck, "", &single, &double);
    // A replica of either stage works on every core already (the processor parses,
    // the batcher tokenizes on a pool), so on this machine a second one can only take
    // what the first leaves idle; at one core a replica, what replicas add shows.
    let one_core = match bottleneck {
        "processor" => Some(("CODELUPE_STAGES__PROCESSOR__OPTIONS__WORKERS", "1")),
        "batcher" => Some(("RAYON_NUM_THREADS", "1")),
        _ => None,
    };
    if let Some(one_core) = one_core {
        let single = stage_alone(run4, bottleneck, input, 1, &[one_core]);
        let double = stage_alone(run4, bottleneck, input, 2, &[one_core]);
        print_scaling(bottleneck, ", one core a replica", &single, &double);
    }
}

fn print_scaling(stage: &str, how: &str, single: &Rates, double: &Rates) {
    println!(
        "{stage} alone{how}: 2 replicas vs 1: {:.2}x while every replica had work (goal >= \
         1.8x when CPU-bound); {:.2}x draining the backlog",
        double.busy / single.busy,
        double.drain / single.drain
    );
}

const MB: f64 = 1024.0 * 1024.0;

/// Peak RSS at both sizes, and beside it the peak of live heap data (sampled each
/// `SAMPLE`): where RSS grows and live data does not, the growth is freed memory the
/// allocators keep.
fn print_memory(one: &PipelineFigures, four: &PipelineFigures) {
    println!("peak RSS, 4x corpus vs 1x (goal: within 20%, the batcher's dedup marks aside), and the live heap's:");
    for (stage, _) in STAGES {
        let (a, b) = (&one.stages[stage], &four.stages[stage]);
        let (rss_a, rss_b) = (a.peak_rss_kb as f64 / 1024.0, b.peak_rss_kb as f64 / 1024.0);
        let (live_a, live_b) = (a.peak_heap.live / MB, b.peak_heap.live / MB);
        println!(
            "  {stage:<10} {rss_a:.1} MB -> {rss_b:.1} MB = {:.2}x   live heap {live_a:.1} MB -> {live_b:.1} MB = {:.2}x",
            rss_b / rss_a,
            live_b / live_a
        );
    }
}
