#!/usr/bin/env python3
"""An example backend for the gateway's backend hooks, Python standard library only.

It plays a Phoenix channel module for `game:*` topics (README "Backend hooks"):

* connect: needs a `user` param; `user=mallory` is refused; the socket id is
  `user_socket:<user>` and the assigns `{"user": <user>}`.
* join: `game:closed` and a payload `{"password": "wrong"}` are refused; otherwise the reply
  is `{"welcome": <user>, "topic": <topic>}` and the assigns gain `"room"`.
* event: `ping` replies `{"pong": <payload>, "user", "room"}`; `shout` broadcasts (sender
  included) and replies ok; `typing` broadcasts from the sender, no reply; `whisper` pushes
  back to the sender only; `seq` replies `{"n", "in_order"}` (was `n` exactly one more than the
  last `seq` of this session and topic?); `slow` waits `payload.ms` then replies; `crash`
  answers HTTP 500, `garbage` answers a body that is not JSON, `bad_shape` JSON outside the
  contract; anything else replies error `{"reason": "unknown event"}`.
* leave: recorded; `GET /leaves` lists what was recorded (tests read it).

With `--secret S` (or BACKEND_SECRET) every request must carry `X-Gateway-Signature`, the hex
HMAC-SHA256 of its body under S; a request without a valid one is answered 401 and not
handled. `GET /stats` counts requests per hook and signature failures.

    python3 gateway/examples/backend.py --port 8000 --secret s3cret

Prints `listening on http://127.0.0.1:PORT` once it accepts connections (`--port 0`: any free
port).
"""
import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
LAST_SEQ = {}
LEAVES = []
STATS = {"connect": 0, "join": 0, "event": 0, "leave": 0, "bad_signature": 0}


def connect(body):
    user = body.get("params", {}).get("user")
    if not user:
        return {"error": {"reason": "user param required"}}
    if user == "mallory":
        return {"error": {"reason": "banned"}}
    return {"id": "user_socket:" + user, "assigns": {"user": user}}


def join(body):
    topic, payload = body["topic"], body.get("payload") or {}
    session = body["session"]
    if topic == "game:closed":
        return {"error": {"reason": "closed"}}
    if isinstance(payload, dict) and payload.get("password") == "wrong":
        return {"error": {"reason": "bad password"}}
    assigns = dict(session.get("assigns") or {})
    assigns["room"] = topic
    return {"ok": {"welcome": assigns.get("user"), "topic": topic}, "assigns": assigns}


def ok(response=None):
    return {"reply": {"status": "ok", "response": response or {}}}


def event(body):
    name, payload, session = body["event"], body.get("payload"), body["session"]
    assigns = session.get("assigns") or {}
    if name == "ping":
        return ok({"pong": payload, "user": assigns.get("user"), "room": assigns.get("room")})
    if name == "shout":
        return dict(ok(), broadcast=[{"event": "shout", "payload": payload}])
    if name == "typing":
        return {"broadcast_from": [{"event": "typing", "payload": payload}]}
    if name == "whisper":
        return {"push": [{"event": "whisper", "payload": payload}]}
    if name == "seq":
        key = (session.get("id"), body["topic"])
        with LOCK:
            last = LAST_SEQ.get(key, 0)
            LAST_SEQ[key] = payload["n"]
        return ok({"n": payload["n"], "in_order": payload["n"] == last + 1})
    if name == "slow":
        time.sleep(payload.get("ms", 0) / 1000)
        return ok({"slept": payload.get("ms", 0)})
    if name == "crash":
        return 500
    if name == "garbage":
        return b"<html>not json</html>"
    if name == "bad_shape":
        return {"reply": {"status": "perhaps"}}
    return {"reply": {"status": "error", "response": {"reason": "unknown event"}}}


def leave(body):
    with LOCK:
        LEAVES.append({"topic": body["topic"], "reason": body["reason"],
                       "id": body["session"].get("id")})
    return {}


HOOKS = {"connect": connect, "join": join, "event": event, "leave": leave}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the gateway pools its connections
    # The head and the body are two writes: without TCP_NODELAY, Nagle holds the body until the
    # gateway's delayed ACK (40 ms per request).
    disable_nagle_algorithm = True
    secret = None

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            if self.path.endswith("/leaves"):
                return self.answer(200, LEAVES)
            if self.path.endswith("/stats"):
                return self.answer(200, STATS)
        self.answer(404, {"error": "not found"})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        hook = self.path.rstrip("/").rsplit("/", 1)[-1]
        if self.secret is not None:
            want = hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
            got = self.headers.get("X-Gateway-Signature", "")
            if not hmac.compare_digest(want, got):
                with LOCK:
                    STATS["bad_signature"] += 1
                return self.answer(401, {"error": "bad signature"})
        if hook not in HOOKS:
            return self.answer(404, {"error": "unknown hook"})
        with LOCK:
            STATS[hook] += 1
        result = HOOKS[hook](json.loads(raw))
        if isinstance(result, int):
            return self.answer(result, {"error": "backend crashed"})
        self.answer(200, result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--secret", default=os.environ.get("BACKEND_SECRET"))
    args = parser.parse_args()
    Handler.secret = args.secret.encode() if args.secret else None
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
