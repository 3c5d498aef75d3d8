//! The functions the host exports to the module (`env.proxy_*` and WASI), registered on a
//! wasmtime [`Linker`], plus the guest-memory helpers they share.
//!
//! Every guest pointer and length is bounds-checked: a bad one makes the hostcall return
//! `InvalidMemoryAccess` (WASI: `EFAULT`) to the module, never a host panic. Hostcalls only fail
//! (trap the module) when the module's own allocator traps while the host copies data into it.

pub(crate) mod foreign;
mod general;
mod http;
mod maps;
pub(crate) mod properties;

use std::collections::HashSet;

use wasmtime::{Caller, Engine, ExternType, IntoFunc, Linker, Module, Val, ValType};

use crate::engine::AbiVersion;
use crate::error::{HarnessError, Status};
use crate::vm::VmState;
use crate::wasi;

pub(crate) use maps::{add_header, header_value, remove_header};

/// Result type of host functions: `Err` traps the module.
pub(crate) type HostResult<T> = wasmtime::Result<T>;

/// Registers host functions and remembers their names.
pub(crate) struct Registrar<'a> {
    linker: &'a mut Linker<VmState>,
    names: HashSet<(String, String)>,
}

impl Registrar<'_> {
    pub(crate) fn func<Params, Args>(
        &mut self,
        module: &str,
        name: &str,
        func: impl IntoFunc<VmState, Params, Args>,
    ) -> Result<(), HarnessError> {
        self.linker
            .func_wrap(module, name, func)
            .map_err(|e| HarnessError::Load(format!("cannot register {module}.{name}: {e:#}")))?;
        self.names.insert((module.to_string(), name.to_string()));
        Ok(())
    }
}

/// Builds the linker for `module`: the proxy-wasm hostcalls of its ABI version, WASI, and an
/// `Unimplemented` stub for any other `env.proxy_*` / `env.envoy_*` function it imports.
pub(crate) fn linker(
    engine: &Engine,
    module: &Module,
    abi: AbiVersion,
) -> Result<Linker<VmState>, HarnessError> {
    let mut linker = Linker::new(engine);
    let mut registrar = Registrar {
        linker: &mut linker,
        names: HashSet::new(),
    };
    general::register(&mut registrar, abi)?;
    http::register(&mut registrar, abi)?;
    wasi::register(&mut registrar, "wasi_snapshot_preview1")?;
    wasi::register(&mut registrar, "wasi_unstable")?;
    let known = std::mem::take(&mut registrar.names);
    for import in module.imports() {
        let key = (import.module().to_string(), import.name().to_string());
        if known.contains(&key) {
            continue;
        }
        let ExternType::Func(func_type) = import.ty() else {
            continue;
        };
        let stubbed = import.module() == "env"
            && (import.name().starts_with("proxy_") || import.name().starts_with("envoy_"));
        let results: Vec<ValType> = func_type.results().collect();
        let returns_status = matches!(results.as_slice(), [ValType::I32]);
        if stubbed && (returns_status || results.is_empty()) {
            let name = import.name().to_string();
            // An ABI function this host does not implement: answer `Unimplemented` rather than
            // refusing to load the module, so a filter that only probes for it keeps working.
            linker
                .func_new(
                    import.module(),
                    import.name(),
                    func_type.clone(),
                    move |mut caller: Caller<'_, VmState>, _params: &[Val], results: &mut [Val]| {
                        charge(&mut caller, &name)?;
                        if let Some(slot) = results.first_mut() {
                            *slot = Val::I32(Status::Unimplemented.code() as i32);
                        }
                        Ok(())
                    },
                )
                .map_err(|e| HarnessError::Load(format!("{e:#}")))?;
        }
    }
    Ok(linker)
}

/// Fuel charged for every hostcall, on top of the module's own instructions: the host work of
/// one call is worth roughly this many wasm instructions. Without it a module looping on a
/// cheap hostcall (`loop { proxy_log(..) }`) would make tens of millions of calls per callback
/// (a loop iteration costs ~6 fuel), hanging the test and growing host-side state (logs,
/// shared data, callout records) until the host runs out of memory. With it the default budget
/// allows a million hostcalls per callback; real filters make tens.
pub(crate) const HOSTCALL_FUEL: u64 = 1_000;

/// Bytes copied between guest and host per unit of fuel charged (see [`charge`]).
pub(crate) const BYTES_PER_FUEL: u64 = 1;

/// Counts the call of `hostcall` (see `Plugin::hostcall_counts`) and charges it to the
/// callback's fuel budget ([`charge_fuel`]).
pub(crate) fn charge(caller: &mut Caller<'_, VmState>, hostcall: &str) -> HostResult<()> {
    if let Ok(mut shared) = caller.data().shared.try_borrow_mut() {
        shared.count_hostcall(hostcall);
    }
    charge_fuel(caller)
}

