#!/usr/bin/env bash
# §4: failover. Two independent gateway nodes (no Redis) hold SESSIONS sessions between them
# (10 topics, session i on node i mod 2); 2 s after the ramp node 1 gets SIGTERM, drains (closes
# its sessions with 1012 in paced batches) and every closed session re-joins on node 2.
# Recovery = SIGTERM → last re-join. A fresh pair of nodes and the kernel floor per run.
#
#   loadtest/bench/failover.sh [OUT=target/bench] [SESSIONS=10000] [RUNS=3]
set -uo pipefail
. "$(dirname "$0")/lib.sh"
OUT=${1:-$ROOT/target/bench}; N=${2:-10000}; RUNS=${3:-3}
mkdir -p "$OUT"; trap stop_all EXIT; trap 'exit 130' INT TERM
ulimit -n 20000 || exit 1
bench_header "failover.sh $N sessions x$RUNS"
for i in $(seq "$RUNS"); do
  floor "fo-$i"
  start_node "fo1-$i" || exit 1; P1=$NODE_PORT; G1=$NODE_PID
  start_node "fo2-$i" || exit 1; P2=$NODE_PORT; G2=$NODE_PID
  "$BIN/loadtest" failover --url "ws://127.0.0.1:$P1" --url "ws://127.0.0.1:$P2" -n "$N" \
    --rate 100000 --max-inflight 100 --kill-pid "$G1" --kill-after-secs 2 --hold-secs 60 \
    --json "$OUT/failover-$i.json" -q >"$OUT/failover-$i.txt" || exit 1
  # node 1 exits by itself once drained; reap it (stop_pid waits, then forgets it)
  stop_pid "$G1"; stop_pid "$G2"
  python3 - "$OUT/failover-$i.json" "$i" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["failover"]
print(f"failover run {sys.argv[2]}: closed {f['closed_by_server']} re-joined {f['reconnects']} "
      f"at end {f['sessions_after']} recovered {f['recovered']} SIGTERM -> last re-join {f['from_kill_secs']} s")
PY
done
