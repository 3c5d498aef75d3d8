//! The local servers behind Envoy (an echo upstream, a JWKS endpoint, an HTTP authorization
//! service) and the same answers for the harness's callout handler, so both sides talk to
//! identical services.
//!
//! The authorization service's policy ([`authz_decision`]), used by the `policy` groups:
//!
//! | Request (as the service sees it) | Answer |
//! |---|---|
//! | path contains `/error` | 500 `authz crashed` |
//! | `x-tenant: blocked` | 403, `x-reason: tenant-blocked`, `tenant blocked\n` |
//! | `authorization: Bearer alice` | 200, `x-user: alice`, `x-authz-tier: gold`, `x-quota: 100`, `x-internal-note: hidden` |
//! | `authorization: Bearer mallory` | 403, `x-reason: revoked`, `token revoked\n` |
//! | no `authorization` | 401, `www-authenticate: Bearer realm="api"`, `x-reason: no-credentials`, `login required\n` |
//! | any other `authorization` | 403, `x-reason: unknown-user`, `unknown user\n` |
//!
//! For the foreign-module corpus (`corpus/foreign.json`) there are four more callout clusters:
//! `probe`, a service answering every request `200`, `content-type: text/plain`, `allowed`;
//! `slow`, a server that accepts connections and never answers (callouts time out); `closing`,
//! a server that closes each connection once a request arrives (the upstream resets before response
//! headers); and `refused`, an address nobody listens on (connections are refused). A cluster Envoy does not
//! have (`nowhere` in the corpus) is not declared to the harness either. The echo upstream
//! answers with an exchange's `upstream_answer` instead of echoing when the runner stages one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use wasmesh_envoy::{Cluster, HttpResponse, MockReply, MockServer, ReceivedRequest, TestServer};
use wasmesh_harness::{CalloutReply, HttpCallout};

use crate::corpus::UpstreamAnswer;

use crate::E2eError;

/// Cluster of the JWKS endpoint.
pub const JWKS_CLUSTER: &str = "jwks";
/// Cluster of the HTTP authorization service.
pub const AUTHZ_CLUSTER: &str = "authz";
/// Cluster of the echo upstream (every route goes there).
pub const UPSTREAM_CLUSTER: &str = "upstream";
/// Cluster of the probe modules' callout service (answers `200 allowed`).
pub const PROBE_CLUSTER: &str = "probe";
/// Cluster of a server that never answers.
pub const SLOW_CLUSTER: &str = "slow";
/// Cluster of a server that closes each connection once a request arrives, without answering.
pub const CLOSING_CLUSTER: &str = "closing";
/// Cluster of an address that refuses connections.
pub const REFUSED_CLUSTER: &str = "refused";

/// Clusters whose services record what they receive: the callouts compared per group.
pub const RECORDING_CLUSTERS: &[&str] = &[JWKS_CLUSTER, AUTHZ_CLUSTER, PROBE_CLUSTER];

