// LongPoll through the official client: phoenix.js' own LongPoll transport (over Node's global
// fetch) joins, pushes and receives broadcasts, mixes with WebSocket clients on the same topic,
// sends binary pushes as base64 lines, loses its session when it stops polling, and keeps
// working behind a load balancer without sticky sessions in front of a two-node cluster.

import assert from "node:assert/strict"
import {test} from "node:test"
import {LongPoll} from "phoenix"
import {awaitMesh, httpRequest, metric, until} from "./helpers/cluster.mjs"
import {bytesOf, fixture, nextMessage, okJoins, push, show, withoutHistory} from "./helpers/fixture.mjs"

const LP_SESSIONS = 'gateway_sessions{transport="longpoll"}'
const WS_SESSIONS = 'gateway_sessions{transport="websocket"}'

/** A phoenix.js client on the LongPoll transport. */
function lpClient(fx, target, name, opts = {}){
  const c = fx.client(target, {transport: LongPoll, ...opts}, name)
  assert.equal(c.socket.transport, LongPoll)
  return c
}

test("longpoll: join, push with reply, broadcasts both ways with a WebSocket client", {timeout: 30000}, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const lp = lpClient(fx, gw, "lp")
  const ws = fx.client(gw, {}, "ws")
  const chLp = lp.channel("room:lp", {user: "lp"})
  const chWs = ws.channel("room:lp", {user: "ws"})
  await Promise.all([okJoins(chLp, 1), okJoins(chWs, 1)])

  assert.ok(lp.socket.conn instanceof LongPoll, "the LongPoll client's connection is a LongPoll")
  assert.ok(typeof lp.socket.conn.token === "string" && lp.socket.conn.token.length > 0, "a session token was issued")
  assert.equal(await metric(gw, LP_SESSIONS), 1, "the node counts one long-poll session")
  assert.equal(await metric(gw, WS_SESSIONS), 1, "and one WebSocket session")

  const reply = await push(chLp, "new_msg", {body: "from lp"})
  assert.deepEqual(withoutHistory(reply), {status: "ok", response: {}})
  await Promise.all([
    nextMessage(chWs, "new_msg", p => p.body === "from lp", {what: "the LongPoll push at the WebSocket client"}),
    nextMessage(chLp, "new_msg", p => p.body === "from lp", {what: "the LongPoll push back at its sender"}),
  ])

  assert.deepEqual(withoutHistory(await push(chWs, "new_msg", {body: "from ws"})), {status: "ok", response: {}})
  await nextMessage(chLp, "new_msg", p => p.body === "from ws", {what: "the WebSocket push at the LongPoll client"})

  const refused = await push(chLp, "no_such_event", {})
  assert.deepEqual(refused, {status: "error", response: {reason: "unknown event"}}, `reply ${show(refused)}`)

  // several pushes in one tick travel in one ndjson POST; all are replied and broadcast in order
  const replies = await Promise.all([1, 2, 3].map(n => push(chLp, "new_msg", {body: `batch ${n}`})))
  assert.deepEqual(replies.map(r => r.status), ["ok", "ok", "ok"])
  await nextMessage(chWs, "new_msg", p => p.body === "batch 3")
  const order = chWs.messages.items.filter(m => m.event === "new_msg" && /^batch/.test(m.payload.body)).map(m => m.payload.body)
  assert.deepEqual(order, ["batch 1", "batch 2", "batch 3"])

  // one session the whole time: no reconnects on either side
  assert.equal(lp.events.count(e => e.kind === "open"), 1, `lp events ${show(lp.events.items)}`)
  assert.equal(lp.events.count(e => e.kind === "close" || e.kind === "error"), 0, `lp events ${show(lp.events.items)}`)
})

