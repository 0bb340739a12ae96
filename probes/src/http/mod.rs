//! The HTTP scenario engine: steps of requests, captures and assertions over a transport that
//! opens a fresh connection per request and times every phase.
//!
//! - [`transport`]: HTTP/1.1 on a fresh TCP/TLS connection with resolve, connect, tls,
//!   processing and transfer timings
//! - [`cookies`]: the per-run cookie jar
//! - [`engine`]: runs a probe's steps in order and builds their results

pub mod cookies;
pub mod engine;
pub mod transport;
