//! Autobahn WebSocket conformance of the gateway's WebSocket stack, checked with `kosoku`.
//!
//! A real gateway binary is started with `--ws-echo` on a kernel-chosen port, and the PyPI
//! `kosoku` fuzzing client (`pip install kosoku==0.1.0`, installed by `.ci/setup`) runs every
//! Autobahn case except 12.* and 13.* (permessage-deflate, which the gateway does not offer)
//! against `/ws-echo`. The reports' `index.json` is then judged case by case: `behavior` must be
//! OK, NON-STRICT or INFORMATIONAL and `behaviorClose` OK or INFORMATIONAL. A missing `kosoku`
//! fails the test with a hint instead of skipping it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// kosoku 0.1.0 has 301 cases once 12.* and 13.* are excluded; fewer in the index means the
/// run stopped early, which must not pass as "no failures".
const EXPECTED_CASES: usize = 301;
/// The whole run takes seconds; this only stops a hang from blocking CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_LINES_KEPT: usize = 200;

/// A gateway child process, killed when dropped so a failing assertion never leaks it.
struct Gateway {
    /// The running binary.
    child: Child,
    /// Last lines of its stdout and stderr, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    /// The port it reported in its `listening on http://IP:PORT` line.
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

/// Extracts the port from a `listening on http://IP:PORT` log line (ANSI colours tolerated).
fn listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on http://")? + "listening on http://".len()..];
    let host_port: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    host_port.rsplit(':').next()?.parse().ok()
}

fn keep_lines(
    log: &Arc<Mutex<Vec<String>>>,
    stream: impl Read + Send + 'static,
    tag: &'static str,
) -> std::thread::JoinHandle<()> {
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut l) = log.lock() {
                l.push(format!("[{tag}] {line}"));
                if l.len() > LOG_LINES_KEPT {
                    l.remove(0);
                }
            }
        }
    })
}

fn start_gateway() -> Gateway {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--bind", "127.0.0.1", "--port", "0", "--ws-echo"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A developer's own GATEWAY_* settings must not change what is tested.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GATEWAY_") {
            cmd.env_remove(&key);
        }
    }
    let mut child = cmd.spawn().expect("cannot start the gateway binary");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    keep_lines(&log, stderr, "stderr");

    let (port_tx, port_rx) = mpsc::channel();
    let stdout_log = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = listening_port(&line) {
                let _ = port_tx.send(port);
            }
            if let Ok(mut l) = stdout_log.lock() {
                l.push(format!("[stdout] {line}"));
                if l.len() > LOG_LINES_KEPT {
                    l.remove(0);
                }
            }
        }
    });

    let mut gateway = Gateway {
        child,
        log,
        port: 0,
    };
    match port_rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(port) => gateway.port = port,
        Err(e) => {
            // stdout closed without the line: the process is exiting, let it finish to report how
            let status = match e {
                mpsc::RecvTimeoutError::Disconnected => {
                    wait_with_timeout(&mut gateway.child, Duration::from_secs(5))
                }
                mpsc::RecvTimeoutError::Timeout => None,
            };
            panic!(
                "the gateway printed no `listening on http://IP:PORT` line within {STARTUP_TIMEOUT:?} \
                 (exit status {status:?}):\n{}",
                gateway.log_text()
            )
        }
    }
    gateway
}

