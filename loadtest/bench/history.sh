#!/usr/bin/env bash
# BENCHMARKS.md §12 (issue 12), with the load generator, from a committed build (release,
# loopback only), each part with the kernel floor of its own run:
#
#   loadtest/bench/history.sh [SECTION=all] [RUNS=3] [OUT=target/bench-history]
#
# SECTION: all | publish | storm | memory
#   publish  one redis-server, node A (publishes, POST /api/broadcast) and node B (subscribers),
#            so every delivery crosses Redis; a topic without history (plain:*) and one with
#            (hist:*, history_size 100) measured in turn in the same run: RUNS repetitions at
#            PUB_RATE/s, then one pass over STEP_RATES to find the highest rate each sustains
#            (node A's gateway_pubsub_dropped_total{reason="publish_queue_full"} read around each).
#   storm    recovery storm: STORM_N sessions on STORM_TOPICS hist:* topics disconnect, miss
#            MISSED broadcasts per topic, rejoin with `since` (loadtest recovery); RUNS runs
#            with the Redis store (one node + redis-server), RUNS with the memory store.
#   memory   MEM_TOPICS hist:* topics x 100 broadcasts (probe payload with a 100-byte pad):
#            gateway RSS delta (memory store; control: the same publishes on plain:* topics) and
#            Redis used_memory delta (Redis store), beside gateway_history_memory_bytes.
# Raw JSON reports and logs stay in OUT. Refuses a checkout with uncommitted changes; BUILD=0
# skips the release build.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
SECTION=${1:-all}
RUNS=${2:-3}
OUT=${3:-$ROOT/target/bench-history}
PUB_SUBS=${PUB_SUBS:-1000}; PUB_TOPICS=${PUB_TOPICS:-100}; PUB_RATE=${PUB_RATE:-1000}
PUB_SECS=${PUB_SECS:-10}; STEP_RATES=${STEP_RATES:-"2000 4000 8000 12000 16000 24000"}; STEP_SECS=${STEP_SECS:-5}
STORM_N=${STORM_N:-10000}; STORM_TOPICS=${STORM_TOPICS:-10}; MISSED=${MISSED:-100}
MEM_TOPICS=${MEM_TOPICS:-10000}; MEM_RATE=${MEM_RATE:-20000}
mkdir -p "$OUT"
trap stop_all EXIT
trap 'exit 130' INT TERM
ulimit -n 20000 || exit 1
bench_header "history.sh $SECTION x$RUNS"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1); redis: $(redis-server --version | cut -d' ' -f3)"
CONFIG=$OUT/channels.toml
cat >"$CONFIG" <<'EOF'
[[channels]]
pattern = "plain:*"
join = "public"

[[channels]]
pattern = "hist:*"
join = "public"
history_size = 100
history_ttl_secs = 300
EOF

metric() { # metric PORT NAME: the sample's value from /metrics (0 when absent)
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1==n{v=$2} END{print v+0}'
}

# fanout_run TAG KIND RATE SECS: subscribers on node B, publishes to node A (globals PA PB GA GB).
fanout_run() {
  local tag=$1 kind=$2 rate=$3 secs=$4 r0 r1 load rc q0 q1
  local qf='gateway_pubsub_dropped_total{reason="publish_queue_full"}'
  r0=$(cpu_ticks "$REDIS_PID"); load=$(cut -d' ' -f1 /proc/loadavg); q0=$(metric "$PA" "$qf")
  timeout 180 "$BIN/loadtest" fanout --url "ws://127.0.0.1:$PB" --publish-url "http://127.0.0.1:$PA" \
    -n "$PUB_SUBS" --topics "$PUB_TOPICS" --topic-prefix "$kind:lt" --rate 100000 --max-inflight 100 \
    --publish-rate "$rate" --duration-secs "$secs" --publishers 8 --drain-secs 5 --max-secs 60 \
    --server-pid "$GA" --server-pid "$GB" --floor-writes-per-sec "$FLOOR" \
    --json "$OUT/$tag.json" -q >"$OUT/$tag.txt" 2>"$OUT/$tag.err"
  rc=$?; r1=$(cpu_ticks "$REDIS_PID"); q1=$(metric "$PA" "$qf")
  echo "{\"redis_cpu_secs\": $(( r1 - r0 ))e-2, \"load\": $load, \"rc\": $rc, \"kind\": \"$kind\", \"rate\": $rate, \"queue_full\": $(( q1 - q0 ))}" >"$OUT/$tag.extra.json"
  python3 - "$OUT/$tag.json" "$OUT/$tag.extra.json" "$tag" <<'PY'
import json, sys
fo = json.load(open(sys.argv[1]))["fanout"]; x = json.load(open(sys.argv[2])); L = fo["latency"]; P = fo["publish_latency"]
print(f"{sys.argv[3]}: {x['kind']} target {x['rate']}/s achieved {fo['publish_rate']:.0f}/s ok {fo['publishes_ok']}/{fo['publishes']} "
      f"deliv/s {fo['deliveries_per_sec']:.0f} e2e p50 {L['p50_us']/1000:.2f} p99 {L['p99_us']/1000:.2f} ms "
      f"api p50 {P['p50_us']/1000:.2f} p99 {P['p99_us']/1000:.2f} ms loss {fo['loss']} dup {fo['duplicates']} "
      f"redis cpu {x['redis_cpu_secs']:.2f} s; node A dropped {x['queue_full']} (publish_queue_full); load {x['load']} rc {x['rc']}")
PY
}

