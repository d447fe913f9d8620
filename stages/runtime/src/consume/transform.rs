//! What a stage's domain logic is to the consume loops: a [`Transform`] of one input
//! record into [`Keyed`] outputs, or a [`TransformError`] saying how it failed.

use crate::codec::AvroRecord;
use crate::labels::LabelSet;
use std::future::Future;

/// An output record and the key that routes it to its partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<T> {
    pub key: String,
    pub value: T,
}

/// Why a record could not be transformed: `reason` is one of the stage's
/// [`Transform::Reason`]s, the label of its dead letters.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransformError<R: LabelSet> {
    pub reason: R,
    pub message: String,
    /// Worth `max_attempts` tries before the record is dead-lettered.
    pub retryable: bool,
    /// Trouble outside the record (a host down or throttling): retried with backoff
    /// until it works, the stage stops, or `transient_give_up_s` passes (then it is
    /// dead-lettered, to be replayed). The record holds its
    /// partition's offset meanwhile, and back-pressure pauses the input when every
    /// permit waits so.
    pub transient: bool,
}

impl<R: LabelSet> TransformError<R> {
    pub fn permanent(reason: R, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retryable: false,
            transient: false,
        }
    }

    pub fn retryable(reason: R, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(reason, message)
        }
    }

    pub fn transient(reason: R, message: impl Into<String>) -> Self {
        Self {
            transient: true,
            ..Self::retryable(reason, message)
        }
    }
}

crate::label_set! {
    /// Why the loop itself dead-letters a record, whatever the stage.
    pub enum LoopReason {
        /// The value is not the input schema's Avro (or has none).
        Decode => "decode",
        /// Written with a version of the input schema this build does not know: a newer
        /// producer's during a rolling upgrade. Replayed (`dead-letters replay --reason
        /// unknown_schema`) once every replica runs the new build.
        UnknownSchema => "unknown_schema",
        EmptyValue => "empty_value",
        /// An output record could not be encoded.
        Encode => "encode",
        /// The output topic refused an output (too large, say).
        OutputRejected => "output_rejected",
        /// A stage without an output topic produced records.
        NoOutputTopic => "no_output_topic",
    }
}

impl LoopReason {
    /// The reason a value that does not decode is dead-lettered with.
    pub fn of_decode_error(error: &crate::codec::CodecError) -> Self {
        match error {
            crate::codec::CodecError::UnknownFingerprint { .. } => LoopReason::UnknownSchema,
            _ => LoopReason::Decode,
        }
    }
}

/// A record a transform publishes. Every Avro record type is one, bound for the stage's
/// output topic; a stage that publishes a second kind beside it (the processor's
/// repository summaries, in the same transaction as the files) implements this for an
/// enum of both and names the other topic.
pub trait Output: Send + Sync + 'static {
    fn encode_output(&self) -> Result<Vec<u8>, crate::codec::CodecError>;

    /// Its topic, when it is not the stage's output topic.
    fn side_topic(&self) -> Option<&str> {
        None
    }
}

impl<T: AvroRecord> Output for T {
    fn encode_output(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
        self.encode()
    }
}

/// A stage's domain logic: decode → decide → outputs. Everything about Kafka is here
/// in the runtime, not in the stage.
pub trait Transform: Send + Sync + 'static {
    type Input: AvroRecord;
    type Output: Output;
    /// Why it dead-letters a record, next to the loop's [`LoopReason`]s.
    type Reason: LabelSet;

    fn transform(
        &self,
        input: Self::Input,
    ) -> impl Future<Output = Result<Vec<Keyed<Self::Output>>, TransformError<Self::Reason>>> + Send;
}
