//! Infrastructure probes — `tcp`, `dns`, `tls`, `redis`, `postgres` — on the same model as HTTP
//! steps: each step renders its templates, opens a fresh connection (timing resolve, connect
//! and tls), does its check, puts what it saw into an [`Observation`] as named values, and is
//! judged by the same captures and assertions. A step that does not pass skips the rest.
//!
//! - [`tcp`]: connect, optional TLS, send, read until `expect` matches
//! - [`dns`]: one query to a given server or the system's resolver, no cache
//! - [`tls`]: a handshake only: certificate fields, expiry, protocol version
//! - [`redis`]: AUTH, SELECT and commands over a small RESP2 client
//! - [`postgres`]: one query in a read-only session with a statement timeout

// A `Failed` carries the phases and the handshake seen so far (~250 bytes); there is one per
// failed step, so boxing it would buy nothing measurable.
#![allow(clippy::result_large_err)]

pub mod dns;
pub mod postgres;
pub mod redis;
pub mod tcp;
pub mod tls;

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use crate::net::tls::{Handshake, TlsConfigs, server_name};
use crate::net::{Dial, Endpoint, Failure, FailureKind};
use crate::query::{Observation, named};
use crate::result::{AssertResult, Exchange, Outcome, Phases, StepResult};
use crate::spec::{Check, InfraProbe, InfraStep, TlsOptions};
use crate::template::{Masker, Scope, Template};
use crate::value::Value;

/// How much of a reply `-v` output keeps.
const SHOWN_REPLY_BYTES: usize = 4096;

/// Runs the steps of `probe` once, within `deadline`.
pub async fn run_steps(
    probe: &InfraProbe,
    tls: &TlsConfigs,
    scope: &mut Scope,
    masker: &Masker,
    deadline: tokio::time::Instant,
) -> Vec<StepResult> {
    let mut results = Vec::with_capacity(probe.steps.len());
    let mut blocked = false;
    for step in &probe.steps {
        if blocked {
            results.push(StepResult::skipped(&step.name));
            continue;
        }
        let step_deadline = match step.timeout {
            Some(t) => deadline.min(tokio::time::Instant::now() + t),
            None => deadline,
        };
        let ctx = Ctx {
            tls,
            insecure: probe.insecure,
            deadline: step_deadline,
        };
        let result = run_step(step, &ctx, scope, masker).await;
        blocked = !result.result.is_pass();
        results.push(result);
    }
    results
}

async fn run_step(
    step: &InfraStep,
    ctx: &Ctx<'_>,
    scope: &mut Scope,
    masker: &Masker,
) -> StepResult {
    let started = Instant::now();
    let mut result = StepResult::skipped(&step.name);
    let checked = match &step.check {
        Check::Tcp(c) => tcp::run(c, ctx, scope).await,
        Check::Dns(c) => dns::run(c, ctx, scope).await,
        Check::Tls(c) => tls::run(c, ctx, scope).await,
        Check::Redis(c) => redis::run(c, ctx, scope).await,
        Check::Postgres(c) => postgres::run(c, ctx, scope).await,
    };
    result.duration = started.elapsed();
    // Passwords rendered during the check are secrets from here on.
    let masker = masker.with(scope.secret_values());
    let observed = match checked {
        Ok(o) => o,
        Err(failed) => {
            result.result = failed.outcome;
            result.error = Some(masker.mask(&failed.message));
            result.phases = Some(failed.phases);
            record_handshake(&mut result, failed.handshake.as_ref());
            result.exchange = Some(show(&failed.request_line, "", &masker));
            return result;
        }
    };
    result.phases = Some(observed.phases);
    record_handshake(&mut result, observed.handshake.as_ref());
    result.exchange = Some(show(&observed.request_line, &observed.shown_reply, &masker));
    let mut values = observed.values;
    if let Some(h) = &observed.handshake {
        handshake_values(h, &mut values);
    }
    let obs = Observation::new(
        None,
        &[],
        &observed.body,
        result.duration,
        result.cert_not_after,
    )
    .with_values(&values);
    let mut problems = Vec::new();
    for capture in &step.captures {
        match capture.extract(&obs) {
            Ok(value) => scope.set(&capture.name, value),
            Err(e) => problems.push(e),
        }
    }
    result.asserts = observed.asserts;
    result.asserts.extend(
        step.asserts
            .iter()
            .map(|a| a.evaluate(&obs, scope, &masker)),
    );
    problems.extend(observed.problem);
    let failed = result.asserts.iter().any(|a| !a.result.is_pass());
    result.result = if failed || !problems.is_empty() {
        Outcome::Fail
    } else {
        Outcome::Pass
    };
    if !problems.is_empty() {
        result.error = Some(masker.mask(&problems.join("; ")));
    }
    result
}

fn record_handshake(result: &mut StepResult, handshake: Option<&Handshake>) {
    if let Some(h) = handshake {
        result.cert_not_after = h.not_after;
        result.tls_version = h.version.clone();
    }
}

