//! Near-duplicate detection as BigCode did it for The Stack and StarCoder2: MinHash
//! over 5-gram shingles of a file's tokens, 256 permutations, and locality-sensitive
//! hashing in bands to find candidates cheaply; a candidate is confirmed when the
//! sketches estimate a Jaccard similarity of at least 0.7. Of two near-duplicates the
//! later is dropped.
//!
//! The stage does it in the stream, between `code-files` and `distinct-files`, as three
//! loops in each replica, each its own consumer group:
//! - [`route`]: signs each file, sends it whole to its judge and its bands to the
//!   shards that own their buckets (`neardup-probes`, one partition a shard);
//! - [`lookup`]: each shard judges the bands it owns against the files before it and
//!   indexes them; its index is the compacted `neardup-index`, reloaded on assignment;
//! - [`judge`]: gathers a file and every shard's answer (`neardup-gather`, keyed by
//!   content hash) and passes the file on or drops it.
//!
//! Replicas split each loop's partitions, so the index is sharded over them.

pub mod index;
pub mod judge;
pub mod lookup;
pub mod metrics;
pub mod minhash;
pub mod route;
pub mod shard;

use std::sync::Arc;

use anyhow::bail;
use codelupe_runtime::consume::aggregate;
use codelupe_runtime::descriptor::{Bound, Flow, Runs, StageDescriptor};
use codelupe_runtime::stage::LoopSpec;
use codelupe_runtime::StageRuntime;
use tokio_util::sync::CancellationToken;

pub use index::{Index, Judgement};
pub use minhash::{Params, Signature};

use crate::metrics::NeardupMetrics;

pub const STAGE: &str = "neardup";

pub const DESCRIPTOR: StageDescriptor = StageDescriptor {
    name: STAGE,
    runs: Runs::InProcess(|runtime| Box::pin(run(runtime))),
    bound_by: Bound::Cpu,
    progress: &[
        ("files", metrics::FILES_CHECKED),
        ("kept", metrics::FILES_KEPT),
        ("near-duplicates", metrics::FILES_SKIPPED),
        ("lag", codelupe_runtime::consume::CONSUMER_LAG),
    ],
    flow: Some(Flow {
        consumed: metrics::FILES_CHECKED,
        produced: metrics::FILES_KEPT,
    }),
    offline_options: "{}",
    prepare_offline: None,
    summarize: |seen| {
        vec![format!(
            "near-dups     {} files judged, {} kept, {} dropped as near-duplicates",
            seen.consumed as u64,
            seen.produced as u64,
            seen.progress("near-duplicates"),
        )]
    },
};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NeardupOptions {
    /// Estimated Jaccard similarity from which a later file is dropped.
    pub threshold: f64,
    /// The shards: one partition each.
    pub probes_topic: String,
    /// The shards' index, compacted; as many partitions as the probes topic.
    pub index_topic: String,
    /// Files and the shards' answers about them, keyed by content hash.
    pub gather_topic: String,
    /// What was dropped for what.
    pub dropped_topic: String,
    /// How late a probe may reach its shard, in order time, and still be probed in
    /// its order (shards hold probes back this long, so it adds to each file's latency).
    pub reorder_ms: u64,
    /// How long the judge waits for a file's answers: a file some shard never answers
    /// for (its probe dead-lettered, a forged gather record) is judged on the answers
    /// it has after this, instead of holding its partition's commit for good.
    pub answer_timeout_ms: u64,
    /// The most content bytes the judge holds in files waiting for answers: past it
    /// the longest waiting are judged on the answers they have, so a stalled shard
    /// cannot make the judge hold every file routed meanwhile.
    pub max_waiting_bytes: u64,
}

impl Default for NeardupOptions {
    fn default() -> Self {
        Self {
            threshold: Params::default().threshold,
            probes_topic: "neardup-probes".into(),
            index_topic: "neardup-index".into(),
            gather_topic: "neardup-gather".into(),
            dropped_topic: "near-duplicates".into(),
            reorder_ms: 1_000,
            answer_timeout_ms: 600_000,
            max_waiting_bytes: 512 << 20,
        }
    }
}

pub async fn run(runtime: StageRuntime) -> anyhow::Result<()> {
    let options: NeardupOptions = runtime.settings.options(STAGE)?;
    if !(0.0..=1.0).contains(&options.threshold) {
        bail!("stages.neardup.options.threshold must lie in [0, 1]");
    }
    let shards = shard_count(&runtime, &options).await?;
    let params = Params {
        threshold: options.threshold,
        ..Params::default()
    };
    let metrics = Arc::new(NeardupMetrics::register(&runtime.registry)?);
    // One loop failing stops the others, so the process exits and is restarted whole.
    let stop = CancellationToken::new();
    let [route, lookup, judge] = loop_runtimes(&runtime, &options, &stop)?;
    check_loop_limits(&route, &judge)?;
    tracing::info!(
        shards,
        threshold = params.threshold,
        bands = params.bands,
        rows = params.rows,
        "near-duplicate stage starting"
    );
    let forward = {
        let (shutdown, stop) = (runtime.shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.cancel();
        })
    };
    let stopping = |result: anyhow::Result<()>| {
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let router = route::Router::new(
        params,
        shards as usize,
        options.probes_topic.clone(),
        route.output_max_bytes(),
    );
    let shard = lookup::Lookup::new(
        params.threshold,
        options.index_topic.clone(),
        std::time::Duration::from_millis(options.reorder_ms),
        runtime.clients.clone(),
        metrics.clone(),
    );
    let judging = judge::Judge::new(&options, metrics);
    let (a, b, c) = tokio::join!(
        async { stopping(aggregate::run_aggregate(router, &route).await) },
        async { stopping(aggregate::run_aggregate(shard, &lookup).await) },
        async { stopping(aggregate::run_aggregate(judging, &judge).await) },
    );
    forward.abort();
    a.and(b).and(c)
}

