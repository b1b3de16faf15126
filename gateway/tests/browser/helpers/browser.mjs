// Headless Chromium for the browser tests: the system /usr/bin/chromium driven by
// playwright-core (which downloads no browser), a fresh profile per test, no traffic to
// anything but loopback, and screenshots kept under target/test-artifacts/browser.
//
// `browserFixture(t)` gives a test one browser plus the gateways, Redis and proxies it starts
// (the cluster helpers of ../js/helpers register them here), all stopped by one cleanup hook.

import {existsSync} from "node:fs"
import {mkdir, mkdtemp, rm} from "node:fs/promises"
import {tmpdir} from "node:os"
import {dirname, join as pathJoin, resolve} from "node:path"
import {fileURLToPath} from "node:url"
import {chromium} from "playwright-core"

const HERE = dirname(fileURLToPath(import.meta.url))
const REPO = resolve(HERE, "..", "..", "..", "..")

export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium"
/** phoenix.min.js from the pinned npm package, served to the page by the gateway. */
export const PHOENIX_JS = pathJoin(REPO, "gateway", "tests", "js", "node_modules", "phoenix", "priv", "static", "phoenix.min.js")
/** Where screenshots go (the Rust runner passes the real target dir). */
export const ARTIFACTS = process.env.BROWSER_ARTIFACTS_DIR || pathJoin(REPO, "target", "test-artifacts", "browser")

export const WAIT_MS = 10000

const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
  // no name but loopback resolves, so nothing in the browser (pages or background) reaches out
  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]

function isLoopback(url){
  try {
    const {protocol, hostname} = new URL(url)
    if(protocol === "data:" || protocol === "blob:" || protocol === "about:"){ return true }
    return hostname === "127.0.0.1" || hostname === "localhost" || hostname === "[::1]"
  } catch {
    return false
  }
}

/** One test's browser, gateways, Redis servers and proxies. */
export class BrowserFixture {
  constructor(t){
    this.t = t
    this.gateways = []
    this.redises = []
    this.proxies = []
    this.pages = []
    this.context = null
    this.profile = null
    /** Non-loopback requests the browser tried (and that were aborted). */
    this.blocked = []
  }

  gatewayLogs(){
    return this.gateways.map(g => `--- ${g.name} (port ${g.port}) ---\n${g.log()}`).join("\n")
  }

  async browser(){
    if(!existsSync(CHROMIUM)){
      throw new Error(`${CHROMIUM} is missing: run .ci/setup (apt-get install chromium)`)
    }
    this.profile = await mkdtemp(pathJoin(tmpdir(), "gateway-chromium-"))
    this.context = await chromium.launchPersistentContext(this.profile, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: {width: 900, height: 700},
    })
    await this.context.route(url => !isLoopback(url.toString()), route => {
      this.blocked.push(route.request().url())
      return route.abort("blockedbyclient")
    })
    return this.context
  }

  /** A new tab on `url`, with its console errors and page errors recorded. */
  async page(url, name){
    const page = await this.context.newPage()
    page.name = name
    page.problems = []
    page.on("pageerror", err => page.problems.push(`pageerror: ${err.message}`))
    page.on("console", msg => { if(msg.type() === "error"){ page.problems.push(`console: ${msg.text()}`) } })
    this.pages.push(page)
    const res = await page.goto(url, {waitUntil: "load", timeout: WAIT_MS})
    if(!res || res.status() !== 200){ throw new Error(`${name}: GET ${url} answered ${res && res.status()}`) }
    return page
  }

  /** Saves a full-page screenshot under ARTIFACTS and reports its path. */
  async screenshot(page, file){
    await mkdir(ARTIFACTS, {recursive: true})
    const path = pathJoin(ARTIFACTS, file)
    await page.screenshot({path, fullPage: true})
    this.t.diagnostic(`screenshot: ${path}`)
    return path
  }

  /** Text of every #log line of `page`. */
  logLines(page){
    return page.$$eval("#log p", ps => ps.map(p => p.textContent))
  }

  /** What a failure message should show about every page. */
  async describe(){
    const parts = []
    for(const p of this.pages){
      let lines = "(page gone)"
      try { lines = JSON.stringify(await this.logLines(p)) } catch { /* closed */ }
      parts.push(`${p.name}: log ${lines}; problems ${JSON.stringify(p.problems)}`)
    }
    return parts.join("\n")
  }

  async cleanup(){
    if(this.context){ await this.context.close().catch(() => {}) }
    await Promise.all(this.proxies.map(p => p.stop()))
    await Promise.all(this.gateways.map(g => g.stop()))
    await Promise.all(this.redises.map(r => r.stop()))
    if(this.profile){ await rm(this.profile, {recursive: true, force: true}) }
  }
}

