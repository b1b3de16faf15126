#!/usr/bin/env bash
# §9: one million joined WebSocket sessions held at once on this one machine, then one broadcast
# reaching all of them.
#
#   loadtest/bench/million.sh [SESSIONS=1000000] [OUT=target/bench-million]
#
# Starts a private redis-server and ceil(SESSIONS / PER_NODE) gateway nodes clustered through it
# (each its own process and port: a process may hold < 20,000 fds here), then one `loadtest
# fanout` whose workers (PER_WORKER sessions each) connect from SOURCES loopback addresses
# 127.0.0.2.. . Every session joins the one topic `room:m0`; after HOLD seconds the memory of both
# sides is read and ONE broadcast is posted to node 0's POST /api/broadcast; the report gives the
# time until the last session received it, and how many did not. A sampler logs load, memory and
# socket counts every 5 s to OUT/samples.tsv and stops the run (by PID) if MemAvailable falls
# under MIN_AVAIL_MB, so the machine's other users are never pushed into the OOM killer.
# Every process started here is stopped by PID on exit. Before the nodes start it measures the
# kernel floor (`loadtest floor`, 15,000 connections) and the echo floor of a heartbeat
# (`loadtest floor --echo`); the report gives the full delivery as a
# ratio to SESSIONS ÷ floor writes/s, and the CPU per delivery of the gateways and of the load
# generator separately (/proc/<pid>/stat, first publish → end of the drain). Refuses a checkout
# with uncommitted changes (figures must come from a committed build).
set -u
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1
N=${1:-1000000}
OUT=${2:-$ROOT/target/bench-million}
PER_NODE=${PER_NODE:-19000}      # sessions per gateway node (fd cap 20,000 per process)
PER_WORKER=${PER_WORKER:-19000}  # sessions per loadtest worker process (same cap)
SOURCES=${SOURCES:-100}          # source addresses 127.0.0.2..(SOURCES+1)
RATE=${RATE:-20000}              # session starts/s over all workers (the ramp's ceiling)
INFLIGHT=${INFLIGHT:-1060}       # connects+joins in flight over all workers
HB=${HB:-300}                    # client heartbeat interval, s
IDLE=${IDLE:-900}                # gateway --idle-timeout-secs (must exceed HB)
HOLD=${HOLD:-30}                 # hold before the memory reading and the broadcast, s
MIN_AVAIL_MB=${MIN_AVAIL_MB:-1500}
CONNTRACK=${CONNTRACK:-notrack}  # notrack: loopback bypasses connection tracking during the run; keep
EHASH=${EHASH:-2097152}          # TCP established-hash buckets of the run's network namespace; 0 = host's
BUILD=${BUILD:-1}
mkdir -p "$OUT"
require_clean
# net.ipv4.tcp_mem (pages): the broadcast queues ~1M small frames at once in socket buffers.
# Machine-wide and not visible inside a network namespace, so raised before entering one.
raise_tcp_mem() {
  local m0 m1 m2
  read -r m0 m1 m2 < <(sysctl -n net.ipv4.tcp_mem 2>/dev/null) || return 0
  [ "$m2" -lt 2097152 ] && sysctl -qw net.ipv4.tcp_mem="1048576 1572864 2097152"   # 4/6/8 GiB
  return 0
}

