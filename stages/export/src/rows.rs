//! The files table: `distinct-files` records as Parquet rows under
//! `data/<language>/`, one column per field a user filters on, row groups closed at
//! about `row_group_bytes` of content so a reader (DuckDB, `datasets` streaming) holds
//! one bounded group at a time and parallelises over several.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    Float64Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use codelupe_runtime::records::CodeFile;

use crate::table::{Table, BATCH_ROWS};

/// What one data file holds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileStats {
    pub language: String,
    pub rows: u64,
    pub content_bytes: u64,
    pub lines: u64,
    /// Rows by detected licence (SPDX id; `none detected` when the repository's files
    /// named none).
    pub licenses: BTreeMap<String, u64>,
    /// Placeholders put in, by kind.
    pub redactions: BTreeMap<String, u64>,
}

const NONE_DETECTED: &str = "none detected";

impl FileStats {
    pub fn of(files: &[&CodeFile]) -> Self {
        let mut stats = FileStats {
            language: files
                .first()
                .map(|f| f.language.clone())
                .unwrap_or_default(),
            ..FileStats::default()
        };
        for file in files {
            stats.rows += 1;
            stats.content_bytes += file.content.len() as u64;
            stats.lines += file.lines.max(0) as u64;
            if file.license.detected.is_empty() {
                *stats.licenses.entry(NONE_DETECTED.into()).or_default() += 1;
            }
            for id in &file.license.detected {
                *stats.licenses.entry(id.clone()).or_default() += 1;
            }
            for (kind, n) in &file.redactions {
                *stats.redactions.entry(kind.clone()).or_default() += (*n).max(0) as u64;
            }
        }
        stats
    }

    /// Adds `other`'s figures to these.
    pub fn add(&mut self, other: &FileStats) {
        self.rows += other.rows;
        self.content_bytes += other.content_bytes;
        self.lines += other.lines;
        for (id, n) in &other.licenses {
            *self.licenses.entry(id.clone()).or_default() += n;
        }
        for (kind, n) in &other.redactions {
            *self.redactions.entry(kind.clone()).or_default() += n;
        }
    }
}

/// The processor's quality terms (`quality_components`), one struct field each; a term
/// a record lacks is null.
pub const QUALITY_COMPONENTS: [&str; 6] = [
    "syntax",
    "structure",
    "comments",
    "nesting",
    "line_length",
    "alpha",
];

/// The processor's redaction kinds (`redactions`), one struct field each, 0 when none.
pub const REDACTION_KINDS: [&str; 4] = ["email", "ip_address", "key", "password"];

/// The curated files, one folder per language.
pub struct Files;

impl Table for Files {
    type Record = CodeFile;
    type Stats = FileStats;

    const ROOT: &'static str = "data";

    fn folder(file: &CodeFile) -> String {
        format!("{}/{}", Self::ROOT, language_folder(&file.language))
    }

    fn size(file: &CodeFile) -> usize {
        file.content.len()
    }

    fn schema() -> SchemaRef {
        file_schema()
    }

    fn batch(files: &[&CodeFile]) -> RecordBatch {
        let mut columns = Columns::new();
        for file in files {
            columns.push(file);
        }
        columns.finish()
    }

    fn stats(files: &[&CodeFile]) -> FileStats {
        FileStats::of(files)
    }
}

pub fn struct_fields(names: &[&str], data_type: DataType, nullable: bool) -> Fields {
    names
        .iter()
        .map(|name| Field::new(*name, data_type.clone(), nullable))
        .collect()
}

/// The export's columns, the same in every file (a reader unions them by name).
pub fn file_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name| Field::new(name, DataType::Utf8, false);
            Arc::new(Schema::new(vec![
                text("content_hash"),
                text("repository"),
                text("commit"),
                text("path"),
                text("language"),
                text("content"),
                Field::new("size_bytes", DataType::Int64, false),
                Field::new("lines", DataType::Int64, false),
                Field::new("quality_score", DataType::Float64, false),
                Field::new(
                    "quality_components",
                    DataType::Struct(struct_fields(&QUALITY_COMPONENTS, DataType::Float64, true)),
                    false,
                ),
                Field::new(
                    "licenses_detected",
                    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                    false,
                ),
                Field::new("license_confidence", DataType::Float64, true),
                Field::new("license_reported", DataType::Utf8, true),
                Field::new(
                    "redactions",
                    DataType::Struct(struct_fields(&REDACTION_KINDS, DataType::Int64, false)),
                    false,
                ),
            ]))
        })
        .clone()
}

/// Builders for one Arrow batch, column by column.
struct Columns {
    text: [StringBuilder; 6],
    size_bytes: Int64Builder,
    lines: Int64Builder,
    quality_score: Float64Builder,
    components: StructBuilder,
    detected: ListBuilder<StringBuilder>,
    confidence: Float64Builder,
    reported: StringBuilder,
    redactions: StructBuilder,
}

