//! Local HTTP/1.1 servers on 127.0.0.1: [`MockServer`], programmable per request (answer,
//! answer late, reset, hang), for callout clusters and upstreams whose failures a test
//! exercises; [`TestServer`], the same server with a handler that always answers (an echo
//! upstream, a JWKS endpoint, an ext_authz service). Both record every request and stop when
//! dropped; [`refused_address`] is where nothing listens.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http1::{self, BodyEnd, Fields};
use crate::{EnvoyError, HttpResponse, SOCKET_TIMEOUT};

/// A request as a [`MockServer`] or [`TestServer`] received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRequest {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers in order as received.
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked.
    pub body: Vec<u8>,
    /// Trailers of a chunked body (empty otherwise). Envoy forwards request trailers over
    /// HTTP/1.1 only with `http_protocol_options.enable_trailers` on both sides.
    pub trailers: Vec<(String, String)>,
}

impl ReceivedRequest {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        http1::header_value(&self.headers, name)
    }

    /// The first value of a trailer (name compared case-insensitively).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        http1::header_value(&self.trailers, name)
    }

    /// The JSON document [`TestServer::echo`] answers with:
    /// `{"method": .., "path": .., "headers": [[name, value], ..], "body": ".."}`, plus
    /// `"trailers": [[name, value], ..]` when the request had trailers.
    pub fn to_json(&self) -> Value {
        let pairs = |fields: &[(String, String)]| {
            fields
                .iter()
                .map(|(name, value)| json!([name, value]))
                .collect::<Vec<_>>()
        };
        let mut document = json!({
            "method": self.method,
            "path": self.path,
            "headers": pairs(&self.headers),
            "body": String::from_utf8_lossy(&self.body),
        });
        if !self.trailers.is_empty() {
            crate::set_field(&mut document, "trailers", json!(pairs(&self.trailers)));
        }
        document
    }

    /// Decodes the request an echo server saw from the response that went back through Envoy.
    pub fn from_echo(response: &HttpResponse) -> Result<Self, EnvoyError> {
        let malformed = |problem: &str| {
            EnvoyError::MalformedHttp(format!(
                "not an echo response ({problem}): {}",
                response.text()
            ))
        };
        let document = response.json().map_err(|_| malformed("not JSON"))?;
        let text = |field: &str| {
            document
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| malformed(field))
        };
        let pairs = |field: &str| -> Result<Fields, EnvoyError> {
            document
                .get(field)
                .and_then(Value::as_array)
                .ok_or_else(|| malformed(field))?
                .iter()
                .map(|pair| {
                    match (
                        pair.get(0).and_then(Value::as_str),
                        pair.get(1).and_then(Value::as_str),
                    ) {
                        (Some(name), Some(value)) => Ok((name.to_string(), value.to_string())),
                        _ => Err(malformed(field)),
                    }
                })
                .collect()
        };
        let trailers = if document.get("trailers").is_some() {
            pairs("trailers")?
        } else {
            Vec::new()
        };
        Ok(Self {
            method: text("method")?,
            path: text("path")?,
            headers: pairs("headers")?,
            body: text("body")?.into_bytes(),
            trailers,
        })
    }
}

/// How a [`MockServer`] treats one request: the failures a callout or an upstream can meet,
/// each as Envoy sees it on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockReply {
    /// Answer with `response` after sleeping `delay` (zero: at once). A response with
    /// trailers is sent chunked; otherwise with `content-length`.
    Respond {
        /// The answer.
        response: HttpResponse,
        /// How long to wait before answering (a slow service, a callout timeout).
        delay: Duration,
    },
    /// Close the connection without answering (Envoy: a reset before the response headers).
    Reset,
    /// Send `200 OK` with `content-length: 1024` and only 7 body bytes (`partial`), then close
    /// the connection (Envoy: a reset after the response headers).
    ResetAfterHeaders,
    /// Never answer; the connection stays open until the peer closes it or the server stops
    /// (Envoy: a timeout fires).
    Hang,
}

impl MockReply {
    /// Answer with `response` at once.
    pub fn respond(response: HttpResponse) -> Self {
        Self::Respond {
            response,
            delay: Duration::ZERO,
        }
    }
}

impl From<HttpResponse> for MockReply {
    /// [`MockReply::respond`]: answer at once.
    fn from(response: HttpResponse) -> Self {
        Self::respond(response)
    }
}

