//! Compiles go-enry's classifier tables (fetched by `setup/enry.sh`) into the runtime:
//! `frequencies.go`, a Go source file of log-probabilities, becomes a compact binary
//! table in OUT_DIR that `language::classifier` reads with `include_bytes!`.
//!
//! Format, little-endian: f64 unseen-token log-probability, u32 language count, then
//! per language: u16 name length, name, f64 log prior, u32 token count, then per token:
//! u32 length, bytes, f32 log-probability.

use std::collections::BTreeMap;
use std::path::PathBuf;

const VERSION: &str = "v2.9.6";

fn main() {
    let dir = std::env::var_os("ENRY_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/codelupe/enry")))
        .expect("neither ENRY_DIR nor HOME is set")
        .join(VERSION);
    let source = dir.join("frequencies.go");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=ENRY_DIR");
    let text = std::fs::read_to_string(&source).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. The language classifier's tables are missing: run `bash setup/deps.sh run` \
             (it fetches go-enry {VERSION} from the Go module proxy)",
            source.display()
        )
    });
    let table = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("enry.bin");
    std::fs::write(&out, encode(&table)).expect("write the classifier table");
}

#[derive(Default)]
struct Table {
    tokens_total: f64,
    priors: BTreeMap<String, f64>,
    tokens: BTreeMap<String, Vec<(Vec<u8>, f32)>>,
}

/// Reads the three Go variables line by line: go-enry's generator writes one entry a line.
fn parse(text: &str) -> Result<Table, String> {
    let mut table = Table::default();
    let mut section = "";
    let mut language = String::new();
    for (number, line) in text.lines().enumerate() {
        let fail = |what: &str| format!("line {}: {what}: {line}", number + 1);
        let trimmed = line.trim();
        if let Some(total) = trimmed.strip_prefix("var TokensTotal = ") {
            table.tokens_total = total.parse().map_err(|_| fail("not a number"))?;
        } else if trimmed.starts_with("var LanguagesLogProbabilities") {
            section = "priors";
        } else if trimmed.starts_with("var TokensLogProbabilities") {
            section = "tokens";
        } else if trimmed.starts_with('"') && !section.is_empty() {
            let (key, rest) = unquote(trimmed).ok_or_else(|| fail("bad Go string"))?;
            let value = rest.trim_start_matches(':').trim().trim_end_matches(',');
            if value.starts_with("map[") {
                language = String::from_utf8(key).map_err(|_| fail("language not UTF-8"))?;
                continue;
            }
            let value: f64 = value.parse().map_err(|_| fail("not a number"))?;
            if section == "priors" {
                let name = String::from_utf8(key).map_err(|_| fail("language not UTF-8"))?;
                table.priors.insert(name, value);
            } else {
                let entry = table.tokens.entry(language.clone()).or_default();
                entry.push((key, value as f32));
            }
        }
    }
    if table.priors.is_empty() || table.tokens.is_empty() || table.tokens_total <= 0.0 {
        return Err("no classifier tables found".into());
    }
    Ok(table)
}

/// A Go string literal at the start of `s` (as `strconv.Quote` writes them) as bytes,
/// and what follows it.
fn unquote(s: &str) -> Option<(Vec<u8>, &str)> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 1;
    let hex = |from: usize, len: usize| u32::from_str_radix(s.get(from..from + len)?, 16).ok();
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied()) {
            (b'"', _) => return Some((out, &s[i + 1..])),
            (b'\\', Some(b'x')) => {
                out.push(hex(i + 2, 2)? as u8);
                i += 4;
            }
            (b'\\', Some(escape @ (b'u' | b'U'))) => {
                let len = if escape == b'u' { 4 } else { 8 };
                let c = char::from_u32(hex(i + 2, len)?)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i += 2 + len;
            }
            (b'\\', Some(b'0'..=b'7')) => {
                out.push(u8::from_str_radix(s.get(i + 1..i + 4)?, 8).ok()?);
                i += 4;
            }
            (b'\\', Some(escape)) => {
                out.push(simple_escape(escape)?);
                i += 2;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    None
}

fn simple_escape(c: u8) -> Option<u8> {
    Some(match c {
        b'a' => 7,
        b'b' => 8,
        b'f' => 12,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'v' => 11,
        b'\\' | b'"' | b'\'' => c,
        _ => return None,
    })
}

fn encode(table: &Table) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(1.0 / table.tokens_total).ln().to_le_bytes());
    out.extend_from_slice(&(table.priors.len() as u32).to_le_bytes());
    for (language, prior) in &table.priors {
        out.extend_from_slice(&(language.len() as u16).to_le_bytes());
        out.extend_from_slice(language.as_bytes());
        out.extend_from_slice(&prior.to_le_bytes());
        let tokens = table.tokens.get(language).map_or(&[][..], Vec::as_slice);
        out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
        for (token, probability) in tokens {
            out.extend_from_slice(&(token.len() as u32).to_le_bytes());
            out.extend_from_slice(token);
            out.extend_from_slice(&probability.to_le_bytes());
        }
    }
    out
}
