#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Race mode: worker VMs interleaved at hostcall granularity, and the shared-data hazards the
//! harness reports without any schedule.

mod common;

use common::*;
use wasmesh_harness::{explore_races, HazardKind, Plugin};

/// A module whose request-headers callback counts requests in the one-byte shared-data value
/// "n": read, add one, write. With `use_cas`, the write carries the token of the read and a
/// `CasMismatch` (status 8) starts over; without, the write is unconditional.
fn counter(use_cas: bool) -> String {
    let mut t = Strings::new();
    let key = t.s("n");
    let cas = if use_cas {
        "(i32.load (i32.const 520))"
    } else {
        "(i32.const 0)"
    };
    module(&format!(
        r#"{}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $count i32)
    (loop $retry
      (i32.store (i32.const 512) (i32.const 0))
      (i32.store (i32.const 516) (i32.const 0))
      (i32.store (i32.const 520) (i32.const 0))
      (drop (call $proxy_get_shared_data {key} (i32.const 512) (i32.const 516) (i32.const 520)))
      (local.set $count (i32.const 0))
      (if (i32.load (i32.const 516))
        (then (local.set $count (i32.load8_u (i32.load (i32.const 512))))))
      (i32.store8 (i32.const 600) (i32.add (local.get $count) (i32.const 1)))
      (br_if $retry (i32.eq
        (call $proxy_set_shared_data {key} (i32.const 600) (i32.const 1) {cas})
        (i32.const 8))))
    (i32.const 0))"#,
        t.data()
    ))
}

/// The counter module on `workers` workers, its key created before traffic (as a filter must:
/// the ABI has no "create if absent", so two workers that both find the key missing both write
/// without a token, and one count is lost whatever the module does).
fn start(use_cas: bool, workers: usize) -> Plugin {
    let plugin = builder(&counter(use_cas)).workers(workers).start().unwrap();
    plugin.set_shared_data("n", &[0], 0);
    plugin
}

/// Every worker counts one request at the same instant; returns the count stored afterwards.
fn race_once(plugin: &Plugin, seed: u64) -> u8 {
    let mut streams: Vec<_> = (0..plugin.workers())
        .map(|worker| plugin.http_stream_on(worker))
        .collect();
    let mut race = plugin.race(seed);
    for stream in &mut streams {
        race.request_headers(stream, GET, true).unwrap();
    }
    let report = race.run().unwrap();
    assert_eq!(report.seed, seed);
    assert!(report.outcomes.iter().all(Result::is_ok), "{report:?}");
    let count = plugin.shared_data("n").map_or(0, |(value, _)| value[0]);
    // Reset for the next round (the harness's own write, not the module's).
    plugin.set_shared_data("n", &[0], 0);
    count
}

#[test]
fn an_unconditional_read_modify_write_loses_updates_on_some_schedule() {
    let plugin = start(false, 4);
    let failure = explore_races(0..64, |seed| match race_once(&plugin, seed) {
        4 => Ok(()),
        count => Err(format!("4 workers counted to {count}")),
    })
    .expect_err("some schedule interleaves a read and a write of two workers");
    assert!(failure.message.contains("counted to"), "{failure}");
    assert!(failure.to_string().contains(&format!(
        "race seed {} failed (reproduce with WASMESH_RACE_SEED={})",
        failure.seed, failure.seed
    )));

    // The same seed reproduces the same lost update, and the same schedule.
    let again = start(false, 4);
    assert!(race_once(&again, failure.seed) < 4);

    // Without any schedule, the harness names the hazard: the token was read and not used.
    let hazards = plugin.shared_data_hazards();
    assert!(
        hazards
            .iter()
            .any(|h| h.key == "n" && h.kind == HazardKind::TokenReadButNotUsed),
        "{hazards:?}"
    );
    assert!(hazards[0].to_string().contains("proxy_on_request_headers"));
}

#[test]
fn a_compare_and_swap_loop_counts_every_request_on_every_schedule() {
    for workers in [2, 4, 8] {
        let plugin = start(true, workers);
        explore_races(0..64, |seed| {
            let count = race_once(&plugin, seed);
            if usize::from(count) == workers {
                Ok(())
            } else {
                Err(format!("{workers} workers counted to {count}"))
            }
        })
        .unwrap();
        // The harness's own resets are not the module's writes.
        assert_eq!(plugin.shared_data_hazards(), vec![]);
    }
}

#[test]
fn two_workers_creating_a_missing_key_lose_one_write_even_with_cas() {
    let failure = explore_races(0..16, |seed| {
        let plugin = builder(&counter(true)).workers(2).start().unwrap();
        match race_once(&plugin, seed) {
            2 => Ok(()),
            count => Err(format!("counted to {count}")),
        }
    })
    .expect_err("both workers find the key missing on some schedule");
    assert_eq!(failure.message, "counted to 1");
}

#[test]
fn schedules_differ_by_seed_and_repeat_by_seed() {
    let plugin = start(true, 4);
    let schedule = |seed| {
        let mut streams: Vec<_> = (0..4).map(|worker| plugin.http_stream_on(worker)).collect();
        let mut race = plugin.race(seed);
        for stream in &mut streams {
            race.request_headers(stream, GET, true).unwrap();
        }
        race.run().unwrap().schedule
    };
    let first = schedule(1);
    assert_eq!(first, schedule(1));
    assert!((2..20).any(|seed| schedule(seed) != first));
    // Some schedule interrupts a VM at a race point, and says where.
    assert!((1..20).any(|seed| schedule(seed)
        .iter()
        .any(|line| line.contains("race point after proxy_get_shared_data(\"n\")"))));
}

#[test]
fn events_of_one_worker_never_overlap_and_a_streams_events_keep_their_order() {
    let plugin = start(true, 2);
    for seed in 0..32 {
        // Three streams on worker 0, one on worker 1; the body follows its stream's headers.
        let mut streams: Vec<_> = [0, 0, 0, 1]
            .iter()
            .map(|&worker| plugin.http_stream_on(worker))
            .collect();
        let mut race = plugin.race(seed);
        for stream in &mut streams {
            race.request_headers(stream, GET, false).unwrap();
        }
        race.request_body(&mut streams[3], b"body", true).unwrap();
        let report = race.run().unwrap();
        for line in &report.schedule {
            if let Some((event, point)) = line.trim().split_once(" runs on worker ") {
                assert!(
                    !(event.contains("worker 0") && point.starts_with('0')),
                    "{line}"
                );
            }
        }
        let position = |needle: &str| {
            report
                .schedule
                .iter()
                .position(|line| line.contains(needle))
                .unwrap()
        };
        assert!(position("event 3 ") < position("event 4 "), "{report:?}");
        assert!(report.outcomes.iter().all(Result::is_ok));
        assert_eq!(plugin.shared_data("n").unwrap().0, [4]);
        plugin.set_shared_data("n", &[0], 0);
    }
}
