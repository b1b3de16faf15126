//! `floor --echo`: the kernel floor of a heartbeat, measured by the project itself. A client
//! (this process, one thread, blocking sockets) sends a request the size of a phoenix.js
//! heartbeat frame on each of N loopback connections in turn, then reads each reply; a server
//! (a `floor-reader --echo` child process, one thread, readiness-driven as a gateway worker is)
//! answers every request with one write the size of the gateway's heartbeat reply. There is no
//! WebSocket, no JSON and no gateway: the server's CPU per echo is the least a gateway can
//! spend on one heartbeat here (one read, one write, its share of the readiness waits), the
//! client's the least a client can spend on sending one and reading its reply.
//!
//! Same two-process layout and CPU readings as [`crate::floor`].

use crate::floor::{connect_child, next_line, reap, run_child, ChildDone, ChildKind, FloorError};
use crate::metrics::proc_cpu_times;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::Interest;

/// `[null,"123","phoenix","heartbeat",{}]` in a masked client frame (6-byte header).
pub const REQUEST_BYTES: usize = 46;
/// `[null,"123","phoenix","phx_reply",{"status":"ok","response":{}}]` in a server frame.
pub const REPLY_BYTES: usize = 67;

/// What one measurement found (`--json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EchoFloor {
    /// Loopback connections, one request in flight on each.
    pub sockets: usize,
    /// Bytes per request.
    pub request_bytes: usize,
    /// Bytes per reply.
    pub reply_bytes: usize,
    /// Complete passes over all connections (send every request, then read every reply).
    pub rounds: u64,
    /// Requests answered.
    pub echoes: u64,
    /// Wall time of the passes, seconds.
    pub secs: f64,
    /// echoes / secs.
    pub echoes_per_sec: f64,
    /// Client CPU (user + system) over the passes, seconds.
    pub client_cpu_secs: f64,
    /// The system (kernel) part of client_cpu_secs.
    pub client_sys_cpu_secs: f64,
    /// Client CPU per echo, µs: the floor of what a load generator spends per heartbeat.
    pub client_us_per_echo: f64,
    /// Server CPU from `ready` to the last EOF, seconds.
    pub server_cpu_secs: f64,
    /// The system (kernel) part of server_cpu_secs.
    pub server_sys_cpu_secs: f64,
    /// Server CPU per echo, µs: the floor of what a gateway spends per heartbeat.
    pub server_us_per_echo: f64,
    /// Requests the server counted (= echoes when nothing was cut short).
    pub server_echoes: u64,
}

impl EchoFloor {
    /// One line for the bench scripts' logs.
    pub fn line(&self) -> String {
        format!(
            "echo floor: {} sockets, {} echoes of {}+{} B in {:.2} s = {:.0} echoes/s; server cpu \
             {:.2} s ({:.2} system) = {:.2} us/echo; client cpu {:.2} s ({:.2} system) = {:.2} \
             us/echo",
            self.sockets,
            self.echoes,
            self.request_bytes,
            self.reply_bytes,
            self.secs,
            self.echoes_per_sec,
            self.server_cpu_secs,
            self.server_sys_cpu_secs,
            self.server_us_per_echo,
            self.client_cpu_secs,
            self.client_sys_cpu_secs,
            self.client_us_per_echo,
        )
    }
}

/// Measures the echo floor: `n` connections, passes for `secs` seconds, the server's
/// connections bound to `sources` loopback source addresses.
pub fn measure(n: usize, secs: f64, sources: u32) -> Result<EchoFloor, FloorError> {
    let (child, mut lines, mut socks) = connect_child(n, sources, ChildKind::Echo)?;
    let request = [b'h'; REQUEST_BYTES];
    let mut reply = [0u8; REPLY_BYTES];
    let me = std::process::id();
    let cpu0 = proc_cpu_times(me).ok_or(FloorError::Cpu)?;
    let t0 = Instant::now();
    let (mut echoes, mut rounds) = (0u64, 0u64);
    while t0.elapsed().as_secs_f64() < secs {
        for s in &mut socks {
            s.write_all(&request)?;
        }
        for s in &mut socks {
            s.read_exact(&mut reply)?;
            echoes += 1;
        }
        rounds += 1;
    }
    let dt = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_times(me).ok_or(FloorError::Cpu)?.since(cpu0);
    drop(socks);
    let done: ChildDone = serde_json::from_str(&next_line(&mut lines, "its total")?)?;
    reap(child)?;
    let per_echo = |cpu: f64| {
        if echoes > 0 {
            cpu * 1e6 / echoes as f64
        } else {
            0.0
        }
    };
    Ok(EchoFloor {
        sockets: n,
        request_bytes: REQUEST_BYTES,
        reply_bytes: REPLY_BYTES,
        rounds,
        echoes,
        secs: dt,
        echoes_per_sec: echoes as f64 / dt,
        client_cpu_secs: cpu.total(),
        client_sys_cpu_secs: cpu.system,
        client_us_per_echo: per_echo(cpu.total()),
        server_cpu_secs: done.cpu_secs,
        server_sys_cpu_secs: done.sys_cpu_secs,
        server_us_per_echo: per_echo(done.cpu_secs),
        server_echoes: done.count,
    })
}

/// The `floor-reader --echo` child: connects `n` sockets to `addr`, says `ready`, answers every
/// request until every connection is closed, then prints its count and CPU as one JSON line.
pub fn server(addr: SocketAddr, n: usize, sources: u32) -> Result<(), FloorError> {
    run_child(addr, n, sources, echo_all)
}

/// Answers every complete request on one connection until EOF; the requests answered.
async fn echo_all(s: tokio::net::TcpStream) -> Result<u64, FloorError> {
    let reply = [b'r'; REPLY_BYTES];
    let mut buf = [0u8; 512];
    let (mut partial, mut echoes) = (0usize, 0u64);
    loop {
        s.readable().await?;
        // One read per wake-up, readiness cleared by a short read: what the gateway does.
        let mut got = 0;
        let read = s.try_io(Interest::READABLE, || {
            got = s.try_read(&mut buf)?;
            if got > 0 && got < buf.len() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match read {
            Ok(()) if got == 0 => return Ok(echoes),
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        partial += got;
        while partial >= REQUEST_BYTES {
            partial -= REQUEST_BYTES;
            // One request in flight per connection: a 67-byte reply always fits the send
            // buffer, so a short write would be a broken connection.
            if s.try_write(&reply)? != REPLY_BYTES {
                return Err(FloorError::Reader("short reply write".into()));
            }
            echoes += 1;
        }
    }
}