export function browserFixture(t){
  const fx = new BrowserFixture(t)
  t.after(() => fx.cleanup())
  return fx
}

/** Waits until `page`'s #log has a line exactly `text`; fails with every page's log. */
export async function waitLogLine(fx, page, text, timeout = WAIT_MS){
  try {
    await page.locator("#log p", {hasText: text}).filter({hasText: new RegExp(`^${escapeRegExp(text)}$`)}).first()
      .waitFor({state: "attached", timeout})
  } catch(err){
    throw new Error(`${page.name}: no #log line "${text}" within ${timeout} ms (${err.message.split("\n")[0]})\n` +
      `${await fx.describe()}\n${fx.gatewayLogs()}`)
  }
}

function escapeRegExp(s){ return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") }

/** Types a nickname, joins, and waits for the page's joined marker; resolves with #transport. */
export async function join(fx, page, nick){
  await page.fill("#nick", nick)
  await page.click("#join button")
  try {
    await page.waitForSelector("body[data-joined='1']", {state: "attached", timeout: WAIT_MS})
    await page.waitForFunction(() => document.getElementById("transport").textContent !== "—", null, {timeout: WAIT_MS})
  } catch(err){
    throw new Error(`${page.name}: not joined within ${WAIT_MS} ms (${err.message.split("\n")[0]})\n${await fx.describe()}\n${fx.gatewayLogs()}`)
  }
  return page.textContent("#transport")
}

/** Types `body` into the message form and submits it. */
export async function say(page, body){
  await page.fill("#body", body)
  await page.press("#body", "Enter")
}

/**
 * Waits until a `new_msg` published through the HTTP API of every node in `nodes` shows up in
 * the #log of every page (nodes subscribe to a topic on Redis in the background after the
 * first local join, so a message sent right after joining could miss a node). Publishes
 * numbered rounds until one round reaches every page; the lines read "mesh: round R via NODE".
 */
export async function awaitPageMesh(fx, topic, nodes, pages, {timeout = WAIT_MS, roundWait = 500, maxRoundWait = 3000} = {}){
  const {apiBroadcast} = await import("../../js/helpers/cluster.mjs")
  const deadline = Date.now() + timeout
  for(let round = 1; ; round++){
    for(const n of nodes){
      const res = await apiBroadcast(n, topic, "new_msg", {user: "mesh", body: `round ${round} via ${n.name}`})
      if(res.status < 200 || res.status >= 300){ throw new Error(`mesh probe on ${n.name}: HTTP ${res.status} ${res.text}`) }
    }
    const want = nodes.map(n => `mesh: round ${round} via ${n.name}`)
    try {
      await Promise.all(pages.map(p => p.waitForFunction(lines => {
        const have = new Set([...document.querySelectorAll("#log p")].map(e => e.textContent))
        return lines.every(l => have.has(l))
      }, want, {timeout: Math.min(roundWait * round, maxRoundWait)})))
      return round
    } catch(err){
      if(Date.now() >= deadline){
        throw new Error(`pages did not all get a mesh probe round within ${timeout} ms\n${await fx.describe()}\n${fx.gatewayLogs()}`)
      }
    }
  }
}
