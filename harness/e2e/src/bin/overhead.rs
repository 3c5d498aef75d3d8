//! Overhead of wasmesh filters in a real Envoy, next to no filter and to Envoy's native filter
//! given the same policy.
//!
//! ```sh
//! apt-get install -y wrk
//! cargo run -p wasmesh-e2e --bin overhead -- --write BENCHMARKS.md
//! ```
//!
//! For each filter (RBAC, local rate limit, JWT, fault, ext_authz) it starts Envoys (one worker
//! each, direct-response route, logs at `warn`) with no filter, with the wasm filter (the
//! release build through `wasm-opt`, as `wasmesh build` ships it) and with the native filter,
//! warms each up, then loads them in turn with `wrk` from a second process on loopback, for a
//! bounded time, in a rotated order each round so that a noisy neighbour hurts every
//! configuration alike. Every response must be a 2xx (so the allowed path is what is measured).
//! Results are ratios paired within a round, with their spread over rounds; `--write` replaces
//! the "Overhead in real Envoy" section of a markdown file (created if missing) and leaves the
//! rest of the file alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{json, Map, Value};
use wasmesh_e2e::corpus::Tokens;
use wasmesh_e2e::load::{find_wrk, run_wrk, LoadResult, LoadSpec};
use wasmesh_e2e::services::{authz_decision, AUTHZ_CLUSTER};
use wasmesh_e2e::E2eError;
use wasmesh_envoy::{
    self as envoy, Cluster, Envoy, EnvoyBuilder, ReceivedRequest, TestServer, WasmFilter,
};

/// Title of the section this benchmark owns in BENCHMARKS.md.
const SECTION_TITLE: &str = "## Overhead in real Envoy";

/// The native jwt_authn as configured by default (no JWT cache).
const NATIVE_JWT_DEFAULT: &str = "native (no cache, Envoy's default)";

/// A proxy-wasm module that does nothing at all (no SDK): what any wasm filter costs in Envoy.
const RAW_NOOP_WAT: &str = r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.const 1)))))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

/// Path every request uses.
const REQUEST_PATH: &str = "/api/v1/orders";

