//! The status page at `/`: every probe with its status, last run, percentiles, a strip of recent
//! runs and the failing assertions. Self-contained (inline CSS, no scripts or external assets),
//! refreshes itself, readable on a phone. Everything shown is escaped by maud.

use axum::extract::State;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use patrol_probes::value::format_seconds;

use super::Shared;
use super::api::{ProbeStatus, probe_statuses};
use crate::history::Window;

const STYLE: &str = r#"
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f6f7f9;color:#1d2330}
header{padding:14px 18px;background:#1d2330;color:#fff;display:flex;flex-wrap:wrap;gap:6px 18px;align-items:baseline}
header h1{font-size:18px;margin:0}header span{opacity:.8;font-size:13px}
main{padding:12px;max-width:1100px;margin:0 auto}
.summary{display:flex;gap:8px;flex-wrap:wrap;margin:4px 0 12px}.summary b{padding:4px 10px;border-radius:12px;background:#e4e7ec}
.probe{background:#fff;border-radius:8px;padding:12px 14px;margin-bottom:10px;box-shadow:0 1px 2px #0001;border-left:6px solid #9aa3b2}
.probe.pass{border-left-color:#1f9d55}.probe.fail,.probe.error,.probe.timeout{border-left-color:#d64545}
.row{display:flex;flex-wrap:wrap;gap:4px 16px;align-items:baseline}.name{font-weight:600;font-size:16px}
.badge{font-size:12px;font-weight:700;padding:1px 8px;border-radius:10px;background:#e4e7ec;text-transform:uppercase}
.badge.pass{background:#d8f3e3;color:#146c3b}.badge.fail,.badge.error,.badge.timeout{background:#fde0e0;color:#a32020}
.meta{color:#5b6475;font-size:13px}.pct{font-variant-numeric:tabular-nums}
.strip{display:flex;gap:2px;margin:8px 0 2px;flex-wrap:wrap}.strip i{width:9px;height:18px;border-radius:2px;background:#c5ccd8}
.strip i.pass{background:#1f9d55}.strip i.fail,.strip i.error,.strip i.timeout{background:#d64545}
.failure{margin-top:8px;background:#fff6f6;border-radius:6px;padding:8px 10px;font-size:13px;overflow-wrap:anywhere}
.failure code{font-family:ui-monospace,Menlo,monospace;font-size:12px}
@media (max-width:600px){main{padding:8px}.probe{padding:10px}}
"#;

/// `GET /`
pub async fn page(State(state): State<Shared>) -> Markup {
    let loaded = state.loaded();
    let statuses = probe_statuses(&state);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let failing = statuses
        .iter()
        .filter(|s| matches!(s.last_result.as_deref(), Some(r) if r != "pass"))
        .count();
    let passing = statuses
        .iter()
        .filter(|s| s.last_result.as_deref() == Some("pass"))
        .count();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content="10";
                title { "Patrol — " (loaded.config.agent.location) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "Patrol" }
                    span { "location " (loaded.config.agent.location) }
                    span { (statuses.len()) " probes" }
                    span { "refreshes every 10s · " a href="/metrics" style="color:#fff" { "metrics" } " · " a href="/api/v1/probes" style="color:#fff" { "API" } }
                }
                main {
                    div class="summary" {
                        b { (passing) " passing" }
                        b { (failing) " failing" }
                        b { (statuses.len() - passing - failing) " not run yet" }
                    }
                    @for status in &statuses {
                        (probe_card(&state, status, now_ms))
                    }
                }
            }
        }
    }
}

fn probe_card(state: &Shared, s: &ProbeStatus, now_ms: i64) -> Markup {
    let class = s.last_result.clone().unwrap_or_else(|| "none".into());
    let recent = state.history.summaries(&s.name, 40);
    let failing_now = matches!(s.last_result.as_deref(), Some(r) if r != "pass");
    html! {
        section class={ "probe " (class) } id={ "probe-" (s.name) } {
            div class="row" {
                span class="name" { (s.name) }
                span class={ "badge " (class) } { (s.last_result.as_deref().unwrap_or("not run")) }
                span class="meta" { (s.kind) " · " (s.schedule.as_deref().unwrap_or("on demand")) }
            }
            div class="row meta" {
                @if let Some(at) = s.last_run_at_ms { span { "last run " (ago(now_ms - at)) } }
                @if let Some(since) = s.failing_since_ms { span { "failing since " (ago(now_ms - since)) } }
                @if let Some(next) = &s.next_run { span { "next " (next) } }
                @if let Some(p) = s.percentiles.get(Window::FiveMinutes.as_str()) {
                    span class="pct" { "5m p50 " (format_seconds(p.p50)) " · p95 " (format_seconds(p.p95)) " · p99 " (format_seconds(p.p99)) " (" (p.count) @if p.count == 1 { " run)" } @else { " runs)" } }
                }
            }
            div class="strip" aria-label="recent runs, oldest first" {
                @for r in recent.iter().rev() {
                    i class=(r.result.as_str()) title={ (r.result) " · " (format_seconds(r.duration.as_secs_f64())) } {}
                }
            }
            @if failing_now {
                @if let Some(f) = &s.last_failure {
                    div class="failure" {
                        @if let Some(e) = &f.error { div { (e) } }
                        @for step in &f.steps {
                            div { b { (step.name) } " — " (step.result) @if let Some(e) = &step.error { ": " (e) } }
                            @for path in &step.artifacts {
                                div { "saved " a href={ "/artifacts/" (path) } { (path.rsplit('/').next().unwrap_or(path)) } }
                            }
                            @for a in &step.asserts {
                                div { code { (a.expr) } " — actual " code { (a.actual.as_deref().unwrap_or("(none)")) } ", expected " code { (a.expected) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn ago(ms: i64) -> String {
    let secs = (ms / 1000).max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}
