//! Bodies and connection data, as a filter sees them: an HTTP request body while the filter
//! buffers it, a response body chunk, or the bytes a network filter holds of a connection
//! ([`crate::network`]).
//!
//! A filter that needs the request body (an authorization check carrying it, a WAF) implements
//! [`crate::adapter::HttpFilter::on_request_body`]. Every call gets a [`Body`]: the size of the
//! body the proxy holds for this filter so far, whether the client has finished sending, and a
//! way to read those bytes.
//!
//! What the proxy holds depends on what the filter answered last time, as in Envoy:
//! * [`crate::decision::Decision::Pause`] keeps the chunk (`StopIterationAndBuffer`): the next
//!   call sees the previous chunks and the new one as one buffer;
//! * [`crate::decision::Decision::Continue`] lets the buffered body go on; the next call sees
//!   only new data.
//!
//! Envoy only hands body chunks to a filter whose request headers it still holds when the
//! plugin sets `allow_on_headers_stop_iteration: true`; without it, pausing the headers stops
//! everything and the body is not delivered until the filter resumes (see the policy filter's
//! README for the configuration).

use crate::error::Error;

/// Where the buffered bytes of a [`Body`] come from.
pub trait BodySource {
    /// Up to `max` bytes from offset `start` of the buffered body.
    fn read_body(&self, start: usize, max: usize) -> Result<Vec<u8>, Error>;
}

/// The bytes the proxy holds for the filter during one body or data callback.
pub struct Body<'a> {
    size: usize,
    end_of_stream: bool,
    source: &'a dyn BodySource,
}

impl<'a> Body<'a> {
    /// A body of `size` buffered bytes readable from `source`.
    pub fn new(size: usize, end_of_stream: bool, source: &'a dyn BodySource) -> Self {
        Body {
            size,
            end_of_stream,
            source,
        }
    }

    /// Bytes the proxy holds for the filter (every paused chunk plus this one).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the sender finished: the client sent the whole request body (no trailers follow),
    /// or the side of the connection this data came from ended.
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }

    /// The first `max` buffered bytes (fewer if the body is shorter).
    pub fn read_prefix(&self, max: usize) -> Result<Vec<u8>, Error> {
        let len = self.size.min(max);
        if len == 0 {
            return Ok(Vec::new());
        }
        self.source.read_body(0, len)
    }

    /// Up to `max` bytes from offset `start` (fewer past the end of the body), e.g. to read only
    /// the frame headers of a gRPC stream.
    pub fn read_at(&self, start: usize, max: usize) -> Result<Vec<u8>, Error> {
        let len = self.size.saturating_sub(start).min(max);
        if len == 0 {
            return Ok(Vec::new());
        }
        self.source.read_body(start, len)
    }

    /// Every buffered byte.
    pub fn read_all(&self) -> Result<Vec<u8>, Error> {
        self.read_prefix(self.size)
    }
}

/// A body held in memory, for native tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryBody(pub Vec<u8>);

impl MemoryBody {
    /// A [`Body`] view of these bytes.
    pub fn view(&self, end_of_stream: bool) -> Body<'_> {
        Body::new(self.0.len(), end_of_stream, self)
    }
}

impl BodySource for MemoryBody {
    fn read_body(&self, start: usize, max: usize) -> Result<Vec<u8>, Error> {
        let end = start.saturating_add(max).min(self.0.len());
        Ok(self.0.get(start..end).unwrap_or_default().to_vec())
    }
}

#[cfg(target_arch = "wasm32")]
pub use wasm::HostBuffer;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::BufferType;

    use super::BodySource;
    use crate::error::Error;

    /// One of the current context's buffers, read with `proxy_get_buffer_bytes`.
    #[derive(Debug, Clone, Copy)]
    pub struct HostBuffer(BufferType);

    impl HostBuffer {
        /// The request body an HTTP stream holds for the filter.
        pub const REQUEST_BODY: HostBuffer = HostBuffer(BufferType::HttpRequestBody);
        /// The response body chunk of an HTTP stream.
        pub const RESPONSE_BODY: HostBuffer = HostBuffer(BufferType::HttpResponseBody);
        /// The bytes from the client a connection holds for the filter.
        pub const DOWNSTREAM_DATA: HostBuffer = HostBuffer(BufferType::DownstreamData);
        /// The bytes from the upstream a connection holds for the filter.
        pub const UPSTREAM_DATA: HostBuffer = HostBuffer(BufferType::UpstreamData);
    }

    impl BodySource for HostBuffer {
        fn read_body(&self, start: usize, max: usize) -> Result<Vec<u8>, Error> {
            hostcalls::get_buffer(self.0, start, max)
                .map(Option::unwrap_or_default)
                .map_err(|status| Error::host("proxy_get_buffer_bytes", status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_body_reads_prefixes_within_bounds() {
        let body = MemoryBody(b"hello world".to_vec());
        let view = body.view(true);
        assert_eq!(view.size(), 11);
        assert!(view.end_of_stream());
        assert_eq!(view.read_prefix(5).unwrap(), b"hello");
        assert_eq!(view.read_prefix(100).unwrap(), b"hello world");
        assert_eq!(view.read_all().unwrap(), b"hello world");
        assert_eq!(body.read_body(6, 100).unwrap(), b"world");
        assert_eq!(body.read_body(50, 2).unwrap(), b"");
        assert_eq!(view.read_at(6, 3).unwrap(), b"wor");
        assert_eq!(view.read_at(9, 10).unwrap(), b"ld");
        assert_eq!(view.read_at(11, 1).unwrap(), b"");
        let empty = MemoryBody::default();
        assert_eq!(empty.view(false).read_all().unwrap(), b"");
        assert!(!empty.view(false).end_of_stream());
    }
}
