//! `proxy_get_property`: Envoy 1.40's attribute paths and encodings (each checked against a real
//! Envoy by `tests/properties_vs_envoy.rs`).
//!
//! Lookup order follows Envoy's `Context::findValue`: values a test set for the stream, then
//! values set for the plugin, then the attributes Envoy derives from the exchange (`request.*`,
//! `response.*`, `source.*`, `destination.*`, `connection.*`, `connection_id`, `metadata`,
//! `plugin_*`), then filter state written by `proxy_set_property`. Configuration attributes
//! live under `xds.` only; their former top-level names are plain names in Envoy 1.40 (filter
//! state or `NotFound`). A root context has no stream info: only `plugin_*` and `xds.node`.
//!
//! Request-derived attributes read the request headers the way Envoy does: only while the filter
//! holds them (during `proxy_on_request_headers` and until it continues) or during
//! `proxy_on_log`. In `proxy_on_response_headers` of a request that continued, `request.path`
//! is `NotFound` in Envoy too, and `request.headers` an empty map.

use crate::error::Status;
use crate::property::PropertyValue;
use crate::shared::SharedState;
use crate::vm::{HttpExchange, VmState};

use super::maps::header_value;

/// Default downstream peer (Envoy's `source.address`).
pub(crate) const DEFAULT_SOURCE_ADDRESS: &str = "127.0.0.1:40000";
/// Default listener address (Envoy's `destination.address`).
pub(crate) const DEFAULT_DESTINATION_ADDRESS: &str = "127.0.0.1:10000";

/// Attributes Envoy 1.40 serves only under `xds.` (earlier versions also at the top level).
const XDS_ONLY: &[&str] = &[
    "node",
    "cluster_name",
    "cluster_metadata",
    "route_name",
    "route_metadata",
    "upstream_host_metadata",
    "listener_direction",
    "listener_metadata",
];

/// Resolves a NUL-separated property path for `context`.
pub(crate) fn resolve(
    state: &VmState,
    shared: &SharedState,
    context: u32,
    path: &[u8],
) -> Result<Vec<u8>, Status> {
    // An empty path names no attribute: Envoy serializes its empty (null) value and fails.
    if path.is_empty() {
        return Err(Status::SerializationFailure);
    }
    let parts: Vec<String> = path
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    // Envoy stops at the end of the buffer; a trailing NUL adds no empty segment.
    let parts: Vec<String> = match parts.split_last() {
        Some((last, rest)) if last.is_empty() && !rest.is_empty() => rest.to_vec(),
        _ => parts,
    };
    if parts.is_empty() || parts.iter().all(String::is_empty) {
        return Err(Status::NotFound);
    }
    let exchange = state.exchange(context);
    // Envoy 1.40 serves these only under `xds` (`xds.route_metadata`, ...): at the top level
    // they are plain names, found only as filter state a module wrote with `proxy_set_property`.
    if parts
        .first()
        .is_some_and(|top| XDS_ONLY.contains(&top.as_str()))
    {
        return filter_state(exchange, &parts).ok_or(Status::NotFound);
    }
    // A value a test set under the old top-level name (`["node", "id"]`) is served at its
    // `xds` path (`["xds", "node", "id"]`).
    let legacy: Option<Vec<String>> = match parts.split_first() {
        Some((top, rest))
            if top == "xds"
                && rest
                    .first()
                    .is_some_and(|name| XDS_ONLY.contains(&name.as_str())) =>
        {
            Some(rest.to_vec())
        }
        _ => None,
    };
    // A root context has no stream info: Envoy serves it the plugin's names and the node only.
    if exchange.is_none() && !available_in_root_context(&parts) {
        return Err(Status::NotFound);
    }
    for candidate in std::iter::once(&parts).chain(legacy.as_ref()) {
        if let Some(exchange) = exchange {
            if let Some(found) = lookup_override(&exchange.properties, candidate) {
                return found;
            }
        }
        if let Some(found) = lookup_override(&shared.settings.properties, candidate) {
            return found;
        }
    }
    if let Some(value) = derived(state, shared, exchange, &parts)? {
        return Ok(value.encode());
    }
    filter_state(exchange, &parts).ok_or(Status::NotFound)
}

