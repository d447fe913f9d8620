//! License detection against ground truth its authors wrote: every crate of the local
//! cargo registry that ships a license file, whose Cargo.toml names its license as an
//! SPDX expression. The licenses detected in the crate's top-level license files must
//! be the licenses the expression names (by family: `-only` and `-or-later` forms are
//! one, exceptions aside) for at least 95% of the crates. Prints the disagreements by
//! kind (the figures in docs/src/stages/processor.md). Then the documented outcomes of the default
//! policy on repositories built here: no license file, GPL-3.0, dual MIT/Apache-2.0.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use codelupe_processor::license::{detect, family, is_license_file, LicenseOptions};
use codelupe_processor::metrics::{ProcessorMetrics, Skip};
use codelupe_processor::{Processor, ProcessorOptions, Verdict};
use codelupe_runtime::labels::LabelSet;
use codelupe_runtime::records::{RepoClone, RepoLicense};
use codelupe_testkit::{all_registry_crates, bare_repo, unstored_clone_record};

/// The licenses a crate's `license` field names (its authors' word).
fn declared(krate: &Path) -> Option<BTreeSet<String>> {
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).ok()?;
    let field = manifest
        .lines()
        .find_map(|l| l.strip_prefix("license = \""))?
        .trim_end_matches('"');
    let expression = spdx::Expression::parse_mode(field, spdx::ParseMode::LAX).ok()?;
    Some(
        expression
            .requirements()
            .filter_map(|r| r.req.license.id())
            .map(|id| family(id.name).to_string())
            .collect(),
    )
}

