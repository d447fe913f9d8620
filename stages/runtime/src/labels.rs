//! Closed sets of label values (skip reasons, error reasons, splits) as enums. A
//! counter labelled by one is registered with every value at 0, so `rate()` and alert
//! rules see each series before its first event, and code can only count a value the
//! set declares: the registered series, the values emitted and the metrics
//! reference's tables (compared by a test) cannot drift apart.

use std::marker::PhantomData;

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

/// A closed set of label values; declare one with [`label_set!`](crate::label_set).
pub trait LabelSet: Copy + Eq + std::fmt::Debug + Send + Sync + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];

    /// The value's label string.
    fn label(self) -> &'static str;

    /// Every value's label string, in declaration order.
    fn labels() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.label()).collect()
    }
}

/// Declares an enum of label values: `Variant => "label"`, one per line.
#[macro_export]
macro_rules! label_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $crate::labels::LabelSet for $name {
            const ALL: &'static [Self] = &[$(Self::$variant,)+];

            fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::labels::LabelSet::label(*self))
            }
        }
    };
}

/// A counter with one label whose values are `L`, each registered at 0.
#[derive(Clone)]
pub struct CounterBy<L> {
    vec: IntCounterVec,
    set: PhantomData<L>,
}

impl<L: LabelSet> CounterBy<L> {
    pub fn register(r: &Registry, name: &str, help: &str, label: &str) -> prometheus::Result<Self> {
        Ok(Self {
            vec: crate::telemetry::register::counter_vec(r, name, help, label, &L::labels())?,
            set: PhantomData,
        })
    }

    pub fn inc(&self, value: L) {
        self.inc_by(value, 1);
    }

    pub fn inc_by(&self, value: L, n: u64) {
        self.vec.with_label_values(&[value.label()]).inc_by(n);
    }

    pub fn get(&self, value: L) -> u64 {
        self.vec.with_label_values(&[value.label()]).get()
    }
}

/// A gauge with one label whose values are `L`, each registered at 0.
#[derive(Clone)]
pub struct GaugeBy<L> {
    vec: GaugeVec,
    set: PhantomData<L>,
}

impl<L: LabelSet> GaugeBy<L> {
    pub fn register(r: &Registry, name: &str, help: &str, label: &str) -> prometheus::Result<Self> {
        let vec = GaugeVec::new(Opts::new(name, help), &[label])?;
        r.register(Box::new(vec.clone()))?;
        for value in L::ALL {
            vec.with_label_values(&[value.label()]);
        }
        Ok(Self {
            vec,
            set: PhantomData,
        })
    }

    pub fn set(&self, value: L, v: f64) {
        self.vec.with_label_values(&[value.label()]).set(v);
    }

    pub fn add(&self, value: L, v: f64) {
        self.vec.with_label_values(&[value.label()]).add(v);
    }

    pub fn get(&self, value: L) -> f64 {
        self.vec.with_label_values(&[value.label()]).get()
    }
}

/// A stage without reasons of its own (the loop's are always there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoReason {}

impl LabelSet for NoReason {
    const ALL: &'static [Self] = &[];

    fn label(self) -> &'static str {
        match self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::label_set! {
        enum Colour {
            Red => "red",
            /// Documented values keep their docs.
            DarkBlue => "dark_blue",
        }
    }

    #[test]
    fn every_value_is_a_series_at_zero_from_registration() {
        let r = Registry::new();
        let c = CounterBy::<Colour>::register(&r, "paint_total", "Paint", "colour").unwrap();
        let series: Vec<String> = r.gather()[0]
            .get_metric()
            .iter()
            .map(|m| {
                format!(
                    "{}={}",
                    m.get_label()[0].value(),
                    m.get_counter().get_value()
                )
            })
            .collect();
        assert_eq!(series, ["dark_blue=0", "red=0"]);
        c.inc(Colour::DarkBlue);
        c.inc_by(Colour::DarkBlue, 2);
        assert_eq!((c.get(Colour::DarkBlue), c.get(Colour::Red)), (3, 0));
        assert_eq!(Colour::labels(), ["red", "dark_blue"]);
        assert_eq!(Colour::Red.to_string(), "red");
    }

    #[test]
    fn gauges_by_label_start_at_zero_too() {
        let r = Registry::new();
        let g = GaugeBy::<Colour>::register(&r, "paint_litres", "Paint", "colour").unwrap();
        g.add(Colour::Red, 1.5);
        g.add(Colour::Red, 1.0);
        assert_eq!((g.get(Colour::Red), g.get(Colour::DarkBlue)), (2.5, 0.0));
        assert_eq!(r.gather()[0].get_metric().len(), 2);
    }
}
