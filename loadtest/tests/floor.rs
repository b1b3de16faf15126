//! `loadtest floor`, the kernel-floor tool the benchmarks divide by: run for real (one writer,
//! one reader process, real loopback sockets), and its JSON checked against what the reader
//! actually received; `floor --echo` against what its server answered.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// Runs `loadtest floor ARGS --json FILE`; its JSON and its stdout (the one summary line).
fn floor(name: &str, args: &[&str]) -> (Value, String) {
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("floor")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).unwrap();
    let _ = std::fs::remove_file(&json);
    (f, stdout)
}

#[test]
fn floor_writes_to_every_socket_in_turn_and_the_reader_gets_every_byte() {
    let (f, stdout) = floor(
        "floor",
        &[
            "-n",
            "300",
            "--secs",
            "0.5",
            "--bytes",
            "64",
            "--sources",
            "3",
        ],
    );
    let num = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k}: {}", f[k]));
    assert_eq!(num("sockets"), 300.0);
    assert_eq!(num("bytes_per_write"), 64.0);
    // Whole rounds over every socket, each write complete.
    let (writes, rounds) = (num("writes"), num("rounds"));
    assert!(rounds >= 1.0);
    assert_eq!(writes, rounds * 300.0);
    // The reader (another process) read every byte before the writer reported.
    assert_eq!(num("reader_bytes"), writes * 64.0);
    let secs = num("secs");
    assert!(secs >= 0.5, "wrote for {secs} s");
    assert!((num("writes_per_sec") - writes / secs).abs() < 1e-6 * writes);
    // A busy write loop spends CPU, and the per-write figure is that CPU over the writes.
    let cpu = num("writer_cpu_secs");
    assert!(cpu > 0.0, "writer cpu {cpu}");
    assert!((num("writer_us_per_write") - cpu * 1e6 / writes).abs() < 1e-6);
    assert!(num("reader_cpu_secs") >= 0.0);
    assert!(
        stdout.starts_with("floor: 300 sockets, "),
        "one summary line: {stdout}"
    );
}

#[test]
fn echo_floor_answers_every_request_and_counts_both_sides() {
    let (f, stdout) = floor(
        "echo-floor",
        &["--echo", "-n", "200", "--secs", "0.5", "--sources", "3"],
    );
    let num = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k}: {}", f[k]));
    // A heartbeat frame out, a heartbeat reply back: the sizes phoenix.js and the gateway use.
    assert_eq!(num("request_bytes"), 46.0);
    assert_eq!(num("reply_bytes"), 67.0);
    // Whole rounds, every request answered, and the server (another process) counted each.
    let (echoes, rounds) = (num("echoes"), num("rounds"));
    assert!(rounds >= 1.0);
    assert_eq!(echoes, rounds * 200.0);
    assert_eq!(num("server_echoes"), echoes);
    let secs = num("secs");
    assert!(secs >= 0.5, "ran for {secs} s");
    let client = num("client_cpu_secs");
    assert!(client > 0.0, "client cpu {client}");
    assert!((num("client_us_per_echo") - client * 1e6 / echoes).abs() < 1e-6);
    assert!((num("server_us_per_echo") - num("server_cpu_secs") * 1e6 / echoes).abs() < 1e-6);
    assert!(num("server_sys_cpu_secs") <= num("server_cpu_secs"));
    assert!(
        stdout.starts_with("echo floor: 200 sockets, "),
        "one summary line: {stdout}"
    );
}
