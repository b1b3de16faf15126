// Clusters for the oracle tests: a private `redis-server` per test, gateway nodes joined through
// it, a round-robin HTTP/WebSocket proxy in front of them, and small HTTP probes.
//
// Nothing here imports phoenix.js or ws, so the browser tests (gateway/tests/browser) reuse it
// from their own package. Every process and server started here is stopped by the `cleanup`
// hook of the test that started it; Redis processes are also SIGKILLed if the file's process
// goes away.

import {spawn} from "node:child_process"
import {mkdtemp, rm} from "node:fs/promises"
import http from "node:http"
import net from "node:net"
import {tmpdir} from "node:os"
import {join} from "node:path"
import {startGateway} from "./gateway.mjs"

const REDIS_START_TIMEOUT_MS = 10000
const HTTP_TIMEOUT_MS = 5000

/** Every redis-server child still running, killed if this process goes away. */
const liveRedis = new Set()
process.on("exit", () => {
  for(const child of liveRedis){
    try { child.kill("SIGKILL") } catch { /* already gone */ }
  }
})

/** A port the kernel considers free right now (bound on 127.0.0.1:0, then released). */
export function freePort(){
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once("error", reject)
    srv.listen(0, "127.0.0.1", () => {
      const {port} = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** A running private redis-server: `url`, `port`, `stop()`. */
export class Redis {
  constructor(proc, port, dir){
    this.proc = proc
    this.port = port
    this.dir = dir
    this.url = `redis://127.0.0.1:${port}/`
    this.output = ""
    this.exited = new Promise(resolve => proc.once("exit", (code, signal) => {
      liveRedis.delete(proc)
      this.exitInfo = {code, signal}
      resolve(this.exitInfo)
    }))
    this.exitInfo = null
  }

  async stop(){
    if(this.exitInfo === null){
      this.proc.kill("SIGKILL")
      await this.exited
    }
    await rm(this.dir, {recursive: true, force: true})
  }
}

/**
 * Starts `redis-server` on a free port (no persistence) and resolves once it accepts
 * connections. A port taken between picking and binding is retried with another one.
 */
export async function startRedis(){
  let lastError = null
  for(let attempt = 0; attempt < 3; attempt++){
    const port = await freePort()
    const dir = await mkdtemp(join(tmpdir(), "gateway-redis-"))
    const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "",
      "--appendonly", "no", "--dir", dir], {stdio: ["ignore", "pipe", "pipe"]})
    liveRedis.add(proc)
    const redis = new Redis(proc, port, dir)
    const ready = new Promise((resolve, reject) => {
      const onData = chunk => {
        redis.output += chunk.toString("utf8")
        if(redis.output.includes("Ready to accept connections")){ resolve() }
      }
      proc.stdout.on("data", onData)
      proc.stderr.on("data", onData)
      proc.once("error", err => reject(new Error(
        `cannot start redis-server (install it with .ci/setup): ${err.message}`)))
      redis.exited.then(info => reject(new Error(
        `redis-server exited before it was ready (${JSON.stringify(info)}):\n${redis.output}`)))
    })
    let timer
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(
        `redis-server not ready within ${REDIS_START_TIMEOUT_MS} ms:\n${redis.output}`)), REDIS_START_TIMEOUT_MS)
    })
    try {
      await Promise.race([ready, timeout])
      return redis
    } catch(err){
      lastError = err
      await redis.stop()
      if(!/Address already in use/.test(redis.output)){ throw err }
    } finally {
      clearTimeout(timer)
    }
  }
  throw lastError
}

/** GET/POST with a timeout; resolves with {status, text, json (or null)}. */
export async function httpRequest(url, {method = "GET", headers = {}, body = undefined, timeout = HTTP_TIMEOUT_MS} = {}){
  const res = await fetch(url, {method, headers, body, signal: AbortSignal.timeout(timeout)})
  const text = await res.text()
  let json = null
  try { json = JSON.parse(text) } catch { /* not JSON */ }
  return {status: res.status, text, json}
}

/** The value of one Prometheus sample (`name{labels}` exactly as exported), or null if absent. */
export async function metric(gw, sample){
  const {text} = await httpRequest(`${gw.httpUrl}/metrics`)
  for(const line of text.split("\n")){
    if(line.startsWith(sample + " ")){ return Number(line.slice(sample.length + 1)) }
  }
  return null
}

/**
 * Checks `probe` (async, returns truthy when done) every `interval` ms until it holds, failing
 * after `timeout` ms with `what` and the last value seen. For states only observable by
 * asking (HTTP endpoints, metrics), never as a stand-in for an event that can be awaited.
 */
