//! Counting gRPC messages in a body stream, as Envoy's `grpc_stats` filter does.
//!
//! A gRPC body is a sequence of frames: a 1-byte flag, a 4-byte big-endian length, then that
//! many payload bytes. Frames may span body chunks. A message counts when its frame starts
//! (Envoy's `Grpc::FrameInspector`), so a stream cut mid-message still counts it.
//!
//! Only frame headers are read: small chunks in one read, large ones header by header, so the
//! cost does not grow with message size.

use wasmesh_sdk::body::Body;

/// Chunks up to this size are read whole; larger ones header by header.
const READ_WHOLE_CHUNK_BYTES: usize = 16 * 1024;

const FRAME_HEADER_BYTES: usize = 5;

/// The frame state of one direction of a gRPC stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameCounter {
    frames: u64,
    header: [u8; FRAME_HEADER_BYTES],
    header_bytes: usize,
    payload_left: u64,
}

impl FrameCounter {
    /// Messages started so far.
    pub fn messages(&self) -> u64 {
        self.frames
    }

    /// Feeds one body chunk (`Body` holds the chunk alone: the filter never buffers).
    pub fn feed(&mut self, body: &Body<'_>) {
        let size = body.size();
        if size <= READ_WHOLE_CHUNK_BYTES {
            match body.read_all() {
                Ok(bytes) => self.feed_with(bytes.len(), |start, max| {
                    bytes
                        .get(start..start.saturating_add(max).min(bytes.len()))
                        .unwrap_or_default()
                        .to_vec()
                }),
                // The chunk cannot be read: keep the frame state, skip its bytes.
                Err(_) => self.feed_with(size, |_, _| Vec::new()),
            }
        } else {
            self.feed_with(size, |start, max| {
                body.read_at(start, max).unwrap_or_default()
            });
        }
    }

    /// Feeds a chunk of `size` bytes readable with `read(start, max)`.
    pub fn feed_with(&mut self, size: usize, read: impl Fn(usize, usize) -> Vec<u8>) {
        let mut position = 0usize;
        while position < size {
            if self.payload_left > 0 {
                let available = u64::try_from(size - position).unwrap_or(u64::MAX);
                let skipped = self.payload_left.min(available);
                self.payload_left -= skipped;
                position += usize::try_from(skipped).unwrap_or(size);
                continue;
            }
            if self.header_bytes == 0 {
                self.frames += 1;
            }
            let wanted = FRAME_HEADER_BYTES - self.header_bytes;
            let bytes = read(position, wanted.min(size - position));
            if bytes.is_empty() {
                // Unreadable: give up on this chunk rather than loop.
                return;
            }
            for byte in bytes.iter().take(wanted) {
                if let Some(slot) = self.header.get_mut(self.header_bytes) {
                    *slot = *byte;
                }
                self.header_bytes += 1;
            }
            position += bytes.len().min(wanted);
            if self.header_bytes == FRAME_HEADER_BYTES {
                let [_, a, b, c, d] = self.header;
                self.payload_left = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.header_bytes = 0;
            }
        }
    }
}

/// Whether a `content-type` is gRPC's (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(content_type: &str) -> bool {
    let content_type = content_type.trim().to_ascii_lowercase();
    content_type == "application/grpc"
        || content_type.starts_with("application/grpc+")
        || content_type.starts_with("application/grpc;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::body::MemoryBody;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn count_in_chunks(stream: &[u8], chunk: usize) -> u64 {
        let mut counter = FrameCounter::default();
        for piece in stream.chunks(chunk) {
            counter.feed(&MemoryBody(piece.to_vec()).view(false));
        }
        counter.messages()
    }

    #[test]
    fn counts_frames_whatever_the_chunking() {
        let mut stream = frame(b"hello");
        stream.extend(frame(b""));
        stream.extend(frame(&[7; 300]));
        for chunk in [1, 2, 3, 4, 5, 6, 7, 100, 1000] {
            assert_eq!(count_in_chunks(&stream, chunk), 3, "chunk {chunk}");
        }
    }

    #[test]
    fn a_started_frame_counts_and_large_chunks_read_only_headers() {
        let mut stream = frame(&[1; 40_000]);
        stream.extend(frame(b"x"));
        stream.truncate(stream.len() - 1);
        assert_eq!(count_in_chunks(&stream, 40_010), 2);
        let reads = std::cell::Cell::new(0);
        let mut counter = FrameCounter::default();
        counter.feed_with(stream.len(), |start, max| {
            reads.set(reads.get() + 1);
            stream[start..(start + max).min(stream.len())].to_vec()
        });
        assert_eq!((counter.messages(), reads.get()), (2, 2));
    }

    #[test]
    fn unreadable_chunks_do_not_loop() {
        let mut counter = FrameCounter::default();
        counter.feed_with(10, |_, _| Vec::new());
        assert_eq!(counter.messages(), 1);
    }

    #[test]
    fn recognizes_grpc_content_types() {
        assert!(is_grpc("application/grpc"));
        assert!(is_grpc("application/grpc+proto"));
        assert!(is_grpc("Application/GRPC; charset=utf-8"));
        assert!(!is_grpc("application/grpc-web"));
        assert!(!is_grpc("application/json"));
    }
}
