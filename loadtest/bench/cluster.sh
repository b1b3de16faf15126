#!/usr/bin/env bash
# §5: cross-node broadcast. One redis-server, three nodes A B C; subscribers on B and C only,
# publisher (POST /api/broadcast) on A, so every delivery crosses Redis.
# usage: cluster.sh OUTDIR SUBSCRIBERS "RATE:RUNS RATE:RUNS ..."
set -u
OUT=${1:-/tmp/bench-cluster}; N=${2:-6000}; PLAN=${3:-"10:3 20:1 40:1 80:1"}
mkdir -p "$OUT"; . "$(dirname "$0")/lib.sh"; trap stop_all EXIT
ulimit -n 20000
start_redis || exit 1
R="redis://127.0.0.1:$REDIS_PORT"
start_node A --redis-url "$R" || exit 1; PA=$NODE_PORT
start_node B --redis-url "$R" || exit 1; PB=$NODE_PORT
start_node C --redis-url "$R" || exit 1; PC=$NODE_PORT
echo "redis pid $REDIS_PID port $REDIS_PORT; nodes A:$PA B:$PB C:$PC"
for step in $PLAN; do rate=${step%:*}; runs=${step#*:}
  for i in $(seq "$runs"); do
    r0=$(cpu_ticks "$REDIS_PID"); t0=$(date +%s.%N); load=$(cut -d' ' -f1-3 /proc/loadavg)
    timeout 120 "$BIN/loadtest" fanout --url "ws://127.0.0.1:$PB" --url "ws://127.0.0.1:$PC" \
      --publish-url "http://127.0.0.1:$PA" -n "$N" --topics 1 --rate 100000 --max-inflight 100 \
      --publish-rate "$rate" --duration-secs 10 --max-secs 60 --json "$OUT/fanout-r$rate-$i.json" >"$OUT/fanout-r$rate-$i.txt" 2>"$OUT/fanout-r$rate-$i.err"
    rc=$?; r1=$(cpu_ticks "$REDIS_PID"); t1=$(date +%s.%N)
    python3 - "$OUT/fanout-r$rate-$i.json" "$rate" "$i" "$rc" "$(( r1 - r0 ))" "$t0" "$t1" "$load" <<'PY'
import json,sys
f,rate,i,rc,ticks,t0,t1,load=sys.argv[1:]
r=json.load(open(f)); fo=r["fanout"]; L=fo["latency"]
wall=float(t1)-float(t0)
print(f"rate={rate} run={i} rc={rc} joined={sum(fo['joined_by_topic'])} publishes_ok={fo['publishes_ok']} "
      f"deliv/s={fo['deliveries_per_sec']:.0f} p50={L.get('p50_us',0)/1000:.1f}ms p99={L.get('p99_us',0)/1000:.1f}ms "
      f"loss={fo['loss']} dup={fo['duplicates']} redis_cpu={int(ticks)/100:.2f}s over {wall:.1f}s ({int(ticks)/wall:.0f}%) load={load}")
PY
  done
done
echo "redis cpu total: $(ps -o %cpu,time -p "$REDIS_PID" | tail -1)"
