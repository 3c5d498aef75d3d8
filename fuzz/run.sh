#!/bin/sh
# Runs every fuzz target (or the ones named) for a bounded time, single process, with its
# dictionary, then minimizes its corpus in place with `-merge=1` (edge coverage only).
#
#   fuzz/run.sh                 # every target, 60 s each
#   SECONDS_PER_TARGET=120 fuzz/run.sh hostcalls jwt
#
# Crashes land in fuzz/artifacts/<target>/; reproduce with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
set -eu
cd "$(dirname "$0")"
seconds="${SECONDS_PER_TARGET:-60}"
targets="$*"
if [ -z "$targets" ]; then
    targets="$(cargo +nightly fuzz list)"
fi
for target in $targets; do
    dict=""
    if [ -f "dicts/$target.dict" ]; then
        dict="-dict=dicts/$target.dict"
    fi
    mkdir -p "corpus/$target"
    echo "=== $target: ${seconds}s"
    cargo +nightly fuzz run -O "$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=8192 \
        -print_final_stats=1 $dict
    rm -rf "corpus/$target.min"
    mkdir -p "corpus/$target.min"
    # Edge coverage only (no hit counters): the committed corpus stays small, and
    # harness/tests/hostile_fuzz_corpus.rs replays all of it in `cargo test`.
    cargo +nightly fuzz run -O "$target" "corpus/$target.min" "corpus/$target" -- \
        -merge=1 -use_counters=0 $dict
    rm -rf "corpus/$target"
    mv "corpus/$target.min" "corpus/$target"
    echo "=== $target: $(ls "corpus/$target" | wc -l) inputs kept"
done
