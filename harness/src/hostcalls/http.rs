//! Hostcalls of HTTP streams and callouts: header maps, buffers, local replies,
//! continue/close, HTTP calls and gRPC calls/streams.

use std::time::Duration;

use wasmtime::Caller;

use super::maps::{self, MapType};
use super::{
    copy_to_pointer_size, guard, lossy, note_copied, read_bytes, status, write_u32, HostResult,
    Registrar,
};
use crate::callouts::{
    CalloutStatus, GrpcCallout, GrpcCalloutRecord, HttpCallout, HttpCalloutRecord,
};
use crate::engine::AbiVersion;
use crate::error::{HarnessError, Status};
use crate::headermap;
use crate::shared::Event;
use crate::vm::{Deferred, GrpcTokenState, PendingLocalReply, StreamKind, VmState};

pub(crate) fn register(r: &mut Registrar<'_>, _abi: AbiVersion) -> Result<(), HarnessError> {
    r.func(
        "env",
        "proxy_get_header_map_value",
        proxy_get_header_map_value,
    )?;
    r.func(
        "env",
        "proxy_add_header_map_value",
        proxy_add_header_map_value,
    )?;
    r.func(
        "env",
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    r.func(
        "env",
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )?;
    r.func(
        "env",
        "proxy_get_header_map_pairs",
        proxy_get_header_map_pairs,
    )?;
    r.func(
        "env",
        "proxy_set_header_map_pairs",
        proxy_set_header_map_pairs,
    )?;
    r.func(
        "env",
        "proxy_get_header_map_size",
        proxy_get_header_map_size,
    )?;
    r.func("env", "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    r.func("env", "proxy_get_buffer_status", proxy_get_buffer_status)?;
    r.func("env", "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    r.func(
        "env",
        "proxy_send_local_response",
        proxy_send_local_response,
    )?;
    r.func("env", "proxy_continue_stream", proxy_continue_stream)?;
    r.func("env", "proxy_close_stream", proxy_close_stream)?;
    // ABI 0.1.0 names, kept because SDKs built for 0.2.0 still import them.
    r.func(
        "env",
        "proxy_continue_request",
        |caller: Caller<'_, VmState>| continue_stream(caller, StreamKind::Request),
    )?;
    r.func(
        "env",
        "proxy_continue_response",
        |caller: Caller<'_, VmState>| continue_stream(caller, StreamKind::Response),
    )?;
    r.func("env", "proxy_http_call", proxy_http_call)?;
    r.func("env", "proxy_grpc_call", proxy_grpc_call)?;
    r.func("env", "proxy_grpc_stream", proxy_grpc_stream)?;
    r.func("env", "proxy_grpc_send", proxy_grpc_send)?;
    r.func("env", "proxy_grpc_cancel", proxy_grpc_cancel)?;
    r.func("env", "proxy_grpc_close", proxy_grpc_close)?;
    Ok(())
}

// ----------------------------------------------------------------------------- header maps

fn proxy_get_header_map_value(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
    value_ptr_ptr: u32,
    value_size_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_header_map_value")?;
    let Some(map_type) = MapType::from_code(map_type) else {
        return status(Status::BadArgument);
    };
    let Some(key) = read_bytes(&caller, key_ptr, key_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let value = {
        let state = caller.data();
        let context = state.active_context();
        match maps::readable(state, context, map_type) {
            None => Err(maps::unavailable_status(state, context)),
            Some(map) => {
                note_map_work(state, &map);
                maps::header_value(&map, &lossy(&key))
            }
            .map(str::to_string)
            .ok_or(Status::NotFound),
        }
    };
    match value {
        Ok(value) => {
            if !copy_to_pointer_size(&mut caller, value.as_bytes(), value_ptr_ptr, value_size_ptr)?
            {
                return status(Status::InvalidMemoryAccess);
            }
            status(Status::Ok)
        }
        Err(code) => status(code),
    }
}

/// Reads key and value, then applies `edit` to the writable map (BadArgument if unavailable).
fn edit_map(
    mut caller: Caller<'_, VmState>,
    name: &str,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
    value: Option<(u32, u32)>,
    edit: fn(&mut Vec<(String, String)>, &str, &str),
) -> HostResult<u32> {
    guard(&mut caller, name)?;
    let Some(map_type) = MapType::from_code(map_type) else {
        return status(Status::BadArgument);
    };
    let Some(key) = read_bytes(&caller, key_ptr, key_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let value = match value {
        Some((ptr, len)) => match read_bytes(&caller, ptr, len) {
            Some(v) => v,
            None => return status(Status::InvalidMemoryAccess),
        },
        None => Vec::new(),
    };
    let state = caller.data_mut();
    let context = state.active_context();
    match maps::writable(state, context, map_type) {
        Some(map) => {
            edit(map, &lossy(&key), &lossy(&value));
            let work = map_work(map);
            note_copied(state, work);
            status(Status::Ok)
        }
        None => status(Status::BadArgument),
    }
}

/// Host work of scanning or cloning a header map: its bytes plus a per-entry overhead. Charged
/// so that a module that grows a map and then hammers it pays for what it costs the host
/// (every lookup and edit is linear in the map, as in Envoy).
fn map_work(map: &[(String, String)]) -> usize {
    map.iter()
        .map(|(key, value)| key.len() + value.len() + 16)
        .sum()
}

fn note_map_work(state: &VmState, map: &[(String, String)]) {
    note_copied(state, map_work(map));
}

fn proxy_add_header_map_value(
    caller: Caller<'_, VmState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> HostResult<u32> {
    edit_map(
        caller,
        "proxy_add_header_map_value",
        map_type,
        key_ptr,
        key_len,
        Some((value_ptr, value_len)),
        maps::add_header,
    )
}

fn proxy_replace_header_map_value(
    caller: Caller<'_, VmState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> HostResult<u32> {
    edit_map(
        caller,
        "proxy_replace_header_map_value",
        map_type,
        key_ptr,
        key_len,
        Some((value_ptr, value_len)),
        maps::replace_header,
    )
}

fn proxy_remove_header_map_value(
    caller: Caller<'_, VmState>,
    map_type: u32,
    key_ptr: u32,
    key_len: u32,
) -> HostResult<u32> {
    edit_map(
        caller,
        "proxy_remove_header_map_value",
        map_type,
        key_ptr,
        key_len,
        None,
        |map, key, _| maps::remove_header(map, key),
    )
}

fn proxy_get_header_map_pairs(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    ptr_ptr: u32,
    size_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_header_map_pairs")?;
    let Some(map_type) = MapType::from_code(map_type) else {
        return status(Status::BadArgument);
    };
    // An unavailable map reads as empty (Envoy's `headerMapToPairs(nullptr)`), and an empty map
    // is returned as (0, 0), not as a serialized zero count.
    let pairs = {
        let state = caller.data();
        let pairs = maps::readable(state, state.active_context(), map_type).unwrap_or_default();
        note_map_work(state, &pairs);
        pairs
    };
    let bytes = if pairs.is_empty() {
        Vec::new()
    } else {
        headermap::serialize(&pairs)
    };
    if !copy_to_pointer_size(&mut caller, &bytes, ptr_ptr, size_ptr)? {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

fn proxy_set_header_map_pairs(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    ptr: u32,
    len: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_set_header_map_pairs")?;
    let Some(map_type) = MapType::from_code(map_type) else {
        return status(Status::BadArgument);
    };
    let Some(bytes) = read_bytes(&caller, ptr, len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let pairs = headermap::pairs_to_strings(headermap::parse_lenient(&bytes));
    let state = caller.data_mut();
    let context = state.active_context();
    match maps::writable(state, context, map_type) {
        Some(map) => {
            map.clear();
            for (key, value) in &pairs {
                maps::add_header(map, key, value);
            }
            status(Status::Ok)
        }
        None => status(Status::BadArgument),
    }
}

fn proxy_get_header_map_size(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    size_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_header_map_size")?;
    let Some(map_type) = MapType::from_code(map_type) else {
        return status(Status::BadArgument);
    };
    let size = {
        let state = caller.data_mut();
        let context = state.active_context();
        // Envoy uses the mutable lookup here, so read-only maps report BadArgument.
        let size =
            maps::writable(state, context, map_type).map(|m| (maps::byte_size(m), map_work(m)));
        size.map(|(size, work)| {
            note_copied(state, work);
            size
        })
    };
    let Some(size) = size else {
        return status(Status::BadArgument);
    };
    if !write_u32(&mut caller, size_ptr, size) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

// --------------------------------------------------------------------------------- buffers

/// `proxy_buffer_type_t`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BufferType {
    HttpRequestBody,
    HttpResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    fn from_code(code: u32) -> Option<BufferType> {
        Some(match code {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// Applies `f` to the buffer as Envoy's `getBuffer` exposes it; `None` is NotFound. A body that
/// is not available right now is an empty buffer in Envoy (its instance pointer is null), not
/// NotFound. The buffer is borrowed, not copied: a module reading a large body a byte at a time
/// must cost one byte per call, not the whole body.
fn with_buffer<R>(state: &VmState, buffer: BufferType, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let context = state.active_context();
    match buffer {
        BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
            let kind = if buffer == BufferType::HttpRequestBody {
                StreamKind::Request
            } else {
                StreamKind::Response
            };
            let body = state
                .exchange(context)
                .and_then(|e| e.direction(kind).visible_body());
            Some(f(body.map(Vec::as_slice).unwrap_or_default()))
        }
        // A TCP connection's buffer while Envoy holds it for the filter; otherwise (an HTTP
        // stream, or between callbacks) Envoy's buffer pointer is null: an empty buffer.
        BufferType::DownstreamData | BufferType::UpstreamData => {
            let data = state
                .exchange(context)
                .and_then(|e| e.tcp.as_deref())
                .map(|tcp| match buffer {
                    BufferType::DownstreamData => &tcp.downstream,
                    _ => &tcp.upstream,
                })
                .filter(|direction| direction.available)
                .map(|direction| direction.buffer.as_slice());
            Some(f(data.unwrap_or_default()))
        }
        BufferType::HttpCallResponseBody => state.http_call_response.as_ref().map(|r| f(&r.body)),
        BufferType::GrpcReceiveBuffer => {
            Some(f(state.grpc_receive_buffer.as_deref().unwrap_or_default()))
        }
        BufferType::VmConfiguration => state
            .shared
            .try_borrow()
            .ok()
            .map(|s| f(&s.settings.vm_config)),
        BufferType::PluginConfiguration => {
            if state.plugin_config_visible {
                state
                    .shared
                    .try_borrow()
                    .ok()
                    .map(|s| f(&s.settings.plugin_config))
            } else {
                None
            }
        }
        BufferType::CallData => Some(f(&state.call_data)),
    }
}

fn proxy_get_buffer_bytes(
    mut caller: Caller<'_, VmState>,
    buffer_type: u32,
    start: u32,
    max_len: u32,
    ptr_ptr: u32,
    size_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_buffer_bytes")?;
    let Some(buffer_type) = BufferType::from_code(buffer_type) else {
        return status(Status::BadArgument);
    };
    // Don't overread: clamp to what exists (a start past the end yields nothing).
    let copy = with_buffer(caller.data(), buffer_type, |contents| {
        let start = start as usize;
        let end = start.saturating_add(max_len as usize).min(contents.len());
        contents.get(start..end).unwrap_or_default().to_vec()
    });
    let Some(slice) = copy else {
        return status(Status::NotFound);
    };
    if slice.is_empty() {
        if !(write_u32(&mut caller, ptr_ptr, 0) && write_u32(&mut caller, size_ptr, 0)) {
            return status(Status::InvalidMemoryAccess);
        }
        return status(Status::Ok);
    }
    if !copy_to_pointer_size(&mut caller, &slice, ptr_ptr, size_ptr)? {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

fn proxy_get_buffer_status(
    mut caller: Caller<'_, VmState>,
    buffer_type: u32,
    len_ptr: u32,
    flags_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_buffer_status")?;
    let Some(buffer_type) = BufferType::from_code(buffer_type) else {
        return status(Status::BadArgument);
    };
    let Some(len) = with_buffer(caller.data(), buffer_type, <[u8]>::len) else {
        return status(Status::NotFound);
    };
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    if !(write_u32(&mut caller, len_ptr, len) && write_u32(&mut caller, flags_ptr, 0)) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

fn proxy_set_buffer_bytes(
    mut caller: Caller<'_, VmState>,
    buffer_type: u32,
    start: u32,
    len: u32,
    data_ptr: u32,
    data_len: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_set_buffer_bytes")?;
    let Some(buffer_type) = BufferType::from_code(buffer_type) else {
        return status(Status::BadArgument);
    };
    let Some(data) = read_bytes(&caller, data_ptr, data_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let state = caller.data_mut();
    let context = state.active_context();
    let exchange = state.exchange_mut(context);
    let body = match buffer_type {
        BufferType::HttpRequestBody => exchange.and_then(|e| e.request.visible_body_mut()),
        BufferType::HttpResponseBody => exchange.and_then(|e| e.response.visible_body_mut()),
        // A network buffer is writable while Envoy holds it for the filter (measured with
        // Envoy 1.40: writing `DownstreamData` during `proxy_on_upstream_data` is BadArgument).
        BufferType::DownstreamData | BufferType::UpstreamData => exchange
            .and_then(|e| e.tcp.as_deref_mut())
            .map(|tcp| tcp.direction_mut(buffer_type == BufferType::DownstreamData))
            .filter(|direction| direction.available)
            .map(|direction| &mut direction.buffer),
        // Envoy only supports writing into body buffers; string buffers refuse writes.
        _ => None,
    };
    let Some(body) = body else {
        return status(Status::BadArgument);
    };
    // Envoy's `Buffer::copyFrom`: start 0 replaces the first `len` bytes (prepend when 0),
    // start at or past the end appends, anything else is unsupported.
    let start = start as usize;
    if start == 0 {
        let drained = (len as usize).min(body.len());
        body.drain(..drained);
        body.splice(0..0, data);
        status(Status::Ok)
    } else if start >= body.len() {
        body.extend_from_slice(&data);
        status(Status::Ok)
    } else {
        status(Status::BadArgument)
    }
}

// ------------------------------------------------------------------- local reply, continue

// The parameters are fixed by the proxy-wasm ABI.
#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut caller: Caller<'_, VmState>,
    status_code: u32,
    details_ptr: u32,
    details_len: u32,
    body_ptr: u32,
    body_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    grpc_status: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_send_local_response")?;
    let (Some(details), Some(body), Some(headers)) = (
        read_bytes(&caller, details_ptr, details_len),
        read_bytes(&caller, body_ptr, body_len),
        read_bytes(&caller, headers_ptr, headers_len),
    ) else {
        return status(Status::InvalidMemoryAccess);
    };
    let headers = headermap::pairs_to_strings(headermap::parse_lenient(&headers));
    let details: String = lossy(&details)
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    let state = caller.data_mut();
    let context = state.active_context();
    if state.exchange(context).is_some() {
        state.deferred.push_back(Deferred::LocalReply {
            context,
            reply: PendingLocalReply {
                status: status_code,
                body,
                headers,
                grpc_status,
                details,
            },
        });
    }
    // Whatever the callback returns now, Envoy stops iteration.
    state.stop_iteration = true;
    status(Status::Ok)
}

/// `proxy_stream_type_t`
fn stream_type(code: u32) -> Option<Option<StreamKind>> {
    match code {
        0 => Some(Some(StreamKind::Request)),
        1 => Some(Some(StreamKind::Response)),
        2 | 3 => Some(None),
        _ => None,
    }
}

fn proxy_continue_stream(mut caller: Caller<'_, VmState>, stream: u32) -> HostResult<u32> {
    guard(&mut caller, "proxy_continue_stream")?;
    match stream {
        0 => continue_stream(caller, StreamKind::Request),
        1 => continue_stream(caller, StreamKind::Response),
        // Downstream: Envoy's `continueReading` for a network filter (after the callback), a
        // no-op for an HTTP stream; Upstream is not implemented in Envoy 1.40.
        2 => {
            let state = caller.data_mut();
            let context = state.active_context();
            if state.exchange(context).is_some_and(|e| e.tcp.is_some()) {
                state
                    .deferred
                    .push_back(Deferred::ContinueReading { context });
            }
            status(Status::Ok)
        }
        3 => status(Status::Unimplemented),
        _ => status(Status::BadArgument),
    }
}

fn continue_stream(mut caller: Caller<'_, VmState>, kind: StreamKind) -> HostResult<u32> {
    guard(&mut caller, "proxy_continue_stream")?;
    let state = caller.data_mut();
    let context = state.active_context();
    if let Some(exchange) = state.exchange_mut(context) {
        // Envoy forgets the request maps right away, for either direction (and resumes the
        // filter chain after the callback returns).
        let request = &mut exchange.request;
        request.headers_available = false;
        request.chunk_available = false;
        request.trailers_available = false;
        state.deferred.push_back(Deferred::Continue {
            context,
            stream: kind,
        });
    }
    status(Status::Ok)
}

fn proxy_close_stream(mut caller: Caller<'_, VmState>, stream: u32) -> HostResult<u32> {
    guard(&mut caller, "proxy_close_stream")?;
    let Some(kind) = stream_type(stream) else {
        return status(Status::BadArgument);
    };
    let state = caller.data_mut();
    let context = state.active_context();
    if kind.is_none() {
        // Downstream or Upstream: both close a TCP connection's downstream connection
        // (`FlushWrite`) after the callback; an HTTP stream has no network filter callbacks.
        if state.exchange(context).is_some_and(|e| e.tcp.is_some()) {
            state.deferred.push_back(Deferred::Close { context });
        }
        return status(Status::Ok);
    }
    // Request or Response: a network filter has no HTTP callbacks, Envoy does nothing.
    if let Some(exchange) = state.exchange_mut(context).filter(|e| e.tcp.is_none()) {
        if exchange.response_code_details.is_none() {
            exchange.response_code_details = Some("wasm_close_stream".to_string());
        }
        state.deferred.push_back(Deferred::Close { context });
    }
    status(Status::Ok)
}

// ------------------------------------------------------------------------------ HTTP calls

// The parameters are fixed by the proxy-wasm ABI.
#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut caller: Caller<'_, VmState>,
    upstream_ptr: u32,
    upstream_len: u32,
    headers_ptr: u32,
    headers_len: u32,
    body_ptr: u32,
    body_len: u32,
    trailers_ptr: u32,
    trailers_len: u32,
    timeout_ms: u32,
    token_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_http_call")?;
    let (Some(upstream), Some(body), Some(headers), Some(trailers)) = (
        read_bytes(&caller, upstream_ptr, upstream_len),
        read_bytes(&caller, body_ptr, body_len),
        read_bytes(&caller, headers_ptr, headers_len),
        read_bytes(&caller, trailers_ptr, trailers_len),
    ) else {
        return status(Status::InvalidMemoryAccess);
    };
    // Verify the token pointer before starting anything, as Envoy does.
    if !write_u32(&mut caller, token_ptr, 0) {
        return status(Status::InvalidMemoryAccess);
    }
    // Envoy takes the timeout as a signed int.
    if (timeout_ms as i32) < 0 {
        return status(Status::BadArgument);
    }
    let upstream = lossy(&upstream);
    let elapsed = {
        let Ok(shared) = caller.data().shared.try_borrow() else {
            return status(Status::InternalFailure);
        };
        if let Some(clusters) = &shared.settings.clusters {
            if !clusters.contains(&upstream) {
                return status(Status::BadArgument);
            }
        }
        shared.clock.elapsed()
    };
    let mut request_headers = Vec::new();
    for (key, value) in headermap::pairs_to_strings(headermap::parse_lenient(&headers)) {
        maps::add_header(&mut request_headers, &key, &value);
    }
    let required = [":path", ":method", ":authority"];
    if required
        .iter()
        .any(|name| maps::header_value(&request_headers, name).is_none())
    {
        return status(Status::BadArgument);
    }
    if !body.is_empty() {
        maps::replace_header(
            &mut request_headers,
            "content-length",
            &body.len().to_string(),
        );
    }
    // Envoy's async client marks the request internal, and its router announces the timeout.
    maps::replace_header(&mut request_headers, "x-envoy-internal", "true");
    if timeout_ms > 0 {
        maps::replace_header(
            &mut request_headers,
            "x-envoy-expected-rq-timeout-ms",
            &timeout_ms.to_string(),
        );
    }
    let mut request_trailers = Vec::new();
    for (key, value) in headermap::pairs_to_strings(headermap::parse_lenient(&trailers)) {
        maps::add_header(&mut request_trailers, &key, &value);
    }
    count_callout(&mut caller)?;
    let timeout = Duration::from_millis(u64::from(timeout_ms));
    let state = caller.data_mut();
    state.next_http_call_id = state.next_http_call_id.wrapping_add(4);
    let token = state.next_http_call_id;
    state.http_calls.insert(token);
    let worker = state.worker;
    let context_id = state.active_context();
    if let Ok(mut shared) = state.shared.try_borrow_mut() {
        let generation = shared.generations.get(worker).copied().unwrap_or(0);
        shared.http_callouts.push(HttpCalloutRecord {
            callout: HttpCallout {
                token,
                upstream,
                headers: request_headers,
                body,
                trailers: request_trailers,
                timeout,
                worker,
                context_id,
            },
            status: CalloutStatus::Pending,
            deadline: (timeout_ms > 0).then(|| elapsed.saturating_add(timeout)),
            dispatched_at: elapsed,
            generation,
        });
        shared
            .events
            .push_back(Event::HttpCalloutDispatched { worker, token });
    }
    if !write_u32(&mut caller, token_ptr, token) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

/// Counts a callout of the running callback against
/// [`crate::Limits::max_callouts_per_callback`]; over the cap the module traps with
/// [`HarnessError::ResourceLimit`].
fn count_callout(caller: &mut Caller<'_, VmState>) -> HostResult<()> {
    let state = caller.data_mut();
    if state.callouts_this_callback >= state.max_callouts_per_callback {
        let limit = u64::from(state.max_callouts_per_callback);
        return Err(state.exceed("callouts dispatched by one callback", limit));
    }
    state.callouts_this_callback = state.callouts_this_callback.saturating_add(1);
    Ok(())
}

// ------------------------------------------------------------------------------------ gRPC

/// The cluster of a gRPC service argument: either a serialized
/// `envoy.config.core.v3.GrpcService` (field 1 `envoy_grpc`, its field 1 `cluster_name`) or,
/// when the bytes do not parse as one, the cluster name itself.
///
/// Envoy tries the protobuf parse first, so a name that happens to be a well-formed message
/// (`empty` is: field 12, a fixed32) is read as a `GrpcService`; one without a target
/// (`envoy_grpc` or `google_grpc`) makes Envoy 1.40 abort (`panic: unset oneof`), which the
/// harness reports as an error instead (`None`).
fn grpc_cluster(service: &[u8]) -> Option<(String, bool)> {
    match parse_proto_fields(service) {
        Some(fields) => {
            let targeted = fields
                .iter()
                .any(|(number, _)| *number == 1 || *number == 2);
            if !targeted {
                return None;
            }
            // A malformed `envoy_grpc` fails the whole parse: the bytes are a name after all.
            Some(match envoy_grpc_cluster(&fields) {
                Some(cluster) => (cluster, true),
                None => (lossy(service), false),
            })
        }
        None => Some((lossy(service), false)),
    }
}

/// `envoy_grpc.cluster_name` of a parsed `GrpcService`.
fn envoy_grpc_cluster(fields: &[ProtoField<'_>]) -> Option<String> {
    let mut cluster = String::new();
    for (number, value) in fields {
        if let (1, Some(envoy_grpc)) = (number, value) {
            for (inner_number, inner) in parse_proto_fields(envoy_grpc)? {
                if let (1, Some(name)) = (inner_number, inner) {
                    cluster = String::from_utf8(name.to_vec()).ok()?;
                }
            }
        }
    }
    Some(cluster)
}

/// A protobuf field number and, for length-delimited fields, its payload.
type ProtoField<'a> = (u64, Option<&'a [u8]>);

/// Minimal protobuf scanner: (field number, length-delimited payload) for every field, or
/// `None` if the bytes are not a well-formed message.
fn parse_proto_fields(bytes: &[u8]) -> Option<Vec<ProtoField<'_>>> {
    let mut fields = Vec::new();
    let mut pos = 0;
    if bytes.is_empty() {
        return None;
    }
    while pos < bytes.len() {
        let key = read_varint(bytes, &mut pos)?;
        let number = key >> 3;
        if number == 0 {
            return None;
        }
        match key & 7 {
            0 => {
                read_varint(bytes, &mut pos)?;
                fields.push((number, None));
            }
            1 => {
                pos = pos.checked_add(8).filter(|p| *p <= bytes.len())?;
                fields.push((number, None));
            }
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= bytes.len())?;
                fields.push((number, bytes.get(pos..end)));
                pos = end;
            }
            5 => {
                pos = pos.checked_add(4).filter(|p| *p <= bytes.len())?;
                fields.push((number, None));
            }
            _ => return None,
        }
    }
    Some(fields)
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

struct GrpcOpen {
    cluster: String,
    service: String,
    method: String,
    initial_metadata: Vec<(String, String)>,
}

/// Common checks of `proxy_grpc_call` and `proxy_grpc_stream`.
fn grpc_open(
    caller: &mut Caller<'_, VmState>,
    is_stream: bool,
    service: &[u8],
    service_name: &[u8],
    method: &[u8],
    metadata: &[u8],
) -> HostResult<Result<GrpcOpen, Status>> {
    let Some((cluster, from_proto)) = grpc_cluster(service) else {
        return Err(wasmtime::Error::msg(format!(
            "`{}`: the service argument {:?} parses as a serialized GrpcService without a \
             target (neither envoy_grpc nor google_grpc), on which Envoy 1.40 aborts the whole \
             proxy (`panic: unset oneof`); pass a cluster name that is not a well-formed \
             protobuf message, or a GrpcService with envoy_grpc.cluster_name",
            if is_stream {
                "proxy_grpc_stream"
            } else {
                "proxy_grpc_call"
            },
            lossy(service)
        )));
    };
    Ok(grpc_open_cluster(
        caller,
        is_stream,
        cluster,
        from_proto,
        service_name,
        method,
        metadata,
    ))
}

fn grpc_open_cluster(
    caller: &mut Caller<'_, VmState>,
    is_stream: bool,
    cluster: String,
    from_proto: bool,
    service_name: &[u8],
    method: &[u8],
    metadata: &[u8],
) -> Result<GrpcOpen, Status> {
    let known = {
        let shared = caller
            .data()
            .shared
            .try_borrow()
            .map_err(|_| Status::InternalFailure)?;
        shared
            .settings
            .clusters
            .as_ref()
            .is_none_or(|clusters| clusters.contains(&cluster))
    };
    if !known {
        if !from_proto {
            // Envoy answers ParseFailure for an unknown cluster name (kept, its comment says,
            // for ABI 0.1 compatibility), before taking a token.
            return Err(Status::ParseFailure);
        }
        // A serialized `GrpcService` naming an unknown cluster: Envoy 1.40 takes a token, fails
        // to start the call (InternalFailure), and later closes that token with status 14
        // (`Cluster not available`); the token is not handed out again.
        let state = caller.data_mut();
        let token = if is_stream {
            state.next_grpc_stream_id = state.next_grpc_stream_id.wrapping_add(4);
            state.next_grpc_stream_id
        } else {
            state.next_grpc_call_id = state.next_grpc_call_id.wrapping_add(4);
            state.next_grpc_call_id
        };
        let worker = state.worker;
        if let Ok(mut shared) = state.shared.try_borrow_mut() {
            let generation = shared.generations.get(worker).copied().unwrap_or(0);
            shared.events.push_back(Event::GrpcClusterUnavailable {
                worker,
                generation,
                token,
            });
        }
        return Err(Status::InternalFailure);
    }
    let mut initial_metadata = Vec::new();
    for (key, value) in headermap::pairs_to_strings(headermap::parse_lenient(metadata)) {
        maps::add_header(&mut initial_metadata, &key, &value);
    }
    Ok(GrpcOpen {
        cluster,
        service: lossy(service_name),
        method: lossy(method),
        initial_metadata,
    })
}

fn record_grpc(
    caller: &mut Caller<'_, VmState>,
    open: GrpcOpen,
    is_stream: bool,
    message: Option<Vec<u8>>,
    timeout_ms: u32,
) -> u32 {
    let state = caller.data_mut();
    let token = if is_stream {
        state.next_grpc_stream_id = state.next_grpc_stream_id.wrapping_add(4);
        state.next_grpc_stream_id
    } else {
        state.next_grpc_call_id = state.next_grpc_call_id.wrapping_add(4);
        state.next_grpc_call_id
    };
    state.grpc_tokens.insert(token, GrpcTokenState::default());
    let worker = state.worker;
    let context_id = state.active_context();
    let timeout = Duration::from_millis(u64::from(timeout_ms));
    if let Ok(mut shared) = state.shared.try_borrow_mut() {
        let elapsed = shared.clock.elapsed();
        let generation = shared.generations.get(worker).copied().unwrap_or(0);
        shared.grpc_callouts.push(GrpcCalloutRecord {
            callout: GrpcCallout {
                token,
                is_stream,
                cluster: open.cluster,
                service: open.service,
                method: open.method,
                initial_metadata: open.initial_metadata,
                messages: message.into_iter().collect(),
                local_closed: false,
                timeout,
                worker,
                context_id,
            },
            status: CalloutStatus::Pending,
            deadline: (!is_stream && timeout_ms > 0).then(|| elapsed.saturating_add(timeout)),
            generation,
        });
        if !is_stream {
            shared
                .events
                .push_back(Event::GrpcCallDispatched { worker, token });
        }
    }
    token
}

// The parameters are fixed by the proxy-wasm ABI.
#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    mut caller: Caller<'_, VmState>,
    service_ptr: u32,
    service_len: u32,
    service_name_ptr: u32,
    service_name_len: u32,
    method_ptr: u32,
    method_len: u32,
    metadata_ptr: u32,
    metadata_len: u32,
    message_ptr: u32,
    message_len: u32,
    timeout_ms: u32,
    token_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_grpc_call")?;
    let (Some(service), Some(service_name), Some(method), Some(metadata), Some(message)) = (
        read_bytes(&caller, service_ptr, service_len),
        read_bytes(&caller, service_name_ptr, service_name_len),
        read_bytes(&caller, method_ptr, method_len),
        read_bytes(&caller, metadata_ptr, metadata_len),
        read_bytes(&caller, message_ptr, message_len),
    ) else {
        return status(Status::InvalidMemoryAccess);
    };
    let open = match grpc_open(
        &mut caller,
        false,
        &service,
        &service_name,
        &method,
        &metadata,
    )? {
        Ok(open) => open,
        Err(code) => return status(code),
    };
    count_callout(&mut caller)?;
    let token = record_grpc(&mut caller, open, false, Some(message), timeout_ms);
    if !write_u32(&mut caller, token_ptr, token) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

// The parameters are fixed by the proxy-wasm ABI.
#[allow(clippy::too_many_arguments)]
fn proxy_grpc_stream(
    mut caller: Caller<'_, VmState>,
    service_ptr: u32,
    service_len: u32,
    service_name_ptr: u32,
    service_name_len: u32,
    method_ptr: u32,
    method_len: u32,
    metadata_ptr: u32,
    metadata_len: u32,
    token_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_grpc_stream")?;
    let (Some(service), Some(service_name), Some(method), Some(metadata)) = (
        read_bytes(&caller, service_ptr, service_len),
        read_bytes(&caller, service_name_ptr, service_name_len),
        read_bytes(&caller, method_ptr, method_len),
        read_bytes(&caller, metadata_ptr, metadata_len),
    ) else {
        return status(Status::InvalidMemoryAccess);
    };
    let open = match grpc_open(
        &mut caller,
        true,
        &service,
        &service_name,
        &method,
        &metadata,
    )? {
        Ok(open) => open,
        Err(code) => return status(code),
    };
    count_callout(&mut caller)?;
    let token = record_grpc(&mut caller, open, true, None, 0);
    if !write_u32(&mut caller, token_ptr, token) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

const CALLOUT_TYPE_MASK: u32 = 0x3;
const GRPC_CALL_TYPE: u32 = 1;
const GRPC_STREAM_TYPE: u32 = 2;

fn update_grpc_record(state: &VmState, token: u32, f: impl FnOnce(&mut GrpcCalloutRecord)) {
    if let Ok(mut shared) = state.shared.try_borrow_mut() {
        let worker = state.worker;
        if let Some(record) = shared
            .grpc_callouts
            .iter_mut()
            .rev()
            .find(|r| r.callout.worker == worker && r.callout.token == token)
        {
            f(record);
        }
    }
}

fn proxy_grpc_send(
    mut caller: Caller<'_, VmState>,
    token: u32,
    message_ptr: u32,
    message_len: u32,
    end_stream: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_grpc_send")?;
    let Some(message) = read_bytes(&caller, message_ptr, message_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    if token & CALLOUT_TYPE_MASK != GRPC_STREAM_TYPE {
        return status(Status::BadArgument);
    }
    let state = caller.data();
    if !state.grpc_tokens.contains_key(&token) {
        return status(Status::NotFound);
    }
    update_grpc_record(state, token, |record| {
        record.callout.messages.push(message);
        if end_stream != 0 {
            record.callout.local_closed = true;
        }
    });
    status(Status::Ok)
}

fn proxy_grpc_cancel(mut caller: Caller<'_, VmState>, token: u32) -> HostResult<u32> {
    guard(&mut caller, "proxy_grpc_cancel")?;
    let kind = token & CALLOUT_TYPE_MASK;
    if kind != GRPC_CALL_TYPE && kind != GRPC_STREAM_TYPE {
        return status(Status::BadArgument);
    }
    let state = caller.data_mut();
    if state.grpc_tokens.remove(&token).is_none() {
        return status(Status::NotFound);
    }
    update_grpc_record(state, token, |record| record.status = CalloutStatus::Done);
    status(Status::Ok)
}

fn proxy_grpc_close(mut caller: Caller<'_, VmState>, token: u32) -> HostResult<u32> {
    guard(&mut caller, "proxy_grpc_close")?;
    let kind = token & CALLOUT_TYPE_MASK;
    let state = caller.data_mut();
    if kind == GRPC_CALL_TYPE {
        if state.grpc_tokens.remove(&token).is_none() {
            return status(Status::NotFound);
        }
        update_grpc_record(state, token, |record| record.status = CalloutStatus::Done);
        return status(Status::Ok);
    }
    if kind != GRPC_STREAM_TYPE {
        return status(Status::BadArgument);
    }
    let Some(token_state) = state.grpc_tokens.get_mut(&token) else {
        return status(Status::NotFound);
    };
    token_state.local_closed = true;
    let finished = token_state.remote_closed;
    if finished {
        state.grpc_tokens.remove(&token);
    }
    update_grpc_record(state, token, |record| {
        record.callout.local_closed = true;
        if finished {
            record.status = CalloutStatus::Done;
        }
    });
    status(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_service_is_parsed_from_proto_or_taken_as_cluster_name() {
        // GrpcService { envoy_grpc { cluster_name: "authz" } }
        let proto = [0x0a, 0x07, 0x0a, 0x05, b'a', b'u', b't', b'h', b'z'];
        assert_eq!(grpc_cluster(&proto), Some(("authz".to_string(), true)));
        assert_eq!(
            grpc_cluster(b"ext_authz"),
            Some(("ext_authz".to_string(), false))
        );
        // Field 12 (fixed32) "mpty": a message without a target, on which Envoy aborts.
        assert_eq!(grpc_cluster(b"empty"), None);
    }
}
