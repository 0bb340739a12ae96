//! Probe results: the one record of what a run did, fed to metrics, history, reports and verdicts.
//!
//! A failed probe is data here, never an `Err`: every assertion keeps its actual and expected
//! values, every step its timings and error text, so no consumer has to re-derive what happened.

use std::time::Duration;

use serde::Serialize;

/// How a probe, step or assertion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Everything asserted held.
    Pass,
    /// The target answered, but an assertion did not hold.
    Fail,
    /// The probe could not be carried out: connection refused, DNS, TLS, a missing browser.
    Error,
    /// A step or the whole probe ran out of time.
    Timeout,
    /// Not run, because an earlier step did not pass.
    Skipped,
}

impl Outcome {
    /// The lowercase name used in reports, metrics labels and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Skipped => "skipped",
        }
    }

    /// True only for [`Outcome::Pass`].
    pub fn is_pass(self) -> bool {
        self == Outcome::Pass
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Network phases of one HTTP exchange on a fresh connection (summed over redirect hops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Name resolution; zero for IP literals.
    #[serde(serialize_with = "secs")]
    pub resolve: Duration,
    /// TCP connect.
    #[serde(serialize_with = "secs")]
    pub connect: Duration,
    /// TLS handshake; zero for plain HTTP.
    #[serde(serialize_with = "secs")]
    pub tls: Duration,
    /// From the first request byte written to the first response byte read.
    #[serde(serialize_with = "secs")]
    pub processing: Duration,
    /// From the first response byte to the end of the body.
    #[serde(serialize_with = "secs")]
    pub transfer: Duration,
}

impl Phases {
    /// Phase names in the order they happen, as used in the `phase` metric label.
    pub const NAMES: [&'static str; 5] = ["resolve", "connect", "tls", "processing", "transfer"];

    /// The phases as (name, duration) pairs in [`Phases::NAMES`] order.
    pub fn iter(&self) -> [(&'static str, Duration); 5] {
        [
            ("resolve", self.resolve),
            ("connect", self.connect),
            ("tls", self.tls),
            ("processing", self.processing),
            ("transfer", self.transfer),
        ]
    }

    /// Adds another hop's phases to these.
    pub fn add(&mut self, other: &Phases) {
        self.resolve += other.resolve;
        self.connect += other.connect;
        self.tls += other.tls;
        self.processing += other.processing;
        self.transfer += other.transfer;
    }
}

/// One assertion's evaluation: what was asked, what was found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssertResult {
    /// The assertion as written in the config (templates unrendered).
    pub expr: String,
    /// `pass`, `fail` (also when the query found nothing usable, e.g. a body that is not JSON:
    /// `message` says why), or `error` when the values cannot be compared at all.
    pub result: Outcome,
    /// What the query found, rendered for humans; `None` when nothing was found.
    pub actual: Option<String>,
    /// The expected side, rendered (secrets masked).
    pub expected: String,
    /// Why the assertion could not be judged normally (body not JSON, values not comparable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Request and response detail kept for `-v` output and failure artifacts (secrets masked).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Exchange {
    /// `METHOD URL` of the last request sent.
    pub request_line: String,
    /// Request headers as sent.
    pub request_headers: Vec<(String, String)>,
    /// Request body as sent, truncated for display.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// Response headers as received.
    pub response_headers: Vec<(String, String)>,
    /// The start of the response body, truncated for display.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

/// The result of one step of a probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult {
    /// The step's name (given, or derived from its request).
    pub name: String,
    /// How the step ended.
    pub result: Outcome,
    /// Wall time of the step, from request start to assertions done.
    #[serde(rename = "duration_seconds", serialize_with = "secs")]
    pub duration: Duration,
    /// HTTP status of the final response, for HTTP steps that got one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Network phase timings, for steps that made a network exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
    /// Every assertion of the step, in config order.
    pub asserts: Vec<AssertResult>,
    /// What broke, when the step errored, timed out or failed outside an assertion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds at which the earliest peer certificate expires, for TLS exchanges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<i64>,
    /// The negotiated TLS version (`TLS 1.3`), for steps that did a TLS handshake (the last
    /// one, after redirects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// Paths of files saved for this step (screenshots, page HTML, response bodies).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Request/response detail for verbose output; not part of the JSON report.
    #[serde(skip)]
    pub exchange: Option<Exchange>,
    /// Navigation timings of a browser `goto` step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vitals: Option<WebVitals>,
}

/// Navigation timings of one page load, in seconds from navigation start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WebVitals {
    /// Time to first byte.
    pub ttfb: Option<f64>,
    /// First contentful paint.
    pub fcp: Option<f64>,
    /// Largest contentful paint.
    pub lcp: Option<f64>,
    /// DOMContentLoaded event end.
    pub dom_content_loaded: Option<f64>,
    /// Load event end.
    pub load: Option<f64>,
}

impl WebVitals {
    /// The vitals that were measured, as (name, seconds) with the `vital` label's names.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("ttfb", self.ttfb),
            ("fcp", self.fcp),
            ("lcp", self.lcp),
            ("dom_content_loaded", self.dom_content_loaded),
            ("load", self.load),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
    }
}

