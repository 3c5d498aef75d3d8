//! Timing records shared by the criterion benches, and the ratio tables they print.
//!
//! Criterion prints its own statistics per benchmark but gives no figures back to the program,
//! so each benchmark routine also reports its raw timings here (`iter_custom` style: `iters`
//! runs took `elapsed`), and the summary is computed from them in the same run: the median of
//! the per-sample means, ignoring samples shorter than [`MIN_SAMPLE`] (criterion's first
//! warm-up calls, dominated by timer overhead).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Samples shorter than this are ignored unless there are no others.
pub const MIN_SAMPLE: Duration = Duration::from_millis(1);

/// `(iterations, elapsed)` samples of one benchmark.
type Samples = Vec<(u64, Duration)>;

/// Collects, per benchmark id, `(iterations, elapsed)` samples.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    samples: Rc<RefCell<BTreeMap<String, Samples>>>,
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Self {
        Recorder::default()
    }

    /// Times `iters` calls of `routine`, records the sample under `id` and returns the elapsed
    /// time (what criterion's `iter_custom` expects).
    pub fn time<R>(&self, id: &str, iters: u64, mut routine: impl FnMut() -> R) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(routine());
        }
        let elapsed = start.elapsed();
        self.record(id, iters, elapsed);
        elapsed
    }

    /// Records that `iters` iterations of `id` took `elapsed`.
    pub fn record(&self, id: &str, iters: u64, elapsed: Duration) {
        if let Ok(mut samples) = self.samples.try_borrow_mut() {
            samples
                .entry(id.to_string())
                .or_default()
                .push((iters, elapsed));
        }
    }

    /// Median time per iteration of `id`, in nanoseconds.
    pub fn nanos(&self, id: &str) -> Option<f64> {
        let samples = self.samples.try_borrow().ok()?;
        let samples = samples.get(id)?;
        let long: Vec<&(u64, Duration)> = samples
            .iter()
            .filter(|(_, elapsed)| *elapsed >= MIN_SAMPLE)
            .collect();
        let chosen: Vec<&(u64, Duration)> = if long.is_empty() {
            samples.iter().collect()
        } else {
            long
        };
        let mut per_iter: Vec<f64> = chosen
            .iter()
            .filter(|(iters, _)| *iters > 0)
            .map(|(iters, elapsed)| elapsed.as_nanos() as f64 / *iters as f64)
            .collect();
        median(&mut per_iter)
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    let upper = *values.get(middle)?;
    Some(if values.len().is_multiple_of(2) {
        (*values.get(middle.checked_sub(1)?)? + upper) / 2.0
    } else {
        upper
    })
}

/// A duration in nanoseconds, with three significant digits in the unit that suits it
/// (`850 ns`, `12.3 µs`, `1.52 ms`).
pub fn human(nanos: f64) -> String {
    let (value, unit) = if nanos < 1_000.0 {
        (nanos, "ns")
    } else if nanos < 1_000_000.0 {
        (nanos / 1_000.0, "µs")
    } else if nanos < 1_000_000_000.0 {
        (nanos / 1_000_000.0, "ms")
    } else {
        (nanos / 1_000_000_000.0, "s")
    };
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.decimals$} {unit}")
}

/// `a / b` with two decimals, or `—` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".to_string(),
    }
}

/// One row of the per-filter summary: a scenario and its no-op baseline (the same requests
/// through the no-op filter), each run natively and in wasm; times in nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterRow {
    /// `filter/case`.
    pub id: String,
    /// The filter, native.
    pub native: Option<f64>,
    /// The filter, wasm in the harness.
    pub wasm: Option<f64>,
    /// The no-op filter on the same requests, native.
    pub noop_native: Option<f64>,
    /// The no-op filter on the same requests, wasm in the harness.
    pub noop_wasm: Option<f64>,
    /// Hostcalls the wasm module makes per request.
    pub hostcalls: Option<f64>,
}

impl FilterRow {
    /// `(wasm - no-op wasm) / (native - no-op native)`: the wasm/native ratio of the filter's own
    /// work, once what every filter pays (SDK glue, host, request copies) is taken out.
    pub fn logic_ratio(&self) -> Option<f64> {
        let wasm = self.wasm? - self.noop_wasm?;
        let native = self.native? - self.noop_native?;
        (wasm > 0.0 && native > 0.0).then(|| wasm / native)
    }
}

/// The per-filter table: absolute costs, wasm/native, filter/no-op (native and wasm), and the
/// wasm/native ratio of the filter's own work ([`FilterRow::logic_ratio`]).
pub fn filter_table(rows: &[FilterRow]) -> String {
    let fmt = |value: Option<f64>| value.map(human).unwrap_or_else(|| "—".into());
    let mut out = String::from(
        "| filter / case | native | wasm (harness) | wasm/native | no-op native / wasm | \
         native/no-op | wasm/no-op | logic wasm/native | hostcalls |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            row.id,
            fmt(row.native),
            fmt(row.wasm),
            ratio(row.wasm, row.native),
            fmt(row.noop_native),
            fmt(row.noop_wasm),
            ratio(row.native, row.noop_native),
            ratio(row.wasm, row.noop_wasm),
            row.logic_ratio()
                .map(|logic| format!("{logic:.2}"))
                .unwrap_or_else(|| "—".into()),
            row.hostcalls
                .map(|calls| format!("{calls:.1}"))
                .unwrap_or_else(|| "—".into()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_short_samples() {
        let recorder = Recorder::new();
        // A warm-up call: one iteration, dominated by overhead.
        recorder.record("x", 1, Duration::from_micros(50));
        recorder.record("x", 1000, Duration::from_millis(2));
        recorder.record("x", 2000, Duration::from_millis(4));
        recorder.record("x", 3000, Duration::from_millis(9));
        assert_eq!(recorder.nanos("x"), Some(2000.0));
        assert_eq!(recorder.nanos("missing"), None);
    }

    #[test]
    fn short_samples_count_when_there_is_nothing_else() {
        let recorder = Recorder::new();
        recorder.record("x", 10, Duration::from_micros(5));
        assert_eq!(recorder.nanos("x"), Some(500.0));
    }

    #[test]
    fn human_units() {
        assert_eq!(human(850.4), "850 ns");
        assert_eq!(human(12_340.0), "12.3 µs");
        assert_eq!(human(1_500.0), "1.50 µs");
        assert_eq!(human(1_520_000.0), "1.52 ms");
    }

    #[test]
    fn table_computes_ratios_against_the_noop_row() {
        let filter = FilterRow {
            id: "f/case".into(),
            native: Some(300.0),
            wasm: Some(1400.0),
            noop_native: Some(100.0),
            noop_wasm: Some(1000.0),
            hostcalls: Some(4.0),
        };
        assert_eq!(filter.logic_ratio(), Some(2.0));
        let cheaper_than_noop = FilterRow {
            wasm: Some(900.0),
            ..filter.clone()
        };
        assert_eq!(cheaper_than_noop.logic_ratio(), None);
        let unmeasured = FilterRow {
            noop_wasm: None,
            ..filter.clone()
        };
        let table = filter_table(&[filter, unmeasured]);
        assert!(
            table.contains(
                "| f/case | 300 ns | 1.40 µs | 4.67 | 100 ns / 1.00 µs | 3.00 | 1.40 | 2.00 | 4.0 |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| 100 ns / — | 3.00 | — | — | 4.0 |"),
            "{table}"
        );
    }
}
