//! CodeLupe's stage runtime against Kafka Streams, side by side on the test broker: an
//! identity stage each (CodeLupe's relay decodes and re-encodes each Avro record; the
//! Streams topology passes bytes through), the same input (records of 1 kB and 64 kB
//! on 3 partitions), both delivery modes (at-least-once against Streams'
//! `at_least_once`, exactly-once against `exactly_once_v2`), alternating which runs
//! first over the rounds.
//!
//! Throughput: a backlog produced first, then seconds from the stage holding its
//! partitions to every input offset committed. Latency: records produced at a fixed
//! rate while the stage runs, each carrying its send time; the output topic stamps
//! its append time (LogAppendTime), and the difference is the end-to-end latency.
//! The ceiling: Kafka's own ProducerPerformance and ConsumerPerformance on the same
//! broker and sizes.
//!
//!     bash benches/kafka-streams/run.sh

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use codelupe_runtime::config::{Config, Delivery};
use codelupe_runtime::kafka::LagReader;
use codelupe_runtime::records::now_ms;
use codelupe_runtime::AvroRecord;
use codelupe_testkit::bench::median;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use support::*;

/// (record bytes, records in the backlog)
const SIZES: [(usize, usize); 2] = [(1_000, 20_000), (64_000, 2_000)];
const ROUNDS: usize = 3;
/// Records per second and seconds of the latency run, per size.
const LATENCY_LOAD: [(usize, u64); 2] = [(500, 10), (50, 10)];
const PARTITIONS: i32 = 3;
const STREAM_THREADS: &str = "3";

#[derive(Clone, Copy, PartialEq)]
enum Runner {
    CodeLupe,
    Streams,
}

impl Runner {
    fn name(self) -> &'static str {
        match self {
            Runner::CodeLupe => "codelupe",
            Runner::Streams => "kafka-streams",
        }
    }
}

/// A stage of either kind, running on `input` → `output`.
enum Running {
    CodeLupe {
        shutdown: tokio_util::sync::CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
        _dir: tempfile::TempDir,
    },
    Streams(Child),
}

/// A record of about `bytes` bytes carrying its send time.
fn record(i: usize, bytes: usize) -> (String, Vec<u8>) {
    let mut r = repo_url(i);
    r.description = Some("x".repeat(bytes.saturating_sub(200)));
    r.discovered_at_ms = now_ms();
    (r.full_name.clone(), r.encode().unwrap())
}

/// Topics of 3 partitions; the output of a latency run stamps each record's append time.
async fn create(topics: &[&str], log_append_time: bool) {
    let timestamps = if log_append_time {
        "LogAppendTime"
    } else {
        "CreateTime"
    };
    for topic in topics {
        create_topic_with(topic, PARTITIONS, &[("message.timestamp.type", timestamps)]).await;
    }
}

/// Starts `runner` on `input` → `output` and waits until it holds its partitions;
/// returns it with its consumer group.
async fn start(runner: Runner, delivery: Delivery, input: &str, output: &str) -> (Running, String) {
    match runner {
        Runner::CodeLupe => {
            let dead = unique("vs-dead");
            create_topics(&[(&dead, 1)]).await;
            let dir = tempfile::tempdir().unwrap();
            let (mut stage, _, shutdown) = relay_stage(
                dir.path(),
                [input, output, &dead],
                PARTITIONS,
                Config::default(),
            );
            stage.settings.delivery = delivery;
            let readiness = stage.readiness.clone();
            let task =
                tokio::spawn(async move { codelupe_runtime::consume::run(Relay, &stage).await });
            while !readiness.is_ready() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let running = Running::CodeLupe {
                shutdown,
                task,
                _dir: dir,
            };
            (running, format!("{input}-relay"))
        }
        Runner::Streams => {
            let group = unique("vs-streams");
            let guarantee = match delivery {
                Delivery::AtLeastOnce => "at_least_once",
                Delivery::ExactlyOnce => "exactly_once_v2",
            };
            let classpath = std::env::var("KAFKA_STREAMS_CLASSPATH").unwrap();
            let mut child = Command::new("java")
                .args(["-cp", &classpath, "Identity", &brokers(), input, output])
                .args([&group, guarantee, STREAM_THREADS])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("java runs");
            let stdout = child.stdout.take().unwrap();
            tokio::task::spawn_blocking(move || {
                let mut lines = BufReader::new(stdout).lines();
                while let Some(Ok(line)) = lines.next() {
                    if line == "RUNNING" {
                        return;
                    }
                }
                panic!("the Streams application ended before it ran");
            })
            .await
            .unwrap();
            (Running::Streams(child), group)
        }
    }
}

async fn stop(running: Running) {
    match running {
        Running::CodeLupe { shutdown, task, .. } => {
            shutdown.cancel();
            task.await.unwrap().unwrap();
        }
        Running::Streams(mut child) => {
            drop(child.stdin.take());
            tokio::task::spawn_blocking(move || child.wait().unwrap())
                .await
                .unwrap();
        }
    }
}

