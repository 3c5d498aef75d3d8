//! The expressions of Istio's stats configuration (`dimensions` values, `definitions[].value`,
//! access-log `fields`): a documented subset of CEL, checked when the configuration loads.
//!
//! Supported forms:
//! * an attribute path, Envoy's attribute names: `request.host`, `request.headers['x-user']`,
//!   `response.code`, `connection.mtls`, `source.address`, `destination.port`, `upstream.address`,
//!   `node.metadata['CLUSTER_ID']`, `metadata.filter_metadata['envoy.filters.http.jwt_authn']['payload']['sub']`
//!   (a JWT claim), `filter_state['key']`, `cluster_name`, `route_name`, ...;
//! * Istio's peer attributes: `downstream_peer.<field>` / `upstream_peer.<field>` with `name`,
//!   `namespace`, `workload`, `cluster`, `app`, `version`, `service`, `revision`,
//!   `service_account`, `mesh_id`, `labels['key']`;
//! * a string literal (`'value'` or `"value"`), an integer literal (`1`);
//! * `string(<expression>)`.
//!
//! Anything else (operators, ternaries, `has()`, ...) is a configuration error naming the
//! expression, never silently evaluated as something else.

use crate::peer::NodeInfo;
use crate::util::{cel_duration, from_unix_nanos, rfc3339_millis};
use wasmesh_sdk::properties::decode_int as decode_i64;

/// Which peer a `*_peer` attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client side (`downstream_peer`), known on inbound traffic.
    Downstream,
    /// The server side (`upstream_peer`), known on outbound traffic.
    Upstream,
}

/// A field of a peer's node metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerField {
    /// Pod name.
    Name,
    /// Namespace.
    Namespace,
    /// Workload name.
    Workload,
    /// Cluster id.
    Cluster,
    /// App label.
    App,
    /// Version label.
    Version,
    /// Canonical service.
    Service,
    /// Canonical revision.
    Revision,
    /// Service account.
    ServiceAccount,
    /// Mesh id.
    MeshId,
    /// A label.
    Label(String),
}

/// How Envoy encodes an attribute's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raw UTF-8.
    String,
    /// 8-byte little-endian signed.
    Int,
    /// 8-byte little-endian unsigned.
    Uint,
    /// One byte.
    Bool,
    /// 8-byte little-endian nanoseconds.
    Duration,
    /// 8-byte little-endian nanoseconds since the epoch.
    Timestamp,
}

/// A value an attribute refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// A request header (lower-case name; repeated values joined with `,`).
    RequestHeader(String),
    /// A response header.
    ResponseHeader(String),
    /// A peer's metadata field.
    Peer(Side, PeerField),
    /// Any other Envoy attribute, read with `proxy_get_property`.
    Property(Vec<String>, Kind),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A string literal.
    Text(String),
    /// An integer literal.
    Int(i64),
    /// An attribute.
    Attribute(Attribute),
    /// `string(...)`.
    ToString(Box<Expr>),
}

/// What expressions are evaluated against.
pub trait Attributes {
    /// A request header, values joined with `,`.
    fn request_header(&self, name: &str) -> Option<String>;
    /// A response header, values joined with `,`.
    fn response_header(&self, name: &str) -> Option<String>;
    /// Raw property bytes.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// The peer on `side`, when known.
    fn peer(&self, side: Side) -> Option<&NodeInfo>;
}

/// Attribute roots Envoy knows (first path segment).
const ROOTS: &[&str] = &[
    "request",
    "response",
    "source",
    "destination",
    "connection",
    "upstream",
    "metadata",
    "filter_state",
    "upstream_filter_state",
    "node",
    "cluster_name",
    "cluster_metadata",
    "route_name",
    "route_metadata",
    "upstream_host_metadata",
    "listener_direction",
    "listener_metadata",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
    "xds",
    "downstream_peer",
    "upstream_peer",
];

