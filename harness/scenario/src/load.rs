//! Reading a scenario file: YAML (or JSON, by its `.json` extension) into [`Scenario`], every
//! error naming the file, the line and the path of the field; then the checks the types alone
//! cannot make.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::format::{Answer, Connection, Failure, Protocol, Scenario, Step, FORMAT_VERSION};
use crate::ScenarioError;

/// A scenario read from a file.
#[derive(Debug, Clone)]
pub struct ScenarioFile {
    /// The file.
    pub path: PathBuf,
    /// Its contents.
    pub scenario: Scenario,
}

impl ScenarioFile {
    /// The folder relative paths in the scenario start from.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The scenario's name: its `name`, else the file name.
    pub fn name(&self) -> String {
        self.scenario.name.clone().unwrap_or_else(|| {
            self.path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }

    /// The plugin configuration bytes (`config`, or the contents of `config_file`).
    pub fn config_bytes(&self) -> Result<Vec<u8>, ScenarioError> {
        match (&self.scenario.config, &self.scenario.config_file) {
            (_, Some(file)) => {
                let path = self.dir().join(file);
                std::fs::read(&path).map_err(|source| ScenarioError::Io { path, source })
            }
            (Some(value), None) => Ok(document_bytes(value)),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// The VM configuration bytes.
    pub fn vm_config_bytes(&self) -> Vec<u8> {
        self.scenario
            .vm_config
            .as_ref()
            .map(document_bytes)
            .unwrap_or_default()
    }
}

/// A configuration document: a string as is, another value as its JSON text.
fn document_bytes(value: &serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(text) => text.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<ScenarioFile, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let scenario = parse(path, &text)?;
    let file = ScenarioFile {
        path: path.to_path_buf(),
        scenario,
    };
    validate(&file.scenario).map_err(|(field, message)| ScenarioError::Invalid {
        file: path.display().to_string(),
        line: line_of(path, &text, &field),
        field,
        message,
    })?;
    Ok(file)
}

/// Parses the text of `path` (JSON when the file name ends in `.json`, else YAML).
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let is_json = path
        .extension()
        .is_some_and(|extension| extension == "json");
    if is_json {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let line = error.inner().line();
            ScenarioError::Invalid {
                file,
                line: Some(line),
                field: error.path().to_string(),
                message: strip_location(&error.inner().to_string()),
            }
        })
    } else {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let line = error.inner().location().map(|location| location.line());
            let field = error.path().to_string();
            // serde_yaml names the field itself: once is enough.
            let message = strip_location(&error.inner().to_string());
            let message = match message.split_once(": ") {
                Some((named, rest)) if field.starts_with(named) => rest.to_string(),
                _ => message,
            };
            ScenarioError::Invalid {
                file,
                line,
                field,
                message,
            }
        })
    }
}

/// One step of a field path as [`validate`] names fields: a key, or an index in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `steps[2].connection.client[0]` as segments.
fn segments(field: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    for part in field.split('.').filter(|part| !part.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|key| !key.is_empty()) {
            segments.push(Segment::Key(key.to_string()));
        }
        for index in pieces {
            match index.trim_end_matches(']').parse() {
                Ok(index) => segments.push(Segment::Index(index)),
                Err(_) => return Vec::new(),
            }
        }
    }
    segments
}

/// What the search for a field raises once it stands on the field's value: the parser's error
/// then carries the value's line.
const FOUND: &str = "wasmesh: the field is here";

/// The line (1-based) of the value at `field` in the text of `path`: the document is read
/// again, down to that value, where the search stops with an error that the parser locates.
/// `None` when the field is not in the text (a default), or its path is empty.
pub fn line_of(path: &Path, text: &str, field: &str) -> Option<usize> {
    let target = segments(field);
    if target.is_empty() {
        return None;
    }
    let seek = Seek { target: &target };
    let is_json = path
        .extension()
        .is_some_and(|extension| extension == "json");
    if is_json {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let error = serde::de::DeserializeSeed::deserialize(seek, &mut deserializer).err()?;
        error.to_string().contains(FOUND).then(|| error.line())
    } else {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let error = serde::de::DeserializeSeed::deserialize(seek, deserializer).err()?;
        if !error.to_string().contains(FOUND) {
            return None;
        }
        error.location().map(|location| location.line())
    }
}

