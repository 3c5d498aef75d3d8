#!/usr/bin/env bash
# Instructions per request of every benchmark scenario, natively and in wasm, counted by
# callgrind: unlike wall-clock time, instruction counts do not move when other work shares the
# machine, so these ratios are reproducible to a fraction of a percent.
#
#   benches/instructions.sh                  # every scenario (about 30 minutes on 2 cores)
#   benches/instructions.sh 'rbac/*'         # scenarios matching a shell pattern
#   REQUESTS=500 benches/instructions.sh     # requests counted per run (default 200)
#
# Needs valgrind. Builds the `profile` example with symbols (callgrind finds the measured
# function by name); the wasm modules are the usual release builds.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly pattern="${1:-*}"
readonly requests="${REQUESTS:-200}"
readonly profile=target/release/examples/profile

command -v valgrind >/dev/null || {
    echo "valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
}

CARGO_PROFILE_RELEASE_STRIP=false cargo build --quiet --release -p wasmesh-benches --example profile

# Instructions per request of one run: `count native|wasm <scenario>`.
count() {
    local collected
    collected="$(valgrind --tool=callgrind --collect-atstart=no \
        --toggle-collect='*profile*measured*' --callgrind-out-file=/dev/null \
        "${profile}" "$1" "$2" "${requests}" 2>&1 |
        sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p')"
    if [[ -z "${collected}" ]]; then
        echo "callgrind run failed: $1 $2" >&2
        exit 1
    fi
    echo $((collected / requests))
}

mapfile -t scenarios < <("${profile}" list)
readonly noop="${scenarios[0]}"

echo "Instructions per request (callgrind, ${requests} requests after 100 warm-up ones; no-op:"
echo "the same requests through the no-op filter):"
echo
echo "| filter / case | native | wasm (harness) | wasm/native | no-op native / wasm | logic wasm/native |"
echo "|---|---:|---:|---:|---:|---:|"
for scenario in "${scenarios[@]}"; do
    # shellcheck disable=SC2053 # the pattern is a glob on purpose
    [[ "${scenario}" == ${pattern} ]] || continue
    native="$(count native "${scenario}")"
    wasm="$(count wasm "${scenario}")"
    if [[ "${scenario}" == "${noop}" ]]; then
        noop_native="${native}" noop_wasm="${wasm}"
    else
        noop_native="$(count noop-native "${scenario}")"
        noop_wasm="$(count noop-wasm "${scenario}")"
    fi
    awk -v id="${scenario}" -v n="${native}" -v w="${wasm}" -v nn="${noop_native}" \
        -v nw="${noop_wasm}" 'BEGIN {
        logic = (n > nn && w > nw) ? sprintf("%.2f", (w - nw) / (n - nn)) : "—"
        printf "| %s | %d | %d | %.2f | %d / %d | %s |\n", id, n, w, w / n, nn, nw, logic
    }'
done
echo
echo "logic wasm/native: (wasm - no-op wasm) / (native - no-op native), the filter's own work."
