//! The tokens the classifier counts: go-enry's tokenizer, rule for rule, because its
//! tables were trained on what that tokenizer gives (a token it never gave scores as
//! unseen). In go-enry's order: shebang interpreters, SGML tags and attribute names,
//! then strings, comments and numbers are blanked, then punctuation, words, operators,
//! and every other character on its own. go-enry keeps the shebang line in the text
//! after taking its token, so its words count too; so does this.
//!
//! The patterns work on bytes without Unicode classes (`\s` is Go's `[\t\n\f\r ]`, `\d`
//! ASCII), as Go's RE2 does, so a file that is not UTF-8 tokenizes the same.

use std::sync::LazyLock;

use regex::bytes::Regex;

/// go-enry reads at most the first 100,000 bytes (`tokenizer.ByteLimit`).
const BYTE_LIMIT: usize = 100_000;

struct Patterns {
    shebang: Regex,
    sgml: Regex,
    sgml_comment: Regex,
    sgml_attribute: Regex,
    word: Regex,
    /// Blanked in this order: strings, block comments, line comments, numbers.
    skipped: [Regex; 4],
    punctuation: Regex,
    regular: Regex,
    operator: Regex,
}

fn pattern(text: &str) -> Regex {
    // `(?-u)`: classes match bytes, as Go's do on text that is not UTF-8.
    Regex::new(&format!("(?-u){text}")).expect("tokenizer pattern")
}

static PATTERNS: LazyLock<Patterns> = LazyLock::new(|| {
    let space = r"[\t\n\x0C\r ]";
    let name = "[0-9A-Za-z_]";
    Patterns {
        shebang: pattern(&format!(
            r"(?m)^#!(?:/{name}+)*/(?:({name}+)|{name}+(?:{space}*{name}+={name}+{space}*)*{space}*({name}+))(?:{space}*-{name}+{space}*)*$"
        )),
        sgml: pattern(r#"(</?[^\t\n\x0C\r <>=0-9"']+)(?:[\t\n\x0C\r ](?s:.)*?/?>|>)"#),
        sgml_comment: pattern(r"(<!--(?s:.)*?-->)"),
        sgml_attribute: pattern(&format!(r"{space}+({name}+=)|{space}+([^\t\n\x0C\r >]+)")),
        word: pattern(&format!("({name}+)")),
        skipped: [
            pattern(r#"("(?s:.)*?"|'(?s:.)*?')"#),
            pattern(
                r#"(/\*(?s:.)*?\*/|<!--(?s:.)*?-->|\{-(?s:.)*?-\}|\(\*(?s:.)*?\*\)|"""(?s:.)*?"""|'''(?s:.)*?''')"#,
            ),
            pattern(&format!(r#"(?m)(//|--|#|%|"){space}([^\n]*$)"#)),
            pattern(
                r"(0x[0-9A-Fa-f]([0-9A-Fa-f]|\.)*|[0-9]([0-9]|\.)*)([uU][lL]{0,2}|([eE][-+][0-9]*)?[fFlL]*)",
            ),
        ],
        punctuation: pattern(r";|\{|\}|\(|\)|\[|\]"),
        regular: pattern(r"[0-9A-Za-z_\.@#/\*]+"),
        operator: pattern(r"<<?|\+|-|\*|/|%|&&?|\|\|?"),
    }
});

/// The tokens of `content` (its first 100,000 bytes), in go-enry's order.
pub fn tokenize(content: &[u8]) -> Vec<Vec<u8>> {
    let p = &*PATTERNS;
    let content = &content[..content.len().min(BYTE_LIMIT)];
    let mut tokens: Vec<Vec<u8>> = p
        .shebang
        .captures_iter(content)
        .map(|c| {
            let interpreter = c.get(1).or(c.get(2)).map_or(&b""[..], |m| m.as_bytes());
            [&b"SHEBANG#!"[..], interpreter].concat()
        })
        .collect();
    let mut text = sgml(content, &mut tokens);
    for skipped in &p.skipped {
        text = blank(skipped, &text);
    }
    for taken in [&p.punctuation, &p.regular, &p.operator] {
        tokens.extend(taken.find_iter(&text).map(|m| m.as_bytes().to_vec()));
        text = blank(taken, &text);
    }
    tokens.extend(remainders(&text));
    tokens
}

/// Each tag as `<name>` followed by its attribute names (`id=`) and bare words; the
/// text with every tag, comments included, blanked.
fn sgml(content: &[u8], tokens: &mut Vec<Vec<u8>>) -> Vec<u8> {
    let p = &*PATTERNS;
    for tag in p.sgml.captures_iter(content) {
        let whole = tag.get(0).expect("whole match").as_bytes();
        if p.sgml_comment.is_match(whole) {
            continue;
        }
        tokens.push([&tag[1], &b">"[..]].concat());
        for attribute in p.sgml_attribute.captures_iter(whole) {
            if let Some(named) = attribute.get(1) {
                tokens.push(named.as_bytes().to_vec());
            }
            if let Some(bare) = attribute.get(2) {
                let words = p.word.find_iter(bare.as_bytes());
                tokens.extend(words.map(|w| w.as_bytes().to_vec()));
            }
        }
    }
    blank(&p.sgml, content)
}

fn blank(pattern: &Regex, text: &[u8]) -> Vec<u8> {
    pattern.replace_all(text, &b" "[..]).into_owned()
}

/// Every character left outside white space, one token each (Go's `bytes.Fields`, then
/// `bytes.Split(field, nil)`: a byte that is not UTF-8 is a character of its own).
fn remainders(text: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars().filter(|c| !c.is_whitespace()) {
            found.push(c.encode_utf8(&mut [0; 4]).as_bytes().to_vec());
        }
        found.extend(chunk.invalid().iter().map(|byte| vec![*byte]));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<String> {
        tokenize(text.as_bytes())
            .into_iter()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .collect()
    }

    #[test]
    fn shebangs_tags_words_operators_and_the_rest_in_go_enrys_order() {
        // What go-enry v2.9.6's Tokenize gives for the same text (the `3` of
        // `python3` is a number, blanked before the words are taken).
        let text = "#!/usr/bin/env A=B python3 -u\n<a href=\"x\" hidden>link</a>\nx = f(y) + 0x1F; // note\n";
        assert_eq!(
            tokens(text),
            [
                "SHEBANG#!python3",
                "<a>",
                "href=",
                "hidden",
                "</a>",
                "(",
                ")",
                ";",
                "#",
                "/usr/bin/env",
                "A",
                "B",
                "python",
                "u",
                "link",
                "x",
                "f",
                "y",
                "-",
                "+",
                "!",
                "=",
                "=",
            ]
        );
    }

    #[test]
    fn strings_comments_and_numbers_give_no_tokens() {
        let text = "s = 'quoted words' /* block\ncomment */ # line comment\nn = 3.14e-2L {- x -}";
        assert_eq!(tokens(text), ["s", "n", "=", "="]);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_characters_of_their_own() {
        assert_eq!(
            tokenize(b"th\xe5 \xe9t\xc3\xa9"),
            [
                b"th".to_vec(),
                b"t".to_vec(),
                vec![0xe5],
                vec![0xe9],
                "é".as_bytes().to_vec()
            ]
        );
    }

    #[test]
    fn only_the_first_hundred_thousand_bytes_are_read() {
        let mut text = "a ".repeat(BYTE_LIMIT / 2);
        text.push_str("tail");
        assert!(tokens(&text).iter().all(|t| t == "a"));
    }
}
