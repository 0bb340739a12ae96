//! Artifacts of failed runs (screenshots, page HTML, response bodies) under
//! `artifacts_dir/<probe>/<run-id>/`, keeping the newest N runs per probe.

use std::path::{Path, PathBuf};

/// The artifacts directory and how many runs per probe to keep.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    /// `agent.artifacts_dir`.
    pub root: PathBuf,
    /// Runs kept per probe; older run directories are deleted.
    pub keep: usize,
}

/// The artifact directory of one run.
#[derive(Debug, Clone)]
pub struct RunArtifacts {
    root: PathBuf,
    probe: String,
    run_id: String,
    keep: usize,
}

impl ArtifactStore {
    /// The directory for one run of `probe` (created on first save).
    pub fn for_run(&self, probe: &str, run_id: &str) -> RunArtifacts {
        RunArtifacts {
            root: self.root.clone(),
            probe: probe.to_string(),
            run_id: run_id.to_string(),
            keep: self.keep.max(1),
        }
    }
}

impl RunArtifacts {
    /// Saves `bytes` as `name` (masked by the caller) and returns its path relative to the
    /// artifacts root, as served at `/artifacts/<path>`.
    pub fn save(&self, name: &str, bytes: &[u8]) -> std::io::Result<String> {
        let dir = self.root.join(&self.probe).join(&self.run_id);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        self.prune();
        Ok(format!("{}/{}/{}", self.probe, self.run_id, name))
    }

    /// The absolute path of a saved artifact.
    pub fn path_of(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Deletes the oldest run directories of this probe beyond `keep`.
    fn prune(&self) {
        let probe_dir = self.root.join(&self.probe);
        let Ok(entries) = std::fs::read_dir(&probe_dir) else {
            return;
        };
        let mut runs: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| (modified(&e.path()), e.path()))
            .collect();
        if runs.len() <= self.keep {
            return;
        }
        runs.sort();
        let excess = runs.len() - self.keep;
        for (_, dir) in runs.into_iter().take(excess) {
            if dir.file_name().is_some_and(|n| n != self.run_id.as_str()) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_runs_per_probe() {
        let root = std::env::temp_dir().join(format!("patrol-artifacts-{}", std::process::id()));
        let store = ArtifactStore {
            root: root.clone(),
            keep: 2,
        };
        for i in 0..4 {
            let run = store.for_run("p", &format!("run-{i}"));
            let rel = run.save("page.html", b"<html>").expect("saved");
            assert_eq!(rel, format!("p/run-{i}/page.html"));
            // Distinct modification times.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut left: Vec<String> = std::fs::read_dir(root.join("p"))
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["run-2", "run-3"]);
        std::fs::remove_dir_all(&root).ok();
    }
}
