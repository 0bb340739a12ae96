//! The JSON report: `{"probes":[...],"summary":{...}}`, the schema the agent's API reuses.

use serde::Serialize;

use super::{RunReport, Summary};
use patrol_probes::result::ProbeResult;

#[derive(Serialize)]
struct JsonSummary<'a> {
    #[serde(flatten)]
    counts: &'a Summary,
    duration_seconds: f64,
    config: &'a str,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    probes: &'a [ProbeResult],
    summary: JsonSummary<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<&'a crate::verdict::Verdict>,
}

/// Renders the report as pretty JSON.
pub fn render(report: &RunReport) -> String {
    let summary = Summary::of(&report.results);
    let doc = JsonReport {
        probes: &report.results,
        summary: JsonSummary {
            counts: &summary,
            duration_seconds: report.duration.as_secs_f64(),
            config: &report.config,
        },
        verdict: report.verdict.as_ref(),
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
