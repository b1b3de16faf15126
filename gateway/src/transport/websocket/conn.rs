//! The WebSocket connection driver: one task per connection, parked on socket readiness while
//! idle. No read buffer exists while nothing is in flight (it is allocated when bytes arrive and
//! dropped once every complete frame is consumed), and there is no writer task: the same task
//! writes whatever the outbox holds, several frames per vectored write when they queued up.
//!
//! Readiness waits (`readable`, `writable`, outbox wake-ups) are cancel-safe, so they can share
//! one `select!`; the non-cancel-safe work (parsing and handling frames) runs outside it.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::edge::Edge;
use crate::outbox::{OutItem, OutboxLimits};
use crate::protocol::websocket::{
    encode_close, encode_frame, parse_close, parse_frame, Assembler, Frame, FrameError, OpCode,
};
use crate::protocol::{Close, CloseCode};
use crate::registry::SessionHandle;

/// What a connection hands complete messages to (a Session, or the echo).
pub trait Handler: Send {
    /// A complete binary message (`binary`), or a text one (valid UTF-8).
    fn on_message(
        &mut self,
        binary: bool,
        data: Bytes,
    ) -> impl Future<Output = Result<(), Close>> + Send;
    /// The bytes to write for an outbox item that is not bytes yet (an intercepted broadcast);
    /// `None` to write nothing for it.
    fn render(&mut self, item: OutItem) -> impl Future<Output = Option<Bytes>> + Send;
}

/// Limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Largest message (also across fragments).
    pub max_message: usize,
    /// Outbox limits for control frames the driver queues itself (pongs).
    pub outbox: OutboxLimits,
}

/// How the connection ended, for logs and the disconnect metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed (close frame or EOF).
    ByClient,
    /// The node closed with this code.
    ByServer(CloseCode),
    /// An I/O error.
    Error,
}

impl Ended {
    /// Label for `gateway_disconnects_total`.
    pub fn label(self) -> &'static str {
        match self {
            Ended::ByClient => "client",
            Ended::Error => "io_error",
            Ended::ByServer(c) => c.label(),
        }
    }
}

const MAX_IOV: usize = 64;
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// One WebSocket connection.
pub struct Conn {
    stream: TcpStream,
    /// The node's edge (metrics, clock).
    edge: Arc<Edge>,
    /// The session's outbox and liveness.
    session: Arc<SessionHandle>,
    limits: ConnLimits,
    /// Bytes read but not yet parsed; `None` while idle.
    rbuf: Option<BytesMut>,
    /// Fragmented message in progress (rare, so boxed).
    asm: Option<Box<Assembler>>,
    /// Items taken from the outbox, not yet fully written.
    pending: VecDeque<OutItem>,
    /// Bytes of `pending`'s front frame already written.
    offset: usize,
}

enum Ready {
    Outbox,
    Writable(io::Result<()>),
    Readable(io::Result<()>),
}

enum Flushed {
    Done(Option<Close>),
    Intercepts,
}

enum Step {
    Continue,
    Close(Close),
    ClientClose(Option<CloseCode>),
    Eof,
}

impl Conn {
    /// Wrap an upgraded stream; `leftover` holds bytes that arrived with the handshake.
    pub fn new(
        stream: TcpStream,
        leftover: Bytes,
        edge: Arc<Edge>,
        session: Arc<SessionHandle>,
        limits: ConnLimits,
    ) -> Self {
        let rbuf = (!leftover.is_empty()).then(|| BytesMut::from(&leftover[..]));
        Conn {
            stream,
            edge,
            session,
            limits,
            rbuf,
            asm: None,
            pending: VecDeque::new(),
            offset: 0,
        }
    }

    /// Run until the connection ends.
    pub async fn run<H: Handler>(&mut self, handler: &mut H) -> Ended {
        let step = self.serve(handler).await;
        // Ending is rare work: boxed so it does not enlarge every idle connection's future.
        Box::pin(self.finish(step, handler)).await
    }

    async fn finish<H: Handler>(&mut self, step: io::Result<Step>, handler: &mut H) -> Ended {
        let ended = match step {
            Ok(Step::Close(close)) => {
                self.close(close, handler).await;
                Ended::ByServer(close.code)
            }
            Ok(Step::ClientClose(code)) => {
                let frame = match code {
                    Some(c) => encode_close(c, ""),
                    None => encode_frame(OpCode::Close, &[]),
                };
                let _ = tokio::time::timeout(CLOSE_LINGER, self.stream.write_all(&frame)).await;
                Ended::ByClient
            }
            Ok(Step::Eof) | Ok(Step::Continue) => Ended::ByClient,
            Err(_) => Ended::Error,
        };
        let _ = self.stream.shutdown().await;
        ended
    }