/// The encoding of the attribute at `path` (Envoy's attribute reference); strings otherwise.
fn kind_of(path: &[String]) -> Kind {
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["request", "size" | "total_size"]
        | ["response", "code" | "grpc_status" | "size" | "total_size"]
        | ["source" | "destination" | "upstream", "port"]
        | ["listener_direction"]
        | ["xds", "listener_direction"] => Kind::Int,
        ["response", "flags"] | ["connection", "id"] | ["upstream", "request_attempt_count"] => {
            Kind::Uint
        }
        ["connection", "mtls"] => Kind::Bool,
        ["request", "duration"]
        | ["response", "backend_latency"]
        | ["upstream", "cx_pool_ready_duration"] => Kind::Duration,
        ["request", "time"] => Kind::Timestamp,
        _ => Kind::String,
    }
}

struct Parser<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.text.get(self.position..).unwrap_or_default()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.position += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        match self.peek() {
            Some(_) => format!("{what} at position {}: `{}`", self.position, self.rest()),
            None => format!("{what} at the end"),
        }
    }

    fn eat(&mut self, expected: char) -> Result<(), String> {
        self.skip_spaces();
        if self.peek() == Some(expected) {
            self.position += expected.len_utf8();
            Ok(())
        } else {
            Err(self.error(&format!("expected `{expected}`")))
        }
    }

    fn identifier(&mut self) -> Result<String, String> {
        self.skip_spaces();
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|(index, c)| {
                !(c.is_ascii_alphabetic() || *c == '_' || (*index > 0 && c.is_ascii_digit()))
            })
            .map_or(rest.len(), |(index, _)| index);
        if len == 0 {
            return Err(self.error("expected a name"));
        }
        self.position += len;
        Ok(rest.get(..len).unwrap_or_default().to_string())
    }

    fn string_literal(&mut self) -> Result<String, String> {
        self.skip_spaces();
        let quote = match self.peek() {
            Some(quote @ ('\'' | '"')) => quote,
            _ => return Err(self.error("expected a quoted string")),
        };
        self.position += 1;
        let mut value = String::new();
        let mut chars = self.rest().chars();
        while let Some(c) = chars.next() {
            self.position += c.len_utf8();
            match c {
                '\\' => {
                    let escaped = chars
                        .next()
                        .ok_or_else(|| "unterminated string literal".to_string())?;
                    self.position += escaped.len_utf8();
                    value.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                }
                c if c == quote => return Ok(value),
                c => value.push(c),
            }
        }
        Err("unterminated string literal".to_string())
    }

    fn integer(&mut self) -> Result<i64, String> {
        self.skip_spaces();
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|(index, c)| !(c.is_ascii_digit() || (*index == 0 && *c == '-')))
            .map_or(rest.len(), |(index, _)| index);
        let digits = rest.get(..len).unwrap_or_default();
        let value = digits
            .parse::<i64>()
            .map_err(|_| self.error("expected an integer"))?;
        self.position += len;
        Ok(value)
    }

    fn expression(&mut self) -> Result<Expr, String> {
        self.skip_spaces();
        match self.peek() {
            Some('\'' | '"') => return self.string_literal().map(Expr::Text),
            Some(c) if c.is_ascii_digit() || c == '-' => return self.integer().map(Expr::Int),
            None => return Err("empty expression".to_string()),
            _ => {}
        }
        let first = self.identifier()?;
        self.skip_spaces();
        if self.peek() == Some('(') {
            if first != "string" {
                return Err(format!(
                    "unsupported function `{first}()` (only string() is supported)"
                ));
            }
            self.eat('(')?;
            let inner = self.expression()?;
            self.eat(')')?;
            return Ok(Expr::ToString(Box::new(inner)));
        }
        let mut path = vec![first];
        loop {
            self.skip_spaces();
            match self.peek() {
                Some('.') => {
                    self.position += 1;
                    path.push(self.identifier()?);
                }
                Some('[') => {
                    self.position += 1;
                    path.push(self.string_literal()?);
                    self.eat(']')?;
                }
                _ => break,
            }
        }
        attribute(path).map(Expr::Attribute)
    }
}

