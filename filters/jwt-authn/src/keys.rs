//! The key set of a `remote_jwks` provider: when it must be fetched, what a fetch answer does
//! to it, retries with backoff, background refresh (`async_fetch`). Pure state: the caller
//! dispatches the callouts and passes the time.
//!
//! A fetch *cycle* ends when keys are loaded or when the last attempt failed; streams waiting for
//! keys remember the cycle count they waited on and go on once it moved.

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use wasmesh_sdk::callout::{CalloutResponse, HttpCallout};

use crate::config::{split_uri, RemoteJwks};
use crate::jwks::{self, Jwks};

/// Default `cache_duration`.
pub const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
/// Default `async_fetch.failed_refetch_duration`.
pub const DEFAULT_FAILED_REFETCH: Duration = Duration::from_secs(1);
/// Default `retry_back_off.base_interval` (Envoy's default backoff strategy).
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
/// Grace after a fetch's own timeout before it is considered lost (a proxy that never answers,
/// or a dispatching stream that went away and took its callout with it).
pub const LOST_FETCH_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Retry {
    num_retries: u32,
    base: Duration,
    max: Duration,
    on_5xx: bool,
    on_gateway_error: bool,
    on_reset: bool,
    on_retriable_4xx: bool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    token: u32,
    started: SystemTime,
    attempt: u32,
}

/// What a fetch answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResult {
    /// Keys loaded.
    Loaded,
    /// Failed; another attempt is scheduled at this time.
    RetryScheduled(SystemTime),
    /// Failed for good (this cycle).
    Failed(String),
}

/// The remote key set of one provider.
#[derive(Debug)]
pub struct RemoteKeys {
    cluster: String,
    authority: String,
    path: String,
    timeout: Duration,
    cache_duration: Duration,
    background: Option<Duration>,
    retry: Option<Retry>,
    jwks: Option<Rc<Jwks>>,
    expires_at: Option<SystemTime>,
    in_flight: Option<InFlight>,
    retry_at: Option<(SystemTime, u32)>,
    refresh_at: Option<SystemTime>,
    cycles: u64,
    last_cycle_failed: bool,
}

impl RemoteKeys {
    /// State for a validated `remote_jwks`; `now` schedules the first background fetch.
    pub fn new(config: &RemoteJwks, now: SystemTime) -> Self {
        let (authority, path) = split_uri(&config.http_uri.uri).unwrap_or_default();
        let retry = config.retry_policy.as_ref().map(|policy| {
            let base = policy
                .retry_back_off
                .as_ref()
                .map_or(DEFAULT_RETRY_BASE, |backoff| backoff.base_interval);
            let max = policy
                .retry_back_off
                .as_ref()
                .and_then(|backoff| backoff.max_interval)
                .unwrap_or(base.saturating_mul(10));
            let conditions: Vec<&str> = if policy.retry_on.trim().is_empty() {
                vec!["5xx", "gateway-error", "connect-failure", "reset"]
            } else {
                policy.retry_on.split(',').map(str::trim).collect()
            };
            Retry {
                num_retries: policy.num_retries.unwrap_or(1),
                base,
                max,
                on_5xx: conditions.contains(&"5xx"),
                on_gateway_error: conditions.contains(&"gateway-error"),
                on_reset: conditions
                    .iter()
                    .any(|c| matches!(*c, "reset" | "connect-failure" | "refused-stream")),
                on_retriable_4xx: conditions.contains(&"retriable-4xx"),
            }
        });
        let background = config.async_fetch.as_ref().map(|fetch| {
            fetch
                .failed_refetch_duration
                .unwrap_or(DEFAULT_FAILED_REFETCH)
        });
        RemoteKeys {
            cluster: config.http_uri.cluster.clone(),
            authority,
            path,
            timeout: config.http_uri.timeout,
            cache_duration: config.cache_duration.unwrap_or(DEFAULT_CACHE_DURATION),
            refresh_at: background.map(|_| now),
            background,
            retry,
            jwks: None,
            expires_at: None,
            in_flight: None,
            retry_at: None,
            cycles: 0,
            last_cycle_failed: false,
        }
    }

    /// The callout that fetches the key set.
    pub fn callout(&self) -> HttpCallout {
        HttpCallout::get(&self.cluster, &self.authority, &self.path, self.timeout)
    }

    /// Keys usable now: background-refreshed keys stay usable until replaced, on-demand keys
    /// until `cache_duration` after they were fetched.
    pub fn keys(&self, now: SystemTime) -> Option<Rc<Jwks>> {
        let jwks = self.jwks.clone()?;
        if self.background.is_some() || self.expires_at.is_some_and(|expiry| now < expiry) {
            Some(jwks)
        } else {
            None
        }
    }

    /// Completed fetch cycles.
    pub fn cycles(&self) -> u64 {
        self.cycles
    }

