//! `wasmesh test --update`: rewrites each step's expectations from what the harness saw, for the
//! author to review (a snapshot). What the author chose to check stays checked, with the values
//! seen; facts the step changed are added: the status, details and body of the response, the
//! calls made, the metrics that moved, for a concurrent step its statuses, and for a
//! connection every fact of it (bytes as text, or base64 when they are not UTF-8). Log patterns are
//! the author's and are kept as written.

use std::collections::BTreeMap;

use base64::Engine;

use crate::format::{CalloutExpect, ConnectionExpect, Expect, Step, UpstreamExpect};
use crate::load::ScenarioFile;
use crate::observe::{header, ConnectionSeen, StepObservation};
use crate::run::{ScenarioReport, HARNESS};
use crate::ScenarioError;

/// Response headers never snapshotted: set by the proxy, not by the module.
const PROXY_HEADERS: &[&str] = &[
    "date",
    "server",
    "content-length",
    "x-envoy-upstream-service-time",
    "x-request-id",
    "transfer-encoding",
    "connection",
];

/// The expectations of `step` rewritten from `seen`; `metrics_before` are the values before it.
pub fn updated_expect(
    step: &Step,
    seen: &StepObservation,
    metrics_before: &BTreeMap<String, u64>,
) -> Expect {
    let old = step.expect.clone().unwrap_or_default();
    let mut new = Expect {
        logs: old.logs.clone(),
        logs_absent: old.logs_absent.clone(),
        ..Expect::default()
    };
    if let Some(response) = &seen.response {
        new.status = Some(response.status);
        new.reset = response.reset.then_some(true);
        new.details = Some(response.details.clone());
        let upstream_headers = step
            .upstream
            .as_ref()
            .map(|upstream| upstream.headers.0.clone())
            .unwrap_or_default();
        for (name, value) in &response.headers {
            let listed = old.headers.contains_key(name);
            let from_module = !PROXY_HEADERS.contains(&name.as_str())
                && !upstream_headers
                    .iter()
                    .any(|(upstream_name, upstream_value)| {
                        upstream_name.eq_ignore_ascii_case(name) && upstream_value == value
                    });
            if listed || from_module {
                new.headers.entry(name.clone()).or_insert(value.clone());
            }
        }
        new.headers_present = old
            .headers_present
            .iter()
            .filter(|name| header(&response.headers, name).is_some())
            .cloned()
            .collect();
        new.headers_absent = old
            .headers_absent
            .iter()
            .filter(|name| header(&response.headers, name).is_none())
            .cloned()
            .collect();
        let body = String::from_utf8_lossy(&response.body).into_owned();
        if old.body.is_some() || (response.details.is_some() && !body.is_empty()) {
            new.body = Some(body.clone());
        }
        new.body_contains = old
            .body_contains
            .clone()
            .filter(|part| body.contains(part.as_str()));
        if let Some(old_upstream) = &old.upstream {
            new.upstream = Some(seen.upstream.as_ref().map(|reached| {
                let wanted = old_upstream.clone().unwrap_or_default();
                UpstreamExpect {
                    headers: wanted
                        .headers
                        .keys()
                        .filter_map(|name| {
                            header(&reached.headers, name)
                                .map(|value| (name.clone(), value.to_string()))
                        })
                        .collect(),
                    headers_absent: wanted
                        .headers_absent
                        .into_iter()
                        .filter(|name| header(&reached.headers, name).is_none())
                        .collect(),
                    body: wanted
                        .body
                        .map(|_| String::from_utf8_lossy(&reached.body).into_owned()),
                }
            }));
        }
    }
    if let Some(connection) = &seen.connection {
        new.connection = Some(connection_expect(connection));
    }
    if old.callouts.is_some() || !seen.callouts.is_empty() {
        new.callouts = Some(
            seen.callouts
                .iter()
                .map(|callout| CalloutExpect {
                    cluster: callout.cluster.clone(),
                    path: Some(callout.path.clone()).filter(|path| !path.is_empty()),
                    ..CalloutExpect::default()
                })
                .collect(),
        );
    }
    for (name, value) in &seen.metrics {
        if old.metrics.contains_key(name) || metrics_before.get(name) != Some(value) {
            new.metrics.insert(name.clone(), *value);
        }
    }
    if let Some(data) = &seen.shared_data {
        new.shared_data = old
            .shared_data
            .keys()
            .map(|key| (key.clone(), data.get(key).cloned().flatten()))
            .collect();
    }
    if old.vm_failed.is_some() || seen.vm_failed == Some(true) {
        new.vm_failed = seen.vm_failed;
    }
    if step.concurrent.is_some() {
        for status in &seen.statuses {
            *new.statuses.entry(*status).or_default() += 1;
        }
    }
    new
}

