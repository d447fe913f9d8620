//! Which language a file is, by Linguist's strategies in Linguist's order.

use super::classifier::{self, Classifier};
use super::index::{by_extension, candidates, canonical, file_name, tie_break, INDEX};
use super::shebang;

/// Linguist reads a file's first 50 KiB for its heuristics (`HEURISTICS_CONSIDER_BYTES`).
const HEURISTICS_CONSIDER_BYTES: usize = 50 * 1024;

/// Lines read for a modeline at each end of a file (Linguist's `SEARCH_SCOPE`).
const MODELINE_LINES: usize = 5;

/// The language of `path` by its name alone, for callers with no content: a shared
/// extension is settled by [`tie_break`].
pub fn of_path(path: &str) -> Option<&'static str> {
    tie_break(candidates(path))
}

/// The language of the file `path` holding `text`, by Linguist's strategies in
/// Linguist's order; None when no language claims it.
pub fn of_file(path: &str, text: &str) -> Option<&'static str> {
    of_file_with(path, text, &*classifier::ENRY)
}

/// [`of_file`] with another classifier as the last strategy (one trained on other
/// samples, or on all but the file measured).
pub fn of_file_with(path: &str, text: &str, by_tokens: &dyn Classifier) -> Option<&'static str> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    if let Some(language) = modeline(text) {
        return Some(language);
    }
    let by_name = INDEX.by_filename.get(file_name(path));
    if let Some([only]) = by_name.map(Vec::as_slice) {
        return Some(only);
    }
    let mut found: Vec<&'static str> = by_name.cloned().unwrap_or_default();
    // The extension step narrows by the extension, as Linguist's does, whatever the name.
    for step in [
        shebang::languages(text),
        by_extension(file_name(path)).to_vec(),
    ] {
        found = narrow(found, step);
        if let [only] = found.as_slice() {
            return Some(only);
        }
    }
    if found.is_empty() {
        found = manpage(path);
    }
    if found.is_empty() {
        return xml_header(text);
    }
    // Linguist takes a heuristic's answer as it stands, even one outside the candidates
    // (a license text named `GFDL-1.3` is Text, not Roff).
    let by_rules = heuristics(path, text);
    let remaining = if by_rules.is_empty() { found } else { by_rules };
    if let [only] = remaining.as_slice() {
        return Some(only);
    }
    let likeliest = classifier::rank(by_tokens, text, &remaining);
    tie_break(if likeliest.is_empty() {
        &remaining
    } else {
        &likeliest
    })
}

/// A name no extension claims that ends like a manual page (`tool.8`, `printf.3p`,
/// `x.1.in`) is Roff (Linguist's manpage step); its heuristics then choose.
fn manpage(path: &str) -> Vec<&'static str> {
    let name = file_name(path).to_lowercase();
    let name = name.strip_suffix(".in").unwrap_or(&name);
    let Some((_, ext)) = name.rsplit_once('.') else {
        return Vec::new();
    };
    let section = ext.as_bytes();
    let numbered = matches!(section.first(), Some(b'1'..=b'9'))
        && !section.get(1).is_some_and(u8::is_ascii_digit)
        && section
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if numbered || ["0p", "n", "man", "mdoc"].contains(&ext) {
        ["Roff Manpage", "Roff"]
            .into_iter()
            .filter_map(canonical)
            .collect()
    } else {
        Vec::new()
    }
}

/// Candidates kept by both steps, as Linguist narrows them; a step that found nothing
/// (or nothing in common) leaves the earlier candidates.
fn narrow(earlier: Vec<&'static str>, step: Vec<&'static str>) -> Vec<&'static str> {
    if earlier.is_empty() {
        return step;
    }
    let both: Vec<_> = earlier
        .iter()
        .copied()
        .filter(|l| step.contains(l))
        .collect();
    if both.is_empty() {
        earlier
    } else {
        both
    }
}

/// A Vim or Emacs modeline in the first or last five lines names the language outright.
fn modeline(text: &str) -> Option<&'static str> {
    let head_end = nth_line_end(text.as_bytes(), MODELINE_LINES);
    let tail_start = text.len() - nth_line_end_from_back(text.as_bytes(), MODELINE_LINES);
    let (head, tail) = (&text[..head_end], &text[tail_start.max(head_end)..]);
    // Most files hold no modeline: refuse them before joining the ends for the regexes.
    if !may_hold_modeline(head) && !may_hold_modeline(tail) {
        return None;
    }
    let found = if tail_start <= head_end {
        linguist::detect_language_by_modeline(text)
    } else {
        linguist::detect_language_by_modeline(&format!("{head}\n{tail}"))
    };
    found.unwrap_or_default().first().map(|l| l.name)
}

/// Whether `lines` hold what every modeline does: Emacs's `-*-`, or Vim's `vi:`,
/// `vim:`, `vim600:` or `ex:` (a superset of Linguist's patterns, never narrower).
fn may_hold_modeline(lines: &str) -> bool {
    let vim = |at: usize| {
        let rest = &lines[at + 2..];
        let rest = match rest.strip_prefix('m') {
            Some(version) => version
                .trim_start_matches(['<', '=', '>'])
                .trim_start_matches(|c: char| c.is_ascii_digit()),
            None => rest,
        };
        rest.starts_with(':')
    };
    lines.contains("-*-")
        || lines.contains("ex:")
        || (lines.match_indices("vi").chain(lines.match_indices("Vi"))).any(|(at, _)| vim(at))
}

