//! The configuration reference (docs/src/reference/configuration.md) against the code:
//! every default it states is the one the options take, and every option has its row.

use codelupe_runtime::config::Config;
use codelupe_testkit::reference::check;

#[test]
fn the_reference_states_the_runtimes_defaults() {
    // `stages.<name>` rows are read as the processor's settings.
    let base = "stages: {processor: {}}";
    let expected: Config = serde_yaml::from_str(base).unwrap();
    check(None, base, &expected);
}

#[test]
fn the_reference_states_the_crawlers_defaults() {
    check(
        Some("Crawler"),
        "{}",
        &codelupe_crawler::CrawlerOptions::default(),
    );
}

#[test]
fn the_reference_states_the_downloaders_defaults() {
    check(
        Some("Downloader"),
        "{}",
        &codelupe_downloader::DownloaderOptions::default(),
    );
}

#[test]
fn the_reference_states_the_processors_defaults() {
    check(
        Some("Processor"),
        "{}",
        &codelupe_processor::ProcessorOptions::default(),
    );
}

#[test]
fn the_reference_states_the_near_duplicate_stages_defaults() {
    check(
        Some("Near-duplicates"),
        "{}",
        &codelupe_neardup::NeardupOptions::default(),
    );
}

#[test]
fn the_reference_states_the_batchers_defaults() {
    check(
        Some("Batcher"),
        "{}",
        &codelupe_batcher::BatcherOptions::default(),
    );
}

#[test]
fn the_reference_states_the_exports_defaults() {
    check(
        Some("Export"),
        "{}",
        &codelupe_export::ExportOptions::default(),
    );
}
