//! Envoy 1.40's built-in foreign functions (`source/extensions/common/wasm/foreign.cc`), as a
//! module reaches them with `proxy_call_foreign_function`. Each was measured in a real Envoy
//! 1.40 by `tests/foreign_functions_vs_envoy.rs`.
//!
//! - `compress`, `uncompress`: zlib's `compress` (level 6, a zlib stream) and `uncompress`.
//!   Envoy 1.40 links zlib-ng, whose output differs from classic zlib's and from miniz's
//!   (100 KB of the test's data: 44522 bytes in Envoy and with zlib-rs, 43336 with zlib 1.2.13,
//!   42971 with miniz_oxide), so the harness uses zlib-rs, a port of zlib-ng that produces the
//!   same bytes. A stream that does not inflate (garbage, truncated, bad checksum, nothing) is
//!   `SerializationFailure`; bytes after a complete stream are ignored, as zlib's
//!   `uncompress` does.
//! - `declare_property`: a `DeclarePropertyArguments` message; `readonly` properties set with
//!   `proxy_set_property` cannot be set again in that stream (`BadArgument`). A declaration
//!   belongs to the context that makes it, and `proxy_set_property` consults the root context's
//!   only, so one made from a stream context has no effect (but a second one of the same name in
//!   that context is still `BadArgument`).
//! - `set_envoy_filter_state`: a `SetEnvoyFilterStateArguments` message naming one of Envoy
//!   1.40's filter state object factories ([`FILTER_STATE_OBJECTS`]); other names are
//!   `NotFound`, and so is any call from a root context (no stream info).
//! - `clear_route_cache`: `Ok` anywhere; the harness has no routes, it counts the calls
//!   ([`crate::HttpStream::route_cache_clears`]).
//! - `expr_evaluate`, `expr_delete` (CEL): an argument that is not a 4-byte token is
//!   `BadArgument`; since the harness creates no expressions, every token is unknown
//!   (`NotFound` to evaluate, `Ok` to delete, as Envoy answers for an unknown token).
//!   `expr_create` would need a CEL parser and evaluator: it answers `Unimplemented`.
//! - `sign`, `verify_signature`: arguments that do not parse, or carry no key (or both a PEM
//!   and a DER key), are `BadArgument` as in Envoy; signing and verifying with a key answer
//!   `Unimplemented` (no crypto here).

use std::collections::HashMap;

use crate::error::Status;
use crate::vm::VmState;

/// Filter state object factories Envoy 1.40 registers (its startup log, `filter_state.object`).
pub(crate) const FILTER_STATE_OBJECTS: &[&str] = &[
    "envoy.ai.llm_protocol.request",
    "envoy.ai.model.request",
    "envoy.bool",
    "envoy.filters.listener.original_dst.local_ip",
    "envoy.filters.listener.original_dst.remote_ip",
    "envoy.hashable_string",
    "envoy.network.application_protocols",
    "envoy.network.ip",
    "envoy.network.network_namespace",
    "envoy.network.transport_socket.http_11_proxy.info",
    "envoy.network.transport_socket.original_dst_address",
    "envoy.network.upstream_server_name",
    "envoy.network.upstream_subject_alt_names",
    "envoy.ratelimit.hits_addend",
    "envoy.router.debug_config",
    "envoy.string",
    "envoy.tcp_proxy.cluster",
    "envoy.tcp_proxy.disable_tunneling",
    "envoy.tcp_proxy.per_connection_idle_timeout_ms",
    "envoy.upstream.dynamic_host",
    "envoy.upstream.dynamic_port",
];

/// What a built-in answers: the status, and the result it allocated in the module, if any
/// (Envoy allocates even an empty result, with `malloc(0)`, when the function produced one).
pub(crate) type Answer = (Status, Option<Vec<u8>>);

