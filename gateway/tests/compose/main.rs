//! The docker-compose cluster, run for real under a Docker engine, as a user would run it.
//!
//! `deploy/docker/prepare.sh` first makes sure an engine answers (it installs Debian's
//! docker.io and starts dockerd when missing: never a skip) and that the base images the
//! Dockerfile and compose file name exist (made locally: Docker Hub is out of reach here).
//! Then, in one compose project with a unique name and a guard that always tears it down:
//!
//! * the image is built from the project's own Dockerfile and checked: runs as uid 10001,
//!   answers `/healthz` on its published port, drains and exits 0 on `docker stop`, and its
//!   size is reported;
//! * `docker-compose up` starts Redis, three gateways, HAProxy and Prometheus (Grafana has no
//!   image here); every gateway turns healthy through the image's own HEALTHCHECK;
//! * `js/compose/cluster.mjs` drives it from the host through the published load balancer:
//!   phoenix.js clients on WebSocket and LongPoll exchange broadcasts across the three nodes,
//!   the stack's Prometheus sees three nodes and exactly those sessions, and stopping
//!   `gateway-2` drains it (1012) while its clients come back through the load balancer;
//! * `gateway-2` is started again and the compose `loadtest` profile runs a small fan-out
//!   load through the load balancer that reaches all three nodes, with no loss.
//!
//! Phase timings go to stdout and `target/test-artifacts/compose/timings.txt`; on failure the
//! containers' logs are saved next to them.

mod docker;
mod stack;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use docker::{artifacts, buildkit_cli, check, docker, http_get, inspect, root, run_for, until};
use serde_json::Value;
use stack::Stack;

/// The non-root user the Dockerfile promises (Kubernetes' runAsNonRoot relies on it).
const IMAGE_USER: &str = "10001:10001";
/// Upper bound for the runtime image: slim Debian (about 75 MB) plus two static-ish binaries.
const MAX_IMAGE_BYTES: u64 = 200_000_000;
/// The compose file's `ulimits.nofile` for the gateways, Redis and the load balancer.
const COMPOSE_NOFILE: u64 = 1_048_576;
/// The load of the `loadtest` profile run: sessions through the load balancer.
const LOAD_SESSIONS: u64 = 300;

/// Wall-clock time of each phase, for the report.
struct Timings {
    start: Instant,
    lap: Instant,
    lines: String,
}

impl Timings {
    fn new() -> Timings {
        let now = Instant::now();
        Timings {
            start: now,
            lap: now,
            lines: String::new(),
        }
    }

    fn lap(&mut self, phase: &str) {
        let now = Instant::now();
        let line = format!("{phase:<28} {:>6.1} s", (now - self.lap).as_secs_f64());
        println!("[compose] {line}");
        let _ = writeln!(self.lines, "{line}");
        self.lap = now;
    }

    fn finish(&mut self) {
        let total = format!(
            "{:<28} {:>6.1} s",
            "total",
            self.start.elapsed().as_secs_f64()
        );
        println!("[compose] {total}");
        let _ = writeln!(self.lines, "{total}");
        let _ = std::fs::write(artifacts().join("timings.txt"), &self.lines);
    }
}

#[test]
fn compose_cluster_runs_for_real() {
    let mut t = Timings::new();
    docker::prepare();
    t.lap("prepare (engine, base images)");
    stack::remove_leftovers();
    let stack = Stack::new();

    build_image(&stack);
    t.lap("docker build");
    let size = check_image(&stack);
    t.lap("image check");

    stack.write_override(stack::engine_nofile(&stack.image, COMPOSE_NOFILE));
    let volumes_before = stack::volumes();
    compose_up(&stack);
    t.lap("docker-compose up");
    let lb = stack.port("lb", 4000);
    let prometheus = stack.port("prometheus", 9090);
    assert_eq!(
        http_get(lb, "/healthz").expect("GET /healthz via lb").0,
        200
    );

    drive_with_phoenix_js(&stack, lb, prometheus);
    drained_cleanly(&stack, "gateway-2");
    t.lap("phoenix.js clients + drain");

    restart_node(&stack, "gateway-2", prometheus);
    run_load(&stack, prometheus);
    t.lap("loadtest profile");
    let name = stack.name.clone();
    drop(stack);
    t.lap("teardown");
    // nothing of the run is left: containers, networks, the image, Prometheus' volume
    assert_eq!(stack::remains_of(&name), Vec::<String>::new());
    let new_volumes: Vec<String> = stack::volumes()
        .difference(&volumes_before)
        .cloned()
        .collect();
    assert_eq!(new_volumes, Vec::<String>::new(), "volumes left behind");
    println!("[compose] image size {:.1} MB", size as f64 / 1e6);
    t.finish();
}