/// Charges [`HOSTCALL_FUEL`] plus the bytes copied by the previous hostcalls to the callback's
/// fuel budget; running out traps like the module's own code would
/// ([`HarnessError::FuelExhausted`]).
pub(crate) fn charge_fuel(caller: &mut Caller<'_, VmState>) -> HostResult<()> {
    let bytes = caller.data().copied_bytes.take();
    let cost = HOSTCALL_FUEL.saturating_add(bytes / BYTES_PER_FUEL);
    // Fuel metering is always on in the harness engine; if it were not, there is nothing to do.
    let Ok(fuel) = caller.get_fuel() else {
        return Ok(());
    };
    match fuel.checked_sub(cost) {
        Some(left) => caller.set_fuel(left),
        None => {
            caller.set_fuel(0)?;
            Err(wasmtime::Trap::OutOfFuel.into())
        }
    }
}

/// Charges the hostcall (see [`charge`]) and refuses hostcalls that Envoy does not allow while
/// `_initialize`/`_start` run.
pub(crate) fn guard(caller: &mut Caller<'_, VmState>, name: &str) -> HostResult<()> {
    charge(caller, name)?;
    if caller.data().restricted {
        return Err(wasmtime::Error::msg(format!(
            "restricted_callback: `{name}` cannot be called while the module starts \
             (_initialize/_start); Envoy refuses it there and the module fails to load"
        )));
    }
    Ok(())
}

/// Copies `len` bytes at `ptr` out of guest memory; `None` when out of bounds.
pub(crate) fn read_bytes(caller: &Caller<'_, VmState>, ptr: u32, len: u32) -> Option<Vec<u8>> {
    let memory = caller.data().memory?;
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    let bytes = memory.data(caller).get(start..end).map(<[u8]>::to_vec)?;
    note_copied(caller.data(), bytes.len());
    Some(bytes)
}

/// Writes `bytes` at `ptr`; false when out of bounds.
pub(crate) fn write_bytes(caller: &mut Caller<'_, VmState>, ptr: u32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().memory else {
        return false;
    };
    let start = ptr as usize;
    let Some(end) = start.checked_add(bytes.len()) else {
        return false;
    };
    match memory.data_mut(&mut *caller).get_mut(start..end) {
        Some(slot) => {
            slot.copy_from_slice(bytes);
            note_copied(caller.data(), bytes.len());
            true
        }
        None => false,
    }
}

/// Records host work (bytes copied across the guest boundary, or bytes of a host-side structure
/// a hostcall scans or clones), charged to fuel at the next hostcall.
pub(crate) fn note_copied(state: &VmState, len: usize) {
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    state
        .copied_bytes
        .set(state.copied_bytes.get().saturating_add(len));
}

pub(crate) fn write_u32(caller: &mut Caller<'_, VmState>, ptr: u32, value: u32) -> bool {
    write_bytes(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Caller<'_, VmState>, ptr: u32, value: u64) -> bool {
    write_bytes(caller, ptr, &value.to_le_bytes())
}

/// Allocates `bytes.len()` bytes with the module's allocator and copies `bytes` there.
/// `Ok(None)` when the allocator returns 0 or an unusable pointer; `Err` when it traps.
pub(crate) fn alloc_copy(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
) -> HostResult<Option<u32>> {
    let Some(malloc) = caller.data().malloc.clone() else {
        return Ok(None);
    };
    let Ok(len) = u32::try_from(bytes.len()) else {
        return Ok(None);
    };
    let ptr = malloc.call(&mut *caller, len)?;
    if ptr == 0 || !write_bytes(caller, ptr, bytes) {
        return Ok(None);
    }
    Ok(Some(ptr))
}

/// Envoy's `copyToPointerSize`: allocates a copy of `bytes` in the module and writes its address
/// and size at `ptr_ptr`/`size_ptr`. Empty data is reported as (0, 0) without allocating.
pub(crate) fn copy_to_pointer_size(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_ptr: u32,
    size_ptr: u32,
) -> HostResult<bool> {
    let mut address = 0;
    if !bytes.is_empty() {
        match alloc_copy(caller, bytes)? {
            Some(ptr) => address = ptr,
            None => return Ok(false),
        }
    }
    let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    Ok(write_u32(caller, ptr_ptr, address) && write_u32(caller, size_ptr, size))
}

/// A status as the value a hostcall returns.
pub(crate) fn status(status: Status) -> HostResult<u32> {
    Ok(status.code())
}

/// Converts guest bytes to a string (lossy: header values are bytes in Envoy).
pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
