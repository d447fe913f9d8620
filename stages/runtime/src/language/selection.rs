//! Which languages are kept: configuration over Linguist's kinds and names, The Stack
//! v2's selection by default.

use std::collections::HashSet;

use serde::Deserialize;

use super::index::{candidates, kind, resolve, tie_break, Kind};

/// The languages kept, as configured (`stages.processor.options.languages`).
///
/// The default is The Stack v2's: every programming and markup language, SQL (which
/// Linguist counts as data, its dialects as programming), Markdown (prose), and the
/// data formats JSON and YAML up to 5,000 characters, StarCoder's rule for data files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selection {
    /// Linguist kinds whose languages are all kept.
    pub kinds: Vec<Kind>,
    /// Languages kept besides those kinds (Linguist names or aliases).
    pub include: Vec<String>,
    /// Languages left out though their kind is kept.
    pub exclude: Vec<String>,
    /// Languages kept only up to `capped_max_chars` characters a file.
    pub capped: Vec<String>,
    pub capped_max_chars: usize,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            kinds: vec![Kind::Programming, Kind::Markup],
            include: ["SQL", "Markdown", "JSON", "YAML"]
                .map(String::from)
                .to_vec(),
            exclude: Vec::new(),
            capped: ["JSON", "YAML"].map(String::from).to_vec(),
            capped_max_chars: 5_000,
        }
    }
}

/// A [`Selection`] with its names resolved to Linguist's.
#[derive(Debug, Clone)]
pub struct Kept {
    kinds: Vec<Kind>,
    include: HashSet<&'static str>,
    exclude: HashSet<&'static str>,
    capped: HashSet<&'static str>,
    capped_max_chars: usize,
}

impl Selection {
    /// Resolves every name of the option `key`.
    pub fn resolve(&self, key: &str) -> Result<Kept, String> {
        let names = |list: &[String], field: &str| {
            resolve(list, &format!("{key}.{field}")).map(HashSet::from_iter)
        };
        Ok(Kept {
            kinds: self.kinds.clone(),
            include: names(&self.include, "include")?,
            exclude: names(&self.exclude, "exclude")?,
            capped: names(&self.capped, "capped")?,
            capped_max_chars: self.capped_max_chars,
        })
    }
}

impl Default for Kept {
    fn default() -> Self {
        Selection::default()
            .resolve("languages")
            .expect("the default names are Linguist's")
    }
}

impl Kept {
    /// Whether files of `language` (a Linguist name) are kept.
    pub fn keeps(&self, language: &str) -> bool {
        if self.exclude.contains(language) {
            return false;
        }
        self.include.contains(language) || kind(language).is_some_and(|k| self.kinds.contains(&k))
    }

    /// Whether `text`, of `language`, is over its language's cap.
    pub fn over_cap(&self, language: &str, text: &str) -> bool {
        self.capped.contains(language) && text.chars().count() > self.capped_max_chars
    }

    /// The language of `path` by its name alone among those kept (`language::of_path`
    /// for callers that want only kept code: the tokenizer's sample, line counts).
    pub fn of_path(&self, path: &str) -> Option<&'static str> {
        let kept: Vec<_> = candidates(path)
            .iter()
            .copied()
            .filter(|l| self.keeps(l))
            .collect();
        tie_break(&kept)
    }

    /// Whether any of `candidates` is kept.
    pub fn keeps_any(&self, candidates: &[&str]) -> bool {
        candidates.iter().any(|l| self.keeps(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_stack_v2s_selection() {
        let kept = Kept::default();
        for language in [
            "Rust", "C++", "Shell", "Makefile", "HTML", "CSS", "Markdown", "YAML", "SQL",
        ] {
            assert!(kept.keeps(language), "{language}");
        }
        for language in ["Text", "CSV", "Ignore List", "TOML"] {
            assert!(!kept.keeps(language), "{language}");
        }
        assert_eq!(kept.of_path("src/lib.rs"), Some("Rust"));
        assert_eq!(kept.of_path("Cargo.toml"), None);
    }

    #[test]
    fn names_are_resolved_and_unknown_ones_refused() {
        let selection = Selection {
            kinds: vec![Kind::Programming],
            include: vec!["toml".into()],
            exclude: vec!["cpp".into()],
            ..Selection::default()
        };
        let kept = selection.resolve("languages").unwrap();
        assert!(kept.keeps("TOML") && kept.keeps("Rust"));
        assert!(!kept.keeps("C++") && !kept.keeps("HTML"));
        let wrong = Selection {
            include: vec!["Klingon".into()],
            ..Selection::default()
        };
        let error = wrong
            .resolve("stages.processor.options.languages")
            .unwrap_err();
        assert!(error.contains("languages.include: \"Klingon\""), "{error}");
    }
}
