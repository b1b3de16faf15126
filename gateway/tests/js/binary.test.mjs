// V2 binary frames through phoenix.js: a push with an ArrayBuffer payload is replied to and
// broadcast as binary, so every subscriber (sender included) gets an ArrayBuffer back.

import assert from "node:assert/strict"
import {test} from "node:test"
import {bytesOf, fixture, nextMessage, okJoins, push, show} from "./helpers/fixture.mjs"

test("binary push and binary broadcast reach both clients as ArrayBuffers", {timeout: 30000}, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway()
  const a = fx.client(gw, {}, "alice")
  const b = fx.client(gw, {}, "bob")
  const cha = a.channel("room:bin")
  const chb = b.channel("room:bin")
  await Promise.all([okJoins(cha, 1), okJoins(chb, 1)])

  const reply = await push(cha, "new_msg", new Uint8Array([1, 2, 3]).buffer)
  assert.equal(reply.status, "ok", `reply ${show(reply)}`)

  const isBinary = p => p instanceof ArrayBuffer
  const [atA, atB] = await Promise.all([
    nextMessage(cha, "new_msg", isBinary, {what: "a binary new_msg at the sender"}),
    nextMessage(chb, "new_msg", isBinary, {what: "a binary new_msg at the other client"}),
  ])
  assert.deepEqual(bytesOf(atA.payload), [1, 2, 3])
  assert.deepEqual(bytesOf(atB.payload), [1, 2, 3])
  // exactly one copy each, and JSON traffic still works on the same channel afterwards
  assert.equal((await push(cha, "new_msg", {after: "binary"})).status, "ok")
  await nextMessage(chb, "new_msg", p => p && p.after === "binary")
  assert.equal(chb.messages.count(m => m.event === "new_msg" && isBinary(m.payload)), 1)
})
