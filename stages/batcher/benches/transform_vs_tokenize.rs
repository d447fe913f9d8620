//! Tokens per second of the batcher's whole per-file transform (tokenizing, dedup,
//! metadata, FIM, eval split, packing, Avro encoding of the sealed batches) against the
//! `tokenizers` crate alone encoding the same texts with the same tokenizer, on real
//! code: crate sources Cargo downloaded for this build. Each side runs on one thread
//! and on every core (the stage as its loop runs it: tokenizing ahead of `push` on the
//! loop's ordered workers; the crate with its own `encode_batch_fast`). Alternates the
//! four and reports the median of several rounds.

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use codelupe_batcher::metrics::BatcherMetrics;
use codelupe_batcher::{Batcher, BatcherOptions};
use codelupe_runtime::config::StageSettings;
use codelupe_runtime::consume::aggregate::prepare::Ordered;
use codelupe_runtime::consume::aggregate::{Aggregate, InputPosition};
use codelupe_runtime::kafka::{EmbeddedBroker, KafkaClients};
use codelupe_runtime::records::CodeFile;
use codelupe_runtime::topology::Topology;
use codelupe_runtime::{language, AvroRecord};
use codelupe_testkit::bench::{median, CRATES, ROUNDS};
use codelupe_testkit::{code_files, registry_crates};
use codelupe_tokenizer::CodeTokenizer;

/// The tokenizers crate alone, on one thread or (its batch encoding) every core:
/// (tokens, elapsed).
fn bare(
    tokenizer: &tokenizers::Tokenizer,
    files: &[CodeFile],
    parallel: bool,
) -> (usize, Duration) {
    let texts: Vec<&str> = files.iter().map(|f| f.content.as_str()).collect();
    let started = Instant::now();
    let tokens = if parallel {
        tokenizer
            .encode_batch_fast(texts, false)
            .unwrap()
            .iter()
            .map(|e| e.len())
            .sum()
    } else {
        texts
            .into_iter()
            .map(|t| tokenizer.encode_fast(t, false).unwrap().len())
            .sum()
    };
    (tokens, started.elapsed())
}

/// CPU time this thread has run (the kernel's schedstat, in nanoseconds).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = stat.split_whitespace().next().and_then(|n| n.parse().ok());
    Duration::from_nanos(nanos.unwrap_or(0))
}

/// The stage: a fresh batcher (its dedup state loaded before the clock starts) takes
/// every file, prepared on `workers` threads as its loop prepares them, and seals full
/// batches, each encoded as the loop would publish it. Also returns the CPU time of the
/// loop's own thread (dedup, packing, encoding sealed batches): on two cores that
/// work shares the cores with the workers.
fn stage(
    runtime: &tokio::runtime::Runtime,
    path: &Path,
    clients: &KafkaClients,
    files: &[CodeFile],
    workers: NonZeroUsize,
) -> ((usize, Duration), Duration) {
    let options = BatcherOptions {
        tokenizer: path.to_path_buf(),
        ..BatcherOptions::default()
    };
    let metrics = BatcherMetrics::register(&prometheus::Registry::new()).unwrap();
    let tokenizer = CodeTokenizer::load(path).unwrap();
    let mut batcher = Batcher::new(tokenizer, options, clients.clone(), metrics).unwrap();
    let prepare = batcher.preparer();
    let mut warm_up = files[0].clone();
    warm_up.content_hash = "f".repeat(64);
    let at = |offset| InputPosition {
        partition: 0,
        offset,
    };
    let tokens = prepare(&warm_up);
    runtime
        .block_on(batcher.push(at(0), warm_up, tokens))
        .unwrap();
    // As deep as the loop's queue (max_in_flight's default).
    let depth = StageSettings::default().max_in_flight.get();
    let loop_started = thread_cpu();
    let measured = runtime.block_on(async {
        let started = Instant::now();
        let mut ordered = Ordered::new(workers);
        let (mut next, mut tokens) = (files.iter().enumerate(), 0);
        loop {
            while ordered.len() < depth {
                let Some((i, file)) = next.next() else { break };
                let (file, prepare) = (file.clone(), prepare.clone());
                ordered.add(move || {
                    let tokens = prepare(&file);
                    (i, file, tokens)
                });
            }
            let Some((i, file, prepared)) = ordered.next().await else {
                break;
            };
            let step = batcher
                .push(at(i as i64 + 1), file, prepared)
                .await
                .unwrap();
            for sealed in step.sealed {
                tokens += sealed.value.token_ids.len();
                std::hint::black_box(sealed.value.encode().unwrap());
            }
        }
        (tokens, started.elapsed())
    });
    (measured, thread_cpu().saturating_sub(loop_started))
}

