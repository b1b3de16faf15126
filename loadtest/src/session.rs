//! One client Session over the lean WebSocket client: connect from a chosen source address,
//! upgrade, join a topic, then hold it (heartbeats, probe receipts) until told to stop.
//!
//! Memory discipline: while idle a session is its `TcpStream` plus a few integers; bytes are
//! read into a stack buffer inside a synchronous function and only a partial trailing frame is
//! ever copied to the heap (`partial`, freed as soon as it completes).

use crate::phoenix::{self, Inbound};
use crate::stats::{ErrorKind, Stats};
use crate::target::Target;
use crate::ws::{self, opcode};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};

/// Largest probe sequence number tracked for duplicates (bitmap of 2 MiB per session at most).
const MAX_TRACKED_SEQ: u64 = 16 << 20;
/// Stack buffer for one read pass.
const READ_CHUNK: usize = 16 * 1024;

/// Microseconds since the Unix epoch (the probe timestamp clock, shared across processes).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A connected, joined client session.
#[derive(Debug)]
pub struct Session {
    /// The upgraded socket.
    stream: TcpStream,
    /// Next message ref (the join used 1).
    next_ref: u32,
    /// The joined topic.
    topic: String,
    /// Bytes of an incomplete frame or fragmented message; empty (no allocation) when idle.
    partial: Vec<u8>,
    /// Bitmap of probe sequence numbers seen, allocated on the first probe.
    seen: Vec<u64>,
    /// Ref of the heartbeat still waiting for its reply.
    hb_pending: Option<u32>,
    /// Ref whose reply the caller waits for, and the reply's status once it came.
    awaited: Option<(u32, Option<bool>)>,
    /// A leave was sent: the `phx_close` that follows its reply is expected, not an error.
    leaving: bool,
}

/// Result of one non-blocking read pass.
enum Pass {
    /// Socket drained; connection still open.
    Open,
    /// Peer closed (EOF or close frame).
    Closed,
}

impl Session {
    /// Connects from `src`, upgrades, joins `topic` and waits for the ok reply.
    pub async fn open(
        target: &Target,
        src: Ipv4Addr,
        topic: String,
        join_timeout: Duration,
        stats: &Stats,
    ) -> Result<Session, ErrorKind> {
        let socket = TcpSocket::new_v4().map_err(|_| ErrorKind::Connect)?;
        socket
            .bind((src, 0).into())
            .map_err(|_| ErrorKind::Connect)?;
        let mut stream = socket
            .connect(target.socket_addr())
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = stream.set_nodelay(true);
        let leftover = ws::handshake(&mut stream, &target.host(), &target.path)
            .await
            .map_err(|_| ErrorKind::Handshake)?;
        let mut s = Session {
            stream,
            next_ref: 2,
            topic,
            partial: leftover,
            seen: Vec::new(),
            hb_pending: None,
            awaited: None,
            leaving: false,
        };
        s.send(&phoenix::join(1, &s.topic)).await?;
        match s.await_reply(1, join_timeout, stats).await? {
            Some(true) => Ok(s),
            Some(false) => Err(ErrorKind::JoinRefused),
            None => Err(ErrorKind::JoinTimeout),
        }
    }

    /// Sends one text frame.
    async fn send(&mut self, text: &str) -> Result<(), ErrorKind> {
        ws::send_text(&mut self.stream, text)
            .await
            .map_err(|_| ErrorKind::Closed)
    }

    /// Waits (bounded) for the reply to `msg_ref`: `Some(ok)` when it came, `None` on timeout.
    async fn await_reply(
        &mut self,
        msg_ref: u32,
        limit: Duration,
        stats: &Stats,
    ) -> Result<Option<bool>, ErrorKind> {
        self.awaited = Some((msg_ref, None));
        let deadline = Instant::now() + limit;
        let outcome = loop {
            if let Some((_, Some(ok))) = self.awaited {
                break Ok(Some(ok));
            }
            match timeout(deadline - Instant::now(), self.stream.readable()).await {
                Err(_) => break Ok(None),
                Ok(Err(_)) => break Err(ErrorKind::Closed),
                Ok(Ok(())) => {}
            }
            match self.pass(stats) {
                Ok(Pass::Open) => {}
                Ok(Pass::Closed) => {
                    if let Some((_, Some(ok))) = self.awaited {
                        break Ok(Some(ok));
                    }
                    break Err(ErrorKind::Closed);
                }
                Err(e) => break Err(e),
            }
        };
        self.awaited = None;
        outcome
    }

