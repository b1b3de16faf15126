// Test fixture: gateways, phoenix.js sockets and raw WebSocket clients owned by one test.
//
// `fixture(t)` registers a single cleanup hook that first disconnects every client (so no
// reconnect timer keeps the test file alive) and then stops every gateway. Events are awaited
// through `Recorder`s: everything a socket, channel or raw client sees is recorded, and a
// test waits for a predicate with a timeout instead of sleeping.

import {createHmac} from "node:crypto"
import {Socket} from "phoenix"
import WebSocket from "ws"
import {startCluster, startProxy} from "./cluster.mjs"
import {startGateway} from "./gateway.mjs"

export const DEFAULT_WAIT_MS = 5000

/** Renders recorded items for failure messages (ArrayBuffers as byte lists). */
export function show(value){
  return JSON.stringify(value, (_k, v) => {
    if(v instanceof ArrayBuffer){ return {ArrayBuffer: Array.from(new Uint8Array(v))} }
    if(Buffer.isBuffer(v)){ return {Buffer: Array.from(v)} }
    if(v && v.type === "Buffer" && Array.isArray(v.data)){ return {Buffer: v.data} }
    return v
  })
}

/**
 * An append-only list of things that happened, with promise-based waiting.
 * `waitFor(pred)` resolves with the first recorded item (at index >= `from`) matching `pred`.
 */
export class Recorder {
  constructor(label, context = () => ""){
    this.label = label
    this.items = []
    this.waiters = new Set()
    this.context = context
  }

  push(item){
    const index = this.items.length
    this.items.push(item)
    for(const w of [...this.waiters]){
      if(index >= w.from && w.pred(item)){
        this.waiters.delete(w)
        clearTimeout(w.timer)
        w.resolve(item)
      }
    }
  }

  /** Index of the next item to be recorded, to wait only for later ones. */
  mark(){ return this.items.length }

  count(pred = () => true){ return this.items.filter(pred).length }

  waitFor(pred, {timeout = DEFAULT_WAIT_MS, what = "a matching item", from = 0} = {}){
    for(let i = from; i < this.items.length; i++){
      if(pred(this.items[i])){ return Promise.resolve(this.items[i]) }
    }
    return new Promise((resolve, reject) => {
      const w = {pred, resolve, from}
      w.timer = setTimeout(() => {
        this.waiters.delete(w)
        const ctx = this.context()
        const headline = `${this.label}: timed out after ${timeout} ms waiting for ${what}`
        // the headline again after the (long) logs: CI keeps only the tail of the output
        reject(new Error(`${headline}; recorded: ${show(this.items.slice(-30))}` +
          `${ctx ? "\n" + ctx + "\n^^^ " + headline : ""}`))
      }, timeout)
      this.waiters.add(w)
    })
  }
}

/** base64url without padding. */
function b64url(buf){
  return Buffer.from(buf).toString("base64url")
}

/**
 * Signs an HS256 JWT with node's crypto. (phoenix.js sends `btoa(token)` as a subprotocol, and
 * ws, like browsers, refuses "/" there; the base64 of a JWT's ASCII never contains "/" or "+".)
 */
export function signJwt(claims, secret){
  const header = b64url(JSON.stringify({alg: "HS256", typ: "JWT"}))
  const payload = b64url(JSON.stringify(claims))
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url")
  return `${header}.${payload}.${sig}`
}

export function nowSecs(){ return Math.floor(Date.now() / 1000) }

/** Wraps a phoenix.js Socket with recorders for its lifecycle and every decoded message. */
export class Client {
  constructor(fx, name, url, opts){
    this.name = name
    this.events = new Recorder(`${name} socket events`, () => fx.gatewayLogs())
    this.frames = new Recorder(`${name} messages`, () => fx.gatewayLogs())
    this.socket = new Socket(url, {transport: WebSocket, ...opts})
    const at = () => performance.now()
    this.socket.onOpen(() => this.events.push({kind: "open", at: at()}))
    this.socket.onClose(e => this.events.push({kind: "close", code: e.code, reason: e.reason, at: at()}))
    this.socket.onError(e => this.events.push({kind: "error", at: at(),
      message: (e && (e.message || (e.error && e.error.message))) || String(e)}))
    this.socket.onMessage(msg => this.frames.push(msg))
    this.fx = fx
  }

  connect(){ this.socket.connect() }

  waitOpen(opts = {}){
    return this.events.waitFor(e => e.kind === "open", {what: "socket open", ...opts})
  }

  /** Waits for the `n`-th open (1 = first connect, 2 = first reconnect, ...). */
  async waitOpenCount(n, {timeout = DEFAULT_WAIT_MS} = {}){
    let seen = 0
    await this.events.waitFor(e => e.kind === "open" && ++seen >= n, {timeout, what: `open #${n}`})
  }

