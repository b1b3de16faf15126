// Backend hooks (issue 13) with the official phoenix.js client and the REAL example backend
// (gateway/examples/backend.py, which verifies every request's signature): connect params the
// backend checks, joins accepted and refused with its response, events answered with replies,
// broadcasts reaching other clients and another node, pushes to the sender, 200 rapid pushes in
// order; a slow, down or garbage-answering backend gets the documented errors while other
// sessions' broadcasts and heartbeats are unaffected (measured).

import assert from "node:assert/strict"
import {test} from "node:test"
import {LongPoll} from "phoenix"
import {fixture, firstJoin, nextMessage, push} from "./helpers/fixture.mjs"
import {awaitMesh, freePort, metric} from "./helpers/cluster.mjs"
import {backendConfig, startBackend} from "./helpers/backend.mjs"

const T = {timeout: 60000}
const SECRET = "js-hook-secret"
/** Far above an idle round trip on the test machine, far below the slow hook. */
const UNAFFECTED_MS = 300

function ping(client){
  return new Promise(resolve => client.socket.ping(rtt => resolve(rtt)))
}

test("connect: params are checked by the backend; joins accepted and refused with its response", T, async t => {
  const fx = fixture(t)
  const backend = await startBackend(fx, SECRET)
  const gw = await fx.gateway({config: backendConfig(backend.url, {secret: SECRET, connect: true})})

  const ann = fx.client(gw, {params: {user: "ann"}}, "ann")
  await ann.waitOpen()
  const game = ann.channel("game:1")
  assert.deepEqual(await firstJoin(game), {status: "ok", response: {welcome: "ann", topic: "game:1"}})
  const closed = ann.channel("game:closed")
  assert.deepEqual(await firstJoin(closed), {status: "error", response: {reason: "closed"}})
  closed.leave()
  const wrong = ann.channel("game:2", {password: "wrong"})
  assert.deepEqual(await firstJoin(wrong), {status: "error", response: {reason: "bad password"}})
  wrong.leave()
  // The assigns of connect and join reach the event hook.
  assert.deepEqual(await push(game, "ping", {x: 1}),
    {status: "ok", response: {pong: {x: 1}, user: "ann", room: "game:1"}})

  // The same over phoenix.js' LongPoll transport: its open request carries the params too.
  const lou = fx.client(gw, {params: {user: "lou"}, transport: LongPoll}, "lou")
  const louGame = lou.channel("game:1")
  assert.deepEqual(await firstJoin(louGame), {status: "ok", response: {welcome: "lou", topic: "game:1"}})
  assert.deepEqual(await push(louGame, "ping", {}),
    {status: "ok", response: {pong: {}, user: "lou", room: "game:1"}})

  const mallory = fx.client(gw, {params: {user: "mallory"}}, "mallory")
  await mallory.events.waitFor(e => e.kind === "error", {what: "the refused connect"})
  assert.equal(mallory.events.count(e => e.kind === "open"), 0, "a refused socket never opens")
  assert.ok(await metric(gw, 'gateway_connect_refusals_total{reason="backend_refused"}') >= 1)
  const stats = await backend.stats()
  assert.equal(stats.bad_signature, 0, "every request was signed with the backend's secret")
})

test("events: replies, broadcasts to others, pushes to the sender, 200 rapid pushes in order", T, async t => {
  const fx = fixture(t)
  const backend = await startBackend(fx, SECRET)
  const gw = await fx.gateway({config: backendConfig(backend.url, {secret: SECRET})})
  const ann = fx.client(gw, {}, "ann")
  const bob = fx.client(gw, {}, "bob")
  const annGame = ann.channel("game:1")
  const bobGame = bob.channel("game:1")
  assert.equal((await firstJoin(annGame)).status, "ok")
  assert.equal((await firstJoin(bobGame)).status, "ok")

  assert.deepEqual(await push(annGame, "shout", {body: "hi"}), {status: "ok", response: {}})
  assert.deepEqual((await nextMessage(bobGame, "shout")).payload, {body: "hi"})
  annGame.push("typing", {on: true})
  assert.deepEqual((await nextMessage(bobGame, "typing")).payload, {on: true})
  annGame.push("whisper", {psst: 1})
  assert.deepEqual((await nextMessage(annGame, "whisper")).payload, {psst: 1})
  assert.equal(bobGame.messages.count(m => m.event === "whisper" || false), 0, "a push reaches the sender only")
  assert.equal(annGame.messages.count(m => m.event === "typing"), 0, "broadcast_from skips the sender")

  const order = []
  const replies = await Promise.all(Array.from({length: 200}, (_, i) =>
    push(annGame, "seq", {n: i + 1}).then(r => { order.push(i + 1); return r })))
  assert.deepEqual(order, Array.from({length: 200}, (_, i) => i + 1), "replies arrive in push order")
  replies.forEach((r, i) => assert.deepEqual(r, {status: "ok", response: {n: i + 1, in_order: true}},
    `push ${i + 1} reached the backend right after push ${i}`))
})

