//! `envoy.config.core.v3.HeaderValueOption`: a header to add, and how.
//!
//! ```json
//! {"header": {"key": "x-wasmesh", "value": "hello"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
//! ```
//!
//! As in Envoy:
//! * `append_action` defaults to `APPEND_IF_EXISTS_OR_ADD`; the deprecated `append` bool is
//!   accepted (`true` = append, `false` = overwrite) but not together with `append_action`;
//! * a header with an empty value is skipped unless `keep_empty_value` is true;
//! * pseudo-headers (`:path`, ...) and `host` cannot be added this way.
//!
//! `raw_value` (base64 bytes) is refused: wasmesh header values are strings.

use serde::Deserialize;

use crate::error::Error;
use crate::request::{validate_header_name, validate_header_value, HeaderMapKind, Request};

/// `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppendAction {
    /// Append another value if the header exists, else add it.
    #[default]
    AppendIfExistsOrAdd,
    /// Add only if the header is absent.
    AddIfAbsent,
    /// Replace every value if the header exists, else add it.
    OverwriteIfExistsOrAdd,
    /// Replace every value if the header exists, else do nothing.
    OverwriteIfExists,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    /// Header name.
    pub key: String,
    /// Header value.
    #[serde(default)]
    pub value: String,
}

/// A header to add with its append policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawHeaderValueOption")]
pub struct HeaderValueOption {
    header: HeaderValue,
    append_action: AppendAction,
    keep_empty_value: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderValueOption {
    header: RawHeaderValue,
    append: Option<bool>,
    append_action: Option<AppendAction>,
    #[serde(default)]
    keep_empty_value: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderValue {
    key: String,
    #[serde(default)]
    value: String,
    raw_value: Option<serde_json::Value>,
}

impl TryFrom<RawHeaderValueOption> for HeaderValueOption {
    type Error = String;

    fn try_from(raw: RawHeaderValueOption) -> Result<Self, String> {
        if raw.header.raw_value.is_some() {
            return Err("`header.raw_value` is not supported; use `header.value`".to_string());
        }
        let append_action = match (raw.append, raw.append_action) {
            (Some(_), Some(_)) => {
                return Err("`append` and `append_action` are mutually exclusive".to_string())
            }
            (Some(true), None) => AppendAction::AppendIfExistsOrAdd,
            (Some(false), None) => AppendAction::OverwriteIfExistsOrAdd,
            (None, action) => action.unwrap_or_default(),
        };
        HeaderValueOption::new(
            HeaderValue {
                key: raw.header.key,
                value: raw.header.value,
            },
            append_action,
            raw.keep_empty_value,
        )
    }
}

impl HeaderValueOption {
    /// Validates and builds an option.
    pub fn new(
        header: HeaderValue,
        append_action: AppendAction,
        keep_empty_value: bool,
    ) -> Result<Self, String> {
        validate_header_name(&header.key).map_err(|e| e.to_string())?;
        if header.key.starts_with(':') || header.key.eq_ignore_ascii_case("host") {
            return Err(format!(
                "header {:?} cannot be added: pseudo-headers and host are not modifiable",
                header.key
            ));
        }
        validate_header_value(&header.value).map_err(|e| e.to_string())?;
        Ok(HeaderValueOption {
            header: HeaderValue {
                key: header.key.to_ascii_lowercase(),
                value: header.value,
            },
            append_action,
            keep_empty_value,
        })
    }

    /// The header.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The append policy.
    pub fn append_action(&self) -> AppendAction {
        self.append_action
    }

    /// Applies the option to `map` of `request`.
    pub fn apply(&self, request: &mut dyn Request, map: HeaderMapKind) -> Result<(), Error> {
        let HeaderValue { key, value } = &self.header;
        if value.is_empty() && !self.keep_empty_value {
            return Ok(());
        }
        let exists = match map {
            HeaderMapKind::Request => request.header(key).is_some(),
            HeaderMapKind::Response => request.response_header(key).is_some(),
        };
        let (set, add) = match self.append_action {
            AppendAction::AppendIfExistsOrAdd => (false, true),
            AppendAction::AddIfAbsent => (false, !exists),
            AppendAction::OverwriteIfExistsOrAdd => (true, false),
            AppendAction::OverwriteIfExists => (exists, false),
        };
        match (map, set, add) {
            (HeaderMapKind::Request, true, _) => request.set_request_header(key, value),
            (HeaderMapKind::Request, _, true) => request.add_request_header(key, value),
            (HeaderMapKind::Response, true, _) => request.set_response_header(key, value),
            (HeaderMapKind::Response, _, true) => request.add_response_header(key, value),
            _ => Ok(()),
        }
    }
}

/// Applies every option in order; stops at the first host error.
pub fn apply_all(
    options: &[HeaderValueOption],
    request: &mut dyn Request,
    map: HeaderMapKind,
) -> Result<(), Error> {
    options
        .iter()
        .try_for_each(|option| option.apply(request, map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::MemoryRequest;

    fn option(json: &str) -> HeaderValueOption {
        serde_json::from_str(json).unwrap()
    }

    fn request() -> MemoryRequest {
        MemoryRequest::get("/")
            .with_header("x-a", "1")
            .with_response_header("x-a", "1")
    }

    #[test]
    fn append_actions_behave_like_envoy() {
        let cases = [
            (
                r#"{"header": {"key": "x-a", "value": "2"}}"#,
                Some("1,2"),
                Some("2"),
            ),
            (
                r#"{"header": {"key": "x-a", "value": "2"}, "append_action": "ADD_IF_ABSENT"}"#,
                Some("1"),
                Some("2"),
            ),
            (
                r#"{"header": {"key": "x-a", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}"#,
                Some("2"),
                Some("2"),
            ),
            (
                r#"{"header": {"key": "x-a", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS"}"#,
                Some("2"),
                None,
            ),
            (
                r#"{"header": {"key": "x-a", "value": "2"}, "append": true}"#,
                Some("1,2"),
                Some("2"),
            ),
            (
                r#"{"header": {"key": "x-a", "value": "2"}, "append": false}"#,
                Some("2"),
                Some("2"),
            ),
        ];
        for (json, existing, absent) in cases {
            let option = option(json);
            let mut with = request();
            option.apply(&mut with, HeaderMapKind::Request).unwrap();
            option.apply(&mut with, HeaderMapKind::Response).unwrap();
            assert_eq!(with.header("x-a").as_deref(), existing, "{json}");
            assert_eq!(with.response_header("x-a").as_deref(), existing, "{json}");
            let mut without = MemoryRequest::get("/");
            option.apply(&mut without, HeaderMapKind::Request).unwrap();
            assert_eq!(without.header("x-a").as_deref(), absent, "{json}");
        }
    }

    #[test]
    fn empty_values_are_skipped_unless_kept() {
        let mut request = MemoryRequest::get("/");
        option(r#"{"header": {"key": "x-e"}}"#)
            .apply(&mut request, HeaderMapKind::Request)
            .unwrap();
        assert_eq!(request.header("x-e"), None);
        option(r#"{"header": {"key": "x-e"}, "keep_empty_value": true}"#)
            .apply(&mut request, HeaderMapKind::Request)
            .unwrap();
        assert_eq!(request.header("x-e").as_deref(), Some(""));
    }

    #[test]
    fn invalid_options_are_refused() {
        for bad in [
            r#"{"header": {"key": ":path", "value": "/x"}}"#,
            r#"{"header": {"key": "Host", "value": "x"}}"#,
            r#"{"header": {"key": "bad key", "value": "x"}}"#,
            r#"{"header": {"key": "x", "value": "a\r\nb"}}"#,
            r#"{"header": {"key": "x", "raw_value": "eA=="}}"#,
            r#"{"header": {"key": "x", "value": "v"}, "append": true, "append_action": "ADD_IF_ABSENT"}"#,
            r#"{"header": {"key": "x", "value": "v"}, "append_action": "PREPEND"}"#,
            r#"{"header": {"key": "x", "value": "v"}, "extra": 1}"#,
        ] {
            assert!(
                serde_json::from_str::<HeaderValueOption>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn apply_all_applies_in_order_and_lowercases_keys() {
        let options: Vec<HeaderValueOption> = serde_json::from_str(
            r#"[{"header": {"key": "X-One", "value": "1"}}, {"header": {"key": "x-one", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS"}]"#,
        )
        .unwrap();
        assert_eq!(options[0].header().key, "x-one");
        assert_eq!(options[1].append_action(), AppendAction::OverwriteIfExists);
        let mut request = MemoryRequest::get("/");
        apply_all(&options, &mut request, HeaderMapKind::Request).unwrap();
        assert_eq!(request.header("x-one").as_deref(), Some("2"));
    }
}
