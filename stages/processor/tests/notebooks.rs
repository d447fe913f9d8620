//! Jupyter notebooks as scripts: the real notebooks of jupytext 1.16.4's own tests (55
//! in 33 kernels, fetched by setup/notebooks.sh, never committed) become scripts of
//! their kernel's language, every Python one read by Python's own parser, none holding
//! an output; a kernel GitHub Linguist does not know is named, never guessed; the
//! processor keeps a notebook as its script and skips a malformed one with a reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod support;

use codelupe_processor::metrics::Skip;
use codelupe_processor::notebook::{to_script, Malformed, NOTEBOOK};
use codelupe_processor::{Processor, ProcessorOptions, Verdict};
use support::processor;

/// The kernels each folder's notebooks are written for, as GitHub Linguist names
/// them. Every other folder's kernel is not converted: Coconut, Maxima and SoS are no
/// Linguist language, and OCaml, SAS and Wolfram Language have no line comment.
const KNOWN: &[(&str, &str)] = &[
    ("ipynb_R", "R"),
    ("ipynb_bash", "Shell"),
    ("ipynb_clojure", "Clojure"),
    ("ipynb_cpp", "C++"),
    ("ipynb_cs", "C#"),
    ("ipynb_fs", "F#"),
    ("ipynb_gnuplot", "Gnuplot"),
    ("ipynb_go", "Go"),
    ("ipynb_groovy", "Groovy"),
    ("ipynb_haskell", "Haskell"),
    ("ipynb_idl", "IDL"),
    ("ipynb_java", "Java"),
    ("ipynb_js", "JavaScript"),
    ("ipynb_julia", "Julia"),
    ("ipynb_lua", "Lua"),
    ("ipynb_m", "MATLAB"),
    ("ipynb_ps1", "PowerShell"),
    ("ipynb_py", "Python"),
    ("ipynb_q", "q"),
    ("ipynb_robot", "RobotFramework"),
    ("ipynb_rust", "Rust"),
    ("ipynb_sage", "Sage"),
    ("ipynb_scala", "Scala"),
    ("ipynb_scheme", "Scheme"),
    ("ipynb_stata", "Stata"),
    ("ipynb_tcl", "Tcl"),
    ("ipynb_ts", "TypeScript"),
    ("ipynb_xonsh", "Xonsh"),
];

/// Notebooks of markdown and raw cells only.
const WITHOUT_CODE: &[&str] = &[
    "Line_breaks_in_LateX_305.ipynb",
    "The flavors of raw cells.ipynb",
    "notebook_with_complex_metadata.ipynb",
];

/// Every notebook under the fetched folder: (kernel folder, path), sorted.
fn notebooks() -> Vec<(String, PathBuf)> {
    let dir = std::env::var("NOTEBOOKS_DIR")
        .expect("NOTEBOOKS_DIR: source setup/notebooks.sh first (tests/run does)");
    let mut found = Vec::new();
    for folder in std::fs::read_dir(&dir).unwrap().flatten() {
        let kernel = folder.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(folder.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push((kernel.clone(), file.path()));
        }
    }
    found.sort();
    found
}

/// Which scripts Python's parser refuses, with its error.
fn python_refuses(scripts: &[(String, String)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    for (i, (_, text)) in scripts.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.py")), text).unwrap();
    }
    let refused = codelupe_testkit::stdout_of(
        std::process::Command::new("python3")
            .args(["-c", "import ast, sys\nfor f in sys.argv[1:]:\n    try:\n        ast.parse(open(f).read())\n    except SyntaxError as e:\n        print(f, e)"])
            .args((0..scripts.len()).map(|i| dir.path().join(format!("{i}.py")))),
    );
    refused
        .lines()
        .map(|l| {
            let (file, error) = l.split_once(' ').unwrap_or((l, ""));
            let i: usize = Path::new(file)
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            format!("{}: {error}", scripts[i].0)
        })
        .collect()
}

