//! How far a consumer group is behind, read from outside the group.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::clients::{partition_count, KafkaClients};

/// Reads how far a consumer group is behind, without joining it: for each partition,
/// the high watermark less the group's committed offset (the low watermark when it has
/// committed none). Blocking calls: run it off the async workers.
pub struct LagReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: Option<i32>,
}

impl LagReader {
    pub fn new(clients: &KafkaClients, group: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer = clients
            .base("codelupe-lag-reader")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create a lag reader")?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            partitions: None,
        })
    }

    /// Messages of the topic the group has not committed yet.
    pub fn lag(&mut self) -> anyhow::Result<i64> {
        Ok(self
            .unread()?
            .into_iter()
            .map(|(_, from, high)| (high - from).max(0))
            .sum())
    }

    /// For each partition: the first offset the group has not committed (the low
    /// watermark when it has committed none, or less than that), and the high
    /// watermark.
    pub fn unread(&mut self) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let timeout = Duration::from_secs(2);
        let partitions = match self.partitions {
            Some(n) => n,
            None => *self
                .partitions
                .insert(partition_count(self.consumer.client(), &self.topic)?),
        };
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&self.topic, p);
        }
        let committed = self.consumer.committed_offsets(list, timeout)?;
        let mut unread = Vec::new();
        for element in committed.elements() {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, element.partition(), timeout)?;
            let from = match element.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            unread.push((element.partition(), from, high));
        }
        Ok(unread)
    }
}
