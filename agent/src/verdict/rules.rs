//! The runbook's rollback rules against a pre-deploy baseline: the error rate rose by more than
//! `error_rate_increase` points, p95 latency rose by more than `latency_increase` (and by more
//! than `min_latency_increase`, and — with enough samples — Mann-Whitney is 95% confident the
//! shift exceeds `min_latency_increase`), or a probe tagged `health` failed.
//!
//! At an interim look a rule decides only beyond its margin of error: the 95% interval of the
//! error-rate rise (Newcombe) or of the p95 ratio (Harrell-Davis estimates and their jackknife
//! errors) must lie wholly on one side of the limit; otherwise the probe is undecided and runs
//! again. The final look decides on the estimates, as a fixed number of runs would.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::stats::{Z95, harrell_davis_se, mann_whitney, newcombe_difference};
use super::{Aggregate, Decision, Look, ProbeNumbers, Reason, Verdict, ms};

/// The rule limits (from `verify:` in the config).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Percentage points.
    pub error_rate_increase: f64,
    /// Fraction: 0.5 = +50%.
    pub latency_increase: f64,
    /// A p95 rise smaller than this (seconds) is noise, whatever the ratio.
    pub min_latency_increase: f64,
    /// Baseline runs needed per probe for a verdict.
    pub min_samples: u64,
}

/// Post-deploy runs before an interim look may pass a p95 that rose by more than half the limit.
/// Below that the p95 rests on the top two or three runs, and so does its margin of error: 20
/// runs of a route made 60% slower read as within a 50% limit, margin included, in ~0.3% of
/// deploys.
pub const SETTLED_P95_RUNS: u64 = 40;

/// Judges `current` (after the deploy) against `baseline`, probe by probe.
pub fn judge(
    baseline: &BTreeMap<String, Aggregate>,
    current: &BTreeMap<String, Aggregate>,
    health: &HashSet<String>,
    rules: &Rules,
    look: Look,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut numbers = BTreeMap::new();
    let mut undecided = BTreeSet::new();
    for (probe, now) in current {
        let before = baseline.get(probe);
        let mut push = |decision, rule, message: String| {
            if decision == Decision::Inconclusive && rule != "samples" {
                undecided.insert(probe.clone());
            }
            reasons.push(Reason {
                probe: probe.clone(),
                decision,
                rule,
                message,
            });
        };
        if now.runs == 0 {
            push(
                Decision::Inconclusive,
                "samples",
                "no run after the deploy".into(),
            );
        }
        if health.contains(probe) && now.failures > 0 {
            push(
                Decision::Fail,
                "health",
                format!(
                    "health probe failed {} of {} runs after the deploy",
                    now.failures, now.runs
                ),
            );
        }
        match before {
            Some(b) if b.runs >= rules.min_samples && now.runs > 0 => {
                error_rate(b, now, rules, look, &mut push);
                latency(b, now, rules, look, &mut push);
            }
            _ => push(
                Decision::Inconclusive,
                "samples",
                format!(
                    "baseline has {} run{} before the deploy, {} needed for a verdict",
                    before.map_or(0, |b| b.runs),
                    if before.map_or(0, |b| b.runs) == 1 {
                        ""
                    } else {
                        "s"
                    },
                    rules.min_samples
                ),
            ),
        }
        numbers.insert(
            probe.clone(),
            ProbeNumbers {
                baseline: before.cloned(),
                current: now.clone(),
            },
        );
    }
    let mut verdict = Verdict::from_reasons("rules", reasons, numbers);
    verdict.undecided = undecided;
    verdict
}