#[test]
fn real_notebooks_become_scripts_of_their_kernels_language() {
    let known: BTreeMap<&str, &str> = KNOWN.iter().copied().collect();
    let (mut python, mut by_language) = (Vec::new(), BTreeMap::<String, usize>::new());
    let all = notebooks();
    assert!(all.len() >= 55, "{} notebooks fetched", all.len());
    for (kernel, path) in &all {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let converted = to_script(&text);
        *by_language
            .entry(match &converted {
                Ok(script) => script.language.to_string(),
                Err(e) => format!("({e})"),
            })
            .or_default() += 1;
        match (known.get(kernel.as_str()), converted) {
            (Some(_), Err(Malformed::NoCode)) if WITHOUT_CODE.contains(&name.as_str()) => {}
            (Some(&language), Ok(script)) => {
                assert_eq!(script.language, language, "{kernel}/{name}");
                // A PNG's base64 (plots), an output's own key: outputs are dropped.
                for output in ["iVBORw0KGgo", "\"outputs\"", "execution_count"] {
                    assert!(!script.text.contains(output), "{kernel}/{name}: {output}");
                }
                if language == "Python" {
                    python.push((name, script.text));
                }
            }
            (None, Err(Malformed::Language(_))) => {}
            (_, other) => panic!("{kernel}/{name}: {other:?}"),
        }
    }
    println!("notebooks by script language: {by_language:?}");
    assert!(python.len() >= 15, "{} Python scripts", python.len());
    assert_eq!(python_refuses(&python), Vec::<String>::new());
}

fn verdict(processor: &Processor, text: &str) -> Verdict {
    let clone = codelupe_testkit::unstored_clone_record("fixture/notebooks", &"0".repeat(40));
    processor.examine_file(
        &clone,
        "analysis/report.ipynb",
        Some(NOTEBOOK),
        text.as_bytes(),
    )
}

fn skipped(verdict: Verdict) -> Skip {
    match verdict {
        Verdict::Skip(reason) => reason,
        Verdict::Keep(file) => panic!("kept: {}", file.content),
    }
}

#[test]
fn the_processor_keeps_a_notebook_as_its_script_and_names_why_it_skips_one() {
    let (processor, _dir) = processor(ProcessorOptions {
        notebook_max_bytes: 64 * 1024,
        ..Default::default()
    });
    let dir = std::env::var("NOTEBOOKS_DIR").expect("NOTEBOOKS_DIR");
    let read = |path: &str| std::fs::read_to_string(Path::new(&dir).join(path)).unwrap();
    let plots = read("ipynb_py/text_outputs_and_images.ipynb");
    match verdict(&processor, &plots) {
        Verdict::Keep(file) => {
            assert_eq!(file.language, "Python");
            assert_eq!(file.path, "analysis/report.ipynb");
            assert_eq!(file.content, to_script(&plots).unwrap().text);
            assert!(file.content.len() * 5 < plots.len(), "outputs left");
        }
        other => panic!("{other:?}"),
    }
    // Cut short: not JSON any more.
    let cut = &plots[..plots.len() / 2];
    assert_eq!(skipped(verdict(&processor, cut)), Skip::MalformedNotebook);
    let listed = format!("[{plots}]");
    assert_eq!(
        skipped(verdict(&processor, &listed)),
        Skip::MalformedNotebook
    );
    // OCaml has no line comment to keep markdown cells in.
    let ocaml = read("ipynb_ocaml/ocaml_notebook.ipynb");
    assert_eq!(skipped(verdict(&processor, &ocaml)), Skip::UnknownLanguage);
    let raw = read("ipynb_py/The flavors of raw cells.ipynb");
    assert_eq!(skipped(verdict(&processor, &raw)), Skip::TooSmall);
    // Past `notebook_max_bytes` (64 KiB here): a plot's output, before it is read.
    let r_magic = read("ipynb_py/Notebook_with_R_magic.ipynb");
    assert!(r_magic.len() > 64 * 1024);
    assert_eq!(skipped(verdict(&processor, &r_magic)), Skip::TooLarge);
}
