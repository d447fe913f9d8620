//! Jupyter notebooks as scripts, the way StarCoder2 trained on them (its "Jupyter –
//! scripts" subset): the code cells in order, markdown and raw cells as comments in the
//! notebook's language, outputs, execution counts and metadata dropped. IPython's
//! magics and shell escapes (`%timeit`, `!pip install`) become comments too, as
//! jupytext writes them, so the script parses as the language it claims.
//!
//! Reads nbformat 4 (`cells`) and nbformat 3 (`worksheets[].cells`, code in `input`).
//! A notebook that is not JSON of that shape is [`Malformed`], with the reason.

use codelupe_runtime::language;
use serde::Deserialize;

/// The language the path rules give a notebook until it is read: its script's
/// language replaces it.
pub const NOTEBOOK: &str = "Jupyter Notebook";

/// A notebook turned into a script of its language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Its GitHub Linguist name, so the script is parsed and scored as one.
    pub language: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a notebook: {0}")]
    NotJson(String),
    #[error("no code cell")]
    NoCode,
    /// The kernel's language: not one GitHub Linguist knows, or one without a line
    /// comment to keep markdown cells in.
    #[error("kernel language {0:?} is not one the processor knows")]
    Language(String),
}

#[derive(Deserialize)]
struct Notebook {
    #[serde(default)]
    cells: Vec<Cell>,
    #[serde(default)]
    worksheets: Vec<Worksheet>,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Worksheet {
    #[serde(default)]
    cells: Vec<Cell>,
}

#[derive(Deserialize)]
struct Cell {
    cell_type: String,
    /// nbformat 4: every cell's text.
    #[serde(default)]
    source: Option<Lines>,
    /// nbformat 3: a code cell's text.
    #[serde(default)]
    input: Option<Lines>,
    /// nbformat 3: a code cell's language.
    #[serde(default)]
    language: Option<String>,
}

/// A cell's text: one string, or a list of lines that keep their own newlines.
#[derive(Deserialize)]
#[serde(untagged)]
enum Lines {
    One(String),
    Many(Vec<String>),
}

impl Lines {
    fn text(&self) -> String {
        match self {
            Lines::One(s) => s.clone(),
            Lines::Many(lines) => lines.concat(),
        }
    }
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    language_info: Option<Named>,
    #[serde(default)]
    kernelspec: Option<Kernelspec>,
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Kernelspec {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Whether `path` names a notebook.
pub fn is_notebook(path: &str) -> bool {
    crate::select::has_extension(path, "ipynb")
}

/// The notebook in `text` as a script of its kernel's language.
pub fn to_script(text: &str) -> Result<Script, Malformed> {
    let notebook: Notebook =
        serde_json::from_str(text).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let cells: Vec<&Cell> = notebook
        .cells
        .iter()
        .chain(notebook.worksheets.iter().flat_map(|w| &w.cells))
        .collect();
    let named = kernel_language(&notebook.metadata, &cells);
    let (language, comment) = language_of_kernel(&named)
        .and_then(|l| Some((l, line_comment(l)?)))
        .ok_or(Malformed::Language(named))?;
    let mut parts = Vec::new();
    let mut code = false;
    for cell in cells {
        let Some(source) = cell.source.as_ref().or(cell.input.as_ref()) else {
            continue;
        };
        let source = source.text();
        if source.trim().is_empty() {
            continue;
        }
        let part = match cell.cell_type.as_str() {
            "code" => {
                code = true;
                code_cell(&source, language, comment)
            }
            // nbformat 3's headings are markdown by another name.
            "markdown" | "raw" | "heading" => commented(&source, comment),
            _ => continue,
        };
        parts.push(part);
    }
    if !code {
        return Err(Malformed::NoCode);
    }
    let mut text = parts.join("\n\n");
    text.push('\n');
    Ok(Script { language, text })
}

/// The kernel's language as the notebook names it, in jupytext's order: the
/// kernelspec's language (a kernel's `language_info` can be wrong: .NET's F# kernel
/// says C#), then `language_info`, the kernel's name, nbformat 3's cell languages;
/// IPython's Python when none says.
fn kernel_language(metadata: &Metadata, cells: &[&Cell]) -> String {
    let kernelspec = metadata.kernelspec.as_ref();
    kernelspec
        .and_then(|k| k.language.clone())
        .or_else(|| metadata.language_info.as_ref().and_then(|l| l.name.clone()))
        .or_else(|| kernelspec.and_then(|k| k.name.clone()))
        .or_else(|| cells.iter().find_map(|c| c.language.clone()))
        .unwrap_or_else(|| "python".to_string())
}

/// A kernel language name (`python3`, `ir`, `c++17`, `octave`, `fsharp`…) as GitHub
/// Linguist names it: Jupyter kernels' own names first, then Linguist's names and
/// aliases.
fn language_of_kernel(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ');
    let kernel = match base {
        "ipython" | "pypy" => "python",
        "ir" => "r",
        "xcpp" => "c++",
        "gophernotes" => "go",
        "node" | "nodejs" => "javascript",
        "csharp" | ".net-csharp" => "c#",
        ".net-fsharp" => "f#",
        other => other,
    };
    language::canonical(kernel).or_else(|| language::canonical(&name))
}

/// The line comment of `language` (jupytext's); None for a language without one
/// (OCaml, Wolfram Language, SAS), whose markdown cells would not stay comments.
fn line_comment(language: &str) -> Option<&'static str> {
    Some(match language {
        "Python" | "R" | "Shell" | "Ruby" | "Julia" | "PowerShell" | "Tcl" | "Gnuplot" | "Perl"
        | "Raku" | "Sage" | "Xonsh" | "RobotFramework" | "Elixir" | "Crystal" | "Nim"
        | "CoffeeScript" => "#",
        "C" | "C++" | "C#" | "Java" | "JavaScript" | "TypeScript" | "Go" | "Rust" | "Scala"
        | "Kotlin" | "Swift" | "Groovy" | "F#" | "Dart" | "PHP" | "Stata" => "//",
        "SQL" | "Haskell" | "Lua" => "--",
        "Clojure" | "Scheme" | "Common Lisp" | "Racket" => ";;",
        "IDL" => ";",
        "MATLAB" => "%",
        "q" => "/",
        _ => return None,
    })
}

/// Every line of `text` behind `comment` (an empty line keeps just the marker).
fn commented(text: &str, comment: &str) -> String {
    text.trim_end()
        .lines()
        .map(|line| {
            if line.trim().is_empty() {
                comment.to_string()
            } else {
                format!("{comment} {line}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a Python cell's line is IPython's, not Python: a magic (`%time`), a shell
/// escape (`!pip install`) or help (`?len`, `np.mean??`).
pub fn is_ipython_escape(line: &str) -> bool {
    let line = line.trim();
    line.starts_with(['%', '!', '?'])
        || (line.ends_with('?') && !line.starts_with('#') && !line.contains(char::is_whitespace))
}

/// A code cell as script lines: in Python, IPython's escapes are commented out, as
/// jupytext writes them; a `%%` cell magic comments out the whole cell, whose body is
/// another language.
fn code_cell(source: &str, language: &str, comment: &str) -> String {
    let source = source.trim_end();
    if language != "Python" {
        return source.to_string();
    }
    if source.trim_start().starts_with("%%") {
        return commented(source, comment);
    }
    source
        .lines()
        .map(|line| {
            if is_ipython_escape(line) {
                format!("{comment} {line}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_map_to_linguists_languages() {
        for (kernel, language) in [
            ("python3", Some("Python")),
            ("Python 3.11", Some("Python")),
            ("ir", Some("R")),
            ("C++17", Some("C++")),
            ("xcpp14", Some("C++")),
            ("bash", Some("Shell")),
            ("julia", Some("Julia")),
            ("octave", Some("MATLAB")),
            (".net-fsharp", Some("F#")),
            ("sos", None),
        ] {
            assert_eq!(language_of_kernel(kernel), language, "{kernel}");
        }
    }

    #[test]
    fn ipython_escapes_are_commented_out_of_python_only() {
        let cell =
            "%matplotlib inline\n!pip install numpy\nx = 1  # why?\n?len\nnp.mean??\nprint(x)";
        assert_eq!(
            code_cell(cell, "Python", "#"),
            "# %matplotlib inline\n# !pip install numpy\nx = 1  # why?\n# ?len\n# np.mean??\nprint(x)"
        );
        assert_eq!(
            code_cell("%%bash\nls -l", "Python", "#"),
            "# %%bash\n# ls -l"
        );
        assert_eq!(code_cell("x <- 1 %in% y", "R", "#"), "x <- 1 %in% y");
    }

    #[test]
    fn the_path_rule() {
        assert!(is_notebook("a/b/Analysis.IPYNB"));
        assert!(!is_notebook("a/ipynb/x.py"));
        assert!(!is_notebook("ipynb"));
    }
}
