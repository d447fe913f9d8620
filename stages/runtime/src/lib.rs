//! What every CodeLupe stage shares: config, topology, Avro records, the Kafka loop,
//! the metrics server and the capped walk over a clone's tree. A stage crate holds
//! only its own domain logic.

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
