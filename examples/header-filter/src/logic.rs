//! The header filter's logic: configuration and per-request decisions.

use serde::Deserialize;
use wasmesh_sdk::config::{proto, ConfigError, Validate};
use wasmesh_sdk::decision::{Decision, LocalReply};
use wasmesh_sdk::header_option::{apply_all, HeaderValueOption};
use wasmesh_sdk::matcher::{normalize_path, StringMatcher};
use wasmesh_sdk::metrics::{stat_name, Counter, MetricSink};
use wasmesh_sdk::request::{HeaderMapKind, Request};

/// Response code details of a denied request (`%RESPONSE_CODE_DETAILS%` in Envoy access logs).
pub const DENIED_DETAILS: &str = "header_filter_denied";
/// Response code details when the `:path` cannot be normalized (contains a NUL byte).
pub const INVALID_PATH_DETAILS: &str = "header_filter_invalid_path";

/// The plugin configuration (see README.md for every field).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests whose normalized path matches any of these are denied.
    #[serde(default)]
    pub deny: Vec<StringMatcher>,
    /// Status of the deny reply.
    #[serde(default = "default_deny_status", deserialize_with = "proto::uint32")]
    pub deny_status: u32,
    /// Body of the deny reply.
    #[serde(default = "default_deny_body")]
    pub deny_body: String,
    /// Headers added to requests that are allowed (before they go upstream).
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Headers added to responses of allowed requests.
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Prepended to stat names: `<stat_prefix>.header_filter.allowed`.
    #[serde(default)]
    pub stat_prefix: String,
}

fn default_deny_status() -> u32 {
    403
}

fn default_deny_body() -> String {
    "Forbidden\n".to_string()
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if !LocalReply::is_valid_status(self.deny_status) {
            return Err(ConfigError::new(
                "deny_status",
                format!(
                    "must be an HTTP status between 200 and 599, got {}",
                    self.deny_status
                ),
            ));
        }
        Ok(())
    }
}

/// The filter, built once per root context from its configuration.
#[derive(Debug)]
pub struct HeaderFilter {
    config: Config,
    deny_status: u16,
    allowed: Counter,
    denied: Counter,
}

impl HeaderFilter {
    /// Builds the filter and defines its counters.
    pub fn new<S: MetricSink + ?Sized>(
        config: Config,
        metrics: &mut S,
    ) -> Result<Self, wasmesh_sdk::error::Error> {
        let deny_status = u16::try_from(config.deny_status)
            .map_err(|_| ConfigError::new("deny_status", "out of range"))?;
        Ok(HeaderFilter {
            allowed: Counter::define(
                metrics,
                &stat_name(&config.stat_prefix, "header_filter", "allowed"),
            )?,
            denied: Counter::define(
                metrics,
                &stat_name(&config.stat_prefix, "header_filter", "denied"),
            )?,
            deny_status,
            config,
        })
    }

    /// Request headers: deny a matching path, or add the request headers and let it through.
    pub fn on_request<S: MetricSink + ?Sized>(
        &self,
        request: &mut dyn Request,
        metrics: &S,
    ) -> Decision {
        // Match on the path the upstream will act on, not on the bytes the client sent:
        // otherwise `/public/../admin` or `/%61dmin` walks around a rule for `/admin`.
        let path = match request.path().map(normalize_path) {
            Some(Ok(path)) => path,
            Some(Err(_)) => {
                self.denied.increment(metrics);
                return Decision::Deny(LocalReply::bad_request(INVALID_PATH_DETAILS));
            }
            // No :path (CONNECT): nothing to match.
            None => String::new(),
        };
        if self
            .config
            .deny
            .iter()
            .any(|matcher| matcher.matches(&path))
        {
            self.denied.increment(metrics);
            return Decision::Deny(
                LocalReply::new(self.deny_status, DENIED_DETAILS)
                    .with_body(self.config.deny_body.clone()),
            );
        }
        if apply_all(
            &self.config.request_headers_to_add,
            request,
            HeaderMapKind::Request,
        )
        .is_err()
        {
            // Header values were validated at load; a host refusal here is not worth failing
            // the request for.
        }
        self.allowed.increment(metrics);
        Decision::Continue
    }

