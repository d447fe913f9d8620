//! `codelupe tail TOPIC`: prints a topic's records as JSON lines, decoded from Avro
//! single-object encoding with the schema topology.yaml gives the topic (kcat shows
//! them as bytes). Reads without joining a group, so it never moves a stage's offsets.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use codelupe_runtime::kafka::KafkaClients;
use codelupe_runtime::records::decode_to_json;
use codelupe_runtime::topology::Topology;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// Where `codelupe run` writes its embedded broker's address while it runs, relative to
/// the folder it runs in; `tail` reads it when no brokers are given.
pub const EMBEDDED_BROKER_FILE: &str = ".codelupe/broker";

/// Records shown per partition before following, without --from-beginning or --max.
const DEFAULT_LAST: i64 = 10;

pub struct TailOptions {
    pub topic: String,
    pub from_beginning: bool,
    pub max: Option<u64>,
}

/// The brokers to read: given, configured, or the running `codelupe run`'s.
pub fn brokers(given: Option<String>) -> anyhow::Result<String> {
    if let Some(brokers) = given {
        return Ok(brokers);
    }
    let text = std::fs::read_to_string(EMBEDDED_BROKER_FILE).with_context(|| {
        format!(
            "no --brokers, no kafka.brokers, and no `codelupe run` running in this folder \
             ({EMBEDDED_BROKER_FILE} is where it writes its embedded broker's address)"
        )
    })?;
    Ok(text.trim().to_string())
}

/// Prints records until `max` were printed or `shutdown` is cancelled. Without
/// --from-beginning it starts at the last `max` (or 10) records of each partition and
/// follows new ones, like `tail -f`.
pub async fn tail(
    clients: KafkaClients,
    topology: &Topology,
    options: TailOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let schema = topology
        .topics
        .get(&options.topic)
        .with_context(|| {
            format!(
                "topic {} is not in topology.yaml (topics: {})",
                options.topic,
                topology
                    .topics
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?
        .schema
        .clone();
    let schema = schema.to_string_lossy().into_owned();
    let partitions = clients.partition_count(&options.topic).await?;
    let consumer: BaseConsumer = clients
        .reader_config("codelupe-tail")
        .create()
        .context("cannot create a Kafka consumer")?;
    tokio::task::spawn_blocking(move || {
        let last = options.max.map_or(DEFAULT_LAST, |m| m as i64);
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            let offset = if options.from_beginning {
                Offset::Beginning
            } else {
                let (low, high) =
                    consumer.fetch_watermarks(&options.topic, p, Duration::from_secs(10))?;
                Offset::Offset((high - last).max(low))
            };
            list.add_partition_offset(&options.topic, p, offset)?;
        }
        consumer.assign(&list)?;
        let mut printed = 0u64;
        let mut out = std::io::stdout().lock();
        while options.max.is_none_or(|max| printed < max) && !shutdown.is_cancelled() {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.with_context(|| format!("reading {}", options.topic))?;
            let line = record_json(&schema, &message);
            writeln!(out, "{line}")?;
            out.flush()?;
            printed += 1;
        }
        anyhow::Ok(())
    })
    .await?
}

/// One record as a JSON line; a value that does not decode says why instead.
fn record_json(schema: &str, message: &rdkafka::message::BorrowedMessage<'_>) -> String {
    let mut line = serde_json::json!({
        "partition": message.partition(),
        "offset": message.offset(),
        "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
    });
    match message.payload().map(|value| decode_to_json(schema, value)) {
        Some(Ok(value)) => line["value"] = value,
        Some(Err(e)) => line["error"] = format!("{e:#}").into(),
        None => line["value"] = serde_json::Value::Null,
    }
    line.to_string()
}
