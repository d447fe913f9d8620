//! Writes the fuzz targets' seed corpora under `fuzz/corpus/` from real inputs: records
//! as the stages write them, pages the fake GitHub serves, files from the local cargo
//! registry. Run again when a format changes (the corpora are kept small and committed):
//!
//!     cargo test -p codelupe-fuzzing --test seeds -- --ignored

#[path = "../../support/fake_github.rs"]
#[allow(dead_code)]
mod fake_github;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use codelupe_processor::select::{by_path, PathVerdict};
use codelupe_runtime::codec::AvroRecord;
use codelupe_runtime::language::Kept;
use codelupe_runtime::records::*;
use codelupe_testkit::corpus::code_files;
use codelupe_testkit::registry_crates;
use fake_github::{FakeGithub, FakeRepo};
use sha2::{Digest, Sha256};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Named by content, as libFuzzer names what it adds.
fn write(dir: &Path, data: &[u8]) {
    let name = format!("{:x}", Sha256::digest(data));
    std::fs::write(dir.join(&name[..16]), data).unwrap();
}

/// Small real source files the processor would examine (at most `per_language` each).
fn registry_files(per_language: usize) -> Vec<(String, Vec<u8>)> {
    let crates = registry_crates(&[
        "anyhow-1",
        "itoa-1",
        "cc-1",
        "libc-0",
        "tree-sitter-python-0",
    ]);
    let mut taken: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut files = Vec::new();
    for file in code_files(&crates, |_| true) {
        let PathVerdict::Keep(Some(language)) = by_path(&file.path, &Kept::default()) else {
            continue;
        };
        let count = taken.entry(language).or_default();
        if file.content.len() > 6_000 || *count >= per_language {
            continue;
        }
        *count += 1;
        files.push((file.path, file.content.into_bytes()));
    }
    files
}

/// Source files with a secret of each kind the processor redacts.
const HOLDING_SECRETS: &[(&str, &str)] = &[
    (
        "src/client.rs",
        "/// Maintainer: jane.doe@acme-corp.com\npub fn connect() -> Client {\n    let host = \"93.184.216.34\";\n    let key = \"AKIAIOSFODNN7EXAMPLE\";\n    Client::new(host, key)\n}\n",
    ),
    (
        "app/settings.py",
        "import os\n\n# mirrors at 2606:4700:4700::1111 and 8.8.4.4\ndb_password = \"hunter2Qx9!\"\nGITHUB_TOKEN = \"ghp_16C7e42F292c6912E7710c838347Ae178B4a\"\n\n\ndef url():\n    return os.environ.get(\"URL\", \"http://10.0.0.1\")\n",
    ),
    (
        "web/auth.js",
        "const jwt = 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U';\nconst slack = 'xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx';\nmodule.exports = { jwt, slack, client_secret: 'a8F3kd92LmQ0pZ' };\n",
    ),
    (
        "deploy/key.go",
        "package deploy\n\nconst key = `-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nx9Zq\n-----END RSA PRIVATE KEY-----`\n\nfunc Key() string { return key }\n",
    ),
];

fn get(base: &str, path: &str) -> (String, Vec<u8>) {
    let authority = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut link = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("link") {
                link = value.trim().to_string();
            }
        }
    }
    let mut body = Vec::new();
    reader.read_to_end(&mut body).unwrap();
    (link, body)
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand when a format changes"]
fn write_seed_corpora() {
    let sources = registry_files(2);
    assert!(
        sources.len() >= 4,
        "the local cargo registry holds too few crates"
    );
    write_record_seeds(&sources[0]);
    write_github_page_seeds();
    write_url_list_seeds();
    write_processor_file_seeds(&sources);
    write_batcher_document_seeds(&sources);
    write_config_seeds();
}

/// A clone of `owner/repo` as the downloader records it.
fn sample_clone() -> RepoClone {
    RepoClone {
        full_name: "owner/repo".into(),
        clone_uri: "s3://codelupe/clones/packs/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.pack".into(),
        commit_id: "8c2f6e4d1a0b9c7e5f3a2b1c0d9e8f7a6b5c4d3e".into(),
        default_branch: Some("main".into()),
        size_bytes: 48_213,
        file_count: 17,
        lines_by_language: [("Rust".to_string(), 1_204)].into(),
        quality_score: 0.62,
        cloned_at_ms: 1_764_000_000_000,
        license_reported: None,
        pack_bytes: 31_007,
        pack_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        stars: None,
    }
}

