//! What the harness and the real-Envoy tests of the policy filter share: the module, the sample
//! configuration, one authorization policy (answered by a harness mock and by real test
//! servers alike), and a table of requests with the verdict each must get.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use prost::Message;
use wasmesh_harness::{CalloutReply, GrpcReply, Harness, HttpCallout, Plugin, PluginBuilder};
use wasmesh_policy::proto;

/// The filter's cargo package; its wasm is built on first use.
pub const PACKAGE: &str = "wasmesh-policy";

/// The check timeout of the sample configuration.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// The crate directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The filter's real `wasm32-wasip1` release build.
pub fn wasm() -> PathBuf {
    wasmesh_harness::build::wasm(PACKAGE).unwrap()
}

/// `filters/policy/config.json`: the HTTP-service configuration the table runs with.
pub fn sample_config() -> String {
    std::fs::read_to_string(crate_dir().join("config.json")).unwrap()
}

/// The gRPC-service configuration (same policy, with the request body sent along).
pub fn grpc_config() -> String {
    r#"{
      "grpc_service": {"envoy_grpc": {"cluster_name": "authz-grpc"}, "timeout": "0.5s"},
      "with_request_body": {"max_request_bytes": 64},
      "status_on_error": {"code": "ServiceUnavailable"},
      "decision_cache": {"key": {"headers": ["authorization", "x-tenant"]}, "ttl": "30s"},
      "local_lists": {
        "deny": [{"name": "internal-only", "path_prefix": "/internal"}],
        "allow": [{"name": "health-checks", "path_prefix": "/healthz"}]
      }
    }"#
    .to_string()
}

