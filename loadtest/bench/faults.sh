#!/usr/bin/env bash
# §11: the long fault suite and the reconnect storm. Runs gateway/tests/faults/ (the short
# version runs in `cargo test --workspace`) in release with more clients and longer faults:
#   * every fault test with FAULTS_CLIENTS clients per node, Redis paused FAULTS_PAUSE_MS,
#     cut off (network namespace black hole) FAULTS_CUT_SECS and killed FAULTS_KILL_SECS;
#   * the reconnect storm: STORM sessions on node A, A SIGKILLed, every session reconnects to
#     B or C (phoenix.js retry schedule); RUNS runs with the node defaults, then, when the
#     binary has admission flags, RUNS runs with admission limits on B and C (clients spread
#     over 16 source addresses so the per-IP limit sees 16 clients).
# Every test asserts as in the short suite (no panic, no session lost, loss only where counted,
# no leak after the storm); their FAULT/STORM lines are collected in OUT/summary.txt.
# Needs root (ip netns) and redis-server; run alone: it measures timings on 2 cores.
# usage: faults.sh [OUTDIR] [STORM_SESSIONS] [RUNS]
set -u
. "$(dirname "$0")/lib.sh"
OUT=${1:-$ROOT/target/bench-faults}; STORM=${2:-15000}; RUNS=${3:-3}
mkdir -p "$OUT"; cd "$ROOT" || exit 1
ulimit -n 20000   # each storm client is a socket in the test process; nodes raise their own
FAILED=0

run() { # run NAME [ENV=VALUE ...] -- cargo test filter args
  local name=$1; shift
  local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  echo "== $name: ${envs[*]} $*"
  env "${envs[@]}" cargo test -q --release -p gateway --test faults -- --nocapture --test-threads=1 "$@" \
    >"$OUT/$name.log" 2>&1
  local rc=$?
  # (-q prints a dot per test on the same line as the test's own output)
  grep -oE '(FAULT|STORM) .*|test result: .*' "$OUT/$name.log" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || { echo "!! $name failed (rc $rc), see $OUT/$name.log"; FAILED=1; }
}

: >"$OUT/summary.txt"
bench_header "faults.sh $STORM x$RUNS" >>"$OUT/summary.txt" || exit 1
floor faults >>"$OUT/summary.txt" || exit 1
cat "$OUT/summary.txt"
cargo test -q --release -p gateway --test faults --no-run 2>&1 | tail -1

# 1. Every fault, longer and with more clients (the storm has its own runs below).
run long FAULTS_CLIENTS=50 FAULTS_PAUSE_MS=15000 FAULTS_CUT_SECS=30 FAULTS_KILL_SECS=30 -- --skip reconnect_storm

# 2. The storm with the nodes' defaults.
for i in $(seq "$RUNS"); do
  run "storm-default-$i" FAULTS_STORM_SESSIONS="$STORM" -- --exact reconnect_storm::reconnect_storm_after_a_node_loss_rejoins_everyone_and_leaks_nothing
done

# 3. The storm with admission limits on the survivors, if this binary has them.
ADMISSION="--max-sessions 9000 --connect-rate-per-ip 250"
if "$ROOT/target/release/gateway" --help | grep -q -- '--connect-rate-per-ip'; then
  for i in $(seq "$RUNS"); do
    run "storm-admission-$i" FAULTS_STORM_SESSIONS="$STORM" FAULTS_STORM_SOURCES=16 \
      "FAULTS_STORM_SURVIVOR_ARGS=$ADMISSION" -- --exact reconnect_storm::reconnect_storm_after_a_node_loss_rejoins_everyone_and_leaks_nothing
  done
else
  echo "(no admission flags in this gateway: storm with limits skipped)" | tee -a "$OUT/summary.txt"
fi

# Medians of the storm figures per configuration.
python3 - "$OUT/summary.txt" <<'PY' | tee -a "$OUT/summary.txt"
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    if not line.startswith("STORM "):
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    cfg = "admission" if "max-sessions" in line else "default"
    runs.setdefault(cfg, []).append(kv)
for cfg, rs in runs.items():
    med = lambda k: statistics.median(float(r[k]) for r in rs)
    print(f"storm {cfg}: {len(rs)} runs of {rs[0]['sessions']} sessions; median: all re-joined "
          f"{med('killed_to_all_rejoined_ms'):.0f} ms after the kill, connect+join p50 "
          f"{med('connect_p50_ms'):.1f} ms, p99 {med('connect_p99_ms'):.1f} ms, max "
          f"{med('connect_max_ms'):.1f} ms; per-session loss-to-rejoin p99 "
          f"{med('rejoin_p99_ms'):.1f} ms; failed attempts {med('failed_attempts'):.0f}; "
          f"sessions lost {max(int(r['lost']) for r in rs)}")
PY
exit $FAILED
