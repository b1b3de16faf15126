# Helpers for the bench scripts: free ports, a private redis-server, gateway nodes (by PID).
BIN=${BIN:-/work/main/target/release}
PIDS=()
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
start_redis() { # sets REDIS_PORT REDIS_PID
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis did not start" >&2; return 1
}
start_node() { # start_node NAME args... ; sets NODE_PORT NODE_PID
  local name=$1; shift
  "$BIN/gateway" --port 0 --bind 127.0.0.1 "$@" >"$OUT/$name.log" 2>&1 &
  NODE_PID=$!; PIDS+=("$NODE_PID")
  for _ in $(seq 100); do
    NODE_PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$OUT/$name.log" | head -1 | sed 's/.*://')
    [ -n "$NODE_PORT" ] && break; sleep 0.1
  done
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NODE_PORT/readyz")" = 200 ] && return 0; sleep 0.1
  done
  echo "node $name not ready" >&2; return 1
}
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; for p in "${PIDS[@]}"; do
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null; done; PIDS=(); }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }   # utime+stime, clock ticks (100/s)
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