/// Walks a document down `target`, ignoring everything else.
struct Seek<'a> {
    target: &'a [Segment],
}

impl<'de> serde::de::DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Segment::Key(wanted), rest)) = self.target.split_first() else {
            // The document's shape differs from the path: the field is not in the text.
            return Ok(());
        };
        while let Some(key) = map.next_key::<String>()? {
            if &key == wanted {
                return match rest {
                    [] => map.next_value_seed(Here),
                    _ => map.next_value_seed(Seek { target: rest }),
                };
            }
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Segment::Index(wanted), rest)) = self.target.split_first() else {
            // The document's shape differs from the path: the field is not in the text.
            return Ok(());
        };
        for _ in 0..*wanted {
            if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        match rest {
            [] => seq.next_element_seed(Here).map(drop),
            _ => seq.next_element_seed(Seek { target: rest }).map(drop),
        }
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Stands on the wanted value: raises [`FOUND`] whatever the value is.
struct Here;

impl<'de> serde::de::DeserializeSeed<'de> for Here {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(FOUND)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(serde::de::Error::custom(FOUND))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(serde::de::Error::custom(FOUND))
    }
}

/// Drops the " at line L column C" both parsers append: the error shows the line itself.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message.get(..at).unwrap_or(message).to_string(),
        None => message.to_string(),
    }
}

type Fault = (String, String);

fn fault(field: impl Into<String>, message: impl Into<String>) -> Fault {
    (field.into(), message.into())
}

/// What the types cannot say: the version, one-of fields, encodings, patterns.
pub fn validate(scenario: &Scenario) -> Result<(), Fault> {
    if scenario.format != FORMAT_VERSION {
        return Err(fault(
            "format",
            format!(
                "this wasmesh reads format {FORMAT_VERSION}, the file is format {}",
                scenario.format
            ),
        ));
    }
    if scenario.module.path.is_some() == scenario.module.filter.is_some() {
        return Err(fault("module", "give exactly one of `path` or `filter`"));
    }
    if scenario.config.is_some() && scenario.config_file.is_some() {
        return Err(fault(
            "config_file",
            "give `config` or `config_file`, not both",
        ));
    }
    if scenario.workers == 0 {
        return Err(fault("workers", "at least 1"));
    }
    for (name, cluster) in &scenario.clusters {
        for (index, answer) in cluster.answers.iter().enumerate() {
            validate_answer(cluster.protocol, answer, cluster.answers.len())
                .map_err(|message| fault(format!("clusters.{name}.answers[{index}]"), message))?;
        }
    }
    if scenario.steps.is_empty() {
        return Err(fault("steps", "a scenario needs at least one step"));
    }
    // A scenario drives one kind of filter: HTTP requests, or TCP connections.
    let connections = scenario
        .steps
        .iter()
        .position(|step| step.connection.is_some());
    let requests = scenario
        .steps
        .iter()
        .position(|step| step.request.is_some());
    if let (Some(connection), Some(request)) = (connections, requests) {
        let (index, kind, first, first_kind) = if connection < request {
            (request, "request", connection, "connection")
        } else {
            (connection, "connection", request, "request")
        };
        return Err(fault(
            format!("steps[{index}].{kind}"),
            format!(
                "a scenario drives an HTTP filter (requests) or a network filter (connections), \
                 not both: steps[{first}] is a {first_kind}"
            ),
        ));
    }
    for (index, step) in scenario.steps.iter().enumerate() {
        validate_step(scenario, step)
            .map_err(|(field, message)| fault(join(&format!("steps[{index}]"), &field), message))?;
    }
    Ok(())
}

