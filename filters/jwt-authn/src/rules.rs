//! Route rules (first match wins) and requirement trees, compiled from the configuration.

use std::collections::BTreeMap;
use std::rc::Rc;

use wasmesh_sdk::matcher::{match_all, HeaderMatcher, RegexMatcher, StringMatcher};
use wasmesh_sdk::request::{query_params, Request};

use crate::config::{JwtRequirement, QueryParameterMatcher, RouteMatch};

/// Audiences compared as Envoy does: `http://` / `https://` and one trailing `/` ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audiences(Vec<String>);

/// Envoy's `sanitizeAudience`.
fn sanitize(audience: &str) -> &str {
    let without_scheme = audience
        .strip_prefix("http://")
        .or_else(|| audience.strip_prefix("https://"))
        .unwrap_or(audience);
    without_scheme.strip_suffix('/').unwrap_or(without_scheme)
}

impl Audiences {
    /// The allowed audiences (none: any audience, or no audience, is allowed).
    pub fn new(audiences: &[String]) -> Self {
        Audiences(audiences.iter().map(|a| sanitize(a).to_string()).collect())
    }

    /// Whether one of the token's audiences is allowed.
    pub fn allows(&self, token_audiences: &[String]) -> bool {
        self.0.is_empty()
            || token_audiences
                .iter()
                .any(|audience| self.0.iter().any(|allowed| allowed == sanitize(audience)))
    }
}

/// A compiled requirement.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// No verification.
    AllowAll,
    /// A token of this provider (index into the provider list), optionally with other audiences.
    Provider {
        /// Provider index.
        provider: usize,
        /// Audiences overriding the provider's.
        audiences: Option<Audiences>,
    },
    /// Any child; the flags come from `allow_missing*` children.
    Any {
        /// Children that verify.
        children: Vec<Requirement>,
        /// An `allow_missing_or_failed` child was present.
        allow_missing_or_failed: bool,
        /// An `allow_missing` child was present.
        allow_missing: bool,
    },
    /// Every child.
    All(Vec<Requirement>),
    /// Verify tokens of any provider; always pass.
    AllowMissingOrFailed,
    /// Verify tokens of any provider; pass when there is none.
    AllowMissing,
}

impl Requirement {
    /// Compiles a validated requirement; `providers` maps names to indexes.
    pub fn compile(requirement: &JwtRequirement, providers: &BTreeMap<String, usize>) -> Self {
        if let Some(name) = &requirement.provider_name {
            return providers.get(name).map_or(Requirement::AllowAll, |index| {
                Requirement::Provider {
                    provider: *index,
                    audiences: None,
                }
            });
        }
        if let Some(with_audiences) = &requirement.provider_and_audiences {
            return providers.get(&with_audiences.provider_name).map_or(
                Requirement::AllowAll,
                |index| Requirement::Provider {
                    provider: *index,
                    audiences: (!with_audiences.audiences.is_empty())
                        .then(|| Audiences::new(&with_audiences.audiences)),
                },
            );
        }
        if let Some(any) = &requirement.requires_any {
            let mut children = Vec::new();
            let (mut allow_missing_or_failed, mut allow_missing) = (false, false);
            for child in &any.requirements {
                match Requirement::compile(child, providers) {
                    Requirement::AllowMissingOrFailed => allow_missing_or_failed = true,
                    Requirement::AllowMissing => allow_missing = true,
                    other => children.push(other),
                }
            }
            if children.is_empty() {
                // Only `allow_missing*` children: they verify like one such requirement.
                children.push(if allow_missing_or_failed {
                    Requirement::AllowMissingOrFailed
                } else {
                    Requirement::AllowMissing
                });
            }
            return Requirement::Any {
                children,
                allow_missing_or_failed,
                allow_missing,
            };
        }
        if let Some(all) = &requirement.requires_all {
            return Requirement::All(
                all.requirements
                    .iter()
                    .map(|child| Requirement::compile(child, providers))
                    .collect(),
            );
        }
        if requirement.allow_missing_or_failed.is_some() {
            return Requirement::AllowMissingOrFailed;
        }
        if requirement.allow_missing.is_some() {
            return Requirement::AllowMissing;
        }
        Requirement::AllowAll
    }

