//! Where tokens are found (headers, query parameters, cookies) and how they are removed, as
//! Envoy's `jwt_authn` extractor does it.

use std::collections::{BTreeMap, BTreeSet};

use wasmesh_sdk::request::{percent_decode, Request};

use crate::config::JwtProvider;

/// Which issuers may use a location (a provider without `issuer` allows them all).
#[derive(Debug, Clone, Default)]
pub struct IssuerChecker {
    allow_all: bool,
    issuers: BTreeSet<String>,
}

impl IssuerChecker {
    fn add(&mut self, issuer: &str) {
        if issuer.is_empty() {
            self.allow_all = true;
        } else {
            self.issuers.insert(issuer.to_string());
        }
    }

    /// Whether a token with this `iss` may come from the location.
    pub fn allows(&self, issuer: &str) -> bool {
        self.allow_all || self.issuers.contains(issuer)
    }
}

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A request header (removed whole when the token is not forwarded).
    Header(String),
    /// A query parameter (removed from `:path` when the token is not forwarded).
    Param(String),
    /// A cookie (left in place, as Envoy does).
    Cookie,
}

/// A token found in a request.
#[derive(Debug, Clone)]
pub struct FoundToken<'a> {
    /// The token text.
    pub token: String,
    /// Where it was.
    pub place: Place,
    /// Issuers allowed at that place.
    pub issuers: &'a IssuerChecker,
}

#[derive(Debug, Clone)]
struct HeaderSpec {
    name: String,
    prefix: String,
    issuers: IssuerChecker,
}

/// The token locations of one or more providers.
#[derive(Debug, Clone, Default)]
pub struct Extractor {
    // Keyed by name + prefix, iterated in that order (Envoy keeps them in a `std::map`).
    headers: BTreeMap<String, HeaderSpec>,
    params: BTreeMap<String, IssuerChecker>,
    cookies: BTreeMap<String, IssuerChecker>,
}

/// RFC 4648 §5 base64url characters plus the dot: what a compact JWT is made of.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl Extractor {
    /// Locations of `providers`; a provider without any location uses
    /// `Authorization: Bearer <token>` and `?access_token=<token>`.
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a JwtProvider>) -> Self {
        let mut extractor = Extractor::default();
        for provider in providers {
            for header in &provider.from_headers {
                extractor.add_header(&provider.issuer, &header.name, &header.value_prefix);
            }
            for param in &provider.from_params {
                extractor
                    .params
                    .entry(param.clone())
                    .or_default()
                    .add(&provider.issuer);
            }
            for cookie in &provider.from_cookies {
                extractor
                    .cookies
                    .entry(cookie.clone())
                    .or_default()
                    .add(&provider.issuer);
            }
            if provider.from_headers.is_empty()
                && provider.from_params.is_empty()
                && provider.from_cookies.is_empty()
            {
                extractor.add_header(&provider.issuer, "authorization", "Bearer ");
                extractor
                    .params
                    .entry("access_token".to_string())
                    .or_default()
                    .add(&provider.issuer);
            }
        }
        extractor
    }

    fn add_header(&mut self, issuer: &str, name: &str, prefix: &str) {
        let name = name.to_ascii_lowercase();
        self.headers
            .entry(format!("{name}{prefix}"))
            .or_insert_with(|| HeaderSpec {
                name,
                prefix: prefix.to_string(),
                issuers: IssuerChecker::default(),
            })
            .issuers
            .add(issuer);
    }

    /// Tokens in the request, in Envoy's order: headers, then parameters, then cookies.
    pub fn extract(&self, request: &dyn Request) -> Vec<FoundToken<'_>> {
        let mut found = Vec::new();
        for spec in self.headers.values() {
            let Some(value) = request.header(&spec.name) else {
                continue;
            };
            let token = if spec.prefix.is_empty() {
                value.into_owned()
            } else {
                // Envoy looks for the prefix anywhere in the (comma-joined) value, then takes
                // what follows from the first token character on.
                let Some(position) = value.find(&spec.prefix) else {
                    continue;
                };
                let after = position + spec.prefix.len();
                let tail = value.get(after..).unwrap_or_default();
                match tail.find(is_token_char) {
                    Some(start) => tail.get(start..).unwrap_or_default().to_string(),
                    None => value.into_owned(),
                }
            };
            found.push(FoundToken {
                token,
                place: Place::Header(spec.name.clone()),
                issuers: &spec.issuers,
            });
        }
        if !self.params.is_empty() {
            let params = request
                .path()
                .map(wasmesh_sdk::request::query_params)
                .unwrap_or_default();
            for (name, issuers) in &self.params {
                if let Some((_, value)) = params.iter().find(|(key, _)| key == name) {
                    found.push(FoundToken {
                        token: value.clone(),
                        place: Place::Param(name.clone()),
                        issuers,
                    });
                }
            }
        }
        if !self.cookies.is_empty() {
            let cookies = cookies(request);
            for (name, issuers) in &self.cookies {
                if let Some((_, value)) = cookies.iter().find(|(key, _)| key == name) {
                    found.push(FoundToken {
                        token: value.clone(),
                        place: Place::Cookie,
                        issuers,
                    });
                }
            }
        }
        found
    }
}

