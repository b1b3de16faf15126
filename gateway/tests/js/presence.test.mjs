// Cluster-wide Presence seen through the official phoenix.js `Presence` object: clients on
// different nodes of a Redis-backed cluster must end up with identical lists after joins, a
// leave, a second tab of the same user and a meta update; a reconnecting client gets the fresh
// full state again; a SIGKILLed node's users leave everywhere within the configured down period;
// a Redis restart loses nobody and makes no client see a leave or join of users who stayed; and a
// node cut off from Redis (a partition) is consistent with the others again once it heals.
//
// Everything is awaited on `onSync` (with timeouts). The only timed waits are deliberate: how
// long Redis or a partition lasts, and the window in which a wrongly declared-down node would
// have its users leave (an absent event can only be observed over a window).
//
// Tests marked GATEWAY BUG assert the correct (Phoenix) behaviour and fail against the gateway
// of commit 27bd2e9; the comment above each says what goes wrong.

import assert from "node:assert/strict"
import {test} from "node:test"
import {httpRequest, until, waitReady} from "./helpers/cluster.mjs"
import {fixture, nowSecs, okJoins, push, show, signJwt} from "./helpers/fixture.mjs"
import {startGateway} from "./helpers/gateway.mjs"
import {PresenceView, RedisLink, hasShape, restartRedisOn, shape} from "./helpers/presence.mjs"

/** Presence timing used where node failure matters: heartbeats every 200 ms, down after 2 s. */
const HEARTBEAT_MS = 200
const DOWN_AFTER_MS = 2000
const FAST_PRESENCE = ["--presence-heartbeat-ms", String(HEARTBEAT_MS), "--presence-down-after-ms", String(DOWN_AFTER_MS)]

/** Cross-node convergence goes through Redis; generous so a loaded CI machine still passes. */
const SYNC_WAIT_MS = 10000

/** A phoenix.js client on `gw` joining `topic` with `params`, its Presence recorded. */
function member(fx, gw, topic, params, name, socketOpts = {}){
  const client = fx.client(gw, socketOpts, name)
  const channel = client.channel(topic, params)
  // made before the join reply can arrive, so the first presence_state is seen
  return new PresenceView(fx, client, channel, name)
}

/** Asserts that every view's current list equals the first's (full metas, refs included). */
function assertAgree(views, what){
  const reference = views[0].list()
  for(const v of views.slice(1)){
    assert.deepEqual(v.list(), reference, `${what}: ${v.name}'s list differs from ${views[0].name}'s`)
  }
}

/** Resolves once every view synced (at or after its `marks` entry) to `expected` key → meta count. */
function allShaped(views, expected, marks = null, timeout = SYNC_WAIT_MS){
  return Promise.all(views.map((v, i) => v.waitShape(expected, {timeout, from: marks ? marks[i].syncs : 0})))
}

function refsOf(list, key){ return (list[key] || []).map(m => m.phx_ref) }

