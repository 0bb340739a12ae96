//! Deploy verification: gathers the numbers a verdict needs — post-deploy runs, a pre-deploy
//! baseline, canary and stable samples — and acts on a fail verdict. Post-deploy runs are
//! sequential ([`run_until_settled`]): the minimum, then more of only the probes still within
//! their margin of error, up to a cap.
//!
//! - [`baseline`]: the baseline from the agent's own history, a running agent's API, or
//!   Prometheus
//! - [`action`]: the rollback action (command or webhook), dry-run by default, once per deploy

pub mod action;
pub mod baseline;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use patrol_probes::result::ProbeResult;

use crate::config::{Config, ProbeConfig, VerifyConfig};
use crate::verdict::rules::Rules;
use crate::verdict::{Aggregate, Decision, Look, Verdict, canary::CanaryRules};

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

/// How many rounds of post-deploy runs a verdict may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    /// Always run, before the first look.
    pub min: u32,
    /// Never more: the final look decides borderline rules on their estimates.
    pub max: u32,
}

impl Rounds {
    /// `min` (at least 1) to `max` (at least `min`).
    pub fn new(min: u32, max: u32) -> Rounds {
        let min = min.max(1);
        Rounds {
            min,
            max: max.max(min),
        }
    }

    /// `runs` to `max_runs` as asked, each defaulting to the config's `verify.runs` and
    /// `verify.max_runs`.
    pub fn asked(verify: &VerifyConfig, runs: Option<u32>, max_runs: Option<u32>) -> Rounds {
        Rounds::new(
            runs.unwrap_or(verify.runs),
            max_runs.unwrap_or(verify.max_runs),
        )
    }
}

/// Runs rounds until the verdict is settled: `rounds.min` of every probe, then one round at a
/// time of only the probes an interim look leaves undecided, until none is, the verdict fails
/// beyond doubt, or `rounds.max`; round starts `interval` apart. `run_round` runs the named
/// probes (`None`: all) and returns their results, which `judge` looks at with every earlier
/// round's. Returns the results, the final look's verdict and the rounds run.
pub async fn run_until_settled<R, F: Future<Output = Vec<R>>>(
    rounds: Rounds,
    interval: Duration,
    mut run_round: impl FnMut(Option<BTreeSet<String>>) -> F,
    judge: impl Fn(&[R], Look) -> Verdict,
) -> (Vec<R>, Verdict, u32) {
    let mut results = Vec::new();
    let mut only: Option<BTreeSet<String>> = None;
    let mut done = 0;
    loop {
        let started = tokio::time::Instant::now();
        results.extend(run_round(only.clone()).await);
        done += 1;
        if done >= rounds.max {
            break;
        }
        if done >= rounds.min {
            let interim = judge(&results, Look::Interim);
            if interim.verdict == Decision::Fail || interim.undecided.is_empty() {
                break;
            }
            tracing::debug!(round = done, undecided = ?interim.undecided, "Verdict within the margin of error: running again.");
            only = Some(interim.undecided);
        }
        tokio::time::sleep_until(started + interval).await;
    }
    let verdict = judge(&results, Look::Final);
    (results, verdict, done)
}