    /// Response headers: add the configured response headers.
    pub fn on_response(&self, request: &mut dyn Request) -> Decision {
        let _ = apply_all(
            &self.config.response_headers_to_add,
            request,
            HeaderMapKind::Response,
        );
        Decision::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    const SAMPLE: &str = include_str!("../config.json");

    fn filter(json: &str, host: &mut MemoryHost) -> HeaderFilter {
        HeaderFilter::new(load::<Config>(json.as_bytes()).unwrap(), host).unwrap()
    }

    #[test]
    fn sample_config_loads() {
        let mut host = MemoryHost::new();
        let filter = filter(SAMPLE, &mut host);
        for denied in ["/admin", "/internal/metrics", "/INDEX.PHP", "/a/../admin/x"] {
            let decision = filter.on_request(&mut MemoryRequest::get(denied), &host);
            assert_eq!(
                decision.local_reply().map(|r| r.status),
                Some(403),
                "{denied}"
            );
        }
        let mut hello = MemoryRequest::get("/hello").with_header("x-wasmesh-filtered", "spoofed");
        assert_eq!(filter.on_request(&mut hello, &host), Decision::Continue);
        assert_eq!(hello.header("x-wasmesh-filtered").as_deref(), Some("true"));
        assert_eq!(filter.on_response(&mut hello), Decision::Continue);
        assert_eq!(hello.response_header("x-wasmesh").as_deref(), Some("hello"));
    }

    #[test]
    fn denies_matching_normalized_paths() {
        let mut host = MemoryHost::new();
        let filter = filter(
            r#"{"deny": [{"prefix": "/admin"}], "deny_status": 404, "deny_body": "no"}"#,
            &mut host,
        );
        for attack in [
            "/admin",
            "/admin/users",
            "//admin",
            "/public/../admin",
            "/%2e%2e/admin",
            "/%61dmin",
            "/x/./../admin?q=1",
        ] {
            let mut request = MemoryRequest::get(attack);
            let decision = filter.on_request(&mut request, &host);
            let reply = decision
                .local_reply()
                .unwrap_or_else(|| panic!("{attack} was allowed"));
            assert_eq!(reply.status, 404);
            assert_eq!(reply.details, DENIED_DETAILS);
            assert_eq!(reply.body, b"no");
        }
        assert_eq!(host.metric("header_filter.denied"), Some(7));
        assert_eq!(host.metric("header_filter.allowed"), Some(0));
    }

    #[test]
    fn allows_other_paths_and_adds_request_headers() {
        let mut host = MemoryHost::new();
        let filter = filter(
            r#"{"deny": [{"prefix": "/admin"}],
                "request_headers_to_add": [{"header": {"key": "x-wasmesh-checked", "value": "1"}}]}"#,
            &mut host,
        );
        for allowed in [
            "/",
            "/adm-guide",
            "/public/admin",
            "/%2Fadmin",
            "/..%2fadmin",
        ] {
            let mut request = MemoryRequest::get(allowed);
            assert_eq!(
                filter.on_request(&mut request, &host),
                Decision::Continue,
                "{allowed}"
            );
            assert_eq!(request.header("x-wasmesh-checked").as_deref(), Some("1"));
        }
        assert_eq!(host.metric("header_filter.allowed"), Some(5));
    }

    #[test]
    fn nul_in_path_is_a_bad_request() {
        let mut host = MemoryHost::new();
        let filter = filter("{}", &mut host);
        let mut request = MemoryRequest::get("/a%00b");
        let decision = filter.on_request(&mut request, &host);
        assert_eq!(
            decision,
            Decision::Deny(LocalReply::bad_request(INVALID_PATH_DETAILS))
        );
    }

    #[test]
    fn request_without_path_is_allowed() {
        let mut host = MemoryHost::new();
        let filter = filter(r#"{"deny": [{"safe_regex": {"regex": ".*"}}]}"#, &mut host);
        let mut connect = MemoryRequest::new()
            .with_header(":method", "CONNECT")
            .with_header(":authority", "x:443");
        // The regex matches the empty string: a missing path is matched as "".
        assert!(filter
            .on_request(&mut connect, &host)
            .local_reply()
            .is_some());
        let filter = self::filter(r#"{"deny": [{"prefix": "/"}]}"#, &mut host);
        assert_eq!(filter.on_request(&mut connect, &host), Decision::Continue);
    }

    #[test]
    fn response_headers_are_added() {
        let mut host = MemoryHost::new();
        let filter = filter(
            r#"{"response_headers_to_add": [{"header": {"key": "x-wasmesh", "value": "hello"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}"#,
            &mut host,
        );
        let mut request = MemoryRequest::get("/").with_response_header("x-wasmesh", "old");
        assert_eq!(filter.on_response(&mut request), Decision::Continue);
        assert_eq!(
            request.response_header("x-wasmesh").as_deref(),
            Some("hello")
        );
    }

    #[test]
    fn stat_prefix_is_prepended() {
        let mut host = MemoryHost::new();
        let filter = filter(r#"{"stat_prefix": "edge"}"#, &mut host);
        filter.on_request(&mut MemoryRequest::get("/"), &host);
        assert_eq!(host.metric("edge.header_filter.allowed"), Some(1));
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (
                r#"{"deny": [{"prefix": 5}]}"#,
                "deny[0].prefix: invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"deny_status": 99}"#,
                "deny_status: must be an HTTP status between 200 and 599, got 99",
            ),
            (
                r#"{"deny": [{"safe_regex": {"regex": "\\p{L}"}}]}"#,
                "deny[0].safe_regex.regex: invalid regex",
            ),
            (
                r#"{"response_headers_to_add": [{"header": {"key": ":status", "value": "200"}}]}"#,
                "response_headers_to_add[0]: header \":status\" cannot be added",
            ),
            (r#"{"denny": []}"#, "denny: unknown field `denny`"),
        ];
        for (json, expected) in cases {
            let error = load::<Config>(json.as_bytes()).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{json}: {error}");
        }
    }

    #[test]
    fn empty_config_allows_everything() {
        let mut host = MemoryHost::new();
        let filter = filter("", &mut host);
        assert_eq!(
            filter.on_request(&mut MemoryRequest::get("/admin"), &host),
            Decision::Continue
        );
    }
}
