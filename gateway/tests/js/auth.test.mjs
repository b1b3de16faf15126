// JWT authentication (phoenix.js `authToken` subprotocol and the `token` query param), token
// joins, and forced disconnects through the HTTP API, seen by the official phoenix.js client.

import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import {request} from "node:http"
import {test} from "node:test"
import {assertAccepted, firstJoin, fixture, nextMessage, nowSecs, okJoins, postJson, signJwt, withoutHistory} from "./helpers/fixture.mjs"

const T = {timeout: 30000}
const SECRET = "test-secret-0123456789"
const API_KEY = "test-api-key"

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

function token(claims = {}, secret = SECRET){
  return signJwt({sub: "7", exp: nowSecs() + 3600, ...claims}, secret)
}

/**
 * A hand-made WebSocket upgrade request (node:http, so any Sec-WebSocket-Protocol value can be
 * sent, unlike with ws or browsers); resolves with the status and the selected subprotocol.
 */
function upgrade(gw, protocolHeader){
  return new Promise((resolve, reject) => {
    const req = request({
      host: gw.host, port: gw.port, path: "/socket/websocket?vsn=2.0.0",
      headers: {
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": randomBytes(16).toString("base64"), "Sec-WebSocket-Protocol": protocolHeader,
      },
      timeout: 5000,
    })
    req.on("upgrade", (res, socket) => {
      socket.destroy()
      resolve({status: res.statusCode, protocol: res.headers["sec-websocket-protocol"]})
    })
    req.on("response", res => { res.resume(); resolve({status: res.statusCode, protocol: res.headers["sec-websocket-protocol"]}) })
    req.on("timeout", () => req.destroy(new Error("upgrade request timed out")))
    req.on("error", reject)
    req.end()
  })
}

/** A valid token whose base64 form needs padding (its length is not a multiple of 3). */
function tokenNeedingPadding(){
  for(let i = 0; i < 3; i++){
    const tok = token({pad: "x".repeat(i)})
    if(tok.length % 3 !== 0){ return tok }
  }
  throw new Error("unreachable: one of three consecutive lengths is not a multiple of 3")
}

/** Waits for `n` refused connects and checks the socket never opened meanwhile. */
async function assertRefused(c, n = 2){
  let errors = 0
  const err = await c.events.waitFor(e => e.kind === "error" && ++errors >= n, {what: `${n} connect errors`})
  assert.match(err.message, /403/, `the refusal should be an HTTP 403 before the upgrade: ${err.message}`)
  assert.equal(c.events.count(e => e.kind === "open"), 0, `opened despite a bad token: ${JSON.stringify(c.events.items)}`)
}

test("authToken: a valid HS256 JWT connects, a wrong signature is refused", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({args: ["--jwt-secret", SECRET]})

  const good = fx.client(gw, {authToken: token()}, "good")
  await good.waitOpen()
  assert.deepEqual(withoutHistory(await firstJoin(good.channel("room:1"))), {status: "ok", response: {}})

  const forged = fx.client(gw, {authToken: token({}, "not-the-secret")}, "forged")
  await assertRefused(forged)
})

test("authToken subprotocol: unpadded and padded base64 select `phoenix`; a bad token is 403", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({args: ["--jwt-secret", SECRET]})
  const prefix = "base64url.bearer.phx."
  const tok = tokenNeedingPadding()
  const padded = Buffer.from(tok).toString("base64")
  assert.ok(padded.endsWith("="))
  // phoenix.js strips the padding; other clients may not (phoenix-protocol §1.5)
  for(const [what, encoded] of [["unpadded (phoenix.js)", padded.replace(/=+$/, "")], ["padded", padded]]){
    const res = await upgrade(gw, `phoenix, ${prefix}${encoded}`)
    assert.deepEqual(res, {status: 101, protocol: "phoenix"}, `${what}: ${encoded}`)
  }
  const forged = Buffer.from(token({}, "not-the-secret")).toString("base64").replace(/=+$/, "")
  assert.equal((await upgrade(gw, `phoenix, ${prefix}${forged}`)).status, 403)
  const garbage = await upgrade(gw, `phoenix, ${prefix}%%%not-base64%%%`)
  assert.equal(garbage.status, 403, "an undecodable token")
})

test("JWT: missing and expired tokens are refused, the token query param works", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({args: ["--jwt-secret", SECRET]})

  const viaParam = fx.client(gw, {params: {token: token()}}, "param")
  await viaParam.waitOpen()

  await assertRefused(fx.client(gw, {}, "anonymous"))
  await assertRefused(fx.client(gw, {authToken: token({exp: nowSecs() - 600})}, "expired"))
})