test("presence: three nodes agree after joins, a leave, two tabs of one user and an update", {timeout: 90000}, async t => {
  const fx = fixture(t)
  const {nodes} = await fx.cluster(3)
  const [a, b, c] = nodes
  const topic = "room:presence"
  const people = [
    {gw: a, user: "ann", name: "Ann"},
    {gw: b, user: "bob", name: "Bob"},
    {gw: c, user: "cat", name: "Cat"},
  ]
  const [ann, bob, cat] = people.map(p => member(fx, p.gw, topic,
    {user: p.user, name: p.name, status: "online", secret: "not an allowed meta field"}, `${p.user}-on-${p.gw.name}`))
  // a join without `user` is not tracked, but sees everybody
  const observer = member(fx, b, topic, {name: "lurker"}, "observer-on-B")
  let views = [ann, bob, cat, observer]
  await Promise.all(views.map(v => okJoins(v.channel, 1)))

  // 1. joins: everybody, observer included, lists the three users with one meta each
  const t0 = performance.now()
  await allShaped(views, {ann: 1, bob: 1, cat: 1})
  t.diagnostic(`initial lists agreed after ${Math.round(performance.now() - t0)} ms`)
  assertAgree(views, "after the joins")
  const joined = ann.list()
  for(const p of people){
    const [meta] = joined[p.user]
    assert.deepEqual(Object.keys(meta).sort(), ["name", "online_at", "phx_ref", "status"],
      `meta of ${p.user} holds exactly the allow-listed fields, online_at and phx_ref: ${show(meta)}`)
    assert.equal(meta.name, p.name)
    assert.equal(meta.status, "online")
    assert.equal(typeof meta.online_at, "number")
    assert.equal(typeof meta.phx_ref, "string")
  }
  assert.equal(new Set(people.map(p => joined[p.user][0].phx_ref)).size, 3, `phx_refs are unique: ${show(joined)}`)
  const untracked = await push(observer.channel, "presence_update", {status: "away"})
  assert.deepEqual(untracked, {status: "error", response: {reason: "not tracked"}}, "an untracked client cannot update")

  // 2. a leave: bob leaves the topic; the others see exactly his meta leave
  const bobRef = joined.bob[0].phx_ref
  views = [ann, cat, observer]
  let marks = views.map(v => v.mark())
  await new Promise((resolve, reject) => bob.channel.leave().receive("ok", resolve).receive("timeout", () => reject(new Error("leave timed out"))))
  await allShaped(views, {ann: 1, cat: 1}, marks)
  assertAgree(views, "after bob left")
  for(const [i, v] of views.entries()){
    assert.deepEqual(v.leavesSince(marks[i]).map(l => [l.key, l.refs]), [["bob", [bobRef]]], `${v.name} saw bob's one meta leave`)
    assert.deepEqual(v.newJoinsSince(marks[i]), [], `${v.name} saw no join on bob's leave`)
  }
  assert.equal(ann.list().ann[0].phx_ref, joined.ann[0].phx_ref, "ann's meta did not change")

  // 3. the same user from a second tab, on another node: two metas under one key
  marks = views.map(v => v.mark())
  const ann2 = member(fx, c, topic, {user: "ann", name: "Ann", status: "online"}, "ann-tab2-on-C")
  views = [ann, cat, observer, ann2]
  marks.push(ann2.mark())
  await okJoins(ann2.channel, 1)
  await allShaped(views, {ann: 2, cat: 1}, marks)
  assertAgree(views, "after ann's second tab joined")
  const tab1Ref = joined.ann[0].phx_ref
  const tab2Ref = refsOf(ann.list(), "ann").find(r => r !== tab1Ref)
  assert.ok(tab2Ref && refsOf(ann.list(), "ann").includes(tab1Ref), `ann has both tabs' metas: ${show(ann.list())}`)

  // 4. an update from tab 1: one diff joins the new meta (phx_ref_prev = the old ref) and
  // leaves the old one, so no client ever lists ann with one or three metas in between
  marks = views.map(v => v.mark())
  assert.deepEqual(await push(ann.channel, "presence_update", {status: "away", secret: "dropped"}), {status: "ok", response: {}})
  const updated = list => list.ann?.length === 2 && list.ann.some(m => m.status === "away")
  await Promise.all(views.map((v, i) => v.waitSync(updated, "ann's tab 1 away", {timeout: SYNC_WAIT_MS, from: marks[i].syncs})))
  assertAgree(views, "after the update")
  const after = ann.list()
  const away = after.ann.find(m => m.status === "away")
  const tab2 = after.ann.find(m => m.status !== "away")
  assert.deepEqual(Object.keys(away).sort(), ["online_at", "phx_ref", "phx_ref_prev", "status"],
    `the update replaced tab 1's meta with the allow-listed fields: ${show(away)}`)
  assert.equal(away.phx_ref_prev, tab1Ref, "phx_ref_prev names the replaced meta")
  assert.notEqual(away.phx_ref, tab1Ref, "the new meta has a fresh phx_ref")
  assert.equal(tab2.phx_ref, tab2Ref, "tab 2's meta is untouched")
  assert.equal(tab2.status, "online")
  assert.deepEqual(shape(after), {ann: 2, cat: 1})
  for(const [i, v] of views.entries()){
    const syncs = v.syncs.items.slice(marks[i].syncs)
    assert.ok(syncs.every(s => s.list.ann?.length === 2),
      `${v.name} always listed ann with two metas during the update: ${show(syncs.map(s => shape(s.list)))}`)
    assert.deepEqual(v.newJoinsSince(marks[i]).map(j => [j.key, j.refs]), [["ann", [away.phx_ref]]], `${v.name}: one join, the new meta`)
    assert.deepEqual(v.leavesSince(marks[i]).map(l => [l.key, l.refs]), [["ann", [tab1Ref]]], `${v.name}: one leave, the old meta`)
  }
})