  disconnect(){
    return new Promise(resolve => {
      // disconnect's callback waits for the close (at most ~1.5 s); never block cleanup on it
      const timer = setTimeout(resolve, 3000)
      this.socket.disconnect(() => { clearTimeout(timer); resolve() })
    })
  }

  /** A channel whose joins (including automatic rejoins), messages and lifecycle are recorded. */
  channel(topic, params = {}){
    const channel = this.socket.channel(topic, params)
    const label = `${this.name} ${topic}#${this.fx.nextChannelId()}`
    channel.joins = new Recorder(`${label} join replies`, () => this.fx.gatewayLogs())
    channel.messages = new Recorder(`${label} messages`, () => this.fx.gatewayLogs())
    channel.lifecycle = new Recorder(`${label} close/error`, () => this.fx.gatewayLogs())
    channel.onClose(payload => channel.lifecycle.push({kind: "close", payload}))
    channel.onError(payload => channel.lifecycle.push({kind: "error", payload}))
    // onMessage sees every event the channel accepts (after phoenix.js' join_ref filter)
    const previous = channel.onMessage.bind(channel)
    channel.onMessage = (event, payload, ref, joinRef) => {
      // phoenix.js also triggers with a null event (a push that was never sent)
      if(typeof event === "string" && !event.startsWith("chan_reply_")){ channel.messages.push({event, payload, ref, joinRef}) }
      return previous(event, payload, ref, joinRef)
    }
    channel.join(this.fx.pushTimeout)
      .receive("ok", response => channel.joins.push({status: "ok", response}))
      .receive("error", response => channel.joins.push({status: "error", response}))
      .receive("timeout", () => channel.joins.push({status: "timeout"}))
    return channel
  }
}

/** Resolves with the first join reply (ok, error or timeout). */
export function firstJoin(channel, opts = {}){
  return channel.joins.waitFor(() => true, {what: "a join reply", ...opts})
}

/** Resolves once the channel got `n` ok join replies (1 = join, 2 = first rejoin, ...). */
export function okJoins(channel, n, {timeout = DEFAULT_WAIT_MS} = {}){
  let seen = 0
  return channel.joins.waitFor(j => j.status === "ok" && ++seen >= n, {timeout, what: `${n} ok join replies`})
}

/** Pushes and resolves with {status, response} (status "timeout" when no reply came). */
export function push(channel, event, payload, timeout = 5000){
  return new Promise(resolve => {
    channel.push(event, payload, timeout)
      .receive("ok", response => resolve({status: "ok", response}))
      .receive("error", response => resolve({status: "error", response}))
      .receive("timeout", () => resolve({status: "timeout"}))
  })
}

/** Waits for a message `event` on `channel` whose payload satisfies `pred`. */
export function nextMessage(channel, event, pred = () => true, opts = {}){
  return channel.messages.waitFor(m => m.event === event && pred(m.payload), {what: `event ${event}`, ...opts})
}

/**
 * A plain `ws` client speaking V2 JSON/binary frames by hand, for exact wire checks that
 * phoenix.js would hide (it tolerates or filters some deviations).
 */
export class RawClient {
  constructor(fx, name, url, wsOpts = {}){
    this.name = name
    this.frames = new Recorder(`${name} raw frames`, () => fx.gatewayLogs())
    this.events = new Recorder(`${name} raw events`, () => fx.gatewayLogs())
    this.ws = new WebSocket(url, wsOpts)
    this.ws.binaryType = "nodebuffer"
    this.ws.on("open", () => this.events.push({kind: "open"}))
    this.ws.on("close", (code, reason) => this.events.push({kind: "close", code, reason: reason.toString()}))
    this.ws.on("error", err => this.events.push({kind: "error", message: err.message}))
    this.ws.on("unexpected-response", (_req, res) => {
      this.events.push({kind: "http", status: res.statusCode})
      res.resume()
      this.ws.terminate()
    })
    this.ws.on("message", (data, isBinary) => {
      if(isBinary){
        this.frames.push({binary: true, bytes: Buffer.from(data)})
      } else {
        let parsed
        try { parsed = JSON.parse(data.toString("utf8")) } catch { parsed = {unparseable: data.toString("utf8")} }
        this.frames.push({binary: false, msg: parsed, text: data.toString("utf8")})
      }
    })
  }

  open(opts = {}){
    return this.events.waitFor(e => e.kind === "open", {what: "raw open", ...opts})
  }

  send(msg){ this.ws.send(JSON.stringify(msg)) }

  sendBinary(bytes){ this.ws.send(bytes, {binary: true}) }

  /** Waits for a text frame whose decoded array satisfies `pred`. */
  next(pred, what, opts = {}){
    return this.frames.waitFor(f => !f.binary && Array.isArray(f.msg) && pred(f.msg), {what, ...opts})
  }

