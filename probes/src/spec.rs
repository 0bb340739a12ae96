//! Probe specs: what to run, parsed and validated once at config load. The engines take a spec
//! and return a [`crate::result::ProbeResult`]; nothing here knows about schedules or servers.

use std::path::PathBuf;
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
        match &self.kind {
            ProbeKind::Http(_) => "http",
            ProbeKind::Browser(_) => "browser",
            ProbeKind::Infra(infra) => infra.protocol.name(),
        }
    }

    /// Step names in order.
    pub fn step_names(&self) -> Vec<&str> {
        match &self.kind {
            ProbeKind::Http(http) => http.steps.iter().map(|s| s.name.as_str()).collect(),
            ProbeKind::Browser(b) => b.steps.iter().map(|s| s.name.as_str()).collect(),
            ProbeKind::Infra(i) => i.steps.iter().map(|s| s.name.as_str()).collect(),
        }
    }
}

/// The steps of a probe, by type.
#[derive(Debug, Clone)]
pub enum ProbeKind {
    /// A multi-step HTTP scenario.
    Http(HttpProbe),
    /// A scenario in real headless Chromium over WebDriver.
    Browser(BrowserProbe),
    /// Infrastructure checks: TCP, DNS, TLS, Redis or PostgreSQL.
    Infra(InfraProbe),
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

/// A browser scenario: steps run in order in one fresh session.
#[derive(Debug, Clone)]
pub struct BrowserProbe {
    /// Steps, run in order; a failed step skips the rest.
    pub steps: Vec<BrowserStep>,
    /// Window size and mobile emulation for the whole session.
    pub viewport: Option<Viewport>,
    /// Accept invalid TLS certificates in the browser.
    pub insecure: bool,
}

/// Window size, optionally emulating a mobile device (touch, mobile user agent, device scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Viewport {
    /// CSS pixels.
    pub width: u32,
    /// CSS pixels.
    pub height: u32,
    /// Emulate a phone: touch events, a mobile user agent, device pixel ratio 3.
    pub mobile: bool,
}

/// One browser step.
#[derive(Debug, Clone)]
pub struct BrowserStep {
    /// Step name, unique within the probe.
    pub name: String,
    /// What the step does.
    pub action: BrowserAction,
    /// Step timeout (waits and navigations); the probe's remaining time bounds it too.
    pub timeout: Option<Duration>,
}

/// How text is compared in browser assertions.
#[derive(Debug, Clone)]
pub enum TextMatch {
    /// The text contains this.
    Contains(Template),
    /// The text (trimmed) equals this.
    Equals(Template),
    /// The text matches this regex (compiled at run time after rendering).
    Matches(Template),
}

impl TextMatch {
    /// The template compared against.
    pub fn template(&self) -> &Template {
        match self {
            TextMatch::Contains(t) | TextMatch::Equals(t) | TextMatch::Matches(t) => t,
        }
    }
}

