//! The policy filter's decisions for one request: local lists, then the decision cache, then
//! the authorization service, with the configured failure mode, and dry-run.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmesh_sdk::body::Body;
use wasmesh_sdk::callout::CalloutResponse;
use wasmesh_sdk::decision::{Decision, LocalReply};
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::{Host, LogLevel};
use wasmesh_sdk::metrics::{stat_name, Counter, MetricSink};
use wasmesh_sdk::request::Request;
use wasmesh_sdk::shared::SharedData;

use crate::cache::{Cache, KeyBuilder, Lookup};
use crate::check::{Answer, BodyPart, Callout, Failure, Service};
use crate::config::{BufferSettings, Config};
use crate::lists::{ListDecision, Lists};
use crate::verdict::{Allow, Verdict, ERROR_DETAILS, LOCAL_DENIED_DETAILS, TOO_LARGE_DETAILS};

/// Name used in logs.
pub const FILTER_NAME: &str = "ext_authz";
/// Header set upstream on requests let through by `failure_mode_allow_header_add`.
pub const FAILURE_MODE_ALLOWED_HEADER: &str = "x-envoy-auth-failure-mode-allowed";

/// The counters, named `<stat_prefix>.ext_authz.<event>`.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Requests allowed (by the service or a cached decision).
    pub ok: Counter,
    /// Requests denied (by the service or a cached decision).
    pub denied: Counter,
    /// Checks that failed (error, timeout, 5xx, unreachable service).
    pub error: Counter,
    /// Checks that timed out (also counted in `error`).
    pub timeout: Counter,
    /// Failed checks let through by `failure_mode_allow`.
    pub failure_mode_allowed: Counter,
    /// Decisions served from the cache.
    pub cache_hit: Counter,
    /// Lookups that had to ask the service.
    pub cache_miss: Counter,
    /// Decisions evicted to respect `max_entries`.
    pub cache_evicted: Counter,
    /// Failed checks answered with the last known decision (fail static).
    pub fail_static_served: Counter,
    /// Requests allowed by a local list.
    pub local_allowed: Counter,
    /// Requests denied by a local list.
    pub local_denied: Counter,
    /// Denials not enforced because of `dry_run`.
    pub dry_run_denied: Counter,
    /// Bodies over `max_request_bytes` (413).
    pub request_too_large: Counter,
}

impl Stats {
    fn define<S: MetricSink + ?Sized>(sink: &mut S, prefix: &str) -> Result<Self, Error> {
        let mut counter =
            |event: &str| Counter::define(sink, &stat_name(prefix, FILTER_NAME, event));
        Ok(Stats {
            ok: counter("ok")?,
            denied: counter("denied")?,
            error: counter("error")?,
            timeout: counter("timeout")?,
            failure_mode_allowed: counter("failure_mode_allowed")?,
            cache_hit: counter("cache_hit")?,
            cache_miss: counter("cache_miss")?,
            cache_evicted: counter("cache_evicted")?,
            fail_static_served: counter("fail_static_served")?,
            local_allowed: counter("local_allowed")?,
            local_denied: counter("local_denied")?,
            dry_run_denied: counter("dry_run_denied")?,
            request_too_large: counter("request_too_large")?,
        })
    }
}

/// A check in flight.
#[derive(Debug, Clone)]
struct Pending {
    token: u32,
    key: Option<String>,
    dispatched_at: SystemTime,
}

/// Per-stream state.
#[derive(Debug, Default)]
pub struct PolicyStream {
    /// The request headers ended the request.
    end_of_stream: bool,
    /// Waiting for the body before checking.
    awaiting_body: bool,
    /// The check in flight.
    pending: Option<Pending>,
    /// Response mutations of the allow decision, applied at response headers.
    response: Option<Allow>,
}

/// The filter, built once per root context.
#[derive(Debug)]
pub struct Policy {
    service: Service,
    cache: Option<RefCell<Cache>>,
    key: Option<KeyBuilder>,
    cache_denials: bool,
    fail_static: bool,
    lists: Lists,
    failure_mode_allow: bool,
    failure_mode_allow_header_add: bool,
    status_on_error: u16,
    body: Option<BufferSettings>,
    dry_run: bool,
    stats: Stats,
}

