//! One session of the `recovery` scenario inside a worker: connect and join, remember the
//! position of the last broadcast received, close when the coordinator says `disconnect`, and
//! on `rejoin` connect again and join with `since` = that position, then check that exactly the
//! expected broadcasts are replayed, once each and in order ([`crate::replay::ReplayCheck`]).
//!
//! The connection is a small variant of [`crate::session::Session`]'s (same lean WebSocket
//! client, bytes read into a stack chunk by a synchronous pass, only a partial frame kept on
//! the heap) that hands every decoded message to the caller, because here the `ref` slot of a
//! broadcast (its position) and the join reply's `recovered` matter. Rejoins are bounded in
//! flight by the worker's share of `--max-inflight`, as the first joins were.

use crate::phoenix;
use crate::protocol::Phase;
use crate::replay::{self, Msg, Position, ReplayCheck, Step};
use crate::session::now_us;
use crate::stats::{record, ErrorKind};
use crate::target::{source_ip, Target};
use crate::tasks::Shared;
use crate::ws::{self, opcode};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, timeout, Instant};

/// Stack buffer for one read pass.
const READ_CHUNK: usize = 16 * 1024;
/// How long a closing session waits for the server's side of the close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The recovery phase of a worker's sessions and the gate bounding rejoins in flight.
#[derive(Debug)]
pub struct Recover {
    /// Set by the worker on the coordinator's `disconnect` / `rejoin`.
    pub phase: watch::Sender<Phase>,
    /// Rejoins (connect + join reply) in flight at once.
    pub gate: Arc<Semaphore>,
}

impl Recover {
    /// Phase `Joined`, `max_inflight` rejoins at once.
    pub fn new(max_inflight: usize) -> Recover {
        Recover {
            phase: watch::channel(Phase::Joined).0,
            gate: Arc::new(Semaphore::new(max_inflight.max(1))),
        }
    }
}

/// What ended a wait.
enum Wake {
    /// The phase changed.
    Phase,
    /// Stop.
    Stop,
}

/// A connected, joined WebSocket session that reports every message.
struct Conn {
    /// The upgraded socket.
    stream: TcpStream,
    /// Bytes of an incomplete frame.
    partial: Vec<u8>,
    /// Next message ref (the join used 1).
    next_ref: u32,
}

/// A joined connection, the reply's `recovered` and the messages that followed the reply.
type Opened = (Conn, Option<bool>, Vec<Msg>);