/// What [`MockReply::ResetAfterHeaders`] writes before closing.
const RESET_AFTER_HEADERS_WIRE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1024\r\n\r\npartial";

type MockHandler = dyn Fn(&ReceivedRequest) -> MockReply + Send + Sync + 'static;

/// What the server, its acceptor and its connection threads share.
struct Shared {
    handler: Box<MockHandler>,
    received: Mutex<Vec<ReceivedRequest>>,
    /// Signalled on every recorded request ([`MockServer::wait_for_requests`]).
    arrived: Condvar,
    stopping: AtomicBool,
    /// Open connections by id, shut down when the server stops (a hanging one included).
    connections: Mutex<BTreeMap<u64, TcpStream>>,
    next_connection: AtomicU64,
}

/// Locks a mutex, going on with the data if a thread panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A programmable HTTP/1.1 server on 127.0.0.1: for each request the handler chooses a
/// [`MockReply`] (answer, answer late, reset before or after the headers, hang), so a test can
/// give a callout cluster or an upstream every behaviour Envoy must cope with. Records every
/// request; keep-alive connections are served until the peer closes them. Stops when dropped:
/// the listener closes and every open connection is shut down.
pub struct MockServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MockServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// A server treating every request as `handler` says.
    pub fn start(
        handler: impl Fn(&ReceivedRequest) -> MockReply + Send + Sync + 'static,
    ) -> Result<Self, EnvoyError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|error| EnvoyError::io("binding a mock server", error))?;
        let address = listener
            .local_addr()
            .map_err(|error| EnvoyError::io("reading a mock server's address", error))?;
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("mock-server-{address}"))
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(|error| EnvoyError::io("spawning a mock server thread", error))?
        };
        Ok(Self {
            address,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.received).clone()
    }

    /// Waits until at least `count` requests arrived and returns them all, failing after
    /// `timeout`: for requests that come outside the test's own calls (a callout Envoy makes
    /// while the test's request hangs, a periodic one). Woken by each arrival, no polling.
    pub fn wait_for_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedRequest>, EnvoyError> {
        let deadline = Instant::now() + timeout;
        let mut received = lock(&self.shared.received);
        while received.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EnvoyError::io(
                    format!("waiting for requests at mock server {}", self.address),
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{} of {count} requests arrived in {timeout:?}",
                            received.len()
                        ),
                    ),
                ));
            }
            received = self
                .shared
                .arrived
                .wait_timeout(received, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        Ok(received.clone())
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Every accepted connection is registered by now: end them all, hanging ones included.
        for connection in lock(&self.shared.connections).values() {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for connection in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(connection) = connection else {
            continue;
        };
        // A connection that cannot be registered could not be closed at stop: refuse it.
        let Ok(registered) = connection.try_clone() else {
            continue;
        };
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        lock(&shared.connections).insert(id, registered);
        let serving = Arc::clone(shared);
        // Connections end when the peer closes them (Envoy keeps upstream connections alive),
        // or when the server stops.
        let spawned = std::thread::Builder::new()
            .name("mock-server-connection".to_string())
            .spawn(move || {
                let _ = serve_connection(connection, &serving);
                // The registry holds the last handle: removing it closes the socket.
                lock(&serving.connections).remove(&id);
            });
        if spawned.is_err() {
            lock(&shared.connections).remove(&id);
        }
    }
}

