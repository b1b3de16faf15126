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

#[test]
fn round_floor_times_each_round_to_its_last_byte() {
    let (f, stdout) = floor(
        "round-floor",
        &[
            "--rounds",
            "3",
            "--gap-ms",
            "20",
            "-n",
            "250",
            "--bytes",
            "80",
            "--sources",
            "3",
        ],
    );
    let num = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k}: {}", f[k]));
    assert_eq!(num("sockets"), 250.0);
    assert_eq!(num("bytes_per_write"), 80.0);
    assert_eq!(num("gap_ms"), 20.0);
    // One time per round, each from the first write to the reader's last byte: more than
    // nothing, and less than the run (the reader announced each round, or the run would fail).
    let rounds: Vec<f64> = f["round_secs"]
        .as_array()
        .expect("round_secs")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect();
    assert_eq!(rounds.len(), 3);
    assert!(rounds.iter().all(|&s| s > 0.0 && s < 30.0), "{rounds:?}");
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(num("median_round_secs"), sorted[1]);
    assert!((num("writes_per_sec") - 250.0 / sorted[1]).abs() < 1e-6 * num("writes_per_sec"));
    let (w, r) = (num("writer_us_per_write"), num("reader_us_per_write"));
    // /proc counts CPU in clock ticks: 750 small writes may round to zero.
    assert!(w >= 0.0 && r >= 0.0, "writer {w} reader {r}");
    assert!((num("both_us_per_write") - (w + r)).abs() < 1e-6);
    assert!(
        stdout.starts_with("round floor: 3 rounds of 250 writes of 80 B"),
        "one summary line: {stdout}"
    );
}

#[test]
fn round_floor_refuses_zero_rounds() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["floor", "--rounds", "0", "-n", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rounds"), "names the flag: {err}");
}
