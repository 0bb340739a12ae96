//! Canary judgement, Kayenta-style: the same probes against `stable` and `canary`; latency
//! samples compared with Mann-Whitney (the confidence interval of the shift decides), pass/fail
//! counts with Fisher's exact test, and the runbook's `error_rate_increase` as a floor: a canary
//! whose error rate exceeds stable's by more than that many points is `high` even when 20 runs a
//! side are too few for Fisher to call it significant. Each probe is `pass`, `high`, `low` or
//! `nodata`; too few samples is inconclusive, never pass.
//!
//! Interim looks call a difference only beyond doubt (the error-rate rise's 95% interval wholly
//! past the limit, significance at a fifth of `alpha`, a latency shift whose 99.9% interval
//! clears the tolerance) and leave borderline probes undecided, to run again; the final look
//! applies the tests as a fixed number of runs would.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::stats::{Z95, fisher_exact, mann_whitney, newcombe_difference};
use super::{Aggregate, Decision, Look, ProbeNumbers, Reason, Verdict, ms};

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

/// A probe's classification, and whether more runs could change it.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// pass, high, low or nodata.
    pub class: Classification,
    /// The numbers behind it.
    pub message: String,
    /// At an interim look: a test is within its margin (the error-rate rise's 95% interval
    /// straddles `error_rate_increase`, or a difference is significant at `alpha` but not yet at
    /// the interim level), so more runs are needed.
    pub borderline: bool,
}

/// Interim looks are repeated, so they call a difference significant only at a fifth of
/// `alpha`: looking after every run at 5% would find one in a healthy canary far more often.
const INTERIM_ALPHA_SHARE: f64 = 0.2;