    /// The connection's life. Only the readiness wait is awaited inline: it is where an
    /// idle session sits, so it is all an idle session's future holds. Everything else runs in
    /// boxed futures that exist only while there is work.
    async fn serve<H: Handler>(&mut self, handler: &mut H) -> io::Result<Step> {
        // Bytes that came with the handshake are handled before waiting for more.
        if self.rbuf.is_some() {
            if let s @ (Step::Close(_) | Step::ClientClose(_) | Step::Eof) =
                Box::pin(self.parse(handler)).await
            {
                return Ok(s);
            }
        }
        loop {
            if let Some(close) = self.flush_all(handler).await? {
                return Ok(Step::Close(close));
            }
            match self.ready().await {
                Ready::Outbox => continue,
                Ready::Writable(r) => {
                    r?;
                    continue;
                }
                Ready::Readable(r) => r?,
            }
            match Box::pin(self.read(handler)).await? {
                Step::Continue => {}
                other => return Ok(other),
            }
        }
    }

    /// Wait for the outbox, writability (only while a write is pending) or readability. Polls
    /// readiness directly (no stored waiter futures), so an idle session's future stays small.
    fn ready(&self) -> impl Future<Output = Ready> + '_ {
        std::future::poll_fn(move |cx| {
            if self.session.outbox.poll_wait(cx).is_ready() {
                return Poll::Ready(Ready::Outbox);
            }
            if !self.pending.is_empty() {
                if let Poll::Ready(r) = self.stream.poll_write_ready(cx) {
                    return Poll::Ready(Ready::Writable(r));
                }
            }
            self.stream.poll_read_ready(cx).map(Ready::Readable)
        })
    }

    /// Write what is queued; interceptions (rare) are resolved in a boxed future.
    async fn flush_all<H: Handler>(&mut self, handler: &mut H) -> io::Result<Option<Close>> {
        loop {
            match self.flush()? {
                Flushed::Done(close) => return Ok(close),
                Flushed::Intercepts => Box::pin(self.resolve_intercepts(handler)).await,
            }
        }
    }

    async fn read<H: Handler>(&mut self, handler: &mut H) -> io::Result<Step> {
        let buf = self
            .rbuf
            .get_or_insert_with(|| BytesMut::with_capacity(4096));
        let room = buf.capacity() - buf.len();
        let stream = &self.stream;
        let mut got = 0;
        // A read shorter than the room left means the socket is drained: readiness is cleared
        // right away (as tokio's own `poll_read` does; a newer event is kept), which saves the
        // second read per incoming message that would only fail with `WouldBlock`.
        let read = stream.try_io(Interest::READABLE, || {
            got = stream.try_read_buf(buf)?;
            if got > 0 && got < room {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match read {
            Ok(()) if got == 0 => return Ok(Step::Eof),
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if got == 0 {
                    if buf.is_empty() {
                        self.rbuf = None;
                    }
                    return Ok(Step::Continue);
                }
            }
            Err(e) => return Err(e),
        }
        Ok(self.parse(handler).await)
    }

    async fn parse<H: Handler>(&mut self, handler: &mut H) -> Step {
        loop {
            let Some(buf) = self.rbuf.as_mut() else {
                return Step::Continue;
            };
            let frame = match parse_frame(buf, self.limits.max_message) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if buf.is_empty() {
                        self.rbuf = None; // idle again: give the buffer back
                    }
                    return Step::Continue;
                }
                Err(e) => return Step::Close(frame_close(e)),
            };
            self.session.touch(&self.edge.core.registry.clock);
            match frame.opcode {
                OpCode::Ping => {
                    self.session.outbox.push(
                        OutItem::Frame(encode_frame(OpCode::Pong, &frame.payload)),
                        self.limits.outbox,
                    );
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    return match parse_close(&frame.payload) {
                        Ok(code) => Step::ClientClose(code),
                        Err(e) => Step::Close(frame_close(e)),
                    };
                }
                _ => match self.assemble(frame) {
                    Ok(None) => {}
                    Ok(Some((op, data))) => {
                        let binary = op == OpCode::Binary;
                        if !binary && std::str::from_utf8(&data).is_err() {
                            return Step::Close(frame_close(FrameError::InvalidUtf8));
                        }
                        if let Err(close) = handler.on_message(binary, data).await {
                            return Step::Close(close);
                        }
                    }
                    Err(e) => return Step::Close(frame_close(e)),
                },
            }
        }
    }

    /// A data frame in, the message it completes out. An unfragmented message (nearly every
    /// one) passes straight through; the assembler is boxed only while a fragmented message is
    /// in progress, so a session that sent messages does not keep one.
    fn assemble(&mut self, frame: Frame) -> Result<Option<(OpCode, Bytes)>, FrameError> {
        if self.asm.is_none() && frame.fin && matches!(frame.opcode, OpCode::Text | OpCode::Binary)
        {
            return Ok(Some((frame.opcode, frame.payload)));
        }
        let asm = self.asm.get_or_insert_with(Box::default);
        let out = asm.push(frame, self.limits.max_message);
        if !asm.in_progress() {
            self.asm = None;
        }
        out
    }

    /// Write what the outbox holds without blocking: `Done` with the close request once
    /// everything queued before it is written (or the socket would block), `Intercepts` when an
    /// intercepted broadcast must go through the channel first.
    fn flush(&mut self) -> io::Result<Flushed> {
        loop {
            let close = if self.pending.is_empty() {
                self.session.outbox.take(&mut self.pending)
            } else {
                None
            };
            if self.pending.is_empty() {
                return Ok(Flushed::Done(
                    close.or_else(|| self.session.outbox.close_requested()),
                ));
            }
            if self
                .pending
                .iter()
                .take(MAX_IOV)
                .any(|i| matches!(i, OutItem::Intercept(_)))
            {
                return Ok(Flushed::Intercepts);
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (i, item) in self.pending.iter().take(MAX_IOV).enumerate() {
                if let OutItem::Frame(b) = item {
                    iov[n_iov] = IoSlice::new(if i == 0 { &b[self.offset..] } else { b });
                    n_iov += 1;
                }
            }
            match self.stream.try_write_vectored(&iov[..n_iov]) {
                Ok(n) => {
                    let metrics = self.edge.metrics();
                    if metrics.per_message {
                        metrics.writes.inc();
                        metrics.bytes_out.inc_by(n as u64);
                    }
                    self.consume(n);
                }
                // A close requested meanwhile (a slow consumer's overflow) must not wait for a
                // client that may never read again: `close` bounds the rest in time.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Flushed::Done(self.session.outbox.close_requested()))
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn resolve_intercepts<H: Handler>(&mut self, handler: &mut H) {
        let mut i = 0;
        while i < self.pending.len().min(MAX_IOV) {
            if let OutItem::Intercept(msg) = &self.pending[i] {
                let item = OutItem::Intercept(msg.clone());
                match handler.render(item).await {
                    Some(frame) => self.pending[i] = OutItem::Frame(frame),
                    None => {
                        self.pending.remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(OutItem::Frame(front)) = self.pending.front_mut() else {
                break;
            };
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.pending.pop_front();
            if self.edge.metrics().per_message {
                self.edge.metrics().frames_out.inc();
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > 16 {
            self.pending = VecDeque::new(); // do not keep a burst's queue on an idle session
        }
    }

    /// Server-initiated close: write what is queued (bounded in time), the close frame, then
    /// wait briefly for the client's close before dropping the connection.
    async fn close<H: Handler>(&mut self, close: Close, handler: &mut H) {
        if close.code == CloseCode::SLOW_CONSUMER {
            // Drop the backlog, but finish a half-written frame so the close frame can follow.
            self.pending.truncate(usize::from(self.offset > 0));
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while !self.pending.is_empty() {
                if self.flush_all(handler).await.is_err() {
                    return;
                }
                if !self.pending.is_empty() && self.stream.writable().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if self.offset > 0 {
            return; // a frame is half written: a close frame now would corrupt the stream
        }
        let frame = encode_close(close.code, close.reason);
        if tokio::time::timeout(CLOSE_LINGER, self.stream.write_all(&frame))
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            let mut sink = vec![0u8; 512];
            loop {
                match tokio::io::AsyncReadExt::read(&mut self.stream, &mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

fn frame_close(e: FrameError) -> Close {
    let reason = match e {
        FrameError::Protocol(_) => "protocol error",
        FrameError::TooBig => "message too big",
        FrameError::InvalidUtf8 => "invalid utf-8",
    };
    Close::new(e.close_code(), reason)
}
