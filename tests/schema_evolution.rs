//! Schema evolution: a record written with any released version of its schema
//! (`schemas/earlier/`, every version in git history) is read as today's type by Avro
//! schema resolution, new fields at their defaults; a record of a schema this build does
//! not know is refused as such; and an edit that breaks BACKWARD compatibility is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use apache_avro::Schema as AvroSchema;
use codelupe_runtime::codec::{check_backward, AvroRecord, CodecError, SchemaLineage};
use codelupe_runtime::records::*;
use codelupe_testkit::schemas::{earlier_files, fingerprint, version_number, written_with};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn code_file() -> CodeFile {
    CodeFile {
        content_hash: "ab".repeat(32),
        repo_full_name: "django/django".into(),
        commit_id: "0123456789abcdef0123456789abcdef01234567".into(),
        path: "manage.py".into(),
        language: "Python".into(),
        content: "import os\nimport sys\n# ü\n".into(),
        size_bytes: 25,
        lines: 3,
        quality_score: 71.5,
        quality_components: BTreeMap::from([("syntax".into(), 1.0)]),
        parse_stats: Some(ParseStats {
            error_node_share: 0.0,
            function_count: 1,
            type_count: 0,
            comment_share: 0.3,
            max_depth: 6,
        }),
        redactions: BTreeMap::from([("email".into(), 2)]),
        license: RepoLicense {
            detected: vec!["BSD-3-Clause".into()],
            confidence: Some(0.98),
            reported: Some("BSD-3-Clause".into()),
        },
    }
}

fn repo_clone() -> RepoClone {
    RepoClone {
        full_name: "django/django".into(),
        clone_uri: format!("s3://codelupe/clones/packs/{}.pack", "cd".repeat(32)),
        commit_id: "0123456789abcdef0123456789abcdef01234567".into(),
        default_branch: Some("main".into()),
        size_bytes: 1 << 20,
        file_count: 42,
        lines_by_language: BTreeMap::from([("Python".into(), 1000)]),
        quality_score: 80.0,
        cloned_at_ms: 1_764_000_000_000,
        license_reported: Some("BSD-3-Clause".into()),
        pack_bytes: 310_442,
        pack_sha256: "cd".repeat(32),
        stars: Some(7),
    }
}

/// `today` as each kept version of its schema wrote it, decoded as today's type: it is
/// `expected(version)`.
fn check_earlier_versions<T: AvroRecord + PartialEq + std::fmt::Debug>(
    today: &T,
    releases: usize,
    expected: impl Fn(u32) -> T,
) {
    let files = earlier_files(T::SCHEMA_FILE);
    assert_eq!(
        files.len(),
        releases,
        "{}: earlier releases",
        T::SCHEMA_FILE
    );
    for file in files {
        let old = std::fs::read_to_string(&file).unwrap();
        let decoded = T::decode(&written_with(today, &old))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            decoded,
            expected(version_number(&file)),
            "{}",
            file.display()
        );
    }
}

#[test]
fn every_earlier_code_files_version_decodes_with_the_new_fields_at_their_defaults() {
    let today = code_file();
    check_earlier_versions(&today, 2, |version| {
        let mut expected = today.clone();
        expected.license = RepoLicense::default();
        if version == 1 {
            expected.redactions = BTreeMap::new();
        }
        expected
    });
}

#[test]
fn every_earlier_repo_clones_version_decodes_with_the_new_fields_at_their_defaults() {
    let today = repo_clone();
    check_earlier_versions(&today, 3, |version| {
        let mut expected = today.clone();
        expected.stars = None;
        if version <= 2 {
            expected.pack_bytes = 0;
            expected.pack_sha256 = String::new();
        }
        if version == 1 {
            expected.license_reported = None;
        }
        expected
    });
}

/// Every record type with its lineage, by schema file.
fn lineages() -> Vec<(&'static str, &'static str, &'static SchemaLineage)> {
    fn of<T: AvroRecord>() -> (&'static str, &'static str, &'static SchemaLineage) {
        (T::SCHEMA_FILE, T::SCHEMA_JSON, T::lineage())
    }
    vec![
        of::<RepoUrl>(),
        of::<RepoClone>(),
        of::<CodeFile>(),
        of::<TrainingBatch>(),
        of::<DeadLetter>(),
        of::<CrawlerState>(),
        of::<BatcherSeen>(),
        of::<NeardupProbe>(),
        of::<NeardupGather>(),
        of::<NearDuplicate>(),
        of::<RepoSummary>(),
    ]
}

