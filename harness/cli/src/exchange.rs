//! The `wasmesh run` file formats: the exchange to run (input) and what happened (output).
//!
//! Both carry `"format": 1`. The input format rejects unknown fields, so a typo is an error that
//! names its JSON path instead of a silently ignored setting. The README documents both formats
//! with an example; any change that is not backward compatible bumps the format number.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

pub use wasmesh_scenario::{Headers, PropertyInput, PropertyValueInput, StartTime};

/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// An exchange to run (`--request R.json`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeInput {
    /// Format version; must be [`FORMAT_VERSION`] when present.
    #[serde(default)]
    pub format: Option<u32>,
    /// Where the virtual clock starts (RFC 3339 string or Unix seconds); default: now. Pin it to
    /// make a run reproducible, e.g. with a token that is only valid at that time.
    /// `--start-time` overrides it.
    #[serde(default)]
    pub start_time: Option<StartTime>,
    /// Virtual time to let pass after the plugin started and before the request (fires ticks).
    #[serde(default)]
    pub advance_clock_ms: u64,
    /// Plugin-wide properties (node metadata, ...).
    #[serde(default)]
    pub plugin_properties: Vec<PropertyInput>,
    /// Properties of this stream (`source.address`, `connection.mtls`, ...).
    #[serde(default)]
    pub properties: Vec<PropertyInput>,
    /// What the client sends.
    pub request: MessageInput,
    /// What the upstream answers if the request reaches it (default: `:status 200`, no body).
    #[serde(default)]
    pub response: Option<MessageInput>,
    /// Answers to HTTP callouts the filter dispatches.
    #[serde(default)]
    pub callouts: Vec<CalloutMock>,
    /// The clusters Envoy has. When given, a callout to any other cluster fails at dispatch as
    /// in Envoy (`proxy_http_call`: `BadArgument`; `proxy_grpc_call`/`proxy_grpc_stream`:
    /// `ParseFailure` for a cluster name), and every `callouts[].cluster` must be one of them.
    /// Omitted: every cluster name exists.
    #[serde(default)]
    pub clusters: Option<Vec<String>>,
}

impl ExchangeInput {
    /// Checks what the types alone cannot: the format version and the one-of fields.
    pub fn validate(&self) -> Result<()> {
        if let Some(format) = self.format {
            if format != FORMAT_VERSION {
                bail!("format: this wasmesh reads format {FORMAT_VERSION}, the file is format {format}");
            }
        }
        self.request.check_body("request")?;
        if let Some(response) = &self.response {
            response.check_body("response")?;
        }
        for (index, mock) in self.callouts.iter().enumerate() {
            if let Some(response) = &mock.response {
                response.check_body(&format!("callouts[{index}].response"))?;
            }
            match (&mock.response, &mock.fail) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => bail!("callouts[{index}]: give exactly one of `response` or `fail`"),
            }
            if let Some(clusters) = &self.clusters {
                if !clusters.contains(&mock.cluster) {
                    bail!(
                        "callouts[{index}].cluster: `{}` is not among `clusters` ({}), so no \
                         callout can reach it",
                        mock.cluster,
                        clusters.join(", ")
                    );
                }
            }
        }
        Ok(())
    }
}

/// Headers, an optional body and optional trailers of one direction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// Headers, pseudo-headers (`:method`, `:path`, `:authority`, `:status`) included.
    pub headers: Headers,
    /// Body (UTF-8 text). Omitted: the headers end the stream.
    #[serde(default)]
    pub body: Option<String>,
    /// Instead of `body`: the body as base64, for bytes that are not UTF-8 text (a JSON string
    /// such as `"\u0081"` is the character U+0081, sent as its two UTF-8 bytes).
    #[serde(default)]
    pub body_base64: Option<String>,
    /// Trailers. Omitted: no trailers.
    #[serde(default)]
    pub trailers: Option<Headers>,
}

impl MessageInput {
    /// The body's bytes: `body` as UTF-8, or `body_base64` decoded (checked by
    /// [`ExchangeInput::validate`]).
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        wasmesh_scenario::load::body_bytes(self.body.as_deref(), self.body_base64.as_deref())
    }

    fn check_body(&self, field: &str) -> Result<()> {
        if self.body.is_some() && self.body_base64.is_some() {
            bail!("{field}: give `body` or `body_base64`, not both");
        }
        wasmesh_scenario::load::decode_base64(self.body_base64.as_deref())
            .map_err(|error| anyhow::anyhow!("{field}.body_base64: {error}"))?;
        Ok(())
    }
}