/// `source` as the processor publishes it, of `clone`.
fn sample_file((path, content): &(String, Vec<u8>), clone: &RepoClone) -> CodeFile {
    let content = String::from_utf8_lossy(content).into_owned();
    CodeFile {
        content_hash: format!("{:x}", Sha256::digest(content.as_bytes())),
        repo_full_name: "owner/repo".into(),
        commit_id: clone.commit_id.clone(),
        path: path.clone(),
        language: "Rust".into(),
        size_bytes: content.len() as i64,
        lines: content.lines().count() as i64,
        quality_score: 71.5,
        quality_components: [("comment_share".to_string(), 0.12)].into(),
        parse_stats: Some(ParseStats {
            error_node_share: 0.0,
            function_count: 4,
            type_count: 1,
            comment_share: 0.12,
            max_depth: 9,
        }),
        redactions: [("email".to_string(), 1)].into(),
        license: Default::default(),
        content,
    }
}

/// One record of every topic's schema, the file's from `source`.
fn write_record_seeds(source: &(String, Vec<u8>)) {
    let dir = corpus("records");
    let clone = sample_clone();
    let file = sample_file(source, &clone);
    let repo = RepoUrl {
        full_name: "owner/repo".into(),
        clone_url: "https://github.com/owner/repo.git".into(),
        default_branch: Some("main".into()),
        language: Some("Rust".into()),
        stars: 120,
        forks: 7,
        size_kb: 310,
        topics: vec!["parser".into(), "cli".into()],
        license_spdx: Some("MIT".into()),
        archived: false,
        fork: false,
        created_at_ms: Some(1_600_000_000_000),
        pushed_at_ms: Some(1_764_000_000_000),
        description: Some("A tool ✓".into()),
        source: "github".into(),
        discovered_at_ms: 1_764_000_000_000,
    };
    let batch = TrainingBatch {
        batch_id: "batcher-0-42".into(),
        split: "train".into(),
        sequence_length: 8,
        token_ids: (0..16).collect(),
        document_starts: vec![0, 5, 11],
        content_hashes: vec![file.content_hash.clone(), "ab".repeat(32)],
        languages: vec![file.language.clone(), "Python".into()],
        tokenizer_fingerprint: "0123456789abcdef".into(),
    };
    let dead = DeadLetter {
        stage: "processor".into(),
        reason: "decode".into(),
        error: "not an Avro single-object value".into(),
        topic: "repo-clones".into(),
        partition: 2,
        offset: 1_234,
        attempts: 1,
        key: Some(b"owner/repo".to_vec()),
        value: Some(vec![0xC3, 0x01, 0xff]),
        failed_at_ms: 1_764_000_000_000,
    };
    let state = CrawlerState {
        pushed_at_ms: Some(1_764_000_000_000),
        done_until_ms: None,
        updated_at_ms: 1_764_000_000_000,
    };
    let seen = BatcherSeen {
        content_hash: file.content_hash.clone(),
        batch_id: "batcher-0-42".into(),
        seen_at_ms: 1_764_000_000_000,
        packed_tokens: Some(120),
    };
    for encoded in [
        repo.encode(),
        clone.encode(),
        file.encode(),
        batch.encode(),
        dead.encode(),
        state.encode(),
        seen.encode(),
    ] {
        write(&dir, &encoded.unwrap());
    }
}

/// Two pages of three and the last of one, each with the Link header it came with;
/// the fake's address becomes the API's, the origin the target checks against.
fn write_github_page_seeds() {
    let dir = corpus("github_page");
    let repos = (0..7)
        .map(|i| FakeRepo {
            full_name: format!("owner{i}/repo{i}"),
            language: "Rust".into(),
            pushed_at: 1_700_000_000 + i * 3_600,
            stars: 10 * i,
            clone_url: None,
        })
        .collect();
    let github = FakeGithub::start(repos, Duration::ZERO);
    for page in 1..=3 {
        let (link, body) = get(
            &github.url,
            &format!("/search/repositories?q=language:Rust&per_page=3&page={page}"),
        );
        let mut data = link
            .replace(&github.url, "https://api.github.com")
            .into_bytes();
        data.push(b'\n');
        data.extend(body);
        write(&dir, &data);
    }
}

