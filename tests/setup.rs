//! The install step and its guard: `setup/deps.sh` is the one list of Debian packages,
//! and `tests/audit/check.sh` fails when the build includes a header from a package
//! that list neither names nor pulls in (a package installed by hand, which a new
//! machine would lack: libcurl's headers were one).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn audit(records: &Path, packages: &str) -> Output {
    Command::new("bash")
        .arg(repo_root().join("tests/audit/check.sh"))
        .env("HEADER_AUDIT_DIR", records)
        .env("HEADER_AUDIT_PACKAGES", packages)
        .output()
        .unwrap()
}

fn record(dir: &Path, name: &str, headers: &[&str]) {
    std::fs::write(
        dir.join(name),
        format!("x.o: x.c {}\n", headers.join(" \\\n ")),
    )
    .unwrap();
}

#[test]
fn audit_passes_headers_of_named_packages_and_their_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    // libc6-dev and libgcc-12-dev come with build-essential (through gcc and libc6-dev).
    record(
        dir.path(),
        "1.d",
        &[
            "/usr/include/stdio.h",
            "/usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h",
        ],
    );
    // Paths no package owns (the build's own, vendored sources) are not the audit's.
    record(dir.path(), "2.d", &["/nonexistent/vendored/curl.h"]);
    let out = audit(dir.path(), "build-essential");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("all installed by setup/deps.sh"),
        "{}",
        text(&out)
    );
}

#[test]
fn audit_names_a_package_the_install_step_does_not_bring() {
    let dir = tempfile::tempdir().unwrap();
    record(dir.path(), "1.d", &["/usr/include/stdio.h"]);
    // perl alone does not bring the C library's headers.
    let out = audit(dir.path(), "perl");
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("libc6-dev (e.g. /usr/include/stdio.h)"),
        "{said}"
    );
}

#[test]
fn audit_refuses_to_pass_when_nothing_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = audit(dir.path(), "build-essential");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no compilation recorded"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_compiler_wrapper_records_the_headers_of_a_compilation() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(repo_root().join("tests/audit/compiler"), bin.join("cc")).unwrap();
    std::fs::write(
        dir.path().join("x.c"),
        "#include <stdio.h>\nint main(void) { return 0; }\n",
    )
    .unwrap();
    let cc = |args: &[&str]| {
        Command::new("bash")
            .arg(bin.join("cc"))
            .args(args)
            .current_dir(dir.path())
            .env("HEADER_AUDIT_DIR", &records)
            .output()
            .unwrap()
    };
    // Options a build passes (cmake's dependency files among them) must not disturb
    // the compilation or the record.
    let out = cc(&[
        "-O2", "-c", "x.c", "-o", "x.o", "-MD", "-MT", "x.o", "-MF", "x.o.d",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("x.o").is_file());
    assert!(
        dir.path().join("x.o.d").is_file(),
        "the build's own depfile"
    );
    let recorded: String = std::fs::read_dir(&records)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(recorded.contains("/usr/include/stdio.h"), "{recorded}");
    // A failing compilation fails as it would without the wrapper.
    std::fs::write(dir.path().join("bad.c"), "#include <no/such/header.h>\n").unwrap();
    let out = cc(&["-c", "bad.c", "-o", "bad.o"]);
    assert!(!out.status.success());
}

#[test]
fn the_test_list_holds_the_run_list() {
    let list = |which: &str| {
        let out = Command::new("bash")
            .arg(repo_root().join("setup/deps.sh"))
            .args(["--list", which])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let (run, test) = (list("run"), list("test"));
    for package in run.lines() {
        assert!(
            test.lines().any(|p| p == package),
            "{package} missing from test"
        );
    }
    assert!(run.lines().any(|p| p == "build-essential"), "{run}");
    assert!(test.lines().any(|p| p == "chromium"), "{test}");
}
