// The docker-compose cluster, driven from the host as a user would: phoenix.js clients on
// WebSocket and LongPoll through the published load balancer exchange broadcasts across the
// three gateway containers; the stack's own Prometheus scrapes every node and counts every
// session; stopping one gateway container drains it (1012) and its clients come back through
// the load balancer.
//
// Run by gateway/tests/compose (which starts the stack), never by the phoenix_js suite: the
// file name matches none of `node --test`'s default patterns. Environment:
//   LB_URL             http://127.0.0.1:PORT, the published `lb` port
//   PROMETHEUS_URL     http://127.0.0.1:PORT, the published `prometheus` port
//   STOP_NODE_COMMAND  JSON argv that stops the `gateway-2` container (docker-compose stop)

import assert from "node:assert/strict"
import {execFile} from "node:child_process"
import {test} from "node:test"
import {promisify} from "node:util"
import {LongPoll} from "phoenix"
import {apiBroadcast, awaitMesh, until} from "../helpers/cluster.mjs"
import {fixture, nextMessage, okJoins, push, withoutHistory} from "../helpers/fixture.mjs"

const WS_CLIENTS = 6
const LP_CLIENTS = 3
const TOPIC = "room:compose"
const STOPPED = "gateway-2:4000"
const NODES = ["gateway-1:4000", "gateway-2:4000", "gateway-3:4000"]
// Prometheus scrapes every 5 s; a value the test waits for shows up within two scrapes
const SCRAPE_WAIT_MS = 30000
const REJOIN_WAIT_MS = 30000

function env(name){
  const value = process.env[name]
  assert.ok(value, `${name} is not set (this file is run by gateway/tests/compose)`)
  return value
}

const LB = (() => {
  const u = new URL(env("LB_URL"))
  return {name: "lb", host: u.hostname, port: Number(u.port), httpUrl: u.origin, socketUrl: `ws://${u.host}/socket`}
})()
const PROMETHEUS = env("PROMETHEUS_URL")
const STOP_NODE = JSON.parse(env("STOP_NODE_COMMAND"))

/** An instant query against the stack's Prometheus: [{labels, value}]. */
async function promQuery(expr){
  const res = await fetch(`${PROMETHEUS}/api/v1/query?query=${encodeURIComponent(expr)}`, {signal: AbortSignal.timeout(5000)})
  const body = await res.json()
  assert.equal(body.status, "success", `Prometheus ${expr}: ${JSON.stringify(body)}`)
  return body.data.result.map(r => ({labels: r.metric, value: Number(r.value[1])}))
}

/** Polls `expr` until `pred(result)` holds; resolves with that result. */
async function promUntil(expr, pred, what){
  let last = null
  await until(async () => {
    last = await promQuery(expr)
    return pred(last)
  }, {what: `Prometheus: ${what}`, timeout: SCRAPE_WAIT_MS, interval: 500, context: () => `${expr} = ${JSON.stringify(last)}`})
  return last
}

/** {instance: value} of a `sum by (instance)` result. */
function byInstance(result){
  return Object.fromEntries(result.map(r => [r.labels.instance, r.value]))
}

/** Every channel gets one `new_msg` from each sender in `senders` (a push per sender). */
async function exchange(label, senders, chans){
  const marks = chans.map(ch => ch.messages.mark())
  const replies = await Promise.all(senders.map(s => push(s.ch, "new_msg", {body: `${label} from ${s.name}`})))
  // the demo channel keeps history: an ok push reply carries the broadcast's position
  replies.forEach((r, i) => assert.deepEqual(withoutHistory(r), {status: "ok", response: {}}, `${label}: push by ${senders[i].name}`))
  await Promise.all(chans.flatMap((ch, i) => senders.map(s => nextMessage(ch, "new_msg", p => p.body === `${label} from ${s.name}`,
    {from: marks[i], timeout: 10000, what: `${label}: ${s.name}'s message at channel ${i}`}))))
}

