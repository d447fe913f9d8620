//! What the side-by-side benchmarks share: the real code they run on (crates from the
//! local cargo registry, as repositories or files), how many rounds, and the median.

/// Crates of the local cargo registry the benchmarks read, by name prefix: large and
/// small, Rust with C sources (rdkafka-sys), deeply nested (syn), macro-heavy (clap).
pub const CRATES: &[&str] = &[
    "tokio-1",
    "serde_json-1",
    "hyper-1",
    "git2-0",
    "rdkafka-sys-4",
    "regex-syntax-0",
    "rayon-1",
    "clap_builder-4",
    "tree-sitter-0",
    "prometheus-0",
    "rdkafka-0",
    "chrono-0",
    "reqwest-0",
    "syn-2",
];

/// Alternating rounds of ours and the baseline; each figure is their median.
pub const ROUNDS: usize = 7;

/// The middle value (the upper one of an even count).
pub fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable values"));
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(super::median(vec![3, 1, 2]), 2);
        assert_eq!(super::median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
