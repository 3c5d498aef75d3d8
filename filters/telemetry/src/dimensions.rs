//! Istio's standard dimensions, computed from what a stream observed (pure).

use crate::config::STANDARD_DIMENSIONS;
use crate::peer::NodeInfo;
use crate::stats::{grpc_status_of_http, response_flags};

/// What one finished stream observed, already read from the proxy.
#[derive(Debug, Clone, Default)]
pub struct Observed<'a> {
    /// The local workload is the client (reporter `source`); else the server.
    pub outbound: bool,
    /// The local workload.
    pub local: Option<&'a NodeInfo>,
    /// The other workload, from the metadata exchange.
    pub peer: Option<&'a NodeInfo>,
    /// `:authority`.
    pub authority: Option<String>,
    /// `cluster_name` (Istio: `outbound|9080||reviews.default.svc.cluster.local`).
    pub cluster_name: Option<String>,
    /// HTTP status sent downstream.
    pub response_code: Option<i64>,
    /// A gRPC request.
    pub grpc: bool,
    /// `grpc-status` of the response, when it carried one.
    pub grpc_status: Option<i64>,
    /// `response.flags`.
    pub flags: u64,
    /// The downstream connection used mutual TLS.
    pub mtls: bool,
    /// URI SAN of the local certificate on the connection the request used.
    pub local_principal: Option<String>,
    /// URI SAN of the peer certificate.
    pub peer_principal: Option<String>,
    /// Do not use `:authority` as the destination service.
    pub disable_host_header_fallback: bool,
}

/// Istio's clusters whose name is the destination service name.
const NAMED_CLUSTERS: &[&str] = &[
    "BlackHoleCluster",
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
];

/// The host of an Istio cluster name `<direction>|<port>|<subset>|<host>`.
fn cluster_host(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    let direction = parts.next()?;
    let host = parts.nth(2)?;
    (matches!(direction, "inbound" | "outbound") && !host.is_empty()).then_some(host)
}

