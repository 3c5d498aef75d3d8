//! Plugin configuration: JSON into typed structs, every error naming the JSON path of the bad field.
//!
//! Filters describe their configuration as plain structs with `#[derive(Deserialize)]` and
//! `#[serde(deny_unknown_fields)]`, implement [`Validate`] for semantic checks, and call
//! [`load`]. Errors read like
//! `providers.example.audiences[0]: invalid type: integer `5`, expected a string`.
//!
//! Field names and value encodings follow proto3 JSON as Envoy users write them (snake_case
//! names; lowerCamelCase aliases are *not* accepted). [`proto`] holds serde helpers for the
//! proto3 well-known types Envoy configs use (`Duration` strings, `UInt32Value` wrappers).
//!
//! **Empty configuration.** An empty (or whitespace-only) configuration is read as `{}`: a
//! config type whose fields all have defaults gets its defaults, any other fails with
//! `missing field ...`. Envoy passes an empty buffer when a `WasmPlugin`/`envoy.filters.http.wasm`
//! has no `configuration`, so this is the documented behaviour for "no config".

use std::fmt;

use serde::de::DeserializeOwned;

/// A configuration error: where (JSON path, empty for the document root) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    /// An error at `path` (e.g. `"deny[0].safe_regex.regex"`; `""` for the root).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An error about the document as a whole.
    pub fn root(message: impl Into<String>) -> Self {
        ConfigError::new("", message)
    }

    /// The JSON path of the offending value (`""` for the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Re-roots this error under `parent`: an error at `prefix` inside the value found at
    /// `deny[0]` becomes `deny[0].prefix`. Used when validating nested values.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.path = join_path(parent, &self.path);
        self
    }
}

fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else if child.is_empty() {
        parent.to_string()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Semantic checks that serde cannot express (ranges, cross-field rules, ...).
///
/// Errors carry the JSON path relative to the value being validated; use
/// [`validate_field`] / [`validate_each`] to validate nested values so that their paths are
/// re-rooted correctly.
pub trait Validate {
    /// Checks the value; the default accepts everything.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

impl<T: Validate> Validate for Option<T> {
    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Some(value) => value.validate(),
            None => Ok(()),
        }
    }
}

impl<T: Validate> Validate for Vec<T> {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_each("", self)
    }
}

/// Validates a nested value found at `field`, re-rooting its errors under `field`.
pub fn validate_field<V: Validate + ?Sized>(field: &str, value: &V) -> Result<(), ConfigError> {
    value.validate().map_err(|error| error.within(field))
}

/// Validates every element of the list found at `field`, naming the failing index
/// (`field[3].name`).
pub fn validate_each<V: Validate>(field: &str, items: &[V]) -> Result<(), ConfigError> {
    for (index, item) in items.iter().enumerate() {
        item.validate()
            .map_err(|error| error.within(&format!("{field}[{index}]")))?;
    }
    Ok(())
}

/// Parses and validates a plugin configuration.
///
/// * empty or whitespace-only input is read as `{}` (see the module docs);
/// * syntax errors report line and column;
/// * type errors, unknown fields (with `deny_unknown_fields`) and missing fields report the
///   JSON path of the offending value;
/// * then [`Validate::validate`] runs.
pub fn load<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, ConfigError> {
    let input: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut deserializer = serde_json::Deserializer::from_slice(input);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = render_path(error.path());
        ConfigError::new(path, describe_json_error(error.inner()))
    })?;
    deserializer
        .end()
        .map_err(|error| ConfigError::root(error.to_string()))?;
    value.validate()?;
    Ok(value)
}

fn render_path(path: &serde_path_to_error::Path) -> String {
    // `Path`'s Display renders the root as "."; we use "" for the root.
    if path.iter().next().is_none() {
        String::new()
    } else {
        path.to_string()
    }
}