/// What a browser step does. Selectors are CSS selectors (templates).
#[derive(Debug, Clone)]
pub enum BrowserAction {
    /// Navigate to a URL and wait for the load event; records web vitals.
    Goto(Template),
    /// Click the first element matching the selector (waits for it to be visible).
    Click(Template),
    /// Type text into an input (cleared first).
    Fill {
        /// Input selector.
        selector: Template,
        /// Text to type.
        text: Template,
    },
    /// Press a key (e.g. `Enter`, `Tab`) in an element, or the focused element.
    Press {
        /// Element to send the key to; the focused element when absent.
        selector: Option<Template>,
        /// Key name: Enter, Tab, Escape, ArrowDown, ... or a single character.
        key: String,
    },
    /// Choose an option of a `<select>` by value.
    Select {
        /// The select element.
        selector: Template,
        /// The option's value.
        value: Template,
    },
    /// Wait until an element is visible.
    WaitFor(Template),
    /// Wait until the URL matches.
    WaitForUrl(TextMatch),
    /// Assert on an element's visible text.
    AssertText {
        /// The element.
        selector: Template,
        /// The comparison.
        expect: TextMatch,
    },
    /// Assert on the current URL.
    AssertUrl(TextMatch),
    /// Assert on the page title.
    AssertTitle(TextMatch),
    /// Assert an element is visible.
    AssertVisible(Template),
    /// Assert no element matching is visible.
    AssertHidden(Template),
    /// Assert how many elements match, e.g. `>= 1`.
    AssertCount {
        /// The selector.
        selector: Template,
        /// Comparison operator: ==, !=, <, <=, >, >=.
        op: String,
        /// The count compared against.
        count: u64,
    },
    /// Run JavaScript (a function body); it must return a truthy value.
    Eval(Template),
    /// Take an element's text (or an attribute) into a variable for later steps.
    Capture {
        /// Variable name.
        name: String,
        /// The element.
        selector: Template,
        /// An attribute instead of the text.
        attribute: Option<String>,
    },
    /// Save a screenshot as an artifact.
    Screenshot(String),
    /// Resize the window (and switch mobile emulation) mid-session.
    Viewport(Viewport),
    /// Fail when the browser logged errors (SEVERE) since the session began, except those
    /// matching one of the ignore patterns.
    AssertNoConsoleErrors {
        /// Regexes of messages to ignore.
        ignore: Vec<regex::Regex>,
    },
}

impl BrowserAction {
    /// The action's config key, for names and messages.
    pub fn keyword(&self) -> &'static str {
        match self {
            BrowserAction::Goto(_) => "goto",
            BrowserAction::Click(_) => "click",
            BrowserAction::Fill { .. } => "fill",
            BrowserAction::Press { .. } => "press",
            BrowserAction::Select { .. } => "select",
            BrowserAction::WaitFor(_) => "wait_for",
            BrowserAction::WaitForUrl(_) => "wait_for_url",
            BrowserAction::AssertText { .. } => "assert_text",
            BrowserAction::AssertUrl(_) => "assert_url",
            BrowserAction::AssertTitle(_) => "assert_title",
            BrowserAction::AssertVisible(_) => "assert_visible",
            BrowserAction::AssertHidden(_) => "assert_hidden",
            BrowserAction::AssertCount { .. } => "assert_count",
            BrowserAction::Eval(_) => "eval",
            BrowserAction::Capture { .. } => "capture",
            BrowserAction::Screenshot(_) => "screenshot",
            BrowserAction::Viewport(_) => "viewport",
            BrowserAction::AssertNoConsoleErrors { .. } => "assert_no_console_errors",
        }
    }

    /// Every template of the action.
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            BrowserAction::Goto(t)
            | BrowserAction::Click(t)
            | BrowserAction::WaitFor(t)
            | BrowserAction::AssertVisible(t)
            | BrowserAction::AssertHidden(t)
            | BrowserAction::Eval(t) => vec![t],
            BrowserAction::Fill { selector, text } => vec![selector, text],
            BrowserAction::Press { selector, .. } => selector.iter().collect(),
            BrowserAction::Select { selector, value } => vec![selector, value],
            BrowserAction::WaitForUrl(m)
            | BrowserAction::AssertUrl(m)
            | BrowserAction::AssertTitle(m) => {
                vec![m.template()]
            }
            BrowserAction::AssertText { selector, expect } => vec![selector, expect.template()],
            BrowserAction::AssertCount { selector, .. }
            | BrowserAction::Capture { selector, .. } => vec![selector],
            BrowserAction::Screenshot(_)
            | BrowserAction::Viewport(_)
            | BrowserAction::AssertNoConsoleErrors { .. } => Vec::new(),
        }
    }
}

/// The infrastructure probe types, each named as in `type:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `tcp`: connect, optionally TLS, send and expect a reply.
    Tcp,
    /// `dns`: one query against the system resolver or a given server.
    Dns,
    /// `tls`: a handshake only, for the certificate and protocol.
    Tls,
    /// `redis`: commands over RESP.
    Redis,
    /// `postgres`: one SQL query in a read-only session.
    Postgres,
}

