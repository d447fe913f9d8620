//! Unexpanded macros in C and C++. The parser never sees a macro's definition, so
//! `GIT_EXTERN(int) git_reflog_read(…);`, `NLOHMANN_JSON_NAMESPACE_BEGIN` or
//! `TEST(Suite, Name) {…}` leave ERROR nodes, sometimes around the rest of the file, and
//! the syntax score would condemn real code. Where a parse has errors, the names spelt
//! as macros next to them are blanked with spaces and the text parsed again
//! (incrementally, from the edited tree); the parse with fewer errors counts. A
//! preprocessor would expand such a macro into something the grammar knows, often
//! nothing (`GIT_BEGIN_DECL`); blanking is the closest guess without its definition,
//! and byte offsets stay where they were. Stray tokens of broken code are rarely spelt
//! as macros, so its errors stay. `extern "C" {` and its `}`, which `#if`s on
//! `__cplusplus` place in separate conditional blocks, are blanked too: a parser that
//! reads both branches sees unbalanced braces.

use std::ops::Range;

use tree_sitter::{InputEdit, Point, Tree};

use crate::parsed::{ParseFailure, Parsed};

/// Languages whose files use macros the parser never sees expanded.
pub const PREPROCESSED: &[&str] = &["C", "C++"];

/// Rounds of blanking and parsing again, at most: blanking can bring macros that the
/// previous parse hid into the open.
const ROUNDS: usize = 2;

/// Whether a parse's errors are enough to cost a file's syntax score more than a few
/// points (the parse with macros blanked costs about half a parse more).
pub fn worth_reparsing(parsed: &Parsed) -> bool {
    parsed.stats.error_node_share > 0.005 || parsed.error_byte_share > 0.01
}

/// The better of `parsed` (of `tree`, parsed from `text`) and the parses of `text`
/// with macros blanked; `parse` parses a text from the edited previous tree. A parse
/// with macros blanked that fails (past the time budget) leaves the best so far.
pub fn reparse(
    text: &str,
    mut tree: Tree,
    mut parsed: Parsed,
    mut parse: impl FnMut(&str, &Tree) -> Result<(Tree, Parsed), ParseFailure>,
) -> Parsed {
    let mut blanking = Blanking::new(text);
    blank_cplusplus_braces(&mut blanking);
    blank_unexpanded_macros(&tree, &mut blanking);
    for _ in 0..ROUNDS {
        let Some((text, edited)) = blanking.finish(&tree) else {
            break;
        };
        let Ok((next_tree, next)) = parse(&text, &edited) else {
            break;
        };
        if next.errors >= parsed.errors {
            break;
        }
        (tree, parsed) = (next_tree, next);
        if !tree.root_node().has_error() {
            break;
        }
        blanking = Blanking::new(&text);
        blank_unexpanded_macros(&tree, &mut blanking);
    }
    parsed
}

/// A text with spans replaced by spaces (line breaks kept, so every byte and line stays
/// where it was), and the spans, to edit the previous tree with.
struct Blanking {
    bytes: Vec<u8>,
    spans: Vec<Range<usize>>,
}

impl Blanking {
    fn new(text: &str) -> Self {
        Self {
            bytes: text.as_bytes().to_vec(),
            spans: Vec::new(),
        }
    }

    fn blank(&mut self, span: Range<usize>) {
        for b in self.bytes[span.clone()].iter_mut() {
            if !b.is_ascii_whitespace() {
                *b = b' ';
            }
        }
        self.spans.push(span);
    }

    /// The blanked text and `tree` edited to match; None if nothing was blanked.
    fn finish(&mut self, tree: &Tree) -> Option<(String, Tree)> {
        if self.spans.is_empty() {
            return None;
        }
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(newlines(&self.bytes).map(|i| i + 1))
            .collect();
        let point = |offset: usize| {
            let row = line_starts.partition_point(|&s| s <= offset) - 1;
            Point::new(row, offset - line_starts[row])
        };
        let mut edited = tree.clone();
        for span in self.spans.drain(..) {
            edited.edit(&InputEdit {
                start_byte: span.start,
                old_end_byte: span.end,
                new_end_byte: span.end,
                start_position: point(span.start),
                old_end_position: point(span.end),
                new_end_position: point(span.end),
            });
        }
        // Only ASCII was replaced, by ASCII: still UTF-8.
        let text = String::from_utf8(std::mem::take(&mut self.bytes)).expect("still UTF-8");
        Some((text, edited))
    }
}

fn newlines(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
}

/// Blanks `extern "C" {` and `}` lines inside `#if`s on `__cplusplus`.
fn blank_cplusplus_braces(blanking: &mut Blanking) {
    let mut guarded = Vec::new();
    let mut spans = Vec::new();
    let mut offset = 0;
    let is_extern_c = |line: &[u8]| {
        let visible = line.iter().filter(|b| !b.is_ascii_whitespace());
        visible.eq(b"extern\"C\"{".iter())
    };
    for line in blanking.bytes.split_inclusive(|b| *b == b'\n') {
        let trimmed = line.trim_ascii();
        match trimmed.strip_prefix(b"#").map(<[u8]>::trim_ascii_start) {
            Some(d) if d.starts_with(b"if") => {
                guarded.push(d.windows(11).any(|w| w == b"__cplusplus"))
            }
            Some(d) if d.starts_with(b"endif") => {
                guarded.pop();
            }
            _ if guarded.last() == Some(&true) && (trimmed == b"}" || is_extern_c(trimmed)) => {
                spans.push(offset..offset + line.len());
            }
            _ => {}
        }
        offset += line.len();
    }
    for span in spans {
        blanking.blank(span);
    }
}

