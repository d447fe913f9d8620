//! The bodies of the fuzz targets in `fuzz/fuzz_targets/`: each reads bytes someone
//! else wrote the way a stage reads them, must never panic, and asserts the promise its
//! parser makes (a record decoded encodes back to itself, an accepted clone URL points
//! where the policy thinks, a document restores to its file). cargo-fuzz drives them
//! with libFuzzer on nightly; the normal test suite runs every input kept under
//! `fuzz/corpus/` and `fuzz/regressions/` through them (`tests/corpora.rs`).

use std::path::Path;
use std::sync::OnceLock;

use codelupe_batcher::document::{self, DocumentOptions};
use codelupe_crawler::github::Page;
use codelupe_crawler::sources::parse_line;
use codelupe_downloader::clone::{Token, UrlPolicy};
use codelupe_processor::metrics::ProcessorMetrics;
use codelupe_processor::notebook::{is_ipython_escape, is_notebook, to_script};
use codelupe_processor::redact::redact;
use codelupe_processor::select::{by_path, PathVerdict};
use codelupe_processor::{Processor, ProcessorOptions, Verdict};
use codelupe_runtime::codec::AvroRecord;
use codelupe_runtime::config::Config;
use codelupe_runtime::language::Kept;
use codelupe_runtime::records::{
    decode_to_json, BatcherSeen, CodeFile, CrawlerState, DeadLetter, NearDuplicate, NeardupGather,
    NeardupProbe, RepoClone, RepoUrl, TrainingBatch,
};
use codelupe_tokenizer::CodeTokenizer;
use sha2::{Digest, Sha256};
use url::Url;

/// A target's body: arbitrary bytes in, a panic when its promise breaks.
pub type Body = fn(&[u8]);

/// Every target: its name (the file under `fuzz/fuzz_targets/`) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("records", records),
    ("github_page", github_page),
    ("url_list", url_list),
    ("processor_file", processor_file),
    ("batcher_document", batcher_document),
    ("config", config),
    ("notebook", notebook),
];

/// A Kafka value, as every record type's consumer decodes it: whatever decodes encodes
/// again, and that encoding is stable (decode → encode is a fixed point).
pub fn records(data: &[u8]) {
    fn round_trip<R: AvroRecord>(data: &[u8]) {
        let Ok(record) = R::decode(data) else {
            return;
        };
        let file = R::SCHEMA_FILE;
        let encoded = record
            .encode()
            .unwrap_or_else(|e| panic!("{file}: decoded but does not encode: {e}"));
        let again = R::decode(&encoded)
            .unwrap_or_else(|e| panic!("{file}: its own encoding does not decode: {e}"));
        assert_eq!(
            again.encode().unwrap(),
            encoded,
            "{file}: encoding not stable"
        );
        decode_to_json(file, data)
            .unwrap_or_else(|e| panic!("{file}: decodes, but not as JSON: {e}"));
    }
    round_trip::<RepoUrl>(data);
    round_trip::<RepoClone>(data);
    round_trip::<CodeFile>(data);
    round_trip::<TrainingBatch>(data);
    round_trip::<DeadLetter>(data);
    round_trip::<CrawlerState>(data);
    round_trip::<BatcherSeen>(data);
    round_trip::<NeardupProbe>(data);
    round_trip::<NeardupGather>(data);
    round_trip::<NearDuplicate>(data);
}

/// The `Link` header up to the first newline, then a search response body: a next link
/// never leaves the API's origin, and every repository becomes a record that encodes.
pub fn github_page(data: &[u8]) {
    let (link, body) = first_line(data);
    let base = Url::parse("https://api.github.com").unwrap();
    let link = String::from_utf8_lossy(link);
    let Ok(page) = Page::read(body, (!link.is_empty()).then_some(&*link), &base) else {
        return;
    };
    if let Some(next) = &page.next {
        assert_eq!(
            next.origin(),
            base.origin(),
            "next link {next} left the API"
        );
    }
    for repo in page.into_records() {
        repo.encode()
            .unwrap_or_else(|e| panic!("{} does not encode: {e}", repo.full_name));
    }
}

/// Lines of a URL list, each also put to the downloader's clone URL policy and the
/// token's host rule.
pub fn url_list(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Ok(Some(repo)) = parse_line(line) {
            let (_, name) = repo.full_name.split_once('/').expect("owner/name");
            assert!(!name.contains('/'), "{:?}", repo.full_name);
            let again = parse_line(&repo.clone_url)
                .expect("a record's clone URL is a valid line")
                .expect("and not a blank one");
            assert_eq!(
                (&again.full_name, &again.clone_url),
                (&repo.full_name, &repo.clone_url),
                "a list line's record names itself"
            );
            let host = Url::parse(&repo.clone_url)
                .unwrap_or_else(|e| panic!("{:?} is no URL: {e}", repo.clone_url))
                .host_str()
                .expect("a host")
                .to_string();
            let policy = UrlPolicy {
                allowed_hosts: vec![host],
                ..UrlPolicy::default()
            };
            policy
                .check(&repo.clone_url)
                .unwrap_or_else(|e| panic!("{:?} refused by its own host: {e}", repo.clone_url));
        }
        clone_url(line);
    }
}

