//! Which repositories are worth cloning, decided from `repo-urls` metadata alone, and
//! the repository quality score.
//!
//! Excluded words match whole tokens of the name and description (split at
//! non-alphanumerics and camelCase humps), never substrings: "test" rejects
//! `my-test-repo` and `testHarness`, not `fastest`; "copy" does not reject "copyright".

use chrono::{NaiveDate, TimeZone, Utc};
use codelupe_runtime::records::RepoUrl;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterOptions {
    pub min_stars: i64,
    pub min_forks: i64,
    /// Primary languages accepted (case-insensitive); empty accepts any, including none.
    pub languages: Vec<String>,
    /// SPDX ids accepted (case-insensitive); empty accepts any, including none.
    pub licenses: Vec<String>,
    pub exclude_archived: bool,
    pub exclude_forks: bool,
    pub max_size_kb: Option<i64>,
    /// Last push on or after this day (YYYY-MM-DD).
    pub pushed_after: Option<NaiveDate>,
    pub exclude_words: Vec<String>,
}

impl Default for FilterOptions {
    fn default() -> Self {
        Self {
            min_stars: 10,
            min_forks: 0,
            languages: codelupe_runtime::language::DEFAULT_LANGUAGES
                .iter()
                .map(|l| l.to_string())
                .collect(),
            licenses: Vec::new(),
            exclude_archived: true,
            exclude_forks: true,
            max_size_kb: Some(2 * 1024 * 1024),
            pushed_after: None,
            exclude_words: [
                "awesome", "tutorial", "homework", "leetcode", "dotfiles", "mirror",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

codelupe_runtime::label_set! {
    /// The first rule a repository failed
    /// (`downloader_quality_filtered_reasons_total{reason}`).
    pub enum Rejection {
        Stars => "stars",
        Forks => "forks",
        Language => "language",
        License => "license",
        Archived => "archived",
        Fork => "fork",
        Size => "size",
        Stale => "stale",
        ExcludedWord => "excluded_word",
    }
}

pub fn check(repo: &RepoUrl, o: &FilterOptions) -> Result<(), Rejection> {
    let in_list = |list: &[String], value: &Option<String>| {
        list.is_empty()
            || value
                .as_ref()
                .is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
    };
    if repo.stars < o.min_stars {
        return Err(Rejection::Stars);
    }
    if repo.forks < o.min_forks {
        return Err(Rejection::Forks);
    }
    if !in_list(&o.languages, &repo.language) {
        return Err(Rejection::Language);
    }
    if !in_list(&o.licenses, &repo.license_spdx) {
        return Err(Rejection::License);
    }
    if o.exclude_archived && repo.archived {
        return Err(Rejection::Archived);
    }
    if o.exclude_forks && repo.fork {
        return Err(Rejection::Fork);
    }
    if o.max_size_kb.is_some_and(|max| repo.size_kb > max) {
        return Err(Rejection::Size);
    }
    if let Some(day) = o.pushed_after {
        let cutoff = Utc
            .from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"))
            .timestamp_millis();
        if repo.pushed_at_ms.is_none_or(|p| p < cutoff) {
            return Err(Rejection::Stale);
        }
    }
    if !o.exclude_words.is_empty() {
        let name = repo.full_name.rsplit('/').next().unwrap_or_default();
        let text = format!("{name} {}", repo.description.as_deref().unwrap_or_default());
        let tokens = tokens(&text);
        if o.exclude_words
            .iter()
            .any(|w| tokens.iter().any(|t| t.eq_ignore_ascii_case(w)))
        {
            return Err(Rejection::ExcludedWord);
        }
    }
    Ok(())
}

/// Words of a name or sentence: split at anything not a letter or digit, and at
/// lower→upper camelCase humps.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in text.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Repository quality score, 0–100:
///
/// | term | points | full marks at |
/// |---|---|---|
/// | stars | 40 × min(1, log10(stars + 1) / 4) | 10,000 stars |
/// | forks | 15 × min(1, log10(forks + 1) / 3) | 1,000 forks |
/// | recency | 15 × (1 − min(1, days since push / 1,095)) | pushed today; 0 after 3 years |
/// | license | 10 if an SPDX license is declared | |
/// | description | 10 if described | |
/// | topics | 10 × min(1, topics / 3) | 3 topics |
pub fn quality_score(repo: &RepoUrl, now_ms: i64) -> f64 {
    let log_share = |value: i64, full_at_log10: f64| {
        ((value.max(0) as f64 + 1.0).log10() / full_at_log10).min(1.0)
    };
    let stars = 40.0 * log_share(repo.stars, 4.0);
    let forks = 15.0 * log_share(repo.forks, 3.0);
    let recency = repo
        .pushed_at_ms
        .map(|p| {
            let days = (now_ms - p).max(0) as f64 / 86_400_000.0;
            15.0 * (1.0 - (days / 1095.0).min(1.0))
        })
        .unwrap_or(0.0);
    let license = if repo.license_spdx.is_some() {
        10.0
    } else {
        0.0
    };
    let description = if repo
        .description
        .as_deref()
        .is_some_and(|d| !d.trim().is_empty())
    {
        10.0
    } else {
        0.0
    };
    let topics = 10.0 * (repo.topics.len() as f64 / 3.0).min(1.0);
    (stars + forks + recency + license + description + topics).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoUrl {
        RepoUrl {
            full_name: "owner/fastest-parser".into(),
            clone_url: "https://github.com/owner/fastest-parser.git".into(),
            default_branch: Some("main".into()),
            language: Some("Rust".into()),
            stars: 500,
            forks: 20,
            size_kb: 1000,
            topics: vec!["parser".into()],
            license_spdx: Some("MIT".into()),
            archived: false,
            fork: false,
            created_at_ms: None,
            pushed_at_ms: Some(codelupe_runtime::records::now_ms()),
            description: Some("Copyright-clean, the fastest parser".into()),
            source: "github".into(),
            discovered_at_ms: 0,
        }
    }

    #[test]
    fn words_match_whole_tokens_only() {
        let o = FilterOptions {
            exclude_words: vec!["test".into(), "copy".into()],
            ..Default::default()
        };
        assert_eq!(
            check(&repo(), &o),
            Ok(()),
            "fastest and copyright are not test and copy"
        );
        for name in [
            "owner/my-test-repo",
            "owner/test",
            "owner/parserTest",
            "owner/test_utils",
        ] {
            let r = RepoUrl {
                full_name: name.into(),
                ..repo()
            };
            assert_eq!(check(&r, &o), Err(Rejection::ExcludedWord), "{name}");
        }
        assert_eq!(
            tokens("HTTPServer fooBar v2Api"),
            ["HTTPServer", "foo", "Bar", "v2", "Api"]
        );
    }

    #[test]
    fn rules_report_the_first_failure() {
        let o = FilterOptions::default();
        assert_eq!(
            check(&RepoUrl { stars: 3, ..repo() }, &o),
            Err(Rejection::Stars)
        );
        assert_eq!(
            check(
                &RepoUrl {
                    language: Some("COBOL".into()),
                    ..repo()
                },
                &o
            ),
            Err(Rejection::Language)
        );
        assert_eq!(
            check(
                &RepoUrl {
                    language: Some("c++".into()),
                    ..repo()
                },
                &o
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &RepoUrl {
                    archived: true,
                    ..repo()
                },
                &o
            ),
            Err(Rejection::Archived)
        );
        assert_eq!(
            check(
                &RepoUrl {
                    fork: true,
                    ..repo()
                },
                &o
            ),
            Err(Rejection::Fork)
        );
        assert_eq!(
            check(
                &RepoUrl {
                    size_kb: 10_000_000,
                    ..repo()
                },
                &o
            ),
            Err(Rejection::Size)
        );
        let licensed = FilterOptions {
            licenses: vec!["apache-2.0".into()],
            ..Default::default()
        };
        assert_eq!(check(&repo(), &licensed), Err(Rejection::License));
        let recent = FilterOptions {
            pushed_after: NaiveDate::from_ymd_opt(2100, 1, 1),
            ..Default::default()
        };
        assert_eq!(check(&repo(), &recent), Err(Rejection::Stale));
    }

    #[test]
    fn score_follows_the_documented_formula() {
        let now = codelupe_runtime::records::now_ms();
        let full = RepoUrl {
            stars: 9_999,
            forks: 999,
            topics: vec!["a".into(), "b".into(), "c".into()],
            pushed_at_ms: Some(now),
            ..repo()
        };
        assert!((quality_score(&full, now) - 100.0).abs() < 1e-9);
        let bare = RepoUrl {
            stars: 0,
            forks: 0,
            topics: vec![],
            pushed_at_ms: None,
            license_spdx: None,
            description: None,
            ..repo()
        };
        assert_eq!(quality_score(&bare, now), 0.0);
        let r = repo(); // 500 stars, 20 forks, pushed now, licensed, described, 1 topic
        let expected = 40.0 * (501f64.log10() / 4.0)
            + 15.0 * (21f64.log10() / 3.0)
            + 15.0
            + 10.0
            + 10.0
            + 10.0 / 3.0;
        assert!((quality_score(&r, now) - expected).abs() < 1e-9);
    }
}
