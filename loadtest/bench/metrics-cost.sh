#!/usr/bin/env bash
# Fan-out with per-message metrics on vs off (BENCHMARKS.md §8): 15,000 subscribers, one topic, 48 publishes/s, 10 s,
set -u
cd /work/main
for i in 1 2 3; do
  for mode in on off; do
    flag=""; [ "$mode" = off ] && flag="--no-message-metrics"
    target/release/gateway --port 0 --bind 127.0.0.1 $flag > /tmp/mc-gw.log 2>&1 & GP=$!
    for _ in $(seq 50); do grep -q "listening on" /tmp/mc-gw.log && break; sleep 0.1; done
    PORT=$(grep -o 'listening on http://[0-9.]*:[0-9]*' /tmp/mc-gw.log | grep -o '[0-9]*$')
    target/release/loadtest fanout --url ws://127.0.0.1:$PORT -n 15000 --topics 1 --rate 100000 --max-inflight 100 \
      --publish-rate 48 --duration-secs 10 --max-secs 90 --json /tmp/mc-$mode-$i.json -q > /tmp/mc-$mode-$i.txt 2>&1
    kill $GP; wait $GP 2>/dev/null
    python3 - "$mode" "$i" <<'PY'
import json,sys
m,i=sys.argv[1],sys.argv[2]
r=json.load(open(f"/tmp/mc-{m}-{i}.json"))
f=r.get("fanout",r)
lat=f.get("latency") or {}
print(m,i,"dps=%.0f"%f["deliveries_per_sec"],"loss",f["loss"],"dup",f["duplicates"],"lat",{k:v for k,v in (lat.items() if isinstance(lat,dict) else []) if k in ("p50_ms","p99_ms","p50_us","p99_us","p50","p99")})
PY
  done
done
uptime