/// Runs the built-in foreign function `name`, or `None` if Envoy 1.40 has none of that name.
pub(crate) fn call_builtin(state: &mut VmState, name: &[u8], args: &[u8]) -> Option<Answer> {
    let answer = match name {
        b"compress" => compress(args),
        b"uncompress" => uncompress(args, state.limiter.max_bytes),
        b"declare_property" => (declare_property(state, args), None),
        b"set_envoy_filter_state" => (set_envoy_filter_state(state, args), None),
        b"clear_route_cache" => {
            let context = state.active_context();
            if let Some(exchange) = state.exchange_mut(context) {
                exchange.route_cache_clears = exchange.route_cache_clears.saturating_add(1);
            }
            (Status::Ok, None)
        }
        b"expr_create" => (Status::Unimplemented, None),
        b"expr_evaluate" => {
            let code = if args.len() == 4 {
                Status::NotFound
            } else {
                Status::BadArgument
            };
            (code, None)
        }
        b"expr_delete" => {
            let code = if args.len() == 4 {
                Status::Ok
            } else {
                Status::BadArgument
            };
            (code, None)
        }
        b"sign" => (crypto(args, 2, 4), None),
        b"verify_signature" => (crypto(args, 2, 5), None),
        _ => return None,
    };
    Some(answer)
}

/// Envoy: `compress(compressBound(n))`, any zlib error `SerializationFailure`.
fn compress(args: &[u8]) -> Answer {
    let mut output = vec![0u8; zlib_rs::compress_bound(args.len())];
    let (compressed, code) =
        zlib_rs::compress_slice(&mut output, args, zlib_rs::DeflateConfig::default());
    if code != zlib_rs::ReturnCode::Ok {
        return (Status::SerializationFailure, None);
    }
    let len = compressed.len();
    output.truncate(len);
    (Status::Ok, Some(output))
}

/// Envoy: `uncompress` into `2n + 2` bytes, doubled while zlib answers `Z_BUF_ERROR`; any other
/// error is `SerializationFailure`. The harness stops doubling past the VM's memory cap (the
/// result could not be copied into the module anyway; Envoy would crash there).
fn uncompress(args: &[u8], max_bytes: u64) -> Answer {
    // A wasm32 module holds at most 4 GiB.
    let cap = usize::try_from(max_bytes.min(u64::from(u32::MAX))).unwrap_or(usize::MAX);
    let mut size = args.len().saturating_mul(2).saturating_add(2);
    loop {
        let mut output = vec![0u8; size];
        let (inflated, code) =
            zlib_rs::decompress_slice(&mut output, args, zlib_rs::InflateConfig::default());
        match code {
            zlib_rs::ReturnCode::Ok => {
                let len = inflated.len();
                output.truncate(len);
                return (Status::Ok, Some(output));
            }
            zlib_rs::ReturnCode::BufError if size <= cap => size = size.saturating_mul(2),
            _ => return (Status::SerializationFailure, None),
        }
    }
}

/// Envoy's `declare_property`: stored on the calling context (`current_context_`, not the
/// effective one); a second declaration of a name there is `BadArgument`.
fn declare_property(state: &mut VmState, args: &[u8]) -> Status {
    let Some(fields) = parse_message(args, &[1]) else {
        return Status::BadArgument;
    };
    let name = last_bytes(&fields, 1).unwrap_or_default().to_vec();
    let readonly = last_varint(&fields, 2).is_some_and(|v| v != 0);
    let declared = state
        .declared_properties
        .entry(state.current_context)
        .or_default();
    if declared.contains_key(&name) {
        return Status::BadArgument;
    }
    declared.insert(name, DeclaredProperty { readonly });
    Status::Ok
}

/// Envoy's `set_envoy_filter_state`: the factory is looked up first (`NotFound`), then the
/// stream (`NotFound` from a root context).
fn set_envoy_filter_state(state: &mut VmState, args: &[u8]) -> Status {
    let Some(fields) = parse_message(args, &[1, 2]) else {
        return Status::BadArgument;
    };
    let path = last_bytes(&fields, 1).unwrap_or_default();
    let value = last_bytes(&fields, 2).unwrap_or_default().to_vec();
    if !FILTER_STATE_OBJECTS
        .iter()
        .any(|known| known.as_bytes() == path)
    {
        return Status::NotFound;
    }
    let path = path.to_vec();
    let context = state.active_context();
    match state.exchange_mut(context) {
        Some(exchange) => {
            exchange.envoy_filter_state.insert(path, value);
            Status::Ok
        }
        None => Status::NotFound,
    }
}

