//! A repository's license, decided as The Stack v2 decided it: from the license files
//! at the top of the tree (LICENSE*, LICENCE*, COPYING*, UNLICENSE, …) identified
//! against the SPDX license list, with GitHub's reported license as a second opinion,
//! and a policy in config on what to keep.
//!
//! Matching is askalono's (Dice coefficient over word bigrams against every SPDX text),
//! as the `spdx` crate carries it with the license list compiled in: the matcher that
//! cargo-deny and cargo-about use, so no data is fetched at run time. A file holding
//! several licenses one after another (an Apache-2.0 text followed by MIT's) is
//! searched for each. README license sections are not read: they name a license in
//! prose ("either of … at your option") that no text match identifies.
//!
//! Several license files each count (a repository with LICENSE-MIT and LICENSE-APACHE
//! has both), and a repository is allowed only when every license found is allowed:
//! files do not say whether they offer a choice or all apply, so the safe reading is
//! that all apply. `-only` and `-or-later` forms are one license here (their texts are
//! the same; the difference is in file headers).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde::Deserialize;
use spdx::detection::scan::Scanner;
use spdx::detection::{LicenseType, Store, TextData};

codelupe_runtime::label_set! {
    /// What the policy made of a repository
    /// (`processor_repositories_by_license_total{outcome}`).
    pub enum LicenseOutcome {
        /// Every license found is in `licenses.allow`.
        Allowed => "allowed",
        /// A license found is not in `licenses.allow`.
        Refused => "refused",
        /// License files and GitHub disagree and `on_conflict` is `drop`.
        Conflict => "conflict",
        /// No license known (no file matched, GitHub reported none); `on_unknown: keep`.
        UnknownKept => "unknown_kept",
        /// No license known; `on_unknown: drop`.
        UnknownDropped => "unknown_dropped",
    }
}

impl LicenseOutcome {
    pub fn keeps(self) -> bool {
        matches!(self, LicenseOutcome::Allowed | LicenseOutcome::UnknownKept)
    }
}

/// What to do with a repository whose license is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknown {
    Keep,
    Drop,
}

/// What to do when the license files and GitHub's reported license disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Judge by the licenses the files hold (GitHub's own detection reads the same
    /// files, with a smaller license list).
    Detected,
    /// Judge by GitHub's reported license.
    Reported,
    Drop,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LicenseOptions {
    /// Detect licenses and apply the policy; when false every repository is kept and
    /// its files carry only GitHub's reported id.
    pub enabled: bool,
    /// SPDX ids of the licenses whose code is kept.
    pub allow: Vec<String>,
    pub on_unknown: OnUnknown,
    pub on_conflict: OnConflict,
    /// The lowest askalono score (0..1) a license file's match counts at.
    pub min_confidence: f32,
    /// License files read per repository, the shortest names first (`LICENSE` before
    /// `LICENSE-MIT`): matching is the processor's dearest step, and a tree may hold
    /// any number of files by such names.
    pub max_files: usize,
    /// A license is a few pages; a bigger file by that name is something else.
    pub max_file_bytes: u64,
}

/// The permissive licenses: those The Stack v2 kept (after the Blue Oak Council's
/// list), as SPDX ids.
pub const PERMISSIVE: &[&str] = &[
    "0BSD",
    "Apache-2.0",
    "BlueOak-1.0.0",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-2-Clause-Patent",
    "BSD-3-Clause",
    "BSD-3-Clause-Clear",
    "BSL-1.0",
    "CC0-1.0",
    "ISC",
    "MIT",
    "MIT-0",
    "NCSA",
    "PostgreSQL",
    "PSF-2.0",
    "Python-2.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "UPL-1.0",
    "X11",
    "Zlib",
];

impl Default for LicenseOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            allow: PERMISSIVE.iter().map(|s| s.to_string()).collect(),
            // Unlicensed code was kept in The Stack v2 (its `no_license` files).
            on_unknown: OnUnknown::Keep,
            on_conflict: OnConflict::Detected,
            min_confidence: 0.8,
            max_files: 8,
            max_file_bytes: 256 * 1024,
        }
    }
}

