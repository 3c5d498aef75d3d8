//! TCP connections: Envoy's network filter `envoy.filters.network.wasm` in front of
//! `envoy.filters.network.tcp_proxy`, as one filter sees a connection.
//!
//! What is emulated, following `source/extensions/common/wasm/context.cc` (`onNewConnection`,
//! `onData`, `onWrite`, `onEvent`, `continueStream`, `closeStream`), proxy-wasm-cpp-host's
//! `onNetworkNewConnection`/`onDownstreamData`/`onUpstreamData`, and what Envoy 1.40 did in
//! `tests/tcp_vs_envoy.rs`:
//! - a connection creates its context (`proxy_on_context_create(id, root)`) and calls
//!   `proxy_on_new_connection` when it is accepted; 0 is `Continue`, anything else
//!   `StopIteration`, after which Envoy 1.40 connects no upstream and hands the filter no data
//!   (not even the client's end) until `proxy_continue_stream(Downstream)`;
//! - client bytes go to `proxy_on_downstream_data(len, end_of_stream)`, upstream bytes to
//!   `proxy_on_upstream_data`; during the callback the bytes are the `DownstreamData` (2) or
//!   `UpstreamData` (3) buffer, readable and writable (prepend at 0, append at or past the
//!   end); the other direction's buffer reads empty and refuses writes (`BadArgument`);
//! - `Continue` lets the buffer, as the filter left it, through; `StopIteration` keeps it in
//!   the connection's buffer and the next data of that side is appended to it: the filter is
//!   handed the whole buffer again (Envoy's network filter manager re-runs a stopped filter on
//!   its connection's read buffer). `proxy_continue_stream(Downstream)` lets the held client
//!   bytes through after the callback (`continueReading`, even from the callback that stops);
//!   `Upstream` is `Unimplemented` in Envoy 1.40;
//! - after `StopIteration` Envoy keeps pointing the filter at the connection's buffer until a
//!   callback of that side returns `Continue`: once `continueReading` drained it, other
//!   callbacks still read it (empty) and write into it, and those bytes go upstream ahead of
//!   the client's next ones;
//! - the upstream's end of stream (`upstream_data(.., true)`) is followed by
//!   `proxy_on_upstream_connection_close(Unknown)`, whatever the filter returned: Envoy calls it
//!   from `onWrite` rather than on an upstream connection event;
//! - once both sides ended, the downstream connection closes:
//!   `proxy_on_downstream_connection_close` with `Remote` (2) when the client's end came last,
//!   `Local` (1) when the upstream's end came last (Envoy writes it, then closes);
//! - `proxy_close_stream(Downstream or Upstream)` closes the downstream connection after the
//!   callback returns (`FlushWrite`): the bytes of that callback do not go through,
//!   `proxy_on_downstream_connection_close(Local)` runs while the callback's buffer is still
//!   reachable;
//! - a closed connection ends with `proxy_on_done`, then `proxy_on_log`, then
//!   `proxy_on_delete` (the reverse of an HTTP stream's `proxy_on_log`, `proxy_on_done`).

use crate::error::HarnessError;
use crate::plugin::{len_u32, Plugin, PluginInner};
use crate::property::PropertyValue;
use crate::stream::StreamHandle;
use crate::types::Action;
use crate::vm::TcpState;

/// Who closed a connection, as proxy-wasm's `proxy_peer_type_t` (Envoy's `CloseType`) tells
/// the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerType {
    /// Envoy does not know (0): what `proxy_on_upstream_connection_close` always gets, since
    /// Envoy calls it on the upstream's end of stream, not on a connection event.
    Unknown,
    /// Envoy closed the connection (1): the filter asked to, or the upstream's end came last,
    /// or the upstream failed and `tcp_proxy` closed the client's connection.
    Local,
    /// The client closed it (2).
    Remote,
}

impl PeerType {
    fn code(self) -> u32 {
        match self {
            PeerType::Unknown => 0,
            PeerType::Local => 1,
            PeerType::Remote => 2,
        }
    }

    fn from_code(code: u32) -> PeerType {
        match code {
            1 => PeerType::Local,
            2 => PeerType::Remote,
            _ => PeerType::Unknown,
        }
    }
}

