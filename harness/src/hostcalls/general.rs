//! Hostcalls not tied to an HTTP stream: logging, time, ticks, properties, shared data, shared
//! queues, metrics, contexts, foreign functions and status.

use std::time::Duration;

use wasmtime::Caller;

use super::{
    charge, copy_to_pointer_size, guard, lossy, read_bytes, status, write_u32, write_u64,
    HostResult, Registrar,
};
use crate::engine::AbiVersion;
use crate::error::{HarnessError, Status};
use crate::metrics::MetricKind;
use crate::race::{HazardKind, SharedDataHazard};
use crate::types::{LogLevel, MetricValue};
use crate::vm::VmState;

pub(crate) fn register(r: &mut Registrar<'_>, abi: AbiVersion) -> Result<(), HarnessError> {
    r.func("env", "proxy_log", proxy_log)?;
    if abi == AbiVersion::V0_2_1 {
        // Envoy registers proxy_get_log_level for ABI 0.2.1 only.
        r.func("env", "proxy_get_log_level", proxy_get_log_level)?;
    }
    r.func(
        "env",
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    r.func(
        "env",
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    r.func("env", "proxy_get_property", proxy_get_property)?;
    r.func("env", "proxy_set_property", proxy_set_property)?;
    r.func("env", "proxy_get_shared_data", proxy_get_shared_data)?;
    r.func("env", "proxy_set_shared_data", proxy_set_shared_data)?;
    r.func(
        "env",
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    r.func(
        "env",
        "proxy_resolve_shared_queue",
        proxy_resolve_shared_queue,
    )?;
    r.func(
        "env",
        "proxy_dequeue_shared_queue",
        proxy_dequeue_shared_queue,
    )?;
    r.func(
        "env",
        "proxy_enqueue_shared_queue",
        proxy_enqueue_shared_queue,
    )?;
    r.func("env", "proxy_define_metric", proxy_define_metric)?;
    r.func("env", "proxy_increment_metric", proxy_increment_metric)?;
    r.func("env", "proxy_record_metric", proxy_record_metric)?;
    r.func("env", "proxy_get_metric", proxy_get_metric)?;
    r.func(
        "env",
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    r.func("env", "proxy_done", proxy_done)?;
    r.func(
        "env",
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    r.func("env", "proxy_get_status", proxy_get_status)?;
    // Emscripten/threads helpers Envoy registers for C++ modules.
    r.func(
        "env",
        "pthread_equal",
        |mut caller: Caller<'_, VmState>, left: u32, right: u32| {
            // Not allowed while the module starts (Envoy's restricted list does not have it).
            guard(&mut caller, "pthread_equal").map(|()| u32::from(left == right))
        },
    )?;
    r.func(
        "env",
        "emscripten_notify_memory_growth",
        |mut caller: Caller<'_, VmState>, _index: u32| {
            charge(&mut caller, "emscripten_notify_memory_growth")
        },
    )?;
    Ok(())
}

fn proxy_log(mut caller: Caller<'_, VmState>, level: u32, ptr: u32, len: u32) -> HostResult<u32> {
    // Allowed while the module starts, so charged without the start-up guard.
    charge(&mut caller, "proxy_log")?;
    let Some(level) = LogLevel::from_code(level) else {
        return status(Status::BadArgument);
    };
    let Some(message) = read_bytes(&caller, ptr, len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let state = caller.data_mut();
    state.log(level, lossy(&message));
    status(Status::Ok)
}

fn proxy_get_log_level(mut caller: Caller<'_, VmState>, ptr: u32) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_log_level")?;
    let level = caller
        .data()
        .shared
        .try_borrow()
        .map(|s| s.settings.log_level as u32)
        .unwrap_or(LogLevel::Info as u32);
    if !write_u32(&mut caller, ptr, level) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

fn proxy_get_current_time_nanoseconds(
    mut caller: Caller<'_, VmState>,
    ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_current_time_nanoseconds")?;
    let now = now_nanos(&caller);
    if !write_u64(&mut caller, ptr, now) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

pub(crate) fn now_nanos(caller: &Caller<'_, VmState>) -> u64 {
    caller
        .data()
        .shared
        .try_borrow()
        .map(|s| s.clock.realtime_nanos())
        .unwrap_or(0)
}

fn proxy_set_tick_period_milliseconds(
    mut caller: Caller<'_, VmState>,
    period_ms: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_set_tick_period_milliseconds")?;
    let elapsed = caller
        .data()
        .shared
        .try_borrow()
        .map(|s| s.clock.elapsed())
        .unwrap_or_default();
    let state = caller.data_mut();
    // One timer per root context; setting the period restarts it from now (Envoy's
    // `Wasm::setTimerPeriod`), zero disables it.
    state.tick_period = Duration::from_millis(u64::from(period_ms));
    state.next_tick = (period_ms > 0).then(|| elapsed.saturating_add(state.tick_period));
    status(Status::Ok)
}

fn proxy_get_property(
    mut caller: Caller<'_, VmState>,
    path_ptr: u32,
    path_len: u32,
    value_ptr_ptr: u32,
    value_size_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_property")?;
    let Some(path) = read_bytes(&caller, path_ptr, path_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let resolved = {
        let state = caller.data();
        let context = state.active_context();
        match state.shared.try_borrow() {
            Ok(shared) => super::properties::resolve(state, &shared, context, &path),
            Err(_) => Err(Status::InternalFailure),
        }
    };
    match resolved {
        Ok(value) => {
            if !copy_to_pointer_size(&mut caller, &value, value_ptr_ptr, value_size_ptr)? {
                return status(Status::InvalidMemoryAccess);
            }
            status(Status::Ok)
        }
        Err(code) => status(code),
    }
}

fn proxy_set_property(
    mut caller: Caller<'_, VmState>,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_set_property")?;
    let (Some(key), Some(value)) = (
        read_bytes(&caller, key_ptr, key_len),
        read_bytes(&caller, value_ptr, value_len),
    ) else {
        return status(Status::InvalidMemoryAccess);
    };
    let state = caller.data_mut();
    let context = state.active_context();
    // A new key takes the prototype its root context declared (`declare_property`; Envoy's
    // `rootContext()->state_prototypes_`): a read-only one is set once per stream.
    let root = match state.contexts.get(&context) {
        Some(c) if c.parent != 0 => c.parent,
        _ => context,
    };
    let readonly = state
        .declared_properties
        .get(&root)
        .and_then(|declared| declared.get(&key))
        .is_some_and(|property| property.readonly);
    // Envoy stores the value as filter state of the request; without a stream (root context)
    // there is no stream info and the property is NotFound.
    match state.exchange_mut(context) {
        Some(exchange) => {
            if exchange.filter_state.contains_key(&key) {
                if exchange.readonly_state.contains(&key) {
                    return status(Status::BadArgument);
                }
            } else if readonly {
                exchange.readonly_state.insert(key.clone());
            }
            exchange.filter_state.insert(key, value);
            status(Status::Ok)
        }
        None => status(Status::NotFound),
    }
}

fn proxy_get_shared_data(
    mut caller: Caller<'_, VmState>,
    key_ptr: u32,
    key_len: u32,
    value_ptr_ptr: u32,
    value_size_ptr: u32,
    cas_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_shared_data")?;
    let Some(key) = read_bytes(&caller, key_ptr, key_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let found = match caller.data().shared.try_borrow() {
        Ok(shared) => shared.get_shared_data(&key),
        Err(_) => Err(Status::InternalFailure),
    };
    let (value, cas) = match found {
        Ok(found) => found,
        Err(code) => {
            // Finding nothing is a read too: two workers that both find a key missing both
            // create it.
            race_point(&caller, || {
                format!("after proxy_get_shared_data({:?})", lossy(&key))
            });
            return status(code);
        }
    };
    // An empty value comes back as (null, 0) with its CAS token, as in Envoy.
    if !copy_to_pointer_size(&mut caller, &value, value_ptr_ptr, value_size_ptr)? {
        return status(Status::InvalidMemoryAccess);
    }
    if !write_u32(&mut caller, cas_ptr, cas) {
        return status(Status::InvalidMemoryAccess);
    }
    caller.data_mut().shared_reads.insert(key.clone());
    race_point(&caller, || {
        format!("after proxy_get_shared_data({:?})", lossy(&key))
    });
    status(Status::Ok)
}

fn proxy_set_shared_data(
    mut caller: Caller<'_, VmState>,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
    cas: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_set_shared_data")?;
    let (Some(key), Some(value)) = (
        read_bytes(&caller, key_ptr, key_len),
        read_bytes(&caller, value_ptr, value_len),
    ) else {
        return status(Status::InvalidMemoryAccess);
    };
    race_point(&caller, || {
        format!("before proxy_set_shared_data({:?})", lossy(&key))
    });
    let state = caller.data();
    let outcome = match state.shared.try_borrow_mut() {
        Ok(mut shared) => match shared.shared_data_fits(&key, &value) {
            Ok(()) => {
                if cas == 0 && shared.shared_data_exists(&key) {
                    shared.record_hazard(SharedDataHazard {
                        worker: state.worker,
                        key: lossy(&key),
                        callback: state.callback.to_string(),
                        kind: if state.shared_reads.contains(&key) {
                            HazardKind::TokenReadButNotUsed
                        } else {
                            HazardKind::BlindOverwrite
                        },
                    });
                }
                Ok(shared.set_shared_data(&key, &value, cas))
            }
            Err(exceeded) => Err(exceeded),
        },
        Err(_) => Ok(Status::InternalFailure),
    };
    match outcome {
        Ok(code) => status(code),
        Err((resource, limit)) => Err(caller.data_mut().exceed(resource, limit)),
    }
}

/// A race point of race mode ([`crate::race`]): other workers' pending events may run here.
fn race_point(caller: &Caller<'_, VmState>, at: impl FnOnce() -> String) {
    let state = caller.data();
    let scheduler = state
        .shared
        .try_borrow()
        .ok()
        .and_then(|shared| shared.race.clone());
    if let Some(scheduler) = scheduler {
        crate::race::race_point(&scheduler, state.worker, &at());
    }
}

fn proxy_register_shared_queue(
    mut caller: Caller<'_, VmState>,
    name_ptr: u32,
    name_len: u32,
    token_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_register_shared_queue")?;
    let Some(name) = read_bytes(&caller, name_ptr, name_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let token = {
        let state = caller.data();
        let context = state.active_context();
        // on_queue_ready is delivered to the root context, even when a stream registers.
        let root = if state.is_root(context) {
            context
        } else {
            state
                .contexts
                .get(&context)
                .map(|c| c.parent)
                .unwrap_or(state.root_context_id)
        };
        let Ok(mut shared) = state.shared.try_borrow_mut() else {
            return status(Status::InternalFailure);
        };
        let generation = shared.generations.get(state.worker).copied().unwrap_or(0);
        shared.register_queue(&lossy(&name), state.worker, generation, root)
    };
    if !write_u32(&mut caller, token_ptr, token) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

fn proxy_resolve_shared_queue(
    mut caller: Caller<'_, VmState>,
    vm_id_ptr: u32,
    vm_id_len: u32,
    name_ptr: u32,
    name_len: u32,
    token_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_resolve_shared_queue")?;
    let (Some(vm_id), Some(name)) = (
        read_bytes(&caller, vm_id_ptr, vm_id_len),
        read_bytes(&caller, name_ptr, name_len),
    ) else {
        return status(Status::InvalidMemoryAccess);
    };
    let token = match caller.data().shared.try_borrow() {
        Ok(shared) => shared.resolve_queue(&lossy(&vm_id), &lossy(&name)),
        Err(_) => return status(Status::InternalFailure),
    };
    let Some(token) = token.filter(|_| caller.data().failed.is_none()) else {
        return status(Status::NotFound);
    };
    if !write_u32(&mut caller, token_ptr, token) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

fn proxy_dequeue_shared_queue(
    mut caller: Caller<'_, VmState>,
    token: u32,
    data_ptr_ptr: u32,
    data_size_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_dequeue_shared_queue")?;
    let item = match caller.data().shared.try_borrow_mut() {
        Ok(mut shared) => shared.dequeue(token),
        Err(_) => Err(Status::InternalFailure),
    };
    match item {
        Ok(data) => {
            if !copy_to_pointer_size(&mut caller, &data, data_ptr_ptr, data_size_ptr)? {
                return status(Status::InvalidMemoryAccess);
            }
            race_point(&caller, || {
                format!("after proxy_dequeue_shared_queue({token})")
            });
            status(Status::Ok)
        }
        Err(code) => status(code),
    }
}

fn proxy_enqueue_shared_queue(
    mut caller: Caller<'_, VmState>,
    token: u32,
    data_ptr: u32,
    data_len: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_enqueue_shared_queue")?;
    let Some(data) = read_bytes(&caller, data_ptr, data_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    race_point(&caller, || {
        format!("before proxy_enqueue_shared_queue({token})")
    });
    let outcome = match caller.data().shared.try_borrow_mut() {
        // An unknown token is NotFound before any cap applies.
        Ok(shared) if !shared.queues.contains_key(&token) => Ok(Status::NotFound),
        Ok(mut shared) => match shared.enqueue_fits(&data) {
            Ok(()) => Ok(shared.enqueue(token, &data)),
            Err(exceeded) => Err(exceeded),
        },
        Err(_) => Ok(Status::InternalFailure),
    };
    match outcome {
        Ok(code) => status(code),
        Err((resource, limit)) => Err(caller.data_mut().exceed(resource, limit)),
    }
}

const METRIC_TYPE_MASK: u32 = 0x3;
const METRIC_ID_INCREMENT: u32 = 0x4;

fn proxy_define_metric(
    mut caller: Caller<'_, VmState>,
    metric_type: u32,
    name_ptr: u32,
    name_len: u32,
    id_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_define_metric")?;
    let Some(name) = read_bytes(&caller, name_ptr, name_len) else {
        return status(Status::InvalidMemoryAccess);
    };
    let Some(kind) = MetricKind::from_code(metric_type) else {
        return status(Status::BadArgument);
    };
    let name = lossy(&name);
    let state = caller.data_mut();
    let counter = match kind {
        MetricKind::Counter => &mut state.next_counter_id,
        MetricKind::Gauge => &mut state.next_gauge_id,
        MetricKind::Histogram => &mut state.next_histogram_id,
    };
    *counter = counter.wrapping_add(METRIC_ID_INCREMENT);
    let id = *counter;
    state.metric_ids.insert(id, (kind, name.clone()));
    if let Ok(mut shared) = state.shared.try_borrow_mut() {
        shared.metrics.define(kind, &name);
    }
    if !write_u32(&mut caller, id_ptr, id) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

/// Applies `f` to the stats-store entry behind a metric id of the expected kind.
fn with_metric<R>(state: &VmState, id: u32, f: impl FnOnce(&mut MetricValue) -> R) -> Option<R> {
    let (kind, name) = state.metric_ids.get(&id)?;
    let mut shared = state.shared.try_borrow_mut().ok()?;
    shared.metrics.get_mut(*kind, name).map(f)
}

fn proxy_increment_metric(
    mut caller: Caller<'_, VmState>,
    id: u32,
    offset: i64,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_increment_metric")?;
    let state = caller.data();
    let result = match id & METRIC_TYPE_MASK {
        0 => with_metric(state, id, |m| match m {
            MetricValue::Counter(v) if offset > 0 => {
                *v = v.saturating_add(offset.unsigned_abs());
                Status::Ok
            }
            // Envoy refuses to decrement (or add zero to) a counter.
            _ => Status::BadArgument,
        }),
        1 => with_metric(state, id, |m| {
            if let MetricValue::Gauge(v) = m {
                *v = if offset > 0 {
                    v.saturating_add(offset.unsigned_abs())
                } else {
                    v.saturating_sub(offset.unsigned_abs())
                };
            }
            Status::Ok
        }),
        // Histograms (and ids of no type) cannot be incremented.
        _ => return status(Status::BadArgument),
    };
    status(result.unwrap_or(Status::NotFound))
}

fn proxy_record_metric(mut caller: Caller<'_, VmState>, id: u32, value: u64) -> HostResult<u32> {
    guard(&mut caller, "proxy_record_metric")?;
    let result = with_metric(caller.data(), id, |m| match m {
        // Envoy adds the value to a counter, sets a gauge and records into a histogram.
        MetricValue::Counter(v) => *v = v.saturating_add(value),
        MetricValue::Gauge(v) => *v = value,
        MetricValue::Histogram(values) => values.push(value),
    });
    status(if result.is_some() {
        Status::Ok
    } else {
        Status::NotFound
    })
}

fn proxy_get_metric(mut caller: Caller<'_, VmState>, id: u32, value_ptr: u32) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_metric")?;
    if id & METRIC_TYPE_MASK > 1 {
        return status(Status::BadArgument);
    }
    let Some(value) = with_metric(caller.data(), id, |m| m.value().unwrap_or(0)) else {
        return status(Status::NotFound);
    };
    if !write_u64(&mut caller, value_ptr, value) {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}

fn proxy_set_effective_context(
    mut caller: Caller<'_, VmState>,
    context_id: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_set_effective_context")?;
    let state = caller.data_mut();
    match state.contexts.get(&context_id) {
        Some(context) if !context.deleted => {
            state.effective_context = context_id;
            status(Status::Ok)
        }
        _ => status(Status::BadArgument),
    }
}

fn proxy_done(mut caller: Caller<'_, VmState>) -> HostResult<u32> {
    guard(&mut caller, "proxy_done")?;
    let state = caller.data_mut();
    let context = state.active_context();
    // Only a root context that answered false to proxy_on_done is pending finalization.
    if state.pending_done.remove(&context) {
        status(Status::Ok)
    } else {
        status(Status::NotFound)
    }
}

fn proxy_call_foreign_function(
    mut caller: Caller<'_, VmState>,
    name_ptr: u32,
    name_len: u32,
    args_ptr: u32,
    args_len: u32,
    results_ptr: u32,
    results_size_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_call_foreign_function")?;
    let (Some(name), Some(args)) = (
        read_bytes(&caller, name_ptr, name_len),
        read_bytes(&caller, args_ptr, args_len),
    ) else {
        return status(Status::InvalidMemoryAccess);
    };
    // A function the test registered overrides Envoy's built-in of the same name.
    let function = caller
        .data()
        .shared
        .try_borrow()
        .ok()
        .and_then(|s| s.foreign_functions.get(&lossy(&name)).cloned());
    let (code, output) = match function {
        Some(function) => {
            // The shared state is not borrowed while the test's closure runs.
            match function(&args) {
                Ok(output) if output.is_empty() => (Status::Ok, None),
                Ok(output) => (Status::Ok, Some(output)),
                Err(code) => (code, None),
            }
        }
        None => match super::foreign::call_builtin(caller.data_mut(), &name, &args) {
            Some(answer) => answer,
            None => return status(Status::NotFound),
        },
    };
    let mut address = 0;
    let mut size = 0;
    if let Some(output) = output {
        // Envoy copies a result into the module only when the caller asked for it (a non-zero
        // `results`), with the module's allocator even when it is empty (`malloc(0)`).
        if results_ptr != 0 {
            match super::alloc_copy(&mut caller, &output)? {
                Some(ptr) => address = ptr,
                None if output.is_empty() => {}
                None => return status(Status::InvalidMemoryAccess),
            }
        }
        size = u32::try_from(output.len()).unwrap_or(u32::MAX);
    }
    if results_ptr != 0 && !write_u32(&mut caller, results_ptr, address) {
        return status(Status::InvalidMemoryAccess);
    }
    if results_size_ptr != 0 && !write_u32(&mut caller, results_size_ptr, size) {
        return status(Status::InvalidMemoryAccess);
    }
    status(code)
}

fn proxy_get_status(
    mut caller: Caller<'_, VmState>,
    code_ptr: u32,
    message_ptr_ptr: u32,
    message_size_ptr: u32,
) -> HostResult<u32> {
    guard(&mut caller, "proxy_get_status")?;
    let (code, message) = caller.data().status.clone();
    if !write_u32(&mut caller, code_ptr, code) {
        return status(Status::InvalidMemoryAccess);
    }
    if !copy_to_pointer_size(
        &mut caller,
        message.as_bytes(),
        message_ptr_ptr,
        message_size_ptr,
    )? {
        return status(Status::InvalidMemoryAccess);
    }
    status(Status::Ok)
}
