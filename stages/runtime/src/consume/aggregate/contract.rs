//! What an aggregating stage implements, and what it hands the loop back: outputs
//! sealed with the inputs each holds a part of, and inputs finished.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::AvroRecord;
use crate::consume::transform::TransformError;
use crate::labels::LabelSet;
use crate::publish::Outgoing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InputPosition {
    pub partition: i32,
    pub offset: i64,
}

/// An output ready to publish.
#[derive(Debug)]
pub struct Sealed<T> {
    pub key: String,
    /// None: the key's partition.
    pub partition: Option<i32>,
    pub value: T,
    /// The inputs with a part in this output, and whether it is their last part.
    pub inputs: Vec<(InputPosition, bool)>,
    /// Records that go out with this output: in its transaction in `exactly_once`, else
    /// once it is acknowledged (the batcher's marks of a file's head packed here).
    pub alongside: Vec<Outgoing>,
}

/// What handing over one input (or a flush) produced.
#[derive(Debug)]
pub struct Step<T> {
    pub sealed: Vec<Sealed<T>>,
    /// Inputs finished without a part in any output (duplicates dropped, say).
    pub finished: Vec<InputPosition>,
    /// Records to publish when an input is released (every output holding a part of it
    /// acknowledged), before its offset is stored: the batcher's dedup marks, so a mark
    /// never exists while a batch of its file might still be lost.
    pub on_release: Vec<(InputPosition, Outgoing)>,
}

impl<T> Step<T> {
    /// Adds `other`'s outputs and releases after this step's.
    pub fn extend(&mut self, other: Step<T>) {
        self.sealed.extend(other.sealed);
        self.finished.extend(other.finished);
        self.on_release.extend(other.on_release);
    }
}

impl<T> Default for Step<T> {
    fn default() -> Self {
        Self {
            sealed: Vec::new(),
            finished: Vec::new(),
            on_release: Vec::new(),
        }
    }
}

pub trait Aggregate: Send + 'static {
    type Input: AvroRecord;
    type Output: AvroRecord;
    /// Why it dead-letters an input, next to the loop's [`LoopReason`]s.
    type Reason: LabelSet;
    /// What [`Aggregate::preparer`] makes of an input, handed to `push` with it.
    type Prepared: Send + 'static;

    /// The work on an input that reads none of the aggregate's state, run on every
    /// core ahead of `push` (inputs still reach `push` in the order read).
    fn preparer(&self) -> Preparer<Self::Input, Self::Prepared>;

    /// Takes one input. A permanent error dead-letters it; a retryable one (state it
    /// could not load, say) stops the stage with the input uncommitted, since the
    /// aggregate cannot skip it and go on.
    fn push(
        &mut self,
        at: InputPosition,
        input: Self::Input,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<Step<Self::Output>, TransformError<Self::Reason>>> + Send;

    /// Seals every partial output; called when the input has paused for `flush_after`.
    /// (Async: an exporting stage writes its partial files here.)
    fn flush(&mut self) -> impl Future<Output = Step<Self::Output>> + Send;

    /// None: partial outputs wait for more input however long that takes.
    fn flush_after(&self) -> Option<Duration>;

    /// These partitions went to another consumer, which replays their unreleased
    /// inputs: drop their partial outputs and any state the new owner may change.
    fn revoke(&mut self, partitions: &[i32]);

    /// These partitions came to this consumer: load their state now, all at once,
    /// rather than as each one's first input arrives. An error stops the stage.
    fn assign(&mut self, partitions: &[i32]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

pub type Preparer<I, P> = Arc<dyn Fn(&I) -> P + Send + Sync>;