# The kernel finds the socket of every incoming TCP segment in the established hash, sized at
# boot (262,144 buckets here): 2M sockets make chains of 8, and that lookup became the hottest
# symbol of the million broadcast (BENCHMARKS §9). A network namespace created while
# net.ipv4.tcp_child_ehash_entries is set gets its own table of that size, so with EHASH > 0
# the whole run (redis, nodes, load generator, floor) re-runs itself in a fresh namespace with
# EHASH buckets (one socket per bucket at 1M sessions; 16 MiB), its loopback up, and deletes it
# afterwards. The host's setting is restored at once; nothing else changes for other users.
if [ "$EHASH" != 0 ] && [ -z "${MILLION_NETNS:-}" ]; then
  ns="million-$$"
  raise_tcp_mem
  old=$(sysctl -n net.ipv4.tcp_child_ehash_entries) || exit 1
  sysctl -qw net.ipv4.tcp_child_ehash_entries="$EHASH" || exit 1
  ip netns add "$ns"; made=$?
  sysctl -qw net.ipv4.tcp_child_ehash_entries="$old"
  [ "$made" = 0 ] || exit 1
  ip netns exec "$ns" ip link set lo up
  echo "network namespace $ns: $(ip netns exec "$ns" sysctl net.ipv4.tcp_ehash_entries)"
  MILLION_NETNS="$ns" ip netns exec "$ns" bash "$0" "$@"; rc=$?
  ip netns del "$ns"
  exit "$rc"
fi
LT_PID=
SAMPLER_PID=
NOTRACKED=
cleanup() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
  if [ -n "$LT_PID" ] && kill -0 "$LT_PID" 2>/dev/null; then
    local workers; workers=$(pgrep -P "$LT_PID")
    kill "$LT_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$LT_PID" 2>/dev/null || break; sleep 0.2; done
    for w in $LT_PID $workers; do kill -9 "$w" 2>/dev/null; done
  fi
  stop_all
  if [ -n "$NOTRACKED" ]; then
    iptables -t raw -D PREROUTING -i lo -j NOTRACK
    iptables -t raw -D OUTPUT -o lo -j NOTRACK
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- system limits ---------------------------------------------------------------------------
# Raised only; the originals are recorded in OUT/sysctl.txt.
#   fs.file-max          2 sockets per session (client + server) → > 2M open files machine-wide
#   net.netfilter.nf_conntrack_max   conntrack tracks loopback once netfilter's conntrack is loaded (it
#                        is on this machine since 2026-12: 146,991 entries after a 15,000-session
#                        run): one entry per connection, and a full table drops new connections
#   net.ipv4.tcp_mem     pages; the broadcast queues ~1M small frames at once in socket buffers
#   net.core.netdev_max_backlog      loopback packets queue per CPU; 1000 drops bursts
#   net.ipv4.tcp_max_syn_backlog     SYN queue per listener during the ramp
#   vm.max_map_count     many processes with large heaps
# Left as they are: net.ipv4.ip_local_port_range (28,232 ports × SOURCES source addresses is
# ample), net.core.somaxconn (4096 = the gateway's accept backlog), fs.nr_open (the per-process
# cap that binds is the 20,000 hard `ulimit -n`, which is why there are many processes).
declare -A WANT=(
  [fs.file-max]=4194304
  [net.netfilter.nf_conntrack_max]=2500000
  [net.core.netdev_max_backlog]=16384
  [net.ipv4.tcp_max_syn_backlog]=16384
  [vm.max_map_count]=262144
)
{
  echo "# before"
  for k in fs.file-max fs.nr_open net.ipv4.ip_local_port_range net.core.somaxconn \
    net.ipv4.tcp_max_syn_backlog net.netfilter.nf_conntrack_max net.ipv4.tcp_mem \
    net.core.netdev_max_backlog vm.max_map_count net.ipv4.tcp_tw_reuse; do
    sysctl "$k" 2>&1
  done
} >"$OUT/sysctl.txt"
for k in "${!WANT[@]}"; do
  cur=$(sysctl -n "$k" 2>/dev/null) || continue
  [ "$cur" -lt "${WANT[$k]}" ] && sysctl -qw "$k=${WANT[$k]}"
