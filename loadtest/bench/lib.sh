# Helpers for the bench scripts, sourced by each: the repository (found from this file's own
# location), the committed-build check, release binaries, the kernel floor of the run, free
# ports, a private redis-server and gateway nodes (every process tracked by PID).
#
# Figures must come from a committed build: bench_header refuses a checkout with uncommitted
# changes and prints the commit, the machine and the floor, so every log says what it measured.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
FLOOR_N=${FLOOR_N:-15000}      # floor: loopback connections written to in turn
FLOOR_SECS=${FLOOR_SECS:-5}    # floor: seconds of writing
PIDS=()
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# require_clean: refuse to measure a checkout that is not exactly a commit.
require_clean() {
  local dirty; dirty=$(git -C "$ROOT" status --porcelain --untracked-files=normal)
  if [ -n "$dirty" ]; then
    echo "refusing to benchmark: uncommitted changes in $ROOT (figures must come from a committed build):" >&2
    echo "$dirty" | head -20 >&2
    exit 3
  fi
}

# build_release: release gateway + loadtest from this checkout (BUILD=0 skips; then BIN must
# already hold binaries of the printed commit).
build_release() {
  [ "${BUILD:-1}" = 1 ] || return 0
  (cd "$ROOT" && cargo build --release -q -p gateway -p loadtest) || exit 1
}

# bench_header NAME: clean check, build, one line naming commit, date, machine and load.
bench_header() {
  require_clean
  build_release
  echo "== $1: commit $(git -C "$ROOT" rev-parse --short HEAD) ($(git -C "$ROOT" log -1 --format=%cd --date=short)); $(date -u +%FT%TZ);" \
    "$(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr);" \
    "load $(cut -d' ' -f1-3 /proc/loadavg); binaries $BIN"
}

# floor TAG: the kernel floor now (loadtest floor, FLOOR_N connections, FLOOR_SECS s); prints
# its line, writes $OUT/floor-TAG.json and sets FLOOR (writes/s).
floor() {
  "$BIN/loadtest" floor -n "$FLOOR_N" --secs "$FLOOR_SECS" --json "$OUT/floor-$1.json" >"$OUT/floor-$1.txt" \
    || { echo "floor $1 failed" >&2; exit 1; }
  sed "s/^/[$1] /" "$OUT/floor-$1.txt"
  FLOOR=$(python3 -c 'import json,sys;print(round(json.load(open(sys.argv[1]))["writes_per_sec"]))' "$OUT/floor-$1.json")
}

# echo_floor TAG: the kernel floor of a heartbeat now (loadtest floor --echo, FLOOR_N
# connections, FLOOR_SECS s); prints its line, writes $OUT/echo-floor-TAG.json.
echo_floor() {
  "$BIN/loadtest" floor --echo -n "$FLOOR_N" --secs "$FLOOR_SECS" --json "$OUT/echo-floor-$1.json" \
    >"$OUT/echo-floor-$1.txt" || { echo "echo floor $1 failed" >&2; exit 1; }
  sed "s/^/[$1] /" "$OUT/echo-floor-$1.txt"
}

# round_floor TAG: the floor of one broadcast now (loadtest floor --rounds FLOOR_ROUNDS: one
# write to each of FLOOR_N idle readers per round, first write to last byte); prints its line,
# writes $OUT/round-floor-TAG.json.
round_floor() {
  "$BIN/loadtest" floor --rounds "${FLOOR_ROUNDS:-5}" -n "$FLOOR_N" --json "$OUT/round-floor-$1.json" \
    >"$OUT/round-floor-$1.txt" || { echo "round floor $1 failed" >&2; exit 1; }
  sed "s/^/[$1] /" "$OUT/round-floor-$1.txt"
}

# one_broadcast TAG: after a 2 s hold of N joined subscribers of one topic on the node at
# NODE_PORT (pid NODE_PID), one broadcast, timed against the run's FLOOR (issue 17 goal 2);
# writes $OUT/TAG.json and $OUT/TAG.txt. LT_WORKERS=K load-generator processes read the N
# sessions; one by default, as the floor has one reader: one busy reader is woken less often
# than two that each wait for half the frames, and costs ≈24 % less CPU per delivery (BENCHMARKS
# §9, "One load-generator process"). N must stay under the 20,000 descriptors of one process.
one_broadcast() {
  "$BIN/loadtest" fanout --url "ws://127.0.0.1:$NODE_PORT" -n "$N" --topics 1 --rate 100000 \
    --workers "${LT_WORKERS:-1}" \
    --max-inflight 100 --hold-secs 2 --heartbeat-secs 300 --publish-rate 1 --duration-secs 1 \
    --server-pid "$NODE_PID" --floor-writes-per-sec "$FLOOR" \
    --json "$OUT/$1.json" -q >"$OUT/$1.txt"
}

start_redis() { # sets REDIS_PORT REDIS_PID
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis did not start" >&2; return 1
}
# start_node NAME args... ; sets NODE_PORT NODE_PID. GATEWAY = the binary (default
# $BIN/gateway); NODE_ENV = NAME=VALUE words for its environment (`env` execs it: same pid).
start_node() {
  local name=$1; shift
  # shellcheck disable=SC2086 # NODE_ENV is a list of words on purpose
  env ${NODE_ENV:-} "${GATEWAY:-$BIN/gateway}" --port 0 --bind 127.0.0.1 "$@" >"$OUT/$name.log" 2>&1 &
  NODE_PID=$!; PIDS+=("$NODE_PID")
  NODE_PORT=
  for _ in $(seq 100); do
    NODE_PORT=$(grep -so 'listening on http://[0-9.]*:[0-9]*' "$OUT/$name.log" | head -1 | sed 's/.*://')
    [ -n "$NODE_PORT" ] && break; sleep 0.1
  done
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NODE_PORT/readyz")" = 200 ] && return 0; sleep 0.1
  done
  echo "node $name not ready" >&2; return 1
}
stop_pid() { # stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL; forgets it
  local p=$1 keep=() q
  kill "$p" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null
  for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done; PIDS=("${keep[@]}")
}
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; for p in "${PIDS[@]}"; do
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null; done; PIDS=(); }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }   # utime+stime, clock ticks (100/s)
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