/// Queries every infrastructure step offers.
const COMMON_QUERIES: [&str; 1] = ["duration"];
/// Queries of steps that may do a TLS handshake.
const TLS_QUERIES: [&str; 5] = ["cert_expiry", "issuer", "subject", "sans", "tls_version"];

impl Protocol {
    /// Every infrastructure type.
    pub const ALL: [Protocol; 5] = [
        Protocol::Tcp,
        Protocol::Dns,
        Protocol::Tls,
        Protocol::Redis,
        Protocol::Postgres,
    ];

    /// The `type:` name, also the `type` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Dns => "dns",
            Protocol::Tls => "tls",
            Protocol::Redis => "redis",
            Protocol::Postgres => "postgres",
        }
    }

    /// The type named `name`.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The query keywords assertions and captures of this type's steps can use.
    pub fn queries(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            Protocol::Tcp => &["reply", "regex"],
            Protocol::Dns => &["rcode", "answers"],
            Protocol::Tls => &[],
            Protocol::Redis => &["reply", "replies", "regex"],
            Protocol::Postgres => &["rows", "value", "column"],
        };
        let mut out: Vec<&'static str> = own.to_vec();
        out.extend(COMMON_QUERIES);
        if self != Protocol::Dns {
            out.extend(TLS_QUERIES);
        }
        out
    }
}

/// An infrastructure probe: steps of one type, each on a fresh connection.
#[derive(Debug, Clone)]
pub struct InfraProbe {
    /// The probe's type; every step is a check of this type.
    pub protocol: Protocol,
    /// Steps, run in order; a failed step skips the rest.
    pub steps: Vec<InfraStep>,
    /// Skip TLS certificate verification (still records expiry and the certificate's fields).
    pub insecure: bool,
}

/// One check with its captures and assertions.
#[derive(Debug, Clone)]
pub struct InfraStep {
    /// Step name, unique within the probe.
    pub name: String,
    /// What to do.
    pub check: Check,
    /// Values to take from what was observed, in order.
    pub captures: Vec<Capture>,
    /// Assertions, every one evaluated.
    pub asserts: Vec<Assertion>,
    /// Step timeout; the probe's remaining time bounds it too.
    pub timeout: Option<Duration>,
}

/// What an infrastructure step does.
#[derive(Debug, Clone)]
pub enum Check {
    /// Connect, optionally TLS, send and expect.
    Tcp(TcpCheck),
    /// Resolve a name.
    Dns(DnsCheck),
    /// Handshake only.
    Tls(TlsCheck),
    /// Run Redis commands.
    Redis(RedisCheck),
    /// Run a SQL query.
    Postgres(PostgresCheck),
}

impl Check {
    /// The type of probe this check belongs to.
    pub fn protocol(&self) -> Protocol {
        match self {
            Check::Tcp(_) => Protocol::Tcp,
            Check::Dns(_) => Protocol::Dns,
            Check::Tls(_) => Protocol::Tls,
            Check::Redis(_) => Protocol::Redis,
            Check::Postgres(_) => Protocol::Postgres,
        }
    }

    /// Every template of the check.
    pub fn templates(&self) -> Vec<&Template> {
        let mut out = Vec::new();
        match self {
            Check::Tcp(c) => {
                out.push(&c.address);
                out.extend(c.tls.server_name.iter());
                out.extend(c.send.iter());
                out.extend(c.expect.iter());
            }
            Check::Dns(c) => {
                out.push(&c.name);
                out.extend(c.server.iter());
            }
            Check::Tls(c) => {
                out.push(&c.address);
                out.extend(c.tls.server_name.iter());
            }
            Check::Redis(c) => {
                out.push(&c.address);
                out.extend(c.tls.server_name.iter());
                out.extend(c.username.iter());
                out.extend(c.password.iter());
                out.extend(c.commands.iter().flatten());
            }
            Check::Postgres(c) => {
                out.push(&c.dsn);
                out.extend(c.tls.server_name.iter());
                out.extend(c.password.iter());
                out.push(&c.query);
            }
        }
        out
    }
}

