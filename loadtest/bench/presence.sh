#!/usr/bin/env bash
# §7: Presence. usage: presence.sh OUTDIR MEMBERS RUNS
# fresh node per run; demo channel (presence on, keyed by `user`) vs a config without presence.
set -u
. "$(dirname "$0")/lib.sh"
OUT=${1:-$ROOT/target/bench-pres}; N=${2:-10000}; RUNS=${3:-3}
mkdir -p "$OUT"; trap stop_all EXIT
ulimit -n 20000
bench_header "presence.sh $N x$RUNS"
floor "presence"
export NODE_PATH="$ROOT/gateway/tests/js/node_modules"
PJ="$(dirname "$0")/presence.js"
printf '[[channels]]\npattern = "room:*"\nbroadcast = ["new_msg"]\n' >"$OUT/no-presence.toml"
for i in $(seq "$RUNS"); do
  start_node pres-$i || exit 1
  echo "presence run $i load=$(cut -d' ' -f1-3 /proc/loadavg)"; timeout 200 node "$PJ" "$NODE_PORT" "$NODE_PID" "$N" room:pres 3
  stop_all
  start_node nopres-$i --config "$OUT/no-presence.toml" || exit 1
  echo "no-presence run $i load=$(cut -d' ' -f1-3 /proc/loadavg)"; timeout 200 node "$PJ" "$NODE_PORT" "$NODE_PID" "$N" room:pres 0
  stop_all
done