/// Filter state written by `proxy_set_property`: Envoy keeps it as `wasm.<path>` (the whole
/// path written) and finds it by the first segment of a read, or as
/// `filter_state.wasm.<name>`; a bytes value has nothing below it. An object set with the
/// `set_envoy_filter_state` foreign function is found as `filter_state.<factory name>` only,
/// serialized as its string (the value given, for the string objects the harness can check).
fn filter_state(exchange: Option<&HttpExchange>, parts: &[String]) -> Option<Vec<u8>> {
    let exchange = exchange?;
    let name = match parts {
        [name] => name.as_str(),
        [top, key] if top == "filter_state" => match key.strip_prefix("wasm.") {
            Some(name) => name,
            None => return exchange.envoy_filter_state.get(key.as_bytes()).cloned(),
        },
        _ => return None,
    };
    exchange.filter_state.get(name.as_bytes()).cloned()
}

fn available_in_root_context(parts: &[String]) -> bool {
    match parts {
        [top] => matches!(
            top.as_str(),
            "plugin_name" | "plugin_root_id" | "plugin_vm_id" | "xds"
        ),
        [top, field, ..] => top == "xds" && field == "node",
        [] => false,
    }
}

fn lookup_override(
    values: &std::collections::BTreeMap<Vec<String>, PropertyValue>,
    parts: &[String],
) -> Option<Result<Vec<u8>, Status>> {
    for prefix_len in (1..=parts.len()).rev() {
        let Some(value) = parts.get(..prefix_len).and_then(|p| values.get(p)) else {
            continue;
        };
        let rest = parts.get(prefix_len..).unwrap_or_default();
        return Some(value.lookup(rest).unwrap_or(Err(Status::NotFound)));
    }
    None
}

fn derived(
    state: &VmState,
    shared: &SharedState,
    exchange: Option<&HttpExchange>,
    parts: &[String],
) -> Result<Option<PropertyValue>, Status> {
    let Some((top, rest)) = parts.split_first() else {
        return Ok(None);
    };
    let field = rest.first().map(String::as_str);
    if top == "metadata" {
        // The stream's dynamic metadata: empty unless a test sets `["metadata"]`.
        return match exchange {
            Some(_) => PropertyValue::Metadata(serde_json::Value::Object(serde_json::Map::new()))
                .lookup(rest)
                .unwrap_or(Err(Status::NotFound))
                .map(|bytes| Some(PropertyValue::Bytes(bytes))),
            None => Ok(None),
        };
    }
    if rest.len() > 1 && top != "request" && top != "response" {
        return Ok(None);
    }
    Ok(match (top.as_str(), field) {
        // Envoy's `xds` wrapper cannot be serialized as a whole, even in a root context.
        ("xds", None) => return Err(Status::SerializationFailure),
        ("connection_id", None) => exchange.map(|e| PropertyValue::Uint(e.connection_id)),
        ("plugin_name", None) => Some(shared.settings.plugin_name.clone().into()),
        ("plugin_root_id", None) => Some(shared.settings.root_id.clone().into()),
        ("plugin_vm_id", None) => Some(shared.settings.vm_id.clone().into()),
        ("request" | "response" | "source" | "destination" | "connection" | "upstream", None) => {
            // Envoy's wrappers for these attribute groups cannot be serialized as a whole.
            if exchange.is_some() {
                return Err(Status::SerializationFailure);
            }
            None
        }
        ("request", Some(field)) => match exchange {
            Some(e) => request_attribute(state, shared, e, field, rest.get(1)),
            None => None,
        },
        ("response", Some(field)) => match exchange {
            Some(e) => response_attribute(e, field, rest.get(1)),
            None => None,
        },
        ("source", Some(field)) => exchange.and_then(|e| address_attribute(e, "source", field)),
        ("destination", Some(field)) => {
            exchange.and_then(|e| address_attribute(e, "destination", field))
        }
        ("connection", Some(field)) => exchange.and_then(|e| connection_attribute(e, field)),
        _ => None,
    })
}

