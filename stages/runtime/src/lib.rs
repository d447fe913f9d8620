//! What every CodeLupe stage shares: config, topology, Avro records, the Kafka loop,
//! the metrics server and the capped walk over a clone's tree. A stage crate holds
//! only its own domain logic.

pub mod aggregate;
pub mod clone_store;
pub mod codec;
pub mod config;
pub mod descriptor;
pub mod exactly_once;
pub mod kafka;
pub mod labels;
pub mod language;
pub mod objects;
pub mod offsets;
pub mod pipeline;
pub mod publish;
pub mod records;
pub mod retry;
pub mod stage;
pub mod telemetry;
pub mod topology;
pub mod transaction;
pub mod tree;
pub mod work_dir;

pub use codec::AvroRecord;
pub use pipeline::{Keyed, Output, Transform, TransformError};
pub use publish::Publisher;
pub use stage::StageRuntime;
pub use transaction::Transactions;
