//! The request view every filter's logic works against.
//!
//! [`Request`] is what a filter sees of the HTTP exchange: request headers (pseudo-headers
//! included), response headers once they exist, connection properties, and header mutation.
//! Two implementations exist: [`MemoryRequest`] (plain data, for native tests) and the
//! host-backed one in [`crate::host`] (reads through proxy-wasm hostcalls lazily and caches
//! what it read for the duration of one callback).
//!
//! # Header semantics (as Envoy)
//! * Names are case-insensitive; the host stores them lower-case.
//! * A header may occur several times. [`Request::header`] returns all values joined with
//!   `","` (what Envoy's header matchers see, see `HeaderUtility::getAllOfHeaderAsString`);
//!   [`Request::header_values`] returns each value. Note that the raw proxy-wasm hostcall
//!   `proxy_get_header_map_value` returns only the *first* value; never rely on that for
//!   security decisions.
//! * `set_*` removes every existing value and appends the new one (Envoy's `setCopy`);
//!   `add_*` appends another value (`addCopy`); `remove_*` removes every value.
//! * Values that are not valid UTF-8 are exposed with U+FFFD replacement characters.
//!
//! # Properties
//! A request is also [`Properties`]: connection and stream attributes as Envoy encodes them
//! (see [`crate::properties`]).

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::error::Error;
use crate::properties::{MemoryProperties, Properties};

/// One header: lower-case name and value.
pub type Header = (String, String);

/// Which header map a mutation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderMapKind {
    /// Request headers (sent upstream).
    Request,
    /// Response headers (sent downstream).
    Response,
}

/// A header mutation, as recorded by [`MemoryRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMutation {
    /// Replace every value of `name` with `value`.
    Set {
        /// Target map.
        map: HeaderMapKind,
        /// Lower-case header name.
        name: String,
        /// New value.
        value: String,
    },
    /// Append another value for `name`.
    Add {
        /// Target map.
        map: HeaderMapKind,
        /// Lower-case header name.
        name: String,
        /// Added value.
        value: String,
    },
    /// Remove every value of `name`.
    Remove {
        /// Target map.
        map: HeaderMapKind,
        /// Lower-case header name.
        name: String,
    },
}

/// Joins every value of `name` in `headers` with `","`; borrowed when there is one value.
pub fn joined_value<'a>(headers: &'a [Header], name: &str) -> Option<Cow<'a, str>> {
    let mut values = headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str());
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for value in values {
                joined.push(',');
                joined.push_str(value);
            }
            Some(Cow::Owned(joined))
        }
    }
}

/// Percent-decodes every valid `%XX` (invalid escapes are kept as is; `+` is not a space),
/// as Envoy's `PercentEncoding::decode`. Bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        char::from(byte)
            .to_digit(16)
            .and_then(|digit| u8::try_from(digit).ok())
    }
    let input = text.as_bytes();
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        let decoded = (byte == b'%')
            .then(|| Some(hex(*input.get(i + 1)?)? * 16 + hex(*input.get(i + 2)?)?))
            .flatten();
        match decoded {
            Some(value) => {
                output.push(value);
                i += 3;
            }
            None => {
                output.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&output).into_owned()
}

/// The query parameters of a `:path` (`/p?a=1&b=x%20y#frag`), percent-decoded, in order, as
/// Envoy's `QueryParamsMulti::parseAndDecodeQueryString`. A parameter without `=` has an
/// empty value.
pub fn query_params(path: &str) -> Vec<(String, String)> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// The first value of `name` in `headers` (case-insensitive name).
pub fn first_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Applies a mutation to an in-memory header list with Envoy's semantics (used by
/// [`MemoryRequest`] and by the host-backed cache so both stay in step with the host).
pub fn apply_mutation(headers: &mut Vec<Header>, mutation: &HeaderMutation) {
    match mutation {
        HeaderMutation::Set { name, value, .. } => {
            headers.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
            insert_header(headers, name, value);
        }
        HeaderMutation::Add { name, value, .. } => insert_header(headers, name, value),
        HeaderMutation::Remove { name, .. } => {
            headers.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
        }
    }
}

/// Envoy keeps pseudo-headers (`:path`, ...) ahead of regular headers.
fn insert_header(headers: &mut Vec<Header>, name: &str, value: &str) {
    let entry = (name.to_ascii_lowercase(), value.to_string());
    if name.starts_with(':') {
        let position = headers
            .iter()
            .position(|(key, _)| !key.starts_with(':'))
            .unwrap_or(headers.len());
        headers.insert(position, entry);
    } else {
        headers.push(entry);
    }
}

