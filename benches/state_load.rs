//! Loading a stage's state from a topic: `read_partitions` over every partition at
//! once, as a stage does when it is assigned them, with the runtime's fetch bound and
//! with librdkafka's default fetch (the readers' settings before they shared the
//! stages' bound), side by side. The topic holds `code-files` records of real sources
//! (the crates in the local cargo registry), zstd-compressed by the runtime's producer,
//! on 12 partitions; the fold decodes each record. Each load runs in a child process of
//! its own, so one's allocator cannot lower another's peak; rounds alternate. Prints
//! seconds and the peak resident memory the load added (median), and their ratios.
//!
//!     tests/kafka/broker.sh up
//!     TEST_KAFKA_BROKERS=$(tests/kafka/broker.sh bootstrap) cargo bench --bench state_load
//!
//! STATE_LOAD_MB sets the topic's size (200 MB of records by default).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use codelupe_runtime::config::KafkaConfig;
use codelupe_runtime::kafka::{read_partitions, KafkaClients};
use codelupe_runtime::records::CodeFile;
use codelupe_runtime::AvroRecord;
use codelupe_testkit::bench::{measured_in_child, median, proc_status_kb, CRATES};
use codelupe_testkit::{brokers, code_files, create_topics, registry_crates, unique};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 12;
const ROUNDS: usize = 3;

/// librdkafka's own defaults for what the runtime bounds: what readers fetched before.
const LIBRDKAFKA_FETCH: &[(&str, &str)] = &[
    ("fetch.max.bytes", "52428800"),
    ("queued.max.messages.kbytes", "65536"),
    ("fetch.queue.backoff.ms", "1000"),
    ("receive.message.max.bytes", "100000000"),
];

fn clients(fetch: &str) -> KafkaClients {
    let mut config = KafkaConfig::default();
    if fetch == "librdkafka" {
        for (key, value) in LIBRDKAFKA_FETCH {
            config.consumer.insert(key.to_string(), value.to_string());
        }
    }
    KafkaClients::new(brokers(), &config)
}

/// In a child: loads every partition of `topic` with `fetch`'s settings, prints
/// "records seconds peak_kb" (peak: VmHWM over VmRSS before the load).
async fn measure(topic: &str, fetch: &str) {
    let clients = clients(fetch);
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    // Writing 5 to clear_refs sets VmHWM back to VmRSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = proc_status_kb("self", "VmRSS:").unwrap();
    let started = Instant::now();
    let loaded = read_partitions(
        &clients,
        topic,
        &partitions,
        || Ok(0usize),
        |records: &mut usize, _, payload| {
            CodeFile::decode(payload.unwrap_or_default())?;
            *records += 1;
            Ok(ControlFlow::Continue(()))
        },
    )
    .await
    .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let records: usize = loaded.iter().map(|(_, n)| n).sum();
    let peak = proc_status_kb("self", "VmHWM:")
        .unwrap()
        .saturating_sub(before);
    println!("{records} {seconds} {peak}");
}

/// Fills `topic` with `bytes` of encoded `code-files` records; returns how many.
async fn fill(topic: &str, bytes: usize) -> usize {
    let files = code_files(&registry_crates(CRATES), |_| true);
    assert!(
        !files.is_empty(),
        "no crate sources under the cargo registry"
    );
    let producer: FutureProducer = clients("bounded")
        .producer_config("state-load-bench")
        .create()
        .unwrap();
    // The registry's files over and over, each copy under keys of its own, until the
    // records add up to `bytes`.
    let mut written = 0;
    let records: Vec<(String, Vec<u8>)> = (0..)
        .flat_map(|copy| files.iter().map(move |file| (copy, file)))
        .map(|(copy, file)| {
            let key = format!("{copy}/{}/{}", file.repo_full_name, file.path);
            (key, file.encode().unwrap())
        })
        .take_while(|(_, value)| {
            let more = written < bytes;
            written += value.len();
            more
        })
        .collect();
    for chunk in records.chunks(files.len()) {
        let acks = chunk.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(60),
            )
        });
        for ack in futures::future::join_all(acks).await {
            ack.map_err(|(e, _)| e).unwrap();
        }
    }
    records.len()
}

fn run_child(topic: &str, fetch: &str) -> (usize, f64, u64) {
    let fields = measured_in_child(&["--measure", topic, fetch]);
    (
        fields[0].parse().unwrap(),
        fields[1].parse().unwrap(),
        fields[2].parse().unwrap(),
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, topic, fetch] = &args[..] {
        if flag == "--measure" {
            return measure(topic, fetch).await;
        }
    }
    let megabytes: usize = std::env::var("STATE_LOAD_MB")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let topic = unique("state-load");
    create_topics(&[(&topic, PARTITIONS)]).await;
    let records = fill(&topic, megabytes << 20).await;
    println!("state load: {records} code-files records ({megabytes} MB), {PARTITIONS} partitions read at once");
    let (mut seconds, mut peaks) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..ROUNDS {
        for (i, fetch) in ["bounded", "librdkafka"].iter().enumerate() {
            let (read, s, peak) = run_child(&topic, fetch);
            assert_eq!(read, records, "{fetch}: read {read} of {records} records");
            println!(
                "  round {round} {fetch:<10} {s:6.2} s  peak +{:.1} MB",
                peak as f64 / 1024.0
            );
            seconds[i].push(s);
            peaks[i].push(peak);
        }
    }
    let (s, p) = (
        [median(seconds[0].clone()), median(seconds[1].clone())],
        [median(peaks[0].clone()), median(peaks[1].clone())],
    );
    println!(
        "runtime's fetch bound: {:.2} s, +{:.1} MB; librdkafka's default fetch: {:.2} s, +{:.1} MB",
        s[0],
        p[0] as f64 / 1024.0,
        s[1],
        p[1] as f64 / 1024.0
    );
    println!(
        "bounded vs default: {:.2}x the speed, {:.2}x the memory",
        s[1] / s[0],
        p[0] as f64 / p[1] as f64
    );
}
