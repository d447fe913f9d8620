//! The router: signs each file of `code-files` (on every core, ahead of the loop),
//! stamps it with its order, sends the file whole to the judge on `neardup-gather`,
//! and, once that is acknowledged, its bands to the shards that own their buckets on
//! `neardup-probes`. So on its gather partition a file always comes before the
//! answers about it.

use std::sync::Arc;
use std::time::Duration;

use codelupe_runtime::consume::aggregate::{Aggregate, InputPosition, Preparer, Sealed, Step};
use codelupe_runtime::publish::Outgoing;
use codelupe_runtime::records::{now_us, CodeFile, NeardupGather, NeardupProbe};
use codelupe_runtime::{AvroRecord, TransformError};

use crate::metrics::NeardupError;
use crate::minhash::{signature, Params};
use crate::shard::{bucket_keys, shard_of, sketch};

/// A file's bands grouped by the shard that owns them, and its sketch.
pub struct Routed {
    by_shard: Vec<(i32, Vec<i64>)>,
    sketch: Vec<u8>,
}

pub struct Router {
    params: Params,
    shards: usize,
    probes_topic: String,
    /// The last order time given: times only go up within a process, so files routed
    /// here are ordered as they were routed even when the clock steps back.
    last_us: i64,
    /// The largest gather record its topic takes: a file whose record would be larger
    /// (only a forged one, given the check at start) is dead-lettered here, since a
    /// record the topic refuses stops the stage.
    max_gather_bytes: usize,
}

/// A gather record's bytes beside its file and its content hash (given twice: the
/// record's key and its field): the Avro header, the numbers, the lengths.
pub const GATHER_OVERHEAD: usize = 64;

impl Router {
    pub fn new(
        params: Params,
        shards: usize,
        probes_topic: String,
        max_gather_bytes: Option<usize>,
    ) -> Self {
        Self {
            params,
            shards,
            probes_topic,
            last_us: 0,
            max_gather_bytes: max_gather_bytes.unwrap_or(usize::MAX),
        }
    }

    fn next_order_time(&mut self) -> i64 {
        self.last_us = now_us().max(self.last_us + 1);
        self.last_us
    }
}

impl Aggregate for Router {
    type Input = CodeFile;
    type Output = NeardupGather;
    type Reason = NeardupError;
    type Prepared = Routed;

    fn preparer(&self) -> Preparer<CodeFile, Routed> {
        let (params, shards) = (self.params, self.shards);
        Arc::new(move |file: &CodeFile| {
            let signature = signature(&file.content, &params);
            let mut by_shard: Vec<(i32, Vec<i64>)> = Vec::new();
            for bucket in bucket_keys(&params, &signature) {
                let shard = shard_of(bucket, shards) as i32;
                match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                    Some((_, buckets)) => buckets.push(bucket as i64),
                    None => by_shard.push((shard, vec![bucket as i64])),
                }
            }
            by_shard.sort_by_key(|(s, _)| *s);
            Routed {
                by_shard,
                sketch: sketch(&signature).to_vec(),
            }
        })
    }

    async fn push(
        &mut self,
        at: InputPosition,
        file: CodeFile,
        routed: Routed,
    ) -> Result<Step<NeardupGather>, TransformError<NeardupError>> {
        let whole = file
            .encode()
            .expect("a decoded CodeFile encodes again: its schema is tested");
        let size = whole.len() + 2 * file.content_hash.len() + GATHER_OVERHEAD;
        if size > self.max_gather_bytes {
            return Err(TransformError::permanent(
                NeardupError::TooLarge,
                format!(
                    "its gather record would take {size} bytes; the topic takes {}",
                    self.max_gather_bytes
                ),
            ));
        }
        let at_us = self.next_order_time();
        let shards = routed.by_shard.len() as i32;
        let mut step = Step::default();
        for (shard, buckets) in routed.by_shard {
            let probe = NeardupProbe {
                content_hash: file.content_hash.clone(),
                at_us,
                shard,
                shards,
                buckets,
                sketch: routed.sketch.clone(),
            };
            let mut record = Outgoing::record(&self.probes_topic, &file.content_hash, &probe)
                .expect("a NeardupProbe always encodes: its schema is tested");
            record.partition = Some(shard);
            step.on_release.push((at, record));
        }
        step.sealed.push(Sealed {
            key: file.content_hash.clone(),
            partition: None,
            value: NeardupGather {
                content_hash: file.content_hash,
                at_us,
                shards,
                file: Some(whole),
                candidates: Vec::new(),
            },
            inputs: vec![(at, true)],
            alongside: Vec::new(),
        });
        Ok(step)
    }

    async fn flush(&mut self) -> Step<NeardupGather> {
        Step::default()
    }

    fn flush_after(&self) -> Option<Duration> {
        None
    }

    fn revoke(&mut self, _: &[i32]) {}

    async fn assign(&mut self, _: &[i32]) -> anyhow::Result<()> {
        Ok(())
    }
}