impl Conn {
    /// Connects from `src`, upgrades, joins `topic` (with `since` when given) and waits for the
    /// ok reply; returns what came after the reply in the same reads.
    async fn open(
        target: &Target,
        src: Ipv4Addr,
        topic: &str,
        since: Option<&str>,
        limit: Duration,
    ) -> Result<Opened, ErrorKind> {
        let deadline = Instant::now() + limit;
        let socket = TcpSocket::new_v4().map_err(|_| ErrorKind::Connect)?;
        socket
            .bind((src, 0).into())
            .map_err(|_| ErrorKind::Connect)?;
        let mut stream = timeout(limit, socket.connect(target.socket_addr()))
            .await
            .map_err(|_| ErrorKind::Connect)?
            .map_err(|_| ErrorKind::Connect)?;
        let _ = stream.set_nodelay(true);
        let partial = timeout(
            deadline.saturating_duration_since(Instant::now()),
            ws::handshake(&mut stream, &target.host(), &target.path),
        )
        .await
        .map_err(|_| ErrorKind::Handshake)?
        .map_err(|_| ErrorKind::Handshake)?;
        let mut c = Conn {
            stream,
            partial,
            next_ref: 2,
        };
        c.send(&replay::join(topic, since)).await?;
        let mut msgs = Vec::new();
        loop {
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                c.stream.readable(),
            )
            .await
            {
                Err(_) => return Err(ErrorKind::JoinTimeout),
                Ok(Err(_)) => return Err(ErrorKind::Closed),
                Ok(Ok(())) => {}
            }
            let open = c.pass(&mut msgs)?;
            let reply = msgs.iter().position(|m| {
                matches!(
                    m,
                    Msg::Reply {
                        msg_ref: Some(1),
                        ..
                    }
                )
            });
            if let Some(i) = reply {
                let rest = msgs.split_off(i + 1);
                return match msgs.pop() {
                    Some(Msg::Reply {
                        ok: true,
                        recovered,
                        ..
                    }) => Ok((c, recovered, rest)),
                    _ => Err(ErrorKind::JoinRefused),
                };
            }
            if !open || msgs.contains(&Msg::ChannelClosed) {
                return Err(ErrorKind::Closed);
            }
            msgs.clear();
        }
    }

    /// Sends one text frame.
    async fn send(&mut self, text: &str) -> Result<(), ErrorKind> {
        ws::send_text(&mut self.stream, text)
            .await
            .map_err(|_| ErrorKind::Closed)
    }

    /// Reads and hands `on` every message until the phase changes or stop; heartbeats meanwhile.
    async fn wait(
        &mut self,
        heartbeat: Duration,
        phase: &mut watch::Receiver<Phase>,
        stop: &mut watch::Receiver<bool>,
        on: &mut impl FnMut(Msg),
    ) -> Result<Wake, ErrorKind> {
        let mut next_hb = Instant::now() + heartbeat;
        let mut msgs = Vec::new();
        loop {
            if *stop.borrow() {
                return Ok(Wake::Stop);
            }
            tokio::select! {
                r = self.stream.readable() => {
                    r.map_err(|_| ErrorKind::Closed)?;
                    let open = self.pass(&mut msgs)?;
                    for m in msgs.drain(..) {
                        if m == Msg::ChannelClosed {
                            return Err(ErrorKind::Closed);
                        }
                        on(m);
                    }
                    if !open {
                        return Err(ErrorKind::Closed);
                    }
                }
                _ = sleep_until(next_hb) => {
                    let r = self.next_ref;
                    self.next_ref = self.next_ref.wrapping_add(1).max(2);
                    self.send(&crate::phoenix::heartbeat(r)).await?;
                    next_hb = Instant::now() + heartbeat;
                }
                r = phase.changed() => {
                    return Ok(if r.is_err() { Wake::Stop } else { Wake::Phase });
                }
                r = stop.changed() => {
                    if r.is_err() {
                        return Ok(Wake::Stop);
                    }
                }
            }
        }
    }

    /// Sends a close frame and waits (at most `limit`) for the server to close its side.
    async fn close(mut self, limit: Duration) {
        let _ = self.stream.write_all(&ws::close_frame(1000)).await;
        let deadline = Instant::now() + limit;
        let mut sink = Vec::new();
        while let Ok(Ok(())) = timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.stream.readable(),
        )
        .await
        {
            sink.clear();
            if !matches!(self.pass(&mut sink), Ok(true)) {
                break;
            }
        }
    }

    /// Reads everything available now; pushes each decoded message. False once closed.
    fn pass(&mut self, out: &mut Vec<Msg>) -> Result<bool, ErrorKind> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let (n, drained) = match ws::read_some(&self.stream, &mut chunk) {
                Ok(ws::Read::Eof) => return Ok(false),
                Ok(ws::Read::More(n)) => (n, false),
                Ok(ws::Read::Drained(n)) => (n, true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(false),
            };
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(&chunk[..n]);
            let (used, closed) = self.frames(&buf, out)?;
            buf.drain(..used);
            if !buf.is_empty() {
                self.partial = buf;
            }
            if closed {
                return Ok(false);
            }
            if drained {
                return Ok(true);
            }
        }
    }

    /// Decodes the complete frames at the start of `buf`: bytes used, whether a close came.
    fn frames(&mut self, buf: &[u8], out: &mut Vec<Msg>) -> Result<(usize, bool), ErrorKind> {
        let mut at = 0;
        while let Some(f) = ws::parse_frame(&buf[at..]).map_err(|_| ErrorKind::Protocol)? {
            let payload = &buf[at + f.payload.start..at + f.payload.end];
            at += f.len;
            match f.opcode {
                opcode::TEXT if f.fin => {
                    out.push(
                        phoenix::decode(payload)
                            .map_err(|_| ErrorKind::Protocol)?
                            .into(),
                    );
                }
                opcode::PING => {
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
}

/// Recovery mode: join, note positions, disconnect, rejoin with `since`, check the replay.
pub async fn recover_session(
    sh: &Shared,
    idx: u64,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let (plan, st) = (&sh.plan, &sh.stats);
    let rs = &st.recovery;
    let mut phase = sh.recover.phase.subscribe();
    let target = &plan.targets[(idx % plan.targets.len() as u64) as usize];
    let topic = plan.topic(idx);
    let src = source_ip(idx, plan.sources);
    let limit = Duration::from_millis(plan.join_timeout_ms);
    let heartbeat = Duration::from_millis(plan.heartbeat_ms.max(1));
    let t0 = Instant::now();
    let opened = Box::pin(Conn::open(target, src, &topic, None, limit)).await;
    drop(permit);
    let (mut conn, _, early) = match opened {
        Ok(o) => o,
        Err(kind) => {
            st.error(kind);
            st.failed.fetch_add(1, Ordering::Relaxed);
            sh.settled.fetch_add(1, Ordering::Release);
            return;
        }
    };
    record(&st.connect_join, t0.elapsed().as_micros() as u64);
    st.joined.fetch_add(1, Ordering::Relaxed);
    st.last_join_us.fetch_max(now_us(), Ordering::Relaxed);
    sh.by_topic[(idx % plan.topics.max(1)) as usize].fetch_add(1, Ordering::Relaxed);
    st.active.fetch_add(1, Ordering::Relaxed);
    sh.settled.fetch_add(1, Ordering::Release);

    // Joined: the latest position seen is what the client would keep.
    let mut last: Option<String> = None;
    let mut note = |m: Msg| {
        if let Msg::Probe {
            position: Some(p), ..
        } = m
        {
            if last.is_none() {
                rs.positioned.fetch_add(1, Ordering::Relaxed);
            }
            last = Some(p);
        }
    };
    early.into_iter().for_each(&mut note);
    let woke = Box::pin(conn.wait(heartbeat, &mut phase, &mut stop, &mut note)).await;
    st.active.fetch_sub(1, Ordering::Relaxed);
    match woke {
        Ok(Wake::Phase) if *phase.borrow() == Phase::Disconnect => {
            Box::pin(conn.close(CLOSE_GRACE)).await;
            rs.disconnected.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => return Box::pin(conn.close(CLOSE_GRACE)).await,
        Err(kind) => return st.error(kind),
    }

    // Away: wait for the rejoin.
    let expect = loop {
        if *stop.borrow() {
            return;
        }
        if let Phase::Rejoin(n) = *phase.borrow_and_update() {
            break n;
        }
        tokio::select! {
            r = phase.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = stop.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
    };
    let Some(since) = last.as_deref().and_then(Position::parse) else {
        rs.inexact.fetch_add(1, Ordering::Relaxed);
        rs.missing.fetch_add(expect, Ordering::Relaxed);
        return;
    };
    let Ok(permit) = sh.recover.gate.clone().acquire_owned().await else {
        return;
    };
    rs.first_rejoin_us.fetch_min(now_us(), Ordering::Relaxed);
    let t1 = Instant::now();
    let opened = Box::pin(Conn::open(target, src, &topic, last.as_deref(), limit)).await;
    drop(permit);
    let (mut conn, recovered, early) = match opened {
        Ok(o) => o,
        Err(kind) => {
            st.error(kind);
            rs.inexact.fetch_add(1, Ordering::Relaxed);
            rs.missing.fetch_add(expect, Ordering::Relaxed);
            return;
        }
    };
    rs.rejoined.fetch_add(1, Ordering::Relaxed);
    if recovered == Some(true) {
        rs.recovered_true.fetch_add(1, Ordering::Relaxed);
    } else {
        rs.recovered_false.fetch_add(1, Ordering::Relaxed);
    }
    st.active.fetch_add(1, Ordering::Relaxed);

    // Rejoined: every probe goes through the check until stop.
    let mut check = ReplayCheck::new(since, expect);
    let complete = || {
        rs.complete.fetch_add(1, Ordering::Relaxed);
        rs.last_complete_us.fetch_max(now_us(), Ordering::Relaxed);
        record(&st.delivery, t1.elapsed().as_micros() as u64);
    };
    if expect == 0 {
        complete();
    }
    let mut on = |m: Msg| {
        if let Msg::Probe { seq, position } = m {
            rs.replayed.fetch_add(1, Ordering::Relaxed);
            if check.push(seq, position.as_deref()) == Step::Complete {
                complete();
            }
        }
    };
    early.into_iter().for_each(&mut on);
    let end = loop {
        match Box::pin(conn.wait(heartbeat, &mut phase, &mut stop, &mut on)).await {
            Ok(Wake::Phase) => continue,
            Ok(Wake::Stop) => break Ok(()),
            Err(kind) => break Err(kind),
        }
    };
    st.active.fetch_sub(1, Ordering::Relaxed);
    if !check.exact() {
        rs.inexact.fetch_add(1, Ordering::Relaxed);
        rs.missing.fetch_add(check.missing(), Ordering::Relaxed);
        rs.extra.fetch_add(check.extra(), Ordering::Relaxed);
    }
    match end {
        Ok(()) => Box::pin(conn.close(CLOSE_GRACE)).await,
        Err(kind) => st.error(kind),
    }
}
