//! Child processes of a test: the binary under test (or a helper such as Prometheus or the
//! local-cluster script) with a chosen environment, every line it writes to stdout and stderr
//! kept (so a failure shows the log and a test can assert what was or was not logged), started
//! when it logs `listening on http://IP:PORT`, stopped with SIGTERM (a drain) or SIGKILL (a
//! crash), and killed when dropped so a failing test never leaks it. Also the bounded wait for
//! a plain `std` child (the Node suites, the Autobahn client).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::WAIT;

/// How long a process may take to log `listening on`.
pub const START_WAIT: Duration = Duration::from_secs(20);

/// How a process is to be started: program, arguments and environment.
#[derive(Debug, Clone)]
pub struct Spawn {
    program: PathBuf,
    args: Vec<OsString>,
    /// Added to the environment last.
    env: Vec<(OsString, OsString)>,
    /// Inherited variables to drop: exact names, or prefixes written `PREFIX*`.
    without: Vec<String>,
    /// Start from an empty environment (PATH kept) instead of this process's.
    exact_env: bool,
    dir: Option<PathBuf>,
}

impl Spawn {
    pub fn new(program: impl AsRef<Path>) -> Spawn {
        Spawn {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            without: Vec::new(),
            exact_env: false,
            dir: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Spawn {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Spawn {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Spawn
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Do not pass the inherited variable `name` on (`PREFIX*` drops every variable starting
    /// with PREFIX): a developer's own settings must not change what is tested.
    pub fn without_env(mut self, name: &str) -> Spawn {
        self.without.push(name.to_owned());
        self
    }

    /// Give the process exactly the variables set with [`Spawn::env`], plus PATH.
    pub fn exact_env(mut self) -> Spawn {
        self.exact_env = true;
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Spawn {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Start the process without waiting for anything.
    pub fn spawn(self) -> Process {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        if self.exact_env {
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        }
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            let drop = self.without.iter().any(|w| match w.strip_suffix('*') {
                Some(prefix) => k.starts_with(prefix),
                None => k == w.as_str(),
            });
            if drop {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (lines, _) = watch::channel(0usize);
        let streams: [Box<dyn tokio::io::AsyncRead + Send + Unpin>; 2] = [
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        let readers = streams
            .into_iter()
            .map(|stream| {
                let (log, lines) = (log.clone(), lines.clone());
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut line = Vec::new();
                    while reader
                        .read_until(b'\n', &mut line)
                        .await
                        .is_ok_and(|n| n > 0)
                    {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        line.clear();
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(text);
                            log.len()
                        };
                        lines.send_replace(n);
                    }
                })
            })
            .collect();
        Process {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            pid: child.id().expect("a running child has a pid"),
            program: self.program,
            child,
            log,
            lines,
            readers,
        }
    }

    /// Start, and wait for its `listening on http://IP:PORT` line; panics with the output so
    /// far if it does not come.
    pub async fn start(self) -> Process {
        let program = self.program.clone();
        match self.try_start().await {
            Ok(process) => process,
            Err(output) => panic!("{} did not start:\n{output}", program.display()),
        }
    }

    /// Like [`Spawn::start`]; `Err` holds the exit status and output when the process exits
    /// (or stays silent for [`START_WAIT`]) without logging `listening on`.
    pub async fn try_start(self) -> Result<Process, String> {
        let args = self.args.clone();
        let mut process = self.spawn();
        let listening = process
            .wait_line(START_WAIT, |l| l.contains("listening on http://"))
            .await;
        let addr = listening.ok().and_then(|line| {
            let rest = line.split("listening on http://").nth(1)?;
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            addr.parse::<SocketAddr>().ok()
        });
        match addr {
            Some(addr) => {
                process.addr = addr;
                Ok(process)
            }
            None => {
                let status = process.wait_exit(WAIT).await;
                for reader in process.readers.drain(..) {
                    let _ = tokio::time::timeout(WAIT, reader).await;
                }
                Err(format!(
                    "{args:?}: no `listening on http://IP:PORT` line (exit: {status:?}):\n{}",
                    process.output()
                ))
            }
        }
    }
}

/// A running child process; SIGKILLed when dropped.
pub struct Process {
    /// The address from its `listening on http://IP:PORT` line (unspecified when it was only
    /// spawned).
    pub addr: SocketAddr,
    pub pid: u32,
    program: PathBuf,
    child: tokio::process::Child,
    /// Every output line so far, stdout and stderr interleaved as they arrived.
    log: Arc<Mutex<Vec<String>>>,
    /// The number of lines in `log`, for waiting on a line; closed when both streams end.
    lines: watch::Sender<usize>,
    /// The tasks reading stdout and stderr; they end at EOF, i.e. when the process exits.
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Everything it wrote so far, one line per output line.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The first output line satisfying `pred`, waiting at most `limit` for it; `Err` (with
    /// the output) when the process closed its output or time ran out first.
    pub async fn wait_line(
        &self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let mut lines = self.lines.subscribe();
        let found = tokio::time::timeout(limit, async {
            loop {
                if let Some(l) = self.log.lock().unwrap().iter().find(|l| pred(l)) {
                    return Some(l.clone());
                }
                // Both readers gone (EOF on stdout and stderr): nothing more will come.
                if self.readers.iter().all(|r| r.is_finished()) {
                    return None;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), lines.changed()).await;
            }
        })
        .await;
        match found {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err(format!("output ended:\n{}", self.output())),
            Err(_) => Err(format!("nothing within {limit:?}:\n{}", self.output())),
        }
    }

    /// Panics (with the log) if the process wrote a Rust panic message.
    pub fn assert_no_panic(&self) {
        let log = self.output();
        assert!(
            !log.contains("panicked at"),
            "{} ({}) panicked:\n{log}",
            self.program.display(),
            self.addr
        );
    }

    /// Whether it has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM (for the gateway: start the drain).
    pub fn term(&self) {
        assert!(self.send_term(), "kill -TERM {} failed", self.pid);
    }

    /// SIGTERM; whether it was delivered.
    fn send_term(&self) -> bool {
        std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Wait at most `limit` for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// SIGTERM, wait for the exit and for the last output line. Returns the exit status,
    /// `None` if it did not exit within 30 s (then it is killed).
    pub async fn terminate(&mut self) -> Option<ExitStatus> {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.term();
        }
        let status = self.wait_exit(Duration::from_secs(30)).await;
        if status.is_none() {
            self.kill().await;
        }
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(WAIT, reader).await;
        }
        status
    }

    /// [`Process::terminate`] for a `Drop` (no `.await` there): SIGTERM, then block this thread
    /// until it exits, SIGKILL after `limit`.
    pub fn terminate_blocking(&mut self, limit: Duration) {
        // No assertion here: a panic while already unwinding would abort the test binary.
        if !self.is_running() || !self.send_term() {
            return;
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
    }

    /// Resident set size in bytes, from `/proc/<pid>/status` (0 once it is gone).
    pub fn rss(&self) -> u64 {
        rss_of(self.pid)
    }
}

/// Resident set size of process `pid` in bytes (0 when unknown).
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Waits for a `std` child up to `timeout`; on timeout it gets SIGTERM (so a test runner's
/// handlers can stop what it started), SIGKILL 5 s later, and `None` is returned.
pub fn wait_with_timeout(child: &mut std::process::Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(None) | Err(_) => {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let grace = Instant::now() + Duration::from_secs(5);
                while Instant::now() < grace {
                    if let Ok(Some(_)) = child.try_wait() {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
