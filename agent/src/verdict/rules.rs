//! The runbook's rollback rules against a pre-deploy baseline: the error rate rose by more than
//! `error_rate_increase` points, p95 latency rose by more than `latency_increase` (and by more
//! than `min_latency_increase`, and — with enough samples — Mann-Whitney is 95% confident the
//! shift exceeds `min_latency_increase`), or a
//! probe tagged `health` failed.

use std::collections::{BTreeMap, HashSet};

use super::stats::mann_whitney;
use super::{Aggregate, Decision, ProbeNumbers, Reason, Verdict, ms};

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

/// Judges `current` (after the deploy) against `baseline`, probe by probe.
pub fn judge(
    baseline: &BTreeMap<String, Aggregate>,
    current: &BTreeMap<String, Aggregate>,
    health: &HashSet<String>,
    rules: &Rules,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut numbers = BTreeMap::new();
    for (probe, now) in current {
        let before = baseline.get(probe);
        let mut push = |decision, rule, message: String| {
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
                let rise = now.error_rate - b.error_rate;
                if rise > rules.error_rate_increase {
                    push(
                        Decision::Fail,
                        "error_rate",
                        format!(
                            "error rate rose from {:.1}% to {:.1}% (+{:.1} points, more than the {:.1} allowed)",
                            b.error_rate, now.error_rate, rise, rules.error_rate_increase
                        ),
                    );
                } else {
                    push(
                        Decision::Pass,
                        "error_rate",
                        format!(
                            "error rate {:.1}% vs {:.1}% before",
                            now.error_rate, b.error_rate
                        ),
                    );
                }
                latency(b, now, rules, &mut push);
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
    Verdict::from_reasons("rules", reasons, numbers)
}

fn latency(
    before: &Aggregate,
    now: &Aggregate,
    rules: &Rules,
    push: &mut impl FnMut(Decision, &'static str, String),
) {
    let (Some(b), Some(n)) = (before.p95, now.p95) else {
        return;
    };
    let limit = b * (1.0 + rules.latency_increase);
    let rise = n - b;
    // Where the baseline p95 came from, when not from every run (Prometheus).
    let source = before
        .p95_source
        .as_ref()
        .map(|s| format!(" (baseline p95 from {s})"))
        .unwrap_or_default();
    if n > limit && rise > rules.min_latency_increase {
        // With raw samples on both sides, only a significant shift counts: jitter is not a
        // regression.
        if before.samples.len() >= 5 && now.samples.len() >= 5 {
            // Confident (95%) that the typical latency rose by more than the noise floor.
            if let Some(mw) = mann_whitney(&before.samples, &now.samples)
                && (mw.p_value >= 0.05 || mw.ci.0 <= rules.min_latency_increase)
            {
                push(
                    Decision::Pass,
                    "latency",
                    format!(
                        "p95 {} vs {} before, but the shift is not significant (Mann-Whitney p={:.3}, 95% CI of the shift {} to {}){source}",
                        ms(n),
                        ms(b),
                        mw.p_value,
                        ms(mw.ci.0),
                        ms(mw.ci.1)
                    ),
                );
                return;
            }
        }
        push(
            Decision::Fail,
            "latency",
            format!(
                "p95 latency rose from {} to {} (+{:.0}%, more than the {:.0}% allowed){source}",
                ms(b),
                ms(n),
                rise / b.max(1e-9) * 100.0,
                rules.latency_increase * 100.0
            ),
        );
    } else {
        push(
            Decision::Pass,
            "latency",
            format!("p95 {} vs {} before{source}", ms(n), ms(b)),
        );
    }
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

    #[test]
    fn healthy_deploy_passes() {
        let base = agg(&[100.0, 104.0, 98.0, 101.0, 99.0, 103.0, 102.0, 100.0], 0);
        let now = agg(&[101.0, 99.0, 105.0, 100.0, 102.0, 98.0], 0);
        let v = judge(
            &one("api", base),
            &one("api", now),
            &HashSet::new(),
            &rules(),
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
        );
        assert_eq!(v.verdict, Decision::Fail);
        assert_eq!(v.reasons[0].rule, "latency");
        assert_eq!(
            v.reasons[0].message,
            "p95 latency rose from 104ms to 185ms (+78%, more than the 50% allowed)"
        );
    }

    #[test]
    fn ten_percent_slower_passes_and_tiny_absolute_rises_are_noise() {
        let base = agg(&[100.0; 10], 0);
        let now = agg(&[110.0; 10], 0);
        assert_eq!(
            judge(&one("a", base), &one("a", now), &HashSet::new(), &rules()).verdict,
            Decision::Pass
        );
        // 1ms → 2ms is +100% but only 1ms: noise on loopback.
        let base = agg(&[1.0; 10], 0);
        let now = agg(&[2.0; 10], 0);
        assert_eq!(
            judge(&one("a", base), &one("a", now), &HashSet::new(), &rules()).verdict,
            Decision::Pass
        );
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
        );
        assert_eq!(v.verdict, Decision::Fail);
        assert_eq!(
            v.reasons[0].message,
            "error rate rose from 0.0% to 30.0% (+30.0 points, more than the 10.0 allowed)"
        );
    }

    #[test]
    fn a_failing_health_probe_fails_even_without_a_baseline() {
        let now = agg(&[5.0, 5.0], 1);
        let health = HashSet::from(["health".to_string()]);
        let v = judge(&BTreeMap::new(), &one("health", now), &health, &rules());
        assert_eq!(v.verdict, Decision::Fail);
        assert_eq!(v.reasons[0].rule, "health");
    }

    #[test]
    fn a_small_baseline_is_inconclusive_never_pass() {
        let base = agg(&[100.0; 3], 0);
        let now = agg(&[100.0; 10], 0);
        let v = judge(&one("a", base), &one("a", now), &HashSet::new(), &rules());
        assert_eq!(v.verdict, Decision::Inconclusive);
        assert_eq!(
            v.reasons[0].message,
            "baseline has 3 runs before the deploy, 5 needed for a verdict"
        );
    }
}
