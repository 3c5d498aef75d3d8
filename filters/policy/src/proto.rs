//! The protobuf messages of `envoy.service.auth.v3.Authorization/Check`, written by hand with
//! `prost` (field numbers from `envoy/service/auth/v3/{external_auth,attribute_context}.proto`
//! and the `config.core.v3` / `type.v3` / `google.rpc` messages they use). Only the fields the
//! filter sends or reads are declared; prost skips unknown fields when decoding.

use std::collections::HashMap;

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    /// The request attributes.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    /// The downstream peer.
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    /// The local side of the connection.
    #[prost(message, optional, tag = "2")]
    pub destination: Option<Peer>,
    /// The request.
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// Per-route context extensions (never set by the wasm filter).
    #[prost(map = "string, string", tag = "10")]
    pub context_extensions: HashMap<String, String>,
    /// TLS session details (`include_tls_session`).
    #[prost(message, optional, tag = "12")]
    pub tls_session: Option<TlsSession>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    /// The peer's address.
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    /// The peer's service name.
    #[prost(string, tag = "2")]
    pub service: String,
    /// Labels.
    #[prost(map = "string, string", tag = "3")]
    pub labels: HashMap<String, String>,
    /// The authenticated identity (certificate URI SAN, else subject).
    #[prost(string, tag = "4")]
    pub principal: String,
    /// The PEM certificate (not available to wasm; left empty).
    #[prost(string, tag = "5")]
    pub certificate: String,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// When the check was made.
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    /// The HTTP request.
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    /// `x-request-id`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// `:method`.
    #[prost(string, tag = "2")]
    pub method: String,
    /// Request headers (names lower-case, repeated values joined with `,`).
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    /// `:path` (query included).
    #[prost(string, tag = "4")]
    pub path: String,
    /// `:authority`.
    #[prost(string, tag = "5")]
    pub host: String,
    /// `:scheme`.
    #[prost(string, tag = "6")]
    pub scheme: String,
    /// Query (left empty, as Envoy does: it is part of `path`).
    #[prost(string, tag = "7")]
    pub query: String,
    /// Fragment (left empty, as Envoy does).
    #[prost(string, tag = "8")]
    pub fragment: String,
    /// Request size in bytes, -1 if unknown.
    #[prost(int64, tag = "9")]
    pub size: i64,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `HTTP/3`.
    #[prost(string, tag = "10")]
    pub protocol: String,
    /// The buffered body as UTF-8 (`with_request_body`).
    #[prost(string, tag = "11")]
    pub body: String,
    /// The buffered body as bytes (`pack_as_bytes`).
    #[prost(bytes = "vec", tag = "12")]
    pub raw_body: Vec<u8>,
    /// Headers with raw values (`encode_raw_headers`).
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// `config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    /// The headers.
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

/// `AttributeContext.TLSSession`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TlsSession {
    /// SNI the client sent.
    #[prost(string, tag = "1")]
    pub sni: String,
}

/// `config.core.v3.Address` (socket addresses only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// The socket address.
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    /// IP address.
    #[prost(string, tag = "2")]
    pub address: String,
    /// Port.
    #[prost(uint32, tag = "3")]
    pub port_value: u32,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `envoy.service.auth.v3.CheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckResponse {
    /// `OK` allows, anything else denies.
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    /// Denial details.
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    /// Allow details.
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// gRPC code (0 = OK).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Message.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.service.auth.v3.DeniedHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeniedHttpResponse {
    /// HTTP status for the client (403 when unset).
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    /// Headers for the client.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// Body for the client.
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `envoy.service.auth.v3.OkHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OkHttpResponse {
    /// Headers set on (or appended to) the upstream request.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// Headers removed from the upstream request.
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
    /// Headers added to the response to the client.
    #[prost(message, repeated, tag = "6")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Query parameters set on the upstream request.
    #[prost(message, repeated, tag = "7")]
    pub query_parameters_to_set: Vec<QueryParameter>,
    /// Query parameters removed from the upstream request.
    #[prost(string, repeated, tag = "8")]
    pub query_parameters_to_remove: Vec<String>,
}

/// `config.core.v3.QueryParameter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryParameter {
    /// Name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `type.v3.HttpStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpStatus {
    /// The code.
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValueOption {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    /// Deprecated `append` (a `BoolValue`: absent differs from false).
    #[prost(message, optional, tag = "2")]
    pub append: Option<BoolValue>,
    /// `HeaderAppendAction`: 0 APPEND_IF_EXISTS_OR_ADD, 1 ADD_IF_ABSENT,
    /// 2 OVERWRITE_IF_EXISTS_OR_ADD, 3 OVERWRITE_IF_EXISTS.
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

/// `config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    /// Name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
    /// Raw value bytes (wins over `value` when set).
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `google.protobuf.BoolValue`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct BoolValue {
    /// The value.
    #[prost(bool, tag = "1")]
    pub value: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn check_response_round_trips_and_skips_unknown_fields() {
        let response = CheckResponse {
            status: Some(RpcStatus {
                code: 7,
                message: "no".into(),
            }),
            denied_response: Some(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "www-authenticate".into(),
                        value: "Bearer".into(),
                        raw_value: vec![],
                    }),
                    append: Some(BoolValue { value: false }),
                    append_action: 0,
                }],
                body: "denied".into(),
            }),
            ok_response: None,
        };
        let mut bytes = response.encode_to_vec();
        // An unknown field (dynamic_metadata, tag 4, length-delimited) is skipped.
        bytes.extend_from_slice(&[0x22, 0x00]);
        assert_eq!(CheckResponse::decode(bytes.as_slice()).unwrap(), response);
    }
}
