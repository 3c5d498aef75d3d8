//! The plugin configuration: `envoy.extensions.filters.http.rbac.v3.RBAC` in proto3 JSON
//! (`rules`, `shadow_rules`, ...) plus a few wasmesh fields (normalization, client address,
//! JWT payload source, Istio `authorization_policies`). See the crate README for every field.
//!
//! Envoy fields this filter cannot honour are refused with an error naming their JSON path,
//! never ignored: CEL `condition`s, the `matcher` API, `filter_state` and `custom` principals,
//! audit logging, route metadata.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use wasmesh_sdk::config::{proto, ConfigError, Validate};
use wasmesh_sdk::matcher::{CidrRange, HeaderMatcher, StringMatcher};

use crate::attributes::{JwtPayloadSource, MultipleHeaderValues};
use crate::istio::AuthorizationPolicy;
use crate::metadata::MetadataMatcher;
use crate::normalize::Normalization;
use crate::rule::Rule;
use crate::template::PathTemplate;
use crate::util::{refusal, Refused};

refusal!(
    MatcherApi,
    "the `matcher`/`shadow_matcher` API (xds.type.matcher.v3.Matcher) is not supported by the wasm RBAC filter; use `rules`/`shadow_rules`"
);
refusal!(
    CelCondition,
    "CEL conditions are not supported by the wasm RBAC filter; express the condition with permissions and principals"
);
refusal!(
    AuditLogging,
    "`audit_logging_options` is not supported by the wasm RBAC filter; decisions are counted in stats and logged"
);
refusal!(
    ExtensionMatcher,
    "extension matchers are not supported by the wasm RBAC filter"
);
refusal!(
    FilterStatePrincipal,
    "`filter_state` principals are not supported: proxy-wasm cannot read typed filter state"
);
refusal!(
    CustomPrincipal,
    "`custom` principal extensions are not supported by the wasm RBAC filter"
);

