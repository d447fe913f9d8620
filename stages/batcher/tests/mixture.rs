//! The batcher's mixture on real files of three languages (Rust, C and shell from the
//! local cargo registry) arriving one language after another, as a crawl of one
//! language's backlog would deliver them: through the shuffle, each language's share of
//! the first 50 batches is within 10 points of its share of the input; in arrival
//! order, the first batches hold the first language alone.

use std::collections::BTreeMap;

use codelupe_batcher::document::{self, DocumentOptions};
use codelupe_batcher::mix::{Packing, Shuffle};
use codelupe_batcher::pack::Packer;
use codelupe_runtime::records::CodeFile;
use codelupe_tokenizer::CodeTokenizer;

const PER_LANGUAGE: usize = 140;
const FIRST_BATCHES: usize = 50;

/// Up to `PER_LANGUAGE` files under 3 KB of each language, grouped by language.
fn files() -> Vec<CodeFile> {
    let of = |roots: Vec<std::path::PathBuf>, extension: &'static str| {
        let files =
            codelupe_testkit::code_files(&roots, |p| p.extension().is_some_and(|e| e == extension));
        let files: Vec<CodeFile> = files
            .into_iter()
            .filter(|f| f.content.len() < 3_000)
            .take(PER_LANGUAGE)
            .collect();
        assert!(files.len() >= 100, "{} .{extension} files", files.len());
        files
    };
    let crates = codelupe_testkit::registry_crates;
    let mut all = of(
        crates(&["regex-syntax-0", "serde_json-1", "syn-2", "tokio-1"]),
        "rs",
    );
    all.extend(of(crates(&["openssl-src-300", "libgit2-sys-0"]), "c"));
    // Named crates, not every crate in the registry: a new dependency's scripts would
    // change the corpus (a machine's registry holds whatever it ever built).
    let scripts = [
        "tikv-jemalloc-sys-0",
        "rdkafka-sys-4",
        "onig_sys-69",
        "libgit2-sys-0",
    ];
    all.extend(of(crates(&scripts), "sh"));
    all
}

/// Tokens of each language in `batches`, as shares of their sum.
fn shares<'a>(
    batches: impl Iterator<Item = &'a codelupe_batcher::pack::Packed<String>>,
) -> BTreeMap<String, f64> {
    let mut tokens: BTreeMap<String, f64> = BTreeMap::new();
    for batch in batches {
        let ends = batch.document_starts.iter().skip(1).map(|&s| s as usize);
        let ends = ends.chain([batch.token_ids.len()]);
        for (((language, _), &start), end) in
            batch.members.iter().zip(&batch.document_starts).zip(ends)
        {
            *tokens.entry(language.clone()).or_default() += (end - start as usize) as f64;
        }
    }
    let total: f64 = tokens.values().sum();
    tokens.values_mut().for_each(|t| *t /= total);
    tokens
}

fn batches(
    files: &[CodeFile],
    tokenizer: &CodeTokenizer,
    held: usize,
) -> Vec<codelupe_batcher::pack::Packed<String>> {
    let mut packing = Packing::new(
        Shuffle::new(held, 0),
        Packer::new(256, 4, tokenizer.end_of_text),
    );
    let mut out = Vec::new();
    for file in files {
        let tokens = document::tokens(tokenizer, file, &DocumentOptions::default()).unwrap();
        out.extend(packing.push(&file.content_hash, file.language.clone(), tokens));
    }
    out.extend(packing.flush());
    out
}

#[test]
fn the_shuffle_mixes_languages_that_arrive_one_after_another() {
    let files = files();
    let tokenizer = CodeTokenizer::train(files.iter().map(|f| f.content.as_str()), 512).unwrap();
    let arrival = batches(&files, &tokenizer, 0);
    let corpus = shares(arrival.iter());
    assert_eq!(corpus.len(), 3, "{corpus:?}");
    let in_order = shares(arrival.iter().take(FIRST_BATCHES));
    assert_eq!(
        in_order.len(),
        1,
        "arrival order: the first batches are one language: {in_order:?}"
    );

    // A buffer spanning the input's runs of one language.
    let shuffled = batches(&files, &tokenizer, files.len());
    // Every document ends once either way: the shuffle loses and adds nothing.
    let ended = |batches: &[codelupe_batcher::pack::Packed<String>]| {
        let mut languages: Vec<&String> = batches
            .iter()
            .flat_map(|b| {
                b.members
                    .iter()
                    .filter(|(_, part)| part.last)
                    .map(|(l, _)| l)
            })
            .collect();
        languages.sort();
        languages.into_iter().cloned().collect::<Vec<_>>()
    };
    assert_eq!(ended(&shuffled), ended(&arrival));
    assert_eq!(ended(&arrival).len(), files.len());
    assert!(
        shuffled.len() >= 2 * FIRST_BATCHES,
        "{} batches",
        shuffled.len()
    );
    let first = shares(shuffled.iter().take(FIRST_BATCHES));
    for (language, share) in &corpus {
        let got = first.get(language).copied().unwrap_or(0.0);
        assert!(
            (got - share).abs() <= 0.10,
            "{language}: {got:.3} of the first {FIRST_BATCHES} batches against {share:.3} of the input"
        );
    }
    eprintln!("shares of the input {corpus:?}; of the first {FIRST_BATCHES} shuffled batches {first:?}; {} batches", shuffled.len());
}
