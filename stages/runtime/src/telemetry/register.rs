//! Registration helpers, so each stage's metrics module is a list of names and helps.

use prometheus::core::{Atomic, Collector, GenericGaugeVec};
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

fn add<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> prometheus::Result<C> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

pub fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    add(r, IntCounter::new(name, help)?)
}

/// A labelled counter whose known label values exist at 0 from the start, so
/// `rate()` and alert rules see a series before the first event. A closed set of
/// values is a [`LabelSet`](crate::labels::LabelSet) counted by a
/// [`CounterBy`](crate::labels::CounterBy); this is for a set made of several.
pub fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    known: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = add(r, IntCounterVec::new(Opts::new(name, help), &[label])?)?;
    for value in known {
        c.with_label_values(&[*value]);
    }
    Ok(c)
}

pub fn int_gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    add(r, IntGauge::new(name, help)?)
}

/// A labelled gauge, integer (`IntGaugeVec`) or float (`GaugeVec`), its series
/// made as values are seen.
pub fn gauge_vec<P: Atomic + 'static>(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GenericGaugeVec<P>> {
    add(r, GenericGaugeVec::new(Opts::new(name, help), labels)?)
}

pub fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    add(r, Gauge::new(name, help)?)
}

pub fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    add(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?,
    )
}
