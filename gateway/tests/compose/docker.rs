//! The Docker side of the compose test: the machine is prepared by `deploy/docker/prepare.sh`
//! (it installs and starts the engine when missing and makes the local base images), a docker
//! CLI that builds with BuildKit is found, and every command runs with a time bound and its
//! output kept for the failure message.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The workspace root (the Dockerfile and docker-compose.yml live there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/test-artifacts/compose`: build log, container logs of a failed run, timings.
pub fn artifacts() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp
        .parent()
        .unwrap_or(tmp)
        .join("test-artifacts")
        .join("compose");
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

/// What a finished command printed.
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Numbers the capture files of concurrent commands.
static CAPTURES: AtomicU64 = AtomicU64::new(0);

/// Runs `cmd` (stdin closed) for at most `limit`, killing it after that. Output goes through
/// files, so a command that prints a lot can never block on a full pipe.
pub fn run_for(cmd: &mut Command, limit: Duration) -> Result<Out, String> {
    let n = CAPTURES.fetch_add(1, Ordering::Relaxed);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("compose-capture-{}-{n}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let described = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).map_err(|e| format!("{out_path:?}: {e}"))?)
        .stderr(File::create(&err_path).map_err(|e| format!("{err_path:?}: {e}"))?)
        .spawn()
        .map_err(|e| format!("cannot run {described}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("{described} still running after {limit:?}: killed"));
            }
            Err(e) => break Err(format!("waiting for {described}: {e}")),
        }
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    match status {
        Ok(status) => Ok(Out {
            status,
            stdout,
            stderr,
        }),
        Err(e) => Err(format!("{e}\nstdout:\n{stdout}\nstderr:\n{stderr}")),
    }
}

/// Runs `cmd` and returns its stdout; panics with everything it printed unless it succeeds.
pub fn check(cmd: &mut Command, limit: Duration, what: &str) -> String {
    let described = format!("{cmd:?}");
    match run_for(cmd, limit) {
        Ok(out) if out.status.success() => out.stdout,
        Ok(out) => panic!(
            "{what} failed ({}): {described}\nstdout:\n{}\nstderr:\n{}",
            out.status, out.stdout, out.stderr
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// `docker ARGS` (the CLI on PATH; any version talks to the engine).
pub fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

/// Prepares the machine: installs docker.io / docker-compose / debootstrap when missing,
/// starts dockerd when no engine answers, makes the base images the Dockerfile and compose
/// file name. A machine where that fails fails the test, saying what is missing: never a skip.
pub fn prepare() {
    let script = root().join("deploy/docker/prepare.sh");
    let out = check(
        Command::new("bash").arg(&script),
        Duration::from_secs(20 * 60),
        "deploy/docker/prepare.sh (installs and starts the Docker engine, makes the base images)",
    );
    println!("{}", out.trim_end());
    let info = check(
        &mut docker(&["info", "--format", "{{.ServerVersion}} {{.Driver}}"]),
        Duration::from_secs(30),
        "`docker info` after deploy/docker/prepare.sh: no Docker engine answers",
    );
    println!("Docker engine {}", info.trim());
    check(
        Command::new("docker-compose").arg("version"),
        Duration::from_secs(30),
        "docker-compose (Debian's docker-compose 1.29; deploy/docker/prepare.sh installs it)",
    );
}

/// A docker CLI that builds with BuildKit, which the Dockerfile's cache mounts need: one with
/// the buildx plugin, or a 20.10 CLI (BuildKit built in; Debian's docker.io ships one). A CLI of
/// 23 or later without buildx only has the classic builder.
pub fn buildkit_cli() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut seen: Vec<(PathBuf, String)> = Vec::new();
    for dir in std::env::split_paths(&path) {
        let cli = dir.join("docker");
        if !cli.is_file() || seen.iter().any(|(p, _)| *p == cli) {
            continue;
        }
        let buildx = Command::new(&cli)
            .args(["buildx", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let version = Command::new(&cli)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        // "Docker version 20.10.24+dfsg1, build 297e128"
        let major: u32 = version
            .strip_prefix("Docker version ")
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(u32::MAX);
        if buildx || major < 23 {
            return cli;
        }
        seen.push((cli, version));
    }
    panic!(
        "no docker CLI on PATH builds with BuildKit (the Dockerfile's cache mounts need it): \
         {seen:?}; install the buildx plugin, or Debian's docker.io (deploy/docker/prepare.sh)"
    );
}

/// `docker inspect --format FORMAT` of a container or image.
pub fn inspect(container: &str, format: &str) -> String {
    check(
        &mut docker(&["inspect", "--format", format, container]),
        Duration::from_secs(30),
        "docker inspect",
    )
    .trim()
    .to_string()
}

/// `GET path` over HTTP/1.0: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Checks `probe` every 200 ms until it holds; panics with `what` and the last state after
/// `limit`. For states only observable by asking (HTTP, docker inspect).
pub fn until<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let last = probe();
        if let Ok(v) = &last {
            if done(v) {
                return last.expect("checked");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?} (last: {last:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
