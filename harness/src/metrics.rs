//! The stats store shared by every VM of a plugin.
//!
//! Envoy keeps one stats scope per plugin configuration; every worker VM that defines a metric
//! with the same name gets the same underlying counter, gauge or histogram. Metric ids, on the
//! other hand, are allocated per VM and per `proxy_define_metric` call (defining a name twice
//! returns a new id bound to the same stat, exactly as Envoy's `Context::defineMetric` does).

use std::collections::BTreeMap;

use crate::types::MetricValue;

/// Envoy's namespace for metrics a module defines.
const ENVOY_NAMESPACE: &str = "wasmcustom";

/// The name Envoy's admin `/stats` shows for a metric a module defined as `name`: Envoy files
/// module metrics under the `wasmcustom.` namespace (`probe.hits` becomes
/// `wasmcustom.probe.hits`). The harness reports metrics under the module's own names.
pub fn envoy_stat_name(name: &str) -> String {
    format!("{ENVOY_NAMESPACE}.{name}")
}

/// The name in Envoy's Prometheus output (`/stats/prometheus`): the `wasmcustom` namespace is
/// dropped and every character other than an ASCII letter, digit or `_` becomes `_`
/// (`probe.hits` becomes `probe_hits`).
pub fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `proxy_metric_type_t`
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricKind {
    pub(crate) fn from_code(code: u32) -> Option<MetricKind> {
        match code {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct MetricsStore {
    values: BTreeMap<(String, MetricKind), MetricValue>,
}

impl MetricsStore {
    pub(crate) fn define(&mut self, kind: MetricKind, name: &str) {
        self.values
            .entry((name.to_string(), kind))
            .or_insert_with(|| match kind {
                MetricKind::Counter => MetricValue::Counter(0),
                MetricKind::Gauge => MetricValue::Gauge(0),
                MetricKind::Histogram => MetricValue::Histogram(Vec::new()),
            });
    }

    pub(crate) fn get_mut(&mut self, kind: MetricKind, name: &str) -> Option<&mut MetricValue> {
        self.values.get_mut(&(name.to_string(), kind))
    }

    pub(crate) fn get(&self, kind: MetricKind, name: &str) -> Option<&MetricValue> {
        self.values.get(&(name.to_string(), kind))
    }

    /// The metric with this name (counter first, then gauge, then histogram if several kinds
    /// share the name).
    pub(crate) fn by_name(&self, name: &str) -> Option<MetricValue> {
        [
            MetricKind::Counter,
            MetricKind::Gauge,
            MetricKind::Histogram,
        ]
        .iter()
        .find_map(|kind| self.get(*kind, name).cloned())
    }

    pub(crate) fn all(&self) -> Vec<(String, MetricValue)> {
        self.values
            .iter()
            .map(|((name, _), value)| (name.clone(), value.clone()))
            .collect()
    }
}