/// The answer to the HTTP callouts to `cluster` (and, when given, with this `:path`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalloutMock {
    /// The upstream (Envoy cluster) the filter calls.
    pub cluster: String,
    /// Only callouts with this `:path` header (query included) match.
    #[serde(default)]
    pub path: Option<String>,
    /// The response to deliver.
    #[serde(default)]
    pub response: Option<MessageInput>,
    /// Instead of a response, fail the callout.
    #[serde(default)]
    pub fail: Option<CalloutFailure>,
}

impl CalloutMock {
    /// Whether this mock answers a callout to `cluster` with these headers.
    pub fn matches(&self, cluster: &str, headers: &[(String, String)]) -> bool {
        self.cluster == cluster
            && self.path.as_ref().is_none_or(|wanted| {
                headers
                    .iter()
                    .any(|(name, value)| name == ":path" && value == wanted)
            })
    }
}

/// How a mocked callout fails, as Envoy 1.40 reports each failure to the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CalloutFailure {
    /// Nothing listens (connection refused): a `503` response, body `upstream connect error or
    /// disconnect/reset before headers. reset reason: remote connection failure`.
    Refused,
    /// The upstream accepts the connection and closes it before answering: a `503` response,
    /// body `... reset reason: connection termination`.
    Reset,
    /// No answer: the callout times out when its timeout elapses in virtual time (a `504
    /// upstream request timeout` response); without a timeout it never completes.
    Timeout,
    /// The upstream closes the connection after the response headers: the async client fails,
    /// and the module gets zero headers and `proxy_get_status` `BrokenConnection` (`reset`).
    ResetAfterHeaders,
}

/// What happened (printed on stdout).
#[derive(Debug, Serialize)]
pub struct ExchangeOutput {
    /// Always [`FORMAT_VERSION`].
    pub format: u32,
    /// Each callback the exchange drove, in order.
    pub phases: Vec<PhaseOutput>,
    /// The local reply, when the filter (or Envoy, for a failed VM) answered itself.
    pub local_reply: Option<LocalReplyOutput>,
    /// The request as the filter left it: what the upstream receives.
    pub request: MessageOutput,
    /// The response as the filter left it: what the client receives. For a local reply, the
    /// reply; when the request never reached the upstream and no reply was sent, empty.
    pub response: MessageOutput,
    /// Every HTTP callout the filter dispatched, in order.
    pub callouts: Vec<CalloutOutput>,
    /// Every metric the filter defined, by name.
    pub metrics: BTreeMap<String, MetricOutput>,
    /// Every log line of the module, in order.
    pub logs: Vec<LogOutput>,
    /// The crash of the VM during the exchange, if it crashed. The exchange then went on as
    /// Envoy's failure policy dictates (a 503 `wasm_fail_stream` reply when failing closed).
    pub vm_failure: Option<VmFailureOutput>,
}

/// How the VM crashed.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct VmFailureOutput {
    /// `trap`, `memory_limit`, `fuel_exhausted` or `resource_limit` (a host-side cap of the
    /// harness: shared data, queues, callouts per callback).
    pub kind: &'static str,
    /// The callback that was running.
    pub callback: String,
    /// What happened.
    pub message: String,
    /// The wasm stack, innermost frame first.
    pub backtrace: Vec<String>,
}

/// One callback and what it returned.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PhaseOutput {
    /// `request_headers`, `request_body`, `request_trailers`, `response_headers`, ...
    pub phase: &'static str,
    /// What the module returned, snake_case (`continue`, `pause`, `stop_iteration_no_buffer`, ...).
    pub action: String,
    /// Whether the module's callback ran (false once the VM failed or the stream ended).
    pub invoked: bool,
}

/// A local reply.
#[derive(Debug, Serialize)]
pub struct LocalReplyOutput {
    /// HTTP status.
    pub status: u32,
    /// Headers the client receives.
    pub headers: Vec<(String, String)>,
    /// Body (UTF-8, invalid bytes replaced).
    pub body: String,
    /// Response code details.
    pub details: String,
    /// gRPC status, for gRPC replies.
    pub grpc_status: Option<i32>,
}

