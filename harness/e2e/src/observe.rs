//! One exchange, observed from outside the filter: what the client got and what the upstream
//! saw. The same [`Observed`] is built from a real Envoy (client response, and the echo
//! upstream's copy of the forwarded request) and from the harness (the stream's local reply, or
//! the request and response headers as the filter left them), so the two can be compared with
//! `==`.
//!
//! What Envoy adds on its own and the harness does not emulate is left out of the comparison
//! (see [`IGNORED_RESPONSE_HEADERS`] and [`IGNORED_UPSTREAM_HEADERS`]); what Envoy adds before
//! the filter runs is given to the harness as well: the harness presents the client's request and
//! the upstream's answer as Envoy's codec and connection manager do ([`harness_client_request`],
//! `HttpStream::send_request`, `HttpStream::upstream_response`).

use std::time::Duration;

use wasmesh_envoy::{Envoy, HttpRequest, ReceivedRequest, RESPONSE_CODE_DETAILS_HEADER};
use wasmesh_harness::build::sha256_hex;
use wasmesh_harness::{
    ClientRequest, HarnessError, HttpStream, LocalReply, Plugin, StreamState, UpstreamResponse,
};

use crate::corpus::Exchange;
use crate::services::{Answer, Services};
use crate::E2eError;

/// Response headers Envoy (or the echo upstream's framing) sets regardless of the filter, or
/// that the comparison reads elsewhere: not compared.
pub const IGNORED_RESPONSE_HEADERS: &[&str] = &[
    ":status",
    "date",
    "server",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-envoy-upstream-service-time",
    RESPONSE_CODE_DETAILS_HEADER,
];

/// Upstream request headers the router adds after the filter chain (or that are read
/// elsewhere): not compared. (A `content-length: 0` the HTTP/1 codec adds to a body-less
/// `OPTIONS`/`POST` is dropped too, see `codec_framing`.)
pub const IGNORED_UPSTREAM_HEADERS: &[&str] = &[
    ":method",
    ":path",
    ":scheme",
    "x-envoy-expected-rq-timeout-ms",
    "connection",
    "transfer-encoding",
];

/// Header the client sends so that Envoy's `x-request-id` is the same as the harness's (Envoy
/// keeps a client's request id when the connection manager does not use the remote address).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The headers the echo upstream answers with, besides the `content-length` of its body.
pub const ECHO_RESPONSE_HEADERS: &[(&str, &str)] = &[("content-type", "application/json")];

/// Step of the virtual clock while the harness holds a request (a fault delay, a callout
/// timeout), and how far it may go.
const CLOCK_STEP: Duration = Duration::from_millis(5);
const CLOCK_LIMIT: Duration = Duration::from_secs(120);

/// Value shown for a volatile header (compared for presence only).
pub const VOLATILE: &str = "<volatile>";

/// Bodies longer than this are compared (and shown) as their length and SHA-256.
pub const BODY_SHOWN_UP_TO: usize = 512;

/// A body as compared: its text, or its length and digest when it is long.
pub fn summarize(body: &[u8]) -> String {
    if body.len() <= BODY_SHOWN_UP_TO {
        return String::from_utf8_lossy(body).into_owned();
    }
    let digest = sha256_hex(body);
    format!(
        "<{} bytes, sha256 {}>",
        body.len(),
        digest.get(..16).unwrap_or(&digest)
    )
}

/// The request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamView {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, names lower-cased, sorted, without [`IGNORED_UPSTREAM_HEADERS`] (`:authority`
    /// shown as `host`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

/// What the client and the upstream observed for one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Status the client got.
    pub status: u16,
    /// Response code details, for a local reply (`None`: the upstream answered).
    pub details: Option<String>,
    /// Body of a local reply.
    pub local_body: Option<String>,
    /// The forwarded request (`None`: it never reached the upstream).
    pub upstream: Option<UpstreamView>,
    /// Response headers the client got, names lower-cased, sorted, without
    /// [`IGNORED_RESPONSE_HEADERS`], volatile values replaced by [`VOLATILE`].
    pub response_headers: Vec<(String, String)>,
    /// The stream was reset: the client got no complete response (a status of 0: not even
    /// headers).
    pub reset: bool,
    /// The upstream's body as the client got it ([`summarize`]d), for exchanges whose upstream
    /// answer the corpus gives (`upstream_answer`); `None` otherwise and for reset streams.
    pub response_body: Option<String>,
}