/// Blanks each name spelt as a macro whose parent node holds an error, with its
/// parenthesised arguments, except a single one where the declaration goes on after
/// it: that is most often a type (`GIT_EXTERN(const git_oid *) f(…)`, `STACK_OF(X509)
/// *x`), while a macro alone on its line declares something itself
/// (`DECLARE_ASN1_ITEM(X509_ACERT)`) and several arguments are names (`TEST(Suite,
/// Name)`). Names on preprocessor lines are the preprocessor's own business.
fn blank_unexpanded_macros(tree: &Tree, blanking: &mut Blanking) {
    let mut done_to = 0;
    // Depth first in document order, into subtrees holding an error only: no other
    // leaf has a parent that does.
    let mut waiting = vec![tree.root_node()];
    let mut cursor = tree.walk();
    while let Some(node) = waiting.pop() {
        if node.child_count() > 0 {
            if node.has_error() {
                let children: Vec<_> = node.children(&mut cursor).collect();
                waiting.extend(children.into_iter().rev());
            }
            continue;
        }
        let (start, end) = (node.start_byte(), node.end_byte());
        let is_macro = node.is_named()
            && start >= done_to
            && is_macro_name(&blanking.bytes[start..end])
            && !on_directive_line(&blanking.bytes, start);
        if is_macro {
            let arguments = macro_arguments(&blanking.bytes, end);
            blanking.blank(start..end);
            done_to = end;
            if let Some((open, close, keep)) = arguments {
                if keep {
                    blanking.blank(open..open + 1);
                    blanking.blank(close..close + 1);
                } else {
                    blanking.blank(open..close + 1);
                }
                done_to = close + 1;
            }
        }
    }
}

/// Whether `name` is spelt as C and C++ spell macros: capitals, digits and underscores,
/// at least three characters (`GIT_EXTERN`, `NLOHMANN_JSON_NAMESPACE_BEGIN`, `TEST_F`),
/// or a name reserved to the implementation, which compilers' extensions and the
/// macros wrapping them use (`__owur`, `__declspec(dllexport)`).
fn is_macro_name(name: &[u8]) -> bool {
    let capitals = name.len() >= 3
        && name[0].is_ascii_uppercase()
        && name
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    capitals || (name.len() > 2 && name.starts_with(b"__"))
}

/// Whether the line holding byte `at` is a preprocessor directive (`#define NAME`).
fn on_directive_line(bytes: &[u8], at: usize) -> bool {
    let line_start = bytes[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    bytes[line_start..at]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'#')
}

/// The parenthesised arguments after a macro name ending at `from`: where they open
/// and close (balanced, within 1 KiB) and whether to keep them (a single argument
/// with the declaration going on after it); None if none follow.
fn macro_arguments(bytes: &[u8], from: usize) -> Option<(usize, usize, bool)> {
    let open = from
        + bytes[from..]
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
    if bytes.get(open) != Some(&b'(') {
        return None;
    }
    let mut depth = 0usize;
    let close = (open..bytes.len().min(open + 1024)).find(|&i| {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
        depth == 0
    })?;
    let goes_on = bytes[close + 1..]
        .iter()
        .find(|b| **b != b' ' && **b != b'\t')
        .is_some_and(|b| !matches!(b, b'\n' | b'\r' | b';' | b'/'));
    Some((
        open,
        close,
        goes_on && !bytes[open + 1..close].contains(&b','),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_names_and_their_arguments_are_told_apart() {
        for name in [
            "GIT_EXTERN",
            "TEST_F",
            "NLOHMANN_JSON_NAMESPACE_BEGIN",
            "__owur",
        ] {
            assert!(is_macro_name(name.as_bytes()), "{name}");
        }
        for name in ["git_oid", "Ab", "X", "OK", "size_t", "Foo_BAR"] {
            assert!(!is_macro_name(name.as_bytes()), "{name}");
        }
        fn args(text: &str, from: usize) -> Option<(&str, bool)> {
            macro_arguments(text.as_bytes(), from).map(|(o, c, keep)| (&text[o..=c], keep))
        }
        assert_eq!(args("GIT_EXTERN(int) f(void);", 10), Some(("(int)", true)));
        assert_eq!(args("DECLARE(X509)\nint x;", 7), Some(("(X509)", false)));
        assert_eq!(args("TEST(A, B) {", 4), Some(("(A, B)", false)));
        assert_eq!(args("EXPORT int f(g(h));", 6), None);
        assert_eq!(args("BROKEN(a, (b", 6), None);
    }

    #[test]
    fn cplusplus_guards_lose_their_braces_and_directives_keep_their_names() {
        let text = "#ifdef __cplusplus\nextern \"C\" {\n#endif\nint f(void);\n#ifdef __cplusplus\n}\n#endif\n#define NAME 1\n";
        let mut blanking = Blanking::new(text);
        blank_cplusplus_braces(&mut blanking);
        let blanked = String::from_utf8(blanking.bytes.clone()).unwrap();
        assert_eq!(blanked.len(), text.len());
        assert!(
            !blanked.contains("extern") && !blanked.contains('}'),
            "{blanked}"
        );
        assert!(blanked.contains("int f(void);") && blanked.contains("#define NAME 1"));
        assert!(on_directive_line(
            text.as_bytes(),
            text.find("NAME").unwrap()
        ));
        assert!(!on_directive_line(
            text.as_bytes(),
            text.find("f(").unwrap()
        ));
    }
}
