//! What the processor's tests share.

use codelupe_processor::metrics::ProcessorMetrics;
use codelupe_processor::{Processor, ProcessorOptions};

/// A processor with `options` whose store and working folder are a temporary folder
/// of its own (kept alive by the second value).
pub fn processor(options: ProcessorOptions) -> (Processor, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = ProcessorOptions {
        store: dir.path().display().to_string(),
        work_dir: dir.path().join("work"),
        ..options
    };
    let metrics = ProcessorMetrics::register(&prometheus::Registry::new()).unwrap();
    (Processor::new(options, metrics).unwrap(), dir)
}