test("token joins: the topics claim decides which token topics may be joined", T, async t => {
  const fx = fixture(t)
  const gw = await fx.gateway({args: ["--jwt-secret", SECRET], config: TOKEN_CONFIG})
  const c = fx.client(gw, {authToken: token({topics: ["private:1", "room:9"]})})
  assert.deepEqual(await firstJoin(c.channel("private:1")), {status: "ok", response: {}})
  const denied = c.channel("private:2")
  assert.deepEqual(await firstJoin(denied), {status: "error", response: {reason: "unauthorized"}})
  denied.leave()
  assert.deepEqual(await firstJoin(c.channel("room:open")), {status: "ok", response: {}})

  const wildcard = fx.client(gw, {authToken: token({topics: ["private:*"]})}, "wildcard")
  assert.deepEqual(await firstJoin(wildcard.channel("private:99")), {status: "ok", response: {}})

  const noTopics = fx.client(gw, {authToken: token()}, "no-topics")
  const refused = noTopics.channel("private:1")
  assert.deepEqual(await firstJoin(refused), {status: "error", response: {reason: "unauthorized"}})
  refused.leave()
})

async function forcedDisconnectSetup(t){
  const fx = fixture(t)
  const gw = await fx.gateway({args: ["--jwt-secret", SECRET, "--api-key", API_KEY]})
  const victim = fx.client(gw, {authToken: token({sub: "42"})}, "victim")
  // a second connection of the same user (another tab) is disconnected as well
  const victimTab = fx.client(gw, {authToken: token({sub: "42"})}, "victim-tab")
  const bystander = fx.client(gw, {authToken: token({sub: "43"})}, "bystander")
  const vch = victim.channel("room:fd")
  const bch = bystander.channel("room:fd")
  const tch = victimTab.channel("room:fd")
  await Promise.all([okJoins(vch, 1), okJoins(bch, 1), okJoins(tch, 1)])
  return {fx, gw, victim, victimTab, bystander, vch, tch, bch}
}

async function assertCameBack({gw, victim, victimTab, bystander, vch, bch}){
  for(const c of [victim, victimTab]){
    const close = await c.events.waitFor(e => e.kind === "close", {what: "the forced close"})
    assert.equal(close.code, 1001, `${c.name} close code ${close.code} (${close.reason}); 1001 = going away`)
  }
  // phoenix.js reconnects and rejoins by itself
  await victim.waitOpenCount(2, {timeout: 10000})
  await okJoins(vch, 2, {timeout: 10000})
  assert.equal(victim.events.count(e => e.kind === "close"), 1, `victim events ${JSON.stringify(victim.events.items)}`)

  const res = await postJson(gw, "/api/broadcast", {topic: "room:fd", event: "new_msg", payload: {after: "disconnect"}}, {apiKey: API_KEY})
  assertAccepted(res, "broadcast after the reconnect")
  await nextMessage(vch, "new_msg", p => p.after === "disconnect")
  await nextMessage(bch, "new_msg", p => p.after === "disconnect")
  // the other session id was never touched
  assert.equal(bystander.events.count(e => e.kind !== "open"), 0, `bystander events ${JSON.stringify(bystander.events.items)}`)
}

test("forced disconnect: POST /api/disconnect closes with 1001, the client reconnects and rejoins; 401 without the key", T, async t => {
  const s = await forcedDisconnectSetup(t)
  const body = {id: "user_socket:42"}

  const noKey = await postJson(s.gw, "/api/disconnect", body)
  assert.equal(noKey.status, 401, `without the key: ${noKey.status} ${noKey.body}`)
  const wrongKey = await postJson(s.gw, "/api/disconnect", body, {apiKey: "wrong"})
  assert.equal(wrongKey.status, 401, `with a wrong key: ${wrongKey.status} ${wrongKey.body}`)
  const noKeyBroadcast = await postJson(s.gw, "/api/broadcast", {topic: "room:fd", event: "new_msg", payload: {}})
  assert.equal(noKeyBroadcast.status, 401, `broadcast without the key: ${noKeyBroadcast.status} ${noKeyBroadcast.body}`)

  const ok = await postJson(s.gw, "/api/disconnect", body, {apiKey: API_KEY})
  assertAccepted(ok, "POST /api/disconnect with the key")
  await assertCameBack(s)
})

test("forced disconnect: a `disconnect` broadcast on user_socket:<sub> closes with 1001", T, async t => {
  const s = await forcedDisconnectSetup(t)
  const res = await postJson(s.gw, "/api/broadcast", {topic: "user_socket:42", event: "disconnect", payload: {}}, {apiKey: API_KEY})
  assertAccepted(res, "disconnect broadcast")
  await assertCameBack(s)
})
