//! The dataset card: the dataset's `README.md`, with the YAML header Hugging Face reads
//! (a config per language listing its files, the licences found) and, in its body,
//! files, rows, bytes and lines per language, licences and redactions. Each data file
//! has its figures beside it (`stats/<language>/<name>.json`, put with the file), so
//! any replica rewrites the whole card from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use codelupe_runtime::records::CodeFile;

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

    fn add(&mut self, other: &FileStats) {
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

/// Per language folder: its files and their figures summed.
#[derive(Default)]
struct Language {
    name: String,
    files: u64,
    stats: FileStats,
}

/// The card for the data files whose figures are `stats` (folder, figures).
pub fn render(stats: &[(String, FileStats)]) -> String {
    let mut languages: BTreeMap<&str, Language> = BTreeMap::new();
    let mut total = FileStats::default();
    for (folder, file) in stats {
        let language = languages.entry(folder).or_default();
        language.name.clone_from(&file.language);
        language.files += 1;
        language.stats.add(file);
        total.add(file);
    }
    let mut card = String::from("---\n");
    card.push_str("pretty_name: CodeLupe curated source code\ntags: [code]\n");
    card.push_str("license: other\nlicense_name: per-repository\nlicense_details: the licences each file's repository holds, in licenses_detected\n");
    card.push_str(
        "configs:\n- config_name: default\n  data_files: \"data/*/*.parquet\"\n  default: true\n",
    );
    for folder in languages.keys() {
        let _ = writeln!(
            card,
            "- config_name: {folder}\n  data_files: \"data/{folder}/*.parquet\""
        );
    }
    card.push_str("---\n\n# CodeLupe curated source code\n\n");
    card.push_str(
        "Source files a CodeLupe pipeline kept: licence-checked, redacted, decontaminated, \
         exact and near-duplicates removed. One row per file; one config per language.\n\n",
    );
    let _ = writeln!(
        card,
        "{} rows, {} bytes of content, {} lines, in {} files.\n",
        total.rows,
        total.content_bytes,
        total.lines,
        stats.len()
    );
    card.push_str(
        "| config | language | files | rows | bytes | lines |\n|---|---|---:|---:|---:|---:|\n",
    );
    for (folder, l) in &languages {
        let s = &l.stats;
        let _ = writeln!(
            card,
            "| {folder} | {} | {} | {} | {} | {} |",
            l.name, l.files, s.rows, s.content_bytes, s.lines
        );
    }
    card.push_str("\n## Licences detected\n\n| licence | rows |\n|---|---:|\n");
    for (id, n) in &total.licenses {
        let _ = writeln!(card, "| {id} | {n} |");
    }
    card.push_str("\n## Redactions\n\n| kind | placeholders |\n|---|---:|\n");
    for (kind, n) in &total.redactions {
        let _ = writeln!(card, "| {kind} | {n} |");
    }
    card
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(language: &str, licence: Option<&str>, lines: i64) -> CodeFile {
        CodeFile {
            content_hash: String::new(),
            repo_full_name: "a/b".into(),
            commit_id: String::new(),
            path: "x".into(),
            language: language.into(),
            content: "abcd".into(),
            size_bytes: 4,
            lines,
            quality_score: 50.0,
            quality_components: Default::default(),
            parse_stats: None,
            redactions: [("email".to_string(), 1)].into(),
            license: codelupe_runtime::records::RepoLicense {
                detected: licence.into_iter().map(String::from).collect(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_card_sums_every_file_by_language_with_a_config_each() {
        let (a, b, c) = (
            file("C++", Some("MIT"), 3),
            file("C++", None, 2),
            file("Rust", Some("MIT"), 10),
        );
        let card = render(&[
            ("cpp".into(), FileStats::of(&[&a, &b])),
            ("rust".into(), FileStats::of(&[&c])),
            ("rust".into(), FileStats::of(&[&c])),
        ]);
        assert!(card.starts_with("---\n"), "{card}");
        assert!(card.contains("- config_name: cpp\n  data_files: \"data/cpp/*.parquet\""));
        assert!(card.contains("| cpp | C++ | 1 | 2 | 8 | 5 |"), "{card}");
        assert!(card.contains("| rust | Rust | 2 | 2 | 8 | 20 |"), "{card}");
        assert!(card.contains("| MIT | 3 |"), "{card}");
        assert!(card.contains("| none detected | 1 |"), "{card}");
        assert!(card.contains("| email | 4 |"), "{card}");
        assert!(card.contains("4 rows, 16 bytes of content, 25 lines, in 3 files."));
    }
}