/// What the policy accepts, and where the token may go, agree with a real URL parser
/// (WHATWG's, as the `url` crate implements it) on the host.
fn clone_url(url: &str) {
    let policy = UrlPolicy {
        allowed_schemes: vec!["https".into(), "http".into(), "git".into()],
        allowed_hosts: vec!["github.com".into(), "gitlab.com".into()],
        allow_local: true,
    };
    if let Ok(source) = policy.check(url) {
        if source.host == "local" {
            let path = url.strip_prefix("file://").unwrap_or(url);
            assert!(
                path.starts_with('/') && !path.split('/').any(|p| p == ".."),
                "{url:?}"
            );
        } else {
            let parsed = Url::parse(url)
                .unwrap_or_else(|e| panic!("the policy accepted {url:?}, which is no URL: {e}"));
            // A non-special scheme's host keeps its case in WHATWG's reading; DNS does not care.
            let host = parsed.host_str().unwrap_or_default();
            assert!(
                host.eq_ignore_ascii_case(&source.host),
                "{url:?} reads as host {host:?}"
            );
            assert!(
                parsed.username().is_empty() && parsed.password().is_none(),
                "{url:?}"
            );
        }
    }
    let token = Token {
        secret: "secret",
        host: "github.com",
    };
    if token.may_go_to(url) {
        let parsed = Url::parse(url)
            .unwrap_or_else(|e| panic!("the token may go to {url:?}, which is no URL: {e}"));
        assert_eq!(parsed.scheme(), "https", "{url:?}");
        assert_eq!(parsed.host_str(), Some("github.com"), "{url:?}");
        assert_eq!(parsed.port(), None, "{url:?}");
        assert!(
            parsed.username().is_empty() && parsed.password().is_none(),
            "{url:?}"
        );
    }
}

/// A path up to the first newline, then the file's bytes, judged as the processor
/// judges a file of a clone: what it keeps is the file itself (or, when it held
/// secrets, the file redacted, with no secret left for another pass to find), hashed,
/// scored finitely, and encodes as a `code-files` record.
pub fn processor_file(data: &[u8]) {
    let (path, bytes) = first_line(data);
    let path = String::from_utf8_lossy(path);
    let PathVerdict::Keep(language) = by_path(&path, &Kept::default()) else {
        return;
    };
    let verdict = processor().examine_file(&clone(), &path, language, bytes);
    let Verdict::Keep(file) = verdict else {
        return;
    };
    let text = std::str::from_utf8(bytes).expect("a kept file is text");
    // A notebook is kept as its script.
    let script = is_notebook(&path).then(|| to_script(text).expect("a kept notebook converts"));
    let original = script.as_ref().map_or(text, |s| s.text.as_str());
    if file.redactions.is_empty() {
        assert_eq!(file.content, original);
    } else {
        let redacted = redact(original).expect("counted redactions were made");
        assert_eq!(file.content, redacted.text);
        let left = redact(&file.content).map(|r| r.counts);
        assert_eq!(left, None, "a secret survives redaction");
    }
    assert_eq!(
        file.content_hash,
        format!("{:x}", Sha256::digest(file.content.as_bytes()))
    );
    assert!(file.quality_score.is_finite(), "{}", file.quality_score);
    for (name, value) in &file.quality_components {
        assert!(value.is_finite(), "{name} = {value}");
    }
    file.encode().expect("a kept file encodes");
}

/// A `.ipynb` file's bytes: whatever converts is a script that ends in a newline and
/// holds every line of every code cell (but IPython's magics) as it was, in order.
pub fn notebook(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(script) = to_script(text) else {
        return;
    };
    assert!(script.text.ends_with('\n'), "{:?}", script.text);
    assert_eq!(to_script(text), Ok(script.clone()), "not deterministic");
    let value: serde_json::Value = serde_json::from_str(text).expect("converted, so JSON");
    let mut lines = script.text.lines();
    for source in code_cells(&value) {
        let python = script.language == "Python";
        let magic = |line: &str| python && is_ipython_escape(line);
        if python && source.trim_start().starts_with("%%") {
            continue;
        }
        for line in source.lines().filter(|l| !l.trim().is_empty() && !magic(l)) {
            assert!(
                // A cell's trailing whitespace is trimmed.
                lines.any(|l| l.trim_end() == line.trim_end()),
                "code line {line:?} missing or out of order in {:?}",
                script.text
            );
        }
    }
}

