//! Redaction on real code: the source files of the local cargo registry through the
//! processor's redaction. Reports how many files a placeholder touches, by kind, with a
//! sample (the figures in docs/src/stages/processor.md); asserts that every redacted file that parsed
//! without an error node still does.

use std::collections::BTreeMap;
use std::time::Duration;

use codelupe_processor::parse::parse_stats;
use codelupe_processor::redact::redact;
use codelupe_processor::select::{by_path, PathVerdict};
use codelupe_runtime::labels::LabelSet;
use codelupe_runtime::language::Kept;
use codelupe_testkit::bench::CRATES;
use codelupe_testkit::{code_files, registry_crates};

/// The share of error nodes, when the file parses in its language.
fn error_share(language: &'static str, text: &str) -> Option<f64> {
    match parse_stats(language, text, Duration::from_secs(5))? {
        Ok(parsed) => Some(parsed.stats.error_node_share),
        Err(_) => None,
    }
}

#[test]
fn real_files_are_seldom_touched_and_redacted_files_still_parse() {
    let files = code_files(&registry_crates(CRATES), |p| {
        matches!(
            by_path(&p.to_string_lossy(), &Kept::default()),
            PathVerdict::Keep(Some(_))
        )
    });
    assert!(files.len() >= 1_000, "{} files", files.len());
    let mut touched = Vec::new();
    let mut by_kind: BTreeMap<&str, u32> = BTreeMap::new();
    let mut broken = Vec::new();
    for file in &files {
        let PathVerdict::Keep(Some(language)) = by_path(&file.path, &Kept::default()) else {
            continue;
        };
        let Some(redacted) = redact(&file.content) else {
            continue;
        };
        for (kind, n) in &redacted.counts {
            *by_kind.entry(kind.label()).or_default() += n;
        }
        if error_share(language, &file.content) == Some(0.0)
            && error_share(language, &redacted.text) != Some(0.0)
        {
            broken.push(file.path.clone());
        }
        // A line holding a placeholder, as the record carries it (never the original).
        let line = redacted
            .text
            .lines()
            .find(|l| {
                l.contains("<EMAIL>")
                    || l.contains("<IP_ADDRESS>")
                    || l.contains("<KEY>")
                    || l.contains("<PASSWORD>")
            })
            .unwrap_or_default()
            .trim()
            .chars()
            .take(100)
            .collect::<String>();
        touched.push(format!("{} | {line}", file.path));
    }
    eprintln!(
        "redaction: {} of {} registry files touched ({:.1} per 1,000), placeholders by kind {by_kind:?}",
        touched.len(),
        files.len(),
        touched.len() as f64 * 1000.0 / files.len() as f64
    );
    for line in touched.iter().take(25) {
        eprintln!("  {line}");
    }
    assert!(broken.is_empty(), "redaction broke the parse of {broken:?}");
}
