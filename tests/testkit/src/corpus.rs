//! Real code as `code-files` records: the source files of crates Cargo downloaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use codelupe_runtime::language;
use codelupe_runtime::records::{CodeFile, TrainingBatch};
use sha2::{Digest, Sha256};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The readable text files under each crate root that `keep` accepts, in path order, as
/// records of repository `crates/<root folder name>` (language from the extension).
pub fn code_files(roots: &[PathBuf], mut keep: impl FnMut(&Path) -> bool) -> Vec<CodeFile> {
    let mut files = Vec::new();
    for root in roots {
        let repo = format!("crates/{}", root.file_name().unwrap().to_string_lossy());
        let mut paths = Vec::new();
        walk(root, &mut paths);
        paths.sort();
        for path in paths.into_iter().filter(|p| keep(p)) {
            let Ok(content) = std::fs::read_to_string(&path) else {
                continue;
            };
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            files.push(code_file(&repo, &relative, content));
        }
    }
    files
}

/// A `code-files` record of `content` at `path` in `repo` (language from the extension).
pub fn code_file(repo: &str, path: &str, content: String) -> CodeFile {
    CodeFile {
        content_hash: format!("{:x}", Sha256::digest(content.as_bytes())),
        repo_full_name: repo.to_string(),
        commit_id: "0".repeat(40),
        language: language::of_path(path).unwrap_or("Text").into(),
        size_bytes: content.len() as i64,
        lines: content.lines().count() as i64,
        path: path.to_string(),
        content,
        quality_score: 80.0,
        quality_components: Default::default(),
        parse_stats: None,
        redactions: Default::default(),
        license: Default::default(),
    }
}

/// Rust sources only.
pub fn is_rust(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rs")
}

/// Each document piece of a batch: its content hash and its tokens (a document lies
/// whole in one batch or runs across several; its last piece holds its end-of-text).
pub fn document_pieces(batch: &TrainingBatch) -> impl Iterator<Item = (&str, usize, &[i32])> {
    batch
        .content_hashes
        .iter()
        .zip(&batch.document_starts)
        .enumerate()
        .map(|(i, (hash, &start))| {
            let end = batch
                .document_starts
                .get(i + 1)
                .map_or(batch.token_ids.len(), |&s| s as usize);
            (
                hash.as_str(),
                start as usize,
                &batch.token_ids[start as usize..end],
            )
        })
}

/// How many times each document (by content hash) ends in `batches`, counted by the
/// pieces holding `end_of_text`: a document ends once, so 0 is lost and 2 a duplicate.
pub fn documents_ended(batches: &[TrainingBatch], end_of_text: u32) -> HashMap<&str, usize> {
    let mut ended = HashMap::new();
    for batch in batches {
        for (hash, _, piece) in document_pieces(batch) {
            if piece.contains(&(end_of_text as i32)) {
                *ended.entry(hash).or_insert(0) += 1;
            }
        }
    }
    ended
}

/// How many of the documents of `lengths` (content hash → its tokens, end-of-text not
/// counted) `batches` hold more tokens of than they have, end-of-text included and a
/// flushed batch's padding after it not: each such document has a piece packed twice
/// (one that ends twice counts too).
pub fn packed_twice(
    batches: &[TrainingBatch],
    end_of_text: u32,
    lengths: &HashMap<&str, usize>,
) -> usize {
    let mut held: HashMap<&str, usize> = HashMap::new();
    for batch in batches {
        for (hash, _, piece) in document_pieces(batch) {
            let end = piece.iter().position(|&t| t == end_of_text as i32);
            *held.entry(hash).or_insert(0) += end.map_or(piece.len(), |at| at + 1);
        }
    }
    lengths
        .iter()
        .filter(|(hash, length)| held.get(*hash).is_some_and(|n| *n > **length + 1))
        .count()
}
