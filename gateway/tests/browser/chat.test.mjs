// The demo page in a real headless Chromium against a two-node cluster (private redis-server):
// two tabs on different nodes chat with each other over WebSocket, and a tab whose WebSockets
// are blocked by the network falls back to LongPoll (phoenix.js `longPollFallbackMs`) and
// still chats with a WebSocket tab. Screenshots of every tab are kept as test artifacts.

import assert from "node:assert/strict"
import {test} from "node:test"
import {metric, startCluster, startProxy} from "../js/helpers/cluster.mjs"
import {PHOENIX_JS, awaitPageMesh, browserFixture, join, say, waitLogLine} from "./helpers/browser.mjs"

const SESSIONS = transport => `gateway_sessions{transport="${transport}"}`

async function sessionsOn(nodes, transport){
  const counts = await Promise.all(nodes.map(n => metric(n, SESSIONS(transport))))
  return counts.reduce((x, y) => x + y, 0)
}

test("browser: two tabs on different nodes chat over WebSocket", {timeout: 60000}, async t => {
  const fx = browserFixture(t)
  const [{nodes: [a, b]}] = await Promise.all([startCluster(fx, 2, {args: ["--phoenix-js", PHOENIX_JS]}), fx.browser()])
  const ann = await fx.page(`${a.httpUrl}/`, "ann@nodeA")
  const bob = await fx.page(`${b.httpUrl}/`, "bob@nodeB")
  assert.equal(await join(fx, ann, "ann"), "WebSocket")
  assert.equal(await join(fx, bob, "bob"), "WebSocket")
  assert.equal(await metric(a, SESSIONS("websocket")), 1, "ann's tab holds a WebSocket session on node A")
  assert.equal(await metric(b, SESSIONS("websocket")), 1, "bob's tab holds a WebSocket session on node B")
  await awaitPageMesh(fx, "room:lobby", [a, b], [ann, bob])

  await say(ann, "hi bob, I am on node A")
  await waitLogLine(fx, bob, "ann: hi bob, I am on node A")
  await waitLogLine(fx, ann, "ann: hi bob, I am on node A")
  await say(bob, "hi ann, node B here")
  await waitLogLine(fx, ann, "bob: hi ann, node B here")
  await waitLogLine(fx, bob, "bob: hi ann, node B here")

  await fx.screenshot(ann, "websocket-chat-ann-nodeA.png")
  await fx.screenshot(bob, "websocket-chat-bob-nodeB.png")
  for(const p of [ann, bob]){ assert.deepEqual(p.problems, [], `${p.name} had page errors`) }
  assert.deepEqual(fx.blocked, [], "the pages requested only loopback URLs")
})

test("browser: a tab whose WebSockets are blocked falls back to LongPoll and chats with a WebSocket tab", {timeout: 60000}, async t => {
  const fx = browserFixture(t)
  const [{nodes: [a, b]}] = await Promise.all([startCluster(fx, 2, {args: ["--phoenix-js", PHOENIX_JS]}), fx.browser()])
  // a middlebox that refuses every WebSocket upgrade and sends each plain request to the other
  // node than the last (no sticky sessions), so the long-poll session is reached through both
  const blocker = await startProxy(fx, [a, b], {refuseUpgrades: true})
  const lp = await fx.page(`${blocker.httpUrl}/`, "lena@blocked")

  // the block is real: a WebSocket to that origin fails in this browser
  const probe = await lp.evaluate(() => new Promise(resolve => {
    const ws = new WebSocket(`ws://${location.host}/socket/websocket?vsn=2.0.0`)
    ws.onopen = () => { ws.close(); resolve("open") }
    ws.onclose = e => resolve(`closed ${e.code}`)
  }))
  assert.equal(probe, "closed 1006", "a WebSocket through the blocking proxy must fail")

  // (what #transport shows is checked last, so that a wrong label still lets the rest run)
  const shown = await join(fx, lp, "lena")
  assert.equal(await lp.evaluate(() => sessionStorage.getItem("phx:fallback:LongPoll")), "true",
    "phoenix.js remembered the fallback for this tab")
  assert.ok(blocker.log.filter(e => e.upgrade && e.refused).length >= 2,
    `phoenix.js tried a WebSocket first (refused upgrades: ${JSON.stringify(blocker.log.filter(e => e.upgrade))})`)

  const ws = await fx.page(`${b.httpUrl}/`, "walt@nodeB")
  assert.equal(await join(fx, ws, "walt"), "WebSocket")
  assert.equal(await sessionsOn([a, b], "longpoll"), 1, "one long-poll session in the cluster")
  assert.equal(await sessionsOn([a, b], "websocket"), 1, "only the unblocked tab holds a WebSocket")
  await awaitPageMesh(fx, "room:lobby", [a, b], [lp, ws])

  await say(lp, "hello from a LongPoll tab")
  await waitLogLine(fx, ws, "lena: hello from a LongPoll tab")
  await waitLogLine(fx, lp, "lena: hello from a LongPoll tab")
  await say(ws, "hello back over WebSocket")
  await waitLogLine(fx, lp, "walt: hello back over WebSocket")

  // the session's polls and sends went through both nodes
  const lpNodes = new Set(blocker.log.filter(e => !e.upgrade && e.path.startsWith("/socket/longpoll")).map(e => e.node))
  assert.equal(lpNodes.size, 2, `long-poll requests reached ${JSON.stringify([...lpNodes])}`)

  await fx.screenshot(lp, "longpoll-fallback-lena.png")
  await fx.screenshot(ws, "longpoll-fallback-walt-websocket.png")
  for(const p of [lp, ws]){
    // the refused upgrades are logged by Chromium as console errors; nothing else may be
    const other = p.problems.filter(m => !/WebSocket connection to .* failed/.test(m))
    assert.deepEqual(other, [], `${p.name} had page errors`)
  }
  assert.deepEqual(fx.blocked, [], "the pages requested only loopback URLs")
  assert.equal(shown, "LongPoll", "the blocked tab's #transport names the LongPoll transport")
})
