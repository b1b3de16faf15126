//! The observability files in `deploy/` against the real tools and a real node: a `gateway`
//! process (clustered through a private `redis-server`) serves some WebSocket and HTTP traffic,
//! its `/metrics` scrape must pass `promtool check metrics`, and every metric that the alert
//! rules (`deploy/prometheus/rules`) and the Grafana dashboard
//! (`deploy/grafana/dashboards`) query must be in that scrape, with the label values they
//! match on. `promtool` checks the Prometheus config and rules and runs the alert unit tests;
//! the dashboard is validated against a JSON Schema generated from npm `@grafana/schema`.
//!
//! The validators come from `bash .ci/setup-deploy`; a missing one fails the test with that
//! instruction (never a silent skip).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// Prometheus adds these to every series from the scrape target; a scrape never has them.
const TARGET_LABELS: &[&str] = &["instance", "job", "node", "pod", "namespace"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

// ------------------------------------------------------------------ tools and processes

/// A validator installed by `.ci/setup-deploy`: from PATH, else from the Python scripts
/// directory (pyenv creates its PATH shims only on a rehash).
fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!("`{name}` not found: run `bash .ci/setup-deploy` to install the deploy validators")
    })
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    dirs.extend(["/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Run a command to completion; panics (with its output) when it cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command and require exit status 0.
fn check(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command with `input` on stdin.
fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // a writer thread: the child may fill its stdout pipe before reading all of stdin
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("stdin writer");
    out
}

/// YAML (one or more documents) as JSON values, through PyYAML (installed with the
/// validators); YAML anchors and merge keys are resolved.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys, yaml\n\
         print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        )
        .arg(path));
    assert!(
        out.status.success(),
        "reading {} as YAML failed (PyYAML missing? run `bash .ci/setup-deploy`):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("YAML as JSON")
}

fn yaml(path: &Path) -> Value {
    yaml_docs(path)
        .into_iter()
        .next()
        .expect("one YAML document")
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("gateway-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private `redis-server` on a free port.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (bash .ci/setup)");
        let redis = Redis { child, port };
        let deadline = Instant::now() + WAIT;
        while !redis.ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `gateway` binary on a free port; killed on drop.
struct Node {
    child: Child,
    addr: String,
}

impl Node {
    fn start(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        // keep reading so the node never blocks on a full pipe; report the bound address once
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(WAIT)
            .expect("gateway did not log `listening on http://IP:PORT`");
        Node { child, addr }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(&self.addr, "GET", path, "")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ HTTP and WebSocket

/// One HTTP/1.1 request on its own connection; returns status and body (chunked decoded).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").expect("response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A minimal WebSocket client: upgrade, masked text frames out, text frames in.
struct Ws {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    fn connect(addr: &str, path: &str) -> Ws {
        Ws::try_connect(addr, path).unwrap_or_else(|status| panic!("upgrade refused: {status}"))
    }

    /// The upgrade; `Err(status)` when the server answers anything but 101.
    fn try_connect(addr: &str, path: &str) -> Result<Ws, u16> {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("write upgrade");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).expect("read upgrade response");
            assert!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        if status != 101 {
            return Err(status);
        }
        buf.drain(..end);
        Ok(Ws { s, buf })
    }

    fn send(&mut self, msg: &Value) {
        let payload = msg.to_string().into_bytes();
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&frame).expect("send frame");
    }

    /// The next text message as JSON (control frames are skipped; a close fails the test).
    fn recv(&mut self) -> Value {
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                match opcode {
                    0x1 => return serde_json::from_slice(&payload).expect("JSON text frame"),
                    0x8 => panic!("server closed the WebSocket: {payload:?}"),
                    _ => continue,
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk).expect("read frame (timed out?)");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Receive until a message satisfies `pred`, within `WAIT`.
    fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
            let m = self.recv();
            if pred(&m) {
                return m;
            }
        }
    }
}

/// (opcode, payload, bytes used) of one complete unmasked server frame at the start of `b`.
fn parse_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, start) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (b.len() >= start + len).then(|| (b[0] & 0x0f, b[start..start + len].to_vec(), start + len))
}

// ------------------------------------------------------------------ scrape and PromQL

