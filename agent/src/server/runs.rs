//! API-triggered runs: each `POST /api/v1/runs` gets an id; its results are kept (the last 100
//! runs) for `GET /api/v1/runs/{id}`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use patrol_probes::result::ProbeResult;
use serde::{Deserialize, Serialize};

use crate::report::Summary;

/// How many finished runs are kept.
const KEPT: usize = 100;

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
                let plain: Vec<ProbeResult> = results.iter().map(|r| (**r).clone()).collect();
                r.summary = Some(Summary::of(&plain));
                r.probes = results;
                r.status = "done";
            }
        });
    }

    /// A run by id.
    pub fn get(&self, id: &str) -> Option<RunRecord> {
        self.with(|runs| runs.iter().find(|r| r.id == id).cloned())
    }
}

fn uuid_like() -> String {
    uuid::Uuid::new_v4().to_string()
}