impl Columns {
    fn new() -> Self {
        let struct_of = |names: &[&str], data_type: DataType, nullable: bool| {
            StructBuilder::from_fields(struct_fields(names, data_type, nullable), BATCH_ROWS)
        };
        Columns {
            text: std::array::from_fn(|_| StringBuilder::new()),
            size_bytes: Int64Builder::new(),
            lines: Int64Builder::new(),
            quality_score: Float64Builder::new(),
            components: struct_of(&QUALITY_COMPONENTS, DataType::Float64, true),
            detected: ListBuilder::new(StringBuilder::new()),
            confidence: Float64Builder::new(),
            reported: StringBuilder::new(),
            redactions: struct_of(&REDACTION_KINDS, DataType::Int64, false),
        }
    }

    fn push(&mut self, file: &CodeFile) {
        let texts = [
            &file.content_hash,
            &file.repo_full_name,
            &file.commit_id,
            &file.path,
            &file.language,
            &file.content,
        ];
        for (builder, value) in self.text.iter_mut().zip(texts) {
            builder.append_value(value);
        }
        self.size_bytes.append_value(file.size_bytes);
        self.lines.append_value(file.lines);
        self.quality_score.append_value(file.quality_score);
        for (i, name) in QUALITY_COMPONENTS.iter().enumerate() {
            let value = file.quality_components.get(*name).copied();
            self.components
                .field_builder::<Float64Builder>(i)
                .expect("a float field")
                .append_option(value);
        }
        self.components.append(true);
        for id in &file.license.detected {
            self.detected.values().append_value(id);
        }
        self.detected.append(true);
        self.confidence.append_option(file.license.confidence);
        self.reported
            .append_option(file.license.reported.as_deref());
        append_counts(
            &mut self.redactions,
            counts_of(&REDACTION_KINDS, &file.redactions),
        );
    }

    fn finish(mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = self
            .text
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.size_bytes.finish()));
        columns.push(Arc::new(self.lines.finish()));
        columns.push(Arc::new(self.quality_score.finish()));
        columns.push(Arc::new(self.components.finish()));
        columns.push(Arc::new(self.detected.finish()));
        columns.push(Arc::new(self.confidence.finish()));
        columns.push(Arc::new(self.reported.finish()));
        columns.push(Arc::new(self.redactions.finish()));
        RecordBatch::try_new(file_schema(), columns).expect("columns follow the schema")
    }
}

/// The counts of `map` under `names`, in order, 0 for a name it lacks.
pub fn counts_of<'a>(
    names: &'a [&str],
    map: &'a std::collections::BTreeMap<String, i64>,
) -> impl Iterator<Item = i64> + 'a {
    names
        .iter()
        .map(|name| map.get(*name).copied().unwrap_or(0))
}

/// One row of a struct of integer fields, in field order.
pub fn append_counts(builder: &mut StructBuilder, counts: impl Iterator<Item = i64>) {
    for (i, n) in counts.enumerate() {
        builder
            .field_builder::<Int64Builder>(i)
            .expect("an integer field")
            .append_value(n);
    }
    builder.append(true);
}

/// The folder a language's files go to under `data/`: lower case, `+` as `p` and `#`
/// as `sharp` (C++ → cpp, C# → csharp), anything else not alphanumeric as `-`.
pub fn language_folder(language: &str) -> String {
    let mut folder = String::new();
    for c in language.trim().chars() {
        match c {
            '+' => folder.push('p'),
            '#' => folder.push_str("sharp"),
            c if c.is_ascii_alphanumeric() => folder.push(c.to_ascii_lowercase()),
            _ if !folder.ends_with('-') => folder.push('-'),
            _ => {}
        }
    }
    let folder = folder.trim_matches('-');
    if folder.is_empty() {
        "unknown".into()
    } else {
        folder.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::parquet_file;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn file(i: usize, content_len: usize) -> CodeFile {
        CodeFile {
            content_hash: format!("{i:064x}"),
            repo_full_name: "a/b".into(),
            commit_id: "c0ffee".into(),
            path: format!("src/{i}.py"),
            language: "Python".into(),
            content: "x".repeat(content_len),
            size_bytes: content_len as i64,
            lines: 1,
            quality_score: 70.0,
            quality_components: [("syntax".to_string(), 1.0)].into(),
            parse_stats: None,
            redactions: [("email".to_string(), 2)].into(),
            license: Default::default(),
        }
    }

    #[test]
    fn row_groups_close_at_the_content_size_asked() {
        let files: Vec<CodeFile> = (0..5_000).map(|i| file(i, 1_000)).collect();
        let refs: Vec<&CodeFile> = files.iter().collect();
        let bytes = parquet_file::<Files>(&refs, 2_000_000).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.file_metadata().num_rows(), 5_000);
        // 2 MB of content is 2,000 files, closed at the next 1,024-row batch: 2,048.
        let rows: Vec<i64> = meta.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(rows, [2_048, 2_048, 904]);
    }

    #[test]
    fn language_folders_are_plain_names() {
        assert_eq!(language_folder("C++"), "cpp");
        assert_eq!(language_folder("C#"), "csharp");
        assert_eq!(language_folder("Jupyter Notebook"), "jupyter-notebook");
        assert_eq!(language_folder("../etc"), "etc");
        assert_eq!(language_folder(""), "unknown");
    }
}