fn join(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn validate_answer(protocol: Protocol, answer: &Answer, answers: usize) -> Result<(), String> {
    let answers_something = answer.status.is_some()
        || !answer.headers.is_empty()
        || !answer.trailers.is_empty()
        || answer.body.is_some()
        || answer.body_base64.is_some()
        || answer.grpc_status.is_some()
        || answer.grpc_message.is_some();
    if answer.fail.is_some() && answers_something {
        return Err("`fail` replaces the answer: give no status, headers or body with it".into());
    }
    if answer.fail == Some(Failure::Refused) && answers > 1 {
        return Err(
            "`refused` is a property of the whole cluster (nothing listens): it must be its only answer"
                .into(),
        );
    }
    if answer.body.is_some() && answer.body_base64.is_some() {
        return Err("give `body` or `body_base64`, not both".into());
    }
    decode_base64(answer.body_base64.as_deref())
        .map_err(|error| format!("body_base64: {error}"))?;
    match protocol {
        Protocol::Http if answer.grpc_status.is_some() || answer.grpc_message.is_some() => {
            Err("`grpc_status` and `grpc_message` need `protocol: grpc` on the cluster".into())
        }
        Protocol::Grpc if answer.status.is_some() => {
            Err("a gRPC answer has `grpc_status`, not an HTTP `status`".into())
        }
        Protocol::Grpc if answer.fail == Some(Failure::ResetAfterHeaders) => {
            Err("`reset_after_headers` is for HTTP clusters".into())
        }
        _ => Ok(()),
    }
}

fn validate_step(scenario: &Scenario, step: &Step) -> Result<(), Fault> {
    match (&step.request, step.advance_ms, &step.connection) {
        (Some(_), Some(_), _) => {
            return Err(fault(
                "advance_ms",
                "a step is a request or a clock advance, not both",
            ))
        }
        (_, Some(_), Some(_)) => {
            return Err(fault(
                "advance_ms",
                "a step is a connection or a clock advance, not both",
            ))
        }
        (None, None, None) => {
            return Err(fault(
                "",
                "a step needs a `request`, a `connection` or an `advance_ms`",
            ))
        }
        _ => {}
    }
    if step.request.is_none() {
        for (present, field) in [
            (step.upstream.is_some(), "upstream"),
            (step.concurrent.is_some(), "concurrent"),
            (
                !step.properties.is_empty() && step.connection.is_none(),
                "properties",
            ),
        ] {
            if present {
                let message = if step.connection.is_some() && field == "upstream" {
                    "a connection's upstream is `connection.upstream`"
                } else {
                    "only a request step has this"
                };
                return Err(fault(field, message));
            }
        }
    }
    if let Some(connection) = &step.connection {
        validate_connection(connection)
            .map_err(|(field, message)| fault(join("connection", &field), message))?;
    }
    if step.worker >= scenario.workers {
        return Err(fault(
            "worker",
            format!(
                "worker {} does not exist: the scenario has {} worker(s), numbered from 0",
                step.worker, scenario.workers
            ),
        ));
    }
    if step.concurrent == Some(0) {
        return Err(fault("concurrent", "at least 1 request"));
    }
    if let Some(request) = &step.request {
        let bodies = usize::from(request.body.is_some())
            + usize::from(request.body_base64.is_some())
            + usize::from(!request.chunks.is_empty());
        if bodies > 1 {
            return Err(fault(
                "request",
                "give one of `body`, `body_base64` or `chunks`",
            ));
        }
        decode_base64(request.body_base64.as_deref())
            .map_err(|error| fault("request.body_base64", error))?;
        if request.method.eq_ignore_ascii_case("HEAD") && bodies > 0 {
            return Err(fault("request", "a HEAD request has no body"));
        }
    }
    if let Some(upstream) = &step.upstream {
        if upstream.body.is_some() && upstream.body_base64.is_some() {
            return Err(fault("upstream", "give `body` or `body_base64`, not both"));
        }
        decode_base64(upstream.body_base64.as_deref())
            .map_err(|error| fault("upstream.body_base64", error))?;
    }
    if let Some(expect) = &step.expect {
        for (field, patterns) in [("logs", &expect.logs), ("logs_absent", &expect.logs_absent)] {
            for (index, pattern) in patterns.iter().enumerate() {
                regex_lite::Regex::new(pattern).map_err(|error| {
                    fault(format!("expect.{field}[{index}]"), error.to_string())
                })?;
            }
        }
        if !expect.statuses.is_empty() && step.concurrent.is_none() {
            return Err(fault(
                "expect.statuses",
                "only a concurrent step has several statuses: use `status`",
            ));
        }
        if step.concurrent.is_some() {
            let single = [
                (expect.status.is_some(), "status"),
                (
                    expect.body.is_some() || expect.body_contains.is_some(),
                    "body",
                ),
                (!expect.headers.is_empty(), "headers"),
                (expect.upstream.is_some(), "upstream"),
                (expect.details.is_some(), "details"),
            ];
            if let Some((_, field)) = single.iter().find(|(present, _)| *present) {
                return Err(fault(
                    format!("expect.{field}"),
                    "a concurrent step has several responses: expect `statuses`, metrics, logs or shared data",
                ));
            }
        }
        if let Some(wanted) = &expect.connection {
            if step.connection.is_none() {
                return Err(fault(
                    "expect.connection",
                    "only a connection step has a connection",
                ));
            }
            for (text, base64, field) in [
                (
                    &wanted.upstream_received,
                    &wanted.upstream_received_base64,
                    "upstream_received",
                ),
                (
                    &wanted.client_received,
                    &wanted.client_received_base64,
                    "client_received",
                ),
            ] {
                if text.is_some() && base64.is_some() {
                    return Err(fault(
                        format!("expect.connection.{field}_base64"),
                        format!("give `{field}` or `{field}_base64`, not both"),
                    ));
                }
                decode_base64(base64.as_deref())
                    .map_err(|error| fault(format!("expect.connection.{field}_base64"), error))?;
            }
        }
        if step.request.is_none() {
            let per_request = [
                (expect.status.is_some(), "status"),
                (expect.reset.is_some(), "reset"),
                (
                    expect.body.is_some() || expect.body_contains.is_some(),
                    "body",
                ),
                (
                    !expect.headers.is_empty()
                        || !expect.headers_present.is_empty()
                        || !expect.headers_absent.is_empty(),
                    "headers",
                ),
                (expect.upstream.is_some(), "upstream"),
                (expect.details.is_some(), "details"),
            ];
            if let Some((_, field)) = per_request.iter().find(|(present, _)| *present) {
                let message = if step.connection.is_some() {
                    "a connection has no HTTP response: expect `connection`, callouts, metrics, \
                     logs or shared data"
                } else {
                    "a clock advance has no response: expect callouts, metrics, logs or shared data"
                };
                return Err(fault(format!("expect.{field}"), message));
            }
        }
    }
    Ok(())
}

fn validate_connection(connection: &Connection) -> Result<(), Fault> {
    let mut ended = false;
    for (index, action) in connection.client.iter().enumerate() {
        let field = format!("client[{index}]");
        let given = usize::from(action.send.is_some())
            + usize::from(action.send_base64.is_some())
            + usize::from(action.end);
        if given != 1 {
            return Err(fault(
                field,
                "give exactly one of `send`, `send_base64` or `end: true`",
            ));
        }
        if ended {
            return Err(fault(
                field,
                "the client ended its side (`end: true`) before: it can send no more",
            ));
        }
        decode_base64(action.send_base64.as_deref())
            .map_err(|error| fault(format!("{field}.send_base64"), error))?;
        ended = action.end;
    }
    let replies = connection
        .upstream
        .as_ref()
        .and_then(|upstream| upstream.replies.as_deref())
        .unwrap_or_default();
    let mut upstream_ended = false;
    for (index, reply) in replies.iter().enumerate() {
        let field = format!("upstream.replies[{index}]");
        if reply.send.is_some() && reply.send_base64.is_some() {
            return Err(fault(field, "give `send` or `send_base64`, not both"));
        }
        if upstream_ended {
            return Err(fault(
                field,
                "the upstream ended its side (`end: true`) before: it can send no more",
            ));
        }
        decode_base64(reply.send_base64.as_deref())
            .map_err(|error| fault(format!("{field}.send_base64"), error))?;
        upstream_ended = reply.end;
    }
    if let Some(name) = &connection.sni {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.');
        if !valid {
            return Err(fault(
                "sni",
                format!("{name:?} is not a server name (letters, digits, `-` and `.`)"),
            ));
        }
    }
    if let Some(address) = &connection.source_address {
        if source_ip(address).is_none() {
            return Err(fault(
                "source_address",
                format!("{address:?} is not an IP address, or an IP address and a port"),
            ));
        }
    }
    Ok(())
}

/// The IP of a `source_address` (`IP` or `IP:port`), and the port if it names one.
pub fn source_ip(address: &str) -> Option<(std::net::IpAddr, Option<u16>)> {
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return Some((ip, None));
    }
    let socket = address.parse::<std::net::SocketAddr>().ok()?;
    Some((socket.ip(), Some(socket.port())))
}

