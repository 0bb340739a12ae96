//! `patrol-probes`: Patrol's probe model and engines. A [`spec::ProbeSpec`] goes in, a
//! [`result::ProbeResult`] comes out; no scheduling, metrics registry or server lives here.
//!
//! Layout:
//! - [`spec`]: probe and step specs, parsed once at config load
//! - [`template`]: `{{ … }}` templates, the run [`template::Scope`] and the secret [`template::Masker`]
//! - [`syntax`]: the lexer shared by assertions and captures
//! - [`query`]: what assertions and captures read from a response
//! - [`assert`]: assertions with actual vs expected results
//! - [`capture`]: values taken from a response into later steps
//! - [`value`]: values and their comparisons
//! - [`result`]: probe, step and assertion results
//! - [`net`]: fresh connections with timed resolve, connect and TLS phases; shared TLS configs
//! - [`http`]: the HTTP scenario engine and its phase-timing transport
//! - [`infra`]: infrastructure probes: tcp, dns, tls, redis and postgres steps
//! - [`browser`]: browser probes in headless Chromium over WebDriver, chromedriver supervised
//! - [`artifacts`]: screenshots, page HTML and bodies of failed runs, newest N kept
//! - [`run`]: running a probe with its timeout and retries

pub mod artifacts;
pub mod assert;
pub mod browser;
pub mod capture;
pub mod http;
pub mod infra;
pub mod net;
pub mod query;
pub mod result;
pub mod run;
pub mod spec;
pub mod syntax;
pub mod template;
pub mod value;