done
raise_tcp_mem
{
  echo "# after"
  for k in fs.file-max net.ipv4.tcp_max_syn_backlog net.netfilter.nf_conntrack_max \
    net.ipv4.tcp_mem net.core.netdev_max_backlog vm.max_map_count; do
    sysctl "$k" 2>&1
  done
} >>"$OUT/sysctl.txt"
# Connection tracking: once netfilter's conntrack is loaded (the Docker engine loads it) every
# loopback packet is looked up in its table, which holds one entry per connection: 2M entries
# here, in 262,144 hash buckets by default, make that lookup the hottest kernel path of the
# broadcast (BENCHMARKS §9). CONNTRACK=notrack exempts loopback for the run (two rules in the raw
# table, removed on exit; loopback is never NATed here: Docker's NAT rules skip 127.0.0.0/8),
# as a dedicated host would; CONNTRACK=keep measures with it. The floor runs after this, so
# it is measured under the same rule.
if [ "$CONNTRACK" = notrack ] && command -v iptables >/dev/null; then
  iptables -t raw -I PREROUTING -i lo -j NOTRACK && iptables -t raw -I OUTPUT -o lo -j NOTRACK \
    && NOTRACKED=1
fi
echo "# conntrack: CONNTRACK=$CONNTRACK, loopback exempted: ${NOTRACKED:-no}" >>"$OUT/sysctl.txt"
ulimit -n 20000 || exit 1

NODES=$(( (N + PER_NODE - 1) / PER_NODE ))
WORKERS=$(( (N + PER_WORKER - 1) / PER_WORKER ))
bench_header "million.sh $N sessions" >"$OUT/run.txt" || exit 1
cat "$OUT/run.txt"
echo "$(date -u +%FT%TZ) sessions $N nodes $NODES workers $WORKERS sources $SOURCES; $(uptime)" | tee -a "$OUT/run.txt"
echo "binaries $BIN/gateway $(date -ur "$BIN/gateway" +%T) $BIN/loadtest $(date -ur "$BIN/loadtest" +%T)" | tee -a "$OUT/run.txt"
grep -E 'MemAvailable|^Slab' /proc/meminfo | tee -a "$OUT/run.txt"
floor million >"$OUT/floor.txt" || exit 1
tee -a "$OUT/run.txt" <"$OUT/floor.txt"
FLOOR=$(python3 -c 'import json,sys;print(round(json.load(open(sys.argv[1]))["writes_per_sec"]))' "$OUT/floor-million.json")
echo_floor million >"$OUT/echo-floor.txt" || exit 1   # what a heartbeat costs each side at least
tee -a "$OUT/run.txt" <"$OUT/echo-floor.txt"

start_redis || exit 1
R="redis://127.0.0.1:$REDIS_PORT"
NODE_PIDS=(); URLS=()
for i in $(seq 0 $((NODES - 1))); do
  start_node "node$i" --redis-url "$R" --idle-timeout-secs "$IDLE" || exit 1
  NODE_PIDS+=("$NODE_PID"); URLS+=(--url "ws://127.0.0.1:$NODE_PORT")
  [ "$i" = 0 ] && P0=$NODE_PORT
done
echo "redis $REDIS_PID :$REDIS_PORT; $NODES nodes up (node0 :$P0); $(uptime)" | tee -a "$OUT/run.txt"
SERVER_PIDS=(); for p in "${NODE_PIDS[@]}"; do SERVER_PIDS+=(--server-pid "$p"); done

