//! `envoy.type.matcher.v3.StringMatcher` and `RegexMatcher`.
//!
//! Semantics follow Envoy:
//! * `safe_regex` must match the **whole** value (RE2 `FullMatch`), not a substring.
//! * `ignore_case` folds ASCII letters only and has no effect on `safe_regex` (write `(?i)` in
//!   the pattern instead), exactly as in Envoy.
//! * `prefix`, `suffix` and `contains` must be non-empty; `exact` may be empty.
//!
//! Regexes are compiled with `regex-lite`, whose syntax is RE2's minus Unicode: Unicode
//! classes (`\p{L}`, `\pN`) are refused when the configuration loads, and `\w`, `\d`, `\s`,
//! `\b` are ASCII-only (as they are in RE2). Patterns are compiled with bounded size and nesting
//! so a configuration cannot make the filter allocate without limit.

use std::fmt;

use serde::Deserialize;

/// Upper bound on a compiled regex's heap size.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Upper bound on a regex's nesting depth.
const REGEX_NEST_LIMIT: u32 = 64;

/// A compiled regular expression that remembers its source pattern.
#[derive(Clone)]
pub struct Regex {
    pattern: String,
    anchored: regex_lite::Regex,
    unanchored: regex_lite::Regex,
}

impl Regex {
    /// Compiles `pattern`. Refuses Unicode classes and over-large programs.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("regex must not be empty".to_string());
        }
        let build = |source: &str| {
            regex_lite::RegexBuilder::new(source)
                .size_limit(REGEX_SIZE_LIMIT)
                .nest_limit(REGEX_NEST_LIMIT)
                .build()
                .map_err(|error| format!("invalid regex {pattern:?}: {error}"))
        };
        // Compile the pattern on its own first: wrapping an unbalanced pattern such as
        // `a)|(b` in `^(?:...)$` would otherwise turn it into a valid, different regex.
        let unanchored = build(pattern)?;
        let anchored = build(&format!("^(?:{pattern})$"))?;
        Ok(Regex {
            pattern: pattern.to_string(),
            anchored,
            unanchored,
        })
    }

    /// The source pattern.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern matches all of `value` (Envoy's matcher semantics).
    pub fn full_match(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }

    /// Whether the pattern matches somewhere in `value`.
    pub fn partial_match(&self, value: &str) -> bool {
        self.unanchored.is_match(value)
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Regex").field(&self.pattern).finish()
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(deserializer)?;
        Regex::new(&pattern).map_err(serde::de::Error::custom)
    }
}

/// `envoy.type.matcher.v3.RegexMatcher`: `{"regex": "...", "google_re2": {}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatcher {
    /// Accepted for compatibility (`google_re2: {}`); the deprecated `max_program_size` is
    /// refused.
    #[serde(default)]
    pub google_re2: Option<GoogleRe2>,
    /// The compiled pattern.
    pub regex: Regex,
}

/// The (empty) `google_re2` engine selector.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleRe2 {}

impl RegexMatcher {
    /// Whether the pattern matches the whole value.
    pub fn matches(&self, value: &str) -> bool {
        self.regex.full_match(value)
    }
}

/// What a [`StringMatcher`] compares against.
#[derive(Debug, Clone, PartialEq)]
pub enum StringPattern {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// Whole value matches the regex.
    Regex(Regex),
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawStringMatcher")]
pub struct StringMatcher {
    pattern: StringPattern,
    ignore_case: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatcher {
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    contains: Option<String>,
    safe_regex: Option<RegexMatcher>,
    custom: Option<serde_json::Value>,
    #[serde(default)]
    ignore_case: bool,
}

impl TryFrom<RawStringMatcher> for StringMatcher {
    type Error = String;

