// Exact wire frames (phoenix-protocol.md §2, §3, §9) checked with a plain `ws` client, for the
// behaviours phoenix.js would hide: join_ref of error replies, phx_close after leave and
// duplicate joins, stale join_refs, binary frame layout and serializer negotiation.

import assert from "node:assert/strict"
import {test} from "node:test"
import {RawClient, assertAccepted, fixture, postJson, show} from "./helpers/fixture.mjs"

const T = {timeout: 30000}

// The demo channel without history (`history_size` 0), so frames are the bare Phoenix ones:
// ref null on broadcasts, `{}` responses. What history adds to the wire is checked in
// history.test.mjs, handshake.test.mjs and channels.test.mjs.
const CONFIG = `
[[channels]]
pattern = "room:*"
join = "public"
broadcast = ["new_msg", "shout"]
`

const ok = (jr, ref, topic, response = {}) => [jr, ref, topic, "phx_reply", {status: "ok", response}]
const isFrame = (jr, ref, topic, event) => m => m[0] === jr && m[1] === ref && m[2] === topic && m[3] === event

async function joined(fx, gw, topic, jr){
  const r = await fx.raw(gw)
  r.send([jr, jr, topic, "phx_join", {}])
  const reply = await r.next(m => m[1] === jr && m[3] === "phx_reply", `join reply for ${topic}`)
  assert.deepEqual(reply.msg, ok(jr, jr, topic))
  return r
}

/** Encodes a V2 binary push (kind 0, client to server), phoenix-protocol §2.3. */
function binaryPush(jr, ref, topic, event, payload){
  const parts = [jr, ref, topic, event].map(s => Buffer.from(s, "utf8"))
  return Buffer.concat([Buffer.from([0, ...parts.map(p => p.length)]), ...parts, Buffer.from(payload)])
}

test("wire: heartbeat is answered on topic phoenix with join_ref null", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: CONFIG})
  const r = await fx.raw(gw)
  r.send([null, "5", "phoenix", "heartbeat", {}])
  const reply = await r.next(m => m[1] === "5", "heartbeat reply")
  assert.deepEqual(reply.msg, ok(null, "5", "phoenix"))
  assert.equal(reply.text.trim()[0], "[", "V2 frames are JSON arrays in text frames")
})

test("wire: join reply echoes join_ref and ref verbatim", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: CONFIG})
  const r = await fx.raw(gw)
  r.send(["r:7", "r:7", "room:wire", "phx_join", {"nick": "bob"}])
  const reply = await r.next(m => m[1] === "r:7", "join reply")
  assert.deepEqual(reply.msg, ok("r:7", "r:7", "room:wire"))
  r.send(["r:7", "r:8", "room:wire", "new_msg", {body: "x"}])
  const pushReply = await r.next(m => m[1] === "r:8", "push reply")
  assert.deepEqual(pushReply.msg, ok("r:7", "r:8", "room:wire"))
  const bc = await r.next(isFrame(null, null, "room:wire", "new_msg"), "the broadcast back to the sender")
  assert.deepEqual(bc.msg, [null, null, "room:wire", "new_msg", {body: "x"}])
})

test("wire: unmatched topic join and push to an unjoined topic reply with join_ref null", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: CONFIG})
  const r = await fx.raw(gw)
  r.send(["7", "7", "nope:1", "phx_join", {}])
  const join = await r.next(m => m[1] === "7", "unmatched join reply")
  assert.deepEqual(join.msg, [null, "7", "nope:1", "phx_reply", {status: "error", response: {reason: "unmatched topic"}}])
  r.send(["3", "20", "room:never-joined", "new_msg", {}])
  const push = await r.next(m => m[1] === "20", "reply to a push on an unjoined topic")
  assert.deepEqual(push.msg, [null, "20", "room:never-joined", "phx_reply", {status: "error", response: {reason: "unmatched topic"}}])
})

