#!/usr/bin/env bash
# Reproduces the headline figures of BENCHMARKS.md §1–5 and §8 on this machine, from a committed
# build (release, loopback only), each with the kernel floor of its own run.
#
#   loadtest/bench/bench.sh [SECTION=all] [RUNS=3] [OUT=target/bench]
#
# SECTION: all | capacity (§1 bytes/session, §2 connect+join) | fanout (§3, RATES publishes/s) |
#          broadcast (one broadcast to N on one node, full delivery ÷ floor, and ÷ the round
#          floor: one write to each of N idle readers, `loadtest floor --rounds`) | heartbeat (N
#          sessions heartbeating every second for HB_HOLD s: CPU per heartbeat of the gateway
#          and of the load generator ÷ the echo floor's, `loadtest floor --echo`, of the same
#          run) | failover (§4) | cluster (§5) | metrics (§8); `all` runs every one of them.
# NODE_ENV="NAME=VALUE ..." is put in every gateway's environment; for `broadcast`,
# BCAST_ENVS="default TOKIO_WORKER_THREADS=1" compares environments run by run (same floor);
# each is also this script's for that broadcast, so "default LT_WORKERS=2" compares the load
# generator's processes (lib.sh one_broadcast).
# Every measurement gets a fresh gateway (so RSS baselines are clean); every run measures the
# floor (`loadtest floor`) next to it, and the summary gives medians of RUNS runs and the medians
# of the same-run ratios to the floor. Raw JSON reports and logs stay in OUT.
# Refuses a checkout with uncommitted changes; BUILD=0 skips the release build.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
SECTION=${1:-all}
RUNS=${2:-3}
OUT=${3:-$ROOT/target/bench}
N=${N:-15000}
RATES=${RATES:-"4 8 16 32"}
mkdir -p "$OUT"
trap stop_all EXIT
trap 'exit 130' INT TERM
ulimit -n 20000 || exit 1
bench_header "bench.sh $SECTION x$RUNS"

capacity() { # §1, §2
  for i in $(seq "$RUNS"); do
    floor "cap-$i"
    start_node "cap-$i" || exit 1
    "$BIN/loadtest" capacity --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --rate 100000 --max-inflight 100 \
      --hold-secs 5 --server-pid "$NODE_PID" --json "$OUT/capacity-$i.json" -q >"$OUT/capacity-$i.txt" || exit 1
    stop_pid "$NODE_PID"
  done
}

fanout_rates() { # §3
  for i in $(seq "$RUNS"); do
    floor "fan-$i"
    for R in $RATES; do
      start_node "fan-r$R-$i" || exit 1
      "$BIN/loadtest" fanout --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --topics 1 --rate 100000 \
        --max-inflight 100 --publish-rate "$R" --duration-secs 10 --server-pid "$NODE_PID" \
        --json "$OUT/fanout-r$R-$i.json" -q >"$OUT/fanout-r$R-$i.txt" || exit 1
      stop_pid "$NODE_PID"
    done
  done
}

broadcast() { # one broadcast to N subscribers of one node (issue 17, goal 2)
  # BCAST_ENVS="default TOKIO_WORKER_THREADS=1": each run measures every gateway environment
  # in turn after one floor (files TAG-bcast-i.json, TAG = the environment with = and , as -).
  local envs=${BCAST_ENVS:-} e pre
  for i in $(seq "$RUNS"); do
    floor "bcast-$i"
    round_floor "bcast-$i"
    for e in ${envs:-default}; do
      pre=""; [ -n "$envs" ] && pre="$(echo "$e" | tr '=,' '--')-"
      [ -n "$pre" ] && cp "$OUT/floor-bcast-$i.json" "$OUT/floor-${pre}bcast-$i.json" \
        && cp "$OUT/round-floor-bcast-$i.json" "$OUT/round-floor-${pre}bcast-$i.json"
      local ne=""; [ "$e" = default ] || ne=${e//,/ }
      NODE_ENV=$ne start_node "${pre}bcast-$i" || exit 1
      # shellcheck disable=SC2086 # NAME=VALUE words on purpose
      ( [ -z "$ne" ] || export $ne; one_broadcast "${pre}bcast-$i" ) || exit 1
      stop_pid "$NODE_PID"
    done
  done
  for e in $envs; do
    echo "=== gateway environment $e"
    python3 "$ROOT/loadtest/bench/summarize.py" "$OUT" "$(echo "$e" | tr '=,' '--')-"
  done
}

heartbeat() { # what one heartbeat costs each side, against the echo floor of the same run
  for i in $(seq "$RUNS"); do
    echo_floor "hb-$i"
    start_node "hb-$i" || exit 1
    "$BIN/loadtest" capacity --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --rate 100000 --max-inflight 100 \
      --hold-secs "${HB_HOLD:-20}" --heartbeat-secs 1 --server-pid "$NODE_PID" \
      --json "$OUT/heartbeat-$i.json" -q >"$OUT/heartbeat-$i.txt" || exit 1
    stop_pid "$NODE_PID"
  done
}

metrics_cost() { # §8: per-message metrics on vs off, alternating
  for i in $(seq "$RUNS"); do
    floor "mc-$i"
    for mode in on off; do
      flag=(); [ "$mode" = off ] && flag=(--no-message-metrics)
      start_node "mc-$mode-$i" "${flag[@]}" || exit 1
      "$BIN/loadtest" fanout --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --topics 1 --rate 100000 \
        --max-inflight 100 --publish-rate 48 --duration-secs 10 --max-secs 90 --server-pid "$NODE_PID" \
        --json "$OUT/mc-$mode-$i.json" -q >"$OUT/mc-$mode-$i.txt" || exit 1
      stop_pid "$NODE_PID"
    done
  done
}

case "$SECTION" in
  all) capacity; fanout_rates; broadcast; heartbeat
       BUILD=0 bash "$ROOT/loadtest/bench/failover.sh" "$OUT" 10000 "$RUNS" || exit 1
       BUILD=0 bash "$ROOT/loadtest/bench/cluster.sh" "$OUT" 6000 "10:$RUNS" || exit 1
       metrics_cost ;;
  capacity) capacity ;;
  fanout) fanout_rates ;;
  broadcast) broadcast ;;
  heartbeat) heartbeat ;;
  failover) BUILD=0 bash "$ROOT/loadtest/bench/failover.sh" "$OUT" 10000 "$RUNS" || exit 1 ;;
  cluster) BUILD=0 bash "$ROOT/loadtest/bench/cluster.sh" "$OUT" 6000 "10:$RUNS" || exit 1 ;;
  metrics) metrics_cost ;;
  *) echo "unknown section $SECTION (all capacity fanout broadcast heartbeat failover cluster metrics)" >&2; exit 2 ;;
esac
echo "== done $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$ROOT/loadtest/bench/summarize.py" "$OUT"