    /// Holds the joined session until `stop` turns true: answers pings, sends heartbeats every
    /// `heartbeat`, counts probes. Returns the error that ended it early, if any.
    pub async fn hold(
        &mut self,
        heartbeat: Duration,
        stats: &Stats,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ErrorKind> {
        // One timer for the whole hold, reset when it fires: a fresh `sleep_until` per loop
        // would insert into and remove from the timer wheel on every received frame.
        let next_hb = sleep_until(Instant::now() + heartbeat);
        tokio::pin!(next_hb);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            tokio::select! {
                r = self.stream.readable() => {
                    r.map_err(|_| ErrorKind::Closed)?;
                    if let Pass::Closed = self.pass(stats)? {
                        return Err(ErrorKind::Closed);
                    }
                }
                _ = &mut next_hb => {
                    if self.hb_pending.is_some() {
                        stats.error(ErrorKind::HeartbeatTimeout);
                    }
                    let r = self.take_ref();
                    self.hb_pending = Some(r);
                    stats.heartbeats.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.send(&phoenix::heartbeat(r)).await?;
                    next_hb.as_mut().reset(Instant::now() + heartbeat);
                }
                r = stop.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Leaves the topic and waits (bounded) for the ok reply.
    pub async fn leave(&mut self, limit: Duration, stats: &Stats) -> Result<(), ErrorKind> {
        let r = self.take_ref();
        self.leaving = true;
        let text = phoenix::leave(1, r, &self.topic);
        self.send(&text).await?;
        match self.await_reply(r, limit, stats).await {
            Ok(Some(true)) => Ok(()),
            _ => Err(ErrorKind::Leave),
        }
    }

    /// Sends a close frame and waits (at most `limit`) for the server to close its side, so the
    /// TIME_WAIT state lands on the server rather than eating the client's ephemeral ports.
    pub async fn close(mut self, limit: Duration, stats: &Stats) {
        let _ = self.stream.write_all(&ws::close_frame(1000)).await;
        let deadline = Instant::now() + limit;
        while let Ok(Ok(())) = timeout(deadline - Instant::now(), self.stream.readable()).await {
            match self.pass(stats) {
                Ok(Pass::Open) => {}
                _ => break,
            }
        }
    }

    /// A fresh message ref.
    fn take_ref(&mut self) -> u32 {
        let r = self.next_ref;
        self.next_ref = self.next_ref.wrapping_add(1).max(2);
        r
    }

    /// Reads everything available right now and handles each complete frame.
    fn pass(&mut self, stats: &Stats) -> Result<Pass, ErrorKind> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let (n, drained) = match ws::read_some(&self.stream, &mut chunk) {
                Ok(ws::Read::Eof) => return Ok(Pass::Closed),
                Ok(ws::Read::More(n)) => (n, false),
                Ok(ws::Read::Drained(n)) => (n, true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(Pass::Closed),
            };
            let closed = if self.partial.is_empty() {
                let (used, closed) = self.frames(&chunk[..n], stats)?;
                self.partial.extend_from_slice(&chunk[used..n]);
                closed
            } else {
                let mut buf = std::mem::take(&mut self.partial);
                buf.extend_from_slice(&chunk[..n]);
                let (used, closed) = self.frames(&buf, stats)?;
                buf.drain(..used);
                if !buf.is_empty() {
                    self.partial = buf;
                }
                closed
            };
            if closed {
                return Ok(Pass::Closed);
            }
            if drained {
                return Ok(Pass::Open);
            }
        }
    }

    /// Handles the complete frames at the start of `buf`; returns bytes consumed and whether a
    /// close frame arrived. Fragmented messages are not expected from the gateway and count as
    /// protocol errors, which keeps this path free of reassembly buffers.
    fn frames(&mut self, buf: &[u8], stats: &Stats) -> Result<(usize, bool), ErrorKind> {
        let mut at = 0;
        while let Some(f) = ws::parse_frame(&buf[at..]).map_err(|_| ErrorKind::Protocol)? {
            let payload = &buf[at + f.payload.start..at + f.payload.end];
            at += f.len;
            match f.opcode {
                opcode::TEXT if f.fin => self.message(payload, stats)?,
                opcode::PING => {
                    // Best effort: a pong that would block is dropped, the next ping retries.
                    let _ = self
                        .stream
                        .try_write(&ws::encode_frame(opcode::PONG, payload));
                }
                opcode::PONG => {}
                opcode::CLOSE => return Ok((at, true)),
                _ => return Err(ErrorKind::Protocol),
            }
        }
        Ok((at, false))
    }

    /// Routes one decoded Phoenix message.
    fn message(&mut self, text: &[u8], stats: &Stats) -> Result<(), ErrorKind> {
        match phoenix::decode(text).map_err(|_| ErrorKind::Protocol)? {
            Inbound::Reply { msg_ref, ok, .. } => {
                if msg_ref.is_some() && msg_ref == self.hb_pending {
                    self.hb_pending = None;
                } else if let Some((want, result)) = &mut self.awaited {
                    if msg_ref == Some(*want) {
                        *result = Some(ok);
                    }
                }
            }
            Inbound::Probe { seq, ts_us, .. } => {
                let now = now_us();
                let fresh = self.mark_seen(seq);
                stats.delivered(now, now.saturating_sub(ts_us), fresh);
            }
            Inbound::ChannelClosed if !self.leaving => return Err(ErrorKind::Closed),
            Inbound::ChannelClosed => {}
            Inbound::Other => {}
        }
        Ok(())
    }

    /// Records `seq` in the bitmap; false if it was already there (a duplicate).
    fn mark_seen(&mut self, seq: u64) -> bool {
        if seq >= MAX_TRACKED_SEQ {
            return true;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }
}
