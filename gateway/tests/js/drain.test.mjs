// Drain: SIGTERM makes a node close its sessions with 1012 (service restart) and exit; phoenix.js
// clients reconnect and rejoin by themselves once a new node listens on the same port.

import assert from "node:assert/strict"
import {test} from "node:test"
import {assertAccepted, fixture, nextMessage, okJoins, postJson} from "./helpers/fixture.mjs"

test("drain: SIGTERM closes clients with 1012, node B on the same port gets them back", {timeout: 60000}, async t => {
  const fx = fixture(t)
  const a = await fx.gateway({name: "nodeA"})
  const c1 = fx.client(a, {}, "c1")
  const c2 = fx.client(a, {}, "c2")
  const ch1 = c1.channel("room:drain")
  const ch2 = c2.channel("room:drain")
  await Promise.all([okJoins(ch1, 1), okJoins(ch2, 1)])

  a.signal("SIGTERM")
  const [close1, close2] = await Promise.all([
    c1.events.waitFor(e => e.kind === "close", {what: "close after SIGTERM", timeout: 15000}),
    c2.events.waitFor(e => e.kind === "close", {what: "close after SIGTERM", timeout: 15000}),
  ])
  assert.equal(close1.code, 1012, `c1 close ${close1.code} ${close1.reason}`)
  assert.equal(close2.code, 1012, `c2 close ${close2.code} ${close2.reason}`)
  const exit = await a.waitExit(20000)
  assert.deepEqual(exit, {code: 0, signal: null}, "node A exits cleanly after draining")

  const b = await fx.gateway({name: "nodeB", port: a.port})
  assert.equal(b.port, a.port)
  await Promise.all([okJoins(ch1, 2, {timeout: 20000}), okJoins(ch2, 2, {timeout: 20000})])
  const res = await postJson(b, "/api/broadcast", {topic: "room:drain", event: "new_msg", payload: {from: "B"}})
  assertAccepted(res, "broadcast through node B")
  await Promise.all([
    nextMessage(ch1, "new_msg", p => p.from === "B"),
    nextMessage(ch2, "new_msg", p => p.from === "B"),
  ])
})

test("drain: with batch size 1 the sessions are closed one interval apart", {timeout: 60000}, async t => {
  const fx = fixture(t)
  const a = await fx.gateway({args: ["--drain-batch-size", "1", "--drain-interval-ms", "600", "--shutdown-timeout-ms", "10000"]})
  const clients = [fx.client(a, {}, "d1"), fx.client(a, {}, "d2"), fx.client(a, {}, "d3")]
  const chans = clients.map(c => c.channel("room:batches"))
  await Promise.all(chans.map(ch => okJoins(ch, 1)))

  a.signal("SIGTERM")
  const closedAt = await Promise.all(clients.map(async c => {
    const e = await c.events.waitFor(e => e.kind === "close", {what: "drain close", timeout: 15000})
    assert.equal(e.code, 1012, `${c.name} close ${e.code} ${e.reason}`)
    return e.at
  }))
  closedAt.sort((x, y) => x - y)
  // one session per batch: consecutive closes are at least about one interval apart
  for(let i = 1; i < closedAt.length; i++){
    const gap = closedAt[i] - closedAt[i - 1]
    assert.ok(gap >= 400, `closes ${i - 1} and ${i} only ${gap.toFixed(0)} ms apart (interval 600 ms)`)
  }
  assert.deepEqual(await a.waitExit(20000), {code: 0, signal: null})
})
