//! Expectations against an observation: one [`Check`] per expected fact, passed, failed (with
//! what was expected and what happened), or not observable by that judge.

use std::collections::BTreeMap;

use crate::format::{CalloutExpect, ClosedBy, ConnectionExpect, Expect, UpstreamExpect};
use crate::load::body_bytes;
use crate::observe::{header, Callout, ConnectionSeen, Response, StepObservation, UpstreamRequest};

/// The verdict on one expected fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// As expected.
    Pass,
    /// Not as expected.
    Fail {
        /// What the scenario expects.
        expected: String,
        /// What happened.
        got: String,
    },
    /// This judge cannot observe it (shared data in Envoy, a step Envoy cannot run): why.
    Unobservable(String),
}

/// One expected fact and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The field of `expect`, e.g. `headers.x-user` or `callouts[0].body`.
    pub field: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// Bodies longer than this are shown by their length and a prefix.
const SHOWN_UP_TO: usize = 300;

/// Text for reports: the bytes as UTF-8 (invalid bytes shown as escapes), long ones shortened.
pub fn show_bytes(bytes: &[u8]) -> String {
    let text: String = bytes.escape_ascii().to_string();
    let text = match std::str::from_utf8(bytes) {
        Ok(valid) => format!("{valid:?}"),
        Err(_) => format!("b\"{text}\""),
    };
    if text.chars().count() <= SHOWN_UP_TO {
        return text;
    }
    let prefix: String = text.chars().take(SHOWN_UP_TO).collect();
    format!("{prefix}… ({} bytes)", bytes.len())
}

struct Checks {
    checks: Vec<Check>,
}

/// What is expected of a header list.
struct HeaderExpectations<'a> {
    equal: &'a BTreeMap<String, String>,
    present: &'a [String],
    absent: &'a [String],
}

impl Checks {
    fn equal(&mut self, field: impl Into<String>, expected: String, got: String) {
        let verdict = if expected == got {
            Verdict::Pass
        } else {
            Verdict::Fail { expected, got }
        };
        self.checks.push(Check {
            field: field.into(),
            verdict,
        });
    }

    fn holds(&mut self, field: impl Into<String>, holds: bool, expected: String, got: String) {
        let verdict = if holds {
            Verdict::Pass
        } else {
            Verdict::Fail { expected, got }
        };
        self.checks.push(Check {
            field: field.into(),
            verdict,
        });
    }

    /// Checks `headers` against what is expected of them; fields are named `<prefix>headers.<name>`,
    /// `<prefix>headers_present.<name>` and `<prefix>headers_absent.<name>`.
    fn headers(
        &mut self,
        prefix: &str,
        headers: &[(String, String)],
        expected: HeaderExpectations<'_>,
    ) {
        for (name, value) in expected.equal {
            let got = header(headers, name);
            self.equal(
                format!("{prefix}headers.{name}"),
                format!("{value:?}"),
                got.map_or_else(|| "absent".to_string(), |got| format!("{got:?}")),
            );
        }
        for name in expected.present {
            self.holds(
                format!("{prefix}headers_present.{name}"),
                header(headers, name).is_some(),
                "present".to_string(),
                "absent".to_string(),
            );
        }
        for name in expected.absent {
            let got = header(headers, name);
            self.holds(
                format!("{prefix}headers_absent.{name}"),
                got.is_none(),
                "absent".to_string(),
                format!("{:?}", got.unwrap_or_default()),
            );
        }
    }

    fn unobservable(&mut self, field: impl Into<String>, why: &str) {
        self.checks.push(Check {
            field: field.into(),
            verdict: Verdict::Unobservable(why.to_string()),
        });
    }
}

/// The names of the facts `expect` states, in the order [`check`] reports them.
fn fields(expect: &Expect) -> Vec<String> {
    let mut fields = Vec::new();
    let mut add = |present: bool, name: &str| {
        if present {
            fields.push(name.to_string());
        }
    };
    add(expect.status.is_some(), "status");
    add(expect.reset.is_some(), "reset");
    add(expect.details.is_some(), "details");
    add(
        !expect.headers.is_empty()
            || !expect.headers_present.is_empty()
            || !expect.headers_absent.is_empty(),
        "headers",
    );
    add(
        expect.body.is_some() || expect.body_contains.is_some(),
        "body",
    );
    add(expect.upstream.is_some(), "upstream");
    add(expect.callouts.is_some(), "callouts");
    add(!expect.metrics.is_empty(), "metrics");
    add(
        !expect.logs.is_empty() || !expect.logs_absent.is_empty(),
        "logs",
    );
    add(!expect.shared_data.is_empty(), "shared_data");
    add(expect.vm_failed.is_some(), "vm_failed");
    add(!expect.statuses.is_empty(), "statuses");
    add(expect.connection.is_some(), "connection");
    fields
}

