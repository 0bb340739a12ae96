//! Runs a browser probe's steps in one session, in order; a step that does not pass skips the
//! rest, and the first such step gets a screenshot and the page's HTML as artifacts.
//!
//! Every WebDriver call sits under a deadline, so a hung Chromium ends a step as `timeout`
//! instead of hanging the run. Waits poll every [`POLL`]: elements are located with one script
//! per poll (count, first visible match, its text, enabled state), actions go through WebDriver
//! so the page sees real input events.
//!
//! Outcomes: the page lacking what a step waits for is `fail` (the target answered); the probe's
//! deadline cutting a wait or navigation short, or the browser not answering, is `timeout`;
//! chromedriver or Chromium failing (session gone, connection lost, bad selector) is `error`.

use std::future::Future;
use std::time::Duration;

use fantoccini::Client;
use fantoccini::elements::{Element, ElementRef};
use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::key::Key;
use fantoccini::wd::TimeoutConfiguration;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::console::Console;
use super::session::Session;
use super::{emulation, fmt_duration, vitals};
use crate::artifacts::RunArtifacts;
use crate::result::{AssertResult, Outcome, StepResult};
use crate::spec::{BrowserAction, BrowserProbe, BrowserStep, TextMatch, Viewport};
use crate::template::{Masker, Scope, Template};

/// How often waits look again.
const POLL: Duration = Duration::from_millis(50);
/// Default wait for an element or URL when the step sets no timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// Default time an assertion keeps retrying before it fails.
const DEFAULT_ASSERT_WAIT: Duration = Duration::from_secs(5);
/// A single WebDriver call may outlive its wait by this much before it counts as hung.
const CALL_GRACE: Duration = Duration::from_secs(2);
/// Time allowed for the failure screenshot and page HTML.
const ARTIFACT_TIME: Duration = Duration::from_secs(3);
/// Element texts, URLs and script values are cut to this many characters in results.
const SHOWN_CHARS: usize = 200;

/// Why a step did not pass, outside its assertions.
#[derive(Debug, Clone)]
pub(crate) struct Broke {
    /// `fail`, `error` or `timeout`.
    pub outcome: Outcome,
    /// What broke, for the step's `error`.
    pub message: String,
    /// The session cannot serve artifacts: chromedriver or Chromium is gone, or a call is still
    /// stuck in it (commands of a session run one at a time).
    pub unusable: bool,
}

impl Broke {
    pub(crate) fn fail(message: String) -> Broke {
        Broke {
            outcome: Outcome::Fail,
            message,
            unusable: false,
        }
    }

    pub(crate) fn error(message: String) -> Broke {
        Broke {
            outcome: Outcome::Error,
            message,
            unusable: false,
        }
    }

    pub(crate) fn timeout(message: String) -> Broke {
        Broke {
            outcome: Outcome::Timeout,
            message,
            unusable: false,
        }
    }

    fn lost(message: String) -> Broke {
        Broke {
            outcome: Outcome::Error,
            message,
            unusable: true,
        }
    }

    /// A WebDriver error while doing `what`.
    fn from_cmd(what: &str, e: CmdError) -> Broke {
        match e {
            CmdError::Standard(w) => {
                let message = first_line(&w.message);
                match w.error {
                    ErrorStatus::InvalidSessionId | ErrorStatus::NoSuchWindow => {
                        Broke::lost(format!(
                            "the browser session is gone while trying to {what} ({message}); Chromium may have crashed"
                        ))
                    }
                    ErrorStatus::Timeout | ErrorStatus::ScriptTimeout => Broke::timeout(format!(
                        "the browser timed out while trying to {what}: {message}"
                    )),
                    ErrorStatus::InvalidSelector => Broke::error(format!(
                        "invalid selector while trying to {what}: {message}"
                    )),
                    _ if message.contains("chrome not reachable")
                        || message.contains("not connected to DevTools") =>
                    {
                        Broke::lost(format!(
                            "Chromium stopped responding while trying to {what}: {message}"
                        ))
                    }
                    code => Broke::error(format!("could not {what}: {code}: {message}")),
                }
            }
            CmdError::Failed(_) | CmdError::FailedC(_) | CmdError::Lost(_) => Broke::lost(format!(
                "lost the connection to chromedriver while trying to {what} ({}); it exited or was killed and is restarted on the next run",
                first_line(&e.to_string())
            )),
            other => Broke::error(format!(
                "could not {what}: {}",
                first_line(&other.to_string())
            )),
        }
    }
}

/// How long a step may wait, and whether the step's own timeout or the probe's deadline ends it.
#[derive(Debug, Clone, Copy)]
struct Budget {
    until: Instant,
    length: Duration,
    /// The probe's deadline comes first: running out is a `timeout`, not a `fail`.
    by_probe: bool,
}

