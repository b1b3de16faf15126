// deploy/local (the docker-compose topology as local processes: Redis, three nodes, a
// round-robin proxy) started by its own script, with phoenix.js clients through the proxy:
// they land on different nodes and still share topics, over WebSocket and LongPoll.

import assert from "node:assert/strict"
import {execFileSync} from "node:child_process"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import {test} from "node:test"
import {LongPoll} from "phoenix"
import {awaitMesh, metric} from "./helpers/cluster.mjs"
import {fixture, nextMessage, okJoins, push, withoutHistory} from "./helpers/fixture.mjs"

const SCRIPT = path.resolve(new URL(".", import.meta.url).pathname, "../../../deploy/local/cluster.py")
const WS_SESSIONS = 'gateway_sessions{transport="websocket"}'

function target(name, url){
  const u = new URL(url)
  return {name, host: u.hostname, port: Number(u.port), httpUrl: `http://${u.hostname}:${u.port}`, socketUrl: `ws://${u.hostname}:${u.port}/socket`}
}

test("deploy/local: phoenix.js clients through the proxy land on different nodes and share topics", {timeout: 90000}, async t => {
  const binDir = path.dirname(process.env.GATEWAY_BIN)
  const state = fs.mkdtempSync(path.join(os.tmpdir(), "gw-deploy-local-"))
  const out = execFileSync("python3", [SCRIPT, "start", "--nodes", "3", "--bin-dir", binDir, "--state", state], {encoding: "utf8", timeout: 60000})
  t.after(() => execFileSync("python3", [SCRIPT, "stop", "--state", state], {timeout: 60000}))
  const env = Object.fromEntries(out.trim().split("\n").filter(l => l.includes("=")).map(l => { const i = l.indexOf("="); return [l.slice(0, i), l.slice(i + 1)] }))
  assert.ok(env.PROXY_URL && env.NODE_URLS, `cluster.py printed ${out}`)
  const nodes = env.NODE_URLS.split(",").map((u, i) => target(`node${i + 1}`, u))
  assert.equal(nodes.length, 3)
  const proxy = target("proxy", env.PROXY_URL)

  const fx = fixture(t)
  const clients = [0, 1, 2].map(i => fx.client(proxy, {}, `ws${i}`))
  const chans = clients.map((c, i) => c.channel("room:local", {user: `u${i}`}))
  await Promise.all(chans.map(ch => okJoins(ch, 1)))
  const counts = await Promise.all(nodes.map(n => metric(n, WS_SESSIONS)))
  assert.equal(counts.reduce((a, b) => a + b, 0), 3, `sessions per node ${counts}`)
  assert.ok(counts.filter(c => c > 0).length >= 2, `the proxy spread the sessions over nodes: ${counts}`)
  await awaitMesh("room:local", nodes, chans)

  const reply = await push(chans[0], "new_msg", {body: "hello cluster"})
  assert.deepEqual(withoutHistory(reply), {status: "ok", response: {}})
  await Promise.all(chans.map((ch, i) => nextMessage(ch, "new_msg", p => p.body === "hello cluster", {what: `broadcast at ws${i}`})))

  // A LongPoll client through the same proxy: its requests land on different nodes.
  const lp = fx.client(proxy, {transport: LongPoll}, "lp")
  const chLp = lp.channel("room:local", {user: "lp"})
  await okJoins(chLp, 1)
  assert.deepEqual(withoutHistory(await push(chLp, "new_msg", {body: "from long-poll"})), {status: "ok", response: {}})
  await Promise.all(chans.map((ch, i) => nextMessage(ch, "new_msg", p => p.body === "from long-poll", {what: `long-poll message at ws${i}`})))
  await push(chans[2], "new_msg", {body: "to long-poll"})
  await nextMessage(chLp, "new_msg", p => p.body === "to long-poll", {what: "broadcast at the long-poll client"})
})
