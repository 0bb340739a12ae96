//! Deploy verification: gathers the numbers a verdict needs — post-deploy runs, a pre-deploy
//! baseline, canary and stable samples — and acts on a fail verdict.
//!
//! - [`baseline`]: the baseline from the agent's own history, a running agent's API, or
//!   Prometheus
//! - [`action`]: the rollback action (command or webhook), dry-run by default, once per deploy

pub mod action;
pub mod baseline;

use std::collections::BTreeMap;
use std::time::Duration;

use patrol_probes::result::ProbeResult;
use patrol_probes::run::Runtime;

use crate::config::{Config, ProbeConfig};
use crate::verdict::rules::Rules;
use crate::verdict::{Aggregate, canary::CanaryRules};

/// Aggregates results per probe.
pub fn aggregates<'a>(
    results: impl IntoIterator<Item = &'a ProbeResult>,
) -> BTreeMap<String, Aggregate> {
    let mut by_probe: BTreeMap<String, Vec<&ProbeResult>> = BTreeMap::new();
    for r in results {
        by_probe.entry(r.name.clone()).or_default().push(r);
    }
    by_probe
        .into_iter()
        .map(|(name, runs)| (name, Aggregate::of(runs)))
        .collect()
}

/// Runs every probe `rounds` times, a round at a time, `interval` between round starts.
pub async fn run_rounds(
    probes: &[&ProbeConfig],
    runtime: &Runtime,
    concurrency: usize,
    rounds: u32,
    interval: Duration,
) -> Vec<ProbeResult> {
    let mut results = Vec::new();
    for round in 0..rounds {
        let started = tokio::time::Instant::now();
        results.extend(crate::verify::run_all(probes, runtime, concurrency).await);
        if round + 1 < rounds {
            tokio::time::sleep_until(started + interval).await;
        }
    }
    results
}

/// The rule limits of a config.
pub fn rules(config: &Config) -> Rules {
    Rules {
        error_rate_increase: config.verify.error_rate_increase,
        latency_increase: config.verify.latency_increase,
        min_latency_increase: config.verify.min_latency_increase.as_secs_f64(),
        min_samples: config.verify.min_samples,
    }
}

/// The canary limits of a config.
pub fn canary_rules(config: &Config) -> CanaryRules {
    CanaryRules {
        min_samples: config.verify.min_samples.max(10),
        error_rate_increase: config.verify.error_rate_increase,
        ..CanaryRules::default()
    }
}

/// Names of the probes tagged `health`.
pub fn health_probes(probes: &[&ProbeConfig]) -> std::collections::HashSet<String> {
    probes
        .iter()
        .filter(|p| p.tags.iter().any(|t| t == "health"))
        .map(|p| p.spec.name.clone())
        .collect()
}

/// What a deploy verification inside the agent decided and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployVerification {
    /// pass, fail or inconclusive (also at the top for Argo's `result.verdict`).
    pub verdict: crate::verdict::Decision,
    /// Error rate per probe after the deploy, percent.
    pub error_rates: BTreeMap<String, f64>,
    /// p95 per probe after the deploy, seconds.
    pub p95s: BTreeMap<String, Option<f64>>,
    /// The full verdict with reasons and numbers.
    pub details: crate::verdict::Verdict,
    /// The rollback action's outcome on a fail verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<action::ActionOutcome>,
    /// The deploy this was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<crate::server::runs::Deploy>,
    /// Ids of the post-deploy runs (see `GET /api/v1/probes/{name}/runs`).
    pub runs: Vec<String>,
}

/// Verifies a deploy inside the agent: the baseline is the agent's own history over
/// `verify.baseline` before now; `rounds` post-deploy runs of each probe are judged against it
/// with the runbook's rules; a fail verdict triggers the rollback action (once per deploy).
pub async fn verify_in_agent(
    state: &crate::daemon::AgentState,
    probes: Vec<ProbeConfig>,
    rounds: u32,
    deploy: Option<crate::server::runs::Deploy>,
    deploy_key: Option<String>,
) -> DeployVerification {
    let loaded = state.loaded();
    let names: Vec<String> = probes.iter().map(|p| p.spec.name.clone()).collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    // The baseline ends when the deploy happened: runs after it belong to the new version.
    let until = deploy
        .as_ref()
        .and_then(|d| d.at_ms)
        .unwrap_or(now_ms)
        .min(now_ms);
    let since = until - loaded.config.verify.baseline.as_millis() as i64;
    let base = baseline::from_history(&state.history, &names, since, until);
    if let Some(d) = &deploy {
        state.metrics.record_deploy(
            d.version.as_deref().unwrap_or(""),
            d.environment.as_deref().unwrap_or(""),
        );
    }
    let track = deploy.as_ref().and_then(|d| d.track.clone());
    let mut results = Vec::new();
    for round in 0..rounds.max(1) {
        let started = tokio::time::Instant::now();
        let handles: Vec<_> = probes
            .iter()
            .map(|p| state.run_now(p, track.clone()))
            .collect();
        for h in handles {
            if let Ok(r) = h.await {
                results.push(r);
            }
        }
        if round + 1 < rounds {
            tokio::time::sleep_until(started + Duration::from_millis(500)).await;
        }
    }
    let refs: Vec<&ProbeResult> = results.iter().map(|r| r.as_ref()).collect();
    let current = aggregates(refs.iter().copied());
    let chosen: Vec<&ProbeConfig> = probes.iter().collect();
    let verdict = crate::verdict::rules::judge(
        &base,
        &current,
        &health_probes(&chosen),
        &rules(&loaded.config),
    );
    state.metrics.record_verdict(verdict.verdict.as_str());
    tracing::info!(verdict = verdict.verdict.as_str(), summary = %verdict.summary(), "Deploy verified.");
    let action = if verdict.verdict == crate::verdict::Decision::Fail {
        let key = deploy_key
            .or_else(|| deploy.as_ref().and_then(|d| d.version.clone()))
            .unwrap_or_else(|| format!("unversioned-{now_ms}"));
        let outcome = action::RollbackAction::from_config(&loaded.config)
            .run(&state.acted, &key, &names, &verdict)
            .await;
        state.metrics.record_rollback_action(outcome.result);
        Some(outcome)
    } else {
        None
    };
    DeployVerification {
        verdict: verdict.verdict,
        error_rates: current
            .iter()
            .map(|(k, a)| (k.clone(), a.error_rate))
            .collect(),
        p95s: current.iter().map(|(k, a)| (k.clone(), a.p95)).collect(),
        details: verdict,
        action,
        deploy,
        runs: results.iter().map(|r| r.id.clone()).collect(),
    }
}
