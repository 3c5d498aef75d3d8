//! The filter's per-request logic: normalize, evaluate shadow then enforced policies, count,
//! log, and allow or answer `403 RBAC: access denied` as Envoy does.

use wasmesh_sdk::decision::{Decision, LocalReply};
use wasmesh_sdk::error::Error;
use wasmesh_sdk::host::{Host, LogLevel};
use wasmesh_sdk::metrics::{Counter, MetricSink};
use wasmesh_sdk::request::Request;

use crate::attributes::{Attributes, JwtPayloadSource, Settings};
use crate::config::Config;
use crate::engine::{PolicySet, Verdict};
use crate::istio;
use crate::normalize::PathRejection;

/// Body of the 403, as Envoy's RBAC filter sends it.
pub const DENIED_BODY: &str = "RBAC: access denied";
/// Response code details of a request whose path cannot be normalized (NUL byte, or escaped
/// slash under `REJECT_REQUEST`).
pub const INVALID_PATH_DETAILS: &str = "rbac_path_normalization_failed";

/// Envoy's response code details for a denial: `rbac_access_denied_matched_policy[<name>]`,
/// `none` when no policy matched.
pub fn denied_details(policy: Option<&str>) -> String {
    format!(
        "rbac_access_denied_matched_policy[{}]",
        policy.unwrap_or("none")
    )
}

/// Envoy's `statPrefixJoin`.
fn join(prefix: &str, token: &str) -> String {
    if prefix.is_empty() {
        token.to_string()
    } else if prefix.ends_with('.') {
        format!("{prefix}{token}")
    } else {
        format!("{prefix}.{token}")
    }
}

/// One engine (enforced or shadow) with its counters.
struct Engine {
    policies: PolicySet,
    allowed: Counter,
    denied: Counter,
    logged: Counter,
    not_logged: Counter,
    /// Per policy (same order as `policies`): allowed, denied. Empty unless
    /// `track_per_rule_stats`.
    per_policy: Vec<(Counter, Counter)>,
}

impl Engine {
    fn new<S: MetricSink + ?Sized>(
        policies: PolicySet,
        prefix: &str,
        shadow: bool,
        per_policy: bool,
        metrics: &mut S,
    ) -> Result<Self, Error> {
        let (allowed, denied) = if shadow {
            ("shadow_allowed", "shadow_denied")
        } else {
            ("allowed", "denied")
        };
        let policy_prefix = join(prefix, "policy.");
        let per_policy = if per_policy {
            policies
                .policies()
                .iter()
                .map(|policy| {
                    Ok((
                        Counter::define(
                            metrics,
                            &format!("{policy_prefix}{}.{allowed}", policy.name),
                        )?,
                        Counter::define(
                            metrics,
                            &format!("{policy_prefix}{}.{denied}", policy.name),
                        )?,
                    ))
                })
                .collect::<Result<Vec<_>, Error>>()?
        } else {
            Vec::new()
        };
        Ok(Engine {
            allowed: Counter::define(metrics, &join(prefix, allowed))?,
            denied: Counter::define(metrics, &join(prefix, denied))?,
            logged: Counter::define(metrics, &join(prefix, "logged"))?,
            not_logged: Counter::define(metrics, &join(prefix, "not_logged"))?,
            per_policy,
            policies,
        })
    }

    fn policy_name(&self, index: Option<usize>) -> Option<&str> {
        index
            .and_then(|i| self.policies.policies().get(i))
            .map(|policy| policy.name.as_str())
    }

    /// Counts a verdict.
    fn count(&self, verdict: &Verdict, metrics: &dyn Host) {
        let (total, per_policy) = if verdict.allowed {
            (
                &self.allowed,
                verdict
                    .policy
                    .and_then(|i| self.per_policy.get(i))
                    .map(|c| &c.0),
            )
        } else {
            (
                &self.denied,
                verdict
                    .policy
                    .and_then(|i| self.per_policy.get(i))
                    .map(|c| &c.1),
            )
        };
        total.increment(metrics);
        if let Some(counter) = per_policy {
            counter.increment(metrics);
        }
        match verdict.logged {
            Some(true) => self.logged.increment(metrics),
            Some(false) => self.not_logged.increment(metrics),
            None => {}
        }
    }
}

