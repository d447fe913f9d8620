//! One Rust type per schema in `schemas/`; the `.avsc` files are the source of truth
//! and `tests/` check each type against its file.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_avro_fast::Schema;

use crate::codec::{parse_embedded, AvroRecord, SchemaLineage};

/// Binds a type to `schemas/<file>`; `earlier` names the released versions before it
/// under `schemas/earlier/` (copy the file there before editing it: a test compares
/// with git history).
macro_rules! avro_record {
    ($ty:ty, $file:literal) => {
        avro_record!($ty, $file, earlier: []);
    };
    ($ty:ty, $file:literal, earlier: [$($earlier:literal),*]) => {
        impl AvroRecord for $ty {
            const SCHEMA_FILE: &'static str = $file;
            const SCHEMA_JSON: &'static str = include_str!(concat!("../../../schemas/", $file));
            const EARLIER_JSON: &'static [&'static str] =
                &[$(include_str!(concat!("../../../schemas/earlier/", $earlier))),*];
            fn schema() -> &'static Schema {
                static SCHEMA: OnceLock<Schema> = OnceLock::new();
                parse_embedded(&SCHEMA, $file, Self::SCHEMA_JSON)
            }
            fn lineage() -> &'static SchemaLineage {
                static LINEAGE: OnceLock<SchemaLineage> = OnceLock::new();
                LINEAGE.get_or_init(|| {
                    SchemaLineage::parse($file, Self::SCHEMA_JSON, Self::EARLIER_JSON)
                })
            }
        }
    };
}

/// `repo-urls`: a repository the crawler found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoUrl {
    pub full_name: String,
    pub clone_url: String,
    pub default_branch: Option<String>,
    pub language: Option<String>,
    pub stars: i64,
    pub forks: i64,
    pub size_kb: i64,
    pub topics: Vec<String>,
    pub license_spdx: Option<String>,
    pub archived: bool,
    pub fork: bool,
    pub created_at_ms: Option<i64>,
    pub pushed_at_ms: Option<i64>,
    pub description: Option<String>,
    pub source: String,
    pub discovered_at_ms: i64,
}
avro_record!(RepoUrl, "repo-urls.avsc");

/// `repo-clones`: a reference to a bare clone in the clone store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoClone {
    pub full_name: String,
    pub clone_uri: String,
    pub commit_id: String,
    pub default_branch: Option<String>,
    pub size_bytes: i64,
    pub file_count: i64,
    pub lines_by_language: BTreeMap<String, i64>,
    pub quality_score: f64,
    pub cloned_at_ms: i64,
    /// The SPDX id GitHub reported (repo-urls' `license_spdx`).
    #[serde(default)]
    pub license_reported: Option<String>,
    /// The pack at `clone_uri`: its size and hex SHA-256, checked before it is read.
    #[serde(default)]
    pub pack_bytes: i64,
    #[serde(default)]
    pub pack_sha256: String,
    /// The repository's stars when it was crawled.
    #[serde(default)]
    pub stars: Option<i64>,
}
avro_record!(
    RepoClone,
    "repo-clones.avsc",
    earlier: ["repo-clones/1.avsc", "repo-clones/2.avsc", "repo-clones/3.avsc"]
);

/// The license of a file's repository: what its license files hold, and what GitHub
/// reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoLicense {
    /// SPDX ids identified in the top-level license files (`-only` and `-or-later`
    /// forms as one).
    pub detected: Vec<String>,
    /// The lowest match score (0..1) among them; None when none matched.
    pub confidence: Option<f64>,
    pub reported: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParseStats {
    pub error_node_share: f64,
    pub function_count: i64,
    pub type_count: i64,
    pub comment_share: f64,
    pub max_depth: i64,
}

/// `code-files`: one file worth training on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeFile {
    pub content_hash: String,
    pub repo_full_name: String,
    pub commit_id: String,
    pub path: String,
    pub language: String,
    pub content: String,
    pub size_bytes: i64,
    pub lines: i64,
    pub quality_score: f64,
    pub quality_components: BTreeMap<String, f64>,
    pub parse_stats: Option<ParseStats>,
    /// Secrets and personal data replaced by placeholders, by kind.
    #[serde(default)]
    pub redactions: BTreeMap<String, i64>,
    #[serde(default)]
    pub license: RepoLicense,
}
avro_record!(CodeFile, "code-files.avsc", earlier: ["code-files/1.avsc", "code-files/2.avsc"]);