/// Builds the image from the project's Dockerfile, as it is, with BuildKit.
fn build_image(stack: &Stack) {
    let log = artifacts().join("build.log");
    let out = run_for(
        Command::new(buildkit_cli())
            .current_dir(root())
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--progress=plain", "-t", &stack.image, "."]),
        Duration::from_secs(30 * 60),
    );
    let (ok, text) = match out {
        Ok(o) => (o.status.success(), format!("{}{}", o.stdout, o.stderr)),
        Err(e) => (false, e),
    };
    let _ = std::fs::write(&log, &text);
    assert!(
        ok,
        "docker build of the project's Dockerfile failed (whole log: {}):\n{}",
        log.display(),
        tail(&text, 60)
    );
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Finished `release` profile"))
    {
        println!("[compose] {}", line.trim());
    }
}

/// The image alone: its user, port, health check and size; a container of it runs as that
/// user, answers /healthz, and drains and exits 0 when stopped. Returns its size in bytes.
fn check_image(stack: &Stack) -> u64 {
    let size: u64 = inspect(&stack.image, "{{.Size}}").parse().expect("size");
    println!(
        "[compose] image {} is {:.1} MB",
        stack.image,
        size as f64 / 1e6
    );
    assert!(size < MAX_IMAGE_BYTES, "image is {size} bytes");
    assert_eq!(inspect(&stack.image, "{{.Config.User}}"), IMAGE_USER);
    assert!(inspect(&stack.image, "{{json .Config.ExposedPorts}}").contains("4000/tcp"));
    assert!(inspect(&stack.image, "{{json .Config.Healthcheck}}").contains("/healthz"));

    check(
        &mut docker(&[
            "run",
            "-d",
            "--name",
            &stack.probe,
            "-p",
            "127.0.0.1::4000",
            &stack.image,
        ]),
        Duration::from_secs(60),
        "docker run of the image",
    );
    let published = check(
        &mut docker(&["port", &stack.probe, "4000/tcp"]),
        Duration::from_secs(30),
        "docker port",
    );
    let addr: SocketAddr = published
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("docker port said {published:?}"));
    until(
        Duration::from_secs(30),
        "the image's container answers GET /healthz",
        || http_get(addr, "/healthz").map_err(|e| e.to_string()),
        |(status, _)| *status == 200,
    );
    let top = check(
        &mut docker(&["top", &stack.probe, "-eo", "pid,uid,args"]),
        Duration::from_secs(30),
        "docker top",
    );
    let gateway = top
        .lines()
        .find(|l| l.contains("/usr/local/bin/gateway"))
        .unwrap_or_else(|| panic!("no gateway process in the container:\n{top}"));
    assert_eq!(
        gateway.split_whitespace().nth(1),
        Some("10001"),
        "the gateway process runs as uid 10001, not root:\n{top}"
    );
    let id = check(
        &mut docker(&["exec", &stack.probe, "id", "-u"]),
        Duration::from_secs(30),
        "docker exec id",
    );
    assert_eq!(id.trim(), "10001");

    // SIGTERM (the image's STOPSIGNAL) drains and exits 0 well within the grace period
    check(
        &mut docker(&["stop", "--time", "40", &stack.probe]),
        Duration::from_secs(60),
        "docker stop",
    );
    assert_eq!(inspect(&stack.probe, "{{.State.ExitCode}}"), "0");
    let logs = run_for(
        &mut docker(&["logs", &stack.probe]),
        Duration::from_secs(30),
    )
    .map(|o| o.stdout + &o.stderr)
    .unwrap_or_default();
    assert!(logs.contains("\"drained\""), "no drain in the log:\n{logs}");
    check(
        &mut docker(&["rm", "-v", &stack.probe]),
        Duration::from_secs(30),
        "docker rm",
    );
    size
}

/// `docker-compose up -d` of every service but Grafana; waits until each is healthy (the
/// gateways through the image's HEALTHCHECK, the others through the compose file's).
fn compose_up(stack: &Stack) {
    let out = run_for(
        stack
            .compose()
            .args(["up", "-d", "--no-build"])
            .args(stack::SERVICES),
        Duration::from_secs(5 * 60),
    );
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("docker-compose up failed:\n{}{}", o.stdout, o.stderr),
        Err(e) => panic!("docker-compose up: {e}"),
    }
    for service in stack::SERVICES {
        let id = stack.container(service);
        until(
            Duration::from_secs(90),
            &format!("{service} running (and healthy where it has a health check)"),
            || Ok(inspect(&id, "{{.State.Status}} {{.State.Health.Status}}")),
            |s| s == "running healthy",
        );
    }
}

