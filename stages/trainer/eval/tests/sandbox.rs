//! The evaluation harness against the real HumanEval (setup/benchmarks.sh fetches it):
//! canonical solutions all pass, empty and wrong ones all fail, and programs that
//! loop, allocate, fork, write outside their folder or open a socket are contained and
//! counted as failures.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use codelupe_eval::sandbox::{default_interpreter, Isolation, Limits, Sandbox, Verdict};
use codelupe_eval::{execute, read_completions, Benchmark, Problem, Report};

fn problems() -> Vec<Problem> {
    let path = Benchmark::HumanEval.setup_file();
    assert!(
        path.exists(),
        "{} is missing: run `source setup/benchmarks.sh` (tests/run does)",
        path.display()
    );
    Benchmark::HumanEval.load(&path).unwrap()
}

fn sandbox(wall: Duration) -> Sandbox {
    let limits = Limits {
        wall,
        ..Limits::default()
    };
    Sandbox::new(&default_interpreter(), limits).unwrap()
}

/// Runs `program`, which must fail saying `why` on its stderr.
fn fails_with(sandbox: &Sandbox, program: &str, why: &str) {
    let outcome = sandbox.run(program).unwrap();
    assert_eq!(outcome.verdict, Verdict::Failed, "{}", outcome.ending);
    assert!(outcome.stderr_tail.contains(why), "{}", outcome.stderr_tail);
}

/// Whether this process may isolate fully (root); the containment tests that need a
/// user id and namespaces say so and stop otherwise.
fn fully_isolated(sandbox: &Sandbox) -> bool {
    if *sandbox.isolation() != Isolation::Full {
        eprintln!("skipped: the sandbox is {}", sandbox.isolation());
        return false;
    }
    true
}

/// Every completion run, two at a time, with no progress lines.
fn score(problems: &[Problem], completions: &[Vec<String>], sandbox: &Sandbox) -> Report {
    execute(
        Benchmark::HumanEval,
        problems,
        completions,
        sandbox,
        2,
        &|_, _, _| {},
    )
    .unwrap()
}

#[test]
fn canonical_solutions_pass_all_164_and_empty_or_wrong_ones_none() {
    let problems = problems();
    assert_eq!(problems.len(), 164);
    let sandbox = sandbox(Duration::from_secs(20));
    let canonical: Vec<Vec<String>> = problems
        .iter()
        .map(|p| vec![p.canonical_solution.clone()])
        .collect();
    let report = score(&problems, &canonical, &sandbox);
    let failed: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.passed != 1)
        .map(|r| (&r.task_id, &r.samples[0].ending))
        .collect();
    assert!(failed.is_empty(), "canonical solutions failed: {failed:?}");
    assert_eq!(report.pass_at_k["1"], 1.0);
    eprintln!("canonical: {} ({})", report.headline(), report.isolation);

    // Empty completions leave a function with no body; wrong ones return nothing.
    for wrong in ["", "    return None\n", "    pass\n"] {
        let completions: Vec<Vec<String>> = problems.iter().map(|_| vec![wrong.into()]).collect();
        let report = score(&problems, &completions, &sandbox);
        assert_eq!(
            report.pass_at_k["1"],
            0.0,
            "{wrong:?}: {}",
            report.headline()
        );
    }
}

#[test]
fn pass_at_k_counts_samples_per_problem() {
    let problems: Vec<Problem> = problems().into_iter().take(3).collect();
    let sandbox = sandbox(Duration::from_secs(20));
    // Problem 0: 2 of 4 right, problem 1: 4 of 4, problem 2: none.
    let completions: Vec<Vec<String>> = problems
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (0..4)
                .map(|s| match (i, s) {
                    (0, 0 | 1) | (1, _) => p.canonical_solution.clone(),
                    _ => "    return None\n".into(),
                })
                .collect()
        })
        .collect();
    let report = score(&problems, &completions, &sandbox);
    assert_eq!(report.samples_per_problem, 4);
    let expected = (0.5 + 1.0 + 0.0) / 3.0;
    assert!(
        (report.pass_at_k["1"] - expected).abs() < 1e-9,
        "{:?}",
        report.pass_at_k
    );
    assert!(!report.pass_at_k.contains_key("10"));
    assert_eq!(report.verdicts["passed"], 6);
    assert_eq!(report.verdicts["failed"], 6);
}