  close(){
    return new Promise(resolve => {
      if(this.ws.readyState === WebSocket.CLOSED){ return resolve() }
      const timer = setTimeout(() => { this.ws.terminate(); resolve() }, 2000)
      this.ws.once("close", () => { clearTimeout(timer); resolve() })
      if(this.ws.readyState === WebSocket.CONNECTING){ this.ws.terminate() } else { this.ws.close() }
    })
  }
}

/** One test's gateways and clients; cleaned up by the hook `fixture(t)` registers. */
export class Fixture {
  constructor(){
    this.gateways = []
    this.clients = []
    this.raws = []
    this.proxies = []
    this.redises = []
    // other helper processes with a stop() (e.g. the example backend), stopped last
    this.helpers = []
    this.channelIds = 0
    this.pushTimeout = 5000
  }

  nextChannelId(){ return ++this.channelIds }

  gatewayLogs(){
    return this.gateways.map(g => `--- ${g.name} (port ${g.port}) ---\n${g.log()}`).join("\n")
  }

  async gateway(opts = {}){
    const gw = await startGateway({name: `gw${this.gateways.length + 1}`, ...opts})
    this.gateways.push(gw)
    return gw
  }

  /** `n` nodes clustered through a private redis-server, all ready: {redis, nodes}. */
  cluster(n, opts = {}){
    return startCluster(this, n, opts)
  }

  /** A round-robin proxy in front of `targets` (see RoundRobinProxy in cluster.mjs). */
  proxy(targets, opts = {}){
    return startProxy(this, targets, opts)
  }

  /**
   * A phoenix.js Socket to `gw` (a gateway or a proxy), connected at once; the ws transport
   * unless `opts.transport` says otherwise (e.g. LongPoll).
   */
  client(gw, opts = {}, name = `client${this.clients.length + 1}`){
    const c = new Client(this, name, gw.socketUrl, opts)
    this.clients.push(c)
    c.connect()
    return c
  }

  /** A connected raw client on /socket/websocket (V2 by default). */
  async raw(gw, {query = "vsn=2.0.0", wsOpts = {}, name = `raw${this.raws.length + 1}`} = {}){
    const r = new RawClient(this, name, `ws://${gw.host}:${gw.port}/socket/websocket?${query}`, wsOpts)
    this.raws.push(r)
    await r.open()
    return r
  }

  async cleanup(){
    await Promise.all(this.clients.map(c => c.disconnect()))
    await Promise.all(this.raws.map(r => r.close()))
    await Promise.all(this.proxies.map(p => p.stop()))
    await Promise.all(this.gateways.map(g => g.stop()))
    await Promise.all(this.redises.map(r => r.stop()))
    await Promise.all(this.helpers.map(h => h.stop()))
  }
}

export function fixture(t){
  const fx = new Fixture()
  t.after(() => fx.cleanup())
  return fx
}

/** POST JSON to the gateway's HTTP API; resolves with {status, body (text), json (or null)}. */
export async function postJson(gw, path, body, {apiKey = null} = {}){
  const headers = {"content-type": "application/json"}
  if(apiKey !== null){ headers.authorization = `Bearer ${apiKey}` }
  const res = await fetch(`${gw.httpUrl}${path}`, {
    method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(DEFAULT_WAIT_MS),
  })
  const text = await res.text()
  let json = null
  try { json = JSON.parse(text) } catch { /* not JSON */ }
  return {status: res.status, body: text, json}
}

/** Asserts a 2xx answer from the API, with the body in the message otherwise. */
export function assertAccepted(res, what){
  if(res.status < 200 || res.status >= 300){
    throw new Error(`${what}: expected 2xx, got ${res.status} ${res.body}`)
  }
}

/** ArrayBuffer/Buffer/typed array -> plain byte array. */
export function bytesOf(value){
  if(value instanceof ArrayBuffer){ return Array.from(new Uint8Array(value)) }
  if(ArrayBuffer.isView(value)){ return Array.from(new Uint8Array(value.buffer, value.byteOffset, value.byteLength)) }
  return null
}

/**
 * The demo channel `room:*` keeps history: its ok join replies carry `recovered` and
 * `position`, its push replies `position`. Checks those fields (a position string; recovered
 * false, since these joins have no `since`) and returns the reply without them, so a test can
 * compare the rest exactly.
 */
export function withoutHistory(reply){
  const response = {...reply.response}
  if(typeof response.position !== "string"){
    throw new Error(`expected a history position in ${show(reply)}`)
  }
  if("recovered" in response && response.recovered !== false){
    throw new Error(`expected recovered: false in ${show(reply)}`)
  }
  delete response.position
  delete response.recovered
  return {...reply, response}
}