/// TLS settings of a check that may speak TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// The name sent as SNI and verified; the host of the address when absent.
    pub server_name: Option<Template>,
    /// Trust only the CA certificates in this PEM file instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
}

/// `tcp`: connect to `address`; optionally TLS, send bytes and read until `expect` matches.
#[derive(Debug, Clone)]
pub struct TcpCheck {
    /// `host:port`.
    pub address: Template,
    /// Do a TLS handshake after connecting.
    pub use_tls: bool,
    /// SNI, verification name and CA.
    pub tls: TlsOptions,
    /// Bytes to send once connected.
    pub send: Option<Template>,
    /// A regex the reply must match; reading stops once it does.
    pub expect: Option<Template>,
}

/// `dns`: one query.
#[derive(Debug, Clone)]
pub struct DnsCheck {
    /// The name to resolve (absolute; no search domains).
    pub name: Template,
    /// The record type: A, AAAA, CNAME, TXT, MX, NS, SOA, SRV, CAA, PTR.
    pub record: String,
    /// `host[:port]` of the server to ask; the system's resolver (/etc/hosts, then
    /// /etc/resolv.conf's nameservers) when absent.
    pub server: Option<Template>,
    /// Ask over TCP instead of UDP (UDP falls back to TCP on a truncated answer anyway).
    pub tcp: bool,
}

/// `tls`: a handshake with `address`, nothing sent.
#[derive(Debug, Clone)]
pub struct TlsCheck {
    /// `host:port`.
    pub address: Template,
    /// SNI, verification name and CA.
    pub tls: TlsOptions,
}

/// `redis`: authenticate, select a database, run commands in order.
#[derive(Debug, Clone)]
pub struct RedisCheck {
    /// `host:port`.
    pub address: Template,
    /// Speak TLS (what `rediss://` means).
    pub use_tls: bool,
    /// SNI, verification name and CA.
    pub tls: TlsOptions,
    /// ACL user name (Redis 6+); `default` when only a password is given.
    pub username: Option<Template>,
    /// The password (`AUTH`); masked everywhere.
    pub password: Option<Template>,
    /// Database number (`SELECT`).
    pub database: Option<u32>,
    /// Commands, each a list of arguments; `[[PING]]` by default.
    pub commands: Vec<Vec<Template>>,
}

/// How a PostgreSQL connection uses TLS, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, certificate not verified (libpq's default).
    Prefer,
    /// TLS or fail, certificate not verified.
    Require,
    /// TLS or fail, certificate chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    pub fn parse(text: &str) -> Result<SslMode, String> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" | "verify-ca" => Err(format!(
                "sslmode `{text}` is not supported; use disable, prefer, require or verify-full"
            )),
            other => Err(format!(
                "unknown sslmode `{other}`; use disable, prefer, require or verify-full"
            )),
        }
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// `postgres`: connect with a DSN and run one query in a (by default read-only) session.
#[derive(Debug, Clone)]
pub struct PostgresCheck {
    /// `postgres://user@host:port/db?sslmode=…` or `host=… user=… dbname=…`.
    pub dsn: Template,
    /// The password, overriding one in the DSN; masked everywhere.
    pub password: Option<Template>,
    /// The SQL (simple protocol: several statements allowed, results as text).
    pub query: Template,
    /// Server-side `statement_timeout`; the step's remaining time when absent.
    pub statement_timeout: Option<Duration>,
    /// Start the session with `default_transaction_read_only = on`.
    pub read_only: bool,
    /// TLS mode, overriding the DSN's `sslmode`; the DSN's, else `prefer`, when absent.
    pub sslmode: Option<SslMode>,
    /// Server name and CA file (`verify-full`).
    pub tls: TlsOptions,
}
