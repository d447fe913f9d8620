//! The code tokenizer: a byte-level BPE fitted with the `tokenizers` crate, or any
//! existing `tokenizer.json` (a Qwen or StarCoder tokenizer a user already has), with
//! the special tokens packing and fill-in-the-middle need. The batcher encodes with it,
//! the trainer decodes samples with it; batches carry its fingerprint.

pub mod sample;

use std::path::Path;

use anyhow::{anyhow, Context as _};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const FIM_PREFIX: &str = "<fim_prefix>";
pub const FIM_MIDDLE: &str = "<fim_middle>";
pub const FIM_SUFFIX: &str = "<fim_suffix>";
pub const FILE_SEPARATOR: &str = "<file_sep>";
pub const REPO_NAME: &str = "<repo_name>";
pub const SPECIAL_TOKENS: [&str; 6] = [
    END_OF_TEXT,
    FIM_PREFIX,
    FIM_MIDDLE,
    FIM_SUFFIX,
    FILE_SEPARATOR,
    REPO_NAME,
];

/// A tokenizer with the ids of its special tokens resolved once.
pub struct CodeTokenizer {
    inner: Tokenizer,
    pub end_of_text: u32,
    pub fim_prefix: u32,
    pub fim_middle: u32,
    pub fim_suffix: u32,
    pub file_separator: u32,
    pub repo_name: u32,
    /// First 16 hex digits of the SHA-256 of the tokenizer's JSON: batches carry it, and
    /// the trainer refuses batches made with another tokenizer.
    pub fingerprint: String,
    /// Where [`pieces`] may cut a long text.
    cuts: Cuts,
}

/// The places [`safe_end`] may cut a text at.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cuts {
    after_newlines: bool,
    before_spaces: bool,
}

/// Code with every kind of place [`safe_end`] cuts at, and the spacing around them
/// (indentation, blank lines, trailing spaces, CRLF, tabs, digits, quotes, non-ASCII):
/// a tokenizer that gives other ids for it cut at every such place is not cut there.
const CUT_PROBE: &str = "use std::io;\n#[derive(Debug)]\nstruct A { b: u32 }\nimpl A {\n    \
    fn new() -> Self {\n        A { b: 1_000 }\n    }\n}\n\n\nfn main() {\r\n\tlet x = \
    [1, 22, 333];   \n    println!(\"{x:?} it's 'ok' — ünïcødé ✓\");\n}\nx = 1  \ny = 2\n";

impl CodeTokenizer {
    /// Fits a byte-level BPE of `vocab_size` on `texts`.
    pub fn train<I, S>(texts: I, vocab_size: usize) -> anyhow::Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevel::default()));
        tokenizer
            .train(&mut trainer, texts)
            .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
        Self::wrap(tokenizer)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        // A tokenizer from elsewhere may lack some of ours; they are added, not assumed.
        let missing: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .filter(|t| tokenizer.token_to_id(t).is_none())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        tokenizer.add_special_tokens(&missing);
        Self::wrap(tokenizer)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        self.inner
            .save(path, true)
            .map_err(|e| anyhow!("{}: {e}", path.display()))
            .with_context(|| "writing tokenizer.json")
    }

    fn wrap(mut inner: Tokenizer) -> anyhow::Result<Self> {
        // A source file that contains "<|endoftext|>" is text, not a document boundary.
        inner.set_encode_special_tokens(true);
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| anyhow!("tokenizer has no {t} token"))
        };
        let json = inner.to_string(false).map_err(|e| anyhow!("{e}"))?;
        let fingerprint = format!("{:x}", Sha256::digest(json.as_bytes()))[..16].to_string();
        Ok(Self {
            cuts: cuts_keeping_ids(&inner)?,
            end_of_text: id(END_OF_TEXT)?,
            fim_prefix: id(FIM_PREFIX)?,
            fim_middle: id(FIM_MIDDLE)?,
            fim_suffix: id(FIM_SUFFIX)?,
            file_separator: id(FILE_SEPARATOR)?,
            repo_name: id(REPO_NAME)?,
            fingerprint,
            inner,
        })
    }

    /// Token ids of plain text (special-token strings inside it are not special).
    ///
    /// A long text is encoded a piece at a time: the `tokenizers` crate holds over a
    /// hundred bytes for every byte it encodes at once (alignments, token strings,
    /// offsets): 73 MB for a moment for a file of 700 KB, 1.5 MB in pieces (`cargo bench
    /// -p codelupe-tokenizer --bench encode_memory`). Where [`pieces`] cuts, no
    /// pre-tokenizer of the byte-level BPEs in use (GPT-2's, Qwen's, Llama 3's,
    /// StarCoder's) puts one pre-token across, so the ids are those of the whole text.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        self.encode_in_pieces(text, ENCODE_PIECE_BYTES)
    }

    fn encode_in_pieces(&self, text: &str, min_bytes: usize) -> anyhow::Result<Vec<u32>> {
        encode_cut(&self.inner, text, min_bytes, self.cuts)
    }

    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow!("{e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// The ids of `text` encoded a piece at a time, cut where `cuts` allows.
fn encode_cut(
    tokenizer: &Tokenizer,
    text: &str,
    min_bytes: usize,
    cuts: Cuts,
) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for piece in pieces(text, min_bytes, cuts) {
        let encoding = tokenizer
            .encode_fast(piece, false)
            .map_err(|e| anyhow!("{e}"))?;
        ids.extend_from_slice(encoding.get_ids());
    }
    Ok(ids)
}

