// The official phoenix.js client (npm phoenix 1.8.16 over `ws`) against the gateway binary:
// connect, join, refused and unmatched joins, push with reply, broadcasts (with and without
// the sender), heartbeats, leave and duplicate joins.

import assert from "node:assert/strict"
import {test} from "node:test"
import {fixture, firstJoin, nextMessage, okJoins, push, postJson, assertAccepted, withoutHistory} from "./helpers/fixture.mjs"

const T = {timeout: 30000}

const BROADCAST_FROM_CONFIG = `
[[channels]]
pattern = "room:*"
join = "public"
broadcast = ["new_msg"]
broadcast_from = ["typing"]
`

const TOKEN_CONFIG = `
[[channels]]
pattern = "room:*"
join = "public"
broadcast = ["new_msg"]

[[channels]]
pattern = "private:*"
join = "token"
broadcast = ["new_msg"]
`

test("connect: the socket opens over WebSocket", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const c = fx.client(gw)
  await c.waitOpen()
  assert.equal(c.socket.connectionState(), "open")
  assert.equal(c.socket.transport.name, "WebSocket", "the ws transport, not the LongPoll fallback")
  assert.equal(c.events.count(e => e.kind === "error" || e.kind === "close"), 0, "no error or close while opening")
})

test("join ok: room:* is open by default and the reply is ok {} plus its history fields", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const c = fx.client(gw)
  const ch = c.channel("room:lobby")
  const reply = await firstJoin(ch)
  assert.deepEqual(withoutHistory(reply), {status: "ok", response: {}})
  assert.equal(ch.state, "joined")
})

test("join refused: a token pattern without a token replies error unauthorized", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: TOKEN_CONFIG})
  const c = fx.client(gw)
  const priv = c.channel("private:1")
  const reply = await firstJoin(priv)
  assert.deepEqual(reply, {status: "error", response: {reason: "unauthorized"}})
  assert.notEqual(priv.state, "joined")
  priv.leave() // stops phoenix.js' rejoin timer
  // the public pattern of the same config still joins on the same socket
  assert.deepEqual(await firstJoin(c.channel("room:1")), {status: "ok", response: {}})
})

test("unmatched topic: join nope:1 replies error unmatched topic", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const c = fx.client(gw)
  const ch = c.channel("nope:1")
  const reply = await firstJoin(ch)
  assert.deepEqual(reply, {status: "error", response: {reason: "unmatched topic"}})
  ch.leave()
})

test("push with reply: new_msg is replied ok {} and an unknown event is refused", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const c = fx.client(gw)
  const ch = c.channel("room:push")
  await okJoins(ch, 1)
  assert.deepEqual(withoutHistory(await push(ch, "new_msg", {body: "hi"})), {status: "ok", response: {}})
  assert.deepEqual(withoutHistory(await push(ch, "shout", {body: "HI"})), {status: "ok", response: {}})
  assert.deepEqual(await push(ch, "no_such_event", {}), {status: "error", response: {reason: "unknown event"}})
})

test("broadcast: a push reaches a second client and the sender (default channel)", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const a = fx.client(gw, {}, "alice")
  const b = fx.client(gw, {}, "bob")
  const cha = a.channel("room:bc")
  const chb = b.channel("room:bc")
  await Promise.all([okJoins(cha, 1), okJoins(chb, 1)])
  assert.equal((await push(cha, "new_msg", {body: "hello", n: 1})).status, "ok")
  const [atB, atA] = await Promise.all([
    nextMessage(chb, "new_msg", p => p.n === 1),
    nextMessage(cha, "new_msg", p => p.n === 1),
  ])
  assert.deepEqual(atB.payload, {body: "hello", n: 1})
  assert.deepEqual(atA.payload, {body: "hello", n: 1})
  // broadcasts travel with join_ref null (phoenix-protocol §2.1); on the demo channel, which
  // keeps history, the ref slot carries the broadcast's position
  const frame = await b.frames.waitFor(m => m.event === "new_msg" && m.topic === "room:bc")
  assert.equal(frame.join_ref, null)
  assert.match(frame.ref, /^[a-z][a-z0-9]*-\d+$/)
})

test("broadcast_from: the other client gets typing, the sender does not", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: BROADCAST_FROM_CONFIG})
  const sender = fx.client(gw, {}, "sender")
  const other = fx.client(gw, {}, "other")
  const chs = sender.channel("room:typing")
  const cho = other.channel("room:typing")
  await Promise.all([okJoins(chs, 1), okJoins(cho, 1)])

  assert.deepEqual(await push(chs, "typing", {who: "sender"}), {status: "ok", response: {}})
  await nextMessage(cho, "typing", p => p.who === "sender")
  // Prove the negative: an included broadcast sent afterwards reaches the sender, and the
  // excluded one (sent first, so queued first on the same connection) never arrived before it.
  assert.equal((await push(chs, "new_msg", {after: "typing"})).status, "ok")
  await nextMessage(chs, "new_msg", p => p.after === "typing")
  await nextMessage(cho, "new_msg", p => p.after === "typing")
  assert.equal(chs.messages.count(m => m.event === "typing"), 0, `sender saw its own typing: ${JSON.stringify(chs.messages.items)}`)
  assert.equal(sender.frames.count(m => m.event === "typing"), 0, "no typing frame at all on the sender's socket")
  assert.equal(cho.messages.count(m => m.event === "typing"), 1)
})

