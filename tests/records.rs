//! Each Rust record type against its `.avsc` file: values round-trip, and the schema
//! identity written into every value is the file's own fingerprint.

use std::collections::BTreeMap;

use codelupe_runtime::codec::{AvroRecord, CodecError};
use codelupe_runtime::records::*;

/// The fingerprint computed from the file on disk, independently of the embedded copy.
fn file_fingerprint(file: &str) -> [u8; 8] {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let schema: serde_avro_fast::Schema = text.parse().unwrap();
    *schema.rabin_fingerprint()
}

fn check<T: AvroRecord + PartialEq + std::fmt::Debug>(value: T) {
    let bytes = value.encode().unwrap();
    assert_eq!(
        &bytes[..2],
        &[0xC3, 0x01],
        "{}: single-object marker",
        T::SCHEMA_FILE
    );
    assert_eq!(
        bytes[2..10],
        file_fingerprint(T::SCHEMA_FILE),
        "{}: fingerprint",
        T::SCHEMA_FILE
    );
    assert_eq!(
        T::decode(&bytes).unwrap(),
        value,
        "{}: round trip",
        T::SCHEMA_FILE
    );
}

#[test]
fn repo_url_matches_its_schema() {
    check(RepoUrl {
        full_name: "rust-lang/rust".into(),
        clone_url: "https://github.com/rust-lang/rust.git".into(),
        default_branch: Some("master".into()),
        language: Some("Rust".into()),
        stars: 100_000,
        forks: 12_000,
        size_kb: 900_000,
        topics: vec!["compiler".into(), "language".into()],
        license_spdx: Some("Apache-2.0".into()),
        archived: false,
        fork: false,
        created_at_ms: Some(1_274_000_000_000),
        pushed_at_ms: None,
        description: Some("Empowering everyone".into()),
        source: "github".into(),
        discovered_at_ms: now_ms(),
    });
}

#[test]
fn repo_clone_matches_its_schema() {
    check(RepoClone {
        full_name: "a/b".into(),
        clone_uri: format!("s3://codelupe/clones/packs/{}.pack", "ab".repeat(32)),
        commit_id: "0123456789abcdef0123456789abcdef01234567".into(),
        default_branch: None,
        size_bytes: 1 << 20,
        file_count: 42,
        lines_by_language: BTreeMap::from([("Rust".into(), 1000), ("Python".into(), 20)]),
        quality_score: 73.5,
        cloned_at_ms: now_ms(),
        license_reported: None,
        pack_bytes: 310_442,
        pack_sha256: "ab".repeat(32),
        stars: Some(1_204),
    });
}

#[test]
fn repo_summary_matches_its_schema() {
    check(RepoSummary {
        full_name: "a/b".into(),
        commit_id: "0123456789abcdef0123456789abcdef01234567".into(),
        stars: None,
        quality_score: 61.25,
        license_reported: Some("MIT".into()),
        licenses_detected: vec!["MIT".into(), "Apache-2.0".into()],
        license_outcome: Some("allowed".into()),
        files_seen: 120,
        files_published: 80,
        bytes_published: 1 << 20,
        published_by_language: BTreeMap::from([("Rust".into(), 78), ("Python".into(), 2)]),
        files_skipped: BTreeMap::from([("vendored".into(), 30), ("too_small".into(), 10)]),
        redactions: BTreeMap::from([("email".into(), 3)]),
        cloned_at_ms: now_ms(),
    });
}

#[test]
fn code_file_matches_its_schema() {
    let mut file = CodeFile {
        content_hash: "ab".repeat(32),
        repo_full_name: "a/b".into(),
        commit_id: "0123".into(),
        path: "src/lib.rs".into(),
        language: "Rust".into(),
        content: "fn main() { println!(\"ü\"); }\n".into(),
        size_bytes: 31,
        lines: 1,
        quality_score: 88.0,
        quality_components: BTreeMap::from([("syntax".into(), 1.0), ("comments".into(), 0.2)]),
        parse_stats: Some(ParseStats {
            error_node_share: 0.0,
            function_count: 1,
            type_count: 0,
            comment_share: 0.0,
            max_depth: 7,
        }),
        redactions: BTreeMap::from([("email".into(), 2), ("key".into(), 1)]),
        license: Default::default(),
    };
    check(file.clone());
    file.parse_stats = None;
    check(file);
}

#[test]
fn training_batch_matches_its_schema() {
    check(TrainingBatch {
        batch_id: "p0-o17".into(),
        split: "eval".into(),
        sequence_length: 4,
        token_ids: vec![1, 2, 3, 0, 5, 6, 7, 0],
        document_starts: vec![0, 4],
        content_hashes: vec!["aa".into(), "bb".into()],
        languages: vec!["Rust".into(), "Python".into()],
        tokenizer_fingerprint: "f00d".into(),
    });
}

