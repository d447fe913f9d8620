//! Linguist's languages as an index: names and aliases, kinds, extensions, file names
//! and interpreters, and the tie-break among a name's candidates.

use std::collections::HashMap;
use std::sync::LazyLock;

use linguist::definitions::LANGUAGES;
use linguist_types::LanguageType;

/// Languages a code model is trained on by default: the crawler searches for them and
/// the downloader accepts them (GitHub names a repository's language by Linguist).
pub const DEFAULT_LANGUAGES: &[&str] = &[
    "Rust",
    "Go",
    "Python",
    "TypeScript",
    "JavaScript",
    "Dart",
    "Java",
    "C",
    "C++",
];

/// Linguist's four kinds of language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Programming,
    Markup,
    Data,
    Prose,
}

pub(super) struct Index {
    pub(super) by_extension: HashMap<String, Vec<&'static str>>,
    pub(super) by_filename: HashMap<&'static str, Vec<&'static str>>,
    pub(super) by_interpreter: HashMap<&'static str, Vec<&'static str>>,
    pub(super) by_alias: HashMap<String, &'static str>,
}

pub(super) static INDEX: LazyLock<Index> = LazyLock::new(|| {
    let mut index = Index {
        by_extension: HashMap::new(),
        by_filename: HashMap::new(),
        by_interpreter: HashMap::new(),
        by_alias: HashMap::new(),
    };
    for (name, language) in LANGUAGES.iter() {
        let name = name.as_str();
        // Linguist looks extensions up in lower case (`.R` is R, `.H` a header).
        for ext in language.extensions.iter().flatten() {
            let entry = index.by_extension.entry(ext.to_lowercase()).or_default();
            entry.push(name);
        }
        for file in language.filenames.iter().flatten() {
            index.by_filename.entry(file).or_default().push(name);
        }
        for program in language.interpreters.iter().flatten() {
            index.by_interpreter.entry(program).or_default().push(name);
        }
        index.by_alias.insert(name.to_lowercase(), name);
        index
            .by_alias
            .insert(name.to_lowercase().replace(' ', "-"), name);
        for alias in language.aliases.iter().flatten() {
            index.by_alias.insert(alias.to_lowercase(), name);
        }
    }
    for list in index
        .by_extension
        .values_mut()
        .chain(index.by_filename.values_mut())
        .chain(index.by_interpreter.values_mut())
    {
        list.sort_unstable();
    }
    index
});

/// The Linguist name of `name`, given as a name or an alias in any case (`cpp` is
/// C++, `golang` Go); None if Linguist knows no such language.
pub fn canonical(name: &str) -> Option<&'static str> {
    INDEX.by_alias.get(&name.to_lowercase()).copied()
}

/// `names` (option `key`) as Linguist names; the first Linguist does not know is
/// refused, naming the option and the name.
pub fn resolve<S: AsRef<str>>(names: &[S], key: &str) -> Result<Vec<&'static str>, String> {
    names
        .iter()
        .map(|name| {
            let name = name.as_ref();
            canonical(name).ok_or_else(|| {
                format!(
                    "{key}: {name:?} is not a language GitHub Linguist knows (give its name as \
                     in Linguist's languages.yml, or an alias)"
                )
            })
        })
        .collect()
}

/// The kind Linguist gives `language`, a Linguist name.
pub fn kind(language: &str) -> Option<Kind> {
    Some(match LANGUAGES.get(language)?.language_type {
        LanguageType::Programming => Kind::Programming,
        LanguageType::Markup => Kind::Markup,
        LanguageType::Data => Kind::Data,
        LanguageType::Prose => Kind::Prose,
    })
}

pub(super) fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The languages `path` may be by its name alone: an exact file name, else the longest
/// extension Linguist knows (`.d.ts` before `.ts`), else none.
pub fn candidates(path: &str) -> &'static [&'static str] {
    let name = file_name(path);
    match INDEX.by_filename.get(name) {
        Some(found) => found,
        None => by_extension(name),
    }
}

/// The languages of the longest extension of `name` Linguist knows, in lower case, or
/// of a dotfile's whole name.
pub(super) fn by_extension(name: &str) -> &'static [&'static str] {
    let lower = name.to_lowercase();
    // Longest first: every dot after the first character starts an extension.
    for (at, _) in lower.match_indices('.').filter(|(at, _)| *at > 0) {
        if let Some(found) = INDEX.by_extension.get(&lower[at..]) {
            return found;
        }
    }
    // A dotfile's whole name may be its extension (`.bashrc` is a file name above).
    INDEX
        .by_extension
        .get(lower.as_str())
        .map_or(&[], Vec::as_slice)
}

/// Languages chosen first, in this order, when several remain after every strategy:
/// the languages most code on GitHub is written in.
const COMMON: &[&str] = &[
    "JavaScript",
    "Python",
    "Java",
    "TypeScript",
    "TSX",
    "C#",
    "C++",
    "PHP",
    "Shell",
    "C",
    "Ruby",
    "Go",
    "Rust",
    "Markdown",
    "HTML",
    "CSS",
    "Kotlin",
    "Swift",
    "Objective-C",
    "Perl",
    "Scala",
    "Lua",
    "SQL",
    "R",
    "MATLAB",
];

/// One language among `found`: the only one; else the most common; else code before
/// markup, prose and data (a `.mm` is Objective-C++ rather than XML); else the first
/// by name.
pub fn tie_break(found: &[&'static str]) -> Option<&'static str> {
    if let [only] = found {
        return Some(only);
    }
    if let Some(common) = COMMON.iter().find(|common| found.contains(common)) {
        return Some(common);
    }
    let rank = |language: &&'static str| match kind(language) {
        Some(Kind::Programming) => 0,
        Some(Kind::Markup) => 1,
        Some(Kind::Prose) => 2,
        Some(Kind::Data) | None => 3,
    };
    found.iter().min_by_key(|l| (rank(l), **l)).copied()
}
