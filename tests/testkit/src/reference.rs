//! The configuration reference (`docs/src/reference/configuration.md`) read as data, to
//! compare it with the code: each documented default is set explicitly, and the options
//! it gives must equal the options' own defaults; every option must have its row.
//!
//! A default cell holds literals, one a key: a number (`1,000,000`, `4 GiB`), `true`,
//! `false`, `none`, or YAML in backticks (`` `[https]` ``, `` `dead-letters` ``). A
//! default in italics (`*the machine's cores*`) describes a value that depends on the
//! machine and is not compared; an empty cell has no default.

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeSet;
use std::fmt::Debug;

pub const PAGE: &str = include_str!("../../../docs/src/reference/configuration.md");

/// One key of a table row and the default the row gives it (None: described or empty).
#[derive(Debug, Clone)]
pub struct Documented {
    pub row: String,
    pub key: String,
    pub value: Option<Value>,
}

/// The rows of the table under `## {section}`, or of the page's first table.
pub fn documented(section: Option<&str>) -> Vec<Documented> {
    let text = match section {
        None => PAGE.split("\n## ").next().expect("the page"),
        Some(title) => PAGE
            .split("\n## ")
            .find(|part| part.lines().next() == Some(title))
            .unwrap_or_else(|| panic!("the configuration reference has no section {title:?}")),
    };
    let rows = text
        .lines()
        .skip_while(|line| !line.starts_with("| key |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'));
    rows.flat_map(row).collect()
}

fn row(line: &str) -> Vec<Documented> {
    let cells: Vec<&str> = split_top(line.trim_matches('|'), &["|"]);
    let [keys, defaults, ..] = cells.as_slice() else {
        panic!("a row needs a key and a default: {line}");
    };
    let keys = keys_of(keys);
    let parts = split_top(defaults, &[", ", " / "]);
    let described = parts.len() == 1 && literal(parts[0].trim(), line).is_none();
    let values: Vec<Option<Value>> = if described {
        // An empty or italic cell describes every key of its row.
        vec![None; keys.len()]
    } else {
        parts
            .into_iter()
            .map(|value| literal(value.trim(), line))
            .collect()
    };
    assert_eq!(keys.len(), values.len(), "as many defaults as keys: {line}");
    keys.into_iter()
        .zip(values)
        .map(|(key, value)| Documented {
            row: line.to_string(),
            key,
            value,
        })
        .collect()
}

/// `a.b`, `c` (`c` under `a.`), `stages.<name>.x`, and `d: {e, f}`, each spelt out.
fn keys_of(cell: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut prefix = String::new();
    for quoted in cell.split('`').skip(1).step_by(2) {
        let quoted = quoted.replace("<name>", "processor");
        if let Some((head, fields)) = quoted.split_once(": {") {
            let fields = fields.trim_end_matches('}');
            keys.extend(fields.split(", ").map(|field| format!("{head}.{field}")));
        } else if quoted.contains('.') {
            prefix = quoted
                .rsplit_once('.')
                .map(|(p, _)| format!("{p}."))
                .unwrap_or_default();
            keys.push(quoted);
        } else {
            keys.push(format!("{prefix}{quoted}"));
        }
    }
    keys
}

/// Splits at any of `separators` outside backticks, brackets, braces and italics.
fn split_top<'a>(text: &'a str, separators: &[&str]) -> Vec<&'a str> {
    let (mut parts, mut start, mut depth, mut quoted, mut italic) = (vec![], 0, 0i32, false, false);
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().expect("in bounds");
        match c {
            '`' => quoted = !quoted,
            '*' if !quoted => italic = !italic,
            '[' | '{' | '(' if !quoted => depth += 1,
            ']' | '}' | ')' if !quoted => depth -= 1,
            _ => {}
        }
        let top = !quoted && !italic && depth == 0;
        if let Some(sep) = separators.iter().find(|sep| top && rest.starts_with(**sep)) {
            parts.push(&text[start..i]);
            i += sep.len();
            start = i;
            continue;
        }
        i += c.len_utf8();
    }
    parts.push(&text[start..]);
    parts
}

