//! Transports move bytes between a client and its Session; they hold no protocol logic. Each
//! checks a connect the same way (`connect`), hands every complete client message to
//! `Session::on_message`, writes what the session's outbox holds, and maps a `Close` to its
//! medium: a WebSocket close frame, or a long-poll HTTP status.

pub mod connect;
pub mod echo;
pub mod longpoll;
pub mod websocket;
