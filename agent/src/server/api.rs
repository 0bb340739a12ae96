//! The control API: probe status with percentiles and last failure, recent runs per probe,
//! on-demand runs with deploy metadata, and config reload. Responses carry results exactly as
//! the verify JSON report does; secrets were masked when the results were made.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use patrol_probes::result::ProbeResult;
use serde::{Deserialize, Serialize};

use super::runs::Deploy;
use super::{Shared, error};
use crate::history::{Percentiles, Window};

/// One probe in `GET /api/v1/probes`.
#[derive(Debug, Serialize)]
pub struct ProbeStatus {
    /// Probe name.
    pub name: String,
    /// Probe type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Tags.
    pub tags: Vec<String>,
    /// `every 30s`, `cron …`, or null for on-demand probes.
    pub schedule: Option<String>,
    /// Next scheduled run (RFC 3339, UTC).
    pub next_run: Option<String>,
    /// The last run's result, or null before the first run.
    pub last_result: Option<String>,
    /// When the last run started (unix ms).
    pub last_run_at_ms: Option<i64>,
    /// Start of the current streak of non-passing runs (unix ms).
    pub failing_since_ms: Option<i64>,
    /// Duration percentiles by window (`1m`, `5m`, `1h`).
    pub percentiles: std::collections::BTreeMap<&'static str, Percentiles>,
    /// Per step: duration percentiles by window.
    pub steps: Vec<StepStatus>,
    /// The newest run that did not pass, with its failing assertions.
    pub last_failure: Option<FailureSummary>,
}

/// A step's latency in `GET /api/v1/probes`.
#[derive(Debug, Serialize)]
pub struct StepStatus {
    /// Step name.
    pub name: String,
    /// Duration percentiles by window.
    pub percentiles: std::collections::BTreeMap<&'static str, Percentiles>,
}

/// What the last failure said.
#[derive(Debug, Serialize)]
pub struct FailureSummary {
    /// When it started (unix ms).
    pub started_at_ms: i64,
    /// Its result.
    pub result: String,
    /// Probe-level error.
    pub error: Option<String>,
    /// Failing steps with their failing assertions and errors.
    pub steps: Vec<FailedStep>,
}

/// A step that did not pass.
#[derive(Debug, Serialize)]
pub struct FailedStep {
    /// Step name.
    pub name: String,
    /// Its result.
    pub result: String,
    /// Its error, if any.
    pub error: Option<String>,
    /// Failing assertions with actual vs expected.
    pub asserts: Vec<patrol_probes::result::AssertResult>,
    /// Saved files (screenshot, page HTML, response body), relative to `/artifacts/`.
    pub artifacts: Vec<String>,
}

/// Summarises a failed result for the API and status page.
pub fn failure_summary(r: &ProbeResult) -> FailureSummary {
    FailureSummary {
        started_at_ms: r.started_at_ms,
        result: r.result.to_string(),
        error: r.error.clone(),
        steps: r
            .steps
            .iter()
            .filter(|s| {
                !matches!(
                    s.result,
                    patrol_probes::result::Outcome::Pass | patrol_probes::result::Outcome::Skipped
                )
            })
            .map(|s| FailedStep {
                name: s.name.clone(),
                result: s.result.to_string(),
                error: s.error.clone(),
                asserts: s.failed_asserts().cloned().collect(),
                artifacts: s.artifacts.clone(),
            })
            .collect(),
    }
}

/// The status of every probe this agent runs.
pub fn probe_statuses(state: &Shared) -> Vec<ProbeStatus> {
    let loaded = state.loaded();
    loaded
        .probes
        .iter()
        .map(|p| {
            let name = p.spec.name.as_str();
            let last = state.history.last(name);
            let percentiles = Window::all()
                .into_iter()
                .filter_map(|w| {
                    state
                        .history
                        .percentiles(name, w)
                        .map(|pc| (w.as_str(), pc))
                })
                .collect();
            ProbeStatus {
                name: name.to_string(),
                kind: p.spec.type_name().to_string(),
                tags: p.tags.clone(),
                schedule: p.schedule.as_ref().map(|s| s.describe()),
                next_run: state.next_runs.get(name).map(|t| t.to_rfc3339()),
                last_result: last.as_ref().map(|r| r.result.to_string()),
                last_run_at_ms: last.as_ref().map(|r| r.started_at_ms),
                failing_since_ms: state.history.failing_since(name),
                percentiles,
                steps: p
                    .spec
                    .step_names()
                    .into_iter()
                    .map(|step| StepStatus {
                        name: step.to_string(),
                        percentiles: Window::all()
                            .into_iter()
                            .filter_map(|w| {
                                state
                                    .history
                                    .step_percentiles(name, step, w)
                                    .map(|pc| (w.as_str(), pc))
                            })
                            .collect(),
                    })
                    .collect(),
                last_failure: state
                    .history
                    .last_failure(name)
                    .map(|r| failure_summary(&r)),
            }
        })
        .collect()
}

