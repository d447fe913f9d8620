//! The documentation's links. Every relative link in the book (docs/src), the README and
//! the CHANGELOG leads to a file that exists and, with a `#fragment`, to a heading of that
//! file; a link in the book stays inside the book (the built book holds nothing else);
//! every chapter is listed in SUMMARY.md and every listed chapter exists. `mdbook build
//! docs` (in CI) renders what this checks.

use pulldown_cmark::{Event, Parser, Tag, TagEnd};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn book() -> PathBuf {
    root().join("docs/src")
}

fn chapters(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(chapters(&path));
        } else if path.extension().is_some_and(|e| e == "md") {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn links(markdown: &str) -> Vec<String> {
    Parser::new(markdown)
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                Some(dest_url.to_string())
            }
            _ => None,
        })
        .collect()
}

/// The ids mdBook gives a page's headings: the text lower-cased, spaces as `-`,
/// anything but letters, digits, `-` and `_` left out; a repeated id gains `-1`, `-2`.
fn heading_ids(markdown: &str) -> BTreeSet<String> {
    let (mut ids, mut text, mut inside) = (BTreeSet::new(), String::new(), false);
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading { .. }) => (inside, text) = (true, String::new()),
            Event::Text(t) | Event::Code(t) if inside => text.push_str(&t),
            Event::End(TagEnd::Heading(_)) => {
                inside = false;
                let id: String = text
                    .chars()
                    .filter_map(|c| match c {
                        c if c.is_alphanumeric() || c == '_' || c == '-' => {
                            Some(c.to_ascii_lowercase())
                        }
                        c if c.is_whitespace() => Some('-'),
                        _ => None,
                    })
                    .collect();
                let unique = (0..)
                    .map(|n| {
                        if n == 0 {
                            id.clone()
                        } else {
                            format!("{id}-{n}")
                        }
                    })
                    .find(|candidate| !ids.contains(candidate))
                    .expect("some suffix is free");
                ids.insert(unique);
            }
            _ => {}
        }
    }
    ids
}

/// What is wrong with `file`'s relative links; `within`: where they must stay.
fn broken_links(file: &Path, within: &Path) -> Vec<String> {
    let markdown = std::fs::read_to_string(file).unwrap();
    let shown = file.strip_prefix(root()).unwrap().display().to_string();
    let mut broken = Vec::new();
    for link in links(&markdown) {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
        let target = if path.is_empty() {
            file.to_path_buf()
        } else {
            file.parent().unwrap().join(path)
        };
        let Ok(target) = target.canonicalize() else {
            broken.push(format!("{shown}: {link} leads to no file"));
            continue;
        };
        if !target.starts_with(within.canonicalize().unwrap()) {
            broken.push(format!("{shown}: {link} leaves {}", within.display()));
        }
        let is_page = target.extension().is_some_and(|e| e == "md");
        if !fragment.is_empty() && is_page {
            let ids = heading_ids(&std::fs::read_to_string(&target).unwrap());
            if !ids.contains(fragment) {
                broken.push(format!("{shown}: {link} names no heading of its page"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_leads_to_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    for chapter in chapters(&book()) {
        broken.extend(broken_links(&chapter, &book()));
    }
    for page in ["README.md", "CHANGELOG.md"] {
        broken.extend(broken_links(&root().join(page), &root()));
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_chapter_is_in_the_summary_and_every_entry_exists() {
    let summary = std::fs::read_to_string(book().join("SUMMARY.md")).unwrap();
    let listed: BTreeSet<PathBuf> = links(&summary).iter().map(|l| book().join(l)).collect();
    let present: BTreeSet<PathBuf> = chapters(&book())
        .into_iter()
        .filter(|c| !c.ends_with("SUMMARY.md"))
        .collect();
    let missing: Vec<_> = listed.difference(&present).collect();
    let unlisted: Vec<_> = present.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "SUMMARY.md lists chapters that do not exist: {missing:?}"
    );
    assert!(
        unlisted.is_empty(),
        "chapters SUMMARY.md does not list: {unlisted:?}"
    );
}

#[test]
fn headings_get_mdbooks_ids() {
    let ids = heading_ids("# Near-duplicates\n## The `judge`'s bound\n## Near-duplicates\n");
    let expected = ["near-duplicates", "near-duplicates-1", "the-judges-bound"];
    assert_eq!(ids, expected.map(String::from).into());
}
