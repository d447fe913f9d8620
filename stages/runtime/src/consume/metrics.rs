//! The counts and gauges every consuming stage exports beside its own.

use super::transform::LoopReason;
use crate::labels::LabelSet;
use crate::telemetry::register;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

pub const RECORDS_CONSUMED: &str = "codelupe_records_consumed_total";

pub const RECORDS_PRODUCED: &str = "codelupe_records_produced_total";

pub const DEAD_LETTERS: &str = "codelupe_dead_letters_total";

pub const RECORDS_IN_FLIGHT: &str = "codelupe_records_in_flight";

pub const CONSUMER_LAG: &str = "codelupe_consumer_lag";

/// Counts and gauges every consuming stage exports next to its own metrics.
#[derive(Clone)]
pub struct LoopMetrics {
    pub consumed: IntCounter,
    pub produced: IntCounter,
    pub dead_letters: IntCounterVec,
    pub retries: IntCounter,
    pub in_flight: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub last_processed: IntGauge,
}

impl LoopMetrics {
    /// Registers the loop's metrics, with the dead-letter reasons of the loop and of
    /// the stage (`R`) at 0.
    pub fn register<R: LabelSet>(r: &Registry) -> prometheus::Result<Self> {
        let mut reasons = LoopReason::labels();
        reasons.extend(R::labels());
        Ok(Self {
            consumed: register::counter(r, RECORDS_CONSUMED, "Input records received from Kafka")?,
            produced: register::counter(
                r,
                RECORDS_PRODUCED,
                "Output records acknowledged by Kafka",
            )?,
            dead_letters: register::counter_vec(
                r,
                DEAD_LETTERS,
                "Input records sent to the dead-letter topic",
                "reason",
                &reasons,
            )?,
            retries: register::counter(
                r,
                "codelupe_transform_retries_total",
                "Transform attempts repeated after a retryable error",
            )?,
            in_flight: register::int_gauge(
                r,
                RECORDS_IN_FLIGHT,
                "Input records being transformed or awaiting produce acknowledgements",
            )?,
            consumer_lag: register::gauge_vec(
                r,
                CONSUMER_LAG,
                "Records between the consumer position and the partition end",
                &["topic", "partition"],
            )?,
            last_processed: register::int_gauge(
                r,
                "codelupe_last_processed_timestamp_seconds",
                "Unix time the last input record was fully handled",
            )?,
        })
    }
}
