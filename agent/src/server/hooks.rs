//! Deploy-tool integrations:
//! - `POST /api/v1/verify` for Argo Rollouts' `web` metric provider: always 200 with JSON, pass
//!   or fail, because Argo reads a non-JSON body as success;
//! - `POST /hooks/flagger`: Flagger's webhook payload; 200 on pass, 500 with a short summary on
//!   fail, 503 on inconclusive (Flagger passes only 200-202, so too little data never passes);
//!   one checksum is never verified twice at once, and its baseline ends when the checksum was
//!   first seen (Flagger calls the rollout hook every interval with the same checksum);
//! - `POST /hooks/alertmanager`: Alertmanager webhook v4; firing alerts labelled
//!   `action="rollback"` trigger the rollback action once per fingerprint, answered 202 at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::runs::Deploy;
use super::{Shared, error};
use crate::config::ProbeConfig;
use crate::deploy::{DeployVerification, Rounds, verify_in_agent};

/// Body of `POST /api/v1/verify`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// Probe names (all when empty, with `tags` empty too).
    #[serde(default)]
    pub probes: Vec<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Post-deploy runs per probe before the first look (default verify.runs).
    #[serde(default)]
    pub runs: Option<u32>,
    /// Post-deploy runs per probe at most, while a rule is within its margin of error (default
    /// verify.max_runs; equal to `runs` for a fixed number).
    #[serde(default)]
    pub max_runs: Option<u32>,
    /// The deploy being verified.
    #[serde(default)]
    pub deploy: Option<Deploy>,
}

