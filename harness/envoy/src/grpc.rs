//! A local gRPC (HTTP/2) server for end-to-end tests: an ext_authz `Authorization/Check`
//! service, a rate-limit service... It answers unary calls with a handler and records them.
//!
//! Messages are raw protobuf bytes: the test encodes and decodes them with its own types, so
//! the server stays independent of any service definition.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use tokio::sync::oneshot;

use super::EnvoyError;

/// A unary gRPC call as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcRequest {
    /// `/package.Service/Method`.
    pub path: String,
    /// Request headers (custom metadata and the HTTP/2 ones, lower-case names).
    pub metadata: Vec<(String, String)>,
    /// The request message (the gRPC frame's payload, without the 5-byte prefix).
    pub message: Vec<u8>,
}

impl GrpcRequest {
    /// A metadata value (first occurrence).
    pub fn metadata(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// How the server answers one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAnswer {
    /// Status OK with this response message.
    Message(Vec<u8>),
    /// A failed call (trailers-only response) with a non-zero status.
    Error {
        /// gRPC status code.
        status: u32,
        /// `grpc-message`.
        message: String,
    },
    /// Never answer (the caller's deadline fires); the stream is dropped when the caller resets
    /// it, the connection ends or the server stops.
    NoAnswer,
    /// Status OK with `message`, like [`GrpcAnswer::Message`], but after `delay` and with
    /// metadata: for a slow service (a deadline that fires first) or one whose metadata the
    /// filter reads. Names must be valid HTTP/2 header names (lower case), values valid header
    /// values (`-bin` ones already base64); otherwise the call fails with status 13 (INTERNAL)
    /// naming the bad entry.
    Reply {
        /// The response message.
        message: Vec<u8>,
        /// How long to wait before answering (other calls are served meanwhile).
        delay: Duration,
        /// Extra response headers (initial metadata), after `content-type`.
        initial_metadata: Vec<(String, String)>,
        /// Extra trailers (trailing metadata), after `grpc-status: 0`.
        trailing_metadata: Vec<(String, String)>,
    },
    /// Reset the HTTP/2 stream (RST_STREAM with `INTERNAL_ERROR`) after reading the call,
    /// without answering: a service that fails mid-call.
    Reset,
}

type GrpcHandler = dyn Fn(&GrpcRequest) -> GrpcAnswer + Send + Sync + 'static;

/// A gRPC server on 127.0.0.1 speaking HTTP/2 without TLS (prior knowledge), as Envoy talks to
/// a cluster with `http2_protocol_options` (see `Cluster::http2`). Stops when dropped.
pub struct GrpcTestServer {
    address: SocketAddr,
    received: Arc<Mutex<Vec<GrpcRequest>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for GrpcTestServer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("GrpcTestServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl GrpcTestServer {
    /// A server answering every unary call with `handler`'s answer.
    pub fn start(
        handler: impl Fn(&GrpcRequest) -> GrpcAnswer + Send + Sync + 'static,
    ) -> Result<Self, EnvoyError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|error| EnvoyError::io("binding a gRPC test server", error))?;
        let address = listener
            .local_addr()
            .map_err(|error| EnvoyError::io("reading a gRPC test server's address", error))?;
        listener
            .set_nonblocking(true)
            .map_err(|error| EnvoyError::io("configuring a gRPC test server", error))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|error| EnvoyError::io("starting a gRPC test server runtime", error))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<GrpcHandler> = Arc::new(handler);
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let received = Arc::clone(&received);
            std::thread::Builder::new()
                .name(format!("grpc-test-server-{address}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                            return;
                        };
                        tokio::select! {
                            () = accept_loop(listener, handler, received) => {}
                            _ = stopped => {}
                        }
                    });
                })
                .map_err(|error| EnvoyError::io("spawning a gRPC test server thread", error))?
        };
        Ok(Self {
            address,
            received,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// Every call received so far, in arrival order.
    pub fn requests(&self) -> Vec<GrpcRequest> {
        self.received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for GrpcTestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    handler: Arc<GrpcHandler>,
    received: Arc<Mutex<Vec<GrpcRequest>>>,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let handler = Arc::clone(&handler);
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let _ = serve_connection(socket, handler, received).await;
        });
    }
}

