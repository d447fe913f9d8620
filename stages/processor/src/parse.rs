//! Parse statistics from tree-sitter: what only a parser can see. Each worker thread
//! keeps its own parsers; a parse that passes its time budget is abandoned.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use codelupe_runtime::records::ParseStats;
use tree_sitter::{Language, ParseOptions, ParseState, Parser, Tree};

use crate::macros;
use crate::parsed::{ParseFailure, Parsed};

fn grammar(language: &str) -> Option<Language> {
    Some(match language {
        "Rust" => tree_sitter_rust::LANGUAGE.into(),
        "Python" => tree_sitter_python::LANGUAGE.into(),
        "Go" => tree_sitter_go::LANGUAGE.into(),
        "JavaScript" => tree_sitter_javascript::LANGUAGE.into(),
        "TypeScript" => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
        "TSX" => tree_sitter_typescript::LANGUAGE_TSX.into(),
        "Java" => tree_sitter_java::LANGUAGE.into(),
        "C" => tree_sitter_c::LANGUAGE.into(),
        "C++" => tree_sitter_cpp::LANGUAGE.into(),
        _ => return None,
    })
}

/// Node kinds that define a function or method, across the parsed languages.
const FUNCTION_KINDS: &[&str] = &[
    "function_item",
    "function_definition",
    "function_declaration",
    "method_declaration",
    "method_definition",
    "arrow_function",
    "function_expression",
    "constructor_declaration",
    "func_literal",
    "lambda_expression",
    "generator_function_declaration",
];

/// Node kinds that define a type: structs, enums, classes, interfaces, traits, aliases.
const TYPE_KINDS: &[&str] = &[
    "struct_item",
    "enum_item",
    "trait_item",
    "union_item",
    "type_item",
    "class_definition",
    "class_declaration",
    "interface_declaration",
    "enum_declaration",
    "record_declaration",
    "type_spec",
    "type_alias_declaration",
    "struct_specifier",
    "class_specifier",
    "enum_specifier",
    "union_specifier",
    "abstract_class_declaration",
];

thread_local! {
    static PARSERS: RefCell<HashMap<&'static str, Parser>> = RefCell::new(HashMap::new());
}

/// Parses `text` as `language` within `budget`; None if the language has no parser.
/// In C and C++, where the parse has errors, the statistics are those of a parse with
/// unexpanded macros blanked when it has fewer errors (see [`macros`]).
pub fn parse_stats(
    language: &'static str,
    text: &str,
    budget: Duration,
) -> Option<Result<Parsed, ParseFailure>> {
    let grammar = grammar(language)?;
    Some(PARSERS.with(|parsers| {
        let mut parsers = parsers.borrow_mut();
        let parser = parsers.entry(language).or_insert_with(|| {
            let mut parser = Parser::new();
            parser
                .set_language(&grammar)
                .expect("bundled grammar matches the tree-sitter ABI");
            parser
        });
        let deadline = Instant::now() + budget;
        let tree = parse(parser, text.as_bytes(), None, deadline)?;
        let parsed = walk(&tree, text.len());
        if !macros::PREPROCESSED.contains(&language) || !macros::worth_reparsing(&parsed) {
            return Ok(parsed);
        }
        Ok(macros::reparse(text, tree, parsed, |text, edited| {
            let tree = parse(parser, text.as_bytes(), Some(edited), deadline)?;
            let parsed = walk(&tree, text.len());
            Ok((tree, parsed))
        }))
    }))
}

