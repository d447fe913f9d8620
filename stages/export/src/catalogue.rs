//! The catalogue beside the files: `repositories/` (one row per clone the processor
//! summarised: stars, licences, files seen, published and skipped by reason) and
//! `near-duplicates/` (one row per file dropped for an earlier one, and which). "Is my
//! repository in it, and which files?" is then one DuckDB query over `repositories`
//! and `data`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    Float64Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use codelupe_runtime::labels::LabelSet as _;
use codelupe_runtime::records::{NearDuplicate, RepoSummary, SkipReason};

use crate::rows::{append_counts, counts_of, struct_fields, REDACTION_KINDS};
use crate::table::{utc_millis, Table};

/// A skip reason this build does not know (a newer processor's), summed.
pub const OTHER_REASON: &str = "other";

/// The `files_skipped` struct's fields: every skip reason, then `other`.
fn skip_fields() -> Vec<&'static str> {
    let mut names = SkipReason::labels();
    names.push(OTHER_REASON);
    names
}

/// What one repositories file holds, for the card.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RepoStats {
    pub repositories: u64,
    pub files_seen: u64,
    pub files_published: u64,
    pub bytes_published: u64,
    /// Files not published, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Repositories by the licence policy's verdict (`off` when it was off).
    pub license_outcomes: BTreeMap<String, u64>,
}

impl RepoStats {
    pub fn add(&mut self, other: &RepoStats) {
        self.repositories += other.repositories;
        self.files_seen += other.files_seen;
        self.files_published += other.files_published;
        self.bytes_published += other.bytes_published;
        for (reason, n) in &other.skipped {
            *self.skipped.entry(reason.clone()).or_default() += n;
        }
        for (outcome, n) in &other.license_outcomes {
            *self.license_outcomes.entry(outcome.clone()).or_default() += n;
        }
    }
}

/// One row per repository summary.
pub struct Repositories;

impl Table for Repositories {
    type Record = RepoSummary;
    type Stats = RepoStats;

    const ROOT: &'static str = "repositories";

    fn folder(_: &RepoSummary) -> String {
        Self::ROOT.into()
    }

    fn size(summary: &RepoSummary) -> usize {
        // Names and counts: a few hundred bytes a row.
        256 + summary.full_name.len()
    }

    fn schema() -> SchemaRef {
        static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
        SCHEMA
            .get_or_init(|| {
                let text = |name, nullable| Field::new(name, DataType::Utf8, nullable);
                let count = |name| Field::new(name, DataType::Int64, false);
                Arc::new(Schema::new(vec![
                    text("repository", false),
                    text("commit", false),
                    Field::new("stars", DataType::Int64, true),
                    Field::new("quality_score", DataType::Float64, false),
                    text("license_reported", true),
                    Field::new("licenses_detected", string_list(), false),
                    text("license_outcome", true),
                    count("files_seen"),
                    count("files_published"),
                    count("bytes_published"),
                    Field::new(
                        "files_skipped",
                        DataType::Struct(struct_fields(&skip_fields(), DataType::Int64, false)),
                        false,
                    ),
                    Field::new("published_by_language", language_counts(), false),
                    Field::new(
                        "redactions",
                        DataType::Struct(struct_fields(&REDACTION_KINDS, DataType::Int64, false)),
                        false,
                    ),
                    Field::new("cloned_at", utc_millis(), false),
                ]))
            })
            .clone()
    }

    fn batch(summaries: &[&RepoSummary]) -> RecordBatch {
        let mut columns = RepoColumns::new();
        for summary in summaries {
            columns.push(summary);
        }
        columns.finish()
    }

