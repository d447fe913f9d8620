//! What every CodeLupe stage shares: config, topology, Avro records, the consume loops
//! (`consume/`), Kafka clients, languages by Linguist and the metrics server. A stage
//! crate holds only its own domain logic; the clone store is the `codelupe-clone-store`
//! crate's, for the two stages that use it.

pub mod codec;
pub mod config;
pub mod consume;
pub mod descriptor;
pub mod kafka;
pub mod labels;
pub mod language;
pub mod publish;
pub mod records;
pub mod retry;
pub mod stage;
pub mod telemetry;
pub mod topology;

pub use codec::AvroRecord;
pub use consume::transaction::Transactions;
pub use consume::{Keyed, Output, Transform, TransformError};
pub use publish::Publisher;
pub use stage::StageRuntime;
