// History and recovery with the unmodified phoenix.js client: `socket.channel(topic, () =>
// ({since: last}))` re-evaluates its params on every rejoin, and `channel.on(event, (payload,
// ref) => …)` gets each broadcast's position in `ref`. A client whose connection is cut while
// 50 messages are broadcast rejoins by itself and receives exactly those 50, in order, then
// live ones: over WebSocket (the connection cut at a proxy) and over LongPoll (the session
// ended by the server with a forced disconnect); on one node and in a two-node cluster behind a
// load balancer without sticky sessions, where the client comes back on the other node; and
// when its node is SIGKILLed. The demo channel `room:*` keeps history.

import assert from "node:assert/strict"
import {test} from "node:test"
import {LongPoll} from "phoenix"
import {Recorder, assertAccepted, fixture, nowSecs, okJoins, postJson, signJwt} from "./helpers/fixture.mjs"

const T = {timeout: 60000}
const SECRET = "history-secret"

/** A channel that remembers the last position it saw and rejoins `since` it. */
function recovering(client, topic){
  const state = {last: null, got: new Recorder(`${topic} new_msg`)}
  const ch = client.channel(topic, () => (state.last === null ? {} : {since: state.last}))
  ch.on("new_msg", (payload, ref) => {
    state.last = ref
    state.got.push({i: payload.i, ref})
  })
  return {ch, state}
}

async function publish(gw, topic, i){
  const res = await postJson(gw, "/api/broadcast", {topic, event: "new_msg", payload: {i}})
  assertAccepted(res, `broadcast ${i}`)
  assert.equal(typeof res.json.position, "string", res.body)
  return res.json.position
}

/** Resolves once `state.got` holds `n` messages. */
async function received(state, n){
  await state.got.waitFor(() => state.got.items.length >= n, {what: `${n} messages`, timeout: 10000})
}

function assertExactlyInOrder(state, n){
  const got = state.got.items
  assert.deepEqual(got.map(m => m.i), Array.from({length: n}, (_, i) => i), "every message once, in order")
  const offsets = got.map(m => Number(m.ref.split("-").pop()))
  assert.deepEqual(offsets, Array.from({length: n}, (_, i) => offsets[0] + i), "positions follow each other")
  assert.ok(got.every(m => Number.isNaN(Number(m.ref))), "positions are not numbers")
}

/**
 * While `ch` is cut off, 50 broadcasts (1–50) go out, through the gateways of `via` in turn
 * (one gateway or several); phoenix.js rejoins by itself with `since`, the rejoin recovers, and
 * every message up to a live 51st arrives once, in order.
 */
async function missFiftyAndRecover(via, topic, ch, state, joinOpts = {}){
  const gws = [].concat(via)
  for(let i = 1; i <= 50; i++){ await publish(gws[i % gws.length], topic, i) }
  await okJoins(ch, 2, joinOpts)
  const rejoin = ch.joins.items.filter(j => j.status === "ok")[1]
  assert.equal(rejoin.response.recovered, true, JSON.stringify(rejoin))
  await received(state, 51)
  await publish(gws[0], topic, 51)
  await received(state, 52)
  assertExactlyInOrder(state, 52)
}

test("websocket: a client cut off while 50 messages are broadcast gets exactly those, then live ones", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const proxy = await fx.proxy([gw])
  const c = fx.client(proxy)
  const topic = "room:history-ws"
  const {ch, state} = recovering(c, topic)
  await okJoins(ch, 1)
  const first = await ch.joins.waitFor(j => j.status === "ok")
  assert.equal(first.response.recovered, false, "the first join has no since")
  assert.equal(typeof first.response.position, "string")
  await publish(gw, topic, 0)
  await received(state, 1)

  const closed = c.events.mark()
  for(const s of proxy.sockets){ s.destroy() }
  await c.events.waitFor(e => e.kind === "close", {from: closed, what: "the cut"})
  await missFiftyAndRecover(gw, topic, ch, state)
})

