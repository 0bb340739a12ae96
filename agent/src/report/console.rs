//! The console report: each probe and step with result and duration, every failing assertion
//! with actual vs expected, and with `-v` the request and response of each step.

use std::borrow::Cow;
use std::fmt::Write as _;

use patrol_probes::result::{Outcome, ProbeResult, StepResult};
use patrol_probes::value::format_seconds;

use super::{RunReport, Summary};

/// Console rendering options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// ANSI colours.
    pub color: bool,
    /// Request/response detail and phase timings for every step.
    pub verbose: bool,
}

/// Renders the whole report.
pub fn render(report: &RunReport, style: Style) -> String {
    let mut out = String::new();
    let width = report
        .results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0);
    for probe in &report.results {
        render_probe(&mut out, probe, width, style);
    }
    let s = Summary::of(&report.results);
    let mut parts = vec![format!("{} passed", s.pass)];
    for (n, word) in [
        (s.fail, "failed"),
        (s.error, "errored"),
        (s.timeout, "timed out"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    if s.flaky > 0 {
        parts.push(format!("{} passed only after a retry", s.flaky));
    }
    let verdict = if s.all_passed() {
        paint("PASS", Outcome::Pass, style)
    } else {
        paint("FAIL", Outcome::Fail, style)
    };
    let _ = writeln!(
        out,
        "\n{verdict}  {} probe{}: {} in {}",
        s.total,
        if s.total == 1 { "" } else { "s" },
        parts.join(", "),
        format_seconds(report.duration.as_secs_f64())
    );
    out
}

fn render_probe(out: &mut String, probe: &ProbeResult, width: usize, style: Style) {
    let attempts = if probe.attempts > 1 {
        format!(
            "  ({} attempts, first {})",
            probe.attempts, probe.first_attempt
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{}  {:<width$}  {:>8}{attempts}",
        label(probe.result, style),
        probe.name,
        format_seconds(probe.duration.as_secs_f64()),
    );
    if let Some(e) = &probe.error {
        let _ = writeln!(out, "         {e}");
    }
    let step_width = probe.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for step in &probe.steps {
        render_step(out, step, step_width, style);
    }
}

fn render_step(out: &mut String, step: &StepResult, width: usize, style: Style) {
    let status = step
        .status
        .map_or_else(|| "   ".to_string(), |s| s.to_string());
    if step.result == Outcome::Skipped {
        let _ = writeln!(out, "         {}  {}", label(step.result, style), step.name);
        return;
    }
    let _ = writeln!(
        out,
        "         {}  {:<width$}  {status}  {:>8}",
        label(step.result, style),
        step.name,
        format_seconds(step.duration.as_secs_f64()),
    );
    let pad = "                  ";
    for a in &step.asserts {
        if a.result.is_pass() && !style.verbose {
            continue;
        }
        let mark = if a.result.is_pass() { "ok" } else { "x " };
        let _ = writeln!(out, "{pad}{mark} {}", a.expr);
        if !a.result.is_pass() {
            let _ = writeln!(
                out,
                "{pad}     actual:   {}",
                a.actual.as_deref().unwrap_or("(none)")
            );
            let _ = writeln!(out, "{pad}     expected: {}", a.expected);
            if let Some(m) = &a.message {
                let _ = writeln!(out, "{pad}     note:     {m}");
            }
        }
    }
    if let Some(e) = &step.error {
        let _ = writeln!(out, "{pad}{}", printable(e));
    }
    for artifact in &step.artifacts {
        let _ = writeln!(out, "{pad}saved {artifact}");
    }
    if style.verbose {
        if let Some(p) = &step.phases {
            let phases: Vec<String> = p
                .iter()
                .iter()
                .map(|(n, d)| format!("{n} {}", format_seconds(d.as_secs_f64())))
                .collect();
            let _ = writeln!(out, "{pad}phases: {}", phases.join(", "));
        }
        if let Some(x) = &step.exchange {
            let _ = writeln!(out, "{pad}> {}", printable(&x.request_line));
            for (n, v) in &x.request_headers {
                let _ = writeln!(out, "{pad}> {}: {}", printable(n), printable(v));
            }
            if let Some(b) = &x.request_body {
                let body = printable(b).replace('\n', &format!("\n{pad}> "));
                let _ = writeln!(out, "{pad}> {body}");
            }
            for (n, v) in &x.response_headers {
                let _ = writeln!(out, "{pad}< {}: {}", printable(n), printable(v));
            }
            if let Some(b) = &x.response_body {
                let body = printable(b).replace('\n', &format!("\n{pad}< "));
                let _ = writeln!(out, "{pad}< {body}");
            }
        }
    }
}

/// Text a target supplied, safe for a terminal: control characters other than newline and tab
/// (escape sequences, carriage returns, bells) are shown escaped, e.g. `\u{1b}`, never sent
/// to the terminal as they are.
fn printable(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn label(outcome: Outcome, style: Style) -> String {
    let text = match outcome {
        Outcome::Pass => "PASS   ",
        Outcome::Fail => "FAIL   ",
        Outcome::Error => "ERROR  ",
        Outcome::Timeout => "TIMEOUT",
        Outcome::Skipped => "SKIP   ",
    };
    paint(text, outcome, style)
}

fn paint(text: &str, outcome: Outcome, style: Style) -> String {
    if !style.color {
        return text.to_string();
    }
    let code = match outcome {
        Outcome::Pass => "32",
        Outcome::Fail | Outcome::Error | Outcome::Timeout => "31",
        Outcome::Skipped => "90",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The report of a verdict run: runs per probe in a table, failed runs in detail, the verdict
/// with its reasons.
pub fn render_rounds(report: &RunReport, style: Style) -> String {
    let mut out = String::new();
    let failed: Vec<&ProbeResult> = report
        .results
        .iter()
        .filter(|r| !r.result.is_pass())
        .collect();
    if !failed.is_empty() {
        let width = failed.iter().map(|r| r.name.len()).max().unwrap_or(0);
        let _ = writeln!(out, "Runs that did not pass:");
        for r in failed.iter().take(10) {
            render_probe(&mut out, r, width, style);
        }
        if failed.len() > 10 {
            let _ = writeln!(
                out,
                "… and {} more (see the JSON report)",
                failed.len() - 10
            );
        }
        out.push('\n');
    }
    let Some(verdict) = &report.verdict else {
        return out;
    };
    let width = verdict
        .probes
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "{:<width$}  {:>14}  {:>14}  {:>10}  {:>10}",
        "probe", "runs (before)", "runs (after)", "p95 before", "p95 after"
    );
    for (name, n) in &verdict.probes {
        let runs = |a: &crate::verdict::Aggregate| format!("{}/{} failed", a.failures, a.runs);
        let p95 = |v: Option<f64>| v.map_or("-".to_string(), format_seconds);
        let _ = writeln!(
            out,
            "{name:<width$}  {:>14}  {:>14}  {:>10}  {:>10}",
            n.baseline.as_ref().map_or("-".into(), runs),
            runs(&n.current),
            p95(n.baseline.as_ref().and_then(|b| b.p95)),
            p95(n.current.p95),
        );
    }
    let decision = verdict.verdict;
    let outcome = match decision {
        crate::verdict::Decision::Pass => Outcome::Pass,
        crate::verdict::Decision::Fail => Outcome::Fail,
        crate::verdict::Decision::Inconclusive => Outcome::Skipped,
    };
    let _ = writeln!(
        out,
        "\n{}  {} verdict after {}",
        paint(&decision.as_str().to_uppercase(), outcome, style),
        verdict.check,
        format_seconds(report.duration.as_secs_f64())
    );
    for r in &verdict.reasons {
        if r.decision != crate::verdict::Decision::Pass || style.verbose {
            let _ = writeln!(out, "  - {} [{}]: {}", r.probe, r.rule, r.message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_from_targets_are_escaped() {
        assert_eq!(printable("plain\ttext\nline"), "plain\ttext\nline");
        assert_eq!(
            printable("\u{1b}[2J\u{1b}]0;owned\u{7}\r"),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\r"
        );
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
    }
}