test("wire: leave replies ok, emits phx_close with the join ref, and stops delivery", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: CONFIG})
  const r = await joined(fx, gw, "room:gone", "1")
  r.send(["2", "2", "room:stay", "phx_join", {}])
  await r.next(m => m[1] === "2" && m[3] === "phx_reply", "second join reply")

  r.send(["1", "3", "room:gone", "phx_leave", {}])
  const reply = await r.next(m => m[1] === "3", "leave reply")
  assert.deepEqual(reply.msg, ok("1", "3", "room:gone"))
  const close = await r.next(m => m[3] === "phx_close", "phx_close after leave")
  assert.deepEqual(close.msg, ["1", "1", "room:gone", "phx_close", {}])
  assert.ok(r.frames.items.indexOf(reply) < r.frames.items.indexOf(close), "leave reply before phx_close")

  const mark = r.frames.mark()
  assertAccepted(await postJson(gw, "/api/broadcast", {topic: "room:gone", event: "new_msg", payload: {n: 1}}), "broadcast")
  assertAccepted(await postJson(gw, "/api/broadcast", {topic: "room:stay", event: "new_msg", payload: {n: 2}}), "broadcast")
  await r.next(isFrame(null, null, "room:stay", "new_msg"), "the broadcast on the topic still joined", {from: mark})
  const leaked = r.frames.items.slice(mark).filter(f => !f.binary && f.msg[2] === "room:gone")
  assert.deepEqual(leaked.map(f => f.msg), [], "frames for the left topic")

  // leaving a topic that is not joined is still ok {}
  r.send(["9", "10", "room:not-joined", "phx_leave", {}])
  assert.deepEqual((await r.next(m => m[1] === "10", "leave of an unjoined topic")).msg, ok("9", "10", "room:not-joined"))
})

test("wire: duplicate join closes the old instance with its join_ref; broadcasts arrive once", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: CONFIG})
  const r = await joined(fx, gw, "room:dup", "3")
  r.send(["12", "12", "room:dup", "phx_join", {}])
  const reply = await r.next(m => m[1] === "12", "second join reply")
  assert.deepEqual(reply.msg, ok("12", "12", "room:dup"))
  const close = await r.next(m => m[3] === "phx_close", "phx_close of the old instance")
  assert.deepEqual(close.msg, ["3", "3", "room:dup", "phx_close", {}])

  const mark = r.frames.mark()
  assertAccepted(await postJson(gw, "/api/broadcast", {topic: "room:dup", event: "new_msg", payload: {n: 1}}), "broadcast 1")
  assertAccepted(await postJson(gw, "/api/broadcast", {topic: "room:dup", event: "new_msg", payload: {n: 2}}), "broadcast 2")
  await r.next(m => m[3] === "new_msg" && m[4].n === 2, "broadcast 2", {from: mark})
  const ones = r.frames.items.slice(mark).filter(f => !f.binary && f.msg[3] === "new_msg" && f.msg[4].n === 1)
  assert.equal(ones.length, 1, `copies of broadcast 1: ${show(ones)}`)

  // the new instance is live; a push with the stale join_ref is dropped without a reply (§3.8)
  r.send(["3", "20", "room:dup", "new_msg", {stale: true}])
  r.send(["12", "21", "room:dup", "new_msg", {stale: false}])
  await r.next(m => m[1] === "21", "reply to the current join's push")
  assert.deepEqual(r.frames.items.find(f => !f.binary && f.msg[1] === "21").msg, ok("12", "21", "room:dup"))
  const stale = r.frames.items.filter(f => !f.binary && (f.msg[1] === "20" || (f.msg[4] && f.msg[4].stale === true)))
  assert.deepEqual(stale.map(f => f.msg), [], "the stale-join_ref push was answered or broadcast")

  // a leave carrying the stale join_ref is ignored too (§3.6): the current instance stays joined
  r.send(["3", "22", "room:dup", "phx_leave", {}])
  r.send(["12", "23", "room:dup", "new_msg", {after: "stale leave"}])
  assert.deepEqual((await r.next(m => m[1] === "23", "push after the stale leave")).msg, ok("12", "23", "room:dup"))
  await r.next(m => m[3] === "new_msg" && m[4].after === "stale leave", "broadcast after the stale leave")
  const staleLeave = r.frames.items.filter(f => !f.binary && (f.msg[1] === "22" || (f.msg[3] === "phx_close" && f.msg[0] === "12")))
  assert.deepEqual(staleLeave.map(f => f.msg), [], "frames caused by the stale leave")
})