/// Cookies of every `cookie` header, first occurrence first, quotes around values removed.
fn cookies(request: &dyn Request) -> Vec<(String, String)> {
    let mut cookies = Vec::new();
    for header in request.header_values("cookie") {
        for pair in header.split(';') {
            let pair = pair.trim_start_matches(' ');
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = value
                .strip_prefix('"')
                .and_then(|inner| inner.strip_suffix('"'))
                .unwrap_or(value);
            cookies.push((name.to_string(), value.to_string()));
        }
    }
    cookies
}

/// `path` without every occurrence of the query parameter `name` (compared percent-decoded).
pub fn remove_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
            !pair.is_empty() && percent_decode(key) != name
        })
        .collect();
    let mut rebuilt = base.to_string();
    if !kept.is_empty() {
        rebuilt.push('?');
        rebuilt.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        rebuilt.push('#');
        rebuilt.push_str(fragment);
    }
    rebuilt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtHeader;
    use wasmesh_sdk::request::MemoryRequest;

    fn provider(issuer: &str) -> JwtProvider {
        JwtProvider {
            issuer: issuer.to_string(),
            ..JwtProvider::default()
        }
    }

    fn tokens(extractor: &Extractor, request: &MemoryRequest) -> Vec<(String, Place)> {
        extractor
            .extract(request)
            .into_iter()
            .map(|found| (found.token, found.place))
            .collect()
    }

    #[test]
    fn default_locations_are_bearer_and_access_token() {
        let extractor = Extractor::new([&provider("iss")]);
        let request = MemoryRequest::get("/p?x=1&access_token=b.c.d")
            .with_header("authorization", "Bearer a.b.c");
        assert_eq!(
            tokens(&extractor, &request),
            [
                ("a.b.c".to_string(), Place::Header("authorization".into())),
                ("b.c.d".to_string(), Place::Param("access_token".into())),
            ]
        );
        let found = extractor.extract(&request);
        assert!(found[0].issuers.allows("iss"));
        assert!(!found[0].issuers.allows("other"));
        // The scheme is case-sensitive, as in Envoy.
        let lower = MemoryRequest::get("/").with_header("authorization", "bearer a.b.c");
        assert!(tokens(&extractor, &lower).is_empty());
    }

    #[test]
    fn prefix_is_found_anywhere_and_leading_junk_is_skipped() {
        let extractor = Extractor::new([&provider("iss")]);
        let request =
            MemoryRequest::get("/").with_header("authorization", "Basic x, Bearer   a.b.c");
        assert_eq!(tokens(&extractor, &request)[0].0, "a.b.c");
        let request = MemoryRequest::get("/").with_header("authorization", "Bearer ");
        assert_eq!(tokens(&extractor, &request)[0].0, "Bearer ");
    }

    #[test]
    fn custom_headers_params_and_cookies() {
        let mut custom = provider("");
        custom.from_headers = vec![JwtHeader {
            name: "X-Jwt".into(),
            value_prefix: String::new(),
        }];
        custom.from_params = vec!["jwt".into()];
        custom.from_cookies = vec!["session".into()];
        let extractor = Extractor::new([&custom]);
        let request = MemoryRequest::get("/p?jwt=p%2Eq.r&jwt=ignored")
            .with_header("x-jwt", "h.h.h")
            .with_header("authorization", "Bearer not.used.here")
            .with_header("cookie", "a=1; session=\"c.c.c\"")
            .with_header("cookie", "session=second");
        assert_eq!(
            tokens(&extractor, &request),
            [
                ("h.h.h".to_string(), Place::Header("x-jwt".into())),
                ("p.q.r".to_string(), Place::Param("jwt".into())),
                ("c.c.c".to_string(), Place::Cookie),
            ]
        );
        // An empty issuer allows any issuer.
        assert!(extractor.extract(&request)[0].issuers.allows("anything"));
    }

    #[test]
    fn query_parameters_are_removed_precisely() {
        assert_eq!(
            remove_query_param("/x?a=1&access_token=t&b=2", "access_token"),
            "/x?a=1&b=2"
        );
        assert_eq!(
            remove_query_param("/x?access_token=t", "access_token"),
            "/x"
        );
        assert_eq!(
            remove_query_param("/x?access%5Ftoken=t&access_token=u&c#f", "access_token"),
            "/x?c#f"
        );
        assert_eq!(remove_query_param("/x", "access_token"), "/x");
        assert_eq!(
            remove_query_param("/x?access_tokens=1", "access_token"),
            "/x?access_tokens=1"
        );
    }
}
