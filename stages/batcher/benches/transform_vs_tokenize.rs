//! Tokens per second of the batcher's whole per-file transform (dedup, metadata, FIM,
//! eval split, packing, Avro encoding of the sealed batches) against the `tokenizers`
//! crate alone encoding the same texts with the same tokenizer, on real code: crate
//! sources Cargo downloaded for this build. Alternates the two and reports the median
//! of several rounds; both on one thread, as one batcher replica runs.

use std::path::Path;
use std::time::{Duration, Instant};

use codelupe_batcher::metrics::BatcherMetrics;
use codelupe_batcher::{Batcher, BatcherOptions};
use codelupe_runtime::aggregate::{Aggregate, InputPosition};
use codelupe_runtime::kafka::{EmbeddedBroker, KafkaClients};
use codelupe_runtime::records::CodeFile;
use codelupe_runtime::topology::Topology;
use codelupe_runtime::{language, AvroRecord};
use codelupe_testkit::bench::{median, CRATES, ROUNDS};
use codelupe_testkit::{code_files, registry_crates};
use codelupe_tokenizer::CodeTokenizer;

/// The tokenizers crate alone: (tokens, elapsed).
fn bare(tokenizer: &tokenizers::Tokenizer, files: &[CodeFile]) -> (usize, Duration) {
    let started = Instant::now();
    let tokens = files
        .iter()
        .map(|f| {
            tokenizer
                .encode_fast(f.content.as_str(), false)
                .unwrap()
                .len()
        })
        .sum();
    (tokens, started.elapsed())
}

/// The stage: a fresh batcher (its dedup state loaded before the clock starts) takes
/// every file and seals full batches, each encoded as the loop would publish it.
fn stage(
    runtime: &tokio::runtime::Runtime,
    path: &Path,
    clients: &KafkaClients,
    files: &[CodeFile],
) -> (usize, Duration) {
    let options = BatcherOptions {
        tokenizer: path.to_path_buf(),
        ..BatcherOptions::default()
    };
    let metrics = BatcherMetrics::register(&prometheus::Registry::new()).unwrap();
    let tokenizer = CodeTokenizer::load(path).unwrap();
    let mut batcher = Batcher::new(tokenizer, options, clients.clone(), metrics).unwrap();
    let mut warm_up = files[0].clone();
    warm_up.content_hash = "f".repeat(64);
    let at = |offset| InputPosition {
        partition: 0,
        offset,
    };
    runtime.block_on(batcher.push(at(0), warm_up)).unwrap();
    let started = Instant::now();
    let mut tokens = 0;
    for (i, file) in files.iter().enumerate() {
        let step = runtime
            .block_on(batcher.push(at(i as i64 + 1), file.clone()))
            .unwrap();
        for sealed in step.sealed {
            tokens += sealed.value.token_ids.len();
            std::hint::black_box(sealed.value.encode().unwrap());
        }
    }
    (tokens, started.elapsed())
}

fn main() {
    let mut files = code_files(&registry_crates(CRATES), |p| {
        language::of_path(&p.to_string_lossy()).is_some()
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

    let (mut bare_rates, mut stage_rates, mut byte_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let (bare_tokens, bare_time) = bare(&plain, &files);
        let (stage_tokens, stage_time) = stage(&runtime, &path, &clients, &files);
        let bare_rate = bare_tokens as f64 / bare_time.as_secs_f64();
        let stage_rate = stage_tokens as f64 / stage_time.as_secs_f64();
        println!(
            "round {round}: tokenizers alone {:.0} tokens/s ({:.2} s); stage transform {:.0} tokens/s ({:.2} s)",
            bare_rate,
            bare_time.as_secs_f64(),
            stage_rate,
            stage_time.as_secs_f64()
        );
        bare_rates.push(bare_rate);
        stage_rates.push(stage_rate);
        byte_ratios.push(bare_time.as_secs_f64() / stage_time.as_secs_f64());
    }
    let (bare_rate, stage_rate) = (median(bare_rates), median(stage_rates));
    println!(
        "median: stage {stage_rate:.0} tokens/s vs tokenizers alone {bare_rate:.0} tokens/s = {:.2}x \
         (same texts, so time ratio {:.2}x; goal >= 0.8x)",
        stage_rate / bare_rate,
        median(byte_ratios)
    );
}
