//! Throughput of the consume → transform → produce loop in each delivery mode, side by
//! side on the same input: a relay stage (each repository passed through) over 20,000
//! records on 3 partitions of the real test broker, alternating the modes over three
//! rounds. Prints records per second per mode (median) and their ratio.
//!
//!     tests/kafka/broker.sh up
//!     TEST_KAFKA_BROKERS=$(tests/kafka/broker.sh bootstrap) cargo bench --bench delivery_modes

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use codelupe_runtime::config::{Config, Delivery};
use codelupe_runtime::kafka::LagReader;
use codelupe_runtime::AvroRecord;
use codelupe_testkit::bench::median;
use support::*;

const RECORDS: usize = 20_000;
const ROUNDS: usize = 3;

/// Seconds from the stage holding its partitions to every input offset committed.
async fn relay_all(delivery: Delivery) -> f64 {
    let (input, output, dead) = (
        unique("bench-in"),
        unique("bench-out"),
        unique("bench-dead"),
    );
    create_topics(&[(&input, 3), (&output, 3), (&dead, 1)]).await;
    let records = (0..RECORDS)
        .map(|i| {
            let r = repo_url(i);
            (r.full_name.clone(), r.encode().unwrap())
        })
        .collect();
    produce_all(&input, records).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut stage, clients, shutdown) =
        relay_stage(dir.path(), [&input, &output, &dead], 3, Config::default());
    stage.settings.delivery = delivery;
    let readiness = stage.readiness.clone();
    let running = tokio::spawn(async move { codelupe_runtime::consume::run(Relay, &stage).await });
    while !readiness.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let group = format!("{input}-relay");
    let elapsed = tokio::task::spawn_blocking(move || {
        let mut lag = LagReader::new(&clients, &group, &input).unwrap();
        let mut said = Instant::now();
        loop {
            let left = lag.lag().unwrap();
            if left == 0 {
                break;
            }
            if said.elapsed() > Duration::from_secs(5) {
                eprintln!("  {delivery:?}: {left} records to go");
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed().as_secs_f64()
    })
    .await
    .unwrap();
    shutdown.cancel();
    running.await.unwrap().unwrap();
    elapsed
}

fn main() {
    if std::env::var_os("TEST_KAFKA_BROKERS").is_none() {
        eprintln!("needs the test broker: tests/kafka/broker.sh up, then TEST_KAFKA_BROKERS=$(tests/kafka/broker.sh bootstrap)");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut at_least_once, mut exactly_once) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let a = rt.block_on(relay_all(Delivery::AtLeastOnce));
        let e = rt.block_on(relay_all(Delivery::ExactlyOnce));
        println!("round {round}: at_least_once {a:.2} s, exactly_once {e:.2} s");
        at_least_once.push(a);
        exactly_once.push(e);
    }
    let (a, e) = (median(at_least_once), median(exactly_once));
    println!(
        "{RECORDS} records, 3 partitions, median of {ROUNDS}: at_least_once {:.0} records/s, exactly_once {:.0} records/s, exactly_once/at_least_once {:.2}",
        RECORDS as f64 / a,
        RECORDS as f64 / e,
        a / e
    );
}