fn write_url_list_seeds() {
    let dir = corpus("url_list");
    write(
        &dir,
        b"# repositories to crawl\nhttps://github.com/rust-lang/cargo\nserde-rs/serde\nhttps://gitlab.com/group/project.git/\n\nhttps://github.com/owner/name.git\n",
    );
    write(
        &dir,
        b"git://github.com/owner/repo.git\nfile:///srv/git/repo.git\n/srv/git/other\n",
    );
    write(
        &dir,
        b"https://github.com:443/owner/repo\nhttps://user@github.com/owner/repo\n",
    );
}

fn write_processor_file_seeds(sources: &[(String, Vec<u8>)]) {
    let dir = corpus("processor_file");
    for (path, content) in sources {
        write(&dir, &[path.as_bytes(), b"\n", content].concat());
    }
    // Files holding secrets, so the fuzzer starts from every redaction path too.
    for (path, content) in HOLDING_SECRETS {
        write(&dir, format!("{path}\n{content}").as_bytes());
    }
}

fn write_batcher_document_seeds(sources: &[(String, Vec<u8>)]) {
    let dir = corpus("batcher_document");
    for (flags, (path, content)) in (0u8..8).zip(sources.iter().cycle()) {
        write(
            &dir,
            &[&[flags][..], path.as_bytes(), b"\0", content].concat(),
        );
    }
}

fn write_config_seeds() {
    let dir = corpus("config");
    write(
        &dir,
        b"kafka:\n  brokers: 127.0.0.1:9092\nstages:\n  crawler:\n    options: {source: local_folder, local_folder: ., interval_s: 60}\n  processor:\n    max_in_flight: 4\n    options: {min_quality: 25.0}\nclone_store: {url: .codelupe/clones}\n",
    );
    write(
        &dir,
        b"stages:\n  downloader:\n    delivery: exactly_once\n    options:\n      policy: {allowed_hosts: [github.com], allow_local: false}\n  batcher:\n    options: {sequence_length: 1024, fim_rate: 0.5}\n",
    );
    write(&dir, b"# empty: every default\n");
}

/// A notebook's cells as nbformat 4 writes them (`source` as a list of lines).
fn nbformat4(kernel: &str, cells: &[(&str, &str)]) -> String {
    let cells: Vec<serde_json::Value> = cells
        .iter()
        .map(|(kind, text)| {
            let lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
            let mut cell = serde_json::json!({"cell_type": kind, "metadata": {}, "source": lines});
            if *kind == "code" {
                cell["execution_count"] = 1.into();
                cell["outputs"] = serde_json::json!([{"output_type": "stream", "name": "stdout", "text": ["42\n"]}]);
            }
            cell
        })
        .collect();
    let notebook = serde_json::json!({
        "cells": cells,
        "metadata": {"kernelspec": {"name": kernel, "language": kernel, "display_name": kernel}},
        "nbformat": 4,
        "nbformat_minor": 5,
    });
    serde_json::to_string_pretty(&notebook).unwrap()
}

#[test]
#[ignore = "writes fuzz/corpus/notebook; run by hand when the notebook reader changes"]
fn write_notebook_seeds() {
    let dir = corpus("notebook");
    let python = nbformat4(
        "python",
        &[
            ("markdown", "# Loading\n\nRead the data, then plot it."),
            ("code", "%matplotlib inline\n!pip install numpy\nimport numpy as np\nx = np.arange(10)\nnp.mean?"),
            ("code", "%%bash\nls -l"),
            ("raw", "raw text"),
            ("code", "def mean(xs):\n    return sum(xs) / len(xs)\n\nprint(mean(x))\n"),
        ],
    );
    write(&dir, python.as_bytes());
    write(
        &dir,
        nbformat4("ir", &[("code", "x <- c(1, 2)\nmean(x)")]).as_bytes(),
    );
    write(
        &dir,
        nbformat4("julia", &[("code", "f(x) = 2x")]).as_bytes(),
    );
    write(
        &dir,
        nbformat4("python", &[("markdown", "only prose")]).as_bytes(),
    );
    // nbformat 3: worksheets, code in `input`, headings.
    write(
        &dir,
        br#"{"nbformat": 3, "metadata": {}, "worksheets": [{"cells": [{"cell_type": "heading", "level": 1, "source": "Title"}, {"cell_type": "code", "language": "python", "input": ["a = 1\n", "print(a)"], "outputs": []}]}]}"#,
    );
    write(&dir, &python.as_bytes()[..python.len() / 2]);
}