/// Headers and body of one direction.
#[derive(Debug, Serialize, Default)]
pub struct MessageOutput {
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body (UTF-8, invalid bytes replaced).
    pub body: String,
}

/// One HTTP callout.
#[derive(Debug, Serialize, Clone)]
pub struct CalloutOutput {
    /// Target cluster.
    pub cluster: String,
    /// Request headers of the callout.
    pub headers: Vec<(String, String)>,
    /// Request body of the callout (UTF-8, invalid bytes replaced).
    pub body: String,
    /// Timeout the filter set.
    pub timeout_ms: u128,
    /// How it was answered: `response`, `refused`, `reset`, `timeout`, `reset_after_headers`,
    /// or `unmatched` (no mock matched: answered as `refused`, what Envoy answers when nothing
    /// listens behind the cluster).
    pub answer: &'static str,
}

/// A metric: its value, and the names Envoy shows it under.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MetricOutput {
    /// The value.
    #[serde(flatten)]
    pub value: MetricValueOutput,
    /// The name in Envoy's admin `/stats` (`wasmcustom.<name>`).
    pub envoy_stat: String,
    /// The name in Envoy's Prometheus output (`/stats/prometheus`).
    pub prometheus: String,
}

/// A metric value.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetricValueOutput {
    /// A counter.
    Counter {
        /// Its value.
        value: u64,
    },
    /// A gauge.
    Gauge {
        /// Its value.
        value: u64,
    },
    /// A histogram.
    Histogram {
        /// Every recorded value.
        values: Vec<u64>,
    },
}

/// One log line.
#[derive(Debug, Serialize)]
pub struct LogOutput {
    /// `trace`, `debug`, `info`, `warn`, `error` or `critical`.
    pub level: String,
    /// The message.
    pub message: String,
    /// Whether one of the VMs Envoy runs on its main thread beside the workers logged it (their
    /// start-ups and ticks; they never see a request). Left out for a worker's line.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub main_thread: bool,
}

/// Pretty JSON, fields in declaration order, with arrays of scalars on one line so that
/// `[name, value]` header pairs read as one line each.
pub fn to_pretty_json(value: &impl Serialize) -> serde_json::Result<String> {
    let expanded = serde_json::to_string_pretty(value)?;
    Ok(inline_scalar_arrays(&expanded))
}

