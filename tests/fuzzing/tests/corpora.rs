//! The regression pass: every input kept for a fuzz target (its seed corpus under
//! `fuzz/corpus/<target>/` and the inputs that once crashed it under
//! `fuzz/regressions/<target>/`) runs through the target's body once.

use std::path::{Path, PathBuf};

use codelupe_fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_kept_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut failures = Vec::new();
    for (target, body) in TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(target));
        assert!(!corpus.is_empty(), "{target} has no seed corpus");
        for input in corpus
            .iter()
            .chain(&inputs(&fuzz.join("regressions").join(target)))
        {
            let data = std::fs::read(input).unwrap();
            if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{target} {}: {message}", input.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