    fn try_from(raw: RawStringMatcher) -> Result<Self, String> {
        if raw.custom.is_some() {
            return Err("`custom` string matchers are not supported".to_string());
        }
        let mut set = Vec::new();
        let mut pattern = None;
        let mut take = |name: &'static str, candidate: Option<StringPattern>| {
            if let Some(candidate) = candidate {
                set.push(name);
                pattern = Some(candidate);
            }
        };
        take("exact", raw.exact.map(StringPattern::Exact));
        take("prefix", raw.prefix.map(StringPattern::Prefix));
        take("suffix", raw.suffix.map(StringPattern::Suffix));
        take("contains", raw.contains.map(StringPattern::Contains));
        take(
            "safe_regex",
            raw.safe_regex.map(|m| StringPattern::Regex(m.regex)),
        );
        match (set.len(), pattern) {
            (1, Some(pattern)) => StringMatcher::new(pattern, raw.ignore_case),
            (0, _) => Err(
                "exactly one of `exact`, `prefix`, `suffix`, `contains`, `safe_regex` must be set"
                    .to_string(),
            ),
            _ => Err(format!(
                "exactly one of `exact`, `prefix`, `suffix`, `contains`, `safe_regex` must be set, found {}",
                set.join(", ")
            )),
        }
    }
}

impl StringMatcher {
    /// Builds a matcher; `prefix`/`suffix`/`contains` must be non-empty (as Envoy requires).
    pub fn new(pattern: StringPattern, ignore_case: bool) -> Result<Self, String> {
        let pattern = match pattern {
            StringPattern::Prefix(value)
            | StringPattern::Suffix(value)
            | StringPattern::Contains(value)
                if value.is_empty() =>
            {
                return Err("`prefix`, `suffix` and `contains` must not be empty".to_string());
            }
            // Pre-fold once so matching only folds the input.
            StringPattern::Exact(value) if ignore_case => {
                StringPattern::Exact(value.to_ascii_lowercase())
            }
            StringPattern::Prefix(value) if ignore_case => {
                StringPattern::Prefix(value.to_ascii_lowercase())
            }
            StringPattern::Suffix(value) if ignore_case => {
                StringPattern::Suffix(value.to_ascii_lowercase())
            }
            StringPattern::Contains(value) if ignore_case => {
                StringPattern::Contains(value.to_ascii_lowercase())
            }
            other => other,
        };
        Ok(StringMatcher {
            pattern,
            ignore_case,
        })
    }

    /// `{"exact": value}`.
    pub fn exact(value: &str) -> Self {
        StringMatcher {
            pattern: StringPattern::Exact(value.to_string()),
            ignore_case: false,
        }
    }

    /// `{"prefix": value}`; `Err` if empty.
    pub fn prefix(value: &str) -> Result<Self, String> {
        StringMatcher::new(StringPattern::Prefix(value.to_string()), false)
    }

    /// `{"safe_regex": {"regex": pattern}}`.
    pub fn regex(pattern: &str) -> Result<Self, String> {
        Ok(StringMatcher {
            pattern: StringPattern::Regex(Regex::new(pattern)?),
            ignore_case: false,
        })
    }

    /// The pattern.
    pub fn pattern(&self) -> &StringPattern {
        &self.pattern
    }

