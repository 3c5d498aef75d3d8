//! One wasmtime [`Engine`] per process, and an in-process cache of compiled modules.
//!
//! Compiling a filter with Cranelift takes far longer than running a request through it, so a
//! test suite that starts hundreds of plugins compiles each distinct module once: modules are
//! keyed by the SHA-256 of their bytes, and the cache keeps the linked [`InstancePre`] so that
//! instantiating a VM is only memory setup. (A serialized on-disk cache is not provided:
//! `Module::deserialize` is `unsafe`, which this crate forbids.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstancePre, Module, OptLevel, WasmBacktraceDetails};

use crate::error::HarnessError;
use crate::hostcalls;
use crate::vm::VmState;

/// The proxy-wasm ABI version a module advertises through its `proxy_abi_version_*` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_2_0`
    V0_2_0,
    /// `proxy_abi_version_0_2_1`
    V0_2_1,
}

/// A compiled, linked module ready to be instantiated.
#[derive(Clone)]
pub(crate) struct CompiledModule {
    pub(crate) module: Module,
    pub(crate) instance_pre: InstancePre<VmState>,
    pub(crate) abi: AbiVersion,
    pub(crate) sha256: [u8; 32],
}

/// Counters describing the module cache, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Modules compiled since the process started.
    pub compilations: u64,
    /// Loads served from the cache without compiling.
    pub hits: u64,
}

static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
static CACHE: OnceLock<Mutex<HashMap<[u8; 32], CompiledModule>>> = OnceLock::new();
static COMPILATIONS: AtomicU64 = AtomicU64::new(0);
static HITS: AtomicU64 = AtomicU64::new(0);

/// The process-wide engine (fuel metering on, wasm backtraces on, optimized Cranelift).
pub(crate) fn engine() -> Result<&'static Engine, HarnessError> {
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config
                .consume_fuel(true)
                .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(64))
                // DWARF parsing would slow down compilation; function names come from the name
                // section, which is enough for readable backtraces.
                .wasm_backtrace_details(WasmBacktraceDetails::Disable)
                .cranelift_opt_level(OptLevel::Speed)
                // Deep recursion in a module must trap, not exhaust the host stack.
                .max_wasm_stack(1024 * 1024)
                // Proposals proxy-wasm modules do not use and Envoy's runtimes do not offer,
                // refused at load: a second linear memory would escape the per-VM memory cap
                // (the limiter caps each memory, not their sum), and GC objects live outside
                // linear memory, where `Limits::max_memory_bytes` does not reach.
                .wasm_multi_memory(false)
                .wasm_gc(false);
            Engine::new(&config).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| HarnessError::Load(format!("cannot create the wasmtime engine: {e}")))
}

/// Cache statistics since the process started.
pub fn cache_stats() -> CacheStats {
    CacheStats {
        compilations: COMPILATIONS.load(Ordering::Relaxed),
        hits: HITS.load(Ordering::Relaxed),
    }
}

/// Compiles (or fetches from the cache) the module in `bytes` (binary or text format).
/// Returns the module and whether it came from the cache.
pub(crate) fn load(bytes: &[u8]) -> Result<(CompiledModule, bool), HarnessError> {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(found) = lock(cache).get(&digest) {
        HITS.fetch_add(1, Ordering::Relaxed);
        return Ok((found.clone(), true));
    }
    // Compile outside the lock: another thread compiling a different module is not blocked.
    let engine = engine()?;
    let module = Module::new(engine, bytes).map_err(|e| HarnessError::Load(format!("{e:#}")))?;
    let abi = detect_abi(&module)?;
    check_required_exports(&module)?;
    let linker = hostcalls::linker(engine, &module, abi)?;
    let instance_pre = linker
        .instantiate_pre(&module)
        .map_err(|e| HarnessError::Load(format!("{e:#}")))?;
    COMPILATIONS.fetch_add(1, Ordering::Relaxed);
    let compiled = CompiledModule {
        module,
        instance_pre,
        abi,
        sha256: digest,
    };
    lock(cache).insert(digest, compiled.clone());
    Ok((compiled, false))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves a map that is still consistent (inserts
    // are single operations), so a poisoned lock is safe to reuse.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Envoy reads the ABI version from the export names (`BytecodeUtil::getAbiVersion`) and refuses
/// modules without one ("Missing or unknown Proxy-Wasm ABI version").
fn detect_abi(module: &Module) -> Result<AbiVersion, HarnessError> {
    let mut found = None;
    for export in module.exports() {
        match export.name() {
            "proxy_abi_version_0_2_1" => found = Some(AbiVersion::V0_2_1),
            "proxy_abi_version_0_2_0" if found.is_none() => found = Some(AbiVersion::V0_2_0),
            "proxy_abi_version_0_1_0" if found.is_none() => {
                return Err(HarnessError::Abi(
                    "proxy-wasm ABI 0.1.0 is not supported by this harness (only 0.2.0 and 0.2.1)"
                        .into(),
                ))
            }
            _ => {}
        }
    }
    found.ok_or_else(|| {
        HarnessError::Abi(
            "Missing or unknown Proxy-Wasm ABI version: the module exports no \
             proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0 function"
                .into(),
        )
    })
}

fn check_required_exports(module: &Module) -> Result<(), HarnessError> {
    let names: Vec<&str> = module.exports().map(|e| e.name()).collect();
    if !names.contains(&"memory") {
        return Err(HarnessError::Abi(
            "the module exports no linear memory named `memory`".into(),
        ));
    }
    // Envoy looks up `malloc` first and falls back to `proxy_on_memory_allocate` (the spec prefers
    // the latter); it fails the VM when neither exists.
    if !names.contains(&"malloc") && !names.contains(&"proxy_on_memory_allocate") {
        return Err(HarnessError::Abi(
            "Wasm module is missing malloc function (export `malloc` or `proxy_on_memory_allocate`)"
                .into(),
        ));
    }
    Ok(())
}
