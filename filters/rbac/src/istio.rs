//! Istio `AuthorizationPolicy` (security.istio.io/v1) as a second input format.
//!
//! Each policy is compiled the way istiod compiles it for Envoy's RBAC filter: one policy per
//! rule, named `ns[<namespace>]-policy[<name>]-rule[<index>]`; within a rule `from`, `to` and
//! `when` must all match; a list of sources or operations matches if one does; within a
//! source or operation every field set must match, a field's values are alternatives and its
//! `not*` form excludes. Values support Istio's `*` forms (exact, `prefix*`, `*suffix`, `*` for
//! "present"); `paths` also support the `{*}`/`{**}` templates; `hosts` compare
//! case-insensitively and with or without the port.
//!
//! Evaluation follows Istio: a matching DENY policy denies; otherwise, with no ALLOW policy
//! the request is allowed; otherwise a matching ALLOW policy allows it, and nothing else
//! does. AUDIT policies only count (`logged` / `not_logged`). Policies annotated
//! `istio.io/dry-run: "true"` are evaluated the same way as shadow rules.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmesh_sdk::matcher::{CidrRange, HeaderMatch, HeaderMatcher, StringMatcher, StringPattern};

use crate::engine::{Policy, PolicyKind, PolicySet};
use crate::rule::Rule;
use crate::template::PathTemplate;
use crate::util::{deserialize_non_empty, refusal, Refused};

refusal!(
    WorkloadSelection,
    "workload selection is not supported here: the filter applies to every request of the workload it runs on; select workloads with the WasmPlugin's `selector`/`targetRefs` and remove this field"
);
refusal!(
    CustomProvider,
    "`provider` (CUSTOM action, external authorization) is not supported by the RBAC filter"
);

/// The annotation that makes a policy dry-run (shadow) in Istio.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// One `AuthorizationPolicy` object (`apiVersion`/`kind` optional, `metadata.name` required).
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawAuthorizationPolicy")]
pub struct AuthorizationPolicy {
    namespace: String,
    name: String,
    dry_run: bool,
    kind: PolicyKind,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorizationPolicy {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Spec,
}

/// Kubernetes object metadata. Only `name`, `namespace` and the dry-run annotation mean
/// something to authorization; other metadata (labels, uid, ...) is accepted and unused.
#[derive(Deserialize)]
struct ObjectMeta {
    #[serde(deserialize_with = "deserialize_non_empty")]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    selector: Option<Refused<WorkloadSelection>>,
    #[serde(rename = "targetRef", default)]
    target_ref: Option<Refused<WorkloadSelection>>,
    #[serde(rename = "targetRefs", default)]
    target_refs: Option<Refused<WorkloadSelection>>,
    #[serde(default)]
    action: IstioAction,
    #[serde(default)]
    provider: Option<Refused<CustomProvider>>,
    #[serde(default)]
    rules: Vec<IstioRule>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
enum IstioAction {
    #[serde(rename = "ALLOW")]
    #[default]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    #[serde(rename = "AUDIT")]
    Audit,
    #[serde(rename = "CUSTOM")]
    Custom,
}

impl TryFrom<RawAuthorizationPolicy> for AuthorizationPolicy {
    type Error = String;

    fn try_from(raw: RawAuthorizationPolicy) -> Result<Self, String> {
        if let Some(version) = &raw.api_version {
            if version != "security.istio.io/v1" && version != "security.istio.io/v1beta1" {
                return Err(format!(
                    "apiVersion {version:?} is not security.istio.io/v1 or v1beta1"
                ));
            }
        }
        if let Some(kind) = &raw.kind {
            if kind != "AuthorizationPolicy" {
                return Err(format!("kind {kind:?} is not AuthorizationPolicy"));
            }
        }
        let _ = (
            raw.spec.selector,
            raw.spec.target_ref,
            raw.spec.target_refs,
            raw.spec.provider,
        );
        let kind = match raw.spec.action {
            IstioAction::Allow => PolicyKind::Allow,
            IstioAction::Deny => PolicyKind::Deny,
            IstioAction::Audit => PolicyKind::Log,
            IstioAction::Custom => {
                return Err(
                    "action CUSTOM (external authorization) is not supported by the RBAC filter"
                        .to_string(),
                );
            }
        };
        let dry_run = match raw
            .metadata
            .annotations
            .get(DRY_RUN_ANNOTATION)
            .map(String::as_str)
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "annotation {DRY_RUN_ANNOTATION} must be \"true\" or \"false\", got {other:?}"
                ))
            }
        };
        Ok(AuthorizationPolicy {
            namespace: raw
                .metadata
                .namespace
                .unwrap_or_else(|| "default".to_string()),
            name: raw.metadata.name,
            dry_run,
            kind,
            rules: raw.spec.rules.into_iter().map(|rule| rule.0).collect(),
        })
    }
}

