//! Policy evaluation: Envoy's RBAC engine (ALLOW / DENY / LOG over policies in name order) and
//! Istio's (DENY first, then no ALLOW policy = allow, any ALLOW match = allow, else deny).

use crate::attributes::Attributes;
use crate::config::{Action, RbacRules};
use crate::rule::Rule;

/// What a matching policy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// A match allows (fires only when every reading of the request matches).
    Allow,
    /// A match denies (fires when any reading matches).
    Deny,
    /// A match is logged (Envoy LOG, Istio AUDIT).
    Log,
}

/// A named policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Envoy policy name, or Istio's `ns[..]-policy[..]-rule[..]`.
    pub name: String,
    /// What a match means.
    pub kind: PolicyKind,
    /// Permissions and principals.
    pub rule: Rule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantics {
    Envoy(Action),
    Istio,
}

/// A set of policies and how to decide with them.
#[derive(Debug, Clone)]
pub struct PolicySet {
    semantics: Semantics,
    policies: Vec<Policy>,
    has_allow: bool,
    has_log: bool,
}

/// The outcome of evaluating a [`PolicySet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Index (in [`PolicySet::policies`]) of the effective policy: the one that allowed or
    /// denied it (Envoy's `effective_policy_id`), `None` for a default decision.
    pub policy: Option<usize>,
    /// For LOG/AUDIT policies: whether one matched (`None` when the set has none).
    pub logged: Option<bool>,
    /// Index of the LOG/AUDIT policy that matched.
    pub log_policy: Option<usize>,
}

impl PolicySet {
    /// Envoy's `config.rbac.v3.RBAC`: every policy takes the set's action; name order.
    pub fn envoy(rules: RbacRules) -> Self {
        let kind = match rules.action {
            Action::Allow => PolicyKind::Allow,
            Action::Deny => PolicyKind::Deny,
            Action::Log => PolicyKind::Log,
        };
        // BTreeMap iteration is name order (byte-wise), as Envoy's std::map.
        let policies = rules
            .policies
            .into_iter()
            .map(|(name, policy)| Policy {
                name,
                kind,
                rule: policy.rule,
            })
            .collect();
        PolicySet {
            semantics: Semantics::Envoy(rules.action),
            policies,
            has_allow: rules.action == Action::Allow,
            has_log: rules.action == Action::Log,
        }
    }

    /// An empty set with Istio semantics (filled by [`crate::istio::compile`]).
    pub fn istio() -> Self {
        PolicySet {
            semantics: Semantics::Istio,
            policies: Vec::new(),
            has_allow: false,
            has_log: false,
        }
    }

    /// Records that an `AuthorizationPolicy` of `kind` exists (even one without rules: an ALLOW
    /// policy without rules still turns on deny-by-default).
    pub fn note_kind(&mut self, kind: PolicyKind) {
        match kind {
            PolicyKind::Allow => self.has_allow = true,
            PolicyKind::Log => self.has_log = true,
            PolicyKind::Deny => {}
        }
    }

    /// Adds a compiled policy.
    pub fn push(&mut self, policy: Policy) {
        self.note_kind(policy.kind);
        self.policies.push(policy);
    }