publish() {
  start_redis || exit 1
  local R="redis://127.0.0.1:$REDIS_PORT"
  start_node pubA --redis-url "$R" --config "$CONFIG" || exit 1; PA=$NODE_PORT; GA=$NODE_PID
  start_node pubB --redis-url "$R" --config "$CONFIG" || exit 1; PB=$NODE_PORT; GB=$NODE_PID
  echo "publish: redis pid $REDIS_PID; node A :$PA (publishes) B :$PB ($PUB_SUBS subscribers on $PUB_TOPICS topics)"
  for i in $(seq "$RUNS"); do
    floor "pub-$i"
    # alternate which kind goes first
    local order="plain hist"; [ $((i % 2)) = 0 ] && order="hist plain"
    for kind in $order; do fanout_run "pub-$kind-r$PUB_RATE-$i" "$kind" "$PUB_RATE" "$PUB_SECS"; done
  done
  floor "step"
  for rate in $STEP_RATES; do
    for kind in plain hist; do fanout_run "step-$kind-r$rate" "$kind" "$rate" "$STEP_SECS"; done
  done
  stop_all
}

# storm_run TAG STORE: one fresh node (and redis-server for STORE=redis), one recovery storm.
storm_run() {
  local tag=$1 store=$2 args=() spid=() load
  if [ "$store" = redis ]; then
    start_redis || exit 1
    args=(--redis-url "redis://127.0.0.1:$REDIS_PORT"); spid=(--store-pid "$REDIS_PID")
  fi
  start_node "$tag" --config "$CONFIG" "${args[@]}" || exit 1
  load=$(cut -d' ' -f1 /proc/loadavg)
  timeout 300 "$BIN/loadtest" recovery --url "ws://127.0.0.1:$NODE_PORT" -n "$STORM_N" \
    --topics "$STORM_TOPICS" --topic-prefix hist:lt --missed "$MISSED" --rate 100000 \
    --max-inflight 100 --heartbeat-secs 300 --max-secs 240 --server-pid "$NODE_PID" "${spid[@]}" \
    --json "$OUT/$tag.json" -q >"$OUT/$tag.txt" 2>"$OUT/$tag.err"
  local rc=$?
  echo "{\"load\": $load, \"rc\": $rc, \"store\": \"$store\"}" >"$OUT/$tag.extra.json"
  python3 - "$OUT/$tag.json" "$OUT/$tag.extra.json" "$tag" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1])); r = rep["recovery"]; x = json.load(open(sys.argv[2])); S = r["session_complete"]