    fn stats(summaries: &[&RepoSummary]) -> RepoStats {
        let mut stats = RepoStats::default();
        for s in summaries {
            stats.repositories += 1;
            stats.files_seen += s.files_seen.max(0) as u64;
            stats.files_published += s.files_published.max(0) as u64;
            stats.bytes_published += s.bytes_published.max(0) as u64;
            for (reason, n) in &s.files_skipped {
                *stats.skipped.entry(reason.clone()).or_default() += (*n).max(0) as u64;
            }
            let outcome = s.license_outcome.as_deref().unwrap_or("off");
            *stats.license_outcomes.entry(outcome.into()).or_default() += 1;
        }
        stats
    }
}

fn string_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// `published_by_language`: a list of (language, files), as `datasets` reads no map.
fn language_counts() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(language_count_fields()),
        true,
    )))
}

fn language_count_fields() -> Fields {
    Fields::from(vec![
        Field::new("language", DataType::Utf8, false),
        Field::new("files", DataType::Int64, false),
    ])
}

/// Builders for one batch of repository rows.
struct RepoColumns {
    text: [StringBuilder; 2],
    stars: Int64Builder,
    quality_score: Float64Builder,
    reported: StringBuilder,
    detected: ListBuilder<StringBuilder>,
    outcome: StringBuilder,
    counts: [Int64Builder; 3],
    skipped: StructBuilder,
    languages: ListBuilder<StructBuilder>,
    redactions: StructBuilder,
    cloned_at: TimestampMillisecondBuilder,
}

impl RepoColumns {
    fn new() -> Self {
        let counts = |names: &[&str]| {
            StructBuilder::from_fields(struct_fields(names, DataType::Int64, false), 0)
        };
        RepoColumns {
            text: std::array::from_fn(|_| StringBuilder::new()),
            stars: Int64Builder::new(),
            quality_score: Float64Builder::new(),
            reported: StringBuilder::new(),
            detected: ListBuilder::new(StringBuilder::new()),
            outcome: StringBuilder::new(),
            counts: std::array::from_fn(|_| Int64Builder::new()),
            skipped: counts(&skip_fields()),
            languages: ListBuilder::new(StructBuilder::from_fields(language_count_fields(), 0)),
            redactions: counts(&REDACTION_KINDS),
            cloned_at: TimestampMillisecondBuilder::new().with_timezone("UTC"),
        }
    }

    fn push(&mut self, s: &RepoSummary) {
        self.text[0].append_value(&s.full_name);
        self.text[1].append_value(&s.commit_id);
        self.stars.append_option(s.stars);
        self.quality_score.append_value(s.quality_score);
        self.reported.append_option(s.license_reported.as_deref());
        for id in &s.licenses_detected {
            self.detected.values().append_value(id);
        }
        self.detected.append(true);
        self.outcome.append_option(s.license_outcome.as_deref());
        for (builder, n) in
            self.counts
                .iter_mut()
                .zip([s.files_seen, s.files_published, s.bytes_published])
        {
            builder.append_value(n);
        }
        let known = SkipReason::labels();
        let other = s
            .files_skipped
            .iter()
            .filter(|(reason, _)| !known.contains(&reason.as_str()))
            .map(|(_, n)| n)
            .sum::<i64>();
        let skipped = counts_of(&known, &s.files_skipped).chain([other]);
        append_counts(&mut self.skipped, skipped);
        let by_language = self.languages.values();
        for (language, files) in &s.published_by_language {
            by_language
                .field_builder::<StringBuilder>(0)
                .expect("a text field")
                .append_value(language);
            by_language
                .field_builder::<Int64Builder>(1)
                .expect("an integer field")
                .append_value(*files);
            by_language.append(true);
        }
        self.languages.append(true);
        append_counts(
            &mut self.redactions,
            counts_of(&REDACTION_KINDS, &s.redactions),
        );
        self.cloned_at.append_value(s.cloned_at_ms);
    }

