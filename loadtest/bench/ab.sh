#!/usr/bin/env bash
# A/B of two gateway commits in the same run: BENCHMARKS §1–3 (bytes/session, connect+join/s,
# fan-out deliveries/s) measured on OLD and on NEW, interleaved run by run on the same machine
# state (odd runs OLD first, even runs NEW first), with the same load generator (this checkout's `loadtest`, which must be committed) and
# the kernel floor of each run.
#
#   loadtest/bench/ab.sh OLD NEW [RUNS=3] [OUT=target/bench-ab]
#
# Each commit is checked out as a detached git worktree under OUT (removed on exit) and built
# in release into AB_TARGET (default OUT/target; first seeded from this checkout's
# target/release so dependencies are not rebuilt). RATES (default "16 32") are the §3 publish
# rates. BCAST=K (default 0) adds, per run and side, K single broadcasts to N subscribers on a
# fresh node (issue 17 goal 2: full delivery ÷ the run's floor, CPU per delivery of each side);
# a broadcast with loss (e.g. packets dropped by a full conntrack table) has no full delivery and
# is counted, not compared. HBEAT=S (default 0) adds a hold of S seconds of N sessions sending a
# heartbeat every second: the gateway's CPU per heartbeat (read, reply, write).
# Prints each side's medians, then NEW ÷ OLD per figure (median of the same-run ratios).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
[ $# -ge 2 ] || { echo "usage: $0 OLD NEW [RUNS] [OUT]" >&2; exit 2; }
OLD=$(git -C "$ROOT" rev-parse --short "$1") || exit 2
NEW=$(git -C "$ROOT" rev-parse --short "$2") || exit 2
RUNS=${3:-3}; OUT=${4:-$ROOT/target/bench-ab}
N=${N:-15000}; RATES=${RATES-"16 32"}; BCAST=${BCAST:-0}; HBEAT=${HBEAT:-0}
mkdir -p "$OUT"
# Absolute: the old side is built from inside its worktree, where a relative target directory
# would point elsewhere, and the copy below would pick up the seeded build of this checkout
# (every A/B before 2026-12-06 that was given a relative OUT compared NEW with itself).
OUT=$(cd "$OUT" && pwd)
AB_TARGET=${AB_TARGET:-$OUT/target}
mkdir -p "$AB_TARGET" && AB_TARGET=$(cd "$AB_TARGET" && pwd)
WTS=()
cleanup() { stop_all; for w in "${WTS[@]}"; do git -C "$ROOT" worktree remove --force "$w" 2>/dev/null; done; }
trap cleanup EXIT; trap 'exit 130' INT TERM
ulimit -n 20000 || exit 1
bench_header "ab.sh old $OLD vs new $NEW x$RUNS"

if [ ! -d "$AB_TARGET/release" ] && [ -d "$BIN" ]; then
  mkdir -p "$AB_TARGET" && cp -a "$BIN" "$AB_TARGET/release"
fi
HEAD_REV=$(git -C "$ROOT" rev-parse --short HEAD)
for side in old new; do
  rev=$OLD; [ "$side" = new ] && rev=$NEW
  if [ "$rev" = "$HEAD_REV" ]; then   # this clean checkout, already built by bench_header
    mkdir -p "$OUT/$side" && cp "$BIN/gateway" "$OUT/$side/gateway"
    echo "$side: gateway $rev = this checkout's release build"; continue
  fi
  if [ -x "$OUT/$side/gateway" ] && [ "$(cat "$OUT/$side/rev" 2>/dev/null)" = "$rev" ]; then
    echo "$side: gateway $rev built earlier into $OUT/$side"; continue
  fi
  wt="$OUT/src-$side"
  git -C "$ROOT" worktree remove --force "$wt" 2>/dev/null
  git -C "$ROOT" worktree add -q --detach "$wt" "$rev" || exit 1
  WTS+=("$wt")
  (cd "$wt" && CARGO_TARGET_DIR="$AB_TARGET" cargo build --release -q -p gateway) || exit 1
  mkdir -p "$OUT/$side" && cp "$AB_TARGET/release/gateway" "$OUT/$side/gateway" && echo "$rev" >"$OUT/$side/rev"
  echo "$side: gateway $rev built $(date -ur "$OUT/$side/gateway" +%FT%TZ)"
done
if cmp -s "$OUT/old/gateway" "$OUT/new/gateway"; then
  echo "the gateways of $OLD and $NEW are the same binary: nothing to compare" >&2; exit 1
fi

for i in $(seq "$RUNS"); do
  floor "ab-$i"
  order="old new"; [ $((i % 2)) = 0 ] && order="new old"   # neither side always goes first
  for side in $order; do
    for tag in cap fan; do cp "$OUT/floor-ab-$i.json" "$OUT/floor-$side-$tag-$i.json"; done
    GATEWAY="$OUT/$side/gateway" start_node "$side-cap-$i" || exit 1
    "$BIN/loadtest" capacity --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --rate 100000 --max-inflight 100 \
      --hold-secs 5 --server-pid "$NODE_PID" --json "$OUT/$side-capacity-$i.json" -q >"$OUT/$side-capacity-$i.txt" || exit 1
    stop_pid "$NODE_PID"
    for R in $RATES; do
      GATEWAY="$OUT/$side/gateway" start_node "$side-fan-r$R-$i" || exit 1
      "$BIN/loadtest" fanout --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --topics 1 --rate 100000 \
        --max-inflight 100 --publish-rate "$R" --duration-secs 10 --server-pid "$NODE_PID" \
        --json "$OUT/$side-fanout-r$R-$i.json" -q >"$OUT/$side-fanout-r$R-$i.txt" || exit 1
      stop_pid "$NODE_PID"
    done
    if [ "$HBEAT" -gt 0 ]; then
      GATEWAY="$OUT/$side/gateway" start_node "$side-hb-$i" || exit 1
      "$BIN/loadtest" capacity --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --rate 100000 --max-inflight 100 \
        --hold-secs "$HBEAT" --heartbeat-secs 1 --server-pid "$NODE_PID" \
        --json "$OUT/$side-hb-$i.json" -q >"$OUT/$side-hb-$i.txt" || exit 1
      stop_pid "$NODE_PID"
    fi
    for b in $(seq "$BCAST"); do
      GATEWAY="$OUT/$side/gateway" start_node "$side-bcast-$i-$b" || exit 1
      one_broadcast "$side-bcast-$i-$b" || exit 1
      stop_pid "$NODE_PID"
    done
  done
  echo "run $i done; load $(cut -d' ' -f1-3 /proc/loadavg)"
done

for side in old new; do
  rev=$OLD; [ "$side" = new ] && rev=$NEW
  echo "=== $side ($rev)"; python3 "$ROOT/loadtest/bench/summarize.py" "$OUT" "$side-"
done
python3 - "$OUT" "$RUNS" "$RATES" "$BCAST" "$HBEAT" <<'PY'
import json, statistics, sys
out, runs, rates, bcast, hbeat = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4]), int(sys.argv[5])
load = lambda n: json.load(open(f"{out}/{n}"))
def compare(label, get):
    old = [get("old", i) for i in range(1, runs + 1)]
    new = [get("new", i) for i in range(1, runs + 1)]
    ratios = [n / o for o, n in zip(old, new) if o]
    print(f"  {label}: old median {statistics.median(old):,.1f}, new median {statistics.median(new):,.1f};"
          f" new/old same-run ratios {', '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})")
