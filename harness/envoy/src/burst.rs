//! Simultaneous requests to a real Envoy. The connections are opened first and given time to
//! be accepted (the kernel hands each to one of Envoy's worker threads), a reader thread waits
//! on each, then one thread writes every request back to back — a few microseconds apart, closer
//! than threads released by a barrier would be — so that the requests run in several workers'
//! wasm VMs at the same time.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::EnvoyError;

/// Time for Envoy's workers to accept the burst's connections before the requests go out.
const SETTLE: Duration = Duration::from_millis(50);

/// How long a reader waits for its response.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What one request of a burst got.
#[derive(Debug, Clone)]
pub struct BurstReply {
    /// HTTP status.
    pub status: u16,
    /// From writing the request to the end of the response.
    pub latency: Duration,
}

/// Sends one `GET /` per entry of `requests` (its extra headers) to `listener`, all at once; the
/// replies come back in the same order.
pub fn burst(
    listener: SocketAddr,
    requests: &[Vec<(String, String)>],
) -> Result<Vec<BurstReply>, EnvoyError> {
    let context = || format!("a burst of {} requests to {listener}", requests.len());
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for headers in requests {
        let mut wire = "GET / HTTP/1.1\r\nhost: shop\r\n".to_string();
        for (name, value) in headers {
            wire.push_str(&format!("{name}: {value}\r\n"));
        }
        wire.push_str("\r\n");
        let stream = TcpStream::connect(listener).map_err(|e| EnvoyError::io(context(), e))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(READ_TIMEOUT)))
            .map_err(|e| EnvoyError::io(context(), e))?;
        let mut reading = stream
            .try_clone()
            .map_err(|e| EnvoyError::io(context(), e))?;
        let (sent_at, sent) = mpsc::channel::<Instant>();
        readers.push(thread::spawn(move || {
            let status = read_status(&mut reading)?;
            let done = Instant::now();
            let started = sent.recv().unwrap_or(done);
            Ok(BurstReply {
                status,
                latency: done.saturating_duration_since(started),
            })
        }));
        writers.push((stream, wire, sent_at));
    }
    thread::sleep(SETTLE);
    for (stream, wire, sent_at) in &mut writers {
        // The reader is gone only if it already failed; its error is reported below.
        let _ = sent_at.send(Instant::now());
        stream
            .write_all(wire.as_bytes())
            .map_err(|e| EnvoyError::io(context(), e))?;
    }
    let replies = readers
        .into_iter()
        .map(|reader| {
            reader.join().unwrap_or_else(|_| {
                Err(EnvoyError::MalformedHttp(format!(
                    "{}: a reader thread panicked",
                    context()
                )))
            })
        })
        .collect();
    drop(writers);
    replies
}

/// Reads one HTTP/1.1 response with a `content-length` (Envoy's local and direct replies have
/// one) and returns its status. The connection stays open: no wait for Envoy's delayed close.
fn read_status(stream: &mut TcpStream) -> Result<u16, EnvoyError> {
    let malformed = |what: &str| EnvoyError::MalformedHttp(format!("burst response: {what}"));
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, _)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| malformed("no content-length"))?;
            if received.len() >= head.len() + 4 + length {
                return head
                    .split(' ')
                    .nth(1)
                    .and_then(|status| status.parse().ok())
                    .ok_or_else(|| malformed("no status line"));
            }
        }
        let read = stream
            .read(&mut chunk)
            .map_err(|e| EnvoyError::io("reading a burst response", e))?;
        if read == 0 {
            return Err(malformed("connection closed before the response ended"));
        }
        received.extend_from_slice(chunk.get(..read).unwrap_or_default());
    }
}

/// `downstream_cx_total` of each worker's listener (`worker_0`, `worker_1`, ...), from
/// Envoy's stats ([`crate::Envoy::stats`]), to show how connections spread over the workers.
pub fn connections_per_worker(stats: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    stats
        .iter()
        .filter(|(name, _)| {
            name.starts_with("listener.127.0.0.1_")
                && name.contains(".worker_")
                && name.ends_with(".downstream_cx_total")
        })
        .filter_map(|(name, value)| {
            let worker = name.split('.').find(|part| part.starts_with("worker_"))?;
            Some((worker.to_string(), *value))
        })
        .collect()
}
