//! One wasmtime [`Engine`] per process, and an in-process cache of compiled modules.
//!
//! Compiling a filter with Cranelift takes far longer than running a request through it, so a
//! test suite that starts hundreds of plugins compiles each distinct module once: modules are
//! found by their bytes, and the cache keeps the linked [`InstancePre`] so that instantiating a
//! VM is only memory setup. A lookup hashes a few samples of the bytes and then compares them
//! in full (memory speed); the SHA-256 that identifies a module is computed once, when it is
//! compiled (hashing a 1 MB module on every load took milliseconds). (A serialized on-disk cache
//! is not provided: `Module::deserialize` is `unsafe`, which this crate forbids.)

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
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
static CACHE: OnceLock<Mutex<HashMap<ContentKey, Vec<Cached>>>> = OnceLock::new();
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

/// A cached module and the bytes it was compiled from.
struct Cached {
    bytes: Box<[u8]>,
    compiled: CompiledModule,
}

/// Where a module is looked up: its length and a hash of samples of its bytes (the first and
/// last 4 KiB, where sections and build metadata differ, and 64 bytes of every 64 KiB). Modules
/// with equal keys are told apart by comparing their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ContentKey {
    len: usize,
    samples: u64,
}

impl ContentKey {
    const EDGE: usize = 4096;
    const STRIDE: usize = 64 * 1024;
    const SAMPLE: usize = 64;

    fn of(bytes: &[u8]) -> Self {
        let mut hasher = DefaultHasher::new();
        let len = bytes.len();
        bytes.get(..Self::EDGE.min(len)).hash(&mut hasher);
        bytes
            .get(len.saturating_sub(Self::EDGE)..)
            .hash(&mut hasher);
        for start in (Self::EDGE..len.saturating_sub(Self::EDGE)).step_by(Self::STRIDE) {
            bytes
                .get(start..(start + Self::SAMPLE).min(len))
                .hash(&mut hasher);
        }
        ContentKey {
            len,
            samples: hasher.finish(),
        }
    }
}

/// Compiles (or fetches from the cache) the module in `bytes` (binary or text format).
/// Returns the module and whether it came from the cache.
pub(crate) fn load(bytes: &[u8]) -> Result<(CompiledModule, bool), HarnessError> {
    let key = ContentKey::of(bytes);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(found) = cached(&lock(cache), key, bytes) {
        HITS.fetch_add(1, Ordering::Relaxed);
        return Ok((found, true));
    }
    let digest: [u8; 32] = Sha256::digest(bytes).into();
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
    let mut cache = lock(cache);
    let entries = cache.entry(key).or_default();
    // Another thread may have compiled the same module meanwhile: one entry per content.
    if !entries.iter().any(|entry| *entry.bytes == *bytes) {
        entries.push(Cached {
            bytes: bytes.into(),
            compiled: compiled.clone(),
        });
    }
    Ok((compiled, false))
}

fn cached(
    cache: &HashMap<ContentKey, Vec<Cached>>,
    key: ContentKey,
    bytes: &[u8],
) -> Option<CompiledModule> {
    cache
        .get(&key)?
        .iter()
        .find(|entry| *entry.bytes == *bytes)
        .map(|entry| entry.compiled.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid module whose text is `padding` bytes long around a function returning `value`,
    /// which sits in the middle: outside the bytes [`ContentKey`] samples.
    fn module(value: u32, padding: usize) -> Vec<u8> {
        let comment = format!(";; {}\n", "x".repeat(padding));
        format!(
            r#"(module {comment}
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const {value}))
  {comment})"#
        )
        .into_bytes()
    }

    #[test]
    fn modules_that_differ_only_between_samples_are_cached_apart() {
        let first = module(1111, 20_000);
        let second = module(2222, 20_000);
        assert_eq!(first.len(), second.len());
        assert_eq!(ContentKey::of(&first), ContentKey::of(&second));

        let (one, cached) = load(&first).unwrap();
        assert!(!cached);
        let (two, cached) = load(&second).unwrap();
        assert!(!cached, "different bytes must not be served from the cache");
        assert_ne!(one.sha256, two.sha256);
        let (again, cached) = load(&first).unwrap();
        assert!(cached);
        assert_eq!(again.sha256, one.sha256);
        assert_eq!(again.sha256, <[u8; 32]>::from(Sha256::digest(&first)));
    }

    #[test]
    fn content_key_sees_length_and_edges() {
        let base = module(1, 200_000);
        let mut tail = base.clone();
        let last = tail.len() - 10;
        tail[last] = b'y';
        assert_ne!(ContentKey::of(&base), ContentKey::of(&tail));
        assert_ne!(ContentKey::of(&base), ContentKey::of(&module(1, 200_001)));
        assert_eq!(ContentKey::of(&base), ContentKey::of(&base.clone()));
        assert_eq!(ContentKey::of(b"").len, 0);
    }
}