print("=== NEW vs OLD")
compare("bytes/session (/proc)", lambda s, i: load(f"{s}-capacity-{i}.json")["capacity"]["bytes_per_session_proc"])
compare("connect+join/s", lambda s, i: load(f"{s}-capacity-{i}.json")["connect_join_rate"])
for r in rates:
    compare(f"fan-out {r}/s deliveries/s", lambda s, i: load(f"{s}-fanout-r{r}-{i}.json")["fanout"]["deliveries_per_sec"])
    compare(f"fan-out {r}/s p99 ms", lambda s, i: load(f"{s}-fanout-r{r}-{i}.json")["fanout"]["latency"]["p99_us"] / 1000)
if hbeat:
    # each side's CPU over the hold ÷ the heartbeats the sessions sent in it
    hb = lambda s, i: load(f"{s}-hb-{i}.json")
    compare("heartbeats: gateway CPU µs/heartbeat", lambda s, i: hb(s, i)["hold"]["gateway_cpu_us_per_heartbeat"])
    compare("heartbeats: load generator CPU µs/heartbeat", lambda s, i: hb(s, i)["hold"]["loadgen_cpu_us_per_heartbeat"])
    for s in ("old", "new"):
        print(f"  heartbeats: {s} timeouts per run", [hb(s, i)["errors"]["heartbeat_timeout"] for i in range(1, runs + 1)])
if bcast:
    # per run, the median over its K broadcasts that delivered everything
    bc = lambda s, i, b: load(f"{s}-bcast-{i}-{b}.json")["fanout"]
    lossy = [(s, i, b) for s in ("old", "new") for i in range(1, runs + 1) for b in range(1, bcast + 1)
             if bc(s, i, b)["full_delivery_to_floor"] is None]
    print(f"  broadcasts with loss (left out): {len(lossy)} {lossy}")
    per = lambda key: lambda s, i: statistics.median(
        bc(s, i, b)[key] for b in range(1, bcast + 1) if (s, i, b) not in lossy)
    compare("one broadcast: full delivery ÷ floor", per("full_delivery_to_floor"))
    compare("one broadcast: gateway CPU µs/delivery", per("gateway_cpu_us_per_delivery"))
    compare("one broadcast: load generator CPU µs/delivery", per("loadgen_cpu_us_per_delivery"))
PY