/// What the policy service answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAnswer {
    /// HTTP status (200 allows).
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Option<PolicyAnswer> {
    Some(PolicyAnswer {
        status,
        headers: headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        body: body.to_string(),
    })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// The policy: who may do what. `path` is the client's path (without the service's prefix);
/// `None` means the service never answers (the check times out).
pub fn decide(path: &str, headers: &[(String, String)], body: &[u8]) -> Option<PolicyAnswer> {
    if path.starts_with("/slow") {
        return None;
    }
    if path.starts_with("/error") {
        return answer(500, &[], "policy engine crashed");
    }
    if body.windows(4).any(|window| window == b"evil") {
        return answer(403, &[("x-reason", "body")], "body refused\n");
    }
    if header(headers, "x-tenant") == Some("blocked") {
        return answer(403, &[("x-reason", "tenant-blocked")], "tenant blocked\n");
    }
    match header(headers, "authorization") {
        Some("Bearer alice") => answer(
            200,
            &[
                ("x-user", "alice"),
                ("x-authz-tier", "gold"),
                ("x-quota", "100"),
                ("x-internal-note", "not for anyone"),
            ],
            "",
        ),
        Some("Bearer mallory") => answer(403, &[("x-reason", "revoked")], "token revoked\n"),
        None => answer(
            401,
            &[
                ("www-authenticate", "Bearer realm=\"shop\""),
                ("x-reason", "no-credentials"),
            ],
            "login required\n",
        ),
        Some(_) => answer(403, &[("x-reason", "unknown-user")], "unknown user\n"),
    }
}

/// The policy as an HTTP authorization service sees a check (`/authz` + client path).
pub fn decide_http(path: &str, headers: &[(String, String)], body: &[u8]) -> Option<PolicyAnswer> {
    decide(path.strip_prefix("/authz").unwrap_or(path), headers, body)
}

/// What the gRPC policy service does with one `CheckRequest`.
#[derive(Debug, Clone, PartialEq)]
pub enum GrpcOutcome {
    /// Answers with this `CheckResponse`.
    Response(proto::CheckResponse),
    /// Fails the call with this gRPC status.
    Error(u32, String),
    /// Never answers.
    Silent,
}

/// The policy as a gRPC authorization service: a `CheckRequest` in, a `CheckResponse` out.
pub fn decide_grpc(message: &[u8]) -> GrpcOutcome {
    let check = proto::CheckRequest::decode(message).unwrap();
    let http = check.attributes.unwrap().request.unwrap().http.unwrap();
    let headers: Vec<(String, String)> = http.headers.into_iter().collect();
    let body = if http.raw_body.is_empty() {
        http.body.into_bytes()
    } else {
        http.raw_body
    };
    let Some(answer) = decide(&http.path, &headers, &body) else {
        return GrpcOutcome::Silent;
    };
    let options = |headers: &[(String, String)]| -> Vec<proto::HeaderValueOption> {
        headers
            .iter()
            .map(|(key, value)| proto::HeaderValueOption {
                header: Some(proto::HeaderValue {
                    key: key.clone(),
                    value: value.clone(),
                    raw_value: Vec::new(),
                }),
                append: None,
                append_action: 0,
            })
            .collect()
    };
    GrpcOutcome::Response(match answer.status {
        200 => {
            let (to_client, upstream): (Vec<_>, Vec<_>) = answer
                .headers
                .iter()
                .filter(|(name, _)| name != "x-internal-note")
                .cloned()
                .partition(|(name, _)| name == "x-quota");
            proto::CheckResponse {
                status: Some(proto::RpcStatus {
                    code: 0,
                    message: String::new(),
                }),
                denied_response: None,
                ok_response: Some(proto::OkHttpResponse {
                    headers: options(&upstream),
                    response_headers_to_add: options(&to_client),
                    ..proto::OkHttpResponse::default()
                }),
            }
        }
        500..=599 => return GrpcOutcome::Error(13, "policy engine crashed".into()),
        status => proto::CheckResponse {
            status: Some(proto::RpcStatus {
                code: 7,
                message: "denied".into(),
            }),
            denied_response: Some(proto::DeniedHttpResponse {
                status: Some(proto::HttpStatus {
                    code: i32::from(status),
                }),
                headers: options(&answer.headers),
                body: answer.body,
            }),
            ok_response: None,
        },
    })
}

/// The harness mock of the HTTP service.
pub fn http_mock(callout: &HttpCallout) -> CalloutReply {
    let path = callout.header(":path").unwrap_or_default().to_string();
    match decide_http(&path, &callout.headers, &callout.body) {
        Some(answer) => {
            let headers: Vec<(&str, &str)> = answer
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            CalloutReply::with_headers(answer.status, &headers, answer.body)
        }
        None => CalloutReply::Timeout,
    }
}

/// The harness mock of the gRPC service.
pub fn grpc_mock(call: &wasmesh_harness::GrpcCallout) -> GrpcReply {
    let message = call.messages.first().cloned().unwrap_or_default();
    match decide_grpc(&message) {
        GrpcOutcome::Response(response) => GrpcReply::Response(response.encode_to_vec()),
        GrpcOutcome::Error(status, message) => GrpcReply::Error { status, message },
        GrpcOutcome::Silent => GrpcReply::Timeout,
    }
}

/// The filter in the harness with `config`, its services answered by the mocks.
pub fn builder(config: &str) -> PluginBuilder {
    Harness::load(wasm())
        .unwrap()
        .config(config)
        .http_callout_handler(http_mock)
        .grpc_callout_handler(grpc_mock)
}

/// The filter in the harness with `config`, one worker (as the Envoy tests run).
pub fn start_in_harness(config: &str) -> Plugin {
    builder(config).start().unwrap()
}

/// What the client and the upstream observe for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request reached the upstream.
    Forwarded {
        /// `x-user` as the upstream received it (set by the service).
        user: Option<String>,
        /// `x-authz-tier` as the upstream received it.
        tier: Option<String>,
        /// `x-authz-client` as the upstream received it (a check-only header: never).
        check_only_header: Option<String>,
        /// `x-internal-note` as the upstream received it (not allowed upstream: never).
        internal_note: Option<String>,
        /// `x-quota` in the response the client got.
        quota: Option<String>,
    },
    /// The filter answered locally.
    Replied {
        /// Status.
        status: u32,
        /// Response code details.
        details: String,
        /// Body.
        body: String,
        /// `x-reason` of the reply.
        reason: Option<String>,
        /// `www-authenticate` of the reply.
        www_authenticate: Option<String>,
    },
}

fn forwarded(user: Option<&str>, tier: Option<&str>, quota: Option<&str>) -> Verdict {
    Verdict::Forwarded {
        user: user.map(str::to_string),
        tier: tier.map(str::to_string),
        check_only_header: None,
        internal_note: None,
        quota: quota.map(str::to_string),
    }
}

fn replied(status: u32, details: &str, body: &str, reason: Option<&str>) -> Verdict {
    Verdict::Replied {
        status,
        details: details.to_string(),
        body: body.to_string(),
        reason: reason.map(str::to_string),
        www_authenticate: None,
    }
}

