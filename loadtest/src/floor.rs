//! `floor`: the kernel floor of fan-out on this machine, measured by the project itself. One
//! writer (this process, one thread) writes a small message to each of N loopback TCP
//! connections in turn, one `write` per message, as a fan-out server does when every session
//! gets one frame; one reader (a `floor-reader` child process, one thread) drains them all.
//! There is no WebSocket, no JSON and no gateway: writes/s is an upper bound for any gateway's
//! one-frame broadcast here, and N writes ÷ writes/s is the least time a broadcast to N
//! sessions can take on this machine at this moment.
//!
//! Two processes, because one may hold fewer than 20,000 descriptors here and every connection
//! has two ends. The writer's CPU comes from `/proc/self/stat` over the write loop only; the
//! reader's from its own `/proc/<pid>/stat` from `ready` to the last EOF.

use crate::metrics::{proc_cpu_times, CpuTimes};
use crate::target::source_ip;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Why the floor could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// A socket, the child process or a file failed.
    #[error("floor io: {0}")]
    Io(#[from] std::io::Error),
    /// The reader's line did not parse, or the report did not encode.
    #[error("floor json: {0}")]
    Json(#[from] serde_json::Error),
    /// The reader exited or said something else than expected.
    #[error("floor reader: {0}")]
    Reader(String),
    /// `/proc/<pid>/stat` unreadable.
    #[error("no CPU reading from /proc")]
    Cpu,
}

/// What one measurement found (`--json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    /// Loopback connections written to in turn.
    pub sockets: usize,
    /// Bytes per write.
    pub bytes_per_write: usize,
    /// Complete passes over all connections.
    pub rounds: u64,
    /// Writes that wrote the whole message.
    pub writes: u64,
    /// Wall time of the write loop, seconds.
    pub secs: f64,
    /// writes / secs: the floor.
    pub writes_per_sec: f64,
    /// Writer CPU (user + system) over the write loop, seconds.
    pub writer_cpu_secs: f64,
    /// Writer CPU per write, µs (almost all of it kernel time).
    pub writer_us_per_write: f64,
    /// The system (kernel) part of writer_cpu_secs.
    #[serde(default)]
    pub writer_sys_cpu_secs: f64,
    /// Bytes the reader received (= writes × bytes when nothing was cut short).
    pub reader_bytes: u64,
    /// Reader CPU from `ready` to the last EOF, seconds.
    pub reader_cpu_secs: f64,
    /// The system (kernel) part of reader_cpu_secs.
    #[serde(default)]
    pub reader_sys_cpu_secs: f64,
    /// Writer + reader CPU per write, µs: what one delivery costs both ends of the machine at
    /// the floor, to compare with a gateway's and its load generator's CPU per delivery.
    #[serde(default)]
    pub both_us_per_write: f64,
}

impl Floor {
    /// One line for the bench scripts' logs.
    pub fn line(&self) -> String {
        format!(
            "floor: {} sockets, {} writes of {} B in {:.2} s = {:.0} writes/s; writer cpu {:.2} s \
             ({:.2} system) = {:.2} us/write; reader cpu {:.2} s ({:.2} system); both {:.2} \
             us/write; reader got {} B",
            self.sockets,
            self.writes,
            self.bytes_per_write,
            self.secs,
            self.writes_per_sec,
            self.writer_cpu_secs,
            self.writer_sys_cpu_secs,
            self.writer_us_per_write,
            self.reader_cpu_secs,
            self.reader_sys_cpu_secs,
            self.both_us_per_write,
            self.reader_bytes
        )
    }
}

/// The child's last line on stdout (the reader's and the echo server's alike).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildDone {
    /// What its connections counted: bytes read (reader), requests answered (echo server).
    pub count: u64,
    /// CPU seconds from `ready` to EOF on every connection.
    pub cpu_secs: f64,
    /// The system part of cpu_secs.
    pub sys_cpu_secs: f64,
}

