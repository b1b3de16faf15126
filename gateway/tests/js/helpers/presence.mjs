// Presence helpers for the phoenix.js oracle tests: a recorded view of one channel's official
// `Presence` object, a redis-server restarted on the port it had before, and a relay that cuts
// one node off from Redis (a partition) while the rest of the cluster stays connected.
//
// `PresenceView` attaches `new Presence(channel)` (it must be made right after the channel, before
// its join reply can arrive) and records every `onSync` with a snapshot of `presence.list()`,
// and every `onJoin` / `onLeave` callback, so tests await the list they expect with a timeout and
// count the callbacks afterwards instead of sleeping.

import {spawn} from "node:child_process"
import {mkdtemp} from "node:fs/promises"
import {tmpdir} from "node:os"
import net from "node:net"
import {join} from "node:path"
import {Presence} from "phoenix"
import {Redis} from "./cluster.mjs"
import {DEFAULT_WAIT_MS, Recorder, show} from "./fixture.mjs"

/**
 * A presence list as plain data: key → metas sorted by `phx_ref` (phoenix.js keeps a key's metas
 * in arrival order, which legitimately differs between clients), keys in sorted order.
 */
export function snapshot(presence){
  const out = {}
  const entries = presence.list((key, {metas}) => [key, metas.map(m => ({...m}))])
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  for(const [key, metas] of entries){
    out[key] = metas.sort((x, y) => (x.phx_ref < y.phx_ref ? -1 : x.phx_ref > y.phx_ref ? 1 : 0))
  }
  return out
}

/** key → number of metas: the shape tests wait for before comparing full lists. */
export function shape(list){
  return Object.fromEntries(Object.entries(list).map(([key, metas]) => [key, metas.length]))
}

/** Whether `list` has exactly the keys of `expected` ({key: metaCount}) with those counts. */
export function hasShape(list, expected){
  const got = shape(list)
  const keys = Object.keys(expected)
  return Object.keys(got).length === keys.length && keys.every(k => got[k] === expected[k])
}

/** The phoenix.js `Presence` of one channel with its syncs and callbacks recorded. */
export class PresenceView {
  constructor(fx, client, channel, name = client.name){
    this.name = name
    this.client = client
    this.channel = channel
    this.presence = new Presence(channel)
    /** {at, list} per onSync (`at` = performance.now()). */
    this.syncs = new Recorder(`${name} presence syncs`, () => fx.gatewayLogs())
    /**
     * {at, key, refs, fresh} per onJoin: the refs of the metas that joined, and those of them the
     * client did not list already (a diff may repeat a meta the client got in its
     * presence_state, e.g. its own join; phoenix.js then fires onJoin without a change).
     */
    this.joins = []
    /** {at, key, refs} per onLeave: the refs of the metas that left. */
    this.leaves = []
    this.presence.onJoin((key, current, joined) => {
      const known = new Set(current ? current.metas.map(m => m.phx_ref) : [])
      const refs = joined.metas.map(m => m.phx_ref)
      this.joins.push({at: performance.now(), key, refs, fresh: refs.filter(r => !known.has(r))})
    })
    this.presence.onLeave((key, _current, left) => {
      this.leaves.push({at: performance.now(), key, refs: left.metas.map(m => m.phx_ref)})
    })
    this.presence.onSync(() => this.syncs.push({at: performance.now(), list: snapshot(this.presence)}))
  }

  /** The current list (see `snapshot`). */
  list(){ return snapshot(this.presence) }

  /** The list after the last sync, or null before the first one. */
  last(){
    const n = this.syncs.items.length
    return n ? this.syncs.items[n - 1].list : null
  }

  /**
   * Resolves with the first sync (index >= `from`) whose list satisfies `pred`; on timeout the
   * error shows the last lists this client synced.
   */
  waitSync(pred, what, {timeout = DEFAULT_WAIT_MS, from = 0} = {}){
    return this.syncs.waitFor(s => pred(s.list), {timeout, from, what: `${what} (current list ${show(this.list())})`})
  }

  /** Waits for a sync with exactly `expected` ({key: metaCount}). */
  waitShape(expected, opts = {}){
    return this.waitSync(list => hasShape(list, expected), `presence shape ${show(expected)}`, opts)
  }

