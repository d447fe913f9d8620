//! What a Kafka error means: retry, split the batch, or give up. One judgement for
//! the producers and the state reader.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What a Kafka error means for the record produced or the read that met it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Retry with backoff: queue full, timeouts, transport errors (librdkafka has
    /// already retried the broker's transient errors itself).
    Transient,
    /// The batch holding the record was too large; the record may be.
    TooLarge,
    /// No retry can mend it: no such topic, not authorised, fatal producer state.
    Permanent,
}

pub fn verdict(error: &KafkaError) -> Verdict {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            Verdict::TooLarge
        }
        Some(
            C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::InvalidRecord
            | C::InvalidRequiredAcks
            | C::Fatal
            | C::Fenced,
        ) => Verdict::Permanent,
        _ => Verdict::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn size_errors_are_told_apart_from_permanent_ones() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
        ] {
            assert_eq!(verdict(&production(code)), Verdict::TooLarge, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::Fatal,
        ] {
            assert_eq!(verdict(&production(code)), Verdict::Permanent, "{code:?}");
        }
    }

    #[test]
    fn transient_errors_are_retried() {
        for code in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert_eq!(verdict(&production(code)), Verdict::Transient, "{code:?}");
        }
    }
}
