//! Kafka for every stage, a module a concern: clients built one way and the start-up
//! reachability check (`clients`), reading a topic to its end (`read`), a group's lag
//! (`lag`), the embedded broker and topic publishing from topology.yaml (`admin`).

mod admin;
mod clients;
mod embedded;
mod lag;
mod read;
mod verdict;

pub use admin::{apply_topology, ApplyReport};
pub use clients::{partition_count, KafkaClients, MAX_RECORD_BYTES};
pub use embedded::EmbeddedBroker;
pub use lag::LagReader;
pub use read::{read_from, read_partitions, read_to_end};
pub use verdict::{verdict, Verdict};