/// Whether a path is a license file at the top of the tree, by the names GitHub's
/// licensee looks for: LICENSE, LICENCE, COPYING, UNLICENSE, COPYRIGHT, with any
/// extension or suffix (LICENSE-MIT, LICENSE.md, COPYING.LESSER), and MIT-LICENSE.
pub fn is_license_file(path: &str) -> bool {
    if path.contains('/') {
        return false;
    }
    let name = path.to_ascii_lowercase();
    ["license", "licence", "unlicense", "copying", "copyright"]
        .iter()
        .any(|stem| name.starts_with(stem))
        || name.ends_with("-license")
        || name.contains("-license.")
}

/// The licenses the files hold, each once, under one name for its `-only` and
/// `-or-later` forms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detected {
    pub licenses: BTreeSet<String>,
    /// The lowest score among the matches counted; None when none was.
    pub confidence: Option<f32>,
    /// Files that matched no license well enough.
    pub unrecognised: usize,
}

/// The SPDX list as askalono's store, loaded once (about a tenth of a second), with
/// LGPL-3.0's own text as a variant: the list's LGPL-3.0 text carries GPL-3.0's after
/// its own (the LGPL is a set of permissions on top of the GPL), but projects ship the
/// LGPL part alone (GPL-3.0 in COPYING, the LGPL in COPYING.LESSER), which matches the
/// whole at a score far under any threshold, so LGPL code would pass as unknown.
static STORE: LazyLock<Store> = LazyLock::new(|| {
    let mut store = Store::load_inline().expect("the spdx crate's inline cache loads");
    let lgpl = spdx::text::LICENSE_TEXTS
        .iter()
        .find(|(name, _)| *name == "LGPL-3.0-only")
        .and_then(|(_, text)| text.split("GNU GENERAL PUBLIC LICENSE").next());
    // The store names the license by one of its forms.
    let name = store
        .licenses()
        .filter(|name| family(name) == "LGPL-3.0")
        .min()
        .cloned();
    if let (Some(text), Some(name)) = (lgpl, name) {
        store
            .add_variant(&name, LicenseType::Alternate, TextData::new(text))
            .expect("the license is in the store");
    }
    store
});

/// The licenses one license file holds, each with its match score.
pub type FileLicenses = Vec<(String, f32)>;

/// The licenses one license file holds (none when nothing matched at
/// `min_confidence`).
pub fn detect_file(text: &str, min_confidence: f32) -> FileLicenses {
    let scanner = Scanner::new(&STORE)
        .confidence_threshold(min_confidence)
        // A whole-text match this good is taken as it is; below it the text is
        // searched for licenses inside it (38 ms per repository instead of 55).
        .shallow_limit(0.9)
        .optimize(true)
        .max_passes(4);
    let result = scanner.scan(&TextData::new(text));
    let mut found: Vec<(&str, f32)> = result
        .containing
        .iter()
        .map(|c| (c.license.name, c.score))
        .collect();
    if let Some(license) = result.license {
        found.push((license.name, result.score));
    }
    found
        .into_iter()
        .map(|(name, score)| (family(near_copy(name, text)).to_string(), score))
        .collect()
}

impl Detected {
    /// What a repository's license files hold, from each file's licenses.
    pub fn of_files(files: impl IntoIterator<Item = FileLicenses>) -> Self {
        let mut detected = Detected::default();
        for found in files {
            if found.is_empty() {
                detected.unrecognised += 1;
            }
            for (name, score) in found {
                detected.licenses.insert(name);
                detected.confidence = Some(detected.confidence.map_or(score, |c| c.min(score)));
            }
        }
        detected
    }
}

/// The licenses of a repository's license files (their texts).
pub fn detect<'a>(texts: impl IntoIterator<Item = &'a str>, min_confidence: f32) -> Detected {
    Detected::of_files(texts.into_iter().map(|t| detect_file(t, min_confidence)))
}