export async function until(probe, {what, timeout = 10000, interval = 50, context = () => ""}){
  const deadline = Date.now() + timeout
  let last
  for(;;){
    try {
      last = await probe()
      if(last){ return last }
    } catch(err){
      last = err
    }
    if(Date.now() >= deadline){
      const ctx = context()
      throw new Error(`${what}: not reached within ${timeout} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})` +
        (ctx ? `\n${ctx}` : ""))
    }
    await new Promise(resolve => setTimeout(resolve, interval))
  }
}

/** Waits until the node answers /readyz with 200 (it hears the cluster and is not draining). */
export function waitReady(gw, timeout = 10000){
  return until(async () => (await httpRequest(`${gw.httpUrl}/readyz`)).status === 200,
    {what: `${gw.name} /readyz 200`, timeout, context: () => gw.log()})
}

/**
 * Starts `n` gateway nodes sharing a new private Redis, waits until each is ready, and registers
 * them with `fx` (any object with `gateways` and `onCleanup`-style arrays; see `clusterFixture`).
 * `config` is the TOML text every node gets (`--config`). Resolves with {redis, nodes}.
 */
export async function startCluster(fx, n, {args = [], names = null, config = null} = {}){
  const redis = await startRedis()
  fx.redises.push(redis)
  const nodes = []
  for(let i = 0; i < n; i++){
    const name = names ? names[i] : `node${String.fromCharCode(65 + i)}`
    const gw = await startGateway({name, config, args: ["--redis-url", redis.url, "--node-id", name, ...args]})
    fx.gateways.push(gw)
    nodes.push(gw)
  }
  await Promise.all(nodes.map(gw => waitReady(gw)))
  return {redis, nodes}
}

/**
 * An HTTP reverse proxy on 127.0.0.1:0 in front of several nodes that sends every request
 * (and every WebSocket upgrade) to a different node than the one before, in turn. It stands
 * for a load balancer without sticky sessions. With `refuseUpgrades` every WebSocket upgrade is
 * answered 403 instead (a middlebox that blocks WebSockets). With `perMethod` each method (and
 * upgrades) takes its own turn, so consecutive GETs differ and consecutive POSTs differ whatever
 * interleaves them: a test that needs both kinds on every node gets it in two of each, instead
 * of depending on how many polls happened to fall between two sends.
 *
 * `log` records {method, path, node} per request and {upgrade: true, node|refused} per upgrade.
 * Fields like a Gateway's: `host`, `port`, `httpUrl`, `socketUrl`.
 */
export class RoundRobinProxy {
  constructor(targets, {refuseUpgrades = false, perMethod = false} = {}){
    if(targets.length < 1){ throw new Error("proxy needs at least one target") }
    this.targets = targets
    this.refuseUpgrades = refuseUpgrades
    this.perMethod = perMethod
    /** The next target's index per turn ("*" for all requests, else per method). */
    this.next = new Map()
    this.log = []
    this.sockets = new Set()
    this.agent = new http.Agent({keepAlive: true})
    this.server = http.createServer((req, res) => this.forward(req, res))
    this.server.on("upgrade", (req, socket, head) => this.upgrade(req, socket, head))
    this.server.on("connection", s => { this.sockets.add(s); s.once("close", () => this.sockets.delete(s)) })
    this.name = "proxy"
  }

  /** The next target; consecutive picks of one turn differ whenever there are two or more targets. */
  pick(method){
    const turn = this.perMethod ? method : "*"
    const index = (this.next.get(turn) ?? 0) % this.targets.length
    this.next.set(turn, (index + 1) % this.targets.length)
    return index
  }

  /** Takes `gw` out of the rotation, as a load balancer's health check does with a dead node. */
  remove(gw){
    this.targets = this.targets.filter(t => t !== gw)
    this.next.clear()
  }

  forward(req, res){
    const target = this.targets[this.pick(req.method)]
    this.log.push({method: req.method, path: req.url, node: target.name})
    const headers = {...req.headers, host: `${target.host}:${target.port}`}
    const up = http.request({host: target.host, port: target.port, method: req.method, path: req.url, headers, agent: this.agent}, upRes => {
      res.writeHead(upRes.statusCode, upRes.headers)
      upRes.pipe(res)
    })
    up.on("error", err => {
      if(!res.headersSent){ res.writeHead(502, {"content-type": "text/plain"}) }
      res.end(`proxy: ${target.name}: ${err.message}`)
    })
    // a client that gives up (phoenix.js aborting a poll on disconnect) aborts the upstream request
    res.on("close", () => { if(!res.writableFinished){ up.destroy() } })
    req.pipe(up)
  }