/// The request headers Envoy's attribute lookup sees right now.
fn request_headers(exchange: &HttpExchange) -> Option<&Vec<(String, String)>> {
    let request = &exchange.request;
    if request.headers_available || (exchange.access_log_phase && request.headers_received) {
        Some(&request.headers)
    } else {
        None
    }
}

fn response_headers(exchange: &HttpExchange) -> Option<&Vec<(String, String)>> {
    let response = &exchange.response;
    if response.headers_available || (exchange.access_log_phase && response.headers_received) {
        Some(&response.headers)
    } else {
        None
    }
}

fn as_map(headers: &[(String, String)]) -> PropertyValue {
    // A CEL map has one entry per key; Envoy joins repeated headers with a comma.
    let mut joined: Vec<(String, String)> = Vec::new();
    for (k, v) in headers {
        match joined.iter_mut().find(|(jk, _)| jk == k) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(v);
            }
            None => joined.push((k.clone(), v.clone())),
        }
    }
    PropertyValue::Map(joined)
}

fn map_entry(headers: &[(String, String)], key: Option<&String>) -> Option<PropertyValue> {
    let map = as_map(headers);
    match key {
        None => Some(map),
        Some(key) => match map {
            PropertyValue::Map(pairs) => pairs
                .into_iter()
                // Envoy looks a header up by its lower-cased name.
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| PropertyValue::String(v)),
            _ => None,
        },
    }
}

fn request_attribute(
    state: &VmState,
    shared: &SharedState,
    exchange: &HttpExchange,
    field: &str,
    key: Option<&String>,
) -> Option<PropertyValue> {
    let _ = state;
    let headers = request_headers(exchange);
    let header = |name: &str| {
        headers
            .and_then(|h| header_value(h, name))
            .map(str::to_string)
    };
    match field {
        "path" => header(":path").map(Into::into),
        "url_path" => {
            header(":path").map(|p| p.split('?').next().unwrap_or_default().to_string().into())
        }
        // Envoy drops a fragment from the query.
        "query" => header(":path").map(|p| {
            p.split_once('?')
                .map(|(_, q)| q.split('#').next().unwrap_or_default().to_string())
                .unwrap_or_default()
                .into()
        }),
        "host" => header(":authority").map(Into::into),
        "scheme" => header(":scheme").map(Into::into),
        "method" => header(":method").map(Into::into),
        "referer" => header("referer").map(Into::into),
        "useragent" => header("user-agent").map(Into::into),
        "id" => header("x-request-id").map(Into::into),
        "headers" => map_entry(headers.map(Vec::as_slice).unwrap_or_default(), key),
        "headers_bytes" => Some(PropertyValue::Int(
            headers
                .map(|h| i64::from(super::maps::byte_size(h)))
                .unwrap_or(0),
        )),
        "time" => Some(PropertyValue::Timestamp(shared.clock.at(exchange.start))),
        // Envoy knows the duration once the stream completed (`proxy_on_log`, `proxy_on_done`).
        "duration" => exchange.finished.then(|| {
            PropertyValue::Duration(shared.clock.elapsed().saturating_sub(exchange.start))
        }),
        "size" => match header("content-length") {
            // An invalid content-length gives no size at all in Envoy.
            Some(length) => length.parse::<i64>().ok().map(PropertyValue::Int),
            None => Some(PropertyValue::Int(
                i64::try_from(exchange.request.body_bytes_received).unwrap_or(i64::MAX),
            )),
        },
        "total_size" => {
            let header_bytes = headers
                .map(|h| u64::from(super::maps::byte_size(h)))
                .unwrap_or(0);
            Some(PropertyValue::Int(
                i64::try_from(exchange.request.body_bytes_received + header_bytes)
                    .unwrap_or(i64::MAX),
            ))
        }
        "protocol" => Some(PropertyValue::String("HTTP/1.1".into())),
        _ => None,
    }
}

