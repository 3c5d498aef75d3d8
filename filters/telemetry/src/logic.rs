//! The telemetry filter's logic: what each stream phase records, over SDK types only.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::SystemTime;

use wasmesh_sdk::body::Body;
use wasmesh_sdk::config::ConfigError;
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::{Host, LogLevel};
use wasmesh_sdk::metrics::MetricKind;
use wasmesh_sdk::random::SplitMix64;
use wasmesh_sdk::request::Request;

use crate::access_log::{number, request_id_integer, text, AccessLog, Entry};
use crate::config::{Config, MetricFamily, TagSource, ValueSource};
use crate::dimensions::{standard_values, Observed};
use crate::expr::{Attributes, Side};
use crate::grpc::{is_grpc, FrameCounter};
use crate::peer::{
    decode_node_metadata, decode_peer_header, NodeInfo, PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
};
use crate::proto::Value;
use crate::stats::{encode_stat_name, metric_name, response_flags};
use crate::util::{from_unix_nanos, rfc3339_millis, unix_nanos};

/// The local workload and the traffic direction, read from the proxy on the first stream
/// (a root context has no property access; both are fixed for a listener).
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The local node.
    pub node: NodeInfo,
    /// `x-envoy-peer-metadata` describing the local node; `None` when it has no metadata.
    pub header_value: Option<String>,
    /// Outbound (client side, reporter `source`) rather than inbound.
    pub outbound: bool,
}

impl Local {
    /// Reads the local node (`node.metadata`, `node.id`) and the direction
    /// (`listener_direction`: 1 inbound, 2 outbound; else the root id `stats_outbound` /
    /// `stats_inbound` as Istio's plugin; else inbound).
    pub fn read(request: &dyn Request) -> Local {
        let mut node = request
            .xds_property(&["node", "metadata"])
            .and_then(|bytes| decode_node_metadata(&bytes))
            .unwrap_or_default();
        node.id = request
            .xds_property(&["node", "id"])
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        let direction = request
            .xds_property(&["listener_direction"])
            .and_then(|bytes| wasmesh_sdk::properties::decode_int(&bytes));
        let outbound = match direction {
            Some(2) => true,
            Some(1) => false,
            _ => request
                .property_string(&["plugin_root_id"])
                .is_some_and(|root_id| root_id == "stats_outbound"),
        };
        let header_value = (!node.raw.is_empty()).then(|| node.header_value());
        Local {
            node,
            header_value,
            outbound,
        }
    }
}

/// Per-stream state.
#[derive(Debug, Default)]
pub struct StreamState {
    start: Option<SystemTime>,
    peer: Option<Rc<NodeInfo>>,
    grpc: bool,
    request_messages: FrameCounter,
    response_messages: FrameCounter,
}

impl StreamState {
    /// The peer learned from the metadata exchange.
    pub fn peer(&self) -> Option<&NodeInfo> {
        self.peer.as_deref()
    }

    /// gRPC messages counted so far (request, response).
    pub fn messages(&self) -> (u64, u64) {
        (
            self.request_messages.messages(),
            self.response_messages.messages(),
        )
    }
}

/// The filter, built once per root context.
pub struct Telemetry {
    config: Config,
    families: Vec<MetricFamily>,
    access_log: Option<AccessLog>,
    local: OnceCell<Local>,
    /// Stat name to metric id: a series is defined once per VM (Envoy hands out a new id on
    /// every definition).
    series: RefCell<HashMap<String, u32>>,
    /// Decoded peer metadata by header value.
    peers: RefCell<HashMap<String, Rc<NodeInfo>>>,
    /// Sampling draw for requests without a usable `x-request-id`.
    draw: Cell<SplitMix64>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("families", &self.families.len())
            .field("series", &self.series.borrow().len())
            .finish_non_exhaustive()
    }
}

/// Attributes of a stream for expressions.
struct StreamAttributes<'a> {
    request: &'a dyn Request,
    peer: Option<&'a NodeInfo>,
    outbound: bool,
}

