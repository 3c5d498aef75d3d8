//! Local allow/deny lists, evaluated before the cache and the service: deny rules first (a
//! request matching any is refused), then allow rules (a request matching any goes through
//! without a check).

use wasmesh_sdk::matcher::normalize_path;
use wasmesh_sdk::request::Request;

use crate::config::{ListRule, LocalLists};

/// What the lists decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListDecision {
    /// Denied by the named rule.
    Denied(String),
    /// Allowed by the named rule.
    Allowed(String),
    /// No rule matched: ask the service.
    NoMatch,
}

/// Compiled lists.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    lists: LocalLists,
}

impl Lists {
    /// Lists from configuration.
    pub fn new(lists: LocalLists) -> Self {
        Lists { lists }
    }

    /// Status of a local denial.
    pub fn deny_status(&self) -> u16 {
        u16::try_from(self.lists.deny_status).unwrap_or(403)
    }

    /// Evaluates the lists for `request`.
    pub fn evaluate(&self, request: &dyn Request) -> ListDecision {
        if self.lists.deny.is_empty() && self.lists.allow.is_empty() {
            return ListDecision::NoMatch;
        }
        // Path rules match the path the upstream acts on: `/public/../admin` is `/admin`. A
        // path that cannot be normalized (NUL) matches every deny path rule and no allow rule.
        let path = request.path().map(normalize_path);
        if let Some(rule) = self
            .lists
            .deny
            .iter()
            .find(|rule| matches(rule, request, path.as_ref(), true))
        {
            return ListDecision::Denied(rule.name.clone());
        }
        if let Some(rule) = self
            .lists
            .allow
            .iter()
            .find(|rule| matches(rule, request, path.as_ref(), false))
        {
            return ListDecision::Allowed(rule.name.clone());
        }
        ListDecision::NoMatch
    }
}

/// Whether `path` is `prefix` or below it (`/admin` covers `/admin/x`, not `/administrator`;
/// a prefix ending in `/` is a plain prefix).
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn matches(
    rule: &ListRule,
    request: &dyn Request,
    path: Option<&Result<String, wasmesh_sdk::matcher::PathError>>,
    deny: bool,
) -> bool {
    if let Some(ranges) = &rule.source_ip {
        return request
            .source_address()
            .is_some_and(|address| ranges.iter().any(|range| range.contains(address.ip())));
    }
    if let Some(header) = &rule.header {
        return header.matches(request);
    }
    if let Some(prefix) = &rule.path_prefix {
        return match path {
            Some(Ok(path)) => under(path, prefix),
            Some(Err(_)) => deny,
            None => false,
        };
    }
    if let Some(principal) = &rule.principal {
        return request.mtls()
            && request
                .peer_identity()
                .is_some_and(|identity| principal.matches(&identity));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::request::MemoryRequest;

    fn lists(json: &str) -> Lists {
        Lists::new(load(json.as_bytes()).unwrap())
    }

    #[test]
    fn deny_wins_over_allow_and_paths_are_normalized() {
        let lists = lists(
            r#"{"deny": [{"name": "admin", "path_prefix": "/admin"}],
                "allow": [{"name": "health", "path_prefix": "/healthz"}, {"name": "all", "path_prefix": "/"}]}"#,
        );
        for denied in [
            "/admin",
            "/admin/x",
            "/public/../admin",
            "/%61dmin/x",
            "//admin",
        ] {
            assert_eq!(
                lists.evaluate(&MemoryRequest::get(denied)),
                ListDecision::Denied("admin".into()),
                "{denied}"
            );
        }
        assert_eq!(
            lists.evaluate(&MemoryRequest::get("/healthz?probe=1")),
            ListDecision::Allowed("health".into())
        );
        assert_eq!(
            lists.evaluate(&MemoryRequest::get("/administrator")),
            ListDecision::Allowed("all".into())
        );
        // A path that cannot be normalized is denied by path rules, never allowed by them.
        assert_eq!(
            lists.evaluate(&MemoryRequest::get("/x%00")),
            ListDecision::Denied("admin".into())
        );
    }

    #[test]
    fn cidr_header_and_principal_rules() {
        let lists = lists(
            r#"{"deny": [{"name": "blocked-net", "source_ip": [{"address_prefix": "10.1.0.0", "prefix_len": 16}]},
                         {"name": "bad-agent", "header": {"name": "user-agent", "string_match": {"contains": "sqlmap"}}}],
                "allow": [{"name": "mesh-admin", "principal": {"exact": "spiffe://cluster.local/ns/ops/sa/admin"}}]}"#,
        );
        let from = |ip: &str| {
            MemoryRequest::get("/").with_source_address(format!("{ip}:4000").parse().unwrap())
        };
        assert_eq!(
            lists.evaluate(&from("10.1.2.3")),
            ListDecision::Denied("blocked-net".into())
        );
        assert_eq!(lists.evaluate(&from("10.2.0.1")), ListDecision::NoMatch);
        assert_eq!(
            lists.evaluate(&from("10.2.0.1").with_header("user-agent", "sqlmap/1.7")),
            ListDecision::Denied("bad-agent".into())
        );
        assert_eq!(
            lists.evaluate(
                &from("10.2.0.1").with_mtls_peer("spiffe://cluster.local/ns/ops/sa/admin")
            ),
            ListDecision::Allowed("mesh-admin".into())
        );
        // Without mTLS there is no principal: a spoofed property alone does not match.
        let spoofed = from("10.2.0.1").with_property(
            &["connection", "uri_san_peer_certificate"],
            "spiffe://cluster.local/ns/ops/sa/admin",
        );
        assert_eq!(lists.evaluate(&spoofed), ListDecision::NoMatch);
        assert_eq!(lists.deny_status(), 403);
    }

    #[test]
    fn segment_aware_prefix() {
        assert!(under("/admin", "/admin"));
        assert!(under("/admin/x", "/admin"));
        assert!(!under("/administrator", "/admin"));
        assert!(under("/static/a.css", "/static/"));
        assert!(!under("/static", "/static/"));
    }
}