/// The kinds of cut under which `tokenizer` encodes [`CUT_PROBE`], cut at every place
/// each allows, to the ids of it whole. The rules hold for byte-level BPEs (GPT-2's,
/// Qwen's, Llama 3's split patterns); a SentencePiece-style pre-tokenizer marks the
/// start of every text it is given, so each piece would gain a mark. No cut before a
/// space where an added token holds one: it could be cut in two.
fn cuts_keeping_ids(tokenizer: &Tokenizer) -> anyhow::Result<Cuts> {
    let whole = tokenizer
        .encode_fast(CUT_PROBE, false)
        .map_err(|e| anyhow!("{e}"))?;
    let keeps_ids = |cuts| -> anyhow::Result<bool> {
        Ok(encode_cut(tokenizer, CUT_PROBE, 1, cuts)? == whole.get_ids())
    };
    let spaced_token = tokenizer
        .get_added_tokens_decoder()
        .values()
        .any(|t| t.content.contains(' '));
    Ok(Cuts {
        after_newlines: keeps_ids(Cuts {
            after_newlines: true,
            before_spaces: false,
        })?,
        before_spaces: !spaced_token
            && keeps_ids(Cuts {
                after_newlines: false,
                before_spaces: true,
            })?,
    })
}

/// Bytes of text encoded at once, at least (a piece runs on to its next safe end).
const ENCODE_PIECE_BYTES: usize = 32 * 1024;

/// `text` cut into pieces of at least `min_bytes` where it can be (the last may be
/// shorter), each ending at the first [`safe_end`] after `min_bytes`; a text with no
/// such place after `min_bytes` is one piece.
fn pieces(text: &str, min_bytes: usize, cuts: Cuts) -> impl Iterator<Item = &str> {
    let mut rest = text;
    let from = min_bytes.saturating_sub(1);
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .as_bytes()
            .get(from..)
            // A tokenizer cut nowhere (SentencePiece-style) is not scanned for places.
            .filter(|_| cuts.after_newlines || cuts.before_spaces)
            .and_then(|after| {
                after
                    .windows(3)
                    .enumerate()
                    .find_map(|(at, w)| safe_end(w, cuts).map(|end| from + at + end))
            })
            .unwrap_or(rest.len());
        let (piece, after) = rest.split_at(end);
        rest = after;
        Some(piece)
    })
}