fn serve_connection(connection: TcpStream, shared: &Shared) -> Result<(), EnvoyError> {
    let io_error = |error: io::Error| EnvoyError::io("serving a mock server connection", error);
    connection
        .set_read_timeout(Some(SOCKET_TIMEOUT))
        .map_err(io_error)?;
    let mut writer = connection.try_clone().map_err(io_error)?;
    let mut reader = BufReader::new(connection);
    while let Some(head) = http1::read_head(&mut reader).map_err(io_error)? {
        let (start_line, headers) = http1::parse_head(&head)?;
        let mut parts = start_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut body = Vec::new();
        let trailers =
            http1::read_body(&mut reader, &headers, BodyEnd::Empty, &mut body).map_err(io_error)?;
        let closing = http1::header_value(&headers, "connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"));
        let request = ReceivedRequest {
            method,
            path,
            headers,
            body,
            trailers,
        };
        let reply = (shared.handler)(&request);
        lock(&shared.received).push(request);
        shared.arrived.notify_all();
        match reply {
            MockReply::Respond { response, delay } => {
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                writer
                    .write_all(&response_wire(&response, closing))
                    .map_err(io_error)?;
                if closing {
                    let _ = writer.shutdown(Shutdown::Both);
                    return Ok(());
                }
            }
            MockReply::Reset => {
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            MockReply::ResetAfterHeaders => {
                let written = writer.write_all(RESET_AFTER_HEADERS_WIRE);
                let _ = writer.shutdown(Shutdown::Both);
                return written.map_err(io_error);
            }
            MockReply::Hang => {
                drain_until_closed(&mut reader, &shared.stopping);
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Reads and discards until the peer closes the connection or the server stops (which shuts
/// the connection down); a read timeout alone does not end the wait.
fn drain_until_closed(reader: &mut impl Read, stopping: &AtomicBool) {
    let mut discard = [0u8; 4096];
    loop {
        match reader.read(&mut discard) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) && !stopping.load(Ordering::SeqCst) => {}
            Err(_) => return,
        }
    }
}

fn response_wire(response: &HttpResponse, closing: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        http1::reason_phrase(response.status)
    );
    for (name, value) in &response.headers {
        // The server frames the body itself.
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let chunked = !response.trailers.is_empty();
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n");
    } else {
        head.push_str(&format!("content-length: {}\r\n", response.body.len()));
    }
    if closing {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut wire = head.into_bytes();
    if chunked {
        http1::write_chunked(&mut wire, [response.body.as_slice()], &response.trailers);
    } else {
        wire.extend_from_slice(&response.body);
    }
    wire
}

/// A local HTTP/1.1 server on 127.0.0.1 (an upstream, a JWKS endpoint, an ext_authz service)
/// answering every request with a handler's response, recording every request. It is a
/// [`MockServer`] whose handler always answers at once. Stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    server: MockServer,
}

impl TestServer {
    /// A server answering `200` with the request it received as JSON (see
    /// [`ReceivedRequest::to_json`]), so a test sees what the filter forwarded upstream.
    pub fn echo() -> Result<Self, EnvoyError> {
        Self::start(|request| {
            HttpResponse::new(200, request.to_json().to_string())
                .with_header("content-type", "application/json")
        })
    }

    /// A server answering every request with `handler`'s response.
    pub fn start(
        handler: impl Fn(&ReceivedRequest) -> HttpResponse + Send + Sync + 'static,
    ) -> Result<Self, EnvoyError> {
        Ok(Self {
            server: MockServer::start(move |request| MockReply::respond(handler(request)))?,
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.server.requests()
    }

    /// [`MockServer::wait_for_requests`]: waits until `count` requests arrived.
    pub fn wait_for_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedRequest>, EnvoyError> {
        self.server.wait_for_requests(count, timeout)
    }
}

/// A 127.0.0.1 address nobody listens on: a port the OS handed out, then released. A cluster
/// pointing there gets connection refused (Envoy: a connect failure, `503`), the closest a
/// test gets to a service that is down. Another process could take the port in between, which
/// is unlikely enough for tests.
pub fn refused_address() -> Result<SocketAddr, EnvoyError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|error| EnvoyError::io("binding a port to release", error))?;
    let address = listener
        .local_addr()
        .map_err(|error| EnvoyError::io("reading a released port", error))?;
    drop(listener);
    Ok(address)
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;

    use super::*;
    use crate::client;
    use crate::HttpRequest;

    /// Guard against a wedged test only; never a timing assertion.
    const GUARD: Duration = Duration::from_secs(20);

    #[test]
    fn respond_answers_and_records_the_request() {
        let server = MockServer::start(|request| {
            MockReply::respond(
                HttpResponse::new(201, format!("saw {}", request.path)).with_header("x-m", "1"),
            )
        })
        .unwrap();
        let response = client::send(
            server.addr(),
            &HttpRequest::post("/p?q=1", "abc").header("x-in", "2"),
        )
        .unwrap();
        assert!(response.complete);
        assert_eq!(response.status, Some(201));
        assert_eq!(response.body, b"saw /p?q=1");
        assert_eq!(response.header("x-m"), Some("1"));
        assert_eq!(response.header("content-length"), Some("10"));
        let received = server.requests();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "POST");
        assert_eq!(received[0].header("x-in"), Some("2"));
        assert_eq!(received[0].body, b"abc");
        assert!(received[0].trailers.is_empty());
    }

    #[test]
    fn respond_with_a_delay_answers_no_sooner() {
        let delay = Duration::from_millis(200);
        let server = MockServer::start(move |_| MockReply::Respond {
            response: HttpResponse::new(200, "late"),
            delay,
        })
        .unwrap();
        let started = Instant::now();
        let response = client::send(server.addr(), &HttpRequest::get("/")).unwrap();
        // A lower bound the server guarantees (it sleeps before writing), not a race.
        assert!(started.elapsed() >= delay);
        assert_eq!(response.body, b"late");
        assert!(response.complete);
    }

    #[test]
    fn reset_closes_the_connection_without_an_answer() {
        let server = MockServer::start(|_| MockReply::Reset).unwrap();
        let response = client::send(server.addr(), &HttpRequest::get("/r")).unwrap();
        assert_eq!(response.status, None);
        assert!(!response.complete);
        assert_eq!(server.requests().len(), 1);
        // The strict client reports it as an error.
        assert!(crate::send(server.addr(), &HttpRequest::get("/r")).is_err());
    }

    #[test]
    fn reset_after_headers_sends_a_head_then_closes_mid_body() {
        let server = MockServer::start(|_| MockReply::ResetAfterHeaders).unwrap();
        let response = client::send(server.addr(), &HttpRequest::get("/")).unwrap();
        assert_eq!(response.status, Some(200));
        assert_eq!(response.header("content-length"), Some("1024"));
        assert_eq!(response.body, b"partial");
        assert!(!response.complete);
    }

    #[test]
    fn hang_never_answers_and_the_connection_closes_when_the_server_stops() {
        let server = MockServer::start(|_| MockReply::Hang).unwrap();
        let address = server.addr();
        let client = std::thread::spawn(move || client::send(address, &HttpRequest::get("/h")));
        let received = server.wait_for_requests(1, GUARD).unwrap();
        assert_eq!(received[0].path, "/h");
        drop(server);
        // Had the server answered before it stopped, the client would hold a status.
        let response = client.join().unwrap().unwrap();
        assert_eq!(response.status, None);
        assert!(!response.complete);
    }

    #[test]
    fn keep_alive_connections_are_served_and_closed_when_the_server_stops() {
        let server = TestServer::start(|_| HttpResponse::new(200, "ok")).unwrap();
        let stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        for _ in 0..2 {
            writer
                .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let head = http1::read_head(&mut reader).unwrap().unwrap();
            assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
            let mut body = [0u8; 2];
            reader.read_exact(&mut body).unwrap();
            assert_eq!(&body, b"ok");
        }
        drop(server);
        // EOF, not a timeout: the stopped server shut the connection down.
        assert_eq!(reader.fill_buf().unwrap().len(), 0);
    }

    #[test]
    fn wait_for_requests_fails_after_its_timeout() {
        let server = MockServer::start(|_| MockReply::Reset).unwrap();
        let error = server
            .wait_for_requests(1, Duration::from_millis(1))
            .unwrap_err();
        assert!(error.to_string().contains("0 of 1 requests"), "{error}");
    }

    #[test]
    fn refused_address_refuses_connections() {
        let address = refused_address().unwrap();
        assert_eq!(address.ip().to_string(), "127.0.0.1");
        let error = TcpStream::connect_timeout(&address, GUARD).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        let error = client::send(address, &HttpRequest::get("/")).unwrap_err();
        assert!(matches!(error, EnvoyError::Io { .. }), "{error}");
    }

    #[test]
    fn echo_reports_trailers_only_when_there_are_some() {
        let server = TestServer::echo().unwrap();
        let plain = crate::send(server.addr(), &HttpRequest::get("/e")).unwrap();
        assert!(plain.json().unwrap().get("trailers").is_none());
        let with_trailers = crate::send(
            server.addr(),
            &HttpRequest::post("/e", "b").trailer("x-t", "1"),
        )
        .unwrap();
        let seen = ReceivedRequest::from_echo(&with_trailers).unwrap();
        assert_eq!(seen.body, b"b");
        assert_eq!(seen.trailer("x-t"), Some("1"));
        assert_eq!(seen, server.requests()[1]);
    }
}