/// Runs `js/compose/cluster.mjs` (Node's test runner) against the published ports.
fn drive_with_phoenix_js(stack: &Stack, lb: SocketAddr, prometheus: SocketAddr) {
    let js = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js");
    assert!(
        js.join("node_modules").join("phoenix").is_dir(),
        "phoenix is missing from {}: run `.ci/setup` (or `npm ci` there) first",
        js.join("node_modules").display()
    );
    let mut stop = vec!["docker-compose".to_string()];
    stop.extend(stack.compose_args());
    stop.extend(["stop".to_string(), "gateway-2".to_string()]);
    let out = run_for(
        Command::new("node")
            .current_dir(&js)
            .args(["--test", "--test-reporter=spec", "compose/cluster.mjs"])
            .env("LB_URL", format!("http://{lb}"))
            .env("PROMETHEUS_URL", format!("http://{prometheus}"))
            .env(
                "STOP_NODE_COMMAND",
                serde_json::to_string(&stop).expect("json"),
            )
            .envs(stack::PORT_VARS.iter().map(|v| (v, ""))),
        Duration::from_secs(5 * 60),
    );
    match out {
        Ok(o) => {
            println!("{}", o.stdout.trim_end());
            assert!(
                o.status.success(),
                "js/compose/cluster.mjs failed ({}):\n{}\n{}",
                o.status,
                o.stdout,
                o.stderr
            );
        }
        Err(e) => panic!("js/compose/cluster.mjs: {e}"),
    }
}

/// `service`'s container exited 0 after draining (not killed at the end of the grace period).
fn drained_cleanly(stack: &Stack, service: &str) {
    let id = stack.container(service);
    assert_eq!(inspect(&id, "{{.State.Status}}"), "exited");
    assert_eq!(
        inspect(&id, "{{.State.ExitCode}}"),
        "0",
        "{service} exit code"
    );
    let logs = run_for(&mut docker(&["logs", &id]), Duration::from_secs(30))
        .map(|o| o.stdout + &o.stderr)
        .unwrap_or_default();
    assert!(
        logs.contains("\"drained\""),
        "{service} logged no drain:\n{}",
        tail(&logs, 20)
    );
}

/// Starts `service` again and waits until it is healthy and Prometheus scrapes it.
fn restart_node(stack: &Stack, service: &str, prometheus: SocketAddr) {
    check(
        stack.compose().args(["start", service]),
        Duration::from_secs(120),
        "docker-compose start",
    );
    let id = stack.container(service);
    until(
        Duration::from_secs(60),
        &format!("{service} healthy again"),
        || Ok(inspect(&id, "{{.State.Health.Status}}")),
        |s| s == "healthy",
    );
    until(
        Duration::from_secs(60),
        "Prometheus scraping three gateways again",
        || prom_query(prometheus, "sum(up{job=\"gateway\"})"),
        |r| sum(r) == 3.0,
    );
}

/// `docker-compose --profile loadtest run loadtest fanout ...` through the load balancer: no
/// loss, no errors, and every node took connections.
fn run_load(stack: &Stack, prometheus: SocketAddr) {
    let connects = "sum by (instance) (gateway_connects_total{job=\"gateway\"})";
    let before = by_instance(&prom_query(prometheus, connects).expect("connects before"));
    let n = LOAD_SESSIONS.to_string();
    let out = run_for(
        stack
            .compose()
            .args(["--profile", "loadtest", "run", "--rm", "loadtest"])
            .args([
                "fanout",
                "--url",
                "ws://127.0.0.1:4000/socket/websocket",
                "-n",
                &n,
                "--topics",
                "3",
                "--publish-rate",
                "20",
                "--duration-secs",
                "3",
                "--fail-if",
                "loss>0",
                "--fail-if",
                "errors>0",
            ]),
        Duration::from_secs(180),
    )
    .unwrap_or_else(|e| panic!("loadtest profile: {e}"));
    println!("{}", tail(&out.stdout, 16));
    assert!(
        out.status.success(),
        "loadtest fanout failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let joined = format!("{n} joined / {n} requested");
    assert!(out.stdout.contains(&joined), "not all sessions joined");
    until(
        Duration::from_secs(30),
        "Prometheus: the load's connections on every node",
        || prom_query(prometheus, connects).map(|r| by_instance(&r)),
        |after| {
            let grew = |i: &String| {
                after.get(i).copied().unwrap_or(0.0) > before.get(i).copied().unwrap_or(0.0)
            };
            let total = |m: &std::collections::BTreeMap<String, f64>| m.values().sum::<f64>();
            after.len() == 3
                && after.keys().all(grew)
                && total(after) - total(&before) >= LOAD_SESSIONS as f64
        },
    );
}

/// An instant PromQL query against the stack's Prometheus: the result vector.
fn prom_query(prometheus: SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
    let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    let (status, body) =
        http_get(prometheus, &format!("/api/v1/query?query={q}")).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
    match v["data"]["result"].as_array() {
        Some(r) if v["status"] == "success" => Ok(r.clone()),
        _ => Err(format!("{status} {body}")),
    }
}

fn value_of(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

fn sum(result: &[Value]) -> f64 {
    result.iter().map(value_of).sum()
}

fn by_instance(result: &[Value]) -> std::collections::BTreeMap<String, f64> {
    result
        .iter()
        .map(|s| {
            let instance = s["metric"]["instance"].as_str().unwrap_or("?").to_string();
            (instance, value_of(s))
        })
        .collect()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