/// One request of the table.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case is about.
    pub name: &'static str,
    /// `:method`.
    pub method: &'static str,
    /// `:path`.
    pub path: &'static str,
    /// Extra request headers.
    pub headers: Vec<(&'static str, &'static str)>,
    /// Request body (sent after the headers when not empty).
    pub body: &'static str,
    /// The verdict.
    pub expected: Verdict,
    /// Whether the service is asked (not a local-list decision nor a cache hit).
    pub asks_service: bool,
}

fn case(
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    expected: Verdict,
    asks_service: bool,
) -> Case {
    Case {
        name,
        method: "GET",
        path,
        headers,
        body: "",
        expected,
        asks_service,
    }
}

/// The requests, in order (the cache makes order matter), with their verdicts under either
/// sample configuration.
pub fn cases() -> Vec<Case> {
    let alice = ("authorization", "Bearer alice");
    let allowed = forwarded(Some("alice"), Some("gold"), Some("100"));
    vec![
        case(
            "alice is allowed",
            "/orders",
            vec![alice],
            allowed.clone(),
            true,
        ),
        case(
            "the same request is served from the cache",
            "/orders",
            vec![alice],
            allowed.clone(),
            false,
        ),
        case(
            "a spoofed identity header is overwritten",
            "/orders?page=2",
            vec![alice, ("x-user", "root")],
            allowed.clone(),
            true,
        ),
        case(
            "a revoked token is denied with the service's reply",
            "/orders",
            vec![("authorization", "Bearer mallory")],
            replied(403, "ext_authz_denied", "token revoked\n", Some("revoked")),
            true,
        ),
        case(
            "no credentials: the service's 401 and its challenge",
            "/orders",
            vec![],
            Verdict::Replied {
                status: 401,
                details: "ext_authz_denied".into(),
                body: "login required\n".into(),
                reason: Some("no-credentials".into()),
                www_authenticate: Some("Bearer realm=\"shop\"".into()),
            },
            true,
        ),
        case(
            "an unknown user is denied",
            "/orders",
            vec![("authorization", "Bearer eve")],
            replied(
                403,
                "ext_authz_denied",
                "unknown user\n",
                Some("unknown-user"),
            ),
            true,
        ),
        case(
            "a keyed header differs: not served from alice's cached decision",
            "/orders",
            vec![alice, ("x-tenant", "blocked")],
            replied(
                403,
                "ext_authz_denied",
                "tenant blocked\n",
                Some("tenant-blocked"),
            ),
            true,
        ),
        case(
            "a service error fails closed with status_on_error",
            "/error",
            vec![alice],
            replied(503, "ext_authz_error", "", None),
            true,
        ),
        case(
            "a local deny rule answers without a check",
            "/internal/metrics",
            vec![alice],
            replied(
                403,
                "ext_authz_local_denied",
                "Forbidden: the request matches the local deny rule \"internal-only\"\n",
                None,
            ),
            false,
        ),
        case(
            "the deny rule sees the normalized path",
            "/public/../internal/metrics",
            vec![alice],
            replied(
                403,
                "ext_authz_local_denied",
                "Forbidden: the request matches the local deny rule \"internal-only\"\n",
                None,
            ),
            false,
        ),
        case(
            "a local allow rule skips the check",
            "/healthz",
            vec![],
            forwarded(None, None, None),
            false,
        ),
        case(
            "a silent service times out and fails closed",
            "/slow",
            vec![alice],
            replied(503, "ext_authz_error", "", None),
            true,
        ),
    ]
}

/// Runs one case through the harness; a check left unanswered times out on the virtual clock.
pub fn run_in_harness(plugin: &Plugin, case: &Case) -> Verdict {
    send_in_harness(plugin, case.method, case.path, &case.headers, case.body)
}

/// Sends one request through the harness and reads the verdict.
pub fn send_in_harness(
    plugin: &Plugin,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Verdict {
    let mut headers = vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "shop.example.com"),
        (":path", path),
    ];
    headers.extend(extra.iter().copied());
    let mut stream = plugin.http_stream();
    stream.request_headers(&headers, body.is_empty()).unwrap();
    if !body.is_empty() {
        stream.request_body(body.as_bytes(), true).unwrap();
    }
    let pending =
        !plugin.pending_http_callouts().is_empty() || !plugin.pending_grpc_callouts().is_empty();
    if stream.local_reply().is_none() && pending {
        plugin.advance_clock(TIMEOUT).unwrap();
    }
    let verdict = match stream.local_reply() {
        Some(reply) => Verdict::Replied {
            status: reply.status,
            details: reply.details,
            body: String::from_utf8(reply.body).unwrap(),
            reason: header(&reply.headers, "x-reason").map(str::to_string),
            www_authenticate: header(&reply.headers, "www-authenticate").map(str::to_string),
        },
        None => {
            assert_eq!(
                stream.request_state(),
                wasmesh_harness::StreamState::Continued,
                "{path}: the request neither continued nor was answered"
            );
            let upstream = stream.request_headers_now();
            stream
                .response_headers(&[(":status", "200")], true)
                .unwrap();
            Verdict::Forwarded {
                user: header(&upstream, "x-user").map(str::to_string),
                tier: header(&upstream, "x-authz-tier").map(str::to_string),
                check_only_header: header(&upstream, "x-authz-client").map(str::to_string),
                internal_note: header(&upstream, "x-internal-note").map(str::to_string),
                quota: stream.response_header("x-quota"),
            }
        }
    };
    stream.complete().unwrap();
    verdict
}

