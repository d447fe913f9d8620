//! The syntax score against macros: real C and C++ sources vendored by crates in the
//! local cargo registry (libgit2, librdkafka, zstd, OpenSSL, tree-sitter's own C), where
//! unexpanded macros (`GIT_EXTERN(int)`, `ZSTDLIB_API`, `DECLARE_ASN1_ITEM(…)`) leave
//! parts of a file inside tree-sitter ERROR nodes. Every header the text filters pass is
//! kept with a non-zero syntax component but those named in `STILL_CONDEMNED`, and real
//! files with broken lines still lose their syntax score.

use std::path::{Path, PathBuf};
use std::time::Duration;

use codelupe_processor::{parse, score, select, text};
use codelupe_runtime::language::Kept;

/// Vendored C and C++ of these crates (newest version of each in the registry).
const LIBRARIES: &[&str] = &[
    "libgit2-sys-0",
    "rdkafka-sys-4",
    "zstd-sys-2",
    "openssl-src-300",
    "tree-sitter-0",
];
const MIN_QUALITY: f64 = 30.0;

struct Scored {
    path: PathBuf,
    syntax: f64,
    quality: f64,
}

/// Every C or C++ file of `LIBRARIES` the text filters pass, scored as the processor
/// scores it.
fn scored_in(roots: &[PathBuf]) -> Vec<Scored> {
    let files = codelupe_testkit::code_files(roots, |p| {
        p.extension()
            .is_some_and(|e| ["c", "h", "cc", "cpp", "hpp"].contains(&&*e.to_string_lossy()))
    });
    let mut out = Vec::new();
    for file in files {
        // A `.h` is C, C++ or Objective-C by its content, as the processor reads it, and
        // a shebang overrides the extension (mklove's configure.cc is bash).
        let Ok(language @ ("C" | "C++")) =
            select::by_content(&file.path, &file.content, &Kept::default())
        else {
            continue;
        };
        let stats = text::stats(&file.content);
        if file.content.len() > 1 << 20
            || text::reject(&file.path, &file.content, language, &stats).is_some()
        {
            continue;
        }
        let parsed = parse::parse_stats(language, &file.content, Duration::from_secs(60))
            .expect("C and C++ have grammars")
            .expect("parsed within a minute");
        let components = score::components(&stats, Some(&parsed));
        out.push(Scored {
            path: Path::new(&file.repo_full_name).join(&file.path),
            syntax: components["syntax"],
            quality: score::score(&components),
        });
    }
    out
}

fn scored() -> Vec<Scored> {
    let roots = codelupe_testkit::registry_crates(LIBRARIES);
    assert_eq!(roots.len(), LIBRARIES.len(), "{roots:?}");
    scored_in(&roots)
}

/// Scores every C and C++ file under the folder `SCORE_DIR` names.
#[test]
#[ignore]
fn scores_of_a_folder() {
    let dir = PathBuf::from(std::env::var("SCORE_DIR").expect("SCORE_DIR"));
    for s in scored_in(&[dir]) {
        println!(
            "{} syntax {:.2} quality {:.1}",
            s.path.display(),
            s.syntax,
            s.quality
        );
    }
}

/// Headers still condemned, and why: the blanking cannot stand in for a preprocessor.
/// (librdkafka's `rdkafkacpp.h` and `nanopb/pb.h` left the list when a `.h` became C++
/// by Linguist's heuristics: they are C++ and parse as C++.)
const STILL_CONDEMNED: &[(&str, &str)] = &[
    (
        "librdkafka/src/queue.h",
        "BSD queue macros that expand to statements",
    ),
    (
        "librdkafka/src/rdwin32.h",
        "both branches of platform conditionals",
    ),
    (
        "openssl/crypto/s390x_arch.h",
        "both branches of platform conditionals",
    ),
    (
        "openssl/crypto/x509/x509_acert.h",
        "macros that expand to declarations",
    ),
    (
        "openssl/include/crypto/modes.h",
        "both branches of platform conditionals",
    ),
    (
        "openssl/include/internal/qlog_events.h",
        "a table of macro invocations",
    ),
];

#[test]
fn macro_heavy_c_and_cpp_keeps_a_syntax_score() {
    let scored = scored();
    let is_header = |s: &&Scored| s.path.extension().is_some_and(|e| e == "h" || e == "hpp");
    let headers: Vec<&Scored> = scored.iter().filter(is_header).collect();
    let zero = scored.iter().filter(|s| s.syntax == 0.0).count();
    let dropped = scored.iter().filter(|s| s.quality < MIN_QUALITY).count();
    eprintln!(
        "{} files ({} headers): syntax 0 in {zero}, below {MIN_QUALITY} in {dropped}",
        scored.len(),
        headers.len(),
    );
    assert!(headers.len() >= 1_000, "{} headers", headers.len());
    // Before macros were blanked: 30 headers condemned, 68 files at syntax 0, 38
    // dropped.
    assert!(
        zero <= 40 && dropped <= 20,
        "syntax 0 in {zero}, dropped {dropped}"
    );
    let condemned_now = |s: &&&Scored| s.syntax == 0.0 || s.quality < MIN_QUALITY;
    // The list stays true: a header that is kept now leaves it.
    for (path, why) in STILL_CONDEMNED {
        assert!(
            headers
                .iter()
                .filter(condemned_now)
                .any(|s| s.path.ends_with(path)),
            "{path} ({why}) is no longer condemned: take it off the list"
        );
    }
    let condemned: Vec<String> = headers
        .iter()
        .filter(condemned_now)
        .filter(|s| {
            !STILL_CONDEMNED
                .iter()
                .any(|(path, _)| s.path.ends_with(path))
        })
        .map(|s| {
            format!(
                "{} (syntax {:.2}, quality {:.1})",
                s.path.display(),
                s.syntax,
                s.quality
            )
        })
        .collect();
    assert!(condemned.is_empty(), "headers condemned: {condemned:#?}");
}

/// Real files with every fifth line cut in half: blanking macros must not excuse them.
#[test]
fn broken_code_still_loses_its_syntax_score() {
    let roots = codelupe_testkit::registry_crates(&["libgit2-sys-0", "zstd-sys-2"]);
    let files = codelupe_testkit::code_files(&roots, |p| p.extension().is_some_and(|e| e == "c"));
    let files: Vec<_> = files
        .iter()
        .filter(|f| (2_000..100_000).contains(&f.content.len()))
        .take(200)
        .collect();
    assert_eq!(files.len(), 200);
    let mut low = 0;
    for file in &files {
        let broken: Vec<String> = (file.content.lines().enumerate())
            .map(|(i, line)| match i % 5 {
                2 => line.chars().take(line.chars().count() / 2).collect(),
                _ => line.to_string(),
            })
            .collect();
        let broken = broken.join("\n");
        let parsed = parse::parse_stats("C", &broken, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        let syntax = score::components(&text::stats(&broken), Some(&parsed))["syntax"];
        low += usize::from(syntax < 0.5);
    }
    eprintln!(
        "{low} of {} broken files with syntax below 0.5",
        files.len()
    );
    assert!(
        low >= 180,
        "{low} of {} broken files scored low",
        files.len()
    );
}
