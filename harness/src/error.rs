//! Errors reported to the harness user and proxy-wasm status codes returned to the guest.

use crate::types::LogEntry;

/// A proxy-wasm status code (`proxy_status_t`, Envoy's `WasmResult`), as returned by hostcalls.
///
/// The numeric values are part of the ABI. Envoy's `WasmResult` enum also has values the
/// specification does not list (`BadExpression`, `ResultMismatch`, `BrokenConnection`); they are
/// kept because Envoy returns them (e.g. `BrokenConnection` from `proxy_get_status` after a failed
/// HTTP callout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// `OK`
    Ok = 0,
    /// `NOT_FOUND`
    NotFound = 1,
    /// `BAD_ARGUMENT`
    BadArgument = 2,
    /// `SERIALIZATION_FAILURE`
    SerializationFailure = 3,
    /// `PARSE_FAILURE`
    ParseFailure = 4,
    /// `BAD_EXPRESSION` (Envoy only)
    BadExpression = 5,
    /// `INVALID_MEMORY_ACCESS`
    InvalidMemoryAccess = 6,
    /// `EMPTY`
    Empty = 7,
    /// `CAS_MISMATCH`
    CasMismatch = 8,
    /// `RESULT_MISMATCH` (Envoy only)
    ResultMismatch = 9,
    /// `INTERNAL_FAILURE`
    InternalFailure = 10,
    /// `BROKEN_CONNECTION` (Envoy only)
    BrokenConnection = 11,
    /// `UNIMPLEMENTED`
    Unimplemented = 12,
}

impl Status {
    /// The numeric ABI value.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The status for a numeric ABI value, if it is one.
    pub fn from_code(code: u32) -> Option<Status> {
        Some(match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            5 => Status::BadExpression,
            6 => Status::InvalidMemoryAccess,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            9 => Status::ResultMismatch,
            10 => Status::InternalFailure,
            11 => Status::BrokenConnection,
            12 => Status::Unimplemented,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?} ({})", self.code())
    }
}

/// Everything that can go wrong while loading, starting or driving a module.
///
/// Every variant carries plain data (no boxed sources) so the error can be cloned, stored as the
/// reason a VM failed, and compared in tests.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HarnessError {
    /// The module could not be read, parsed, compiled, linked or instantiated.
    #[error("failed to load the wasm module: {0}")]
    Load(String),
    /// The module does not follow the proxy-wasm ABI (no `proxy_abi_version_*` export, unsupported
    /// version, no allocator, a callback with a wrong signature, no exported memory).
    #[error("the module does not implement a supported proxy-wasm ABI: {0}")]
    Abi(String),
    /// `proxy_on_configure` returned false: Envoy rejects the plugin configuration.
    #[error("proxy_on_configure rejected the plugin configuration ({} log lines)", logs.len())]
    ConfigRejected {
        /// Every log line captured up to the rejection (the filter usually explains why).
        logs: Vec<LogEntry>,
    },
    /// `proxy_on_vm_start` returned false: Envoy fails to start the VM.
    #[error("proxy_on_vm_start returned false ({} log lines)", logs.len())]
    VmStartRejected {
        /// Every log line captured up to the rejection.
        logs: Vec<LogEntry>,
    },
    /// The module trapped (panic, `unreachable`, out-of-bounds access, stack overflow, ...).
    #[error("wasm trap in {callback}: {message}\n{}", backtrace.join("\n"))]
    Trap {
        /// The callback that was running (`proxy_on_request_headers`, `_initialize`, ...).
        callback: String,
        /// The trap reason, with the last log line of the module when it explains the panic.
        message: String,
        /// The wasm stack, innermost frame first, with demangled function names.
        backtrace: Vec<String>,
    },
    /// The module tried to grow its linear memory past [`crate::Limits::max_memory_bytes`].
    #[error("{callback} tried to grow linear memory to {requested_bytes} bytes, over the {limit_bytes} byte limit")]
    MemoryLimit {
        /// The callback that was running.
        callback: String,
        /// The size the module asked for.
        requested_bytes: u64,
        /// The configured cap.
        limit_bytes: u64,
        /// The wasm stack at the point the module gave up, innermost first.
        backtrace: Vec<String>,
    },
    /// The callback used up its fuel budget ([`crate::Limits::fuel_per_callback`]): runaway code.
    #[error("{callback} exhausted its fuel budget of {fuel} units (runaway code interrupted)")]
    FuelExhausted {
        /// The callback that was running.
        callback: String,
        /// The budget that was exhausted.
        fuel: u64,
        /// The wasm stack where execution was interrupted, innermost first.
        backtrace: Vec<String>,
    },
    /// A hostcall would have made the host hold more for the module than a [`crate::Limits`]
    /// cap allows (shared data keys or bytes, queued items, callouts dispatched by one
    /// callback). Envoy has no such caps (the proxy's memory is the limit); the harness has them
    /// so that a module that leaks or floods host-side state fails its test with this error, and
    /// the failure policy, instead of exhausting the memory of the test process.
    #[error("{callback} exceeded the harness limit on {resource} ({limit})")]
    ResourceLimit {
        /// The callback that was running.
        callback: String,
        /// What was capped, in words (`"shared data keys"`, `"bytes held in shared data and
        /// queues"`, `"queued items"`, `"callouts dispatched by one callback"`).
        resource: String,
        /// The cap.
        limit: u64,
        /// The wasm stack at the hostcall, innermost first.
        backtrace: Vec<String>,
    },
    /// The VM of this worker failed earlier and the failure policy does not allow using it.
    #[error("the VM of worker {worker} has failed: {reason}")]
    VmFailed {
        /// The worker whose VM failed.
        worker: usize,
        /// Why it failed (the original error, rendered).
        reason: String,
    },
    /// The harness was used in a way that has no meaning for a proxy (e.g. responding twice to a
    /// callout, re-entering the plugin from a mock handler).
    #[error("invalid use of the harness: {0}")]
    InvalidUse(String),
    /// Malformed serialized data (e.g. a header map that does not parse).
    #[error("malformed data: {0}")]
    Malformed(String),
}

impl HarnessError {
    /// The wasm backtrace carried by this error, if it is a VM crash.
    pub fn backtrace(&self) -> &[String] {
        match self {
            HarnessError::Trap { backtrace, .. }
            | HarnessError::MemoryLimit { backtrace, .. }
            | HarnessError::FuelExhausted { backtrace, .. }
            | HarnessError::ResourceLimit { backtrace, .. } => backtrace,
            _ => &[],
        }
    }

    /// Whether this error means the VM crashed (trap, memory cap, fuel exhaustion or a host-side
    /// resource cap).
    pub fn is_vm_crash(&self) -> bool {
        matches!(
            self,
            HarnessError::Trap { .. }
                | HarnessError::MemoryLimit { .. }
                | HarnessError::FuelExhausted { .. }
                | HarnessError::ResourceLimit { .. }
        )
    }
}