test("clustered: what the backend broadcasts reaches clients on another node", T, async t => {
  const fx = fixture(t)
  const backend = await startBackend(fx, SECRET)
  const {nodes: [a, b]} = await fx.cluster(2, {config: backendConfig(backend.url, {secret: SECRET})})
  const ann = fx.client(a, {}, "ann")
  const bob = fx.client(b, {}, "bob")
  const annGame = ann.channel("game:1")
  const bobGame = bob.channel("game:1")
  assert.equal((await firstJoin(annGame)).status, "ok")
  assert.equal((await firstJoin(bobGame)).status, "ok")
  await awaitMesh("game:1", [a, b], [annGame, bobGame])
  assert.deepEqual(await push(annGame, "shout", {body: "across"}), {status: "ok", response: {}})
  assert.deepEqual((await nextMessage(bobGame, "shout", p => p.body === "across")).payload, {body: "across"})
})

test("failures: slow, down and garbage get the documented errors; others are unaffected while it is slow", T, async t => {
  const fx = fixture(t)
  const backend = await startBackend(fx, SECRET)
  const gw = await fx.gateway({config: backendConfig(backend.url, {secret: SECRET, timeoutMs: 1500})})
  const ann = fx.client(gw, {}, "ann")
  const bob = fx.client(gw, {}, "bob")
  const cat = fx.client(gw, {}, "cat")
  const [annGame, bobGame, catGame] = [ann, bob, cat].map(c => c.channel("game:1"))
  for(const ch of [annGame, bobGame, catGame]){ assert.equal((await firstJoin(ch)).status, "ok") }

  const started = performance.now()
  const slow = push(annGame, "slow", {ms: 3000})
  // While ann's event waits on the backend: heartbeats and another session's broadcast.
  const annRtt = await ping(ann)
  const bobRtt = await ping(bob)
  const sent = performance.now()
  bobGame.push("chat", {m: 1})
  await nextMessage(catGame, "chat")
  const broadcastMs = performance.now() - sent
  const measuredWithin = performance.now() - started
  console.log(`while the backend was slow: heartbeat rtt ann ${annRtt} ms, bob ${bobRtt} ms; broadcast to another client ${broadcastMs.toFixed(1)} ms`)
  assert.ok(measuredWithin < 1500, `measured while the hook was in flight (${measuredWithin} ms)`)
  for(const [what, ms] of [["ann heartbeat", annRtt], ["bob heartbeat", bobRtt], ["broadcast", broadcastMs]]){
    assert.ok(ms < UNAFFECTED_MS, `${what} took ${ms} ms while the backend was slow`)
  }
  assert.deepEqual(await slow, {status: "error", response: {reason: "backend timeout"}})
  assert.ok(performance.now() - started >= 1400, "answered at the hook timeout")
  assert.deepEqual(await push(annGame, "garbage", {}), {status: "error", response: {reason: "backend error"}})
  assert.deepEqual(await push(annGame, "crash", {}), {status: "error", response: {reason: "backend unavailable"}})

  const down = await fx.gateway({config: backendConfig(`http://127.0.0.1:${await freePort()}/phx`, {secret: SECRET})})
  const dan = fx.client(down, {}, "dan")
  const danGame = dan.channel("game:1")
  assert.deepEqual(await firstJoin(danGame), {status: "error", response: {reason: "backend unavailable"}})
  danGame.leave()
})