/**
 * Reconnect scenario shared by the open-mode and JWT-mode tests: `mover` loses its WebSocket by
 * `breakConnection()`; phoenix.js reconnects and rejoins. `onSync` must fire again, and the first
 * sync after the rejoin must be the fresh full state (its own new meta and everybody else's, as
 * phoenix.js' `syncState` treats any key missing from a `presence_state` as a leave), which every
 * other client (`others`: presence key → view) agrees with.
 */
async function reconnectScenario(t, {mover, moverKey, others, breakConnection, expectCode}){
  const views = [mover, ...Object.values(others)]
  await Promise.all(views.map(v => okJoins(v.channel, 1)))
  const expected = Object.fromEntries([moverKey, ...Object.keys(others)].map(k => [k, 1]))
  await allShaped(views, expected)
  assertAgree(views, "before the reconnect")
  const before = mover.list()
  const marks = views.map(v => v.mark())
  const events = mover.client.events.mark()
  const states = mover.channel.messages.mark()

  const t0 = performance.now()
  await breakConnection()
  const closed = await mover.client.events.waitFor(e => e.kind === "close", {what: "the mover's socket closed", from: events})
  assert.equal(closed.code, expectCode, `close event ${show(closed)}`)
  await mover.client.waitOpenCount(2, {timeout: 10000})
  await okJoins(mover.channel, 2, {timeout: 10000})

  // onSync fires again after the rejoin, and everybody converges on the mover's new meta
  const first = await mover.syncs.waitFor(() => true, {from: marks[0].syncs, timeout: SYNC_WAIT_MS, what: "a sync after the rejoin"})
  t.diagnostic(`reconnected client synced ${Math.round(first.at - t0)} ms after its connection was broken; ` +
    `first list after the rejoin: ${show(shape(first.list))}`)
  const newRef = refsOf(first.list, moverKey)[0]
  assert.ok(newRef && newRef !== before[moverKey][0].phx_ref, `the mover is listed with a fresh meta: ${show(first.list)}`)
  const converged = list => hasShape(list, expected) && refsOf(list, moverKey)[0] === newRef
  await Promise.all(views.map((v, i) => v.waitSync(converged, `${moverKey}'s new meta and everybody else`,
    {timeout: SYNC_WAIT_MS, from: marks[i].syncs})))
  assertAgree(views, "after the reconnect")
  const {[moverKey]: _moved, ...othersBefore} = before
  const {[moverKey]: _movedNow, ...othersNow} = mover.list()
  assert.deepEqual(othersNow, othersBefore, "the others' metas are unchanged")

  // The first presence_state after the rejoin must already be the full state. Phoenix replicates
  // every topic to every node, so a rejoin never sees the others missing; when this fails, the
  // reconnected client has seen everybody else leave and join again (see the recorded callbacks).
  // GATEWAY BUG (27bd2e9) when the mover was its node's only member of the topic: the node drops
  // its replica of a topic nobody there watches, so the rejoin's presence_state holds only the
  // mover, and the others' metas come back as a diff after the node's sync request is answered.
  const history = `syncs since the reconnect: ${show(mover.syncs.items.slice(marks[0].syncs).map(s => shape(s.list)))}; ` +
    `leaves: ${show(mover.leavesSince(marks[0]).map(l => l.key))}; joins: ${show(mover.joinsSince(marks[0]).map(j => j.key))}; ` +
    `presence_state payloads: ${show(mover.channel.messages.items.slice(states).filter(m => m.event === "presence_state").map(m => m.payload))}`
  assert.deepEqual(shape(first.list), expected, `the first presence_state after the rejoin is the full state; ${history}`)
  assert.deepEqual(mover.leavesSince(marks[0]).map(l => l.key).filter(k => k !== moverKey), [],
    `the reconnected client saw no leave of users who stayed; ${history}`)
}

// GATEWAY BUG (27bd2e9): fails on the full-state assertion, see reconnectScenario.
test("presence: after a reconnect (WebSocket closed under phoenix.js) onSync fires with the fresh state", {timeout: 60000}, async t => {
  const fx = fixture(t)
  const {nodes: [a, b]} = await fx.cluster(2)
  const topic = "room:reconnect"
  // ann is the only member on A: when her WebSocket closes A has no member of the topic left
  const mover = member(fx, a, topic, {user: "ann"}, "ann-on-A")
  const bob = member(fx, b, topic, {user: "bob"}, "bob-on-B")
  await reconnectScenario(t, {
    mover, moverKey: "ann", others: {bob}, expectCode: 4000,
    breakConnection: async () => mover.client.socket.conn.close(4000, "test breaks the connection"),
  })
})