async fn serve_connection(
    socket: tokio::net::TcpStream,
    handler: Arc<GrpcHandler>,
    received: Arc<Mutex<Vec<GrpcRequest>>>,
) -> Result<(), h2::Error> {
    let mut connection = h2::server::handshake(socket).await?;
    // One task per stream, so a delayed or unanswered call does not hold up the others; the
    // accept loop drives the connection meanwhile.
    while let Some(stream) = connection.accept().await {
        let (request, respond) = stream?;
        let handler = Arc::clone(&handler);
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let _ = serve_stream(request, respond, &*handler, &received).await;
        });
    }
    Ok(())
}

async fn serve_stream(
    request: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    handler: &GrpcHandler,
    received: &Mutex<Vec<GrpcRequest>>,
) -> Result<(), h2::Error> {
    let path = request.uri().path().to_string();
    let metadata = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = request.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let call = GrpcRequest {
        path,
        metadata,
        // The 5-byte prefix: compressed flag and big-endian length.
        message: bytes.get(5..).unwrap_or_default().to_vec(),
    };
    let answer = handler(&call);
    received
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(call);
    match answer {
        GrpcAnswer::Message(message) => send_message(&mut respond, &message, &[], &[]),
        GrpcAnswer::Reply {
            message,
            delay,
            initial_metadata,
            trailing_metadata,
        } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            send_message(
                &mut respond,
                &message,
                &initial_metadata,
                &trailing_metadata,
            )
        }
        GrpcAnswer::Error { status, message } => send_error(&mut respond, status, &message),
        GrpcAnswer::NoAnswer => {
            // Held open until the caller resets the stream or the connection ends.
            let _ = std::future::poll_fn(|context| respond.poll_reset(context)).await;
            Ok(())
        }
        GrpcAnswer::Reset => {
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            Ok(())
        }
    }
}

/// Metadata as HTTP/2 header fields, or the first entry that is not a valid header.
fn metadata_fields(
    entries: &[(String, String)],
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    entries
        .iter()
        .map(|(name, value)| {
            let header = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid metadata name {name:?}"))?;
            let value = http::HeaderValue::from_str(value)
                .map_err(|_| format!("invalid metadata value {value:?} for {name:?}"))?;
            Ok((header, value))
        })
        .collect()
}