impl Budget {
    fn new(step: &BrowserStep, probe_deadline: Instant, default: Option<Duration>) -> Budget {
        let now = Instant::now();
        let left = probe_deadline.saturating_duration_since(now);
        match step.timeout.or(default) {
            Some(own) if own < left => Budget {
                until: now + own,
                length: own,
                by_probe: false,
            },
            _ => Budget {
                until: probe_deadline,
                length: left,
                by_probe: true,
            },
        }
    }

    /// What to report when a wait ran out: `fail` within the step's own time, else `timeout`.
    /// Reads "{what} within 2s ({detail})".
    fn ran_out(&self, (what, detail): (String, Option<String>)) -> Broke {
        let within = fmt_duration(self.length);
        let detail = match (self.by_probe, detail) {
            (true, Some(d)) => format!(" ({d}; the probe's timeout)"),
            (true, None) => " (the probe's timeout)".to_string(),
            (false, Some(d)) => format!(" ({d})"),
            (false, None) => String::new(),
        };
        let message = format!("{what} within {within}{detail}");
        if self.by_probe {
            Broke::timeout(message)
        } else {
            Broke::fail(message)
        }
    }
}

/// What one locating script saw of a selector.
#[derive(Debug, Default)]
struct Located {
    /// Elements matching.
    count: u64,
    /// Whether `element` is visible (the first visible match; else the first match).
    visible: bool,
    /// Whether `element` is enabled.
    enabled: bool,
    element: Option<Element>,
    /// Rendered text of a visible element, `textContent` of a hidden one.
    text: Option<String>,
    /// The requested attribute, when asked and present.
    attribute: Option<String>,
}

/// The script behind every element wait: one round trip per poll.
const LOCATE: &str = r#"
const [selector, attribute] = arguments;
const all = document.querySelectorAll(selector);
const visible = e => {
  if (!e.isConnected) return false;
  if (e.checkVisibility && !e.checkVisibility({ opacityProperty: true, visibilityProperty: true, checkOpacity: true, checkVisibilityCSS: true })) return false;
  const r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0;
};
let shown = null;
for (const e of all) { if (visible(e)) { shown = e; break; } }
const pick = shown || all[0] || null;
return {
  count: all.length,
  visible: shown !== null,
  element: pick,
  enabled: pick ? !pick.matches(':disabled') : false,
  text: pick ? (shown ? pick.innerText : (pick.textContent || '').trim()) : null,
  attribute: pick && attribute ? pick.getAttribute(attribute) : null,
};
"#;

/// The W3C key of an element reference in script results.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A step's view of the run.
struct Ctx<'a> {
    client: &'a Client,
    step: &'a BrowserStep,
    probe_deadline: Instant,
}

/// Runs every step of `probe` in `session`, within `deadline`.
pub(crate) async fn run(
    probe: &BrowserProbe,
    session: &Session,
    scope: &mut Scope,
    masker: &Masker,
    deadline: Instant,
    artifacts: Option<&RunArtifacts>,
) -> Vec<StepResult> {
    let reads_console = probe
        .steps
        .iter()
        .any(|s| matches!(s.action, BrowserAction::AssertNoConsoleErrors { .. }));
    let mut console = Console::default();
    let mut results = Vec::with_capacity(probe.steps.len());
    let mut blocked = false;
    for step in &probe.steps {
        if blocked {
            results.push(StepResult::skipped(&step.name));
            continue;
        }
        let started = std::time::Instant::now();
        let mut result = StepResult::skipped(&step.name);
        let ctx = Ctx {
            client: session.client(),
            step,
            probe_deadline: deadline,
        };
        let outcome = run_step(&ctx, &mut console, scope, masker, artifacts, &mut result).await;
        let masker = masker.with(scope.secret_values());
        let mut unusable = false;
        match outcome {
            Ok(()) => {
                result.result = if result.asserts.iter().all(|a| a.result.is_pass()) {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                };
            }
            Err(broke) => {
                result.result = broke.outcome;
                result.error = Some(masker.mask(&broke.message));
                unusable = broke.unusable;
                if broke.outcome == Outcome::Timeout && unusable {
                    session.mark_stuck();
                }
            }
        }
        result.duration = started.elapsed();
        if reads_console && !unusable {
            // Drained after every step so nothing is lost; a failed read surfaces at the
            // console assertion, which reads again.
            let until = Instant::now() + CALL_GRACE;
            let _ = tokio::time::timeout_at(
                until.min(deadline.max(Instant::now())),
                console.drain(session.client()),
            )
            .await;
        }
        if !result.result.is_pass() {
            blocked = true;
            if !unusable && let Some(store) = artifacts {
                let until =
                    (Instant::now() + ARTIFACT_TIME).min(deadline + Duration::from_millis(200));
                let saved = failure_artifacts(session.client(), store, &masker, until).await;
                result.artifacts.extend(saved);
            }
        }
        results.push(result);
    }
    results
}