fn error_rate(
    before: &Aggregate,
    now: &Aggregate,
    rules: &Rules,
    look: Look,
    push: &mut impl FnMut(Decision, &'static str, String),
) {
    let rise = now.error_rate - before.error_rate;
    let (low, high) =
        newcombe_difference(now.failures, now.runs, before.failures, before.runs, Z95);
    let (low, high) = (low * 100.0, high * 100.0);
    let limit = rules.error_rate_increase;
    let ci = format!("95% CI {low:+.1} to {high:+.1}");
    let decision = match look {
        Look::Interim if low > limit => Decision::Fail,
        Look::Interim if high <= limit => Decision::Pass,
        Look::Interim => Decision::Inconclusive,
        Look::Final if rise > limit => Decision::Fail,
        Look::Final => Decision::Pass,
    };
    let message = match decision {
        Decision::Fail => format!(
            "error rate rose from {:.1}% to {:.1}% (+{rise:.1} points, {ci}; more than the {limit:.1} allowed)",
            before.error_rate, now.error_rate
        ),
        Decision::Pass => format!(
            "error rate {:.1}% vs {:.1}% before ({rise:+.1} points, {ci})",
            now.error_rate, before.error_rate
        ),
        Decision::Inconclusive => format!(
            "error rate {:.1}% vs {:.1}% before ({rise:+.1} points, {ci}): within the margin of the {limit:.1} allowed, more runs needed",
            now.error_rate, before.error_rate
        ),
    };
    push(decision, "error_rate", message);
}

fn latency(
    before: &Aggregate,
    now: &Aggregate,
    rules: &Rules,
    look: Look,
    push: &mut impl FnMut(Decision, &'static str, String),
) {
    let (Some(b), Some(n)) = (before.p95, now.p95) else {
        return;
    };
    let limit = 1.0 + rules.latency_increase;
    let rise = n - b;
    let ratio = n / b.max(1e-9);
    // The ratio's margin of error from both estimates' (no samples, as from Prometheus buckets: 0).
    let relative_se = |a: &Aggregate, p95: f64| harrell_davis_se(&a.samples, 0.95) / p95.max(1e-9);
    let margin = Z95 * ratio * relative_se(now, n).hypot(relative_se(before, b));
    let (low, high) = (ratio - margin, ratio + margin);
    let ci = format!(
        "95% CI {:+.0}% to {:+.0}%",
        (low - 1.0) * 100.0,
        (high - 1.0) * 100.0
    );
    // Where the baseline p95 came from, when not from every run (Prometheus).
    let source = before
        .p95_source
        .as_ref()
        .map(|s| format!(" (baseline p95 from {s})"))
        .unwrap_or_default();
    // With raw samples on both sides, only a significant shift counts: jitter is not a
    // regression. Confident (95%) that the typical latency rose by more than the noise floor.
    let shift = (before.samples.len() >= 5 && now.samples.len() >= 5)
        .then(|| mann_whitney(&before.samples, &now.samples))
        .flatten();
    let significant =
        shift.is_none_or(|mw| mw.p_value < 0.05 && mw.ci.0 > rules.min_latency_increase);
    let over = ratio > limit && rise > rules.min_latency_increase;
    let decision = match look {
        _ if rise <= rules.min_latency_increase => Decision::Pass,
        Look::Interim if low > limit && significant => Decision::Fail,
        Look::Interim
            if high <= limit
                && (ratio <= 1.0 + rules.latency_increase / 2.0
                    || now.runs >= SETTLED_P95_RUNS) =>
        {
            Decision::Pass
        }
        Look::Interim => Decision::Inconclusive,
        Look::Final if over && significant => Decision::Fail,
        Look::Final => Decision::Pass,
    };
    let message = match (decision, shift) {
        (Decision::Fail, _) => format!(
            "p95 latency rose from {} to {} ({:+.0}%, {ci}; more than the {:.0}% allowed){source}",
            ms(b),
            ms(n),
            (ratio - 1.0) * 100.0,
            rules.latency_increase * 100.0
        ),
        (Decision::Pass, Some(mw)) if over => format!(
            "p95 {} vs {} before, but the shift is not significant (Mann-Whitney p={:.3}, 95% CI of the shift {} to {}){source}",
            ms(n),
            ms(b),
            mw.p_value,
            ms(mw.ci.0),
            ms(mw.ci.1)
        ),
        (Decision::Pass, _) => format!("p95 {} vs {} before ({ci}){source}", ms(n), ms(b)),
        (Decision::Inconclusive, _) => format!(
            "p95 {} vs {} before ({ci}): within the margin of the {:.0}% allowed, more runs needed{source}",
            ms(n),
            ms(b),
            rules.latency_increase * 100.0
        ),
    };
    push(decision, "latency", message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(durations_ms: &[f64], failures: u64) -> Aggregate {
        Aggregate::from_samples(durations_ms.iter().map(|d| d / 1000.0).collect(), failures)
    }

    fn rules() -> Rules {
        Rules {
            error_rate_increase: 10.0,
            latency_increase: 0.5,
            min_latency_increase: 0.005,
            min_samples: 5,
        }
    }

    fn one(name: &str, a: Aggregate) -> BTreeMap<String, Aggregate> {
        BTreeMap::from([(name.to_string(), a)])
    }

    /// Judges probe `a` at `look`.
    fn look_at(look: Look, base: Aggregate, now: Aggregate) -> Verdict {
        judge(
            &one("a", base),
            &one("a", now),
            &HashSet::new(),
            &rules(),
            look,
        )
    }

    #[test]
    fn healthy_deploy_passes() {
        let base = agg(&[100.0, 104.0, 98.0, 101.0, 99.0, 103.0, 102.0, 100.0], 0);
        let now = agg(&[101.0, 99.0, 105.0, 100.0, 102.0, 98.0], 0);
        let v = judge(
            &one("api", base),
            &one("api", now),
            &HashSet::new(),
            &rules(),
            Look::Final,
        );
        assert_eq!(v.verdict, Decision::Pass, "{}", v.summary());
    }

    #[test]
    fn latency_regression_fails_with_the_numbers() {
        let base = agg(&[100.0, 104.0, 98.0, 101.0, 99.0, 103.0, 102.0, 100.0], 0);
        let now = agg(&[180.0, 178.0, 185.0, 181.0, 179.0, 183.0], 0);
        let v = judge(
            &one("api", base),
            &one("api", now),
            &HashSet::new(),
            &rules(),
            Look::Final,
        );
        assert_eq!(v.verdict, Decision::Fail);
        assert_eq!(v.reasons[0].rule, "latency");
        assert_eq!(
            v.reasons[0].message,
            "p95 latency rose from 104ms to 185ms (+78%, 95% CI +74% to +82%; more than the 50% \
             allowed)"
        );
    }

    #[test]
    fn ten_percent_slower_passes_and_tiny_absolute_rises_are_noise() {
        let base = agg(&[100.0; 10], 0);
        let now = agg(&[110.0; 10], 0);
        assert_eq!(look_at(Look::Final, base, now).verdict, Decision::Pass);
        // 1ms → 2ms is +100% but only 1ms: noise on loopback.
        let base = agg(&[1.0; 10], 0);
        let now = agg(&[2.0; 10], 0);
        assert_eq!(look_at(Look::Final, base, now).verdict, Decision::Pass);
    }

    #[test]
    fn error_rate_rise_fails() {
        let base = agg(&[100.0; 10], 0);
        let now = agg(&[100.0; 10], 3);
        let v = judge(
            &one("cart", base),
            &one("cart", now),
            &HashSet::new(),
            &rules(),
            Look::Final,
        );
        assert_eq!(v.verdict, Decision::Fail);
        assert_eq!(
            v.reasons[0].message,
            "error rate rose from 0.0% to 30.0% (+30.0 points, 95% CI -3.8 to +60.3; more than the \
             10.0 allowed)"
        );
    }

    #[test]
    fn a_failing_health_probe_fails_even_without_a_baseline() {
        let now = agg(&[5.0, 5.0], 1);
        let health = HashSet::from(["health".to_string()]);
        let v = judge(
            &BTreeMap::new(),
            &one("health", now),
            &health,
            &rules(),
            Look::Final,
        );
        assert_eq!(v.verdict, Decision::Fail);
        assert_eq!(v.reasons[0].rule, "health");
    }

    #[test]
    fn a_small_baseline_is_inconclusive_never_pass() {
        let base = agg(&[100.0; 3], 0);
        let now = agg(&[100.0; 10], 0);
        let v = look_at(Look::Final, base, now);
        assert_eq!(v.verdict, Decision::Inconclusive);
        assert_eq!(
            v.reasons[0].message,
            "baseline has 3 runs before the deploy, 5 needed for a verdict"
        );
    }

    /// `n` durations spread evenly over `from..to` ms.
    fn spread(from: f64, to: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| from + (to - from) * (i as f64 + 0.5) / n as f64)
            .collect()
    }

    fn reason<'a>(v: &'a Verdict, rule: &str) -> &'a Reason {
        v.reasons
            .iter()
            .find(|r| r.rule == rule)
            .unwrap_or_else(|| panic!("no {rule} reason: {v:?}"))
    }

    #[test]
    fn interim_looks_judge_the_error_rate_only_beyond_its_margin_of_error() {
        let base = || agg(&[100.0; 100], 0);
        // 1 of 20 (+5 points): the interval (-0.5 to +23.6) straddles the 10 allowed.
        let v = look_at(Look::Interim, base(), agg(&[100.0; 20], 1));
        assert_eq!(v.verdict, Decision::Inconclusive, "{}", v.summary());
        assert!(v.undecided.contains("a"));
        assert_eq!(
            reason(&v, "error_rate").message,
            "error rate 5.0% vs 0.0% before (+5.0 points, 95% CI -0.5 to +23.6): within the \
             margin of the 10.0 allowed, more runs needed"
        );
        // The final look decides on the estimate.
        let v = look_at(Look::Final, base(), agg(&[100.0; 20], 1));
        assert_eq!(v.verdict, Decision::Pass);
        assert!(v.undecided.is_empty());
        // 0 of 20 cannot rule out a route failing 16% of requests; 0 of 35 rules out 10%.
        assert!(
            look_at(Look::Interim, base(), agg(&[100.0; 20], 0))
                .undecided
                .contains("a")
        );
        let v = look_at(Look::Interim, base(), agg(&[100.0; 35], 0));
        assert_eq!(v.verdict, Decision::Pass, "{}", v.summary());
        assert!(v.undecided.is_empty());
        // 8 of 20 (+40 points, interval +21.5 to +61.3) fails at once.
        let v = look_at(Look::Interim, base(), agg(&[100.0; 20], 8));
        assert_eq!(v.verdict, Decision::Fail, "{}", v.summary());
    }

    #[test]
    fn interim_looks_judge_p95_only_beyond_its_margin_and_a_large_rise_only_after_enough_runs() {
        let base = || agg(&spread(40.0, 80.0, 100), 0);
        // Unchanged: passes at the first look.
        let v = look_at(Look::Interim, base(), agg(&spread(40.0, 80.0, 20), 0));
        assert_eq!(reason(&v, "latency").decision, Decision::Pass, "{v:?}");
        // Doubled: fails at the first look.
        let v = look_at(Look::Interim, base(), agg(&spread(80.0, 160.0, 20), 0));
        assert_eq!(v.verdict, Decision::Fail, "{}", v.summary());
        assert_eq!(reason(&v, "latency").decision, Decision::Fail);
        // +30% is within the 50% allowed, margin included, but past half of it: 20 runs are too
        // few to pass it, 40 are enough.
        let v = look_at(Look::Interim, base(), agg(&spread(52.0, 104.0, 20), 0));
        let latency = reason(&v, "latency");
        assert_eq!(latency.decision, Decision::Inconclusive, "{v:?}");
        assert!(latency.message.contains("more runs needed"), "{v:?}");
        let v = look_at(
            Look::Interim,
            base(),
            agg(&spread(52.0, 104.0, SETTLED_P95_RUNS as usize), 0),
        );
        assert_eq!(reason(&v, "latency").decision, Decision::Pass, "{v:?}");
        // +60% with one slow run among 20: the margin reaches below the limit, so more runs.
        let mut slow = spread(64.0, 128.0, 19);
        slow.push(260.0);
        let v = look_at(Look::Interim, base(), agg(&slow, 0));
        assert_eq!(
            reason(&v, "latency").decision,
            Decision::Inconclusive,
            "{v:?}"
        );
    }
}