rss_sum() { local t=0 r; for p in "$@"; do r=$(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null); t=$((t + ${r:-0})); done; echo "$t"; }
sampler() {
  echo -e "t\tload1\tmem_avail_mb\tslab_mb\tgw_rss_mb\tlg_rss_mb\tredis_rss_mb\ttcp_inuse\ttcp_mem_pages\ttw\tgw_sessions" >"$OUT/samples.tsv"
  local n=0
  while :; do
    local avail lg_pids sessions=""
    avail=$(awk '/MemAvailable/{print int($2/1024)}' /proc/meminfo)
    slab=$(awk '/^Slab:/{print int($2/1024)}' /proc/meminfo)
    lg_pids="$LT_PID $(pgrep -P "$LT_PID" | tr '\n' ' ')"
    if [ $((n % 2)) = 0 ]; then   # every 10 s: the gateways' own session gauges
      sessions=0
      for u in "${URLS[@]}"; do
        [ "$u" = --url ] && continue
        s=$(curl -s --max-time 2 "http://${u#ws://}/metrics" | awk '/^gateway_sessions/{s+=$2} END{print s+0}')
        sessions=$((sessions + ${s:-0}))
      done
    fi
    read -r _ _ inuse _ _ _ tw _ _ _ mem < <(grep '^TCP:' /proc/net/sockstat)
    echo -e "$(date +%s)\t$(cut -d' ' -f1 /proc/loadavg)\t$avail\t$slab\t$(( $(rss_sum "${NODE_PIDS[@]}") / 1024 ))\t$(( $(rss_sum $lg_pids) / 1024 ))\t$(( $(rss_sum "$REDIS_PID") / 1024 ))\t$inuse\t$mem\t$tw\t$sessions" >>"$OUT/samples.tsv"
    if [ "$avail" -lt "$MIN_AVAIL_MB" ]; then
      echo "$(date -u +%T) MemAvailable ${avail} MB < ${MIN_AVAIL_MB} MB: stopping the load generator" | tee -a "$OUT/run.txt" >&2
      kill "$LT_PID"
      return
    fi
    n=$((n + 1)); sleep 5
  done
}

T0=$(date +%s.%N)
"$BIN/loadtest" fanout "${URLS[@]}" --publish-url "http://127.0.0.1:$P0" --publishers 1 \
  -n "$N" --topics 1 --topic-prefix room:m --per-worker "$PER_WORKER" --sources "$SOURCES" \
  --rate "$RATE" --max-inflight "$INFLIGHT" --heartbeat-secs "$HB" --join-timeout-ms 30000 \
  --hold-secs "$HOLD" "${SERVER_PIDS[@]}" --publish-rate 1 --duration-secs 1 --drain-secs 60 \
  --floor-writes-per-sec "$FLOOR" \
  --max-secs 3600 --json "$OUT/million.json" --svg "$OUT/million.svg" \
  >"$OUT/million.txt" 2>"$OUT/million.err" &
LT_PID=$!
sampler & SAMPLER_PID=$!
wait "$LT_PID"; RC=$?
T1=$(date +%s.%N)
LT_PID=
kill "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=
echo "loadtest exit $RC after $(awk "BEGIN{printf \"%.1f\", $T1 - $T0}") s; $(uptime)" | tee -a "$OUT/run.txt"
cat "$OUT/million.txt"
tail -5 "$OUT/million.err"
echo "redis: $(redis-cli -p "$REDIS_PORT" info clients | grep connected_clients) $(ps -o rss=,time= -p "$REDIS_PID")"
[ -f "$OUT/million.json" ] && python3 - "$OUT/million.json" "$OUT/samples.tsv" "$OUT/floor-million.json" \
  "$OUT/echo-floor-million.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); f = r["fanout"]; m = r.get("memory") or {}
fj = json.load(open(sys.argv[3])); ej = json.load(open(sys.argv[4]))
mib = lambda b: f"{b/1048576:,.0f} MiB" if b is not None else "n/a"
print(f"joined {r['sessions_joined']:,} of {r['sessions_requested']:,}, failed {r['sessions_failed']:,}, "
      f"connect+join {r['connect_join_rate']:,.0f}/s over {r['ramp_secs']:.1f} s "
      f"(p50 {r['connect_join']['p50_us']/1000:.1f} ms, p99 {r['connect_join']['p99_us']/1000:.1f} ms)")
print(f"held at broadcast {f['subscribers_at_publish']:,}, after drain {f['subscribers_after']:,}; "
      f"expected {f['expected']:,} received {f['unique']:,} (dup {f['duplicates']}), loss {f['loss']:,}")
