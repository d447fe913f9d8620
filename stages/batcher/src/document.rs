//! One file as training tokens: optional repository/path metadata, character-level
//! fill-in-the-middle, and the held-out split — all decided by dice seeded from the
//! content hash, so a rerun makes the same choices and eval membership never changes.

use codelupe_runtime::records::CodeFile;

use codelupe_tokenizer::CodeTokenizer;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocumentOptions {
    /// Share of files rearranged for fill-in-the-middle.
    pub fim_rate: f64,
    /// Of those, the share in prefix-suffix-middle order (the rest suffix-prefix-middle).
    pub psm_share: f64,
    /// Share of files prefixed with `<repo_name>repo<file_sep>path` (StarCoder2: half).
    pub metadata_rate: f64,
    /// Share of files held out for evaluation.
    pub eval_share: f64,
}

impl Default for DocumentOptions {
    fn default() -> Self {
        Self {
            fim_rate: 0.5,
            psm_share: 0.5,
            metadata_rate: 0.5,
            eval_share: 0.01,
        }
    }
}

/// splitmix64 over the hash's first 16 hex digits: small, fixed, and the same on every
/// platform and version (unlike a library's default generator).
struct Dice(u64);

impl Dice {
    fn from_hash(content_hash: &str, salt: u64) -> Self {
        let seed = u64::from_str_radix(content_hash.get(..16).unwrap_or("0"), 16).unwrap_or(0);
        Dice(seed ^ salt)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Eval membership from hash digits 16..32, independent of the other dice.
pub fn is_eval(content_hash: &str, eval_share: f64) -> bool {
    let bucket =
        u64::from_str_radix(content_hash.get(16..32).unwrap_or("0"), 16).unwrap_or(0) % 1_000_000;
    (bucket as f64) < eval_share * 1_000_000.0
}

/// The tokens of one document, without the end-of-text token that follows it.
pub fn tokens(
    tok: &CodeTokenizer,
    file: &CodeFile,
    o: &DocumentOptions,
) -> anyhow::Result<Vec<u32>> {
    let mut dice = Dice::from_hash(&file.content_hash, 0);
    let mut out = Vec::with_capacity(file.content.len() / 3);
    if dice.unit() < o.metadata_rate {
        out.push(tok.repo_name);
        out.extend(tok.encode(&file.repo_full_name)?);
        out.push(tok.file_separator);
        out.extend(tok.encode(&path_line(&file.path))?);
    }
    let (fim, psm) = (dice.unit() < o.fim_rate, dice.unit() < o.psm_share);
    if !fim {
        out.extend(tok.encode(&file.content)?);
        return Ok(out);
    }
    // Character-level cut points, so no piece splits a UTF-8 sequence.
    let n = file.content.chars().count() as u64;
    let byte_at = |i: u64| {
        file.content
            .char_indices()
            .nth(i as usize)
            .map_or(file.content.len(), |(b, _)| b)
    };
    let (mut a, mut b) = (dice.next() % (n + 1), dice.next() % (n + 1));
    if a > b {
        std::mem::swap(&mut a, &mut b);
    }
    let (prefix, rest) = file.content.split_at(byte_at(a));
    let (middle, suffix) = rest.split_at(byte_at(b) - byte_at(a));
    if psm {
        out.push(tok.fim_prefix);
        out.extend(tok.encode(prefix)?);
        out.push(tok.fim_suffix);
        out.extend(tok.encode(suffix)?);
        out.push(tok.fim_middle);
        out.extend(tok.encode(middle)?);
    } else {
        out.extend([tok.fim_prefix, tok.fim_suffix]);
        out.extend(tok.encode(suffix)?);
        out.push(tok.fim_middle);
        out.extend(tok.encode(prefix)?);
        out.extend(tok.encode(middle)?);
    }
    Ok(out)
}

/// The path as one line: git allows any byte but NUL and `/` in a name, newlines too,
/// and the metadata ends at the first newline (where [`restore`] looks for its end), so
/// control characters are written as their escapes.
fn path_line(path: &str) -> String {
    let mut line = String::with_capacity(path.len() + 1);
    for c in path.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line.push('\n');
    line
}

/// The file's text back from its document tokens (metadata dropped, FIM undone): the
/// inverse of [`tokens`] given the same dice.
pub fn restore(
    tok: &CodeTokenizer,
    file_hash: &str,
    ids: &[u32],
    o: &DocumentOptions,
) -> anyhow::Result<String> {
    let mut dice = Dice::from_hash(file_hash, 0);
    let mut ids = ids;
    if dice.unit() < o.metadata_rate {
        let newline = ids
            .iter()
            .position(|&t| t == tok.file_separator)
            .map(|sep| sep + 1)
            .ok_or_else(|| anyhow::anyhow!("metadata without a file separator"))?;
        // The path runs to the first newline after the separator.
        let rest = &ids[newline..];
        let mut end = 0;
        while end < rest.len() && !tok.decode(&rest[..end])?.contains('\n') {
            end += 1;
        }
        ids = &rest[end..];
    }
    let (fim, psm) = (dice.unit() < o.fim_rate, dice.unit() < o.psm_share);
    if !fim {
        return tok.decode(ids);
    }
    let at = |t: u32| {
        ids.iter()
            .position(|&x| x == t)
            .ok_or_else(|| anyhow::anyhow!("missing FIM token"))
    };
    let (suffix_at, middle_at) = (at(tok.fim_suffix)?, at(tok.fim_middle)?);
    if psm {
        let prefix = tok.decode(&ids[1..suffix_at])?;
        let suffix = tok.decode(&ids[suffix_at + 1..middle_at])?;
        let middle = tok.decode(&ids[middle_at + 1..])?;
        Ok(prefix + &middle + &suffix)
    } else {
        let suffix = tok.decode(&ids[suffix_at + 1..middle_at])?;
        let prefix_middle = tok.decode(&ids[middle_at + 1..])?;
        Ok(prefix_middle + &suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub(crate) fn file(i: usize) -> CodeFile {
        let content = format!("// file {i} ✓\nfn f{i}(x: i32) -> i32 {{\n    x * {i} + 1\n}}\n");
        CodeFile {
            content_hash: format!(
                "{:x}",
                <sha2::Sha256 as sha2::Digest>::digest(content.as_bytes())
            ),
            repo_full_name: format!("owner/repo{}", i % 3),
            commit_id: "c".into(),
            path: format!("src/f{i}.rs"),
            language: "Rust".into(),
            size_bytes: content.len() as i64,
            lines: 4,
            content,
            quality_score: 80.0,
            quality_components: BTreeMap::new(),
            parse_stats: None,
            redactions: Default::default(),
            license: Default::default(),
        }
    }

    fn tokenizer() -> CodeTokenizer {
        let texts: Vec<String> = (0..60).map(|i| file(i).content).collect();
        CodeTokenizer::train(texts.into_iter(), 300).unwrap()
    }

    #[test]
    fn fim_and_metadata_are_reversible_and_follow_the_dice() {
        let tok = tokenizer();
        for (fim_rate, psm_share, metadata_rate) in [
            (1.0, 1.0, 1.0),
            (1.0, 0.0, 0.0),
            (0.0, 0.5, 1.0),
            (0.5, 0.5, 0.5),
        ] {
            let o = DocumentOptions {
                fim_rate,
                psm_share,
                metadata_rate,
                eval_share: 0.0,
            };
            for i in 0..40 {
                let f = file(i);
                let ids = tokens(&tok, &f, &o).unwrap();
                assert_eq!(ids, tokens(&tok, &f, &o).unwrap(), "same dice, same tokens");
                let rearranged = ids.contains(&tok.fim_middle);
                if fim_rate == 1.0 || fim_rate == 0.0 {
                    assert_eq!(rearranged, fim_rate == 1.0, "{i}");
                }
                assert_eq!(
                    restore(&tok, &f.content_hash, &ids, &o).unwrap(),
                    f.content,
                    "{i} {fim_rate} {psm_share}"
                );
            }
        }
        // At rate 0.5, some files are rearranged and some are not.
        let o = DocumentOptions::default();
        let rearranged = (0..40)
            .filter(|&i| {
                tokens(&tok, &file(i), &o)
                    .unwrap()
                    .contains(&tok.fim_middle)
            })
            .count();
        assert!(rearranged > 5 && rearranged < 35, "{rearranged}");
    }

    #[test]
    fn a_path_with_a_newline_stays_on_the_metadata_line() {
        let tok = tokenizer();
        let o = DocumentOptions {
            metadata_rate: 1.0,
            fim_rate: 0.0,
            ..DocumentOptions::default()
        };
        let f = CodeFile {
            path: "src/a\nb\r.rs".into(),
            ..file(1)
        };
        let ids = tokens(&tok, &f, &o).unwrap();
        assert_eq!(restore(&tok, &f.content_hash, &ids, &o).unwrap(), f.content);
        assert!(tok.decode(&ids).unwrap().contains("src/a\\nb\\r.rs\n"));
    }

    #[test]
    fn eval_membership_is_stable_and_near_its_share() {
        let hashes: Vec<String> = (0..20_000)
            .map(|i| {
                format!(
                    "{:x}",
                    <sha2::Sha256 as sha2::Digest>::digest(i.to_string().as_bytes())
                )
            })
            .collect();
        let eval = hashes.iter().filter(|h| is_eval(h, 0.01)).count();
        assert!((150..=250).contains(&eval), "{eval}");
        assert!(hashes.iter().all(|h| is_eval(h, 0.01) == is_eval(h, 0.01)));
        assert!(
            hashes
                .iter()
                .filter(|h| is_eval(h, 0.01))
                .all(|h| is_eval(h, 0.05)),
            "a larger share keeps the smaller one's files"
        );
    }
}