/// Checks a header name before it is sent to the host: non-empty, no whitespace, controls,
/// `:` past the first byte, or upper-case letters' surprises (names are lower-cased).
pub fn validate_header_name(name: &str) -> Result<(), Error> {
    let body = name.strip_prefix(':').unwrap_or(name);
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if body.is_empty() || !body.bytes().all(token) {
        return Err(Error::InvalidArgument(format!(
            "invalid header name {name:?}"
        )));
    }
    Ok(())
}

/// Checks a header value: no NUL, CR or LF (Envoy would reject or, worse, split the header).
pub fn validate_header_value(value: &str) -> Result<(), Error> {
    if value.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
        return Err(Error::InvalidArgument(format!(
            "invalid header value {value:?}: contains NUL, CR or LF"
        )));
    }
    Ok(())
}

/// What a filter sees of one HTTP exchange.
///
/// Object-safe: logic takes `&mut dyn Request`.
pub trait Request: Properties {
    /// Request headers (pseudo-headers first), lower-case names, in host order.
    fn request_headers(&self) -> &[Header];

    /// Response headers; empty until the response phase.
    fn response_headers(&self) -> &[Header];

    /// Replaces every value of a request header (Envoy `setCopy`).
    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), Error>;

    /// Appends a request header value.
    fn add_request_header(&mut self, name: &str, value: &str) -> Result<(), Error>;

    /// Removes every value of a request header.
    fn remove_request_header(&mut self, name: &str) -> Result<(), Error>;

    /// Replaces every value of a response header.
    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), Error>;

    /// Appends a response header value.
    fn add_response_header(&mut self, name: &str, value: &str) -> Result<(), Error>;

    /// Removes every value of a response header.
    fn remove_response_header(&mut self, name: &str) -> Result<(), Error>;

    /// A request header, all values joined with `","` (case-insensitive name).
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        joined_value(self.request_headers(), name)
    }

    /// The first value of a request header (case-insensitive name), as Envoy's
    /// `proxy_get_header_map_value` answers: for logic that, like Envoy's own filter, looks at
    /// the first value only (the rate limit `request_headers` action). The host-backed request
    /// reads it with one small hostcall when the whole map was not read already, instead of
    /// having the host serialize every header and the guest parse them.
    fn first_header(&self, name: &str) -> Option<Cow<'_, str>> {
        first_value(self.request_headers(), name).map(Cow::Borrowed)
    }

    /// Every value of a request header, in order.
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.request_headers()
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// A response header, all values joined with `","`.
    fn response_header(&self, name: &str) -> Option<Cow<'_, str>> {
        joined_value(self.response_headers(), name)
    }

    /// `:method`.
    fn method(&self) -> Option<&str> {
        first_value(self.request_headers(), ":method")
    }

    /// `:path` as received (query included, not normalized; see
    /// [`crate::matcher::path::normalize_path`]).
    fn path(&self) -> Option<&str> {
        first_value(self.request_headers(), ":path")
    }

    /// The first value of query parameter `name` in `:path`, percent-decoded.
    fn query_param(&self, name: &str) -> Option<String> {
        query_params(self.path()?)
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// `:authority` (the Host).
    fn authority(&self) -> Option<&str> {
        first_value(self.request_headers(), ":authority")
    }

    /// `:scheme`.
    fn scheme(&self) -> Option<&str> {
        first_value(self.request_headers(), ":scheme")
    }
}

/// An in-memory [`Request`] for native tests: build it, hand it to the logic, inspect the
/// headers and the recorded [`HeaderMutation`]s afterwards.
#[derive(Debug, Clone, Default)]
pub struct MemoryRequest {
    request_headers: Vec<Header>,
    response_headers: Vec<Header>,
    properties: MemoryProperties,
    mutations: Vec<HeaderMutation>,
}

impl MemoryRequest {
    /// An empty request.
    pub fn new() -> Self {
        MemoryRequest::default()
    }

    /// A request with `:method`, `:path`, `:scheme` (`http`) and `:authority` (`example.com`).
    pub fn get(path: &str) -> Self {
        MemoryRequest::new()
            .with_header(":method", "GET")
            .with_header(":path", path)
            .with_header(":scheme", "http")
            .with_header(":authority", "example.com")
    }