f = lambda v: "n/a" if v is None else f"{v:.2f}"
print(f"{sys.argv[3]}: {x['store']} joined {rep['sessions_joined']} rejoined {r['rejoined']} recovered {r['recovered_true']}/{r['rejoined']} "
      f"complete {r['complete']} inexact {r['inexact']} replayed {r['replayed']}/{r['expected_replayed']} missing {r['missing']} extra {r['extra']} "
      f"storm {f(r['storm_secs'])} s ({f(r['from_command_secs'])} s from command) {r['replayed_per_sec']:.0f} replayed/s "
      f"per-session p50 {S['p50_us']/1000:.1f} p99 {S['p99_us']/1000:.1f} ms cpu gateway {f(r['gateway_cpu_secs'])} s store {f(r['store_cpu_secs'])} s "
      f"metric exact +{r['metric_exact']} not_exact +{r['metric_not_exact']} replayed +{r['metric_replayed']} errors {rep['errors_total']} load {x['load']} rc {x['rc']}")
PY
  stop_all
}

storm() {
  for i in $(seq "$RUNS"); do
    floor "storm-$i"
    storm_run "storm-redis-$i" redis
    storm_run "storm-memory-$i" memory
  done
}

redis_used() { redis-cli -p "$REDIS_PORT" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }

# memory_fill TAG STORE KIND: fresh node, MEM_TOPICS topics x 100 publishes, readings before/after.
memory_fill() {
  local tag=$1 store=$2 kind=$3 args=() rss0 rss1 red0=0 red1=0 secs
  if [ "$store" = redis ]; then
    start_redis || exit 1; args=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
  else
    args=(--history-memory-max-bytes 8589934592)
  fi
  start_node "$tag" --config "$CONFIG" "${args[@]}" || exit 1
  sleep 1
  rss0=$(rss_kb "$NODE_PID"); [ "$store" = redis ] && red0=$(redis_used)
  secs=$(python3 -c "print($MEM_TOPICS*100/$MEM_RATE)")
  timeout 600 "$BIN/loadtest" fanout --url "ws://127.0.0.1:$NODE_PORT" -n 1 --topics "$MEM_TOPICS" \
    --topic-prefix "$kind:m" --publish-rate "$MEM_RATE" --duration-secs "$secs" --publishers 8 \
    --payload-bytes 100 --drain-secs 2 --max-secs 500 --json "$OUT/$tag.json" -q >"$OUT/$tag.txt" 2>"$OUT/$tag.err"
  local rc=$?
  sleep 2
  rss1=$(rss_kb "$NODE_PID"); [ "$store" = redis ] && red1=$(redis_used)
  local keys=0 one=0
  if [ "$store" = redis ]; then
    keys=$(redis-cli -p "$REDIS_PORT" dbsize)
    local k   # one topic's keys (entries list + meta hash): MEMORY USAGE summed
    for k in $(redis-cli -p "$REDIS_PORT" --scan --pattern '*hist:m5*' | grep -E 'hist:m5([^0-9]|$)'); do
      one=$(( one + $(redis-cli -p "$REDIS_PORT" memory usage "$k" samples 0) ))
    done
  fi
  local acct; acct=$(metric "$NODE_PORT" gateway_history_memory_bytes)
  python3 - "$OUT/$tag.json" "$tag" "$store" "$kind" "$MEM_TOPICS" "$rss0" "$rss1" "$red0" "$red1" "$acct" "$keys" "$one" "$rc" <<'PY' | tee "$OUT/$tag.line"
import json, sys
tag, store, kind = sys.argv[2:5]; topics, rss0, rss1, red0, red1 = (int(x) for x in sys.argv[5:10])
acct, keys, one, rc = float(sys.argv[10]), sys.argv[11], sys.argv[12], sys.argv[13]
fo = json.load(open(sys.argv[1]))["fanout"]
print(f"{tag}: {store} store, {kind} topics: {fo['publishes_ok']}/{fo['publishes']} publishes ok at {fo['publish_rate']:.0f}/s; "
      f"gateway RSS +{(rss1-rss0)*1024/topics:.0f} B/topic ({rss0} -> {rss1} kB); history_memory_bytes {acct:.0f} = {acct/topics:.0f} B/topic; "
      f"redis used_memory +{(red1-red0)/topics:.0f} B/topic ({red0} -> {red1}), keys {keys}, MEMORY USAGE of one topic's keys {one} B; rc {rc}")
PY
  stop_all
}

memory() {
  memory_fill mem-memory-hist memory hist
  memory_fill mem-memory-plain memory plain
  memory_fill mem-redis-hist redis hist
}

