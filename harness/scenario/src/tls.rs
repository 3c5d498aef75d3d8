//! The TLS `ClientHello` a connection step's client opens with when it names a server (`sni`):
//! the same bytes under both judges, so that Envoy's `tls_inspector` reads the name from them
//! and the filter and the upstream see them as the client's first bytes.

/// A TLS 1.2 `ClientHello` record naming `server_name` (SNI), with fixed contents (the random
/// is zeros): two cipher suites, no compression, the `server_name` extension only. Enough for
/// Envoy's TLS inspector, which reads the name and lets the bytes through untouched.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let name = server_name.as_bytes();
    let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let name = name.get(..usize::from(name_len)).unwrap_or_default();
    // server_name extension: list length, then (type host_name, length, name).
    let mut list = vec![0u8];
    list.extend_from_slice(&name_len.to_be_bytes());
    list.extend_from_slice(name);
    let mut extension = Vec::new();
    extension.extend_from_slice(&[0x00, 0x00]);
    extension.extend_from_slice(&u16_len(list.len() + 2));
    extension.extend_from_slice(&u16_len(list.len()));
    extension.extend_from_slice(&list);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0u8; 32]);
    body.push(0x00);
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2f, 0x00, 0x9c]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&u16_len(extension.len()));
    body.extend_from_slice(&extension);
    let mut handshake = vec![0x01];
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes();
    handshake.extend_from_slice(body_len.get(1..).unwrap_or_default());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16_len(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

fn u16_len(len: usize) -> [u8; 2] {
    u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_frames_its_lengths_and_carries_the_name() {
        let hello = client_hello("api.example.com");
        assert_eq!(&hello[..3], &[0x16, 0x03, 0x01]);
        let record_len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        assert_eq!(record_len, hello.len() - 5);
        assert_eq!(hello[5], 0x01);
        let body_len = usize::from(u16::from_be_bytes([hello[7], hello[8]]));
        assert_eq!(hello[6], 0);
        assert_eq!(body_len, hello.len() - 9);
        assert!(hello.ends_with(b"\x00\x00\x0fapi.example.com"));
    }
}
