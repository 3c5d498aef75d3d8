//! The corpus's HTTP/1.1 client: one request per connection, telling an answered request from a
//! reset stream.
//!
//! `wasmesh_envoy::send` treats a connection closed mid-response as an I/O error. Here it
//! is a result: Envoy resets a stream whose response headers already went downstream (a filter
//! that fails or replies late, a response over the buffer limit) by closing the connection, and
//! the client then holds a status and headers but no complete body. The request body is written
//! from a second thread while the response is read, so a large body that Envoy refuses early
//! (413) does not block the client before it reads the answer.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use wasmesh_envoy::{HttpRequest, RESPONSE_CODE_DETAILS_HEADER, SOCKET_TIMEOUT};

use crate::E2eError;

/// What the client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// Status, `None` when the connection closed before a response head.
    pub status: Option<u16>,
    /// Headers as received.
    pub headers: Vec<(String, String)>,
    /// Body (as much as arrived when the response is incomplete).
    pub body: Vec<u8>,
    /// Whether the whole response arrived (`false`: the stream was reset).
    pub complete: bool,
}

impl ClientResponse {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Response code details reported by the test bootstrap's local-reply mapper.
    pub fn response_code_details(&self) -> Option<&str> {
        self.header(RESPONSE_CODE_DETAILS_HEADER)
    }
}

/// Sends `request` (with `connection: close`) and reads the response, or what arrived of it.
pub fn send(address: SocketAddr, request: &HttpRequest) -> Result<ClientResponse, E2eError> {
    let context = |error: io::Error| {
        E2eError::Envoy(wasmesh_envoy::EnvoyError::Io {
            context: format!("HTTP {} {} to {address}", request.method, request.path),
            source: error,
        })
    };
    let stream = TcpStream::connect_timeout(&address, SOCKET_TIMEOUT).map_err(context)?;
    stream
        .set_read_timeout(Some(SOCKET_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(SOCKET_TIMEOUT)))
        .map_err(context)?;
    let mut writer = stream.try_clone().map_err(context)?;
    let wire = wire(request);
    let is_head = request.method.eq_ignore_ascii_case("HEAD");
    std::thread::scope(|scope| {
        // Envoy may answer (and close) before it read the whole body: a failed write is not an
        // error, the response says what happened.
        scope.spawn(move || {
            let _ = writer.write_all(&wire);
        });
        read_response(&mut BufReader::new(&stream), is_head).map_err(context)
    })
}

fn wire(request: &HttpRequest) -> Vec<u8> {
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.path);
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|(key, _)| key.eq_ignore_ascii_case(name))
    };
    if !has("host") {
        head.push_str("host: localhost\r\n");
    }
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let chunked = request.headers.iter().any(|(key, value)| {
        key.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    if !request.body.is_empty() && !chunked && !has("content-length") {
        head.push_str(&format!("content-length: {}\r\n", request.body.len()));
    }
    head.push_str("connection: close\r\n\r\n");
    let mut wire = head.into_bytes();
    if chunked {
        // The whole body as one chunk, then the last chunk.
        if !request.body.is_empty() {
            wire.extend_from_slice(format!("{:x}\r\n", request.body.len()).as_bytes());
            wire.extend_from_slice(&request.body);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
    } else {
        wire.extend_from_slice(&request.body);
    }
    wire
}

/// Whether an I/O error means the peer closed or reset the connection (a reset stream), rather
/// than a timeout or a local failure.
fn is_closed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn read_response(reader: &mut impl BufRead, is_head: bool) -> io::Result<ClientResponse> {
    let incomplete = |status, headers, body| ClientResponse {
        status,
        headers,
        body,
        complete: false,
    };
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(incomplete(None, Vec::new(), Vec::new())),
            Ok(_) => {}
            Err(error) if is_closed(&error) => return Ok(incomplete(None, Vec::new(), Vec::new())),
            Err(error) => return Err(error),
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let mut lines = lines.into_iter();
    let status_line = lines.next().unwrap_or_default();
    let status: Option<u16> = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok());
    let Some(status) = status else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        ));
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| {
            line.split_once(':')
                .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        })
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    };
    if is_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(ClientResponse {
            status: Some(status),
            headers,
            body: Vec::new(),
            complete: true,
        });
    }
    let chunked =
        value("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    let read = if chunked {
        read_chunked(reader, &mut body)
    } else if let Some(length) = value("content-length").and_then(|v| v.parse::<u64>().ok()) {
        reader.take(length).read_to_end(&mut body).and_then(|read| {
            if read as u64 == length {
                Ok(())
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            }
        })
    } else {
        reader.read_to_end(&mut body).map(|_| ())
    };
    match read {
        Ok(()) => Ok(ClientResponse {
            status: Some(status),
            headers,
            body,
            complete: true,
        }),
        Err(error) if is_closed(&error) => Ok(incomplete(Some(status), headers, body)),
        Err(error) => Err(error),
    }
}

fn read_chunked(reader: &mut impl BufRead, body: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let size_text = size_line.trim().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            loop {
                let mut line = String::new();
                let read = reader.read_line(&mut line)?;
                if read == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let read = reader.by_ref().take(size).read_to_end(body)?;
        if read as u64 != size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(wire: &[u8], is_head: bool) -> ClientResponse {
        read_response(&mut &wire[..], is_head).unwrap()
    }

    #[test]
    fn a_whole_response_is_complete() {
        let response = read(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: 1\r\n\r\nabc",
            false,
        );
        assert_eq!(response.status, Some(200));
        assert_eq!(response.body, b"abc");
        assert!(response.complete);
        assert_eq!(response.header("X-A"), Some("1"));
        let chunked = read(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            false,
        );
        assert_eq!(chunked.body, b"abc");
        assert!(chunked.complete);
    }

    #[test]
    fn a_connection_closed_mid_body_or_before_the_head_is_a_reset() {
        let truncated = read(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", false);
        assert_eq!(truncated.status, Some(200));
        assert!(!truncated.complete);
        let chunked = read(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
            false,
        );
        assert!(!chunked.complete);
        let nothing = read(b"", false);
        assert_eq!(nothing.status, None);
        assert!(!nothing.complete);
    }

    #[test]
    fn a_chunked_request_is_one_chunk_and_the_last() {
        let request = HttpRequest::post("/p", "hello").header("transfer-encoding", "chunked");
        let text = String::from_utf8(wire(&request)).unwrap();
        assert!(
            text.ends_with(
                "transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
    }

    #[test]
    fn a_head_response_has_no_body_whatever_its_length() {
        let response = read(
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 14\r\n\r\n",
            true,
        );
        assert!(response.complete);
        assert!(response.body.is_empty());
    }
}