/// Checks every fact `expect` states against `seen`.
pub fn check(expect: &Expect, seen: &StepObservation) -> Vec<Check> {
    let mut checks = Checks { checks: Vec::new() };
    if let Some(why) = &seen.not_run {
        for field in fields(expect) {
            checks.unobservable(field, why);
        }
        return checks.checks;
    }
    check_response(&mut checks, expect, seen.response.as_ref());
    if let Some(wanted) = &expect.upstream {
        check_upstream(&mut checks, wanted.as_ref(), seen.upstream.as_ref());
    }
    if let Some(wanted) = &expect.callouts {
        check_callouts(&mut checks, wanted, &seen.callouts);
    }
    for (name, value) in &expect.metrics {
        let got = seen
            .metrics
            .get(name)
            .map_or_else(|| "no such metric".to_string(), u64::to_string);
        checks.equal(format!("metrics.{name}"), value.to_string(), got);
    }
    check_logs(&mut checks, expect, seen.logs.as_deref());
    for (key, value) in &expect.shared_data {
        let field = format!("shared_data.{key}");
        match &seen.shared_data {
            None => checks.unobservable(field, "shared data is not observable from outside Envoy"),
            Some(data) => checks.equal(
                field,
                format!("{value:?}"),
                format!("{:?}", data.get(key).cloned().flatten()),
            ),
        }
    }
    if let Some(wanted) = expect.vm_failed {
        match seen.vm_failed {
            None => checks.unobservable(
                "vm_failed",
                "Envoy shows a failed VM only through its failure policy's replies",
            ),
            Some(failed) => checks.equal("vm_failed", wanted.to_string(), failed.to_string()),
        }
    }
    if !expect.statuses.is_empty() {
        let mut got: BTreeMap<u16, usize> = BTreeMap::new();
        for status in &seen.statuses {
            *got.entry(*status).or_default() += 1;
        }
        checks.equal(
            "statuses",
            format!("{:?}", expect.statuses),
            format!("{got:?}"),
        );
    }
    if let Some(wanted) = &expect.connection {
        check_connection(&mut checks, wanted, seen.connection.as_ref());
    }
    checks.checks
}

fn check_connection(checks: &mut Checks, wanted: &ConnectionExpect, got: Option<&ConnectionSeen>) {
    let Some(got) = got else {
        checks.holds(
            "connection",
            false,
            "a connection".to_string(),
            "none".to_string(),
        );
        return;
    };
    if let Some(connected) = wanted.upstream_connected {
        checks.equal(
            "connection.upstream_connected",
            connected.to_string(),
            got.upstream_connected.to_string(),
        );
    }
    for (field, text, base64, bytes) in [
        (
            "connection.upstream_received",
            &wanted.upstream_received,
            &wanted.upstream_received_base64,
            &got.upstream_received,
        ),
        (
            "connection.client_received",
            &wanted.client_received,
            &wanted.client_received_base64,
            &got.client_received,
        ),
    ] {
        if let Some(expected) = body_bytes(text.as_deref(), base64.as_deref()) {
            checks.equal(field, show_bytes(&expected), show_bytes(bytes));
        }
    }
    if let Some(end) = wanted.client_got_end {
        checks.equal(
            "connection.client_got_end",
            end.to_string(),
            got.client_got_end.to_string(),
        );
    }
    if let Some(closed) = wanted.closed {
        match got.closed {
            None => checks.unobservable(
                "connection.closed",
                "this judge cannot tell who closed the connection",
            ),
            Some(seen) => checks.equal("connection.closed", show_closed(closed), show_closed(seen)),
        }
    }
}

/// How a report shows who closed a connection.
pub fn show_closed(closed: ClosedBy) -> String {
    match closed {
        ClosedBy::Open => "open",
        ClosedBy::Client => "client",
        ClosedBy::Proxy => "proxy",
    }
    .to_string()
}

