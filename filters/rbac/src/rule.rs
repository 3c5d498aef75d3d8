//! The compiled form of permissions and principals (from Envoy RBAC or Istio policies) and
//! their evaluation against one request's [`Attributes`].
//!
//! # Several readings of one request
//!
//! A header sent several times (`x-user: alice` and `x-user: bob`) can be read several ways:
//! Envoy's `HeaderUtility` joins the values with `","` (`alice,bob`), Envoy 1.40's RBAC filter
//! matches if any one value matches, and an upstream may act on the first or the last value.
//! Whichever reading the authorizer picks, an attacker picks another: with joined values a
//! DENY for `x-user: bob` misses a request the upstream reads as `bob` (the CVE-2021-31920
//! family); with any-value matching, an added `x-tier: gold` satisfies an ALLOW for `gold`
//! while the upstream reads the first value. With `multiple_header_values: STRICT` (the
//! default) a header with several values is read every way: each value on its own, and all
//! joined. Evaluation then yields a [`Match`] with two bounds:
//! `possible` (some reading matches) and `certain` (every reading matches). DENY, LOG and AUDIT
//! policies fire on `possible`, ALLOW policies only on `certain`: no reading of the request can
//! walk around a DENY or into an ALLOW. `not_rule`/`not_id` swap the bounds. For requests
//! without repeated headers both bounds are equal and the result is exactly Envoy's.

use std::net::IpAddr;

use serde_json::Value;
use wasmesh_sdk::matcher::{CidrRange, HeaderMatcher, StringMatcher};

use crate::attributes::Attributes;
use crate::metadata::MetadataMatcher;
use crate::template::PathTemplate;

/// A match result with a lower and an upper bound (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Every reading of the request matches.
    pub certain: bool,
    /// Some reading of the request matches.
    pub possible: bool,
}

impl Match {
    /// The same answer for every reading.
    pub const fn exactly(matched: bool) -> Self {
        Match {
            certain: matched,
            possible: matched,
        }
    }

    /// Both bounds must hold.
    #[must_use]
    pub fn and(self, other: Match) -> Match {
        Match {
            certain: self.certain && other.certain,
            possible: self.possible && other.possible,
        }
    }

    /// Either bound may hold.
    #[must_use]
    pub fn or(self, other: Match) -> Match {
        Match {
            certain: self.certain || other.certain,
            possible: self.possible || other.possible,
        }
    }
}

impl std::ops::Not for Match {
    type Output = Match;

    /// Negation swaps the bounds.
    fn not(self) -> Match {
        Match {
            certain: !self.possible,
            possible: !self.certain,
        }
    }
}

/// A permission or principal, compiled.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Always matches.
    Any,
    /// Every rule matches (an empty list matches).
    And(Vec<Rule>),
    /// Some rule matches (an empty list does not match).
    Or(Vec<Rule>),
    /// The rule does not match.
    Not(Box<Rule>),
    /// A request header (pseudo-headers included; `:path` and `:authority` normalized).
    Header(HeaderMatcher),
    /// The normalized path without query and fragment.
    UrlPath(StringMatcher),
    /// The normalized path against an Istio `{*}`/`{**}` template.
    PathTemplate(PathTemplate),
    /// Istio `hosts`: the authority, case-insensitively, with or without its port.
    Host(StringMatcher),
    /// The local address the request arrived on.
    DestinationIp(CidrRange),
    /// The local port.
    DestinationPort(u32),
    /// The local port in `[start, end)`.
    DestinationPortRange(i64, i64),
    /// The TLS SNI (empty without TLS).
    RequestedServerName(StringMatcher),
    /// Dynamic metadata.
    Metadata(MetadataMatcher),
    /// A TLS peer; with a matcher, its URI SAN, DNS SAN or subject must match.
    Authenticated(Option<StringMatcher>),
    /// The downstream address (`source.address`).
    DirectRemoteIp(CidrRange),
    /// The client address derived from `x-forwarded-for`.
    RemoteIp(CidrRange),
    /// The JWT request principal `iss/sub`.
    RequestPrincipal(StringMatcher),
    /// A JWT claim (nested by path): a string matching, or a list with a string matching.
    Claim(Vec<String>, StringMatcher),
}