impl Observed {
    /// One line, for reports.
    pub fn summary(&self) -> String {
        match (&self.details, self.reset) {
            (_, true) => format!("{} then reset", self.status),
            (Some(details), false) => format!("{} local reply ({details})", self.status),
            (None, false) => format!("{} from the upstream", self.status),
        }
    }
}

/// Names lower-cased (`:authority` shown as `host`), `ignored` names dropped, `volatile` values
/// replaced by [`VOLATILE`], sorted: the form in which header lists are compared.
pub fn normalize(
    headers: impl IntoIterator<Item = (String, String)>,
    ignored: &[&str],
    volatile: &[String],
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = headers
        .into_iter()
        .map(|(name, value)| {
            let name = name.to_ascii_lowercase();
            let name = if name == ":authority" {
                "host".to_string()
            } else {
                name
            };
            let value = if volatile.iter().any(|v| v.eq_ignore_ascii_case(&name)) {
                VOLATILE.to_string()
            } else {
                value
            };
            (name, value)
        })
        .filter(|(name, _)| !ignored.contains(&name.as_str()))
        .collect();
    headers.sort();
    headers
}

/// The request a client sends to Envoy for `exchange`.
pub fn client_request(exchange: &Exchange, request_id: &str) -> HttpRequest {
    let mut request = HttpRequest::new(exchange.method.as_str(), exchange.path.as_str())
        .header("host", exchange.host())
        .header(REQUEST_ID_HEADER, request_id)
        .body(exchange.body.as_bytes().to_vec());
    if exchange.chunked {
        request = request.header("transfer-encoding", "chunked");
    }
    for (name, value) in exchange.headers_without_host() {
        request = request.header(name, value);
    }
    request
}

/// The client's request as the harness is given it, to present to the filter as Envoy's HTTP/1
/// codec and connection manager do (`:scheme`, `x-forwarded-proto`, the client's
/// `x-request-id`, `content-length`, the body then an empty end-of-stream chunk).
pub fn harness_client_request(exchange: &Exchange, request_id: &str) -> ClientRequest {
    let mut request = ClientRequest::new(exchange.method.as_str(), exchange.path.as_str())
        .authority(exchange.host())
        .header(REQUEST_ID_HEADER, request_id);
    for (name, value) in exchange.headers_without_host() {
        request = request.header(name, value);
    }
    match (exchange.body.is_empty(), exchange.chunked) {
        (true, _) => request,
        (false, false) => request.body(exchange.body.as_bytes().to_vec()),
        (false, true) => request.chunked_body(exchange.body.as_bytes().to_vec()),
    }
}

/// The `source.address` Envoy gives the filter chain for `exchange`. Envoy's connection manager
/// with its defaults (`use_remote_address: false`, `xff_num_trusted_hops: 0`) takes the
/// downstream remote address from the last `x-forwarded-for` entry when it is an IP address
/// (port 0), and every filter sees that as `source.address`; without one it is the TCP peer,
/// 127.0.0.1 like the harness's default. The harness emulates no connection manager, so the
/// runner sets the property as Envoy would.
pub fn envoy_source_address(exchange: &Exchange) -> Option<String> {
    let forwarded: Vec<&str> = exchange
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, value)| value.as_str())
        .collect();
    let joined = forwarded.join(",");
    let last = joined.rsplit(',').next()?.trim();
    let ip: std::net::IpAddr = last.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, 0).to_string())
}