/// serde_json appends " at line L column C" to every message. For data errors the JSON path
/// already says where, so the position is dropped; syntax errors keep it (no path exists).
fn describe_json_error(error: &serde_json::Error) -> String {
    let full = error.to_string();
    if error.is_data() {
        let position = format!(" at line {} column {}", error.line(), error.column());
        if let Some(stripped) = full.strip_suffix(&position) {
            return stripped.to_string();
        }
    }
    full
}

/// Serde helpers for proto3-JSON encodings Envoy users write.
pub mod proto {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    /// Largest `google.protobuf.Duration` (10,000 years), as protobuf enforces.
    pub const MAX_DURATION_SECONDS: u64 = 315_576_000_000;

    /// Parses a proto3-JSON `google.protobuf.Duration`: decimal seconds with an `s` suffix and
    /// at most 9 fractional digits (`"10s"`, `"1.5s"`, `"0.000000001s"`). Other units
    /// (`"100ms"`, `"1m"`) are refused, exactly as Envoy's JSON/YAML loader refuses them.
    /// Negative durations are valid protobuf but meaningless for every timeout/interval the
    /// filters take, so they are refused too.
    pub fn parse_duration(text: &str) -> Result<Duration, String> {
        let invalid = || {
            format!(
                "invalid duration {text:?}: expected seconds with an \"s\" suffix, e.g. \"1.5s\""
            )
        };
        let number = text.strip_suffix('s').ok_or_else(invalid)?;
        if number.starts_with('-') {
            return Err(format!("invalid duration {text:?}: must not be negative"));
        }
        let (whole, fraction) = match number.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (number, None),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let seconds: u64 = whole.parse().map_err(|_| invalid())?;
        let nanos = match fraction {
            None => 0,
            Some(digits) => {
                if digits.is_empty()
                    || digits.len() > 9
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(invalid());
                }
                let value: u32 = digits.parse().map_err(|_| invalid())?;
                // Scale to nanoseconds: "5" means 500_000_000.
                let scale = 10u32.pow(9 - u32::try_from(digits.len()).map_err(|_| invalid())?);
                value * scale
            }
        };
        if seconds > MAX_DURATION_SECONDS {
            return Err(format!(
                "invalid duration {text:?}: exceeds the protobuf maximum of {MAX_DURATION_SECONDS}s"
            ));
        }
        Ok(Duration::new(seconds, nanos))
    }

    /// `#[serde(deserialize_with = "wasmesh_sdk::config::proto::duration")]` for a
    /// `std::time::Duration` field written as a proto3 `Duration` string.
    pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text: String = serde::Deserialize::deserialize(deserializer)?;
        parse_duration(&text).map_err(de::Error::custom)
    }

    /// Like [`duration`] for an `Option<Duration>` field; combine with `#[serde(default)]`.
    pub fn optional_duration<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = serde::Deserialize::deserialize(deserializer)?;
        text.map(|text| parse_duration(&text).map_err(de::Error::custom))
            .transpose()
    }

    struct UInt32Visitor;

    impl<'de> Visitor<'de> for UInt32Visitor {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an unsigned 32-bit integer (number or decimal string)")
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u32, E> {
            u32::try_from(value).map_err(|_| {
                E::custom(format!(
                    "{value} is out of range for a 32-bit unsigned integer"
                ))
            })
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u32, E> {
            u32::try_from(value).map_err(|_| {
                E::custom(format!(
                    "{value} is out of range for a 32-bit unsigned integer"
                ))
            })
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<u32, E> {
            // proto3 JSON accepts `10.0` and `1e1` for integer fields, not `10.5`.
            if value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value) {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(value as u32)
            } else {
                Err(E::custom(format!(
                    "{value} is not a 32-bit unsigned integer"
                )))
            }
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<u32, E> {
            value
                .parse::<u32>()
                .map_err(|_| E::custom(format!("{value:?} is not a 32-bit unsigned integer")))
        }
    }

    /// `#[serde(deserialize_with = "wasmesh_sdk::config::proto::uint32")]`: a proto3
    /// `uint32`/`UInt32Value` written as a JSON number (`10`, `10.0`) or a decimal string
    /// (`"10"`), as protobuf's JSON parser accepts.
    pub fn uint32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_any(UInt32Visitor)
    }

    struct Int64Visitor;

    impl Visitor<'_> for Int64Visitor {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a signed 64-bit integer (number or decimal string)")
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value)
                .map_err(|_| E::custom(format!("{value} is out of range for a 64-bit integer")))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<i64, E> {
            // 2^63 is exactly representable; anything at or beyond it is out of range.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if value.fract() == 0.0 && (-LIMIT..LIMIT).contains(&value) {
                #[allow(clippy::cast_possible_truncation)]
                Ok(value as i64)
            } else {
                Err(E::custom(format!("{value} is not a 64-bit integer")))
            }
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<i64, E> {
            value
                .parse::<i64>()
                .map_err(|_| E::custom(format!("{value:?} is not a 64-bit integer")))
        }
    }

    /// `#[serde(deserialize_with = "wasmesh_sdk::config::proto::int64")]`: a proto3 `int64`,
    /// which proto3 JSON writes as a decimal string (`"-10"`) and also accepts as a number.
    pub fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        deserializer.deserialize_any(Int64Visitor)
    }

    /// Like [`uint32`] for an `Option<u32>` (an unset `UInt32Value`); combine with
    /// `#[serde(default)]`. JSON `null` means unset, as in proto3 JSON.
    pub fn optional_uint32<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u32>, D::Error> {
        struct OptionalVisitor;
        impl<'de> Visitor<'de> for OptionalVisitor {
            type Value = Option<u32>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned 32-bit integer or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Option<u32>, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Option<u32>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
                uint32(d).map(Some)
            }
        }
        deserializer.deserialize_option(OptionalVisitor)
    }

    /// `envoy.type.v3.HttpStatus`: `{"code": 429}` or `{"code": "TooManyRequests"}` (see
    /// [`status_code`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HttpStatus {
        /// The status code.
        #[serde(deserialize_with = "status_code")]
        pub code: u16,
    }

    impl super::Validate for HttpStatus {}

    /// `envoy.type.v3.StatusCode`: the names proto3 JSON writes for each defined HTTP status.
    pub const STATUS_CODES: &[(&str, u16)] = &[
        ("Continue", 100),
        ("OK", 200),
        ("Created", 201),
        ("Accepted", 202),
        ("NonAuthoritativeInformation", 203),
        ("NoContent", 204),
        ("ResetContent", 205),
        ("PartialContent", 206),
        ("MultiStatus", 207),
        ("AlreadyReported", 208),
        ("IMUsed", 226),
        ("MultipleChoices", 300),
        ("MovedPermanently", 301),
        ("Found", 302),
        ("SeeOther", 303),
        ("NotModified", 304),
        ("UseProxy", 305),
        ("TemporaryRedirect", 307),
        ("PermanentRedirect", 308),
        ("BadRequest", 400),
        ("Unauthorized", 401),
        ("PaymentRequired", 402),
        ("Forbidden", 403),
        ("NotFound", 404),
        ("MethodNotAllowed", 405),
        ("NotAcceptable", 406),
        ("ProxyAuthenticationRequired", 407),
        ("RequestTimeout", 408),
        ("Conflict", 409),
        ("Gone", 410),
        ("LengthRequired", 411),
        ("PreconditionFailed", 412),
        ("PayloadTooLarge", 413),
        ("URITooLong", 414),
        ("UnsupportedMediaType", 415),
        ("RangeNotSatisfiable", 416),
        ("ExpectationFailed", 417),
        ("MisdirectedRequest", 421),
        ("UnprocessableEntity", 422),
        ("Locked", 423),
        ("FailedDependency", 424),
        ("UpgradeRequired", 426),
        ("PreconditionRequired", 428),
        ("TooManyRequests", 429),
        ("RequestHeaderFieldsTooLarge", 431),
        ("InternalServerError", 500),
        ("NotImplemented", 501),
        ("BadGateway", 502),
        ("ServiceUnavailable", 503),
        ("GatewayTimeout", 504),
        ("HTTPVersionNotSupported", 505),
        ("VariantAlsoNegotiates", 506),
        ("InsufficientStorage", 507),
        ("LoopDetected", 508),
        ("NotExtended", 510),
        ("NetworkAuthenticationRequired", 511),
    ];

    /// `#[serde(deserialize_with = "wasmesh_sdk::config::proto::status_code")]`: an
    /// `envoy.type.v3.StatusCode` written as its number (`429`) or its enum name
    /// (`"TooManyRequests"`). Numbers that name no defined status are refused, as protobuf
    /// refuses an unknown enum value.
    pub fn status_code<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
        const EXPECTED: &str =
            "an envoy.type.v3.StatusCode (a defined HTTP status number or name such as \"TooManyRequests\")";
        let value: serde_json::Value = serde::Deserialize::deserialize(deserializer)?;
        match &value {
            serde_json::Value::String(name) => STATUS_CODES
                .iter()
                .find(|(candidate, _)| candidate == name)
                .map(|(_, code)| *code)
                .ok_or_else(|| {
                    de::Error::custom(format!("unknown status code name {name:?}: not {EXPECTED}"))
                }),
            serde_json::Value::Number(number) => number
                .as_u64()
                .and_then(|code| u16::try_from(code).ok())
                .filter(|code| STATUS_CODES.iter().any(|(_, known)| known == code))
                .ok_or_else(|| de::Error::custom(format!("{number} is not {EXPECTED}"))),
            other => Err(de::Error::custom(format!("{other} is not {EXPECTED}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Provider {
        issuer: String,
        #[serde(default)]
        audiences: Vec<String>,
        #[serde(default, deserialize_with = "proto::optional_duration")]
        cache_duration: Option<Duration>,
    }

    impl Validate for Provider {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.issuer.is_empty() {
                return Err(ConfigError::new("issuer", "must not be empty"));
            }
            Ok(())
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        providers: BTreeMap<String, Provider>,
        #[serde(default)]
        rules: Vec<Provider>,
    }

    impl Validate for Root {
        fn validate(&self) -> Result<(), ConfigError> {
            for (name, provider) in &self.providers {
                validate_field(&format!("providers.{name}"), provider)?;
            }
            validate_each("rules", &self.rules)
        }
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct AllDefaults {
        #[serde(default)]
        enabled: bool,
    }
    impl Validate for AllDefaults {}

    #[test]
    fn type_error_names_the_json_path() {
        let error =
            load::<Root>(br#"{"providers": {"example": {"issuer": "a", "audiences": [5]}}}"#)
                .unwrap_err();
        assert_eq!(error.path(), "providers.example.audiences[0]");
        assert_eq!(
            error.to_string(),
            "providers.example.audiences[0]: invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn unknown_field_is_rejected_with_its_parent_path() {
        let error =
            load::<Root>(br#"{"providers": {"p": {"issuer": "a", "audience": "x"}}}"#).unwrap_err();
        assert_eq!(error.path(), "providers.p.audience");
        assert!(
            error
                .message()
                .starts_with("unknown field `audience`, expected one of"),
            "{error}"
        );
    }

    #[test]
    fn valid_config_loads_with_proto_durations() {
        let root = load::<Root>(
            br#"{"providers": {"p": {"issuer": "a", "audiences": ["x"], "cache_duration": "1.5s"}}}"#,
        )
        .unwrap();
        let provider = &root.providers["p"];
        assert_eq!(provider.audiences, vec!["x".to_string()]);
        assert_eq!(provider.cache_duration, Some(Duration::from_millis(1500)));
        assert!(root.rules.is_empty());
    }

    #[test]
    fn missing_field_is_reported() {
        let error = load::<Root>(br#"{"providers": {"p": {}}}"#).unwrap_err();
        assert_eq!(error.to_string(), "providers.p: missing field `issuer`");
    }

    #[test]
    fn semantic_errors_are_rerooted_under_their_field() {
        let error = load::<Root>(br#"{"providers": {"p": {"issuer": ""}}}"#).unwrap_err();
        assert_eq!(error.to_string(), "providers.p.issuer: must not be empty");
        let error =
            load::<Root>(br#"{"providers": {}, "rules": [{"issuer": "a"}, {"issuer": ""}]}"#)
                .unwrap_err();
        assert_eq!(error.to_string(), "rules[1].issuer: must not be empty");
    }

    #[test]
    fn syntax_errors_keep_line_and_column() {
        let error = load::<Root>(b"{\n  \"providers\": {,}\n}").unwrap_err();
        assert!(error.to_string().contains("line 2 column"), "{error}");
        let error = load::<Root>(br#"{"providers": {}} trailing"#).unwrap_err();
        assert_eq!(error.path(), "");
        assert!(error.message().contains("trailing characters"), "{error}");
    }

    #[test]
    fn empty_config_means_an_empty_object() {
        assert_eq!(load::<AllDefaults>(b"").unwrap(), AllDefaults::default());
        assert_eq!(load::<AllDefaults>(b" \n").unwrap(), AllDefaults::default());
        let error = load::<Root>(b"").unwrap_err();
        assert_eq!(error.to_string(), "missing field `providers`");
    }

    #[test]
    fn durations_follow_proto3_json() {
        assert_eq!(proto::parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            proto::parse_duration("1.5s"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            proto::parse_duration("0.000000001s"),
            Ok(Duration::from_nanos(1))
        );
        assert_eq!(
            proto::parse_duration("0.25s"),
            Ok(Duration::from_millis(250))
        );
        for bad in [
            "100ms",
            "1m",
            "10",
            "s",
            ".5s",
            "1.s",
            "1.0000000001s",
            "-1s",
            "1e3s",
            " 1s",
            "+1s",
        ] {
            assert!(proto::parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert!(proto::parse_duration("315576000001s").is_err());
        let error =
            load::<Root>(br#"{"providers": {"p": {"issuer": "a", "cache_duration": "5m"}}}"#)
                .unwrap_err();
        assert_eq!(error.path(), "providers.p.cache_duration");
        assert!(error.message().contains("\"s\" suffix"), "{error}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapped {
        #[serde(deserialize_with = "proto::uint32")]
        value: u32,
        #[serde(default, deserialize_with = "proto::optional_uint32")]
        maybe: Option<u32>,
    }
    impl Validate for Wrapped {}

    #[test]
    fn status_codes_accept_defined_numbers_and_enum_names() {
        let status = |json: &str| load::<proto::HttpStatus>(json.as_bytes());
        assert_eq!(status(r#"{"code": 429}"#).unwrap().code, 429);
        assert_eq!(
            status(r#"{"code": "ServiceUnavailable"}"#).unwrap().code,
            503
        );
        let unknown_name = status(r#"{"code": "Teapot"}"#).unwrap_err().to_string();
        assert!(
            unknown_name.starts_with("code: unknown status code name \"Teapot\""),
            "{unknown_name}"
        );
        let undefined = status(r#"{"code": 299}"#).unwrap_err().to_string();
        assert!(
            undefined.starts_with("code: 299 is not an envoy.type.v3.StatusCode"),
            "{undefined}"
        );
        assert!(status(r#"{"code": 70000}"#).is_err());
        assert!(status(r#"{"code": true}"#).is_err());
    }

    #[test]
    fn uint32_wrappers_accept_numbers_and_decimal_strings() {
        let parsed = load::<Wrapped>(br#"{"value": 7, "maybe": "9"}"#).unwrap();
        assert_eq!((parsed.value, parsed.maybe), (7, Some(9)));
        let parsed = load::<Wrapped>(br#"{"value": 7.0, "maybe": null}"#).unwrap();
        assert_eq!((parsed.value, parsed.maybe), (7, None));
        for bad in [
            r#"{"value": -1}"#,
            r#"{"value": 4294967296}"#,
            r#"{"value": 1.5}"#,
            r#"{"value": "x"}"#,
        ] {
            let error = load::<Wrapped>(bad.as_bytes()).unwrap_err();
            assert_eq!(error.path(), "value", "{bad}: {error}");
        }
    }
}
