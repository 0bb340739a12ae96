//! Probe specs: what to run, parsed and validated once at config load. The engines take a spec
//! and return a [`crate::result::ProbeResult`]; nothing here knows about schedules or servers.

use std::time::Duration;

use crate::assert::Assertion;
use crate::capture::Capture;
use crate::template::Template;

/// Default cap on a response body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Default number of redirects followed.
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;

/// One probe: a named scenario with limits.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// Unique name, `[a-z0-9_-]+`.
    pub name: String,
    /// Whole-probe timeout, per attempt.
    pub timeout: Duration,
    /// Extra attempts after a failed one.
    pub retries: u32,
    /// Pause before the first retry; doubled for each later one.
    pub retry_backoff: Duration,
    /// The type-specific steps.
    pub kind: ProbeKind,
}

impl ProbeSpec {
    /// The type name used in reports and the `type` metric label.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            ProbeKind::Http(_) => "http",
        }
    }

    /// Step names in order.
    pub fn step_names(&self) -> Vec<&str> {
        match &self.kind {
            ProbeKind::Http(http) => http.steps.iter().map(|s| s.name.as_str()).collect(),
        }
    }
}

/// The steps of a probe, by type.
#[derive(Debug, Clone)]
pub enum ProbeKind {
    /// A multi-step HTTP scenario.
    Http(HttpProbe),
}

/// An HTTP scenario and its transport options.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    /// Steps, run in order; a failed step skips the rest.
    pub steps: Vec<HttpStep>,
    /// Skip TLS certificate verification (still records expiry).
    pub insecure: bool,
    /// Follow redirects (3xx with Location).
    pub follow_redirects: bool,
    /// At most this many redirects per step.
    pub max_redirects: u32,
    /// Cap on each response body.
    pub max_body_bytes: usize,
}

/// One HTTP request with its captures and assertions.
#[derive(Debug, Clone)]
pub struct HttpStep {
    /// Step name, unique within the probe.
    pub name: String,
    /// The request to send.
    pub request: RequestSpec,
    /// Values to take from the response, in order.
    pub captures: Vec<Capture>,
    /// Assertions, every one evaluated.
    pub asserts: Vec<Assertion>,
    /// Step timeout; the probe's remaining time bounds it too.
    pub timeout: Option<Duration>,
}

/// A request with templates in every user-supplied string.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// HTTP method, uppercase.
    pub method: String,
    /// The URL (`http` or `https`).
    pub url: Template,
    /// Headers, in order.
    pub headers: Vec<(String, Template)>,
    /// Query parameters appended to the URL.
    pub query: Vec<(String, Template)>,
    /// The body, if any.
    pub body: Option<BodySpec>,
}

/// A request body.
#[derive(Debug, Clone)]
pub enum BodySpec {
    /// JSON, sent with `Content-Type: application/json`.
    Json(JsonTemplate),
    /// Raw text.
    Text(Template),
    /// `application/x-www-form-urlencoded` fields.
    Form(Vec<(String, Template)>),
}

/// A JSON document whose strings are templates.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    /// null
    Null,
    /// true/false
    Bool(bool),
    /// A number, kept as JSON.
    Number(serde_json::Number),
    /// A string template.
    String(Template),
    /// An array.
    Array(Vec<JsonTemplate>),
    /// An object, keys in order.
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    /// Every template in the document.
    pub fn templates(&self) -> Vec<&Template> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Template>) {
        match self {
            JsonTemplate::String(t) => out.push(t),
            JsonTemplate::Array(items) => items.iter().for_each(|i| i.collect(out)),
            JsonTemplate::Object(fields) => fields.iter().for_each(|(_, v)| v.collect(out)),
            _ => {}
        }
    }
}