test("wire: binary push is replied with a JSON ok and broadcast as a kind-2 binary frame", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: CONFIG})
  const sender = await joined(fx, gw, "room:bin", "1")
  const other = await joined(fx, gw, "room:bin", "1")
  sender.sendBinary(binaryPush("1", "2", "room:bin", "new_msg", [1, 2, 3]))

  // A broadcast event's reply has no payload of its own, so it is the JSON `{status: "ok",
  // response: {}}` whatever the push was (Phoenix's `{:reply, :ok, socket}`); a kind-1 binary
  // reply only carries a binary response (tests/protocol.rs `a_binary_response_is_a_kind_1_reply`).
  const reply = await sender.frames.waitFor(f => f.binary ? f.bytes[0] === 1 : f.msg[1] === "2", {what: "reply to the binary push"})
  assert.equal(reply.binary, false, `the reply must be a JSON text frame, got binary ${show(reply.bytes && Array.from(reply.bytes))}`)
  assert.deepEqual(reply.msg, ["1", "2", "room:bin", "phx_reply", {status: "ok", response: {}}])

  const topic = Buffer.from("room:bin")
  const event = Buffer.from("new_msg")
  const expected = Buffer.concat([Buffer.from([2, topic.length, event.length]), topic, event, Buffer.from([1, 2, 3])])
  for(const r of [sender, other]){
    const frame = await r.frames.waitFor(f => f.binary && f.bytes[0] === 2, {what: `${r.name}: kind-2 broadcast frame`})
    assert.deepEqual(Array.from(frame.bytes), Array.from(expected), `${r.name} broadcast bytes`)
  }
})

test("wire: serializer negotiation by vsn (V1 objects, unknown vsn refused with 403)", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: CONFIG})
  const v1 = await fx.raw(gw, {query: "vsn=1.0.0"})
  v1.send({topic: "room:v1", event: "phx_join", payload: {}, ref: "1", join_ref: "1"})
  const reply = await v1.frames.waitFor(f => !f.binary && f.msg && f.msg.ref === "1", {what: "V1 join reply"})
  assert.equal(reply.msg.topic, "room:v1")
  assert.equal(reply.msg.event, "phx_reply")
  assert.deepEqual(reply.msg.payload, {status: "ok", response: {}})

  const bad = new RawClient(fx, "bad-vsn", `ws://${gw.host}:${gw.port}/socket/websocket?vsn=3.0.0`)
  fx.raws.push(bad)
  const refused = await bad.events.waitFor(e => e.kind === "http" || e.kind === "open", {what: "handshake outcome"})
  assert.deepEqual(refused, {kind: "http", status: 403})
})

test("wire: tolerated input — null join_ref on a joined topic, extra trailing elements, other events on phoenix", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({config: CONFIG})
  const r = await joined(fx, gw, "room:tol", "1")
  // §3.8: a null join_ref is accepted (V1 and hand-written clients)
  r.send([null, "2", "room:tol", "new_msg", {n: "null-jr"}])
  const nullJr = await r.next(m => m[1] === "2", "reply to a push with join_ref null")
  assert.deepEqual(nullJr.msg.slice(1, 4), ["2", "room:tol", "phx_reply"])
  assert.equal(nullJr.msg[4].status, "ok", show(nullJr.msg))
  await r.next(m => m[3] === "new_msg" && m[4].n === "null-jr", "its broadcast")
  // §2.1: the decoder tolerates extra trailing elements
  r.send(["1", "3", "room:tol", "new_msg", {n: "extra"}, "trailing", 42])
  assert.deepEqual((await r.next(m => m[1] === "3", "reply to a 7-element frame")).msg, ok("1", "3", "room:tol"))
  // §3.2: only `heartbeat` is special on topic phoenix; anything else is an unjoined topic
  r.send([null, "4", "phoenix", "something", {}])
  assert.deepEqual((await r.next(m => m[1] === "4", "reply to a non-heartbeat event on phoenix")).msg,
    [null, "4", "phoenix", "phx_reply", {status: "error", response: {reason: "unmatched topic"}}])
  // the connection is still healthy afterwards
  r.send([null, "5", "phoenix", "heartbeat", {}])
  assert.deepEqual((await r.next(m => m[1] === "5", "heartbeat reply")).msg, ok(null, "5", "phoenix"))
})