impl StepResult {
    /// A step that was not run because an earlier one did not pass.
    pub fn skipped(name: impl Into<String>) -> Self {
        StepResult {
            name: name.into(),
            result: Outcome::Skipped,
            duration: Duration::ZERO,
            status: None,
            phases: None,
            asserts: Vec::new(),
            error: None,
            cert_not_after: None,
            tls_version: None,
            artifacts: Vec::new(),
            exchange: None,
            vitals: None,
        }
    }

    /// The assertions that did not pass.
    pub fn failed_asserts(&self) -> impl Iterator<Item = &AssertResult> {
        self.asserts.iter().filter(|a| !a.result.is_pass())
    }
}

/// One attempt of a probe; a run with retries has several, the first one kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// How this attempt ended.
    pub result: Outcome,
    /// Wall time of this attempt.
    #[serde(rename = "duration_seconds", serialize_with = "secs")]
    pub duration: Duration,
    /// The step results of this attempt.
    pub steps: Vec<StepResult>,
}

/// The result of one run of a probe: the final attempt's steps plus every attempt's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeResult {
    /// This run's id (artifacts live under `<probe>/<id>/`).
    pub id: String,
    /// Probe name.
    pub name: String,
    /// Probe type (`http`, `browser`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// How the run ended (the last attempt's outcome).
    pub result: Outcome,
    /// Wall time of the whole run, all attempts included.
    #[serde(rename = "duration_seconds", serialize_with = "secs")]
    pub duration: Duration,
    /// Number of attempts made (1 without retries).
    pub attempts: u32,
    /// Outcome of the first attempt: a pass after a retry is still a flaky run.
    pub first_attempt: Outcome,
    /// Unix milliseconds when the run started.
    pub started_at_ms: i64,
    /// Steps of the last attempt.
    pub steps: Vec<StepResult>,
    /// Earlier attempts that did not pass, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retried: Vec<Attempt>,
    /// A probe-level error (timeout of the whole probe, internal fault).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProbeResult {
    /// The earliest certificate expiry seen by any step, in unix seconds.
    pub fn earliest_cert_expiry(&self) -> Option<i64> {
        self.steps.iter().filter_map(|s| s.cert_not_after).min()
    }

    /// The TLS version the last handshaking step negotiated (`TLS 1.3`).
    pub fn tls_version(&self) -> Option<&str> {
        self.steps
            .iter()
            .rev()
            .find_map(|s| s.tls_version.as_deref())
    }

    /// Time the run's steps spent resolving names (a `dns` probe's queries), when any step
    /// made a network exchange.
    pub fn lookup_time(&self) -> Option<Duration> {
        let mut phases = self
            .steps
            .iter()
            .filter_map(|s| s.phases.as_ref())
            .peekable();
        phases.peek()?;
        Some(phases.map(|p| p.resolve).sum())
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
