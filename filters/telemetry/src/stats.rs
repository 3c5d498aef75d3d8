//! Stat names that Envoy turns into labelled Prometheus series.
//!
//! proxy-wasm metrics have a name and no tags, so the dimensions travel inside the name, in the
//! encoding of Istio's stats plugin: `<dim>=.=<value>;.;` for every dimension, then the metric
//! name:
//!
//! ```text
//! reporter=.=destination;.;source_workload=.=sleep;.;…;.;istio_requests_total
//! ```
//!
//! Envoy files it as `wasmcustom.reporter=.=destination;.;…;.;istio_requests_total`; its tag
//! extractors (`stats_config.stats_tags`, one `(<dim>=\.=(.*?);\.;)` regex per dimension, see
//! [`stats_tags`]) cut every `<dim>=.=<value>;.;` out of the name and make it a tag, leaving
//! `wasmcustom.istio_requests_total`; the Prometheus endpoint drops the `wasmcustom.` namespace
//! and prints `istio_requests_total{reporter="destination",source_workload="sleep",…}`.
//!
//! Values must not be able to forge a separator (a client-chosen `Host` header would otherwise
//! inject or override dimensions), so `;` and `=` in values become `_` ([`sanitize_value`]).

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::config::{FIELD_SEPARATOR, VALUE_SEPARATOR};

/// Replaces the characters that make up separators (`;` and `=`) with `_`.
pub fn sanitize_value(value: &str) -> Cow<'_, str> {
    if value.contains([';', '=']) {
        Cow::Owned(value.replace([';', '='], "_"))
    } else {
        Cow::Borrowed(value)
    }
}

/// `istio_requests_total`: the prefix and the metric name (just the name without a prefix).
pub fn metric_name(prefix: &str, metric: &str) -> String {
    if prefix.is_empty() {
        metric.to_string()
    } else {
        format!("{prefix}_{metric}")
    }
}

/// The stat name of one series: every `(dimension, value)` then the metric name.
pub fn encode_stat_name(metric: &str, tags: &[(&str, &str)]) -> String {
    let mut name = String::with_capacity(
        metric.len()
            + tags
                .iter()
                .map(|(tag, value)| tag.len() + value.len() + 6)
                .sum::<usize>(),
    );
    for (tag, value) in tags {
        name.push_str(tag);
        name.push_str(VALUE_SEPARATOR);
        name.push_str(&sanitize_value(value));
        name.push_str(FIELD_SEPARATOR);
    }
    name.push_str(metric);
    name
}

/// Splits a stat name made by [`encode_stat_name`] back into metric name and dimensions.
pub fn decode_stat_name(name: &str) -> (String, Vec<(String, String)>) {
    let mut tags = Vec::new();
    let mut rest = name;
    while let Some((field, after)) = rest.split_once(FIELD_SEPARATOR) {
        let Some((tag, value)) = field.split_once(VALUE_SEPARATOR) else {
            break;
        };
        tags.push((tag.to_string(), value.to_string()));
        rest = after;
    }
    (rest.to_string(), tags)
}

/// The regex extracting `dimension` from stat names (Istio's convention).
pub fn tag_regex(dimension: &str) -> String {
    format!(r"({dimension}=\.=(.*?);\.;)")
}

/// Envoy's `stats_config.stats_tags` entries for these dimensions, as JSON.
pub fn stats_tags(dimensions: &[String]) -> Value {
    Value::Array(
        dimensions
            .iter()
            .map(|dimension| json!({"tag_name": dimension, "regex": tag_regex(dimension)}))
            .collect(),
    )
}

/// Envoy's response flags (`%RESPONSE_FLAGS%` short names), by bit of the `response.flags`
/// attribute (`CoreResponseFlag` in `envoy/stream_info/stream_info.h`).
pub const RESPONSE_FLAGS: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// The short form of a `response.flags` bitmask: names joined with `,`, `-` when none.
pub fn response_flags(bits: u64) -> String {
    let names: Vec<&str> = RESPONSE_FLAGS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bits & (1u64 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

/// gRPC status of an HTTP status when the response carried none (Envoy's
/// `Grpc::Utility::httpToGrpcStatus`).
pub fn grpc_status_of_http(status: u32) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_values_cannot_forge_separators() {
        let name = encode_stat_name(
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("destination_service", "a.b.svc"),
            ],
        );
        assert_eq!(
            name,
            "reporter=.=destination;.;destination_service=.=a.b.svc;.;istio_requests_total"
        );
        assert_eq!(
            decode_stat_name(&name),
            (
                "istio_requests_total".to_string(),
                vec![
                    ("reporter".to_string(), "destination".to_string()),
                    ("destination_service".to_string(), "a.b.svc".to_string())
                ]
            )
        );
        let forged = encode_stat_name(
            "m",
            &[("a", "x;.;reporter=.=source"), ("reporter", "destination")],
        );
        assert_eq!(
            forged,
            "a=.=x_._reporter_._source;.;reporter=.=destination;.;m"
        );
        assert_eq!(decode_stat_name(&forged).1.len(), 2);
        assert_eq!(metric_name("", "requests_total"), "requests_total");
        assert_eq!(
            metric_name("istio", "requests_total"),
            "istio_requests_total"
        );
    }

    #[test]
    fn stats_tags_follow_istio_regexes() {
        assert_eq!(
            stats_tags(&["reporter".to_string()]),
            json!([{"tag_name": "reporter", "regex": "(reporter=\\.=(.*?);\\.;)"}])
        );
    }

    #[test]
    fn response_flags_use_envoy_short_names() {
        assert_eq!(response_flags(0), "-");
        assert_eq!(response_flags(1 << 5), "UF");
        assert_eq!(response_flags((1 << 5) | (1 << 15)), "UF,URX");
        assert_eq!(response_flags(1 << 8), "NR");
        assert_eq!(response_flags(1 << 29), "UDO");
        assert_eq!(response_flags(1 << 40), "-");
        assert_eq!(RESPONSE_FLAGS.len(), 30);
    }

    #[test]
    fn http_statuses_map_to_grpc_statuses_like_envoy() {
        assert_eq!(grpc_status_of_http(503), 14);
        assert_eq!(grpc_status_of_http(403), 7);
        assert_eq!(grpc_status_of_http(200), 2);
    }
}
