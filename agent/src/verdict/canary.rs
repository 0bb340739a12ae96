//! Canary judgement, Kayenta-style: the same probes against `stable` and `canary`; latency
//! samples compared with Mann-Whitney (the confidence interval of the shift decides), pass/fail
//! counts with Fisher's exact test, and the runbook's `error_rate_increase` as a floor: a canary
//! whose error rate exceeds stable's by more than that many points is `high` even when 20 runs a
//! side are too few for Fisher to call it significant. Each probe is `pass`, `high`, `low` or
//! `nodata`; too few samples is inconclusive, never pass.

use std::collections::BTreeMap;

use serde::Serialize;

use super::stats::{fisher_exact, mann_whitney};
use super::{Aggregate, Decision, ProbeNumbers, Reason, Verdict, ms};

/// How a probe's canary compares with stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// No significant difference.
    Pass,
    /// The canary is significantly slower or fails more.
    High,
    /// The canary is significantly faster.
    Low,
    /// One side has no samples.
    NoData,
}

/// Canary limits.
#[derive(Debug, Clone)]
pub struct CanaryRules {
    /// Samples needed on each side.
    pub min_samples: u64,
    /// Significance level.
    pub alpha: f64,
    /// A latency shift smaller than this fraction of stable's median is tolerated.
    pub tolerance: f64,
    /// Percentage points: with `min_samples` a side, a canary error rate higher than stable's
    /// by more than this is `high` whatever Fisher says (`verify.rollback_when`).
    pub error_rate_increase: f64,
}

impl Default for CanaryRules {
    fn default() -> Self {
        CanaryRules {
            min_samples: 10,
            alpha: 0.05,
            tolerance: 0.1,
            error_rate_increase: 10.0,
        }
    }
}

/// Classifies one probe.
pub fn classify(
    stable: &Aggregate,
    canary: &Aggregate,
    rules: &CanaryRules,
) -> (Classification, String) {
    if stable.runs == 0 || canary.runs == 0 {
        return (
            Classification::NoData,
            format!(
                "no samples ({} stable, {} canary)",
                stable.runs, canary.runs
            ),
        );
    }
    let errors = fisher_exact(
        canary.failures,
        canary.runs - canary.failures,
        stable.failures,
        stable.runs - stable.failures,
    );
    if errors.greater < rules.alpha && canary.failures > stable.failures {
        return (
            Classification::High,
            format!(
                "canary failed {} of {} runs vs {} of {} on stable (Fisher p={:.4})",
                canary.failures, canary.runs, stable.failures, stable.runs, errors.greater
            ),
        );
    }
    // Fisher needs 5 failures of 20 against 0 of 20 (p=0.024; 4 of 20 is p=0.053): a route that
    // fails 20% of requests shows 4 or fewer in 63% of 20-run canaries. The runbook's own limit
    // catches 3 of 20.
    let rise = canary.error_rate - stable.error_rate;
    if stable.runs >= rules.min_samples
        && canary.runs >= rules.min_samples
        && rise > rules.error_rate_increase
    {
        return (
            Classification::High,
            format!(
                "canary failed {} of {} runs vs {} of {} on stable (+{:.1} points, more than the {:.1} allowed; Fisher p={:.4})",
                canary.failures,
                canary.runs,
                stable.failures,
                stable.runs,
                rise,
                rules.error_rate_increase,
                errors.greater
            ),
        );
    }
    let Some(mw) = mann_whitney(&stable.samples, &canary.samples) else {
        return (Classification::NoData, "no latency samples".into());
    };
    let median = super::quantile(&stable.samples, 0.5).unwrap_or(0.0);
    let tolerance = median * rules.tolerance;
    let detail = format!(
        "latency shift {} (95% CI {} to {}, Mann-Whitney p={:.4}), stable median {}",
        ms(mw.shift),
        ms(mw.ci.0),
        ms(mw.ci.1),
        mw.p_value,
        ms(median)
    );
    if mw.p_value < rules.alpha && mw.ci.0 > tolerance {
        (Classification::High, format!("canary slower: {detail}"))
    } else if mw.p_value < rules.alpha && mw.ci.1 < -tolerance {
        (Classification::Low, format!("canary faster: {detail}"))
    } else {
        (Classification::Pass, detail)
    }
}

