//! In-memory host for native tests of filter logic.
//!
//! [`MemoryHost`] implements [`crate::host::Host`]: a virtual clock that moves only when
//! [`MemoryHost::advance`] is called, shared data with CAS semantics like Envoy's, callouts
//! that are recorded (and answered by the test calling the filter's callout hook), metrics
//! and logs that can be inspected.
//!
//! With the `proptest` feature (dev-dependencies only), `config_properties`: the property tests
//! every filter runs on its configuration parser.

#[cfg(feature = "proptest")]
pub mod config_properties;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::callout::{Callouts, GrpcCallout, HttpCallout};
use crate::clock::Clock;
use crate::error::{Error, HostStatus};
use crate::host::{Log, LogLevel};
use crate::metrics::{MetricKind, MetricSink};
use crate::shared::{SharedData, SharedValue};

#[derive(Debug, Clone)]
struct Metric {
    kind: MetricKind,
    name: String,
    value: i64,
    samples: Vec<u64>,
}

/// A host that lives in memory.
#[derive(Debug)]
pub struct MemoryHost {
    now: Cell<SystemTime>,
    shared: RefCell<HashMap<String, SharedValue>>,
    next_cas: Cell<u32>,
    metrics: RefCell<Vec<Metric>>,
    logs: RefCell<Vec<(LogLevel, String)>>,
    http_callouts: Vec<(u32, HttpCallout)>,
    grpc_callouts: Vec<(u32, GrpcCallout)>,
    next_token: u32,
    fail_callouts: bool,
}

impl Default for MemoryHost {
    fn default() -> Self {
        MemoryHost::new()
    }
}

impl MemoryHost {
    /// A host whose clock reads 2023-11-14T22:13:20Z (Unix 1,700,000,000).
    pub fn new() -> Self {
        MemoryHost {
            now: Cell::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            shared: RefCell::new(HashMap::new()),
            next_cas: Cell::new(1),
            metrics: RefCell::new(Vec::new()),
            logs: RefCell::new(Vec::new()),
            http_callouts: Vec::new(),
            grpc_callouts: Vec::new(),
            next_token: 1,
            fail_callouts: false,
        }
    }

    /// Sets the virtual clock.
    #[must_use]
    pub fn with_time(self, now: SystemTime) -> Self {
        self.now.set(now);
        self
    }

    /// Makes every dispatch fail as Envoy does for an unknown cluster (`BadArgument`).
    #[must_use]
    pub fn with_failing_callouts(mut self) -> Self {
        self.fail_callouts = true;
        self
    }

    /// Moves the virtual clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.set(self.now.get() + by);
    }

    /// Current value of a counter or gauge.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics
            .borrow()
            .iter()
            .find(|metric| metric.name == name && metric.kind != MetricKind::Histogram)
            .map(|metric| metric.value)
    }

    /// Samples recorded into a histogram.
    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.metrics
            .borrow()
            .iter()
            .find(|metric| metric.name == name && metric.kind == MetricKind::Histogram)
            .map(|metric| metric.samples.clone())
            .unwrap_or_default()
    }

    /// Every log line, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.borrow().clone()
    }

    /// HTTP callouts dispatched so far, with their tokens.
    pub fn http_callouts(&self) -> &[(u32, HttpCallout)] {
        &self.http_callouts
    }

    /// gRPC callouts dispatched so far, with their tokens.
    pub fn grpc_callouts(&self) -> &[(u32, GrpcCallout)] {
        &self.grpc_callouts
    }

    fn take_token(&mut self) -> Result<u32, Error> {
        if self.fail_callouts {
            return Err(Error::host("proxy_http_call", HostStatus::BadArgument));
        }
        let token = self.next_token;
        self.next_token += 1;
        Ok(token)
    }
}

impl Clock for MemoryHost {
    fn now(&self) -> SystemTime {
        self.now.get()
    }
}

impl Log for MemoryHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