#[derive(Debug, Parser)]
#[command(about = "Overhead of wasmesh filters in real Envoy vs no filter and native filters")]
struct Args {
    /// Seconds of load per configuration and round.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds (each loads every configuration once, in a rotated order).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of warm-up load per configuration before the first round (V8 tiers up).
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Envoy's worker threads (`--concurrency`): one VM each, plus the main thread's. Memory
    /// grows with them; throughput is compared at 1.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Only these (comma-separated: "proxy-wasm floor", rbac, rate-limit, jwt-authn, fault,
    /// ext_authz).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Markdown file whose "Overhead in real Envoy" section is replaced with the results.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// What the wasm filter is held to, relative to a native configuration's throughput.
#[derive(Debug, Clone, Copy)]
struct Goal {
    /// Label of the native variant the goal compares with.
    against: &'static str,
    /// Minimum wasm/native throughput ratio.
    min_ratio: f64,
    /// How the goal reads in the report.
    text: &'static str,
}

/// One configuration of a scenario.
struct Variant {
    label: String,
    role: Role,
    envoy: Envoy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Wasm,
    Native,
}

/// One filter: its configurations, the request they all get, and the goal.
struct Scenario {
    name: &'static str,
    headers: Vec<(String, String)>,
    variants: Vec<Variant>,
    goal: Option<Goal>,
}

/// Measurements of one variant over the rounds.
#[derive(Debug, Default, Clone)]
struct Series {
    runs: Vec<LoadResult>,
    /// Envoy's resident memory after the last round, in bytes.
    resident_memory: u64,
}

fn main() {
    let args = Args::parse();
    let outcome = run(&args);
    // The Envoys are gone by now; their modules can go too.
    if let Ok(dir) = scratch_dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Err(error) = outcome {
        eprintln!("overhead: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), E2eError> {
    let wrk = find_wrk()?;
    let envoy_version = envoy_version()?;
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    let tokens = Tokens::load()?;
    let authz = TestServer::start(|request: &ReceivedRequest| {
        authz_decision(&request.path, &request.headers).to_http()
    })?;
    let baseline = base_builder(args.workers).start()?;

    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|only| only == name);
    let mut scenarios = Vec::new();
    for name in [
        "proxy-wasm floor",
        "rbac",
        "rate-limit",
        "jwt-authn",
        "fault",
        "ext_authz",
    ] {
        if wanted(name) {
            eprintln!("starting the Envoys of {name}");
            scenarios.push(scenario(name, &tokens, &authz, args.workers)?);
        }
    }

    let mut results: Vec<Vec<(String, Series)>> = Vec::new();
    for scenario in &scenarios {
        results.push(measure(args, &wrk, scenario, &baseline)?);
    }

    let report = render(args, &envoy_version, &load_average, &scenarios, &results);
    println!("{report}");
    if let Some(path) = &args.write {
        write_section(path, &report)?;
        eprintln!(
            "wrote the \"{}\" section of {}",
            &SECTION_TITLE[3..],
            path.display()
        );
    }
    Ok(())
}

fn envoy_version() -> Result<String, E2eError> {
    let binary = envoy::find_envoy()?;
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .map_err(|source| E2eError::Io {
            path: binary.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    Ok(text
        .split_once("version:")
        .and_then(|(_, version)| version.trim().split('/').nth(1))
        .map_or_else(|| text.trim().to_string(), str::to_string))
}

/// Envoy for benchmarking: `workers` workers, quiet logs, no local-reply mapper, direct
/// response.
fn base_builder(workers: u32) -> EnvoyBuilder {
    EnvoyBuilder::new()
        .concurrency(workers)
        .log_level("warn")
        .component_log_levels("wasm:warn")
        .report_response_code_details(false)
        .direct_response(200, "ok")
}

/// A scratch directory for this run's modules.
fn scratch_dir() -> Result<PathBuf, E2eError> {
    let dir = std::env::temp_dir().join(format!("wasmesh-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| E2eError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// The release build of `package` through `wasm-opt`, as `wasmesh build` ships it.
fn shipped_wasm(package: &str) -> Result<PathBuf, E2eError> {
    let built = wasmesh_harness::build::wasm(package)?;
    let optimized = scratch_dir()?.join(format!("{package}.wasm"));
    wasmesh_harness::build::optimize(&built, &optimized)?;
    Ok(optimized)
}

fn wasm_variant(
    label: &str,
    package: &str,
    config: &Value,
    builder: EnvoyBuilder,
) -> Result<Variant, E2eError> {
    let filter = WasmFilter::new(shipped_wasm(package)?)
        .name(package)
        .configuration(config.to_string());
    Ok(Variant {
        label: label.to_string(),
        role: Role::Wasm,
        envoy: builder.wasm_filter(filter).start()?,
    })
}

fn native_variant(
    label: &str,
    filter: &str,
    type_url: &str,
    config: &Value,
    builder: EnvoyBuilder,
) -> Result<Variant, E2eError> {
    let Value::Object(mut typed_config) = config.clone() else {
        return Err(E2eError::Corpus(format!(
            "{label}: the {filter} config is not a JSON object"
        )));
    };
    typed_config.insert("@type".to_string(), json!(type_url));
    Ok(Variant {
        label: label.to_string(),
        role: Role::Native,
        envoy: builder
            .http_filter_json(json!({"name": filter, "typed_config": typed_config}))
            .start()?,
    })
}

fn scenario(
    name: &'static str,
    tokens: &Tokens,
    authz: &TestServer,
    workers: u32,
) -> Result<Scenario, E2eError> {
    let base_builder = || base_builder(workers);
    let header = |name: &str, value: &str| vec![(name.to_string(), value.to_string())];
    Ok(match name {
        "proxy-wasm floor" => {
            let dir = scratch_dir()?;
            let raw = dir.join("raw-noop.wasm");
            let bytes = wat::parse_str(RAW_NOOP_WAT)
                .map_err(|error| E2eError::Corpus(format!("the no-op module: {error}")))?;
            std::fs::write(&raw, bytes).map_err(|source| E2eError::Io {
                path: raw.clone(),
                source,
            })?;
            Scenario {
                name,
                headers: header("x-api-key", "bench"),
                variants: vec![
                    Variant {
                        label: "wasm, no-op module without SDK".to_string(),
                        role: Role::Wasm,
                        envoy: base_builder().wasm_filter(WasmFilter::new(raw)).start()?,
                    },
                    wasm_variant(
                        "wasm, SDK no-op filter",
                        "wasmesh-noop-filter",
                        &json!({}),
                        base_builder(),
                    )?,
                ],
                goal: None,
            }
        }
        "rbac" => {
            let rules = json!({"action": "ALLOW", "policies": {
                "admins": {
                    "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
                    "principals": [{"header": {"name": "x-role", "string_match": {"exact": "admin"}}}]
                },
                "api-readers": {
                    "permissions": [{"and_rules": {"rules": [
                        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                        {"url_path": {"path": {"safe_regex": {"regex": "/api/v[0-9]+/.*"}}}}
                    ]}}],
                    "principals": [{"header": {"name": "x-api-key", "present_match": true}}]
                },
                "health": {
                    "permissions": [{"url_path": {"path": {"exact": "/healthz"}}}],
                    "principals": [{"any": true}]
                }
            }});
            let config = json!({"rules": rules});
            Scenario {
                name,
                headers: header("x-api-key", "bench"),
                variants: vec![
                    wasm_variant("wasm", "wasmesh-rbac", &config, base_builder())?,
                    native_variant(
                        "native",
                        "envoy.filters.http.rbac",
                        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                        &config,
                        base_builder(),
                    )?,
                ],
                goal: Some(Goal {
                    against: "native",
                    min_ratio: 0.9,
                    text: "wasm ≥ 90% of native",
                }),
            }
        }
        "rate-limit" => {
            // A bucket that never runs dry: the admitted path is what is measured.
            let config = json!({
                "stat_prefix": "bench",
                "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
                "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}}
            });
            Scenario {
                name,
                headers: Vec::new(),
                variants: vec![
                    wasm_variant("wasm", "wasmesh-rate-limit", &config, base_builder())?,
                    native_variant(
                        "native (local_ratelimit)",
                        "envoy.filters.http.local_ratelimit",
                        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                        &config,
                        base_builder(),
                    )?,
                ],
                goal: Some(Goal {
                    against: "native (local_ratelimit)",
                    min_ratio: 0.9,
                    text: "wasm ≥ 90% of native",
                }),
            }
        }
        "jwt-authn" => {
            let token = tokens
                .tokens
                .get("rs256")
                .ok_or_else(|| E2eError::Corpus("tokens.json has no rs256 token".to_string()))?;
            let provider = |cache: bool| {
                let mut provider = Map::from_iter([
                    ("issuer".to_string(), json!("https://issuer.example.com")),
                    ("audiences".to_string(), json!(["api.example.com"])),
                    (
                        "local_jwks".to_string(),
                        json!({"inline_string": tokens.jwks_text()}),
                    ),
                    ("forward".to_string(), json!(true)),
                ]);
                if cache {
                    provider.insert(
                        "jwt_cache_config".to_string(),
                        json!({"jwt_cache_size": 100}),
                    );
                }
                json!({
                    "providers": {"bench": provider},
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]
                })
            };
            let type_url =
                "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
            Scenario {
                name,
                headers: header("authorization", &format!("Bearer {token}")),
                variants: vec![
                    wasm_variant(
                        "wasm (jwt_cache_config)",
                        "wasmesh-jwt-authn",
                        &provider(true),
                        base_builder(),
                    )?,
                    native_variant(
                        "native (jwt_cache_config)",
                        "envoy.filters.http.jwt_authn",
                        type_url,
                        &provider(true),
                        base_builder(),
                    )?,
                    native_variant(
                        NATIVE_JWT_DEFAULT,
                        "envoy.filters.http.jwt_authn",
                        type_url,
                        &provider(false),
                        base_builder(),
                    )?,
                ],
                // Envoy's jwt_authn caches nothing unless `jwt_cache_config` is set: the goal is
                // against the filter as users run it by default; the cached native filter is
                // shown too.
                goal: Some(Goal {
                    against: NATIVE_JWT_DEFAULT,
                    min_ratio: 1.0,
                    text: "wasm with cache ≥ native",
                }),
            }
        }
        "fault" => {
            // Faults configured but not rolled (0%): the pass-through path every request takes.
            let config = json!({
                "delay": {"fixed_delay": "1s", "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
                "abort": {"http_status": 503, "percentage": {"numerator": 0, "denominator": "HUNDRED"}}
            });
            Scenario {
                name,
                headers: Vec::new(),
                variants: vec![
                    wasm_variant("wasm", "wasmesh-fault", &config, base_builder())?,
                    native_variant(
                        "native",
                        "envoy.filters.http.fault",
                        "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                        &config,
                        base_builder(),
                    )?,
                ],
                goal: None,
            }
        }
        _ => {
            let service = json!({
                "server_uri": {"uri": "http://authz.internal", "cluster": AUTHZ_CLUSTER, "timeout": "2s"},
                "path_prefix": "/authz",
                "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "x-user"}]}}
            });
            let plain = json!({"http_service": service});
            let cached = json!({
                "http_service": service,
                "decision_cache": {
                    "key": {"method": true, "path": true, "headers": ["authorization"]},
                    "ttl": "30s",
                    "max_entries": 1000
                }
            });
            let with_authz = || base_builder().cluster(Cluster::new(AUTHZ_CLUSTER, authz.addr()));
            Scenario {
                name,
                headers: header("authorization", "Bearer alice"),
                variants: vec![
                    wasm_variant("wasm (policy)", "wasmesh-policy", &plain, with_authz())?,
                    wasm_variant(
                        "wasm (policy, decision cache)",
                        "wasmesh-policy",
                        &cached,
                        with_authz(),
                    )?,
                    native_variant(
                        "native (ext_authz)",
                        "envoy.filters.http.ext_authz",
                        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                        &plain,
                        with_authz(),
                    )?,
                ],
                goal: None,
            }
        }
    })
}

fn spec(args: &Args, envoy: &Envoy, headers: &[(String, String)], seconds: u64) -> LoadSpec {
    LoadSpec {
        url: format!("http://{}{REQUEST_PATH}", envoy.listener_addr()),
        headers: headers.to_vec(),
        duration: Duration::from_secs(seconds),
        connections: args.connections,
    }
}

/// Warms up, then runs the rounds; returns each configuration's runs (baseline first).
fn measure(
    args: &Args,
    wrk: &Path,
    scenario: &Scenario,
    baseline: &Envoy,
) -> Result<Vec<(String, Series)>, E2eError> {
    let mut configurations: Vec<(&str, &Envoy)> = vec![("no filter", baseline)];
    configurations.extend(
        scenario
            .variants
            .iter()
            .map(|variant| (variant.label.as_str(), &variant.envoy)),
    );
    let mut series: Vec<(String, Series)> = configurations
        .iter()
        .map(|(label, _)| (label.to_string(), Series::default()))
        .collect();
    for (label, envoy) in &configurations {
        let warm = run_wrk(
            wrk,
            &spec(args, envoy, &scenario.headers, args.warmup_seconds),
        )?;
        check(scenario.name, label, &warm)?;
    }
    for round in 0..args.rounds {
        // Each round starts one configuration further along: (configuration, its series) pairs,
        // rotated.
        let mut order: Vec<_> = configurations.iter().zip(series.iter_mut()).collect();
        let start = round.checked_rem(order.len()).unwrap_or(0);
        order.rotate_left(start);
        for ((label, envoy), (_, measured)) in order {
            let result = run_wrk(wrk, &spec(args, envoy, &scenario.headers, args.seconds))?;
            check(scenario.name, label, &result)?;
            eprintln!(
                "{} / {label}: round {}: {:.0} req/s, p50 {:?}, p99 {:?}",
                scenario.name,
                round + 1,
                result.requests_per_second,
                result.p50,
                result.p99
            );
            measured.runs.push(result);
        }
    }
    for ((_, envoy), (_, measured)) in configurations.iter().zip(series.iter_mut()) {
        measured.resident_memory = envoy.resident_memory()?;
    }
    Ok(series)
}

/// A run with errors or non-2xx answers measured something else than the allowed path.
fn check(scenario: &str, label: &str, result: &LoadResult) -> Result<(), E2eError> {
    if result.non_2xx > 0 || result.socket_errors > 0 || result.requests == 0 {
        return Err(E2eError::Load(format!(
            "{scenario} / {label}: {} non-2xx answers and {} socket errors in {} requests",
            result.non_2xx, result.socket_errors, result.requests
        )));
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    // `len / 2` is at most `len`: this split cannot fail. An odd count puts the middle value
    // first in `upper`; an even one puts the two middle values either side of the split.
    let (lower, upper) = values.split_at(values.len() / 2);
    match (lower.last(), upper.first()) {
        (_, None) => f64::NAN,
        (Some(low), Some(high)) if values.len().is_multiple_of(2) => (low + high) / 2.0,
        (_, Some(middle)) => *middle,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Per-round throughput ratios `a / b` (runs of the same round are paired).
fn paired_ratios(a: &Series, b: &Series) -> Vec<f64> {
    a.runs
        .iter()
        .zip(&b.runs)
        .map(|(a, b)| a.requests_per_second / b.requests_per_second)
        .collect()
}

fn ratio_cell(ratios: &[f64]) -> String {
    let (lo, hi) = min_max(ratios);
    format!("{:.2} ({:.2}–{:.2})", median(ratios.to_vec()), lo, hi)
}

fn render(
    args: &Args,
    envoy_version: &str,
    load_average: &str,
    scenarios: &[Scenario],
    results: &[Vec<(String, Series)>],
) -> String {
    let mut out = String::new();
    out.push_str(SECTION_TITLE);
    out.push_str("\n\n");
    out.push_str(&format!(
        "Measured on {} with `cargo run -p wasmesh-e2e --bin overhead` \
         (`harness/e2e/src/bin/overhead.rs`). Envoy {envoy_version} (V8), {} worker(s) \
         (`--concurrency {}`), direct-response route (no upstream), logs at `warn`; the wasm \
         filters are the release builds through `wasm-opt`. Load from `wrk` in a second process \
         on loopback: 1 thread, {} connections, {} round(s) of {} s per configuration after a \
         {} s warm-up, configurations rotated each round; every response was a 2xx. The \
         machine has {} cores and was shared with other builds (1-minute load average {load_average} \
         at the start): absolute figures are noisy, ratios are paired within a round and shown \
         as median (min–max over rounds). Memory is Envoy's resident set after the last round.\n\n",
        today(),
        args.workers,
        args.workers,
        args.connections,
        args.rounds,
        args.seconds,
        args.warmup_seconds,
        std::thread::available_parallelism().map_or(0, usize::from),
    ));
    out.push_str(
        "| Filter | Configuration | req/s, median (min–max) | p50 ms | p99 ms | vs no filter | memory MiB |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|\n");
    for (scenario, series) in scenarios.iter().zip(results) {
        let Some((_, baseline)) = series.first() else {
            continue;
        };
        for (label, runs) in series {
            let rates: Vec<f64> = runs.runs.iter().map(|r| r.requests_per_second).collect();
            let (lo, hi) = min_max(&rates);
            let p50 = median(runs.runs.iter().map(|r| millis(r.p50)).collect());
            let p99 = median(runs.runs.iter().map(|r| millis(r.p99)).collect());
            out.push_str(&format!(
                "| {} | {label} | {:.0} ({:.0}–{:.0}) | {p50:.2} | {p99:.2} | {} | {:.0} |\n",
                scenario.name,
                median(rates.clone()),
                lo,
                hi,
                ratio_cell(&paired_ratios(runs, baseline)),
                mebibytes(runs.resident_memory),
            ));
        }
    }
    out.push_str("\n| Filter | wasm / native throughput | Goal | Met |\n|---|---|---|---|\n");
    for (scenario, series) in scenarios.iter().zip(results) {
        let by_label: BTreeMap<&str, &Series> = series
            .iter()
            .map(|(label, s)| (label.as_str(), s))
            .collect();
        let role = |role: Role| {
            scenario
                .variants
                .iter()
                .filter(move |variant| variant.role == role)
                .filter_map(|variant| {
                    by_label
                        .get(variant.label.as_str())
                        .map(|series| (variant.label.as_str(), *series))
                })
        };
        for ((wasm_label, wasm), (native_label, native)) in
            role(Role::Wasm).flat_map(|wasm| role(Role::Native).map(move |native| (wasm, native)))
        {
            let ratios = paired_ratios(wasm, native);
            let goal = scenario.goal.filter(|goal| goal.against == native_label);
            let (goal, met) = match goal {
                Some(goal) => {
                    let typical = median(ratios.clone());
                    let (worst, _) = min_max(&ratios);
                    let met = if worst >= goal.min_ratio {
                        "yes, every round"
                    } else if typical >= goal.min_ratio {
                        "yes at the median, not in every round"
                    } else {
                        "**no**"
                    };
                    (goal.text, met)
                }
                None => ("—", "—"),
            };
            out.push_str(&format!(
                "| {} | {wasm_label} / {native_label}: {} | {goal} | {met} |\n",
                scenario.name,
                ratio_cell(&ratios)
            ));
        }
    }
    if let Some(floor) = floor_reading(scenarios, results) {
        out.push('\n');
        out.push_str(&floor);
    }
    out
}

/// The "proxy-wasm floor" figures: what any wasm filter, and any wasmesh filter, pays before its
/// own logic runs.
fn floor_reading(scenarios: &[Scenario], results: &[Vec<(String, Series)>]) -> Option<String> {
    let index = scenarios
        .iter()
        .position(|scenario| scenario.name == "proxy-wasm floor")?;
    let series = results.get(index)?;
    let (_, baseline) = series.first()?;
    let kept = |label: &str| {
        series
            .iter()
            .find(|(candidate, _)| candidate.starts_with(label))
            .map(|(_, runs)| ratio_cell(&paired_ratios(runs, baseline)))
    };
    Some(format!(
        "The floor: a proxy-wasm module that does nothing keeps {} of the no-filter throughput, \
         the wasmesh SDK's no-op filter (`benches/noop-filter`) {} (median, min–max over \
         rounds). That part of each wasm filter's cost is not its own logic.\n",
        kept("wasm, no-op module")?,
        kept("wasm, SDK no-op")?,
    ))
}

/// Bytes in MiB.
fn mebibytes(bytes: u64) -> f64 {
    // Exact for any resident set below 2^53 bytes.
    bytes as f64 / (1024.0 * 1024.0)
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let (year, month, day) = wasmesh_sdk::clock::civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{year:04}-{month:02}-{day:02}")
}

/// Replaces this benchmark's section of `path` (up to the next `## ` heading) with `section`,
/// or appends it; creates the file if missing. Reads the file right before writing, since other
/// sections are edited by others.
fn write_section(path: &Path, section: &str) -> Result<(), E2eError> {
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
        Err(source) => {
            return Err(E2eError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let updated = replace_section(&current, section);
    std::fs::write(path, updated).map_err(|source| E2eError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn replace_section(document: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    let start = document
        .match_indices(SECTION_TITLE)
        .map(|(at, _)| at)
        .find(|at| *at == 0 || document[..*at].ends_with('\n'));
    match start {
        Some(start) => {
            let after_title = start + SECTION_TITLE.len();
            let end = document[after_title..]
                .find("\n## ")
                .map_or(document.len(), |offset| after_title + offset + 1);
            let rest = &document[end..];
            let separator = if rest.is_empty() { "" } else { "\n" };
            format!("{}{section}{separator}{rest}", &document[..start])
        }
        None => format!("{}\n\n{section}", document.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_in_place_and_the_rest_kept() {
        let document = "# Benchmarks\n\n## Harness\n\nmine\n\n## Overhead in real Envoy\n\nold\n\n## Later\n\ntheirs\n";
        let updated = replace_section(document, "## Overhead in real Envoy\n\nnew\n");
        assert_eq!(
            updated,
            "# Benchmarks\n\n## Harness\n\nmine\n\n## Overhead in real Envoy\n\nnew\n\n## Later\n\ntheirs\n"
        );
    }

    #[test]
    fn a_missing_section_is_appended() {
        let updated = replace_section(
            "# Benchmarks\n\n## Harness\n\nmine\n",
            "## Overhead in real Envoy\n\nnew",
        );
        assert_eq!(
            updated,
            "# Benchmarks\n\n## Harness\n\nmine\n\n## Overhead in real Envoy\n\nnew\n"
        );
    }

    #[test]
    fn medians_and_dates() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(today().len(), 10);
    }
}
