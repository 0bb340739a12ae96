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
            ProbeKind::Browser(_) => "browser",
        }
    }

    /// Step names in order.
    pub fn step_names(&self) -> Vec<&str> {
        match &self.kind {
            ProbeKind::Http(http) => http.steps.iter().map(|s| s.name.as_str()).collect(),
            ProbeKind::Browser(b) => b.steps.iter().map(|s| s.name.as_str()).collect(),
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
