//! The JSON access log: Istio's default fields, sampled like Envoy's `runtime_filter`.

use serde_json::{Map, Value};
use wasmesh_sdk::host::LogLevel;
use wasmesh_sdk::matcher::FractionalPercent;

use crate::config::{AccessLogConfig, AccessLogLevel, ACCESS_LOG_FIELDS};
use crate::expr::{Attributes, Expr};

/// The compiled access-log configuration.
#[derive(Debug, Clone)]
pub struct AccessLog {
    level: LogLevel,
    sampling: Option<FractionalPercent>,
    always_log_errors: bool,
    fields: Vec<(String, Expr)>,
    omit: Vec<String>,
}

/// One finished request as the access log describes it (standard fields, by name).
pub type Entry = Vec<(&'static str, Value)>;

/// The integer Envoy draws from an `x-request-id` UUID for sampling (its first 8 hex digits,
/// `UUIDRequestIDExtension::getInteger`), so every proxy on a request's path decides alike.
pub fn request_id_integer(request_id: &str) -> Option<u64> {
    let prefix = request_id.get(..8)?;
    u64::from_str_radix(prefix, 16).ok()
}

impl AccessLog {
    /// Compiles a validated configuration (expressions were checked by `Config::validate`).
    pub fn new(config: &AccessLogConfig) -> Result<Self, String> {
        let fields = config
            .fields
            .iter()
            .map(|(name, text)| Ok((name.clone(), Expr::parse(text)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(AccessLog {
            level: match config.log_level {
                AccessLogLevel::Trace => LogLevel::Trace,
                AccessLogLevel::Debug => LogLevel::Debug,
                AccessLogLevel::Info => LogLevel::Info,
                AccessLogLevel::Warn => LogLevel::Warn,
                AccessLogLevel::Error => LogLevel::Error,
                AccessLogLevel::Critical => LogLevel::Critical,
            },
            sampling: config.sampling,
            always_log_errors: config.always_log_errors,
            fields,
            omit: config.omit_fields.clone(),
        })
    }

    /// The proxy log level of the lines.
    pub fn level(&self) -> LogLevel {
        self.level
    }

    /// Whether this request is logged: sampled by `random_value` (from `x-request-id` when
    /// present), or an error when errors are always logged.
    pub fn selects(&self, random_value: u64, response_code: i64, flags: u64) -> bool {
        let error = response_code >= 500 || flags != 0;
        (self.always_log_errors && error)
            || self
                .sampling
                .is_none_or(|sampling| sampling.hits(random_value))
    }

    /// The JSON line: standard fields (minus omitted ones), then configured fields; missing
    /// values are `null`, as in Envoy's JSON access logs.
    pub fn line(&self, entry: Entry, attributes: &dyn Attributes) -> String {
        let mut object = Map::new();
        for (name, value) in entry {
            debug_assert!(ACCESS_LOG_FIELDS.contains(&name), "{name}");
            if !self.omit.iter().any(|omitted| omitted == name) {
                object.insert(name.to_string(), value);
            }
        }
        for (name, expr) in &self.fields {
            let value = expr
                .eval_string(attributes)
                .filter(|value| !value.is_empty())
                .map_or(Value::Null, Value::String);
            object.insert(name.clone(), value);
        }
        Value::Object(object).to_string()
    }
}

/// A text value, `null` when absent or empty.
pub fn text(value: Option<impl Into<String>>) -> Value {
    value
        .map(Into::into)
        .filter(|value: &String| !value.is_empty())
        .map_or(Value::Null, Value::String)
}

/// A number, `null` when absent.
pub fn number(value: Option<i64>) -> Value {
    value.map_or(Value::Null, |value| Value::Number(value.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Side;
    use crate::peer::NodeInfo;
    use wasmesh_sdk::matcher::Denominator;

    struct Headers;

    impl Attributes for Headers {
        fn request_header(&self, name: &str) -> Option<String> {
            (name == "x-user").then(|| "alice".to_string())
        }
        fn response_header(&self, _: &str) -> Option<String> {
            None
        }
        fn property(&self, _: &[&str]) -> Option<Vec<u8>> {
            None
        }
        fn peer(&self, _: Side) -> Option<&NodeInfo> {
            None
        }
    }

    fn log(json: &str) -> AccessLog {
        let config: AccessLogConfig = serde_json::from_str(json).unwrap();
        AccessLog::new(&config).unwrap()
    }

    #[test]
    fn sampling_follows_the_request_id_like_envoy() {
        assert_eq!(
            request_id_integer("0000000a-1111-2222-3333-444444444444"),
            Some(10)
        );
        assert_eq!(request_id_integer("zzzzzzzz-1111"), None);
        assert_eq!(request_id_integer("abc"), None);
        let ten_percent = log(r#"{"sampling": {"numerator": 10, "denominator": "HUNDRED"}}"#);
        assert!(ten_percent.selects(109, 200, 0));
        assert!(!ten_percent.selects(110, 200, 0));
        assert!(!ten_percent.selects(110, 503, 0));
        let errors = log(r#"{"sampling": {"numerator": 0}, "always_log_errors": true}"#);
        assert!(errors.selects(0, 503, 0));
        assert!(errors.selects(0, 200, 32));
        assert!(!errors.selects(0, 404, 0));
        assert!(log("{}").selects(u64::MAX, 200, 0));
        assert!(!FractionalPercent::new(1, Denominator::Million).hits(1_000_001));
    }

    #[test]
    fn lines_are_json_with_nulls_omissions_and_extra_fields() {
        let access_log = log(r#"{"log_level": "debug", "omit_fields": ["user_agent"],
                "fields": {"user": "request.headers['x-user']", "absent": "request.headers['nope']"}}"#);
        assert_eq!(access_log.level(), LogLevel::Debug);
        let entry: Entry = vec![
            ("method", text(Some("GET"))),
            ("user_agent", text(Some("curl"))),
            ("response_code", number(Some(200))),
            ("upstream_host", text(None::<String>)),
        ];
        assert_eq!(
            access_log.line(entry, &Headers),
            r#"{"absent":null,"method":"GET","response_code":200,"upstream_host":null,"user":"alice"}"#
        );
    }
}
