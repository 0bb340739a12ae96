//! Threshold watch: the runbook's short-term verification ("P95 < 500ms, P99 < 1000ms, error
//! rate < 0.1%") as absolute limits per probe over a watch window. It fails early once a limit
//! can no longer be met with the runs still to come, and judges at the end otherwise.

use std::collections::BTreeMap;

use super::{Aggregate, Decision, ProbeNumbers, Reason, Verdict, ms};

/// Absolute limits.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    /// p95 limit, seconds.
    pub p95: Option<f64>,
    /// p99 limit, seconds.
    pub p99: Option<f64>,
    /// Error-rate limit, percent.
    pub error_rate: Option<f64>,
}

/// Judges the runs so far; `planned` is the number of runs per probe the window will have.
/// Before the end, only limits that can no longer be met fail; the rest wait.
pub fn judge(
    current: &BTreeMap<String, Aggregate>,
    limits: &Thresholds,
    planned: u64,
    finished: bool,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut numbers = BTreeMap::new();
    for (probe, now) in current {
        let mut push = |decision, rule, message: String| {
            reasons.push(Reason {
                probe: probe.clone(),
                decision,
                rule,
                message,
            })
        };
        let total = planned.max(now.runs).max(1) as f64;
        if let Some(limit) = limits.error_rate {
            // Even if every remaining run passed, the rate would be failures / planned.
            let best_case = now.failures as f64 * 100.0 / total;
            if best_case > limit || (finished && now.error_rate > limit) {
                push(
                    Decision::Fail,
                    "error_rate",
                    format!(
                        "error rate {:.2}% ({} of {} runs) exceeds the {limit}% limit",
                        now.failures as f64 * 100.0 / now.runs.max(1) as f64,
                        now.failures,
                        now.runs
                    ),
                );
            } else if finished {
                push(
                    Decision::Pass,
                    "error_rate",
                    format!("error rate {:.2}% within {limit}%", now.error_rate),
                );
            }
        }
        for (rule, q, limit) in [("p95", 0.95, limits.p95), ("p99", 0.99, limits.p99)] {
            let Some(limit) = limit else { continue };
            // The quantile exceeds the limit once more than (1 - q) of all planned runs do.
            let over = now.samples.iter().filter(|s| **s > limit).count() as f64;
            let doomed = over > (1.0 - q) * total;
            let value = if rule == "p95" { now.p95 } else { now.p99 };
            match value {
                Some(v) if doomed || (finished && v > limit) => {
                    push(
                        Decision::Fail,
                        rule,
                        format!(
                            "{rule} {} exceeds the {} limit ({} of {} runs over it)",
                            ms(v),
                            ms(limit),
                            over,
                            now.runs
                        ),
                    );
                }
                Some(v) if finished => push(
                    Decision::Pass,
                    rule,
                    format!("{rule} {} within {}", ms(v), ms(limit)),
                ),
                None if finished => push(
                    Decision::Inconclusive,
                    "samples",
                    "no runs in the window".into(),
                ),
                _ => {}
            }
        }
        numbers.insert(
            probe.clone(),
            ProbeNumbers {
                baseline: None,
                current: now.clone(),
            },
        );
    }
    let mut v = Verdict::from_reasons("thresholds", reasons, numbers);
    if !finished && v.verdict != Decision::Fail {
        v.verdict = Decision::Inconclusive;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Thresholds {
        Thresholds {
            p95: Some(0.5),
            p99: Some(1.0),
            error_rate: Some(0.1),
        }
    }

    fn agg(ms: &[f64], failures: u64) -> BTreeMap<String, Aggregate> {
        BTreeMap::from([(
            "p".to_string(),
            Aggregate::from_samples(ms.iter().map(|v| v / 1000.0).collect(), failures),
        )])
    }

    #[test]
    fn within_limits_passes_at_the_end() {
        let v = judge(&agg(&[100.0; 40], 0), &limits(), 40, true);
        assert_eq!(v.verdict, Decision::Pass, "{}", v.summary());
    }

    #[test]
    fn one_failure_out_of_planned_hundreds_fails_early_at_a_tiny_limit() {
        // 0.1% of 90 planned runs: one failure can never be diluted below the limit.
        let v = judge(&agg(&[100.0; 5], 1), &limits(), 90, false);
        assert_eq!(v.verdict, Decision::Fail);
        assert_eq!(v.reasons[0].rule, "error_rate");
    }

    #[test]
    fn slow_runs_fail_early_once_the_p95_cannot_be_met() {
        // 100 planned runs: more than 5 above 500ms dooms the p95.
        let mut ms = vec![100.0; 10];
        ms.extend([900.0; 6]);
        let v = judge(
            &agg(&ms, 0),
            &Thresholds {
                p95: Some(0.5),
                ..Thresholds::default()
            },
            100,
            false,
        );
        assert_eq!(v.verdict, Decision::Fail, "{}", v.summary());
        // Five slow runs can still be outweighed: keep watching.
        let mut ms = vec![100.0; 10];
        ms.extend([900.0; 5]);
        let v = judge(
            &agg(&ms, 0),
            &Thresholds {
                p95: Some(0.5),
                ..Thresholds::default()
            },
            100,
            false,
        );
        assert_eq!(v.verdict, Decision::Inconclusive);
    }
}