fn nth_line_end(bytes: &[u8], lines: usize) -> usize {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines - 1)
        .map_or(bytes.len(), |(at, _)| at)
}

/// Bytes from the end that hold the last `lines` lines (a final newline ends a line).
fn nth_line_end_from_back(bytes: &[u8], lines: usize) -> usize {
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let from_back = trimmed
        .iter()
        .rev()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines - 1)
        .map_or(trimmed.len(), |(at, _)| at);
    from_back + (bytes.len() - trimmed.len())
}

/// A file no name claims is XML when an XML declaration opens it (Linguist's XML step).
fn xml_header(text: &str) -> Option<&'static str> {
    let head = &text[..nth_line_end(text.as_bytes(), 2)];
    head.contains("<?xml version=")
        .then(|| canonical("XML"))
        .flatten()
}

/// Linguist's heuristics for the file's extension over its first 50 KiB.
fn heuristics(path: &str, text: &str) -> Vec<&'static str> {
    let mut end = text.len().min(HEURISTICS_CONSIDER_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // The crate matches extensions as written; Linguist's are lower case.
    let name = file_name(path).to_lowercase();
    // A pattern the crate cannot run leaves the candidates as they were.
    let found = linguist::disambiguate(&name, &text[..end]).unwrap_or_default();
    found.into_iter().map(|l| l.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::language::{kind, Kind, DEFAULT_LANGUAGES};

    #[test]
    fn names_extensions_and_case() {
        assert_eq!(of_path("src/main.rs"), Some("Rust"));
        assert_eq!(of_path("a/b/App.TSX"), Some("TSX"));
        assert_eq!(of_path("lib/x.dart"), Some("Dart"));
        assert_eq!(of_path("analysis.R"), Some("R"));
        assert_eq!(of_path("Makefile"), Some("Makefile"));
        assert_eq!(of_path("build/Dockerfile"), Some("Dockerfile"));
        assert_eq!(of_path("README.md"), Some("Markdown"));
        assert_eq!(of_path("types/index.d.ts"), Some("TypeScript"));
        assert_eq!(of_path(".bashrc"), Some("Shell"));
        assert_eq!(of_path("photo.png"), None);
        assert_eq!(of_path("noext"), None);
    }

    #[test]
    fn content_settles_what_the_name_cannot() {
        assert_eq!(
            of_file("bin/serve", "#!/usr/bin/env python3\nprint(1)\n"),
            Some("Python")
        );
        assert_eq!(of_file("run", "#!/bin/bash\necho hi\n"), Some("Shell"));
        assert_eq!(
            of_file("notes.txt", "puts 1\n# vim: set ft=ruby:\n"),
            Some("Ruby"),
            "a modeline overrides the extension"
        );
        assert_eq!(
            of_file("widget.h", "#include <vector>\nclass W {};\n"),
            Some("C++")
        );
        assert_eq!(of_file("plain.h", "int f(void);\n"), Some("C"));
        assert_eq!(
            of_file(
                "Foo.h",
                "#import <Foundation/Foundation.h>\n@interface Foo\n@end\n"
            ),
            Some("Objective-C")
        );
        assert_eq!(
            of_file("data", "<?xml version=\"1.0\"?>\n<a/>\n"),
            Some("XML")
        );
        assert_eq!(of_file("data", "just words\n"), None);
        assert_eq!(
            of_file("licenses/GFDL-1.3", "GNU Free Documentation License\n"),
            Some("Text"),
            "a heuristic's answer stands"
        );
        let page = ".TH TOOL 8\n.SH NAME\ntool \\- does\n";
        assert_eq!(of_file("doc/tool.8", page), Some("Roff Manpage"));
        assert_eq!(manpage("doc/tool.8x.in"), ["Roff Manpage", "Roff"]);
        assert!(manpage("lib/v1.20").is_empty() && manpage("notes").is_empty());
        for line in [
            "# vim: ft=ruby",
            "/* vim600: set ft=c: */",
            "-*- mode: ruby -*-",
        ] {
            assert!(may_hold_modeline(line), "{line}");
        }
        assert!(!may_hold_modeline("void provide(int via);"));
    }

    #[test]
    fn names_and_aliases_resolve_to_linguist_names() {
        assert_eq!(canonical("cpp"), Some("C++"));
        assert_eq!(canonical("golang"), Some("Go"));
        assert_eq!(canonical("jupyter notebook"), Some("Jupyter Notebook"));
        assert_eq!(canonical("Rust"), Some("Rust"));
        assert_eq!(canonical("Klingon"), None);
        assert_eq!(kind("YAML"), Some(Kind::Data));
        assert_eq!(kind("Markdown"), Some(Kind::Prose));
        assert_eq!(kind("HTML"), Some(Kind::Markup));
    }

    #[test]
    fn every_default_language_is_a_linguist_name() {
        for language in DEFAULT_LANGUAGES {
            assert_eq!(canonical(language), Some(*language));
        }
    }
}
