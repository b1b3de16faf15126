// The example backend (`gateway/examples/backend.py`, Python standard library only) as a child
// process of one test: started on a free port, stopped by the test's cleanup. It checks every
// request's X-Gateway-Signature against `secret`.

import {spawn} from "node:child_process"
import {dirname, join} from "node:path"
import {fileURLToPath} from "node:url"
import {httpRequest} from "./cluster.mjs"

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "examples", "backend.py")
const START_TIMEOUT_MS = 10000

export class Backend {
  constructor(proc){
    this.proc = proc
    this.output = ""
    this.exited = new Promise(resolve => proc.once("exit", resolve))
  }

  /** The `[backend] url` of this backend. */
  get url(){ return `http://127.0.0.1:${this.port}/phx` }

  /** GET /phx/stats: requests per hook and signature failures. */
  async stats(){ return (await httpRequest(`${this.url}/stats`)).json }

  async stop(){
    if(this.proc.exitCode === null && this.proc.signalCode === null){
      this.proc.kill("SIGKILL")
      await this.exited
    }
  }
}

/** Starts the backend with `secret`; registered with `fx` so the test's cleanup stops it. */
export async function startBackend(fx, secret){
  const proc = spawn("python3", [SCRIPT, "--port", "0", "--secret", secret], {stdio: ["ignore", "pipe", "pipe"]})
  const backend = new Backend(proc)
  fx.helpers.push(backend)
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`backend.py did not start: ${backend.output}`)), START_TIMEOUT_MS)
    const onData = chunk => {
      backend.output += chunk.toString("utf8")
      const m = backend.output.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/)
      if(m){ clearTimeout(timer); backend.port = Number(m[1]); resolve() }
    }
    proc.stdout.on("data", onData)
    proc.stderr.on("data", onData)
    backend.exited.then(code => { clearTimeout(timer); reject(new Error(`backend.py exited (${code}): ${backend.output}`)) })
  })
  return backend
}

/** The TOML of a node whose `game:*` joins and events go to `backend`. */
export function backendConfig(url, {secret, connect = false, timeoutMs = 2000} = {}){
  return `
[backend]
url = "${url}"
timeout_ms = ${timeoutMs}
${secret ? `secret = "${secret}"` : ""}
connect = ${connect}

[[channels]]
pattern = "game:*"
join = "backend"
handle_in = "backend"
broadcast = ["chat"]
`
}
