// Three gateway nodes clustered through a private redis-server, driven by phoenix.js clients
// connected to different nodes: broadcasts cross nodes in every direction, the HTTP API of one
// node reaches subscribers of the others, and a forced disconnect requested on one node closes
// that session id's connections on the other nodes (1001), after which phoenix.js reconnects.

import assert from "node:assert/strict"
import {test} from "node:test"
import {LongPoll} from "phoenix"
import {apiBroadcast, awaitMesh, httpRequest} from "./helpers/cluster.mjs"
import {fixture, nextMessage, nowSecs, okJoins, push, show, signJwt, withoutHistory} from "./helpers/fixture.mjs"

test("cluster: clients on three nodes exchange broadcasts; /api/broadcast on A reaches B and C", {timeout: 60000}, async t => {
  const fx = fixture(t)
  const {nodes} = await fx.cluster(3)
  const [a, b, c] = nodes
  const clients = nodes.map(n => fx.client(n, {}, `on-${n.name}`))
  const chans = clients.map(cl => cl.channel("room:cluster", {user: cl.name}))
  await Promise.all(chans.map(ch => okJoins(ch, 1)))
  await awaitMesh("room:cluster", nodes, chans)

  // every client pushes once; every client (sender included) gets all three, exactly once each
  for(const [i, ch] of chans.entries()){
    assert.deepEqual(withoutHistory(await push(ch, "new_msg", {body: `hello from ${nodes[i].name}`})), {status: "ok", response: {}})
  }
  for(const ch of chans){
    await Promise.all(nodes.map(n => nextMessage(ch, "new_msg", p => p.body === `hello from ${n.name}`)))
  }

  const res = await apiBroadcast(a, "room:cluster", "announcement", {text: "from the API of A"})
  assert.ok(res.status >= 200 && res.status < 300, `POST /api/broadcast on A: ${res.status} ${res.text}`)
  await Promise.all(chans.map(ch => nextMessage(ch, "announcement", p => p.text === "from the API of A")))

  // no duplicates: Redis fan-out must not echo a node's own broadcasts back to it
  for(const [i, ch] of chans.entries()){
    const got = ch.messages.items.filter(m => m.event === "new_msg" || m.event === "announcement").map(m => m.payload.body || m.payload.text)
    assert.equal(got.length, 4, `${clients[i].name} got ${show(got)}`)
    assert.equal(new Set(got).size, 4, `${clients[i].name} got duplicates: ${show(got)}`)
  }
})

test("cluster: /api/disconnect on A closes user_socket:42 on B and C with 1001 and phoenix.js reconnects", {timeout: 60000}, async t => {
  const fx = fixture(t)
  const secret = "cluster-secret"
  const {nodes} = await fx.cluster(3, {args: ["--jwt-secret", secret, "--longpoll-window-ms", "1000"]})
  const [a, b, c] = nodes
  const token = sub => signJwt({sub, exp: nowSecs() + 600}, secret)

  const target = fx.client(c, {params: {token: token("42")}}, "ws42-on-C")
  const alsoTarget = fx.client(b, {params: {token: token("42")}}, "ws42-on-B")
  const lpTarget = fx.client(b, {transport: LongPoll, authToken: token("42")}, "lp42-on-B")
  const bystander = fx.client(c, {params: {token: token("7")}}, "ws7-on-C")
  const all = [target, alsoTarget, lpTarget, bystander]
  const chans = all.map(cl => cl.channel("room:kick", {user: cl.name}))
  await Promise.all(chans.map(ch => okJoins(ch, 1)))
  await awaitMesh("room:kick", nodes, chans)

  const res = await httpRequest(`${a.httpUrl}/api/disconnect`, {
    method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify({id: "user_socket:42"}),
  })
  assert.ok(res.status >= 200 && res.status < 300, `POST /api/disconnect on A: ${res.status} ${res.text}`)

  const [closeC, closeB] = await Promise.all([target, alsoTarget].map(cl =>
    cl.events.waitFor(e => e.kind === "close", {what: `${cl.name} closed by the forced disconnect`})))
  assert.equal(closeC.code, 1001, `close on C: ${show(closeC)}`)
  assert.equal(closeB.code, 1001, `close on B: ${show(closeB)}`)
  // the LongPoll session of the same id ends too; the client learns it on its next poll
  const lpClose = await lpTarget.events.waitFor(e => e.kind === "close", {what: "the LongPoll session of user_socket:42 ended", timeout: 8000})
  t.diagnostic(`LongPoll client of user_socket:42 closed with ${lpClose.code} ${lpClose.reason}`)

  // phoenix.js reconnects (same token, still valid) and rejoins by itself
  await Promise.all([target, alsoTarget, lpTarget].map(cl => cl.waitOpenCount(2, {timeout: 10000})))
  await Promise.all(chans.slice(0, 3).map(ch => okJoins(ch, 2, {timeout: 10000})))
  await awaitMesh("room:kick", nodes, chans)
  assert.deepEqual(withoutHistory(await push(chans[0], "new_msg", {body: "back"})), {status: "ok", response: {}})
  await Promise.all(chans.map(ch => nextMessage(ch, "new_msg", p => p.body === "back")))

  // the bystander on C with another id was never touched
  assert.equal(bystander.events.count(e => e.kind === "close"), 0, `bystander events ${show(bystander.events.items)}`)
  assert.equal(bystander.events.count(e => e.kind === "open"), 1)
  assert.equal(okCount(chans[3]), 1, "the bystander joined once and was never rejoined")
})

function okCount(ch){ return ch.joins.count(j => j.status === "ok") }