/// A parsed `/metrics` scrape.
#[derive(Debug, Default)]
struct Scrape {
    /// Family name -> `# TYPE` (counter, gauge, histogram, ...).
    types: BTreeMap<String, String>,
    /// Sample name (with `_bucket`/`_sum`/`_count` for histograms) -> label sets.
    samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    s.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let mut labels = BTreeMap::new();
            if line[name_end..].starts_with('{') {
                let body = &line[name_end + 1..line.rfind('}').unwrap_or(line.len())];
                for (k, _, v) in parse_matchers(body) {
                    labels.insert(k, v);
                }
            }
            s.samples.entry(name.to_string()).or_default().push(labels);
        }
        s
    }

    /// The value of the sample `name` whose labels include `want`.
    fn value(&self, text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
        for line in text.lines().filter(|l| l.starts_with(name)) {
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let (sname, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_matchers(l.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            if sname == name
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, _, lv)| lk == k && lv == v))
            {
                return value.parse().expect("numeric sample");
            }
        }
        panic!("no sample {name}{want:?} in the scrape");
    }

    /// Whether a PromQL selector would find series in this scrape; `Err` says why not.
    fn check(&self, sel: &Selector) -> Result<(), String> {
        let name = &sel.name;
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.types.get(base).is_some_and(|t| t == "histogram") {
                    break;
                }
                if suffix == "_bucket" {
                    return Err(format!("{name}: {base} is not a histogram"));
                }
            }
        }
        let Some(series) = self.samples.get(name) else {
            if self.types.get(name).is_some_and(|t| t == "histogram") {
                return Err(format!(
                    "{name} is a histogram: query {name}_bucket, _sum or _count"
                ));
            }
            return Err(format!("{name} is not exported by the node"));
        };
        for (label, op, value) in &sel.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !series.iter().any(|l| l.contains_key(label)) {
                return Err(format!("{name} has no label {label:?}"));
            }
            // an equality (or inequality) on a value that never occurs is a typo: the first
            // selects nothing, the second filters nothing
            let literal = !value.contains('$');
            if (op == "=" || op == "!=")
                && literal
                && !series
                    .iter()
                    .any(|l| l.get(label).is_some_and(|v| v == value))
            {
                return Err(format!("{name} never has {label}={value:?}"));
            }
        }
        Ok(())
    }
}

/// A metric selector found in a PromQL expression.
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    /// (label, operator, value) from `{...}`.
    matchers: Vec<(String, String, String)>,
}

