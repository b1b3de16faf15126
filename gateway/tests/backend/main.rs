//! Backend hooks (issue 13) against the REAL example backend, `gateway/examples/backend.py`,
//! started with `python3` on a free port (it checks every request's `X-Gateway-Signature`).
//! Owns:
//!
//! * `hooks`: connect (params checked, 403 on both transports, the id as the session id), joins
//!   accepted and refused with the backend's response, events answered with replies,
//!   broadcasts, broadcasts from the sender and pushes, assigns and their cap, the leave hook,
//!   the signature, 200 rapid pushes handled in order;
//! * `failures`: a backend that is slow, down, crashing or answering garbage gets the documented
//!   reasons (connect: HTTP 503), the in-flight bound fails fast with `backend busy`, metrics
//!   count it all, and a slow backend stalls neither heartbeats nor other sessions' broadcasts;
//! * `cluster`: a broadcast the backend asks for reaches the other node through Redis.
//!
//! `support` starts the backend and builds the nodes' config.

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod failures;
mod hooks;
mod support;