crate::label_set! {
    /// A batch's split (its `split` field and the `split` label of batch metrics).
    pub enum Split {
        Train => "train",
        /// Files held out by content hash, never trained on.
        Eval => "eval",
    }
}

/// `training-batches`: token ids packed into fixed-length sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingBatch {
    pub batch_id: String,
    pub split: String,
    pub sequence_length: i32,
    pub token_ids: Vec<i32>,
    pub document_starts: Vec<i32>,
    pub content_hashes: Vec<String>,
    /// The language of each of `content_hashes`' files (empty in version 1 batches).
    pub languages: Vec<String>,
    pub tokenizer_fingerprint: String,
}
avro_record!(TrainingBatch, "training-batches.avsc", earlier: ["training-batches/1.avsc"]);

/// `dead-letters`: a record a stage could not handle, with why and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stage: String,
    pub reason: String,
    pub error: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub attempts: i32,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    pub failed_at_ms: i64,
}
avro_record!(DeadLetter, "dead-letter.avsc");

impl DeadLetter {
    /// The largest input value a letter carries whole.
    pub const MAX_VALUE: usize = 256 * 1024;
    /// The largest input key a letter carries whole (keys are URLs, paths, hashes).
    pub const MAX_KEY: usize = 4 * 1024;
    /// The longest error text a letter carries whole (errors may echo record fields).
    pub const MAX_ERROR: usize = 8 * 1024;
    /// A bound on a whole letter as the topic sees it: the key twice (as the record's
    /// key and in the letter), the error with its note of what was cut, and the other
    /// fields (a stage name, an internal topic name, numbers) within 4 KiB. Well inside
    /// the default `max.message.bytes` of a topic (1 MiB), which the dead-letter topic
    /// must take (checked when a stage starts).
    pub const MAX_BYTES: usize = Self::MAX_VALUE + 2 * Self::MAX_KEY + Self::MAX_ERROR + 4 * 1024;
}

/// `crawler-state`: what the crawler has published and how far each query got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrawlerState {
    pub pushed_at_ms: Option<i64>,
    pub done_until_ms: Option<i64>,
    pub updated_at_ms: i64,
}
avro_record!(CrawlerState, "crawler-state.avsc");

/// `batcher-seen`: a file already packed into acknowledged batches (exact dedup), or
/// the first `packed_tokens` tokens of one whose rest is still in a partial batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatcherSeen {
    pub content_hash: String,
    pub batch_id: String,
    pub seen_at_ms: i64,
    pub packed_tokens: Option<i64>,
}
avro_record!(BatcherSeen, "batcher-seen.avsc", earlier: ["batcher-seen/1.avsc"]);

/// `neardup-probes` (and, once indexed, `neardup-index`): a file's bands for one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeardupProbe {
    pub content_hash: String,
    pub at_us: i64,
    pub shard: i32,
    pub shards: i32,
    pub buckets: Vec<i64>,
    #[serde(with = "serde_bytes")]
    pub sketch: Vec<u8>,
}
avro_record!(NeardupProbe, "neardup-probe.avsc");

/// An earlier file a shard found similar (in a [`NeardupGather`] answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeardupCandidate {
    pub content_hash: String,
    pub at_us: i64,
    pub similarity: f64,
}

/// `neardup-gather`: a file to judge (`file` set) or one shard's answer about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeardupGather {
    pub content_hash: String,
    pub at_us: i64,
    pub shards: i32,
    #[serde(default)]
    #[serde(with = "serde_bytes")]
    pub file: Option<Vec<u8>>,
    pub candidates: Vec<NeardupCandidate>,
}
avro_record!(NeardupGather, "neardup-gather.avsc");