/// Sends `exchange` through a real Envoy routing to the group's upstream (an echo, or the
/// exchange's `upstream_answer`). Also returns what the upstream answered, which the harness is
/// then given.
pub fn observe_envoy(
    envoy: &Envoy,
    services: &Services,
    exchange: &Exchange,
    request_id: &str,
    volatile: &[String],
) -> Result<(Observed, Answer), E2eError> {
    let staged = exchange.upstream_answer.as_ref().map(Answer::from);
    services.stage_upstream_answer(staged.clone());
    let before = services.upstream.requests().len();
    let response =
        wasmesh_envoy::client::send(envoy.listener_addr(), &client_request(exchange, request_id))
            .map_err(E2eError::Envoy)?;
    let received: Option<ReceivedRequest> = services.upstream.requests().into_iter().nth(before);
    let reset = !response.complete;
    // A module's local reply with empty details (the proxy-wasm crate's `send_http_response`
    // passes none) gets no details header from the local-reply mapper: an answer the upstream
    // never saw the request for is a local reply all the same.
    let details = response
        .response_code_details()
        .map(str::to_string)
        .or_else(|| (received.is_none() && !reset).then(String::new));
    let response_headers = normalize(
        response.headers.iter().cloned(),
        IGNORED_RESPONSE_HEADERS,
        volatile,
    );
    let upstream = match (&details, &received) {
        (None, Some(seen)) => Some(UpstreamView {
            method: seen.method.clone(),
            path: seen.path.clone(),
            headers: normalize(
                codec_framing(seen.headers.clone()),
                IGNORED_UPSTREAM_HEADERS,
                &[],
            ),
            body: summarize(&seen.body),
        }),
        _ => None,
    };
    let upstream_answered = upstream.is_some();
    let observed = Observed {
        status: response.status.unwrap_or(0),
        local_body: details
            .as_ref()
            .filter(|_| !reset)
            .map(|_| String::from_utf8_lossy(&response.body).into_owned()),
        details,
        upstream,
        response_headers,
        reset,
        response_body: (staged.is_some() && !reset && upstream_answered)
            .then(|| summarize(&response.body)),
    };
    // What the upstream sent: the staged answer, or the echo of what it received.
    let answer = staged.unwrap_or_else(|| Answer {
        status: 200,
        headers: ECHO_RESPONSE_HEADERS
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        body: received.map_or_else(|| "{}".to_string(), |seen| seen.to_json().to_string()),
    });
    services.stage_upstream_answer(None);
    Ok((observed, answer))
}

/// What happened inside the harness besides the observation: errors its calls returned (a
/// trapping module), which Envoy turns into its failure policy and which are reported, not
/// compared.
#[derive(Debug, Default)]
pub struct HarnessNotes {
    /// Errors returned by stream calls, in order.
    pub errors: Vec<String>,
}

