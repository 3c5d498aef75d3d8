//! Simultaneous requests to a real Envoy. The connections are opened first and given time to
//! be accepted (the kernel hands each to one of Envoy's worker threads), a reader thread waits
//! on each, then one thread writes every request back to back — a few microseconds apart, closer
//! than threads released by a barrier would be — so that the requests run in several workers'
//! wasm VMs at the same time.
//!
//! (The fault filter's tests hold the same few lines: test crates of different filters
//! share no code but the harness.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Time for Envoy's workers to accept the burst's connections before the requests go out.
const SETTLE: Duration = Duration::from_millis(50);

/// What one request of a burst got.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// From writing the request to the end of the response.
    pub latency: Duration,
}

/// Sends one GET per entry of `requests` (its extra headers) to `listener`, all at once; the
/// replies come back in the same order.
pub fn burst(listener: SocketAddr, requests: &[Vec<(String, String)>]) -> Vec<Reply> {
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for headers in requests {
        let mut wire = "GET / HTTP/1.1\r\nhost: shop\r\n".to_string();
        for (name, value) in headers {
            wire.push_str(&format!("{name}: {value}\r\n"));
        }
        wire.push_str("\r\n");
        let stream = TcpStream::connect(listener).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reading = stream.try_clone().unwrap();
        let (sent_at, sent) = mpsc::channel::<Instant>();
        readers.push(thread::spawn(move || {
            let status = read_response(&mut reading);
            let done = Instant::now();
            let started = sent.recv().unwrap();
            Reply {
                status,
                latency: done - started,
            }
        }));
        writers.push((stream, wire, sent_at));
    }
    thread::sleep(SETTLE);
    for (stream, wire, sent_at) in &mut writers {
        sent_at.send(Instant::now()).unwrap();
        stream.write_all(wire.as_bytes()).unwrap();
    }
    let replies = readers
        .into_iter()
        .map(|reader| reader.join().unwrap())
        .collect();
    drop(writers);
    replies
}

/// Reads one HTTP/1.1 response with a `content-length` (Envoy's local and direct replies have
/// one) and returns its status. The connection stays open: no wait for Envoy's delayed close.
fn read_response(stream: &mut TcpStream) -> u16 {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let head = &text[..head_end];
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a response with content-length");
            if received.len() >= head_end + 4 + length {
                return head
                    .split(' ')
                    .nth(1)
                    .and_then(|status| status.parse().ok())
                    .expect("a status line");
            }
        }
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "connection closed before the response ended");
        received.extend_from_slice(&chunk[..read]);
    }
}

/// `downstream_cx_total` of each worker's listener (`worker_0`, `worker_1`, ...), from
/// Envoy's stats, to show how connections spread over the workers.
pub fn connections_per_worker(
    stats: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
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
