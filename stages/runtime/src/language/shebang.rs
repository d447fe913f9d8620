//! The interpreter a `#!` line names, read as Linguist's shebang strategy reads it
//! (`lib/linguist/shebang.rb`), and the languages Linguist runs with it.

use super::index::INDEX;

/// The languages whose `interpreters` hold the program `text`'s shebang runs.
pub fn languages(text: &str) -> Vec<&'static str> {
    interpreter(text)
        .and_then(|program| INDEX.by_interpreter.get(program.as_str()))
        .cloned()
        .unwrap_or_default()
}

/// `#!/usr/bin/env -S python3.11 -u` → `python3`: the program's base name after `env`
/// and its flags and variable settings, without a trailing `.minor` version.
fn interpreter(text: &str) -> Option<String> {
    let first = text.lines().next()?.strip_prefix("#!")?;
    let mut words = first.split_whitespace();
    let mut program = base_name(words.next()?);
    if program == "env" {
        program = base_name(words.find(|w| !w.starts_with('-') && !w.contains('='))?);
    }
    // `osascript -l JavaScript`: the language is an argument, left to later strategies.
    if program == "osascript" && first.contains("-l") {
        return None;
    }
    let mut program = program.to_string();
    // "python2.7" → "python2", as Linguist strips one `.digits` suffix.
    if let Some((stem, minor)) = program.rsplit_once('.') {
        if !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()) {
            program = stem.to_string();
        }
    }
    // A `sh` wrapper that re-executes itself with another program (`exec tclsh "$0"`).
    if program == "sh" {
        if let Some(other) = text.lines().take(5).find_map(exec_hack) {
            program = other;
        }
    }
    Some(program)
}

fn base_name(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// The program in a line `exec PROGRAM "$0" "$@"`.
fn exec_hack(line: &str) -> Option<String> {
    let rest = &line[line.find("exec ")? + 5..];
    let program: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let after = rest[program.len()..].trim_start_matches([' ', '\'', '"', '\t']);
    (!program.is_empty() && after.starts_with("$0")).then_some(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters_as_linguist_reads_them() {
        let program = |line: &str| interpreter(line);
        assert_eq!(
            program("#!/usr/bin/env python3\n").as_deref(),
            Some("python3")
        );
        assert_eq!(
            program("#!/usr/bin/python2.7\n").as_deref(),
            Some("python2")
        );
        assert_eq!(program("#! /bin/sh\n").as_deref(), Some("sh"));
        assert_eq!(
            program("#!/usr/bin/env -S FOO=1 node --harmony\n").as_deref(),
            Some("node")
        );
        assert_eq!(program("#!/usr/bin/env\n"), None);
        assert_eq!(program("#!/usr/bin/env osascript -l JavaScript\n"), None);
        assert_eq!(program("no shebang\n"), None);
        assert_eq!(
            program(
                "#!/bin/sh\n# the next line restarts with tclsh \\\nexec tclsh \"$0\" \"$@\"\n"
            )
            .as_deref(),
            Some("tclsh")
        );
    }

    #[test]
    fn interpreters_name_languages() {
        assert_eq!(languages("#!/usr/bin/env ruby\n"), ["Ruby"]);
        assert!(languages("#!/usr/bin/perl -w\n").contains(&"Perl"));
        assert!(languages("#!/usr/bin/env node\n").contains(&"JavaScript"));
        assert!(languages("#!/opt/unknown-tool\n").is_empty());
    }
}