  /** A mark to count callbacks and syncs from. */
  mark(){
    return {joins: this.joins.length, leaves: this.leaves.length, syncs: this.syncs.mark()}
  }

  joinsSince(mark){ return this.joins.slice(mark.joins) }

  /** onJoin calls since `mark` that added a meta, as {key, refs} with only the added refs. */
  newJoinsSince(mark){
    return this.joinsSince(mark).filter(j => j.fresh.length > 0).map(j => ({key: j.key, refs: j.fresh}))
  }

  leavesSince(mark){ return this.leaves.slice(mark.leaves) }
}

/** Every redis-server started here that is still running, killed if this process goes away. */
const restarted = new Set()
process.on("exit", () => {
  for(const child of restarted){
    try { child.kill("SIGKILL") } catch { /* already gone */ }
  }
})

const REDIS_START_TIMEOUT_MS = 10000

/**
 * Starts a new redis-server (no persistence, so it comes back empty, like a restarted cache)
 * on `port`, the port a killed one had, and resolves once it accepts connections; registers it
 * with `fx` for cleanup. The port was just released by the killed server; redis-server binds
 * with SO_REUSEADDR, so connections of the old one in TIME_WAIT do not block it.
 */
export async function restartRedisOn(fx, port){
  const dir = await mkdtemp(join(tmpdir(), "gateway-redis-"))
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "",
    "--appendonly", "no", "--dir", dir], {stdio: ["ignore", "pipe", "pipe"]})
  restarted.add(proc)
  proc.once("exit", () => restarted.delete(proc))
  const redis = new Redis(proc, port, dir)
  fx.redises.push(redis)
  let timer
  try {
    await new Promise((resolve, reject) => {
      const onData = chunk => {
        redis.output += chunk.toString("utf8")
        if(redis.output.includes("Ready to accept connections")){ resolve() }
      }
      proc.stdout.on("data", onData)
      proc.stderr.on("data", onData)
      proc.once("error", err => reject(new Error(`cannot start redis-server: ${err.message}`)))
      redis.exited.then(info => reject(new Error(
        `restarted redis-server on port ${port} exited before it was ready (${JSON.stringify(info)}):\n${redis.output}`)))
      timer = setTimeout(() => reject(new Error(
        `restarted redis-server on port ${port} not ready within ${REDIS_START_TIMEOUT_MS} ms:\n${redis.output}`)), REDIS_START_TIMEOUT_MS)
    })
  } finally {
    clearTimeout(timer)
  }
  return redis
}

/**
 * A TCP relay on 127.0.0.1:0 in front of a redis-server, so one node's link to Redis can be cut
 * and restored (a network partition of that node) while the other nodes and Redis stay up.
 * While cut, existing connections are destroyed and new ones are closed as soon as they arrive.
 * Fields: `url` (redis://127.0.0.1:<relay port>/).
 */
export class RedisLink {
  constructor(redisPort){
    this.redisPort = redisPort
    this.isCut = false
    this.pairs = new Set()
    this.server = net.createServer(client => this.relay(client))
  }

  relay(client){
    if(this.isCut){ client.destroy(); return }
    const upstream = net.connect(this.redisPort, "127.0.0.1")
    const pair = {client, upstream}
    this.pairs.add(pair)
    const end = () => { client.destroy(); upstream.destroy(); this.pairs.delete(pair) }
    client.on("error", end)
    upstream.on("error", end)
    client.on("close", end)
    upstream.on("close", end)
    client.pipe(upstream)
    upstream.pipe(client)
  }

  listen(){
    return new Promise((resolve, reject) => {
      this.server.once("error", reject)
      this.server.listen(0, "127.0.0.1", () => {
        this.port = this.server.address().port
        this.url = `redis://127.0.0.1:${this.port}/`
        resolve(this)
      })
    })
  }

  /** Partitions the node: drops every relayed connection and refuses new ones until `restore`. */
  cut(){
    this.isCut = true
    for(const {client, upstream} of this.pairs){ client.destroy(); upstream.destroy() }
    this.pairs.clear()
  }

  restore(){ this.isCut = false }

  stop(){
    this.cut()
    return new Promise(resolve => this.server.close(() => resolve()))
  }
}
