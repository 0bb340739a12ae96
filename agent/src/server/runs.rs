//! API-triggered runs: each `POST /api/v1/runs` gets an id; its results are kept (the last 100
//! runs, and at most [`KEPT_RESULTS`] probe results across them) for `GET /api/v1/runs/{id}`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use patrol_probes::result::ProbeResult;
use serde::{Deserialize, Serialize};

use crate::report::Summary;

/// How many runs are kept.
const KEPT: usize = 100;
/// How many probe results the kept runs hold between them (a full result is 1–2 KiB): older
/// runs past it keep their summary and drop their results, so a burst of runs of every probe
/// cannot pin hundreds of MB. The run that finished last always keeps its results.
const KEPT_RESULTS: usize = 1_000;

/// Deploy metadata sent with a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// The version deployed.
    #[serde(default)]
    pub version: Option<String>,
    /// The environment, e.g. production.
    #[serde(default)]
    pub environment: Option<String>,
    /// stable, canary or baseline.
    #[serde(default)]
    pub track: Option<String>,
    /// When the deploy happened (unix milliseconds): the baseline ends here. Default: now.
    #[serde(default)]
    pub at_ms: Option<i64>,
}

/// One API-triggered run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Its id.
    pub id: String,
    /// `running` or `done`.
    pub status: &'static str,
    /// Unix milliseconds when it was requested.
    pub requested_at_ms: i64,
    /// Probes it runs.
    pub requested: Vec<String>,
    /// Deploy metadata, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// Results so far, in request order (same schema as the verify JSON report).
    pub probes: Vec<Arc<ProbeResult>>,
    /// Counts over `probes`, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// Whether `probes` was emptied to bound memory ([`KEPT_RESULTS`]); `summary` stays, and
    /// each probe's runs stay in `GET /api/v1/probes/{name}/runs`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub results_dropped: bool,
}

/// The recent runs.
#[derive(Debug, Default)]
pub struct RunStore {
    runs: Mutex<VecDeque<RunRecord>>,
}

impl RunStore {
    fn with<T>(&self, f: impl FnOnce(&mut VecDeque<RunRecord>) -> T) -> T {
        match self.runs.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Records a new run and returns its id.
    pub fn create(&self, requested: Vec<String>, deploy: Option<Deploy>) -> String {
        let id = uuid_like();
        let record = RunRecord {
            id: id.clone(),
            status: "running",
            requested_at_ms: chrono::Utc::now().timestamp_millis(),
            requested,
            deploy,
            probes: Vec::new(),
            summary: None,
            results_dropped: false,
        };
        self.with(|runs| {
            runs.push_back(record);
            while runs.len() > KEPT {
                runs.pop_front();
            }
        });
        id
    }

    /// Stores the results of a finished run.
    pub fn finish(&self, id: &str, results: Vec<Arc<ProbeResult>>) {
        self.with(|runs| {
            if let Some(r) = runs.iter_mut().find(|r| r.id == id) {
                r.summary = Some(Summary::of(results.iter().map(|r| &**r)));
                r.probes = results;
                r.status = "done";
            }
            drop_old_results(runs, id);
        });
    }

    /// A run by id.
    pub fn get(&self, id: &str) -> Option<RunRecord> {
        self.with(|runs| runs.iter().find(|r| r.id == id).cloned())
    }
}

/// Empties the results of the oldest runs, except those of `finished` (the run that finished
/// last), until the runs hold at most [`KEPT_RESULTS`] between them.
fn drop_old_results(runs: &mut VecDeque<RunRecord>, finished: &str) {
    let mut total: usize = runs.iter().map(|r| r.probes.len()).sum();
    for run in runs.iter_mut().filter(|r| r.id != finished) {
        if total <= KEPT_RESULTS {
            break;
        }
        if !run.probes.is_empty() {
            total -= run.probes.len();
            run.probes = Vec::new();
            run.results_dropped = true;
        }
    }
}

fn uuid_like() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use patrol_probes::result::Outcome;
    use std::time::Duration;

    fn results(n: usize, outcome: Outcome) -> Vec<Arc<ProbeResult>> {
        (0..n)
            .map(|i| {
                Arc::new(ProbeResult {
                    id: format!("r{i}"),
                    name: format!("p{i}"),
                    kind: "http".to_string(),
                    result: outcome,
                    duration: Duration::from_millis(5),
                    attempts: 1,
                    first_attempt: outcome,
                    started_at_ms: 1_700_000_000_000,
                    steps: Vec::new(),
                    retried: Vec::new(),
                    error: None,
                })
            })
            .collect()
    }

    #[test]
    fn old_runs_past_the_result_cap_keep_their_summary_only() {
        let store = RunStore::default();
        let size = KEPT_RESULTS / 2 + 1;
        let ids: Vec<String> = (0..3).map(|_| store.create(Vec::new(), None)).collect();
        store.finish(&ids[0], results(size, Outcome::Fail));
        store.finish(&ids[1], results(size, Outcome::Pass));
        let kept = |id: &str| store.get(id).map(|r| (r.probes.len(), r.results_dropped));
        // Two halves plus one are over the cap: the older run's results go, its counts stay.
        assert_eq!(kept(&ids[0]), Some((0, true)));
        assert_eq!(kept(&ids[1]), Some((size, false)));
        let first = store.get(&ids[0]).and_then(|r| r.summary);
        assert_eq!(first.map(|s| (s.total, s.fail)), Some((size, size)));
        let json = serde_json::to_value(store.get(&ids[0])).unwrap_or_default();
        assert_eq!(json["results_dropped"], true, "{json}");
        assert_eq!(json["status"], "done", "{json}");

        // A run larger than the cap keeps its results while it is the one that finished last.
        store.finish(&ids[2], results(KEPT_RESULTS + 1, Outcome::Pass));
        assert_eq!(kept(&ids[2]), Some((KEPT_RESULTS + 1, false)));
        assert_eq!(kept(&ids[1]), Some((0, true)));
        let json = serde_json::to_value(store.get(&ids[2])).unwrap_or_default();
        assert!(json.get("results_dropped").is_none(), "only said when true");
    }

    #[test]
    fn runs_under_the_cap_keep_their_results() {
        let store = RunStore::default();
        let ids: Vec<String> = (0..10).map(|_| store.create(Vec::new(), None)).collect();
        for id in &ids {
            store.finish(id, results(KEPT_RESULTS / 10, Outcome::Pass));
        }
        for id in &ids {
            let run = store.get(id);
            assert_eq!(run.map(|r| r.probes.len()), Some(KEPT_RESULTS / 10), "{id}");
        }
    }
}
