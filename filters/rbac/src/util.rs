//! Small serde helpers shared by the configuration types.

use serde::{Deserialize, Deserializer};

/// A string that must not be empty (proto `min_len: 1`).
pub fn deserialize_non_empty<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    let value = String::deserialize(deserializer)?;
    if value.is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(value)
}

/// A field Envoy has and this filter does not support: deserializing it always fails with
/// `M::MESSAGE`, so the error names the field's JSON path.
pub struct Refused<M: Refusal>(std::marker::PhantomData<M>);

/// Why a field is refused.
pub trait Refusal {
    /// The error message.
    const MESSAGE: &'static str;
}

impl<'de, M: Refusal> Deserialize<'de> for Refused<M> {
    fn deserialize<D: Deserializer<'de>>(_deserializer: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(M::MESSAGE))
    }
}

impl<M: Refusal> std::fmt::Debug for Refused<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refused")
    }
}

/// Declares a [`Refusal`] type.
macro_rules! refusal {
    ($name:ident, $message:expr) => {
        #[derive(Debug)]
        pub struct $name;
        impl $crate::util::Refusal for $name {
            const MESSAGE: &'static str = $message;
        }
    };
}
pub(crate) use refusal;

/// Decodes base64url (RFC 4648 section 5), with or without padding, as JWT parts are encoded.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut output = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            output.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    // Six leftover bits cannot come from a valid encoding.
    if bits >= 6 {
        return None;
    }
    Some(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes_with_and_without_padding() {
        assert_eq!(base64url_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64url_decode("eyJhIjoxfQ==").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64url_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(base64url_decode(""), Some(Vec::new()));
        assert_eq!(base64url_decode("a"), None);
        assert_eq!(base64url_decode("ab+c"), None);
        assert_eq!(base64url_decode("ab/c"), None);
    }
}
