//! File quality score, 0–100: a weighted sum of components each in [0, 1], all of
//! which travel in the `code-files` record.
//!
//! | component | weight | 1.0 when | 0.0 when |
//! |---|---|---|---|
//! | `syntax` | 35 | no ERROR/MISSING nodes | ≥ 10% of nodes, or ≥ 20% of bytes, inside errors (unparsed languages: 0.75) |
//! | `structure` | 20 | ≥ 1 function or type per 50 lines | none (unparsed: 0.5) |
//! | `comments` | 15 | 5–40% of bytes in comments | 0% → 0.3, > 60% → 0.3 (linear between) |
//! | `nesting` | 10 | syntax tree depth ≤ 30 | depth ≥ 80 (unparsed: 0.75) |
//! | `line_length` | 10 | mean line ≤ 60 characters | ≥ 100 |
//! | `alpha` | 10 | ≥ 50% alphabetic characters | 0% |
//!
//! Code that does not parse earns little from its other virtues: the weighted sum is
//! multiplied by (0.5 + 0.5 × syntax).

use std::collections::BTreeMap;

use crate::parsed::Parsed;
use crate::text::TextStats;

const WEIGHTS: [(&str, f64); 6] = [
    ("syntax", 35.0),
    ("structure", 20.0),
    ("comments", 15.0),
    ("nesting", 10.0),
    ("line_length", 10.0),
    ("alpha", 10.0),
];

/// Linear from 1 at `good` to 0 at `bad` (either direction), clamped.
fn ramp(value: f64, good: f64, bad: f64) -> f64 {
    ((value - bad) / (good - bad)).clamp(0.0, 1.0)
}

pub fn components(text: &TextStats, parse: Option<&Parsed>) -> BTreeMap<String, f64> {
    let (syntax, structure, comments, nesting) = match parse {
        Some(parsed) => {
            let p = &parsed.stats;
            let syntax =
                ramp(p.error_node_share, 0.0, 0.10).min(ramp(parsed.error_byte_share, 0.0, 0.20));
            let per_50_lines = (p.function_count + p.type_count) as f64
                / (text.lines.max(1) as f64 / 50.0).max(1.0);
            let comments = if p.comment_share < 0.05 {
                0.3 + 0.7 * p.comment_share / 0.05
            } else if p.comment_share <= 0.40 {
                1.0
            } else {
                0.3 + 0.7 * ramp(p.comment_share, 0.40, 0.60)
            };
            (
                syntax,
                per_50_lines.min(1.0),
                comments,
                ramp(p.max_depth as f64, 30.0, 80.0),
            )
        }
        None => (0.75, 0.5, 0.5, 0.75),
    };
    let values = [
        syntax,
        structure,
        comments,
        nesting,
        ramp(text.mean_line_length, 60.0, 100.0),
        (text.alpha_fraction / 0.5).min(1.0),
    ];
    WEIGHTS
        .iter()
        .zip(values)
        .map(|((name, _), v)| (name.to_string(), v))
        .collect()
}

pub fn score(components: &BTreeMap<String, f64>) -> f64 {
    let get = |name: &str| components.get(name).copied().unwrap_or(0.0);
    let sum: f64 = WEIGHTS
        .iter()
        .map(|(name, weight)| weight * get(name))
        .sum();
    (sum * (0.5 + 0.5 * get("syntax"))).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelupe_runtime::records::ParseStats;

    fn text(lines: usize, mean: f64, alpha: f64) -> TextStats {
        TextStats {
            lines,
            mean_line_length: mean,
            max_line_length: 80,
            alpha_fraction: alpha,
        }
    }

    fn parsed(errors: f64, error_bytes: f64, functions: i64, comments: f64) -> Parsed {
        Parsed {
            stats: ParseStats {
                error_node_share: errors,
                function_count: functions,
                type_count: 0,
                comment_share: comments,
                max_depth: 20,
            },
            error_byte_share: error_bytes,
            errors: 0,
        }
    }

    #[test]
    fn clean_commented_structured_code_scores_100() {
        let c = components(&text(100, 30.0, 0.6), Some(&parsed(0.0, 0.0, 5, 0.2)));
        assert_eq!(score(&c), 100.0);
    }

    #[test]
    fn broken_syntax_and_no_comments_cost_what_the_table_says() {
        let c = components(&text(100, 30.0, 0.6), Some(&parsed(0.2, 0.9, 0, 0.0)));
        // syntax 0, structure 0, comments 0.3 → (100 − 35 − 20 − 15 × 0.7) × 0.5
        assert!((score(&c) - 17.25).abs() < 1e-9, "{}", score(&c));
        // A few ERROR nodes covering most bytes are as bad as many.
        let c = components(&text(100, 30.0, 0.6), Some(&parsed(0.01, 0.5, 5, 0.2)));
        assert_eq!(c["syntax"], 0.0);
    }
}
