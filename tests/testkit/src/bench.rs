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

/// The first `count` of `CRATES` as bare repositories served by `git daemon` on
/// 127.0.0.1, in a temporary folder that also holds an empty `out/` for the clones a
/// benchmark makes. Returns the folder (kept while it lives), the repositories' names
/// and the daemon.
pub fn served_crates(count: usize) -> (tempfile::TempDir, Vec<String>, crate::GitDaemon) {
    let dir = tempfile::tempdir().unwrap();
    let (srv, work) = (dir.path().join("srv"), dir.path().join("work"));
    for d in [&srv, &work, &dir.path().join("out")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let names: Vec<String> = crate::registry_crates(&CRATES[..count])
        .iter()
        .map(|c| {
            let name = c.file_name().unwrap().to_string_lossy().to_string();
            crate::import_tree(c, &srv.join(format!("{name}.git")), &work);
            name
        })
        .collect();
    assert!(
        !names.is_empty(),
        "no crate sources found under the Cargo registry"
    );
    let daemon = crate::GitDaemon::start(&srv);
    (dir, names, daemon)
}

/// Bytes of the files under `dir`.
pub fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| match e.file_type().unwrap().is_dir() {
            true => disk_bytes(&e.path()),
            false => e.metadata().unwrap().len(),
        })
        .sum()
}

/// A field of a process's /proc status in kB (`"VmHWM:"`, `"VmRSS:"`); `process` is a
/// pid or `self`. None once the process is gone.
pub fn proc_status_kb(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs this benchmark's own executable again with `args`, a measurement in a process
/// of its own (one's allocator cannot lower another's peak), and returns the words it
/// printed.
pub fn measured_in_child(args: &[&str]) -> Vec<String> {
    crate::stdout_of(std::process::Command::new(std::env::current_exe().unwrap()).args(args))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

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