impl Rule {
    /// Evaluates the rule.
    pub fn evaluate(&self, attributes: &Attributes<'_>) -> Match {
        match self {
            Rule::Any => Match::exactly(true),
            Rule::And(rules) => {
                let mut result = Match::exactly(true);
                for rule in rules {
                    result = result.and(rule.evaluate(attributes));
                    if !result.possible {
                        break;
                    }
                }
                result
            }
            Rule::Or(rules) => {
                let mut result = Match::exactly(false);
                for rule in rules {
                    result = result.or(rule.evaluate(attributes));
                    if result.certain {
                        break;
                    }
                }
                result
            }
            Rule::Not(rule) => !rule.evaluate(attributes),
            Rule::Header(matcher) => attributes.match_header(matcher),
            Rule::UrlPath(matcher) => {
                Match::exactly(attributes.url_path().is_some_and(|p| matcher.matches(p)))
            }
            Rule::PathTemplate(template) => {
                Match::exactly(attributes.url_path().is_some_and(|p| template.matches(p)))
            }
            Rule::Host(matcher) => Match::exactly(attributes.host_matches(matcher)),
            Rule::DestinationIp(range) => Match::exactly(
                attributes
                    .destination()
                    .is_some_and(|address| range.contains(address.ip())),
            ),
            Rule::DestinationPort(port) => Match::exactly(
                attributes
                    .destination()
                    .is_some_and(|address| u32::from(address.port()) == *port),
            ),
            Rule::DestinationPortRange(start, end) => {
                Match::exactly(attributes.destination().is_some_and(|address| {
                    let port = i64::from(address.port());
                    *start <= port && port < *end
                }))
            }
            Rule::RequestedServerName(matcher) => {
                Match::exactly(matcher.matches(attributes.requested_server_name()))
            }
            Rule::Metadata(matcher) => {
                Match::exactly(matcher.matches(attributes.filter_metadata(&matcher.filter)))
            }
            Rule::Authenticated(matcher) => {
                Match::exactly(attributes.authenticated(matcher.as_ref()))
            }
            Rule::DirectRemoteIp(range) => {
                Match::exactly(ip_in(attributes.direct_remote_ip(), range))
            }
            Rule::RemoteIp(range) => Match::exactly(ip_in(attributes.remote_ip(), range)),
            Rule::RequestPrincipal(matcher) => Match::exactly(
                attributes
                    .request_principal()
                    .is_some_and(|principal| matcher.matches(&principal)),
            ),
            Rule::Claim(path, matcher) => Match::exactly(
                attributes
                    .claim(path)
                    .is_some_and(|claim| claim_matches(claim, matcher)),
            ),
        }
    }

    /// Calls `visit` on this rule and every rule nested in it.
    pub fn walk<'a>(&'a self, visit: &mut impl FnMut(&'a Rule)) {
        visit(self);
        match self {
            Rule::And(rules) | Rule::Or(rules) => rules.iter().for_each(|rule| rule.walk(visit)),
            Rule::Not(rule) => rule.walk(visit),
            _ => {}
        }
    }

    /// The dynamic-metadata namespaces this rule reads.
    pub fn metadata_filters(&self) -> Vec<&str> {
        let mut filters = Vec::new();
        self.walk(&mut |rule| {
            if let Rule::Metadata(matcher) = rule {
                filters.push(matcher.filter.as_str());
            }
        });
        filters
    }

    /// Whether this rule reads the JWT payload (request principal or claims).
    pub fn reads_jwt(&self) -> bool {
        let mut reads = false;
        self.walk(&mut |rule| {
            reads |= matches!(rule, Rule::RequestPrincipal(_) | Rule::Claim(..));
        });
        reads
    }
}

fn ip_in(address: Option<IpAddr>, range: &CidrRange) -> bool {
    address.is_some_and(|ip| range.contains(ip))
}

fn claim_matches(claim: &Value, matcher: &StringMatcher) -> bool {
    match claim {
        Value::String(text) => matcher.matches(text),
        Value::Array(items) => items
            .iter()
            .any(|item| item.as_str().is_some_and(|text| matcher.matches(text))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_combine_like_three_valued_logic() {
        let yes = Match::exactly(true);
        let no = Match::exactly(false);
        let maybe = Match {
            certain: false,
            possible: true,
        };
        assert_eq!(yes.and(maybe), maybe);
        assert_eq!(no.or(maybe), maybe);
        assert_eq!(yes.or(maybe), yes);
        assert_eq!(no.and(maybe), no);
        assert_eq!(!maybe, maybe);
        assert_eq!(!yes, no);
        assert_eq!(!no, yes);
    }

    #[test]
    fn claims_match_strings_and_lists_of_strings_only() {
        let admin = StringMatcher::exact("admin");
        assert!(claim_matches(&Value::from("admin"), &admin));
        assert!(claim_matches(&serde_json::json!(["dev", "admin"]), &admin));
        assert!(!claim_matches(&serde_json::json!(["dev", 1]), &admin));
        assert!(!claim_matches(&serde_json::json!({"admin": true}), &admin));
        assert!(!claim_matches(&serde_json::json!(true), &admin));
    }
}
