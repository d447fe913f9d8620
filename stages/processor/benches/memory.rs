//! Peak memory of one clone's transform: a pack of `PACK_FILES` (4,000) distinct files
//! of 1 MiB of Python, examined two ways, each in a child process of its own so the
//! peaks (VmHWM) do not mix:
//! - **whole**: as the processor read a clone before, the pack read whole into memory,
//!   indexed, and every selected blob read at once (`read_batch_bytes` unbounded);
//! - **streamed**: as it reads one now, the pack streamed from the store into the
//!   indexer, blobs read in batches of `read_batch_bytes` (64 MiB).
//!
//! Both hold the kept files they publish (each clone's outputs go out together), so
//! the difference is the pack and the raw blobs. Prints both peaks and their ratio
//! (cargo bench -p codelupe-processor --bench memory).

use std::path::Path;
use std::process::Command;

use codelupe_clone_store::{self as clone_store, CloneStore};
use codelupe_processor::metrics::ProcessorMetrics;
use codelupe_processor::{CloneObjects, Processor, ProcessorOptions};
use codelupe_runtime::records::RepoClone;
use codelupe_testkit::bench::proc_status_kb;
use codelupe_testkit::{clone_record, output_given};

const FILE_BYTES: usize = 1 << 20;
/// Set in the child: which way to examine, the store, the record as JSON lines.
const CHILD: &str = "MEMORY_BENCH_CHILD";

/// 1 MiB of distinct Python for file `i`.
fn python(i: usize) -> String {
    let mut text = String::with_capacity(FILE_BYTES);
    let mut j = 0;
    while text.len() + 80 < FILE_BYTES {
        text.push_str(&format!(
            "def scale_{i}_{j}(value):\n    return value * {j} + {i}  # step {j}\n\n"
        ));
        j += 1;
    }
    text
}

/// A bare repository at `bare` with `files` Python files in one commit.
fn repository(bare: &Path, files: usize) -> String {
    let repo = git2::Repository::init_bare(bare).unwrap();
    let mut tree = repo.treebuilder(None).unwrap();
    for i in 0..files {
        let blob = repo.blob(python(i).as_bytes()).unwrap();
        tree.insert(format!("module_{i}.py"), blob, 0o100644)
            .unwrap();
    }
    let tree = repo.find_tree(tree.write().unwrap()).unwrap();
    let who = git2::Signature::now("bench", "bench@example.com").unwrap();
    let commit = repo.commit(None, &who, &who, "files", &tree, &[]).unwrap();
    commit.to_string()
}

/// The pack of `commit`, made by git with no delta search: the files share no text a
/// delta would save, and libgit2's search over 4,000 of them takes most of an hour.
fn undeltified_pack(bare: &Path, commit: &str) -> Vec<u8> {
    let out = output_given(
        Command::new("git").arg("--git-dir").arg(bare).args([
            "pack-objects",
            "--stdout",
            "--revs",
            "--window=0",
            "-q",
        ]),
        format!("{commit}\n").as_bytes(),
    );
    assert!(
        out.status.success(),
        "git pack-objects: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn options(store: &Path, work: &Path, read_batch_bytes: u64) -> ProcessorOptions {
    ProcessorOptions {
        store: store.display().to_string(),
        work_dir: work.to_path_buf(),
        read_batch_bytes,
        ..ProcessorOptions::default()
    }
}

/// In the child: examines the clone one way and prints its peak and kept files.
fn child(way: &str, store: &Path, work: &Path, clone: RepoClone) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let metrics = ProcessorMetrics::register(&prometheus::Registry::new()).unwrap();
    let batch = if way == "whole" { u64::MAX } else { 64 << 20 };
    let processor = Processor::new(options(store, work, batch), metrics).unwrap();
    let examined = if way == "whole" {
        let store = CloneStore::open(&store.display().to_string()).unwrap();
        let pack = runtime
            .block_on(store.read_pack(&codelupe_clone_store::PackRef::from(&clone)))
            .unwrap();
        let dir = tempfile::tempdir_in(work).unwrap();
        let repo = clone_store::unpack(&pack, dir.path()).unwrap();
        let examined = processor.examine(&repo, &clone).unwrap();
        drop(pack);
        examined
    } else {
        let objects: CloneObjects = runtime.block_on(processor.objects(&clone)).unwrap();
        processor.examine_objects(&objects, &clone).unwrap()
    };
    let kept = examined
        .verdicts
        .iter()
        .filter(|(_, v)| matches!(v, codelupe_processor::Verdict::Keep(_)))
        .count();
    let peak = proc_status_kb("self", "VmHWM:").unwrap();
    println!("{way} {peak} {kept}");
}

fn main() {
    let files: usize = std::env::var("PACK_FILES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4_000);
    if let Ok(way) = std::env::var(CHILD) {
        let store = std::env::var("MEMORY_BENCH_STORE").unwrap();
        let clone = serde_json::from_str(&std::env::var("MEMORY_BENCH_CLONE").unwrap()).unwrap();
        let work = tempfile::tempdir().unwrap();
        return child(&way, Path::new(&store), work.path(), clone);
    }
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("origin.git");
    let commit = repository(&bare, files);
    let store_dir = dir.path().join("store");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = CloneStore::open(&store_dir.display().to_string()).unwrap();
    let pack = undeltified_pack(&bare, &commit);
    let reference = runtime.block_on(store.put_pack(pack.into())).unwrap();
    let clone = clone_record("bench/python", &reference, &commit);
    println!(
        "a pack of {files} files of 1 MiB: {} MB",
        clone.pack_bytes / 1_000_000
    );
    let mut peaks = Vec::new();
    for way in ["whole", "streamed"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, way)
            .env("MEMORY_BENCH_STORE", &store_dir)
            .env("MEMORY_BENCH_CLONE", serde_json::to_string(&clone).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let fields: Vec<&str> = line.split(' ').collect();
        let (peak_kb, kept): (u64, usize) =
            (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        println!(
            "{way:>9}: peak resident {} MB, {kept} files kept",
            peak_kb / 1024
        );
        peaks.push(peak_kb as f64);
    }
    println!("streamed / whole peak: {:.2}", peaks[1] / peaks[0]);
}