/// Splits policies into the enforced and the dry-run sets, one compiled policy per rule.
pub fn compile(policies: Vec<AuthorizationPolicy>) -> (PolicySet, PolicySet) {
    let mut enforced = PolicySet::istio();
    let mut shadow = PolicySet::istio();
    for policy in policies {
        let set = if policy.dry_run {
            &mut shadow
        } else {
            &mut enforced
        };
        set.note_kind(policy.kind);
        for (index, rule) in policy.rules.into_iter().enumerate() {
            set.push(Policy {
                name: format!(
                    "ns[{}]-policy[{}]-rule[{index}]",
                    policy.namespace, policy.name
                ),
                kind: policy.kind,
                rule,
            });
        }
    }
    enforced.sort();
    shadow.sort();
    (enforced, shadow)
}

/// A rule: `from`, `to` and `when` must all match.
#[derive(Deserialize)]
#[serde(try_from = "RawRule")]
struct IstioRule(Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    from: Vec<From>,
    #[serde(default)]
    to: Vec<To>,
    #[serde(default)]
    when: Vec<Condition>,
}

impl TryFrom<RawRule> for IstioRule {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<Self, String> {
        let mut all = Vec::new();
        if !raw.from.is_empty() {
            all.push(Rule::Or(raw.from.into_iter().map(|f| f.source.0).collect()));
        }
        if !raw.to.is_empty() {
            all.push(Rule::Or(
                raw.to.into_iter().map(|t| t.operation.0).collect(),
            ));
        }
        all.extend(raw.when.into_iter().map(|c| c.0));
        Ok(IstioRule(Rule::And(all)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct From {
    source: Source,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    operation: Operation,
}

/// Values and excluded values of one field: `Or(values) And Not(Or(not_values))`.
fn field(
    rules: &mut Vec<Rule>,
    name: &str,
    values: Vec<String>,
    not_values: Vec<String>,
    leaf: impl Fn(&str) -> Result<Rule, String>,
) -> Result<(), String> {
    let compile = |list: Vec<String>, field: &str| -> Result<Vec<Rule>, String> {
        list.iter()
            .map(|value| leaf(value).map_err(|error| format!("{field}: {error}")))
            .collect()
    };
    if !values.is_empty() {
        rules.push(Rule::Or(compile(values, name)?));
    }
    if !not_values.is_empty() {
        let not_name = format!(
            "not{}{}",
            name.get(..1).unwrap_or_default().to_ascii_uppercase(),
            name.get(1..).unwrap_or_default()
        );
        rules.push(Rule::Not(Box::new(Rule::Or(compile(
            not_values, &not_name,
        )?))));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(try_from = "RawSource")]
struct Source(Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    request_principals: Vec<String>,
    #[serde(default)]
    not_request_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    not_service_accounts: Vec<String>,
    #[serde(default)]
    ip_blocks: Vec<String>,
    #[serde(default)]
    not_ip_blocks: Vec<String>,
    #[serde(default)]
    remote_ip_blocks: Vec<String>,
    #[serde(default)]
    not_remote_ip_blocks: Vec<String>,
}

impl TryFrom<RawSource> for Source {
    type Error = String;

    fn try_from(raw: RawSource) -> Result<Self, String> {
        let mut rules = Vec::new();
        field(
            &mut rules,
            "principals",
            raw.principals,
            raw.not_principals,
            principal_rule,
        )?;
        field(
            &mut rules,
            "requestPrincipals",
            raw.request_principals,
            raw.not_request_principals,
            |v| Ok(Rule::RequestPrincipal(pattern(v, false)?)),
        )?;
        field(
            &mut rules,
            "namespaces",
            raw.namespaces,
            raw.not_namespaces,
            namespace_rule,
        )?;
        field(
            &mut rules,
            "serviceAccounts",
            raw.service_accounts,
            raw.not_service_accounts,
            service_account_rule,
        )?;
        field(
            &mut rules,
            "ipBlocks",
            raw.ip_blocks,
            raw.not_ip_blocks,
            |v| Ok(Rule::DirectRemoteIp(CidrRange::parse(v)?)),
        )?;
        field(
            &mut rules,
            "remoteIpBlocks",
            raw.remote_ip_blocks,
            raw.not_remote_ip_blocks,
            |v| Ok(Rule::RemoteIp(CidrRange::parse(v)?)),
        )?;
        Ok(Source(Rule::And(rules)))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "RawOperation")]
struct Operation(Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOperation {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    not_hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    not_ports: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
}

impl TryFrom<RawOperation> for Operation {
    type Error = String;

    fn try_from(raw: RawOperation) -> Result<Self, String> {
        let mut rules = Vec::new();
        field(&mut rules, "hosts", raw.hosts, raw.not_hosts, |v| {
            Ok(Rule::Host(pattern(v, true)?))
        })?;
        field(&mut rules, "ports", raw.ports, raw.not_ports, |v| {
            Ok(Rule::DestinationPort(u32::from(port(v)?)))
        })?;
        field(&mut rules, "methods", raw.methods, raw.not_methods, |v| {
            header_rule(":method", v)
        })?;
        field(&mut rules, "paths", raw.paths, raw.not_paths, path_rule)?;
        Ok(Operation(Rule::And(rules)))
    }
}

/// Compiles one value of a condition.
type Leaf = Box<dyn Fn(&str) -> Result<Rule, String>>;

#[derive(Deserialize)]
#[serde(try_from = "RawCondition")]
struct Condition(Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCondition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

impl TryFrom<RawCondition> for Condition {
    type Error = String;

    fn try_from(raw: RawCondition) -> Result<Self, String> {
        if raw.values.is_empty() && raw.not_values.is_empty() {
            return Err(format!(
                "condition {:?} needs `values` or `notValues`",
                raw.key
            ));
        }
        let key = raw.key.as_str();
        let leaf: Leaf = if let Some(name) = bracketed(key, "request.headers") {
            let name = name.to_ascii_lowercase();
            wasmesh_sdk::request::validate_header_name(&name)
                .map_err(|_| format!("invalid header name in {key:?}"))?;
            Box::new(move |v| header_rule(&name, v))
        } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
            let path = claim_path(rest).ok_or_else(|| {
                format!("{key:?}: claims are written request.auth.claims[name] (nested: [a][b])")
            })?;
            Box::new(move |v| Ok(Rule::Claim(path.clone(), pattern(v, false)?)))
        } else {
            match key {
                "source.ip" => Box::new(|v| Ok(Rule::DirectRemoteIp(CidrRange::parse(v)?))),
                "remote.ip" => Box::new(|v| Ok(Rule::RemoteIp(CidrRange::parse(v)?))),
                "source.namespace" => Box::new(namespace_rule),
                "source.principal" => Box::new(principal_rule),
                "source.serviceAccount" => Box::new(service_account_rule),
                "request.auth.principal" => {
                    Box::new(|v| Ok(Rule::RequestPrincipal(pattern(v, false)?)))
                }
                "request.auth.audiences" => {
                    Box::new(|v| Ok(Rule::Claim(vec!["aud".to_string()], pattern(v, false)?)))
                }
                "request.auth.presenter" => {
                    Box::new(|v| Ok(Rule::Claim(vec!["azp".to_string()], pattern(v, false)?)))
                }
                "destination.ip" => Box::new(|v| Ok(Rule::DestinationIp(CidrRange::parse(v)?))),
                "destination.port" => {
                    Box::new(|v| Ok(Rule::DestinationPort(u32::from(port(v)?))))
                }
                "connection.sni" => Box::new(|v| Ok(Rule::RequestedServerName(pattern(v, false)?))),
                other => {
                    return Err(format!(
                        "condition key {other:?} is not supported (supported: request.headers[...], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[...], destination.ip, destination.port, connection.sni)"
                    ))
                }
            }
        };
        let mut rules = Vec::new();
        field(&mut rules, "values", raw.values, raw.not_values, leaf)?;
        Ok(Condition(Rule::And(rules)))
    }
}

/// `prefix[name]` → `name`.
fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let inner = key
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    (!inner.is_empty() && !inner.contains(['[', ']'])).then_some(inner)
}

/// `[a][b]` → `["a", "b"]`.
fn claim_path(mut rest: &str) -> Option<Vec<String>> {
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = inner.get(..end)?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        path.push(name.to_string());
        rest = inner.get(end + 1..)?;
    }
    (!path.is_empty()).then_some(path)
}

/// Istio's string forms: `*` (non-empty), `prefix*`, `*suffix`, exact.
fn pattern(value: &str, ignore_case: bool) -> Result<StringMatcher, String> {
    if value.is_empty() {
        return Err("empty values are not allowed".to_string());
    }
    if value == "*" {
        return StringMatcher::regex(".+");
    }
    let pattern = if let Some(suffix) = value.strip_prefix('*') {
        StringPattern::Suffix(suffix.to_string())
    } else if let Some(prefix) = value.strip_suffix('*') {
        StringPattern::Prefix(prefix.to_string())
    } else {
        StringPattern::Exact(value.to_string())
    };
    if let StringPattern::Suffix(text) | StringPattern::Prefix(text) | StringPattern::Exact(text) =
        &pattern
    {
        if text.contains('*') {
            return Err(format!(
                "{value:?}: `*` is only allowed at the start or the end"
            ));
        }
    }
    StringMatcher::new(pattern, ignore_case)
}

fn header_rule(name: &str, value: &str) -> Result<Rule, String> {
    let specifier = if value == "*" {
        HeaderMatch::Present(true)
    } else {
        HeaderMatch::String(pattern(value, false)?)
    };
    Ok(Rule::Header(HeaderMatcher::new(name, specifier)))
}

fn path_rule(value: &str) -> Result<Rule, String> {
    if PathTemplate::is_template(value) {
        return Ok(Rule::PathTemplate(PathTemplate::parse(value)?));
    }
    Ok(Rule::UrlPath(pattern(value, false)?))
}

fn port(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .map_err(|_| format!("{value:?} is not a port (0-65535)"))
}

/// Escapes RE2 metacharacters.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Istio principals are SPIFFE IDs without the `spiffe://` scheme.
fn principal_rule(value: &str) -> Result<Rule, String> {
    let matcher = if value == "*" {
        StringMatcher::regex(".+")?
    } else if let Some(suffix) = value.strip_prefix('*') {
        pattern(&format!("*{suffix}"), false)?
    } else {
        pattern(&format!("spiffe://{value}"), false)?
    };
    Ok(Rule::Authenticated(Some(matcher)))
}

/// A namespace matches the `/ns/<namespace>/` part of the peer's SPIFFE ID.
fn namespace_rule(value: &str) -> Result<Rule, String> {
    let namespace = if value == "*" {
        "[^/]+".to_string()
    } else if let Some(suffix) = value.strip_prefix('*') {
        format!("[^/]*{}", regex_escape(suffix))
    } else if let Some(prefix) = value.strip_suffix('*') {
        format!("{}[^/]*", regex_escape(prefix))
    } else {
        regex_escape(value)
    };
    if value.len() > 1
        && value
            .get(1..value.len() - 1)
            .is_some_and(|m| m.contains('*'))
    {
        return Err(format!(
            "{value:?}: `*` is only allowed at the start or the end"
        ));
    }
    Ok(Rule::Authenticated(Some(StringMatcher::regex(&format!(
        "spiffe://[^/]+/ns/{namespace}/.*"
    ))?)))
}

/// `namespace/service-account`.
fn service_account_rule(value: &str) -> Result<Rule, String> {
    let Some((namespace, account)) = value.split_once('/') else {
        return Err(format!("{value:?} is not <namespace>/<service account>"));
    };
    if namespace.is_empty() || account.is_empty() || account.contains('/') || value.contains('*') {
        return Err(format!("{value:?} is not <namespace>/<service account>"));
    }
    Ok(Rule::Authenticated(Some(StringMatcher::regex(&format!(
        "spiffe://[^/]+/ns/{}/sa/{}",
        regex_escape(namespace),
        regex_escape(account)
    ))?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(json: &str) -> Result<Vec<AuthorizationPolicy>, String> {
        serde_json::from_str::<Vec<AuthorizationPolicy>>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn patterns_follow_istio() {
        let p = |v| pattern(v, false).unwrap();
        assert!(p("*").matches("x"));
        assert!(!p("*").matches(""));
        assert!(p("/api/*").matches("/api/v1"));
        assert!(p("*.php").matches("/x.php"));
        assert!(p("/a").matches("/a"));
        assert!(!p("/a").matches("/a/"));
        assert!(pattern("/a*b", false).is_err());
        assert!(pattern("", false).is_err());
        assert!(pattern("*.EXAMPLE.com", true)
            .unwrap()
            .matches("www.example.COM"));
    }

    #[test]
    fn principals_namespaces_and_service_accounts() {
        let id = "spiffe://cluster.local/ns/shop/sa/frontend";
        let matches = |rule: Rule| match rule {
            Rule::Authenticated(Some(m)) => m.matches(id),
            other => panic!("{other:?}"),
        };
        assert!(matches(
            principal_rule("cluster.local/ns/shop/sa/frontend").unwrap()
        ));
        assert!(!matches(
            principal_rule("cluster.local/ns/shop/sa/backend").unwrap()
        ));
        assert!(matches(principal_rule("cluster.local/ns/shop/*").unwrap()));
        assert!(matches(principal_rule("*/sa/frontend").unwrap()));
        assert!(matches(principal_rule("*").unwrap()));
        assert!(matches(namespace_rule("shop").unwrap()));
        assert!(!matches(namespace_rule("sho").unwrap()));
        assert!(matches(namespace_rule("sh*").unwrap()));
        assert!(matches(namespace_rule("*op").unwrap()));
        assert!(matches(namespace_rule("*").unwrap()));
        assert!(!matches(namespace_rule("x.p").unwrap()));
        assert!(matches(service_account_rule("shop/frontend").unwrap()));
        assert!(!matches(service_account_rule("shop/front").unwrap()));
        assert!(service_account_rule("shop").is_err());
        assert!(namespace_rule("a*b").is_err());
    }

    #[test]
    fn claim_keys_and_paths() {
        assert_eq!(claim_path("[groups]"), Some(vec!["groups".to_string()]));
        assert_eq!(
            claim_path("[a][b]"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(claim_path(""), None);
        assert_eq!(claim_path("[]"), None);
        assert_eq!(claim_path("[a"), None);
        assert_eq!(claim_path(".a"), None);
        assert_eq!(
            bracketed("request.headers[X-User]", "request.headers"),
            Some("X-User")
        );
        assert_eq!(bracketed("request.headers[]", "request.headers"), None);
    }

    #[test]
    fn policies_compile_one_policy_per_rule_with_istio_names() {
        let loaded = policies(
            r#"[
              {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "deny-admin", "namespace": "shop", "labels": {"team": "a"}},
               "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}, {}]}},
              {"metadata": {"name": "allow-get"},
               "spec": {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}},
              {"metadata": {"name": "try", "annotations": {"istio.io/dry-run": "true"}},
               "spec": {"action": "AUDIT", "rules": [{}]}}
            ]"#,
        )
        .unwrap();
        let (enforced, shadow) = compile(loaded);
        let names: Vec<&str> = enforced
            .policies()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "ns[default]-policy[allow-get]-rule[0]",
                "ns[shop]-policy[deny-admin]-rule[0]",
                "ns[shop]-policy[deny-admin]-rule[1]"
            ]
        );
        assert_eq!(shadow.policies().len(), 1);
        assert_eq!(shadow.policies()[0].kind, PolicyKind::Log);
    }

    #[test]
    fn invalid_policies_are_refused_with_a_reason() {
        let cases = [
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"selector": {"matchLabels": {"app": "x"}}}}]"#,
                "workload selection is not supported",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"action": "CUSTOM", "provider": {"name": "x"}}}]"#,
                "`provider` (CUSTOM action",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"action": "CUSTOM"}}]"#,
                "action CUSTOM",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"action": "REJECT"}}]"#,
                "unknown variant `REJECT`",
            ),
            (r#"[{"metadata": {}, "spec": {}}]"#, "missing field `name`"),
            (
                r#"[{"apiVersion": "v1", "metadata": {"name": "p"}}]"#,
                "apiVersion \"v1\"",
            ),
            (
                r#"[{"kind": "PeerAuthentication", "metadata": {"name": "p"}}]"#,
                "kind \"PeerAuthentication\"",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/40"]}}]}]}}]"#,
                "ipBlocks: prefix_len 40 is larger than 32",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"rules": [{"from": [{"source": {"notIpBlocks": ["nope"]}}]}]}}]"#,
                "notIpBlocks: \"nope\" is not an IP address",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}}]"#,
                "ports: \"http\" is not a port",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"rules": [{"to": [{"operation": {"paths": ["/a/{**}/b"]}}]}]}}]"#,
                "paths: path template",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"rules": [{"to": [{"operation": {"path": ["/a"]}}]}]}}]"#,
                "unknown field `path`",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"rules": [{"when": [{"key": "request.time", "values": ["x"]}]}]}}]"#,
                "condition key \"request.time\" is not supported",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"rules": [{"when": [{"key": "request.headers[x]"}]}]}}]"#,
                "needs `values` or `notValues`",
            ),
            (
                r#"[{"metadata": {"name": "p"}, "spec": {"rules": [{"when": [{"key": "request.auth.claims", "values": ["x"]}]}]}}]"#,
                "claims are written",
            ),
            (
                r#"[{"metadata": {"name": "p", "annotations": {"istio.io/dry-run": "yes"}}}]"#,
                "annotation istio.io/dry-run",
            ),
        ];
        for (json, expected) in cases {
            let error = policies(json).err().unwrap_or_default();
            assert!(error.contains(expected), "{json}\n{error}");
        }
    }
}
