//! Secret and personal-data redaction in kept files, as StarCoder's curation did it:
//! email addresses, public IP addresses, keys and tokens, and passwords are replaced by
//! `<EMAIL>`, `<IP_ADDRESS>`, `<KEY>` and `<PASSWORD>` before anything is published,
//! so the original never reaches a topic or a log and the code stays parseable (a
//! placeholder replaces what sat inside a string or a comment).
//!
//! Not redacted: private, loopback, link-local, documentation and other reserved
//! addresses; dotted numbers that read as versions (after `v` or `version` on the
//! line, or with more than four parts); addresses at documentation domains
//! (example.com, `.test`, `.invalid`, …), `git@` SSH remotes and image names like
//! `icon@2x.png`; assigned values that are short, low in entropy, or placeholders.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;

codelupe_runtime::label_set! {
    /// What was redacted (`processor_redactions_total{kind}`, the record's `redactions`).
    pub enum Redaction {
        Email => "email",
        IpAddress => "ip_address",
        /// Cloud, GitHub, GitLab, Slack, Google and Stripe keys and tokens, private key
        /// blocks, JWTs.
        Key => "key",
        /// A high-entropy string assigned to a name like password, secret or token.
        Password => "password",
    }
}

impl Redaction {
    pub fn placeholder(self) -> &'static str {
        match self {
            Redaction::Email => "<EMAIL>",
            Redaction::IpAddress => "<IP_ADDRESS>",
            Redaction::Key => "<KEY>",
            Redaction::Password => "<PASSWORD>",
        }
    }
}

/// A text with its secrets replaced, and how many of each kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Redacted {
    pub text: String,
    pub counts: BTreeMap<Redaction, u32>,
}

static PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
        .expect("static regex")
});

static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"\b(?:",
        r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|APKA)[0-9A-Z]{16}",
        r"|gh[pousr]_[A-Za-z0-9]{36,255}",
        r"|github_pat_[A-Za-z0-9_]{22,255}",
        r"|glpat-[A-Za-z0-9_\-]{20,}",
        r"|xox[abposr]-[A-Za-z0-9\-]{10,}",
        r"|AIza[0-9A-Za-z_\-]{35}",
        r"|(?:sk|rk)_live_[0-9A-Za-z]{24,}",
        r"|eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}",
        r")\b"
    ))
    .expect("static regex")
});

static ASSIGNED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        // Starting at the keyword (not the name's start) lets the search skip to it.
        r#"(?i)(?:password|passwd|pwd|secret|token|api_?key|access_?key|private_?key|credential)[a-z0-9_\-]*"#,
        r#"["']?\s*(?::=|=>|=|:)\s*[rbf]?(["'`])([^"'`\s\\]{8,200})["'`]"#
    ))
    .expect("static regex")
});

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Za-z0-9._%+\-]{1,64}@((?:[A-Za-z0-9\-]{1,63}\.)+[A-Za-z]{2,24})\b")
        .expect("static regex")
});

static IPV4: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:\d{1,3}\.){3}\d{1,3}\b").expect("static regex"));

static IPV6: LazyLock<Regex> = LazyLock::new(|| {
    // Global unicast (2000::/3) written out: a first group of four digits from 2 or 3;
    // the last 32 bits may be a dotted quad (`2606:4700::11.8.4.4`), taken with it.
    Regex::new(r"\b[23][0-9a-fA-F]{3}(?::[0-9a-fA-F]{0,4}){2,7}(?:(?:\.\d{1,3}){3})?")
        .expect("static regex")
});

/// Domains for documentation and tests, and file extensions an `@2x` image name ends in.
const NOT_A_MAIL_DOMAIN: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "localhost",
    "png",
    "jpg",
    "jpeg",
    "gif",
    "svg",
    "webp",
    "ico",
    "css",
    "js",
    "ts",
    "json",
    "md",
    "txt",
    "html",
    "local",
];
const TEST_TLDS: &[&str] = &["example", "test", "invalid", "localhost"];

/// Values that stand for a secret rather than being one.
const PLACEHOLDER_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "changeme",
    "example",
    "placeholder",
    "your",
    "dummy",
    "xxxx",
    "****",
    "redacted",
    "<",
    "${",
    "{{",
    "%(",
    "env",
    "process.",
];