/// The RBAC filter, built once per root context.
pub struct RbacFilter {
    settings: Settings,
    enforced: Option<Engine>,
    shadow: Option<Engine>,
}

impl RbacFilter {
    /// Compiles the configuration and defines the counters.
    pub fn new<S: MetricSink + ?Sized>(config: Config, metrics: &mut S) -> Result<Self, Error> {
        let (enforced, shadow) = match config.authorization_policies {
            Some(policies) => {
                let (enforced, shadow) = istio::compile(policies);
                (
                    (!enforced.is_empty()).then_some(enforced),
                    (!shadow.is_empty()).then_some(shadow),
                )
            }
            None => (
                config.rules.map(PolicySet::envoy),
                config.shadow_rules.map(PolicySet::envoy),
            ),
        };
        let mut metadata_filters: Vec<String> = Vec::new();
        let mut reads_jwt = false;
        for set in enforced.iter().chain(shadow.iter()) {
            for policy in set.policies() {
                for filter in policy.rule.metadata_filters() {
                    if !metadata_filters.iter().any(|known| known == filter) {
                        metadata_filters.push(filter.to_string());
                    }
                }
                reads_jwt |= policy.rule.reads_jwt();
            }
        }
        let settings = Settings {
            normalization: config.normalization,
            multiple_header_values: config.multiple_header_values,
            xff_num_trusted_hops: config.xff_num_trusted_hops,
            jwt_payload: reads_jwt.then(|| config.jwt_payload.unwrap_or_default()),
            metadata_filters,
        };
        let base = join(&config.stat_prefix, "rbac.");
        let enforced = enforced
            .map(|set| {
                Engine::new(
                    set,
                    &join(&base, &config.rules_stat_prefix),
                    false,
                    config.track_per_rule_stats,
                    metrics,
                )
            })
            .transpose()?;
        let shadow = shadow
            .map(|set| {
                Engine::new(
                    set,
                    &join(&base, &config.shadow_rules_stat_prefix),
                    true,
                    config.track_per_rule_stats,
                    metrics,
                )
            })
            .transpose()?;
        Ok(RbacFilter {
            settings,
            enforced,
            shadow,
        })
    }

    /// Request headers: decide.
    pub fn on_request(&self, request: &mut dyn Request, host: &dyn Host) -> Decision {
        if self.enforced.is_none() && self.shadow.is_none() {
            return Decision::Continue;
        }
        let attributes = match Attributes::new(&*request, &self.settings) {
            Ok(attributes) => attributes,
            Err(rejection) => return self.reject_path(rejection, request, host),
        };
        if let Some(shadow) = &self.shadow {
            let verdict = shadow.policies.evaluate(&attributes);
            shadow.count(&verdict, host);
            let policy = shadow.policy_name(verdict.policy).unwrap_or("none");
            if verdict.allowed {
                host.log(
                    LogLevel::Debug,
                    &format!("rbac: shadow allowed, matched policy {policy}"),
                );
            } else {
                host.log(
                    LogLevel::Info,
                    &format!(
                        "rbac: shadow denied, matched policy {policy}: {} {}",
                        request.method().unwrap_or("-"),
                        request.path().unwrap_or("-")
                    ),
                );
            }
        }
        let Some(enforced) = &self.enforced else {
            return Decision::Continue;
        };
        let verdict = enforced.policies.evaluate(&attributes);
        enforced.count(&verdict, host);
        if let Some(logged) = verdict.logged {
            let policy = enforced.policy_name(verdict.log_policy).unwrap_or("none");
            host.log(
                LogLevel::Debug,
                &format!("rbac: logged={logged}, matched policy {policy}"),
            );
        }
        let policy = enforced.policy_name(verdict.policy);
        if !verdict.allowed {
            host.log(
                LogLevel::Debug,
                &format!(
                    "rbac: enforced denied, matched policy {}",
                    policy.unwrap_or("none")
                ),
            );
            return Decision::Deny(
                LocalReply::forbidden(denied_details(policy)).with_body(DENIED_BODY),
            );
        }
        host.log(
            LogLevel::Debug,
            &format!(
                "rbac: enforced allowed, matched policy {}",
                policy.unwrap_or("none")
            ),
        );
        let rewritten = self
            .settings
            .normalization
            .forward_normalized_path
            .then(|| attributes.normalized_path().map(|p| p.with_query()))
            .flatten()
            .filter(|normalized| Some(normalized.as_str()) != request.path());
        drop(attributes);
        if let Some(path) = rewritten {
            if let Err(error) = request.set_request_header(":path", &path) {
                host.log(
                    LogLevel::Warn,
                    &format!("rbac: forwarding the normalized path failed: {error}"),
                );
            }
        }
        Decision::Continue
    }