impl HarnessNotes {
    fn record<T>(&mut self, result: Result<T, HarnessError>) {
        if let Err(error) = result {
            self.errors.push(
                error
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
}

/// Runs `exchange` through the harness as Envoy runs it: request headers (and body), the
/// virtual clock advanced while the filter holds the request, then (unless it replied) the
/// upstream's `answer`, and the end of the stream.
pub fn observe_harness(
    plugin: &Plugin,
    exchange: &Exchange,
    request_id: &str,
    answer: &Answer,
    volatile: &[String],
) -> Result<(Observed, HarnessNotes), E2eError> {
    let mut notes = HarnessNotes::default();
    let mut stream = plugin.http_stream();
    if let Some(address) = envoy_source_address(exchange) {
        stream.property(&["source", "address"], address);
    }
    notes.record(stream.send_request(&harness_client_request(exchange, request_id)));
    settle(plugin, &stream, HttpStream::request_state)?;

    let observed = match stream.local_reply() {
        Some(reply) => replied(&reply, volatile),
        None => {
            let forwarded = stream.request_headers_now();
            let method = header_of(&forwarded, ":method").unwrap_or_default();
            let path = header_of(&forwarded, ":path").unwrap_or_default();
            let upstream = UpstreamView {
                method,
                path,
                headers: normalize(forwarded, IGNORED_UPSTREAM_HEADERS, &[]),
                body: summarize(&stream.request_body_now()),
            };
            let response = answer.headers.iter().fold(
                UpstreamResponse::new(answer.status),
                |response, (name, value)| response.header(name.as_str(), value.as_str()),
            );
            notes.record(stream.upstream_response(&response.body(answer.body.as_bytes().to_vec())));
            settle(plugin, &stream, HttpStream::response_state)?;
            let response_headers = normalize(
                stream.response_headers_now(),
                IGNORED_RESPONSE_HEADERS,
                volatile,
            );
            match stream.local_reply() {
                Some(reply) => replied(&reply, volatile),
                // The response headers went downstream, then the stream was reset.
                None if stream.response_state() == StreamState::Reset => Observed {
                    status: answer.status,
                    details: None,
                    local_body: None,
                    upstream: Some(upstream),
                    response_headers,
                    reset: true,
                    response_body: None,
                },
                None => Observed {
                    status: answer.status,
                    details: None,
                    local_body: None,
                    upstream: Some(upstream),
                    response_headers,
                    reset: false,
                    response_body: exchange
                        .upstream_answer
                        .is_some()
                        .then(|| summarize(&stream.response_body_now())),
                },
            }
        }
    };
    notes.record(stream.complete());
    Ok((observed, notes))
}

/// Drops a `content-length: 0` from the upstream's copy of a request: Envoy's HTTP/1 codec
/// frames a body-less request whose method may carry a body (`OPTIONS`, `POST`, ...) with it,
/// after the filter chain, so no filter ever sees it.
fn codec_framing(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter(|(name, value)| !(name.eq_ignore_ascii_case("content-length") && value == "0"))
        .collect()
}

fn replied(reply: &LocalReply, volatile: &[String]) -> Observed {
    Observed {
        status: u16::try_from(reply.status).unwrap_or(u16::MAX),
        details: Some(reply.details.clone()),
        local_body: Some(String::from_utf8_lossy(&reply.body).into_owned()),
        upstream: None,
        response_headers: normalize(reply.headers.clone(), IGNORED_RESPONSE_HEADERS, volatile),
        reset: false,
        response_body: None,
    }
}

fn header_of(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

/// Advances the virtual clock while the filter holds this direction of the stream (a delay, a
/// callout waiting for its timeout), as real time passes in Envoy.
fn settle(
    plugin: &Plugin,
    stream: &HttpStream,
    state: fn(&HttpStream) -> StreamState,
) -> Result<(), E2eError> {
    let mut waited = Duration::ZERO;
    while state(stream) == StreamState::Paused && stream.local_reply().is_none() {
        if waited >= CLOCK_LIMIT {
            return Err(E2eError::Corpus(format!(
                "the filter still holds the stream after {CLOCK_LIMIT:?} of virtual time"
            )));
        }
        plugin.advance_clock(CLOCK_STEP)?;
        waited += CLOCK_STEP;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange {
        serde_json::from_str(
            r#"{"name": "n", "method": "POST", "path": "/p?q=1",
                "headers": [["Host", "h.example"], ["X-A", "1"]], "body": "abc"}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_harness_gets_what_envoy_hands_its_filter_chain() {
        let request = harness_client_request(&exchange(), "id-1");
        let headers = request.presented_headers("generated");
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                ":authority",
                ":path",
                ":method",
                ":scheme",
                "x-request-id",
                "x-a",
                "content-length",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(headers[0].1, "h.example");
        assert_eq!(headers[4].1, "id-1");
        assert_eq!(headers[6].1, "3");
        assert_eq!(request.body_bytes(), Some(&b"abc"[..]));
    }

    #[test]
    fn the_source_address_is_the_last_forwarded_for_entry_as_envoy_derives_it() {
        let with = |headers: &str| -> Exchange {
            serde_json::from_str(&format!(
                r#"{{"name": "n", "path": "/", "headers": {headers}}}"#
            ))
            .unwrap()
        };
        assert_eq!(
            envoy_source_address(&with(r#"[["x-forwarded-for", "1.1.1.1, 10.1.2.3"]]"#)).as_deref(),
            Some("10.1.2.3:0")
        );
        assert_eq!(
            envoy_source_address(&with(
                r#"[["X-Forwarded-For", "1.1.1.1"], ["x-forwarded-for", "2001:db8::1"]]"#
            ))
            .as_deref(),
            Some("[2001:db8::1]:0")
        );
        assert_eq!(
            envoy_source_address(&with(r#"[["x-forwarded-for", "unknown"]]"#)),
            None
        );
        assert_eq!(envoy_source_address(&with("[]")), None);
    }

    #[test]
    fn normalization_sorts_lowercases_maps_authority_and_hides_volatile_values() {
        let headers = normalize(
            [
                ("X-B".to_string(), "2".to_string()),
                (":authority".to_string(), "h".to_string()),
                ("date".to_string(), "now".to_string()),
                ("x-reset".to_string(), "59".to_string()),
            ],
            IGNORED_RESPONSE_HEADERS,
            &["x-reset".to_string()],
        );
        assert_eq!(
            headers,
            [
                ("host".to_string(), "h".to_string()),
                ("x-b".to_string(), "2".to_string()),
                ("x-reset".to_string(), VOLATILE.to_string()),
            ]
        );
    }
}