/// Where in three bytes of text a piece may end, if anywhere (as far as `cuts` allows):
/// after a '\n' between two visible ASCII characters, or between a visible ASCII
/// character and a space. In GPT-2's split pattern (ByteLevel's own) and Qwen2's and
/// Llama 3's, a pre-token holds a space only first or among whitespace, so one always
/// starts at such a space, and the pre-token before it ends the same with the text cut
/// there.
/// Before a newline no such rule holds: GPT-2's pattern takes "  \n" at the end of a
/// text whole, and "  " then "\n" before a letter; Llama 3's joins "\n" to the
/// punctuation before it; so a cut follows a newline, and only one that neither side's
/// whitespace joins. Indented code has few of those, the spaces make up for it.
fn safe_end(w: &[u8], cuts: Cuts) -> Option<usize> {
    if !w[0].is_ascii_graphic() {
        None
    } else if cuts.after_newlines && w[1] == b'\n' && w[2].is_ascii_graphic() {
        Some(2)
    } else if cuts.before_spaces && w[1] == b' ' {
        Some(1)
    } else {
        None
    }
}

/// What [`fit`] wrote.
pub struct Fitted {
    pub vocab_size: usize,
    pub fingerprint: String,
    /// Bytes per token on the sample.
    pub bytes_per_token: f64,
    pub seconds: f64,
}