    /// Whether the last completed cycle failed.
    pub fn last_cycle_failed(&self) -> bool {
        self.last_cycle_failed
    }

    /// Whether a fetch is in flight or a retry is scheduled (a new fetch would be redundant).
    pub fn busy(&self) -> bool {
        self.in_flight.is_some() || self.retry_at.is_some()
    }

    /// Whether `token` is this provider's fetch in flight.
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight.is_some_and(|flight| flight.token == token)
    }

    /// Records a dispatched fetch (first attempt of a cycle unless a retry is due).
    pub fn started(&mut self, token: u32, now: SystemTime) {
        let attempt = self.retry_at.take().map_or(0, |(_, attempt)| attempt);
        self.in_flight = Some(InFlight {
            token,
            started: now,
            attempt,
        });
    }

    /// The dispatch itself failed (unknown cluster...): the cycle fails now.
    pub fn dispatch_failed(&mut self, now: SystemTime, why: &str) -> FetchResult {
        self.in_flight = None;
        self.retry_at = None;
        self.fail_cycle(now, why.to_string())
    }

    fn fail_cycle(&mut self, now: SystemTime, why: String) -> FetchResult {
        self.cycles += 1;
        self.last_cycle_failed = true;
        if let Some(wait) = self.background {
            self.refresh_at = Some(now + wait);
        }
        FetchResult::Failed(why)
    }

    /// Applies the answer to the fetch in flight (`token` must be [`RemoteKeys::owns`]).
    pub fn answered(&mut self, response: &CalloutResponse, now: SystemTime) -> FetchResult {
        let attempt = self.in_flight.take().map_or(0, |flight| flight.attempt);
        let (status, body) = match response {
            CalloutResponse::Http(answer) if !answer.is_failure() => {
                (answer.status(), answer.body.as_slice())
            }
            _ => (None, &[][..]),
        };
        let retriable = match (&self.retry, status) {
            (None, _) => false,
            (Some(retry), None) => retry.on_reset,
            (Some(retry), Some(code)) => {
                (retry.on_5xx && code >= 500)
                    || (retry.on_gateway_error && matches!(code, 502..=504))
                    || (retry.on_retriable_4xx && code == 409)
            }
        };
        let why = match status {
            Some(200) => match jwks::parse(body) {
                Ok(jwks) => {
                    self.jwks = Some(Rc::new(jwks));
                    self.expires_at = Some(now + self.cache_duration);
                    self.cycles += 1;
                    self.last_cycle_failed = false;
                    if self.background.is_some() {
                        self.refresh_at = Some(now + self.cache_duration);
                    }
                    return FetchResult::Loaded;
                }
                Err(status) => format!("the key set is invalid: {}", status.message()),
            },
            Some(code) => format!("the server answered {code}"),
            None => "no answer (connection failure, reset or timeout)".to_string(),
        };
        if let Some(retry) = &self.retry {
            if retriable && attempt < retry.num_retries {
                let backoff = retry
                    .base
                    .saturating_mul(1u32 << attempt.min(16))
                    .min(retry.max);
                let at = now + backoff;
                self.retry_at = Some((at, attempt + 1));
                return FetchResult::RetryScheduled(at);
            }
        }
        self.fail_cycle(now, why)
    }

    /// Root-context work due at `now`: `Some(true)` when a fetch should be dispatched now (a
    /// due retry or background refresh). A fetch in flight past its timeout and grace is
    /// declared lost and fails its cycle (`Some(false)` then means "cycle failed, wake waiters").
    pub fn due(&mut self, now: SystemTime) -> Option<bool> {
        if let Some(flight) = self.in_flight {
            if now >= flight.started + self.timeout + LOST_FETCH_GRACE {
                self.in_flight = None;
                self.fail_cycle(now, "the fetch was lost".to_string());
                return Some(false);
            }
            return None;
        }
        if self.retry_at.is_some_and(|(at, _)| now >= at) {
            return Some(true);
        }
        if self.retry_at.is_none() && self.refresh_at.is_some_and(|at| now >= at) {
            self.refresh_at = None;
            return Some(true);
        }
        None
    }

    /// The stream that dispatched the fetch went away: the callout dies with it, so the fetch is
    /// forgotten and the next tick or request starts another one.
    pub fn abandoned(&mut self, token: u32, now: SystemTime) {
        if self.owns(token) {
            let attempt = self.in_flight.take().map_or(0, |flight| flight.attempt);
            // Retry on the next tick as if the attempt failed, keeping the cycle open.
            self.retry_at = Some((now, attempt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::callout::HttpCalloutResponse;

    const JWKS: &str = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;

    fn config(json: &str) -> RemoteJwks {
        serde_json::from_str(json).unwrap()
    }

    fn answer(status: &str, body: &str) -> CalloutResponse {
        CalloutResponse::Http(HttpCalloutResponse {
            token: 1,
            headers: vec![(":status".into(), status.into())],
            body: body.as_bytes().to_vec(),
            trailers: Vec::new(),
        })
    }

    fn failure() -> CalloutResponse {
        CalloutResponse::Http(HttpCalloutResponse::default())
    }

    const URI: &str = r#""http_uri": {"uri": "https://idp.example.com/jwks.json", "cluster": "idp", "timeout": "1s"}"#;

    #[test]
    fn on_demand_keys_expire_after_cache_duration() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut keys = RemoteKeys::new(
            &config(&format!(r#"{{{URI}, "cache_duration": "60s"}}"#)),
            t0,
        );
        let callout = keys.callout();
        assert_eq!(callout.cluster, "idp");
        assert!(callout
            .headers
            .contains(&(":path".into(), "/jwks.json".into())));
        assert!(callout
            .headers
            .contains(&(":authority".into(), "idp.example.com".into())));
        assert!(keys.keys(t0).is_none());
        assert_eq!(
            keys.due(t0),
            None,
            "no background fetch without async_fetch"
        );
        keys.started(7, t0);
        assert!(keys.busy() && keys.owns(7) && !keys.owns(8));
        assert_eq!(keys.answered(&answer("200", JWKS), t0), FetchResult::Loaded);
        assert_eq!(keys.cycles(), 1);
        assert!(keys.keys(t0 + Duration::from_secs(59)).is_some());
        assert!(keys.keys(t0 + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn failures_end_the_cycle_or_schedule_retries() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut plain = RemoteKeys::new(&config(&format!("{{{URI}}}")), t0);
        plain.started(1, t0);
        assert!(matches!(
            plain.answered(&answer("503", ""), t0),
            FetchResult::Failed(_)
        ));
        assert!(plain.last_cycle_failed());
        plain.started(2, t0);
        assert!(
            matches!(plain.answered(&answer("200", "{}"), t0), FetchResult::Failed(why) if why.contains("[keys]"))
        );
        assert_eq!(plain.cycles(), 2);

        let mut retrying = RemoteKeys::new(
            &config(&format!(
                r#"{{{URI}, "retry_policy": {{"num_retries": 2, "retry_back_off": {{"base_interval": "0.1s", "max_interval": "0.15s"}}}}}}"#
            )),
            t0,
        );
        retrying.started(1, t0);
        let ms = Duration::from_millis;
        assert_eq!(
            retrying.answered(&failure(), t0),
            FetchResult::RetryScheduled(t0 + ms(100))
        );
        assert!(retrying.busy());
        assert_eq!(retrying.due(t0 + ms(99)), None);
        assert_eq!(retrying.due(t0 + ms(100)), Some(true));
        retrying.started(2, t0 + ms(100));
        assert_eq!(
            retrying.answered(&answer("502", ""), t0 + ms(100)),
            FetchResult::RetryScheduled(t0 + ms(250))
        );
        retrying.started(3, t0 + ms(250));
        // A 404 is not retriable; the cycle ends even with retries left.
        assert!(matches!(
            retrying.answered(&answer("404", ""), t0 + ms(250)),
            FetchResult::Failed(_)
        ));
        assert_eq!(retrying.cycles(), 1);
        assert!(!retrying.busy());
    }

    #[test]
    fn background_fetch_refreshes_and_keeps_old_keys() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut keys = RemoteKeys::new(
            &config(&format!(
                r#"{{{URI}, "cache_duration": "300s", "async_fetch": {{"failed_refetch_duration": "2s"}}}}"#
            )),
            t0,
        );
        assert_eq!(keys.due(t0), Some(true));
        keys.started(1, t0);
        assert_eq!(keys.answered(&answer("200", JWKS), t0), FetchResult::Loaded);
        let s = Duration::from_secs;
        assert_eq!(keys.due(t0 + s(299)), None);
        assert_eq!(keys.due(t0 + s(300)), Some(true));
        keys.started(2, t0 + s(300));
        assert!(matches!(
            keys.answered(&failure(), t0 + s(300)),
            FetchResult::Failed(_)
        ));
        assert!(keys.keys(t0 + s(301)).is_some(), "old keys stay usable");
        assert_eq!(keys.due(t0 + s(301)), None);
        assert_eq!(keys.due(t0 + s(302)), Some(true));
    }

    #[test]
    fn lost_and_abandoned_fetches_are_recovered() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut keys = RemoteKeys::new(&config(&format!("{{{URI}}}")), t0);
        keys.started(1, t0);
        assert_eq!(keys.due(t0 + Duration::from_secs(5)), None);
        assert_eq!(keys.due(t0 + Duration::from_secs(6)), Some(false));
        assert_eq!(keys.cycles(), 1);
        assert!(keys.last_cycle_failed());
        keys.started(2, t0);
        keys.abandoned(2, t0);
        assert!(keys.busy());
        assert_eq!(keys.due(t0), Some(true));
        keys.started(3, t0);
        assert!(keys.owns(3));
    }
}