#[test]
fn dead_letter_matches_its_schema() {
    let mut letter = DeadLetter {
        stage: "processor".into(),
        reason: "decode".into(),
        error: "bad header".into(),
        topic: "repo-clones".into(),
        partition: 2,
        offset: 99,
        attempts: 1,
        key: Some(b"a/b".to_vec()),
        value: Some(vec![0, 159, 146, 150]),
        failed_at_ms: now_ms(),
    };
    check(letter.clone());
    letter.key = None;
    letter.value = None;
    check(letter);
}

#[test]
fn crawler_state_matches_its_schema() {
    check(CrawlerState {
        pushed_at_ms: Some(1_700_000_000_000),
        done_until_ms: None,
        updated_at_ms: now_ms(),
    });
    check(CrawlerState {
        pushed_at_ms: None,
        done_until_ms: Some(1_700_000_000_000),
        updated_at_ms: now_ms(),
    });
}

#[test]
fn batcher_seen_matches_its_schema() {
    check(BatcherSeen {
        content_hash: "ab".repeat(32),
        batch_id: "0123456789abcdef01234567".into(),
        seen_at_ms: now_ms(),
        packed_tokens: None,
    });
    check(BatcherSeen {
        content_hash: "cd".repeat(32),
        batch_id: "0123456789abcdef01234567".into(),
        seen_at_ms: now_ms(),
        packed_tokens: Some(1_500),
    });
}

#[test]
fn neardup_records_match_their_schemas() {
    check(NeardupProbe {
        content_hash: "ab".repeat(32),
        at_us: 1_764_000_000_000_000,
        shard: 4,
        shards: 6,
        buckets: vec![-3, i64::MAX],
        sketch: (0..=255).collect(),
    });
    let answer = NeardupGather {
        content_hash: "ab".repeat(32),
        at_us: 7,
        shards: 2,
        file: None,
        candidates: vec![NeardupCandidate {
            content_hash: "cd".repeat(32),
            at_us: 3,
            similarity: 0.82,
        }],
    };
    check(answer.clone());
    check(NeardupGather {
        file: Some(vec![0xC3, 0x01, 0xff]),
        candidates: Vec::new(),
        ..answer
    });
    check(NearDuplicate {
        content_hash: "ab".repeat(32),
        repo_full_name: "a/b".into(),
        path: "src/lib.rs".into(),
        representative: "cd".repeat(32),
        similarity: 0.9,
        judged_at_ms: now_ms(),
    });
}

#[test]
fn a_value_of_another_schema_is_rejected_by_fingerprint() {
    let clone = RepoClone {
        full_name: "a/b".into(),
        clone_uri: "file:///x".into(),
        commit_id: "c".into(),
        default_branch: None,
        size_bytes: 0,
        file_count: 0,
        lines_by_language: BTreeMap::new(),
        quality_score: 0.0,
        cloned_at_ms: 0,
        license_reported: None,
        pack_bytes: 0,
        pack_sha256: String::new(),
        stars: None,
    };
    let err = RepoUrl::decode(&clone.encode().unwrap()).unwrap_err();
    assert!(
        matches!(err, CodecError::UnknownFingerprint { .. }),
        "{err}"
    );
    let err = RepoUrl::decode(b"{\"json\": true}").unwrap_err();
    assert!(matches!(err, CodecError::NotSingleObject { .. }), "{err}");
}

#[test]
fn every_topic_schema_in_the_topology_has_a_record_type() {
    let topology = codelupe_runtime::topology::Topology::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topology.yaml"),
    )
    .unwrap();
    let typed = [
        RepoUrl::SCHEMA_FILE,
        RepoClone::SCHEMA_FILE,
        CodeFile::SCHEMA_FILE,
        TrainingBatch::SCHEMA_FILE,
        DeadLetter::SCHEMA_FILE,
        CrawlerState::SCHEMA_FILE,
        BatcherSeen::SCHEMA_FILE,
        NeardupProbe::SCHEMA_FILE,
        NeardupGather::SCHEMA_FILE,
        NearDuplicate::SCHEMA_FILE,
        RepoSummary::SCHEMA_FILE,
    ];
    for (name, topic) in &topology.topics {
        let file = topic.schema.file_name().unwrap().to_str().unwrap();
        assert!(
            typed.contains(&file),
            "topic {name}: schema {file} has no Rust record type"
        );
    }
}