fn check_response(checks: &mut Checks, expect: &Expect, response: Option<&Response>) {
    let Some(response) = response else {
        return;
    };
    if let Some(status) = expect.status {
        checks.equal("status", status.to_string(), response.status.to_string());
    }
    if let Some(reset) = expect.reset {
        checks.equal("reset", reset.to_string(), response.reset.to_string());
    }
    if let Some(details) = &expect.details {
        checks.equal(
            "details",
            show_details(details.as_deref()),
            show_details(response.details.as_deref()),
        );
    }
    checks.headers(
        "",
        &response.headers,
        HeaderExpectations {
            equal: &expect.headers,
            present: &expect.headers_present,
            absent: &expect.headers_absent,
        },
    );
    if let Some(body) = &expect.body {
        checks.equal(
            "body",
            show_bytes(body.as_bytes()),
            show_bytes(&response.body),
        );
    }
    if let Some(part) = &expect.body_contains {
        let body = String::from_utf8_lossy(&response.body);
        checks.holds(
            "body_contains",
            body.contains(part.as_str()),
            format!("a body containing {part:?}"),
            show_bytes(&response.body),
        );
    }
}

fn show_details(details: Option<&str>) -> String {
    match details {
        Some(details) => format!("local reply {details:?}"),
        None => "the upstream's answer".to_string(),
    }
}

fn check_upstream(
    checks: &mut Checks,
    wanted: Option<&UpstreamExpect>,
    got: Option<&UpstreamRequest>,
) {
    let (wanted, got) = match (wanted, got) {
        (None, None) => {
            checks.equal("upstream", "not reached".into(), "not reached".into());
            return;
        }
        (None, Some(_)) => {
            checks.equal("upstream", "not reached".into(), "reached".into());
            return;
        }
        (Some(_), None) => {
            checks.equal("upstream", "reached".into(), "not reached".into());
            return;
        }
        (Some(wanted), Some(got)) => (wanted, got),
    };
    checks.headers(
        "upstream.",
        &got.headers,
        HeaderExpectations {
            equal: &wanted.headers,
            present: &[],
            absent: &wanted.headers_absent,
        },
    );
    if let Some(body) = &wanted.body {
        checks.equal(
            "upstream.body",
            show_bytes(body.as_bytes()),
            show_bytes(&got.body),
        );
    }
}

fn check_callouts(checks: &mut Checks, wanted: &[CalloutExpect], got: &[Callout]) {
    checks.holds(
        "callouts",
        wanted.len() == got.len(),
        format!("{} call(s)", wanted.len()),
        format!(
            "{} call(s){}",
            got.len(),
            got.iter()
                .map(|callout| format!(" {}{}", callout.cluster, callout.path))
                .collect::<String>()
        ),
    );
    for (index, (wanted, got)) in wanted.iter().zip(got).enumerate() {
        let field = |name: &str| format!("callouts[{index}].{name}");
        checks.equal(
            field("cluster"),
            wanted.cluster.clone(),
            got.cluster.clone(),
        );
        if let Some(path) = &wanted.path {
            checks.equal(field("path"), path.clone(), got.path.clone());
        }
        checks.headers(
            &format!("callouts[{index}]."),
            &got.headers,
            HeaderExpectations {
                equal: &wanted.headers,
                present: &[],
                absent: &[],
            },
        );
        if let Some(body) = &wanted.body {
            checks.equal(
                field("body"),
                show_bytes(body.as_bytes()),
                show_bytes(&got.body),
            );
        }
    }
}