/// One TCP connection through a network filter, driven as Envoy's listener and `tcp_proxy`
/// drive it (see the module documentation for what Envoy does at each step). The test plays
/// the client and the upstream: it sends each side's bytes and reads what went through.
pub struct TcpConnection {
    plugin: Plugin,
    worker: usize,
    handle: Option<StreamHandle>,
    pending_properties: Vec<(Vec<String>, PropertyValue)>,
}

impl TcpConnection {
    pub(crate) fn new(plugin: Plugin, worker: usize) -> Self {
        TcpConnection {
            plugin,
            worker,
            handle: None,
            pending_properties: Vec::new(),
        }
    }

    /// The worker (VM) this connection runs on.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The connection's context id in its VM, once it is open.
    pub fn context_id(&self) -> Option<u32> {
        self.handle.map(|h| h.context)
    }

    /// Sets a property of this connection (e.g. `["source", "address"]`); before [`Self::open`]
    /// so that `proxy_on_new_connection` sees it.
    pub fn property(&mut self, path: &[&str], value: impl Into<PropertyValue>) -> &mut Self {
        crate::stream::set_property(
            &self.plugin,
            self.worker,
            self.handle,
            &mut self.pending_properties,
            path,
            value.into(),
        );
        self
    }

    /// The connection is accepted: `proxy_on_context_create`, then `proxy_on_new_connection`.
    /// Returns what the filter answered (`Continue`, or `Pause` for `StopIteration`). Data
    /// sent before opening opens the connection first.
    pub fn open(&mut self) -> Result<Action, HarnessError> {
        if self.handle.is_some() {
            return Err(HarnessError::InvalidUse(
                "the connection is already open".into(),
            ));
        }
        let worker = self.worker;
        let properties = std::mem::take(&mut self.pending_properties);
        let (handle, result) = self.plugin.with_inner(|inner| {
            let tcp = Box::new(TcpState::default());
            let handle = inner.new_stream_context(worker, properties, Some(tcp))?;
            let result = inner.tcp_open(worker, handle);
            let drained = inner.drain_events();
            Ok((handle, result.and_then(|action| drained.map(|()| action))))
        })?;
        self.handle = Some(handle);
        result
    }

    fn handle(&mut self) -> Result<StreamHandle, HarnessError> {
        match self.handle {
            Some(handle) => Ok(handle),
            None => {
                self.open()?;
                self.handle
                    .ok_or_else(|| HarnessError::InvalidUse("the connection did not open".into()))
            }
        }
    }