/// Judges every probe present on either side.
pub fn judge(
    stable: &BTreeMap<String, Aggregate>,
    canary: &BTreeMap<String, Aggregate>,
    rules: &CanaryRules,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut numbers = BTreeMap::new();
    let empty = Aggregate::default();
    let names: std::collections::BTreeSet<&String> = stable.keys().chain(canary.keys()).collect();
    for probe in names {
        let s = stable.get(probe).unwrap_or(&empty);
        let c = canary.get(probe).unwrap_or(&empty);
        let (class, message) = classify(s, c, rules);
        let decision = match class {
            Classification::High => Decision::Fail,
            _ if s.runs < rules.min_samples || c.runs < rules.min_samples => {
                reasons.push(Reason {
                    probe: probe.clone(),
                    decision: Decision::Inconclusive,
                    rule: "samples",
                    message: format!(
                        "{} stable and {} canary samples, {} needed on each side",
                        s.runs, c.runs, rules.min_samples
                    ),
                });
                Decision::Inconclusive
            }
            Classification::NoData => Decision::Inconclusive,
            Classification::Pass | Classification::Low => Decision::Pass,
        };
        let label = match class {
            Classification::Pass => "pass",
            Classification::High => "high",
            Classification::Low => "low",
            Classification::NoData => "nodata",
        };
        reasons.push(Reason {
            probe: probe.clone(),
            decision,
            rule: "canary",
            message: format!("{label}: {message}"),
        });
        numbers.insert(
            probe.clone(),
            ProbeNumbers {
                baseline: Some(s.clone()),
                current: c.clone(),
            },
        );
    }
    Verdict::from_reasons("canary", reasons, numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(ms: impl IntoIterator<Item = f64>, failures: u64) -> Aggregate {
        Aggregate::from_samples(ms.into_iter().map(|v| v / 1000.0).collect(), failures)
    }

    fn jitter(base: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| base + ((i * 7919) % 13) as f64 - 6.0)
            .collect()
    }

    #[test]
    fn equal_sides_pass() {
        let v = judge(
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 20), 0))]),
            &BTreeMap::from([("p".into(), agg(jitter(101.0, 20), 0))]),
            &CanaryRules::default(),
        );
        assert_eq!(v.verdict, Decision::Pass, "{}", v.summary());
    }

    #[test]
    fn a_slower_canary_is_high() {
        let (class, msg) = classify(
            &agg(jitter(100.0, 20), 0),
            &agg(jitter(160.0, 20), 0),
            &CanaryRules::default(),
        );
        assert_eq!(class, Classification::High, "{msg}");
        assert!(
            msg.starts_with("canary slower: latency shift 60ms"),
            "{msg}"
        );
    }

    #[test]
    fn a_faster_canary_is_low_and_passes() {
        let (class, _) = classify(
            &agg(jitter(160.0, 20), 0),
            &agg(jitter(100.0, 20), 0),
            &CanaryRules::default(),
        );
        assert_eq!(class, Classification::Low);
    }

    #[test]
    fn more_failures_on_the_canary_is_high() {
        let (class, msg) = classify(
            &agg(jitter(100.0, 20), 0),
            &agg(jitter(100.0, 20), 6),
            &CanaryRules::default(),
        );
        assert_eq!(class, Classification::High);
        assert!(msg.contains("canary failed 6 of 20 runs"), "{msg}");
    }

    #[test]
    fn an_error_rise_beyond_the_runbook_limit_is_high_without_significance() {
        // 3 of 20 vs 0 of 20: Fisher p=0.1154, but +15 points is more than the 10 allowed.
        let (class, msg) = classify(
            &agg(jitter(100.0, 20), 0),
            &agg(jitter(100.0, 20), 3),
            &CanaryRules::default(),
        );
        assert_eq!(class, Classification::High, "{msg}");
        assert_eq!(
            msg,
            "canary failed 3 of 20 runs vs 0 of 20 on stable (+15.0 points, more than the 10.0 \
             allowed; Fisher p=0.1154)"
        );
        // +10 points is within the limit.
        let (class, msg) = classify(
            &agg(jitter(100.0, 20), 0),
            &agg(jitter(100.0, 20), 2),
            &CanaryRules::default(),
        );
        assert_eq!(class, Classification::Pass, "{msg}");
        // Too few runs for either test: not high, and the verdict is inconclusive.
        let v = judge(
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 4), 0))]),
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 4), 1))]),
            &CanaryRules::default(),
        );
        assert_eq!(v.verdict, Decision::Inconclusive, "{}", v.summary());
    }

    #[test]
    fn too_few_samples_is_inconclusive_and_missing_sides_are_nodata() {
        let v = judge(
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 4), 0))]),
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 4), 0))]),
            &CanaryRules::default(),
        );
        assert_eq!(v.verdict, Decision::Inconclusive);
        let (class, _) = classify(
            &Aggregate::default(),
            &agg(jitter(100.0, 20), 0),
            &CanaryRules::default(),
        );
        assert_eq!(class, Classification::NoData);
    }
}