/// The texts of a crate's top-level license files.
fn license_texts(krate: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(krate)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .filter(|e| is_license_file(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect()
}

fn names(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[test]
fn detected_licenses_agree_with_what_crates_declare() {
    let min_confidence = LicenseOptions::default().min_confidence;
    let (mut compared, mut agreed) = (0, 0);
    let mut detecting = std::time::Duration::ZERO;
    let mut disagreements: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for krate in all_registry_crates() {
        let texts = license_texts(&krate);
        let Some(declared) = declared(&krate) else {
            continue;
        };
        if texts.is_empty() {
            continue;
        }
        compared += 1;
        let started = std::time::Instant::now();
        let detected = detect(texts.iter().map(String::as_str), min_confidence);
        detecting += started.elapsed();
        let kind = if detected.licenses == declared {
            agreed += 1;
            continue;
        } else if detected.licenses.is_empty() {
            "nothing recognised"
        } else if detected.licenses.is_subset(&declared) {
            "a declared license has no file"
        } else if declared.is_subset(&detected.licenses) {
            "a file holds an undeclared license"
        } else {
            "different licenses"
        };
        let name = krate.file_name().unwrap().to_string_lossy();
        disagreements.entry(kind).or_default().push(format!(
            "{name}: declared {} / detected {}",
            names(&declared),
            names(&detected.licenses)
        ));
    }
    let share = agreed as f64 / compared.max(1) as f64;
    println!(
        "{agreed} of {compared} crates with license files agree ({:.1}%)",
        share * 100.0
    );
    println!(
        "detection: {:.1} ms per repository (the matcher optimised, this test's build)",
        detecting.as_secs_f64() * 1000.0 / compared.max(1) as f64
    );
    for (kind, crates) in &disagreements {
        println!("{kind}: {}", crates.len());
        for c in crates.iter().take(8) {
            println!("    {c}");
        }
    }
    assert!(compared >= 200, "only {compared} crates with license files");
    assert!(share >= 0.95, "{agreed} of {compared} agree");
}

/// The SPDX list's text of a license.
fn text_of(id: &str) -> String {
    let (_, text) = spdx::text::LICENSE_TEXTS
        .iter()
        .find(|(name, _)| *name == id)
        .unwrap_or_else(|| panic!("{id} is in the SPDX list"));
    text.replace("<year>", "2024")
        .replace("<copyright holders>", "Acme Corp.")
}

/// Judges a repository holding one source file and `license_files`, with GitHub's
/// `reported` license: the verdict on the source file, and the outcome counted.
fn judge(
    license_files: &[(&str, String)],
    reported: Option<&str>,
) -> (Verdict, BTreeMap<String, u64>) {
    let (verdict, registry) = judged(license_files, reported);
    (verdict, outcomes(&registry))
}

/// [`judge`], with the processor's metrics.
fn judged(
    license_files: &[(&str, String)],
    reported: Option<&str>,
) -> (Verdict, prometheus::Registry) {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("acme/repo.git");
    let source = "//! Geometry helpers.\n\n/// A point in the plane.\npub struct Point { pub x: f64, pub y: f64 }\n\n/// Euclidean distance between two points.\npub fn distance(a: &Point, b: &Point) -> f64 {\n    ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt()\n}\n";
    let mut files = vec![("src/lib.rs", source.as_bytes().to_vec())];
    files.extend(
        license_files
            .iter()
            .map(|(p, t)| (*p, t.as_bytes().to_vec())),
    );
    let commit = bare_repo(&bare, &files, None);
    let registry = prometheus::Registry::new();
    let options = ProcessorOptions {
        store: dir.path().join("store").display().to_string(),
        work_dir: dir.path().join("work"),
        workers: NonZeroUsize::MIN,
        ..ProcessorOptions::default()
    };
    let processor =
        Processor::new(options, ProcessorMetrics::register(&registry).unwrap()).unwrap();
    let clone = RepoClone {
        license_reported: reported.map(str::to_string),
        ..unstored_clone_record("acme/repo", &commit)
    };
    let repo = git2::Repository::open_bare(&bare).unwrap();
    let examined = processor.examine(&repo, &clone).unwrap();
    let (_, verdict) = examined
        .verdicts
        .into_iter()
        .find(|(p, _)| p == "src/lib.rs")
        .unwrap();
    (verdict, registry)
}

/// `processor_repositories_by_license_total` by outcome, the non-zero ones.
fn outcomes(registry: &prometheus::Registry) -> BTreeMap<String, u64> {
    let family = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "processor_repositories_by_license_total")
        .unwrap();
    family
        .get_metric()
        .iter()
        .filter(|m| m.get_counter().get_value() > 0.0)
        .map(|m| {
            (
                m.get_label()[0].value().to_string(),
                m.get_counter().get_value() as u64,
            )
        })
        .collect()
}

fn kept(verdict: Verdict) -> RepoLicense {
    match verdict {
        Verdict::Keep(file) => file.license,
        Verdict::Skip(why) => panic!("skipped as {}", why.label()),
    }
}

#[test]
fn the_default_policy_keeps_dual_licensed_and_unlicensed_code_and_refuses_gpl() {
    let one = |outcome: &str| BTreeMap::from([(outcome.to_string(), 1)]);

    let (verdict, counted) = judge(&[], None);
    let license = kept(verdict);
    assert_eq!((license.detected.len(), license.confidence), (0, None));
    assert_eq!(counted, one("unknown_kept"));

    let dual = [
        ("LICENSE-APACHE", text_of("Apache-2.0")),
        ("LICENSE-MIT", text_of("MIT")),
    ];
    let (verdict, counted) = judge(&dual, Some("NOASSERTION"));
    let license = kept(verdict);
    assert_eq!(license.detected, ["Apache-2.0", "MIT"]);
    assert!(license.confidence.unwrap() >= 0.9, "{license:?}");
    assert_eq!(license.reported.as_deref(), Some("NOASSERTION"));
    assert_eq!(counted, one("allowed"));

    let (verdict, counted) = judge(&[("COPYING", text_of("GPL-3.0-only"))], Some("GPL-3.0"));
    assert_eq!(verdict, Verdict::Skip(Skip::License));
    assert_eq!(counted, one("refused"));

    // Files and GitHub disagree: the files decide under the default, and the record
    // carries both.
    let (verdict, counted) = judge(&[("LICENSE", text_of("MIT"))], Some("GPL-3.0"));
    let license = kept(verdict);
    assert_eq!(
        (license.detected, license.reported.as_deref()),
        (vec!["MIT".to_string()], Some("GPL-3.0"))
    );
    assert_eq!(counted, one("allowed"));
}

#[test]
fn a_tree_full_of_license_files_is_judged_on_the_first_few_by_name() {
    let mit = |holder: &str| text_of("MIT").replace("Acme Corp.", holder);
    // Forty distinct blobs (no cached match helps), a COPYING too big to be a license.
    let mut files: Vec<(String, String)> = (0..40)
        .map(|n| (format!("LICENSE-{n:02}"), mit(&format!("Holder {n}"))))
        .collect();
    files.push(("LICENSE".into(), mit("Acme Corp.")));
    files.push(("COPYING".into(), mit("Big").repeat(300)));
    let files: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    let started = std::time::Instant::now();
    let (verdict, registry) = judged(&files, None);
    eprintln!(
        "42 license files judged in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let license = kept(verdict);
    assert_eq!(license.detected, ["MIT"]);
    let unread = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "processor_license_files_unread_total")
        .map(|f| f.get_metric()[0].get_counter().get_value());
    // Read: LICENSE and LICENSE-00..06 (the default max_files, 8); COPYING is too big.
    assert_eq!(unread, Some(34.0));
}
