//! Simultaneous requests to a real Envoy: connections opened first (the kernel hands each to a
//! worker thread when it is accepted), then every request written at the same instant from its
//! own thread behind a barrier, so that the requests are in several workers' wasm VMs at once.
//!
//! (The rate-limit filter's tests hold the same few lines: test crates of different filters
//! share no code but the harness.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

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
    let barrier = Arc::new(Barrier::new(requests.len()));
    let clients: Vec<_> = requests
        .iter()
        .map(|headers| {
            let mut wire = "GET / HTTP/1.1\r\nhost: shop\r\n".to_string();
            for (name, value) in headers {
                wire.push_str(&format!("{name}: {value}\r\n"));
            }
            wire.push_str("\r\n");
            let mut stream = TcpStream::connect(listener).unwrap();
            stream.set_nodelay(true).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                stream.write_all(wire.as_bytes()).unwrap();
                let status = read_response(&mut stream);
                Reply {
                    status,
                    latency: started.elapsed(),
                }
            })
        })
        .collect();
    clients
        .into_iter()
        .map(|client| client.join().unwrap())
        .collect()
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