    /// Whether `ignore_case` is set.
    pub fn ignore_case(&self) -> bool {
        self.ignore_case
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match &self.pattern {
            StringPattern::Exact(expected) => {
                if self.ignore_case {
                    value.eq_ignore_ascii_case(expected)
                } else {
                    value == expected
                }
            }
            StringPattern::Prefix(prefix) => {
                if self.ignore_case {
                    value
                        .as_bytes()
                        .get(..prefix.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
                } else {
                    value.starts_with(prefix.as_str())
                }
            }
            StringPattern::Suffix(suffix) => {
                if self.ignore_case {
                    value
                        .len()
                        .checked_sub(suffix.len())
                        .and_then(|start| value.as_bytes().get(start..))
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes()))
                } else {
                    value.ends_with(suffix.as_str())
                }
            }
            StringPattern::Contains(needle) => {
                if self.ignore_case {
                    value.to_ascii_lowercase().contains(needle.as_str())
                } else {
                    value.contains(needle.as_str())
                }
            }
            StringPattern::Regex(regex) => regex.full_match(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, ConfigError, Validate};

    fn parse(json: &str) -> Result<StringMatcher, String> {
        serde_json::from_str::<StringMatcher>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn exact_prefix_suffix_contains() {
        let exact = parse(r#"{"exact": "/admin"}"#).unwrap();
        assert!(exact.matches("/admin"));
        assert!(!exact.matches("/admin/"));
        assert!(!exact.matches("/ADMIN"));
        let prefix = parse(r#"{"prefix": "/api/"}"#).unwrap();
        assert!(prefix.matches("/api/v1"));
        assert!(!prefix.matches("/ap"));
        let suffix = parse(r#"{"suffix": ".php"}"#).unwrap();
        assert!(suffix.matches("/index.php"));
        assert!(!suffix.matches("/index.php5"));
        let contains = parse(r#"{"contains": "secret"}"#).unwrap();
        assert!(contains.matches("/a/secret/b"));
        assert!(!contains.matches("/a/secre/b"));
        let empty_exact = parse(r#"{"exact": ""}"#).unwrap();
        assert!(empty_exact.matches(""));
        assert!(!empty_exact.matches("x"));
    }

    #[test]
    fn ignore_case_folds_ascii_for_every_kind_but_regex() {
        let exact = parse(r#"{"exact": "/Admin", "ignore_case": true}"#).unwrap();
        assert!(exact.matches("/aDMIN"));
        let prefix = parse(r#"{"prefix": "/API", "ignore_case": true}"#).unwrap();
        assert!(prefix.matches("/api/x"));
        assert!(!prefix.matches("/ap"));
        let suffix = parse(r#"{"suffix": ".PHP", "ignore_case": true}"#).unwrap();
        assert!(suffix.matches("/x.php"));
        assert!(!suffix.matches("hp"));
        let contains = parse(r#"{"contains": "SeCrEt", "ignore_case": true}"#).unwrap();
        assert!(contains.matches("/SECRET/"));
        // Multi-byte input must not trip the byte-slicing paths.
        assert!(!suffix.matches("é"));
        assert!(!prefix.matches("é"));
        // Envoy: ignore_case has no effect on safe_regex.
        let regex = parse(r#"{"safe_regex": {"regex": "abc"}, "ignore_case": true}"#).unwrap();
        assert!(regex.matches("abc"));
        assert!(!regex.matches("ABC"));
    }

    #[test]
    fn safe_regex_is_a_full_match() {
        let regex =
            parse(r#"{"safe_regex": {"google_re2": {}, "regex": "/api/v[0-9]+"}}"#).unwrap();
        assert!(regex.matches("/api/v12"));
        assert!(!regex.matches("/api/v12/users"));
        assert!(!regex.matches("x/api/v1"));
        // Alternation must stay inside the anchors.
        let alternation = parse(r#"{"safe_regex": {"regex": "a|b"}}"#).unwrap();
        assert!(alternation.matches("a"));
        assert!(!alternation.matches("ab"));
        let Some(StringPattern::Regex(compiled)) = Some(alternation.pattern().clone()) else {
            panic!("expected a regex");
        };
        assert!(compiled.partial_match("xxbxx"));
        assert_eq!(compiled.as_str(), "a|b");
    }

    #[test]
    fn unbalanced_pattern_cannot_escape_the_anchors() {
        let error = parse(r#"{"safe_regex": {"regex": "a)|(?:.*"}}"#).unwrap_err();
        assert!(error.contains("invalid regex"), "{error}");
    }

    #[test]
    fn unicode_classes_are_refused_at_load() {
        let error = parse(r#"{"safe_regex": {"regex": "\\p{L}+"}}"#).unwrap_err();
        assert!(error.contains("Unicode"), "{error}");
    }

    #[test]
    fn exactly_one_pattern_is_required() {
        let error = parse(r#"{"ignore_case": true}"#).unwrap_err();
        assert!(error.starts_with("exactly one of"), "{error}");
        let error = parse(r#"{"prefix": "/a", "suffix": "b"}"#).unwrap_err();
        assert!(error.contains("found prefix, suffix"), "{error}");
        let error = parse(r#"{"prefix": ""}"#).unwrap_err();
        assert!(error.contains("must not be empty"), "{error}");
        let error = parse(r#"{"custom": {"name": "x"}}"#).unwrap_err();
        assert!(error.contains("not supported"), "{error}");
        let error = parse(r#"{"prefixx": "/a"}"#).unwrap_err();
        assert!(error.contains("unknown field `prefixx`"), "{error}");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rules {
        deny: Vec<StringMatcher>,
    }
    impl Validate for Rules {}

    #[test]
    fn matcher_lists_load() {
        let rules = load::<Rules>(br#"{"deny": [{"exact": "/a"}, {"prefix": "/b/"}]}"#).unwrap();
        assert!(rules.deny[0].matches("/a"));
        assert!(rules.deny[1].matches("/b/c"));
        assert!(!rules.deny[1].matches("/a"));
    }

    #[test]
    fn regex_errors_carry_the_json_path() {
        let error: ConfigError =
            load::<Rules>(br#"{"deny": [{"exact": "/"}, {"safe_regex": {"regex": "("}}]}"#)
                .unwrap_err();
        assert_eq!(error.path(), "deny[1].safe_regex.regex");
        assert!(
            error.message().starts_with("invalid regex \"(\""),
            "{error}"
        );
        let error = load::<Rules>(
            br#"{"deny": [{"safe_regex": {"regex": "a", "google_re2": {"max_program_size": 9}}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            error.path(),
            "deny[0].safe_regex.google_re2.max_program_size"
        );
    }

    #[test]
    fn oversized_regex_is_refused() {
        let error = Regex::new("(a{1000}){1000}").unwrap_err();
        assert!(error.contains("invalid regex"), "{error}");
    }
}
