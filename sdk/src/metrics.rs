//! Metrics: handles defined once per root context (by name), recorded per request.
//!
//! A filter defines its handles while it is constructed (`HttpFilter::new`, once per root
//! context) and keeps them; per request it records through the host:
//!
//! ```
//! use wasmesh_sdk::metrics::{stat_name, Counter};
//! use wasmesh_sdk::testing::MemoryHost;
//!
//! let mut host = MemoryHost::new();
//! let denied = Counter::define(&mut host, &stat_name("", "header_filter", "denied")).unwrap();
//! denied.increment(&host);
//! assert_eq!(host.metric("header_filter.denied"), Some(1));
//! ```
//!
//! Stat names follow Envoy's `<prefix>.<filter>.<event>` convention (see [`stat_name`]).
//! Envoy exposes metrics defined by wasm modules under its `wasmcustom.` namespace unless the
//! name is one it reserves (e.g. Istio's `istio_*`); that prefixing is the host's business.
//!
//! Recording never fails the request: a host error is swallowed (the metric is lost, the
//! request is not).

use crate::error::Error;

/// Kind of a metric, as proxy-wasm defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution of recorded values.
    Histogram,
}

/// Where metrics are defined and recorded (the host, or an in-memory sink in tests).
pub trait MetricSink {
    /// Defines (or looks up) a metric and returns its id.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, Error>;
    /// Adds `offset` to a counter (positive only) or gauge.
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Error>;
    /// Sets a gauge or records a histogram sample.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Error>;
}

/// `<prefix>.<filter>.<event>`, omitting an empty prefix: `stat_name("", "rbac", "allowed")`
/// is `rbac.allowed`, `stat_name("ingress", "rbac", "allowed")` is `ingress.rbac.allowed`.
pub fn stat_name(prefix: &str, filter: &str, event: &str) -> String {
    let prefix = prefix.trim_end_matches('.');
    if prefix.is_empty() {
        format!("{filter}.{event}")
    } else {
        format!("{prefix}.{filter}.{event}")
    }
}

/// A counter handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    id: u32,
}

impl Counter {
    /// Defines the counter `name`.
    pub fn define<S: MetricSink + ?Sized>(sink: &mut S, name: &str) -> Result<Self, Error> {
        Ok(Counter {
            id: sink.define_metric(MetricKind::Counter, name)?,
        })
    }

    /// Adds one.
    pub fn increment<S: MetricSink + ?Sized>(&self, sink: &S) {
        self.add(sink, 1);
    }

    /// Adds `amount`.
    pub fn add<S: MetricSink + ?Sized>(&self, sink: &S, amount: u64) {
        let offset = i64::try_from(amount).unwrap_or(i64::MAX);
        // Recording must never fail a request; a lost sample is acceptable.
        let _ = sink.increment_metric(self.id, offset);
    }

    /// The host's id for this metric.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// A gauge handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge {
    id: u32,
}

impl Gauge {
    /// Defines the gauge `name`.
    pub fn define<S: MetricSink + ?Sized>(sink: &mut S, name: &str) -> Result<Self, Error> {
        Ok(Gauge {
            id: sink.define_metric(MetricKind::Gauge, name)?,
        })
    }

    /// Sets the value.
    pub fn set<S: MetricSink + ?Sized>(&self, sink: &S, value: u64) {
        let _ = sink.record_metric(self.id, value);
    }

    /// Adds `delta` (may be negative).
    pub fn add<S: MetricSink + ?Sized>(&self, sink: &S, delta: i64) {
        let _ = sink.increment_metric(self.id, delta);
    }

    /// The host's id for this metric.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// A histogram handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    id: u32,
}

impl Histogram {
    /// Defines the histogram `name`.
    pub fn define<S: MetricSink + ?Sized>(sink: &mut S, name: &str) -> Result<Self, Error> {
        Ok(Histogram {
            id: sink.define_metric(MetricKind::Histogram, name)?,
        })
    }

    /// Records one sample.
    pub fn record<S: MetricSink + ?Sized>(&self, sink: &S, value: u64) {
        let _ = sink.record_metric(self.id, value);
    }

    /// The host's id for this metric.
    pub fn id(&self) -> u32 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHost;

    #[test]
    fn stat_names_follow_envoy_convention() {
        assert_eq!(
            stat_name("", "header_filter", "allowed"),
            "header_filter.allowed"
        );
        assert_eq!(
            stat_name("ingress", "rbac", "denied"),
            "ingress.rbac.denied"
        );
        assert_eq!(
            stat_name("ingress.", "rbac", "denied"),
            "ingress.rbac.denied"
        );
    }

    #[test]
    fn handles_record_into_the_sink() {
        let mut host = MemoryHost::new();
        let requests = Counter::define(&mut host, "f.requests").unwrap();
        let again = Counter::define(&mut host, "f.requests").unwrap();
        assert_eq!(requests, again, "defining twice yields the same metric");
        let active = Gauge::define(&mut host, "f.active").unwrap();
        let latency = Histogram::define(&mut host, "f.latency_ms").unwrap();
        requests.increment(&host);
        requests.add(&host, 4);
        active.set(&host, 10);
        active.add(&host, -3);
        latency.record(&host, 12);
        latency.record(&host, 30);
        assert_eq!(host.metric("f.requests"), Some(5));
        assert_eq!(host.metric("f.active"), Some(7));
        assert_eq!(host.histogram("f.latency_ms"), vec![12, 30]);
        assert_eq!(host.metric("f.unknown"), None);
    }

    #[test]
    fn counters_refuse_negative_offsets_without_failing_the_caller() {
        let mut host = MemoryHost::new();
        let counter = Counter::define(&mut host, "c").unwrap();
        assert!(host.increment_metric(counter.id(), -1).is_err());
        counter.increment(&host);
        assert_eq!(host.metric("c"), Some(1));
    }
}