fn peer_field(path: &[String]) -> Result<PeerField, String> {
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    Ok(match parts.as_slice() {
        ["name"] => PeerField::Name,
        ["namespace"] => PeerField::Namespace,
        ["workload"] => PeerField::Workload,
        ["cluster"] => PeerField::Cluster,
        ["app"] => PeerField::App,
        ["version"] => PeerField::Version,
        ["service"] => PeerField::Service,
        ["revision"] => PeerField::Revision,
        ["service_account"] => PeerField::ServiceAccount,
        ["mesh_id"] => PeerField::MeshId,
        ["labels", key] => PeerField::Label((*key).to_string()),
        _ => {
            return Err(format!(
                "unknown peer field `{}` (supported: name, namespace, workload, cluster, app, \
                 version, service, revision, service_account, mesh_id, labels['key'])",
                path.join(".")
            ))
        }
    })
}

fn attribute(path: Vec<String>) -> Result<Attribute, String> {
    let root = path.first().map(String::as_str).unwrap_or_default();
    if !ROOTS.contains(&root) {
        return Err(format!(
            "unknown attribute `{root}` (supported roots: {})",
            ROOTS.join(", ")
        ));
    }
    let rest = path.get(1..).unwrap_or_default();
    match (root, rest) {
        ("downstream_peer", field) => Ok(Attribute::Peer(Side::Downstream, peer_field(field)?)),
        ("upstream_peer", field) => Ok(Attribute::Peer(Side::Upstream, peer_field(field)?)),
        ("request", [headers, name]) if headers == "headers" => {
            Ok(Attribute::RequestHeader(name.to_ascii_lowercase()))
        }
        ("response", [headers, name]) if headers == "headers" => {
            Ok(Attribute::ResponseHeader(name.to_ascii_lowercase()))
        }
        ("request" | "response", [map]) if map == "headers" || map == "trailers" => Err(format!(
            "`{}` is a map, not a value: name one entry, e.g. `{root}.{map}['x-example']`",
            path.join(".")
        )),
        (
            "request" | "response" | "source" | "destination" | "connection" | "upstream"
            | "metadata" | "node" | "xds",
            [],
        ) => Err(format!(
            "`{root}` is a group of attributes, not a value: name one, e.g. `{root}.{}`",
            match root {
                "request" => "host",
                "response" => "code",
                "connection" => "mtls",
                "metadata" => "filter_metadata['name']['key']",
                "node" => "id",
                "xds" => "cluster_name",
                _ => "address",
            }
        )),
        _ => {
            let kind = kind_of(&path);
            Ok(Attribute::Property(path, kind))
        }
    }
}

impl Expr {
    /// Parses an expression (see the module docs for what is supported).
    pub fn parse(text: &str) -> Result<Expr, String> {
        let mut parser = Parser { text, position: 0 };
        let expression = parser.expression()?;
        parser.skip_spaces();
        if parser.peek().is_some() {
            return Err(parser.error(
                "unsupported expression syntax (operators and functions other than string() \
                 are not supported)",
            ));
        }
        Ok(expression)
    }

    /// Whether the expression evaluates to an integer (metric values must).
    pub fn is_integer(&self) -> bool {
        match self {
            Expr::Int(_) => true,
            Expr::Attribute(Attribute::Property(_, kind)) => {
                matches!(kind, Kind::Int | Kind::Uint | Kind::Duration)
            }
            _ => false,
        }
    }

