//! Autobahn WebSocket conformance of the gateway's WebSocket stack, checked with `kosoku`.
//!
//! A real gateway binary is started with `--ws-echo` on a kernel-chosen port, and the PyPI
//! `kosoku` fuzzing client (0.1.0, which `.ci/setup` installs in `target/test-tools/venv`) runs
//! every Autobahn case except 12.* and 13.* (permessage-deflate, which the gateway does not
//! offer) against `/ws-echo`. The reports' `index.json` is then judged case by case: `behavior`
//! must be OK, NON-STRICT or INFORMATIONAL and `behaviorClose` OK or INFORMATIONAL. A missing
//! `kosoku` fails the test with a hint instead of skipping it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::process::wait_with_timeout;
use testkit::tools::tool;

/// kosoku 0.1.0 has 301 cases once 12.* and 13.* are excluded; fewer in the index means the
/// run stopped early, which must not pass as "no failures".
const EXPECTED_CASES: usize = 301;
/// The whole run takes seconds; this only stops a hang from blocking CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_against_ws_echo() {
    let kosoku = tool(
        "kosoku",
        "run `.ci/setup` first (it installs kosoku==0.1.0 in target/test-tools/venv)",
    );
    let mut gateway = common::gateway()
        .args(["--bind", "127.0.0.1", "--port", "0", "--ws-echo"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .start()
        .await;

    let outdir = std::env::temp_dir().join(format!("gateway-autobahn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&outdir);
    std::fs::create_dir_all(&outdir).expect("create the report dir");
    let kosoku_log = outdir.join("kosoku.log");
    let log_file = std::fs::File::create(&kosoku_log).expect("create kosoku.log");
    let url = format!("ws://127.0.0.1:{}/ws-echo", gateway.addr.port());
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
    // off the async threads: the gateway's output is read there meanwhile
    let status = tokio::task::spawn_blocking(move || wait_with_timeout(&mut run, RUN_TIMEOUT))
        .await
        .expect("waiting for kosoku");
    let kosoku_output = std::fs::read_to_string(&kosoku_log).unwrap_or_default();
    let tail: String = {
        let lines: Vec<&str> = kosoku_output.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };

    let gateway_alive = gateway.is_running();
    assert!(
        gateway_alive,
        "the gateway died during the Autobahn run:\n{}",
        gateway.output()
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
            gateway.output()
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