    fn reject_path(
        &self,
        rejection: PathRejection,
        request: &dyn Request,
        host: &dyn Host,
    ) -> Decision {
        let reason = match rejection {
            PathRejection::NulByte => "contains a NUL byte",
            PathRejection::EscapedSlash => {
                "contains an escaped slash (path_with_escaped_slashes_action: REJECT_REQUEST)"
            }
            PathRejection::TooDeeplyEncoded => {
                "nests escaped slashes in too many levels of percent-encoding"
            }
        };
        host.log(
            LogLevel::Debug,
            &format!(
                "rbac: path {:?} {reason}",
                request.path().unwrap_or_default()
            ),
        );
        let verdict = Verdict {
            allowed: false,
            policy: None,
            logged: None,
            log_policy: None,
        };
        // Shadow rules were not evaluated: the request never reached them.
        match &self.enforced {
            Some(enforced) => {
                enforced.count(&verdict, host);
                Decision::Deny(LocalReply::bad_request(INVALID_PATH_DETAILS))
            }
            None => Decision::Continue,
        }
    }

    /// The JWT payload source in use, if some policy reads claims.
    pub fn jwt_payload_source(&self) -> Option<&JwtPayloadSource> {
        self.settings.jwt_payload.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::config::load;
    use wasmesh_sdk::request::MemoryRequest;
    use wasmesh_sdk::testing::MemoryHost;

    fn filter(json: &str, host: &mut MemoryHost) -> RbacFilter {
        RbacFilter::new(load::<Config>(json.as_bytes()).unwrap(), host).unwrap()
    }

    fn reply(decision: &Decision) -> Option<(u16, &str, &[u8])> {
        decision
            .local_reply()
            .map(|r| (r.status, r.details.as_str(), r.body.as_slice()))
    }

    const ADMIN_DENY: &str = r#"{
      "rules": {"action": "DENY", "policies": {
        "deny-admin": {"permissions": [{"url_path": {"path": {"prefix": "/admin"}}}], "principals": [{"any": true}]}
      }},
      "track_per_rule_stats": true
    }"#;

    #[test]
    fn denial_is_envoys_403_with_the_policy_in_the_details() {
        let mut host = MemoryHost::new();
        let filter = filter(ADMIN_DENY, &mut host);
        let decision = filter.on_request(&mut MemoryRequest::get("//admin/x"), &host);
        assert_eq!(
            reply(&decision),
            Some((
                403,
                "rbac_access_denied_matched_policy[deny-admin]",
                DENIED_BODY.as_bytes()
            ))
        );
        assert_eq!(
            filter.on_request(&mut MemoryRequest::get("/public"), &host),
            Decision::Continue
        );
        assert_eq!(host.metric("rbac.denied"), Some(1));
        assert_eq!(host.metric("rbac.allowed"), Some(1));
        assert_eq!(host.metric("rbac.policy.deny-admin.denied"), Some(1));
        assert_eq!(host.metric("rbac.policy.deny-admin.allowed"), Some(0));
    }