/// The shards: the probes topic's partitions, which the index topic must match.
async fn shard_count(runtime: &StageRuntime, options: &NeardupOptions) -> anyhow::Result<i32> {
    let clients = &runtime.clients;
    let shards = clients.partition_count(&options.probes_topic).await?;
    let index = clients.partition_count(&options.index_topic).await?;
    if shards != index {
        bail!(
            "{} has {index} partitions but {} has {shards}: a shard's index shares its \
             partition number, so they must match (fix topology.yaml and re-apply)",
            options.index_topic,
            options.probes_topic
        );
    }
    Ok(shards)
}

/// The route, lookup and judge loops' runtimes, each stopped by `stop`.
fn loop_runtimes(
    runtime: &StageRuntime,
    options: &NeardupOptions,
    stop: &CancellationToken,
) -> anyhow::Result<[StageRuntime; 3]> {
    let (input, group) = runtime.require_input()?;
    let output = runtime
        .output
        .clone()
        .ok_or_else(|| anyhow::anyhow!("stage {STAGE} needs an output topic"))?;
    let loops: [StageRuntime; 3] = runtime
        .loops(&[
            LoopSpec {
                name: "route",
                input: input.to_string(),
                output: Some(options.gather_topic.clone()),
                group: group.to_string(),
            },
            LoopSpec {
                name: "lookup",
                input: options.probes_topic.clone(),
                output: Some(options.gather_topic.clone()),
                group: format!("{group}-lookup"),
            },
            LoopSpec {
                name: "judge",
                input: options.gather_topic.clone(),
                output: Some(output),
                group: format!("{group}-judge"),
            },
        ])?
        .try_into()
        .map_err(|_| anyhow::anyhow!("three loops"))?;
    Ok(loops.map(|mut r| {
        r.shutdown = stop.clone();
        r
    }))
}

/// Refuses to start where a well-formed input could make a record its topic refuses
/// (which would stop the stage): the gather topic must take a whole code-files record
/// wrapped, and the output one as it was read. A lookup answer is bounded by
/// [`shard::MAX_CANDIDATES`], far below any topic's limit.
fn check_loop_limits(route: &StageRuntime, judge: &StageRuntime) -> anyhow::Result<()> {
    let Some(file) = route.input_max_bytes() else {
        return Ok(());
    };
    let hash = 64; // a SHA-256 in hex
    route.check_output_fits(
        file + 2 * hash + route::GATHER_OVERHEAD,
        "a code-files record wrapped whole into a gather record",
    )?;
    judge.check_output_fits(file, "a code-files record passed on whole")
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelupe_runtime::config::Config;
    use codelupe_runtime::kafka::KafkaClients;
    use codelupe_runtime::topology::Topology;

    /// The route and judge loops' runtimes under the topology `edit` makes of the
    /// repository's.
    fn loops(edit: impl Fn(String) -> String) -> (StageRuntime, StageRuntime) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let text = std::fs::read_to_string(root.join("topology.yaml"))
            .unwrap()
            .replace(
                "schema: schemas/",
                &format!("schema: {}/schemas/", root.display()),
            );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topology.yaml");
        std::fs::write(&path, edit(text)).unwrap();
        let topology = Topology::load(&path).unwrap();
        let config = Config::default();
        let clients = KafkaClients::new("127.0.0.1:1", &config.kafka);
        let stage =
            StageRuntime::resolve(STAGE, &topology, &config, clients, Default::default()).unwrap();
        let route = StageRuntime {
            output: Some("neardup-gather".into()),
            ..stage.clone()
        };
        let judge = StageRuntime {
            input: Some("neardup-gather".into()),
            ..stage
        };
        (route, judge)
    }

    /// A well-formed code-files record must fit every topic the stage writes it to;
    /// where it would not, the stage refuses to start instead of stopping on it later.
    #[test]
    fn every_loop_output_is_checked_against_the_largest_input_at_start() {
        let (route, judge) = loops(|t| t);
        check_loop_limits(&route, &judge).unwrap();
        // The gather topic at code-files' own limit cannot hold a file wrapped.
        let (route, judge) = loops(|t| t.replace("\"2162688\"", "\"2097152\""));
        let error = check_loop_limits(&route, &judge).unwrap_err().to_string();
        assert!(
            error.contains("topic neardup-gather takes at most 2097152"),
            "{error}"
        );
        // distinct-files below code-files cannot take a kept file back.
        let (route, judge) = loops(|t| {
            let at = t.find("  distinct-files:").unwrap();
            let (head, tail) = t.split_at(at);
            format!("{head}{}", tail.replacen("\"2097152\"", "\"1048576\"", 1))
        });
        let error = check_loop_limits(&route, &judge).unwrap_err().to_string();
        assert!(
            error.contains("topic distinct-files takes at most 1048576"),
            "{error}"
        );
    }
}
