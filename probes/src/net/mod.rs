//! Connections as every network engine opens them: fresh, phase by phase, with honest timings.
//!
//! - [`dial`]: resolve, TCP connect and TLS handshake under one deadline; failures classified
//! - [`tls`]: rustls configs (verifying, insecure, private CA) and what a handshake tells

pub mod dial;
pub mod tls;

pub use dial::{Dial, Endpoint, Failure, FailureKind};
