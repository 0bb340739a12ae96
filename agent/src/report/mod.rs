//! Reports of a set of probe results: the console report people read, the JSON report machines
//! read, and JUnit XML for CI systems. All three render the same [`ProbeResult`]s.
//!
//! - [`console`]: the human-readable report (`-v` adds request and response detail)
//! - [`json`]: `{"probes": [...], "summary": {...}}`
//! - [`junit`]: one testsuite per probe, one testcase per step

pub mod console;
pub mod json;
pub mod junit;

use std::time::Duration;

use patrol_probes::result::{Outcome, ProbeResult};
use serde::Serialize;

/// Counts over a set of results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Probes run.
    pub total: usize,
    /// Probes that passed.
    pub pass: usize,
    /// Probes whose assertions failed.
    pub fail: usize,
    /// Probes that could not be carried out.
    pub error: usize,
    /// Probes that ran out of time.
    pub timeout: usize,
    /// Probes that passed only after a retry.
    pub flaky: usize,
}

impl Summary {
    /// Counts `results`.
    pub fn of<'a>(results: impl IntoIterator<Item = &'a ProbeResult>) -> Summary {
        let mut s = Summary::default();
        for r in results {
            s.total += 1;
            match r.result {
                Outcome::Pass => s.pass += 1,
                Outcome::Fail => s.fail += 1,
                Outcome::Error => s.error += 1,
                Outcome::Timeout => s.timeout += 1,
                Outcome::Skipped => {}
            }
            if r.result.is_pass() && r.attempts > 1 {
                s.flaky += 1;
            }
        }
        s
    }

    /// True when every probe passed.
    pub fn all_passed(&self) -> bool {
        self.pass == self.total
    }
}

/// A whole run of `patrol verify`: its results and wall time.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The config file the probes came from.
    pub config: String,
    /// Results in config order.
    pub results: Vec<ProbeResult>,
    /// Wall time of the whole run.
    pub duration: Duration,
    /// The deploy verdict, in verdict modes.
    pub verdict: Option<crate::verdict::Verdict>,
}