test("compose cluster: phoenix.js through the LB, Prometheus sees every node, a stopped node drains", {timeout: 240000}, async t => {
  const fx = fixture(t)
  // WebSocket clients one after another, so round-robin gives each node two of them
  const ws = []
  for(let i = 0; i < WS_CLIENTS; i++){
    const c = fx.client(LB, {}, `ws${i}`)
    await c.waitOpen({timeout: 10000})
    ws.push(c)
  }
  const lp = Array.from({length: LP_CLIENTS}, (_, i) => fx.client(LB, {transport: LongPoll}, `lp${i}`))
  const clients = [...ws, ...lp]
  const chans = clients.map(c => c.channel(TOPIC, {user: c.name}))
  await Promise.all(chans.map(ch => okJoins(ch, 1, {timeout: 10000})))
  const members = clients.map((c, i) => ({name: c.name, ch: chans[i], client: c}))

  // Prometheus inside the stack: all three nodes up, and exactly our sessions on them
  await promUntil('sum(up{job="gateway"})', r => r.length === 1 && r[0].value === 3, "three gateway targets up")
  await promUntil("sum(gateway_sessions)", r => r.length === 1 && r[0].value === clients.length, `${clients.length} sessions in all`)
  const wsPerNode = byInstance(await promUntil('sum by (instance) (gateway_sessions{transport="websocket"})',
    r => r.reduce((a, x) => a + x.value, 0) === WS_CLIENTS, `${WS_CLIENTS} WebSocket sessions`))
  for(const node of NODES){
    assert.ok(wsPerNode[node] >= 1, `the LB gave ${node} no WebSocket session: ${JSON.stringify(wsPerNode)}`)
  }

  // broadcasts across the three nodes: every client's message reaches every client
  await awaitMesh(TOPIC, [1, 2, 3].map(i => ({...LB, name: `lb#${i}`})), chans, {timeout: 20000})
  await exchange("before", members, chans)
  const marks = chans.map(ch => ch.messages.mark())
  const api = await apiBroadcast(LB, TOPIC, "new_msg", {body: "from the HTTP API"})
  assert.ok(api.status >= 200 && api.status < 300, `POST /api/broadcast through the LB: ${api.status} ${api.text}`)
  await Promise.all(chans.map((ch, i) => nextMessage(ch, "new_msg", p => p.body === "from the HTTP API",
    {from: marks[i], what: `API broadcast at channel ${i}`})))

  // stop gateway-2's container: it drains, its WebSocket clients see 1012 and come back
  const eventMarks = ws.map(c => c.events.mark())
  // a long-poll whose request was on the stopped node errors its channel, which rejoins on
  // phoenix.js's timer (no `since`): wait for that rejoin too, or the exchange below can race it
  const messageMarks = chans.map(ch => ch.messages.mark())
  const joinsBefore = chans.map(ch => ch.joins.count(j => j.status === "ok"))
  const {stdout, stderr} = await promisify(execFile)(STOP_NODE[0], STOP_NODE.slice(1), {timeout: 90000})
  t.diagnostic(`${STOP_NODE.join(" ")}: ${(stdout + stderr).trim()}`)
  const closesOf = (c, i) => c.events.items.slice(eventMarks[i]).filter(e => e.kind === "close")
  const closed = () => ws.filter((c, i) => closesOf(c, i).length > 0)
  await until(() => closed().length >= wsPerNode[STOPPED], {what: `${wsPerNode[STOPPED]} WebSocket clients closed by the drain`,
    timeout: 10000, context: () => ws.map((c, i) => `${c.name}: ${JSON.stringify(closesOf(c, i))}`).join("\n")})
  assert.equal(closed().length, wsPerNode[STOPPED], `exactly the clients of ${STOPPED} are closed`)
  for(const [i, c] of ws.entries()){
    const [first] = closesOf(c, i)
    if(first){ assert.equal(first.code, 1012, `${c.name} closed with ${first.code} ${first.reason}, not the drain's 1012`) }
  }
  await Promise.all(ws.map((c, i) => closesOf(c, i).length > 0
    ? okJoins(chans[i], 2, {timeout: REJOIN_WAIT_MS}) : Promise.resolve()))
  await Promise.all(chans.map((ch, i) =>
    ch.messages.items.slice(messageMarks[i]).some(m => m.event === "phx_error")
      ? okJoins(ch, joinsBefore[i] + 1, {timeout: REJOIN_WAIT_MS}) : Promise.resolve()))
  // a reconnect the LB still sent to the stopped node fails and is retried: count them
  const failed = ws.reduce((n, c, i) => n + Math.max(0, closesOf(c, i).length - 1), 0)
  t.diagnostic(`drained clients: ${closed().map(c => c.name).join(" ")}; failed reconnects before rejoining: ${failed}`)

  await promUntil(`up{instance="${STOPPED}"}`, r => r.length === 1 && r[0].value === 0, `${STOPPED} down`)
  await promUntil("sum(gateway_sessions)", r => r.length === 1 && r[0].value === clients.length,
    `all ${clients.length} sessions back on the two remaining nodes`)
  await awaitMesh(TOPIC, [1, 2].map(i => ({...LB, name: `lb-after#${i}`})), chans, {timeout: 20000})
  await exchange("after", members, chans)
})
