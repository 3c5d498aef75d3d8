//! Header maps as Envoy's `HeaderMapImpl` behaves: lower-case keys, pseudo-headers kept before
//! regular headers, repeated keys kept in insertion order; and which map a hostcall may touch
//! at a given moment (Envoy's `getMap`/`getConstMap`).

use crate::error::Status;
use crate::vm::{StreamKind, VmState};

/// `proxy_map_type_t`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub(crate) fn from_code(code: u32) -> Option<MapType> {
        Some(match code {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Adds a header: pseudo-headers go after the existing pseudo-headers, others at the end.
pub(crate) fn add_header(map: &mut Vec<(String, String)>, key: &str, value: &str) {
    let key = key.to_ascii_lowercase();
    if key.starts_with(':') {
        let position = map.iter().take_while(|(k, _)| k.starts_with(':')).count();
        map.insert(position, (key, value.to_string()));
    } else {
        map.push((key, value.to_string()));
    }
}

/// Removes every header with this key.
pub(crate) fn remove_header(map: &mut Vec<(String, String)>, key: &str) {
    let key = key.to_ascii_lowercase();
    map.retain(|(k, _)| *k != key);
}

/// Envoy's `setCopy`: removes every header with this key, then adds it once.
pub(crate) fn replace_header(map: &mut Vec<(String, String)>, key: &str, value: &str) {
    remove_header(map, key);
    add_header(map, key, value);
}

/// The first value of a key (Envoy returns `entry[0]` for repeated keys; it does not join them).
pub(crate) fn header_value<'a>(map: &'a [(String, String)], key: &str) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    map.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
}

/// Envoy's `HeaderMap::byteSize`: the sum of key and value lengths.
pub(crate) fn byte_size(map: &[(String, String)]) -> u32 {
    let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// The map a read hostcall sees (`getConstMap`); `None` when it is not available now.
pub(crate) fn readable(
    state: &VmState,
    context: u32,
    map: MapType,
) -> Option<Vec<(String, String)>> {
    match map {
        MapType::GrpcInitialMetadata => return state.grpc_initial_metadata.clone(),
        MapType::GrpcTrailingMetadata => return state.grpc_trailing_metadata.clone(),
        MapType::HttpCallResponseHeaders => {
            return state.http_call_response.as_ref().map(|r| r.headers.clone())
        }
        MapType::HttpCallResponseTrailers => {
            return state
                .http_call_response
                .as_ref()
                .map(|r| r.trailers.clone())
        }
        _ => {}
    }
    let exchange = state.exchange(context)?;
    let (kind, is_trailers) = stream_map(map)?;
    let direction = exchange.direction(kind);
    if exchange.access_log_phase {
        // During proxy_on_log Envoy reads the access-log view of the exchange; request
        // trailers are not part of it.
        return match (kind, is_trailers) {
            (StreamKind::Request, true) => None,
            (_, false) => direction
                .headers_received
                .then(|| direction.headers.clone()),
            (_, true) => direction.trailers.clone(),
        };
    }
    if is_trailers {
        direction
            .trailers_available
            .then(|| direction.trailers.clone().unwrap_or_default())
    } else {
        direction
            .headers_available
            .then(|| direction.headers.clone())
    }
}

/// The map a write hostcall may modify (`getMap`); `None` when it is not available now.
/// Trailers can be created while the last body chunk is being processed, as in Envoy
/// (`addDecodedTrailers`/`addEncodedTrailers`).
pub(crate) fn writable(
    state: &mut VmState,
    context: u32,
    map: MapType,
) -> Option<&mut Vec<(String, String)>> {
    let (kind, is_trailers) = stream_map(map)?;
    let exchange = state.exchange_mut(context)?;
    if exchange.access_log_phase {
        return None;
    }
    let end_of_stream = exchange.end_of_stream;
    let direction = exchange.direction_mut(kind);
    if is_trailers {
        if !direction.trailers_available
            && direction.trailers.is_none()
            && direction.chunk_available
            && end_of_stream
        {
            direction.trailers = Some(Vec::new());
            direction.trailers_available = true;
        }
        if direction.trailers_available {
            return direction.trailers.as_mut();
        }
        return None;
    }
    if direction.headers_available {
        Some(&mut direction.headers)
    } else {
        None
    }
}

fn stream_map(map: MapType) -> Option<(StreamKind, bool)> {
    match map {
        MapType::RequestHeaders => Some((StreamKind::Request, false)),
        MapType::RequestTrailers => Some((StreamKind::Request, true)),
        MapType::ResponseHeaders => Some((StreamKind::Response, false)),
        MapType::ResponseTrailers => Some((StreamKind::Response, true)),
        _ => None,
    }
}

/// Status of `proxy_get_header_map_value` when the map is not available: Envoy answers
/// `NotFound` in the access-log phase and `BadArgument` otherwise.
pub(crate) fn unavailable_status(state: &VmState, context: u32) -> Status {
    if state.exchange(context).is_some_and(|e| e.access_log_phase) {
        Status::NotFound
    } else {
        Status::BadArgument
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pseudo_headers_stay_in_front_and_keys_are_lowercased() {
        let mut m = map(&[(":method", "GET"), ("a", "1")]);
        add_header(&mut m, ":Path", "/x");
        add_header(&mut m, "B", "2");
        assert_eq!(
            m,
            map(&[(":method", "GET"), (":path", "/x"), ("a", "1"), ("b", "2")])
        );
    }

    #[test]
    fn replace_removes_all_repeats_and_get_returns_first() {
        let mut m = map(&[("x", "1"), ("y", "0"), ("x", "2")]);
        assert_eq!(header_value(&m, "X"), Some("1"));
        replace_header(&mut m, "x", "3");
        assert_eq!(m, map(&[("y", "0"), ("x", "3")]));
        assert_eq!(byte_size(&m), 4);
    }
}