impl SharedData for MemoryHost {
    fn get_shared_data(&self, key: &str) -> Result<Option<SharedValue>, Error> {
        Ok(self.shared.borrow().get(key).cloned())
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Error> {
        let mut shared = self.shared.borrow_mut();
        if let (Some(expected), Some(current)) = (cas, shared.get(key)) {
            if expected != 0 && expected != current.cas {
                return Err(Error::CasMismatch {
                    key: key.to_string(),
                });
            }
        }
        let cas = self.next_cas.get();
        self.next_cas.set(cas.wrapping_add(1).max(1));
        shared.insert(
            key.to_string(),
            SharedValue {
                value: value.to_vec(),
                cas,
            },
        );
        Ok(())
    }
}

impl Callouts for MemoryHost {
    fn dispatch_http(&mut self, callout: &HttpCallout) -> Result<u32, Error> {
        callout.validate()?;
        let token = self.take_token()?;
        self.http_callouts.push((token, callout.clone()));
        Ok(token)
    }

    fn dispatch_grpc(&mut self, callout: &GrpcCallout) -> Result<u32, Error> {
        callout.validate()?;
        let token = self.take_token()?;
        self.grpc_callouts.push((token, callout.clone()));
        Ok(token)
    }
}

impl MetricSink for MemoryHost {
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, Error> {
        let mut metrics = self.metrics.borrow_mut();
        if let Some(index) = metrics
            .iter()
            .position(|metric| metric.name == name && metric.kind == kind)
        {
            return u32::try_from(index)
                .map_err(|_| Error::InvalidArgument("too many metrics".into()));
        }
        metrics.push(Metric {
            kind,
            name: name.to_string(),
            value: 0,
            samples: Vec::new(),
        });
        u32::try_from(metrics.len() - 1)
            .map_err(|_| Error::InvalidArgument("too many metrics".into()))
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Error> {
        let mut metrics = self.metrics.borrow_mut();
        let metric = usize::try_from(id)
            .ok()
            .and_then(|index| metrics.get_mut(index))
            .ok_or(Error::host("proxy_increment_metric", HostStatus::NotFound))?;
        match metric.kind {
            MetricKind::Counter if offset < 0 => Err(Error::host(
                "proxy_increment_metric",
                HostStatus::BadArgument,
            )),
            MetricKind::Histogram => Err(Error::host(
                "proxy_increment_metric",
                HostStatus::BadArgument,
            )),
            _ => {
                metric.value = metric.value.saturating_add(offset);
                Ok(())
            }
        }
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Error> {
        let mut metrics = self.metrics.borrow_mut();
        let metric = usize::try_from(id)
            .ok()
            .and_then(|index| metrics.get_mut(index))
            .ok_or(Error::host("proxy_record_metric", HostStatus::NotFound))?;
        match metric.kind {
            MetricKind::Histogram => metric.samples.push(value),
            _ => metric.value = i64::try_from(value).unwrap_or(i64::MAX),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callouts_get_increasing_tokens_and_are_recorded() {
        let mut host = MemoryHost::new();
        let call = HttpCallout::get("c", "a", "/", Duration::from_secs(1));
        assert_eq!(host.dispatch_http(&call), Ok(1));
        assert_eq!(host.dispatch_http(&call), Ok(2));
        assert_eq!(host.http_callouts().len(), 2);
        let mut failing = MemoryHost::new().with_failing_callouts();
        assert!(failing.dispatch_http(&call).is_err());
        assert!(failing.http_callouts().is_empty());
    }

    #[test]
    fn logs_and_unknown_metric_ids() {
        let host = MemoryHost::new();
        host.log(LogLevel::Warn, "careful");
        assert_eq!(host.logs(), vec![(LogLevel::Warn, "careful".to_string())]);
        assert!(host.increment_metric(42, 1).is_err());
        assert!(host.record_metric(42, 1).is_err());
    }
}
