//! What `codelupe tokenizer train` fits a tokenizer on: source files under folders on
//! disk (what .gitignore keeps, in languages the processor keeps by default), or the
//! first records of `code-files`.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context as _;
use codelupe_runtime::kafka::{self, KafkaClients};
use codelupe_runtime::language;
use codelupe_runtime::records::CodeFile;
use codelupe_runtime::AvroRecord;

/// Larger files are mostly generated or data; they would skew the merges.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Default)]
pub struct Sample {
    pub texts: Vec<String>,
    pub bytes: usize,
}

impl Sample {
    fn add(&mut self, text: String) {
        self.bytes += text.len();
        self.texts.push(text);
    }
}

pub fn from_dirs(dirs: &[PathBuf], max_files: usize) -> anyhow::Result<Sample> {
    let mut sample = Sample::default();
    let kept = language::Kept::default();
    for dir in dirs {
        if !dir.is_dir() {
            anyhow::bail!("{} is not a folder", dir.display());
        }
        for entry in ignore::WalkBuilder::new(dir).build() {
            if sample.texts.len() >= max_files {
                return Ok(sample);
            }
            let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
            let path = entry.path();
            let known = kept.of_path(&path.to_string_lossy()).is_some();
            let small = entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.len() <= MAX_FILE_BYTES);
            if known && small {
                // Unreadable or non-UTF-8 files are skipped, as the processor skips them.
                if let Ok(text) = std::fs::read_to_string(path) {
                    sample.add(text);
                }
            }
        }
    }
    Ok(sample)
}

pub async fn from_topic(
    clients: &KafkaClients,
    topic: &str,
    max_files: usize,
) -> anyhow::Result<Sample> {
    kafka::read_to_end(
        clients,
        topic,
        None,
        Sample::default(),
        move |sample, _, payload| {
            if let Some(payload) = payload {
                sample.add(CodeFile::decode(payload)?.content);
            }
            Ok(if sample.texts.len() >= max_files {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        },
    )
    .await
}