/// SPDX licenses that copy another's text nearly word for word, so the copied text
/// (here Apache-2.0 without its appendix, as many projects ship it) matches them best:
/// (the near-copy, a word only its own text has, the original). Pixar's differs from
/// Apache-2.0 in its trademark clause ("the Licensor and its affiliates"); cargo-deny
/// met the same (its issue 625).
const NEAR_COPIES: &[(&str, &str, &str)] = &[("Pixar", "affiliates", "Apache-2.0")];

/// The original for a near-copy's match on a text that lacks the near-copy's own word.
fn near_copy<'a>(name: &'a str, text: &str) -> &'a str {
    match NEAR_COPIES.iter().find(|(copy, _, _)| *copy == name) {
        Some((_, word, original)) if !text.contains(word) => original,
        _ => name,
    }
}

/// One name for a license's `-only`, `-or-later` and `+` forms (GPL-3.0-only → GPL-3.0).
pub fn family(id: &str) -> &str {
    id.strip_suffix("-only")
        .or_else(|| id.strip_suffix("-or-later"))
        .or_else(|| id.strip_suffix('+'))
        .unwrap_or(id)
}

/// GitHub's reported id, or None for what GitHub reports when it found none it knows
/// (`NOASSERTION`, shown as "Other").
pub fn reported(id: Option<&str>) -> Option<&str> {
    id.filter(|id| !id.is_empty() && !id.eq_ignore_ascii_case("NOASSERTION"))
        .map(family)
}

