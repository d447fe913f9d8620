//! The consume loops every consuming stage runs, and what they share. A stage's logic is
//! a [`Transform`] (one record in, its outputs out) or an [`aggregate::Aggregate`]
//! (outputs that gather many inputs); the loop reads its input, runs it, publishes, and
//! commits the input's offsets once what came of them is safe:
//!
//! - [`at_least_once`]: outputs acknowledged, then offsets committed;
//! - [`exactly_once`]: outputs and offsets in one Kafka transaction
//!   ([`transaction`], which the crawler's pages use as well);
//! - [`aggregate`]: the loop of stages whose outputs gather many inputs, in either mode.
//!
//! Beside them, each concept in its own file: the consumer and its offsets
//! ([`subscription`], [`offsets`]), the bounds on what a loop holds
//! ([`back_pressure`]), a record's task and its attempts ([`tasks`]), dead letters
//! ([`dead_letters`]) and the loops' metrics ([`metrics`]). No file here imports this
//! one, nor a loop another loop.

pub mod aggregate;
pub mod at_least_once;
pub mod back_pressure;
pub mod dead_letters;
pub mod exactly_once;
pub mod metrics;
pub mod offsets;
pub mod subscription;
pub mod tasks;
pub mod transaction;
pub mod transform;

pub use dead_letters::{dead_letter, Origin};
pub use metrics::{
    LoopMetrics, CONSUMER_LAG, DEAD_LETTERS, RECORDS_CONSUMED, RECORDS_IN_FLIGHT, RECORDS_PRODUCED,
};
pub use transform::{Keyed, LoopReason, Output, Transform, TransformError};

use crate::config::Delivery;
use crate::stage::StageRuntime;

/// Runs `transform` over the stage's input until shutdown, in the stage's delivery mode.
pub async fn run<T: Transform>(transform: T, runtime: &StageRuntime) -> anyhow::Result<()> {
    match runtime.settings.delivery {
        Delivery::AtLeastOnce => at_least_once::run(transform, runtime).await,
        Delivery::ExactlyOnce => exactly_once::run(transform, runtime).await,
    }
}
