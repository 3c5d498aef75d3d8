//! Request descriptors, built from a request by `rate_limits` actions as Envoy builds them.
//!
//! Each `rate_limits` entry yields at most one descriptor: its actions run in order, each
//! appending one `(key, value)` entry. An action that cannot produce its entry drops the whole
//! descriptor, unless it has `skip_if_absent` (then only the entry is skipped). A descriptor
//! left without entries is not generated.

use std::net::IpAddr;

use wasmesh_sdk::matcher::{match_all, CidrRange};
use wasmesh_sdk::request::{query_params, Request};

use crate::config::{Action, QueryParameterMatcher, RateLimitPolicy};

/// Configuration attribute holding the routed upstream cluster (`xds.cluster_name`, read with
/// [`Request::xds_property_string`]).
pub const CLUSTER_NAME_PROPERTY: &[&str] = &["cluster_name"];

/// One descriptor generated from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDescriptor {
    /// Entries, in action order.
    pub entries: Vec<(String, String)>,
    /// Tokens this descriptor consumes (`hits_addend`, default 1).
    pub hits: u64,
}

impl RequestDescriptor {
    /// `key=value, key=value`, for logs.
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every descriptor `policies` generate for `request`, in policy order.
pub fn generate(policies: &[RateLimitPolicy], request: &dyn Request) -> Vec<RequestDescriptor> {
    policies
        .iter()
        .filter_map(|policy| {
            let mut entries = Vec::with_capacity(policy.actions.len());
            for action in &policy.actions {
                match evaluate(action, request) {
                    Entry::Append(key, value) => entries.push((key, value)),
                    Entry::Skip => {}
                    Entry::Drop => return None,
                }
            }
            (!entries.is_empty()).then(|| RequestDescriptor {
                entries,
                hits: policy.hits(),
            })
        })
        .collect()
}

enum Entry {
    Append(String, String),
    /// `skip_if_absent`: no entry, the descriptor survives.
    Skip,
    /// No descriptor at all.
    Drop,
}

fn absent(skip_if_absent: bool) -> Entry {
    if skip_if_absent {
        Entry::Skip
    } else {
        Entry::Drop
    }
}

fn remote_ip(request: &dyn Request) -> Option<IpAddr> {
    request.source_address().map(|address| address.ip())
}

fn evaluate(action: &Action, request: &dyn Request) -> Entry {
    match action {
        Action::DestinationCluster => {
            match request
                .xds_property_string(CLUSTER_NAME_PROPERTY)
                .filter(|name| !name.is_empty())
            {
                Some(cluster) => Entry::Append("destination_cluster".into(), cluster),
                None => Entry::Drop,
            }
        }
        Action::RequestHeaders {
            header_name,
            descriptor_key,
            skip_if_absent,
        } => match request.first_header(header_name) {
            // Envoy takes the first value of a repeated header.
            Some(value) => Entry::Append(descriptor_key.clone(), value.into_owned()),
            None => absent(*skip_if_absent),
        },
        Action::RemoteAddress => match remote_ip(request) {
            Some(ip) => Entry::Append("remote_address".into(), ip.to_string()),
            None => Entry::Drop,
        },
        Action::MaskedRemoteAddress {
            v4_prefix_mask_len,
            v6_prefix_mask_len,
        } => {
            let masked = remote_ip(request).and_then(|ip| {
                let len = match ip {
                    IpAddr::V4(_) => *v4_prefix_mask_len,
                    IpAddr::V6(_) => *v6_prefix_mask_len,
                };
                CidrRange::new(ip, u32::from(len))
                    .ok()
                    .map(|range| format!("{}/{}", range.network(), range.prefix_len()))
            });
            match masked {
                Some(value) => Entry::Append("masked_remote_address".into(), value),
                None => Entry::Drop,
            }
        }
        Action::GenericKey {
            descriptor_key,
            descriptor_value,
        } => Entry::Append(descriptor_key.clone(), descriptor_value.clone()),
        Action::HeaderValueMatch {
            descriptor_key,
            descriptor_value,
            expect_match,
            headers,
        } => {
            if match_all(headers, request.request_headers()) == *expect_match {
                Entry::Append(descriptor_key.clone(), descriptor_value.clone())
            } else {
                Entry::Drop
            }
        }
        Action::QueryParameterValueMatch {
            descriptor_key,
            descriptor_value,
            expect_match,
            query_parameters,
        } => {
            let params = request.path().map(query_params).unwrap_or_default();
            let matched = query_parameters
                .iter()
                .all(|matcher| query_matches(matcher, &params));
            if matched == *expect_match {
                Entry::Append(descriptor_key.clone(), descriptor_value.clone())
            } else {
                Entry::Drop
            }
        }
        Action::QueryParameters {
            query_parameter_name,
            descriptor_key,
            skip_if_absent,
        } => match request.query_param(query_parameter_name) {
            Some(value) => Entry::Append(descriptor_key.clone(), value),
            None => absent(*skip_if_absent),
        },
        Action::Metadata {
            descriptor_key,
            key,
            path,
            default_value,
            skip_if_absent,
        } => {
            let mut property: Vec<&str> = vec!["metadata", "filter_metadata", key.as_str()];
            property.extend(path.iter().map(String::as_str));
            let value = request
                .property_string(&property)
                .filter(|value| !value.is_empty())
                .or_else(|| (!default_value.is_empty()).then(|| default_value.clone()));
            match value {
                Some(value) => Entry::Append(descriptor_key.clone(), value),
                None => absent(*skip_if_absent),
            }
        }
    }
}

/// `QueryParameterMatcher` against the first value of the parameter.
fn query_matches(matcher: &QueryParameterMatcher, params: &[(String, String)]) -> bool {
    let value = params
        .iter()
        .find(|(name, _)| *name == matcher.name)
        .map(|(_, value)| value.as_str());
    match (value, &matcher.string_match) {
        (None, _) => matcher.must_be_absent,
        (Some(_), _) if matcher.must_be_absent => false,
        (Some(_), None) => true,
        (Some(value), Some(string_match)) => string_match.matches(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use wasmesh_sdk::request::MemoryRequest;

    fn policies(json: &str) -> Vec<RateLimitPolicy> {
        serde_json::from_str(json).unwrap()
    }

    fn entries(descriptors: &[RequestDescriptor]) -> Vec<Vec<(&str, &str)>> {
        descriptors
            .iter()
            .map(|descriptor| {
                descriptor
                    .entries
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .collect()
    }

    fn from(address: &str) -> MemoryRequest {
        MemoryRequest::get("/api?tenant=acme&debug")
            .with_source_address(address.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn actions_compose_one_descriptor_per_policy() {
        let policies = policies(
            r#"[
              {"actions": [{"generic_key": {"descriptor_value": "api"}}, {"request_headers": {"header_name": "x-client", "descriptor_key": "client"}}], "hits_addend": {"number": 2}},
              {"actions": [{"remote_address": {}}]},
              {"actions": [{"masked_remote_address": {"v4_prefix_mask_len": 24}}]},
              {"actions": [{"request_headers": {"header_name": ":path", "descriptor_key": "path"}}, {"request_headers": {"header_name": ":method", "descriptor_key": "method"}}]},
              {"actions": [{"query_parameters": {"query_parameter_name": "tenant", "descriptor_key": "tenant"}}]}
            ]"#,
        );
        let request = from("10.1.2.3:5555")
            .with_header("x-client", "alice")
            .with_header("x-client", "mallory");
        let descriptors = generate(&policies, &request);
        assert_eq!(
            entries(&descriptors),
            vec![
                vec![("generic_key", "api"), ("client", "alice")],
                vec![("remote_address", "10.1.2.3")],
                vec![("masked_remote_address", "10.1.2.0/24")],
                vec![("path", "/api?tenant=acme&debug"), ("method", "GET")],
                vec![("tenant", "acme")],
            ]
        );
        assert_eq!(descriptors[0].hits, 2);
        assert_eq!(descriptors[1].hits, 1);
    }

    #[test]
    fn a_missing_value_drops_the_descriptor_unless_skipped() {
        let policies = policies(
            r#"[
              {"actions": [{"generic_key": {"descriptor_value": "a"}}, {"request_headers": {"header_name": "x-missing", "descriptor_key": "m"}}]},
              {"actions": [{"generic_key": {"descriptor_value": "b"}}, {"request_headers": {"header_name": "x-missing", "descriptor_key": "m", "skip_if_absent": true}}]},
              {"actions": [{"request_headers": {"header_name": "x-missing", "descriptor_key": "m", "skip_if_absent": true}}]},
              {"actions": [{"query_parameters": {"query_parameter_name": "nope", "descriptor_key": "q"}}]},
              {"actions": [{"destination_cluster": {}}]}
            ]"#,
        );
        let descriptors = generate(&policies, &from("10.0.0.1:1"));
        assert_eq!(entries(&descriptors), vec![vec![("generic_key", "b")]]);
    }

    #[test]
    fn header_and_query_matches_honour_expect_match() {
        let policies = policies(
            r#"[
              {"actions": [{"header_value_match": {"descriptor_value": "post", "headers": [{"name": ":method", "exact_match": "POST"}]}}]},
              {"actions": [{"header_value_match": {"descriptor_value": "not-post", "expect_match": false, "headers": [{"name": ":method", "exact_match": "POST"}]}}]},
              {"actions": [{"query_parameter_value_match": {"descriptor_key": "dbg", "descriptor_value": "on", "query_parameters": [{"name": "debug"}, {"name": "tenant", "string_match": {"prefix": "ac"}}]}}]},
              {"actions": [{"query_parameter_value_match": {"descriptor_value": "absent", "query_parameters": [{"name": "debug", "present_match": false}]}}]}
            ]"#,
        );
        let descriptors = generate(&policies, &from("10.0.0.1:1"));
        assert_eq!(
            entries(&descriptors),
            vec![vec![("header_match", "not-post")], vec![("dbg", "on")]]
        );
    }

    #[test]
    fn ipv6_addresses_are_masked_with_the_v6_length() {
        let policies = policies(
            r#"[{"actions": [{"masked_remote_address": {"v6_prefix_mask_len": 64}}]}, {"actions": [{"remote_address": {}}]}]"#,
        );
        let descriptors = generate(&policies, &from("[2001:db8:1:2:3:4:5:6]:443"));
        assert_eq!(
            entries(&descriptors),
            vec![
                vec![("masked_remote_address", "2001:db8:1:2::/64")],
                vec![("remote_address", "2001:db8:1:2:3:4:5:6")]
            ]
        );
    }

    #[test]
    fn metadata_and_destination_cluster_come_from_properties() {
        let policies = policies(
            r#"[
              {"actions": [{"metadata": {"descriptor_key": "sub", "metadata_key": {"key": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "sub"}]}}}]},
              {"actions": [{"metadata": {"descriptor_key": "tier", "default_value": "free", "metadata_key": {"key": "acme", "path": [{"key": "tier"}]}}}]},
              {"actions": [{"destination_cluster": {}}]}
            ]"#,
        );
        let request = from("10.0.0.1:1")
            .with_property(
                &[
                    "metadata",
                    "filter_metadata",
                    "envoy.filters.http.jwt_authn",
                    "payload",
                    "sub",
                ],
                "user-42",
            )
            .with_property(CLUSTER_NAME_PROPERTY, "backend");
        assert_eq!(
            entries(&generate(&policies, &request)),
            vec![
                vec![("sub", "user-42")],
                vec![("tier", "free")],
                vec![("destination_cluster", "backend")]
            ]
        );
    }
}
