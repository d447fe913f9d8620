//! The dataset card: the dataset's `README.md`, with the YAML header Hugging Face reads
//! (a config per language listing its files, the licences found) and, in its body,
//! files, rows, bytes and lines per language, licences, redactions, and every filter's
//! counts from the repositories and near-duplicates tables. Each file has its figures
//! beside it (`stats/<its key>.json`, put with the file), so any replica rewrites the
//! whole card from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::catalogue::{DropStats, NearDuplicates, RepoStats, Repositories};
use crate::rows::{FileStats, Files};
use crate::store::DatasetStore;
use crate::table::Table;

/// Per language folder: its files and their figures summed.
#[derive(Default)]
struct Language {
    name: String,
    files: u64,
    stats: FileStats,
}

/// Every table's figures, summed for the card.
#[derive(Default)]
pub struct Figures {
    /// Each data file's figures, with its folder (`data/python`).
    pub files: Vec<(String, FileStats)>,
    pub repositories: RepoStats,
    /// Files dropped as near-duplicates.
    pub dropped: u64,
}

impl Figures {
    pub async fn read(store: &DatasetStore) -> anyhow::Result<Self> {
        let mut repositories = RepoStats::default();
        for (_, stats) in store.stats::<RepoStats>(Repositories::ROOT).await? {
            repositories.add(&stats);
        }
        let dropped = store.stats::<DropStats>(NearDuplicates::ROOT).await?;
        Ok(Self {
            files: store.stats(Files::ROOT).await?,
            repositories,
            dropped: dropped.iter().map(|(_, d)| d.rows).sum(),
        })
    }

    /// What tells two readings apart: files, rows, repositories and drops.
    fn extent(&self) -> (usize, u64, u64, u64) {
        let rows = self.files.iter().map(|(_, f)| f.rows).sum();
        (
            self.files.len(),
            rows,
            self.repositories.repositories,
            self.dropped,
        )
    }
}

/// Rewrites the dataset's README.md from every table's figures. Another table's loop or
/// another replica may put a file between the reading and the put, and its own card
/// may land first: the figures are read again after the put, and the card written
/// again while they moved (three times at most; the next flush writes it anyway).
pub async fn rewrite(store: &DatasetStore) -> anyhow::Result<()> {
    let mut figures = Figures::read(store).await?;
    for _ in 0..3 {
        store.put_card(render(&figures)).await?;
        let now = Figures::read(store).await?;
        if now.extent() == figures.extent() {
            break;
        }
        figures = now;
    }
    Ok(())
}

/// The card for these figures.
pub fn render(figures: &Figures) -> String {
    let stats = &figures.files;
    let mut languages: BTreeMap<&str, Language> = BTreeMap::new();
    let mut total = FileStats::default();
    for (folder, file) in stats {
        let folder = folder.strip_prefix("data/").unwrap_or(folder);
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
    // The catalogue's tables, once they have a file (a config with none fails to load).
    for (table, rows) in [
        (Repositories::ROOT, figures.repositories.repositories),
        (NearDuplicates::ROOT, figures.dropped),
    ] {
        if rows > 0 {
            let _ = writeln!(
                card,
                "- config_name: {table}\n  data_files: \"{table}/*.parquet\""
            );
        }
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
    filters(&mut card, figures, total.rows);
    card
}

/// Every filter's counts, from the files of the repositories seen to this dataset's rows.
fn filters(card: &mut String, figures: &Figures, rows: u64) {
    let r = &figures.repositories;
    let _ = writeln!(
        card,
        "\n## How the files were chosen\n\n{} repositories were read ({} bytes of files \
         published); their files went through these filters, the first that applies \
         counting (`repositories/` has the counts per repository, `near-duplicates/` \
         every file dropped and the file it duplicates):\n",
        r.repositories, r.bytes_published
    );
    card.push_str("| step | files |\n|---|---:|\n");
    let _ = writeln!(card, "| in the repositories' trees | {} |", r.files_seen);
    for (reason, n) in &r.skipped {
        let _ = writeln!(card, "| skipped: {reason} | {n} |");
    }
    let _ = writeln!(
        card,
        "| published by the processor | {} |",
        r.files_published
    );
    let _ = writeln!(card, "| dropped as near-duplicates | {} |", figures.dropped);
    let _ = writeln!(card, "| in this dataset | {rows} |");
    card.push_str(
        "\n`decontaminated` files held a benchmark's prompt or solution; `duplicate` ones \
         repeated a file of the same repository.\n",
    );
    card.push_str(
        "\n## Repositories by licence verdict\n\n| verdict | repositories |\n|---|---:|\n",
    );
    for (outcome, n) in &r.license_outcomes {
        let _ = writeln!(card, "| {outcome} | {n} |");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelupe_runtime::records::CodeFile;

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
        let repositories = RepoStats {
            repositories: 2,
            files_seen: 9,
            files_published: 5,
            bytes_published: 20,
            skipped: [
                ("vendored".to_string(), 3),
                ("decontaminated".to_string(), 1),
            ]
            .into(),
            license_outcomes: [("allowed".to_string(), 2)].into(),
        };
        let card = render(&Figures {
            files: vec![
                ("data/cpp".into(), FileStats::of(&[&a, &b])),
                ("data/rust".into(), FileStats::of(&[&c])),
                ("data/rust".into(), FileStats::of(&[&c])),
            ],
            repositories,
            dropped: 1,
        });
        assert!(card.starts_with("---\n"), "{card}");
        assert!(card.contains("- config_name: cpp\n  data_files: \"data/cpp/*.parquet\""));
        assert!(card.contains("| cpp | C++ | 1 | 2 | 8 | 5 |"), "{card}");
        assert!(card.contains("| rust | Rust | 2 | 2 | 8 | 20 |"), "{card}");
        assert!(card.contains("| MIT | 3 |"), "{card}");
        assert!(card.contains("| none detected | 1 |"), "{card}");
        assert!(card.contains("| email | 4 |"), "{card}");
        assert!(card.contains("4 rows, 16 bytes of content, 25 lines, in 3 files."));
        for row in [
            "| in the repositories' trees | 9 |",
            "| skipped: vendored | 3 |",
            "| skipped: decontaminated | 1 |",
            "| published by the processor | 5 |",
            "| dropped as near-duplicates | 1 |",
            "| in this dataset | 4 |",
            "| allowed | 2 |",
        ] {
            assert!(card.contains(row), "{row}\n{card}");
        }
    }
}