/// The policy's judgement of a repository.
pub fn decide(
    detected: &Detected,
    reported_id: Option<&str>,
    o: &LicenseOptions,
) -> LicenseOutcome {
    let allowed = |id: &str| o.allow.iter().any(|a| family(a).eq_ignore_ascii_case(id));
    let reported_id = reported(reported_id);
    let conflict = reported_id.is_some_and(|r| {
        !detected.licenses.is_empty()
            && !detected.licenses.iter().any(|d| d.eq_ignore_ascii_case(r))
    });
    let judged: Vec<&str> = match (conflict, o.on_conflict) {
        (true, OnConflict::Drop) => return LicenseOutcome::Conflict,
        (true, OnConflict::Reported) => reported_id.into_iter().collect(),
        _ if !detected.licenses.is_empty() => {
            detected.licenses.iter().map(String::as_str).collect()
        }
        _ => reported_id.into_iter().collect(),
    };
    match judged.is_empty() {
        true if o.on_unknown == OnUnknown::Keep => LicenseOutcome::UnknownKept,
        true => LicenseOutcome::UnknownDropped,
        false if judged.iter().all(|id| allowed(id)) => LicenseOutcome::Allowed,
        false => LicenseOutcome::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(ids: &[&str]) -> Detected {
        Detected {
            licenses: ids.iter().map(|s| s.to_string()).collect(),
            confidence: Some(0.95),
            unrecognised: 0,
        }
    }

    fn spdx_text(id: &str) -> &'static str {
        spdx::text::LICENSE_TEXTS
            .iter()
            .find(|(name, _)| *name == id)
            .map(|(_, text)| *text)
            .unwrap()
    }

    #[test]
    fn the_lgpl_shipped_without_the_gpl_is_recognised() {
        // As serde_serializer_quick_unsupported 1.0.0 ships it: before the variant,
        // nothing was recognised and the default policy kept the code as unknown.
        let lgpl_alone = spdx_text("LGPL-3.0-only")
            .split("GNU GENERAL PUBLIC LICENSE")
            .next()
            .unwrap();
        let detected = detect([lgpl_alone], 0.8);
        assert_eq!(detected.licenses, BTreeSet::from(["LGPL-3.0".to_string()]));
        let o = LicenseOptions::default();
        assert_eq!(decide(&detected, None, &o), LicenseOutcome::Refused);
        let gpl_and_lgpl = detect([spdx_text("GPL-3.0-only"), lgpl_alone], 0.8);
        assert_eq!(gpl_and_lgpl.licenses.len(), 2, "{gpl_and_lgpl:?}");
    }

    #[test]
    fn apache_without_its_appendix_is_not_taken_for_pixar() {
        let apache = spdx_text("Apache-2.0");
        let without_appendix = apache.split("APPENDIX").next().unwrap();
        let detected = detect([without_appendix], 0.8);
        assert_eq!(
            detected.licenses,
            BTreeSet::from(["Apache-2.0".to_string()])
        );
        let pixar = detect([spdx_text("Pixar")], 0.8);
        assert_eq!(pixar.licenses, BTreeSet::from(["Pixar".to_string()]));
    }

    #[test]
    fn license_files_are_found_by_name_at_the_top_only() {
        for path in [
            "LICENSE",
            "LICENSE-MIT",
            "LICENSE-APACHE",
            "license.md",
            "LICENCE.txt",
            "COPYING",
            "COPYING.LESSER",
            "UNLICENSE",
            "MIT-LICENSE.txt",
            "COPYRIGHT",
        ] {
            assert!(is_license_file(path), "{path}");
        }
        for path in [
            "src/LICENSE",
            "vendor/zlib/LICENSE",
            "README.md",
            "licenses.rs/x",
            "Cargo.toml",
        ] {
            assert!(!is_license_file(path), "{path}");
        }
    }

    #[test]
    fn the_default_policy_keeps_permissive_and_unlicensed_code_only() {
        let o = LicenseOptions::default();
        let outcome = |ids: &[&str], reported: Option<&str>| decide(&found(ids), reported, &o);
        assert_eq!(
            outcome(&["MIT", "Apache-2.0"], None),
            LicenseOutcome::Allowed
        );
        assert_eq!(
            outcome(&["GPL-3.0"], Some("GPL-3.0")),
            LicenseOutcome::Refused
        );
        assert_eq!(
            outcome(&["MIT", "GPL-2.0"], Some("MIT")),
            LicenseOutcome::Refused
        );
        assert_eq!(outcome(&[], None), LicenseOutcome::UnknownKept);
        assert_eq!(
            outcome(&[], Some("NOASSERTION")),
            LicenseOutcome::UnknownKept
        );
        // With no file, GitHub's word is taken.
        assert_eq!(outcome(&[], Some("AGPL-3.0")), LicenseOutcome::Refused);
        assert_eq!(outcome(&[], Some("BSD-3-Clause")), LicenseOutcome::Allowed);
        // A conflict is judged by the files under the default.
        assert_eq!(outcome(&["MIT"], Some("GPL-3.0")), LicenseOutcome::Allowed);
        assert_eq!(outcome(&["GPL-3.0"], Some("MIT")), LicenseOutcome::Refused);
    }

    #[test]
    fn conflicts_and_unknowns_follow_the_options() {
        let drop = LicenseOptions {
            on_unknown: OnUnknown::Drop,
            on_conflict: OnConflict::Drop,
            ..LicenseOptions::default()
        };
        assert_eq!(
            decide(&found(&["MIT"]), Some("GPL-3.0"), &drop),
            LicenseOutcome::Conflict
        );
        assert_eq!(
            decide(&found(&["MIT"]), Some("MIT"), &drop),
            LicenseOutcome::Allowed
        );
        assert_eq!(
            decide(&found(&[]), None, &drop),
            LicenseOutcome::UnknownDropped
        );
        let reported = LicenseOptions {
            on_conflict: OnConflict::Reported,
            ..LicenseOptions::default()
        };
        assert_eq!(
            decide(&found(&["MIT"]), Some("GPL-3.0"), &reported),
            LicenseOutcome::Refused
        );
        // -only / -or-later name one license: no conflict, and allowed by family.
        assert_eq!(
            decide(&found(&["GPL-3.0"]), Some("GPL-3.0-or-later"), &drop),
            LicenseOutcome::Refused
        );
        let gpl = LicenseOptions {
            allow: vec!["GPL-3.0-only".into()],
            ..LicenseOptions::default()
        };
        assert_eq!(
            decide(&found(&["GPL-3.0"]), None, &gpl),
            LicenseOutcome::Allowed
        );
    }
}
