//! Rows per second of the export stage's work (Parquet encoding, zstd, the put into a
//! local dataset folder, through `Exporter::push` and `flush` as its loop calls them)
//! against the batcher's on the same corpus (its tokenizing on every core, then dedup
//! and packing on the loop's thread: an upper bound on the batcher's input rate), side
//! by side in alternating rounds; then the dataset's bytes on disk against the raw
//! content bytes, and the export's peak memory in a process of its own.

use std::path::Path;
use std::time::{Duration, Instant};

use codelupe_batcher::metrics::BatcherMetrics;
use codelupe_batcher::{Batcher, BatcherOptions};
use codelupe_export::metrics::ExportMetrics;
use codelupe_export::rows::Files;
use codelupe_export::store::DatasetStore;
use codelupe_export::{ExportOptions, Exporter};
use codelupe_runtime::consume::aggregate::{Aggregate, InputPosition};
use codelupe_runtime::kafka::{EmbeddedBroker, KafkaClients};
use codelupe_runtime::records::CodeFile;
use codelupe_runtime::topology::Topology;
use codelupe_testkit::bench::{disk_bytes, measured_in_child, median, proc_status_kb, CRATES};
use codelupe_testkit::{code_files, registry_crates};
use codelupe_tokenizer::CodeTokenizer;

/// `distinct-files`' partitions: the export gathers each partition's rows apart.
const PARTITIONS: usize = 12;
const ROUNDS: usize = 5;

fn corpus() -> Vec<CodeFile> {
    let kept = codelupe_runtime::language::Kept::default();
    let mut files = code_files(&registry_crates(CRATES), |p| {
        kept.of_path(&p.to_string_lossy()).is_some()
    });
    files.sort_by(|a, b| a.content_hash.cmp(&b.content_hash));
    files.dedup_by(|a, b| a.content_hash == b.content_hash);
    files
}

fn at(i: usize) -> InputPosition {
    InputPosition {
        partition: (i % PARTITIONS) as i32,
        offset: (i / PARTITIONS) as i64,
    }
}

/// Every file through a fresh exporter into `dataset`, the tail flushed as when the
/// input pauses.
fn export(runtime: &tokio::runtime::Runtime, files: &[CodeFile], dataset: &Path) -> Duration {
    let options = ExportOptions {
        dataset: dataset.display().to_string(),
        ..ExportOptions::default()
    };
    let metrics = ExportMetrics::register(&prometheus::Registry::new(), "export").unwrap();
    let store = std::sync::Arc::new(DatasetStore::open(&options.dataset).unwrap());
    let mut exporter = Exporter::<Files>::new(store, options, metrics).unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        for (i, file) in files.iter().enumerate() {
            exporter.push(at(i), file.clone(), ()).await.unwrap();
        }
        exporter.flush().await;
    });
    started.elapsed()
}

/// Every file through a fresh batcher: tokenized on every core first, then pushed in
/// order on this thread, each sealed batch encoded as its loop would publish it.
fn batch(
    runtime: &tokio::runtime::Runtime,
    files: &[CodeFile],
    tokenizer: &Path,
    clients: &KafkaClients,
) -> Duration {
    let options = BatcherOptions {
        tokenizer: tokenizer.to_path_buf(),
        ..BatcherOptions::default()
    };
    let metrics = BatcherMetrics::register(&prometheus::Registry::new()).unwrap();
    let code_tokenizer = CodeTokenizer::load(tokenizer).unwrap();
    let mut batcher = Batcher::new(code_tokenizer, options, clients.clone(), metrics).unwrap();
    let partitions: Vec<i32> = (0..PARTITIONS as i32).collect();
    runtime.block_on(batcher.assign(&partitions)).unwrap();
    let prepare = batcher.preparer();
    let started = Instant::now();
    let cores = std::thread::available_parallelism().unwrap().get();
    let chunk = files.len().div_ceil(cores);
    let prepared: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(|f| prepare(f)).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    runtime.block_on(async {
        for (i, (file, tokens)) in files.iter().zip(prepared).enumerate() {
            let step = batcher.push(at(i), file.clone(), tokens).await.unwrap();
            for sealed in step.sealed {
                std::hint::black_box(codelupe_runtime::AvroRecord::encode(&sealed.value).unwrap());
            }
        }
    });
    started.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let files = corpus();
    if std::env::args().nth(1).as_deref() == Some("--peak") {
        // The export alone in this process: its peak resident memory.
        let dir = tempfile::tempdir().unwrap();
        let before = proc_status_kb("self", "VmHWM:").unwrap();
        export(&runtime, &files, dir.path());
        println!("{before} {}", proc_status_kb("self", "VmHWM:").unwrap());
        return;
    }
    let content: usize = files.iter().map(|f| f.content.len()).sum();
    println!(
        "{} distinct files, {:.1} MiB of content, from {} crates",
        files.len(),
        content as f64 / (1 << 20) as f64,
        CRATES.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    CodeTokenizer::train(files.iter().map(|f| f.content.as_str()), 16_384)
        .unwrap()
        .save(&tokenizer)
        .unwrap();
    let topology =
        Topology::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology.yaml")).unwrap();
    let broker = EmbeddedBroker::start(&topology).unwrap();
    let clients = KafkaClients::new(broker.bootstrap_servers(), &Default::default());

    let (mut exported, mut batched, mut on_disk) = (Vec::new(), Vec::new(), 0);
    let rate = |time: Duration| files.len() as f64 / time.as_secs_f64();
    for round in 1..=ROUNDS {
        let dataset = dir.path().join(format!("dataset-{round}"));
        let export_time = export(&runtime, &files, &dataset);
        on_disk = disk_bytes(&dataset);
        let batch_time = batch(&runtime, &files, &tokenizer, &clients);
        println!(
            "round {round}: export {:.0} rows/s, batcher {:.0} files/s",
            rate(export_time),
            rate(batch_time)
        );
        exported.push(rate(export_time));
        batched.push(rate(batch_time));
        std::fs::remove_dir_all(&dataset).unwrap();
    }
    let (exported, batched) = (median(exported), median(batched));
    println!(
        "median: export {exported:.0} rows/s vs the batcher's input {batched:.0} files/s = {:.1}x (goal > 1x: never the bottleneck)",
        exported / batched
    );
    println!(
        "dataset on disk {:.1} MiB for {:.1} MiB of content: {:.2}x smaller (zstd level 3)",
        on_disk as f64 / (1 << 20) as f64,
        content as f64 / (1 << 20) as f64,
        content as f64 / on_disk as f64
    );
    let peak = measured_in_child(&["--peak"]);
    println!(
        "export peak resident memory {} MiB (process at start {} MiB)",
        peak[1].parse::<u64>().unwrap() / 1024,
        peak[0].parse::<u64>().unwrap() / 1024
    );
}