/// The `kosoku` console script: from PATH, else from the scripts dir of `python3`
/// (pyenv shims are only refreshed by `pyenv rehash`).
fn kosoku_program() -> PathBuf {
    let works = |program: &Path| {
        Command::new(program)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let on_path = PathBuf::from("kosoku");
    if works(&on_path) {
        return on_path;
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("kosoku"));
    if let Some(script) = scripts.filter(|p| works(p)) {
        return script;
    }
    panic!("`kosoku` (pip install kosoku==0.1.0) was not found: run `.ci/setup` first");
}

/// Waits for `child` up to `timeout`, killing it on timeout (then `None`).
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Sorts case ids like 1.2.10 after 1.2.9.
fn case_key(id: &str) -> Vec<u32> {
    id.split('.')
        .map(|p| p.parse().unwrap_or(u32::MAX))
        .collect()
}

/// One case of `index.json`.
#[derive(Debug)]
struct CaseOutcome {
    /// Data-phase verdict.
    behavior: String,
    /// Closing-handshake verdict.
    behavior_close: String,
    /// The close code the gateway sent, if any.
    remote_close_code: Option<i64>,
}

impl CaseOutcome {
    fn passed(&self) -> bool {
        matches!(
            self.behavior.as_str(),
            "OK" | "NON-STRICT" | "INFORMATIONAL"
        ) && matches!(self.behavior_close.as_str(), "OK" | "INFORMATIONAL")
    }
}

/// Reads `index.json` (`{agent: {case id: {behavior, behaviorClose, remoteCloseCode, ..}}}`).
fn read_index(path: &Path) -> BTreeMap<Vec<u32>, (String, CaseOutcome)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let index: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let agents = index
        .as_object()
        .unwrap_or_else(|| panic!("{}: expected an object of agents", path.display()));
    assert_eq!(
        agents.len(),
        1,
        "expected exactly one agent in {}",
        path.display()
    );
    let mut cases = BTreeMap::new();
    for (_agent, agent_cases) in agents {
        let agent_cases = agent_cases
            .as_object()
            .unwrap_or_else(|| panic!("{}: expected an object of cases", path.display()));
        for (id, case) in agent_cases {
            let field = |name: &str| {
                case.get(name)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("<missing>")
                    .to_string()
            };
            let outcome = CaseOutcome {
                behavior: field("behavior"),
                behavior_close: field("behaviorClose"),
                remote_close_code: case
                    .get("remoteCloseCode")
                    .and_then(serde_json::Value::as_i64),
            };
            cases.insert(case_key(id), (id.clone(), outcome));
        }
    }
    cases
}

#[test]
fn autobahn_cases_against_ws_echo() {
    let kosoku = kosoku_program();
    let mut gateway = start_gateway();

    let outdir = std::env::temp_dir().join(format!("gateway-autobahn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&outdir);
    std::fs::create_dir_all(&outdir).expect("create the report dir");
    let kosoku_log = outdir.join("kosoku.log");
    let log_file = std::fs::File::create(&kosoku_log).expect("create kosoku.log");
    let url = format!("ws://127.0.0.1:{}/ws-echo", gateway.port);
    let mut run = Command::new(&kosoku)
        .args([
            "-m",
            "fuzzingclient",
            &url,
            "-x",
            "12.*",
            "-x",
            "13.*",
            "-p",
            "2",
            "-o",
        ])
        .arg(&outdir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kosoku.display()));
    let status = wait_with_timeout(&mut run, RUN_TIMEOUT);
    let kosoku_output = std::fs::read_to_string(&kosoku_log).unwrap_or_default();
    let tail: String = {
        let lines: Vec<&str> = kosoku_output.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };

    let gateway_alive = matches!(gateway.child.try_wait(), Ok(None));
    assert!(
        gateway_alive,
        "the gateway died during the Autobahn run:\n{}",
        gateway.log_text()
    );
    let Some(status) = status else {
        panic!(
            "kosoku did not finish within {RUN_TIMEOUT:?}; reports in {}",
            outdir.display()
        );
    };
    let index_path = outdir.join("index.json");
    assert!(
        index_path.is_file(),
        "kosoku ({status}) wrote no index.json in {}:\n{tail}",
        outdir.display()
    );

    let cases = read_index(&index_path);
    let failures: Vec<String> = cases
        .values()
        .filter(|(_, outcome)| !outcome.passed())
        .map(|(id, o)| {
            format!(
                "  {id}: behavior={} behaviorClose={} remoteCloseCode={:?}",
                o.behavior, o.behavior_close, o.remote_close_code
            )
        })
        .collect();
    if !failures.is_empty() {
        panic!(
            "{} of {} Autobahn cases failed against /ws-echo (reports kept in {}):\n{}\n\
             kosoku output (tail):\n{tail}\ngateway log (tail):\n{}",
            failures.len(),
            cases.len(),
            outdir.display(),
            failures.join("\n"),
            gateway.log_text()
        );
    }
    assert!(
        cases.len() >= EXPECTED_CASES,
        "only {} cases in {} (expected {EXPECTED_CASES}); kosoku exited {status}:\n{tail}",
        cases.len(),
        index_path.display()
    );
    println!(
        "autobahn: {} cases passed (kosoku exited {status})",
        cases.len()
    );
    let _ = std::fs::remove_dir_all(&outdir);
}
