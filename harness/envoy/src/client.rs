//! An HTTP/1.1 client that tells an answered request from a reset stream: one request per
//! connection.
//!
//! [`crate::send`] treats a connection closed mid-response as an error. Here it is a result:
//! Envoy resets a stream whose response headers already went downstream (a filter that fails or
//! replies late, a response over the buffer limit, an upstream that closes mid-body) by closing
//! the connection, and the client then holds a status and headers but no complete body. The
//! request is written from a second thread while the response is read, so a large body that
//! Envoy refuses early (413) does not block the client before it reads the answer.
//!
//! The request may carry its body as several chunks and trailers (see [`HttpRequest::chunks`]
//! and [`HttpRequest::trailers`]); the response's trailers, when it is chunked, are kept in
//! [`ClientResponse::trailers`].

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use crate::http1::{self, BodyEnd};
use crate::{EnvoyError, HttpRequest, RESPONSE_CODE_DETAILS_HEADER, SOCKET_TIMEOUT};

/// What the client got: a whole response, or what arrived before the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// Status, `None` when the connection closed before a response head.
    pub status: Option<u16>,
    /// Headers as received.
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked (as much as arrived when the response is incomplete).
    pub body: Vec<u8>,
    /// Trailers of a chunked response (empty otherwise, and when the response is incomplete).
    pub trailers: Vec<(String, String)>,
    /// Whether the whole response arrived (`false`: the stream was reset).
    pub complete: bool,
}

impl ClientResponse {
    /// What arrived of a response the connection closed inside.
    fn incomplete(status: Option<u16>, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        Self {
            status,
            headers,
            body,
            trailers: Vec::new(),
            complete: false,
        }
    }

    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        http1::header_value(&self.headers, name)
    }

    /// The first value of a trailer (name compared case-insensitively).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        http1::header_value(&self.trailers, name)
    }

    /// Response code details reported by the test bootstrap's local-reply mapper.
    pub fn response_code_details(&self) -> Option<&str> {
        self.header(RESPONSE_CODE_DETAILS_HEADER)
    }
}

