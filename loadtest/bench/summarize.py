#!/usr/bin/env python3
"""Summarizes a bench OUT directory (the JSON reports of bench.sh, failover.sh, cluster.sh and
ab.sh): per run, then the median of the runs and the median of the same-run ratios to the kernel
floor (floor-TAG.json written next to each run). Only the sections whose files exist are printed.

    python3 loadtest/bench/summarize.py OUT [PREFIX]

PREFIX (ab.sh: "old-" / "new-") selects reports named PREFIX<name>.json.
"""
import glob
import json
import os
import re
import statistics
import sys

OUT = sys.argv[1]
PRE = sys.argv[2] if len(sys.argv) > 2 else ""


def load(name):
    path = os.path.join(OUT, name)
    return json.load(open(path)) if os.path.exists(path) else None


def floor(tag, kind="floor"):
    """writes/s of run tag's floor; kind "round-floor" for the one-broadcast floor of bench.sh
    broadcast (its median round)."""
    f = load(f"{kind}-{tag}.json")
    return f["writes_per_sec"] if f else None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, spec=",.0f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def runs(pattern):
    """Run numbers i for which OUT/PRE<pattern % i> exists, sorted."""
    rx = re.compile(re.escape(PRE + pattern).replace(r"\{i\}", r"(\d+)") + "$")
    found = []
    for p in glob.glob(os.path.join(OUT, "*.json")):
        m = rx.match(os.path.basename(p))
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def ratio(x, f):
    return x / f if x is not None and f else None


def capacity():
    ids = runs("capacity-{i}.json")
    if not ids:
        return
    print("§1–2 capacity (15,000 joined idle sessions; connect+join, 100 in flight)")
    rows = []
    for i in ids:
        c = load(f"{PRE}capacity-{i}.json")
        k = c["capacity"]
        fl = floor(f"{PRE}cap-{i}")
        rows.append((k["bytes_per_session_proc"], k["bytes_per_session_metrics"], c["connect_join_rate"],
                     c["connect_join"]["p50_us"] / 1000, c["connect_join"]["p99_us"] / 1000,
                     k["cpu_us_per_join"], fl, ratio(c["connect_join_rate"], fl)))
        print(f"  run {i}: joined {c['sessions_joined']} B/session proc {fmt(rows[-1][0])} metrics {fmt(rows[-1][1])}"
              f" | {fmt(rows[-1][2])}/s p50 {rows[-1][3]:.1f} ms p99 {rows[-1][4]:.1f} ms cpu {fmt(rows[-1][5])} us/join"
              f" | floor {fmt(fl)} writes/s, rate/floor {fmt(rows[-1][7], '.3f')}")
    m = [med(col) for col in zip(*rows)]
    print(f"  MEDIAN B/session {fmt(m[0])} (metrics {fmt(m[1])}), connect+join {fmt(m[2])}/s"
          f" (p50 {m[3]:.1f} / p99 {m[4]:.1f} ms), cpu {fmt(m[5])} us/join, floor {fmt(m[6])},"
          f" same-run rate/floor {fmt(m[7], '.3f')}")


def fanout_block(title, name, floor_tag):
    """name and floor_tag are patterns with {i}; prints runs and medians, returns the medians."""
    ids = runs(name)
    if not ids:
        return None
    print(title)
    rows = []
    for i in ids:
        r = load(PRE + name.replace("{i}", str(i)))
        f = r["fanout"]
        fl = floor(PRE + floor_tag.replace("{i}", str(i)))
        L = f["latency"]
        row = dict(dps=f["deliveries_per_sec"], p50=L["p50_us"] / 1000, p99=L["p99_us"] / 1000,
                   loss=f["loss"], dup=f["duplicates"], gw=f.get("gateway_cpu_us_per_delivery"),
                   lg=f.get("loadgen_cpu_us_per_delivery"), floor=fl, ratio=ratio(f["deliveries_per_sec"], fl),
                   full=f.get("full_delivery_secs"), expected=f["expected"])
        # Full delivery against the floor means something for one broadcast, not for a rate.
        if f["publishes_ok"] != 1:
            row["full"] = None
        row["full_ratio"] = (row["full"] / (row["expected"] / fl)) if row["full"] and fl else None
        rfl = floor(PRE + floor_tag.replace("{i}", str(i)), "round-floor")
        row["round_ratio"] = (row["full"] / (row["expected"] / rfl)) if row["full"] and rfl else None
        rows.append(row)
        print(f"  run {i}: {f['unique']}/{f['expected']} loss {f['loss']} dup {f['duplicates']} {row['dps']:,.0f}/s"
              f" p50 {row['p50']:.1f} ms p99 {row['p99']:.1f} ms | cpu/delivery gateway {fmt(row['gw'], '.2f')} us,"
              f" load generator {fmt(row['lg'], '.2f')} us | floor {fmt(fl)} writes/s, deliveries/s ÷ floor"
              f" {fmt(row['ratio'], '.2f')}" + (f" | full delivery {row['full']:.3f} s = {fmt(row['full_ratio'], '.2f')}"
                                               f" × ({row['expected']:,} ÷ floor)" if row["full"] else "")
              + (f", {fmt(row['round_ratio'], '.2f')} × the round floor's" if row["round_ratio"] else ""))
    m = {k: med([r[k] for r in rows]) for k in rows[0]}
    print(f"  MEDIAN {fmt(m['dps'])} deliveries/s (same-run ÷ floor {fmt(m['ratio'], '.2f')}), p50 {m['p50']:.1f} ms,"
          f" p99 {m['p99']:.1f} ms, cpu/delivery gateway {fmt(m['gw'], '.2f')} us, generator {fmt(m['lg'], '.2f')} us,"
          f" floor {fmt(m['floor'])}" + (f", full delivery {m['full']:.3f} s, ÷ floor time {fmt(m['full_ratio'], '.2f')}"
                                         if m["full"] else "")
          + (f", ÷ round floor time {fmt(m['round_ratio'], '.2f')}" if m["round_ratio"] else ""))
    return m


