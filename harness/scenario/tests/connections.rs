#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Connection steps (a network filter) under both judges: the shipped `tcp-gate` scenario
//! (`tests/scenarios`, a WAT module that wraps, holds, closes, stops and denies) run step by step
//! by the harness judge, whose observations are checked fact by fact, and by the Envoy judge,
//! which must see the same connections: whether the upstream got one, the bytes each side
//! received, whether the client read the end, who closed, and the module's log lines and
//! metrics.

use std::path::{Path, PathBuf};

use wasmesh_scenario::envoy_judge::EnvoyJudge;
use wasmesh_scenario::format::ClosedBy;
use wasmesh_scenario::harness_judge::HarnessJudge;
use wasmesh_scenario::load::{load, parse, validate, ScenarioFile};
use wasmesh_scenario::observe::{ConnectionSeen, StepObservation};
use wasmesh_scenario::run::{run_scenario, Options};

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

fn tcp_gate() -> ScenarioFile {
    load(&scenarios().join("tcp-gate.scenario.yaml")).unwrap()
}

fn module() -> PathBuf {
    scenarios().join("tcp-gate.wat")
}

fn harness_run(file: &ScenarioFile) -> Vec<StepObservation> {
    let mut judge = HarnessJudge::start(file, &module(), 0).unwrap();
    file.scenario
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| judge.step(index, step).unwrap())
        .collect()
}

fn seen(
    connected: bool,
    upstream: &str,
    client: &str,
    client_got_end: bool,
    closed: ClosedBy,
) -> ConnectionSeen {
    ConnectionSeen {
        upstream_connected: connected,
        upstream_received: upstream.as_bytes().to_vec(),
        client_received: client.as_bytes().to_vec(),
        client_got_end,
        closed: Some(closed),
    }
}

/// What the harness judge sees of each step of `tcp-gate`, and the module's lines.
fn expected() -> Vec<(ConnectionSeen, Vec<&'static str>)> {
    use ClosedBy::{Client, Open, Proxy};
    vec![
        (
            seen(true, "<hello><world>", "u:<hello>u:<world>", false, Open),
            // The wind-down: the client's end, then the echo server's.
            vec![
                "from 127.0.0.1:40000",
                "upstream closed 0",
                "downstream closed 1",
                "log",
            ],
        ),
        (
            seen(true, "<a+b>", "u:<a+b>", true, Proxy),
            vec![
                "from 127.0.0.1:40000",
                "hold",
                "upstream closed 0",
                "downstream closed 1",
                "log",
            ],
        ),
        (
            seen(true, "<hi>", "u:<hi>", true, Proxy),
            vec!["from 127.0.0.1:40000", "downstream closed 1", "log"],
        ),
        (
            seen(true, "<HELO><QUIT>", "u:250 oku:221 bye", true, Open),
            vec![
                "from 127.0.0.1:40000",
                "upstream closed 0",
                "downstream closed 2",
                "log",
            ],
        ),
        (
            seen(true, "<QUIT>", "u:bye", true, Client),
            vec![
                "from 127.0.0.1:40000",
                "upstream closed 0",
                "downstream closed 2",
                "log",
            ],
        ),
        (
            seen(true, "", "", true, Proxy),
            vec![
                "from 10.9.1.2:40000",
                "denied",
                "downstream closed 1",
                "log",
            ],
        ),
        (
            seen(true, "<hi>", "u:<hi>", false, Open),
            vec![
                "from 192.168.1.7:5555",
                "upstream closed 0",
                "downstream closed 1",
                "log",
            ],
        ),
        (
            seen(false, "", "", false, Open),
            vec!["from 10.8.0.1:40000", "stop"],
        ),
    ]
}

#[test]
fn the_harness_judge_plays_each_connection() {
    let file = tcp_gate();
    let steps = harness_run(&file);
    assert_eq!(steps.len(), expected().len());
    for (index, (seen, (connection, lines))) in steps.iter().zip(expected()).enumerate() {
        assert_eq!(seen.connection.as_ref(), Some(&connection), "step {index}");
        assert_eq!(
            seen.logs.as_deref(),
            Some(&lines_of(&lines)[..]),
            "step {index}"
        );
        assert_eq!(
            seen.metrics.get("tcp_gate.connections"),
            Some(&(index as u64 + 1)),
            "step {index}"
        );
    }
}

fn lines_of(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| line.to_string()).collect()
}

#[test]
fn a_scripted_upstream_answers_each_read_and_a_silent_one_nothing() {
    let dir = std::env::temp_dir().join(format!("wasmesh-connections-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(module(), dir.join("tcp-gate.wat")).unwrap();
    let path = dir.join("s.yaml");
    let scenario = parse(
        &path,
        "format: 1\nmodule: {path: tcp-gate.wat}\nsteps:\n\
         - connection:\n    client: [{send: a}, {send: b}, {send: c}]\n    upstream: {replies: [{send: one}, {}, {send_base64: dHdv}]}\n\
         - connection:\n    client: [{send: a}, {end: true}]\n    upstream: {replies: []}\n",
    )
    .unwrap();
    validate(&scenario).unwrap();
    let file = ScenarioFile { path, scenario };
    let steps = harness_run(&file);
    let first = steps[0].connection.clone().unwrap();
    assert_eq!(first.upstream_received, b"<a><b><c>");
    assert_eq!(first.client_received, b"u:oneu:two");
    let second = steps[1].connection.clone().unwrap();
    assert_eq!(second.client_received, b"");
    // The upstream ends its side once it reads the client's end: the connection closes.
    assert_eq!(
        (second.client_got_end, second.closed),
        (true, Some(ClosedBy::Proxy))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_envoy_judge_sees_the_same_connections() {
    if wasmesh_envoy::skip_requested() {
        return;
    }
    let file = tcp_gate();
    let harness = harness_run(&file);
    let mut envoy = EnvoyJudge::start(&file, &module()).unwrap();
    for (index, step) in file.scenario.steps.iter().enumerate() {
        let by_envoy = envoy
            .step(index, step)
            .unwrap_or_else(|error| panic!("envoy, step {index}: {error}"));
        let by_harness = &harness[index];
        assert_eq!(
            by_envoy.connection, by_harness.connection,
            "step {index}: the connection, Envoy vs harness"
        );
        assert_eq!(
            by_envoy.logs, by_harness.logs,
            "step {index}: the module's lines, Envoy vs harness"
        );
        // Envoy reports the metrics a step expects.
        for (name, value) in &by_envoy.metrics {
            assert_eq!(
                by_harness.metrics.get(name),
                Some(value),
                "step {index}: {name}"
            );
        }
        if index == 0 {
            assert_eq!(by_envoy.metrics.get("tcp_gate.connections"), Some(&1));
        }
    }
}

#[test]
fn the_shipped_connection_scenarios_pass_with_the_runner() {
    let options = Options {
        envoy: !wasmesh_envoy::skip_requested(),
        ..Options::default()
    };
    let report = run_scenario(&tcp_gate(), &options);
    assert!(
        report.passed(),
        "{}",
        wasmesh_scenario::report::text(&report)
    );
    assert!(report.harness_only.is_empty(), "{:?}", report.harness_only);
    assert!(report
        .steps
        .iter()
        .all(|step| step.disagreements.is_empty()));
}
