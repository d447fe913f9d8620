//! `codelupe dead-letters list|replay`: what the stages could not handle, and, after an
//! outage or a fix, those records published again to the topic they came from. Reads
//! the dead-letter topic without joining a group. A letter is data anyone who can write
//! the topic may have forged: replay publishes only to the input topic topology.yaml
//! gives the stage the letter names, and `list` prints control characters escaped.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Context as _;
use codelupe_runtime::kafka::{self, KafkaClients};
use codelupe_runtime::records::DeadLetter;
use codelupe_runtime::topology::Topology;
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
            "{failed_at}  {:<11} {:<16} {}[{}]@{}  key={}  {}",
            printable(&letter.stage),
            printable(&letter.reason),
            printable(&letter.topic),
            letter.partition,
            letter.offset,
            printable(&key),
            printable(&error)
        )?;
    }
    writeln!(out, "{} dead letters in {topic}", letters.len())?;
    for ((stage, reason), n) in counts {
        writeln!(out, "  {n:>6}  {} {}", printable(stage), printable(reason))?;
    }
    if undecodable > 0 {
        writeln!(
            out,
            "  {undecodable:>6}  records that are not dead letters (left out)"
        )?;
    }
    Ok(())
}

/// `text` with control characters escaped (`\u{1b}`), so a letter's fields cannot
/// move the cursor or rewrite an operator's terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The topic `letter` may be replayed to: its own `topic` field only where topology.yaml
/// makes that the input of the stage the letter names. A letter naming an internal
/// topic (a stage's state, the index, another stage's output) is refused, whoever
/// wrote it.
fn replay_target<'a>(topology: &Topology, letter: &'a DeadLetter) -> Result<&'a str, String> {
    let input = topology
        .stage(&letter.stage)
        .ok_or_else(|| format!("no stage {} in topology.yaml", printable(&letter.stage)))?
        .input
        .as_deref();
    match input {
        Some(input) if input == letter.topic => Ok(&letter.topic),
        Some(input) => Err(format!(
            "{} is not the input of stage {} ({input})",
            printable(&letter.topic),
            letter.stage
        )),
        None => Err(format!("stage {} reads no topic", letter.stage)),
    }
}

/// Publishes each selected letter's key and value to the topic it came from, when that
/// is the input of the stage that wrote it. A key or value the letter carries cut (it
/// was too large) is read back from its original place; one no longer there is
/// reported and skipped.
pub async fn replay(
    clients: &KafkaClients,
    topology: &Topology,
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
        let place = format!(
            "{}[{}]@{}",
            printable(&letter.topic),
            letter.partition,
            letter.offset
        );
        let target = match replay_target(topology, letter) {
            Ok(target) => target,
            Err(why) => {
                eprintln!("skipped {place}: {why}");
                skipped += 1;
                continue;
            }
        };
        let Some((key, value)) = original(clients, letter).await? else {
            eprintln!("skipped {place}: it was cut and the original is gone");
            skipped += 1;
            continue;
        };
        if !dry_run {
            let mut record = FutureRecord::<[u8], [u8]>::to(target);
            if let Some(key) = key.as_deref() {
                record = record.key(key);
            }
            if let Some(value) = value.as_deref() {
                record = record.payload(value);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("publishing to {target}"))?;
        }
        *replayed.entry(target.to_string()).or_default() += 1;
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

/// The record `letter` stands for, (key, value): as the letter carries it, or, where
/// the letter says it cut either, read back from the original place (None once that is
/// no longer retained).
async fn original(
    clients: &KafkaClients,
    letter: &DeadLetter,
) -> anyhow::Result<Option<(Option<Vec<u8>>, Option<Vec<u8>>)>> {
    if letter.error.contains("cut to its first") {
        original_record(clients, letter).await
    } else {
        Ok(Some((letter.key.clone(), letter.value.clone())))
    }
}

/// The key and value at the letter's original topic, partition and offset, if still
/// retained.
async fn original_record(
    clients: &KafkaClients,
    letter: &DeadLetter,
) -> anyhow::Result<Option<(Option<Vec<u8>>, Option<Vec<u8>>)>> {
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
                    let key = message.key().map(<[u8]>::to_vec);
                    return Ok(Some((key, message.payload().map(<[u8]>::to_vec))));
                }
            }
        }
        anyhow::Ok(None)
    })
    .await?
}