test("heartbeat: socket.ping gets a reply, and short-interval heartbeats keep the socket open", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const c = fx.client(gw, {heartbeatIntervalMs: 300})
  await c.waitOpen()
  const rtt = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ping reply within 2 s\n${fx.gatewayLogs()}`)), 2000)
    assert.ok(c.socket.ping(ms => { clearTimeout(timer); resolve(ms) }), "ping was sent")
  })
  assert.ok(rtt >= 0 && rtt < 2000, `rtt ${rtt}`)
  // three automatic heartbeats (300 ms apart) each answered on topic phoenix with ok {}
  let replies = 0
  await c.frames.waitFor(m => m.topic === "phoenix" && m.event === "phx_reply" && ++replies >= 4,
    {what: "4 heartbeat replies", timeout: 5000})
  for(const m of c.frames.items.filter(m => m.topic === "phoenix")){
    assert.deepEqual(m.payload, {status: "ok", response: {}})
    assert.equal(m.join_ref, null)
  }
  // a missed heartbeat reply would have made phoenix.js close (1000 "heartbeat timeout") and reconnect
  assert.equal(c.events.count(e => e.kind !== "open"), 0, `socket events: ${JSON.stringify(c.events.items)}`)
  assert.equal(c.events.count(e => e.kind === "open"), 1)
})

test("leave: ok, and the topic is no longer delivered to the socket", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const leaver = fx.client(gw, {}, "leaver")
  const sender = fx.client(gw, {}, "sender")
  const witness = fx.client(gw, {}, "witness")
  const left = leaver.channel("room:left")
  const kept = leaver.channel("room:kept")
  const senderLeft = sender.channel("room:left")
  const senderKept = sender.channel("room:kept")
  const witnessLeft = witness.channel("room:left")
  await Promise.all([left, kept, senderLeft, senderKept, witnessLeft].map(ch => okJoins(ch, 1)))

  // the server acknowledges the leave (the reply frame is visible at the socket level even
  // though phoenix.js resolves leave() locally)
  const leaveMark = leaver.frames.mark()
  const leaveReply = await new Promise(resolve => left.leave().receive("ok", resolve))
  assert.deepEqual(leaveReply, {})
  await leaver.frames.waitFor(m => m.topic === "room:left" && m.event === "phx_reply" && m.payload.status === "ok",
    {from: leaveMark, what: "the server's leave reply"})

  const mark = leaver.frames.mark()
  assert.equal((await push(senderLeft, "new_msg", {n: "after-leave"})).status, "ok")
  // room:left's fan-out has happened once the witness has it; room:kept's broadcast is sent after
  await nextMessage(witnessLeft, "new_msg", p => p.n === "after-leave")
  assert.equal((await push(senderKept, "new_msg", {n: "marker"})).status, "ok")
  await nextMessage(kept, "new_msg", p => p.n === "marker")
  const leaked = leaver.frames.items.slice(mark).filter(m => m.topic === "room:left" && m.event === "new_msg")
  assert.deepEqual(leaked, [], "room:left broadcasts still delivered after leave")
})

test("duplicate join (phoenix.js): a second Channel object for the topic joins, the first closes, broadcasts arrive once", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const c = fx.client(gw, {}, "dup")
  const sender = fx.client(gw, {}, "sender")
  const first = c.channel("room:dup")
  await okJoins(first, 1)
  const senderCh = sender.channel("room:dup")
  await okJoins(senderCh, 1)

  const second = c.channel("room:dup")
  assert.deepEqual(withoutHistory(await firstJoin(second)), {status: "ok", response: {}})
  await first.lifecycle.waitFor(e => e.kind === "close", {what: "the first channel object closes"})
  assert.equal(first.state, "closed")
  assert.equal(second.state, "joined")

  const mark = c.frames.mark()
  assert.equal((await push(senderCh, "new_msg", {n: 1})).status, "ok")
  assert.equal((await push(senderCh, "new_msg", {n: 2})).status, "ok")
  // n=2 is queued after n=1 on the same connection: once it arrived, any duplicate of n=1 has too
  await nextMessage(second, "new_msg", p => p.n === 2)
  const ones = c.frames.items.slice(mark).filter(m => m.event === "new_msg" && m.payload.n === 1)
  assert.equal(ones.length, 1, `n=1 frames on the socket: ${JSON.stringify(ones)}`)
  assert.equal(second.messages.count(m => m.event === "new_msg" && m.payload.n === 1), 1)
  assert.equal(first.messages.count(m => m.event === "new_msg"), 0)
})

test("http broadcast API reaches joined phoenix.js clients", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const c = fx.client(gw)
  const ch = c.channel("room:api")
  await okJoins(ch, 1)
  const res = await postJson(gw, "/api/broadcast", {topic: "room:api", event: "news", payload: {x: 1}})
  assertAccepted(res, "POST /api/broadcast")
  const msg = await nextMessage(ch, "news")
  assert.deepEqual(msg.payload, {x: 1})
  const bad = await postJson(gw, "/api/broadcast", "{not json")
  assert.equal(bad.status, 400, `bad body: ${bad.status} ${bad.body}`)
  assert.notEqual(bad.json, null, `400 body should be JSON: ${bad.body}`)
})