impl Attributes for StreamAttributes<'_> {
    fn request_header(&self, name: &str) -> Option<String> {
        self.request.header(name).map(|value| value.into_owned())
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.request
            .response_header(name)
            .map(|value| value.into_owned())
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.request.property(path)
    }

    fn peer(&self, side: Side) -> Option<&NodeInfo> {
        let known = if self.outbound {
            Side::Upstream
        } else {
            Side::Downstream
        };
        if side == known {
            self.peer
        } else {
            None
        }
    }
}

impl Telemetry {
    /// Builds the filter from a validated configuration.
    pub fn new(config: Config) -> Result<Self, Error> {
        let families = config.families()?;
        let access_log = match &config.access_log {
            Some(access_log) => Some(
                AccessLog::new(access_log)
                    .map_err(|message| ConfigError::new("access_log.fields", message))?,
            ),
            None => None,
        };
        Ok(Telemetry {
            config,
            families,
            access_log,
            local: OnceCell::new(),
            series: RefCell::new(HashMap::new()),
            peers: RefCell::new(HashMap::new()),
            draw: Cell::new(SplitMix64::seeded(0x9e37_79b9_7f4a_7c15)),
        })
    }

    /// The metrics this filter records.
    pub fn families(&self) -> &[MetricFamily] {
        &self.families
    }

    fn local(&self, request: &dyn Request) -> &Local {
        self.local.get_or_init(|| Local::read(request))
    }

    /// Decodes (or finds in the cache) the peer metadata carried by `value` / `id`.
    fn peer_from(
        &self,
        value: Option<&str>,
        id: Option<&str>,
        host: &dyn Host,
    ) -> Option<Rc<NodeInfo>> {
        let value = value?;
        let key = format!("{value}\n{}", id.unwrap_or_default());
        if let Some(cached) = self.peers.borrow().get(&key) {
            return Some(cached.clone());
        }
        let Some(node) = decode_peer_header(value, id) else {
            host.log(
                LogLevel::Debug,
                "telemetry: ignoring an x-envoy-peer-metadata header that is not base64 of a protobuf Struct",
            );
            return None;
        };
        let node = Rc::new(node);
        let capacity = usize::try_from(self.config.max_peer_cache_size).unwrap_or(0);
        if capacity > 0 {
            let mut peers = self.peers.borrow_mut();
            if peers.len() >= capacity {
                // Bounded memory for proxies that see many short-lived peers.
                peers.clear();
            }
            peers.insert(key, node.clone());
        }
        Some(node)
    }

    /// Request headers: start the clock, learn (inbound) or announce (outbound) the peer.
    pub fn on_request_headers(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) {
        stream.start = Some(host.now());
        stream.grpc = request
            .header("content-type")
            .is_some_and(|value| is_grpc(&value));
        let local = self.local(request);
        let exchange = self.config.exchange_peer_metadata;
        if local.outbound {
            if let (true, Some(value)) = (exchange, &local.header_value) {
                let _ = request.set_request_header(PEER_METADATA_HEADER, value);
                let _ = request.set_request_header(PEER_METADATA_ID_HEADER, &local.node.id);
            }
            return;
        }
        let value = request.header(PEER_METADATA_HEADER).map(|v| v.into_owned());
        let id = request
            .header(PEER_METADATA_ID_HEADER)
            .map(|v| v.into_owned());
        stream.peer = self.peer_from(value.as_deref(), id.as_deref(), host);
        if exchange && (value.is_some() || id.is_some()) {
            // The application behind this proxy never sees the exchange headers.
            let _ = request.remove_request_header(PEER_METADATA_HEADER);
            let _ = request.remove_request_header(PEER_METADATA_ID_HEADER);
        }
    }

    /// A request body chunk: count gRPC messages.
    pub fn on_request_body(&self, stream: &mut StreamState, body: &Body<'_>) {
        if stream.grpc {
            stream.request_messages.feed(body);
        }
    }