fd = f.get("full_delivery_secs")
L = f["latency"]
print(f"one broadcast: full delivery {fd if fd is None else f'{fd:.3f} s'}; per-session latency p50 "
      f"{L['p50_us']/1000:.0f} ms p99 {L['p99_us']/1000:.0f} ms max {L['max_us']/1000:.0f} ms; "
      f"publish round trip {f['publish_latency']['max_us']/1000:.1f} ms")
us = lambda v: "n/a" if v is None else f"{v:.2f} us"
secs = lambda v: "n/a" if v is None else f"{v:.2f} s"
print(f"CPU per delivery: gateways {us(f.get('gateway_cpu_us_per_delivery'))} "
      f"({us(f.get('gateway_sys_cpu_us_per_delivery'))} system), load generator "
      f"{us(f.get('loadgen_cpu_us_per_delivery'))} ({us(f.get('loadgen_sys_cpu_us_per_delivery'))} system) "
      f"(first publish -> end of drain: gateways {secs(f.get('gateway_cpu_secs'))}, load generator "
      f"{secs(f.get('loadgen_cpu_secs'))})")
if fj.get("writes"):
    w = fj["writes"]
    print(f"the floor's CPU per write: writer {fj['writer_cpu_secs'] * 1e6 / w:.2f} us "
          f"({fj.get('writer_sys_cpu_secs', 0) * 1e6 / w:.2f} system), reader {fj['reader_cpu_secs'] * 1e6 / w:.2f} us "
          f"({fj.get('reader_sys_cpu_secs', 0) * 1e6 / w:.2f} system); both {fj.get('both_us_per_write', 0):.2f} us")
fl, fs, ratio = f.get("floor_writes_per_sec"), f.get("floor_secs"), f.get("full_delivery_to_floor")
if fl and fs:
    print(f"kernel floor of this run {fl:,.0f} writes/s: {f['expected']:,} writes take {fs:.2f} s; "
          f"full delivery = {'n/a' if ratio is None else f'{ratio:.2f}x'} that")
s = m.get("sessions") or 0
print(f"memory with {s:,} sessions: gateways {mib(m.get('server_rss_baseline'))} -> {mib(m.get('server_rss_loaded'))} "
      f"({m.get('server_bytes_per_session') or 0:,.0f} B/session), load generator {mib(m.get('loadgen_rss'))} "
      f"({m.get('loadgen_bytes_per_session') or 0:,.0f} B/session)")
h = r.get("hold")
if h and h["heartbeats"]:
    times = lambda a, b: "n/a" if a is None or not b else f"{a / b:.2f}x"
    print(f"hold {h['secs']:.1f} s: {h['heartbeats']:,} heartbeats ({h['heartbeats'] / h['secs']:,.0f}/s); gateways "
          f"{secs(h['gateway_cpu_secs'])} CPU ({secs(h['gateway_sys_cpu_secs'])} system) = "
          f"{us(h['gateway_cpu_us_per_heartbeat'])} per heartbeat, {times(h['gateway_cpu_us_per_heartbeat'], ej['server_us_per_echo'])} "
          f"the echo floor's server; load generator {secs(h['loadgen_cpu_secs'])} ({secs(h['loadgen_sys_cpu_secs'])} system) = "
          f"{us(h['loadgen_cpu_us_per_heartbeat'])}, {times(h['loadgen_cpu_us_per_heartbeat'], ej['client_us_per_echo'])} "
          f"the echo floor's client; both sides use {((h['gateway_cpu_secs'] or 0) + (h['loadgen_cpu_secs'] or 0)) / h['secs']:.2f} "
          f"cores for the held sessions")
print(f"errors {r['errors_total']} {r['errors']}; heartbeats {r['heartbeats']:,}")
rows = [l.split("\t") for l in open(sys.argv[2]).read().splitlines()[1:]]
if rows:
    lo = min(int(x[2]) for x in rows)
    print(f"sampler: min MemAvailable {lo:,} MB, first {rows[0][2]} MB; max Slab {max(int(x[3]) for x in rows):,} MB; max load1 {max(float(x[1]) for x in rows)}")
PY
exit "$RC"