    /// Puts policies in name order.
    pub fn sort(&mut self) {
        self.policies.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The policies, in evaluation order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Whether this set has anything to evaluate (an Istio set built from no policies at all
    /// does not).
    pub fn is_empty(&self) -> bool {
        matches!(self.semantics, Semantics::Istio) && self.policies.is_empty() && !self.has_allow
    }

    fn first_match(&self, attributes: &Attributes<'_>, kind: PolicyKind) -> Option<usize> {
        self.policies.iter().position(|policy| {
            policy.kind == kind && {
                let matched = policy.rule.evaluate(attributes);
                // ALLOW only on a certain match; DENY and LOG on a possible one.
                if kind == PolicyKind::Allow {
                    matched.certain
                } else {
                    matched.possible
                }
            }
        })
    }

    /// Decides on a request.
    pub fn evaluate(&self, attributes: &Attributes<'_>) -> Verdict {
        let log_policy = if self.has_log {
            self.first_match(attributes, PolicyKind::Log)
        } else {
            None
        };
        let logged = self.has_log.then_some(log_policy.is_some());
        let verdict = |allowed, policy| Verdict {
            allowed,
            policy,
            logged,
            log_policy,
        };
        match self.semantics {
            Semantics::Envoy(Action::Allow) => {
                match self.first_match(attributes, PolicyKind::Allow) {
                    Some(index) => verdict(true, Some(index)),
                    None => verdict(false, None),
                }
            }
            Semantics::Envoy(Action::Deny) => {
                match self.first_match(attributes, PolicyKind::Deny) {
                    Some(index) => verdict(false, Some(index)),
                    None => verdict(true, None),
                }
            }
            Semantics::Envoy(Action::Log) => verdict(true, log_policy),
            Semantics::Istio => {
                if let Some(index) = self.first_match(attributes, PolicyKind::Deny) {
                    return verdict(false, Some(index));
                }
                if !self.has_allow {
                    return verdict(true, None);
                }
                match self.first_match(attributes, PolicyKind::Allow) {
                    Some(index) => verdict(true, Some(index)),
                    None => verdict(false, None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::Settings;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::matcher::{HeaderMatch, HeaderMatcher};
    use wasmesh_sdk::request::MemoryRequest;

    fn envoy(json: &str) -> PolicySet {
        PolicySet::envoy(load::<RbacRules>(json.as_bytes()).unwrap())
    }

    impl wasmesh_sdk::config::Validate for RbacRules {}

    fn decide(set: &PolicySet, request: &MemoryRequest) -> Verdict {
        let settings = Settings::default();
        set.evaluate(&Attributes::new(request, &settings).unwrap())
    }

    fn name(set: &PolicySet, verdict: Verdict) -> Option<&str> {
        verdict.policy.map(|i| set.policies()[i].name.as_str())
    }

    const TWO_POLICIES: &str = r#"{"action": "%ACTION%", "policies": {
        "b-admin": {"permissions": [{"url_path": {"path": {"prefix": "/admin"}}}], "principals": [{"any": true}]},
        "a-any-admin-or-get": {"permissions": [{"or_rules": {"rules": [
            {"url_path": {"path": {"prefix": "/admin"}}},
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}}],
          "principals": [{"any": true}]}
    }}"#;

    #[test]
    fn allow_picks_the_first_matching_policy_in_name_order() {
        let set = envoy(&TWO_POLICIES.replace("%ACTION%", "ALLOW"));
        let verdict = decide(&set, &MemoryRequest::get("/admin"));
        assert!(verdict.allowed);
        assert_eq!(name(&set, verdict), Some("a-any-admin-or-get"));
        let post = MemoryRequest::new()
            .with_header(":method", "POST")
            .with_header(":path", "/x");
        let verdict = decide(&set, &post);
        assert_eq!((verdict.allowed, verdict.policy), (false, None));
    }

    #[test]
    fn deny_denies_on_a_match_and_allows_otherwise() {
        let set = envoy(&TWO_POLICIES.replace("%ACTION%", "DENY"));
        let verdict = decide(&set, &MemoryRequest::get("/admin"));
        assert!(!verdict.allowed);
        assert_eq!(name(&set, verdict), Some("a-any-admin-or-get"));
        let post = MemoryRequest::new()
            .with_header(":method", "POST")
            .with_header(":path", "/x");
        assert!(decide(&set, &post).allowed);
    }

    #[test]
    fn log_always_allows_and_reports_matches() {
        let set = envoy(&TWO_POLICIES.replace("%ACTION%", "LOG"));
        let verdict = decide(&set, &MemoryRequest::get("/x"));
        assert!(verdict.allowed);
        assert_eq!(verdict.logged, Some(true));
        assert_eq!(name(&set, verdict), Some("a-any-admin-or-get"));
        let post = MemoryRequest::new().with_header(":method", "POST");
        let verdict = decide(&set, &post);
        assert_eq!((verdict.allowed, verdict.logged), (true, Some(false)));
    }

    #[test]
    fn empty_allow_denies_everything_empty_deny_allows_everything() {
        assert!(!decide(&envoy(r#"{"action": "ALLOW"}"#), &MemoryRequest::get("/")).allowed);
        assert!(
            decide(
                &envoy(r#"{"action": "DENY", "policies": {}}"#),
                &MemoryRequest::get("/")
            )
            .allowed
        );
    }

    #[test]
    fn repeated_headers_cannot_slip_past_deny_nor_into_allow() {
        let rule = Rule::Header(HeaderMatcher::new(
            "x-user",
            HeaderMatch::Exact("bob".into()),
        ));
        let policy = |kind| Policy {
            name: "p".into(),
            kind,
            rule: rule.clone(),
        };
        let request = MemoryRequest::get("/")
            .with_header("x-user", "alice")
            .with_header("x-user", "bob");
        let mut deny = PolicySet::istio();
        deny.push(policy(PolicyKind::Deny));
        assert!(!decide(&deny, &request).allowed);
        let mut allow = PolicySet::istio();
        allow.push(policy(PolicyKind::Allow));
        assert!(!decide(&allow, &request).allowed);
        assert!(
            decide(
                &allow,
                &MemoryRequest::get("/").with_header("x-user", "bob")
            )
            .allowed
        );
    }

    #[test]
    fn istio_order_deny_then_allow() {
        let admin = Rule::UrlPath(wasmesh_sdk::matcher::StringMatcher::prefix("/admin").unwrap());
        let mut set = PolicySet::istio();
        assert!(set.is_empty());
        set.push(Policy {
            name: "deny".into(),
            kind: PolicyKind::Deny,
            rule: admin.clone(),
        });
        // Only DENY policies: everything else is allowed.
        assert!(decide(&set, &MemoryRequest::get("/x")).allowed);
        assert!(!decide(&set, &MemoryRequest::get("/admin")).allowed);
        // An ALLOW policy without rules turns on deny-by-default.
        set.note_kind(PolicyKind::Allow);
        assert!(!decide(&set, &MemoryRequest::get("/x")).allowed);
        set.push(Policy {
            name: "allow".into(),
            kind: PolicyKind::Allow,
            rule: Rule::Any,
        });
        assert!(decide(&set, &MemoryRequest::get("/x")).allowed);
        // DENY wins over ALLOW.
        assert!(!decide(&set, &MemoryRequest::get("/admin")).allowed);
    }
}