async fn run_step(
    ctx: &Ctx<'_>,
    console: &mut Console,
    scope: &mut Scope,
    masker: &Masker,
    artifacts: Option<&RunArtifacts>,
    result: &mut StepResult,
) -> Result<(), Broke> {
    let step = ctx.step;
    match &step.action {
        BrowserAction::Goto(url) => {
            let url = render(url, scope)?;
            goto(ctx, &url, result).await
        }
        BrowserAction::Click(selector) => {
            let selector = render(selector, scope)?;
            let budget = ctx.budget(Some(DEFAULT_WAIT));
            click(ctx, &selector, &budget).await
        }
        BrowserAction::Fill { selector, text } => {
            let selector = render(selector, scope)?;
            let text = render(text, scope)?;
            let budget = ctx.budget(Some(DEFAULT_WAIT));
            let element = ctx.wait_interactable(&selector, &budget).await?;
            ctx.call(&format!("clear `{selector}`"), &budget, element.clear())
                .await?;
            ctx.call(
                &format!("type into `{selector}`"),
                &budget,
                element.send_keys(&text),
            )
            .await
        }
        BrowserAction::Press { selector, key } => {
            let keys = key_text(key).ok_or_else(|| {
                Broke::error(format!(
                    "unknown key `{key}`: use Enter, Tab, Escape, Backspace, Delete, Space, ArrowUp, ArrowDown, ArrowLeft, ArrowRight, Home, End, PageUp, PageDown or a single character"
                ))
            })?;
            let budget = ctx.budget(Some(DEFAULT_WAIT));
            let element = match selector {
                Some(selector) => {
                    let selector = render(selector, scope)?;
                    ctx.wait_interactable(&selector, &budget).await?
                }
                None => {
                    ctx.call(
                        "find the focused element",
                        &budget,
                        ctx.client.active_element(),
                    )
                    .await?
                }
            };
            ctx.call(&format!("press {key}"), &budget, element.send_keys(&keys))
                .await
        }
        BrowserAction::Select { selector, value } => {
            let selector = render(selector, scope)?;
            let value = render(value, scope)?;
            let budget = ctx.budget(Some(DEFAULT_WAIT));
            let element = ctx.wait_interactable(&selector, &budget).await?;
            match ctx
                .call_raw(&budget, element.select_by_value(&value))
                .await?
            {
                Ok(()) => Ok(()),
                Err(e) if e.is_no_such_element() => Err(Broke::fail(format!(
                    "`{selector}` has no option with value `{value}`"
                ))),
                Err(e) => Err(Broke::from_cmd(
                    &format!("select `{value}` in `{selector}`"),
                    e,
                )),
            }
        }
        BrowserAction::WaitFor(selector) => {
            let selector = render(selector, scope)?;
            let budget = ctx.budget(Some(DEFAULT_WAIT));
            ctx.wait_element(&selector, None, &budget, |l| l.visible)
                .await?
                .map(|_| ())
                .map_err(|last| budget.ran_out(not_visible(&selector, &last)))
        }
        BrowserAction::WaitForUrl(m) => {
            let expected = Expected::render(m, scope)?;
            let budget = ctx.budget(Some(DEFAULT_WAIT));
            match ctx
                .wait_page(Page::Url, &budget, |u| expected.matches(u))
                .await?
            {
                Ok(_) => Ok(()),
                Err(last) => Err(budget.ran_out((
                    format!("the URL did not match {}", expected.describe()),
                    Some(format!("it is {}", shown(&last))),
                ))),
            }
        }
        BrowserAction::AssertText { selector, expect } => {
            let sel = render(selector, scope)?;
            let expected = Expected::render(expect, scope)?;
            let budget = ctx.budget(Some(DEFAULT_ASSERT_WAIT));
            let expr = format!(
                "assert_text {} {}",
                quoted(selector.source()),
                template_expr(expect)
            );
            let seen = ctx
                .wait_element(&sel, None, &budget, |l| {
                    l.visible && l.text.as_deref().is_some_and(|t| expected.matches(t))
                })
                .await?;
            let (pass, last) = split(seen);
            let mut assert = assert_result(
                expr,
                pass,
                last.visible
                    .then(|| shown(last.text.as_deref().unwrap_or(""))),
                &expected,
            );
            if !last.visible {
                let (what, detail) = not_visible(&sel, &last);
                assert.message = Some(format!("{what} ({})", detail.unwrap_or_default()));
            }
            result.asserts.push(masked(assert, masker));
            Ok(())
        }
        BrowserAction::AssertUrl(m) | BrowserAction::AssertTitle(m) => {
            let (page, keyword) = match &step.action {
                BrowserAction::AssertUrl(_) => (Page::Url, "assert_url"),
                _ => (Page::Title, "assert_title"),
            };
            let expected = Expected::render(m, scope)?;
            let budget = ctx.budget(Some(DEFAULT_ASSERT_WAIT));
            let (pass, last) = split(
                ctx.wait_page(page, &budget, |t| expected.matches(t))
                    .await?,
            );
            let expr = format!("{keyword} {}", template_expr(m));
            result.asserts.push(masked(
                assert_result(expr, pass, Some(shown(&last)), &expected),
                masker,
            ));
            Ok(())
        }
        BrowserAction::AssertVisible(selector) | BrowserAction::AssertHidden(selector) => {
            let want_visible = matches!(step.action, BrowserAction::AssertVisible(_));
            let sel = render(selector, scope)?;
            let budget = ctx.budget(Some(DEFAULT_ASSERT_WAIT));
            let (pass, last) = split(
                ctx.wait_element(&sel, None, &budget, |l| l.visible == want_visible)
                    .await?,
            );
            let actual = match (last.count, last.visible) {
                (0, _) => "absent".to_string(),
                (_, true) => "visible".to_string(),
                (_, false) => "hidden".to_string(),
            };
            let keyword = step.action.keyword();
            result.asserts.push(masked(
                AssertResult {
                    expr: format!("{keyword} {}", quoted(selector.source())),
                    result: if pass { Outcome::Pass } else { Outcome::Fail },
                    actual: Some(actual),
                    expected: if want_visible {
                        "visible"
                    } else {
                        "hidden or absent"
                    }
                    .to_string(),
                    message: None,
                },
                masker,
            ));
            Ok(())
        }
        BrowserAction::AssertCount {
            selector,
            op,
            count,
        } => {
            let sel = render(selector, scope)?;
            let budget = ctx.budget(Some(DEFAULT_ASSERT_WAIT));
            let holds = |n: u64| compare(n, op, *count);
            let (pass, last) = split(
                ctx.wait_element(&sel, None, &budget, |l| holds(l.count))
                    .await?,
            );
            result.asserts.push(masked(
                AssertResult {
                    expr: format!("assert_count {} {op} {count}", quoted(selector.source())),
                    result: if pass { Outcome::Pass } else { Outcome::Fail },
                    actual: Some(last.count.to_string()),
                    expected: format!("{op} {count}"),
                    message: None,
                },
                masker,
            ));
            Ok(())
        }
        BrowserAction::Eval(script) => {
            let body = render(script, scope)?;
            let budget = ctx.budget(None);
            let expr = format!("eval {}", quoted(&shown(script.source())));
            let assert = match ctx
                .call_raw(&budget, ctx.client.execute(&body, Vec::new()))
                .await?
            {
                Ok(value) => AssertResult {
                    expr,
                    result: if truthy(&value) {
                        Outcome::Pass
                    } else {
                        Outcome::Fail
                    },
                    actual: Some(shown(&value.to_string())),
                    expected: "truthy".into(),
                    message: None,
                },
                Err(CmdError::Standard(w)) if w.error == ErrorStatus::JavascriptError => {
                    AssertResult {
                        expr,
                        result: Outcome::Fail,
                        actual: None,
                        expected: "truthy".into(),
                        message: Some(format!("the script threw: {}", first_line(&w.message))),
                    }
                }
                Err(e) => return Err(Broke::from_cmd("run the script", e)),
            };
            result.asserts.push(masked(assert, masker));
            Ok(())
        }
        BrowserAction::Capture {
            name,
            selector,
            attribute,
        } => {
            let sel = render(selector, scope)?;
            let budget = ctx.budget(Some(DEFAULT_WAIT));
            let found = ctx
                .wait_element(&sel, attribute.as_deref(), &budget, |l| {
                    l.count > 0 && (attribute.is_none() || l.attribute.is_some())
                })
                .await?;
            let located = found.map_err(|last| {
                let what = match (last.count, attribute) {
                    (0, _) => format!("no element matched `{sel}` to capture `{name}`"),
                    (_, Some(a)) => format!("`{sel}` had no attribute `{a}` to capture `{name}`"),
                    (_, None) => format!("`{sel}` had no text to capture `{name}`"),
                };
                budget.ran_out(plain(what))
            })?;
            let value = match attribute {
                Some(_) => located.attribute,
                None => located.text.map(|t| t.trim().to_string()),
            };
            scope.set(name.clone(), value.unwrap_or_default());
            Ok(())
        }
        BrowserAction::Screenshot(name) => {
            let budget = ctx.budget(None);
            let png = ctx
                .call("take a screenshot", &budget, ctx.client.screenshot())
                .await?;
            if let Some(store) = artifacts {
                // `screenshot: true` is named after its (unique) step; a given name is kept.
                let file = if name == "screenshot" {
                    &step.name
                } else {
                    name
                };
                let path = store
                    .save(&format!("{file}.png"), &png)
                    .map_err(|e| Broke::error(format!("could not save the screenshot: {e}")))?;
                result.artifacts.push(path);
            }
            Ok(())
        }
        BrowserAction::Viewport(viewport) => {
            let budget = ctx.budget(None);
            set_viewport(ctx, *viewport, &budget).await
        }
        BrowserAction::AssertNoConsoleErrors { ignore } => {
            let budget = ctx.budget(None);
            ctx.call(
                "read the browser console",
                &budget,
                console.drain(ctx.client),
            )
            .await?;
            let errors: Vec<&str> = console.errors(ignore).collect();
            let mut expr = "assert_no_console_errors".to_string();
            if !ignore.is_empty() {
                let patterns: Vec<String> = ignore.iter().map(|r| quoted(r.as_str())).collect();
                expr.push_str(&format!(" ignore [{}]", patterns.join(", ")));
            }
            result.asserts.push(masked(
                AssertResult {
                    expr,
                    result: if errors.is_empty() {
                        Outcome::Pass
                    } else {
                        Outcome::Fail
                    },
                    actual: Some(if errors.is_empty() {
                        "none".to_string()
                    } else {
                        truncate(&errors.join("\n"), SHOWN_CHARS * 5)
                    }),
                    expected: "no SEVERE console messages".into(),
                    message: (!errors.is_empty())
                        .then(|| format!("{} console error(s)", errors.len())),
                },
                masker,
            ));
            Ok(())
        }
    }
}