test("presence: JWT mode keys by sub; after /api/disconnect and reconnect onSync fires with the fresh state", {timeout: 60000}, async t => {
  const fx = fixture(t)
  const secret = "presence-secret"
  const {nodes: [a, b]} = await fx.cluster(2, {args: ["--jwt-secret", secret]})
  const topic = "room:jwt"
  const token = sub => signJwt({sub, exp: nowSecs() + 600}, secret)
  // the join payload's `user` must not matter in JWT mode: the key is the token's sub
  const mover = member(fx, a, topic, {user: "claims-to-be-7"}, "sub42-on-A", {params: {token: token("42")}})
  const seven = member(fx, b, topic, {user: "claims-to-be-42"}, "sub7-on-B", {params: {token: token("7")}})
  // sub 9 keeps A a member of the topic while 42 reconnects (so this case passes despite the bug
  // above: A still holds the topic's replica when 42 rejoins)
  const nine = member(fx, a, topic, {}, "sub9-on-A", {params: {token: token("9")}})
  await reconnectScenario(t, {
    mover, moverKey: "42", others: {7: seven, 9: nine}, expectCode: 1001,
    breakConnection: async () => {
      const res = await httpRequest(`${b.httpUrl}/api/disconnect`, {
        method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify({id: "user_socket:42"}),
      })
      assert.ok(res.status >= 200 && res.status < 300, `POST /api/disconnect on B: ${res.status} ${res.text}`)
    },
  })
  for(const v of [mover, seven, nine]){
    assert.deepEqual(Object.keys(v.list()).sort(), ["42", "7", "9"], `${v.name} lists subs only: ${show(v.list())}`)
  }
})

test("presence: a SIGKILLed node's users leave every other client's list within the down period + 1 s", {timeout: 60000}, async t => {
  const fx = fixture(t)
  const {nodes} = await fx.cluster(3, {args: FAST_PRESENCE})
  const [a, b, c] = nodes
  const topic = "room:nodedown"
  const ann = member(fx, a, topic, {user: "ann"}, "ann-on-A")
  const bob = member(fx, b, topic, {user: "bob"}, "bob-on-B")
  const cat = member(fx, c, topic, {user: "cat"}, "cat-on-C")
  const dan = member(fx, c, topic, {user: "dan"}, "dan-on-C")
  const bobOnC = member(fx, c, topic, {user: "bob"}, "bob-tab2-on-C")
  const all = [ann, bob, cat, dan, bobOnC]
  await Promise.all(all.map(v => okJoins(v.channel, 1)))
  await allShaped(all, {ann: 1, bob: 2, cat: 1, dan: 1})
  assertAgree(all, "before the kill")
  const before = ann.list()
  const survivors = [ann, bob]
  const marks = survivors.map(v => v.mark())

  const t0 = performance.now()
  c.proc.kill("SIGKILL")
  await c.waitExit(5000)
  const limit = DOWN_AFTER_MS + 1000
  // waited a little past the limit so a late removal is measured rather than just timing out
  const gone = await Promise.all(survivors.map((v, i) => v.waitSync(
    list => !list.cat && !list.dan && list.bob?.length === 1, "C's users gone",
    {timeout: limit + 3000, from: marks[i].syncs})))
  const elapsed = gone.map(s => Math.round(s.at - t0))
  t.diagnostic(`C's users left ${survivors.map((v, i) => `${v.name} after ${elapsed[i]} ms`).join(", ")} ` +
    `(down period ${DOWN_AFTER_MS} ms, heartbeat ${HEARTBEAT_MS} ms)`)
  for(const [i, v] of survivors.entries()){
    assert.ok(elapsed[i] <= limit, `${v.name} saw C's users leave ${elapsed[i]} ms after the kill; limit ${limit} ms`)
  }
  assertAgree(survivors, "after C went down")
  // exactly C's metas left; ann's and bob's meta from B stayed as they were
  const bobOnB = bob.list().bob[0]
  assert.ok(before.bob.some(m => m.phx_ref === bobOnB.phx_ref), "bob's remaining meta is the one on B")
  assert.deepEqual(ann.list(), {ann: before.ann, bob: [bobOnB]})
  const bobOnCRef = before.bob.find(m => m.phx_ref !== bobOnB.phx_ref).phx_ref
  for(const [i, v] of survivors.entries()){
    const left = v.leavesSince(marks[i]).map(l => [l.key, l.refs]).sort()
    assert.deepEqual(left, [["bob", [bobOnCRef]], ["cat", before.cat.map(m => m.phx_ref)], ["dan", before.dan.map(m => m.phx_ref)]],
      `${v.name} saw exactly C's metas leave`)
    assert.deepEqual(v.newJoinsSince(marks[i]), [], `${v.name} saw no join`)
  }
})