/// `GET /api/v1/probes`
pub async fn probes(State(state): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "probes": probe_statuses(&state) }))
}

/// `?limit=` for run listings.
#[derive(Debug, Deserialize)]
pub struct Limit {
    limit: Option<usize>,
}

/// `GET /api/v1/probes/{name}/runs?limit=` — newest first, verify-report schema.
pub async fn probe_runs(
    State(state): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    if state.loaded().probe(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no probe named `{name}`"));
    }
    let runs = state.history.recent(&name, q.limit.unwrap_or(20).min(1000));
    Json(serde_json::json!({ "probe": name, "runs": runs })).into_response()
}

/// Body of `POST /api/v1/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// Probe names.
    #[serde(default)]
    pub probes: Vec<String>,
    /// Tags; probes with any of them run.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Deploy metadata.
    #[serde(default)]
    pub deploy: Option<Deploy>,
}

/// `POST /api/v1/runs` — runs the selected probes now; answers 202 with the run id.
pub async fn start_run(
    State(state): State<Shared>,
    body: Result<Json<RunBody>, JsonRejection>,
) -> Response {
    if let Some(refused) = super::refuse_when_stopping(&state) {
        return refused;
    }
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return error(
                e.status(),
                format!("invalid request body: {}", e.body_text()),
            );
        }
    };
    let loaded = state.loaded();
    for name in &body.probes {
        if loaded.probe(name).is_none() {
            return error(
                StatusCode::NOT_FOUND,
                format!("no probe named `{name}` runs on this agent"),
            );
        }
    }
    let everything = body.probes.is_empty() && body.tags.is_empty();
    let chosen: Vec<_> = loaded
        .probes
        .iter()
        .filter(|p| {
            everything
                || body.probes.contains(&p.spec.name)
                || p.tags.iter().any(|t| body.tags.contains(t))
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        return error(StatusCode::NOT_FOUND, "no probe matches the given tags");
    }
    let track = body.deploy.as_ref().and_then(|d| d.track.clone());
    if let Some(d) = &body.deploy {
        state.metrics.record_deploy(
            d.version.as_deref().unwrap_or(""),
            d.environment.as_deref().unwrap_or(""),
        );
    }
    let names: Vec<String> = chosen.iter().map(|p| p.spec.name.clone()).collect();
    let id = state.runs.create(names.clone(), body.deploy.clone());
    let handles: Vec<_> = chosen
        .iter()
        .map(|p| state.run_now(p, track.clone()))
        .collect();
    let finisher = {
        let state = Arc::clone(&state);
        let id = id.clone();
        async move {
            let mut results = Vec::with_capacity(handles.len());
            for h in handles {
                if let Ok(r) = h.await {
                    results.push(r);
                }
            }
            state.runs.finish(&id, results);
        }
    };
    tokio::spawn(finisher);
    let body = serde_json::json!({ "id": id, "status": "running", "probes": names, "url": format!("/api/v1/runs/{id}") });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `GET /api/v1/runs/{id}`
pub async fn get_run(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.runs.get(&id) {
        Some(run) => Json(run).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no run with id `{id}`")),
    }
}

/// `POST /-/reload`
pub async fn reload(State(state): State<Shared>) -> Response {
    match state.reload().await {
        Ok(done) => Json(serde_json::json!({"result": "success", "probes": done.probes, "restart_needed": done.restart_needed})).into_response(),
        Err(errors) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"result": "failure", "errors": errors})),
        )
            .into_response(),
    }
}
