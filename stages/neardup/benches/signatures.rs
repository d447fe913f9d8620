//! Files per second of near-duplicate judgement (signature and index lookup) on real
//! code: the source files of the benchmark crates from the local cargo registry, one
//! thread, median of several rounds. Writes the same files as JSON lines to
//! $NEARDUP_BENCH_FILES (when set) so datatrove's MinHash pipeline can run on exactly
//! them (`benches/datatrove_minhash.py`, one command: `bash stages/neardup/benches/versus_datatrove.sh`).

use std::io::Write;
use std::time::Instant;

use codelupe_neardup::minhash::{signature, PERMUTATIONS};
use codelupe_neardup::{Index, Judgement, Params};
use codelupe_testkit::bench::{median, CRATES, ROUNDS};
use codelupe_testkit::{code_files, registry_crates};
use xxhash_rust::xxh3::xxh3_64;

fn main() {
    let files = code_files(&registry_crates(CRATES), |p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("rs" | "c" | "h" | "py" | "go" | "js" | "ts" | "java" | "cpp")
        )
    });
    let bytes: usize = files.iter().map(|f| f.content.len()).sum();
    if let Ok(out) = std::env::var("NEARDUP_BENCH_FILES") {
        let mut w = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
        for f in &files {
            let line = serde_json::json!({"id": f.content_hash, "text": f.content});
            writeln!(w, "{line}").unwrap();
        }
    }
    let params = Params::default();
    let mut rounds = Vec::new();
    let mut dropped = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut index = Index::new(params);
        dropped = 0;
        for f in &files {
            let s = signature(&f.content, &params);
            if let Judgement::NearDuplicate { .. } = index.judge(&f.content_hash, &s) {
                dropped += 1;
            }
        }
        rounds.push(started.elapsed());
    }
    let t = median(rounds).as_secs_f64();
    println!(
        "corpus: {} files, {:.1} MB; {dropped} near-duplicates dropped",
        files.len(),
        bytes as f64 / 1e6
    );
    println!(
        "codelupe signature + index, 1 thread: {:>8.0} files/s  {:>6.1} MB/s",
        files.len() as f64 / t,
        bytes as f64 / 1e6 / t
    );
    index_memory(params);
    sharded_memory(params, 6);
}

/// The index's resident memory per file: distinct made-up signatures (all unique, so
/// every one is a representative) indexed, the process's resident size before and after.
fn index_memory(params: Params) {
    const FILES: usize = 200_000;
    let before = resident_bytes();
    let mut index = Index::new(params);
    let mut signature = [0u32; PERMUTATIONS];
    for file in 0..FILES {
        for (i, v) in signature.iter_mut().enumerate() {
            *v = xxh3_64(&[file.to_le_bytes(), i.to_le_bytes()].concat()) as u32;
        }
        let hash = format!("{:064x}", xxh3_64(&file.to_le_bytes()));
        index.judge(&hash, &signature);
    }
    let per_file = (resident_bytes() - before) as f64 / FILES as f64;
    println!(
        "index memory: {per_file:.0} bytes per file = {:.2} GB per million files ({} representatives)",
        per_file * 1e6 / 1e9,
        index.len()
    );
}

/// The same per file as the stage holds it over `shards` shards (its default): each
/// shard a file's bands reach keeps its sketch and content hash once.
fn sharded_memory(params: Params, shards: usize) {
    use codelupe_neardup::shard::{bucket_keys, shard_of, sketch, Order, Shard};
    const FILES: usize = 200_000;
    let before = resident_bytes();
    let mut index: Vec<Shard> = (0..shards).map(|_| Shard::new(params.threshold)).collect();
    let mut signature = [0u32; PERMUTATIONS];
    for file in 0..FILES {
        for (i, v) in signature.iter_mut().enumerate() {
            *v = xxh3_64(&[file.to_le_bytes(), i.to_le_bytes()].concat()) as u32;
        }
        let order = Order {
            at_us: file as i64,
            content_hash: format!("{:064x}", xxh3_64(&file.to_le_bytes())),
        };
        let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); shards];
        for bucket in bucket_keys(&params, &signature) {
            by_shard[shard_of(bucket, shards)].push(bucket);
        }
        for (shard, buckets) in by_shard.iter().enumerate() {
            if !buckets.is_empty() {
                index[shard].probe(order.clone(), buckets, &sketch(&signature));
            }
        }
    }
    let per_file = (resident_bytes() - before) as f64 / FILES as f64;
    let held: usize = index.iter().map(Shard::len).sum();
    println!(
        "stage index memory over {shards} shards: {per_file:.0} bytes per file = {:.2} GB per \
         million files (all replicas together; {:.1} shards hold each file)",
        per_file * 1e6 / 1e9,
        held as f64 / FILES as f64
    );
}

/// The process's resident set size.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