/// Answers OK: headers (with `initial` metadata), the length-prefixed message, then trailers
/// (`grpc-status: 0` and `trailing` metadata).
fn send_message(
    respond: &mut SendResponse<Bytes>,
    message: &[u8],
    initial: &[(String, String)],
    trailing: &[(String, String)],
) -> Result<(), h2::Error> {
    let (initial, trailing) = match (metadata_fields(initial), metadata_fields(trailing)) {
        (Ok(initial), Ok(trailing)) => (initial, trailing),
        (Err(problem), _) | (_, Err(problem)) => {
            return send_error(respond, 13, &format!("GrpcTestServer: {problem}"));
        }
    };
    let mut head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap_or_default();
    for (name, value) in initial {
        head.headers_mut().append(name, value);
    }
    let mut send = respond.send_response(head, false)?;
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(message);
    send.send_data(Bytes::from(frame), false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    for (name, value) in trailing {
        trailers.append(name, value);
    }
    send.send_trailers(trailers)
}

/// Answers with a trailers-only response carrying a non-zero status.
fn send_error(
    respond: &mut SendResponse<Bytes>,
    status: u32,
    message: &str,
) -> Result<(), h2::Error> {
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", status.to_string())
        .header("grpc-message", message)
        .body(())
        .unwrap_or_default();
    respond.send_response(head, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use h2::client::SendRequest;

    use super::*;

    /// Guard against a wedged test only; never a timing assertion.
    const GUARD: Duration = Duration::from_secs(20);

    #[derive(Debug)]
    struct Answered {
        headers: http::HeaderMap,
        message: Vec<u8>,
        trailers: Option<http::HeaderMap>,
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn connect(address: SocketAddr) -> SendRequest<Bytes> {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    async fn call(
        client: &SendRequest<Bytes>,
        path: &str,
        message: &[u8],
    ) -> Result<Answered, h2::Error> {
        let mut client = client.clone().ready().await?;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (response, mut stream) = client.send_request(request, false)?;
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(message);
        stream.send_data(Bytes::from(frame), true)?;
        let response = tokio::time::timeout(GUARD, response).await.unwrap()?;
        let (parts, mut body) = response.into_parts();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?;
        Ok(Answered {
            headers: parts.headers,
            message: bytes.get(5..).unwrap_or_default().to_vec(),
            trailers,
        })
    }

    fn answering(answer: GrpcAnswer) -> GrpcTestServer {
        GrpcTestServer::start(move |_| answer.clone()).unwrap()
    }

    fn one_call(server: &GrpcTestServer, message: &[u8]) -> Result<Answered, h2::Error> {
        runtime().block_on(async {
            let client = connect(server.addr()).await;
            call(&client, "/pkg.Svc/Do", message).await
        })
    }

    #[test]
    fn a_message_and_an_error_are_answered_as_before() {
        let server = answering(GrpcAnswer::Message(b"pong".to_vec()));
        let answered = one_call(&server, b"ping").unwrap();
        assert_eq!(answered.message, b"pong");
        assert_eq!(answered.trailers.unwrap()["grpc-status"], "0");
        let calls = server.requests();
        assert_eq!(calls[0].path, "/pkg.Svc/Do");
        assert_eq!(calls[0].message, b"ping");

        let server = answering(GrpcAnswer::Error {
            status: 7,
            message: "denied".to_string(),
        });
        let answered = one_call(&server, b"ping").unwrap();
        assert_eq!(answered.headers["grpc-status"], "7");
        assert_eq!(answered.headers["grpc-message"], "denied");
        assert!(answered.message.is_empty());
    }

    #[test]
    fn a_reply_waits_its_delay_and_carries_metadata() {
        let delay = Duration::from_millis(200);
        let server = answering(GrpcAnswer::Reply {
            message: b"late".to_vec(),
            delay,
            initial_metadata: vec![("x-initial".to_string(), "i".to_string())],
            trailing_metadata: vec![
                ("x-trailing".to_string(), "t1".to_string()),
                ("x-trailing".to_string(), "t2".to_string()),
            ],
        });
        let started = Instant::now();
        let answered = one_call(&server, b"").unwrap();
        // A lower bound the server guarantees (it sleeps before answering), not a race.
        assert!(started.elapsed() >= delay);
        assert_eq!(answered.message, b"late");
        assert_eq!(answered.headers["x-initial"], "i");
        assert_eq!(answered.headers["content-type"], "application/grpc");
        let trailers = answered.trailers.unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        let trailing: Vec<_> = trailers.get_all("x-trailing").iter().collect();
        assert_eq!(trailing, ["t1", "t2"]);
    }

    #[test]
    fn invalid_metadata_fails_the_call_naming_it() {
        let server = answering(GrpcAnswer::Reply {
            message: Vec::new(),
            delay: Duration::ZERO,
            initial_metadata: vec![("Bad Name".to_string(), "v".to_string())],
            trailing_metadata: Vec::new(),
        });
        let answered = one_call(&server, b"").unwrap();
        assert_eq!(answered.headers["grpc-status"], "13");
        assert!(answered.headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("Bad Name"));
    }

    #[test]
    fn reset_resets_the_stream_after_reading_the_call() {
        let server = answering(GrpcAnswer::Reset);
        let error = one_call(&server, b"ping").unwrap_err();
        assert_eq!(error.reason(), Some(h2::Reason::INTERNAL_ERROR), "{error}");
        assert_eq!(server.requests()[0].message, b"ping");
    }

    #[test]
    fn an_unanswered_call_does_not_hold_up_others_on_its_connection() {
        let server = GrpcTestServer::start(|call| {
            if call.path.ends_with("/Hang") {
                GrpcAnswer::NoAnswer
            } else {
                GrpcAnswer::Message(b"ok".to_vec())
            }
        })
        .unwrap();
        runtime().block_on(async {
            let client = connect(server.addr()).await;
            let hanging = {
                let client = client.clone();
                tokio::spawn(async move { call(&client, "/pkg.Svc/Hang", b"").await })
            };
            // The hanging call is in the server's hands before the second one goes out.
            let deadline = Instant::now() + GUARD;
            while server.requests().is_empty() {
                assert!(Instant::now() < deadline, "the first call never arrived");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let answered = call(&client, "/pkg.Svc/Fast", b"").await.unwrap();
            assert_eq!(answered.message, b"ok");
            assert!(!hanging.is_finished());
            hanging.abort();
        });
    }
}