/// The text with every secret replaced, or None when there is none.
pub fn redact(text: &str) -> Option<Redacted> {
    let mut found: Vec<(usize, usize, Redaction)> = Vec::new();
    // The rarer detectors run only on files holding what they need.
    if text.contains("PRIVATE KEY") {
        for m in PRIVATE_KEY.find_iter(text) {
            found.push((m.start(), m.end(), Redaction::Key));
        }
    }
    for m in TOKEN.find_iter(text) {
        found.push((m.start(), m.end(), Redaction::Key));
    }
    for c in ASSIGNED.captures_iter(text) {
        let value = c.get(2).expect("group 2 always takes part");
        if looks_secret(value.as_str()) {
            found.push((value.start(), value.end(), Redaction::Password));
        }
    }
    let emails = text.contains('@').then(|| EMAIL.captures_iter(text));
    for c in emails.into_iter().flatten() {
        let (whole, domain) = (c.get(0).expect("match"), &c[1]);
        if is_personal_mail(whole.as_str(), domain) {
            found.push((whole.start(), whole.end(), Redaction::Email));
        }
    }
    for m in IPV4.find_iter(text) {
        if is_public_ipv4(text, m.start(), m.end()) {
            found.push((m.start(), m.end(), Redaction::IpAddress));
        }
    }
    for m in IPV6.find_iter(text) {
        if is_public_ipv6(text, m.start(), m.end()) {
            found.push((m.start(), m.end(), Redaction::IpAddress));
        }
    }
    if found.is_empty() {
        return None;
    }
    // Earliest first, the longer of two starting together; a span inside one already
    // taken (a token inside a key block) is part of it.
    found.sort_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
    let mut out = String::with_capacity(text.len());
    let mut counts = BTreeMap::new();
    let mut at = 0;
    for (start, end, kind) in found {
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(kind.placeholder());
        *counts.entry(kind).or_insert(0) += 1;
        at = end;
    }
    out.push_str(&text[at..]);
    Some(Redacted { text: out, counts })
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0) += 1;
    }
    let n = s.chars().count() as f64;
    counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn looks_secret(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    let has_digit = value.chars().any(|c| c.is_ascii_digit());
    let has_letter = value.chars().any(|c| c.is_ascii_alphabetic());
    has_digit
        && has_letter
        && entropy(value) >= 3.0
        && !PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w))
        // A path or URL is configuration, not a secret (base64 keys hold `/` too).
        && !value.starts_with(['/', '.', '~'])
        && !value.contains("://")
}

fn is_personal_mail(whole: &str, domain: &str) -> bool {
    let domain = domain.to_ascii_lowercase();
    let tld = domain.rsplit('.').next().unwrap_or_default();
    let git_remote = whole.starts_with("git@");
    !git_remote
        && !TEST_TLDS.contains(&tld)
        && !NOT_A_MAIL_DOMAIN
            .iter()
            .any(|d| domain == *d || domain.ends_with(&format!(".{d}")) || tld == *d)
}

/// The characters just before and after a match, and up to 120 bytes before it.
fn neighbours(text: &str, start: usize, end: usize) -> (Option<char>, Option<char>, &str) {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let mut from = start.saturating_sub(120);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    (before, after, &text[from..start])
}

fn is_public_ipv4(text: &str, start: usize, end: usize) -> bool {
    let Ok(ip) = text[start..end].parse::<Ipv4Addr>() else {
        return false;
    };
    let (before, after, preceding) = neighbours(text, start, end);
    let dotted_on = |c: Option<char>| matches!(c, Some('.'));
    let version = matches!(before, Some('v' | 'V'))
        || dotted_on(before)
        || (dotted_on(after) && text[end + 1..].starts_with(|c: char| c.is_ascii_digit()))
        || preceding.to_ascii_lowercase().contains("version");
    let o = ip.octets();
    let reserved = ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || o[0] == 0
        // A network's own address (x.y.z.0) names no host; `2.5.0.0` is a version.
        || o[3] == 0
        || o[0] >= 240
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 198 && (18..20).contains(&o[1]));
    !version && !reserved
}

