// Handshake and limits seen by WebSocket clients: the Origin allow-list, the message size
// limit (close 1009), V1 as the serializer when `vsn` is missing, and the per-connection
// channel limit (phoenix-protocol §1.3, §1.4, §3.3, §3.11).

import assert from "node:assert/strict"
import {test} from "node:test"
import WebSocket from "ws"
import {RawClient, fixture, withoutHistory} from "./helpers/fixture.mjs"

const T = {timeout: 30000}

function rawTo(fx, gw, name, wsOpts = {}, query = "vsn=2.0.0"){
  const r = new RawClient(fx, name, `ws://${gw.host}:${gw.port}/socket/websocket?${query}`, wsOpts)
  fx.raws.push(r)
  return r
}

const outcome = r => r.events.waitFor(e => e.kind === "http" || e.kind === "open", {what: "handshake outcome"})

test("check-origin: listed origins and requests without Origin connect, others get 403", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({args: ["--check-origin", "http://good.example"]})
  assert.deepEqual(await outcome(rawTo(fx, gw, "good", {origin: "http://good.example"})), {kind: "open"})
  assert.deepEqual(await outcome(rawTo(fx, gw, "no-origin")), {kind: "open"})
  assert.deepEqual(await outcome(rawTo(fx, gw, "evil", {origin: "http://evil.example"})), {kind: "http", status: 403})

  // phoenix.js from a page on a listed origin works end to end
  const c = fx.client(gw, {transport: class extends WebSocket {
    constructor(url, protocols){ super(url, protocols, {origin: "http://good.example"}) }
  }})
  await c.waitOpen()
})

test("max message size: a larger client message closes the socket with 1009", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({args: ["--max-message-size", "4096"]})
  const r = await fx.raw(gw)
  r.send(["1", "1", "room:big", "phx_join", {}])
  await r.next(m => m[1] === "1", "join reply")
  r.send(["1", "2", "room:big", "new_msg", {body: "x".repeat(1000)}])
  await r.next(m => m[1] === "2", "a message under the limit is fine")
  r.send(["1", "3", "room:big", "new_msg", {body: "x".repeat(8192)}])
  const close = await r.events.waitFor(e => e.kind === "close", {what: "close after the oversized message"})
  assert.equal(close.code, 1009, `close ${close.code} ${close.reason}`)
  assert.equal(r.frames.count(f => !f.binary && f.msg[1] === "3"), 0, "the oversized message was not processed")
})

test("vsn: a missing vsn means the V1 serializer", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const r = await fx.raw(gw, {query: ""})
  r.send({topic: "room:v1", event: "phx_join", payload: {}, ref: "1"})
  const reply = await r.frames.waitFor(f => !f.binary && f.msg && f.msg.ref === "1", {what: "V1 join reply"})
  assert.deepEqual({topic: reply.msg.topic, event: reply.msg.event, ref: reply.msg.ref, payload: withoutHistory(reply.msg.payload)},
    {topic: "room:v1", event: "phx_reply", ref: "1", payload: {status: "ok", response: {}}})
  assert.ok(!Array.isArray(reply.msg), "V1 frames are objects")
  r.send({topic: "room:v1", event: "new_msg", payload: {v: 1}, ref: "2"})
  const bc = await r.frames.waitFor(f => !f.binary && f.msg && f.msg.event === "new_msg", {what: "V1 broadcast"})
  assert.deepEqual({topic: bc.msg.topic, payload: bc.msg.payload}, {topic: "room:v1", payload: {v: 1}})
  // the demo channel keeps history: the V1 broadcast's ref is its position
  assert.match(bc.msg.ref, /^[a-z][a-z0-9]*-\d+$/)
})

test("channel limit: the 101st channel on one connection is refused", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const r = await fx.raw(gw)
  for(let i = 1; i <= 101; i++){ r.send([`${i}`, `${i}`, `room:${i}`, "phx_join", {}]) }
  const last = await r.next(m => m[1] === "101", "reply to join #101", {timeout: 10000})
  for(let i = 1; i <= 100; i++){
    const reply = await r.next(m => m[1] === `${i}`, `reply to join #${i}`)
    assert.equal(reply.msg[4].status, "ok", `join #${i}: ${JSON.stringify(reply.msg)}`)
  }
  assert.deepEqual(last.msg, ["101", "101", "room:101", "phx_reply", {status: "error", response: {reason: "too many channels joined"}}])
  // leaving one makes room again
  r.send(["1", "102", "room:1", "phx_leave", {}])
  await r.next(m => m[1] === "102", "leave reply")
  r.send(["103", "103", "room:103", "phx_join", {}])
  assert.equal((await r.next(m => m[1] === "103", "join after a leave")).msg[4].status, "ok")
})
