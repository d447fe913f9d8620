//! Linguist's last strategy: where several candidates remain after the heuristics, a
//! naive Bayes classifier trained on Linguist's samples picks the likeliest by the
//! file's tokens. The trained tables are go-enry's (v2.9.6, Apache-2.0; trained on
//! Linguist's samples at commit 537297c), the detector The Stack v2 used: fetched by
//! `setup/enry.sh` and compiled in by `build.rs`.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::tokens::tokenize;

/// Scores a language for a file's tokens; higher is likelier.
pub trait Classifier {
    /// log P(language) + Σ log P(token | language); None for a language it was not
    /// trained on, which is then never chosen over one it knows.
    fn score(&self, tokens: &[Vec<u8>], language: &str) -> Option<f64>;
}

/// A language's trained table: its prior and its tokens' log-probabilities.
struct Trained {
    prior: f64,
    tokens: HashMap<&'static [u8], f32>,
}

/// go-enry's naive Bayes classifier over its compiled-in tables.
pub struct NaiveBayes {
    /// log(1 / every token of every sample): a token a language never had.
    unseen: f64,
    languages: HashMap<&'static str, Trained>,
}

static TABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/enry.bin"));

/// The classifier every stage uses, read from the compiled-in table on first use.
pub static ENRY: LazyLock<NaiveBayes> =
    LazyLock::new(|| NaiveBayes::read(TABLE).expect("the compiled-in classifier table"));

impl NaiveBayes {
    /// Reads the table `build.rs` wrote. Language names are Linguist's at training time;
    /// one renamed since is filed under its name today (`Vim Script` is `Vim script`).
    fn read(mut table: &'static [u8]) -> Option<NaiveBayes> {
        let t = &mut table;
        let unseen = f64::from_le_bytes(fixed(t)?);
        let count = u32::from_le_bytes(fixed(t)?);
        let mut languages = HashMap::with_capacity(count as usize);
        for _ in 0..count {
            let len = u16::from_le_bytes(fixed(t)?);
            let name = std::str::from_utf8(take(t, len.into())?).ok()?;
            let prior = f64::from_le_bytes(fixed(t)?);
            let tokens = u32::from_le_bytes(fixed(t)?);
            let mut trained = Trained {
                prior,
                tokens: HashMap::with_capacity(tokens as usize),
            };
            for _ in 0..tokens {
                let len = u32::from_le_bytes(fixed(t)?);
                let token = take(t, len as usize)?;
                trained.tokens.insert(token, f32::from_le_bytes(fixed(t)?));
            }
            languages.insert(super::index::canonical(name).unwrap_or(name), trained);
        }
        t.is_empty().then_some(NaiveBayes { unseen, languages })
    }

    /// How many languages the tables were trained on.
    pub fn languages(&self) -> usize {
        self.languages.len()
    }
}

fn take(table: &mut &'static [u8], len: usize) -> Option<&'static [u8]> {
    let (head, rest) = table.split_at_checked(len)?;
    *table = rest;
    Some(head)
}

/// The next `N` bytes of `table`, for a number.
fn fixed<const N: usize>(table: &mut &'static [u8]) -> Option<[u8; N]> {
    take(table, N)?.try_into().ok()
}

impl Classifier for NaiveBayes {
    fn score(&self, tokens: &[Vec<u8>], language: &str) -> Option<f64> {
        let trained = self.languages.get(language)?;
        let likelihood: f64 = tokens
            .iter()
            .map(|token| {
                trained
                    .tokens
                    .get(token.as_slice())
                    .map_or(self.unseen, |p| f64::from(*p))
            })
            .sum();
        Some(trained.prior + likelihood)
    }
}

/// The candidates `classifier` scores highest for `text`, best first; empty when it
/// knows none of them.
pub fn rank(
    classifier: &dyn Classifier,
    text: &str,
    candidates: &[&'static str],
) -> Vec<&'static str> {
    let tokens = tokenize(text.as_bytes());
    let mut scored: Vec<(f64, &'static str)> = candidates
        .iter()
        .filter_map(|language| Some((classifier.score(&tokens, language)?, *language)))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let best = scored.first().map(|s| s.0);
    scored
        .into_iter()
        .take_while(|s| Some(s.0) == best)
        .map(|s| s.1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_tables_hold_linguists_languages() {
        assert!(ENRY.languages() > 700, "{} languages", ENRY.languages());
        let tokens = tokenize(b"fn main() { println!(\"hi\"); }");
        assert!(ENRY.score(&tokens, "Rust").is_some());
        assert!(ENRY.score(&tokens, "No Such Language").is_none());
        // Renamed after go-enry's training: found under today's name.
        assert!(ENRY.score(&tokens, "Vim script").is_some());
    }

    #[test]
    fn the_likeliest_candidate_by_tokens_comes_first() {
        let perl = "my $x = shift;\nprint \"$x\\n\";\nsub f { my ($a) = @_; return $a; }\n";
        let prolog = "member(X, [X|_]).\nmember(X, [_|T]) :- member(X, T).\n";
        let both = ["Perl", "Prolog"];
        assert_eq!(rank(&*ENRY, perl, &both), ["Perl"]);
        assert_eq!(rank(&*ENRY, prolog, &both), ["Prolog"]);
        assert!(rank(&*ENRY, perl, &["No Such Language"]).is_empty());
    }
}