#[test]
fn each_kept_version_is_compiled_in_and_backward_compatible() {
    let mut seen = BTreeSet::new();
    for (file, json, lineage) in lineages() {
        seen.insert(file.to_string());
        let kept: BTreeSet<[u8; 8]> = earlier_files(file)
            .iter()
            .map(|path| fingerprint(&std::fs::read_to_string(path).unwrap()))
            .collect();
        assert_eq!(
            lineage.earlier_fingerprints(),
            kept,
            "{file}: the versions compiled in are the files in schemas/earlier/"
        );
        assert!(
            !kept.contains(&fingerprint(json)),
            "{file}: today's version is not kept twice"
        );
        for path in earlier_files(file) {
            let old = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = check_backward(&old, json) {
                panic!("{file} cannot read {}: {e}", path.display());
            }
        }
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(schemas_dir())
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter(|name| name.ends_with(".avsc"))
        .collect();
    assert_eq!(seen, on_disk, "every schema file has a record type here");
}

/// What a release changed in git is kept: every version `schemas/<name>.avsc` ever had
/// on this branch is today's or one in `schemas/earlier/<name>/`.
#[test]
fn every_version_in_git_history_is_kept() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8(out.stdout).unwrap())
    };
    if git(&["rev-parse", "--is-shallow-repository"]).as_deref() != Some("false\n") {
        eprintln!("skipped: not a full git checkout, no history to compare with");
        return;
    }
    for (file, json, lineage) in lineages() {
        let path = format!("schemas/{file}");
        let commits = git(&["log", "--format=%H", "--", &path]).unwrap();
        for commit in commits.lines() {
            let Some(text) = git(&["show", &format!("{commit}:{path}")]) else {
                continue;
            };
            let found = fingerprint(&text);
            assert!(
                found == fingerprint(json) || lineage.earlier_fingerprints().contains(&found),
                "{path} as of {commit} is not kept in schemas/earlier/ (copy it there before editing the schema)"
            );
        }
    }
}

#[test]
fn a_record_of_a_schema_this_build_does_not_know_is_refused_as_unknown() {
    // A newer producer (rolling upgrade) added a field with a default.
    let newer = CodeFile::SCHEMA_JSON.replacen(
        "\"fields\": [",
        "\"fields\": [{\"name\": \"stars\", \"type\": \"long\", \"default\": 0},",
        1,
    );
    let mut bytes = code_file().encode().unwrap();
    bytes[2..10].copy_from_slice(&fingerprint(&newer));
    match CodeFile::decode(&bytes) {
        Err(e @ CodecError::UnknownFingerprint { .. }) => {
            assert!(e.to_string().contains("does not know"), "{e}");
        }
        other => panic!("expected an unknown schema, got {other:?}"),
    }
}

/// Three edits a schema registry's BACKWARD rule refuses, each refused here.
#[test]
fn breaking_edits_are_refused() {
    let today = CodeFile::SCHEMA_JSON;
    let broken = [
        (
            "a new field without a default",
            today.replacen(
                "\"fields\": [",
                "\"fields\": [{\"name\": \"stars\", \"type\": \"long\"},",
                1,
            ),
        ),
        (
            "a type change that does not promote (long to int)",
            today.replacen(
                "{\"name\": \"lines\", \"type\": \"long\"}",
                "{\"name\": \"lines\", \"type\": \"int\"}",
                1,
            ),
        ),
        (
            "a union branch removed (null no longer readable)",
            today
                .replacen("\"type\": [\"null\", {", "\"type\": [{", 1)
                .replacen(
                    "}], \"default\": null, \"doc\": \"null when",
                    "}], \"doc\": \"null when",
                    1,
                ),
        ),
    ];
    for (what, edited) in broken {
        assert_ne!(edited, today, "{what}: the edit applies");
        AvroSchema::parse_str(&edited).unwrap_or_else(|e| panic!("{what}: still valid Avro: {e}"));
        assert!(
            check_backward(today, &edited).is_err(),
            "{what} must be refused"
        );
    }
    assert!(check_backward(today, today).is_ok());
}