    /// Response headers: learn (outbound) or announce (inbound) the peer.
    pub fn on_response_headers(
        &self,
        stream: &mut StreamState,
        request: &mut dyn Request,
        host: &mut dyn Host,
    ) {
        let local = self.local(request);
        let exchange = self.config.exchange_peer_metadata;
        if !local.outbound {
            if let (true, Some(value)) = (exchange, &local.header_value) {
                let _ = request.set_response_header(PEER_METADATA_HEADER, value);
                let _ = request.set_response_header(PEER_METADATA_ID_HEADER, &local.node.id);
            }
            return;
        }
        let value = request
            .response_header(PEER_METADATA_HEADER)
            .map(|v| v.into_owned());
        let id = request
            .response_header(PEER_METADATA_ID_HEADER)
            .map(|v| v.into_owned());
        stream.peer = self.peer_from(value.as_deref(), id.as_deref(), host);
        if exchange && (value.is_some() || id.is_some()) {
            let _ = request.remove_response_header(PEER_METADATA_HEADER);
            let _ = request.remove_response_header(PEER_METADATA_ID_HEADER);
        }
    }

    /// A response body chunk: count gRPC messages.
    pub fn on_response_body(&self, stream: &mut StreamState, body: &Body<'_>) {
        if stream.grpc {
            stream.response_messages.feed(body);
        }
    }

    /// The stream ended: record every metric and write the access log.
    pub fn on_log(&self, stream: &mut StreamState, request: &mut dyn Request, host: &mut dyn Host) {
        let local = self.local(&*request);
        let now = host.now();
        // Envoy's stream start covers filters before this one; fall back to our own clock.
        let start = request
            .property_int(&["request", "time"])
            .map(from_unix_nanos)
            .or(stream.start)
            .unwrap_or(now);
        let duration_nanos = unix_nanos(now).saturating_sub(unix_nanos(start)).max(0);
        let duration_millis = duration_nanos / 1_000_000;

        let response_code = request.property_int(&["response", "code"]).or_else(|| {
            request
                .response_header(":status")
                .and_then(|status| status.parse().ok())
        });
        let flags = request
            .property_int(&["response", "flags"])
            .map_or(0, i64::cast_unsigned);
        let grpc_status = if stream.grpc {
            request
                .property_int(&["response", "grpc_status"])
                .or_else(|| {
                    request
                        .property_string(&["response", "trailers", "grpc-status"])
                        .or_else(|| {
                            request
                                .response_header("grpc-status")
                                .map(|v| v.into_owned())
                        })
                        .and_then(|status| status.trim().parse().ok())
                })
        } else {
            None
        };
        let (local_principal, peer_principal) = if local.outbound {
            (
                request.property_string(&["upstream", "uri_san_local_certificate"]),
                request.property_string(&["upstream", "uri_san_peer_certificate"]),
            )
        } else {
            (
                request.property_string(&["connection", "uri_san_local_certificate"]),
                request.property_string(&["connection", "uri_san_peer_certificate"]),
            )
        };
        let cluster_name = request
            .xds_property(&["cluster_name"])
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let peer = stream.peer.clone();
        let observed = Observed {
            outbound: local.outbound,
            local: Some(&local.node).filter(|node| !node.is_empty()),
            peer: peer.as_deref(),
            authority: request.authority().map(str::to_string),
            cluster_name: cluster_name.clone(),
            response_code,
            grpc: stream.grpc,
            grpc_status,
            flags,
            mtls: !local.outbound && request.mtls(),
            local_principal,
            peer_principal,
            disable_host_header_fallback: self.config.disable_host_header_fallback,
        };
        let standard = standard_values(&observed);
        let attributes = StreamAttributes {
            request: &*request,
            peer: peer.as_deref(),
            outbound: local.outbound,
        };
        let request_bytes = request
            .property_int(&["request", "total_size"])
            .unwrap_or(0);
        let response_bytes = request
            .property_int(&["response", "total_size"])
            .unwrap_or(0);
        for family in &self.families {
            if family.grpc_only && !stream.grpc {
                continue;
            }
            let value = match &family.value {
                ValueSource::One => 1,
                ValueSource::DurationMillis => duration_millis,
                ValueSource::RequestBytes => request_bytes,
                ValueSource::ResponseBytes => response_bytes,
                ValueSource::RequestMessages => {
                    i64::try_from(stream.request_messages.messages()).unwrap_or(i64::MAX)
                }
                ValueSource::ResponseMessages => {
                    i64::try_from(stream.response_messages.messages()).unwrap_or(i64::MAX)
                }
                ValueSource::Expression(expr) => expr.eval_int(&attributes).unwrap_or(0),
            };
            let tags: Vec<(&str, String)> = family
                .tags
                .iter()
                .map(|(name, source)| {
                    let value = match source {
                        TagSource::Standard(index) => {
                            standard.get(*index).cloned().unwrap_or_default()
                        }
                        TagSource::Expression(expr) => expr
                            .eval_string(&attributes)
                            .filter(|value| !value.is_empty())
                            .unwrap_or_else(|| "unknown".to_string()),
                    };
                    (name.as_str(), value)
                })
                .collect();
            let borrowed: Vec<(&str, &str)> = tags
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            let name = encode_stat_name(
                &metric_name(&self.config.stat_prefix, &family.name),
                &borrowed,
            );
            self.record(host, family.kind, &name, value);
        }

        if let Some(access_log) = &self.access_log {
            let request_id = request.header("x-request-id").map(|v| v.into_owned());
            let draw = request_id
                .as_deref()
                .and_then(request_id_integer)
                .unwrap_or_else(|| self.next_draw());
            if access_log.selects(draw, response_code.unwrap_or(0), flags) {
                let entry = self.entry(
                    &*request,
                    start,
                    duration_millis,
                    response_code,
                    flags,
                    request_id,
                    cluster_name,
                );
                host.log(access_log.level(), &access_log.line(entry, &attributes));
            }
        }
    }