    /// Adds a request header (another value if the name exists).
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        insert_header(&mut self.request_headers, name, value);
        self
    }

    /// Adds a response header.
    #[must_use]
    pub fn with_response_header(mut self, name: &str, value: &str) -> Self {
        insert_header(&mut self.response_headers, name, value);
        self
    }

    /// Sets a raw property.
    #[must_use]
    pub fn with_property(self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.with_properties(|properties| properties.with_property(path, value))
    }

    /// Sets `source.address`.
    #[must_use]
    pub fn with_source_address(self, address: SocketAddr) -> Self {
        self.with_properties(|properties| properties.with_source_address(address))
    }

    /// Sets `destination.address`.
    #[must_use]
    pub fn with_destination_address(self, address: SocketAddr) -> Self {
        self.with_properties(|properties| properties.with_destination_address(address))
    }

    /// Marks the connection as mTLS with the given peer URI SAN.
    #[must_use]
    pub fn with_mtls_peer(self, uri_san: &str) -> Self {
        self.with_properties(|properties| properties.with_mtls_peer(uri_san))
    }

    /// Sets properties with [`MemoryProperties`]' builders.
    #[must_use]
    pub fn with_properties(
        mut self,
        set: impl FnOnce(MemoryProperties) -> MemoryProperties,
    ) -> Self {
        self.properties = set(std::mem::take(&mut self.properties));
        self
    }

    /// Every mutation applied so far, in order.
    pub fn mutations(&self) -> &[HeaderMutation] {
        &self.mutations
    }

    fn mutate(&mut self, mutation: HeaderMutation) -> Result<(), Error> {
        let (name, value) = match &mutation {
            HeaderMutation::Set { name, value, .. } | HeaderMutation::Add { name, value, .. } => {
                (name.as_str(), Some(value.as_str()))
            }
            HeaderMutation::Remove { name, .. } => (name.as_str(), None),
        };
        validate_header_name(name)?;
        if let Some(value) = value {
            validate_header_value(value)?;
        }
        let map = match &mutation {
            HeaderMutation::Set { map, .. }
            | HeaderMutation::Add { map, .. }
            | HeaderMutation::Remove { map, .. } => *map,
        };
        let headers = match map {
            HeaderMapKind::Request => &mut self.request_headers,
            HeaderMapKind::Response => &mut self.response_headers,
        };
        apply_mutation(headers, &mutation);
        self.mutations.push(mutation);
        Ok(())
    }
}

/// Builds a mutation with a lower-cased name.
pub fn mutation(
    map: HeaderMapKind,
    kind: MutationKind,
    name: &str,
    value: Option<&str>,
) -> HeaderMutation {
    let name = name.to_ascii_lowercase();
    let value = value.unwrap_or_default().to_string();
    match kind {
        MutationKind::Set => HeaderMutation::Set { map, name, value },
        MutationKind::Add => HeaderMutation::Add { map, name, value },
        MutationKind::Remove => HeaderMutation::Remove { map, name },
    }
}

/// The three mutation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationKind {
    /// Replace all values.
    Set,
    /// Append a value.
    Add,
    /// Remove all values.
    Remove,
}

impl Properties for MemoryRequest {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.property(path)
    }
}

impl Request for MemoryRequest {
    fn request_headers(&self) -> &[Header] {
        &self.request_headers
    }

    fn response_headers(&self) -> &[Header] {
        &self.response_headers
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.mutate(mutation(
            HeaderMapKind::Request,
            MutationKind::Set,
            name,
            Some(value),
        ))
    }