async fn goto(ctx: &Ctx<'_>, url: &str, result: &mut StepResult) -> Result<(), Broke> {
    let parsed =
        url::Url::parse(url).map_err(|e| Broke::error(format!("invalid URL `{url}`: {e}")))?;
    if !matches!(
        parsed.scheme(),
        "http" | "https" | "about" | "data" | "file"
    ) {
        return Err(Broke::error(format!(
            "unsupported scheme `{}` in `{url}`",
            parsed.scheme()
        )));
    }
    let budget = ctx.budget(None);
    // chromedriver stops waiting for the load on its own, and answers, at the step's limit.
    let page_load = TimeoutConfiguration::new(
        None,
        Some(budget.length.max(Duration::from_millis(1))),
        None,
    );
    ctx.call(
        "set the page-load timeout",
        &budget,
        ctx.client.update_timeouts(page_load),
    )
    .await?;
    let not_loaded = || {
        Broke::timeout(format!(
            "page did not finish loading within {}: {url}",
            fmt_duration(budget.length)
        ))
    };
    match tokio::time::timeout_at(budget.until, ctx.client.goto(url)).await {
        Err(_) => return Err(not_loaded()),
        Ok(Err(CmdError::Standard(w))) if w.error == ErrorStatus::Timeout => {
            return Err(not_loaded());
        }
        Ok(Err(CmdError::Standard(w))) if w.message.contains("net::ERR_") => {
            let code = w
                .message
                .split_whitespace()
                .find(|t| t.starts_with("net::ERR_"))
                .unwrap_or("net::ERR_FAILED")
                .to_string();
            return Err(Broke::error(format!("page did not load: {code} at {url}")));
        }
        Ok(Err(e)) => return Err(Broke::from_cmd(&format!("open {url}"), e)),
        Ok(Ok(())) => {}
    }
    // The vitals script also waits for readyState `complete`; it gets at least a moment even
    // when the load used up the step's time.
    let until = budget
        .until
        .max(Instant::now() + Duration::from_millis(500))
        .min(ctx.probe_deadline.max(Instant::now()));
    match tokio::time::timeout_at(until, ctx.client.execute(vitals::SCRIPT, Vec::new())).await {
        Ok(Ok(value)) => {
            let (vitals, status) = vitals::parse(&value);
            result.vitals = Some(vitals);
            result.status = status;
        }
        Ok(Err(e)) => {
            let broke = Broke::from_cmd("read the page timings", e);
            if broke.unusable {
                return Err(broke);
            }
            tracing::debug!(error = %broke.message, "Web vitals could not be read.");
        }
        Err(_) => {
            // The page never settled, and the script is still stuck in the session.
            return Err(Broke {
                unusable: true,
                ..not_loaded()
            });
        }
    }
    match result.status {
        Some(status) if status >= 400 => {
            Err(Broke::fail(format!("page answered HTTP {status} at {url}")))
        }
        _ => Ok(()),
    }
}