test("longpoll: a binary push goes out as a base64 line and reaches a WebSocket client as an ArrayBuffer", {timeout: 30000}, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const lp = lpClient(fx, gw, "lp")
  const ws = fx.client(gw, {}, "ws")
  const chLp = lp.channel("room:lpbin")
  const chWs = ws.channel("room:lpbin")
  await Promise.all([okJoins(chLp, 1), okJoins(chWs, 1)])

  const bytes = [0, 1, 2, 127, 128, 254, 255, 10, 13]
  const reply = await push(chLp, "new_msg", new Uint8Array(bytes).buffer)
  assert.equal(reply.status, "ok", `reply ${show(reply)}`)
  const got = await nextMessage(chWs, "new_msg", p => p instanceof ArrayBuffer, {what: "a binary new_msg at the WebSocket client"})
  assert.deepEqual(bytesOf(got.payload), bytes)

  // JSON keeps flowing to the LongPoll client afterwards (its text-only transport cannot carry
  // the binary broadcast, which must not break the session)
  assert.equal((await push(chWs, "new_msg", {after: "binary"})).status, "ok")
  await nextMessage(chLp, "new_msg", p => p && p.after === "binary", {what: "a JSON broadcast after the binary one"})
  assert.equal(lp.events.count(e => e.kind === "close"), 0, `lp events ${show(lp.events.items)}`)
})

test("longpoll: a session nobody polls any more is ended by the server", {timeout: 30000}, async t => {
  const fx = fixture(t)
  // (the node checks expiry in whole clock seconds, so below ~2 s the flag is imprecise)
  const expiryMs = 2000
  const gw = await fx.gateway({args: ["--longpoll-expiry-ms", String(expiryMs), "--longpoll-window-ms", "400"]})
  const lp = lpClient(fx, gw, "lp")
  const ch = lp.channel("room:expiry")
  await okJoins(ch, 1)
  const token = lp.socket.conn.token
  assert.equal(await metric(gw, LP_SESSIONS), 1)

  // while the client keeps polling (a 400 ms window: several polls), the session outlives the
  // expiry; this wait is the duration under test, not a stand-in for an event
  await new Promise(resolve => setTimeout(resolve, 1.25 * expiryMs))
  assert.deepEqual(withoutHistory(await push(ch, "new_msg", {still: "here"})), {status: "ok", response: {}})
  await nextMessage(ch, "new_msg", p => p.still === "here")
  assert.equal(lp.events.count(e => e.kind === "open"), 1, `the session was never replaced: ${show(lp.events.items)}`)
  assert.equal(lp.socket.conn.token, token)

  // the client goes away without a word (phoenix.js only aborts its requests)
  const gone = performance.now()
  await lp.disconnect()
  await until(async () => (await metric(gw, LP_SESSIONS)) === 0,
    {what: "gateway_sessions{transport=\"longpoll\"} 0 after the client stopped polling", timeout: 2 * expiryMs + 2000,
      context: () => gw.log()})
  const endedAfter = performance.now() - gone
  // not at once either: an abandoned session lives about the expiry (the node compares whole
  // clock seconds, hence up to one second early)
  assert.ok(endedAfter >= expiryMs - 1000, `the session ended only ${endedAfter.toFixed(0)} ms after the client left (expiry ${expiryMs} ms)`)

  // the old token names a session that no longer exists
  const post = await httpRequest(`${gw.httpUrl}/socket/longpoll?vsn=2.0.0&token=${encodeURIComponent(token)}`, {
    method: "POST", headers: {"content-type": "application/x-ndjson"},
    body: JSON.stringify(["1", "9", "room:expiry", "new_msg", {late: true}]),
  })
  assert.equal(post.status, 200)
  assert.deepEqual(post.json, {status: 410}, `POST with the expired token: ${post.text}`)
  const get = await httpRequest(`${gw.httpUrl}/socket/longpoll?vsn=2.0.0&token=${encodeURIComponent(token)}`)
  assert.equal(get.json && get.json.status, 410, `GET with the expired token: ${get.text}`)
  t.diagnostic(`session ended ${endedAfter.toFixed(0)} ms after the client stopped polling (expiry ${expiryMs} ms)`)
})