fn literal(value: &str, line: &str) -> Option<Value> {
    if value.is_empty() || (value.len() > 1 && value.starts_with('*') && value.ends_with('*')) {
        return None;
    }
    if let Some(yaml) = value.strip_prefix('`').and_then(|v| v.strip_suffix('`')) {
        return Some(
            serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e} in {line}")),
        );
    }
    match value {
        "none" => return Some(Value::Null),
        "true" | "false" => return Some(Value::Bool(value == "true")),
        _ => {}
    }
    let (number, unit) = match value.split_once(' ') {
        Some((number, "KiB")) => (number, 1u64 << 10),
        Some((number, "MiB")) => (number, 1 << 20),
        Some((number, "GiB")) => (number, 1 << 30),
        _ => (value, 1),
    };
    let number = number.replace(',', "");
    if let Ok(whole) = number.parse::<u64>() {
        return Some(Value::from(whole * unit));
    }
    match number.parse::<f64>() {
        Ok(real) if unit == 1 => Some(Value::from(real)),
        _ => panic!("{value:?} is no literal (italics describe a default): {line}"),
    }
}

/// `base` with `value` set at the dotted `key`.
fn with_value(base: &Value, key: &str, value: Value) -> Value {
    let mut root = base.clone();
    let mut at = &mut root;
    for part in key.split('.') {
        if !at.is_mapping() {
            *at = Value::Mapping(Mapping::new());
        }
        let map = at.as_mapping_mut().expect("a mapping");
        at = map.entry(Value::from(part)).or_insert(Value::Null);
    }
    *at = value;
    root
}

/// The fields serde expects at `path` (a struct's), from its refusal of an unknown one.
fn fields_at<T: DeserializeOwned + Debug>(base: &Value, path: &str) -> BTreeSet<String> {
    let key = if path.is_empty() {
        "no_such_option".to_string()
    } else {
        format!("{path}.no_such_option")
    };
    let error = match serde_yaml::from_value::<T>(with_value(base, &key, Value::from(0))) {
        Err(e) => e.to_string(),
        Ok(options) => panic!("{key} was taken: {options:?}"),
    };
    let expected = error
        .split_once("expected")
        .unwrap_or_else(|| panic!("{key}: {error}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// Compares the reference's section with the options `T` read from `base` (`{}` for a
/// stage's options): every literal default must give options equal to `expected`, and
/// every field of `T`, and of each struct a row names a field of, must have a row.
pub fn check<T: DeserializeOwned + Debug>(section: Option<&str>, base: &str, expected: &T) {
    let base: Value = serde_yaml::from_str(base).expect("base YAML");
    let rows = documented(section);
    let want = format!("{expected:?}");
    let mut wrong = Vec::new();
    for Documented { row, key, value } in rows.iter().filter(|d| d.value.is_some()) {
        let value = value.clone().expect("filtered");
        match serde_yaml::from_value::<T>(with_value(&base, key, value.clone())) {
            Ok(options) if format!("{options:?}") == want => {}
            Ok(_) => wrong.push(format!(
                "`{key}` is documented as {value:?}, not its default\n  {row}"
            )),
            Err(e) => wrong.push(format!("`{key}` cannot be {value:?}: {e}\n  {row}")),
        }
    }
    let keys: BTreeSet<&str> = rows.iter().map(|d| d.key.trim_end_matches(".*")).collect();
    let mut structs: BTreeSet<String> = keys
        .iter()
        .filter_map(|key| key.rsplit_once('.').map(|(parent, _)| parent.to_string()))
        .filter(|parent| !parent.ends_with("options"))
        .collect();
    structs.insert(String::new());
    for path in structs {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}.")
        };
        for field in fields_at::<T>(&base, &path) {
            let name = format!("{prefix}{field}");
            let named = keys
                .iter()
                .any(|k| *k == name || k.starts_with(&format!("{name}.")));
            if !named {
                wrong.push(format!("`{name}` has no row in section {section:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the configuration reference differs from the code:\n{}",
        wrong.join("\n")
    );
    assert!(
        rows.iter().any(|d| d.value.is_some()),
        "no default compared"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_spells_out_its_keys_and_reads_its_literals() {
        let rows = row("| `github.min_stars` / `max_stars` / `licenses` | 10 / none / `[]` | x |");
        let keys: Vec<&str> = rows.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            ["github.min_stars", "github.max_stars", "github.licenses"]
        );
        assert_eq!(rows[0].value, Some(Value::from(10u64)));
        assert_eq!(rows[1].value, Some(Value::Null));
        let rows = row("| `mix: {a, b}`, `c` | 1,000,000, *the cores*, 2 GiB | |");
        let keys: Vec<&str> = rows.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["mix.a", "mix.b", "c"]);
        assert_eq!(rows[0].value, Some(Value::from(1_000_000u64)));
        assert_eq!(rows[1].value, None);
        assert_eq!(rows[2].value, Some(Value::from(2u64 << 30)));
    }
}