    fn finish(mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = Vec::new();
        columns.extend(
            self.text
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(Arc::new(self.stars.finish()));
        columns.push(Arc::new(self.quality_score.finish()));
        columns.push(Arc::new(self.reported.finish()));
        columns.push(Arc::new(self.detected.finish()));
        columns.push(Arc::new(self.outcome.finish()));
        columns.extend(
            self.counts
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(Arc::new(self.skipped.finish()));
        columns.push(Arc::new(self.languages.finish()));
        columns.push(Arc::new(self.redactions.finish()));
        columns.push(Arc::new(self.cloned_at.finish()));
        RecordBatch::try_new(Repositories::schema(), columns).expect("columns follow the schema")
    }
}

/// What one near-duplicates file holds, for the card.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DropStats {
    pub rows: u64,
}

/// One row per file dropped as a near-duplicate of an earlier one.
pub struct NearDuplicates;

impl Table for NearDuplicates {
    type Record = NearDuplicate;
    type Stats = DropStats;

    const ROOT: &'static str = "near-duplicates";

    fn folder(_: &NearDuplicate) -> String {
        Self::ROOT.into()
    }

    fn size(dropped: &NearDuplicate) -> usize {
        160 + dropped.repo_full_name.len() + dropped.path.len()
    }

    fn schema() -> SchemaRef {
        static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
        SCHEMA
            .get_or_init(|| {
                let text = |name| Field::new(name, DataType::Utf8, false);
                Arc::new(Schema::new(vec![
                    text("content_hash"),
                    text("repository"),
                    text("path"),
                    text("representative"),
                    Field::new("similarity", DataType::Float64, false),
                    Field::new("judged_at", utc_millis(), false),
                ]))
            })
            .clone()
    }

    fn batch(dropped: &[&NearDuplicate]) -> RecordBatch {
        let mut text: [StringBuilder; 4] = std::array::from_fn(|_| StringBuilder::new());
        let mut similarity = Float64Builder::new();
        let mut judged_at = TimestampMillisecondBuilder::new().with_timezone("UTC");
        for d in dropped {
            let values = [
                &d.content_hash,
                &d.repo_full_name,
                &d.path,
                &d.representative,
            ];
            for (builder, value) in text.iter_mut().zip(values) {
                builder.append_value(value);
            }
            similarity.append_value(d.similarity);
            judged_at.append_value(d.judged_at_ms);
        }
        let mut columns: Vec<ArrayRef> = text
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(similarity.finish()));
        columns.push(Arc::new(judged_at.finish()));
        RecordBatch::try_new(Self::schema(), columns).expect("columns follow the schema")
    }

    fn stats(dropped: &[&NearDuplicate]) -> DropStats {
        DropStats {
            rows: dropped.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::parquet_file;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn summary(name: &str, skipped: &[(&str, i64)]) -> RepoSummary {
        RepoSummary {
            full_name: name.into(),
            commit_id: "c0ffee".into(),
            stars: Some(5),
            quality_score: 40.0,
            license_reported: None,
            licenses_detected: vec!["MIT".into()],
            license_outcome: Some("allowed".into()),
            files_seen: 10,
            files_published: 4,
            bytes_published: 4_000,
            published_by_language: [("Rust".to_string(), 4)].into(),
            files_skipped: skipped.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            redactions: [("email".to_string(), 1)].into(),
            cloned_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_reason_this_build_does_not_know_is_counted_as_other() {
        let a = summary("a/b", &[("vendored", 5), ("from_the_future", 1)]);
        let bytes = parquet_file::<Repositories>(&[&a], 1 << 20).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 1);
        let batch = Repositories::batch(&[&a]);
        let skipped = batch
            .column_by_name("files_skipped")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StructArray>()
            .unwrap();
        let field = |name: &str| {
            skipped
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap()
                .value(0)
        };
        assert_eq!(
            (field("vendored"), field("other"), field("too_small")),
            (5, 1, 0)
        );
        let stats = Repositories::stats(&[&a, &a]);
        assert_eq!(stats.repositories, 2);
        assert_eq!(stats.skipped["vendored"], 10);
        assert_eq!(stats.license_outcomes["allowed"], 2);
    }
}