    #[test]
    fn allow_without_match_is_denied_with_none() {
        let mut host = MemoryHost::new();
        let filter = filter(r#"{"rules": {"policies": {}}}"#, &mut host);
        let decision = filter.on_request(&mut MemoryRequest::get("/"), &host);
        assert_eq!(
            reply(&decision).map(|r| r.1),
            Some("rbac_access_denied_matched_policy[none]")
        );
    }

    #[test]
    fn no_rules_no_enforcement() {
        let mut host = MemoryHost::new();
        let filter = filter("{}", &mut host);
        assert_eq!(
            filter.on_request(&mut MemoryRequest::get("/a%00"), &host),
            Decision::Continue
        );
        assert_eq!(host.metric("rbac.allowed"), None);
    }

    #[test]
    fn shadow_rules_are_counted_and_logged_but_never_enforced() {
        let mut host = MemoryHost::new();
        let filter = filter(
            &ADMIN_DENY.replace("\"rules\"", "\"shadow_rules\"").replace(
                "\"track_per_rule_stats\": true",
                "\"track_per_rule_stats\": true, \"shadow_rules_stat_prefix\": \"canary_\"",
            ),
            &mut host,
        );
        assert_eq!(
            filter.on_request(&mut MemoryRequest::get("/admin"), &host),
            Decision::Continue
        );
        assert_eq!(
            filter.on_request(&mut MemoryRequest::get("/ok"), &host),
            Decision::Continue
        );
        assert_eq!(host.metric("rbac.canary_.shadow_denied"), Some(1));
        assert_eq!(host.metric("rbac.canary_.shadow_allowed"), Some(1));
        assert_eq!(
            host.metric("rbac.canary_.policy.deny-admin.shadow_denied"),
            Some(1)
        );
        assert_eq!(host.metric("rbac.allowed"), None);
        assert!(host
            .logs()
            .iter()
            .any(|(level, message)| *level == LogLevel::Info
                && message.contains("shadow denied, matched policy deny-admin: GET /admin")));
    }

    #[test]
    fn both_engines_run_and_prefixes_join_like_envoy() {
        let mut host = MemoryHost::new();
        let filter = filter(
            r#"{"rules": {"action": "DENY", "policies": {}}, "rules_stat_prefix": "enforce.",
                "shadow_rules": {"action": "ALLOW", "policies": {}}, "stat_prefix": "ingress"}"#,
            &mut host,
        );
        assert_eq!(
            filter.on_request(&mut MemoryRequest::get("/"), &host),
            Decision::Continue
        );
        assert_eq!(host.metric("ingress.rbac.enforce.allowed"), Some(1));
        assert_eq!(host.metric("ingress.rbac.shadow_denied"), Some(1));
    }

    #[test]
    fn log_action_counts_logged_and_not_logged() {
        let mut host = MemoryHost::new();
        let filter = filter(&ADMIN_DENY.replace("\"DENY\"", "\"LOG\""), &mut host);
        for path in ["/admin", "/x", "/y"] {
            assert_eq!(
                filter.on_request(&mut MemoryRequest::get(path), &host),
                Decision::Continue
            );
        }
        assert_eq!(host.metric("rbac.logged"), Some(1));
        assert_eq!(host.metric("rbac.not_logged"), Some(2));
        assert_eq!(host.metric("rbac.allowed"), Some(3));
        assert_eq!(host.metric("rbac.policy.deny-admin.allowed"), Some(1));
    }

    #[test]
    fn invalid_paths_are_a_bad_request_when_enforcing() {
        let mut host = MemoryHost::new();
        let filter = filter(
            &ADMIN_DENY.replace(
                "\"track_per_rule_stats\": true",
                "\"normalization\": {\"path_with_escaped_slashes_action\": \"REJECT_REQUEST\"}",
            ),
            &mut host,
        );
        for bad in ["/a%00b", "/a%2Fb", "/a%5cb"] {
            let decision = filter.on_request(&mut MemoryRequest::get(bad), &host);
            assert_eq!(
                reply(&decision),
                Some((400, INVALID_PATH_DETAILS, &b""[..])),
                "{bad}"
            );
        }
        assert_eq!(host.metric("rbac.denied"), Some(3));
    }

