//! `envoy.config.route.v3.HeaderMatcher`.
//!
//! Semantics follow Envoy's `HeaderUtility` exactly:
//! * a header present several times is matched on all its values joined with `","`;
//! * no specifier at all means "header is present";
//! * `present_match: true` matches a present header, `present_match: false` an absent one;
//!   `invert_match` flips both;
//! * for every other specifier a **missing** header never matches — not even with
//!   `invert_match` — unless `treat_missing_header_as_empty` is set, in which case the value
//!   is `""` and inversion applies normally;
//! * the legacy `exact_match: ""` matches any value (Envoy quirk); `string_match: {exact: ""}`
//!   matches only the empty value;
//! * `range_match` parses the value as a signed 64-bit integer (surrounding ASCII whitespace
//!   allowed, like `absl::SimpleAtoi`) and matches `start <= value < end`.

use serde::Deserialize;

use crate::config::proto;
use crate::matcher::string::{RegexMatcher, StringMatcher};
use crate::request::{joined_value, validate_header_name, Header, Request};

/// `envoy.type.v3.Int64Range`: half-open `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int64Range {
    /// Inclusive start.
    #[serde(default, deserialize_with = "proto::int64")]
    pub start: i64,
    /// Exclusive end.
    #[serde(default, deserialize_with = "proto::int64")]
    pub end: i64,
}

/// How a [`HeaderMatcher`] tests the value.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatch {
    /// Presence (`true`) or absence (`false`).
    Present(bool),
    /// Legacy `exact_match`; empty matches any value.
    Exact(String),
    /// Legacy `safe_regex_match` (whole value).
    Regex(RegexMatcher),
    /// `range_match`.
    Range(Int64Range),
    /// Legacy `prefix_match`.
    Prefix(String),
    /// Legacy `suffix_match`.
    Suffix(String),
    /// Legacy `contains_match`.
    Contains(String),
    /// `string_match`.
    String(StringMatcher),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawHeaderMatcher")]
pub struct HeaderMatcher {
    name: String,
    specifier: HeaderMatch,
    invert_match: bool,
    treat_missing_header_as_empty: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatcher {
    name: String,
    exact_match: Option<String>,
    safe_regex_match: Option<RegexMatcher>,
    range_match: Option<Int64Range>,
    present_match: Option<bool>,
    prefix_match: Option<String>,
    suffix_match: Option<String>,
    contains_match: Option<String>,
    string_match: Option<StringMatcher>,
    #[serde(default)]
    invert_match: bool,
    #[serde(default)]
    treat_missing_header_as_empty: bool,
}

impl TryFrom<RawHeaderMatcher> for HeaderMatcher {
    type Error = String;

    fn try_from(raw: RawHeaderMatcher) -> Result<Self, String> {
        validate_header_name(&raw.name)
            .map_err(|_| format!("invalid header name {:?}", raw.name))?;
        let non_empty = |field: &str, value: String| {
            if value.is_empty() {
                Err(format!("`{field}` must not be empty"))
            } else {
                Ok(value)
            }
        };
        let mut specifiers: Vec<HeaderMatch> = Vec::new();
        if let Some(value) = raw.exact_match {
            specifiers.push(HeaderMatch::Exact(value));
        }
        if let Some(value) = raw.safe_regex_match {
            specifiers.push(HeaderMatch::Regex(value));
        }
        if let Some(value) = raw.range_match {
            specifiers.push(HeaderMatch::Range(value));
        }
        if let Some(value) = raw.present_match {
            specifiers.push(HeaderMatch::Present(value));
        }
        if let Some(value) = raw.prefix_match {
            specifiers.push(HeaderMatch::Prefix(non_empty("prefix_match", value)?));
        }
        if let Some(value) = raw.suffix_match {
            specifiers.push(HeaderMatch::Suffix(non_empty("suffix_match", value)?));
        }
        if let Some(value) = raw.contains_match {
            specifiers.push(HeaderMatch::Contains(non_empty("contains_match", value)?));
        }
        if let Some(value) = raw.string_match {
            specifiers.push(HeaderMatch::String(value));
        }
        if specifiers.len() > 1 {
            return Err("at most one of `exact_match`, `safe_regex_match`, `range_match`, `present_match`, `prefix_match`, `suffix_match`, `contains_match`, `string_match` may be set".to_string());
        }
        Ok(HeaderMatcher {
            name: raw.name.to_ascii_lowercase(),
            specifier: specifiers.pop().unwrap_or(HeaderMatch::Present(true)),
            invert_match: raw.invert_match,
            treat_missing_header_as_empty: raw.treat_missing_header_as_empty,
        })
    }
}

impl HeaderMatcher {
    /// A matcher built in code.
    pub fn new(name: &str, specifier: HeaderMatch) -> Self {
        HeaderMatcher {
            name: name.to_ascii_lowercase(),
            specifier,
            invert_match: false,
            treat_missing_header_as_empty: false,
        }
    }