fn select(state: &Shared, probes: &[String], tags: &[String]) -> Result<Vec<ProbeConfig>, String> {
    let loaded = state.loaded();
    if let Some(missing) = probes.iter().find(|n| loaded.probe(n).is_none()) {
        return Err(format!("no probe named `{missing}` runs on this agent"));
    }
    let everything = probes.is_empty() && tags.is_empty();
    let chosen: Vec<ProbeConfig> = loaded
        .probes
        .iter()
        .filter(|p| {
            everything || probes.contains(&p.spec.name) || p.tags.iter().any(|t| tags.contains(t))
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err("no probe matches the given tags".into());
    }
    Ok(chosen)
}

/// `POST /api/v1/verify` — the Argo Rollouts `web` metric provider's endpoint.
pub async fn verify(
    State(state): State<Shared>,
    body: Result<Json<VerifyBody>, JsonRejection>,
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
    let chosen = match select(&state, &body.probes, &body.tags) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    let rounds = Rounds::asked(
        &state.loaded().config.verify,
        body.runs.map(|n| n.min(1000)),
        body.max_runs.map(|n| n.min(1000)),
    );
    let outcome: DeployVerification =
        verify_in_agent(&state, chosen, rounds, body.deploy, None).await;
    // Always 200: Argo judges `result.verdict`, and reads a non-2xx or non-JSON answer wrongly.
    Json(outcome).into_response()
}

/// Flagger's webhook payload.
#[derive(Debug, Deserialize)]
pub struct FlaggerPayload {
    /// Canary name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Flagger's phase (Progressing, ...).
    #[serde(default)]
    pub phase: Option<String>,
    /// The canary's checksum: one revision.
    #[serde(default)]
    pub checksum: Option<String>,
    /// `tags` and `probes`, comma-separated (Flagger metadata values are strings).
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// The answer to one Flagger verification, filled in when it is known.
type Answer = Arc<tokio::sync::Mutex<Option<(StatusCode, String)>>>;

/// How many (namespace, name, checksum) first sightings are remembered; the oldest go first.
const REMEMBERED_DEPLOYS: usize = 1024;

/// Flagger checksums under verification, each with its eventual answer, and when each canary
/// revision was first seen.
#[derive(Debug, Default)]
pub struct InProgress {
    running: Mutex<HashMap<String, Answer>>,
    first_seen: Mutex<HashMap<(String, String, String), i64>>,
}

impl InProgress {
    /// When `(namespace, name, checksum)` was first seen (unix ms), `now_ms` on the first call.
    /// Flagger's payload carries no deploy time, and it calls the rollout hook at every analysis
    /// interval with the same checksum: the first call is the closest thing to the deploy
    /// moment, and ending every later call's baseline there keeps the earlier calls' post-deploy
    /// runs out of it.
    pub fn deploy_seen(&self, namespace: &str, name: &str, checksum: &str, now_ms: i64) -> i64 {
        let mut seen = self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (
            namespace.to_string(),
            name.to_string(),
            checksum.to_string(),
        );
        if let Some(at) = seen.get(&key) {
            return *at;
        }
        if seen.len() >= REMEMBERED_DEPLOYS
            && let Some(oldest) = seen
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
        {
            seen.remove(&oldest);
        }
        seen.insert(key, now_ms);
        now_ms
    }
}

/// `POST /hooks/flagger`
pub async fn flagger(
    State(state): State<Shared>,
    body: Result<Json<FlaggerPayload>, JsonRejection>,
) -> Response {
    if let Some(refused) = super::refuse_when_stopping(&state) {
        return refused;
    }
    let payload = match body {
        Ok(Json(p)) => p,
        Err(e) => {
            return (
                e.status(),
                format!("invalid Flagger payload: {}\n", e.body_text()),
            )
                .into_response();
        }
    };
    let list = |key: &str| -> Vec<String> {
        payload
            .metadata
            .get(key)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let chosen = match select(&state, &list("probes"), &list("tags")) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let key = payload
        .checksum
        .clone()
        .unwrap_or_else(|| format!("{}/{}", payload.namespace, payload.name));
    // The first request for a checksum verifies; concurrent ones wait for its answer.
    let slot = {
        let mut running = state
            .flagger
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(running.entry(key.clone()).or_default())
    };
    let mut answer = slot.lock().await;
    if let Some((status, text)) = answer.as_ref() {
        return (*status, text.clone()).into_response();
    }
    // Without a checksum there is no telling revisions apart: the baseline ends at the call.
    let at_ms = payload.checksum.as_deref().map(|checksum| {
        state.flagger.deploy_seen(
            &payload.namespace,
            &payload.name,
            checksum,
            chrono::Utc::now().timestamp_millis(),
        )
    });
    let deploy = Deploy {
        version: payload.checksum.clone(),
        environment: Some(payload.namespace.clone()),
        track: None,
        at_ms,
    };
    let rounds = Rounds::asked(&state.loaded().config.verify, None, None);
    let outcome = verify_in_agent(&state, chosen, rounds, Some(deploy), Some(key.clone())).await;
    let failed_runs = outcome
        .details
        .probes
        .values()
        .any(|n| n.current.failures > 0);
    // Flagger counts any status above 202 as a failed check. 503 says "could not judge" (too
    // little baseline) apart from 500 "judged and failed"; both keep the canary from advancing,
    // and `threshold` of them roll it back: too few samples never promotes a canary.
    let (word, status) = match outcome.verdict {
        crate::verdict::Decision::Fail => ("fail", StatusCode::INTERNAL_SERVER_ERROR),
        _ if failed_runs => ("fail", StatusCode::INTERNAL_SERVER_ERROR),
        crate::verdict::Decision::Inconclusive => ("inconclusive", StatusCode::SERVICE_UNAVAILABLE),
        crate::verdict::Decision::Pass => ("pass", StatusCode::OK),
    };
    let text = format!(
        "{} {}/{} ({}): {}\n",
        word,
        payload.namespace,
        payload.name,
        payload.phase.as_deref().unwrap_or("unknown phase"),
        outcome.details.summary().replace('\n', "; ")
    );
    *answer = Some((status, text.clone()));
    drop(answer);
    // Later requests for the same checksum verify afresh (a retried analysis step).
    state
        .flagger
        .running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&key);
    (status, text).into_response()
}

/// Alertmanager's webhook payload (version 4), the parts Patrol reads.
#[derive(Debug, Deserialize)]
pub struct AlertmanagerPayload {
    /// "4".
    pub version: String,
    /// The alerts.
    pub alerts: Vec<Alert>,
}

/// One alert.
#[derive(Debug, Deserialize)]
pub struct Alert {
    /// firing or resolved.
    pub status: String,
    /// Its labels.
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// Identifies the alert.
    #[serde(default)]
    pub fingerprint: String,
}

/// `POST /hooks/alertmanager`
pub async fn alertmanager(
    State(state): State<Shared>,
    body: Result<Json<AlertmanagerPayload>, JsonRejection>,
) -> Response {
    if let Some(refused) = super::refuse_when_stopping(&state) {
        return refused;
    }
    let payload = match body {
        Ok(Json(p)) => p,
        Err(e) => {
            return error(
                e.status(),
                format!("invalid Alertmanager payload: {}", e.body_text()),
            );
        }
    };
    if payload.version != "4" {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported Alertmanager webhook version {}; Patrol reads version 4",
                payload.version
            ),
        );
    }
    let mut triggered = Vec::new();
    for alert in payload.alerts {
        let rollback =
            alert.status == "firing" && alert.labels.get("action").is_some_and(|a| a == "rollback");
        if !rollback || alert.fingerprint.is_empty() || !state.alerts.first_time(&alert.fingerprint)
        {
            continue;
        }
        triggered.push(alert.fingerprint.clone());
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let name = alert
                .labels
                .get("alertname")
                .cloned()
                .unwrap_or_else(|| "alert".into());
            let deploy = alert
                .labels
                .get("version")
                .cloned()
                .unwrap_or_else(|| alert.fingerprint.clone());
            let probes: Vec<String> = alert.labels.get("probe").cloned().into_iter().collect();
            let verdict = crate::verdict::Verdict::from_reasons(
                "alert",
                vec![crate::verdict::Reason {
                    probe: probes.first().cloned().unwrap_or_default(),
                    decision: crate::verdict::Decision::Fail,
                    rule: "alert",
                    message: format!("Alertmanager alert {name} is firing"),
                }],
                Default::default(),
            );
            let action = crate::deploy::action::RollbackAction::from_config(&state.loaded().config);
            let outcome = action.run(&state.acted, &deploy, &probes, &verdict).await;
            state.metrics.record_rollback_action(outcome.result);
        });
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": true, "triggered": triggered})),
    )
        .into_response()
}
