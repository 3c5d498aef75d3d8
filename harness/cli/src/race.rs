//! `wasmesh run --race N`: the exchange's request arrives on every worker at the same instant,
//! under N seeded schedules of the harness's race mode (`wasmesh_harness::race`), each on a fresh
//! plugin. A filter whose verdicts are exact across workers gives the same verdicts, as a
//! multiset, under every schedule; a shared-data write that can lose an update is reported
//! whatever the schedule. Either finding fails the run.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use wasmesh_harness::{Action, HarnessError, Outcome, Plugin};

use crate::exchange::{to_pretty_json, ExchangeInput, FORMAT_VERSION};
use crate::run::property_value;

/// What `--race` prints.
#[derive(Debug, Serialize)]
pub struct RaceOutput {
    /// Output format version.
    pub format: u32,
    /// Workers racing (one request each).
    pub workers: usize,
    /// Seeds tried: 0 to `rounds - 1`.
    pub rounds: u64,
    /// Each distinct set of verdicts, with the seeds that gave it.
    pub verdicts: Vec<VerdictGroup>,
    /// Shared-data writes that can lose a concurrent update.
    pub hazards: Vec<String>,
    /// The schedule of the first seed whose verdicts differ from seed 0's, if any.
    pub differing_schedule: Option<SeedSchedule>,
}

/// Seeds whose requests got the same verdicts.
#[derive(Debug, Serialize)]
pub struct VerdictGroup {
    /// One verdict per request, sorted ("continue", "pause", "local reply 429", "error: ...").
    pub verdicts: Vec<String>,
    /// The seeds.
    pub seeds: Vec<u64>,
}

/// One seed's schedule, as the harness ran it.
#[derive(Debug, Serialize)]
pub struct SeedSchedule {
    /// The seed.
    pub seed: u64,
    /// One line per scheduling decision.
    pub schedule: Vec<String>,
}

/// Runs the race rounds; `start` makes a fresh plugin for each.
pub fn run(
    exchange: &ExchangeInput,
    rounds: u64,
    start: impl Fn() -> Result<Plugin>,
) -> Result<()> {
    if rounds == 0 {
        bail!("--race needs at least one round");
    }
    let headers: Vec<(&str, &str)> = exchange
        .request
        .headers
        .0
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let body = exchange.request.body_bytes();
    let body = body.as_deref();
    let mut groups: BTreeMap<Vec<String>, Vec<u64>> = BTreeMap::new();
    let mut hazards = Vec::new();
    let mut first_verdicts = None;
    let mut differing_schedule = None;
    let mut workers = 0;
    for seed in 0..rounds {
        let plugin = start()?;
        workers = plugin.workers();
        let mut streams: Vec<_> = (0..workers)
            .map(|worker| {
                let mut stream = plugin.http_stream_on(worker);
                for property in &exchange.properties {
                    let path: Vec<&str> = property.path.iter().map(String::as_str).collect();
                    stream.property(&path, property_value(&property.value));
                }
                stream
            })
            .collect();
        let mut race = plugin.race(seed);
        for stream in &mut streams {
            race.request_headers(stream, &headers, body.is_none())?;
            if let Some(body) = body {
                race.request_body(stream, body, true)?;
            }
        }
        let report = race.run().with_context(|| format!("race seed {seed}"))?;
        let mut verdicts: Vec<String> = verdicts_by_stream(&report.outcomes, workers, body);
        verdicts.sort();
        match &first_verdicts {
            None => first_verdicts = Some(verdicts.clone()),
            Some(first) if *first != verdicts && differing_schedule.is_none() => {
                differing_schedule = Some(SeedSchedule {
                    seed,
                    schedule: report.schedule.clone(),
                });
            }
            Some(_) => {}
        }
        groups.entry(verdicts).or_default().push(seed);
        for hazard in plugin.shared_data_hazards() {
            let hazard = hazard.to_string();
            if !hazards.contains(&hazard) {
                hazards.push(hazard);
            }
        }
    }
    let output = RaceOutput {
        format: FORMAT_VERSION,
        workers,
        rounds,
        verdicts: groups
            .into_iter()
            .map(|(verdicts, seeds)| VerdictGroup { verdicts, seeds })
            .collect(),
        hazards,
        differing_schedule,
    };
    println!(
        "{}",
        to_pretty_json(&output).context("serializing the result")?
    );
    if let Some(differing) = &output.differing_schedule {
        bail!(
            "the verdicts depend on the schedule: seed {} differs from seed 0 (see \
             differing_schedule); a filter exact across workers gives the same verdicts under \
             every schedule",
            differing.seed
        );
    }
    if !output.hazards.is_empty() {
        bail!(
            "{} shared-data write(s) can lose a concurrent update (see hazards)",
            output.hazards.len()
        );
    }
    Ok(())
}

/// The verdict of each stream: its last event's outcome (events were added stream by stream).
fn verdicts_by_stream(
    outcomes: &[Result<Outcome, HarnessError>],
    streams: usize,
    body: Option<&[u8]>,
) -> Vec<String> {
    let per_stream = if body.is_some() { 2 } else { 1 };
    outcomes
        .chunks(per_stream)
        .take(streams)
        .map(|events| match events.last() {
            Some(Ok(outcome)) => verdict(outcome),
            Some(Err(error)) => format!("error: {error}"),
            None => "missing".to_string(),
        })
        .collect()
}

fn verdict(outcome: &Outcome) -> String {
    match (outcome.local_reply(), outcome.action()) {
        (Some(reply), _) => format!("local reply {}", reply.status),
        (None, Action::Continue) => "continue".to_string(),
        (None, action) => format!("{action:?}").to_lowercase(),
    }
}