/// `label op "value", ...` as found between `{` and `}`.
fn parse_matchers(body: &str) -> Vec<(String, String, String)> {
    let b = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let label = body[start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        let op = body[op_start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if label.is_empty() || op.is_empty() || i >= b.len() {
            break;
        }
        let (value, used) = string_literal(&body[i..]);
        out.push((label, op, value));
        i += used;
    }
    out
}

/// The string literal at the start of `s` (`"…"`, `'…'` or `` `…` ``): (content, bytes used).
fn string_literal(s: &str) -> (String, usize) {
    let mut chars = s.char_indices();
    let Some((_, quote)) = chars.next() else {
        return (String::new(), 0);
    };
    let mut out = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' && quote != '`' {
            escaped = true;
        } else if c == quote {
            return (out, i + c.len_utf8());
        } else {
            out.push(c);
        }
    }
    (out, s.len())
}

/// Every `gateway_*` / `process_*` selector in a PromQL expression (Grafana variables such as
/// `$instance` and string contents are not metric names).
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i += string_literal(&expr[i..]).1;
        } else if c == b'{' {
            // a selector without a name before it, or label matchers already consumed
            let end = expr[i..].find('}').map_or(b.len(), |j| i + j + 1);
            i = end;
        } else if (c.is_ascii_alphabetic() || c == b'_')
            && (i == 0 || !(ident(b[i - 1]) || b[i - 1] == b'$'))
        {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let name = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let mut matchers = Vec::new();
            if j < b.len() && b[j] == b'{' {
                let end = expr[j..].find('}').map_or(b.len(), |k| j + k);
                matchers = parse_matchers(&expr[j + 1..end]);
                i = (end + 1).min(b.len());
            }
            if name.starts_with("gateway_") || name.starts_with("process_") {
                out.push(Selector {
                    name: name.to_string(),
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every string under a key named `key`, anywhere in `v`, with its JSON path.
fn strings_under(v: &Value, key: &str, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{path}.{k}");
                if k == key {
                    if let Some(s) = child.as_str() {
                        out.push((p.clone(), s.to_string()));
                    }
                }
                strings_under(child, key, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                strings_under(child, key, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/dashboards/gateway-cluster.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard JSON"))
        .expect("dashboard is JSON")
}

/// (where, PromQL) of every query the dashboard runs: panel targets and variable queries.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    strings_under(&d["panels"], "expr", "panels", &mut out);
    for (i, var) in d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .enumerate()
    {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .expect("variable query");
            out.push((format!("templating.list[{i}]"), q.to_string()));
        }
    }
    out
}

/// (alert or record name, PromQL) of every rule in deploy/prometheus/rules.
fn rule_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("deploy/prometheus/rules")).expect("rules dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            for group in yaml(&path)["groups"].as_array().expect("groups") {
                for rule in group["rules"].as_array().expect("rules") {
                    let name = rule["alert"].as_str().or(rule["record"].as_str());
                    out.push((
                        name.expect("rule name").to_string(),
                        rule["expr"].as_str().expect("expr").to_string(),
                    ));
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------ tests

/// A node with traffic behind it: its scrape passes promtool's linter, and every metric the
/// rules and the dashboard use is in it.
#[test]
fn live_scrape_lints_clean_and_has_every_queried_metric() {
    let promtool = tool("promtool");
    let redis = Redis::start();
    let node = Node::start(&["--redis-url", &redis.url(), "--node-id", "obs-1"]);
    let deadline = Instant::now() + WAIT;
    while node.get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "node never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }

    // traffic: a join, a client broadcast, an API broadcast, an unknown event, a refusal
    let mut ws = Ws::connect(&node.addr, "/socket/websocket?vsn=2.0.0");
    ws.send(&json!(["1", "1", "room:1", "phx_join", {}]));
    let reply = ws.until("join reply", |m| m[1] == "1" && m[3] == "phx_reply");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    ws.send(&json!(["1", "2", "room:1", "new_msg", {"body": "hi"}]));
    ws.until("own new_msg broadcast", |m| m[3] == "new_msg");
    let (status, body) = http(
        &node.addr,
        "POST",
        "/api/broadcast",
        &json!({"topic": "room:1", "event": "shout", "payload": {"n": 1}}).to_string(),
    );
    assert_eq!(status, 202, "{body}");
    ws.until("API broadcast", |m| m[3] == "shout");
    ws.send(&json!(["1", "3", "room:1", "no_such_event", {}]));
    let err = ws.until("error reply", |m| m[1] == "3");
    assert_eq!(err[4]["status"], "error", "{err}");
    let refused = Ws::try_connect(&node.addr, "/socket/websocket?vsn=9.9.9").err();
    assert_eq!(refused, Some(403));

    let (status, text) = node.get("/metrics");
    assert_eq!(status, 200);
    let lint = run_with_input(
        Command::new(&promtool).args(["check", "metrics"]),
        text.as_bytes(),
    );
    assert!(
        lint.status.success(),
        "promtool check metrics found problems:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let scrape = Scrape::parse(&text);
    // the scrape reflects the traffic (so it is this node's real state, not a stub)
    let ws_sessions = [("transport", "websocket")];
    assert_eq!(scrape.value(&text, "gateway_sessions", &ws_sessions), 1.0);
    assert!(scrape.value(&text, "gateway_joins_total", &[]) >= 1.0);
    assert!(scrape.value(&text, "gateway_broadcast_deliveries_total", &[]) >= 2.0);
    let vsn = [("reason", "vsn")];
    assert!(scrape.value(&text, "gateway_connect_refusals_total", &vsn) >= 1.0);
    assert_eq!(scrape.value(&text, "gateway_pubsub_healthy", &[]), 1.0);

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let queries = rule_queries()
        .into_iter()
        .map(|(n, q)| (format!("rule {n}"), q))
        .chain(
            dashboard_queries()
                .into_iter()
                .map(|(w, q)| (format!("dashboard {w}"), q)),
        );
    for (origin, expr) in queries {
        let sels = selectors(&expr);
        assert!(
            !sels.is_empty() || expr.contains("up{"),
            "{origin} queries no gateway metric: {expr}"
        );
        for sel in sels {
            used.insert(sel.name.clone());
            if let Err(why) = scrape.check(&sel) {
                problems.push(format!("{origin}: {why}\n    in {expr}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "queries that would find nothing:\n{}",
        problems.join("\n")
    );
    // the brief's signals are all on the dashboard or in the alerts
    for name in [
        "gateway_sessions",
        "gateway_joins_total",
        "gateway_messages_received_total",
        "gateway_fanout_duration_seconds_bucket",
        "gateway_pubsub_healthy",
        "gateway_pubsub_canary_rtt_seconds_bucket",
        "gateway_pubsub_dropped_total",
        "gateway_memory_bytes_per_session",
        "gateway_draining",
        "gateway_slow_consumer_disconnects_total",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(used.contains(name), "{name} is queried nowhere");
    }
    drop(ws);
}

/// The reference checker itself: what Prometheus would not find is reported.
#[test]
fn reference_checker_rejects_what_prometheus_would_not_find() {
    let scrape = Scrape::parse(
        "# TYPE gateway_lat_seconds histogram\n\
         gateway_lat_seconds_bucket{le=\"0.1\"} 1\ngateway_lat_seconds_bucket{le=\"+Inf\"} 1\n\
         gateway_lat_seconds_sum 0.05\ngateway_lat_seconds_count 1\n\
         # TYPE gateway_drops_total counter\n\
         gateway_drops_total{reason=\"full\"} 0\ngateway_drops_total{reason=\"own_echo\"} 3\n",
    );
    let ok = |e: &str| {
        let sels = selectors(e);
        assert!(!sels.is_empty(), "no selector found in {e}");
        sels.iter().try_for_each(|s| scrape.check(s))
    };
    ok("histogram_quantile(0.99, sum by (le) (rate(gateway_lat_seconds_bucket[5m])))").unwrap();
    ok("rate(gateway_lat_seconds_sum[5m]) / rate(gateway_lat_seconds_count[5m])").unwrap();
    ok(r#"rate(gateway_drops_total{reason!="own_echo", instance=~"$instance"}[5m])"#).unwrap();
    // a histogram family without its suffix selects nothing
    assert!(ok("rate(gateway_lat_seconds[5m])").is_err());
    // a counter has no buckets
    assert!(ok("rate(gateway_drops_total_bucket[5m])").is_err());
    // a misspelt label value: selects nothing, or filters nothing
    assert!(ok(r#"gateway_drops_total{reason="ful"}"#).is_err());
    assert!(ok(r#"gateway_drops_total{reason!="own-echo"}"#).is_err());
    // an unknown label
    assert!(ok(r#"gateway_drops_total{kind="full"}"#).is_err());
    // an unknown metric
    assert!(ok("gateway_drops_totals").is_err());
    // string contents and Grafana variables are not metric names
    assert_eq!(
        selectors(r#"label_values(gateway_sessions, "gateway_fake") + $gateway_var"#),
        vec![Selector {
            name: "gateway_sessions".into(),
            matchers: vec![]
        }]
    );
}

/// promtool: the compose Prometheus config, the rules, and the alert unit tests; every alert
/// has a unit test in which it fires.
#[test]
fn prometheus_config_rules_and_alert_unit_tests() {
    let promtool = tool("promtool");
    let dir = root().join("deploy/prometheus");
    check(
        Command::new(&promtool)
            .args(["check", "config", "prometheus.yml"])
            .current_dir(&dir),
    );
    let mut rule_files: Vec<PathBuf> = std::fs::read_dir(dir.join("rules"))
        .expect("rules dir")
        .map(|e| e.expect("entry").path())
        .collect();
    rule_files.sort();
    check(
        Command::new(&promtool)
            .args(["check", "rules"])
            .args(&rule_files),
    );
    let tests: Vec<PathBuf> = std::fs::read_dir(dir.join("tests"))
        .expect("tests dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(!tests.is_empty());
    check(Command::new(&promtool).args(["test", "rules"]).args(&tests));

    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in &tests {
        for case in yaml(t)["tests"].as_array().expect("tests") {
            for a in case["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().expect("alertname").to_string();
                if a["exp_alerts"].as_array().is_some_and(|v| !v.is_empty()) {
                    fired.insert(name);
                } else {
                    quiet.insert(name);
                }
            }
        }
    }
    let alerts: Vec<String> = rule_queries().into_iter().map(|(n, _)| n).collect();
    for name in &alerts {
        assert!(
            fired.contains(name),
            "alert {name} has no unit test where it fires"
        );
    }
    for required in [
        "GatewayPubSubDeaf",
        "GatewayNotReady",
        "GatewaySlowConsumerDisconnectsHigh",
        "GatewayFanoutLatencyHigh",
        "GatewayNearConnectionLimit",
        "GatewayPubSubPublishErrors",
        "GatewayDrainingTooLong",
    ] {
        assert!(
            alerts.iter().any(|a| a == required),
            "missing alert {required}"
        );
    }
    // the deaf alert is the one with a contract: 0 for 30 s
    let deaf = yaml(&dir.join("rules/gateway.yml"))["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .find(|r| r["alert"] == "GatewayPubSubDeaf")
        .expect("deaf alert");
    assert_eq!(deaf["expr"], "gateway_pubsub_healthy == 0");
    assert_eq!(deaf["for"], "30s");
    assert!(
        !quiet.is_empty(),
        "no unit test shows an alert staying quiet"
    );
}

/// Every panel query is valid PromQL: with Grafana's variables replaced by values, promtool
/// parses them as recording rules (a typo in a panel query is otherwise only seen in Grafana).
#[test]
fn dashboard_queries_are_valid_promql() {
    let promtool = tool("promtool");
    let rules: Vec<Value> = dashboard_queries()
        .into_iter()
        .filter(|(origin, _)| origin.starts_with("panels"))
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "unreplaced Grafana variable in {expr}");
            json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    assert!(rules.len() > 20, "only {} panel queries", rules.len());
    let tmp = TempDir::new("dashboard-promql");
    let file = tmp.0.join("dashboard-queries.json");
    let groups = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, groups.to_string()).expect("write rules");
    check(Command::new(&promtool).args(["check", "rules"]).arg(&file));
}

/// A Prometheus server (Debian's `prometheus`) on a free port with its own storage; killed on
/// drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(config: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let cfg = dir.0.join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(&p.addr).is_err() || http(&p.addr, "GET", "/-/ready", "").0 != 200
        {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// An instant query; panics unless Prometheus answers `success`.
    fn query(&self, expr: &str) -> Vec<Value> {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let (status, body) = http(&self.addr, "GET", &format!("/api/v1/query?query={q}"), "");
        let v: Value = serde_json::from_str(&body).expect("query answer JSON");
        assert!(
            status == 200 && v["status"] == "success",
            "query failed: {expr}\n{body}"
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real thing: Prometheus scrapes a node and loads the alert rules; every rule evaluates
/// without error (vector matching problems only show up here), no alert fires on a healthy
/// node, and every panel query returns series.
#[test]
fn real_prometheus_evaluates_every_rule_and_panel_against_a_node() {
    let node = Node::start(&[]);
    let rules = root().join("deploy/prometheus/rules");
    let prom = Prometheus::start(&format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: ['{}/*.yml']\n\
         scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{}']\n",
        rules.display(),
        node.addr
    ));
    // enough samples for the rate windows below, and every rule evaluated at least once
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let samples = prom.query(r#"count_over_time(up{job="gateway"}[10s])"#);
        let have = samples
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let (_, body) = http(&prom.addr, "GET", "/api/v1/rules", "");
        let rules: Value = serde_json::from_str(&body).expect("rules JSON");
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = !all.is_empty()
            && all.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        if have >= 4.0 && evaluated {
            let broken: Vec<String> = all
                .iter()
                .filter(|r| r["health"] != "ok")
                .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
                .collect();
            assert!(
                broken.is_empty(),
                "rules failing to evaluate:\n{}",
                broken.join("\n")
            );
            assert_eq!(
                all.len(),
                rule_queries().len(),
                "Prometheus loaded other rules"
            );
            let active: Vec<String> = all
                .iter()
                .filter(|r| r["state"] != "inactive")
                .map(|r| format!("{} {}", r["name"], r["state"]))
                .collect();
            assert!(active.is_empty(), "alerts on a healthy node: {active:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus has {have} samples, rules evaluated: {evaluated}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (origin, expr) in dashboard_queries() {
        if !origin.starts_with("panels") {
            continue;
        }
        let expr = expr
            .replace("$__rate_interval", "10s")
            .replace("$__interval", "10s")
            .replace("$__range", "10s")
            .replace("$instance", ".*");
        let result = prom.query(&expr);
        assert!(!result.is_empty(), "{origin} returns no series: {expr}");
    }
}

/// The dashboard matches the `Dashboard` type of the pinned `@grafana/schema` (converted to a
/// JSON Schema by ts-json-schema-generator), and a broken copy does not.
#[test]
fn grafana_dashboard_matches_the_grafana_schema() {
    let checker = tool("check-jsonschema");
    let schema_dir = root().join("deploy/grafana/schema");
    let generator = schema_dir.join("node_modules/.bin/ts-json-schema-generator");
    let types =
        schema_dir.join("node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts");
    assert!(
        generator.is_file() && types.is_file(),
        "deploy/grafana/schema/node_modules is missing: run `bash .ci/setup-deploy`"
    );
    let tmp = TempDir::new("grafana-schema");
    let schema = tmp.0.join("dashboard.schema.json");
    // the .d.ts files import types the package does not ship: no type check, the shapes are
    // all that matter here
    check(
        Command::new(&generator)
            .arg("--path")
            .arg(&types)
            .args(["--type", "Dashboard", "--no-type-check", "-o"])
            .arg(&schema)
            .current_dir(&schema_dir),
    );
    let dash_path = root().join("deploy/grafana/dashboards/gateway-cluster.json");
    check(
        Command::new(&checker)
            .arg("--schemafile")
            .arg(&schema)
            .arg(&dash_path),
    );
    // a misspelt panel key must be refused, or the check proves nothing
    let mut broken = dashboard();
    broken["panels"][1]["gridPoss"] = json!({"h": 1});
    let broken_path = tmp.0.join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).expect("write broken copy");
    let out = run(Command::new(&checker)
        .arg("--schemafile")
        .arg(&schema)
        .arg(&broken_path));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("gridPoss"),
        "the schema accepted an unknown panel key:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Dashboard structure that no schema checks: unique ids, no overlapping panels, every panel
/// has a question that PANELS.md repeats, queries go through the datasource variable, and the
/// provisioning files point where docker-compose mounts them.
#[test]
fn dashboard_layout_panels_doc_and_provisioning_agree() {
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    let panels_md = std::fs::read_to_string(root().join("deploy/grafana/PANELS.md"))
        .expect("deploy/grafana/PANELS.md");
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        let title = p["title"].as_str().expect("panel title");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(x + w <= 24, "{title} is wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    panic!("panels {other:?} and {title:?} overlap at ({cx}, {cy})");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        let question = p["description"].as_str().unwrap_or("");
        assert!(question.contains('?'), "{title}: no question");
        assert!(
            panels_md.contains(&format!("| {title} | {question} |")),
            "PANELS.md lacks the row for panel {title:?}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }

    let prov = root().join("deploy/grafana/provisioning");
    let ds = yaml(&prov.join("datasources/prometheus.yml"));
    let ds_uid = ds["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    let var = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("datasource variable");
    assert_eq!(var["current"]["value"], ds_uid);
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");

    let provider = yaml(&prov.join("dashboards/gateway.yml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let compose = yaml(&root().join("docker-compose.yml"));
    let mounts: Vec<String> = compose["services"]["grafana"]["volumes"]
        .as_array()
        .expect("grafana volumes")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./deploy/grafana/dashboards:") && m.contains(path)),
        "compose does not mount the dashboards at {path}: {mounts:?}"
    );
    assert!(mounts
        .iter()
        .any(|m| m.starts_with("./deploy/grafana/provisioning:/etc/grafana/provisioning")));
    let home = compose["services"]["grafana"]["environment"]
        ["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .expect("home dashboard");
    assert_eq!(home, format!("{path}/gateway-cluster.json"));
}
