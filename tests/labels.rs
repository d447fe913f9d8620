//! The metrics reference's table of label values against what each stage registers: a value the
//! code can count (its reason enums) that is missing from the table, or a value the
//! table promises that no stage registers, fails here.

use std::collections::{BTreeMap, BTreeSet};

use codelupe_runtime::consume::aggregate::Aggregate;
use codelupe_runtime::consume::LoopMetrics;
use codelupe_runtime::Transform;
use prometheus::Registry;

type Reason<T> = <T as Transform>::Reason;

/// Each stage's registry as its process builds it: its own metrics and, for a
/// consuming stage, the loop's with the dead-letter reasons of its transform.
fn registries() -> Vec<(&'static str, Registry)> {
    let crawler = Registry::new();
    codelupe_crawler::metrics::CrawlerMetrics::register(&crawler).unwrap();
    let downloader = Registry::new();
    codelupe_downloader::metrics::DownloaderMetrics::register(&downloader).unwrap();
    LoopMetrics::register::<Reason<codelupe_downloader::Downloader>>(&downloader).unwrap();
    let processor = Registry::new();
    codelupe_processor::metrics::ProcessorMetrics::register(&processor).unwrap();
    LoopMetrics::register::<Reason<codelupe_processor::Processor>>(&processor).unwrap();
    let batcher = Registry::new();
    codelupe_batcher::metrics::BatcherMetrics::register(&batcher).unwrap();
    LoopMetrics::register::<<codelupe_batcher::Batcher as Aggregate>::Reason>(&batcher).unwrap();
    // Its three loops each register the loop metrics, in registries of their own
    // (labelled by loop); their reasons are one set.
    let neardup = Registry::new();
    codelupe_neardup::metrics::NeardupMetrics::register(&neardup).unwrap();
    LoopMetrics::register::<codelupe_neardup::metrics::NeardupError>(&neardup).unwrap();
    let export = Registry::new();
    codelupe_export::metrics::ExportMetrics::register(&export, "export").unwrap();
    type Export = codelupe_export::Exporter<codelupe_export::rows::Files>;
    LoopMetrics::register::<<Export as Aggregate>::Reason>(&export).unwrap();
    let trainer = Registry::new();
    codelupe_trainer_api::metrics::TrainerMetrics::register(&trainer).unwrap();
    vec![
        ("crawler", crawler),
        ("downloader", downloader),
        ("processor", processor),
        ("neardup", neardup),
        ("batcher", batcher),
        ("export", export),
        ("trainer", trainer),
    ]
}

/// (metric, stage, label) → values, from the rows of the "Label values" table of the
/// metrics reference (docs/src/reference/metrics.md).
fn reference_table() -> BTreeMap<(String, String, String), BTreeSet<String>> {
    let reference = include_str!("../docs/src/reference/metrics.md");
    let section = reference
        .split("### Label values")
        .nth(1)
        .expect("the metrics reference has a Label values section");
    let mut rows = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [metric, stage, label, values] = cells[..] else {
            panic!("a row of four cells: {line}");
        };
        if !metric.starts_with('`') {
            continue; // the header and its rule
        }
        let unquote = |s: &str| s.trim_matches('`').to_string();
        let values: BTreeSet<String> = values.split_whitespace().map(unquote).collect();
        let key = (unquote(metric), stage.to_string(), label.to_string());
        assert!(rows.insert(key, values).is_none(), "a row twice: {line}");
    }
    rows
}

/// Every labelled series a registry holds at start, as the table's rows. Histograms'
/// `le` and the lag's topic/partition (open sets) are not label values of this kind.
fn registered(
    stage: &str,
    registry: &Registry,
) -> BTreeMap<(String, String, String), BTreeSet<String>> {
    let mut rows: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
    for family in registry.gather() {
        for metric in family.get_metric() {
            for pair in metric.get_label() {
                let key = (
                    family.name().to_string(),
                    stage.to_string(),
                    pair.name().to_string(),
                );
                rows.entry(key)
                    .or_default()
                    .insert(pair.value().to_string());
            }
        }
    }
    rows
}

#[test]
fn the_metrics_reference_lists_exactly_the_label_values_each_stage_registers() {
    let mut from_code = BTreeMap::new();
    for (stage, registry) in registries() {
        from_code.extend(registered(stage, &registry));
    }
    assert!(
        from_code.len() >= 12,
        "every labelled metric is registered with its values at start: {from_code:#?}"
    );
    let from_reference = reference_table();
    for (key, values) in &from_code {
        assert_eq!(
            from_reference.get(key),
            Some(values),
            "the metrics reference's row for {key:?} differs from what the stage registers"
        );
    }
    let extra: Vec<_> = from_reference
        .keys()
        .filter(|k| !from_code.contains_key(*k))
        .collect();
    assert!(
        extra.is_empty(),
        "metrics reference rows no stage registers: {extra:?}"
    );
}
