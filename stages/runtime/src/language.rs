//! Programming language of a file from its name: one table for every stage that asks.

/// Languages a code model is trained on by default: the crawler searches for them and
/// the downloader accepts them.
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

/// The language of `path` by extension or well-known file name; None if not code we keep.
pub fn of_path(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name {
        "Makefile" | "GNUmakefile" => return Some("Makefile"),
        "Dockerfile" => return Some("Dockerfile"),
        "CMakeLists.txt" => return Some("CMake"),
        _ => {}
    }
    let ext = name.rsplit_once('.')?.1;
    Some(match ext.to_ascii_lowercase().as_str() {
        "rs" => "Rust",
        "py" | "pyi" => "Python",
        "go" => "Go",
        "js" | "mjs" | "cjs" | "jsx" => "JavaScript",
        "ts" | "mts" | "cts" => "TypeScript",
        "tsx" => "TSX",
        "java" => "Java",
        "c" => "C",
        // .h is shared by C and C++; C is the safer guess for a parser.
        "h" => "C",
        "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" => "C++",
        "cs" => "C#",
        "php" => "PHP",
        "rb" => "Ruby",
        "swift" => "Swift",
        "kt" | "kts" => "Kotlin",
        "scala" => "Scala",
        "sh" | "bash" => "Shell",
        "sql" => "SQL",
        "r" => "R",
        "dart" => "Dart",
        "lua" => "Lua",
        "zig" => "Zig",
        "hs" => "Haskell",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::of_path;

    #[test]
    fn extensions_and_names() {
        assert_eq!(of_path("src/main.rs"), Some("Rust"));
        assert_eq!(of_path("a/b/App.TSX"), Some("TSX"));
        assert_eq!(of_path("lib/x.dart"), Some("Dart"));
        assert_eq!(of_path("analysis.R"), Some("R"));
        assert_eq!(of_path("Makefile"), Some("Makefile"));
        assert_eq!(of_path("README.md"), None);
        assert_eq!(of_path("noext"), None);
    }
}