/// Kills the reader if the writer returns early, so no process is left behind.
pub(crate) struct ReaderChild(Child);

impl Drop for ReaderChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The child's stdout, one line per message.
pub(crate) type ChildLines = std::io::Lines<BufReader<ChildStdout>>;

/// What the `floor-reader` child does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildKind {
    /// Drain them (the floor's reader).
    Reader,
    /// Answer requests (`floor --echo`).
    Echo,
    /// Drain them and print a line each time this many more bytes have arrived in all (the
    /// end of one broadcast round, `floor --rounds`).
    Rounds(u64),
}

/// Starts the `floor-reader` child of `kind` with `n` connections to a listener of this
/// process spread over `sources` addresses, and waits until every one is accepted. The caller
/// owns this process's ends.
pub(crate) fn connect_child(
    n: usize,
    sources: u32,
    kind: ChildKind,
) -> Result<(ReaderChild, ChildLines, Vec<TcpStream>), FloorError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["floor-reader", "--connect", &addr.to_string()])
        .args(["-n", &n.to_string(), "--sources", &sources.to_string()]);
    match kind {
        ChildKind::Reader => {}
        ChildKind::Echo => {
            cmd.arg("--echo");
        }
        ChildKind::Rounds(bytes) => {
            cmd.args(["--round-bytes", &bytes.to_string()]);
        }
    }
    let mut child = ReaderChild(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| FloorError::Reader("no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    // Accepting on its own thread keeps the (128-deep) accept queue short while the child
    // connects; the child says `ready` only once every connect returned.
    let acceptor = std::thread::spawn(move || -> std::io::Result<Vec<TcpStream>> {
        let mut socks = Vec::with_capacity(n);
        while socks.len() < n {
            let (s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            socks.push(s);
        }
        Ok(socks)
    });
    if next_line(&mut lines, "ready")? != "ready" {
        return Err(FloorError::Reader("expected ready".into()));
    }
    let socks = acceptor
        .join()
        .map_err(|_| FloorError::Reader("accept thread panicked".into()))??;
    Ok((child, lines, socks))
}

/// The child's next line; `what` names it in the error when there is none.
pub(crate) fn next_line(lines: &mut ChildLines, what: &str) -> Result<String, FloorError> {
    match lines.next() {
        Some(Ok(l)) => Ok(l),
        other => Err(FloorError::Reader(format!(
            "expected {what}, got {other:?}"
        ))),
    }
}

/// Ends the child's wait: its exit status, an error unless it succeeded.
pub(crate) fn reap(mut child: ReaderChild) -> Result<(), FloorError> {
    let status = child.0.wait()?;
    if !status.success() {
        return Err(FloorError::Reader(format!("exited with {status}")));
    }
    Ok(())
}

/// The child's `ready` line, once every connection is open.
fn say_ready() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()
}

/// Measures the floor: `n` connections, writes of `bytes` for `secs` seconds, the reader's
/// connections bound to `sources` loopback source addresses (127.0.0.2 ..).
pub fn measure(n: usize, secs: f64, bytes: usize, sources: u32) -> Result<Floor, FloorError> {
    let (child, mut lines, mut socks) = connect_child(n, sources, ChildKind::Reader)?;

    let msg = vec![b'x'; bytes.max(1)];
    let me = std::process::id();
    let cpu0 = proc_cpu_times(me).ok_or(FloorError::Cpu)?;
    let t0 = Instant::now();
    let (mut writes, mut rounds) = (0u64, 0u64);
    // Blocking sockets, as a server writing straight from its fan-out loop would use them: a
    // full send buffer stalls the writer, which is part of what the floor measures.
    while t0.elapsed().as_secs_f64() < secs {
        for s in &mut socks {
            if s.write(&msg)? == msg.len() {
                writes += 1;
            }
        }
        rounds += 1;
    }
    let dt = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_times(me).ok_or(FloorError::Cpu)?.since(cpu0);
    drop(socks); // EOF on every connection ends the reader

    let done: ChildDone = serde_json::from_str(&next_line(&mut lines, "its total")?)?;
    let per_write = |cpu: f64| {
        if writes > 0 {
            cpu * 1e6 / writes as f64
        } else {
            0.0
        }
    };
    reap(child)?;
    Ok(Floor {
        sockets: n,
        bytes_per_write: msg.len(),
        rounds,
        writes,
        secs: dt,
        writes_per_sec: writes as f64 / dt,
        writer_cpu_secs: cpu.total(),
        writer_us_per_write: per_write(cpu.total()),
        writer_sys_cpu_secs: cpu.system,
        reader_bytes: done.count,
        reader_cpu_secs: done.cpu_secs,
        reader_sys_cpu_secs: done.sys_cpu_secs,
        both_us_per_write: per_write(cpu.total() + done.cpu_secs),
    })
}

/// The `floor-reader` child: connects `n` sockets to `addr`, says `ready`, reads everything
/// until every connection is closed, then prints its byte count and CPU as one JSON line.
pub fn reader(addr: SocketAddr, n: usize, sources: u32) -> Result<(), FloorError> {
    run_child(addr, n, sources, read_all)
}

/// A floor child's life: connects `n` sockets to `addr` (one thread, as a gateway worker),
/// says `ready`, runs `serve` on every connection until each ends, then prints the sum of what
/// they returned and its CPU from `ready` on as one [`ChildDone`] line.
pub(crate) fn run_child<F, Fut>(
    addr: SocketAddr,
    n: usize,
    sources: u32,
    serve: F,
) -> Result<(), FloorError>
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = Result<u64, FloorError>> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let mut streams = Vec::with_capacity(n);
        for i in 0..n {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((source_ip(i as u64, sources), 0).into())?;
            let s = socket.connect(addr).await?;
            s.set_nodelay(true)?;
            streams.push(s);
        }
        say_ready()?;
        // Idle until the parent starts: from here on the child's CPU is its work.
        let cpu0 = proc_cpu_times(std::process::id()).ok_or(FloorError::Cpu)?;
        let mut tasks = tokio::task::JoinSet::new();
        for s in streams {
            tasks.spawn(serve(s));
        }
        let mut count = 0u64;
        while let Some(r) = tasks.join_next().await {
            count += r.map_err(|e| FloorError::Reader(e.to_string()))??;
        }
        let cpu: CpuTimes = proc_cpu_times(std::process::id())
            .ok_or(FloorError::Cpu)?
            .since(cpu0);
        let done = ChildDone {
            count,
            cpu_secs: cpu.total(),
            sys_cpu_secs: cpu.system,
        };
        println!("{}", serde_json::to_string(&done)?);
        Ok(())
    })
}

/// Reads one connection to EOF; the bytes it carried.
async fn read_all(s: tokio::net::TcpStream) -> Result<u64, FloorError> {
    read_to_eof(s, |_| Ok(())).await
}

/// Reads one connection to EOF, handing `on_read` the size of each non-empty drain; the bytes
/// it carried.
pub(crate) async fn read_to_eof(
    s: tokio::net::TcpStream,
    mut on_read: impl FnMut(u64) -> Result<(), FloorError>,
) -> Result<u64, FloorError> {
    let mut total = 0u64;
    loop {
        s.readable().await?;
        let (got, eof) = drain(&s)?;
        if got > 0 {
            total += got;
            on_read(got)?;
        }
        if eof {
            return Ok(total);
        }
    }
}

/// Reads what is there into a stack buffer (an idle connection owns none); (bytes, EOF seen).
fn drain(s: &tokio::net::TcpStream) -> std::io::Result<(u64, bool)> {
    let mut buf = [0u8; 16384];
    let mut got = 0u64;
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return Ok((got, true)),
            Ok(k) => got += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok((got, false)),
            Err(e) => return Err(e),
        }
    }
}
