#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md on this machine (release builds, loopback only).
#   loadtest/bench/bench.sh [RUNS=3] [OUT=target/bench]
# Per run: a fresh gateway for each measurement (so RSS baselines are clean), capacity with
# 15,000 sessions, fan-out 1 topic x 15,000 subscribers at 4 and 8 publishes/s, and the kernel
# floor from calib-loopback.c. Prints medians; raw JSON reports stay in OUT.
set -euo pipefail
trap 'echo "bench.sh: failed at line $LINENO" >&2' ERR
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
OUT=${2:-target/bench}
N=${N:-15000}
RATES=${RATES:-"4 8 16 32"}
mkdir -p "$OUT"
GW=target/release/gateway
LT=target/release/loadtest
CALIB=/work/shared/tools/calib-loopback.c
cargo build --release -p gateway -p loadtest
cc -O2 -o "$OUT/calib" "$CALIB"
echo "gateway at $(git log -1 --format=%h -- gateway) ($(git status --porcelain gateway | wc -l) uncommitted files); $(date -u)"

start_gw() {
  "$GW" --port 0 --bind 127.0.0.1 >"$OUT/gw.log" 2>&1 &
  GP=$!
  for _ in $(seq 100); do grep -q 'listening on' "$OUT/gw.log" && break; sleep 0.1; done
  PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$OUT/gw.log" | sed 's/.*://' || true)
  [ -n "$PORT" ] || { echo "gateway did not start" >&2; kill "$GP"; exit 1; }
}
stop_gw() { kill "$GP"; wait "$GP" 2>/dev/null || true; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for i in $(seq "$RUNS"); do
  start_gw
  "$LT" capacity --url "ws://127.0.0.1:$PORT" -n "$N" --rate 100000 --max-inflight 100 \
    --hold-secs 5 --server-pid "$GP" --json "$OUT/capacity-$i.json" -q >"$OUT/capacity-$i.txt"
  stop_gw
  for R in $RATES; do
    start_gw
    "$LT" fanout --url "ws://127.0.0.1:$PORT" -n "$N" --topics 1 --publish-rate "$R" \
      --duration-secs 10 --json "$OUT/fanout-r$R-$i.json" -q >"$OUT/fanout-r$R-$i.txt"
    stop_gw
  done
  "$OUT/calib" "$N" 5 100 "$(free_port)" >"$OUT/calib-$i.txt" 2>&1
  echo "run $i done: $(uptime)"
done

python3 - "$OUT" "$RUNS" "$RATES" <<'PY'
import json, re, statistics, sys
out, runs, rates = sys.argv[1], int(sys.argv[2]), [int(r) for r in sys.argv[3].split()]
med = lambda xs: statistics.median(xs)
cap = [json.load(open(f"{out}/capacity-{i}.json")) for i in range(1, runs + 1)]
print("capacity runs:")
for c in cap:
    k = c["capacity"]
    print(f"  joined {c['sessions_joined']} B/session proc {k['bytes_per_session_proc']:.0f} metrics {k['bytes_per_session_metrics']:.0f}"
          f" rate {c['connect_join_rate']:.0f}/s p99 {c['connect_join']['p99_us']/1000:.1f} ms cpu {k['cpu_us_per_join']:.0f} us/join")
print(f"  MEDIAN B/session (proc) {med([c['capacity']['bytes_per_session_proc'] for c in cap]):.0f}"
      f", (metrics) {med([c['capacity']['bytes_per_session_metrics'] for c in cap]):.0f}"
      f", connect+join {med([c['connect_join_rate'] for c in cap]):.0f}/s"
      f", cpu {med([c['capacity']['cpu_us_per_join'] for c in cap]):.0f} us/join")
calib = []
for i in range(1, runs + 1):
    m = re.search(r"= (\d+) deliveries/s", open(f"{out}/calib-{i}.txt").read())
    calib.append(float(m.group(1)))
    print("  " + open(f"{out}/calib-{i}.txt").read().strip().replace("\n", "\n  "))
print(f"calib runs: {calib}  MEDIAN {med(calib):.0f} deliveries/s")
for r in rates:
    fs = [json.load(open(f"{out}/fanout-r{r}-{i}.json"))["fanout"] for i in range(1, runs + 1)]
    print(f"fanout {r}/s runs:")
    for f in fs:
        print(f"  {f['deliveries']}/{f['expected']} loss {f['loss']} dup {f['duplicates']} {f['deliveries_per_sec']:.0f}/s"
              f" p50 {f['latency']['p50_us']/1000:.1f} ms p99 {f['latency']['p99_us']/1000:.1f} ms")
    d = med([f["deliveries_per_sec"] for f in fs])
    print(f"  MEDIAN {d:.0f} deliveries/s (ratio to calib {d/med(calib):.2f}), p50 {med([f['latency']['p50_us'] for f in fs])/1000:.1f} ms"
          f", p99 {med([f['latency']['p99_us'] for f in fs])/1000:.1f} ms")
PY