/// Joins the lines of every array whose elements are all scalars. Works on serde_json's pretty
/// output, where each element sits on its own line, indented one level deeper than the brackets,
/// and no string spans lines.
fn inline_scalar_arrays(pretty: &str) -> String {
    let lines: Vec<&str> = pretty.lines().collect();
    let indentation = |line: &str| line.len() - line.trim_start().len();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut rest = lines.as_slice();
    while let Some((&line, after)) = rest.split_first() {
        rest = after;
        if line.ends_with('[') {
            let depth = indentation(line);
            let closing = after.iter().position(|candidate| {
                indentation(candidate) == depth && candidate.trim_start().starts_with(']')
            });
            // The elements, the closing line, and what follows it.
            if let Some((elements, [closing_line, remaining @ ..])) =
                closing.and_then(|offset| after.split_at_checked(offset))
            {
                let all_scalars = elements.iter().all(|element| {
                    indentation(element) > depth
                        && !element.ends_with('[')
                        && !element.ends_with('{')
                });
                if all_scalars {
                    let joined: Vec<&str> = elements.iter().map(|element| element.trim()).collect();
                    let closing_line = closing_line.trim_start();
                    out.push(format!("{line}{}{closing_line}", joined.join(" ")));
                    rest = remaining;
                    continue;
                }
            }
        }
        out.push(line.to_string());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ExchangeInput, String> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| error.to_string())
    }

    #[test]
    fn a_log_line_says_main_thread_only_when_the_main_thread_logged_it() {
        let line = |main_thread| LogOutput {
            level: "info".to_string(),
            message: "started".to_string(),
            main_thread,
        };
        assert_eq!(
            serde_json::to_value(line(false)).ok(),
            Some(serde_json::json!({"level": "info", "message": "started"}))
        );
        assert_eq!(
            serde_json::to_value(line(true)).ok(),
            Some(serde_json::json!({"level": "info", "message": "started", "main_thread": true}))
        );
    }

    #[test]
    fn pretty_json_keeps_scalar_arrays_on_one_line_and_round_trips() {
        let value = serde_json::json!({
            "headers": [[":status", "200"], ["x-a", "quote \" and \\n"]],
            "empty": [], "nested": {}, "n": 1, "list": [{"a": null}],
        });

        let text = to_pretty_json(&value).unwrap();

        assert!(text.contains("\n    [\":status\", \"200\"],\n"), "{text}");
        assert!(text.contains("\"empty\": [],"), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }

    #[test]
    fn headers_accept_pairs_and_objects_in_document_order() {
        let pairs =
            parse(r#"{"request": {"headers": [["b", "1"], ["a", "2"], ["b", "3"]]}}"#).unwrap();
        let object = parse(r#"{"request": {"headers": {"b": "1", "a": "2"}}}"#).unwrap();

        assert_eq!(
            pairs.request.headers.as_pairs(),
            [("b", "1"), ("a", "2"), ("b", "3")]
        );
        assert_eq!(object.request.headers.as_pairs(), [("b", "1"), ("a", "2")]);
    }

    #[test]
    fn errors_name_the_json_path() {
        let error = parse(r#"{"request": {"headers": [["a", "1"], ["b", 2]]}}"#).unwrap_err();
        assert!(error.starts_with("request.headers[1]"), "{error}");

        let error = parse(r#"{"request": {"headers": {}, "bdy": "x"}}"#).unwrap_err();
        assert!(error.starts_with("request"), "{error}");
        assert!(error.contains("unknown field `bdy`"), "{error}");

        let error = parse(
            r#"{"request": {"headers": {}}, "callouts": [{"cluster": "c", "fail": "boom"}]}"#,
        )
        .unwrap_err();
        assert!(error.starts_with("callouts[0].fail"), "{error}");
    }

    #[test]
    fn property_values_keep_their_json_type() {
        let input = parse(
            r#"{"request": {"headers": {}}, "properties": [
                {"path": ["a"], "value": "text"}, {"path": ["b"], "value": -3},
                {"path": ["c"], "value": 18446744073709551615}, {"path": ["d"], "value": 1.5},
                {"path": ["e"], "value": true}, {"path": ["f"], "value": {"k": "v"}}]}"#,
        )
        .unwrap();

        let values: Vec<_> = input.properties.into_iter().map(|p| p.value).collect();
        assert_eq!(
            values,
            [
                PropertyValueInput::String("text".into()),
                PropertyValueInput::Int(-3),
                PropertyValueInput::Uint(u64::MAX),
                PropertyValueInput::Double(1.5),
                PropertyValueInput::Bool(true),
                PropertyValueInput::Map(vec![("k".into(), "v".into())]),
            ]
        );
    }

    #[test]
    fn validation_checks_format_and_callout_answers() {
        let wrong_format = parse(r#"{"format": 2, "request": {"headers": {}}}"#).unwrap();
        let error = wrong_format.validate().unwrap_err().to_string();
        assert!(error.contains("format 2"), "{error}");

        let both = parse(
            r#"{"request": {"headers": {}}, "callouts": [
                {"cluster": "c", "fail": "reset"},
                {"cluster": "c", "fail": "reset", "response": {"headers": {}}}]}"#,
        )
        .unwrap();
        let error = both.validate().unwrap_err().to_string();
        assert!(error.starts_with("callouts[1]:"), "{error}");

        let undeclared = parse(
            r#"{"request": {"headers": {}}, "clusters": ["authz"], "callouts": [
                {"cluster": "authz", "fail": "refused"}, {"cluster": "authx", "fail": "reset"}]}"#,
        )
        .unwrap();
        let error = undeclared.validate().unwrap_err().to_string();
        assert!(error.starts_with("callouts[1].cluster: `authx`"), "{error}");
    }

    #[test]
    fn mocks_match_cluster_and_optional_path() {
        let input = parse(
            r#"{"request": {"headers": {}}, "callouts": [
                {"cluster": "jwks", "path": "/keys", "fail": "reset"}, {"cluster": "authz", "fail": "timeout"}]}"#,
        )
        .unwrap();
        let keys = vec![(":path".to_string(), "/keys".to_string())];
        let other = vec![(":path".to_string(), "/other".to_string())];

        assert!(input.callouts[0].matches("jwks", &keys));
        assert!(!input.callouts[0].matches("jwks", &other));
        assert!(!input.callouts[0].matches("authz", &keys));
        assert!(input.callouts[1].matches("authz", &other));
    }
}