    fn add_request_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.mutate(mutation(
            HeaderMapKind::Request,
            MutationKind::Add,
            name,
            Some(value),
        ))
    }

    fn remove_request_header(&mut self, name: &str) -> Result<(), Error> {
        self.mutate(mutation(
            HeaderMapKind::Request,
            MutationKind::Remove,
            name,
            None,
        ))
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.mutate(mutation(
            HeaderMapKind::Response,
            MutationKind::Set,
            name,
            Some(value),
        ))
    }

    fn add_response_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        self.mutate(mutation(
            HeaderMapKind::Response,
            MutationKind::Add,
            name,
            Some(value),
        ))
    }

    fn remove_response_header(&mut self, name: &str) -> Result<(), Error> {
        self.mutate(mutation(
            HeaderMapKind::Response,
            MutationKind::Remove,
            name,
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_headers_and_case_insensitive_lookup() {
        let request = MemoryRequest::get("/a?b=1").with_header("X-Trace", "abc");
        assert_eq!(request.method(), Some("GET"));
        assert_eq!(request.path(), Some("/a?b=1"));
        assert_eq!(request.authority(), Some("example.com"));
        assert_eq!(request.scheme(), Some("http"));
        assert_eq!(request.header("x-trace").as_deref(), Some("abc"));
        assert_eq!(request.header("X-TRACE").as_deref(), Some("abc"));
        assert_eq!(request.header("missing"), None);
    }

    #[test]
    fn multi_value_headers_join_with_comma() {
        let request = MemoryRequest::get("/")
            .with_header("x-forwarded-for", "1.1.1.1")
            .with_header("X-Forwarded-For", "2.2.2.2");
        assert_eq!(
            request.header("x-forwarded-for").as_deref(),
            Some("1.1.1.1,2.2.2.2")
        );
        assert_eq!(
            request.header_values("x-forwarded-for"),
            vec!["1.1.1.1", "2.2.2.2"]
        );
    }

    #[test]
    fn set_replaces_all_values_add_appends_remove_removes_all() {
        let mut request = MemoryRequest::get("/")
            .with_header("a", "1")
            .with_header("a", "2");
        request.set_request_header("A", "3").unwrap();
        assert_eq!(request.header_values("a"), vec!["3"]);
        request.add_request_header("a", "4").unwrap();
        assert_eq!(request.header("a").as_deref(), Some("3,4"));
        request.remove_request_header("a").unwrap();
        assert_eq!(request.header("a"), None);
        request.add_response_header("x-wasmesh", "hello").unwrap();
        assert_eq!(
            request.response_header("x-wasmesh").as_deref(),
            Some("hello")
        );
        assert_eq!(
            request.mutations(),
            &[
                HeaderMutation::Set {
                    map: HeaderMapKind::Request,
                    name: "a".into(),
                    value: "3".into()
                },
                HeaderMutation::Add {
                    map: HeaderMapKind::Request,
                    name: "a".into(),
                    value: "4".into()
                },
                HeaderMutation::Remove {
                    map: HeaderMapKind::Request,
                    name: "a".into()
                },
                HeaderMutation::Add {
                    map: HeaderMapKind::Response,
                    name: "x-wasmesh".into(),
                    value: "hello".into()
                },
            ]
        );
    }

    #[test]
    fn setting_a_pseudo_header_keeps_it_ahead_of_regular_headers() {
        let mut request = MemoryRequest::get("/old").with_header("x", "1");
        request.set_request_header(":path", "/new").unwrap();
        let names: Vec<&str> = request
            .request_headers()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            names,
            vec![":method", ":scheme", ":authority", ":path", "x"]
        );
        assert_eq!(request.path(), Some("/new"));
    }

    #[test]
    fn invalid_names_and_values_are_refused_without_mutating() {
        let mut request = MemoryRequest::get("/");
        assert!(request.set_request_header("bad name", "v").is_err());
        assert!(request.set_request_header("", "v").is_err());
        assert!(request.add_request_header("x", "a\r\nInjected: 1").is_err());
        assert!(request.mutations().is_empty());
        assert_eq!(request.header("x"), None);
    }

    #[test]
    fn query_parameters_are_split_and_percent_decoded() {
        let request = MemoryRequest::get("/p?access_token=a%2Bb%3D&x&empty=&x=2&sp=a+b#frag");
        assert_eq!(request.query_param("access_token").as_deref(), Some("a+b="));
        assert_eq!(request.query_param("x").as_deref(), Some(""));
        assert_eq!(request.query_param("empty").as_deref(), Some(""));
        assert_eq!(request.query_param("sp").as_deref(), Some("a+b"));
        assert_eq!(request.query_param("missing"), None);
        assert_eq!(query_params("/p").len(), 0);
        assert_eq!(query_params("/p?a=1&&b=%zz%4").len(), 2);
        assert_eq!(
            query_params("/p?a=1&&b=%zz%4")[1],
            ("b".to_string(), "%zz%4".to_string())
        );
        assert_eq!(percent_decode("%e2%82%ac%ff"), "\u{20ac}\u{fffd}");
        assert_eq!(MemoryRequest::new().query_param("a"), None);
    }
}
