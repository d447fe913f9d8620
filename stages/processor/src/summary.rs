//! What the processor publishes: each file worth training on to `code-files`, then one
//! summary of the clone to `repo-summaries` (files seen, published and skipped by
//! reason, licences, redactions), in the same transaction. The export turns the
//! summaries into the dataset's repositories table.

use std::sync::Arc;

use codelupe_runtime::codec::CodecError;
use codelupe_runtime::labels::LabelSet as _;
use codelupe_runtime::records::{CodeFile, RepoClone, RepoLicense, RepoSummary};
use codelupe_runtime::{AvroRecord as _, Keyed, Output};

use crate::license::LicenseOutcome;
use crate::metrics::Skip;

/// One record the processor publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    File(Box<CodeFile>),
    /// A clone's summary and the topic it goes to.
    Summary(Box<RepoSummary>, Arc<str>),
}

impl Published {
    /// The file, if this is one.
    pub fn into_file(self) -> Option<CodeFile> {
        match self {
            Published::File(file) => Some(*file),
            Published::Summary(..) => None,
        }
    }

    /// The summary, if this is one.
    pub fn into_summary(self) -> Option<RepoSummary> {
        match self {
            Published::Summary(summary, _) => Some(*summary),
            Published::File(_) => None,
        }
    }
}

impl Output for Published {
    fn encode_output(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            Published::File(file) => file.encode(),
            Published::Summary(summary, _) => summary.encode(),
        }
    }

    fn side_topic(&self) -> Option<&str> {
        match self {
            Published::File(_) => None,
            Published::Summary(_, topic) => Some(topic),
        }
    }
}

/// A clone's summary, counted as its verdicts are read.
pub struct Summarizing(RepoSummary);

impl Summarizing {
    /// For `clone`, whose licence was found `license` (and judged `outcome` by the
    /// policy, when on), with `files_seen` files in its tree.
    pub fn new(
        clone: &RepoClone,
        license: &RepoLicense,
        outcome: Option<LicenseOutcome>,
        files_seen: usize,
    ) -> Self {
        Self(RepoSummary {
            full_name: clone.full_name.clone(),
            commit_id: clone.commit_id.clone(),
            stars: clone.stars,
            quality_score: clone.quality_score,
            license_reported: license.reported.clone(),
            licenses_detected: license.detected.clone(),
            license_outcome: outcome.map(|o| o.label().to_string()),
            files_seen: files_seen as i64,
            files_published: 0,
            bytes_published: 0,
            published_by_language: Default::default(),
            files_skipped: Default::default(),
            redactions: Default::default(),
            cloned_at_ms: clone.cloned_at_ms,
        })
    }

    pub fn published(&mut self, file: &CodeFile) {
        let s = &mut self.0;
        s.files_published += 1;
        s.bytes_published += file.size_bytes;
        *s.published_by_language
            .entry(file.language.clone())
            .or_default() += 1;
        for (kind, n) in &file.redactions {
            *s.redactions.entry(kind.clone()).or_default() += n;
        }
    }

    pub fn skipped(&mut self, reason: Skip) {
        *self
            .0
            .files_skipped
            .entry(reason.label().to_string())
            .or_default() += 1;
    }

    /// The summary to publish to `topic`, keyed by the repository.
    pub fn finish(self, topic: &str) -> Keyed<Published> {
        Keyed {
            key: self.0.full_name.clone(),
            value: Published::Summary(Box::new(self.0), topic.into()),
        }
    }
}