fn check_logs(checks: &mut Checks, expect: &Expect, logs: Option<&[String]>) {
    let patterns = expect
        .logs
        .iter()
        .map(|pattern| (pattern, true))
        .chain(expect.logs_absent.iter().map(|pattern| (pattern, false)));
    for (index, (pattern, wanted)) in patterns.enumerate() {
        let field = if wanted {
            format!("logs[{index}]")
        } else {
            format!("logs_absent[{}]", index - expect.logs.len())
        };
        let Some(lines) = logs else {
            checks.unobservable(field, "the module's logs are not observable");
            continue;
        };
        // `load::validate` compiled every pattern.
        let Ok(regex) = regex_lite::Regex::new(pattern) else {
            continue;
        };
        let matching: Vec<&String> = lines.iter().filter(|line| regex.is_match(line)).collect();
        let shown = |lines: &[&String]| {
            if lines.is_empty() {
                "no such line".to_string()
            } else {
                lines
                    .iter()
                    .map(|line| format!("{line:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        if wanted {
            let all: Vec<&String> = lines.iter().collect();
            checks.holds(
                field,
                !matching.is_empty(),
                format!("a line matching /{pattern}/"),
                format!("lines: {}", shown(&all)),
            );
        } else {
            checks.holds(
                field,
                matching.is_empty(),
                format!("no line matching /{pattern}/"),
                shown(&matching),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, details: Option<&str>) -> StepObservation {
        StepObservation {
            response: Some(Response {
                status,
                reset: false,
                details: details.map(str::to_string),
                headers: vec![("x-a".into(), "1".into())],
                body: b"denied".to_vec(),
            }),
            logs: Some(vec!["checking /admin".into()]),
            ..StepObservation::default()
        }
    }

    fn failures(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|check| matches!(check.verdict, Verdict::Fail { .. }))
            .map(|check| check.field.as_str())
            .collect()
    }

    #[test]
    fn every_stated_fact_is_checked() {
        let expect = Expect {
            status: Some(403),
            details: Some(Some("rbac_access_denied".into())),
            headers: [("x-a".to_string(), "2".to_string())].into(),
            headers_absent: vec!["x-a".into()],
            body: Some("denied".into()),
            logs: vec!["/admin$".into()],
            logs_absent: vec!["check".into()],
            metrics: [("rbac.denied".to_string(), 1)].into(),
            ..Expect::default()
        };
        let checks = check(&expect, &response(403, Some("rbac_access_denied")));
        assert_eq!(checks.len(), 8);
        assert_eq!(
            failures(&checks),
            [
                "headers.x-a",
                "headers_absent.x-a",
                "metrics.rbac.denied",
                "logs_absent[0]"
            ]
        );
    }

    #[test]
    fn what_a_judge_cannot_see_is_reported_not_passed() {
        let expect = Expect {
            shared_data: [("k".to_string(), Some("v".to_string()))].into(),
            vm_failed: Some(false),
            ..Expect::default()
        };
        let checks = check(&expect, &StepObservation::default());
        assert!(checks
            .iter()
            .all(|check| matches!(check.verdict, Verdict::Unobservable(_))));
        let not_run = StepObservation {
            not_run: Some("a clock jump".into()),
            ..StepObservation::default()
        };
        let checks = check(
            &Expect {
                metrics: [("m".to_string(), 1)].into(),
                ..Expect::default()
            },
            &not_run,
        );
        assert_eq!(
            checks,
            [Check {
                field: "metrics".into(),
                verdict: Verdict::Unobservable("a clock jump".into())
            }]
        );
    }

    #[test]
    fn an_upstream_expected_but_not_reached_fails_once() {
        let expect = Expect {
            upstream: Some(Some(UpstreamExpect::default())),
            ..Expect::default()
        };
        let checks = check(&expect, &response(403, Some("x")));
        assert_eq!(failures(&checks), ["upstream"]);
    }

    #[test]
    fn connection_facts_are_checked_and_who_closed_may_be_unobservable() {
        let expect = Expect {
            connection: Some(ConnectionExpect {
                upstream_connected: Some(true),
                upstream_received: Some("<a>".into()),
                client_received_base64: Some("dTo8YT4=".into()),
                client_got_end: Some(false),
                closed: Some(ClosedBy::Client),
                ..ConnectionExpect::default()
            }),
            ..Expect::default()
        };
        let mut seen = StepObservation {
            connection: Some(ConnectionSeen {
                upstream_connected: true,
                upstream_received: b"<a>".to_vec(),
                client_received: b"u:<a>".to_vec(),
                client_got_end: true,
                closed: Some(ClosedBy::Proxy),
            }),
            ..StepObservation::default()
        };
        let checks = check(&expect, &seen);
        assert_eq!(checks.len(), 5);
        assert_eq!(
            failures(&checks),
            ["connection.client_got_end", "connection.closed"]
        );
        if let Some(connection) = seen.connection.as_mut() {
            connection.closed = None;
        }
        let checks = check(&expect, &seen);
        assert!(matches!(
            checks.last().map(|check| &check.verdict),
            Some(Verdict::Unobservable(_))
        ));
        // A step that saw no connection fails once.
        let checks = check(&expect, &StepObservation::default());
        assert_eq!(failures(&checks), ["connection"]);
    }

    #[test]
    fn bytes_show_as_text_or_escapes() {
        assert_eq!(show_bytes(b"ok"), "\"ok\"");
        assert_eq!(show_bytes(&[0xc2]), "b\"\\xc2\"");
        assert!(show_bytes(&[b'a'; 1000]).ends_with("(1000 bytes)"));
    }
}
