// Presence measurements (BENCHMARKS.md §7): N WebSocket sessions join one topic with
// {"user":"u<i>"} (the demo channel keys presence by `user`), then NEW joiners time
// join reply -> presence_state and record its size. Loopback only; bounded by count and time.
//   node presence.js PORT PID N [TOPIC] [JOINERS]
"use strict";
const WebSocket = require("ws");
const fs = require("fs");
const [port, pid, n, topic = "room:pres", joiners = 3] = process.argv.slice(2);
const N = +n;
const now = () => Number(process.hrtime.bigint()) / 1e6;
const rss = () => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))[1]) * 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const url = `ws://127.0.0.1:${port}/socket/websocket?vsn=2.0.0`;
setTimeout(() => { console.error("presence.js: global time limit"); process.exit(3); }, 300_000).unref();

let bytesIn = 0, msgsIn = 0, closed = 0;
const closeCodes = {};
const cpuTicks = () => { const f = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" "); return +f[11] + +f[12]; };
const socks = [];
function joinOne(i, onState) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { localAddress: `127.0.0.${2 + (i % 8)}`, perMessageDeflate: false });
    const t = {};
    ws.on("open", () => {
      t.sent = now();
      ws.send(JSON.stringify(["1", "1", topic, "phx_join", { user: `u${i}` }]));
      // heartbeat like phoenix.js (30 s) so the 60 s idle timeout never closes a member
      let hb = 0;
      const timer = setInterval(() => { if (ws.readyState === 1 && hb < 100) ws.send(`[null,"h${hb++}","phoenix","heartbeat",{}]`); }, 20000);
      timer.unref();
      ws.on("close", () => clearInterval(timer));
    });
    ws.on("message", (data) => {
      msgsIn++; bytesIn += data.length;
      if (!t.reply && data.length > 8 && data.toString("latin1", 0, 9) === '["1","1",') {
        t.reply = now();
        if (!data.includes('"ok"')) return reject(new Error("join refused " + data));
        if (!onState) resolve(ws);
      } else if (onState && !t.state && data.includes('"presence_state"')) {
        t.state = now(); onState(t, data.length); resolve(ws);
      }
    });
    ws.on("close", (code) => { closed++; closeCodes[code] = (closeCodes[code] || 0) + 1; });
    ws.on("error", reject);
    socks.push(ws);
  });
}

(async () => {
  const before = rss();
  const cpu0 = cpuTicks(), me0 = process.cpuUsage();
  const t0 = now();
  let next = 0, joined = 0, errors = 0;
  await new Promise((done) => {
    let inflight = 0;
    const pump = () => {
      if (next >= N && inflight === 0) return done();
      while (inflight < 100 && next < N) {
        const i = next++; inflight++;
        joinOne(i).then(() => joined++, () => errors++).finally(() => { inflight--; pump(); });
      }
    };
    pump();
  });
  const rampMs = now() - t0;
  const gwCpuS = (cpuTicks() - cpu0) / 100, me = process.cpuUsage(me0), clientCpuS = (me.user + me.system) / 1e6;
  await sleep(3000); // presence diffs settle
  const after = rss();
  const probes = [];
  for (let k = 0; k < +joiners; k++) {
    await joinOne(N + k, (t, size) => probes.push({ reply_to_state_ms: +(t.state - t.reply).toFixed(3), join_to_state_ms: +(t.state - t.sent).toFixed(3), presence_state_bytes: size }));
    await sleep(500);
  }
  console.log(JSON.stringify({ n: N, joined, errors, closed, closeCodes, gateway_cpu_s_ramp: gwCpuS, client_cpu_s_ramp: +clientCpuS.toFixed(2), ramp_ms: Math.round(rampMs), joins_per_s: Math.round(joined / (rampMs / 1000)),
    rss_before: before, rss_after: after, bytes_per_session: Math.round((after - before) / joined), client_msgs_in: msgsIn, client_bytes_in: bytesIn, probes }));
  for (const ws of socks) ws.terminate();
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(2); });
