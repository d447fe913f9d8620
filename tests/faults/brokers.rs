//! The Kafka the harness runs on and the faults done to it: the suite's one broker,
//! stopped and started (an outage), or a three-broker cluster of the harness's own
//! whose brokers are SIGKILLed where it hurts: the leader of a stage's input
//! partition, a transaction coordinator, a group coordinator.

use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::support::{brokers, repo_root, OnCluster};

/// `tests/kafka/broker.sh` with `args`, for the broker(s) of port `port`.
fn broker_script(args: &[&str], port: &str, nodes: usize) -> Output {
    let out = Command::new(repo_root().join("tests/kafka/broker.sh"))
        .args(args)
        .env("KAFKA_PORT", port)
        .env("KAFKA_NODES", nodes.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "broker.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The test broker stopped (its data kept) until dropped or [`Outage::end`]ed.
pub struct Outage {
    port: String,
    ended: bool,
}

impl Outage {
    pub fn begin() -> Self {
        let bootstrap = brokers();
        let port = bootstrap.rsplit(':').next().unwrap().to_string();
        broker_script(&["stop"], &port, 1);
        Self { port, ended: false }
    }

    pub fn end(mut self) {
        broker_script(&["start"], &self.port, 1);
        self.ended = true;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        // Later tests share the broker: it comes back even when the harness fails.
        if !self.ended {
            broker_script(&["start"], &self.port, 1);
        }
    }
}

/// The first port of the three-broker cluster (the suite's broker is on 19092).
const THREE_BROKERS_PORT: &str = "19192";

/// A three-broker KRaft cluster of the harness's own (every node a broker and a voter;
/// topics replicated 3 times with min.insync.replicas 2), named by every helper while
/// it lives, deleted when dropped.
pub struct ThreeBrokers {
    _named: OnCluster,
}

/// What the three-broker run kills, spread over the run's kills.
#[derive(Debug, Clone, Copy)]
pub enum BrokerFault {
    /// The broker leading partition 0 of code-files, the near-duplicate stage's input.
    InputLeader,
    /// The coordinator of the processor's transactions (exactly_once) or else the
    /// crawler's.
    TransactionCoordinator,
    /// The batcher group's coordinator.
    GroupCoordinator,
}

impl BrokerFault {
    /// The fault due at kill `k` of `kills`: one at each quarter of the run.
    pub fn at(k: usize, kills: usize) -> Option<Self> {
        [
            Self::InputLeader,
            Self::TransactionCoordinator,
            Self::GroupCoordinator,
        ]
        .into_iter()
        .zip(1..)
        .find(|(_, quarter)| k == kills * quarter / 4)
        .map(|(fault, _)| fault)
    }
}

impl ThreeBrokers {
    pub fn up() -> Self {
        // A cluster left by an interrupted run is not reused: its topics differ.
        broker_script(&["down"], THREE_BROKERS_PORT, 3);
        broker_script(&["up"], THREE_BROKERS_PORT, 3);
        let bootstrap = broker_script(&["bootstrap"], THREE_BROKERS_PORT, 3).stdout;
        let bootstrap = String::from_utf8(bootstrap).unwrap().trim().to_string();
        Self {
            _named: OnCluster::new(&bootstrap),
        }
    }

    /// SIGKILLs the broker `fault` names, and starts it again after `down_for`; returns
    /// what was killed, in words.
    pub fn kill(&self, fault: BrokerFault, suffix: &str, down_for: Duration) -> String {
        let (node, what) = match fault {
            BrokerFault::InputLeader => {
                let topic = format!("code-files-{suffix}");
                (
                    leader_of(&topic, 0),
                    format!("leader of {topic} partition 0"),
                )
            }
            BrokerFault::TransactionCoordinator => {
                let (id, node) = transaction_coordinator(&[
                    &format!("codelupe-processor-{suffix}"),
                    &format!("crawler-{suffix}"),
                ]);
                (node, format!("transaction coordinator of {id}"))
            }
            BrokerFault::GroupCoordinator => {
                let group = format!("codelupe-batcher-{suffix}");
                (
                    group_coordinator(&group),
                    format!("coordinator of group {group}"),
                )
            }
        };
        let node = node.to_string();
        broker_script(&["kill", &node], THREE_BROKERS_PORT, 3);
        std::thread::sleep(down_for);
        broker_script(&["start", &node], THREE_BROKERS_PORT, 3);
        format!("broker {node}, the {what}")
    }
}

impl Drop for ThreeBrokers {
    fn drop(&mut self) {
        broker_script(&["down"], THREE_BROKERS_PORT, 3);
    }
}

/// One of Kafka's command-line tools on the three brokers: what it printed.
fn kafka_tool(class: &str, args: &[&str]) -> String {
    let bootstrap = brokers();
    let mut all = vec!["tool", class, "--bootstrap-server", &bootstrap];
    all.extend(args);
    let out = broker_script(&all, THREE_BROKERS_PORT, 3);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn leader_of(topic: &str, partition: usize) -> i32 {
    let consumer: BaseConsumer = codelupe_testkit::kafka::client().create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .unwrap();
    metadata.topics()[0].partitions()[partition].leader()
}

/// The broker coordinating the first open transactional id that starts with one of
/// `prefixes` (tried in order): the id and the broker. A stage's exactly-once
/// producers take a fresh id at each start, so the id is looked up, not computed.
fn transaction_coordinator(prefixes: &[&str]) -> (String, i32) {
    let listed = kafka_tool("org.apache.kafka.tools.TransactionsCommand", &["list"]);
    // TransactionalId, Coordinator, ProducerId, TransactionState: tab-separated.
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .filter(|row: &Vec<&str>| row.len() >= 2)
        .collect();
    for prefix in prefixes {
        if let Some(row) = rows.iter().find(|row| row[0].starts_with(prefix)) {
            return (row[0].to_string(), row[1].parse().unwrap());
        }
    }
    panic!("no transactional id starts with one of {prefixes:?}:\n{listed}");
}

/// The broker coordinating `group`, as `kafka-consumer-groups --describe --state`
/// prints it: `127.0.0.1:19194 (2)`.
fn group_coordinator(group: &str) -> i32 {
    let described = kafka_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &["--describe", "--group", group, "--state"],
    );
    described
        .split_whitespace()
        .find_map(|word| word.strip_prefix('(')?.strip_suffix(')')?.parse().ok())
        .unwrap_or_else(|| panic!("no coordinator for {group} in:\n{described}"))
}
