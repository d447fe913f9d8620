//! Publishing topology.yaml's topics: create, grow, report drift.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;

use super::clients::KafkaClients;
use crate::topology::Topology;

/// What `apply` did or found, one line each.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub grown: Vec<String>,
    pub unchanged: Vec<String>,
    pub drift: Vec<String>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        !self.created.is_empty() || !self.grown.is_empty()
    }
}

/// Creates missing topics and grows partition counts to match the topology; reports
/// settings that differ from it (partitions above the declared count, retention,
/// cleanup policy) without touching them. Running it twice changes nothing the second time.
pub async fn apply_topology(
    clients: &KafkaClients,
    topology: &Topology,
) -> anyhow::Result<ApplyReport> {
    let admin = Admin {
        client: clients
            .base("codelupe-topology")
            .create()
            .context("cannot create a Kafka admin client")?,
        options: AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    };
    let metadata = admin
        .client
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("cannot read cluster metadata from {}", clients.brokers))?;
    let existing: HashMap<String, usize> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    let mut report = ApplyReport::default();
    admin
        .create_missing(topology, &existing, &mut report)
        .await?;
    admin.grow(topology, &existing, &mut report).await?;
    admin.report_drift(topology, &existing, &mut report).await?;
    admin.until_visible(topology, &report.created)?;
    report.unchanged.sort();
    report.unchanged.dedup();
    Ok(report)
}

struct Admin {
    client: AdminClient<DefaultClientContext>,
    options: AdminOptions,
}

impl Admin {
    /// Waits until every topic just created shows all its partitions, each with a
    /// leader, in the metadata a client reads: the controller answers the creation
    /// before the brokers know the topic, and a stage started at once would find it
    /// missing.
    fn until_visible(&self, topology: &Topology, created: &[String]) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for name in created {
            let want = topology.topics[name].partitions as usize;
            loop {
                let metadata = self
                    .client
                    .inner()
                    .fetch_metadata(Some(name), Duration::from_secs(5))?;
                let ready = metadata.topics().first().is_some_and(|t| {
                    t.error().is_none()
                        && t.partitions().len() == want
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                });
                if ready {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!("topic {name} was created but its partitions have no leader after 30 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Creates the topology's topics the cluster lacks, with their configs.
    async fn create_missing(
        &self,
        topology: &Topology,
        existing: &HashMap<String, usize>,
        report: &mut ApplyReport,
    ) -> anyhow::Result<()> {
        let configs: Vec<(&String, _, Vec<(String, String)>)> = topology
            .topics
            .iter()
            .filter(|(name, _)| !existing.contains_key(*name))
            .map(|(name, topic)| (name, topic, topic.kafka_configs()))
            .collect();
        if configs.is_empty() {
            return Ok(());
        }
        let to_create: Vec<NewTopic> = configs
            .iter()
            .map(|(name, topic, configs)| {
                let replication = TopicReplication::Fixed(topic.replication_factor);
                let mut new = NewTopic::new(name, topic.partitions, replication);
                for (key, value) in configs {
                    new = new.set(key, value);
                }
                new
            })
            .collect();
        for result in self.client.create_topics(&to_create, &self.options).await? {
            match result {
                Ok(name) => report.created.push(name),
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    report.unchanged.push(name)
                }
                Err((name, code)) => bail!("cannot create topic {name}: {code}"),
            }
        }
        Ok(())
    }

    /// Adds partitions up to the declared count; more than declared is drift (Kafka
    /// cannot shrink a topic).
    async fn grow(
        &self,
        topology: &Topology,
        existing: &HashMap<String, usize>,
        report: &mut ApplyReport,
    ) -> anyhow::Result<()> {
        let mut to_grow = Vec::new();
        for (name, topic) in &topology.topics {
            let Some(&have) = existing.get(name) else {
                continue;
            };
            let want = topic.partitions as usize;
            if have < want {
                to_grow.push(NewPartitions::new(name, want));
            } else if have > want {
                report.drift.push(format!(
                    "topic {name}: has {have} partitions, topology declares {want} (Kafka cannot shrink a topic)"
                ));
            } else {
                report.unchanged.push(name.clone());
            }
        }
        if to_grow.is_empty() {
            return Ok(());
        }
        for result in self
            .client
            .create_partitions(&to_grow, &self.options)
            .await?
        {
            match result {
                Ok(name) => report.grown.push(name),
                Err((name, code)) => bail!("cannot grow topic {name}: {code}"),
            }
        }
        Ok(())
    }

    /// Reports each existing topic's config that differs from the topology's.
    async fn report_drift(
        &self,
        topology: &Topology,
        existing: &HashMap<String, usize>,
        report: &mut ApplyReport,
    ) -> anyhow::Result<()> {
        let specifiers: Vec<_> = topology
            .topics
            .keys()
            .filter(|name| existing.contains_key(*name))
            .map(|name| ResourceSpecifier::Topic(name))
            .collect();
        if specifiers.is_empty() {
            return Ok(());
        }
        for result in self
            .client
            .describe_configs(&specifiers, &self.options)
            .await?
        {
            let resource = result.map_err(|e| anyhow!("cannot describe topic configs: {e}"))?;
            let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &resource.specifier else {
                continue;
            };
            let Some(topic) = topology.topics.get(name) else {
                continue;
            };
            let entries = resource.entry_map();
            for (key, want) in topic.kafka_configs() {
                let have = entries.get(key.as_str()).and_then(|e| e.value.clone());
                if have.as_deref() != Some(want.as_str()) {
                    report.drift.push(format!(
                        "topic {name}: {key} is {}, topology declares {want}",
                        have.as_deref().unwrap_or("unset")
                    ));
                }
            }
        }
        Ok(())
    }
}