fn strip_port(host: &str) -> &str {
    // `[::1]:80` and `[::1]` keep their brackets; `name:80` loses the port.
    if host.starts_with('[') {
        return match host.find("]:") {
            Some(end) => host.get(..=end).unwrap_or(host),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Istio's short service name: `reviews` for `reviews.default.svc.cluster.local` when the
/// destination namespace is `default`, else the host itself.
pub fn service_name(host: &str, namespace: &str) -> String {
    match host.split_once('.') {
        Some((name, rest))
            if !namespace.is_empty() && rest.split('.').next() == Some(namespace) =>
        {
            name.to_string()
        }
        _ => host.to_string(),
    }
}

/// The standard dimension values, in [`STANDARD_DIMENSIONS`] order. Empty values become
/// `unknown`, except `grpc_response_status`, which is empty for HTTP requests.
pub fn standard_values(observed: &Observed<'_>) -> Vec<String> {
    let (source, destination) = if observed.outbound {
        (observed.local, observed.peer)
    } else {
        (observed.peer, observed.local)
    };
    let (source_principal, destination_principal) = if observed.outbound {
        (&observed.local_principal, &observed.peer_principal)
    } else {
        (&observed.peer_principal, &observed.local_principal)
    };
    let destination_namespace = destination.map(|node| node.namespace.as_str());

    let cluster = observed.cluster_name.as_deref().unwrap_or_default();
    let fallback_host = if observed.disable_host_header_fallback {
        None
    } else {
        observed.authority.as_deref().map(strip_port)
    };
    let destination_service = cluster_host(cluster)
        .or(fallback_host)
        .unwrap_or_default()
        .to_string();
    let destination_service_name = if NAMED_CLUSTERS.contains(&cluster) {
        cluster.to_string()
    } else {
        service_name(
            &destination_service,
            destination_namespace.unwrap_or_default(),
        )
    };

    let grpc_response_status = if observed.grpc {
        match (observed.grpc_status, observed.response_code) {
            (Some(status), _) => status.to_string(),
            (None, Some(code)) if code > 0 => {
                grpc_status_of_http(u32::try_from(code).unwrap_or(0)).to_string()
            }
            _ => String::new(),
        }
    } else {
        String::new()
    };
    let security = if observed.outbound {
        "unknown"
    } else if observed.mtls {
        "mutual_tls"
    } else {
        "none"
    };

    let side = |node: Option<&NodeInfo>, field: &dyn Fn(&NodeInfo) -> String, missing: &str| {
        node.map_or_else(|| missing.to_string(), field)
    };
    let workload = |node: &NodeInfo| node.workload_name.clone();
    let namespace = |node: &NodeInfo| node.namespace.clone();
    let app = |node: &NodeInfo| node.app().to_string();
    let version = |node: &NodeInfo| node.version().to_string();
    let service = |node: &NodeInfo| node.canonical_service().to_string();
    let revision = |node: &NodeInfo| node.canonical_revision().to_string();
    let cluster_id = |node: &NodeInfo| node.cluster_id.clone();

    let values = [
        (if observed.outbound {
            "source"
        } else {
            "destination"
        })
        .to_string(),
        side(source, &workload, ""),
        side(source, &namespace, ""),
        source_principal.clone().unwrap_or_default(),
        side(source, &app, ""),
        side(source, &version, ""),
        side(source, &service, ""),
        side(source, &revision, "latest"),
        side(source, &cluster_id, ""),
        side(destination, &workload, ""),
        side(destination, &namespace, ""),
        destination_principal.clone().unwrap_or_default(),
        side(destination, &app, ""),
        side(destination, &version, ""),
        destination_service,
        destination_service_name,
        destination_namespace.unwrap_or_default().to_string(),
        side(destination, &service, ""),
        side(destination, &revision, "latest"),
        side(destination, &cluster_id, ""),
        (if observed.grpc { "grpc" } else { "http" }).to_string(),
        observed.response_code.unwrap_or(0).to_string(),
        grpc_response_status,
        response_flags(observed.flags),
        security.to_string(),
    ];
    values
        .into_iter()
        .zip(STANDARD_DIMENSIONS)
        .map(|(value, name)| {
            if value.is_empty() && *name != "grpc_response_status" {
                "unknown".to_string()
            } else {
                value
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::tests::node;

    fn by_name(values: &[String]) -> std::collections::BTreeMap<&'static str, &str> {
        STANDARD_DIMENSIONS
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
            .collect()
    }

    #[test]
    fn inbound_request_from_a_known_peer() {
        let local = node(
            "reviews-v1",
            "default",
            &[("app", "reviews"), ("version", "v1")],
        );
        let peer = node("productpage-v1", "default", &[("app", "productpage")]);
        let values = standard_values(&Observed {
            outbound: false,
            local: Some(&local),
            peer: Some(&peer),
            authority: Some("reviews.default.svc.cluster.local:9080".into()),
            cluster_name: Some("inbound|9080||".into()),
            response_code: Some(200),
            mtls: true,
            peer_principal: Some("spiffe://cluster.local/ns/default/sa/productpage".into()),
            local_principal: Some("spiffe://cluster.local/ns/default/sa/reviews".into()),
            ..Observed::default()
        });
        let values = by_name(&values);
        assert_eq!(values["reporter"], "destination");
        assert_eq!(values["source_workload"], "productpage-v1");
        assert_eq!(values["source_app"], "productpage");
        assert_eq!(values["source_version"], "unknown");
        assert_eq!(values["source_canonical_service"], "productpage");
        assert_eq!(values["source_canonical_revision"], "latest");
        assert_eq!(values["source_cluster"], "Kubernetes");
        assert_eq!(
            values["source_principal"],
            "spiffe://cluster.local/ns/default/sa/productpage"
        );
        assert_eq!(values["destination_workload"], "reviews-v1");
        assert_eq!(values["destination_version"], "v1");
        assert_eq!(values["destination_canonical_revision"], "v1");
        assert_eq!(
            values["destination_service"],
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(values["destination_service_name"], "reviews");
        assert_eq!(values["destination_service_namespace"], "default");
        assert_eq!(values["request_protocol"], "http");
        assert_eq!(values["response_code"], "200");
        assert_eq!(values["grpc_response_status"], "");
        assert_eq!(values["response_flags"], "-");
        assert_eq!(values["connection_security_policy"], "mutual_tls");
    }

    #[test]
    fn outbound_grpc_call_to_an_unknown_peer() {
        let local = node("frontend", "shop", &[]);
        let values = standard_values(&Observed {
            outbound: true,
            local: Some(&local),
            authority: Some("cart:8080".into()),
            cluster_name: Some("outbound|8080||cart.shop.svc.cluster.local".into()),
            response_code: Some(503),
            grpc: true,
            flags: 1 << 5,
            disable_host_header_fallback: true,
            ..Observed::default()
        });
        let values = by_name(&values);
        assert_eq!(values["reporter"], "source");
        assert_eq!(values["source_workload"], "frontend");
        assert_eq!(values["source_canonical_service"], "frontend");
        assert_eq!(values["destination_workload"], "unknown");
        assert_eq!(values["destination_canonical_revision"], "latest");
        assert_eq!(values["destination_service"], "cart.shop.svc.cluster.local");
        // Without the peer's namespace the short name cannot be derived.
        assert_eq!(
            values["destination_service_name"],
            "cart.shop.svc.cluster.local"
        );
        assert_eq!(values["request_protocol"], "grpc");
        assert_eq!(values["grpc_response_status"], "14");
        assert_eq!(values["response_flags"], "UF");
        assert_eq!(values["connection_security_policy"], "unknown");
    }

    #[test]
    fn host_fallback_and_passthrough_clusters() {
        let observed = Observed {
            authority: Some("[::1]:8080".into()),
            cluster_name: Some("PassthroughCluster".into()),
            ..Observed::default()
        };
        let values = standard_values(&observed);
        let values = by_name(&values);
        assert_eq!(values["destination_service"], "[::1]");
        assert_eq!(values["destination_service_name"], "PassthroughCluster");
        assert_eq!(values["response_code"], "0");
        assert_eq!(values["connection_security_policy"], "none");
        let disabled = standard_values(&Observed {
            authority: Some("evil.example".into()),
            disable_host_header_fallback: true,
            ..Observed::default()
        });
        assert_eq!(by_name(&disabled)["destination_service"], "unknown");
        assert_eq!(service_name("a.other.svc", "default"), "a.other.svc");
        assert_eq!(strip_port("host:80"), "host");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