/// The text of each code cell of a notebook's JSON, nbformat 4 or 3, in order.
fn code_cells(value: &serde_json::Value) -> Vec<String> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(lines) => lines.iter().map(|l| l.as_str()).collect(),
        _ => None,
    };
    let worksheets = value["worksheets"].as_array().into_iter().flatten();
    let cells = value["cells"]
        .as_array()
        .into_iter()
        .chain(worksheets.filter_map(|w| w["cells"].as_array()))
        .flatten();
    cells
        .filter(|c| c["cell_type"] == "code")
        .filter_map(|c| {
            let source = c.get("source").filter(|s| !s.is_null());
            source.or(c.get("input")).and_then(text)
        })
        .collect()
}

/// A flags byte (bit 0: fill-in-the-middle, bit 1: prefix-suffix-middle order, bit 2:
/// metadata), a path up to the first NUL, then the content: the batcher's document of
/// the file restores to exactly its content.
pub fn batcher_document(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (path, content) = split_at(rest, 0).unwrap_or((b"src/lib.rs", rest));
    let content = String::from_utf8_lossy(content).into_owned();
    let bit = |n: u8| if flags & (1 << n) != 0 { 1.0 } else { 0.0 };
    let options = DocumentOptions {
        fim_rate: bit(0),
        psm_share: bit(1),
        metadata_rate: bit(2),
        eval_share: 0.0,
    };
    let file = CodeFile {
        content_hash: format!("{:x}", Sha256::digest(content.as_bytes())),
        repo_full_name: "owner/repo".into(),
        commit_id: "0".repeat(40),
        path: String::from_utf8_lossy(path).into_owned(),
        language: "Rust".into(),
        size_bytes: content.len() as i64,
        lines: content.lines().count() as i64,
        quality_score: 50.0,
        quality_components: Default::default(),
        parse_stats: None,
        redactions: Default::default(),
        license: Default::default(),
        content,
    };
    let tok = tokenizer();
    let ids = document::tokens(tok, &file, &options).expect("a file tokenizes");
    let restored =
        document::restore(tok, &file.content_hash, &ids, &options).expect("a document restores");
    assert_eq!(
        restored, file.content,
        "path {:?}, flags {flags:#b}",
        file.path
    );
}

/// A config file: whatever loads gives every stage's options or an error, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_yaml(text, Path::new("fuzz.yaml"), []) else {
        return;
    };
    let _ = config
        .stage(codelupe_crawler::STAGE)
        .options::<codelupe_crawler::CrawlerOptions>(codelupe_crawler::STAGE);
    let _ = config
        .stage(codelupe_downloader::STAGE)
        .options::<codelupe_downloader::DownloaderOptions>(codelupe_downloader::STAGE);
    let _ = config
        .stage(codelupe_processor::STAGE)
        .options::<ProcessorOptions>(codelupe_processor::STAGE);
    let _ = config
        .stage(codelupe_batcher::STAGE)
        .options::<codelupe_batcher::BatcherOptions>(codelupe_batcher::STAGE);
}

/// Bytes before the first newline, and after it (all of it is the first part if none).
fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    split_at(data, b'\n').unwrap_or((data, &[]))
}

/// Bytes before the first `separator`, and after it; None without one.
fn split_at(data: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = data.iter().position(|&b| b == separator)?;
    Some((&data[..at], &data[at + 1..]))
}

fn processor() -> &'static Processor {
    static PROCESSOR: OnceLock<Processor> = OnceLock::new();
    PROCESSOR.get_or_init(|| {
        let options = ProcessorOptions {
            store: std::env::temp_dir()
                .join("codelupe-fuzz-store")
                .display()
                .to_string(),
            work_dir: std::env::temp_dir().join("codelupe-fuzz-work"),
            workers: std::num::NonZeroUsize::MIN,
            ..ProcessorOptions::default()
        };
        let metrics = ProcessorMetrics::register(&prometheus::Registry::new()).unwrap();
        Processor::new(options, metrics).unwrap()
    })
}

/// A clone record written out: the fuzz build does not link the test kit (Kafka, git).
fn clone() -> RepoClone {
    RepoClone {
        full_name: "owner/repo".into(),
        clone_uri: "file:///nowhere".into(),
        commit_id: "0".repeat(40),
        default_branch: Some("main".into()),
        size_bytes: 0,
        file_count: 0,
        lines_by_language: Default::default(),
        quality_score: 0.0,
        cloned_at_ms: 0,
        license_reported: None,
        pack_bytes: 0,
        pack_sha256: String::new(),
        stars: None,
    }
}

/// A small byte-level BPE fitted once on a few lines of code: merges and special tokens
/// are what matter to the round trip, not the vocabulary's quality.
fn tokenizer() -> &'static CodeTokenizer {
    static TOKENIZER: OnceLock<CodeTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let texts = [
            "fn main() {\n    println!(\"hello, world\");\n}\n",
            "def main():\n    print('hello, world')\n",
            "int main(void) { return printf(\"%d\\n\", 42); }\n",
            "// comment ✓ über naïve\nlet x = vec![1, 2, 3];\n",
        ];
        CodeTokenizer::train(texts.iter().cycle().take(64), 400).unwrap()
    })
}