case "$SECTION" in
  all) publish; storm; memory ;;
  publish) publish ;;
  storm) storm ;;
  memory) memory ;;
  *) echo "unknown section $SECTION (all publish storm memory)" >&2; exit 2 ;;
esac
echo "== done $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" <<'PY'
# Medians of the runs in OUT (publish: per kind at PUB_RATE; steps; storm: per store).
import glob, json, os, re, statistics as st, sys
out = sys.argv[1]; med = lambda v: st.median(v) if v else float("nan")
def load(p): return json.load(open(p))
def floor(tag):
    p = f"{out}/floor-{tag}.json"
    return load(p)["writes_per_sec"] if os.path.exists(p) else float("nan")
runs = {}
for p in sorted(glob.glob(f"{out}/pub-*-r*-*.json")):
    m = re.match(r".*/pub-(plain|hist)-r(\d+)-(\d+)\.json$", p)
    if not m: continue
    fo = load(p)["fanout"]; x = load(p[:-5] + ".extra.json")
    runs.setdefault((m[1], m[2]), []).append((fo, x, floor(f"pub-{m[3]}")))
for (kind, rate), rs in sorted(runs.items()):
    g = lambda f: med([f(fo, x, fl) for fo, x, fl in rs])
    print(f"publish median of {len(rs)} ({kind}, {rate}/s): deliv/s {g(lambda f,x,l: f['deliveries_per_sec']):.0f} "
          f"e2e p50 {g(lambda f,x,l: f['latency']['p50_us'])/1000:.2f} p99 {g(lambda f,x,l: f['latency']['p99_us'])/1000:.2f} ms "
          f"api p50 {g(lambda f,x,l: f['publish_latency']['p50_us'])/1000:.3f} p99 {g(lambda f,x,l: f['publish_latency']['p99_us'])/1000:.3f} ms "
          f"loss {max(f['loss'] for f,_,_ in rs)} redis cpu {g(lambda f,x,l: x['redis_cpu_secs']):.2f} s "
          f"gateway cpu/delivery {g(lambda f,x,l: f.get('gateway_cpu_us_per_delivery') or float('nan')):.1f} us floor {g(lambda f,x,l: l):.0f} writes/s")
best = {}
for p in sorted(glob.glob(f"{out}/step-*-r*.json")):
    m = re.match(r".*/step-(plain|hist)-r(\d+)\.json$", p)
    if not m: continue
    fo = load(p)["fanout"]; rate = int(m[2])
    ok = fo["publish_rate"] >= 0.95 * rate and fo["loss"] == 0 and fo["latency"]["p99_us"] < 1_000_000
    x = load(p[:-5] + ".extra.json")
    print(f"step {m[1]} {rate}/s: achieved {fo['publish_rate']:.0f}/s loss {fo['loss']} (publish_queue_full drops on A: {x.get('queue_full', 'n/a')}) p99 {fo['latency']['p99_us']/1000:.1f} ms "
          f"api p99 {fo['publish_latency']['p99_us']/1000:.2f} ms -> {'sustained' if ok else 'NOT sustained'}")
    if ok: best[m[1]] = max(best.get(m[1], 0), rate)
if best: print("highest sustained step (achieved >= 95 %, no loss, p99 < 1 s):", best)
storms = {}
for p in sorted(glob.glob(f"{out}/storm-*-*.json")):
    m = re.match(r".*/storm-(redis|memory)-(\d+)\.json$", p)
    if m: storms.setdefault(m[1], []).append(load(p)["recovery"])
for store, rs in sorted(storms.items()):
    g = lambda k: med([r[k] for r in rs if r[k] is not None])
    print(f"storm median of {len(rs)} ({store}): storm {g('storm_secs'):.3f} s, {g('replayed_per_sec'):.0f} replayed/s, "
          f"per-session p50 {med([r['session_complete']['p50_us'] for r in rs])/1000:.1f} p99 {med([r['session_complete']['p99_us'] for r in rs])/1000:.1f} ms, "
          f"gateway cpu {g('gateway_cpu_secs'):.2f} s, store cpu {g('store_cpu_secs') if store == 'redis' else 0:.2f} s; "
          f"inexact {max(r['inexact'] for r in rs)}, exact-metric deltas {[r['metric_exact'] for r in rs]}")
PY
