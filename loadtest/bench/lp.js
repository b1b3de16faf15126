// LongPoll measurements against gateway /socket/longpoll with raw HTTP (no phoenix.js), for
// BENCHMARKS.md §6. Loopback only; every loop bounded by count and a deadline.
//   node lp.js idle  PORT PID N HOLD_SECS       -> RSS delta per idle joined long-poll session
//   node lp.js rate  PORT SECS                  -> messages/s through one session (ndjson POSTs)
//   node lp.js xnode OWNER_PORT OTHER_PORT N    -> GET/POST round trips, owner vs non-owner
"use strict";
const http = require("http");
const fs = require("fs");

const HOST = "127.0.0.1";
const agent = new http.Agent({ keepAlive: true, maxSockets: 20000 });
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms

function req(port, method, query, body, localAddress) {
  return new Promise((resolve, reject) => {
    const headers = body ? { "content-type": "application/x-ndjson", "content-length": Buffer.byteLength(body) } : {};
    const r = http.request({ host: HOST, port, method, path: "/socket/longpoll?vsn=2.0.0" + query, headers, agent, localAddress, timeout: 30000 }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        try { resolve(JSON.parse(Buffer.concat(chunks).toString())); } catch (e) { reject(e); }
      });
    });
    r.on("error", reject);
    r.on("timeout", () => r.destroy(new Error("timeout")));
    if (body) r.write(body);
    r.end();
  });
}
const open = async (port, la) => (await req(port, "GET", "", null, la)).token;
const poll = (port, tok, la) => req(port, "GET", "&token=" + encodeURIComponent(tok), null, la);
const post = (port, tok, lines, la) => req(port, "POST", "&token=" + encodeURIComponent(tok), lines.join("\n"), la);
const rss = (pid) => { const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8")); return Number(m[1]) * 1024; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };

async function idle(port, pid, n, holdSecs) {
  const before = rss(pid);
  const sessions = [];
  const t0 = now();
  let inflight = 0, i = 0, errors = 0;
  // open + join, 50 at a time
  await new Promise((done) => {
    const next = () => {
      if (i >= n && inflight === 0) return done();
      while (inflight < 50 && i < n) {
        const k = i++;
        const la = `127.0.0.${2 + (k % 8)}`;
        inflight++;
        (async () => {
          const tok = await open(port, la);
          const s = { tok, la, k, alive: true };
          await post(port, tok, [JSON.stringify(["1", "1", `room:lp${k % 100}`, "phx_join", {}])], la);
          sessions.push(s);
        })().catch(() => errors++).finally(() => { inflight--; next(); });
      }
    };
    next();
  });
  const rampMs = now() - t0;
  // keep every session alive: each keeps one poll parked (the join reply comes back on the first)
  const deadline = now() + holdSecs * 1000;
  let polls = 0, pollErrors = 0;
  for (const s of sessions) {
    (async () => {
      while (now() < deadline && polls < 10_000_000) {
        polls++;
        try { const r = await poll(port, s.tok, s.la); if (r.status === 410) { s.alive = false; return; } }
        catch (e) { pollErrors++; return; }
      }
    })();
  }
  await sleep(holdSecs * 1000 - 500);
  const after = rss(pid);
  const alive = sessions.filter((s) => s.alive).length;
  console.log(JSON.stringify({ mode: "idle", n, opened: sessions.length, alive, errors, pollErrors, polls, ramp_ms: Math.round(rampMs),
    rss_before: before, rss_after: after, bytes_per_session: Math.round((after - before) / alive) }));
  await sleep(700);
  agent.destroy();
  process.exit(0);
}

async function rate(port, secs) {
  const tok = await open(port);
  await post(port, tok, [JSON.stringify(["1", "1", "room:lprate", "phx_join", {}])]);
  let received = 0, replies = 0, broadcasts = 0, sentFrames = 0, ref = 2;
  const deadline = now() + secs * 1000;
  let stop = false;
  const poller = (async () => {
    while (!stop) {
      const r = await poll(port, tok);
      if (r.status === 200 && r.messages) {
        for (const m of r.messages) { received++; const e = JSON.parse(m)[3]; if (e === "phx_reply") replies++; else if (e === "new_msg") broadcasts++; }
      }
    }
  })();
  const t0 = now();
  while (now() < deadline) {
    const lines = [];
    for (let j = 0; j < 100; j++) lines.push(JSON.stringify(["1", String(ref++), "room:lprate", "new_msg", { body: "x" }]));
    const r = await post(port, tok, lines);
    if (r.status !== 200) throw new Error("post " + JSON.stringify(r));
    sentFrames += 100;
    // stay at most ~2,000 frames ahead of what came back (the outbox bound is 4,096 frames)
    for (let w = 0; w < 2000 && (sentFrames * 2 - received) > 4000; w++) await sleep(1);
  }
  const sendMs = now() - t0;
  for (let w = 0; w < 5000 && received < sentFrames * 2; w++) await sleep(1);
  const totalMs = now() - t0;
  stop = true;
  console.log(JSON.stringify({ mode: "rate", secs, sentFrames, received, replies, broadcasts,
    frames_in_per_s: Math.round(sentFrames / (sendMs / 1000)), messages_out_per_s: Math.round(received / (totalMs / 1000)) }));
  process.exit(0);
}

async function xnode(owner, other, n) {
  const tok = await open(owner);
  await post(owner, tok, [JSON.stringify(["1", "1", "room:lpx", "phx_join", {}])]);
  const first = await poll(owner, tok); // join reply
  const res = { owner: { post: [], get: [] }, other: { post: [], get: [] } };
  let ref = 2;
  for (let k = 0; k < n; k++) {
    for (const [name, port] of k % 2 ? [["owner", owner], ["other", other]] : [["other", other], ["owner", owner]]) {
      // POST a heartbeat, then GET its reply (already queued, so the GET answers at once)
      let t = now();
      const p = await post(port, tok, [JSON.stringify([null, String(ref++), "phoenix", "heartbeat", {}])]);
      res[name].post.push(now() - t);
      if (p.status !== 200) throw new Error("post " + JSON.stringify(p));
      await sleep(2); // let the reply reach the outbox
      t = now();
      const g = await poll(port, tok);
      res[name].get.push(now() - t);
      if (g.status !== 200) throw new Error("get " + JSON.stringify(g));
    }
  }
  const sum = {};
  for (const name of ["owner", "other"]) for (const kind of ["post", "get"]) {
    const xs = res[name][kind];
    sum[`${name}_${kind}_p50_ms`] = +pct(xs, 0.5).toFixed(3);
    sum[`${name}_${kind}_p99_ms`] = +pct(xs, 0.99).toFixed(3);
  }
  console.log(JSON.stringify({ mode: "xnode", n, first_status: first.status, ...sum }));
  process.exit(0);
}

const [mode, ...a] = process.argv.slice(2);
const guard = setTimeout(() => { console.error("lp.js: global time limit"); process.exit(3); }, 300_000);
guard.unref();
({ idle: () => idle(+a[0], +a[1], +a[2], +a[3]), rate: () => rate(+a[0], +a[1]), xnode: () => xnode(+a[0], +a[1], +a[2]) })[mode]()
  .catch((e) => { console.error(e); process.exit(2); });