/// Classifies one probe.
pub fn classify(
    stable: &Aggregate,
    canary: &Aggregate,
    rules: &CanaryRules,
    look: Look,
) -> Classified {
    let done = |class, message| Classified {
        class,
        message,
        borderline: false,
    };
    if stable.runs == 0 || canary.runs == 0 {
        return done(
            Classification::NoData,
            format!(
                "no samples ({} stable, {} canary)",
                stable.runs, canary.runs
            ),
        );
    }
    let interim = look == Look::Interim;
    let alpha = if interim {
        rules.alpha * INTERIM_ALPHA_SHARE
    } else {
        rules.alpha
    };
    let errors = fisher_exact(
        canary.failures,
        canary.runs - canary.failures,
        stable.failures,
        stable.runs - stable.failures,
    );
    let counts = format!(
        "canary failed {} of {} runs vs {} of {} on stable",
        canary.failures, canary.runs, stable.failures, stable.runs
    );
    if errors.greater < alpha && canary.failures > stable.failures {
        return done(
            Classification::High,
            format!("{counts} (Fisher p={:.4})", errors.greater),
        );
    }
    // Fisher needs 5 failures of 20 against 0 of 20 (p=0.024; 4 of 20 is p=0.053): a route that
    // fails 20% of requests shows 4 or fewer in 63% of 20-run canaries. The runbook's own limit
    // is the floor: beyond doubt at an interim look, on the estimate at the final one.
    let rise = canary.error_rate - stable.error_rate;
    let (low, high) = newcombe_difference(
        canary.failures,
        canary.runs,
        stable.failures,
        stable.runs,
        Z95,
    );
    let (low, high) = (low * 100.0, high * 100.0);
    let limit = rules.error_rate_increase;
    let enough = stable.runs >= rules.min_samples && canary.runs >= rules.min_samples;
    let beyond_limit = if interim { low > limit } else { rise > limit };
    if enough && beyond_limit {
        return done(
            Classification::High,
            format!(
                "{counts} (+{rise:.1} points, 95% CI {low:+.1} to {high:+.1}; more than the {limit:.1} allowed; Fisher p={:.4})",
                errors.greater
            ),
        );
    }
    let errors_borderline = interim
        && ((low <= limit && high > limit)
            || (errors.greater < rules.alpha && canary.failures > stable.failures));
    let Some(mw) = mann_whitney(&stable.samples, &canary.samples) else {
        return done(Classification::NoData, "no latency samples".into());
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
    let slower = mw.ci.0 > tolerance;
    let faster = mw.ci.1 < -tolerance;
    // An interim look may be one of many: only a shift whose 99.9% interval clears the
    // tolerance stops the runs; one that only the 95% interval clears runs again.
    let beyond_doubt = !interim || mw.ci_999.0 > tolerance;
    let latency_borderline = interim && mw.p_value < rules.alpha && slower;
    if mw.p_value < alpha && slower && beyond_doubt {
        done(Classification::High, format!("canary slower: {detail}"))
    } else if errors_borderline || latency_borderline {
        Classified {
            class: Classification::Pass,
            message: format!(
                "{counts} ({rise:+.1} points, 95% CI {low:+.1} to {high:+.1}); {detail}: within the margin, more runs needed"
            ),
            borderline: true,
        }
    } else if mw.p_value < alpha && faster {
        done(Classification::Low, format!("canary faster: {detail}"))
    } else {
        done(Classification::Pass, detail)
    }
}

/// Judges every probe present on either side.
pub fn judge(
    stable: &BTreeMap<String, Aggregate>,
    canary: &BTreeMap<String, Aggregate>,
    rules: &CanaryRules,
    look: Look,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut numbers = BTreeMap::new();
    let mut undecided = BTreeSet::new();
    let empty = Aggregate::default();
    let names: BTreeSet<&String> = stable.keys().chain(canary.keys()).collect();
    for probe in names {
        let s = stable.get(probe).unwrap_or(&empty);
        let c = canary.get(probe).unwrap_or(&empty);
        let classified = classify(s, c, rules, look);
        let few = s.runs < rules.min_samples || c.runs < rules.min_samples;
        let decision = match classified.class {
            Classification::High => Decision::Fail,
            _ if few => {
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
            _ if classified.borderline => Decision::Inconclusive,
            Classification::NoData => Decision::Inconclusive,
            Classification::Pass | Classification::Low => Decision::Pass,
        };
        // More runs settle a borderline test, and too few samples when both sides have some.
        if decision == Decision::Inconclusive
            && look == Look::Interim
            && (classified.borderline || (few && s.runs > 0 && c.runs > 0))
        {
            undecided.insert(probe.clone());
        }
        let label = match classified.class {
            Classification::Pass => "pass",
            Classification::High => "high",
            Classification::Low => "low",
            Classification::NoData => "nodata",
        };
        reasons.push(Reason {
            probe: probe.clone(),
            decision,
            rule: "canary",
            message: format!("{label}: {}", classified.message),
        });
        numbers.insert(
            probe.clone(),
            ProbeNumbers {
                baseline: Some(s.clone()),
                current: c.clone(),
            },
        );
    }
    let mut verdict = Verdict::from_reasons("canary", reasons, numbers);
    verdict.undecided = undecided;
    verdict
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
            Look::Final,
        );
        assert_eq!(v.verdict, Decision::Pass, "{}", v.summary());
    }

    #[test]
    fn a_slower_canary_is_high() {
        let Classified {
            class,
            message: msg,
            ..
        } = classify(
            &agg(jitter(100.0, 20), 0),
            &agg(jitter(160.0, 20), 0),
            &CanaryRules::default(),
            Look::Final,
        );
        assert_eq!(class, Classification::High, "{msg}");
        assert!(
            msg.starts_with("canary slower: latency shift 60ms"),
            "{msg}"
        );
    }

    #[test]
    fn a_faster_canary_is_low_and_passes() {
        let Classified { class, .. } = classify(
            &agg(jitter(160.0, 20), 0),
            &agg(jitter(100.0, 20), 0),
            &CanaryRules::default(),
            Look::Final,
        );
        assert_eq!(class, Classification::Low);
    }

    #[test]
    fn more_failures_on_the_canary_is_high() {
        let Classified {
            class,
            message: msg,
            ..
        } = classify(
            &agg(jitter(100.0, 20), 0),
            &agg(jitter(100.0, 20), 6),
            &CanaryRules::default(),
            Look::Final,
        );
        assert_eq!(class, Classification::High);
        assert!(msg.contains("canary failed 6 of 20 runs"), "{msg}");
    }

    #[test]
    fn an_error_rise_beyond_the_runbook_limit_is_high_without_significance() {
        // 3 of 20 vs 0 of 20: Fisher p=0.1154, but +15 points is more than the 10 allowed.
        let Classified {
            class,
            message: msg,
            ..
        } = classify(
            &agg(jitter(100.0, 20), 0),
            &agg(jitter(100.0, 20), 3),
            &CanaryRules::default(),
            Look::Final,
        );
        assert_eq!(class, Classification::High, "{msg}");
        assert_eq!(
            msg,
            "canary failed 3 of 20 runs vs 0 of 20 on stable (+15.0 points, 95% CI -3.8 to \
             +36.0; more than the 10.0 allowed; Fisher p=0.1154)"
        );
        // +10 points is within the limit.
        let Classified {
            class,
            message: msg,
            ..
        } = classify(
            &agg(jitter(100.0, 20), 0),
            &agg(jitter(100.0, 20), 2),
            &CanaryRules::default(),
            Look::Final,
        );
        assert_eq!(class, Classification::Pass, "{msg}");
        // Too few runs for either test: not high, and the verdict is inconclusive.
        let v = judge(
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 4), 0))]),
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 4), 1))]),
            &CanaryRules::default(),
            Look::Final,
        );
        assert_eq!(v.verdict, Decision::Inconclusive, "{}", v.summary());
    }

    #[test]
    fn too_few_samples_is_inconclusive_and_missing_sides_are_nodata() {
        let v = judge(
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 4), 0))]),
            &BTreeMap::from([("p".into(), agg(jitter(100.0, 4), 0))]),
            &CanaryRules::default(),
            Look::Final,
        );
        assert_eq!(v.verdict, Decision::Inconclusive);
        let Classified { class, .. } = classify(
            &Aggregate::default(),
            &agg(jitter(100.0, 20), 0),
            &CanaryRules::default(),
            Look::Final,
        );
        assert_eq!(class, Classification::NoData);
    }

    #[test]
    fn interim_looks_keep_a_clean_canary_running_until_its_zero_failures_mean_something() {
        let side = |n, failures| BTreeMap::from([("p".into(), agg(jitter(100.0, n), failures))]);
        let rules = CanaryRules::default();
        // 0 of 20 on each side cannot rule out a rise of 16 points: undecided, yet the final
        // look passes it.
        let v = judge(&side(20, 0), &side(20, 0), &rules, Look::Interim);
        assert_eq!(v.verdict, Decision::Inconclusive, "{}", v.summary());
        assert!(v.undecided.contains("p"));
        assert!(
            v.reasons[0]
                .message
                .ends_with("within the margin, more runs needed")
        );
        let v = judge(&side(20, 0), &side(20, 0), &rules, Look::Final);
        assert_eq!(v.verdict, Decision::Pass, "{}", v.summary());
        // 0 of 40 on each side rules out more than 10 points.
        let v = judge(&side(40, 0), &side(40, 0), &rules, Look::Interim);
        assert_eq!(v.verdict, Decision::Pass, "{}", v.summary());
        assert!(v.undecided.is_empty());
        // 10 of 20 against 0 of 20 is high at once.
        let v = judge(&side(20, 0), &side(20, 10), &rules, Look::Interim);
        assert_eq!(v.verdict, Decision::Fail, "{}", v.summary());
        // Too few samples on both sides: more runs settle it. None on one side: they cannot.
        let v = judge(&side(4, 0), &side(4, 0), &rules, Look::Interim);
        assert!(v.undecided.contains("p"), "{v:?}");
        let v = judge(&BTreeMap::new(), &side(20, 0), &rules, Look::Interim);
        assert_eq!(v.verdict, Decision::Inconclusive);
        assert!(v.undecided.is_empty());
    }

    #[test]
    fn interim_looks_stop_on_a_slower_canary_only_beyond_doubt() {
        let rules = CanaryRules::default();
        // 40 runs a side: no failure on either side settles the error rate.
        let (stable, small, large) = (
            agg(jitter(100.0, 40), 0),
            agg(jitter(112.0, 40), 0),
            agg(jitter(160.0, 40), 0),
        );
        // 12ms slower against a 10ms tolerance: the 95% interval clears it, the 99.9% one does
        // not. Interim: run again; final: high.
        let interim = classify(&stable, &small, &rules, Look::Interim);
        assert_eq!(interim.class, Classification::Pass, "{interim:?}");
        assert!(interim.borderline, "{interim:?}");
        let last = classify(&stable, &small, &rules, Look::Final);
        assert_eq!(last.class, Classification::High, "{last:?}");
        // 60ms slower is high at any look.
        let interim = classify(&stable, &large, &rules, Look::Interim);
        assert_eq!(interim.class, Classification::High, "{interim:?}");
        // A faster canary is low, which passes, and needs no more runs.
        let faster = classify(&large, &stable, &rules, Look::Interim);
        assert_eq!(faster.class, Classification::Low, "{faster:?}");
        assert!(!faster.borderline);
    }
}
