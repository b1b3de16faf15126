#!/usr/bin/env bash
# Run every cargo-fuzz target of the gateway for a set time, niced, and fail if any crashes.
#
#   gateway/fuzz/run.sh [seconds-per-target] [target...]     (default 600 s, all targets)
#
# FUZZ_PARALLEL=2 runs two targets at a time (never more: the machine is shared). Corpora grow in
# gateway/fuzz/corpus/<target> (git-ignored) and start from the committed seeds/<target>; logs go
# to gateway/fuzz/logs/<target>.log and crash inputs to artifacts/<target>/. Needs cargo-fuzz:
# the pinned one `.ci/setup` installs in target/test-tools/cargo, else `cargo fuzz` from PATH.
# CI runs `run.sh 5` (every target 5 s on its corpus) to keep the targets building and running.
set -euo pipefail

cd "$(dirname "$0")"
fuzz=(../../target/test-tools/cargo/bin/cargo-fuzz)
[[ -x ${fuzz[0]} ]] || fuzz=(cargo fuzz)
# cargo-fuzz passes nightly-only rustc flags (-Zsanitizer=address, ...); this lets the stable
# toolchain accept them, and changes nothing on a nightly one.
export RUSTC_BOOTSTRAP=1
secs=${1:-600}
shift || true
parallel=${FUZZ_PARALLEL:-1}
if (( parallel < 1 || parallel > 2 )); then
    echo "FUZZ_PARALLEL must be 1 or 2" >&2
    exit 2
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz[@]}" list)
fi

# Debug assertions on (-a): integer overflow panics count as crashes too.
nice -n 19 "${fuzz[@]}" build -a >&2
mkdir -p logs

run_one() {
    local t=$1
    rm -f "logs/$t.status"
    mkdir -p "corpus/$t" "seeds/$t"
    # -timeout: one input taking longer than 10 s is a hang, reported like a crash.
    if nice -n 19 "${fuzz[@]}" run -a "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"logs/$t.log" 2>&1; then
        echo ok >"logs/$t.status"
    else
        echo CRASH >"logs/$t.status"
    fi
}

running=0
for t in "${targets[@]}"; do
    echo "fuzzing $t for ${secs}s" >&2
    run_one "$t" &
    running=$((running + 1))
    if (( running >= parallel )); then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

failed=0
printf '%-16s %8s %14s %10s %12s %s\n' target seconds executions exec/s corpus result
for t in "${targets[@]}"; do
    log="logs/$t.log"
    status=$(cat "logs/$t.status" 2>/dev/null || echo missing)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    printf '%-16s %8s %14s %10s %12s %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "$corpus" "$status"
    if [[ $status != ok ]]; then
        failed=1
        echo "  $t: see gateway/fuzz/$log and gateway/fuzz/artifacts/$t/" >&2
    fi
done
exit "$failed"