/// Sends `request` (with `connection: close`) and reads the response, or what arrived of it
/// before the peer closed the connection. Errors are for what is not an answer: no connection,
/// a timeout ([`SOCKET_TIMEOUT`]), a response that is not HTTP/1.1.
pub fn send(address: SocketAddr, request: &HttpRequest) -> Result<ClientResponse, EnvoyError> {
    let context = format!("HTTP {} {} to {address}", request.method, request.path);
    let io_error = |error: io::Error| EnvoyError::io(context.clone(), error);
    let stream = TcpStream::connect_timeout(&address, SOCKET_TIMEOUT).map_err(io_error)?;
    stream
        .set_read_timeout(Some(SOCKET_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(SOCKET_TIMEOUT)))
        .map_err(io_error)?;
    let mut writer = stream.try_clone().map_err(io_error)?;
    let wire = request.to_wire();
    let is_head = request.method.eq_ignore_ascii_case("HEAD");
    std::thread::scope(|scope| {
        // Envoy may answer (and close) before it read the whole body: a failed write is not an
        // error, the response says what happened.
        scope.spawn(move || {
            let _ = writer.write_all(&wire);
        });
        read_response(&mut BufReader::new(&stream), is_head, &context)
    })
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

fn read_response(
    reader: &mut impl BufRead,
    is_head: bool,
    context: &str,
) -> Result<ClientResponse, EnvoyError> {
    let io_error = |error: io::Error| EnvoyError::io(context, error);
    let head = match http1::read_head(reader) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(ClientResponse::incomplete(None, Vec::new(), Vec::new())),
        Err(error) if is_closed(&error) => {
            return Ok(ClientResponse::incomplete(None, Vec::new(), Vec::new()))
        }
        Err(error) => return Err(io_error(error)),
    };
    let (status_line, headers) = http1::parse_head(&head)?;
    let status = http1::parse_status_line(&status_line)?;
    let mut body = Vec::new();
    if is_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(ClientResponse {
            status: Some(status),
            headers,
            body,
            trailers: Vec::new(),
            complete: true,
        });
    }
    match http1::read_body(reader, &headers, BodyEnd::Eof, &mut body) {
        Ok(trailers) => Ok(ClientResponse {
            status: Some(status),
            headers,
            body,
            trailers,
            complete: true,
        }),
        Err(error) if is_closed(&error) => {
            Ok(ClientResponse::incomplete(Some(status), headers, body))
        }
        Err(error) => Err(io_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HttpResponse, MockReply, MockServer};

    fn read(wire: &[u8], is_head: bool) -> ClientResponse {
        read_response(&mut &wire[..], is_head, "test").unwrap()
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
        assert!(chunked.trailers.is_empty());
    }

    #[test]
    fn a_chunked_response_keeps_its_trailers() {
        let response = read(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        );
        assert!(response.complete);
        assert_eq!(response.trailer("X-T"), Some("1"));
    }

    #[test]
    fn a_connection_closed_mid_body_or_before_the_head_is_a_reset() {
        let truncated = read(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", false);
        assert_eq!(truncated.status, Some(200));
        assert_eq!(truncated.body, b"abc");
        assert!(!truncated.complete);
        let chunked = read(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
            false,
        );
        assert!(!chunked.complete);
        let nothing = read(b"", false);
        assert_eq!(nothing.status, None);
        assert!(!nothing.complete);
        let half_head = read(b"HTTP/1.1 200 OK\r\ncontent-", false);
        assert_eq!(half_head.status, None);
        assert!(!half_head.complete);
    }

    #[test]
    fn a_response_that_is_not_http_is_an_error() {
        let error = read_response(&mut &b"SSH-2.0-x\r\n\r\n"[..], false, "test").unwrap_err();
        assert!(matches!(error, EnvoyError::MalformedHttp(_)), "{error}");
    }

    #[test]
    fn a_chunked_request_is_one_chunk_and_the_last() {
        let request = HttpRequest::post("/p", "hello").header("transfer-encoding", "chunked");
        let text = String::from_utf8(request.to_wire()).unwrap();
        assert!(
            text.ends_with(
                "transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
    }

    #[test]
    fn given_chunks_are_written_one_http_chunk_each_in_order() {
        let request = HttpRequest::new("PUT", "/c").chunks(vec![
            b"first".to_vec(),
            Vec::new(),
            b"second!".to_vec(),
        ]);
        assert_eq!(request.body, b"firstsecond!");
        let text = String::from_utf8(request.to_wire()).unwrap();
        assert!(
            text.ends_with(
                "transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nfirst\r\n7\r\nsecond!\r\n0\r\n\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
    }

    #[test]
    fn trailers_make_a_request_chunked_and_follow_the_last_chunk() {
        let request = HttpRequest::post("/t", "body").trailers(vec![
            ("x-checksum".to_string(), "abc".to_string()),
            ("x-more".to_string(), "1".to_string()),
        ]);
        let text = String::from_utf8(request.to_wire()).unwrap();
        assert!(
            text.ends_with(
                "transfer-encoding: chunked\r\nconnection: close\r\n\r\n4\r\nbody\r\n0\r\nx-checksum: abc\r\nx-more: 1\r\n\r\n"
            ),
            "{text}"
        );
        // An empty body with trailers is the last chunk alone, then the trailers.
        let empty = HttpRequest::get("/t").trailer("x-t", "1");
        let text = String::from_utf8(empty.to_wire()).unwrap();
        assert!(text.ends_with("\r\n\r\n0\r\nx-t: 1\r\n\r\n"), "{text}");
    }

    #[test]
    fn chunks_and_trailers_arrive_at_a_server_as_sent() {
        let server = MockServer::start(|_| {
            HttpResponse::new(200, "answered")
                .with_header("x-h", "1")
                .with_trailer("x-response-trailer", "done")
                .into()
        })
        .unwrap();
        let request = HttpRequest::new("POST", "/upload")
            .chunks(vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()])
            .trailers(vec![("x-request-trailer".to_string(), "sum".to_string())]);
        let response = send(server.addr(), &request).unwrap();
        assert!(response.complete);
        assert_eq!(response.status, Some(200));
        assert_eq!(response.body, b"answered");
        assert_eq!(response.header("x-h"), Some("1"));
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        assert_eq!(response.trailer("x-response-trailer"), Some("done"));

        let received = server.requests();
        assert_eq!(received.len(), 1);
        let seen = &received[0];
        assert_eq!(seen.body, b"onetwothree");
        assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
        assert_eq!(seen.trailer("x-request-trailer"), Some("sum"));
        // The strict client agrees.
        let strict = crate::send(server.addr(), &request).unwrap();
        assert_eq!(strict.trailers, response.trailers);
    }

    #[test]
    fn a_server_closing_mid_body_gives_an_incomplete_response_and_a_strict_error() {
        let server = MockServer::start(|_| MockReply::ResetAfterHeaders).unwrap();
        let response = send(server.addr(), &HttpRequest::get("/")).unwrap();
        assert_eq!(response.status, Some(200));
        assert!(!response.complete);
        let error = crate::send(server.addr(), &HttpRequest::get("/")).unwrap_err();
        assert!(matches!(error, EnvoyError::Io { .. }), "{error}");
    }
}