    /// Sets `invert_match`.
    #[must_use]
    pub fn inverted(mut self, invert: bool) -> Self {
        self.invert_match = invert;
        self
    }

    /// Sets `treat_missing_header_as_empty`.
    #[must_use]
    pub fn missing_as_empty(mut self, treat: bool) -> Self {
        self.treat_missing_header_as_empty = treat;
        self
    }

    /// The lower-case header name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Matches against a header list.
    pub fn matches_headers(&self, headers: &[Header]) -> bool {
        let value = joined_value(headers, &self.name);
        if let HeaderMatch::Present(present) = self.specifier {
            return (present == value.is_some()) != self.invert_match;
        }
        let value = match value {
            Some(value) => value,
            None if self.treat_missing_header_as_empty => "".into(),
            None => return false,
        };
        let matched = match &self.specifier {
            HeaderMatch::Present(present) => *present,
            HeaderMatch::Exact(expected) => expected.is_empty() || *value == **expected,
            HeaderMatch::Regex(regex) => regex.matches(&value),
            HeaderMatch::Range(range) => value
                .trim_matches(|c: char| c.is_ascii_whitespace())
                .parse::<i64>()
                .is_ok_and(|number| range.start <= number && number < range.end),
            HeaderMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            HeaderMatch::Suffix(suffix) => value.ends_with(suffix.as_str()),
            HeaderMatch::Contains(needle) => value.contains(needle.as_str()),
            HeaderMatch::String(matcher) => matcher.matches(&value),
        };
        matched != self.invert_match
    }