#[test]
fn a_completions_file_is_read_in_problem_order_and_gaps_are_named() {
    let problems: Vec<Problem> = problems().into_iter().take(2).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.jsonl");
    let line = |p: &Problem, c: &str| {
        serde_json::json!({"task_id": p.task_id, "completion": c}).to_string()
    };
    std::fs::write(
        &path,
        [line(&problems[1], "b"), line(&problems[0], "a")].join("\n"),
    )
    .unwrap();
    let read = read_completions(&path, &problems).unwrap();
    assert_eq!(read, [vec!["a".to_string()], vec!["b".to_string()]]);
    std::fs::write(&path, line(&problems[0], "a")).unwrap();
    let err = read_completions(&path, &problems).unwrap_err().to_string();
    assert!(err.contains("no completion for HumanEval/1"), "{err}");
}

#[test]
fn a_program_that_loops_forever_is_killed_at_the_deadline() {
    let sandbox = sandbox(Duration::from_secs(2));
    let started = Instant::now();
    let outcome = sandbox.run("while True:\n    pass\n").unwrap();
    assert_eq!(outcome.verdict, Verdict::TimedOut, "{}", outcome.ending);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // Sleeping uses no CPU: only the wall clock ends it.
    let outcome = sandbox.run("import time\ntime.sleep(60)\n").unwrap();
    assert_eq!(outcome.verdict, Verdict::TimedOut, "{}", outcome.ending);
}

#[test]
fn a_program_that_allocates_without_bound_fails() {
    let sandbox = sandbox(Duration::from_secs(20));
    let unbounded = "x = []\nwhile True:\n    x.append(bytearray(10 ** 7))\n";
    fails_with(&sandbox, unbounded, "MemoryError");
    // A file past the size limit ends the writer too.
    let outcome = sandbox
        .run("with open('big', 'wb') as f:\n    f.write(b'x' * (64 << 20))\n")
        .unwrap();
    assert_eq!(outcome.verdict, Verdict::Failed, "{}", outcome.ending);
}

/// Live (non-zombie) processes of a slot's user id.
fn live_processes(uid: u32) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
        })
        .count()
}

#[test]
fn a_fork_bomb_and_a_daemon_it_leaves_are_contained() {
    let sandbox = sandbox(Duration::from_secs(3));
    if !fully_isolated(&sandbox) {
        return;
    }
    let started = Instant::now();
    let bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let outcome = sandbox.run(bomb).unwrap();
    assert_ne!(outcome.verdict, Verdict::Passed);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        live_processes(outcome.uid.unwrap()),
        0,
        "the bomb's processes outlived it"
    );
    // A program that passes but leaves a daemon in a session of its own.
    let daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n";
    let outcome = sandbox.run(daemon).unwrap();
    assert_eq!(outcome.verdict, Verdict::Passed, "{}", outcome.stderr_tail);
    assert_eq!(
        live_processes(outcome.uid.unwrap()),
        0,
        "the daemon outlived its program"
    );
}

#[test]
fn a_program_cannot_write_outside_its_folder() {
    let sandbox = sandbox(Duration::from_secs(10));
    if !fully_isolated(&sandbox) {
        return;
    }
    // A folder anyone may write to: only the read-only mount stops the program.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let targets: Vec<PathBuf> = vec![
        open.path().join("escaped"),
        std::env::temp_dir().join(format!("codelupe-escape-{}", std::process::id())),
    ];
    for target in &targets {
        let program = format!(
            "open({:?}, 'w').write('out')\n",
            target.display().to_string()
        );
        fails_with(&sandbox, &program, "Read-only file system");
        assert!(!target.exists(), "{} was written", target.display());
    }
    // Its own folder is writable.
    let outcome = sandbox
        .run("open('mine', 'w').write('ok')\nassert open('mine').read() == 'ok'\n")
        .unwrap();
    assert_eq!(outcome.verdict, Verdict::Passed, "{}", outcome.stderr_tail);
}

#[test]
fn a_program_cannot_open_a_socket_to_the_machine() {
    let sandbox = sandbox(Duration::from_secs(10));
    if !fully_isolated(&sandbox) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n\
         s.sendall(b'escaped')\n"
    );
    let outcome = sandbox.run(&program).unwrap();
    assert_eq!(outcome.verdict, Verdict::Failed, "{}", outcome.ending);
    let mut accepted = String::new();
    if let Ok((mut stream, _)) = listener.accept() {
        let _ = stream.read_to_string(&mut accepted);
        panic!("the sandboxed program connected and sent {accepted:?}");
    }
    // No name resolution or outside address either.
    let outside = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)\n";
    fails_with(&sandbox, outside, "unreachable");
}