test("longpoll: a session ended by the server while 50 messages are broadcast recovers them", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({args: ["--jwt-secret", SECRET]})
  const token = signJwt({sub: "lp", exp: nowSecs() + 3600}, SECRET)
  const c = fx.client(gw, {transport: LongPoll, params: {token}})
  const topic = "room:history-lp"
  const {ch, state} = recovering(c, topic)
  await okJoins(ch, 1)
  await publish(gw, topic, 0)
  await received(state, 1)

  assertAccepted(await postJson(gw, "/api/disconnect", {id: "user_socket:lp"}), "disconnect")
  await missFiftyAndRecover(gw, topic, ch, state, {timeout: 15000})
})

/** The node (by name) the proxy sent the `n`th WebSocket upgrade to (0-based). */
function upgradedTo(proxy, n){
  return proxy.log.filter(e => e.upgrade)[n]?.node
}

test("cluster websocket: cut off on node A while 50 messages go out through A and B, the client rejoins on B and gets exactly those", T, async t => {
  const fx = fixture(t)
  const {nodes: [a, b]} = await fx.cluster(2)
  const proxy = await fx.proxy([a, b])
  const c = fx.client(proxy)
  const topic = "room:history-cluster-ws"
  const {ch, state} = recovering(c, topic)
  await okJoins(ch, 1)
  await publish(b, topic, 0)
  await received(state, 1)
  assert.equal(upgradedTo(proxy, 0), a.name)

  const closed = c.events.mark()
  for(const s of proxy.sockets){ s.destroy() }
  await c.events.waitFor(e => e.kind === "close", {from: closed, what: "the cut"})
  await missFiftyAndRecover([a, b], topic, ch, state)
  assert.equal(upgradedTo(proxy, 1), b.name, "the client came back on the other node")
})

test("cluster longpoll: polls spread over two nodes; a session ended while 50 messages go out recovers them", T, async t => {
  const fx = fixture(t)
  const {nodes: [a, b]} = await fx.cluster(2, {args: ["--jwt-secret", SECRET, "--longpoll-secret", "lp-cluster-secret"]})
  const proxy = await fx.proxy([a, b])
  const token = signJwt({sub: "lpc", exp: nowSecs() + 3600}, SECRET)
  const c = fx.client(proxy, {transport: LongPoll, params: {token}})
  const topic = "room:history-cluster-lp"
  const {ch, state} = recovering(c, topic)
  await okJoins(ch, 1)
  await publish(a, topic, 0)
  await received(state, 1)
  assert.deepEqual(proxy.nodesHit("/socket/longpoll"), new Set([a.name, b.name]), "polls reached both nodes")

  assertAccepted(await postJson(b, "/api/disconnect", {id: "user_socket:lpc"}), "disconnect")
  await missFiftyAndRecover([b, a], topic, ch, state, {timeout: 15000})
})

for(const transport of ["websocket", "longpoll"]){
  test(`${transport}: its node SIGKILLed, the client reconnects to the other node and recovers what it missed`, T, async t => {
    const fx = fixture(t)
    const {nodes: [a, b]} = await fx.cluster(2, {args: ["--longpoll-secret", "lp-kill-secret"]})
    // the balancer sends the first connection to A
    const proxy = await fx.proxy([a, b])
    const c = fx.client(proxy, transport === "longpoll" ? {transport: LongPoll} : {})
    const topic = `room:history-kill-${transport}`
    const {ch, state} = recovering(c, topic)
    await okJoins(ch, 1)
    await publish(b, topic, 0)
    await received(state, 1)
    if(transport === "websocket"){ assert.equal(upgradedTo(proxy, 0), a.name) }

    a.proc.kill("SIGKILL")
    await a.waitExit(5000)
    proxy.remove(a)
    await missFiftyAndRecover(b, topic, ch, state, {timeout: 15000})
  })
}

test("a malformed or foreign since joins with recovered false and no replay", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const topic = "room:history-bad"
  await publish(gw, topic, 0)
  const c = fx.client(gw)
  for(const since of ["garbage", "zzzz-1", "12", 12]){
    const ch = c.channel(topic, {since})
    await okJoins(ch, 1)
    const reply = ch.joins.items[0]
    assert.equal(reply.response.recovered, false, `${JSON.stringify(since)}: ${JSON.stringify(reply)}`)
    ch.leave()
  }
})