/// Waits until `group` has committed every record of `input`.
async fn drained(group: &str, input: &str) {
    let (group, input) = (group.to_string(), input.to_string());
    tokio::task::spawn_blocking(move || {
        let clients =
            codelupe_runtime::kafka::KafkaClients::new(brokers(), &Config::default().kafka);
        let mut lag = LagReader::new(&clients, &group, &input).unwrap();
        while lag.lag().unwrap() != 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}

/// Seconds `runner` takes over a backlog of `records` records of `bytes` bytes.
async fn throughput(runner: Runner, delivery: Delivery, input: &str) -> f64 {
    let output = unique("vs-out");
    create(&[&output], false).await;
    let (running, group) = start(runner, delivery, input, &output).await;
    let started = Instant::now();
    drained(&group, input).await;
    let elapsed = started.elapsed().as_secs_f64();
    stop(running).await;
    elapsed
}

/// End-to-end latencies (ms, sorted) of records sent at `rate` per second for `seconds`.
async fn latencies(
    runner: Runner,
    delivery: Delivery,
    bytes: usize,
    (rate, seconds): (usize, u64),
) -> Vec<i64> {
    let (input, output) = (unique("vs-lat-in"), unique("vs-lat-out"));
    create(&[&input], false).await;
    create(&[&output], true).await;
    let (running, group) = start(runner, delivery, &input, &output).await;
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let total = rate * seconds as usize;
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (key, value) = record(i, bytes);
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&input)
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    drained(&group, &input).await;
    stop(running).await;
    tokio::task::spawn_blocking(move || read_latencies(&output, total))
        .await
        .unwrap()
}

/// Append time minus send time of every committed record of `topic`.
fn read_latencies(topic: &str, expected: usize) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("vs-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected && Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let appended = message.timestamp().to_millis().unwrap();
        let sent = codelupe_runtime::records::RepoUrl::decode(message.payload().unwrap())
            .unwrap()
            .discovered_at_ms;
        out.push(appended - sent);
    }
    out.sort_unstable();
    out
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The last line of one of Kafka's performance tools on the same broker.
fn ceiling(tool: &str, args: &[String]) -> String {
    let classpath = std::env::var("KAFKA_TOOLS_CLASSPATH").unwrap();
    let out = Command::new("java")
        .args(["-cp", &classpath, &format!("org.apache.kafka.tools.{tool}")])
        .args(args)
        .output()
        .expect("java runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().last().unwrap_or_default().trim().to_string()
}

async fn compare(bytes: usize, records: usize, delivery: Delivery) {
    let mut seconds = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let input = unique("vs-in");
        create(&[&input], false).await;
        produce_all(&input, (0..records).map(|i| record(i, bytes)).collect()).await;
        let order = if round % 2 == 0 {
            [Runner::CodeLupe, Runner::Streams]
        } else {
            [Runner::Streams, Runner::CodeLupe]
        };
        for runner in order {
            let s = throughput(runner, delivery, &input).await;
            seconds[usize::from(runner == Runner::Streams)].push(s);
        }
    }
    let [ours, theirs] = seconds.map(|s| records as f64 / median(s));
    let mut lat = Vec::new();
    for runner in [Runner::CodeLupe, Runner::Streams] {
        let load = LATENCY_LOAD[usize::from(bytes > 1_000)];
        let l = latencies(runner, delivery, bytes, load).await;
        lat.push(format!(
            "{} p50 {} ms p99 {} ms ({} records)",
            runner.name(),
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.len()
        ));
    }
    println!(
        "{bytes:>6} B {delivery:?}: codelupe {ours:>8.0} records/s, kafka-streams {theirs:>8.0} records/s, ratio {:.2}; latency {}",
        ours / theirs,
        lat.join(", ")
    );
}

fn main() {
    if std::env::var_os("TEST_KAFKA_BROKERS").is_none()
        || std::env::var_os("KAFKA_STREAMS_CLASSPATH").is_none()
    {
        eprintln!("run it through benches/kafka-streams/run.sh (the broker and the Streams jars)");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (bytes, records) in SIZES {
        let topic = unique("vs-ceiling");
        rt.block_on(create(&[&topic], false));
        let produced = ceiling(
            "ProducerPerformance",
            &[
                "--topic",
                &topic,
                "--num-records",
                &records.to_string(),
                "--record-size",
                &bytes.to_string(),
                "--throughput",
                "-1",
                "--producer-props",
                &format!("bootstrap.servers={}", brokers()),
            ]
            .map(String::from),
        );
        let consumed = ceiling(
            "ConsumerPerformance",
            &[
                "--bootstrap-server",
                &brokers(),
                "--topic",
                &topic,
                "--messages",
                &records.to_string(),
            ]
            .map(String::from),
        );
        println!("{bytes:>6} B ceiling: ProducerPerformance: {produced}");
        println!("{bytes:>6} B ceiling: ConsumerPerformance: {consumed}");
        for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
            rt.block_on(compare(bytes, records, delivery));
        }
    }
}
