#!/usr/bin/env python3
"""The docker-compose topology as local processes, for machines without Docker.

One private redis-server, N gateway nodes clustered through it, and a round-robin proxy in
front (HAProxy when installed, else the small TCP proxy in this file), all on 127.0.0.1 and
free ports. Standard library only.

    deploy/local/cluster.py run   [options] [-- extra gateway flags]   start, wait for Ctrl-C, stop
    deploy/local/cluster.py start [options] [-- extra gateway flags]   start and return
    deploy/local/cluster.py stop  --state DIR                          stop what `start` started

Options: --nodes N (3), --bin-dir DIR (target/release if it has `gateway`, else target/debug),
--proxy auto|haproxy|python (auto), --state DIR (a new temp dir; logs and pids live there).

`start` prints, one per line, `REDIS_URL=...`, `NODE_URLS=url,url,...`, `PROXY_URL=...`,
`PROXY=haproxy|python` and `STATE=DIR` (the same lines are in DIR/cluster.env), once every
node answers /readyz 200 (it hears itself through Redis) and the proxy answers. `stop` ends
only the processes whose pids it recorded, SIGTERM first (the nodes drain), then SIGKILL.

The proxy balances connections round-robin with no stickiness: WebSocket sessions and
long-poll requests land on any node, the cluster (Redis) carries broadcasts between them.
HAProxy also health-checks /readyz, so a draining or deaf node gets no new sessions.
"""

import argparse
import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
START_TIMEOUT = 20.0


class ClusterError(Exception):
    """A part of the cluster did not come up."""


def free_port():
    """A port that was free a moment ago (for programs that cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout=START_TIMEOUT, proc=None, log=None):
    """Poll `check` until it returns a true value; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = ""
            if log and os.path.exists(log):
                with open(log, errors="replace") as f:
                    tail = "".join(f.readlines()[-20:])
            raise ClusterError(f"{what}: process exited with {proc.returncode}\n{tail}")
        time.sleep(0.05)
    raise ClusterError(f"{what}: not ready after {timeout:.0f} s")