/// One parse of `bytes` (reusing what `old`, edited to match, still holds), abandoned at
/// `deadline`.
fn parse(
    parser: &mut Parser,
    bytes: &[u8],
    old: Option<&Tree>,
    deadline: Instant,
) -> Result<Tree, ParseFailure> {
    let mut timed_out = false;
    let mut progress = |_: &ParseState| {
        if Instant::now() > deadline {
            timed_out = true;
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let tree = parser.parse_with_options(
        &mut |offset, _| &bytes[offset.min(bytes.len())..],
        old,
        Some(ParseOptions::new().progress_callback(&mut progress)),
    );
    tree.ok_or_else(|| {
        // A cancelled parse leaves state behind; start the next one clean.
        parser.reset();
        if timed_out {
            ParseFailure::Timeout
        } else {
            ParseFailure::NoTree
        }
    })
}

fn walk(tree: &tree_sitter::Tree, len: usize) -> Parsed {
    let mut cursor = tree.walk();
    let (mut nodes, mut errors, mut functions, mut types, mut comment_bytes) =
        (0u64, 0u64, 0i64, 0i64, 0usize);
    let mut error_bytes = 0usize;
    let (mut depth, mut max_depth) = (0i64, 0i64);
    loop {
        let node = cursor.node();
        nodes += 1;
        if node.is_error() || node.is_missing() {
            errors += 1;
        }
        // Outermost ERROR nodes only, so nested ones are not counted twice.
        if node.is_error() && !node.parent().is_some_and(|p| p.is_error()) {
            error_bytes += node.end_byte() - node.start_byte();
        }
        let kind = node.kind();
        if node.is_named() {
            if FUNCTION_KINDS.contains(&kind) {
                functions += 1;
            } else if TYPE_KINDS.contains(&kind) {
                types += 1;
            }
        }
        let is_comment = kind.contains("comment");
        if is_comment {
            comment_bytes += node.end_byte() - node.start_byte();
        }
        max_depth = max_depth.max(depth);
        // Comments have no interesting children; everything else is walked depth-first.
        if !is_comment && cursor.goto_first_child() {
            depth += 1;
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return Parsed {
                    stats: ParseStats {
                        error_node_share: errors as f64 / nodes.max(1) as f64,
                        function_count: functions,
                        type_count: types,
                        comment_share: (comment_bytes as f64 / len.max(1) as f64).min(1.0),
                        max_depth,
                    },
                    error_byte_share: (error_bytes as f64 / len.max(1) as f64).min(1.0),
                    errors,
                };
            }
            depth -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(5);

    #[test]
    fn counts_functions_types_comments_and_errors() {
        let rust =
            "// adds\nstruct P { x: i32 }\nfn add(a: i32, b: i32) -> i32 { a + b }\nfn main() {}\n";
        let parsed = parse_stats("Rust", rust, BUDGET).unwrap().unwrap();
        assert_eq!(parsed.error_byte_share, 0.0);
        let s = parsed.stats;
        assert_eq!((s.function_count, s.type_count), (2, 1));
        assert_eq!(s.error_node_share, 0.0);
        assert!(
            s.comment_share > 0.05 && s.comment_share < 0.2,
            "{}",
            s.comment_share
        );
        assert!(s.max_depth >= 4);

        let broken = parse_stats("Python", "def f(:\n    return ((\n", BUDGET)
            .unwrap()
            .unwrap();
        assert!(broken.stats.error_node_share > 0.0 && broken.error_byte_share > 0.3);

        let java = "class A { void m() {} interface I {} }";
        let s = parse_stats("Java", java, BUDGET).unwrap().unwrap().stats;
        assert_eq!((s.function_count, s.type_count), (1, 2));
        assert!(parse_stats("Ruby", "def x; end", BUDGET).is_none());
    }

    #[test]
    fn every_parsed_language_parses() {
        for (language, code) in [
            ("Go", "package main\nfunc main() {}\ntype T struct{}\n"),
            (
                "JavaScript",
                "function f() { return () => 1 }\nclass C {}\n",
            ),
            (
                "TypeScript",
                "interface I { x: number }\nfunction f(a: I): number { return a.x }\n",
            ),
            ("TSX", "const App = () => <div>hi</div>;\n"),
            ("C", "struct s { int a; };\nint main(void) { return 0; }\n"),
            ("C++", "class K { public: int f() { return 1; } };\n"),
        ] {
            let s = parse_stats(language, code, BUDGET).unwrap().unwrap().stats;
            assert_eq!(s.error_node_share, 0.0, "{language}");
            assert!(s.function_count + s.type_count >= 1, "{language}");
        }
    }

    #[test]
    fn a_parse_past_its_budget_is_abandoned_and_the_parser_recovers() {
        let huge = "fn f() { let x = [".to_string() + &"1, ".repeat(400_000) + "]; }\n";
        assert!(matches!(
            parse_stats("Rust", &huge, Duration::from_micros(1)),
            Some(Err(ParseFailure::Timeout))
        ));
        assert!(parse_stats("Rust", "fn ok() {}", BUDGET).unwrap().is_ok());
    }

    #[test]
    fn unexpanded_macros_do_not_leave_the_file_in_errors() {
        let header = "#ifdef __cplusplus\nextern \"C\" {\n#endif\nGIT_BEGIN_DECL\n\
            /** Reads the reflog. */\n\
            GIT_EXTERN(int) git_reflog_read(git_reflog **out, git_repository *repo);\n\
            GIT_EXTERN(const git_oid *) git_reflog_id(const git_reflog_entry *entry);\n\
            GIT_END_DECL\n#ifdef __cplusplus\n}\n#endif\n";
        let cpp = "NLOHMANN_JSON_NAMESPACE_BEGIN\nnamespace detail {\n\
            enum class value_t : std::uint8_t { null, object, array };\n\
            inline bool less(const value_t a, const value_t b) noexcept { return a < b; }\n\
            }  // namespace detail\nNLOHMANN_JSON_NAMESPACE_END\n";
        for (language, text) in [("C", header), ("C++", cpp)] {
            let parsed = parse_stats(language, text, BUDGET).unwrap().unwrap();
            assert_eq!(
                (parsed.errors, parsed.error_byte_share),
                (0, 0.0),
                "{language}: {parsed:?}"
            );
        }
        // Broken code spelt in lower case keeps its errors.
        let broken = "int f(int a {\n  return a +;\n}\n";
        assert!(parse_stats("C", broken, BUDGET).unwrap().unwrap().errors > 0);
    }
}
