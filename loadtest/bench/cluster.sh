#!/usr/bin/env bash
# §5: cross-node broadcast. One redis-server, three nodes A B C; subscribers on B and C only,
# publisher (POST /api/broadcast) on A, so every delivery crosses Redis. One cluster per
# invocation, reused across its runs (sessions close between runs); the kernel floor per run,
# and the floor of one broadcast to SUBSCRIBERS idle readers (`loadtest floor --rounds`).
# SUBSCRIBER_NODES picks where the subscribers are ("B C" = split over both; "B" = issue 17's
# goal 3, every subscriber on one node). WORKERS=K spreads the subscribers over K load-generator
# processes (default: one per 8,000), so reading them is not one process's single core.
#
#   loadtest/bench/cluster.sh [OUT=target/bench] [SUBSCRIBERS=6000] ["RATE:RUNS RATE:RUNS ..."="10:3"] [SUBSCRIBER_NODES="B C"]
set -uo pipefail
. "$(dirname "$0")/lib.sh"
OUT=${1:-$ROOT/target/bench}; N=${2:-6000}; PLAN=${3:-"10:3"}; SUBS=${4:-"B C"}
mkdir -p "$OUT"; trap stop_all EXIT; trap 'exit 130' INT TERM
ulimit -n 20000 || exit 1
bench_header "cluster.sh $N subscribers, plan $PLAN"
start_redis || exit 1
R="redis://127.0.0.1:$REDIS_PORT"
start_node A --redis-url "$R" || exit 1; PA=$NODE_PORT; GA=$NODE_PID
start_node B --redis-url "$R" || exit 1; PB=$NODE_PORT; GB=$NODE_PID
start_node C --redis-url "$R" || exit 1; PC=$NODE_PORT; GC=$NODE_PID
echo "redis pid $REDIS_PID port $REDIS_PORT; nodes A:$PA B:$PB C:$PC; subscribers on $SUBS"
SUB_URLS=()
for n in $SUBS; do
  case $n in B) SUB_URLS+=(--url "ws://127.0.0.1:$PB") ;; C) SUB_URLS+=(--url "ws://127.0.0.1:$PC") ;;
    *) echo "SUBSCRIBER_NODES: B and/or C, not $n" >&2; exit 2 ;; esac
done
for step in $PLAN; do rate=${step%:*}; runs=${step#*:}
  for i in $(seq "$runs"); do
    floor "cl-r$rate-$i"
    # the floor of one broadcast to as many idle readers as there are subscribers: what the
    # p99 of a delivery to them is compared with
    FLOOR_N=$N round_floor "cl-r$rate-$i"
    r0=$(cpu_ticks "$REDIS_PID"); t0=$(date +%s.%N); load=$(cut -d' ' -f1-3 /proc/loadavg)
    timeout 120 "$BIN/loadtest" fanout "${SUB_URLS[@]}" \
      --publish-url "http://127.0.0.1:$PA" -n "$N" --topics 1 --rate 100000 --max-inflight 100 \
      ${WORKERS:+--workers "$WORKERS"} \
      --publish-rate "$rate" --duration-secs 10 --max-secs 60 \
      --server-pid "$GA" --server-pid "$GB" --server-pid "$GC" \
      --json "$OUT/cluster-r$rate-$i.json" -q >"$OUT/cluster-r$rate-$i.txt" 2>"$OUT/cluster-r$rate-$i.err"
    rc=$?; r1=$(cpu_ticks "$REDIS_PID"); t1=$(date +%s.%N)
    echo "{\"redis_cpu_secs\": $(( r1 - r0 ))e-2, \"wall_secs\": $(awk "BEGIN{print $t1 - $t0}"), \"load\": \"$load\", \"rc\": $rc}" \
      >"$OUT/cluster-r$rate-$i.redis.json"
    python3 - "$OUT/cluster-r$rate-$i.json" "$OUT/cluster-r$rate-$i.redis.json" "$rate" "$i" \
      "$OUT/round-floor-cl-r$rate-$i.json" <<'PY'
import json, sys
fo = json.load(open(sys.argv[1]))["fanout"]; rd = json.load(open(sys.argv[2])); L = fo["latency"]
rf = json.load(open(sys.argv[5]))["median_round_secs"] * 1000
print(f"rate={sys.argv[3]} run={sys.argv[4]} rc={rd['rc']} joined={sum(fo['joined_by_topic'])} publishes_ok={fo['publishes_ok']} "
      f"deliv/s={fo['deliveries_per_sec']:.0f} p50={L['p50_us']/1000:.1f}ms p99={L['p99_us']/1000:.1f}ms "
      f"(round floor {rf:.1f} ms, p99 ÷ it {L['p99_us']/1000/rf:.2f}) "
      f"loss={fo['loss']} dup={fo['duplicates']} redis_cpu={rd['redis_cpu_secs']:.2f}s over {rd['wall_secs']:.1f}s load={rd['load']}")
PY
    [ "$rc" = 0 ] || exit 1
  done
done
