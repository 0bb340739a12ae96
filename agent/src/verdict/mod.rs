//! Verdicts: "should this deploy be rolled back?", decided from results and nothing else.
//!
//! - [`rules`]: the runbook's rules against a pre-deploy baseline (error-rate points, p95 rise,
//!   failing health probes)
//! - [`thresholds`]: absolute p95/p99/error-rate limits over a watch window, failing early
//! - [`canary`]: stable vs canary samples with Mann-Whitney and Fisher's exact test
//! - [`stats`]: the tests themselves, checked against SciPy
//!
//! Every verdict carries its reasons with the numbers behind them; too little data is
//! `inconclusive`, never `pass`.
//!
//! Verdicts that compare runs are sequential: after the minimum runs, each [`Look::Interim`]
//! judgement says which probes are still within their margin of error (the 95% interval of the
//! error-rate rise or of the p95 ratio straddles the limit), and only those run again, until none
//! is, a probe fails beyond doubt, or the run cap is reached. The verdict of record is always the
//! [`Look::Final`] judgement of every run; interim looks only decide when to stop.

pub mod canary;
pub mod rules;
pub mod stats;
pub mod thresholds;

use std::collections::{BTreeMap, BTreeSet};

use patrol_probes::result::ProbeResult;
use serde::Serialize;

use stats::harrell_davis;

/// Which judgement of the runs so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// More runs may come: a rule within its margin of error leaves its probe undecided.
    Interim,
    /// The last look: borderline rules are decided on their estimates.
    Final,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Keep the deploy.
    Pass,
    /// Roll it back.
    Fail,
    /// Not enough data to say.
    Inconclusive,
}

impl Decision {
    /// The lowercase name (metric label, JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Fail => "fail",
            Decision::Inconclusive => "inconclusive",
        }
    }
}

/// One reason behind a verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// The probe it concerns.
    pub probe: String,
    /// What it says about the verdict.
    pub decision: Decision,
    /// Which rule: `error_rate`, `latency`, `health`, `p95`, `p99`, `samples`, `canary`.
    pub rule: &'static str,
    /// The sentence, with the numbers.
    pub message: String,
}

/// Aggregates of one probe over a set of runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Aggregate {
    /// Runs counted.
    pub runs: u64,
    /// Runs that did not pass.
    pub failures: u64,
    /// Error rate in percent.
    pub error_rate: f64,
    /// 95th percentile duration, seconds (Harrell-Davis estimate from every run).
    pub p95: Option<f64>,
    /// 99th percentile duration, seconds (Harrell-Davis estimate from every run).
    pub p99: Option<f64>,
    /// Every run's duration, seconds (empty when only aggregates are known; from Prometheus,
    /// the runs it scraped).
    #[serde(skip)]
    pub samples: Vec<f64>,
    /// Where p95 and p99 come from when not from every run (Prometheus), said in the reasons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95_source: Option<String>,
}

impl Aggregate {
    /// Aggregates runs of one probe.
    pub fn of<'a>(results: impl IntoIterator<Item = &'a ProbeResult>) -> Aggregate {
        let mut samples = Vec::new();
        let mut failures = 0;
        for r in results {
            if !r.result.is_pass() {
                failures += 1;
            }
            samples.push(r.duration.as_secs_f64());
        }
        Aggregate::from_samples(samples, failures)
    }

    /// Aggregates from durations and a failure count.
    pub fn from_samples(mut samples: Vec<f64>, failures: u64) -> Aggregate {
        samples.sort_by(f64::total_cmp);
        let runs = samples.len() as u64;
        Aggregate {
            runs,
            failures,
            error_rate: if runs == 0 {
                0.0
            } else {
                failures as f64 * 100.0 / runs as f64
            },
            p95: harrell_davis(&samples, 0.95),
            p99: harrell_davis(&samples, 0.99),
            samples,
            p95_source: None,
        }
    }
}

/// Nearest-rank quantile of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Per probe: what the verdict looked at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeNumbers {
    /// Before the deploy (or stable).
    pub baseline: Option<Aggregate>,
    /// After the deploy (or canary).
    pub current: Aggregate,
}

/// A verdict with everything behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The decision.
    pub verdict: Decision,
    /// Which check made it: `rules`, `thresholds`, `canary`.
    pub check: &'static str,
    /// Reasons, failing ones first.
    pub reasons: Vec<Reason>,
    /// Numbers per probe.
    pub probes: BTreeMap<String, ProbeNumbers>,
    /// At an interim look: probes within their margin of error, which more runs would settle.
    #[serde(skip)]
    pub undecided: BTreeSet<String>,
}

impl Verdict {
    /// Builds a verdict from reasons: any fail fails, else any inconclusive is inconclusive.
    pub fn from_reasons(
        check: &'static str,
        mut reasons: Vec<Reason>,
        probes: BTreeMap<String, ProbeNumbers>,
    ) -> Verdict {
        let verdict = if reasons.iter().any(|r| r.decision == Decision::Fail) {
            Decision::Fail
        } else if reasons.iter().any(|r| r.decision == Decision::Inconclusive) || probes.is_empty()
        {
            Decision::Inconclusive
        } else {
            Decision::Pass
        };
        reasons.sort_by_key(|r| match r.decision {
            Decision::Fail => 0,
            Decision::Inconclusive => 1,
            Decision::Pass => 2,
        });
        Verdict {
            verdict,
            check,
            reasons,
            probes,
            undecided: BTreeSet::new(),
        }
    }

    /// A one-paragraph summary for consoles, Flagger and logs.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!(
            "verdict: {} ({})",
            self.verdict.as_str(),
            self.check
        )];
        for r in self.reasons.iter().filter(|r| r.decision != Decision::Pass) {
            lines.push(format!("- {}: {}", r.probe, r.message));
        }
        if lines.len() == 1 {
            lines.push("- every probe within its limits".into());
        }
        lines.join("\n")
    }
}

/// Formats seconds as milliseconds for reasons.
pub fn ms(seconds: f64) -> String {
    format!("{:.0}ms", seconds * 1000.0)
}