/// Decodes an optional base64 text (standard alphabet, padded).
pub fn decode_base64(text: Option<&str>) -> Result<Vec<u8>, String> {
    match text {
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|error| format!("not base64: {error}")),
        None => Ok(Vec::new()),
    }
}

/// A body given as `body` text or `body_base64`.
pub fn body_bytes(text: Option<&str>, base64: Option<&str>) -> Option<Vec<u8>> {
    match (text, base64) {
        (Some(text), _) => Some(text.as_bytes().to_vec()),
        // `validate` decoded it once already.
        (None, Some(_)) => decode_base64(base64).ok(),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<Scenario, String> {
        parse(Path::new("s.yaml"), text).map_err(|error| error.to_string())
    }

    #[test]
    fn a_typo_names_file_line_and_field() {
        let error = yaml(
            "format: 1\nmodule: {path: m.wasm}\nsteps:\n  - request:\n      path: /a\n      hedaers: {a: b}\n",
        )
        .unwrap_err();
        assert!(
            error.starts_with("s.yaml:6: steps[0].request.hedaers: unknown field `hedaers`"),
            "{error}"
        );
        assert!(error.contains("expected one of"), "{error}");
    }

    #[test]
    fn a_wrong_type_names_its_field() {
        let error =
            yaml("format: 1\nmodule: {path: m.wasm}\nworkers: many\nsteps: []\n").unwrap_err();
        assert!(
            error.starts_with("s.yaml:3: workers: invalid type"),
            "{error}"
        );
        let error = parse(
            Path::new("s.json"),
            "{\"format\": 1,\n \"module\": {\"file\": \"m.wasm\"}, \"steps\": []}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("s.json:2: module.file: unknown field `file`"),
            "{error}"
        );
    }

    #[test]
    fn semantic_faults_name_their_field() {
        let check = |text: &str| validate(&yaml(text).unwrap()).unwrap_err();
        let base = "format: 1\nmodule: {path: m.wasm}\n";
        assert_eq!(check(&format!("{base}steps: [{{}}]")).0, "steps[0]");
        assert_eq!(
            check(&format!(
                "{base}steps: [{{advance_ms: 5, expect: {{status: 200}}}}]"
            ))
            .0,
            "steps[0].expect.status"
        );
        assert_eq!(
            check(&format!("{base}steps: [{{request: {{}}, worker: 1}}]")).0,
            "steps[0].worker"
        );
        assert_eq!(
            check(&format!(
                "{base}steps: [{{request: {{}}, expect: {{logs: ['(']}}}}]"
            ))
            .0,
            "steps[0].expect.logs[0]"
        );
        assert_eq!(
            check(&format!(
                "{base}clusters: {{a: {{answers: [{{fail: refused}}, {{status: 200}}]}}}}\nsteps: [{{request: {{}}}}]"
            ))
            .0,
            "clusters.a.answers[0]"
        );
        assert_eq!(
            check("format: 2\nmodule: {path: m.wasm}\nsteps: [{request: {}}]").0,
            "format"
        );
    }

    #[test]
    fn connection_faults_name_their_field() {
        let check = |steps: &str| {
            let text = format!("format: 1\nmodule: {{path: m.wasm}}\nsteps:\n{steps}");
            validate(&yaml(&text).unwrap()).unwrap_err()
        };
        let fault = check("  - connection: {}\n  - request: {}\n");
        assert_eq!(fault.0, "steps[1].request");
        assert!(fault.1.contains("steps[0] is a connection"), "{}", fault.1);
        assert_eq!(
            check("  - request: {}\n  - connection: {}\n").0,
            "steps[1].connection"
        );
        for (step, field) in [
            (
                "connection: {client: [{send: a, end: true}]}",
                "steps[0].connection.client[0]",
            ),
            (
                "connection: {client: [{}]}",
                "steps[0].connection.client[0]",
            ),
            (
                "connection: {client: [{end: true}, {send: a}]}",
                "steps[0].connection.client[1]",
            ),
            (
                "connection: {client: [{send_base64: '!!'}]}",
                "steps[0].connection.client[0].send_base64",
            ),
            (
                "connection: {upstream: {replies: [{end: true}, {send: a}]}}",
                "steps[0].connection.upstream.replies[1]",
            ),
            (
                "connection: {upstream: {replies: [{send: a, send_base64: YQ==}]}}",
                "steps[0].connection.upstream.replies[0]",
            ),
            (
                "connection: {source_address: somewhere}",
                "steps[0].connection.source_address",
            ),
            ("connection: {sni: 'a b'}", "steps[0].connection.sni"),
            (
                "{connection: {}, advance_ms: 5}",
                "steps[0].advance_ms",
            ),
            ("{connection: {}, upstream: {}}", "steps[0].upstream"),
            (
                "{connection: {}, expect: {status: 200}}",
                "steps[0].expect.status",
            ),
            (
                "{request: {}, expect: {connection: {}}}",
                "steps[0].expect.connection",
            ),
            (
                "{connection: {}, expect: {connection: {client_received: a, client_received_base64: YQ==}}}",
                "steps[0].expect.connection.client_received_base64",
            ),
        ] {
            assert_eq!(check(&format!("  - {step}\n")).0, field, "{step}");
        }
        // Addresses with or without a port, a server name, properties on a connection.
        let fine = yaml(
            "format: 1\nmodule: {path: m.wasm}\nsteps:\n\
             - connection: {source_address: 10.0.0.1, sni: api.example.com}\n\
             - connection: {source_address: '[::1]:5'}\n  properties: [{path: [a], value: b}]\n",
        )
        .unwrap();
        assert_eq!(validate(&fine), Ok(()));
        assert_eq!(
            source_ip("10.0.0.1:80"),
            Some(("10.0.0.1".parse().unwrap(), Some(80)))
        );
    }

    #[test]
    fn a_connection_typo_names_file_line_and_field() {
        let error = yaml(
            "format: 1\nmodule: {path: m.wasm}\nsteps:\n  - connection:\n      client:\n        - sned: hi\n",
        )
        .unwrap_err();
        assert!(
            error.starts_with("s.yaml:6: steps[0].connection.client[0].sned: unknown field `sned`"),
            "{error}"
        );
        let error = yaml(
            "format: 1\nmodule: {path: m.wasm}\nsteps:\n  - connection: {}\n    expect:\n      connection: {closed: maybe}\n",
        )
        .unwrap_err();
        assert!(
            error.starts_with(
                "s.yaml:6: steps[0].expect.connection.closed: unknown variant `maybe`"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_semantic_fault_names_its_line() {
        let dir = std::env::temp_dir().join(format!("wasmesh-load-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.scenario.yaml");
        std::fs::write(
            &file,
            "format: 1\nmodule: {path: m.wasm}\nsteps:\n  - connection: {}\n  - connection:\n      client:\n        - send: a\n        - {send: b, end: true}\n",
        )
        .unwrap();
        let error = load(&file).unwrap_err().to_string();
        assert!(
            error.ends_with("s.scenario.yaml:8: steps[1].connection.client[1]: give exactly one of `send`, `send_base64` or `end: true`"),
            "{error}"
        );
        let json = dir.join("s.scenario.json");
        std::fs::write(
            &json,
            "{\"format\": 1,\n \"module\": {\"path\": \"m.wasm\"},\n \"steps\": [\n  {\"request\": {}},\n  {\"connection\": {}}\n ]\n}\n",
        )
        .unwrap();
        let error = load(&json).unwrap_err().to_string();
        assert!(
            error.contains("s.scenario.json:5: steps[1].connection: "),
            "{error}"
        );
        // A field the text does not hold (a default) has no line.
        assert_eq!(line_of(&file, "format: 1\n", "workers"), None);
        assert_eq!(line_of(&file, "format: 1\n", "format"), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn null_and_absent_mean_different_things() {
        let scenario = yaml(
            "format: 1\nmodule: {path: m.wasm}\nsteps:\n  - request: {}\n    expect: {details: null, upstream: null}\n  - request: {}\n    expect: {}\n",
        )
        .unwrap();
        let first = scenario.steps[0].expect.clone().unwrap();
        let second = scenario.steps[1].expect.clone().unwrap();
        assert_eq!((first.details, first.upstream), (Some(None), Some(None)));
        assert_eq!((second.details, second.upstream), (None, None));
    }
}
