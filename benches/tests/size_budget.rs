#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Every shipped module stays within its size budget (`wasmesh_benches::size::BUDGETS`): the
//! release build and the `wasm-opt -Oz` output (`wasm-opt` is required: `cargo xtask setup`).
//!
//! Cheap when nothing changed: the wasm builds are the ones every filter's own tests make, and
//! optimized copies are cached by content (a module is optimized again only when it changed).

use wasmesh_benches::size::{budget_for, measure, ModuleSize, BUDGETS, MARGIN_PERCENT};

#[test]
fn every_module_is_within_its_size_budget() {
    // What ships is the wasm-opt output: without wasm-opt half of the budgets would go
    // unchecked, so its absence fails here, naming the install command.
    wasmesh_harness::build::require_wasm_opt().unwrap();
    // Modules are measured in parallel: `wasm-opt -Oz` takes seconds on a 1 MB module.
    let sizes: Vec<ModuleSize> = std::thread::scope(|scope| {
        let handles: Vec<_> = BUDGETS
            .iter()
            .map(|budget| scope.spawn(move || measure(budget.package)))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap().unwrap())
            .collect()
    });

    let mut over = Vec::new();
    for (budget, size) in BUDGETS.iter().zip(&sizes) {
        let kib = |bytes: u64| format!("{:.1} KiB", bytes as f64 / 1024.0);
        eprintln!(
            "{:32} release {:>10} (budget {:>10})   wasm-opt -Oz {:>10} (budget {:>10})",
            budget.package,
            kib(size.release_bytes),
            kib(budget.release_bytes),
            size.optimized_bytes.map(kib).unwrap_or_else(|| "—".into()),
            kib(budget.optimized_bytes),
        );
        if size.release_bytes > budget.release_bytes {
            over.push(format!(
                "{}: release build is {} bytes, budget {} (a budget for today's size would be {})",
                budget.package,
                size.release_bytes,
                budget.release_bytes,
                budget_for(size.release_bytes)
            ));
        }
        if let Some(optimized) = size.optimized_bytes {
            if optimized > budget.optimized_bytes {
                over.push(format!(
                    "{}: wasm-opt -Oz output is {optimized} bytes, budget {} (a budget for today's \
                     size would be {})",
                    budget.package,
                    budget.optimized_bytes,
                    budget_for(optimized)
                ));
            }
        }
    }
    assert!(
        over.is_empty(),
        "modules over their size budget (budgets are today's size + {MARGIN_PERCENT}%: raise one \
         only on purpose, in benches/src/size.rs and BENCHMARKS.md):\n{}",
        over.join("\n")
    );
}

#[test]
fn every_filter_of_the_workspace_has_a_budget() {
    let filters = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../filters")).unwrap();
    for entry in filters.filter_map(|entry| entry.ok()) {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|line| line.strip_prefix("name = "))
            .map(|name| name.trim_matches('"').to_string())
            .unwrap();
        assert!(
            BUDGETS.iter().any(|budget| budget.package == name),
            "{name} ships as a wasm module but has no size budget in benches/src/size.rs"
        );
    }
}
