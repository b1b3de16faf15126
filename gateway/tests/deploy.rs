//! The deployment files against the real tools and binaries: docker-compose.yml (Compose
//! Specification schema and Debian's docker-compose 1.29), the Dockerfile (hadolint), the
//! HAProxy configs (`haproxy -c`), the Kubernetes kustomizations (rendered by `kubectl
//! kustomize`, validated by `kubernetes-validate --strict`), the drain timing against the
//! grace period, the PrometheusRule against deploy/prometheus, and every flag, variable, path
//! and port those files name against `gateway --help`, `loadtest --help` and a running node.
//! Finally deploy/local starts the compose topology as processes (Redis, three nodes, a
//! round-robin proxy) and clients talk across nodes through the proxy.
//!
//! No Docker engine or Kubernetes cluster is needed: everything is checked offline. The
//! validators come from `bash .ci/setup-deploy`; a missing one fails the test with that
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

/// The gateway's HTTP surface (README "HTTP API", ARCHITECTURE §7).
const DOCUMENTED_PATHS: &[&str] = &[
    "/socket/websocket",
    "/socket/longpoll",
    "/api/broadcast",
    "/api/disconnect",
    "/metrics",
    "/healthz",
    "/readyz",
];

/// The kustomizations under deploy/k8s that must render.
const KUSTOMIZATIONS: &[&str] = &[
    "base",
    "overlays/dev",
    "overlays/prod",
    "monitoring",
    "loadtest",
];

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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// YAML documents as JSON values through PyYAML (anchors and merge keys resolved).
fn yaml_docs_of(text: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().expect("stdin");
    let text = text.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("python3");
    writer.join().expect("writer");
    assert!(
        out.status.success(),
        "YAML parse failed (PyYAML missing? run `bash .ci/setup-deploy`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("YAML as JSON")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml_file(path: &Path) -> Value {
    yaml_docs_of(&read(path))
        .into_iter()
        .next()
        .expect("a YAML document")
}

/// `kubectl kustomize deploy/k8s/<dir>`: (YAML text, documents).
fn kustomize(dir: &str) -> (String, Vec<Value>) {
    let kubectl = tool("kubectl");
    let out = check(
        Command::new(kubectl)
            .arg("kustomize")
            .arg(root().join("deploy/k8s").join(dir)),
    );
    let text = stdout(&out);
    let docs = yaml_docs_of(&text);
    (text, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}*"))
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

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--flag` names and `GATEWAY_*`-style variables listed by a `--help` output.
#[derive(Debug, Default)]
struct Help {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
}

impl Help {
    fn of(program: &Path, args: &[&str]) -> Help {
        let text = stdout(&check(Command::new(program).args(args).arg("--help")));
        let mut h = Help::default();
        for line in text.lines() {
            let t = line.trim_start();
            let t = t.strip_prefix("-h, ").unwrap_or(t);
            let t = t.split_once(", ").map_or(t, |(short, long)| {
                if short.len() == 2 && short.starts_with('-') {
                    long
                } else {
                    t
                }
            });
            if let Some(rest) = t.strip_prefix("--") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                h.flags.insert(format!("--{name}"));
            }
            if let Some((_, rest)) = line.split_once("[env: ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                h.envs.insert(name);
            }
        }
        h
    }
}

fn gateway_help() -> Help {
    Help::of(Path::new(env!("CARGO_BIN_EXE_gateway")), &[])
}

/// The `loadtest` binary next to `gateway`, built (or confirmed fresh) with the same profile:
/// it belongs to another package, so cargo gives this test no path to it.
fn loadtest_bin() -> PathBuf {
    let gateway = Path::new(env!("CARGO_BIN_EXE_gateway"));
    let profile_dir = gateway.parent().expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cmd.args(["build", "--quiet", "-p", "loadtest", "--target-dir"])
        .arg(target_dir)
        .current_dir(root());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    check(&mut cmd);
    profile_dir.join("loadtest")
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
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `gateway` binary with exactly the given environment (plus PATH); killed on drop.
struct Node {
    child: Child,
    addr: String,
}

impl Node {
    fn start(args: &[&str], env: &BTreeMap<String, String>) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let (tx, rx) = mpsc::channel();
        // keep reading both streams so the node never blocks on a full pipe; report the bound
        // address (pretty and JSON log lines alike) and anything else for a failure message
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let addr = line.split("listening on http://").nth(1).map(|rest| {
                        rest.chars()
                            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                            .collect::<String>()
                    });
                    if tx.send((addr, line)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut log = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((Some(addr), _)) => return Node { child, addr },
                Ok((None, line)) => log.push(line),
                Err(_) => panic!(
                    "gateway {args:?} did not log `listening on` (exit: {:?}):\n{}",
                    child.try_wait().ok().flatten(),
                    log.join("\n")
                ),
            }
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while http(&self.addr, "GET", "/readyz", &[], "").0 != 200 {
            assert!(Instant::now() < deadline, "node {} never ready", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ HTTP and WebSocket

/// One HTTP/1.1 request on its own connection (so a round-robin proxy picks a node for each);
/// returns status and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
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
    fn connect(addr: &str) -> Ws {
        Ws::try_connect(addr).unwrap_or_else(|status| panic!("upgrade refused: {status}"))
    }

    /// The upgrade; `Err(status)` when the answer is not 101.
    fn try_connect(addr: &str) -> Result<Ws, u16> {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(
            s,
            "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
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
        assert!(payload.len() < 126, "short messages only");
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81u8, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&frame).expect("send frame");
    }

    /// Receive until a message satisfies `pred`, within `WAIT`.
    fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
            if let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                assert_ne!(opcode, 0x8, "server closed the WebSocket: {payload:?}");
                if opcode == 0x1 {
                    let m: Value = serde_json::from_slice(&payload).expect("JSON frame");
                    if pred(&m) {
                        return m;
                    }
                }
                continue;
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk).expect("read frame (timed out?)");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn join(&mut self, topic: &str) {
        self.send(&json!(["1", "1", topic, "phx_join", {}]));
        let reply = self.until("join reply", |m| m[1] == "1" && m[3] == "phx_reply");
        assert_eq!(reply[4]["status"], "ok", "join {topic}: {reply}");
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

/// `gateway_sessions{transport="websocket"}` of one node.
fn ws_sessions(node: &str) -> f64 {
    let (_, text) = http(node, "GET", "/metrics", &[], "");
    text.lines()
        .find_map(|l| l.strip_prefix("gateway_sessions{transport=\"websocket\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("gateway_sessions in the scrape")
}

// ------------------------------------------------------------------ static validators

#[test]
fn compose_file_passes_the_compose_spec_and_docker_compose_1_29() {
    let compose = root().join("docker-compose.yml");
    check(
        Command::new(tool("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(&compose),
    );
    // 1.29 needs no engine for `config`; both with and without the loadtest profile
    let dc = tool("docker-compose");
    check(
        Command::new(&dc)
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(root()),
    );
    let full = check(
        Command::new(&dc)
            .args([
                "-f",
                "docker-compose.yml",
                "--profile",
                "loadtest",
                "config",
            ])
            .current_dir(root()),
    );
    let cfg = yaml_docs_of(&stdout(&full)).remove(0);
    let services = cfg["services"].as_object().expect("services");
    for name in [
        "redis",
        "gateway-1",
        "gateway-2",
        "gateway-3",
        "lb",
        "prometheus",
        "grafana",
        "loadtest",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let mut node_ids = BTreeSet::new();
    for i in 1..=3 {
        let svc = &services[&format!("gateway-{i}")];
        let env = &svc["environment"];
        assert_eq!(env["GATEWAY_REDIS_URL"], "redis://redis:6379/");
        node_ids.insert(
            env["GATEWAY_NODE_ID"]
                .as_str()
                .expect("node id")
                .to_string(),
        );
        assert_eq!(svc["ulimits"]["nofile"]["hard"], 1048576);
        assert!(svc["sysctls"]["net.core.somaxconn"].is_string());
        assert!(svc["sysctls"]["net.ipv4.ip_local_port_range"].is_string());
    }
    assert_eq!(node_ids.len(), 3, "node ids must differ");
    // on localhost:4000, as docker-compose 1.29 normalises it
    assert_eq!(services["lb"]["ports"][0], "127.0.0.1:4000:4000/tcp");
    assert_eq!(services["loadtest"]["profiles"], json!(["loadtest"]));
}

#[test]
fn dockerfile_passes_hadolint_and_has_the_promised_shape() {
    check(
        Command::new(tool("hadolint"))
            .args(["--failure-threshold", "error", "Dockerfile"])
            .current_dir(root()),
    );
    let text = read(&root().join("Dockerfile"));
    let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "multi-stage: builder and runtime");
    assert!(from[0].contains("rust:") && from[1].contains("slim"));
    for needle in [
        "cargo build --release --locked -p gateway -p loadtest",
        "USER 10001:10001",
        "EXPOSE 4000",
        "HEALTHCHECK",
        "/healthz",
        "ENTRYPOINT [\"/usr/local/bin/gateway\"]",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // the build context keeps what the build needs and nothing else
    let ignore = read(&root().join(".dockerignore"));
    for keep in [
        "!Cargo.toml",
        "!Cargo.lock",
        "!gateway/",
        "!pubsub-redis/",
        "!loadtest/",
    ] {
        assert!(
            ignore.lines().any(|l| l == keep),
            ".dockerignore lacks {keep}"
        );
    }
    let workspace = read(&root().join("Cargo.toml"));
    for member in ["gateway", "pubsub-redis", "loadtest"] {
        assert!(workspace.contains(&format!("\"{member}\"")));
        assert!(text.contains(&format!("COPY {member} {member}")));
    }
}

/// Copy `from` to `to`, leaving out directories named in `skip`.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let (src, dst) = (entry.path(), to.join(&name));
        if src.is_dir() {
            if !skip.iter().any(|s| name == *s) {
                copy_tree(&src, &dst, skip);
            }
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// What `.dockerignore` lets into the build context is a complete workspace whose lockfile
/// needs no update (`cargo build --locked` in the image would fail otherwise).
#[test]
fn docker_build_context_is_a_complete_locked_workspace() {
    let ignore = read(&root().join(".dockerignore"));
    let lines: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines.first(), Some(&"*"), "the context is an allow-list");
    let tmp = TempDir::new("docker-context");
    for allowed in lines.iter().filter_map(|l| l.strip_prefix('!')) {
        let src = root().join(allowed.trim_end_matches('/'));
        let dst = tmp.0.join(allowed.trim_end_matches('/'));
        if src.is_dir() {
            copy_tree(&src, &dst, &["node_modules", "target"]);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
    check(
        Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["metadata", "--locked", "--offline", "--format-version", "1"])
            .arg("--manifest-path")
            .arg(tmp.0.join("Cargo.toml"))
            .stdout(Stdio::null()),
    );
}

#[test]
fn haproxy_configs_are_valid() {
    let haproxy = tool("haproxy");
    for cfg in [
        "deploy/haproxy/haproxy.cfg",
        "deploy/k8s/loadtest/haproxy.cfg",
    ] {
        // the compose/cluster hostnames do not resolve here: warnings, not errors
        check(
            Command::new(&haproxy)
                .args(["-c", "-q", "-f"])
                .arg(root().join(cfg)),
        );
    }
}

#[test]
fn yaml_files_lint_clean() {
    check(
        Command::new(tool("yamllint"))
            .args([
                "-s",
                "-c",
                "deploy/.yamllint",
                "docker-compose.yml",
                "deploy",
            ])
            .current_dir(root()),
    );
}

#[test]
fn kustomizations_render_and_pass_strict_kubernetes_validation() {
    let validate = tool("kubernetes-validate");
    let tmp = TempDir::new("k8s");
    let mut files = Vec::new();
    for dir in KUSTOMIZATIONS {
        let (text, docs) = kustomize(dir);
        assert!(!docs.is_empty(), "{dir} renders nothing");
        files.push(tmp.file(&format!("{}.yaml", dir.replace('/', "-")), &text));
    }
    files.push(root().join("deploy/k8s/base/secret.example.yaml"));
    let out = check(
        Command::new(&validate)
            .args(["--strict", "-k", "1.30.0"])
            .args(&files),
    );
    // CRDs (ServiceMonitor, PrometheusRule) have no bundled schema: a warning, checked below
    // by other means; every built-in kind must have passed
    let report = stdout(&out);
    assert!(!report.contains("ERROR"), "{report}");

    // --strict must really catch a misspelt field, or this test proves little
    let (dev, _) = kustomize("overlays/dev");
    let broken = tmp.file(
        "broken.yaml",
        &dev.replacen("readinessProbe:", "readinessProbes:", 1),
    );
    let out = run(Command::new(&validate)
        .args(["--strict", "--quiet", "-k", "1.30.0"])
        .arg(&broken));
    assert!(!out.status.success(), "a misspelt field passed validation");
}

/// The overlays keep the base's contract: readiness on /readyz, liveness on /healthz,
/// non-root read-only containers, Redis configured, and a grace period that covers the
/// preStop pause plus the longest drain.
#[test]
fn deployments_drain_within_the_grace_period_and_stay_locked_down() {
    for overlay in ["overlays/dev", "overlays/prod"] {
        let (_, docs) = kustomize(overlay);
        let deploy = find(&docs, "Deployment", "gateway");
        let env = &find(&docs, "ConfigMap", "gateway-env")["data"];
        let pod = &deploy["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        let sleep: u64 = c["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .and_then(|cmd| (cmd[0] == "sleep").then(|| cmd[1].as_str()).flatten())
            .and_then(|s| s.parse().ok())
            .expect("preStop: sleep N");
        let ms = |k: &str| -> u64 {
            env[k]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{overlay}: {k} not set"))
        };
        let timeout_s = ms("GATEWAY_SHUTDOWN_TIMEOUT_MS").div_ceil(1000);
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace");
        assert!(
            grace >= sleep + timeout_s + 5,
            "{overlay}: grace {grace}s < preStop {sleep}s + drain {timeout_s}s + 5s"
        );
        // the pacing can close at least 100,000 sessions before the timeout
        let per_s = ms("GATEWAY_DRAIN_BATCH_SIZE") * 1000 / ms("GATEWAY_DRAIN_INTERVAL_MS");
        assert!(
            per_s * timeout_s >= 100_000,
            "{overlay}: drain too slow: {per_s}/s"
        );
        assert!(env["GATEWAY_REDIS_URL"]
            .as_str()
            .is_some_and(|u| u.starts_with("redis://")));

        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        // only sysctls that Kubernetes 1.29+ allows without a kubelet allow-list
        let safe = [
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_unprivileged_port_start",
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ];
        for s in pod["securityContext"]["sysctls"]
            .as_array()
            .expect("sysctls")
        {
            let name = s["name"].as_str().expect("sysctl name");
            assert!(safe.contains(&name), "{overlay}: unsafe sysctl {name}");
        }
        assert!(c["resources"]["requests"]["memory"].is_string());
        assert!(pod["topologySpreadConstraints"]
            .as_array()
            .is_some_and(|t| !t.is_empty()));
        for kind in [
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Namespace",
        ] {
            find(&docs, kind, "gateway");
        }
    }
    let (_, dev) = kustomize("overlays/dev");
    find(&dev, "StatefulSet", "redis");
    let (_, prod) = kustomize("overlays/prod");
    assert_eq!(
        find(&prod, "ConfigMap", "gateway-env")["data"]["GATEWAY_REDIS_CLUSTER"],
        "true"
    );
    // prod never ships a Secret: keys are created out of band
    assert!(!prod.iter().any(|d| d["kind"] == "Secret"));
}

/// The PrometheusRule carries exactly the groups of deploy/prometheus/rules, which promtool
/// accepts.
#[test]
fn prometheus_rule_is_the_compose_rules_file() {
    check(
        Command::new("python3")
            .arg(root().join("deploy/k8s/monitoring/sync-rules.py"))
            .arg("--check"),
    );
    let (_, docs) = kustomize("monitoring");
    let rule = find(&docs, "PrometheusRule", "gateway");
    let tmp = TempDir::new("promrule");
    let file = tmp.file(
        "rules.json",
        &json!({"groups": rule["spec"]["groups"]}).to_string(),
    );
    check(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(file),
    );
    let sm = find(&docs, "ServiceMonitor", "gateway");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    // the alerts select job="gateway": the jobLabel's value on the Service
    let label = sm["spec"]["jobLabel"].as_str().expect("jobLabel");
    let (_, base) = kustomize("base");
    assert_eq!(
        find(&base, "Service", "gateway")["metadata"]["labels"][label],
        "gateway"
    );
}

// ------------------------------------------------------------------ names against binaries

/// Every `GATEWAY_*` name in `text` (word boundaries).
fn gateway_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(j) = text[i..].find("GATEWAY_") {
        let start = i + j;
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_uppercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        // `GATEWAY_*` in prose is a pattern, not a name
        let whole = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if whole && !text[start..end].ends_with('_') {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every `--flag` token in a command line or shell script.
fn flags_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '=')
        .filter(|t| t.starts_with("--") && t.len() > 2)
        .map(|t| t.trim_end_matches(['\\', ',']).to_string())
        .collect()
}

fn deploy_text_files() -> Vec<PathBuf> {
    let mut out = vec![root().join("docker-compose.yml"), root().join("Dockerfile")];
    let mut stack = vec![root().join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let p = entry.expect("entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if name != "node_modules" {
                    stack.push(p);
                }
            } else if !name.ends_with(".json") && name != "package-lock.json" {
                out.push(p);
            }
        }
    }
    out
}

/// Every flag, variable, path and port that compose and the Kubernetes files name exists:
/// flags and variables in `gateway --help` / `loadtest <scenario> --help`, paths among the
/// documented ones and answered by a running node, ports all 4000 = GATEWAY_PORT.
#[test]
fn every_flag_variable_path_and_port_named_exists() {
    let gw = gateway_help();
    let loadtest = loadtest_bin();
    let mut lt = Help::default();
    for scenario in ["capacity", "fanout", "churn"] {
        let h = Help::of(&loadtest, &[scenario]);
        lt.flags.extend(h.flags);
        lt.envs.extend(h.envs);
    }
    assert!(gw.flags.contains("--redis-url") && gw.envs.contains("GATEWAY_REDIS_URL"));

    // variables, anywhere in the deployment files and the guide (comments included)
    let mut unknown = Vec::new();
    for file in deploy_text_files() {
        for var in gateway_vars(&read(&file)) {
            if !gw.envs.contains(&var) && !lt.envs.contains(&var) {
                unknown.push(format!("{}: {var}", file.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "variables no binary reads:\n{}",
        unknown.join("\n")
    );

    // compose: gateway services' variables and flags; loadtest's flags
    let compose = yaml_file(&root().join("docker-compose.yml"));
    let mut paths = BTreeSet::new();
    for (name, svc) in compose["services"].as_object().expect("services") {
        if svc["image"] != "gateway:local" {
            continue;
        }
        let command = svc["command"].to_string();
        if svc["entrypoint"].to_string().contains("loadtest") {
            let scenario = svc["command"][0].as_str().expect("scenario");
            let h = Help::of(&loadtest, &[scenario]);
            for f in flags_in(&command) {
                assert!(
                    h.flags.contains(&f),
                    "compose {name}: loadtest {scenario} has no {f}"
                );
            }
            paths.extend(ws_paths(&command));
        } else {
            for f in flags_in(&command) {
                assert!(gw.flags.contains(&f), "compose {name}: gateway has no {f}");
            }
            for var in svc["environment"].as_object().expect("environment").keys() {
                assert!(
                    !var.starts_with("GATEWAY_") || gw.envs.contains(var),
                    "compose {name}: gateway reads no {var}"
                );
            }
            assert_eq!(svc["environment"]["GATEWAY_PORT"], "4000", "compose {name}");
        }
    }
    let prom = yaml_file(&root().join("deploy/prometheus/prometheus.yml"));
    let gw_job = prom["scrape_configs"]
        .as_array()
        .expect("scrape configs")
        .iter()
        .find(|j| j["job_name"] == "gateway")
        .expect("gateway job");
    paths.insert(
        gw_job["metrics_path"]
            .as_str()
            .expect("metrics_path")
            .to_string(),
    );
    for t in gw_job["static_configs"][0]["targets"]
        .as_array()
        .expect("targets")
    {
        let t = t.as_str().expect("target");
        assert!(t.ends_with(":4000"), "prometheus target {t}");
        assert!(
            compose["services"][t.trim_end_matches(":4000")].is_object(),
            "{t}"
        );
    }
    for cfg in [
        "deploy/haproxy/haproxy.cfg",
        "deploy/k8s/loadtest/haproxy.cfg",
    ] {
        for line in read(&root().join(cfg)).lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("option httpchk GET ") {
                paths.insert(rest.trim().to_string());
            }
            if line.starts_with("server ") {
                assert!(line.contains(":4000"), "{cfg}: {line}");
            }
        }
    }

    // Kubernetes: containers of every rendered kustomization
    for dir in KUSTOMIZATIONS {
        let (_, docs) = kustomize(dir);
        let data_of = |kind: &str, name: &str| -> Vec<String> {
            docs.iter()
                .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .flat_map(|d| {
                    ["data", "stringData"]
                        .iter()
                        .filter_map(|k| d[*k].as_object())
                        .flat_map(|m| m.keys().cloned())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for d in &docs {
            let spec = match d["kind"].as_str() {
                Some("Deployment" | "StatefulSet" | "Job") => &d["spec"]["template"]["spec"],
                _ => continue,
            };
            let containers = spec["containers"]
                .as_array()
                .into_iter()
                .chain(spec["initContainers"].as_array())
                .flatten();
            for c in containers {
                let cname = c["name"].as_str().unwrap_or("");
                let is_gw = cname == "gateway";
                let is_lt = cname == "loadtest";
                if !is_gw && !is_lt {
                    continue;
                }
                let known = if is_gw { &gw } else { &lt };
                let mut vars: Vec<String> = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["name"].as_str().map(str::to_string))
                    .collect();
                for src in c["envFrom"].as_array().into_iter().flatten() {
                    if let Some(n) = src["configMapRef"]["name"].as_str() {
                        let keys = data_of("ConfigMap", n);
                        assert!(!keys.is_empty(), "{dir}: ConfigMap {n} not rendered");
                        vars.extend(keys);
                    }
                    if let Some(n) = src["secretRef"]["name"].as_str() {
                        vars.extend(data_of("Secret", n));
                    }
                }
                for v in vars.iter().filter(|v| v.starts_with("GATEWAY_")) {
                    assert!(known.envs.contains(v), "{dir}/{cname}: no binary reads {v}");
                }
                let cmdline = format!("{} {}", c["command"], c["args"]);
                if is_gw {
                    for f in flags_in(&cmdline) {
                        assert!(gw.flags.contains(&f), "{dir}: gateway has no {f}");
                    }
                    assert_eq!(c["ports"][0]["containerPort"], 4000, "{dir}");
                    assert_eq!(c["ports"][0]["name"], "http", "{dir}");
                    for probe in ["readinessProbe", "livenessProbe"] {
                        assert_eq!(c[probe]["httpGet"]["port"], "http", "{dir}");
                        paths.insert(c[probe]["httpGet"]["path"].as_str().expect("path").into());
                    }
                } else {
                    let scenario = c["env"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|e| e["name"] == "SCENARIO")
                        .and_then(|e| e["value"].as_str())
                        .expect("SCENARIO");
                    let extra = c["env"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|e| e["name"] == "LOADTEST_ARGS")
                        .and_then(|e| e["value"].as_str())
                        .unwrap_or("");
                    let h = Help::of(&loadtest, &[scenario]);
                    for f in flags_in(&cmdline).into_iter().chain(flags_in(extra)) {
                        assert!(
                            h.flags.contains(&f),
                            "{dir}: loadtest {scenario} has no {f}"
                        );
                    }
                    paths.extend(ws_paths(&cmdline));
                }
            }
        }
        for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
            if let Some(port) = d["data"]["GATEWAY_PORT"].as_str() {
                assert_eq!(port, "4000", "{dir}");
            }
        }
        for d in docs
            .iter()
            .filter(|d| d["kind"] == "Service" && d["metadata"]["name"] == "gateway")
        {
            assert_eq!(d["spec"]["ports"][0]["port"], 4000);
            assert_eq!(d["spec"]["ports"][0]["targetPort"], "http");
        }
        for d in docs.iter().filter(|d| d["kind"] == "ServiceMonitor") {
            for e in d["spec"]["endpoints"].as_array().expect("endpoints") {
                paths.insert(e["path"].as_str().expect("path").to_string());
            }
        }
    }
    let dockerfile = read(&root().join("Dockerfile"));
    assert!(dockerfile.contains("GET /healthz"));
    paths.insert("/healthz".into());

    assert!(paths.len() >= 4, "found too few paths: {paths:?}");
    for p in &paths {
        assert!(
            DOCUMENTED_PATHS.contains(&p.as_str()),
            "undocumented path {p}"
        );
    }
    // and a node answers each of them (a 404 would mean the route does not exist)
    let node = Node::start(&["--port", "0", "--bind", "127.0.0.1"], &BTreeMap::new());
    for p in &paths {
        let (status, _) = http(&node.addr, "GET", p, &[], "");
        assert_ne!(status, 404, "GET {p} is 404 on a real node");
    }
}

/// `/socket/...` paths in ws:// URLs of a command line.
fn ws_paths(text: &str) -> Vec<String> {
    text.split("ws://")
        .skip(1)
        .map(|rest| {
            let url: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '?' | '\\'))
                .collect();
            assert!(
                url.starts_with("127.0.0.1:"),
                "loadtest refuses non-loopback {url}"
            );
            url.find('/').map_or("/".into(), |i| url[i..].to_string())
        })
        .collect()
}

/// The dev and prod overlays' settings (ConfigMap + Secret, as a pod would get them) start a
/// real node, and the channel rules of the ConfigMap behave as documented.
#[test]
fn overlay_settings_and_channel_rules_run_a_real_node() {
    let tmp = TempDir::new("overlay-env");
    let redis = Redis::start();
    for overlay in ["overlays/dev", "overlays/prod"] {
        let (_, docs) = kustomize(overlay);
        let channels = find(&docs, "ConfigMap", "gateway-channels")["data"]["channels.toml"]
            .as_str()
            .expect("channels.toml")
            .to_string();
        let config = tmp.file("channels.toml", &channels);
        let mut env = BTreeMap::new();
        for (k, v) in find(&docs, "ConfigMap", "gateway-env")["data"]
            .as_object()
            .expect("data")
        {
            env.insert(k.clone(), v.as_str().expect("string value").to_string());
        }
        let secret = if overlay.ends_with("prod") {
            yaml_file(&root().join("deploy/k8s/base/secret.example.yaml"))
        } else {
            find(&docs, "Secret", "gateway-secrets").clone()
        };
        for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
            env.insert(k.clone(), v.as_str().expect("string").to_string());
        }
        for (k, v) in secret["data"].as_object().into_iter().flatten() {
            let bytes = base64_decode(v.as_str().expect("base64"));
            env.insert(k.clone(), String::from_utf8(bytes).expect("utf-8 secret"));
        }
        // the pod's values, except where this machine differs: a free port, the file's path,
        // a local Redis (prod's Redis Cluster seeds do not exist here)
        let api_key = env.get("GATEWAY_API_KEY").cloned().expect("an API key");
        env.insert("GATEWAY_PORT".into(), "0".into());
        env.insert("GATEWAY_BIND".into(), "127.0.0.1".into());
        env.insert("GATEWAY_CONFIG".into(), config.display().to_string());
        env.insert(
            "GATEWAY_REDIS_URL".into(),
            format!("redis://127.0.0.1:{}/", redis.port),
        );
        env.remove("GATEWAY_REDIS_CLUSTER");
        let jwt = env.contains_key("GATEWAY_JWT_SECRET");
        let node = Node::start(&[], &env);
        node.wait_ready();

        let body = json!({"topic": "room:1", "event": "shout", "payload": {}}).to_string();
        assert_eq!(
            http(&node.addr, "POST", "/api/broadcast", &[], &body).0,
            401
        );
        let auth = format!("Bearer {api_key}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        assert_eq!(
            http(&node.addr, "POST", "/api/broadcast", &headers, &body).0,
            202,
            "{overlay}"
        );
        if jwt {
            // prod: every connect needs a token
            let refused = Ws::try_connect(&node.addr).err();
            assert_eq!(refused, Some(403), "{overlay}: connect without a token");
            continue;
        }
        let mut ws = Ws::connect(&node.addr);
        ws.join("room:1");
        ws.send(&json!(["1", "2", "room:1", "shout", {"x": 1}]));
        ws.until("shout broadcast", |m| m[3] == "shout");
        // token channels refuse joins in open mode
        ws.send(&json!(["3", "3", "private:1", "phx_join", {}]));
        let r = ws.until("private join reply", |m| m[1] == "3");
        assert_eq!(r[4]["status"], "error", "{r}");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// The load-test Job's shell script, run here exactly as the pod runs it (shard 2 of 2 of a
/// small capacity run against a real node), with the relay's port swapped for the node's.
#[test]
fn loadtest_job_script_runs_a_shard() {
    let (_, docs) = kustomize("loadtest");
    let job = find(&docs, "Job", "gateway-loadtest");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let c = &spec["template"]["spec"]["containers"][0];
    let env_of = |name: &str| -> String {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("Job env {name}"))
            .to_string()
    };
    assert_eq!(
        env_of("SHARDS"),
        spec["completions"].to_string(),
        "SHARDS must equal completions"
    );
    assert_eq!(spec["parallelism"], spec["completions"]);
    assert_eq!(c["command"], json!(["/bin/sh", "-c"]));
    let script = c["args"][0].as_str().expect("script");
    assert!(script.contains("$((JOB_COMPLETION_INDEX + 1))/$SHARDS"));
    let relay = &spec["template"]["spec"]["initContainers"][0];
    assert_eq!(
        relay["restartPolicy"], "Always",
        "the relay is a native sidecar"
    );

    let loadtest = loadtest_bin();
    let node = Node::start(&["--port", "0", "--bind", "127.0.0.1"], &BTreeMap::new());
    let script = script.replace("127.0.0.1:4000", &node.addr);
    let tmp = TempDir::new("loadtest-job");
    let report = tmp.0.join("report.json");
    let script = script.replace("/tmp/report.json", &report.display().to_string());
    let path = format!(
        "{}:{}",
        loadtest.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = check(
        Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", path)
            .env("SCENARIO", "capacity")
            .env("SESSIONS", "20")
            .env("SHARDS", "2")
            .env("JOB_COMPLETION_INDEX", "1")
            .env("LOADTEST_ARGS", "--hold-secs 0 --sources 2"),
    );
    let text = stdout(&out);
    let (_, json_text) = text
        .split_once("=== report shard 2/2\n")
        .unwrap_or_else(|| panic!("no report marker in:\n{text}"));
    let report: Value = serde_json::from_str(json_text).expect("the report is JSON");
    assert_eq!(report["scenario"], "capacity", "{report}");
    assert_eq!(report["shard"], json!([2, 2]), "{report}");
    // shard 2 of 2 of 20 sessions: 10, all joined
    assert_eq!(report["sessions_joined"], 10, "{report}");
    assert_eq!(report["sessions_failed"], 0, "{report}");
}

// ------------------------------------------------------------------ deploy/local

/// `deploy/local/cluster.py run`: Redis, three nodes and a proxy; stopped (SIGTERM to the
/// script, which stops what it started) on drop.
struct LocalCluster {
    child: Child,
    proxy: String,
    nodes: Vec<String>,
    kind: String,
    _state: TempDir,
}

impl LocalCluster {
    fn start(proxy: &str) -> LocalCluster {
        let state = TempDir::new(&format!("local-{proxy}"));
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_gateway"))
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let mut child = Command::new("python3")
            .arg(root().join("deploy/local/cluster.py"))
            .args(["run", "--nodes", "3", "--proxy", proxy, "--bin-dir"])
            .arg(&bin_dir)
            .arg("--state")
            .arg(&state.0)
            // short long-poll window: an empty poll in this test ends quickly
            .args(["--", "--longpoll-window-ms", "1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 deploy/local/cluster.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut vars = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !vars.contains_key("STATE") {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((k, v)) = line.split_once('=') {
                        vars.insert(k.to_string(), v.to_string());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("cluster.py output");
                    panic!(
                        "cluster.py did not start:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let strip = |u: &str| u.trim_start_matches("http://").to_string();
        LocalCluster {
            proxy: strip(&vars["PROXY_URL"]),
            nodes: vars["NODE_URLS"].split(',').map(strip).collect(),
            kind: vars["PROXY"].clone(),
            child,
            _state: state,
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // SIGTERM to our own child by pid: cluster.py stops its processes in order and exits
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Clients through the proxy land on every node (round-robin, no stickiness) and still share
/// topics: client pushes, API broadcasts and a long-poll session whose every request may
/// reach a different node.
fn exercise_local_cluster(proxy_kind: &str) {
    let cluster = LocalCluster::start(proxy_kind);
    assert_eq!(cluster.kind, proxy_kind);
    assert_eq!(cluster.nodes.len(), 3);

    // three WebSocket sessions, one per node
    let mut clients: Vec<Ws> = (0..3).map(|_| Ws::connect(&cluster.proxy)).collect();
    for c in &mut clients {
        c.join("room:deploy");
    }
    let per_node: Vec<f64> = cluster.nodes.iter().map(|n| ws_sessions(n)).collect();
    assert_eq!(per_node, vec![1.0, 1.0, 1.0], "round-robin over the nodes");

    // a client push reaches the sessions on the other two nodes (through Redis)
    clients[0].send(&json!(["1", "2", "room:deploy", "new_msg", {"body": "across"}]));
    for c in &mut clients {
        let m = c.until("cross-node new_msg", |m| m[3] == "new_msg");
        assert_eq!(m[4]["body"], "across");
    }
    // the HTTP API through the proxy, on whichever node it lands
    let body = json!({"topic": "room:deploy", "event": "shout", "payload": {"n": 7}}).to_string();
    let headers = [("Content-Type", "application/json")];
    assert_eq!(
        http(&cluster.proxy, "POST", "/api/broadcast", &headers, &body).0,
        202
    );
    for c in &mut clients {
        let m = c.until("API shout", |m| m[3] == "shout");
        assert_eq!(m[4]["n"], 7);
    }

    // long-poll: every request is a new connection, so the proxy spreads them over the nodes
    let (status, opened) = http(&cluster.proxy, "GET", "/socket/longpoll?vsn=2.0.0", &[], "");
    assert_eq!(status, 200, "{opened}");
    let opened: Value = serde_json::from_str(&opened).expect("long-poll JSON");
    assert_eq!(opened["status"], 410, "{opened}");
    let token = opened["token"].as_str().expect("token").to_string();
    let path = format!("/socket/longpoll?vsn=2.0.0&token={}", urlencode(&token));
    let ndjson = [("Content-Type", "application/x-ndjson")];
    let join = json!(["1", "1", "room:deploy", "phx_join", {}]).to_string();
    let (status, posted) = http(&cluster.proxy, "POST", &path, &ndjson, &join);
    assert_eq!(status, 200, "{posted}");
    let posted: Value = serde_json::from_str(&posted).expect("POST answer JSON");
    assert_eq!(posted, json!({"status": 200}));
    let mut seen = Vec::new();
    let mut poll_until = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "long-poll: no {what}; saw {seen:?}"
            );
            let (status, text) = http(&cluster.proxy, "GET", &path, &[], "");
            assert_eq!(status, 200, "{text}");
            let v: Value = serde_json::from_str(&text).expect("poll JSON");
            assert!(v["status"] == 200 || v["status"] == 204, "{v}");
            for m in v["messages"].as_array().into_iter().flatten() {
                let m: Value = serde_json::from_str(m.as_str().expect("string message"))
                    .expect("message JSON");
                if pred(&m) {
                    return;
                }
                seen.push(m);
            }
        }
    };
    poll_until("join reply", &|m| {
        m[3] == "phx_reply" && m[4]["status"] == "ok"
    });
    clients[2].send(&json!(["1", "3", "room:deploy", "new_msg", {"body": "to lp"}]));
    poll_until("broadcast", &|m| {
        m[3] == "new_msg" && m[4]["body"] == "to lp"
    });
}

#[test]
fn local_cluster_through_haproxy() {
    tool("haproxy");
    exercise_local_cluster("haproxy");
}

#[test]
fn local_cluster_through_the_python_proxy() {
    exercise_local_cluster("python");
}
