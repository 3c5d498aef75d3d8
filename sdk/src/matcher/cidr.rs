//! `envoy.config.core.v3.CidrRange`: `{"address_prefix": "10.0.0.0", "prefix_len": 8}`.
//!
//! As in Envoy: an unset `prefix_len` is 0 (the whole address family); host bits in
//! `address_prefix` are ignored (`10.1.2.3/8` is `10.0.0.0/8`); an IPv4 range never matches
//! an IPv6 address and vice versa (an IPv4-mapped IPv6 address such as `::ffff:10.0.0.1` is
//! an IPv6 address). A `prefix_len` larger than the family allows (33+ for IPv4, 129+ for
//! IPv6) is refused at load instead of yielding a range that silently matches nothing.

use std::net::IpAddr;

use serde::Deserialize;

use crate::config::proto;

/// A CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCidrRange")]
pub struct CidrRange {
    network: IpAddr,
    prefix_len: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCidrRange {
    address_prefix: String,
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    prefix_len: Option<u32>,
}

impl TryFrom<RawCidrRange> for CidrRange {
    type Error = String;

    fn try_from(raw: RawCidrRange) -> Result<Self, String> {
        let address: IpAddr = raw.address_prefix.parse().map_err(|_| {
            format!(
                "address_prefix {:?} is not an IP address",
                raw.address_prefix
            )
        })?;
        CidrRange::new(address, raw.prefix_len.unwrap_or(0))
    }
}

impl CidrRange {
    /// `address/prefix_len`, host bits cleared.
    pub fn new(address: IpAddr, prefix_len: u32) -> Result<Self, String> {
        let max = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix_len > max {
            return Err(format!(
                "prefix_len {prefix_len} is larger than {max} for {address}"
            ));
        }
        let prefix_len =
            u8::try_from(prefix_len).map_err(|_| "prefix_len out of range".to_string())?;
        Ok(CidrRange {
            network: mask(address, prefix_len),
            prefix_len,
        })
    }

    /// Parses `"10.0.0.0/8"` or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, len)) => (
                address,
                Some(
                    len.parse::<u32>()
                        .map_err(|_| format!("invalid prefix length in {text:?}"))?,
                ),
            ),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IP address"))?;
        let full = if address.is_ipv4() { 32 } else { 128 };
        CidrRange::new(address, prefix_len.unwrap_or(full))
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `address` lies in the range (same family only).
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(address, self.prefix_len) == self.network
            }
            _ => false,
        }
    }
}

fn mask(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(json: &str) -> CidrRange {
        serde_json::from_str(json).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges() {
        let private = range(r#"{"address_prefix": "10.1.2.3", "prefix_len": 8}"#);
        assert_eq!(private.network(), ip("10.0.0.0"));
        assert!(private.contains(ip("10.255.0.1")));
        assert!(!private.contains(ip("11.0.0.1")));
        let host = range(r#"{"address_prefix": "192.168.1.7", "prefix_len": 32}"#);
        assert!(host.contains(ip("192.168.1.7")));
        assert!(!host.contains(ip("192.168.1.8")));
        let everything = range(r#"{"address_prefix": "0.0.0.0"}"#);
        assert_eq!(everything.prefix_len(), 0);
        assert!(everything.contains(ip("203.0.113.9")));
        let odd = range(r#"{"address_prefix": "172.16.0.0", "prefix_len": "12"}"#);
        assert!(odd.contains(ip("172.31.255.255")));
        assert!(!odd.contains(ip("172.32.0.0")));
    }

    #[test]
    fn ipv6_ranges() {
        let doc = range(r#"{"address_prefix": "2001:db8::", "prefix_len": 32}"#);
        assert!(doc.contains(ip("2001:db8:ffff::1")));
        assert!(!doc.contains(ip("2001:db9::1")));
        let odd = range(r#"{"address_prefix": "2001:db8::", "prefix_len": 33}"#);
        assert!(odd.contains(ip("2001:db8:7fff::1")));
        assert!(!odd.contains(ip("2001:db8:8000::1")));
        let all = range(r#"{"address_prefix": "::", "prefix_len": 0}"#);
        assert!(all.contains(ip("::1")));
        let host = range(r#"{"address_prefix": "::1", "prefix_len": 128}"#);
        assert!(host.contains(ip("::1")));
        assert!(!host.contains(ip("::2")));
    }

    #[test]
    fn families_never_cross() {
        let all_v4 = range(r#"{"address_prefix": "0.0.0.0", "prefix_len": 0}"#);
        assert!(!all_v4.contains(ip("::ffff:10.0.0.1")));
        assert!(!all_v4.contains(ip("::1")));
        let all_v6 = range(r#"{"address_prefix": "::", "prefix_len": 0}"#);
        assert!(!all_v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn invalid_ranges_are_refused() {
        for bad in [
            r#"{"address_prefix": "10.0.0.0", "prefix_len": 33}"#,
            r#"{"address_prefix": "::", "prefix_len": 129}"#,
            r#"{"address_prefix": "10.0.0", "prefix_len": 8}"#,
            r#"{"address_prefix": "", "prefix_len": 8}"#,
            r#"{"address_prefix": "10.0.0.0", "prefix_len": -1}"#,
            r#"{"address_prefix": "10.0.0.0", "prefixlen": 8}"#,
        ] {
            assert!(serde_json::from_str::<CidrRange>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_slash_notation() {
        let parsed = CidrRange::parse("10.0.0.0/8").unwrap();
        assert!(parsed.contains(ip("10.9.9.9")));
        assert_eq!(CidrRange::parse("::1").unwrap().prefix_len(), 128);
        assert!(CidrRange::parse("10.0.0.0/x").is_err());
        assert!(CidrRange::parse("10.0.0.0/40").is_err());
    }
}