    /// Providers this requirement may verify (all of them for `allow_missing*`).
    pub fn providers(&self, all: usize, into: &mut Vec<usize>) {
        match self {
            Requirement::AllowAll => {}
            Requirement::Provider { provider, .. } => into.push(*provider),
            Requirement::Any { children, .. } | Requirement::All(children) => {
                for child in children {
                    child.providers(all, into);
                }
            }
            Requirement::AllowMissingOrFailed | Requirement::AllowMissing => into.extend(0..all),
        }
    }
}

#[derive(Debug, Clone)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(RegexMatcher),
    SeparatedPrefix(String),
}

/// A compiled `RouteMatch`.
#[derive(Debug, Clone)]
pub struct Matcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query_parameters: Vec<(String, Option<StringMatcher>, Option<bool>)>,
}

impl Matcher {
    /// Compiles a validated `RouteMatch`.
    pub fn new(route: &RouteMatch) -> Self {
        let case_sensitive = route.case_sensitive.unwrap_or(true);
        let fold = |text: &str| {
            if case_sensitive {
                text.to_string()
            } else {
                text.to_ascii_lowercase()
            }
        };
        let path = if let Some(prefix) = &route.prefix {
            PathMatch::Prefix(fold(prefix))
        } else if let Some(path) = &route.path {
            PathMatch::Exact(fold(path))
        } else if let Some(regex) = &route.safe_regex {
            PathMatch::Regex(regex.clone())
        } else {
            PathMatch::SeparatedPrefix(fold(route.path_separated_prefix.as_deref().unwrap_or("/")))
        };
        Matcher {
            path,
            case_sensitive,
            headers: route.headers.clone(),
            query_parameters: route
                .query_parameters
                .iter()
                .map(
                    |QueryParameterMatcher {
                         name,
                         string_match,
                         present_match,
                     }| {
                        (name.clone(), string_match.clone(), *present_match)
                    },
                )
                .collect(),
        }
    }

    /// Whether the request matches. `path` is the normalized path without the query.
    pub fn matches(&self, path: &str, request: &dyn Request) -> bool {
        let folded;
        let candidate = if self.case_sensitive {
            path
        } else {
            folded = path.to_ascii_lowercase();
            &folded
        };
        let path_matches = match &self.path {
            PathMatch::Prefix(prefix) => candidate.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => candidate == exact,
            PathMatch::Regex(regex) => regex.matches(path),
            PathMatch::SeparatedPrefix(prefix) => candidate
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        };
        if !path_matches || !match_all(&self.headers, request.request_headers()) {
            return false;
        }
        if self.query_parameters.is_empty() {
            return true;
        }
        let params = request.path().map(query_params).unwrap_or_default();
        self.query_parameters
            .iter()
            .all(|(name, string_match, present_match)| {
                let value = params.iter().find(|(key, _)| key == name).map(|(_, v)| v);
                match (value, string_match, present_match) {
                    (Some(value), Some(matcher), _) => matcher.matches(value),
                    (None, Some(_), _) => false,
                    (value, None, Some(present)) => value.is_some() == *present,
                    (value, None, None) => value.is_some(),
                }
            })
    }
}