async fn click(ctx: &Ctx<'_>, selector: &str, budget: &Budget) -> Result<(), Broke> {
    loop {
        let element = ctx.wait_interactable(selector, budget).await?;
        match ctx.call_raw(budget, element.click()).await? {
            Ok(()) => return Ok(()),
            // Covered by an overlay, not yet interactable or replaced: look again while time is left.
            Err(e)
                if matches!(
                    &e,
                    CmdError::Standard(w) if matches!(
                        w.error,
                        ErrorStatus::ElementClickIntercepted
                            | ErrorStatus::ElementNotInteractable
                            | ErrorStatus::StaleElementReference
                    )
                ) =>
            {
                if Instant::now() + POLL >= budget.until {
                    let why = match &e {
                        CmdError::Standard(w) => first_line(&w.message).to_string(),
                        other => other.to_string(),
                    };
                    return Err(
                        budget.ran_out((format!("could not click `{selector}`"), Some(why)))
                    );
                }
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(Broke::from_cmd(&format!("click `{selector}`"), e)),
        }
    }
}

async fn set_viewport(ctx: &Ctx<'_>, viewport: Viewport, budget: &Budget) -> Result<(), Broke> {
    ctx.call(
        &format!(
            "set the viewport to {}x{}{}",
            viewport.width,
            viewport.height,
            if viewport.mobile { " (phone)" } else { "" }
        ),
        budget,
        emulation::apply(ctx.client, viewport),
    )
    .await
}

impl Ctx<'_> {
    fn budget(&self, default: Option<Duration>) -> Budget {
        Budget::new(self.step, self.probe_deadline, default)
    }

    /// The deadline of one call made during `budget`: its end, or a moment more for a last
    /// look, never past the probe's deadline.
    fn call_until(&self, budget: &Budget) -> Instant {
        let now = Instant::now();
        budget
            .until
            .max(now + CALL_GRACE)
            .min(self.probe_deadline.max(now))
    }

    /// One WebDriver call; a WebDriver error ends the step.
    async fn call<T>(
        &self,
        what: &str,
        budget: &Budget,
        fut: impl Future<Output = Result<T, CmdError>>,
    ) -> Result<T, Broke> {
        self.call_raw(budget, fut)
            .await?
            .map_err(|e| Broke::from_cmd(what, e))
    }

    /// One WebDriver call; only a hang ends the step, errors are the caller's to judge.
    async fn call_raw<T>(
        &self,
        budget: &Budget,
        fut: impl Future<Output = Result<T, CmdError>>,
    ) -> Result<Result<T, CmdError>, Broke> {
        let until = self.call_until(budget);
        let asked = Instant::now();
        tokio::time::timeout_at(until, fut)
            .await
            .map_err(|_| Broke {
                outcome: Outcome::Timeout,
                message: format!(
                    "the browser did not answer within {} (step `{}`); the page may be hung",
                    fmt_duration(until.saturating_duration_since(asked)),
                    self.step.name
                ),
                unusable: true,
            })
    }

    /// Locates `selector` once. Errors of a page that is navigating count as "nothing yet".
    async fn locate(
        &self,
        selector: &str,
        attribute: Option<&str>,
        budget: &Budget,
    ) -> Result<Located, Broke> {
        let args = vec![json!(selector), attribute.map_or(Value::Null, |a| json!(a))];
        match self
            .call_raw(budget, self.client.execute(LOCATE, args))
            .await?
        {
            Ok(value) => Ok(self.located(&value)),
            Err(CmdError::Standard(w))
                if w.error == ErrorStatus::JavascriptError
                    && w.message.contains("not a valid selector") =>
            {
                Err(Broke::error(format!("invalid CSS selector `{selector}`")))
            }
            Err(CmdError::Standard(w))
                if matches!(
                    w.error,
                    ErrorStatus::JavascriptError
                        | ErrorStatus::StaleElementReference
                        | ErrorStatus::UnknownError
                ) && !w.message.contains("chrome not reachable") =>
            {
                Ok(Located::default())
            }
            Err(e) => Err(Broke::from_cmd(&format!("look for `{selector}`"), e)),
        }
    }

    fn located(&self, value: &Value) -> Located {
        let element = value
            .get("element")
            .and_then(|e| e.get(ELEMENT_KEY))
            .and_then(Value::as_str)
            .map(|id| {
                Element::from_element_id(self.client.clone(), ElementRef::from(id.to_string()))
            });
        Located {
            count: value.get("count").and_then(Value::as_u64).unwrap_or(0),
            visible: value
                .get("visible")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            enabled: value
                .get("enabled")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            element,
            text: value
                .get("text")
                .and_then(Value::as_str)
                .map(str::to_string),
            attribute: value
                .get("attribute")
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }

    /// Polls `selector` until `done` holds (`Ok(Ok)`) or the budget ends (`Ok(Err(last seen))`).
    async fn wait_element(
        &self,
        selector: &str,
        attribute: Option<&str>,
        budget: &Budget,
        done: impl Fn(&Located) -> bool,
    ) -> Result<Result<Located, Located>, Broke> {
        let mut last: Option<Located> = None;
        loop {
            if let Some(seen) = last.take()
                && Instant::now() >= budget.until
            {
                return Ok(Err(seen));
            }
            let seen = self.locate(selector, attribute, budget).await?;
            if done(&seen) {
                return Ok(Ok(seen));
            }
            last = Some(seen);
            tokio::time::sleep_until((Instant::now() + POLL).min(budget.until)).await;
        }
    }

    /// Waits for a visible, enabled element and returns it.
    async fn wait_interactable(&self, selector: &str, budget: &Budget) -> Result<Element, Broke> {
        match self
            .wait_element(selector, None, budget, |l| {
                l.visible && l.enabled && l.element.is_some()
            })
            .await?
        {
            Ok(Located {
                element: Some(element),
                ..
            }) => Ok(element),
            Ok(_) => Err(Broke::error(format!(
                "`{selector}` matched but gave no element reference"
            ))),
            Err(last) if last.visible && !last.enabled => {
                Err(budget.ran_out(plain(format!("element `{selector}` was not enabled"))))
            }
            Err(last) => Err(budget.ran_out(not_visible(selector, &last))),
        }
    }

    /// Polls the page's URL or title until `done` holds, like [`Ctx::wait_element`].
    async fn wait_page(
        &self,
        page: Page,
        budget: &Budget,
        done: impl Fn(&str) -> bool,
    ) -> Result<Result<String, String>, Broke> {
        let mut last: Option<String> = None;
        loop {
            if let Some(seen) = last.take()
                && Instant::now() >= budget.until
            {
                return Ok(Err(seen));
            }
            let seen = match page {
                Page::Url => self
                    .call("read the URL", budget, self.client.current_url())
                    .await?
                    .to_string(),
                Page::Title => {
                    self.call("read the title", budget, self.client.title())
                        .await?
                }
            };
            if done(&seen) {
                return Ok(Ok(seen));
            }
            last = Some(seen);
            tokio::time::sleep_until((Instant::now() + POLL).min(budget.until)).await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Page {
    Url,
    Title,
}

/// A rendered text comparison.
enum Expected {
    Contains(String),
    Equals(String),
    Matches(regex::Regex),
}

impl Expected {
    fn render(m: &TextMatch, scope: &mut Scope) -> Result<Expected, Broke> {
        let text = render(m.template(), scope)?;
        Ok(match m {
            TextMatch::Contains(_) => Expected::Contains(text),
            TextMatch::Equals(_) => Expected::Equals(text),
            TextMatch::Matches(_) => Expected::Matches(
                regex::Regex::new(&text)
                    .map_err(|e| Broke::error(format!("invalid regex `{text}`: {e}")))?,
            ),
        })
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Expected::Contains(s) => text.contains(s.as_str()),
            Expected::Equals(s) => text.trim() == s.trim(),
            Expected::Matches(re) => re.is_match(text),
        }
    }

    fn describe(&self) -> String {
        match self {
            Expected::Contains(s) => format!("contains {}", quoted(s)),
            Expected::Equals(s) => format!("equals {}", quoted(s)),
            Expected::Matches(re) => format!("matches {}", quoted(re.as_str())),
        }
    }
}

/// `contains "…"` with the template as written.
fn template_expr(m: &TextMatch) -> String {
    let word = match m {
        TextMatch::Contains(_) => "contains",
        TextMatch::Equals(_) => "equals",
        TextMatch::Matches(_) => "matches",
    };
    format!("{word} {}", quoted(m.template().source()))
}

fn assert_result(
    expr: String,
    pass: bool,
    actual: Option<String>,
    expected: &Expected,
) -> AssertResult {
    AssertResult {
        expr,
        result: if pass { Outcome::Pass } else { Outcome::Fail },
        actual,
        expected: expected.describe(),
        message: None,
    }
}

fn masked(mut a: AssertResult, masker: &Masker) -> AssertResult {
    masker.mask_in_place(&mut a.expected);
    if let Some(actual) = a.actual.as_mut() {
        masker.mask_in_place(actual);
    }
    if let Some(m) = a.message.as_mut() {
        masker.mask_in_place(m);
    }
    a
}

fn split<T>(seen: Result<T, T>) -> (bool, T) {
    match seen {
        Ok(v) => (true, v),
        Err(v) => (false, v),
    }
}

/// "element `X` was not visible", and why.
fn not_visible(selector: &str, last: &Located) -> (String, Option<String>) {
    let detail = match last.count {
        0 => "no element matches".to_string(),
        1 => "it exists but is hidden".to_string(),
        n => format!("{n} elements match, all hidden"),
    };
    (
        format!("element `{selector}` was not visible"),
        Some(detail),
    )
}

/// A wait's message without a detail.
fn plain(what: String) -> (String, Option<String>) {
    (what, None)
}

fn render(t: &Template, scope: &mut Scope) -> Result<String, Broke> {
    t.render(scope)
        .map_err(|e| Broke::error(format!("could not render `{}`: {e}", t.source())))
}

/// Text for a key name: fantoccini's key codes for named keys, or the character itself.
fn key_text(name: &str) -> Option<String> {
    let key = match name.to_ascii_lowercase().as_str() {
        "enter" | "return" => Key::Enter,
        "tab" => Key::Tab,
        "escape" | "esc" => Key::Escape,
        "backspace" => Key::Backspace,
        "delete" => Key::Delete,
        "space" => Key::Space,
        "arrowup" | "up" => Key::Up,
        "arrowdown" | "down" => Key::Down,
        "arrowleft" | "left" => Key::Left,
        "arrowright" | "right" => Key::Right,
        "home" => Key::Home,
        "end" => Key::End,
        "pageup" => Key::PageUp,
        "pagedown" => Key::PageDown,
        _ => {
            let mut chars = name.chars();
            return match (chars.next(), chars.next()) {
                (Some(c), None) => Some(c.to_string()),
                _ => None,
            };
        }
    };
    Some(key.to_string())
}

fn compare(actual: u64, op: &str, expected: u64) -> bool {
    match op {
        "==" => actual == expected,
        "!=" => actual != expected,
        "<" => actual < expected,
        "<=" => actual <= expected,
        ">" => actual > expected,
        ">=" => actual >= expected,
        _ => false,
    }
}

/// JavaScript truthiness of a script's result.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Saves `failure.png` and the masked `page.html`; returns their artifact paths.
async fn failure_artifacts(
    client: &Client,
    store: &RunArtifacts,
    masker: &Masker,
    until: Instant,
) -> Vec<String> {
    let mut saved = Vec::new();
    match tokio::time::timeout_at(until, client.screenshot()).await {
        Ok(Ok(png)) => match store.save("failure.png", &png) {
            Ok(path) => saved.push(path),
            Err(e) => tracing::warn!(error = %e, "Could not save the failure screenshot."),
        },
        Ok(Err(e)) => tracing::debug!(error = %e, "No failure screenshot."),
        Err(_) => tracing::debug!("No failure screenshot: the browser did not answer in time."),
    }
    match tokio::time::timeout_at(until, client.source()).await {
        Ok(Ok(html)) => match store.save("page.html", masker.mask(&html).as_bytes()) {
            Ok(path) => saved.push(path),
            Err(e) => tracing::warn!(error = %e, "Could not save the page HTML."),
        },
        Ok(Err(e)) => tracing::debug!(error = %e, "No page HTML."),
        Err(_) => tracing::debug!("No page HTML: the browser did not answer in time."),
    }
    saved
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn shown(s: &str) -> String {
    truncate(s, SHOWN_CHARS)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}… ({} characters in all)", &s[..cut], s.chars().count()),
        None => s.to_string(),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_javascript() {
        for v in [json!(null), json!(false), json!(0), json!(""), json!(0.0)] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [json!(true), json!(1), json!("x"), json!([]), json!({})] {
            assert!(truthy(&v), "{v}");
        }
    }

    #[test]
    fn keys_by_name_or_character() {
        assert_eq!(key_text("Enter"), Some(Key::Enter.to_string()));
        assert_eq!(key_text("ArrowDown"), Some(Key::Down.to_string()));
        assert_eq!(key_text("a"), Some("a".into()));
        assert_eq!(key_text("Hyper"), None);
    }

    #[test]
    fn counts_compare() {
        assert!(compare(3, ">=", 1));
        assert!(!compare(0, ">=", 1));
        assert!(compare(2, "==", 2));
        assert!(!compare(2, "?", 2));
    }

    #[test]
    fn long_texts_are_cut_on_a_char_boundary() {
        let s = "é".repeat(300);
        let t = truncate(&s, 10);
        assert!(t.starts_with(&"é".repeat(10)));
        assert!(t.ends_with("(300 characters in all)"));
    }

    #[test]
    fn a_wait_cut_by_the_probe_deadline_is_a_timeout() {
        let step = BrowserStep {
            name: "w".into(),
            action: BrowserAction::WaitFor(Template::literal("#x")),
            timeout: Some(Duration::from_secs(30)),
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let b = Budget::new(&step, deadline, Some(DEFAULT_WAIT));
        assert!(b.by_probe);
        assert_eq!(
            b.ran_out(plain("element `#x` was not visible".into()))
                .outcome,
            Outcome::Timeout
        );
        let step = BrowserStep {
            timeout: Some(Duration::from_secs(1)),
            ..step
        };
        let b = Budget::new(&step, deadline, Some(DEFAULT_WAIT));
        assert!(!b.by_probe);
        let broke = b.ran_out(plain("element `#x` was not visible".into()));
        assert_eq!(broke.outcome, Outcome::Fail);
        assert_eq!(broke.message, "element `#x` was not visible within 1s");
    }
}