/// Real-Envoy helpers: the policy services as real servers, and the verdict read off an
/// Envoy response.
pub mod envoy {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use prost::Message;
    use wasmesh_envoy::{
        Envoy, GrpcAnswer, GrpcTestServer, HttpRequest, HttpResponse, ReceivedRequest, TestServer,
    };

    use super::{decide_grpc, decide_http, header, Case, GrpcOutcome, Verdict};

    /// Holds the answers of a silent service until the test ends (so that the proxy's
    /// timeout, not the server, ends the check), without sleeping.
    #[derive(Clone, Default)]
    pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

    impl Gate {
        /// Blocks until [`Gate::open`] (or a generous safety limit).
        pub fn wait(&self) {
            let (open, changed) = &*self.0;
            let guard = open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = changed.wait_timeout_while(guard, Duration::from_secs(30), |open| !*open);
        }

        /// Releases every waiter.
        pub fn open(&self) {
            let (open, changed) = &*self.0;
            *open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
            changed.notify_all();
        }
    }

    /// The HTTP policy service, and the check paths it received (recorded on arrival, so a
    /// check it never answers is listed too).
    pub fn http_service(gate: Gate) -> (TestServer, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let server = TestServer::start(move |request| {
            log.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(request.path.clone());
            match decide_http(&request.path, &request.headers, &request.body) {
                Some(answer) => answer.headers.iter().fold(
                    HttpResponse::new(answer.status, answer.body.clone()),
                    |response, (name, value)| response.with_header(name.clone(), value.clone()),
                ),
                None => {
                    gate.wait();
                    HttpResponse::new(200, "")
                }
            }
        })
        .unwrap();
        (server, seen)
    }

    /// The gRPC policy service.
    pub fn grpc_service() -> GrpcTestServer {
        GrpcTestServer::start(|call| {
            assert_eq!(call.path, "/envoy.service.auth.v3.Authorization/Check");
            match decide_grpc(&call.message) {
                GrpcOutcome::Response(response) => GrpcAnswer::Message(response.encode_to_vec()),
                GrpcOutcome::Error(status, message) => GrpcAnswer::Error { status, message },
                GrpcOutcome::Silent => GrpcAnswer::NoAnswer,
            }
        })
        .unwrap()
    }

    /// Sends one case through Envoy.
    pub fn run_in_envoy(envoy: &Envoy, case: &Case) -> Verdict {
        let mut request =
            HttpRequest::new(case.method, case.path).header("host", "shop.example.com");
        for (name, value) in &case.headers {
            request = request.header(*name, *value);
        }
        if !case.body.is_empty() {
            request = request.body(case.body);
        }
        verdict_of(&envoy.send(&request).unwrap())
    }

    /// The verdict of an Envoy response (local replies carry their details in a header).
    pub fn verdict_of(response: &HttpResponse) -> Verdict {
        match response.response_code_details() {
            Some(details) => Verdict::Replied {
                status: u32::from(response.status),
                details: details.to_string(),
                body: response.text(),
                reason: response.header("x-reason").map(str::to_string),
                www_authenticate: response.header("www-authenticate").map(str::to_string),
            },
            None => {
                assert_eq!(response.status, 200, "upstream answer: {}", response.text());
                let upstream = ReceivedRequest::from_echo(response).unwrap();
                Verdict::Forwarded {
                    user: header(&upstream.headers, "x-user").map(str::to_string),
                    tier: header(&upstream.headers, "x-authz-tier").map(str::to_string),
                    check_only_header: header(&upstream.headers, "x-authz-client")
                        .map(str::to_string),
                    internal_note: header(&upstream.headers, "x-internal-note").map(str::to_string),
                    quota: response.header("x-quota").map(str::to_string),
                }
            }
        }
    }
}