/// `sign` and `verify_signature`: `BadArgument` unless the message parses and carries exactly
/// one key (a DER key in field `der`, a PEM key in field `pem`); past that Envoy signs or
/// verifies, which the harness does not.
fn crypto(args: &[u8], der: u64, pem: u64) -> Status {
    let Some(fields) = parse_message(args, &[1, pem]) else {
        return Status::BadArgument;
    };
    let has = |number| last_bytes(&fields, number).is_some_and(|key| !key.is_empty());
    if has(der) == has(pem) {
        return Status::BadArgument;
    }
    Status::Unimplemented
}

/// A property declared with `declare_property`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeclaredProperty {
    /// Set once per stream.
    pub(crate) readonly: bool,
}

/// Declarations per context id.
pub(crate) type Declarations = HashMap<u32, HashMap<Vec<u8>, DeclaredProperty>>;

/// A field of a parsed message: its number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Parses a protobuf message as the C++ runtime Envoy uses does: `None` if it is not well
/// formed, or if one of the proto3 `string` fields `strings` is not UTF-8. A field of an
/// unexpected wire type is an unknown field there, so it is kept but never read as the field.
fn parse_message<'a>(bytes: &'a [u8], strings: &[u64]) -> Option<Vec<(u64, Field<'a>)>> {
    let mut fields = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let key = read_varint(&mut rest)?;
        let number = key >> 3;
        if number == 0 {
            return None;
        }
        let field = match key & 7 {
            0 => Field::Varint(read_varint(&mut rest)?),
            1 => {
                rest = rest.get(8..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(read_varint(&mut rest)?).ok()?;
                let value = rest.get(..len)?;
                rest = rest.get(len..)?;
                if strings.contains(&number) && std::str::from_utf8(value).is_err() {
                    return None;
                }
                Field::Bytes(value)
            }
            5 => {
                rest = rest.get(4..)?;
                Field::Fixed
            }
            _ => return None,
        };
        fields.push((number, field));
    }
    Some(fields)
}

fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, tail) = rest.split_first()?;
        *rest = tail;
        if shift < 64 {
            value |= u64::from(byte & 0x7f) << shift;
        }
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The last occurrence of a length-delimited field (proto3: the last one wins).
fn last_bytes<'a>(fields: &[(u64, Field<'a>)], number: u64) -> Option<&'a [u8]> {
    fields.iter().rev().find_map(|(n, field)| match field {
        Field::Bytes(value) if *n == number => Some(*value),
        _ => None,
    })
}

/// The last occurrence of a varint field.
fn last_varint(fields: &[(u64, Field<'_>)], number: u64) -> Option<u64> {
    fields.iter().rev().find_map(|(n, field)| match field {
        Field::Varint(value) if *n == number => Some(*value),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn compress_round_trips_and_matches_zlib_ng() {
        let (code, out) = compress(b"hello");
        assert_eq!(code, Status::Ok);
        // Envoy 1.40's bytes for "hello".
        assert_eq!(
            out.unwrap(),
            [0x78, 0x9c, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x06, 0x2c, 0x02, 0x15]
        );
        let (_, packed) = compress(&[7u8; 100_000]);
        let (code, out) = uncompress(&packed.unwrap(), u64::MAX);
        assert_eq!((code, out.map(|o| o.len())), (Status::Ok, Some(100_000)));
        assert_eq!(uncompress(b"", u64::MAX).0, Status::SerializationFailure);
    }

    #[test]
    fn messages_parse_as_protobuf_does() {
        assert!(parse_message(b"", &[1]).is_some());
        assert!(parse_message(b"\xff\xff\xff", &[1]).is_none());
        assert!(parse_message(b"\x0a\x01\xff", &[1]).is_none());
        assert!(parse_message(b"\x0a\x01\xff", &[]).is_some());
        let fields = parse_message(b"\x0a\x02ro\x10\x01", &[1]).unwrap();
        assert_eq!(last_bytes(&fields, 1), Some(&b"ro"[..]));
        assert_eq!(last_varint(&fields, 2), Some(1));
    }
}
