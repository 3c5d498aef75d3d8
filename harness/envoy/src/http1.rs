//! HTTP/1.1 framing shared by the client ([`crate::client`]) and the local servers
//! ([`crate::MockServer`], [`crate::TestServer`]): reading a head, reading a body framed by
//! `content-length`, by chunked transfer-coding (with trailers) or by the end of the
//! connection, and writing a chunked body. One implementation, so the client and the servers
//! agree on every framing detail.

use std::io::{self, BufRead, Read};

use crate::EnvoyError;

/// Largest HTTP head (start line and headers) the client and servers accept.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Headers or trailers, in order, names as sent.
pub(crate) type Fields = Vec<(String, String)>;

/// The first value of a header (name compared case-insensitively).
pub(crate) fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Whether a header is present (name compared case-insensitively).
pub(crate) fn has_header(headers: &[(String, String)], name: &str) -> bool {
    header_value(headers, name).is_some()
}

/// Whether the headers frame the body with chunked transfer-coding.
pub(crate) fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
    })
}

/// Reads up to and including the blank line ending an HTTP head. `None` on a clean EOF before any
/// byte (a keep-alive connection closed by the peer).
pub(crate) fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let read = reader.read_until(b'\n', &mut head)?;
        if read == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside an HTTP head",
                ))
            };
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP head too large",
            ));
        }
        let line = head.get(before..).unwrap_or_default();
        if line == b"\r\n" || line == b"\n" {
            return Ok(Some(head));
        }
    }
}

/// Splits a head into its start line and headers.
pub(crate) fn parse_head(head: &[u8]) -> Result<(String, Fields), EnvoyError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let start_line = lines.next().unwrap_or_default().to_string();
    let headers = parse_fields(lines).map_err(EnvoyError::MalformedHttp)?;
    Ok((start_line, headers))
}

/// `name: value` lines (blank ones skipped) as pairs, values trimmed.
fn parse_fields<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Fields, String> {
    lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once(':')
                .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
                .ok_or_else(|| format!("bad header line {line:?}"))
        })
        .collect()
}

/// The status code of a response's status line.
pub(crate) fn parse_status_line(line: &str) -> Result<u16, EnvoyError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(EnvoyError::MalformedHttp(format!(
            "bad status line {line:?}"
        )));
    }
    code.parse()
        .map_err(|_| EnvoyError::MalformedHttp(format!("bad status code in {line:?}")))
}

/// What ends a body that has neither `content-length` nor chunked encoding.
#[derive(Clone, Copy)]
pub(crate) enum BodyEnd {
    /// A response: the body runs to EOF.
    Eof,
    /// A request: no body.
    Empty,
}

/// Reads a body framed as `headers` say into `body`, returning the trailers of a chunked body
/// (none otherwise). On an error, `body` holds what arrived: a client tells a stream reset
/// mid-body (an EOF or reset error, see `client::is_closed`) from a complete response by it.
pub(crate) fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    without_length: BodyEnd,
    body: &mut Vec<u8>,
) -> io::Result<Fields> {
    if is_chunked(headers) {
        return read_chunked(reader, body);
    }
    if let Some(length) = header_value(headers, "content-length") {
        let length: u64 = length.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad content-length {length:?}"),
            )
        })?;
        read_exactly(reader, length, body)?;
        return Ok(Vec::new());
    }
    if let BodyEnd::Eof = without_length {
        reader.read_to_end(body)?;
    }
    Ok(Vec::new())
}

/// Appends exactly `length` bytes to `body` (what arrived, then `UnexpectedEof`, when the
/// peer closes first). Reads through `take`, so a huge announced length allocates nothing
/// up front.
fn read_exactly(reader: &mut impl BufRead, length: u64, body: &mut Vec<u8>) -> io::Result<()> {
    let read = reader.take(length).read_to_end(body)?;
    if read as u64 == length {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

/// Reads one line (with its line ending); `UnexpectedEof` if the connection ends first.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line)
}

/// Reads a chunked body (chunk extensions ignored) into `body`, and returns its trailers.
pub(crate) fn read_chunked(reader: &mut impl BufRead, body: &mut Vec<u8>) -> io::Result<Fields> {
    let invalid = |problem: String| io::Error::new(io::ErrorKind::InvalidData, problem);
    loop {
        let size_line = read_line(reader)?;
        let size_text = size_line.trim().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size_text.trim(), 16)
            .map_err(|_| invalid(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            let mut lines = Vec::new();
            loop {
                let line = read_line(reader)?;
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                if line.is_empty() {
                    break;
                }
                lines.push(line);
            }
            return parse_fields(lines.iter().map(String::as_str)).map_err(invalid);
        }
        read_exactly(reader, size, body)?;
        let end = read_line(reader)?;
        if !end.trim_end_matches(['\r', '\n']).is_empty() {
            return Err(invalid(format!("chunk data followed by {end:?}, not CRLF")));
        }
    }
}

/// Appends `chunks` as chunked transfer-coding, one HTTP/1.1 chunk each in order, then the last
/// chunk, `trailers` and the final CRLF. Empty chunks are skipped: a chunk of size zero is the
/// last chunk, which would end the body early.
pub(crate) fn write_chunked<'a>(
    wire: &mut Vec<u8>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    trailers: &[(String, String)],
) {
    for chunk in chunks.into_iter().filter(|chunk| !chunk.is_empty()) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
}

/// The reason phrase the servers put on a status line.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_chunked_body_and_its_trailers() {
        let wire = b"4\r\nwasm\r\n5;ext=1\r\nesh!!\r\n0\r\nx-trailer: 1\r\nx-other:  two \r\n\r\n";
        let mut body = Vec::new();
        let trailers = read_chunked(&mut &wire[..], &mut body).unwrap();
        assert_eq!(body, b"wasmesh!!");
        assert_eq!(
            trailers,
            vec![
                ("x-trailer".to_string(), "1".to_string()),
                ("x-other".to_string(), "two".to_string()),
            ]
        );
    }

    #[test]
    fn a_chunked_body_cut_short_keeps_what_arrived() {
        let mut body = Vec::new();
        let error = read_chunked(&mut &b"4\r\nwasm\r\n5\r\nes"[..], &mut body).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(body, b"wasmes");
        // Missing the blank line after the last chunk is incomplete too.
        let error = read_chunked(&mut &b"0\r\nx-t: 1\r\n"[..], &mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn writes_chunks_in_order_skipping_empty_ones_then_trailers() {
        let mut wire = Vec::new();
        let trailers = vec![("x-t".to_string(), "v".to_string())];
        write_chunked(
            &mut wire,
            [&b"ab"[..], b"", &[b'c'; 17][..]],
            trailers.as_slice(),
        );
        let mut expected = b"2\r\nab\r\n11\r\n".to_vec();
        expected.extend_from_slice(&[b'c'; 17]);
        expected.extend_from_slice(b"\r\n0\r\nx-t: v\r\n\r\n");
        assert_eq!(wire, expected);
        let mut body = Vec::new();
        let read = read_chunked(&mut wire.as_slice(), &mut body).unwrap();
        assert_eq!(read, trailers);
        assert_eq!(body.len(), 19);
    }
}
