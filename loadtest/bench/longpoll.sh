#!/usr/bin/env bash
# §6: LongPoll. usage: longpoll.sh OUTDIR IDLE_SESSIONS RUNS
set -u
. "$(dirname "$0")/lib.sh"
OUT=${1:-$ROOT/target/bench-lp}; N=${2:-5000}; RUNS=${3:-3}
mkdir -p "$OUT"; trap stop_all EXIT
ulimit -n 20000
bench_header "longpoll.sh $N x$RUNS"
floor "longpoll"
export NODE_PATH="$ROOT/gateway/tests/js/node_modules"
LP="$(dirname "$0")/lp.js"
for i in $(seq "$RUNS"); do   # memory per idle session, fresh node per run
  start_node lp-idle-$i || exit 1
  echo "idle run $i load=$(cut -d' ' -f1-3 /proc/loadavg)"; timeout 120 node "$LP" idle "$NODE_PORT" "$NODE_PID" "$N" 12
  stop_all
done
for i in $(seq "$RUNS"); do   # messages/s through one session
  start_node lp-rate-$i || exit 1
  echo "rate run $i load=$(cut -d' ' -f1-3 /proc/loadavg)"; timeout 60 node "$LP" rate "$NODE_PORT" 10
  stop_all
done
start_redis || exit 1          # owner vs non-owner (two nodes + Redis, shared long-poll secret)
R="redis://127.0.0.1:$REDIS_PORT"; S=bench-secret-$$
start_node lpA --redis-url "$R" --longpoll-secret "$S" || exit 1; PA=$NODE_PORT
start_node lpB --redis-url "$R" --longpoll-secret "$S" || exit 1; PB=$NODE_PORT
for i in $(seq "$RUNS"); do
  echo "xnode run $i load=$(cut -d' ' -f1-3 /proc/loadavg)"; timeout 120 node "$LP" xnode "$PA" "$PB" 500
done