  upgrade(req, socket, head){
    this.sockets.add(socket)
    socket.once("close", () => this.sockets.delete(socket))
    if(this.refuseUpgrades){
      this.log.push({upgrade: true, path: req.url, refused: true})
      socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
      return
    }
    const target = this.targets[this.pick("upgrade")]
    this.log.push({upgrade: true, path: req.url, node: target.name})
    const upstream = net.connect(target.port, target.host, () => {
      // replay the request head as received (raw header pairs keep order and case)
      let head0 = `${req.method} ${req.url} HTTP/1.1\r\n`
      for(let i = 0; i < req.rawHeaders.length; i += 2){ head0 += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n` }
      upstream.write(head0 + "\r\n")
      if(head && head.length){ upstream.write(head) }
      upstream.pipe(socket)
      socket.pipe(upstream)
    })
    this.sockets.add(upstream)
    upstream.once("close", () => { this.sockets.delete(upstream); socket.destroy() })
    socket.once("close", () => upstream.destroy())
    upstream.on("error", () => socket.destroy())
    socket.on("error", () => upstream.destroy())
  }

  listen(){
    return new Promise((resolve, reject) => {
      this.server.once("error", reject)
      this.server.listen(0, "127.0.0.1", () => {
        const {address, port} = this.server.address()
        this.host = address
        this.port = port
        this.httpUrl = `http://${address}:${port}`
        this.socketUrl = `ws://${address}:${port}/socket`
        resolve(this)
      })
    })
  }

  /** Nodes that received at least one request whose path starts with `prefix`. */
  nodesHit(prefix){
    return new Set(this.log.filter(e => !e.upgrade && e.path.startsWith(prefix)).map(e => e.node))
  }

  async stop(){
    for(const s of this.sockets){ s.destroy() }
    this.agent.destroy()
    await new Promise(resolve => this.server.close(() => resolve()))
  }
}

/** Starts a RoundRobinProxy over `targets` and registers it with `fx` for cleanup. */
export async function startProxy(fx, targets, opts = {}){
  const proxy = await new RoundRobinProxy(targets, opts).listen()
  fx.proxies.push(proxy)
  return proxy
}

/** POST /api/broadcast on `gw` without checking the answer's status (the caller does). */
export function apiBroadcast(gw, topic, event, payload, {apiKey = null} = {}){
  const headers = {"content-type": "application/json"}
  if(apiKey !== null){ headers.authorization = `Bearer ${apiKey}` }
  return httpRequest(`${gw.httpUrl}/api/broadcast`, {method: "POST", headers, body: JSON.stringify({topic, event, payload})})
}

/**
 * Waits until a broadcast published on every node in `nodes` reaches every channel in
 * `channels` (phoenix.js channels with a `messages` Recorder, see fixture.mjs). Nodes subscribe
 * to a topic on Redis in the background after its first local join, so right after the joins a
 * cross-node broadcast may still be missed; this awaits the moment the mesh is complete by
 * publishing numbered `mesh_probe` rounds until one round reaches everybody (each round waits a
 * little longer than the one before).
 */
export async function awaitMesh(topic, nodes, channels, {timeout = 10000, roundWait = 300, maxRoundWait = 2000} = {}){
  const deadline = Date.now() + timeout
  for(let round = 1; ; round++){
    const marks = channels.map(ch => ch.messages.mark())
    try {
      // A probe that is refused or times out is retried with the next round: a load balancer
      // still routes to a node that just stopped until its health check marks it down.
      const answers = await Promise.all(nodes.map(n => apiBroadcast(n, topic, "mesh_probe", {round, from: n.name})
        .catch(err => ({status: 0, text: `${err.name}: ${err.message}`}))))
      answers.forEach((a, i) => {
        if(a.status < 200 || a.status >= 300){ throw new Error(`mesh probe on ${nodes[i].name}: HTTP ${a.status} ${a.text}`) }
      })
      await Promise.all(channels.flatMap((ch, i) => nodes.map(n => ch.messages.waitFor(
        m => m.event === "mesh_probe" && m.payload.round === round && m.payload.from === n.name,
        // later rounds wait longer, so a slow machine still completes one
        {from: marks[i], timeout: Math.min(roundWait * round, maxRoundWait), what: `mesh probe round ${round} from ${n.name}`}))))
      return round
    } catch(err){
      if(Date.now() >= deadline){ throw new Error(`cluster mesh for ${topic} incomplete after ${timeout} ms: ${err.message}`) }
    }
  }
}
