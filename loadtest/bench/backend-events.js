// Client events with replies through one gateway, for BENCHMARKS.md §13: S WebSocket sessions
// (raw `ws`, V2 JSON), each joined to its own topic PREFIX<i>, each pushing E events one after
// the other (closed loop: the next push after the reply). Prints one JSON line: events/s over
// the whole run, reply latency p50/p99 (ms), and how many replies were not ok.
//   node backend-events.js PORT PREFIX EVENT S E
"use strict";
const WebSocket = require("ws");

const [port, prefix, event, S, E] = process.argv.slice(2);
const sessions = Number(S), perSession = Number(E);
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const DEADLINE_MS = 300000;

function session(i, latencies) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket/websocket?vsn=2.0.0&user=u${i}`);
    const topic = `${prefix}${i}`;
    let ref = 1, sentAt = 0, done = 0, errors = 0;
    const push = () => { sentAt = now(); ws.send(JSON.stringify(["1", String(++ref), topic, event, {n: done}])); };
    ws.on("open", () => ws.send(JSON.stringify(["1", "1", topic, "phx_join", {}])));
    ws.on("message", data => {
      const [, r, , ev, payload] = JSON.parse(data.toString());
      if (ev !== "phx_reply") return;
      if (r === "1") {
        if (payload.status !== "ok") return reject(new Error(`join ${topic}: ${JSON.stringify(payload)}`));
        return push();
      }
      if (r !== String(ref)) return;
      latencies.push(now() - sentAt);
      if (payload.status !== "ok") errors++;
      if (++done === perSession) { ws.close(); resolve(errors); } else push();
    });
    ws.on("error", reject);
  });
}

(async () => {
  const latencies = [];
  const timer = setTimeout(() => { console.error("deadline"); process.exit(2); }, DEADLINE_MS);
  const start = now();
  const errors = (await Promise.all(Array.from({length: sessions}, (_, i) => session(i, latencies))))
    .reduce((a, b) => a + b, 0);
  const secs = (now() - start) / 1000;
  clearTimeout(timer);
  latencies.sort((a, b) => a - b);
  const q = p => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  console.log(JSON.stringify({prefix, event, sessions, events: latencies.length, secs: +secs.toFixed(2),
    events_per_s: Math.round(latencies.length / secs), p50_ms: +q(0.5).toFixed(2), p99_ms: +q(0.99).toFixed(2), errors}));
})().catch(e => { console.error(e); process.exit(1); });
