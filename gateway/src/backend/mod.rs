//! Backend hooks: an HTTP backend in any language plays the Phoenix channel module. This module
//! owns the wire contract with it (`contract`: the JSON bodies of `connect`, `join`, `event` and
//! `leave` and the answers accepted) and the node's pooled, signed, bounded HTTP client
//! (`client`). The channel that calls it lives in `channel::backend`, the connect step in
//! `transport::connect`.

mod client;
pub mod contract;

pub use client::{signature, Backend, BackendError, Hook};
pub use contract::{Assigns, SessionInfo};