test("presence: at default settings a SIGKILLed node's users leave the other node's clients within 5 s", {timeout: 60000}, async t => {
  const fx = fixture(t)
  // no presence flags: heartbeat 1 s, down after 5 s, diffs batched over 20 ms
  const {nodes} = await fx.cluster(2)
  const [a, b] = nodes
  const topic = "room:nodedown-defaults"
  const ann = member(fx, a, topic, {user: "ann"}, "ann-on-A")
  const bob = member(fx, b, topic, {user: "bob"}, "bob-on-B")
  await Promise.all([ann, bob].map(v => okJoins(v.channel, 1)))
  await allShaped([ann, bob], {ann: 1, bob: 1})
  const mark = ann.mark()

  const t0 = performance.now()
  const killedAt = new Date().toISOString()
  b.proc.kill("SIGKILL")
  await b.waitExit(5000)
  const limit = 5000
  // waited past the limit so a late removal is measured rather than just timing out
  const gone = await ann.waitSync(list => !list.bob, "bob gone", {timeout: limit + 3000, from: mark.syncs})
  const elapsed = Math.round(gone.at - t0)
  t.diagnostic(`bob (on the killed node) left ann's list ${elapsed} ms after the kill`)
  assert.ok(elapsed <= limit, `bob left ${elapsed} ms after the kill at ${killedAt}; limit ${limit} ms\n${a.log()}`)
  assert.deepEqual(ann.leavesSince(mark).map(l => l.key), ["bob"], "exactly bob left")
  assert.deepEqual(Object.keys(ann.list()), ["ann"])
})

/**
 * Redis restart scenario: every node loses Redis, Redis comes back empty on the same port after
 * `outageMs`, and the clients (whose WebSockets stay up) must keep identical lists with no
 * leave or join callback at all, before a new member joining afterwards shows that presence
 * replicates again.
 */