    /// The value as text (`None` when the attribute is absent).
    pub fn eval_string(&self, attributes: &dyn Attributes) -> Option<String> {
        match self {
            Expr::Text(text) => Some(text.clone()),
            Expr::Int(value) => Some(value.to_string()),
            Expr::ToString(inner) => inner.eval_string(attributes),
            Expr::Attribute(Attribute::RequestHeader(name)) => attributes.request_header(name),
            Expr::Attribute(Attribute::ResponseHeader(name)) => attributes.response_header(name),
            Expr::Attribute(Attribute::Peer(side, field)) => {
                let peer = attributes.peer(*side)?;
                let value = match field {
                    PeerField::Name => peer.name.as_str(),
                    PeerField::Namespace => peer.namespace.as_str(),
                    PeerField::Workload => peer.workload_name.as_str(),
                    PeerField::Cluster => peer.cluster_id.as_str(),
                    PeerField::App => peer.app(),
                    PeerField::Version => peer.version(),
                    PeerField::Service => peer.canonical_service(),
                    PeerField::Revision => peer.canonical_revision(),
                    PeerField::ServiceAccount => peer.service_account.as_str(),
                    PeerField::MeshId => peer.mesh_id.as_str(),
                    PeerField::Label(key) => peer.labels.get(key).map(String::as_str)?,
                };
                Some(value.to_string())
            }
            Expr::Attribute(Attribute::Property(path, kind)) => {
                let parts: Vec<&str> = path.iter().map(String::as_str).collect();
                let bytes = attributes.property(&parts)?;
                render(&bytes, *kind)
            }
        }
    }

    /// The value as an integer (durations in nanoseconds); `None` when absent or not a number.
    pub fn eval_int(&self, attributes: &dyn Attributes) -> Option<i64> {
        match self {
            Expr::Int(value) => Some(*value),
            Expr::Attribute(Attribute::Property(path, kind)) => {
                let parts: Vec<&str> = path.iter().map(String::as_str).collect();
                let bytes = attributes.property(&parts)?;
                match kind {
                    Kind::Int | Kind::Uint | Kind::Duration | Kind::Timestamp => decode_i64(&bytes),
                    Kind::Bool => bytes.first().map(|byte| i64::from(*byte != 0)),
                    Kind::String => std::str::from_utf8(&bytes).ok()?.trim().parse().ok(),
                }
            }
            other => other.eval_string(attributes)?.trim().parse().ok(),
        }
    }
}