def fanout():
    rates = sorted({int(m.group(1)) for p in glob.glob(os.path.join(OUT, PRE + "fanout-r*-*.json"))
                    if (m := re.search(r"fanout-r(\d+)-\d+\.json$", p))})
    for r in rates:
        fanout_block(f"§3 fan-out 1 topic × 15,000, {r} publishes/s × 10 s", f"fanout-r{r}-{{i}}.json", "fan-{i}")


def heartbeat():
    ids = runs("heartbeat-{i}.json")
    if not ids:
        return
    print("heartbeats: 15,000 sessions, one heartbeat a second each (CPU over the hold ÷ heartbeats sent in it)")
    rows = []
    for i in ids:
        c = load(f"{PRE}heartbeat-{i}.json")
        h = c["hold"]
        e = load(f"{PRE}echo-floor-hb-{i}.json")
        n = max(h["heartbeats"], 1)
        per = lambda x: x * 1e6 / n if x is not None else None
        row = dict(hb=h["heartbeats"], gw=h["gateway_cpu_us_per_heartbeat"], gw_sys=per(h["gateway_sys_cpu_secs"]),
                   lg=h["loadgen_cpu_us_per_heartbeat"], lg_sys=per(h["loadgen_sys_cpu_secs"]),
                   es=e["server_us_per_echo"] if e else None, ec=e["client_us_per_echo"] if e else None,
                   timeouts=c["errors"]["heartbeat_timeout"])
        row["gw_ratio"] = ratio(row["gw"], row["es"])
        row["lg_ratio"] = ratio(row["lg"], row["ec"])
        rows.append(row)
        print(f"  run {i}: {row['hb']:,} heartbeats, {row['timeouts']} timeouts | gateway {fmt(row['gw'], '.2f')} us"
              f" ({fmt(row['gw_sys'], '.2f')} kernel) = {fmt(row['gw_ratio'], '.2f')} × echo floor server"
              f" {fmt(row['es'], '.2f')} us | load generator {fmt(row['lg'], '.2f')} us ({fmt(row['lg_sys'], '.2f')}"
              f" kernel) = {fmt(row['lg_ratio'], '.2f')} × echo floor client {fmt(row['ec'], '.2f')} us")
    m = {k: med([r[k] for r in rows]) for k in rows[0]}
    print(f"  MEDIAN gateway {fmt(m['gw'], '.2f')} us per heartbeat (same-run ÷ echo floor {fmt(m['gw_ratio'], '.2f')}),"
          f" load generator {fmt(m['lg'], '.2f')} us (÷ echo floor {fmt(m['lg_ratio'], '.2f')})")


def failover():
    ids = runs("failover-{i}.json")
    if not ids:
        return
    print("§4 failover (SIGTERM one of two nodes holding 10,000 sessions)")
    rows = []
    for i in ids:
        f = load(f"{PRE}failover-{i}.json")["failover"]
        fl = floor(f"{PRE}fo-{i}")
        rows.append((f["from_kill_secs"], fl))
        print(f"  run {i}: closed {f['closed_by_server']} re-joined {f['reconnects']} at end {f['sessions_after']}"
              f" recovered {f['recovered']}; SIGTERM -> last re-join {fmt(f['from_kill_secs'], '.3f', ' s')}; floor {fmt(fl)}")
    print(f"  MEDIAN SIGTERM -> last re-join {fmt(med([r[0] for r in rows]), '.3f', ' s')}, floor {fmt(med([r[1] for r in rows]))}")


def cluster():
    rates = sorted({int(m.group(1)) for p in glob.glob(os.path.join(OUT, PRE + "cluster-r*-*.json"))
                    if (m := re.search(r"cluster-r(\d+)-\d+\.json$", p))})
    for r in rates:
        m = fanout_block(f"§5 cluster: 6,000 subscribers on B and C, {r} publishes/s to A",
                         f"cluster-r{r}-{{i}}.json", f"cl-r{r}-{{i}}")
        redis = [load(f"{PRE}cluster-r{r}-{i}.redis.json") for i in runs(f"cluster-r{r}-{{i}}.json")]
        print("  redis cpu per run: " + ", ".join(f"{x['redis_cpu_secs']:.2f} s / {x['wall_secs']:.1f} s" for x in redis if x))


def metrics():
    on = fanout_block("§8 per-message metrics ON, 48 publishes/s", "mc-on-{i}.json", "mc-{i}")
    off = fanout_block("§8 per-message metrics OFF, 48 publishes/s", "mc-off-{i}.json", "mc-{i}")
    if on and off:
        print(f"  cost of per-message metrics: {100 * (1 - on['dps'] / off['dps']):.2f} % of throughput (medians)")


capacity()
fanout()
fanout_block("one broadcast to 15,000 on one node (full delivery vs the floor's 15,000 writes)", "bcast-{i}.json", "bcast-{i}")
heartbeat()
failover()
cluster()
metrics()