/// The probes of `probes` named in `only` (all when `None`).
pub fn only<'a>(
    probes: &[&'a ProbeConfig],
    only: Option<&BTreeSet<String>>,
) -> Vec<&'a ProbeConfig> {
    probes
        .iter()
        .filter(|p| only.is_none_or(|names| names.contains(&p.spec.name)))
        .copied()
        .collect()
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
/// with the runbook's rules, more of them while a rule is within its margin of error (see
/// [`run_until_settled`]); a fail verdict triggers the rollback action (once per deploy).
pub async fn verify_in_agent(
    state: &crate::daemon::AgentState,
    probes: Vec<ProbeConfig>,
    rounds: Rounds,
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
    let chosen: Vec<&ProbeConfig> = probes.iter().collect();
    let health = health_probes(&chosen);
    let limits = rules(&loaded.config);
    let (results, verdict, _) = run_until_settled(
        rounds,
        Duration::from_millis(500),
        |names| {
            let handles: Vec<_> = only(&chosen, names.as_ref())
                .into_iter()
                .map(|p| state.run_now(p, track.clone()))
                .collect();
            async move {
                let mut results = Vec::with_capacity(handles.len());
                for h in handles {
                    if let Ok(r) = h.await {
                        results.push(r);
                    }
                }
                results
            }
        },
        |results, look| {
            let current = aggregates(results.iter().map(|r| r.as_ref()));
            crate::verdict::rules::judge(&base, &current, &health, &limits, look)
        },
    )
    .await;
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
    // The verdict's numbers hold every probe's post-deploy aggregate.
    let current = verdict.probes.iter().map(|(k, n)| (k.clone(), &n.current));
    DeployVerification {
        verdict: verdict.verdict,
        error_rates: current.clone().map(|(k, a)| (k, a.error_rate)).collect(),
        p95s: current.map(|(k, a)| (k, a.p95)).collect(),
        details: verdict,
        action,
        deploy,
        runs: results.iter().map(|r| r.id.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{ProbeNumbers, Reason, Verdict};

    /// A judge over (probe, round) results: `slow` is undecided at interim looks until it has
    /// `settles_after` runs, `fails` (when present) fails beyond doubt, anything else passes.
    fn judge(results: &[(String, u32)], look: Look, settles_after: usize) -> Verdict {
        let mut reasons = Vec::new();
        let mut undecided = BTreeSet::new();
        let mut numbers = BTreeMap::new();
        let names: BTreeSet<&String> = results.iter().map(|r| &r.0).collect();
        for name in names {
            numbers.insert(name.clone(), ProbeNumbers::default());
            let runs = results.iter().filter(|r| &r.0 == name).count();
            let decision = match name.as_str() {
                "fails" => Decision::Fail,
                "slow" if look == Look::Interim && runs < settles_after => {
                    undecided.insert(name.clone());
                    Decision::Inconclusive
                }
                _ => Decision::Pass,
            };
            reasons.push(Reason {
                probe: name.clone(),
                decision,
                rule: "error_rate",
                message: format!("{runs} runs"),
            });
        }
        let mut verdict = Verdict::from_reasons("rules", reasons, numbers);
        verdict.undecided = undecided;
        verdict
    }

    async fn settle(
        probes: &[&str],
        rounds: Rounds,
        settles_after: usize,
    ) -> (Vec<(String, u32)>, Verdict, u32) {
        let mut round = 0;
        run_until_settled(
            rounds,
            Duration::from_secs(1),
            |only: Option<BTreeSet<String>>| {
                round += 1;
                let batch: Vec<(String, u32)> = probes
                    .iter()
                    .filter(|p| only.as_ref().is_none_or(|o| o.contains(**p)))
                    .map(|p| (p.to_string(), round))
                    .collect();
                async move { batch }
            },
            |results, look| judge(results, look, settles_after),
        )
        .await
    }

    fn runs_of(results: &[(String, u32)], probe: &str) -> usize {
        results.iter().filter(|r| r.0 == probe).count()
    }

    #[tokio::test(start_paused = true)]
    async fn runs_the_minimum_then_only_undecided_probes_until_they_settle() {
        let started = tokio::time::Instant::now();
        let (results, verdict, rounds) = settle(&["quick", "slow"], Rounds::new(3, 100), 7).await;
        assert_eq!(rounds, 7);
        assert_eq!(runs_of(&results, "quick"), 3);
        assert_eq!(runs_of(&results, "slow"), 7);
        assert_eq!(verdict.verdict, Decision::Pass);
        // Round starts are an interval apart: 7 rounds take 6 intervals.
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_cap_and_decides_with_the_final_look() {
        let (results, verdict, rounds) = settle(&["slow"], Rounds::new(2, 5), 1000).await;
        assert_eq!((rounds, runs_of(&results, "slow")), (5, 5));
        // The final look decides what interim looks left open.
        assert_eq!(verdict.verdict, Decision::Pass);
        assert!(verdict.undecided.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_beyond_doubt_stops_at_the_minimum() {
        let (results, verdict, rounds) =
            settle(&["fails", "slow"], Rounds::new(4, 100), 1000).await;
        assert_eq!(rounds, 4);
        assert_eq!(runs_of(&results, "slow"), 4);
        assert_eq!(verdict.verdict, Decision::Fail);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_number_of_runs_runs_exactly_that_many() {
        assert_eq!(Rounds::new(0, 0), Rounds { min: 1, max: 1 });
        assert_eq!(Rounds::new(10, 3), Rounds { min: 10, max: 10 });
        let (results, _, rounds) = settle(&["slow"], Rounds::new(6, 6), 1000).await;
        assert_eq!((rounds, results.len()), (6, 6));
    }
}