fn is_public_ipv6(text: &str, start: usize, end: usize) -> bool {
    let candidate = &text[start..end];
    if candidate.matches(':').count() < 3 || !candidate.chars().any(|c| c.is_ascii_digit()) {
        return false;
    }
    let (before, after, _) = neighbours(text, start, end);
    let joined = |c: Option<char>| {
        c.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':'))
    };
    if joined(before) || joined(after) {
        return false;
    }
    let Ok(ip) = candidate.parse::<Ipv6Addr>() else {
        return false;
    };
    // Public addresses are global unicast (2000::/3), less the documentation range;
    // loopback, link-local, unique-local, mapped and times like `09:00::` are not.
    let s = ip.segments();
    let global = (0x2000..=0x3fff).contains(&s[0]);
    let documentation = s[0] == 0x2001 && s[1] == 0x0db8;
    global && !documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Planted secrets: (kind, the secret, the line holding it).
    fn planted() -> Vec<(Redaction, &'static str, String)> {
        let mut planted = Vec::new();
        let secrets: &[(Redaction, &str)] = &[
            (Redaction::Email, "jane.doe@acme-corp.com"),
            (Redaction::Email, "j.smith+dev@mail.uni-heidelberg.de"),
            (Redaction::IpAddress, "93.184.216.34"),
            (Redaction::IpAddress, "8.8.4.4"),
            (Redaction::IpAddress, "2606:4700:4700::1111"),
            (Redaction::Key, "AKIAIOSFODNN7EXAMPLE"),
            (Redaction::Key, "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
            (Redaction::Key, "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"),
            (Redaction::Key, "glpat-x1y2z3A4B5C6D7E8F9G0"),
            (Redaction::Key, "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
            (Redaction::Key, "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
            (Redaction::Key, "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
            (Redaction::Key, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
        ];
        for &(kind, secret) in secrets {
            for line in [
                format!("    let url = \"{secret}\";"),          // Rust string
                format!("# contact: {secret}"),                  // Python comment
                format!("const host = '{secret}'; // {secret}"), // JavaScript
                format!("\tclient := New(\"{secret}\")"),        // Go
                format!("    private static final String K = \"{secret}\";"), // Java
                format!("/* {secret} */"),                       // C comment
            ] {
                planted.push((kind, secret, line));
            }
        }
        for (secret, line) in [
            ("hunter2Qx9!", "db_password = \"hunter2Qx9!\""),
            ("s3cR3t-V4lu3-77", "API_KEY: 's3cR3t-V4lu3-77'"),
            ("a8F3kd92LmQ0pZ", "\"client_secret\": \"a8F3kd92LmQ0pZ\","),
            ("Zx81kQ04mNv2", "auth_token := `Zx81kQ04mNv2`"),
            (
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ8vKx9mLpR",
                "aws_secret_access_key = \"wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ8vKx9mLpR\"",
            ),
        ] {
            planted.push((Redaction::Password, secret, line.to_string()));
        }
        planted.push((
            Redaction::Key,
            "MIIEowIBAAKCAQEA",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nx9Zq\n-----END RSA PRIVATE KEY-----".into(),
        ));
        planted
    }

    #[test]
    fn every_planted_secret_is_replaced_by_its_placeholder() {
        let planted = planted();
        let mut missed = Vec::new();
        for (kind, secret, line) in &planted {
            match redact(line) {
                Some(r) if !r.text.contains(secret) && r.text.contains(kind.placeholder()) => {}
                other => missed.push((line.clone(), other.map(|r| r.text))),
            }
        }
        let recall = 1.0 - missed.len() as f64 / planted.len() as f64;
        assert!(
            recall >= 0.99,
            "recall {recall:.3} over {}: missed {missed:#?}",
            planted.len()
        );
    }

    #[test]
    fn near_misses_stay_as_they_are() {
        for text in [
            "version = \"1.2.3.4\"",
            "let v = v10.2.33.1;",
            "oid = 1.3.6.1.4.1.311",
            "bind(\"127.0.0.1:8080\"); // 10.0.0.1, 192.168.1.20, 172.16.0.3, 203.0.113.5",
            "mail = \"someone@example.com\" # or user@test.test",
            "git clone git@github.com:owner/repo.git",
            "<img src=\"icon@2x.png\">",
            "checksum = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"",
            "use std::io::Result; a::b::c; let t = \"12:34:56\"; mac = 00:1a:2b:3c:4d:5e",
            "fe80::1 and ::1 and 2001:db8::8a2e:370:7334 and fd12:3456:789a::1",
            "parse(\"Aug 09 2013 23:54:35 -09:00::\")",
            "client_sw = \"Apache Kafka 2.5.0.0\";",
            "TEST_SAY(\"Non-numeric broker version, setting version\"\n  \" to 9.9.9.9\");",
            "password = \"changeme\"",
            "token = os.environ[\"GITHUB_TOKEN\"]",
            "password_field = \"password_input\"",
            "let secret_path = \"/etc/app/secret.key\";",
            "token_url = \"https://auth.acme.io/oauth2/token\"",
            "id = \"550e8400-e29b-41d4-a716-446655440000\"",
        ] {
            assert_eq!(redact(text).map(|r| r.text), None, "{text}");
        }
    }

    #[test]
    fn an_ipv6_address_ending_in_a_dotted_quad_is_redacted_whole() {
        // Found by the processor_file fuzz target: the dotted quad alone was redacted
        // and the address's first groups stayed, for a second pass to find.
        for text in [
            "mirror at 2606:4700:4700::11.8.4.4\n",
            "x = '2a00:1450::8.8.8.8'",
        ] {
            let r = redact(text).unwrap();
            assert_eq!(
                r.counts,
                BTreeMap::from([(Redaction::IpAddress, 1)]),
                "{text}"
            );
            assert!(
                !r.text.contains("2606") && !r.text.contains("2a00"),
                "{}",
                r.text
            );
            assert_eq!(redact(&r.text), None, "{}", r.text);
        }
    }

    #[test]
    fn counts_per_kind_and_overlaps_taken_once() {
        let text = "-----BEGIN PRIVATE KEY-----\nAKIAIOSFODNN7EXAMPLE\n-----END PRIVATE KEY-----\nmail jane@acme.io and 8.8.8.8\n";
        let r = redact(text).unwrap();
        assert_eq!(r.text, "<KEY>\nmail <EMAIL> and <IP_ADDRESS>\n");
        assert_eq!(
            r.counts,
            BTreeMap::from([
                (Redaction::Email, 1),
                (Redaction::IpAddress, 1),
                (Redaction::Key, 1)
            ])
        );
    }
}