/// A rule: where it applies and what it requires.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where.
    pub matcher: Matcher,
    /// What.
    pub requirement: Rc<Requirement>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_sdk::request::MemoryRequest;

    fn matcher(json: &str) -> Matcher {
        Matcher::new(&serde_json::from_str::<RouteMatch>(json).unwrap())
    }

    #[test]
    fn audiences_ignore_scheme_and_trailing_slash() {
        let audiences = Audiences::new(&["https://api.example.com/".into(), "b".into()]);
        assert!(audiences.allows(&["api.example.com".into()]));
        assert!(audiences.allows(&["http://api.example.com".into()]));
        assert!(audiences.allows(&["x".into(), "https://b/".into()]));
        assert!(!audiences.allows(&["api.example.com.evil".into()]));
        assert!(!audiences.allows(&[]));
        assert!(Audiences::new(&[]).allows(&[]));
    }

    #[test]
    fn path_matchers() {
        let request = MemoryRequest::get("/");
        assert!(matcher(r#"{"prefix": "/api"}"#).matches("/api/x", &request));
        assert!(!matcher(r#"{"prefix": "/api"}"#).matches("/API/x", &request));
        assert!(
            matcher(r#"{"prefix": "/api", "case_sensitive": false}"#).matches("/API/x", &request)
        );
        assert!(matcher(r#"{"path": "/a"}"#).matches("/a", &request));
        assert!(!matcher(r#"{"path": "/a"}"#).matches("/a/", &request));
        assert!(matcher(r#"{"safe_regex": {"regex": "/v[0-9]+/.*"}}"#).matches("/v1/x", &request));
        assert!(!matcher(r#"{"safe_regex": {"regex": "/v[0-9]+"}}"#).matches("/v1/x", &request));
        let separated = matcher(r#"{"path_separated_prefix": "/api"}"#);
        assert!(separated.matches("/api", &request));
        assert!(separated.matches("/api/v1", &request));
        assert!(!separated.matches("/apis", &request));
    }

    #[test]
    fn headers_and_query_parameters() {
        let rule = matcher(
            r#"{"prefix": "/", "headers": [{"name": "x-env", "string_match": {"exact": "prod"}}],
                "query_parameters": [{"name": "debug", "present_match": true},
                                     {"name": "v", "string_match": {"prefix": "2"}}]}"#,
        );
        let good = MemoryRequest::get("/p?debug&v=2.1").with_header("x-env", "prod");
        assert!(rule.matches("/p", &good));
        let no_debug = MemoryRequest::get("/p?v=2.1").with_header("x-env", "prod");
        assert!(!rule.matches("/p", &no_debug));
        let bad_header = MemoryRequest::get("/p?debug&v=2").with_header("x-env", "dev");
        assert!(!rule.matches("/p", &bad_header));
    }

    #[test]
    fn requirements_compile_like_envoy() {
        let providers: BTreeMap<String, usize> = [("a".to_string(), 0), ("b".to_string(), 1)]
            .into_iter()
            .collect();
        let compile = |json: &str| {
            Requirement::compile(
                &serde_json::from_str::<JwtRequirement>(json).unwrap(),
                &providers,
            )
        };
        assert_eq!(compile("{}"), Requirement::AllowAll);
        assert_eq!(
            compile(r#"{"provider_and_audiences": {"provider_name": "b", "audiences": ["x"]}}"#),
            Requirement::Provider {
                provider: 1,
                audiences: Some(Audiences::new(&["x".into()]))
            }
        );
        assert_eq!(
            compile(
                r#"{"requires_any": {"requirements": [{"provider_name": "a"}, {"allow_missing": {}}]}}"#
            ),
            Requirement::Any {
                children: vec![Requirement::Provider {
                    provider: 0,
                    audiences: None
                }],
                allow_missing_or_failed: false,
                allow_missing: true,
            }
        );
        assert_eq!(
            compile(
                r#"{"requires_any": {"requirements": [{"allow_missing": {}}, {"allow_missing_or_failed": {}}]}}"#
            ),
            Requirement::Any {
                children: vec![Requirement::AllowMissingOrFailed],
                allow_missing_or_failed: true,
                allow_missing: true,
            }
        );
        let mut providers_used = Vec::new();
        compile(r#"{"requires_all": {"requirements": [{"provider_name": "b"}, {"allow_missing": {}}]}}"#)
            .providers(2, &mut providers_used);
        assert_eq!(providers_used, [1, 0, 1]);
    }
}