/// The whole plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Enforced rules. Absent: nothing is enforced.
    #[serde(default)]
    pub rules: Option<RbacRules>,
    /// Inserted after `rbac.` in the enforced rules' stat names.
    #[serde(default)]
    pub rules_stat_prefix: String,
    /// Refused (`xds.type.matcher.v3.Matcher`).
    #[serde(default)]
    pub matcher: Option<Refused<MatcherApi>>,
    /// Rules evaluated and reported, never enforced.
    #[serde(default)]
    pub shadow_rules: Option<RbacRules>,
    /// Refused (`xds.type.matcher.v3.Matcher`).
    #[serde(default)]
    pub shadow_matcher: Option<Refused<MatcherApi>>,
    /// Inserted after `rbac.` in the shadow rules' stat names.
    #[serde(default)]
    pub shadow_rules_stat_prefix: String,
    /// Count `policy.<name>.allowed`/`denied` (and shadow) per matched policy.
    #[serde(default)]
    pub track_per_rule_stats: bool,
    /// wasmesh: prepended to every stat name (Envoy's connection-manager stat prefix).
    #[serde(default)]
    pub stat_prefix: String,
    /// wasmesh: Istio `AuthorizationPolicy` objects, instead of `rules`/`shadow_rules`.
    #[serde(default)]
    pub authorization_policies: Option<Vec<AuthorizationPolicy>>,
    /// wasmesh: how the path and host are normalized before matching.
    #[serde(default)]
    pub normalization: Normalization,
    /// wasmesh: how repeated headers are matched (`STRICT`, `ANY_VALUE` or `JOIN`).
    #[serde(default)]
    pub multiple_header_values: MultipleHeaderValues,
    /// wasmesh: trusted proxies in front of this one, for `remote_ip`.
    #[serde(default, deserialize_with = "proto::uint32")]
    pub xff_num_trusted_hops: u32,
    /// wasmesh: where Istio `request.auth.*` attributes come from.
    #[serde(default)]
    pub jwt_payload: Option<JwtPayloadSource>,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.authorization_policies.is_some() {
            for (field, set) in [
                ("rules", self.rules.is_some()),
                ("shadow_rules", self.shadow_rules.is_some()),
            ] {
                if set {
                    return Err(ConfigError::new(
                        field,
                        "cannot be combined with `authorization_policies`: use one input format",
                    ));
                }
            }
        }
        if let Some(source) = &self.jwt_payload {
            if self.authorization_policies.is_none() {
                return Err(ConfigError::new(
                    "jwt_payload",
                    "is only used by `authorization_policies` (Envoy-format rules read JWT claims with `metadata` matchers)",
                ));
            }
            if source.metadata.is_some() == source.header.is_some() {
                return Err(ConfigError::new(
                    "jwt_payload",
                    "exactly one of `metadata`, `header` must be set",
                ));
            }
            if let Some(header) = &source.header {
                wasmesh_sdk::request::validate_header_name(header).map_err(|_| {
                    ConfigError::new(
                        "jwt_payload.header",
                        format!("invalid header name {header:?}"),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// `envoy.config.rbac.v3.RBAC.Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Requests matching a policy are allowed, others denied.
    #[default]
    Allow,
    /// Requests matching a policy are denied, others allowed.
    Deny,
    /// Everything is allowed; matching requests are counted as `logged`.
    Log,
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // proto3 JSON accepts an enum's name or its number.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Number(i64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Name(name) if name == "ALLOW" => Ok(Action::Allow),
            Raw::Name(name) if name == "DENY" => Ok(Action::Deny),
            Raw::Name(name) if name == "LOG" => Ok(Action::Log),
            Raw::Number(0) => Ok(Action::Allow),
            Raw::Number(1) => Ok(Action::Deny),
            Raw::Number(2) => Ok(Action::Log),
            Raw::Name(name) => Err(serde::de::Error::custom(format!(
                "unknown action {name:?}, expected one of ALLOW, DENY, LOG"
            ))),
            Raw::Number(number) => Err(serde::de::Error::custom(format!(
                "unknown action {number}, expected 0 (ALLOW), 1 (DENY) or 2 (LOG)"
            ))),
        }
    }
}

/// `envoy.config.rbac.v3.RBAC`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacRules {
    /// What a matching policy means.
    #[serde(default)]
    pub action: Action,
    /// Policies by name; evaluated in name order, the first match is the effective policy.
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    /// Refused.
    #[serde(default)]
    pub audit_logging_options: Option<Refused<AuditLogging>>,
}

/// `envoy.config.rbac.v3.Policy`: some permission and some principal must match.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawPolicy")]
pub struct Policy {
    /// `Or(permissions) And Or(principals)`.
    pub rule: Rule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
    #[serde(default)]
    condition: Option<Refused<CelCondition>>,
    #[serde(default)]
    checked_condition: Option<Refused<CelCondition>>,
    #[serde(default)]
    cel_config: Option<Refused<CelCondition>>,
}

impl TryFrom<RawPolicy> for Policy {
    type Error = String;

    fn try_from(raw: RawPolicy) -> Result<Self, String> {
        if raw.permissions.is_empty() {
            return Err("`permissions` must have at least one entry".to_string());
        }
        if raw.principals.is_empty() {
            return Err("`principals` must have at least one entry".to_string());
        }
        let _ = (raw.condition, raw.checked_condition, raw.cel_config);
        Ok(Policy {
            rule: Rule::And(vec![
                Rule::Or(raw.permissions.into_iter().map(|p| p.0).collect()),
                Rule::Or(raw.principals.into_iter().map(|p| p.0).collect()),
            ]),
        })
    }
}

/// `envoy.config.rbac.v3.Permission`, compiled.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawPermission")]
pub struct Permission(pub Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermission {
    and_rules: Option<PermissionSet>,
    or_rules: Option<PermissionSet>,
    any: Option<bool>,
    header: Option<HeaderMatcher>,
    url_path: Option<PathMatcher>,
    destination_ip: Option<CidrRange>,
    #[serde(default, deserialize_with = "proto::optional_uint32")]
    destination_port: Option<u32>,
    destination_port_range: Option<Int32Range>,
    metadata: Option<MetadataMatcher>,
    not_rule: Option<Box<Permission>>,
    requested_server_name: Option<StringMatcher>,
    matcher: Option<Refused<ExtensionMatcher>>,
    uri_template: Option<UriTemplate>,
    sourced_metadata: Option<SourcedMetadata>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionSet {
    rules: Vec<Permission>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalSet {
    ids: Vec<Principal>,
}

/// `envoy.type.matcher.v3.PathMatcher`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathMatcher {
    path: StringMatcher,
}

/// `envoy.type.v3.Int32Range`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Int32Range {
    #[serde(default, deserialize_with = "proto::int64")]
    start: i64,
    #[serde(default, deserialize_with = "proto::int64")]
    end: i64,
}

/// `envoy.config.rbac.v3.SourcedMetadata`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourcedMetadata {
    metadata_matcher: MetadataMatcher,
    #[serde(default)]
    metadata_source: MetadataSource,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
enum MetadataSource {
    #[serde(rename = "DYNAMIC")]
    #[default]
    Dynamic,
    #[serde(rename = "ROUTE")]
    Route,
}

/// `uri_template`: a `TypedExtensionConfig` holding an `UriTemplateMatchConfig`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UriTemplate {
    #[serde(default)]
    #[allow(dead_code)]
    name: String,
    typed_config: UriTemplateConfig,
}

const URI_TEMPLATE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UriTemplateConfig {
    #[serde(rename = "@type")]
    type_url: String,
    path_template: String,
}

fn metadata_rule(matcher: MetadataMatcher) -> Result<Rule, String> {
    matcher.check()?;
    Ok(Rule::Metadata(matcher))
}

fn sourced_metadata_rule(sourced: SourcedMetadata) -> Result<Rule, String> {
    if sourced.metadata_source == MetadataSource::Route {
        return Err("`metadata_source: ROUTE` is not supported: proxy-wasm exposes only dynamic metadata to this filter".to_string());
    }
    metadata_rule(sourced.metadata_matcher)
}

fn any_rule(any: bool) -> Result<Rule, String> {
    if any {
        Ok(Rule::Any)
    } else {
        Err("`any` must be true (it is the only valid value)".to_string())
    }
}

/// Exactly one field of a proto `oneof` must be set.
fn exactly_one(
    candidates: Vec<(&'static str, Option<Result<Rule, String>>)>,
) -> Result<Rule, String> {
    let names: Vec<&str> = candidates.iter().map(|(name, _)| *name).collect();
    let mut set: Vec<(&str, Result<Rule, String>)> = candidates
        .into_iter()
        .filter_map(|(name, rule)| rule.map(|rule| (name, rule)))
        .collect();
    match (set.pop(), set.is_empty()) {
        (Some((name, rule)), true) => rule.map_err(|error| format!("{name}: {error}")),
        (None, _) => Err(format!("exactly one of {} must be set", names.join(", "))),
        (Some((last, _)), false) => {
            let mut found: Vec<&str> = set.iter().map(|(name, _)| *name).collect();
            found.push(last);
            Err(format!(
                "exactly one of {} must be set, found {}",
                names.join(", "),
                found.join(", ")
            ))
        }
    }
}

impl TryFrom<RawPermission> for Permission {
    type Error = String;

    fn try_from(raw: RawPermission) -> Result<Self, String> {
        let set = |rules: Vec<Permission>, combine: fn(Vec<Rule>) -> Rule| {
            if rules.is_empty() {
                Err("`rules` must have at least one entry".to_string())
            } else {
                Ok(combine(rules.into_iter().map(|p| p.0).collect()))
            }
        };
        let _ = raw.matcher;
        let rule = exactly_one(vec![
            ("and_rules", raw.and_rules.map(|s| set(s.rules, Rule::And))),
            ("or_rules", raw.or_rules.map(|s| set(s.rules, Rule::Or))),
            ("any", raw.any.map(any_rule)),
            ("header", raw.header.map(|h| Ok(Rule::Header(h)))),
            ("url_path", raw.url_path.map(|p| Ok(Rule::UrlPath(p.path)))),
            (
                "destination_ip",
                raw.destination_ip.map(|c| Ok(Rule::DestinationIp(c))),
            ),
            (
                "destination_port",
                raw.destination_port.map(|port| {
                    if port > 65535 {
                        Err(format!("{port} is not a port (0-65535)"))
                    } else {
                        Ok(Rule::DestinationPort(port))
                    }
                }),
            ),
            (
                "destination_port_range",
                raw.destination_port_range
                    .map(|r| Ok(Rule::DestinationPortRange(r.start, r.end))),
            ),
            ("metadata", raw.metadata.map(metadata_rule)),
            (
                "not_rule",
                raw.not_rule.map(|p| Ok(Rule::Not(Box::new(p.0)))),
            ),
            (
                "requested_server_name",
                raw.requested_server_name
                    .map(|m| Ok(Rule::RequestedServerName(m))),
            ),
            (
                "uri_template",
                raw.uri_template.map(|template| {
                    if template.typed_config.type_url != URI_TEMPLATE_TYPE {
                        return Err(format!(
                            "typed_config must be {URI_TEMPLATE_TYPE}, got {}",
                            template.typed_config.type_url
                        ));
                    }
                    PathTemplate::parse(&template.typed_config.path_template)
                        .map(Rule::PathTemplate)
                        .map_err(|error| {
                            format!("{error} (only `{{*}}` and `{{**}}` operators are supported)")
                        })
                }),
            ),
            (
                "sourced_metadata",
                raw.sourced_metadata.map(sourced_metadata_rule),
            ),
        ])?;
        Ok(Permission(rule))
    }
}

/// `envoy.config.rbac.v3.Principal`, compiled.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawPrincipal")]
pub struct Principal(pub Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    and_ids: Option<PrincipalSet>,
    or_ids: Option<PrincipalSet>,
    any: Option<bool>,
    authenticated: Option<Authenticated>,
    source_ip: Option<CidrRange>,
    direct_remote_ip: Option<CidrRange>,
    remote_ip: Option<CidrRange>,
    header: Option<HeaderMatcher>,
    url_path: Option<PathMatcher>,
    metadata: Option<MetadataMatcher>,
    filter_state: Option<Refused<FilterStatePrincipal>>,
    not_id: Option<Box<Principal>>,
    sourced_metadata: Option<SourcedMetadata>,
    custom: Option<Refused<CustomPrincipal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Authenticated {
    #[serde(default)]
    principal_name: Option<StringMatcher>,
}

impl TryFrom<RawPrincipal> for Principal {
    type Error = String;

    fn try_from(raw: RawPrincipal) -> Result<Self, String> {
        let set = |ids: Vec<Principal>, combine: fn(Vec<Rule>) -> Rule| {
            if ids.is_empty() {
                Err("`ids` must have at least one entry".to_string())
            } else {
                Ok(combine(ids.into_iter().map(|p| p.0).collect()))
            }
        };
        let _ = (raw.filter_state, raw.custom);
        let rule = exactly_one(vec![
            ("and_ids", raw.and_ids.map(|s| set(s.ids, Rule::And))),
            ("or_ids", raw.or_ids.map(|s| set(s.ids, Rule::Or))),
            ("any", raw.any.map(any_rule)),
            (
                "authenticated",
                raw.authenticated
                    .map(|a| Ok(Rule::Authenticated(a.principal_name))),
            ),
            (
                "source_ip",
                raw.source_ip.map(|c| Ok(Rule::DirectRemoteIp(c))),
            ),
            (
                "direct_remote_ip",
                raw.direct_remote_ip.map(|c| Ok(Rule::DirectRemoteIp(c))),
            ),
            ("remote_ip", raw.remote_ip.map(|c| Ok(Rule::RemoteIp(c)))),
            ("header", raw.header.map(|h| Ok(Rule::Header(h)))),
            ("url_path", raw.url_path.map(|p| Ok(Rule::UrlPath(p.path)))),
            ("metadata", raw.metadata.map(metadata_rule)),
            ("not_id", raw.not_id.map(|p| Ok(Rule::Not(Box::new(p.0))))),
            (
                "sourced_metadata",
                raw.sourced_metadata.map(sourced_metadata_rule),
            ),
        ])?;
        Ok(Principal(rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;

    fn error(json: &str) -> String {
        load::<Config>(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn empty_config_enforces_nothing() {
        let config = load::<Config>(b"").unwrap();
        assert!(config.rules.is_none());
        assert!(config.shadow_rules.is_none());
        assert_eq!(config.normalization, Normalization::default());
    }

    #[test]
    fn actions_by_name_or_number() {
        for (json, action) in [
            (r#"{"rules": {}}"#, Action::Allow),
            (r#"{"rules": {"action": "DENY"}}"#, Action::Deny),
            (r#"{"rules": {"action": 2}}"#, Action::Log),
        ] {
            let config = load::<Config>(json.as_bytes()).unwrap();
            assert_eq!(config.rules.unwrap().action, action, "{json}");
        }
        assert!(error(r#"{"rules": {"action": "AUDIT"}}"#)
            .starts_with("rules.action: unknown action \"AUDIT\""));
    }

    #[test]
    fn unsupported_envoy_fields_are_refused_at_their_path() {
        let cases = [
            (r#"{"matcher": {}}"#, "matcher: the `matcher`/`shadow_matcher` API"),
            (r#"{"shadow_matcher": {}}"#, "shadow_matcher: the `matcher`"),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": [{"any": true}], "condition": {"const_expr": {"bool_value": true}}}}}}"#,
                "rules.policies.p.condition: CEL conditions are not supported",
            ),
            (
                r#"{"rules": {"audit_logging_options": {}}}"#,
                "rules.audit_logging_options: `audit_logging_options` is not supported",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": [{"filter_state": {"key": "k"}}]}}}}"#,
                "rules.policies.p.principals[0].filter_state: `filter_state` principals are not supported",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"matcher": {"name": "x"}}], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p.permissions[0].matcher: extension matchers are not supported",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": [{"custom": {}}]}}}}"#,
                "rules.policies.p.principals[0].custom: `custom` principal extensions",
            ),
        ];
        for (json, expected) in cases {
            let message = error(json);
            assert!(message.starts_with(expected), "{json}\n{message}");
        }
    }

    #[test]
    fn malformed_rules_name_the_problem() {
        let cases = [
            (
                r#"{"rules": {"policies": {"p": {"permissions": [], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p: `permissions` must have at least one entry",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": [{}]}}}}"#,
                "rules.policies.p.principals[0]: exactly one of and_ids, or_ids, any",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"any": true, "destination_port": 80}], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p.permissions[0]: exactly one of and_rules",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"any": false}], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p.permissions[0]: any: `any` must be true",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"destination_port": 70000}], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p.permissions[0]: destination_port: 70000 is not a port",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"and_rules": {"rules": []}}], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p.permissions[0]: and_rules: `rules` must have at least one entry",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"url_path": {"path": {"prefix": ""}}}], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p.permissions[0].url_path.path: `prefix`, `suffix` and `contains` must not be empty",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"hedaer": {}}], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p.permissions[0].hedaer: unknown field `hedaer`",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": [{"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 33}}]}}}}"#,
                "rules.policies.p.principals[0].remote_ip: prefix_len 33 is larger than 32",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": [{"sourced_metadata": {"metadata_matcher": {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": true}}, "metadata_source": "ROUTE"}}]}}}}"#,
                "rules.policies.p.principals[0]: sourced_metadata: `metadata_source: ROUTE` is not supported",
            ),
            (
                r#"{"rules": {"policies": {"p": {"permissions": [{"uri_template": {"name": "t", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig", "path_template": "/a/{id}"}}}], "principals": [{"any": true}]}}}}"#,
                "rules.policies.p.permissions[0]: uri_template: path template \"/a/{id}\"",
            ),
            (
                r#"{"authorization_policies": [], "rules": {}}"#,
                "rules: cannot be combined with `authorization_policies`",
            ),
            (
                r#"{"authorization_policies": [], "jwt_payload": {}}"#,
                "jwt_payload: exactly one of `metadata`, `header` must be set",
            ),
            (
                r#"{"authorization_policies": [], "jwt_payload": {"header": "bad header"}}"#,
                "jwt_payload.header: invalid header name",
            ),
            (
                r#"{"rules": {}, "jwt_payload": {"header": "x-jwt"}}"#,
                "jwt_payload: is only used by `authorization_policies`",
            ),
            (
                r#"{"normalization": {"path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"}}"#,
                "normalization.path_with_escaped_slashes_action: unknown variant `UNESCAPE_AND_REDIRECT`",
            ),
        ];
        for (json, expected) in cases {
            let message = error(json);
            assert!(message.starts_with(expected), "{json}\n{message}");
        }
    }

    #[test]
    fn every_permission_and_principal_kind_loads() {
        let json = r#"{
          "rules": {"action": "ALLOW", "policies": {"all": {
            "permissions": [
              {"and_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}, {"url_path": {"path": {"prefix": "/api/"}}}]}},
              {"or_rules": {"rules": [{"destination_port": 8080}, {"destination_port_range": {"start": 9000, "end": 9100}}]}},
              {"destination_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
              {"requested_server_name": {"suffix": ".example.com"}},
              {"metadata": {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": true}}},
              {"not_rule": {"any": true}},
              {"uri_template": {"name": "envoy.path.match.uri_template.uri_template_matcher", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig", "path_template": "/v1/{*}/items/{**}"}}},
              {"sourced_metadata": {"metadata_matcher": {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": true}}}}
            ],
            "principals": [
              {"and_ids": {"ids": [{"any": true}, {"authenticated": {}}]}},
              {"or_ids": {"ids": [{"authenticated": {"principal_name": {"exact": "spiffe://td/ns/a/sa/b"}}}]}},
              {"source_ip": {"address_prefix": "192.168.0.0", "prefix_len": 16}},
              {"direct_remote_ip": {"address_prefix": "::1", "prefix_len": 128}},
              {"remote_ip": {"address_prefix": "203.0.113.0", "prefix_len": 24}},
              {"header": {"name": "x-user", "present_match": true}},
              {"url_path": {"path": {"exact": "/"}}},
              {"metadata": {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": true}}},
              {"not_id": {"any": true}}
            ]
          }}},
          "shadow_rules": {"action": "DENY", "policies": {}},
          "rules_stat_prefix": "r.", "shadow_rules_stat_prefix": "s.", "track_per_rule_stats": true,
          "stat_prefix": "ingress", "xff_num_trusted_hops": "2", "multiple_header_values": "JOIN",
          "normalization": {"normalize_path": true, "merge_slashes": false, "path_with_escaped_slashes_action": "REJECT_REQUEST", "normalize_host": false, "strip_any_host_port": true, "forward_normalized_path": true}
        }"#;
        let config = load::<Config>(json.as_bytes()).unwrap();
        let rules = config.rules.unwrap();
        assert_eq!(rules.policies.len(), 1);
        assert_eq!(config.xff_num_trusted_hops, 2);
        assert!(config.normalization.forward_normalized_path);
        assert_eq!(config.shadow_rules.unwrap().action, Action::Deny);
    }
}
