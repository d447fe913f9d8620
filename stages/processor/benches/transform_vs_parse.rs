//! Files per second of the processor's whole per-clone transform (path rules, filters,
//! parse, score, hash) against a bare loop that only reads the same blobs from the same
//! bare repositories and parses them with tree-sitter, on real code: crate sources Cargo
//! downloaded for this build, each imported into a bare git repository. Alternates the
//! two, reports the median of several rounds, with 1 and 2 worker threads.

use std::time::{Duration, Instant};

use git2::Oid;

use codelupe_processor::decontaminate::setup_dir;
use codelupe_processor::metrics::ProcessorMetrics;
use codelupe_processor::{parse, select, Processor, ProcessorOptions};
use codelupe_runtime::language::Kept;
use codelupe_runtime::records::RepoClone;
use codelupe_testkit::bench::{median, CRATES, ROUNDS};
use codelupe_testkit::{import_tree, registry_crates, unstored_clone_record};

/// A crate as a bare repository, with the record of its commit.
fn import(crate_dir: &std::path::Path, store: &std::path::Path, work: &std::path::Path) -> Bare {
    let name = crate_dir.file_name().unwrap().to_string_lossy().to_string();
    let bare = store.join(format!("{name}.git"));
    let commit_id = import_tree(crate_dir, &bare, work);
    (
        unstored_clone_record(&format!("crates/{name}"), &commit_id),
        git2::Repository::open_bare(&bare).unwrap(),
    )
}

/// A clone's bare repository with its record.
type Bare = (RepoClone, git2::Repository);

/// Every blob the path rules keep: its path, its language by path, its id.
fn kept_blobs((clone, repo): &Bare, kept: &Kept) -> Vec<(String, Option<&'static str>, Oid)> {
    let tree = repo
        .find_commit(Oid::from_str(&clone.commit_id).unwrap())
        .unwrap()
        .tree()
        .unwrap();
    let mut files = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            let path = format!("{dir}{}", entry.name().unwrap_or_default());
            if let select::PathVerdict::Keep(language) = select::by_path(&path, kept) {
                files.push((path, language, entry.id()));
            }
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    files
}

/// Every blob the path rules keep, with its path, read.
fn read_kept(clone: &Bare, kept: &Kept) -> Vec<(String, String)> {
    let blobs = kept_blobs(clone, kept).into_iter();
    blobs
        .map(|(path, _, id)| {
            let blob = clone.1.find_blob(id).unwrap();
            (path, String::from_utf8_lossy(blob.content()).into_owned())
        })
        .collect()
}

/// The bare loop: read every blob the path rules keep, parse those with a grammar.
fn bare_parse(clone: &Bare, kept: &Kept) -> usize {
    let mut parsed = 0;
    for (_, language, id) in kept_blobs(clone, kept) {
        let Some(language) = language else { continue };
        let blob = clone.1.find_blob(id).unwrap();
        if let Ok(text) = std::str::from_utf8(blob.content()) {
            if parse::parse_stats(language, text, Duration::from_secs(5)).is_some() {
                parsed += 1;
            }
        }
    }
    parsed
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (store, work) = (dir.path().join("store"), dir.path().join("work"));
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let clones: Vec<Bare> = registry_crates(CRATES)
        .iter()
        .map(|c| import(c, &store, &work))
        .collect();
    // What curation costs: license detection, redaction, and decontamination with
    // HumanEval when setup/benchmarks.sh fetched it, against none of them.
    let human_eval = Some(setup_dir().join("HumanEval.jsonl.gz")).filter(|p| p.exists());
    let processor = |workers, curated: bool| {
        let metrics = ProcessorMetrics::register(&prometheus::Registry::new()).unwrap();
        let mut options = ProcessorOptions {
            store: store.display().to_string(),
            work_dir: work.clone(),
            workers: std::num::NonZeroUsize::new(workers).unwrap(),
            redact: curated,
            ..Default::default()
        };
        options.licenses.enabled = curated;
        if curated {
            options.decontamination.benchmarks = human_eval.iter().cloned().collect();
        }
        Processor::new(options, metrics).unwrap()
    };
    let (one, two) = (processor(1, false), processor(2, false));
    let kept = Kept::default();
    let files: usize = clones.iter().map(|c| bare_parse(c, &kept)).sum();
    let examined: usize = clones
        .iter()
        .map(|c| one.examine(&c.1, &c.0).unwrap().verdicts.len())
        .sum();
    let (mut bare, mut stage1, mut stage2) = (Vec::new(), Vec::new(), Vec::new());
    let mut with_curation = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        clones.iter().for_each(|c| {
            bare_parse(c, &kept);
        });
        bare.push(t.elapsed());
        let t = Instant::now();
        clones.iter().for_each(|c| {
            one.examine(&c.1, &c.0).unwrap();
        });
        stage1.push(t.elapsed());
        let t = Instant::now();
        clones.iter().for_each(|c| {
            two.examine(&c.1, &c.0).unwrap();
        });
        stage2.push(t.elapsed());
        // A new processor each round: license matches are kept by blob id, and a
        // corpus seen again would find all of them kept.
        let curated = processor(1, true);
        let t = Instant::now();
        clones.iter().for_each(|c| {
            curated.examine(&c.1, &c.0).unwrap();
        });
        with_curation.push(t.elapsed());
    }
    let (b, s1, s2) = (median(bare), median(stage1), median(stage2));
    let rate = |d: Duration| files as f64 / d.as_secs_f64();
    println!("corpus: {} crates, {examined} files examined, {files} parseable files (the rate's numerator)", clones.len());
    println!("bare read + parse, 1 thread:   {:>8.0} files/s", rate(b));
    println!("stage transform, 1 worker:     {:>8.0} files/s  = {:.2}x the bare parse per core (goal >= 0.7x), {:.2} s a corpus", rate(s1), b.as_secs_f64() / s1.as_secs_f64(), s1.as_secs_f64());
    println!(
        "stage transform, 2 workers:    {:>8.0} files/s  = {:.2}x one worker",
        rate(s2),
        s1.as_secs_f64() / s2.as_secs_f64()
    );
    // What Linguist's strategies (modeline, name, shebang, extension, heuristics) cost
    // beside the whole transform, on the same files.
    let read: Vec<(String, String)> = clones.iter().flat_map(|c| read_kept(c, &kept)).collect();
    let detection = median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                for (path, text) in &read {
                    std::hint::black_box(select::by_content(path, text, &kept).ok());
                }
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "language detection alone over the {} files read: {:.0} ms = {:.1}% of the 1-worker transform",
        read.len(),
        detection.as_secs_f64() * 1e3,
        100.0 * detection.as_secs_f64() / s1.as_secs_f64()
    );
    let c = median(with_curation);
    let what = if human_eval.is_some() {
        "license detection, redaction and HumanEval decontamination"
    } else {
        "license detection and redaction (no HumanEval: source setup/benchmarks.sh)"
    };
    println!(
        "stage transform, 1 worker, {what} on: {:>8.0} files/s = {:.2}x off (goal >= 0.8x)",
        rate(c),
        s1.as_secs_f64() / c.as_secs_f64()
    );
}