/// Renders property bytes of `kind` as CEL's `string()` would.
fn render(bytes: &[u8], kind: Kind) -> Option<String> {
    match kind {
        Kind::String => String::from_utf8(bytes.to_vec()).ok(),
        Kind::Int => decode_i64(bytes).map(|value| value.to_string()),
        Kind::Uint => decode_i64(bytes).map(|value| value.cast_unsigned().to_string()),
        Kind::Bool => bytes.first().map(|byte| (*byte != 0).to_string()),
        Kind::Duration => decode_i64(bytes).map(cel_duration),
        Kind::Timestamp => decode_i64(bytes).map(|nanos| rfc3339_millis(from_unix_nanos(nanos))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        request: HashMap<String, String>,
        response: HashMap<String, String>,
        properties: HashMap<Vec<String>, Vec<u8>>,
        downstream: Option<NodeInfo>,
    }

    impl Attributes for Fake {
        fn request_header(&self, name: &str) -> Option<String> {
            self.request.get(name).cloned()
        }
        fn response_header(&self, name: &str) -> Option<String> {
            self.response.get(name).cloned()
        }
        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            let key: Vec<String> = path.iter().map(|p| (*p).to_string()).collect();
            self.properties.get(&key).cloned()
        }
        fn peer(&self, side: Side) -> Option<&NodeInfo> {
            match side {
                Side::Downstream => self.downstream.as_ref(),
                Side::Upstream => None,
            }
        }
    }

    fn fake() -> Fake {
        let mut fake = Fake::default();
        fake.request.insert("x-user".into(), "alice".into());
        fake.response.insert("x-cache".into(), "hit".into());
        let mut set = |path: &[&str], value: Vec<u8>| {
            fake.properties
                .insert(path.iter().map(|p| (*p).to_string()).collect(), value);
        };
        set(&["request", "host"], b"shop".to_vec());
        set(&["destination", "port"], 9080i64.to_le_bytes().to_vec());
        set(&["connection", "mtls"], vec![1]);
        set(
            &["request", "duration"],
            1_500_000_000i64.to_le_bytes().to_vec(),
        );
        set(&["response", "flags"], 0x20i64.to_le_bytes().to_vec());
        set(
            &[
                "metadata",
                "filter_metadata",
                "envoy.filters.http.jwt_authn",
                "payload",
                "sub",
            ],
            b"user-7".to_vec(),
        );
        fake.downstream = Some(crate::peer::tests::node(
            "sleep",
            "default",
            &[("app", "sleep"), ("team", "a")],
        ));
        fake
    }

    fn eval(text: &str) -> Option<String> {
        Expr::parse(text).unwrap().eval_string(&fake())
    }

    #[test]
    fn evaluates_attributes_headers_peers_and_literals() {
        assert_eq!(eval("request.host").as_deref(), Some("shop"));
        assert_eq!(eval("request.headers['X-User']").as_deref(), Some("alice"));
        assert_eq!(
            eval("response.headers[\"x-cache\"]").as_deref(),
            Some("hit")
        );
        assert_eq!(eval("string(destination.port)").as_deref(), Some("9080"));
        assert_eq!(eval("destination.port").as_deref(), Some("9080"));
        assert_eq!(eval("connection.mtls").as_deref(), Some("true"));
        assert_eq!(eval("request.duration").as_deref(), Some("1.5s"));
        assert_eq!(eval("response.flags").as_deref(), Some("32"));
        assert_eq!(
            eval("metadata.filter_metadata['envoy.filters.http.jwt_authn']['payload']['sub']")
                .as_deref(),
            Some("user-7")
        );
        assert_eq!(eval("downstream_peer.app").as_deref(), Some("sleep"));
        assert_eq!(eval("downstream_peer.labels['team']").as_deref(), Some("a"));
        assert_eq!(
            eval("downstream_peer.namespace").as_deref(),
            Some("default")
        );
        assert_eq!(eval("upstream_peer.app"), None);
        assert_eq!(
            eval("'fixed \\'value\\''").as_deref(),
            Some("fixed 'value'")
        );
        assert_eq!(eval("42").as_deref(), Some("42"));
        assert_eq!(eval("request.headers['absent']"), None);
    }

    #[test]
    fn integer_values_for_metric_definitions() {
        let fake = fake();
        let int = |text: &str| Expr::parse(text).unwrap().eval_int(&fake);
        assert_eq!(int("1"), Some(1));
        assert_eq!(int("destination.port"), Some(9080));
        assert_eq!(int("request.duration"), Some(1_500_000_000));
        assert_eq!(int("request.host"), None);
        assert!(Expr::parse("1").unwrap().is_integer());
        assert!(Expr::parse("request.total_size").unwrap().is_integer());
        assert!(!Expr::parse("request.host").unwrap().is_integer());
        assert!(!Expr::parse("'1'").unwrap().is_integer());
    }

    #[test]
    fn unsupported_syntax_is_refused_with_a_reason() {
        let error = |text: &str| Expr::parse(text).unwrap_err();
        assert!(error("request.host == 'a'").contains("unsupported expression syntax"));
        assert_eq!(
            error("has(request.host)"),
            "unsupported function `has()` (only string() is supported)"
        );
        assert!(error("requests.host").contains("unknown attribute `requests`"));
        assert!(error("request.headers").contains("is a map"));
        assert!(error("request").contains("group of attributes"));
        assert!(error("upstream_peer.pod").contains("unknown peer field"));
        assert!(error("request.headers['x").contains("unterminated"));
        assert!(error("string(request.host").contains("expected `)`"));
        assert_eq!(error("  "), "empty expression");
    }
}