/// An answer of a local service: status, headers (without framing headers), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Answer {
    fn new(status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        Self {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: body.to_string(),
        }
    }

    /// As a [`TestServer`] response.
    pub fn to_http(&self) -> HttpResponse {
        self.headers.iter().fold(
            HttpResponse::new(self.status, self.body.clone()),
            |response, (name, value)| response.with_header(name.clone(), value.clone()),
        )
    }

    /// As the harness's callout reply: the headers Envoy hands the module for the same answer
    /// from a [`TestServer`] (`:status`, the server's headers, then the `content-length` the
    /// server frames the body with).
    pub fn to_callout_reply(&self) -> CalloutReply {
        let mut headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let length = self.body.len().to_string();
        headers.push(("content-length", &length));
        CalloutReply::with_headers(self.status, &headers, self.body.clone())
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// The authorization service's decision for a check of `path` with `headers` (see the module
/// documentation).
pub fn authz_decision(path: &str, headers: &[(String, String)]) -> Answer {
    if path.contains("/error") {
        return Answer::new(500, &[], "authz crashed");
    }
    if header(headers, "x-tenant") == Some("blocked") {
        return Answer::new(403, &[("x-reason", "tenant-blocked")], "tenant blocked\n");
    }
    match header(headers, "authorization") {
        Some("Bearer alice") => Answer::new(
            200,
            &[
                ("x-user", "alice"),
                ("x-authz-tier", "gold"),
                ("x-quota", "100"),
                ("x-internal-note", "hidden"),
            ],
            "",
        ),
        Some("Bearer mallory") => Answer::new(403, &[("x-reason", "revoked")], "token revoked\n"),
        None => Answer::new(
            401,
            &[
                ("www-authenticate", "Bearer realm=\"api\""),
                ("x-reason", "no-credentials"),
            ],
            "login required\n",
        ),
        Some(_) => Answer::new(403, &[("x-reason", "unknown-user")], "unknown user\n"),
    }
}

/// The probe callout service's answer.
pub fn probe_answer() -> Answer {
    Answer::new(200, &[("content-type", "text/plain")], "allowed")
}

impl From<&UpstreamAnswer> for Answer {
    fn from(answer: &UpstreamAnswer) -> Self {
        Self {
            status: answer.status,
            headers: answer.headers.clone(),
            body: answer.body.clone(),
        }
    }
}

/// The JWKS endpoint's answer.
pub fn jwks_answer(jwks: &str) -> Answer {
    Answer::new(200, &[("content-type", "application/json")], jwks)
}

/// Answers the harness's callouts as the real services answer Envoy's: by cluster.
pub fn harness_callout_handler(jwks: String) -> impl FnMut(&HttpCallout) -> CalloutReply {
    move |callout| match callout.upstream.as_str() {
        JWKS_CLUSTER => jwks_answer(&jwks).to_callout_reply(),
        AUTHZ_CLUSTER => {
            let path = callout.header(":path").unwrap_or_default();
            authz_decision(path, &callout.headers).to_callout_reply()
        }
        PROBE_CLUSTER => probe_answer().to_callout_reply(),
        // Left pending: the callout times out when the virtual clock passes its timeout.
        SLOW_CLUSTER => CalloutReply::Timeout,
        CLOSING_CLUSTER => CalloutReply::Reset,
        REFUSED_CLUSTER => CalloutReply::Refused,
        // Envoy's router answers a request for a cluster with no healthy host this way; the
        // corpus has no such callout, but a filter calling one must not hang the run.
        _ => CalloutReply::upstream_unavailable(),
    }
}

/// The servers of one group (fresh per group, so their request logs are the group's).
#[derive(Debug)]
pub struct Services {
    /// Echo upstream: answers 200 with the request it received, as JSON (or the staged answer).
    pub upstream: TestServer,
    /// JWKS endpoint.
    pub jwks: TestServer,
    /// HTTP authorization service.
    pub authz: TestServer,
    /// The probe modules' callout service.
    pub probe: TestServer,
    /// A server that never answers.
    pub slow: MockServer,
    /// A server that closes every connection.
    pub closing: MockServer,
    /// An address nobody listens on.
    pub refused: SocketAddr,
    staged: Arc<Mutex<Option<Answer>>>,
}

impl Services {
    /// Starts the servers on 127.0.0.1.
    pub fn start(jwks: String) -> Result<Self, E2eError> {
        let staged: Arc<Mutex<Option<Answer>>> = Arc::default();
        let upstream = {
            let staged = Arc::clone(&staged);
            TestServer::start(move |request: &ReceivedRequest| {
                let answer = staged
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
                match answer {
                    Some(answer) => answer.to_http(),
                    None => HttpResponse::new(200, request.to_json().to_string())
                        .with_header("content-type", "application/json"),
                }
            })?
        };
        Ok(Self {
            upstream,
            jwks: TestServer::start(move |_| jwks_answer(&jwks).to_http())?,
            authz: TestServer::start(|request: &ReceivedRequest| {
                authz_decision(&request.path, &request.headers).to_http()
            })?,
            probe: TestServer::start(|_| probe_answer().to_http())?,
            slow: MockServer::start(|_| MockReply::Hang)?,
            closing: MockServer::start(|_| MockReply::Reset)?,
            refused: wasmesh_envoy::refused_address()?,
            staged,
        })
    }

    /// Makes the upstream answer `answer` (or echo, with `None`) until told otherwise.
    pub fn stage_upstream_answer(&self, answer: Option<Answer>) {
        *self
            .staged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = answer;
    }

    /// The callout clusters (the upstream cluster comes with `EnvoyBuilder::upstream`).
    pub fn callout_clusters(&self) -> [Cluster; 6] {
        [
            Cluster::new(JWKS_CLUSTER, self.jwks.addr()),
            Cluster::new(AUTHZ_CLUSTER, self.authz.addr()),
            Cluster::new(PROBE_CLUSTER, self.probe.addr()),
            Cluster::new(SLOW_CLUSTER, self.slow.addr()),
            Cluster::new(CLOSING_CLUSTER, self.closing.addr()),
            Cluster::new(REFUSED_CLUSTER, self.refused),
        ]
    }

    /// The names of [`Self::callout_clusters`].
    pub fn callout_cluster_names() -> [&'static str; 6] {
        [
            JWKS_CLUSTER,
            AUTHZ_CLUSTER,
            PROBE_CLUSTER,
            SLOW_CLUSTER,
            CLOSING_CLUSTER,
            REFUSED_CLUSTER,
        ]
    }

    /// Requests the callout services received, by cluster, in arrival order.
    pub fn callouts_received(&self) -> Vec<(String, ReceivedRequest)> {
        let jwks = self
            .jwks
            .requests()
            .into_iter()
            .map(|r| (JWKS_CLUSTER.to_string(), r));
        let authz = self
            .authz
            .requests()
            .into_iter()
            .map(|r| (AUTHZ_CLUSTER.to_string(), r));
        let probe = self
            .probe
            .requests()
            .into_iter()
            .map(|r| (PROBE_CLUSTER.to_string(), r));
        jwks.chain(authz).chain(probe).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn the_authz_policy_allows_alice_and_explains_denials() {
        let alice = authz_decision("/authz/x", &headers(&[("authorization", "Bearer alice")]));
        assert_eq!(alice.status, 200);
        assert!(alice.headers.contains(&("x-user".into(), "alice".into())));
        assert_eq!(authz_decision("/authz/x", &[]).status, 401);
        let blocked = headers(&[("authorization", "Bearer alice"), ("x-tenant", "blocked")]);
        assert_eq!(authz_decision("/authz/x", &blocked).status, 403);
        assert_eq!(authz_decision("/authz/error", &blocked).status, 500);
    }

    #[test]
    fn callout_replies_carry_the_framing_a_test_server_sends() {
        let CalloutReply::Response { headers, body, .. } = jwks_answer("{}").to_callout_reply()
        else {
            panic!("expected a response");
        };
        assert_eq!(
            headers,
            [
                (":status".to_string(), "200".to_string()),
                ("content-type".to_string(), "application/json".to_string()),
                ("content-length".to_string(), "2".to_string()),
            ]
        );
        assert_eq!(body, b"{}");
    }
}
