//! Load from a second process: Debian's `wrk` (`apt-get install -y wrk`), driven and parsed.
//!
//! Each run is bounded in time (`-d`), uses a fixed number of connections on one thread, and
//! reports requests/s and the p50/p99 latency of its responses (`--latency`), plus the count of
//! non-2xx answers and socket errors, which a benchmark must check are zero (otherwise it
//! measured the wrong path, e.g. a denial instead of the allowed request).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::E2eError;

/// One load run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    /// Full URL, e.g. `http://127.0.0.1:10000/api`.
    pub url: String,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// How long the run lasts (whole seconds, at least 1).
    pub duration: Duration,
    /// Connections kept open (each sends its next request when the previous answer arrived).
    pub connections: u32,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadResult {
    /// Responses received.
    pub requests: u64,
    /// Responses per second over the run.
    pub requests_per_second: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Responses with a status outside 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

/// The `wrk` binary: `$WRK_BIN`, else `wrk` on `PATH`.
pub fn find_wrk() -> Result<PathBuf, E2eError> {
    if let Some(explicit) = std::env::var_os("WRK_BIN") {
        return Ok(PathBuf::from(explicit));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            E2eError::Load(
            "`wrk` not found on PATH (install it with `apt-get install -y wrk`, or set WRK_BIN)"
                .to_string(),
        )
        })
}

/// Runs `wrk` once with one thread.
pub fn run_wrk(wrk: &std::path::Path, spec: &LoadSpec) -> Result<LoadResult, E2eError> {
    let mut command = Command::new(wrk);
    command
        .arg("-t1")
        .arg(format!("-c{}", spec.connections))
        // wrk takes whole seconds.
        .arg(format!("-d{}s", spec.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("5s")
        .arg("--latency");
    for (name, value) in &spec.headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    let output = command
        .arg(&spec.url)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| E2eError::Load(format!("cannot run {}: {error}", wrk.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(E2eError::Load(format!(
            "wrk exited with {}: {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    parse_wrk_output(&text)
}

/// Parses `wrk --latency` output.
pub fn parse_wrk_output(text: &str) -> Result<LoadResult, E2eError> {
    let missing = |what: &str| E2eError::Load(format!("no {what} in wrk output:\n{text}"));
    let mut requests = None;
    let mut requests_per_second = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", latency] => p50 = parse_latency(latency),
            ["99%", latency] => p99 = parse_latency(latency),
            ["Requests/sec:", rate] => requests_per_second = rate.parse::<f64>().ok(),
            [count, "requests", "in", ..] => requests = count.parse::<u64>().ok(),
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                non_2xx = count.parse().map_err(|_| missing("non-2xx count"))?;
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                socket_errors = rest
                    .iter()
                    .filter_map(|word| word.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    Ok(LoadResult {
        requests: requests.ok_or_else(|| missing("request count"))?,
        requests_per_second: requests_per_second.ok_or_else(|| missing("Requests/sec"))?,
        p50: p50.ok_or_else(|| missing("50% latency"))?,
        p99: p99.ok_or_else(|| missing("99% latency"))?,
        non_2xx,
        socket_errors,
    })
}

/// `712.00us`, `1.37ms`, `2.00s`, `5m`.
fn parse_latency(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ns" => value / 1e9,
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 3s test @ http://127.0.0.1:10000/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   745.36us  190.37us   4.78ms   85.87%
    Req/Sec    21.55k     1.02k   23.12k    80.00%
  Latency Distribution
     50%  712.00us
     75%    0.85ms
     90%    0.97ms
     99%    1.37ms
  64337 requests in 3.00s, 7.91MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  21436.15
Transfer/sec:      2.64MB
";

    #[test]
    fn parses_rate_percentiles_and_error_counts() {
        let result = parse_wrk_output(SAMPLE).unwrap();
        assert_eq!(result.requests, 64337);
        assert!((result.requests_per_second - 21436.15).abs() < 1e-9);
        assert_eq!(result.p50, Duration::from_micros(712));
        assert_eq!(result.p99, Duration::from_micros(1370));
        assert_eq!(result.non_2xx, 12);
        assert_eq!(result.socket_errors, 3);
    }

    #[test]
    fn output_without_a_rate_is_an_error() {
        assert!(parse_wrk_output("unable to connect to 127.0.0.1:1").is_err());
    }
}