/// The shared-data namespace of a configuration: decisions are only shared between filters
/// configured alike (same service, same key, same stat prefix).
fn namespace(config: &Config) -> String {
    let cluster = match (&config.http_service, &config.grpc_service) {
        (Some(http), _) => format!("http:{}{}", http.server_uri.cluster, http.path_prefix),
        (None, Some(grpc)) => format!(
            "grpc:{}",
            grpc.envoy_grpc
                .as_ref()
                .map(|envoy| envoy.cluster_name.as_str())
                .unwrap_or_default()
        ),
        (None, None) => String::new(),
    };
    let scope = format!(
        "{cluster}|{}|{:?}",
        config.stat_prefix,
        config.decision_cache.as_ref().map(|cache| &cache.key)
    );
    let digest = Sha256::digest(scope.as_bytes());
    let mut name = String::from("wasmesh.policy.");
    for byte in digest.iter().take(8) {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

impl Policy {
    /// Builds the filter and defines its stats.
    pub fn new<S: MetricSink + ?Sized>(config: Config, sink: &mut S) -> Result<Self, Error> {
        let stats = Stats::define(sink, &config.stat_prefix)?;
        let grace = config
            .fail_static
            .as_ref()
            .map_or(Duration::ZERO, |fail_static| fail_static.grace_period);
        let namespace = namespace(&config);
        Ok(Policy {
            service: Service::new(&config),
            cache: config
                .decision_cache
                .as_ref()
                .map(|cache| RefCell::new(Cache::new(cache, grace, &namespace))),
            key: config
                .decision_cache
                .as_ref()
                .map(|cache| KeyBuilder::new(cache.key.clone())),
            cache_denials: config
                .decision_cache
                .as_ref()
                .is_some_and(|cache| cache.cache_denials),
            fail_static: config.fail_static.is_some(),
            lists: Lists::new(config.local_lists.clone().unwrap_or_default()),
            failure_mode_allow: config.failure_mode_allow,
            failure_mode_allow_header_add: config.failure_mode_allow_header_add,
            status_on_error: config.status_on_error(),
            body: config.with_request_body.clone(),
            dry_run: config.dry_run,
            stats,
        })
    }

    /// Creates every shared-data key of the shared decision cache (`decision_cache.shared`), so
    /// that every later store is a compare-and-swap. Run at start-up, before traffic.
    pub fn create_shared_entries(&self, store: &dyn SharedData) -> Result<(), Error> {
        match &self.cache {
            Some(cache) => cache
                .try_borrow()
                .map_err(|_| Error::InvalidArgument("decision cache in use".to_string()))?
                .create_shared_entries(store),
            None => Ok(()),
        }
    }

    /// Every shared-data key this filter may write: its complete footprint.
    pub fn shared_keys(&self) -> Vec<String> {
        self.cache
            .as_ref()
            .and_then(|cache| cache.try_borrow().ok().map(|cache| cache.shared_keys()))
            .unwrap_or_default()
    }

    /// The stats handles.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Decisions this worker holds in its cache.
    pub fn cached_decisions(&self) -> usize {
        self.cache
            .as_ref()
            .and_then(|cache| cache.try_borrow().ok().map(|cache| cache.len()))
            .unwrap_or(0)
    }

    /// Whether the request headers ended the request.
    pub fn start(&self, stream: &mut PolicyStream, end_of_stream: bool) {
        stream.end_of_stream = end_of_stream;
    }

    /// Request headers: local lists, then (unless the body is awaited) the check.
    pub fn on_request_headers(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        match self.lists.evaluate(request) {
            ListDecision::Denied(rule) => {
                self.stats.local_denied.increment(host);
                let reply = LocalReply::new(self.lists.deny_status(), LOCAL_DENIED_DETAILS)
                    .with_body(format!(
                        "Forbidden: the request matches the local deny rule \"{rule}\"\n"
                    ));
                return self.deny_or_dry_run(reply, host, &format!("local deny rule {rule:?}"));
            }
            ListDecision::Allowed(rule) => {
                self.stats.local_allowed.increment(host);
                host.log(
                    LogLevel::Debug,
                    &format!("{FILTER_NAME}: allowed by local rule {rule:?} without a check"),
                );
                return Decision::Continue;
            }
            ListDecision::NoMatch => {}
        }
        if self.body.is_some() && !stream.end_of_stream {
            // Hold the headers until the body is buffered (needs Envoy's
            // `allow_on_headers_stop_iteration`, see README).
            stream.awaiting_body = true;
            return Decision::Pause;
        }
        self.check(stream, request, host, None)
    }

    /// A body chunk: buffer up to `max_request_bytes`, then check.
    pub fn on_request_body(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        body: &Body<'_>,
    ) -> Decision {
        if stream.pending.is_some() {
            // A check is in flight: keep the body until it answers.
            return Decision::Pause;
        }
        let Some(settings) = self.body.as_ref().filter(|_| stream.awaiting_body) else {
            return Decision::Continue;
        };
        let max = usize::try_from(settings.max_request_bytes).unwrap_or(usize::MAX);
        if body.size() > max && !settings.allow_partial_message {
            stream.awaiting_body = false;
            self.stats.request_too_large.increment(host);
            return Decision::Deny(
                LocalReply::new(413, TOO_LARGE_DETAILS).with_body("Payload Too Large"),
            );
        }
        if !body.end_of_stream() && body.size() < max {
            return Decision::Pause;
        }
        stream.awaiting_body = false;
        let bytes = match body.read_prefix(max) {
            Ok(bytes) => bytes,
            Err(error) => {
                host.log(
                    LogLevel::Warn,
                    &format!("{FILTER_NAME}: reading the request body failed: {error}"),
                );
                return self.on_failure(
                    stream,
                    request,
                    host,
                    None,
                    Failure::Unavailable(error.to_string()),
                );
            }
        };
        let part = BodyPart {
            partial: body.size() > bytes.len() || !body.end_of_stream(),
            bytes,
        };
        self.check(stream, request, host, Some(part))
    }

    /// Looks the decision up in the cache, or asks the service.
    fn check(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        body: Option<BodyPart>,
    ) -> Decision {
        let now = host.now();
        let key = self.key.as_ref().map(|builder| {
            builder.material(request, body.as_ref().map(|part| part.bytes.as_slice()))
        });
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            let found = match cache.try_borrow_mut() {
                Ok(mut cache) => cache.lookup(key, now, &*host),
                Err(_) => Lookup::Miss,
            };
            match found {
                Lookup::Fresh(verdict) => {
                    self.stats.cache_hit.increment(host);
                    return self.enforce(verdict, stream, request, host, "cached decision");
                }
                Lookup::Miss => self.stats.cache_miss.increment(host),
            }
        }
        let dispatched = match self.service.callout(request, body.as_ref(), now) {
            Callout::Http(callout) => host.dispatch_http(&callout),
            Callout::Grpc(callout) => host.dispatch_grpc(&callout),
        };
        match dispatched {
            Ok(token) => {
                stream.pending = Some(Pending {
                    token,
                    key,
                    dispatched_at: now,
                });
                Decision::Pause
            }
            Err(error) => self.on_failure(
                stream,
                request,
                host,
                key,
                Failure::Unavailable(format!("dispatching the check failed: {error}")),
            ),
        }
    }

    /// The service answered.
    pub fn on_callout_response(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        response: CalloutResponse,
    ) -> Decision {
        let Some(pending) = stream.pending.take() else {
            return Decision::Pause;
        };
        if pending.token != response.token() {
            stream.pending = Some(pending);
            return Decision::Pause;
        }
        let elapsed = host
            .now()
            .duration_since(pending.dispatched_at)
            .unwrap_or_default();
        // The proxy's timer and the clock it reports are not the same clock: a check that
        // expired may read a millisecond or so short of the timeout.
        let timeout = self.service.timeout();
        let timed_out = elapsed + timeout / 10 >= timeout;
        let answer = match &response {
            CalloutResponse::Http(answer) => self.service.http_answer(answer, timed_out),
            CalloutResponse::Grpc(answer) => self.service.grpc_answer(answer, timed_out),
        };
        match answer {
            Answer::Decided { verdict, ttl } => {
                self.remember(pending.key.as_deref(), &verdict, ttl, host);
                self.enforce(verdict, stream, request, host, "authorization service")
            }
            Answer::Failed(failure) => self.on_failure(stream, request, host, pending.key, failure),
        }
    }

    /// Response headers: the allow decision's response mutations.
    pub fn on_response_headers(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) -> Decision {
        if let Some(allow) = stream.response.take() {
            let skipped = allow.apply_response(request);
            if !skipped.0.is_empty() {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "{FILTER_NAME}: response headers from the service not applied: {}",
                        skipped.0.join("; ")
                    ),
                );
            }
        }
        Decision::Continue
    }

    fn remember(
        &self,
        key: Option<&str>,
        verdict: &Verdict,
        ttl: Option<Duration>,
        host: &dyn Host,
    ) {
        let (Some(cache), Some(key)) = (&self.cache, key) else {
            return;
        };
        if ttl == Some(Duration::ZERO)
            || (matches!(verdict, Verdict::Deny(_)) && !self.cache_denials)
        {
            return;
        }
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return;
        };
        match cache.store(key, verdict.clone(), ttl, host.now(), host) {
            Ok(stored) => self
                .stats
                .cache_evicted
                .add(host, u64::try_from(stored.evicted).unwrap_or(u64::MAX)),
            Err(error) => host.log(
                LogLevel::Warn,
                &format!("{FILTER_NAME}: sharing a decision failed: {error}"),
            ),
        }
    }

    /// Applies a decision: allow (with its upstream mutations) or deny.
    fn enforce(
        &self,
        verdict: Verdict,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        source: &str,
    ) -> Decision {
        match verdict {
            Verdict::Allow(allow) => {
                self.stats.ok.increment(host);
                let skipped = allow.apply_upstream(request);
                if !skipped.0.is_empty() {
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "{FILTER_NAME}: request headers from the service not applied: {}",
                            skipped.0.join("; ")
                        ),
                    );
                }
                if allow.has_response_mutations() {
                    stream.response = Some(allow);
                }
                Decision::Continue
            }
            Verdict::Deny(deny) => {
                self.stats.denied.increment(host);
                self.deny_or_dry_run(deny.reply(), host, source)
            }
        }
    }

    /// Denies, or in dry-run logs and counts the denial and lets the request through.
    fn deny_or_dry_run(&self, reply: LocalReply, host: &mut dyn Host, source: &str) -> Decision {
        if self.dry_run {
            self.stats.dry_run_denied.increment(host);
            host.log(
                LogLevel::Info,
                &format!(
                    "{FILTER_NAME}: dry run: {source} would deny with {} ({}); letting the request through",
                    reply.status, reply.details
                ),
            );
            return Decision::Continue;
        }
        host.log(
            LogLevel::Debug,
            &format!(
                "{FILTER_NAME}: {source} denies with {} ({})",
                reply.status, reply.details
            ),
        );
        Decision::Deny(reply)
    }

    /// The check failed: fail static, fail open, or fail closed.
    fn on_failure(
        &self,
        stream: &mut PolicyStream,
        request: &mut dyn Request,
        host: &mut dyn Host,
        key: Option<String>,
        failure: Failure,
    ) -> Decision {
        self.stats.error.increment(host);
        let reason = match &failure {
            Failure::Timeout => {
                self.stats.timeout.increment(host);
                format!("timed out after {:?}", self.service.timeout())
            }
            Failure::Unavailable(reason) => reason.clone(),
        };
        host.log(
            LogLevel::Warn,
            &format!("{FILTER_NAME}: the authorization check failed: {reason}"),
        );
        if self.fail_static {
            let last_known = match (&self.cache, &key) {
                (Some(cache), Some(key)) => cache
                    .try_borrow_mut()
                    .ok()
                    .and_then(|mut cache| cache.last_known(key, host.now(), &*host)),
                _ => None,
            };
            if let Some(verdict) = last_known {
                self.stats.fail_static_served.increment(host);
                return self.enforce(verdict, stream, request, host, "last known decision");
            }
        }
        if self.failure_mode_allow {
            self.stats.failure_mode_allowed.increment(host);
            if self.failure_mode_allow_header_add {
                let _ = request.set_request_header(FAILURE_MODE_ALLOWED_HEADER, "true");
            }
            return Decision::Continue;
        }
        self.deny_or_dry_run(
            LocalReply::new(self.status_on_error, ERROR_DETAILS),
            host,
            "the failed check",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use wasmesh_sdk::body::MemoryBody;
    use wasmesh_sdk::callout::{GrpcCalloutResponse, HttpCalloutResponse};
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    use crate::proto;
    use crate::verdict::DENIED_DETAILS;

    const HTTP: &str = r#""http_service": {
        "server_uri": {"uri": "http://authz.local", "cluster": "authz", "timeout": "0.25s"},
        "path_prefix": "/check",
        "authorization_request": {"headers_to_add": [{"key": "x-authz-client", "value": "wasmesh"}]},
        "authorization_response": {
            "allowed_upstream_headers": {"patterns": [{"exact": "x-user"}, {"prefix": "x-authz-"}]},
            "allowed_upstream_headers_to_append": {"patterns": [{"exact": "x-trace"}]},
            "allowed_client_headers": {"patterns": [{"exact": "x-reason"}]},
            "allowed_client_headers_on_success": {"patterns": [{"exact": "x-quota"}]}
        }
    }"#;

    struct Rig {
        host: MemoryHost,
        policy: Policy,
    }

    impl Rig {
        fn new(extra: &str) -> Rig {
            Rig::with_service(HTTP, extra)
        }

        fn with_service(service: &str, extra: &str) -> Rig {
            let json = if extra.is_empty() {
                format!("{{{service}}}")
            } else {
                format!("{{{service}, {extra}}}")
            };
            let mut host = MemoryHost::new();
            let config: Config = load(json.as_bytes()).unwrap();
            let policy = Policy::new(config, &mut host).unwrap();
            Rig { host, policy }
        }

        /// Sends request headers (no body); returns the decision.
        fn headers(&mut self, stream: &mut PolicyStream, request: &mut MemoryRequest) -> Decision {
            self.policy.start(stream, true);
            self.policy
                .on_request_headers(stream, request, &mut self.host)
        }

        fn answer(
            &mut self,
            stream: &mut PolicyStream,
            request: &mut MemoryRequest,
            response: CalloutResponse,
        ) -> Decision {
            self.policy
                .on_callout_response(stream, request, &mut self.host, response)
        }

        fn last_token(&self) -> u32 {
            let http = self.host.http_callouts().last().map(|(token, _)| *token);
            let grpc = self.host.grpc_callouts().last().map(|(token, _)| *token);
            http.max(grpc).unwrap()
        }

        fn count(&self, event: &str) -> i64 {
            self.host
                .metric(&format!("ext_authz.{event}"))
                .unwrap_or_else(|| panic!("no stat {event}"))
        }

        /// One full request answered by `reply` (if a check is made).
        fn run(
            &mut self,
            request: &mut MemoryRequest,
            reply: impl Fn(u32) -> CalloutResponse,
        ) -> Decision {
            let mut stream = PolicyStream::default();
            let before = self.host.http_callouts().len() + self.host.grpc_callouts().len();
            let decision = self.headers(&mut stream, request);
            let after = self.host.http_callouts().len() + self.host.grpc_callouts().len();
            if decision == Decision::Pause && after > before {
                let token = self.last_token();
                return self.answer(&mut stream, request, reply(token));
            }
            decision
        }
    }

    fn http(token: u32, status: &str, headers: &[(&str, &str)], body: &str) -> CalloutResponse {
        let mut all = vec![(":status".to_string(), status.to_string())];
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        CalloutResponse::Http(HttpCalloutResponse {
            token,
            headers: all,
            body: body.as_bytes().to_vec(),
            trailers: vec![],
        })
    }

    fn reset(token: u32) -> CalloutResponse {
        CalloutResponse::Http(HttpCalloutResponse {
            token,
            ..HttpCalloutResponse::default()
        })
    }

    fn request(path: &str) -> MemoryRequest {
        MemoryRequest::get(path)
            .with_header("authorization", "Bearer alice")
            .with_header("x-private", "secret")
            .with_header("x-user", "spoofed")
    }

    #[test]
    fn http_check_carries_envoy_default_headers_and_prefix() {
        let mut rig = Rig::new("");
        let mut stream = PolicyStream::default();
        let mut request = request("/orders?id=7");
        assert_eq!(rig.headers(&mut stream, &mut request), Decision::Pause);
        let (_, callout) = &rig.host.http_callouts()[0];
        assert_eq!(callout.cluster, "authz");
        assert_eq!(callout.timeout, Duration::from_millis(250));
        let header = |name: &str| {
            callout
                .headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(header(":path"), Some("/check/orders?id=7"));
        assert_eq!(header(":method"), Some("GET"));
        assert_eq!(header(":authority"), Some("example.com"));
        assert_eq!(header("authorization"), Some("Bearer alice"));
        assert_eq!(header("content-length"), Some("0"));
        assert_eq!(header("x-authz-client"), Some("wasmesh"));
        assert_eq!(header("x-private"), None, "not in allowed_headers");
        assert!(callout.body.is_empty());
    }

    #[test]
    fn allow_applies_upstream_and_response_headers() {
        let mut rig = Rig::new("");
        let mut stream = PolicyStream::default();
        let mut request = request("/").with_header("x-trace", "client");
        rig.headers(&mut stream, &mut request);
        let token = rig.last_token();
        let decision = rig.answer(
            &mut stream,
            &mut request,
            http(
                token,
                "200",
                &[
                    ("x-user", "alice"),
                    ("x-authz-tier", "gold"),
                    ("x-trace", "authz"),
                    ("x-quota", "100"),
                    ("x-unlisted", "dropped"),
                    ("x-envoy-auth-headers-to-remove", "authorization, x-private"),
                ],
                "",
            ),
        );
        assert_eq!(decision, Decision::Continue);
        assert_eq!(request.header("x-user").as_deref(), Some("alice"));
        assert_eq!(request.header("x-authz-tier").as_deref(), Some("gold"));
        assert_eq!(request.header_values("x-trace"), vec!["client", "authz"]);
        assert_eq!(request.header("x-unlisted"), None);
        assert_eq!(request.header("authorization"), None);
        assert_eq!(request.header("x-private"), None);
        let mut response = request.clone().with_response_header(":status", "200");
        rig.policy
            .on_response_headers(&mut stream, &mut response, &mut rig.host);
        assert_eq!(response.response_header("x-quota").as_deref(), Some("100"));
        assert_eq!(rig.count("ok"), 1);
    }

    #[test]
    fn deny_relays_status_allowed_headers_and_body() {
        let mut rig = Rig::new("");
        let decision = rig.run(&mut request("/"), |token| {
            http(
                token,
                "401",
                &[
                    ("x-reason", "expired"),
                    ("www-authenticate", "Bearer"),
                    ("x-other", "no"),
                ],
                "token expired",
            )
        });
        let reply = decision.local_reply().unwrap();
        assert_eq!(reply.status, 401);
        assert_eq!(reply.details, DENIED_DETAILS);
        assert_eq!(reply.body, b"token expired");
        assert_eq!(
            reply.headers,
            vec![
                ("x-reason".to_string(), "expired".to_string()),
                ("www-authenticate".to_string(), "Bearer".to_string())
            ]
        );
        assert_eq!(rig.count("denied"), 1);
    }

    #[test]
    fn failures_fail_closed_with_status_on_error() {
        let mut rig = Rig::new(r#""status_on_error": {"code": "ServiceUnavailable"}"#);
        let five_hundred = rig.run(&mut request("/"), |token| http(token, "500", &[], "boom"));
        assert_eq!(
            five_hundred,
            Decision::Deny(LocalReply::new(503, ERROR_DETAILS))
        );
        let broken = rig.run(&mut request("/"), reset);
        assert_eq!(broken, Decision::Deny(LocalReply::new(503, ERROR_DETAILS)));
        // A 504 before the deadline is the service's answer (an error), not a timeout.
        rig.run(&mut request("/"), |token| http(token, "504", &[], ""));
        assert_eq!(rig.count("timeout"), 0);
        // The proxy's own 504 at the deadline is a timeout.
        let mut stream = PolicyStream::default();
        let mut timed = request("/");
        rig.headers(&mut stream, &mut timed);
        rig.host.advance(Duration::from_millis(250));
        let token = rig.last_token();
        let decision = rig.answer(
            &mut stream,
            &mut timed,
            http(token, "504", &[], "upstream request timeout"),
        );
        assert_eq!(
            decision,
            Decision::Deny(LocalReply::new(503, ERROR_DETAILS))
        );
        assert_eq!(rig.count("error"), 4);
        assert_eq!(rig.count("timeout"), 1);
        assert_eq!(rig.count("denied"), 0);
    }

    #[test]
    fn default_status_on_error_is_403_and_dispatch_failure_is_an_error() {
        let mut host = MemoryHost::new().with_failing_callouts();
        let config: Config = load(format!("{{{HTTP}}}").as_bytes()).unwrap();
        let policy = Policy::new(config, &mut host).unwrap();
        let mut stream = PolicyStream::default();
        policy.start(&mut stream, true);
        let decision = policy.on_request_headers(&mut stream, &mut request("/"), &mut host);
        assert_eq!(
            decision,
            Decision::Deny(LocalReply::new(403, ERROR_DETAILS))
        );
        assert_eq!(host.metric("ext_authz.error"), Some(1));
    }

    #[test]
    fn fail_open_lets_failures_through_and_marks_them() {
        let mut rig =
            Rig::new(r#""failure_mode_allow": true, "failure_mode_allow_header_add": true"#);
        let mut request = request("/");
        let decision = rig.run(&mut request, reset);
        assert_eq!(decision, Decision::Continue);
        assert_eq!(
            request.header(FAILURE_MODE_ALLOWED_HEADER).as_deref(),
            Some("true")
        );
        assert_eq!(rig.count("failure_mode_allowed"), 1);
        // A denial is still a denial.
        let denied = rig.run(&mut self::request("/"), |token| http(token, "403", &[], ""));
        assert_eq!(denied.local_reply().map(|reply| reply.status), Some(403));
    }

    #[test]
    fn cache_hits_skip_the_service_until_the_ttl_expires() {
        let mut rig = Rig::new(r#""decision_cache": {"ttl": "10s"}"#);
        let allow = |token| http(token, "200", &[("x-user", "alice")], "");
        let mut first = request("/a");
        assert_eq!(rig.run(&mut first, allow), Decision::Continue);
        let mut second = request("/a");
        assert_eq!(rig.run(&mut second, allow), Decision::Continue);
        // The cached decision is applied in full: the upstream header too.
        assert_eq!(second.header("x-user").as_deref(), Some("alice"));
        assert_eq!(rig.host.http_callouts().len(), 1);
        assert_eq!((rig.count("cache_hit"), rig.count("cache_miss")), (1, 1));
        rig.host.advance(Duration::from_secs(10));
        rig.run(&mut request("/a"), allow);
        assert_eq!(rig.host.http_callouts().len(), 2, "expired after 10s");
        assert_eq!(rig.count("ok"), 3);
    }

    #[test]
    fn requests_differing_in_a_keyed_attribute_never_share_a_decision() {
        let mut rig = Rig::new(
            r#""decision_cache": {"key": {"headers": ["authorization", "x-tenant"], "source_address": true}}"#,
        );
        let deny = |token| http(token, "403", &[], "no");
        let base = || {
            request("/a")
                .with_header("x-tenant", "t1")
                .with_source_address("10.0.0.1:1000".parse().unwrap())
        };
        rig.run(&mut base(), deny);
        assert!(rig.run(&mut base(), deny).local_reply().is_some());
        assert_eq!(rig.host.http_callouts().len(), 1);
        let variants = [
            request("/b")
                .with_header("x-tenant", "t1")
                .with_source_address("10.0.0.1:1000".parse().unwrap()),
            MemoryRequest::get("/a")
                .with_header("authorization", "Bearer bob")
                .with_header("x-tenant", "t1")
                .with_source_address("10.0.0.1:1000".parse().unwrap()),
            request("/a")
                .with_header("x-tenant", "t2")
                .with_source_address("10.0.0.1:1000".parse().unwrap()),
            request("/a")
                .with_header("x-tenant", "t1")
                .with_source_address("10.0.0.2:1000".parse().unwrap()),
        ];
        for (index, mut variant) in variants.into_iter().enumerate() {
            let allowed = rig.run(&mut variant, |token| http(token, "200", &[], ""));
            assert_eq!(allowed, Decision::Continue, "variant {index}");
            assert_eq!(
                rig.host.http_callouts().len(),
                index + 2,
                "variant {index} was asked"
            );
        }
        // An unkeyed attribute (x-private) does not matter.
        let mut unkeyed = base().with_header("x-private", "other");
        assert!(rig.run(&mut unkeyed, deny).local_reply().is_some());
        assert_eq!(rig.host.http_callouts().len(), 5);
    }

    #[test]
    fn lru_eviction_is_counted() {
        let mut rig = Rig::new(r#""decision_cache": {"max_entries": 2}"#);
        let allow = |token| http(token, "200", &[], "");
        for path in ["/1", "/2", "/1", "/3", "/2"] {
            rig.run(&mut request(path), allow);
        }
        // /1 hit, /3 evicted /2 (least recently used), so /2 was asked again.
        assert_eq!(rig.host.http_callouts().len(), 4);
        assert_eq!(rig.count("cache_evicted"), 2);
        assert_eq!(rig.policy.cached_decisions(), 2);
    }

    #[test]
    fn per_decision_ttl_header_is_honoured_and_consumed() {
        // `x-authz-ttl` also matches `allowed_upstream_headers` (`x-authz-` prefix): it must
        // still not reach the upstream.
        let mut rig = Rig::new(r#""decision_cache": {"ttl": "60s", "ttl_header": "x-authz-ttl"}"#);
        let short = |token| http(token, "200", &[("x-authz-ttl", "2")], "");
        let mut first = request("/a");
        rig.run(&mut first, short);
        assert_eq!(first.header("x-authz-ttl"), None, "consumed");
        rig.host.advance(Duration::from_secs(1));
        rig.run(&mut request("/a"), short);
        assert_eq!(rig.host.http_callouts().len(), 1);
        rig.host.advance(Duration::from_secs(1));
        rig.run(&mut request("/a"), |token| {
            http(token, "200", &[("x-authz-ttl", "0")], "")
        });
        assert_eq!(rig.host.http_callouts().len(), 2, "2s TTL expired");
        rig.run(&mut request("/a"), short);
        assert_eq!(rig.host.http_callouts().len(), 3, "TTL 0 was not cached");
    }

    #[test]
    fn fail_static_serves_the_last_known_decision_within_the_grace_period() {
        let mut rig =
            Rig::new(r#""decision_cache": {"ttl": "10s"}, "fail_static": {"grace_period": "60s"}"#);
        let mut first = request("/a");
        rig.run(&mut first, |token| {
            http(token, "200", &[("x-user", "alice")], "")
        });
        rig.host.advance(Duration::from_secs(30));
        // Past the TTL the service is asked; it is down: the last decision is served.
        let mut stale = request("/a");
        assert_eq!(rig.run(&mut stale, reset), Decision::Continue);
        assert_eq!(stale.header("x-user").as_deref(), Some("alice"));
        assert_eq!(rig.count("fail_static_served"), 1);
        // Never seen key: fail closed.
        let unknown = rig.run(&mut request("/b"), reset);
        assert_eq!(unknown, Decision::Deny(LocalReply::new(403, ERROR_DETAILS)));
        // Past TTL + grace: fail closed too.
        rig.host.advance(Duration::from_secs(41));
        let too_old = rig.run(&mut request("/a"), reset);
        assert_eq!(too_old, Decision::Deny(LocalReply::new(403, ERROR_DETAILS)));
        assert_eq!(rig.count("error"), 3);
    }

    #[test]
    fn local_lists_decide_before_any_check() {
        let mut rig = Rig::new(
            r#""local_lists": {
                "deny": [{"name": "scanners", "header": {"name": "user-agent", "string_match": {"contains": "sqlmap"}}}],
                "allow": [{"name": "health", "path_prefix": "/healthz"}, {"name": "office", "source_ip": [{"address_prefix": "192.168.0.0", "prefix_len": 16}]}]
            }"#,
        );
        let denied = rig.run(
            &mut request("/healthz").with_header("user-agent", "sqlmap/1.7"),
            reset,
        );
        let reply = denied.local_reply().unwrap();
        assert_eq!(reply.status, 403);
        assert_eq!(reply.details, LOCAL_DENIED_DETAILS);
        assert_eq!(
            reply.body,
            b"Forbidden: the request matches the local deny rule \"scanners\"\n"
        );
        assert_eq!(
            rig.run(&mut request("/healthz/live"), reset),
            Decision::Continue
        );
        assert_eq!(
            rig.run(
                &mut request("/x").with_source_address("192.168.4.4:1".parse().unwrap()),
                reset
            ),
            Decision::Continue
        );
        assert!(rig.host.http_callouts().is_empty());
        assert_eq!(
            (rig.count("local_denied"), rig.count("local_allowed")),
            (1, 2)
        );
    }

    #[test]
    fn dry_run_counts_and_logs_but_never_denies() {
        let mut rig = Rig::new(
            r#""dry_run": true, "local_lists": {"deny": [{"name": "admin", "path_prefix": "/admin"}]}"#,
        );
        assert_eq!(rig.run(&mut request("/admin"), reset), Decision::Continue);
        assert_eq!(
            rig.run(&mut request("/"), |token| http(token, "403", &[], "no")),
            Decision::Continue
        );
        assert_eq!(rig.run(&mut request("/"), reset), Decision::Continue);
        assert_eq!(rig.count("dry_run_denied"), 3);
        assert_eq!(rig.count("denied"), 1);
        assert_eq!(rig.count("error"), 1);
        let logs = rig.host.logs();
        assert!(
            logs.iter()
                .any(|(_, line)| line
                    .contains("dry run: local deny rule \"admin\" would deny with 403")),
            "{logs:?}"
        );
    }

    #[test]
    fn body_is_buffered_then_sent_with_the_check() {
        let mut rig = Rig::new(r#""with_request_body": {"max_request_bytes": 8}"#);
        let mut stream = PolicyStream::default();
        let mut request = request("/upload");
        rig.policy.start(&mut stream, false);
        assert_eq!(
            rig.policy
                .on_request_headers(&mut stream, &mut request, &mut rig.host),
            Decision::Pause
        );
        let first = MemoryBody(b"abc".to_vec());
        assert_eq!(
            rig.policy.on_request_body(
                &mut stream,
                &mut request,
                &mut rig.host,
                &first.view(false)
            ),
            Decision::Pause
        );
        assert!(rig.host.http_callouts().is_empty());
        let all = MemoryBody(b"abcdef".to_vec());
        assert_eq!(
            rig.policy
                .on_request_body(&mut stream, &mut request, &mut rig.host, &all.view(true)),
            Decision::Pause
        );
        let (token, callout) = rig.host.http_callouts()[0].clone();
        assert_eq!(callout.body, b"abcdef");
        assert!(callout
            .headers
            .contains(&("content-length".to_string(), "6".to_string())));
        assert!(callout
            .headers
            .contains(&("x-envoy-auth-partial-body".to_string(), "false".to_string())));
        // More body while the check is in flight stays held.
        assert_eq!(
            rig.policy
                .on_request_body(&mut stream, &mut request, &mut rig.host, &all.view(true)),
            Decision::Pause
        );
        assert_eq!(
            rig.answer(&mut stream, &mut request, http(token, "200", &[], "")),
            Decision::Continue
        );
    }

    #[test]
    fn body_over_the_limit_is_413_unless_partial_messages_are_allowed() {
        let mut rig = Rig::new(r#""with_request_body": {"max_request_bytes": 4}"#);
        let mut stream = PolicyStream::default();
        let mut request = request("/upload");
        rig.policy.start(&mut stream, false);
        rig.policy
            .on_request_headers(&mut stream, &mut request, &mut rig.host);
        let big = MemoryBody(b"0123456789".to_vec());
        let decision =
            rig.policy
                .on_request_body(&mut stream, &mut request, &mut rig.host, &big.view(false));
        assert_eq!(
            decision,
            Decision::Deny(LocalReply::new(413, TOO_LARGE_DETAILS).with_body("Payload Too Large"))
        );
        assert_eq!(rig.count("request_too_large"), 1);

        let mut rig = Rig::new(
            r#""with_request_body": {"max_request_bytes": 4, "allow_partial_message": true}"#,
        );
        let mut stream = PolicyStream::default();
        rig.policy.start(&mut stream, false);
        rig.policy
            .on_request_headers(&mut stream, &mut request, &mut rig.host);
        assert_eq!(
            rig.policy
                .on_request_body(&mut stream, &mut request, &mut rig.host, &big.view(false)),
            Decision::Pause
        );
        let (_, callout) = &rig.host.http_callouts()[0];
        assert_eq!(callout.body, b"0123");
        assert!(callout
            .headers
            .contains(&("x-envoy-auth-partial-body".to_string(), "true".to_string())));
    }

    const GRPC: &str = r#""grpc_service": {"envoy_grpc": {"cluster_name": "authz-grpc"}, "timeout": "0.5s",
        "initial_metadata": [{"key": "x-tenant", "value": "acme"}]}"#;

    fn grpc_ok(token: u32, response: &proto::CheckResponse) -> CalloutResponse {
        CalloutResponse::Grpc(GrpcCalloutResponse {
            token,
            status: 0,
            message: None,
            body: response.encode_to_vec(),
        })
    }

    fn option(
        key: &str,
        value: &str,
        append: Option<bool>,
        action: i32,
    ) -> proto::HeaderValueOption {
        proto::HeaderValueOption {
            header: Some(proto::HeaderValue {
                key: key.into(),
                value: value.into(),
                raw_value: vec![],
            }),
            append: append.map(|value| proto::BoolValue { value }),
            append_action: action,
        }
    }

    #[test]
    fn grpc_check_request_describes_the_request() {
        let mut rig = Rig::with_service(
            GRPC,
            r#""disallowed_headers": {"patterns": [{"exact": "x-private"}]}, "include_peer_certificate": true"#,
        );
        let mut request = request("/orders?id=7")
            .with_header("x-request-id", "req-1")
            .with_source_address("10.0.0.9:4567".parse().unwrap())
            .with_mtls_peer("spiffe://cluster.local/ns/shop/sa/web")
            .with_property(&["connection", "sha256_peer_certificate_digest"], "abcd");
        let mut stream = PolicyStream::default();
        assert_eq!(rig.headers(&mut stream, &mut request), Decision::Pause);
        let (_, call) = &rig.host.grpc_callouts()[0];
        assert_eq!(call.cluster, "authz-grpc");
        assert_eq!(call.service, "envoy.service.auth.v3.Authorization");
        assert_eq!(call.method, "Check");
        assert_eq!(call.timeout, Duration::from_millis(500));
        assert_eq!(
            call.initial_metadata,
            vec![("x-tenant".to_string(), b"acme".to_vec())]
        );
        let check = proto::CheckRequest::decode(call.message.as_slice()).unwrap();
        let attributes = check.attributes.unwrap();
        let source = attributes.source.unwrap();
        assert_eq!(source.principal, "spiffe://cluster.local/ns/shop/sa/web");
        let address = source.address.unwrap().socket_address.unwrap();
        assert_eq!(
            (address.address.as_str(), address.port_value),
            ("10.0.0.9", 4567)
        );
        let http = attributes.request.unwrap().http.unwrap();
        assert_eq!(http.id, "req-1");
        assert_eq!(http.method, "GET");
        assert_eq!(http.path, "/orders?id=7");
        assert_eq!(http.host, "example.com");
        assert_eq!(
            http.headers.get(":path").map(String::as_str),
            Some("/orders?id=7")
        );
        assert_eq!(
            http.headers.get("x-user").map(String::as_str),
            Some("spoofed")
        );
        assert_eq!(http.headers.get("x-private"), None, "disallowed");
        assert_eq!(
            http.headers
                .get("x-forwarded-client-cert")
                .map(String::as_str),
            Some("Hash=abcd;URI=spiffe://cluster.local/ns/shop/sa/web")
        );
    }

    #[test]
    fn grpc_answers_map_to_envoy_semantics() {
        let mut rig = Rig::with_service(GRPC, "");
        let ok = proto::CheckResponse {
            status: Some(proto::RpcStatus {
                code: 0,
                message: String::new(),
            }),
            denied_response: None,
            ok_response: Some(proto::OkHttpResponse {
                headers: vec![
                    option("x-user", "alice", None, 0),
                    option("x-trace", "authz", Some(true), 0),
                ],
                headers_to_remove: vec!["authorization".into()],
                response_headers_to_add: vec![option("x-quota", "9", None, 2)],
                ..proto::OkHttpResponse::default()
            }),
        };
        let mut request = request("/").with_header("x-trace", "client");
        let mut stream = PolicyStream::default();
        rig.headers(&mut stream, &mut request);
        let token = rig.last_token();
        assert_eq!(
            rig.answer(&mut stream, &mut request, grpc_ok(token, &ok)),
            Decision::Continue
        );
        assert_eq!(request.header("x-user").as_deref(), Some("alice"));
        assert_eq!(request.header("x-trace").as_deref(), Some("client,authz"));
        assert_eq!(request.header("authorization"), None);
        let mut response = request.clone().with_response_header("x-quota", "old");
        rig.policy
            .on_response_headers(&mut stream, &mut response, &mut rig.host);
        assert_eq!(response.response_header("x-quota").as_deref(), Some("9"));

        let denied = proto::CheckResponse {
            status: Some(proto::RpcStatus {
                code: 7,
                message: "no".into(),
            }),
            denied_response: Some(proto::DeniedHttpResponse {
                status: Some(proto::HttpStatus { code: 429 }),
                headers: vec![option("retry-after", "30", None, 0)],
                body: "slow down".into(),
            }),
            ok_response: None,
        };
        let decision = rig.run(&mut self::request("/"), |token| grpc_ok(token, &denied));
        let reply = decision.local_reply().unwrap();
        assert_eq!(
            (reply.status, reply.body.as_slice()),
            (429, &b"slow down"[..])
        );
        assert_eq!(
            reply.headers,
            vec![("retry-after".to_string(), "30".to_string())]
        );
        // A denial without details is a plain 403.
        let bare = proto::CheckResponse {
            status: Some(proto::RpcStatus {
                code: 16,
                message: String::new(),
            }),
            denied_response: None,
            ok_response: None,
        };
        let decision = rig.run(&mut self::request("/"), |token| grpc_ok(token, &bare));
        assert_eq!(
            decision,
            Decision::Deny(LocalReply::new(403, DENIED_DETAILS))
        );
        // A failed call is an error; garbage is an error.
        let failed = rig.run(&mut self::request("/"), |token| {
            CalloutResponse::Grpc(GrpcCalloutResponse {
                token,
                status: 14,
                message: Some("unavailable".into()),
                body: vec![],
            })
        });
        assert_eq!(failed, Decision::Deny(LocalReply::new(403, ERROR_DETAILS)));
        let garbage = rig.run(&mut self::request("/"), |token| {
            CalloutResponse::Grpc(GrpcCalloutResponse {
                token,
                status: 0,
                message: None,
                body: vec![0xff, 0xff, 0xff],
            })
        });
        assert_eq!(garbage, Decision::Deny(LocalReply::new(403, ERROR_DETAILS)));
        assert_eq!(rig.count("error"), 2);
    }

    #[test]
    fn stale_and_foreign_callout_answers_are_ignored() {
        let mut rig = Rig::new("");
        let mut stream = PolicyStream::default();
        let mut request = request("/");
        rig.headers(&mut stream, &mut request);
        let token = rig.last_token();
        assert_eq!(
            rig.answer(&mut stream, &mut request, http(token + 100, "200", &[], "")),
            Decision::Pause
        );
        assert_eq!(
            rig.answer(&mut stream, &mut request, http(token, "403", &[], ""))
                .local_reply()
                .map(|r| r.status),
            Some(403)
        );
        assert_eq!(
            rig.answer(&mut stream, &mut request, http(token, "200", &[], "")),
            Decision::Pause
        );
    }

    #[test]
    fn stat_prefix_names_the_stats_and_the_namespace() {
        let mut host = MemoryHost::new();
        let config: Config =
            load(format!("{{{HTTP}, \"stat_prefix\": \"edge\"}}").as_bytes()).unwrap();
        let other: Config = load(format!("{{{HTTP}}}").as_bytes()).unwrap();
        assert_ne!(namespace(&config), namespace(&other));
        let policy = Policy::new(config, &mut host).unwrap();
        policy.stats().ok.increment(&host);
        assert_eq!(host.metric("edge.ext_authz.ok"), Some(1));
    }
}