    #[test]
    fn normalized_path_can_be_forwarded() {
        let mut host = MemoryHost::new();
        let filter = filter(
            &ADMIN_DENY.replace(
                "\"track_per_rule_stats\": true",
                "\"normalization\": {\"forward_normalized_path\": true}",
            ),
            &mut host,
        );
        let mut request = MemoryRequest::get("/a/./b//c%2Fd?q=%2F#frag");
        assert_eq!(filter.on_request(&mut request, &host), Decision::Continue);
        assert_eq!(request.path(), Some("/a/b/c/d?q=%2F"));
        let mut clean = MemoryRequest::get("/a/b");
        filter.on_request(&mut clean, &host);
        assert!(clean.mutations().is_empty());
    }

    #[test]
    fn istio_policies_use_istio_names_and_order() {
        let mut host = MemoryHost::new();
        let filter = filter(
            r#"{"authorization_policies": [
              {"metadata": {"name": "deny-admin", "namespace": "shop"},
               "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}},
              {"metadata": {"name": "allow-reads", "namespace": "shop"},
               "spec": {"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET", "HEAD"]}}]}]}},
              {"metadata": {"name": "audit-all", "namespace": "shop"},
               "spec": {"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/audited"]}}]}]}}
            ], "track_per_rule_stats": true}"#,
            &mut host,
        );
        let decision = filter.on_request(&mut MemoryRequest::get("/admin"), &host);
        assert_eq!(
            reply(&decision).map(|r| r.1),
            Some("rbac_access_denied_matched_policy[ns[shop]-policy[deny-admin]-rule[0]]")
        );
        assert_eq!(
            filter.on_request(&mut MemoryRequest::get("/audited"), &host),
            Decision::Continue
        );
        let mut post = MemoryRequest::new()
            .with_header(":method", "POST")
            .with_header(":path", "/x");
        let decision = filter.on_request(&mut post, &host);
        assert_eq!(
            reply(&decision).map(|r| r.1),
            Some("rbac_access_denied_matched_policy[none]")
        );
        assert_eq!(host.metric("rbac.logged"), Some(1));
        assert_eq!(host.metric("rbac.not_logged"), Some(2));
        assert_eq!(
            host.metric("rbac.policy.ns[shop]-policy[allow-reads]-rule[0].allowed"),
            Some(1)
        );
    }

    #[test]
    fn istio_dry_run_policies_are_shadow() {
        let mut host = MemoryHost::new();
        let filter = filter(
            r#"{"authorization_policies": [
              {"metadata": {"name": "lockdown", "annotations": {"istio.io/dry-run": "true"}},
               "spec": {"action": "DENY", "rules": [{}]}}
            ]}"#,
            &mut host,
        );
        assert_eq!(
            filter.on_request(&mut MemoryRequest::get("/"), &host),
            Decision::Continue
        );
        assert_eq!(host.metric("rbac.shadow_denied"), Some(1));
        assert_eq!(host.metric("rbac.allowed"), None);
    }

    #[test]
    fn metadata_and_claims_are_only_read_when_a_rule_needs_them() {
        let mut host = MemoryHost::new();
        let plain = filter(ADMIN_DENY, &mut host);
        assert!(plain.jwt_payload_source().is_none());
        assert!(plain.settings.metadata_filters.is_empty());
        let claims = filter(
            r#"{"authorization_policies": [{"metadata": {"name": "p"}, "spec": {"rules": [{"when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]}]}}],
                "rules_stat_prefix": ""}"#,
            &mut host,
        );
        assert_eq!(
            claims.jwt_payload_source(),
            Some(&JwtPayloadSource::default())
        );
    }
}
