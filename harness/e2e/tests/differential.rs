#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The differential corpus (`corpus/corpus.json`) through the harness and through real Envoy:
//! every exchange must be observed alike (status, response code details, local-reply body,
//! upstream request, client response headers), and so must the callouts and the counters of
//! each group. Known Envoy/spec divergences are marked in the corpus and documented in the
//! README's DIVERGENCES section. Set `WASMESH_SKIP_ENVOY=1` to skip on a machine without Envoy.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use wasmesh_e2e::corpus::{Corpus, FilterSource, Tokens, FOREIGN_CORPUS_FILE};
use wasmesh_e2e::differential::{run_group, GroupReport};
use wasmesh_envoy as envoy;

/// Groups run at once: each holds an Envoy and a harness plugin; the machine has few cores.
const PARALLEL_GROUPS: usize = 3;

#[test]
fn the_harness_and_real_envoy_observe_every_exchange_of_the_corpus_alike() {
    if envoy::skip_requested() {
        return;
    }
    run_corpus(&Corpus::load().unwrap());
}

/// The same comparison for modules built by other toolchains (Go's wasip1 target,
/// AssemblyScript with proxy-runtime, Rust with the proxy-wasm crate alone): one behaviour, the
/// same groups run over each module (`corpus/foreign.json`).
#[test]
fn the_harness_and_real_envoy_observe_modules_of_other_toolchains_alike() {
    if envoy::skip_requested() {
        return;
    }
    run_corpus(&Corpus::load_file(FOREIGN_CORPUS_FILE).unwrap());
}

#[test]
fn the_foreign_corpus_runs_every_group_over_a_go_an_assemblyscript_and_a_rust_module() {
    let corpus = Corpus::load_file(FOREIGN_CORPUS_FILE).unwrap();
    let kinds: BTreeSet<&str> = corpus
        .filters
        .values()
        .map(|source| match source {
            FilterSource::Go(_) => "go",
            FilterSource::AssemblyScript(_) => "assemblyscript",
            FilterSource::Package(_) => "rust",
            FilterSource::Wat(_) => "wat",
        })
        .collect();
    assert_eq!(kinds, BTreeSet::from(["assemblyscript", "go", "rust"]));
    for filter in corpus.filters.keys() {
        let groups = corpus.groups.iter().filter(|g| &g.filter == filter).count();
        assert_eq!(
            groups * corpus.filters.len(),
            corpus.groups.len(),
            "{filter} does not run every group"
        );
    }
}

fn run_corpus(corpus: &Corpus) {
    let tokens = Tokens::load().unwrap();
    let scratch = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-corpus");
    // Build every filter first (memoized per process), so groups do not queue on cargo's lock.
    for source in corpus.filters.values() {
        source.wasm(&scratch).unwrap();
    }

    let next = AtomicUsize::new(0);
    let reports: Mutex<Vec<(usize, GroupReport)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_GROUPS {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= corpus.groups.len() {
                    return;
                }
                let report = run_group(corpus, index, &tokens, &scratch).unwrap_or_else(|error| {
                    panic!("group {:?}: {error}", corpus.groups[index].name)
                });
                reports.lock().unwrap().push((index, report));
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|(index, _)| *index);

    let mut failures = Vec::new();
    for (_, report) in &reports {
        let agreeing = report.exchanges.iter().filter(|e| e.agrees()).count();
        println!(
            "{:<60} {:>2}/{:>2} agree, {} callouts, {} metrics, {} difference(s), {:.1}s",
            report.group,
            agreeing,
            report.exchanges.len(),
            report.callouts_compared,
            report.metrics_compared,
            report.differences.len(),
            report.elapsed.as_secs_f64()
        );
        for exchange in &report.exchanges {
            println!(
                "    {:<55} envoy {:<40} harness {}{}{}",
                exchange.name,
                exchange.envoy.summary(),
                exchange.harness.summary(),
                exchange
                    .divergence
                    .as_ref()
                    .map(|d| format!("  [known divergence: {d}]"))
                    .unwrap_or_default(),
                if exchange.harness_errors.is_empty() {
                    String::new()
                } else {
                    format!("  [module failed: {}]", exchange.harness_errors.join("; "))
                }
            );
            // Envoy's local-reply body says what the module was handed (callouts, dispatch).
            if let Some(body) = exchange.envoy.local_body.as_deref() {
                let first = body.lines().next().unwrap_or_default();
                if !first.is_empty() {
                    println!(
                        "        envoy's body: {}",
                        first.chars().take(160).collect::<String>()
                    );
                }
            }
        }
        for difference in &report.differences {
            failures.push(format!("{}: {difference}", report.group));
        }
    }
    // The comparison has teeth: callouts and metrics were compared, not only verdicts.
    assert!(
        reports
            .iter()
            .map(|(_, r)| r.callouts_compared)
            .sum::<usize>()
            > 0
    );
    assert!(
        reports
            .iter()
            .map(|(_, r)| r.metrics_compared)
            .sum::<usize>()
            > 0
    );
    assert!(
        failures.is_empty(),
        "{} difference(s) between Envoy and the harness:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_corpus_spans_every_filter_of_the_workspace() {
    let corpus = Corpus::load().unwrap();
    assert!(corpus.exchange_count() >= 50, "{}", corpus.exchange_count());
    let packages: BTreeSet<String> = corpus
        .filters
        .values()
        .filter_map(|source| match source {
            FilterSource::Package(package) => Some(package.clone()),
            FilterSource::Wat(_) | FilterSource::Go(_) | FilterSource::AssemblyScript(_) => None,
        })
        .collect();
    let used: BTreeSet<&String> = corpus.groups.iter().map(|group| &group.filter).collect();
    assert_eq!(
        used.len(),
        corpus.filters.len(),
        "a filter of the corpus has no group"
    );
    let root = wasmesh_e2e::workspace_root();
    let mut expected = BTreeSet::from(["wasmesh-example-header-filter".to_string()]);
    for entry in std::fs::read_dir(root.join("filters")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("Cargo.toml").is_file() {
            expected.insert(format!(
                "wasmesh-{}",
                dir.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert_eq!(packages, expected);
}