    fn data(
        &mut self,
        downstream: bool,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HarnessError> {
        let handle = self.handle()?;
        let worker = self.worker;
        self.plugin.with_inner(|inner| {
            let result = inner.tcp_data(worker, handle, downstream, data, end_of_stream);
            let drained = inner.drain_events();
            let action = result?;
            drained?;
            Ok(action)
        })
    }

    /// Bytes from the client (`proxy_on_downstream_data`); `end_of_stream` when the client
    /// ends its side (a half-close; `&[]` with `true` is a bare half-close). Returns what the
    /// filter answered: `Continue` (the bytes went upstream) or `Pause` (`StopIteration`: they
    /// stay in the connection's buffer and the filter sees them again with the next bytes).
    pub fn downstream_data(
        &mut self,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HarnessError> {
        self.data(true, data, end_of_stream)
    }

    /// Bytes from the upstream (`proxy_on_upstream_data`), as [`Self::downstream_data`]. With
    /// `end_of_stream`, `proxy_on_upstream_connection_close(Unknown)` follows.
    pub fn upstream_data(
        &mut self,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HarnessError> {
        self.data(false, data, end_of_stream)
    }

    /// The upstream ends its side: `upstream_data(&[], true)`, which is how Envoy tells the
    /// filter (`proxy_on_upstream_connection_close(Unknown)` after the end of stream).
    pub fn upstream_close(&mut self) -> Result<Action, HarnessError> {
        self.upstream_data(&[], true)
    }

    /// The downstream connection closes for a reason of its own: the client resets it
    /// (`Remote`), or Envoy closes it (`Local`: an upstream that failed or reset, a timeout).
    /// Runs `proxy_on_downstream_connection_close(peer)`, then `proxy_on_done`, `proxy_on_log`
    /// and `proxy_on_delete`. (A connection both sides ended closes by itself.)
    pub fn downstream_close(&mut self, peer: PeerType) -> Result<(), HarnessError> {
        let handle = self.handle()?;
        let worker = self.worker;
        self.plugin.with_inner(|inner| {
            let result = inner.tcp_close(worker, handle, peer.code(), None);
            let drained = inner.drain_events();
            result.and(drained)
        })
    }

    fn read<R>(&self, f: impl FnOnce(&TcpState) -> R) -> Option<R> {
        let handle = self.handle?;
        let inner = self.plugin.inner.try_borrow().ok()?;
        let vm = inner.vm_ref(self.worker, handle.generation)?;
        vm.state()
            .exchange(handle.context)
            .and_then(|e| e.tcp.as_deref())
            .map(f)
    }

    /// The bytes that went upstream so far (client bytes as the filter left them).
    pub fn upstream_received(&self) -> Vec<u8> {
        self.read(|t| t.downstream.forwarded.clone())
            .unwrap_or_default()
    }

    /// The bytes the client received so far (upstream bytes as the filter left them).
    pub fn downstream_received(&self) -> Vec<u8> {
        self.read(|t| t.upstream.forwarded.clone())
            .unwrap_or_default()
    }

    /// The client's end of stream went upstream.
    pub fn upstream_got_end(&self) -> bool {
        self.read(|t| t.downstream.end_forwarded).unwrap_or(false)
    }

    /// The upstream's end of stream reached the client.
    pub fn client_got_end(&self) -> bool {
        self.read(|t| t.upstream.end_forwarded).unwrap_or(false)
    }

    /// Client bytes the filter holds back (`StopIteration`), not yet upstream.
    pub fn downstream_paused(&self) -> bool {
        self.read(|t| t.downstream.paused).unwrap_or(false)
    }

    /// Upstream bytes the filter holds back, not yet at the client.
    pub fn upstream_paused(&self) -> bool {
        self.read(|t| t.upstream.paused).unwrap_or(false)
    }

    /// What `proxy_on_new_connection` answered, once the connection is open (`Continue` again
    /// once a stopped connection was continued).
    pub fn new_connection_action(&self) -> Option<Action> {
        self.read(|t| t.new_connection).flatten()
    }

    /// How the downstream connection closed, once it did.
    pub fn closed(&self) -> Option<PeerType> {
        self.read(|t| t.closed.map(PeerType::from_code)).flatten()
    }

    /// The filter closed the connection (`proxy_close_stream`).
    pub fn closed_by_filter(&self) -> bool {
        self.read(|t| t.closed_by_filter).unwrap_or(false)
    }
}

impl Drop for TcpConnection {
    /// Forgets the state of a closed connection, as [`crate::HttpStream`] does; one left open
    /// keeps it (the module may still refer to its context).
    fn drop(&mut self) {
        let Some(handle) = self.handle else {
            return;
        };
        let Ok(mut inner) = self.plugin.inner.try_borrow_mut() else {
            return;
        };
        if let Ok(vm) = inner.vm(self.worker, handle.generation) {
            let state = vm.state_mut();
            if state
                .contexts
                .get(&handle.context)
                .is_some_and(|c| c.deleted)
            {
                state.contexts.remove(&handle.context);
            }
        }
    }
}

/// What a network callback's result means (proxy-wasm-cpp-host: 0 is `Continue`, anything
/// else `StopIteration`).
fn network_action(raw: u32) -> Action {
    if raw == 0 {
        Action::Continue
    } else {
        Action::Pause
    }
}

impl PluginInner {
    fn tcp_state(&mut self, worker: usize, handle: StreamHandle) -> Option<&mut TcpState> {
        self.exchange_mut(worker, handle)
            .and_then(|e| e.tcp.as_deref_mut())
    }

    /// Envoy's `onNewConnection`: `onCreate`, then `proxy_on_new_connection`.
    fn tcp_open(&mut self, worker: usize, handle: StreamHandle) -> Result<Action, HarnessError> {
        if let Some(error) = self.ensure_created(worker, handle) {
            return Err(error);
        }
        let context = handle.context;
        let vm = self.vm(worker, handle.generation)?;
        let result = match vm.exports.on_new_connection.clone() {
            Some(f) if !vm.is_failed() => vm
                .invoke("proxy_on_new_connection", f, context, context)
                .map(network_action),
            _ => Ok(Action::Continue),
        };
        let action = match result {
            Ok(action) => action,
            Err(error) => {
                self.tcp_failed(worker, handle)?;
                return Err(error);
            }
        };
        if let Some(tcp) = self.tcp_state(worker, handle) {
            tcp.new_connection = Some(action);
        }
        self.process_deferred(worker, handle.generation)?;
        Ok(action)
    }

    /// Envoy's `onData` (downstream) or `onWrite` (upstream).
    fn tcp_data(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        downstream: bool,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HarnessError> {
        let side = if downstream { "client" } else { "upstream" };
        let tcp = self
            .tcp_state(worker, handle)
            .ok_or_else(|| HarnessError::InvalidUse("the connection no longer exists".into()))?;
        if tcp.closed.is_some() {
            return Err(HarnessError::InvalidUse(format!(
                "the {side} sent data on a closed connection"
            )));
        }
        let stopped_at_open = tcp.new_connection == Some(Action::Pause);
        if stopped_at_open && !downstream {
            return Err(HarnessError::InvalidUse(
                "no upstream connection: the filter stopped at proxy_on_new_connection".into(),
            ));
        }
        let direction = tcp.direction_mut(downstream);
        if direction.end_received {
            return Err(HarnessError::InvalidUse(format!(
                "the {side} sent data after ending its side"
            )));
        }
        if stopped_at_open {
            // Envoy 1.40 hands the filter nothing more, and connects no upstream, until it
            // continues: the connection's buffer just fills.
            direction.buffer.extend_from_slice(data);
            direction.end_received = end_of_stream;
            direction.paused = true;
            return Ok(Action::Pause);
        }
        direction.buffer.extend_from_slice(data);
        direction.available = true;
        direction.end_received = end_of_stream;
        let size = len_u32(direction.buffer.len());
        let context = handle.context;
        let eos = u32::from(end_of_stream);
        let vm = self.vm(worker, handle.generation)?;
        let callback = if downstream {
            vm.exports.on_downstream_data.clone()
        } else {
            vm.exports.on_upstream_data.clone()
        };
        let name = if downstream {
            "proxy_on_downstream_data"
        } else {
            "proxy_on_upstream_data"
        };
        let result = match callback {
            Some(f) if !vm.is_failed() => vm
                .invoke(name, f, context, (context, size, eos))
                .map(network_action),
            _ => Ok(Action::Continue),
        };
        let action = match result {
            Ok(action) => action,
            Err(error) => {
                self.tcp_failed(worker, handle)?;
                return Err(error);
            }
        };
        if action == Action::Pause {
            // Stopped before the deferred actions run: a `continueReading` the callback asked
            // for lets the bytes through at once (Envoy resumes the chain from this filter).
            if let Some(tcp) = self.tcp_state(worker, handle) {
                tcp.direction_mut(downstream).paused = true;
            }
        }
        // Envoy runs the module's deferred actions (a close) before it clears the buffer.
        self.process_deferred(worker, handle.generation)?;
        let Some(tcp) = self.tcp_state(worker, handle) else {
            return Ok(action);
        };
        if tcp.closed.is_some() {
            return Ok(action);
        }
        if action == Action::Continue {
            tcp.direction_mut(downstream).pass();
        }
        if !downstream && end_of_stream {
            // Envoy's `onWrite`: on the upstream's end of stream, whatever the filter returned.
            self.tcp_upstream_connection_close(worker, handle)?;
        }
        self.tcp_close_if_ended(worker, handle, downstream)?;
        Ok(action)
    }

    /// `proxy_on_upstream_connection_close(Unknown)`.
    fn tcp_upstream_connection_close(
        &mut self,
        worker: usize,
        handle: StreamHandle,
    ) -> Result<(), HarnessError> {
        let context = handle.context;
        let vm = self.vm(worker, handle.generation)?;
        if let Some(f) = vm.exports.on_upstream_connection_close.clone() {
            if !vm.is_failed() {
                let code = PeerType::Unknown.code();
                if let Err(error) = vm.invoke(
                    "proxy_on_upstream_connection_close",
                    f,
                    context,
                    (context, code),
                ) {
                    self.tcp_failed(worker, handle)?;
                    return Err(error);
                }
            }
        }
        self.process_deferred(worker, handle.generation)
    }

    /// Once the client's end went upstream and the upstream's end reached the client, the
    /// downstream connection closes: `Remote` when the client's end came last (`last_downstream`),
    /// `Local` when the upstream's did.
    fn tcp_close_if_ended(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        last_downstream: bool,
    ) -> Result<(), HarnessError> {
        let ended = self.tcp_state(worker, handle).is_some_and(|tcp| {
            tcp.closed.is_none() && tcp.downstream.end_received && tcp.upstream.end_forwarded
        });
        if !ended {
            return Ok(());
        }
        let peer = if last_downstream {
            PeerType::Remote
        } else {
            PeerType::Local
        };
        self.tcp_close(worker, handle, peer.code(), None)
    }

    /// `proxy_close_stream` from the filter: Envoy closes the downstream connection.
    pub(crate) fn tcp_filter_close(
        &mut self,
        worker: usize,
        handle: StreamHandle,
    ) -> Result<(), HarnessError> {
        if let Some(tcp) = self.tcp_state(worker, handle) {
            if tcp.closed.is_none() {
                tcp.closed_by_filter = true;
            }
        }
        self.tcp_close(worker, handle, PeerType::Local.code(), None)
    }

    /// `continueReading`: the client bytes the filter held go upstream.
    pub(crate) fn tcp_continue_reading(
        &mut self,
        worker: usize,
        handle: StreamHandle,
    ) -> Result<(), HarnessError> {
        let Some(tcp) = self.tcp_state(worker, handle) else {
            return Ok(());
        };
        if tcp.new_connection == Some(Action::Pause) {
            // Stopped at `proxy_on_new_connection`: the chain resumes after this filter, so
            // `tcp_proxy` connects and the bytes held since go upstream without the filter
            // seeing them (not compared with Envoy).
            tcp.new_connection = Some(Action::Continue);
        }
        if tcp.closed.is_some() || !tcp.downstream.paused {
            return Ok(());
        }
        // `tcp_proxy` drains the connection's read buffer, but the filter's pointer to it stays
        // set (Envoy only clears it when a callback returns `Continue`): later callbacks still
        // reach, and may write into, that buffer, and what they write there goes upstream with
        // the next client bytes (measured with Envoy 1.40).
        let direction = &mut tcp.downstream;
        let buffer = std::mem::take(&mut direction.buffer);
        direction.forwarded.extend_from_slice(&buffer);
        direction.paused = false;
        if direction.end_received {
            direction.end_forwarded = true;
        }
        Ok(())
    }

    /// The downstream connection closed (`peer` as `proxy_peer_type_t`):
    /// `proxy_on_downstream_connection_close`, then `proxy_on_done`, `proxy_on_log` and
    /// `proxy_on_delete`. The buffers stay as they were: Envoy's pointers to them are still set
    /// while a close a callback asked for runs.
    fn tcp_close(
        &mut self,
        worker: usize,
        handle: StreamHandle,
        peer: u32,
        first_error: Option<HarnessError>,
    ) -> Result<(), HarnessError> {
        let Some(tcp) = self.tcp_state(worker, handle) else {
            return Ok(());
        };
        if tcp.closed.is_some() {
            return Ok(());
        }
        tcp.closed = Some(peer);
        let mut first_error = first_error;
        let context = handle.context;
        let vm = self.vm(worker, handle.generation)?;
        let created = vm
            .state()
            .contexts
            .get(&context)
            .is_some_and(|c| c.created_in_vm);
        if created && !vm.is_failed() {
            if let Some(f) = vm.exports.on_downstream_connection_close.clone() {
                if let Err(error) = vm.invoke(
                    "proxy_on_downstream_connection_close",
                    f,
                    context,
                    (context, peer),
                ) {
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(exchange) = self.exchange_mut(worker, handle) {
            exchange.finished = true;
        }
        self.destroy_context(worker, handle, false, first_error)
    }

    /// A callback trapped: Envoy fails the connection (closes it, `FlushWrite`) and the failed
    /// VM gets no more callbacks.
    fn tcp_failed(&mut self, worker: usize, handle: StreamHandle) -> Result<(), HarnessError> {
        self.vm(worker, handle.generation)?
            .state_mut()
            .deferred
            .clear();
        if let Some(tcp) = self.tcp_state(worker, handle) {
            tcp.closed.get_or_insert(PeerType::Local.code());
        }
        if let Some(exchange) = self.exchange_mut(worker, handle) {
            exchange.finished = true;
        }
        if let Ok(vm) = self.vm(worker, handle.generation) {
            if let Some(ctx) = vm.state_mut().contexts.get_mut(&handle.context) {
                ctx.deleted = true;
            }
        }
        Ok(())
    }
}