fn response_attribute(
    exchange: &HttpExchange,
    field: &str,
    key: Option<&String>,
) -> Option<PropertyValue> {
    let headers = response_headers(exchange);
    match field {
        "code" => exchange
            .response_code
            .map(|c| PropertyValue::Int(i64::from(c))),
        "code_details" => exchange.response_code_details.clone().map(Into::into),
        // Envoy's legacy response flags, an int64.
        "flags" => Some(PropertyValue::Int(0)),
        "grpc_status" => {
            let trailers = exchange.response.trailers.as_deref().unwrap_or_default();
            // Envoy's order: trailers, headers, then the HTTP status mapped to a gRPC status.
            header_value(trailers, "grpc-status")
                .or_else(|| headers.and_then(|h| header_value(h, "grpc-status")))
                .map(grpc_status_value)
                .or_else(|| exchange.response_code.map(http_to_grpc_status))
                .map(PropertyValue::Int)
        }
        "headers" => map_entry(headers.map(Vec::as_slice).unwrap_or_default(), key),
        "headers_bytes" => Some(PropertyValue::Int(
            headers
                .map(|h| i64::from(super::maps::byte_size(h)))
                .unwrap_or(0),
        )),
        "trailers" => map_entry(
            exchange.response.trailers.as_deref().unwrap_or_default(),
            key,
        ),
        "size" => Some(PropertyValue::Int(
            i64::try_from(exchange.response.forwarded_body.len()).unwrap_or(i64::MAX),
        )),
        "total_size" => {
            let header_bytes = headers
                .map(|h| u64::from(super::maps::byte_size(h)))
                .unwrap_or(0)
                + exchange
                    .response
                    .trailers
                    .as_ref()
                    .map(|t| u64::from(super::maps::byte_size(t)))
                    .unwrap_or(0);
            let body = u64::try_from(exchange.response.forwarded_body.len()).unwrap_or(u64::MAX);
            Some(PropertyValue::Int(
                i64::try_from(body + header_bytes).unwrap_or(i64::MAX),
            ))
        }
        _ => None,
    }
}

/// A `grpc-status` value as Envoy reads it: a known code, else -1 (`InvalidCode`).
fn grpc_status_value(value: &str) -> i64 {
    match value.parse::<i64>() {
        Ok(code) if (0..=16).contains(&code) => code,
        _ => -1,
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(code: u32) -> i64 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

fn address_attribute(exchange: &HttpExchange, side: &str, field: &str) -> Option<PropertyValue> {
    let default = if side == "source" {
        DEFAULT_SOURCE_ADDRESS
    } else {
        DEFAULT_DESTINATION_ADDRESS
    };
    // The port derives from the address, like Envoy's single `Address` object.
    let address = match exchange
        .properties
        .get(&vec![side.to_string(), "address".to_string()])
    {
        Some(PropertyValue::String(a)) => a.clone(),
        _ => default.to_string(),
    };
    match field {
        "address" => Some(address.into()),
        "port" => address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<i64>().ok())
            .map(PropertyValue::Int),
        _ => None,
    }
}

fn connection_attribute(exchange: &HttpExchange, field: &str) -> Option<PropertyValue> {
    match field {
        "id" => Some(PropertyValue::Uint(exchange.connection_id)),
        "mtls" => Some(PropertyValue::Bool(false)),
        "requested_server_name" => Some(PropertyValue::String(String::new())),
        _ => None,
    }
}