fn rate((tokens, time): (usize, Duration)) -> f64 {
    tokens as f64 / time.as_secs_f64()
}

fn main() {
    let kept = language::Kept::default();
    let mut files = code_files(&registry_crates(CRATES), |p| {
        kept.of_path(&p.to_string_lossy()).is_some()
    });
    files.sort_by(|a, b| a.content_hash.cmp(&b.content_hash));
    files.dedup_by(|a, b| a.content_hash == b.content_hash);
    let bytes: usize = files.iter().map(|f| f.content.len()).sum();
    println!(
        "{} distinct files, {:.1} MiB, from {} crates",
        files.len(),
        bytes as f64 / (1 << 20) as f64,
        CRATES.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    CodeTokenizer::train(files.iter().map(|f| f.content.as_str()), 16_384)
        .unwrap()
        .save(&path)
        .unwrap();
    let plain = tokenizers::Tokenizer::from_file(&path).unwrap();

    let topology =
        Topology::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology.yaml")).unwrap();
    let broker = EmbeddedBroker::start(&topology).unwrap();
    let clients = KafkaClients::new(broker.bootstrap_servers(), &Default::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let cores = std::thread::available_parallelism().unwrap();
    let one = NonZeroUsize::MIN;
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut loop_shares = Vec::new();
    for round in 1..=ROUNDS {
        let bare_one = bare(&plain, &files, false);
        let (stage_one, _) = stage(&runtime, &path, &clients, &files, one);
        let bare_all = bare(&plain, &files, true);
        let (stage_all, loop_cpu) = stage(&runtime, &path, &clients, &files, cores);
        let loop_share = loop_cpu.as_secs_f64() / stage_all.1.as_secs_f64();
        loop_shares.push(loop_share);
        let measured = [bare_one, stage_one, bare_all, stage_all].map(rate);
        println!(
            "round {round}: one thread: tokenizers alone {:.0}, stage {:.0} tokens/s; \
             {cores} cores: tokenizers alone {:.0}, stage {:.0} tokens/s, its loop's thread \
             busy {:.0}% of the run",
            measured[0],
            measured[1],
            measured[2],
            measured[3],
            100.0 * loop_share
        );
        for (all, r) in rates.iter_mut().zip(measured) {
            all.push(r);
        }
    }
    let [bare_one, stage_one, bare_all, stage_all] = rates.map(median);
    println!(
        "median, one thread: stage {stage_one:.0} tokens/s vs tokenizers alone {bare_one:.0} = {:.2}x (goal >= 0.8x)",
        stage_one / bare_one
    );
    println!(
        "median, {cores} cores: stage {stage_all:.0} tokens/s vs tokenizers alone {bare_all:.0} = {:.2}x (goal >= 0.9x)",
        stage_all / bare_all
    );
    println!(
        "stage on {cores} cores vs one thread: {:.2}x (goal >= 1.7x on 2 cores); tokenizers alone: {:.2}x",
        stage_all / stage_one,
        bare_all / bare_one
    );
    println!(
        "median, {cores} cores: the stage's loop thread (dedup, packing, encoding batches) busy {:.0}% of the run",
        100.0 * median(loop_shares)
    );
}