    fn next_draw(&self) -> u64 {
        // SplitMix64: well spread, deterministic (tests can rely on it).
        let mut draws = self.draw.get();
        let draw = draws.next_u64();
        self.draw.set(draws);
        draw
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        request: &dyn Request,
        start: SystemTime,
        duration_millis: i64,
        response_code: Option<i64>,
        flags: u64,
        request_id: Option<String>,
        cluster_name: Option<String>,
    ) -> Entry {
        let header = |name: &str| request.header(name).map(|value| value.into_owned());
        let property = |path: &[&str]| request.property_string(path);
        vec![
            ("authority", text(request.authority())),
            (
                "bytes_received",
                number(request.property_int(&["request", "size"])),
            ),
            (
                "bytes_sent",
                number(request.property_int(&["response", "size"])),
            ),
            (
                "connection_termination_details",
                text(property(&["connection", "termination_details"])),
            ),
            (
                "downstream_local_address",
                text(property(&["destination", "address"])),
            ),
            (
                "downstream_remote_address",
                text(property(&["source", "address"])),
            ),
            ("duration", number(Some(duration_millis))),
            ("method", text(request.method())),
            (
                "path",
                text(header("x-envoy-original-path").or_else(|| header(":path"))),
            ),
            ("protocol", text(property(&["request", "protocol"]))),
            ("request_id", text(request_id)),
            (
                "requested_server_name",
                text(property(&["connection", "requested_server_name"])),
            ),
            ("response_code", number(response_code)),
            (
                "response_code_details",
                text(property(&["response", "code_details"])),
            ),
            ("response_flags", text(Some(response_flags(flags)))),
            (
                "route_name",
                text(
                    request
                        .xds_property(&["route_name"])
                        .and_then(|bytes| String::from_utf8(bytes).ok()),
                ),
            ),
            ("start_time", text(Some(rfc3339_millis(start)))),
            ("traceparent", text(header("traceparent"))),
            ("upstream_cluster", text(cluster_name)),
            ("upstream_host", text(property(&["upstream", "address"]))),
            (
                "upstream_local_address",
                text(property(&["upstream", "local_address"])),
            ),
            (
                "upstream_service_time",
                text(
                    request
                        .response_header("x-envoy-upstream-service-time")
                        .map(|v| v.into_owned()),
                ),
            ),
            (
                "upstream_transport_failure_reason",
                text(property(&["upstream", "transport_failure_reason"])),
            ),
            ("user_agent", text(header("user-agent"))),
            ("x_b3_traceid", text(header("x-b3-traceid"))),
            ("x_forwarded_for", text(header("x-forwarded-for"))),
        ]
    }