/// The certificate fields as named values for `issuer`, `subject`, `sans` and `tls_version`.
fn handshake_values(h: &Handshake, values: &mut Vec<(String, Value)>) {
    let text = |v: &Option<String>| v.clone().map(Value::Text);
    for (name, value) in [
        (named::ISSUER, text(&h.issuer)),
        (named::SUBJECT, text(&h.subject)),
        (named::TLS_VERSION, text(&h.version)),
    ] {
        if let Some(v) = value {
            values.push((name.to_string(), v));
        }
    }
    if h.subject.is_some() {
        let sans = h.sans.iter().cloned().map(Value::Text).collect();
        values.push((named::SANS.to_string(), Value::List(sans)));
    }
}

fn show(request_line: &str, reply: &str, masker: &Masker) -> Exchange {
    let mut shown = masker.mask_prefix(reply, SHOWN_REPLY_BYTES);
    if reply.len() > SHOWN_REPLY_BYTES {
        shown.push_str(&format!("… ({} bytes in all)", reply.len()));
    }
    Exchange {
        request_line: masker.mask(request_line),
        response_body: (!shown.is_empty()).then_some(shown),
        ..Exchange::default()
    }
}

/// What one step's check shares: TLS configs, the probe's `insecure`, the step's deadline.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    tls: &'a TlsConfigs,
    insecure: bool,
    deadline: tokio::time::Instant,
}

impl Ctx<'_> {
    /// A TLS handshake over `stream` with the name, CA and verification the options ask for.
    async fn handshake<S>(
        &self,
        dial: &mut Dial,
        options: &TlsOptions,
        endpoint: &Endpoint,
        scope: &mut Scope,
        stream: S,
    ) -> Result<(TlsStream<S>, Handshake), Failed>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self.server_name(options, endpoint, scope)?;
        let (config, server) = self.tls_config(options, &name)?;
        dial.tls(config, server, &name, stream)
            .await
            .map_err(Failed::from)
    }

    /// The name to verify: `server_name` rendered, else the endpoint's host.
    fn server_name(
        &self,
        options: &TlsOptions,
        endpoint: &Endpoint,
        scope: &mut Scope,
    ) -> Result<String, Failed> {
        match &options.server_name {
            Some(t) => render(t, scope, "server_name"),
            None => Ok(endpoint.host_text()),
        }
    }

    fn tls_config(
        &self,
        options: &TlsOptions,
        name: &str,
    ) -> Result<
        (
            std::sync::Arc<rustls::ClientConfig>,
            rustls::pki_types::ServerName<'static>,
        ),
        Failed,
    > {
        let server = server_name(name).map_err(Failed::error)?;
        let config = self
            .tls
            .for_probe(self.insecure, options.ca_file.as_deref())
            .map_err(Failed::error)?;
        Ok((config, server))
    }
}

/// What a check observed.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    phases: Phases,
    /// Named values for the queries ([`named`]).
    values: Vec<(String, Value)>,
    /// The raw reply, for `regex`.
    body: Vec<u8>,
    handshake: Option<Handshake>,
    /// Checks the step makes itself (`expect`), reported before the user's assertions.
    asserts: Vec<AssertResult>,
    /// A failure outside any assertion (a Redis error reply), reported with them.
    problem: Option<String>,
    /// What was asked, for `-v` output (no secrets: masked anyway).
    request_line: String,
    /// What was answered, for `-v` output.
    shown_reply: String,
}

/// Why a check produced nothing to assert on.
#[derive(Debug)]
pub(crate) struct Failed {
    outcome: Outcome,
    message: String,
    phases: Phases,
    handshake: Option<Handshake>,
    request_line: String,
}

impl Failed {
    /// The check could not be carried out.
    fn error(message: impl Into<String>) -> Failed {
        Failed {
            outcome: Outcome::Error,
            message: message.into(),
            phases: Phases::default(),
            handshake: None,
            request_line: String::new(),
        }
    }

    fn with(mut self, dial: &Dial, handshake: Option<&Handshake>, request_line: &str) -> Failed {
        if self.phases == Phases::default() {
            self.phases = dial.phases;
        }
        if self.handshake.is_none() {
            self.handshake = handshake.cloned();
        }
        self.request_line = request_line.to_string();
        self
    }
}

impl Failed {
    fn with_line(mut self, request_line: &str) -> Failed {
        self.request_line = request_line.to_string();
        self
    }
}

impl From<Failure> for Failed {
    fn from(f: Failure) -> Failed {
        Failed {
            outcome: if f.kind == FailureKind::Timeout {
                Outcome::Timeout
            } else {
                Outcome::Error
            },
            message: f.message,
            phases: f.phases,
            handshake: None,
            request_line: String::new(),
        }
    }
}

/// Renders a template of the check, naming the field when it cannot.
fn render(t: &Template, scope: &mut Scope, what: &str) -> Result<String, Failed> {
    t.render(scope)
        .map_err(|e| Failed::error(format!("could not render `{what}`: {e}")))
}

/// The reply text for messages: one line, at most 200 characters.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    let short: String = text.chars().take(200).collect();
    let short = format!("{short:?}");
    if text.chars().count() > 200 {
        format!("{short}…")
    } else {
        short
    }
}
