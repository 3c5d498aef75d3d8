//! The singleton service and the HTTP filter that feeds it of `harness/tests/singleton_vs_envoy.rs`,
//! written with the `proxy-wasm` crate alone (no wasmesh SDK), as filter authors outside wasmesh
//! write them. One module plays both parts, told apart by its VM configuration (`service...` or
//! anything else): the service registers queue `q`, sets a tick period of 500 ms (and 0 on its
//! first tick) and, on each `proxy_on_queue_ready`, dequeues one item and logs it; the filter
//! resolves `q` on each request (under another vm_id, under no vm_id and under `sq`) and enqueues
//! the request's `:path`. It logs the same `SQ <S|F> <event> <number>` lines as that test's WAT
//! module, `S` in the service's VM and `F` elsewhere (and before the VM knows its role).
//!
//! The role and the queue token belong to the VM (as the WAT module's globals do), so they are
//! statics here: every root context of the VM sees them.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        say("context_create", 0);
        Box::new(Root { context_id })
    });
}}

const SERVICE: u8 = 1;
const FILTER: u8 = 2;

/// `SERVICE`, `FILTER` or 0 before `proxy_on_vm_start`.
static ROLE: AtomicU8 = AtomicU8::new(0);
/// The token of queue `q` once the service registered it.
static TOKEN: AtomicU32 = AtomicU32::new(0);

/// Logs `SQ <S|F> <event> <n>`.
fn say(event: &str, n: u64) {
    let role = if ROLE.load(Ordering::Relaxed) == SERVICE {
        'S'
    } else {
        'F'
    };
    let _ = hostcalls::log(LogLevel::Info, &format!("SQ {role} {event} {n}"));
}

/// A crate result as the status code the ABI call answered.
fn status_of<T>(result: &Result<T, Status>) -> u64 {
    match result {
        Ok(_) => 0,
        Err(status) => *status as u64,
    }
}

struct Root {
    context_id: u32,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        say("done", self.context_id.into());
        true
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, size: usize) -> bool {
        if let Ok(Some(config)) = hostcalls::get_buffer(BufferType::VmConfiguration, 0, size) {
            let role = if config.first() == Some(&b's') {
                SERVICE
            } else {
                FILTER
            };
            ROLE.store(role, Ordering::Relaxed);
        }
        say("vm_start", size as u64);
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        say("configure", size as u64);
        if ROLE.load(Ordering::Relaxed) == SERVICE {
            // The crate's wrappers panic on any status but Ok, so only 0 is ever logged.
            let registered = hostcalls::register_shared_queue("q");
            say("register", status_of(&registered));
            if let Ok(token) = registered {
                TOKEN.store(token, Ordering::Relaxed);
            }
            let period = hostcalls::set_tick_period(Duration::from_millis(500));
            say("tick_period", status_of(&period));
        }
        true
    }

    fn on_tick(&mut self) {
        // One tick, then none: Envoy's ticks follow the wall clock.
        let period = hostcalls::set_tick_period(Duration::ZERO);
        say("tick", status_of(&period));
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        say(
            "queue_ready",
            u64::from(queue_id == TOKEN.load(Ordering::Relaxed)),
        );
        // One item per notification: Envoy posts one per enqueue.
        match hostcalls::dequeue_shared_queue(queue_id) {
            Ok(Some(item)) => say(&String::from_utf8_lossy(&item), 0),
            // The crate maps Empty (7), and Ok without bytes, to None.
            Ok(None) => say("dequeue", Status::Empty as u64),
            Err(status) => say("dequeue", status as u64),
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The crate has no `on_delete` callback: its dispatcher drops the context on
/// `proxy_on_delete`.
impl Drop for Root {
    fn drop(&mut self) {
        say("done", 1000 + u64::from(self.context_id));
    }
}

struct Filter {
    context_id: u32,
}

/// The status of resolving queue `q` under `vm_id`, and its token.
fn resolve(vm_id: &str) -> (u64, Option<u32>) {
    match hostcalls::resolve_shared_queue(vm_id, "q") {
        Ok(Some(token)) => (0, Some(token)),
        Ok(None) => (Status::NotFound as u64, None),
        Err(status) => (status as u64, None),
    }
}

impl Context for Filter {
    fn on_done(&mut self) -> bool {
        say("done", self.context_id.into());
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        say("resolve_other_vm_id", resolve("other").0);
        say("resolve_empty_vm_id", resolve("").0);
        let (status, token) = resolve("sq");
        say("resolve", status);
        if let Some(token) = token {
            let path = self.get_http_request_header(":path").unwrap_or_default();
            let enqueued = hostcalls::enqueue_shared_queue(token, Some(path.as_bytes()));
            say("enqueue", status_of(&enqueued));
        }
        Action::Continue
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        say("done", 1000 + u64::from(self.context_id));
    }
}