    /// Matches against a request's request headers.
    pub fn matches(&self, request: &dyn Request) -> bool {
        self.matches_headers(request.request_headers())
    }
}

/// Whether every matcher matches (an empty list matches), as Envoy's `matchHeaders`.
pub fn match_all(matchers: &[HeaderMatcher], headers: &[Header]) -> bool {
    matchers
        .iter()
        .all(|matcher| matcher.matches_headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::MemoryRequest;

    fn matcher(json: &str) -> HeaderMatcher {
        serde_json::from_str(json).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn no_specifier_means_present() {
        let m = matcher(r#"{"name": "X-Debug"}"#);
        assert_eq!(m.name(), "x-debug");
        assert!(m.matches_headers(&headers(&[("x-debug", "")])));
        assert!(!m.matches_headers(&headers(&[("y", "1")])));
    }

    #[test]
    fn present_match_true_false_and_inverted() {
        let present = matcher(r#"{"name": "a", "present_match": true}"#);
        let absent = matcher(r#"{"name": "a", "present_match": false}"#);
        let present_inverted =
            matcher(r#"{"name": "a", "present_match": true, "invert_match": true}"#);
        let with = headers(&[("a", "1")]);
        let without = headers(&[]);
        assert!(present.matches_headers(&with));
        assert!(!present.matches_headers(&without));
        assert!(!absent.matches_headers(&with));
        assert!(absent.matches_headers(&without));
        assert!(!present_inverted.matches_headers(&with));
        assert!(present_inverted.matches_headers(&without));
    }

    #[test]
    fn missing_header_never_matches_even_inverted_unless_treated_as_empty() {
        let inverted =
            matcher(r#"{"name": "a", "string_match": {"exact": "x"}, "invert_match": true}"#);
        assert!(!inverted.matches_headers(&headers(&[])));
        assert!(inverted.matches_headers(&headers(&[("a", "y")])));
        assert!(!inverted.matches_headers(&headers(&[("a", "x")])));
        let as_empty = matcher(
            r#"{"name": "a", "range_match": {"start": 0, "end": 10}, "invert_match": true, "treat_missing_header_as_empty": true}"#,
        );
        assert!(as_empty.matches_headers(&headers(&[])));
        let empty_exact = matcher(
            r#"{"name": "a", "string_match": {"exact": ""}, "treat_missing_header_as_empty": true}"#,
        );
        assert!(empty_exact.matches_headers(&headers(&[])));
        assert!(!empty_exact.matches_headers(&headers(&[("a", "v")])));
    }

    #[test]
    fn multi_value_headers_are_joined_with_commas() {
        let m = matcher(r#"{"name": "x-role", "string_match": {"exact": "user,admin"}}"#);
        let request = MemoryRequest::get("/")
            .with_header("x-role", "user")
            .with_header("x-role", "admin");
        assert!(m.matches(&request));
        let only_admin = matcher(r#"{"name": "x-role", "string_match": {"exact": "admin"}}"#);
        assert!(!only_admin.matches(&request));
        let contains = matcher(r#"{"name": "x-role", "contains_match": "admin"}"#);
        assert!(contains.matches(&request));
    }

    #[test]
    fn legacy_specifiers() {
        let h = headers(&[("a", "hello-world")]);
        assert!(matcher(r#"{"name": "a", "exact_match": "hello-world"}"#).matches_headers(&h));
        assert!(matcher(r#"{"name": "a", "exact_match": ""}"#).matches_headers(&h));
        assert!(matcher(r#"{"name": "a", "prefix_match": "hello"}"#).matches_headers(&h));
        assert!(matcher(r#"{"name": "a", "suffix_match": "world"}"#).matches_headers(&h));
        assert!(!matcher(r#"{"name": "a", "suffix_match": "hello"}"#).matches_headers(&h));
        assert!(
            matcher(r#"{"name": "a", "safe_regex_match": {"regex": "hel+o-.*"}}"#)
                .matches_headers(&h)
        );
        assert!(
            !matcher(r#"{"name": "a", "safe_regex_match": {"regex": "hello"}}"#)
                .matches_headers(&h)
        );
    }

    #[test]
    fn string_match_with_ignore_case() {
        let m = matcher(
            r#"{"name": "content-type", "string_match": {"prefix": "APPLICATION/JSON", "ignore_case": true}}"#,
        );
        assert!(m.matches_headers(&headers(&[(
            "content-type",
            "application/json; charset=utf-8"
        )])));
    }

    #[test]
    fn range_match_is_half_open_and_integer_only() {
        let m = matcher(r#"{"name": "n", "range_match": {"start": "-10", "end": 0}}"#);
        assert!(m.matches_headers(&headers(&[("n", "-10")])));
        assert!(m.matches_headers(&headers(&[("n", " -1 ")])));
        assert!(!m.matches_headers(&headers(&[("n", "0")])));
        assert!(!m.matches_headers(&headers(&[("n", "-1.5")])));
        assert!(!m.matches_headers(&headers(&[("n", "abc")])));
        let inverted = m.clone().inverted(true);
        assert!(inverted.matches_headers(&headers(&[("n", "5")])));
    }

    #[test]
    fn invalid_matchers_are_refused() {
        for bad in [
            r#"{"name": "a", "prefix_match": "x", "suffix_match": "y"}"#,
            r#"{"name": "", "present_match": true}"#,
            r#"{"name": "bad name"}"#,
            r#"{"name": "a", "prefix_match": ""}"#,
            r#"{"name": "a", "unknown": 1}"#,
            r#"{"present_match": true}"#,
        ] {
            assert!(serde_json::from_str::<HeaderMatcher>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn match_all_requires_every_matcher() {
        let matchers = vec![
            HeaderMatcher::new(":method", HeaderMatch::Exact("GET".into())),
            HeaderMatcher::new("x-a", HeaderMatch::Present(true)),
        ];
        assert!(match_all(
            &matchers,
            &headers(&[(":method", "GET"), ("x-a", "1")])
        ));
        assert!(!match_all(&matchers, &headers(&[(":method", "GET")])));
        assert!(match_all(&[], &headers(&[])));
        let missing_as_empty = HeaderMatcher::new("x", HeaderMatch::Suffix("z".into()))
            .inverted(true)
            .missing_as_empty(true);
        assert!(missing_as_empty.matches_headers(&headers(&[])));
    }
}