def start_time(pid):
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), so a
    recycled pid is never mistaken for one of ours; None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def redis_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Cluster:
    def __init__(self, state):
        self.state = state
        self.pids = []

    def spawn(self, name, argv):
        log = os.path.join(self.state, f"{name}.log")
        out = open(log, "wb")
        # own process group: a Ctrl-C at the terminal reaches `run`, which stops everything in
        # order, instead of hitting every child at once
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.pids.append(proc.pid)
        with open(os.path.join(self.state, "pids"), "a") as f:
            f.write(f"{proc.pid} {start_time(proc.pid)} {name}\n")
        return proc, log

    def start_redis(self):
        redis = shutil.which("redis-server")
        if not redis:
            raise ClusterError("redis-server not found (bash .ci/setup installs it)")
        for _ in range(5):
            port = free_port()
            proc, log = self.spawn("redis", [redis, "--port", str(port), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no"])
            try:
                wait_until("redis-server", lambda: redis_ping(port), proc=proc, log=log)
                return f"redis://127.0.0.1:{port}/"
            except ClusterError:
                # lost the race for the port: try another
                proc.kill()
                proc.wait()
        raise ClusterError("redis-server did not start")

    def start_node(self, i, gateway, redis_url, extra):
        proc, log = self.spawn(f"node-{i}", [
            gateway, "--port", "0", "--bind", "127.0.0.1", "--redis-url", redis_url,
            "--node-id", f"local-{i}", *extra])

        def listening():
            with open(log, errors="replace") as f:
                m = re.search(r"listening on (http://[0-9.]+:[0-9]+)", f.read())
            return m and m.group(1)

        url = wait_until(f"gateway node {i}", listening, proc=proc, log=log)
        wait_until(f"gateway node {i} /readyz", lambda: http_status(url + "/readyz") == 200,
                   proc=proc, log=log)
        return url

    def start_proxy(self, kind, node_urls):
        backends = [u.removeprefix("http://") for u in node_urls]
        if kind == "haproxy":
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            for _ in range(5):
                port = free_port()
                cfg = os.path.join(self.state, "haproxy.cfg")
                with open(cfg, "w") as f:
                    f.write(haproxy_config(port, backends))
                proc, log = self.spawn("proxy", [haproxy, "-db", "-f", cfg])
                url = f"http://127.0.0.1:{port}"
                try:
                    wait_until("haproxy", lambda: http_status(url + "/readyz") == 200,
                               proc=proc, log=log)
                    return url
                except ClusterError:
                    proc.kill()
                    proc.wait()
            raise ClusterError("haproxy did not start")
        port_file = os.path.join(self.state, "proxy.port")
        proc, log = self.spawn("proxy", [sys.executable, os.path.abspath(__file__), "proxy",
                                         "--port-file", port_file, *backends])

        def port():
            try:
                with open(port_file) as f:
                    return f.read().strip()
            except OSError:
                return None

        url = f"http://127.0.0.1:{wait_until('python proxy', port, proc=proc, log=log)}"
        wait_until("python proxy", lambda: http_status(url + "/readyz") == 200, proc=proc, log=log)
        return url


def haproxy_config(port, backends):
    servers = "\n".join(
        f"    server node-{i + 1} {b} check inter 1s fall 2 rise 1" for i, b in enumerate(backends))
    return f"""# written by deploy/local/cluster.py (same policy as deploy/haproxy/haproxy.cfg)
global
    # a process may hold at most ~20,000 descriptors here; each proxied session takes two
    maxconn 9000

defaults
    mode http
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    # an upgraded WebSocket is a tunnel: the gateway closes idle ones after 60 s itself
    timeout tunnel 1h
    # long-poll GETs are held open by the gateway for a while
    timeout http-request 10s

frontend gateway
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""


# ------------------------------------------------------------------ the fallback proxy

async def proxy_main(port_file, backends):
    """Round-robin TCP proxy: every accepted connection goes to the next backend that accepts."""
    ring = itertools.cycle(backends)

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            try:
                writer.close()
            except OSError:
                pass

    async def handle(client_r, client_w):
        for _ in range(len(backends)):
            host, port = next(ring).rsplit(":", 1)
            try:
                up_r, up_w = await asyncio.open_connection(host, int(port))
                break
            except OSError:
                continue
        else:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, port_file)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------ commands

def default_bin_dir():
    for profile in ("release", "debug"):
        d = os.path.join(ROOT, "target", profile)
        if os.access(os.path.join(d, "gateway"), os.X_OK):
            return d
    return os.path.join(ROOT, "target", "release")


def start(args):
    gateway = os.path.join(args.bin_dir or default_bin_dir(), "gateway")
    if not os.access(gateway, os.X_OK):
        raise ClusterError(f"{gateway} not found: cargo build --release -p gateway (or --bin-dir)")
    kind = args.proxy
    if kind == "auto":
        kind = "haproxy" if (shutil.which("haproxy") or os.access("/usr/sbin/haproxy", os.X_OK)) else "python"
    state = args.state or tempfile.mkdtemp(prefix="gateway-cluster-")
    os.makedirs(state, exist_ok=True)
    cluster = Cluster(state)
    try:
        redis_url = cluster.start_redis()
        extra = [a for a in args.extra if a != "--"]
        nodes = [cluster.start_node(i + 1, gateway, redis_url, extra) for i in range(args.nodes)]
        proxy_url = cluster.start_proxy(kind, nodes)
    except BaseException:
        stop_state(state)
        raise
    lines = [f"REDIS_URL={redis_url}", f"NODE_URLS={','.join(nodes)}",
             f"PROXY_URL={proxy_url}", f"PROXY={kind}", f"STATE={state}"]
    with open(os.path.join(state, "cluster.env"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return state


def stop_state(state, grace=35.0):
    """SIGTERM every recorded process (nodes drain), wait up to `grace` s, then SIGKILL.

    Only pids recorded by `start` whose start time still matches are signalled."""
    path = os.path.join(state, "pids")
    if not os.path.exists(path):
        return
    with open(path) as f:
        procs = [(int(p), int(t)) for p, t, _ in (line.split() for line in f if line.strip())]

    def ours(pid, started):
        return start_time(pid) == started

    # reverse start order: proxy first (no new sessions), then nodes, Redis last
    for pid, started in reversed(procs):
        if ours(pid, started):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        for pid, _ in alive:
            try:
                # reap our own children (when `run` started them); others are reaped by init
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        alive = [(p, t) for p, t in alive if ours(p, t)]
        time.sleep(0.05)
    for pid, started in alive:
        if ours(pid, started):
            os.kill(pid, signal.SIGKILL)
    os.remove(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("start", "run"):
        p = sub.add_parser(name)
        p.add_argument("--nodes", type=int, default=3)
        p.add_argument("--bin-dir")
        p.add_argument("--proxy", choices=["auto", "haproxy", "python"], default="auto")
        p.add_argument("--state")
        p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra gateway flags")
    p = sub.add_parser("stop")
    p.add_argument("--state", required=True)
    p = sub.add_parser("proxy", help="(internal) the fallback round-robin TCP proxy")
    p.add_argument("--port-file", required=True)
    p.add_argument("backends", nargs="+")
    args = parser.parse_args()

    try:
        if args.cmd == "start":
            start(args)
        elif args.cmd == "stop":
            stop_state(args.state)
        elif args.cmd == "proxy":
            asyncio.run(proxy_main(args.port_file, args.backends))
        else:
            state = start(args)
            stopping = []

            def on_signal(signum, _frame):
                stopping.append(signum)

            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            print("cluster running; Ctrl-C stops it", file=sys.stderr, flush=True)
            try:
                while not stopping:
                    signal.pause()
            finally:
                stop_state(state)
    except ClusterError as e:
        print(f"cluster: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