/// Fits a `vocab_size`-token tokenizer on `sample` and writes it to `out` (folders
/// made). Training is CPU-bound, so it runs off the async workers.
pub async fn fit(sample: sample::Sample, vocab_size: usize, out: &Path) -> anyhow::Result<Fitted> {
    if sample.texts.is_empty() {
        anyhow::bail!("no source files to train on");
    }
    let started = std::time::Instant::now();
    let (tokenizer, tokens) = tokio::task::spawn_blocking(move || {
        let tokenizer = CodeTokenizer::train(sample.texts.iter(), vocab_size)?;
        let tokens: usize = sample
            .texts
            .iter()
            .map(|t| tokenizer.encode(t).map(|ids| ids.len()))
            .sum::<anyhow::Result<_>>()?;
        anyhow::Ok((tokenizer, (tokens, sample.bytes)))
    })
    .await??;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tokenizer.save(out)?;
    Ok(Fitted {
        vocab_size: tokenizer.vocab_size(),
        fingerprint: tokenizer.fingerprint.clone(),
        bytes_per_token: tokens.1 as f64 / tokens.0.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokenizer_from_elsewhere_gets_the_missing_special_tokens() {
        // A byte-level BPE with only an end-of-text token of another spelling, as a
        // Qwen or GPT-2 style tokenizer.json has.
        let mut trainer = byte_level_trainer(300, "<|im_end|>");
        let mut foreign = Tokenizer::new(BPE::default());
        foreign
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevel::default()));
        foreign.train(&mut trainer, corpus().into_iter()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        foreign.save(&path, false).unwrap();
        assert!(foreign.token_to_id(FIM_MIDDLE).is_none());

        let loaded = CodeTokenizer::load(&path).unwrap();
        let ids = [loaded.end_of_text, loaded.fim_prefix, loaded.fim_middle];
        assert!(ids
            .iter()
            .all(|&id| id as usize >= foreign.get_vocab_size(true)));
        assert_eq!(loaded.decode(&[loaded.fim_middle]).unwrap(), FIM_MIDDLE);
        let text = "fn main() {}\n";
        assert_eq!(loaded.decode(&loaded.encode(text).unwrap()).unwrap(), text);
    }

    /// A byte-level BPE trainer with one special token, as a tokenizer.json from
    /// elsewhere is made.
    fn byte_level_trainer(vocab_size: usize, special: &str) -> tokenizers::models::TrainerWrapper {
        BpeTrainer::builder()
            .vocab_size(vocab_size)
            .special_tokens(vec![AddedToken::from(special, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into()
    }

    pub(crate) fn corpus() -> Vec<String> {
        let samples = [
            "fn main() {\n    println!(\"héllo, wörld ✓\");\n}\n",
            "def add(a, b):\n    return a + b\n",
            "function f(x) { return x * 2; }\n",
            "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }\n",
        ];
        (0..50)
            .flat_map(|_| samples.iter().map(|s| s.to_string()))
            .collect()
    }

    #[test]
    fn trains_round_trips_and_saves() {
        let tok = CodeTokenizer::train(corpus().into_iter(), 400).unwrap();
        for text in corpus().iter().take(4) {
            assert_eq!(&tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = CodeTokenizer::load(&path).unwrap();
        assert_eq!(loaded.fingerprint, tok.fingerprint);
        assert_eq!(loaded.fim_middle, tok.fim_middle);
        assert_eq!(tok.decode(&[tok.end_of_text]).unwrap(), END_OF_TEXT);
        let tricky = "split on <|endoftext|> or <fim_middle> here";
        let ids = tok.encode(tricky).unwrap();
        assert!(!ids.contains(&tok.end_of_text) && !ids.contains(&tok.fim_middle));
        assert_eq!(tok.decode(&ids).unwrap(), tricky);
    }

    /// Long real texts (this crate's sources, the batcher's, two chapters of the docs) with the
    /// places a cut could go wrong in: trailing spaces, CRLF, tabs, digits, non-ASCII.
    fn long_text() -> String {
        long_text_parts().concat().repeat(3)
    }

    fn long_text_parts() -> Vec<String> {
        let tricky = "x = 1   \nfoo();\r\nbar\t\n\tbaz ünïcødé ✓\n12345\n678;\n\n\n   indented\n\
                      a  b, ( 'c' ) it's 'd 1 2  345 ;\t é e \u{301}x\n";
        vec![
            include_str!("lib.rs").into(),
            tricky.repeat(40),
            include_str!("../../../docs/src/stages/processor.md").into(),
            include_str!("../../../docs/src/design/delivery.md").into(),
            include_str!("../../batcher/src/lib.rs").into(),
        ]
    }

    #[test]
    fn a_long_text_is_cut_after_a_newline_between_two_visible_characters_or_before_a_space() {
        let text = long_text();
        for before_spaces in [false, true] {
            let cuts = Cuts {
                after_newlines: true,
                before_spaces,
            };
            let cut: Vec<&str> = pieces(&text, ENCODE_PIECE_BYTES, cuts).collect();
            assert!(cut.len() > 5, "{} pieces", cut.len());
            assert_eq!(cut.concat(), text);
            for pair in cut.windows(2) {
                let (piece, next) = (pair[0].as_bytes(), pair[1].as_bytes());
                assert!(piece.len() >= ENCODE_PIECE_BYTES);
                let last = piece[piece.len() - 1];
                if last == b'\n' {
                    assert!(piece[piece.len() - 2].is_ascii_graphic());
                    assert!(next[0].is_ascii_graphic());
                } else {
                    assert!(before_spaces && last.is_ascii_graphic() && next[0] == b' ');
                }
            }
        }
        let (newlines, all, none) = (
            Cuts {
                after_newlines: true,
                before_spaces: false,
            },
            Cuts {
                after_newlines: true,
                before_spaces: true,
            },
            Cuts {
                after_newlines: false,
                before_spaces: false,
            },
        );
        assert_eq!(pieces(&text, 1024, none).count(), 1);
        // Lines of one indented word: a cut before a space only.
        let indented = "        a \n".repeat(40_000);
        assert_eq!(pieces(&indented, 1024, newlines).count(), 1);
        assert!(pieces(&indented, 1024, all).count() > 100);
        // Nowhere safe to cut: one piece, however long.
        let bare = "    a\n".repeat(40_000);
        assert_eq!(pieces(&bare, 1024, all).count(), 1);
        assert_eq!(pieces("", 1024, all).count(), 0);
        // Cuts among characters of several bytes land between them.
        let wide = "éa\nbü".repeat(20_000);
        assert!(pieces(&wide, 1001, all).count() > 10);
        assert_eq!(pieces(&wide, 1001, all).collect::<String>(), wide);
    }

    /// A SentencePiece-style tokenizer (Metaspace, as Llama 2's and Mistral's
    /// tokenizer.json have it) marks the start of every text it is given, so pieces
    /// would each gain a mark: it encodes a text whole.
    #[test]
    fn a_tokenizer_whose_ids_change_where_a_text_is_cut_encodes_it_whole() {
        use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
        let mut metaspace = Tokenizer::new(BPE::default());
        metaspace.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
        let mut trainer = byte_level_trainer(500, "<|endoftext|>");
        metaspace
            .train(&mut trainer, long_text_parts().iter())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        metaspace.save(&path, false).unwrap();
        let tok = CodeTokenizer::load(&path).unwrap();

        assert!(!tok.cuts.after_newlines && !tok.cuts.before_spaces);
        let text = long_text();
        let whole = tok.inner.encode_fast(text.as_str(), false).unwrap();
        assert!(tok.encode_in_pieces(&text, 64).unwrap() == whole.get_ids());
    }

    /// An added token with a space in it is not cut in two.
    #[test]
    fn a_tokenizer_with_a_spaced_added_token_is_not_cut_before_spaces() {
        let mut tokenizer = CodeTokenizer::train(corpus().iter(), 300).unwrap().inner;
        tokenizer.add_tokens(&[AddedToken::from("let x = ", false)]);
        let added = tokenizer.token_to_id("let x = ").unwrap();
        let mut tokenizer = CodeTokenizer::wrap(tokenizer).unwrap();
        assert!(tokenizer.cuts.after_newlines && !tokenizer.cuts.before_spaces);
        let text = "    let x = 1;\n".repeat(200);
        let whole = tokenizer.inner.encode_fast(text.as_str(), false).unwrap();
        assert!(whole.get_ids().contains(&added));
        assert!(tokenizer.encode_in_pieces(&text, 16).unwrap() == whole.get_ids());
        tokenizer.cuts.before_spaces = true;
        assert!(tokenizer.encode_in_pieces(&text, 16).unwrap() != whole.get_ids());
    }

    /// Encoding in pieces gives the ids of the whole text, for this crate's own
    /// tokenizer and for one built as Qwen2's tokenizer.json is (NFC, its split
    /// pattern, a byte-level BPE without its own regex).
    #[test]
    fn a_long_text_encodes_in_pieces_to_the_ids_of_the_whole_text() {
        use tokenizers::normalizers::unicode::NFC;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::SplitDelimiterBehavior;

        let text = long_text();
        // Whole texts, so the vocabulary has tokens that span a newline and the
        // indentation after it (as real ones do), which a bad cut would split; and
        // texts ending in spaces and a newline, which a cut after "   \n" would make.
        let mut corpus = long_text_parts();
        corpus.extend((0..300).map(|_| "x = 1   \n".to_string()));
        let own = CodeTokenizer::train(corpus.iter(), 2000).unwrap();

        // Qwen2's split pattern, then Llama 3's (digits in threes).
        let splits = [
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut tokenizers = vec![own];
        for (i, split) in splits.into_iter().enumerate() {
            let mut split_first = Tokenizer::new(BPE::default());
            split_first
                .with_normalizer(Some(NFC))
                .with_pre_tokenizer(Some(Sequence::new(vec![
                    Split::new(
                        SplitPattern::Regex(split.into()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .unwrap()
                    .into(),
                    ByteLevel::new(false, false, false).into(),
                ])))
                .with_decoder(Some(ByteLevel::default()));
            let mut trainer = byte_level_trainer(2000, "<|endoftext|>");
            split_first.train(&mut trainer, corpus.iter()).unwrap();
            let path = dir.path().join(format!("tokenizer-{i}.json"));
            split_first.save(&path, false).unwrap();
            tokenizers.push(CodeTokenizer::load(&path).unwrap());
        }

        for tok in &tokenizers {
            assert_eq!(
                tok.cuts,
                Cuts {
                    after_newlines: true,
                    before_spaces: true
                }
            );
            let whole = tok.inner.encode_fast(text.as_str(), false).unwrap();
            // Pieces of 64 bytes cut at thousands of places, indented lines among them.
            for min_bytes in [ENCODE_PIECE_BYTES, 64, 2] {
                let ids = tok.encode_in_pieces(&text, min_bytes).unwrap();
                assert_eq!(ids.len(), whole.get_ids().len(), "pieces of {min_bytes}");
                assert!(ids == whole.get_ids(), "pieces of {min_bytes}: other ids");
            }
            assert_eq!(tok.decode(&tok.encode(&text).unwrap()).unwrap(), text);
        }
    }
}
