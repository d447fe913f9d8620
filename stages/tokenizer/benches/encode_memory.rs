//! The memory one long text takes to encode, and the time: `CodeTokenizer::encode`
//! (in pieces) against the `tokenizers` crate encoding the whole text at once, with the
//! same tokenizer (fitted here on crate sources Cargo downloaded), on real code made
//! into texts of 100 KB to 1 MB, and the same code indented as generated bindings are
//! (every line in a block: no newline between two visible characters to cut after).
//! Each measure runs in a process of its own, so what one freed cannot lower another's
//! peak: the peak is VmHWM over VmRSS before encoding.
//!
//!     cargo bench -p codelupe-tokenizer --bench encode_memory

use std::path::Path;
use std::time::Instant;

use codelupe_testkit::bench::{measured_in_child, proc_status_kb};
use codelupe_tokenizer::{sample, CodeTokenizer};

/// The texts measured: kind and size.
const TEXTS: [(Kind, usize); 6] = [
    (Kind::Code, 100_000),
    (Kind::Code, 300_000),
    (Kind::Code, 700_000),
    (Kind::Code, 1_000_000),
    (Kind::Indented, 300_000),
    (Kind::Indented, 700_000),
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Code,
    Indented,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Code => "code",
            Kind::Indented => "indented",
        }
    }
}

/// Source files of the crates Cargo downloaded, as `codelupe tokenizer train` samples
/// a folder.
fn sources() -> Vec<String> {
    sample::from_dirs(&codelupe_testkit::all_registry_crates(), 3_000)
        .unwrap()
        .texts
}

/// `bytes` of real code: whole files, the last one cut at a line; each line indented by
/// four spaces for `Kind::Indented`.
fn text_of(sources: &[String], kind: Kind, bytes: usize) -> String {
    let mut text = String::new();
    for source in sources {
        match kind {
            Kind::Code => text.push_str(source),
            Kind::Indented => source.lines().for_each(|line| {
                text.push_str("    ");
                text.push_str(line);
                text.push('\n');
            }),
        }
        if text.len() >= bytes {
            let cut = text[..bytes].rfind('\n').map_or(bytes, |at| at + 1);
            text.truncate(cut);
            return text;
        }
    }
    panic!("the registry holds less than {bytes} bytes of source");
}

fn status_kb(field: &str) -> u64 {
    proc_status_kb("self", field).unwrap()
}

/// In a child: encodes `bytes` of text one `way`, prints "tokens seconds peak_kb".
fn measure(tokenizer_path: &Path, way: &str, kind: Kind, bytes: usize) {
    let text = text_of(&sources(), kind, bytes);
    let ours = CodeTokenizer::load(tokenizer_path).unwrap();
    let theirs = tokenizers::Tokenizer::from_file(tokenizer_path).unwrap();
    // Warm both (the BPE cache, the allocator) on a small text first.
    let warm = &text[..text[..10_000].rfind('\n').unwrap()];
    ours.encode(warm).unwrap();
    theirs.encode_fast(warm, false).unwrap();
    // Writing 5 to clear_refs sets VmHWM back to VmRSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kb("VmRSS:");
    let started = Instant::now();
    let tokens = match way {
        "pieces" => ours.encode(&text).unwrap().len(),
        _ => theirs
            .encode_fast(text.as_str(), false)
            .unwrap()
            .get_ids()
            .len(),
    };
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{tokens} {seconds} {}",
        status_kb("VmHWM:").saturating_sub(before)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path, way, kind, bytes] = &args[..] {
        if flag == "--measure" {
            let kind = [Kind::Code, Kind::Indented]
                .into_iter()
                .find(|k| k.name() == kind)
                .expect("a kind of text");
            return measure(Path::new(path), way, kind, bytes.parse().unwrap());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    CodeTokenizer::train(sources().iter(), 8192)
        .unwrap()
        .save(&path)
        .unwrap();
    println!("text               tokens  whole: peak MB  bytes/byte  tokens/s   pieces: peak MB  bytes/byte  tokens/s   peak ratio  speed ratio");
    for (kind, bytes) in TEXTS {
        let run = |way: &str| -> (usize, f64, f64) {
            let path = path.to_str().unwrap();
            let f = measured_in_child(&["--measure", path, way, kind.name(), &bytes.to_string()]);
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        };
        // Best of three each, alternating.
        let (mut whole, mut pieces) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            whole.push(run("whole"));
            pieces.push(run("pieces"));
        }
        let best = |runs: &[(usize, f64, f64)]| {
            let tokens = runs[0].0;
            assert!(runs.iter().all(|r| r.0 == tokens));
            let seconds = runs.iter().map(|r| r.1).fold(f64::MAX, f64::min);
            let peak_kb = runs.iter().map(|r| r.2).fold(f64::MAX, f64::min);
            (tokens, seconds, peak_kb)
        };
        let (w, p) = (best(&whole), best(&pieces));
        assert_eq!(w.0, p.0, "the pieces made another number of tokens");
        let mb = |kb: f64| kb / 1024.0;
        println!(
            "{:<8} {:>4} KB  {:>7}  {:>14.1}  {:>10.0}  {:>8.0}   {:>15.1}  {:>10.0}  {:>8.0}   {:>9.3}x  {:>10.2}x",
            kind.name(),
            bytes / 1000,
            w.0,
            mb(w.2),
            w.2 * 1024.0 / bytes as f64,
            w.0 as f64 / w.1,
            mb(p.2),
            p.2 * 1024.0 / bytes as f64,
            p.0 as f64 / p.1,
            p.2 / w.2,
            w.1 / p.1,
        );
    }
}