/// `near-duplicates`: a file dropped for an earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NearDuplicate {
    pub content_hash: String,
    pub repo_full_name: String,
    pub path: String,
    pub representative: String,
    pub similarity: f64,
    pub judged_at_ms: i64,
}
avro_record!(NearDuplicate, "near-duplicates.avsc");

crate::label_set! {
    /// Why the processor did not publish a file (`processor_files_skipped_total{reason}`
    /// and the keys of a summary's `files_skipped`), the first that applies, in the
    /// order the processor checks them.
    pub enum SkipReason {
        /// The repository's license is refused by the `licenses` policy (every file of
        /// the repository).
        License => "license",
        Vendored => "vendored",
        GeneratedName => "generated_name",
        Minified => "minified",
        /// No GitHub Linguist language claims the file.
        UnknownLanguage => "unknown_language",
        /// A Linguist language the `languages` selection leaves out.
        LanguageNotKept => "language_not_kept",
        TooSmall => "too_small",
        TooLarge => "too_large",
        /// NUL bytes or invalid UTF-8.
        Binary => "binary",
        /// A `.ipynb` that is not a notebook's JSON.
        MalformedNotebook => "malformed_notebook",
        TooManyLines => "too_many_lines",
        LongLines => "long_lines",
        LowAlpha => "low_alpha",
        AutoGenerated => "auto_generated",
        EncodedData => "encoded_data",
        /// Holds a benchmark's prompt or solution.
        Decontaminated => "decontaminated",
        /// tree-sitter did not finish within `parse_timeout_ms`.
        ParseFailed => "parse_failed",
        LowQuality => "low_quality",
        /// The same content earlier in the same clone.
        Duplicate => "duplicate",
    }
}

/// `repo-summaries`: what the processor made of one clone, the catalogue's row for its
/// repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoSummary {
    pub full_name: String,
    pub commit_id: String,
    pub stars: Option<i64>,
    pub quality_score: f64,
    pub license_reported: Option<String>,
    pub licenses_detected: Vec<String>,
    /// The license policy's verdict; None when the policy is off.
    pub license_outcome: Option<String>,
    pub files_seen: i64,
    pub files_published: i64,
    pub bytes_published: i64,
    pub published_by_language: BTreeMap<String, i64>,
    /// By [`SkipReason`] label.
    pub files_skipped: BTreeMap<String, i64>,
    pub redactions: BTreeMap<String, i64>,
    pub cloned_at_ms: i64,
}
avro_record!(RepoSummary, "repo-summaries.avsc");

/// Decodes a value written with the schema in `schema_file` (a name under `schemas/`,
/// as topology.yaml gives it) into JSON, for people reading topics (`codelupe tail`).
pub fn decode_to_json(schema_file: &str, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
    fn json<R: AvroRecord>(bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(R::decode(bytes)?)?)
    }
    let file = std::path::Path::new(schema_file)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or(schema_file);
    match file {
        RepoUrl::SCHEMA_FILE => json::<RepoUrl>(bytes),
        RepoClone::SCHEMA_FILE => json::<RepoClone>(bytes),
        CodeFile::SCHEMA_FILE => json::<CodeFile>(bytes),
        TrainingBatch::SCHEMA_FILE => json::<TrainingBatch>(bytes),
        DeadLetter::SCHEMA_FILE => json::<DeadLetter>(bytes),
        CrawlerState::SCHEMA_FILE => json::<CrawlerState>(bytes),
        BatcherSeen::SCHEMA_FILE => json::<BatcherSeen>(bytes),
        NeardupProbe::SCHEMA_FILE => json::<NeardupProbe>(bytes),
        NeardupGather::SCHEMA_FILE => json::<NeardupGather>(bytes),
        NearDuplicate::SCHEMA_FILE => json::<NearDuplicate>(bytes),
        RepoSummary::SCHEMA_FILE => json::<RepoSummary>(bytes),
        other => anyhow::bail!("no record type is bound to schema {other}"),
    }
}

/// Milliseconds since the Unix epoch, the unit of every `*_ms` field.
pub fn now_ms() -> i64 {
    now_us() / 1000
}

/// Microseconds since the Unix epoch, the unit of every `*_us` field.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