    /// Records `value` into the series `name`, defining it on first use.
    fn record(&self, host: &mut dyn Host, kind: MetricKind, name: &str, value: i64) {
        let cached = self.series.borrow().get(name).copied();
        let id = match cached {
            Some(id) => id,
            None => match host.define_metric(kind, name) {
                Ok(id) => {
                    self.series.borrow_mut().insert(name.to_string(), id);
                    id
                }
                Err(error) => {
                    host.log(
                        LogLevel::Warn,
                        &format!("telemetry: cannot define metric {name}: {error}"),
                    );
                    return;
                }
            },
        };
        if self.config.debug {
            host.log(LogLevel::Debug, &format!("telemetry: {name} {value}"));
        }
        // Recording never fails the request; a lost sample is acceptable.
        let _ = match kind {
            MetricKind::Counter => host.increment_metric(id, value.max(0)),
            MetricKind::Gauge | MetricKind::Histogram => {
                host.record_metric(id, value.max(0).cast_unsigned())
            }
        };
    }
}

/// The value of a string-valued Struct field, for tests and tools.
pub fn struct_text(value: &Value) -> Option<&str> {
    match value {
        Value::String(text) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::encode_node_metadata;
    use crate::peer::tests::node;
    use crate::proto::encode_struct;
    use crate::stats::decode_stat_name;
    use std::time::Duration;
    use wasmesh_sdk::body::MemoryBody;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::properties::encode_int;
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    fn telemetry(json: &str) -> Telemetry {
        Telemetry::new(load::<Config>(json.as_bytes()).unwrap()).unwrap()
    }

    fn inbound_request(peer: Option<&NodeInfo>) -> MemoryRequest {
        let local = node(
            "reviews-v1",
            "default",
            &[("app", "reviews"), ("version", "v1")],
        );
        let mut request = MemoryRequest::get("/reviews/1")
            .with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            // As Envoy 1.40 serves them.
            .with_property(
                &["xds", "node", "metadata"],
                encode_node_metadata(&local.raw),
            )
            .with_property(
                &["xds", "node", "id"],
                "sidecar~10.0.0.2~reviews.default~default.svc.cluster.local",
            )
            .with_property(&["xds", "listener_direction"], encode_int(1));
        if let Some(peer) = peer {
            request = request
                .with_header(PEER_METADATA_HEADER, &peer.header_value())
                .with_header(
                    PEER_METADATA_ID_HEADER,
                    "sidecar~10.0.0.1~productpage.default~x",
                );
        }
        request
            .set_request_header(":authority", "reviews.default.svc.cluster.local:9080")
            .unwrap();
        request
    }

    fn series(host: &MemoryHost, telemetry: &Telemetry) -> Vec<(String, Vec<(String, String)>)> {
        let _ = host;
        let mut names: Vec<_> = telemetry
            .series
            .borrow()
            .keys()
            .map(|name| decode_stat_name(name))
            .collect();
        names.sort();
        names
    }

    fn tag<'a>(tags: &'a [(String, String)], name: &str) -> &'a str {
        tags.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or("<absent>")
    }

    #[test]
    fn inbound_request_records_every_standard_metric_with_peer_labels() {
        let filter = telemetry("{}");
        let host = MemoryHost::new();
        let mut host = host;
        let peer = node("productpage-v1", "default", &[("app", "productpage")]);
        let mut request = inbound_request(Some(&peer))
            .with_property(&["response", "code"], encode_int(200))
            .with_property(&["request", "total_size"], encode_int(321))
            .with_property(&["response", "total_size"], encode_int(654));
        let mut stream = StreamState::default();
        filter.on_request_headers(&mut stream, &mut request, &mut host);
        assert_eq!(stream.peer().unwrap().workload_name, "productpage-v1");
        // The exchange headers are stripped before the application sees them; trace headers
        // are untouched.
        assert_eq!(request.header(PEER_METADATA_HEADER), None);
        assert_eq!(request.header(PEER_METADATA_ID_HEADER), None);
        assert!(request.header("traceparent").is_some());
        host.advance(Duration::from_millis(37));
        filter.on_response_headers(&mut stream, &mut request, &mut host);
        let announced = request.response_header(PEER_METADATA_HEADER).unwrap();
        assert_eq!(
            decode_peer_header(&announced, None).unwrap().workload_name,
            "reviews-v1"
        );
        filter.on_log(&mut stream, &mut request, &mut host);

        let recorded = series(&host, &filter);
        let metrics: Vec<&str> = recorded.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            metrics,
            [
                "istio_request_bytes",
                "istio_request_duration_milliseconds",
                "istio_requests_total",
                "istio_response_bytes"
            ]
        );
        let tags = &recorded[2].1;
        assert_eq!(tag(tags, "reporter"), "destination");
        assert_eq!(tag(tags, "source_workload"), "productpage-v1");
        assert_eq!(tag(tags, "destination_workload"), "reviews-v1");
        assert_eq!(tag(tags, "destination_service_name"), "reviews");
        assert_eq!(tag(tags, "response_code"), "200");
        let full = |metric: &str| {
            filter
                .series
                .borrow()
                .keys()
                .find(|name| name.ends_with(metric))
                .cloned()
                .unwrap()
        };
        assert_eq!(host.metric(&full(";.;istio_requests_total")), Some(1));
        assert_eq!(
            host.histogram(&full(";.;istio_request_duration_milliseconds")),
            [37]
        );
        assert_eq!(host.histogram(&full(";.;istio_request_bytes")), [321]);
        assert_eq!(host.histogram(&full(";.;istio_response_bytes")), [654]);
    }

    #[test]
    fn outbound_grpc_stream_counts_messages_and_learns_the_server() {
        let filter = telemetry("{}");
        let mut host = MemoryHost::new();
        let local = node("frontend", "shop", &[]);
        let server = node("cart-v2", "shop", &[("app", "cart"), ("version", "v2")]);
        let mut request = MemoryRequest::get("/cart.Cart/Get")
            .with_header("content-type", "application/grpc")
            .with_property(&["node", "metadata"], encode_struct(&local.raw))
            .with_property(&["listener_direction"], encode_int(2))
            .with_property(
                &["cluster_name"],
                "outbound|8080||cart.shop.svc.cluster.local",
            )
            .with_property(&["response", "code"], encode_int(200))
            .with_response_header(":status", "200")
            .with_response_header(PEER_METADATA_HEADER, &server.header_value())
            .with_response_header("grpc-status", "5");
        request
            .set_request_header(":authority", "cart:8080")
            .unwrap();
        let mut stream = StreamState::default();
        filter.on_request_headers(&mut stream, &mut request, &mut host);
        // The client side announces itself upstream.
        let sent = request.header(PEER_METADATA_HEADER).unwrap().into_owned();
        assert_eq!(
            decode_peer_header(&sent, None).unwrap().workload_name,
            "frontend"
        );
        let frames = [0, 0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0, 0];
        filter.on_request_body(&mut stream, &MemoryBody(frames.to_vec()).view(true));
        filter.on_response_headers(&mut stream, &mut request, &mut host);
        assert_eq!(request.response_header(PEER_METADATA_HEADER), None);
        filter.on_response_body(&mut stream, &MemoryBody(frames[..7].to_vec()).view(false));
        assert_eq!(stream.messages(), (2, 1));
        filter.on_log(&mut stream, &mut request, &mut host);

        let recorded = series(&host, &filter);
        let requests = recorded
            .iter()
            .find(|(name, _)| name == "istio_requests_total")
            .unwrap();
        assert_eq!(tag(&requests.1, "reporter"), "source");
        assert_eq!(tag(&requests.1, "destination_workload"), "cart-v2");
        assert_eq!(tag(&requests.1, "destination_service_name"), "cart");
        assert_eq!(tag(&requests.1, "request_protocol"), "grpc");
        assert_eq!(tag(&requests.1, "grpc_response_status"), "5");
        let messages: Vec<&str> = recorded
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| name.contains("messages"))
            .collect();
        assert_eq!(
            messages,
            [
                "istio_request_messages_total",
                "istio_response_messages_total"
            ]
        );
    }

    #[test]
    fn custom_dimensions_and_definitions_and_series_reuse() {
        let filter = telemetry(
            r#"{"metrics": [{"name": "requests_total",
                              "dimensions": {"user": "request.headers['x-user']"},
                              "tags_to_remove": ["source_principal"]}],
                "definitions": [{"name": "request_size_sum", "value": "request.total_size"}]}"#,
        );
        let mut host = MemoryHost::new();
        for _ in 0..3 {
            let mut request = inbound_request(None)
                .with_header("x-user", "alice")
                .with_property(&["request", "total_size"], encode_int(10));
            let mut stream = StreamState::default();
            filter.on_request_headers(&mut stream, &mut request, &mut host);
            filter.on_log(&mut stream, &mut request, &mut host);
        }
        let recorded = series(&host, &filter);
        assert_eq!(
            recorded.len(),
            5,
            "same dimensions, same series: {recorded:?}"
        );
        let requests = recorded
            .iter()
            .find(|(name, _)| name == "istio_requests_total")
            .unwrap();
        assert_eq!(tag(&requests.1, "user"), "alice");
        assert_eq!(tag(&requests.1, "source_principal"), "<absent>");
        assert_eq!(tag(&requests.1, "source_workload"), "unknown");
        let sum = filter
            .series
            .borrow()
            .keys()
            .find(|name| name.ends_with("istio_request_size_sum"))
            .cloned()
            .unwrap();
        assert_eq!(host.metric(&sum), Some(30));
    }

    #[test]
    fn access_log_lines_are_sampled_by_request_id() {
        let filter = telemetry(
            r#"{"access_log": {"sampling": {"numerator": 50}, "fields": {"peer": "downstream_peer.workload"}}}"#,
        );
        let mut host = MemoryHost::new();
        let peer = node("productpage-v1", "default", &[]);
        for request_id in ["00000031-aaaa", "00000032-bbbb"] {
            // 0x31 = 49 is sampled at 50%, 0x32 = 50 is not.
            let mut request = inbound_request(Some(&peer))
                .with_header("x-request-id", request_id)
                .with_property(&["response", "code"], encode_int(200));
            let mut stream = StreamState::default();
            filter.on_request_headers(&mut stream, &mut request, &mut host);
            host.advance(Duration::from_millis(5));
            filter.on_log(&mut stream, &mut request, &mut host);
        }
        let lines: Vec<serde_json::Value> = host
            .logs()
            .iter()
            .filter(|(level, _)| *level == LogLevel::Info)
            .map(|(_, line)| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["request_id"], "00000031-aaaa");
        assert_eq!(line["duration"], 5);
        assert_eq!(line["response_code"], 200);
        assert_eq!(line["response_flags"], "-");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/reviews/1");
        assert_eq!(line["peer"], "productpage-v1");
        assert_eq!(line["start_time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(
            line["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert!(line["upstream_host"].is_null());
    }

    #[test]
    fn malformed_peer_metadata_is_ignored_and_logged() {
        let filter = telemetry(r#"{"max_peer_cache_size": 0}"#);
        let mut host = MemoryHost::new();
        let mut request = inbound_request(None).with_header(PEER_METADATA_HEADER, "%%%");
        let mut stream = StreamState::default();
        filter.on_request_headers(&mut stream, &mut request, &mut host);
        assert!(stream.peer().is_none());
        assert_eq!(request.header(PEER_METADATA_HEADER), None);
        assert!(host.logs()[0].1.contains("not base64"));
        assert!(filter.peers.borrow().is_empty());
    }
}
