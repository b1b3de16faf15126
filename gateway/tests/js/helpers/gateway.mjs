// Starts and stops real gateway processes for the phoenix.js oracle tests.
//
// Each test gets its own gateway binary (path from GATEWAY_BIN) bound to 127.0.0.1 on a port
// the kernel picks (`--port 0`); the real port is read from the `listening on http://IP:PORT`
// line the gateway prints on stdout. Config files live in a per-gateway temp dir. Every
// process started here is tracked so that no gateway outlives the test file, even when a
// test fails or the file's process is interrupted.

import {spawn} from "node:child_process"
import {mkdtemp, rm, writeFile} from "node:fs/promises"
import {tmpdir} from "node:os"
import {join} from "node:path"

const LISTENING = /listening on http:\/\/([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)/
// tracing may colour its output; the listening line is matched on the plain text
const ANSI = /\x1b\[[0-9;]*m/g
const STARTUP_TIMEOUT_MS = 15000
const STOP_GRACE_MS = 1500
const LOG_LINES_KEPT = 300

/** Every gateway child still running, killed with SIGKILL if this process goes away. */
const live = new Set()

function killAllNow(){
  for(const child of live){
    try { child.kill("SIGKILL") } catch { /* already gone */ }
  }
}
process.on("exit", killAllNow)
for(const sig of ["SIGINT", "SIGTERM", "SIGHUP"]){
  process.once(sig, () => {
    killAllNow()
    process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1))
  })
}

export function gatewayBin(){
  const bin = process.env.GATEWAY_BIN
  if(!bin){
    throw new Error("GATEWAY_BIN is not set: run these tests through `cargo test -p gateway --test phoenix_js` " +
      "or set GATEWAY_BIN=/path/to/target/debug/gateway")
  }
  return bin
}

/**
 * A running gateway process.
 *
 * Fields: `host`, `port`, `httpUrl` (http://host:port), `socketUrl` (ws://host:port/socket, the
 * phoenix.js mount), `wsUrl` (ws://host:port/socket/websocket?vsn=2.0.0 for raw clients),
 * `exited` (promise of {code, signal}), `proc`.
 */
export class Gateway {
  constructor(proc, dir, name){
    this.proc = proc
    this.dir = dir
    this.name = name
    this.lines = []
    this.exitInfo = null
    this.exited = new Promise(resolve => {
      const done = info => {
        live.delete(proc)
        if(this.exitInfo === null){ this.exitInfo = info }
        resolve(this.exitInfo)
      }
      proc.once("exit", (code, signal) => done({code, signal}))
      // a binary that cannot be spawned emits "error" and possibly no "exit"
      proc.once("error", error => done({code: null, signal: null, error}))
    })
  }

  /** The last lines the gateway printed (stdout and stderr), for failure messages. */
  log(){
    return this.lines.join("\n")
  }

  recordLine(stream, line){
    const plain = line.replace(ANSI, "")
    this.lines.push(`[${this.name} ${stream}] ${plain}`)
    if(this.lines.length > LOG_LINES_KEPT){ this.lines.shift() }
    if(process.env.GATEWAY_TEST_LOG){ process.stderr.write(`[${this.name} ${stream}] ${plain}\n`) }
    return plain
  }

  get running(){ return this.exitInfo === null }

  /** Sends a signal (e.g. SIGTERM to start a drain). */
  signal(sig){
    if(this.running){ this.proc.kill(sig) }
  }

  /** Waits for the process to exit, failing after `ms`. */
  async waitExit(ms){
    let timer
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.name} did not exit within ${ms} ms\n${this.log()}`)), ms)
    })
    try {
      return await Promise.race([this.exited, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  /** SIGTERM, then SIGKILL if it has not exited after a short grace period; removes the temp dir. */
  async stop(){
    if(this.running){
      this.proc.kill("SIGTERM")
      let timer
      const graceOver = new Promise(resolve => { timer = setTimeout(resolve, STOP_GRACE_MS) })
      await Promise.race([this.exited, graceOver])
      clearTimeout(timer)
      if(this.running){
        this.proc.kill("SIGKILL")
        await this.exited
      }
    }
    await rm(this.dir, {recursive: true, force: true})
  }

  /** SIGKILL at once (failure paths). */
  kill(){
    if(this.running){ this.proc.kill("SIGKILL") }
  }
}

let started = 0

/**
 * Starts a gateway: `--bind 127.0.0.1 --port <port>` plus `args`; `config` (TOML text) is written
 * to a temp file and passed with `--config`. Resolves once the listening line was printed.
 */
export async function startGateway({args = [], config = null, port = 0, name = null} = {}){
  const bin = gatewayBin()
  const dir = await mkdtemp(join(tmpdir(), "gateway-js-"))
  const fullArgs = ["--bind", "127.0.0.1", "--port", String(port)]
  if(config !== null){
    const path = join(dir, "gateway.toml")
    await writeFile(path, config)
    fullArgs.push("--config", path)
  }
  fullArgs.push(...args)

  // The developer's own GATEWAY_* settings must not change what a test runs against.
  const env = {}
  for(const [k, v] of Object.entries(process.env)){
    if(!k.startsWith("GATEWAY_")){ env[k] = v }
  }
  env.NO_COLOR = "1"
  env.RUST_LOG = process.env.GATEWAY_TEST_RUST_LOG || "info"

  const proc = spawn(bin, fullArgs, {stdio: ["ignore", "pipe", "pipe"], env})
  live.add(proc)
  const gw = new Gateway(proc, dir, name || `gw${++started}`)

  const listening = new Promise((resolve, reject) => {
    const onLine = stream => {
      let buf = ""
      return chunk => {
        buf += chunk.toString("utf8")
        let nl
        while((nl = buf.indexOf("\n")) >= 0){
          const line = gw.recordLine(stream, buf.slice(0, nl))
          buf = buf.slice(nl + 1)
          const m = stream === "stdout" && line.match(LISTENING)
          if(m){ resolve({host: m[1], port: Number(m[2])}) }
        }
      }
    }
    proc.stdout.on("data", onLine("stdout"))
    proc.stderr.on("data", onLine("stderr"))
    proc.once("error", err => reject(new Error(`cannot start ${bin}: ${err.message}`)))
    gw.exited.then(({code, signal}) => {
      reject(new Error(`gateway exited before listening (code ${code}, signal ${signal}); args ${fullArgs.join(" ")}\n${gw.log()}`))
    })
  })

  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(
      `no "listening on http://IP:PORT" line within ${STARTUP_TIMEOUT_MS} ms; args ${fullArgs.join(" ")}\n${gw.log()}`)),
    STARTUP_TIMEOUT_MS)
  })
  try {
    const {host, port: realPort} = await Promise.race([listening, timeout])
    gw.host = host
    gw.port = realPort
    gw.httpUrl = `http://${host}:${realPort}`
    gw.socketUrl = `ws://${host}:${realPort}/socket`
    gw.wsUrl = `ws://${host}:${realPort}/socket/websocket?vsn=2.0.0`
    return gw
  } catch(err){
    gw.kill()
    await gw.exited
    await rm(dir, {recursive: true, force: true})
    throw err
  } finally {
    clearTimeout(timer)
  }
}
