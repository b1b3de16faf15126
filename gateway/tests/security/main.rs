//! Security suite (issue 9, item 3): every way of presenting bad credentials gets the documented
//! answer on both transports, and nothing secret leaks. Owns:
//!
//! * JWT refusals on all four token carriers (WebSocket `token` param and `authToken`
//!   subprotocol, LongPoll `token` param and `X-Phoenix-AuthToken` header): expired, not yet
//!   valid, wrongly signed, tampered, `alg: none`, other HMAC algorithms, HS/RS key confusion
//!   (the RS256 public key PEM used as an HMAC secret), missing or mistyped claims, malformed and
//!   oversized tokens. WebSocket refusals are HTTP 403 before the upgrade, LongPoll refusals
//!   `{"status":403}`; each case ends by proving a witness session on both transports is still
//!   served, and the refusal metric counts exactly the refused attempts;
//! * the `topics` claim on `token` channels (`{"reason":"unauthorized"}`, other joins unaffected);
//! * the Origin allow-list on both transports; forged long-poll session tokens;
//! * the HTTP API key (missing / wrong / prefix / longer / other schemes: 401). The comparison is
//!   constant-time by construction — `http_api::constant_time_eq` (called by
//!   `http_api::authorized`) folds XOR over every byte, its only early exit being a length
//!   mismatch — so only the behaviour is asserted here, never timing;
//! * CORS headers only on `/socket/longpoll`;
//! * the real binary at `RUST_LOG=trace` writing no secret, JWT, API key or session token.
//!
//! By concern: `tokens` (JWT refusals), `topics` (the claim), `origin`, `longpoll_tokens`,
//! `http_api` (API key and CORS), `logs` (secrets never logged); `keys` makes the tokens and
//! `conn` opens sessions on both transports and keeps witnesses.

#[path = "../common/mod.rs"]
mod common;
mod conn;
mod http_api;
mod keys;
mod logs;
mod longpoll_tokens;
mod origin;
mod tokens;
mod topics;