/// Every fact of a connection: bytes as text when they are UTF-8, else as base64.
fn connection_expect(seen: &ConnectionSeen) -> ConnectionExpect {
    let text_or_base64 = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
    let (upstream_received, upstream_received_base64) = text_or_base64(&seen.upstream_received);
    let (client_received, client_received_base64) = text_or_base64(&seen.client_received);
    ConnectionExpect {
        upstream_connected: Some(seen.upstream_connected),
        upstream_received,
        upstream_received_base64,
        client_received,
        client_received_base64,
        client_got_end: Some(seen.client_got_end),
        closed: seen.closed,
    }
}

/// Rewrites the file of `report` with expectations from the harness's observations. Returns how
/// many steps changed. YAML comments are not kept (the file is written anew from its values).
pub fn rewrite(file: &ScenarioFile, report: &ScenarioReport) -> Result<usize, ScenarioError> {
    let mut metrics_before = BTreeMap::new();
    let mut updated = Vec::new();
    for (step, step_report) in file.scenario.steps.iter().zip(&report.steps) {
        let Some(seen) = step_report
            .judges
            .iter()
            .find(|judge| judge.judge == HARNESS && judge.error.is_none())
            .map(|judge| &judge.seen)
        else {
            // The harness stopped here: later steps keep what they say.
            break;
        };
        let expect = updated_expect(step, seen, &metrics_before);
        metrics_before.clone_from(&seen.metrics);
        updated.push(expect);
    }
    let mut scenario = file.scenario.clone();
    let mut changed = 0;
    for (step, expect) in scenario.steps.iter_mut().zip(updated) {
        let expect = (expect != Expect::default()).then_some(expect);
        if step.expect != expect {
            changed += 1;
            step.expect = expect;
        }
    }
    if changed == 0 {
        return Ok(0);
    }
    let invalid = |message: String| ScenarioError::Invalid {
        file: file.path.display().to_string(),
        line: None,
        field: String::new(),
        message,
    };
    let is_json = file
        .path
        .extension()
        .is_some_and(|extension| extension == "json");
    let text = if is_json {
        serde_json::to_string_pretty(&scenario)
            .map(|text| text + "\n")
            .map_err(|error| invalid(error.to_string()))?
    } else {
        serde_yaml::to_string(&scenario).map_err(|error| invalid(error.to_string()))?
    };
    std::fs::write(&file.path, text).map_err(|source| ScenarioError::Io {
        path: file.path.clone(),
        source,
    })?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Request;
    use crate::observe::{Callout, Response};

    #[test]
    fn a_snapshot_takes_the_module_s_facts_not_the_proxy_s() {
        let step = Step {
            request: Some(Request::default()),
            expect: Some(Expect {
                metrics: [("kept".to_string(), 0)].into(),
                logs: vec!["denied".into()],
                ..Expect::default()
            }),
            ..Step::default()
        };
        let seen = StepObservation {
            response: Some(Response {
                status: 403,
                reset: false,
                details: Some("rbac_access_denied".into()),
                headers: vec![
                    ("date".into(), "now".into()),
                    ("x-denied-by".into(), "rbac".into()),
                ],
                body: b"RBAC: access denied".to_vec(),
            }),
            callouts: vec![Callout {
                cluster: "authz".into(),
                path: "/check".into(),
                ..Callout::default()
            }],
            metrics: [
                ("kept".to_string(), 0),
                ("moved".to_string(), 1),
                ("still".to_string(), 5),
            ]
            .into(),
            vm_failed: Some(false),
            ..StepObservation::default()
        };
        let before = [("still".to_string(), 5)].into();

        let expect = updated_expect(&step, &seen, &before);

        assert_eq!(expect.status, Some(403));
        assert_eq!(expect.details, Some(Some("rbac_access_denied".into())));
        assert_eq!(
            expect.headers,
            [("x-denied-by".to_string(), "rbac".to_string())].into()
        );
        assert_eq!(expect.body.as_deref(), Some("RBAC: access denied"));
        assert_eq!(
            expect.metrics,
            [("kept".to_string(), 0), ("moved".to_string(), 1)].into()
        );
        assert_eq!(expect.logs, ["denied"]);
        assert_eq!(expect.callouts.unwrap()[0].path.as_deref(), Some("/check"));
        assert_eq!(expect.vm_failed, None);
    }

    #[test]
    fn a_connection_is_snapshotted_whole_bytes_as_text_or_base64() {
        let step = Step {
            connection: Some(crate::format::Connection::default()),
            ..Step::default()
        };
        let seen = StepObservation {
            connection: Some(ConnectionSeen {
                upstream_connected: true,
                upstream_received: b"<hi>".to_vec(),
                client_received: vec![0xff, 0x00],
                client_got_end: true,
                closed: Some(crate::format::ClosedBy::Proxy),
            }),
            ..StepObservation::default()
        };
        let expect = updated_expect(&step, &seen, &BTreeMap::new());
        assert_eq!(
            expect.connection,
            Some(ConnectionExpect {
                upstream_connected: Some(true),
                upstream_received: Some("<hi>".into()),
                upstream_received_base64: None,
                client_received: None,
                client_received_base64: Some("/wA=".into()),
                client_got_end: Some(true),
                closed: Some(crate::format::ClosedBy::Proxy),
            })
        );
    }
}
