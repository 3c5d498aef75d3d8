//! A local gRPC (HTTP/2) server for end-to-end tests: an ext_authz `Authorization/Check`
//! service, a rate-limit service... It answers unary calls with a handler and records them.
//!
//! Messages are raw protobuf bytes: the test encodes and decodes them with its own types, so
//! the server stays independent of any service definition.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
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
    /// Never answer (the caller's deadline fires); the stream is dropped when the server stops.
    NoAnswer,
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
    // Streams left unanswered on purpose, kept open until the connection ends.
    let mut held = Vec::new();
    while let Some(stream) = connection.accept().await {
        let (request, mut respond) = stream?;
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
            GrpcAnswer::Message(message) => {
                let head = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap_or_default();
                let mut send = respond.send_response(head, false)?;
                let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
                let mut frame = Vec::with_capacity(message.len() + 5);
                frame.push(0);
                frame.extend_from_slice(&length.to_be_bytes());
                frame.extend_from_slice(&message);
                send.send_data(Bytes::from(frame), false)?;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                send.send_trailers(trailers)?;
            }
            GrpcAnswer::Error { status, message } => {
                let head = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header("grpc-status", status.to_string())
                    .header("grpc-message", message)
                    .body(())
                    .unwrap_or_default();
                respond.send_response(head, true)?;
            }
            GrpcAnswer::NoAnswer => held.push(respond),
        }
    }
    Ok(())
}
