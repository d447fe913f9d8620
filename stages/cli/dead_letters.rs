//! `codelupe dead-letters list|replay`: what the stages could not handle, and, after an
//! outage or a fix, those records published again to the topic they came from. Reads
//! the dead-letter topic without joining a group.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Context as _;
use codelupe_runtime::kafka::{self, KafkaClients};
use codelupe_runtime::records::DeadLetter;
use codelupe_runtime::AvroRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Which letters a command applies to: all given filters must match.
#[derive(Debug, Default, clap::Args)]
pub struct Selection {
    /// Only letters from this stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// Only letters with this reason (`network`, `decode`, `output_rejected`, …).
    #[arg(long)]
    pub reason: Option<String>,
}

impl Selection {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.stage.as_ref().is_none_or(|s| *s == letter.stage)
            && self.reason.as_ref().is_none_or(|r| *r == letter.reason)
    }
}

/// Every letter of `topic` that `selection` matches, oldest first per partition.
/// A record that is not a dead letter is counted and left out.
async fn letters(
    clients: &KafkaClients,
    topic: &str,
    selection: &Selection,
) -> anyhow::Result<(Vec<DeadLetter>, usize)> {
    let (letters, undecodable) = kafka::read_to_end(
        clients,
        topic,
        None,
        (Vec::new(), 0usize),
        |(letters, undecodable), _key, value| {
            match value.map(DeadLetter::decode) {
                Some(Ok(letter)) => letters.push(letter),
                _ => *undecodable += 1,
            }
            Ok(ControlFlow::Continue(()))
        },
    )
    .await
    .with_context(|| format!("reading the dead-letter topic {topic}"))?;
    let letters = letters
        .into_iter()
        .filter(|l: &DeadLetter| selection.matches(l))
        .collect();
    Ok((letters, undecodable))
}

/// Prints one line per letter and a count per stage and reason.
pub async fn list(
    clients: &KafkaClients,
    topic: &str,
    selection: &Selection,
) -> anyhow::Result<()> {
    let (letters, undecodable) = letters(clients, topic, selection).await?;
    let mut out = std::io::stdout().lock();
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for letter in &letters {
        *counts.entry((&letter.stage, &letter.reason)).or_default() += 1;
        let failed_at = chrono::DateTime::from_timestamp_millis(letter.failed_at_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let key = letter
            .key
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let error: String = letter.error.chars().take(100).collect();
        writeln!(
            out,
            "{failed_at}  {:<11} {:<16} {}[{}]@{}  key={key}  {error}",
            letter.stage, letter.reason, letter.topic, letter.partition, letter.offset
        )?;
    }
    writeln!(out, "{} dead letters in {topic}", letters.len())?;
    for ((stage, reason), n) in counts {
        writeln!(out, "  {n:>6}  {stage} {reason}")?;
    }
    if undecodable > 0 {
        writeln!(
            out,
            "  {undecodable:>6}  records that are not dead letters (left out)"
        )?;
    }
    Ok(())
}

/// Publishes each selected letter's key and value to the topic it came from. A value
/// the letter carries cut (it was too large) is read back from its original place;
/// one no longer there is reported and skipped.
pub async fn replay(
    clients: &KafkaClients,
    topic: &str,
    selection: &Selection,
    dry_run: bool,
) -> anyhow::Result<()> {
    let (letters, _) = letters(clients, topic, selection).await?;
    let producer: FutureProducer = clients
        .producer_config("codelupe-dead-letters")
        .create()
        .context("cannot create a Kafka producer")?;
    let (mut replayed, mut skipped) = (BTreeMap::<String, usize>::new(), 0);
    for letter in &letters {
        let value = if letter.error.contains("(value cut to its first") {
            match original_value(clients, letter).await? {
                Some(value) => Some(value),
                None => {
                    eprintln!(
                        "skipped {}[{}]@{}: its value was cut and the original is gone",
                        letter.topic, letter.partition, letter.offset
                    );
                    skipped += 1;
                    continue;
                }
            }
        } else {
            letter.value.clone()
        };
        if !dry_run {
            let mut record = FutureRecord::<[u8], [u8]>::to(&letter.topic);
            if let Some(key) = letter.key.as_deref() {
                record = record.key(key);
            }
            if let Some(value) = value.as_deref() {
                record = record.payload(value);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("publishing to {}", letter.topic))?;
        }
        *replayed.entry(letter.topic.clone()).or_default() += 1;
    }
    let verb = if dry_run { "would replay" } else { "replayed" };
    for (topic, n) in &replayed {
        println!("{verb} {n} records to {topic}");
    }
    println!(
        "{verb} {} of {} selected dead letters ({skipped} skipped)",
        replayed.values().sum::<usize>(),
        letters.len()
    );
    Ok(())
}

/// The value at the letter's original topic, partition and offset, if still retained.
async fn original_value(
    clients: &KafkaClients,
    letter: &DeadLetter,
) -> anyhow::Result<Option<Vec<u8>>> {
    let consumer: BaseConsumer = clients
        .reader_config("codelupe-dead-letters")
        .create()
        .context("cannot create a Kafka consumer")?;
    let (topic, partition, offset) = (letter.topic.clone(), letter.partition, letter.offset);
    tokio::task::spawn_blocking(move || {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
        if offset < low || offset >= high {
            return Ok(None);
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        consumer.assign(&list)?;
        for _ in 0..100 {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message?;
                if message.offset() == offset {
                    return Ok(message.payload().map(<[u8]>::to_vec));
                }
            }
        }
        anyhow::Ok(None)
    })
    .await?
}
