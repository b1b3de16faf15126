#!/usr/bin/env bash
# Where the time of a one-frame broadcast goes (issue 17): one node, N subscribers of one topic,
# BROADCASTS broadcasts one second apart; `perf record -a -g` over the machine while they are
# delivered, `perf stat` (context switches, task clock) of the gateway and of the load generator
# separately, and the kernel floor of the run. GATEWAY_ENV (e.g. "TOKIO_WORKER_THREADS=1") is
# put in the gateway's environment, to compare runtimes; LT_WORKERS (1, as bench.sh broadcast)
# sets the load generator's processes.
#
#   loadtest/bench/profile.sh [N=15000] [OUT=target/bench-profile] [BROADCASTS=5]
#
# Prints the CPU share per command (gateway, loadtest, anything else on the machine) and the
# gateway's hottest symbols; perf.data stays in OUT for `perf report -i OUT/perf.data`.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
N=${1:-15000}; OUT=${2:-$ROOT/target/bench-profile}; B=${3:-5}
GATEWAY_ENV=${GATEWAY_ENV:-}
mkdir -p "$OUT"
LT_PID=
cleanup() { [ -n "$LT_PID" ] && kill "$LT_PID" 2>/dev/null; stop_all; }
trap cleanup EXIT; trap 'exit 130' INT TERM
ulimit -n 20000 || exit 1
bench_header "profile.sh $N subscribers, $B broadcasts, gateway env '${GATEWAY_ENV}'"
floor profile

NODE_ENV=$GATEWAY_ENV start_node profile || exit 1
GP=$NODE_PID
"$BIN/loadtest" fanout --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --topics 1 --rate 100000 \
  --workers "${LT_WORKERS:-1}" --max-inflight 100 --hold-secs 3 --heartbeat-secs 300 --publish-rate 1 --duration-secs "$B" \
  --server-pid "$GP" --floor-writes-per-sec "$FLOOR" --json "$OUT/profile.json" -q >"$OUT/profile.txt" &
LT_PID=$!
# Start recording once every session is joined (the hold gives the recorder time to start).
for _ in $(seq 600); do
  s=$(curl -s "http://127.0.0.1:$NODE_PORT/metrics" | awk '/^gateway_sessions/{s+=$2} END{print s+0}')
  [ "${s:-0}" -ge "$N" ] && break; sleep 0.1
done
LG=$(echo "$LT_PID $(pgrep -P "$LT_PID" | tr '\n' ' ')" | xargs | tr ' ' ',')
D=$((B + 3))
perf stat -e task-clock,context-switches,cpu-migrations -p "$GP" -o "$OUT/stat-gateway.txt" -- sleep "$D" &
S1=$!
perf stat -e task-clock,context-switches,cpu-migrations -p "$LG" -o "$OUT/stat-loadgen.txt" -- sleep "$D" &
S2=$!
perf record -a -g -F 999 -o "$OUT/perf.data" -- sleep "$D" 2>"$OUT/perf-record.log"
wait "$S1" "$S2"
wait "$LT_PID"; RC=$?; LT_PID=
echo "loadtest exit $RC"
cat "$OUT/profile.txt"
for side in gateway loadgen; do
  echo "-- perf stat, $side over ${D} s:"; grep -E 'task-clock|context-switches|cpu-migrations' "$OUT/stat-$side.txt"
done
echo "-- CPU samples by process (whole machine, ${D} s; gateway pid $GP, load generator $LG):"
perf report -i "$OUT/perf.data" --no-children --sort pid --stdio -g none 2>/dev/null | grep -E '^ +[0-9.]+%' | head -12
# The gateway's threads are named tokio-rt-worker, like the load generator's coordinator's: select
# them by process id, and split kernel from user time.
syms() { perf report -i "$OUT/perf.data" --no-children --pid "$1" --sort sym --stdio --percentage relative -g none 2>/dev/null | grep -E '^ +[0-9]'; }
for side in gateway loadgen; do
  p=$GP; [ "$side" = loadgen ] && p=$LG
  syms "$p" | awk -v s="$side" '{v=$1; sub("%","",v); if ($2=="[k]") k+=v; else u+=v} END {printf "-- %s: kernel %.1f %%, user %.1f %% of its samples\n", s, k, u}'
done
echo "-- gateway: hottest symbols (self, % of the gateway's samples):"
syms "$GP" | head -25
exit "$RC"