async function redisRestartScenario(t, {outageMs}){
  const fx = fixture(t)
  const {redis, nodes} = await fx.cluster(3, {args: FAST_PRESENCE})
  const [a, b, c] = nodes
  const topic = "room:redisrestart"
  const views = [
    member(fx, a, topic, {user: "ann", status: "online"}, "ann-on-A"),
    member(fx, b, topic, {user: "bob", status: "online"}, "bob-on-B"),
    member(fx, c, topic, {user: "cat", status: "online"}, "cat-on-C"),
    member(fx, c, topic, {user: "ann", status: "online"}, "ann-tab2-on-C"),
  ]
  await Promise.all(views.map(v => okJoins(v.channel, 1)))
  await allShaped(views, {ann: 2, bob: 1, cat: 1})
  assertAgree(views, "before the Redis restart")
  const before = views[0].list()
  const marks = views.map(v => v.mark())
  const closesBefore = views.map(v => v.client.events.count(e => e.kind === "close"))

  const port = redis.port
  const t0 = performance.now()
  redis.proc.kill("SIGKILL")
  await redis.exited
  // every node notices it cannot hear the cluster (otherwise the outage tested nothing)
  await Promise.all(nodes.map(gw => until(async () => (await httpRequest(`${gw.httpUrl}/readyz`)).status === 503,
    {what: `${gw.name} /readyz 503 after Redis died`, timeout: 10000, context: () => gw.log()})))
  const noticed = performance.now()
  if(outageMs > 0){
    // a deliberate outage length, not a wait for an event
    await new Promise(resolve => setTimeout(resolve, Math.max(0, outageMs - (noticed - t0))))
  }
  await restartRedisOn(fx, port)
  const restarted = performance.now()
  await Promise.all(nodes.map(gw => waitReady(gw, 15000)))
  const ready = performance.now()
  t.diagnostic(`Redis down for ${Math.round(restarted - t0)} ms (all nodes not-ready after ${Math.round(noticed - t0)} ms); ` +
    `all nodes ready again ${Math.round(ready - restarted)} ms after the restart`)

  // a node wrongly judged down would lose its users within the down period after recovery:
  // observe that whole window (plus heartbeats), then prove replication works again
  await new Promise(resolve => setTimeout(resolve, DOWN_AFTER_MS + 3 * HEARTBEAT_MS + 500))
  const eve = member(fx, b, topic, {user: "eve", status: "online"}, "eve-on-B")
  // marked before the join: eve's presence_state may be synced by the time the join reply is seen
  marks.push(eve.mark())
  await okJoins(eve.channel, 1)
  await allShaped([...views, eve], {ann: 2, bob: 1, cat: 1, eve: 1}, marks)
  assertAgree([...views, eve], "after the Redis restart")
  const afterList = views[0].list()
  const {eve: eveMetas, ...rest} = afterList
  assert.deepEqual(rest, before, "no presence was lost or replaced by the Redis restart")
  assert.equal(eveMetas.length, 1)

  for(const [i, v] of views.entries()){
    assert.deepEqual(v.leavesSince(marks[i]).map(l => [l.key, l.refs]), [],
      `${v.name}: no leave callback for users who never left (Redis restart)`)
    // Only joins that added a meta: the diff of the first sync may reach a client after its
    // presence_state already listed those metas (phoenix.js then fires onJoin without a change,
    // as for a Phoenix client's own join), and it may arrive after the mark above.
    assert.deepEqual(v.newJoinsSince(marks[i]).map(j => [j.key, j.refs]), [["eve", eveMetas.map(m => m.phx_ref)]],
      `${v.name}: the only join that added a meta is eve's`)
    const syncs = v.syncs.items.slice(marks[i].syncs).map(s => shape(s.list))
    assert.ok(syncs.every(s => s.ann === 2 && s.bob === 1 && s.cat === 1),
      `${v.name} never listed fewer users during the restart: ${show(syncs)}`)
    assert.equal(v.client.events.count(e => e.kind === "close"), closesBefore[i], `${v.name}'s WebSocket stayed up`)
    assert.equal(v.channel.joins.count(j => j.status === "ok"), 1, `${v.name} was never rejoined`)
  }
  // the cause such joins and leaves would have: a node judging another down over the outage
  for(const gw of nodes){
    assert.doesNotMatch(gw.log(), /node is down|node restarted/, `${gw.name} judged no node down or restarted`)
  }
}

test("presence: a quick Redis restart loses no presence and fires no leave/join for users who stayed", {timeout: 90000}, async t => {
  await redisRestartScenario(t, {outageMs: 0})
})

test("presence: a Redis outage longer than the down period loses no presence and fires no leave/join", {timeout: 90000}, async t => {
  await redisRestartScenario(t, {outageMs: DOWN_AFTER_MS + 1500})
})

/**
 * Two nodes on Redis directly and node C behind a RedisLink (so C alone can be partitioned), all
 * with presence timing `args`; cat and dan on C, ann on A, bob on B, lists agreed.
 */
async function partitionCluster(t, args){
  const fx = fixture(t)
  const {redis, nodes: [a, b]} = await fx.cluster(2, {args})
  const link = await new RedisLink(redis.port).listen()
  fx.proxies.push(link)
  const c = await startGateway({name: "nodeC", args: ["--redis-url", link.url, "--node-id", "nodeC", ...args]})
  fx.gateways.push(c)
  await waitReady(c)
  const topic = "room:partition"
  const views = {
    ann: member(fx, a, topic, {user: "ann"}, "ann-on-A"),
    bob: member(fx, b, topic, {user: "bob"}, "bob-on-B"),
    cat: member(fx, c, topic, {user: "cat"}, "cat-on-C"),
    dan: member(fx, c, topic, {user: "dan"}, "dan-on-C"),
  }
  await Promise.all(Object.values(views).map(v => okJoins(v.channel, 1)))
  await allShaped(Object.values(views), {ann: 1, bob: 1, cat: 1, dan: 1})
  assertAgree(Object.values(views), "before the partition")
  return {fx, link, a, b, c, topic, views}
}