test("longpoll: two-node cluster behind a round-robin proxy (no sticky sessions)", {timeout: 60000}, async t => {
  const fx = fixture(t)
  const {nodes: [a, b]} = await fx.cluster(2)
  // each method alternates on its own: which node gets the POSTs does not depend on how many
  // polls fell between them (CI saw 8 rounds of sends all land on one node under strict alternation)
  const proxy = await fx.proxy([a, b], {perMethod: true})
  const lp = lpClient(fx, proxy, "lp")
  const chLp = lp.channel("room:rr", {user: "lp"})
  await okJoins(chLp, 1)

  // the owner is the node that answered the first GET; the WebSocket client goes to the other
  const counts = await Promise.all([a, b].map(n => metric(n, LP_SESSIONS)))
  assert.deepEqual([...counts].sort(), [0, 1], `long-poll sessions per node ${show(counts)}`)
  const [owner, other] = counts[0] === 1 ? [a, b] : [b, a]
  const ws = fx.client(other, {}, "ws")
  const chWs = ws.channel("room:rr", {user: "ws"})
  // and one more WebSocket client through the proxy (its upgrade is forwarded like any request)
  const viaProxy = fx.client(proxy, {}, "wsViaProxy")
  const chProxy = viaProxy.channel("room:rr", {user: "ws2"})
  await Promise.all([okJoins(chWs, 1), okJoins(chProxy, 1)])
  await awaitMesh("room:rr", [a, b], [chLp, chWs, chProxy])

  assert.deepEqual(withoutHistory(await push(chLp, "new_msg", {body: "lp says hi"})), {status: "ok", response: {}})
  await Promise.all([
    nextMessage(chWs, "new_msg", p => p.body === "lp says hi", {what: "LongPoll push at the WebSocket client on the other node"}),
    nextMessage(chProxy, "new_msg", p => p.body === "lp says hi"),
    nextMessage(chLp, "new_msg", p => p.body === "lp says hi"),
  ])
  assert.deepEqual(withoutHistory(await push(chWs, "new_msg", {body: "ws says hi"})), {status: "ok", response: {}})
  await nextMessage(chLp, "new_msg", p => p.body === "ws says hi", {what: "WebSocket push from the other node at the LongPoll client"})
  assert.deepEqual(await push(chLp, "no_such_event", {}), {status: "error", response: {reason: "unknown event"}})

  // Both nodes must have served polls and sends of this one session: keep exchanging messages
  // (each round checked) until both kinds reached both nodes, two rounds at most per method turn.
  const served = method => new Set(proxy.log.filter(e => e.method === method && e.path.startsWith("/socket/longpoll")).map(e => e.node))
  for(let round = 1; round <= 8 && (served("GET").size < 2 || served("POST").size < 2); round++){
    assert.equal((await push(chLp, "new_msg", {round, from: "lp"})).status, "ok")
    await nextMessage(chWs, "new_msg", p => p.round === round && p.from === "lp")
    assert.equal((await push(chWs, "new_msg", {round, from: "ws"})).status, "ok")
    await nextMessage(chLp, "new_msg", p => p.round === round && p.from === "ws")
  }
  assert.equal(served("GET").size, 2, `GETs reached only ${show([...served("GET")])}; proxy log ${show(proxy.log)}`)
  assert.equal(served("POST").size, 2, `POSTs reached only ${show([...served("POST")])}; proxy log ${show(proxy.log)}`)
  assert.ok(proxy.log.some(e => e.upgrade && e.node), "the WebSocket upgrade went through the proxy")
  assert.equal(await metric(owner, LP_SESSIONS), 1, "still one session, on its owner")
  assert.equal(await metric(other, LP_SESSIONS), 0)
  assert.equal(lp.events.count(e => e.kind === "open"), 1, `lp events ${show(lp.events.items)}`)
  t.diagnostic(`${proxy.log.length} requests through the proxy: ${show(proxy.log.map(e => e.upgrade ? "WS>" + e.node : e.method + ">" + e.node))}`)
})
