#!/usr/bin/env bash
# BENCHMARKS.md §13, backend hooks: joins/s and events/s through the example backend
# (gateway/examples/backend.py, signed requests) against the same node without hooks, with the
# latency the hook adds (p50/p99), and idle memory per joined session with and without a
# backend channel. One node config serves both: `room:*` (no hooks; `ping` is a broadcast_from,
# replied ok) and `game:*` (join and events answered by the backend); only the topics differ.
#   loadtest/bench/backend.sh [RUNS] [OUT]
# Needs release binaries (cargo build --release -p gateway -p loadtest), python3, node and
# gateway/tests/js/node_modules (ws). N sessions for joins/memory, ES x EE closed-loop events.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${1:-3}
OUT=${2:-$ROOT/target/bench/backend}
BIN=${BIN:-$ROOT/target/release}
N=${N:-15000}
ES=${ES:-50}
EE=${EE:-1000}
mkdir -p "$OUT"
. "$HERE/lib.sh"
trap stop_all EXIT
export NODE_PATH=$ROOT/gateway/tests/js/node_modules

start_backend() { # sets BPORT
  BPORT=$(free_port)
  python3 "$ROOT/gateway/examples/backend.py" --port "$BPORT" --secret bench >"$OUT/backend.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 50); do grep -qs "listening on" "$OUT/backend.log" && return 0; sleep 0.1; done
  echo "backend did not start" >&2; return 1
}
stop_pid() { kill "$1" 2>/dev/null; for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1"; }

start_backend || exit 1
cat >"$OUT/gateway.toml" <<TOML
[backend]
url = "http://127.0.0.1:$BPORT/phx"
secret = "bench"

[[channels]]
pattern = "room:*"
broadcast_from = ["ping"]

[[channels]]
pattern = "game:*"
join = "backend"
handle_in = "backend"
TOML

echo "commit $(git -C "$ROOT" rev-parse --short HEAD) $(date -u +%FT%TZ) $(nproc) cores load=$(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
  for mode in plain hooks; do
    prefix=room:lt; [ "$mode" = hooks ] && prefix=game:lt
    start_node "cap-$mode-$i" --config "$OUT/gateway.toml" || exit 1
    "$BIN/loadtest" capacity --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --rate 100000 --max-inflight 100 \
      --hold-secs 5 --server-pid "$NODE_PID" --topic-prefix "$prefix" \
      --json "$OUT/capacity-$mode-$i.json" -q >"$OUT/capacity-$mode-$i.txt" || exit 1
    stop_pid "$NODE_PID"
  done
  start_node "events-$i" --config "$OUT/gateway.toml" || exit 1
  timeout 300 node "$HERE/backend-events.js" "$NODE_PORT" room:ev ping "$ES" "$EE" >"$OUT/events-plain-$i.json" || exit 1
  timeout 300 node "$HERE/backend-events.js" "$NODE_PORT" game:ev ping "$ES" "$EE" >"$OUT/events-hooks-$i.json" || exit 1
  stop_pid "$NODE_PID"
  echo "run $i done: load=$(cut -d' ' -f1-3 /proc/loadavg)"
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
med = statistics.median
for mode in ("plain", "hooks"):
    cap = [json.load(open(f"{out}/capacity-{mode}-{i}.json")) for i in range(1, runs + 1)]
    ev = [json.load(open(f"{out}/events-{mode}-{i}.json")) for i in range(1, runs + 1)]
    print(f"{mode}:")
    for c, e in zip(cap, ev):
        k = c["capacity"]
        print(f"  joins: {c['sessions_joined']} joined, {c['connect_join_rate']:.0f}/s, connect+join p50 "
              f"{c['connect_join']['p50_us']/1000:.1f} p99 {c['connect_join']['p99_us']/1000:.1f} ms, "
              f"{k['bytes_per_session_proc']:.0f} B/session | events: {e['events_per_s']}/s p50 {e['p50_ms']} "
              f"p99 {e['p99_ms']} ms, {e['errors']} not ok")
    print(f"  MEDIAN joins {med([c['connect_join_rate'] for c in cap]):.0f}/s, p50 "
          f"{med([c['connect_join']['p50_us'] for c in cap])/1000:.1f} p99 {med([c['connect_join']['p99_us'] for c in cap])/1000:.1f} ms, "
          f"{med([c['capacity']['bytes_per_session_proc'] for c in cap]):.0f} B/session; events "
          f"{med([e['events_per_s'] for e in ev]):.0f}/s p50 {med([e['p50_ms'] for e in ev])} p99 {med([e['p99_ms'] for e in ev])} ms")
PY