/** Cuts C from Redis and resolves once C reports that it cannot hear the cluster. */
async function partition(link, c){
  link.cut()
  await until(async () => (await httpRequest(`${c.httpUrl}/readyz`)).status === 503,
    {what: "nodeC /readyz 503 after its Redis link was cut", timeout: 10000, context: () => c.log()})
}

// GATEWAY BUG (27bd2e9): fails. The changes C makes while deaf are published into the void, and
// after the heal only C asks the others for their state (nobody asks C), so A and B list dan
// forever and never list eve.
test("presence: changes on a node partitioned from Redis (shorter than the down period) reach every node after the heal", {timeout: 60000}, async t => {
  // default presence timing (down after 5 s): this partition is well shorter
  const {fx, link, c, topic, views} = await partitionCluster(t, [])
  const {ann, bob, cat, dan} = views
  const marks = [ann, bob, cat].map(v => v.mark())
  const before = ann.list()
  await partition(link, c)
  // while C is cut off: dan leaves and eve joins there
  await new Promise((resolve, reject) => dan.channel.leave().receive("ok", resolve).receive("timeout", () => reject(new Error("leave timed out"))))
  const eve = member(fx, c, topic, {user: "eve"}, "eve-on-C")
  await okJoins(eve.channel, 1)
  await new Promise(resolve => setTimeout(resolve, 1000)) // the partition's length
  link.restore()
  await waitReady(c, 15000)

  const everybody = [ann, bob, cat, eve]
  const res = await Promise.allSettled(everybody.map((v, i) =>
    v.waitShape({ann: 1, bob: 1, cat: 1, eve: 1}, {from: i < 3 ? marks[i].syncs : 0})))
  const lists = everybody.map(v => `${v.name}: ${show(shape(v.list()))}`).join("; ")
  assert.ok(res.every(r => r.status === "fulfilled"),
    `GATEWAY BUG: after the heal every client lists ann, bob, cat and eve (dan left) — lists now: ${lists}`)
  assertAgree(everybody, "after the heal")
  for(const [i, v] of [ann, bob, cat].entries()){
    assert.deepEqual(v.leavesSince(marks[i]).map(l => l.key), ["dan"], `${v.name}: only dan left`)
  }
  assert.deepEqual(ann.list().cat, before.cat, "cat's meta is unchanged")
})

// GATEWAY BUG (27bd2e9): fails. A and B rightly drop C's users once C is silent for the down
// period, but when C hears the cluster again it only asks the others for their state; nobody asks
// C, so cat and dan never come back on A and B (Phoenix re-joins a replica's presences when it
// comes back).
test("presence: a node partitioned longer than the down period has its users leave, and back when it heals", {timeout: 60000}, async t => {
  const {link, c, views} = await partitionCluster(t, FAST_PRESENCE)
  const {ann, bob, cat, dan} = views
  const before = ann.list()
  let marks = [ann, bob].map(v => v.mark())
  const t0 = performance.now()
  await partition(link, c)
  await Promise.all([ann, bob].map((v, i) => v.waitShape({ann: 1, bob: 1},
    {from: marks[i].syncs, timeout: DOWN_AFTER_MS + 3000})))
  t.diagnostic(`C's users left A and B ${Math.round(performance.now() - t0)} ms after the cut`)

  marks = [ann, bob, cat, dan].map(v => v.mark())
  link.restore()
  await waitReady(c, 15000)
  const res = await Promise.allSettled([ann, bob, cat, dan].map((v, i) =>
    v.waitShape({ann: 1, bob: 1, cat: 1, dan: 1}, {from: marks[i].syncs, timeout: SYNC_WAIT_MS})))
  const lists = [ann, bob, cat, dan].map(v => `${v.name}: ${show(shape(v.list()))}`).join("; ")
  // cat's and dan's views may not sync at all if C never dropped anybody: their current list counts
  const ok = [ann, bob].every((_, i) => res[i].status === "fulfilled") &&
    [cat, dan].every(v => hasShape(v.list(), {ann: 1, bob: 1, cat: 1, dan: 1}))
  assert.ok(ok, `GATEWAY BUG: cat and dan (still connected to C) are listed everywhere again after the heal — lists now: ${lists}`)
  assertAgree([ann, bob, cat, dan], "after the heal")
  assert.deepEqual(ann.list(), before, "the same metas as before the partition")
})
