//! The in-process broker of `codelupe run` and of unit tests.

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::topology::Topology;

/// librdkafka's in-process mock cluster, with the topology's topics created: the
/// embedded default of `codelupe run` and of unit tests.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    pub fn start(topology: &Topology) -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("cannot start the embedded Kafka broker")?;
        for (name, topic) in &topology.topics {
            cluster
                .create_topic(name, topic.partitions, 1)
                .with_context(|| format!("embedded broker: cannot create topic {name}"))?;
        }
        Ok(Self { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
