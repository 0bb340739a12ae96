//! Stray Chromium processes: found by a path in their command line or environment, killed with
//! SIGKILL.
//!
//! Every process a session's Chromium starts (browser, zygotes, renderers, GPU and utility
//! processes) carries `--user-data-dir=<profile>` in its command line; chromedriver names its log
//! in the work directory, and it and everything it starts inherit `TMPDIR` and
//! `XDG_CONFIG_HOME` pointing there. Scanning `/proc` for a profile or the work directory
//! therefore finds everything a session or the whole browser left running, even after
//! chromedriver was killed and its children were re-parented to init.
//!
//! The crate forbids `unsafe`, so signals are sent by the shell's `kill` builtin: this only runs
//! after a crash or on shutdown, never on the happy path.
//!
//! When the agent itself is killed (SIGKILL, OOM killer, a crash), a [`Watchdog`] — a small `sh`
//! process waiting on a pipe only the agent holds — does the same sweep at once.

use std::path::Path;
use std::time::Duration;

/// Live (non-zombie) processes whose command line or environment contains `needle`, other
/// than this one.
pub(crate) fn matching(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    if needle.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let names = |file: &str| {
                std::fs::read(format!("/proc/{pid}/{file}"))
                    .is_ok_and(|text| text.windows(needle.len()).any(|w| w == needle))
            };
            names("cmdline") || names("environ")
        })
        .filter(|&pid| !is_zombie(pid))
        .collect()
}

/// A zombie has exited and only waits for its parent (or init) to reap it.
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the parenthesised command name, which may itself contain `)`.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .is_none_or(|state| matches!(state, 'Z' | 'X'))
}

/// Sends SIGKILL to `pids` and waits for the signal to be delivered (blocking).
pub(crate) fn kill_now(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -9 {} 2>/dev/null", list.join(" ")))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Err(e) = status {
        tracing::warn!(error = %e, ?pids, "Could not run `kill` on stray Chromium processes.");
    }
}

/// Kills every process mentioning `needle` and waits up to `patience` for them to be gone;
/// returns how many were killed.
pub(crate) async fn kill_matching(needle: &Path, patience: Duration) -> usize {
    let pids = matching(needle);
    if pids.is_empty() {
        return 0;
    }
    let killed = pids.len();
    let list = pids.clone();
    // `kill` is a short fork+exec; keep it off the async workers anyway.
    let _ = tokio::task::spawn_blocking(move || kill_now(&list)).await;
    let until = tokio::time::Instant::now() + patience;
    loop {
        let left = matching(needle);
        if left.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= until {
            tracing::warn!(pids = ?left, path = %needle.display(), "Chromium processes survived SIGKILL.");
            break;
        }
        // Processes forked between the scan and the kill get the same treatment.
        let fresh: Vec<u32> = left.into_iter().filter(|p| !pids.contains(p)).collect();
        if !fresh.is_empty() {
            let _ = tokio::task::spawn_blocking(move || kill_now(&fresh)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed
}

/// Blocking variant of [`kill_matching`] for `Drop`, where no runtime may be left.
pub(crate) fn kill_matching_blocking(needle: &Path, patience: Duration) {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let pids = matching(needle);
        if pids.is_empty() || std::time::Instant::now() >= deadline {
            return;
        }
        kill_now(&pids);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the watchdog runs: it reads the work directory from its stdin, then waits. `done` means
/// the agent cleaned up itself; end of file without it means the agent died (the kernel closed
/// the pipe), and the watchdog kills every process naming the directory (twice, for any forked
/// meanwhile) and removes it. The directory
/// travels over the pipe, so neither the watchdog's command line nor its environment names it
/// and it does not kill itself. It ignores the terminal's signals: Ctrl-C reaches the whole
/// process group, and the watchdog must outlive an agent that crashes while shutting down.
const WATCHDOG_SCRIPT: &str = r#"
trap '' INT TERM HUP
IFS= read -r dir || exit 0
case "$dir" in /*/patrol-browser-*) ;; *) exit 1 ;; esac
while IFS= read -r line; do [ "$line" = done ] && exit 0; done
sweep() {
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    grep -qsF -- "$dir" "$p/cmdline" "$p/environ" && kill -9 "$pid" 2> /dev/null
  done
}
sweep
sleep 0.3
sweep
rm -rf -- "$dir"
"#;

/// Kills what a browser work directory's processes left behind when the agent dies without
/// shutting its browser down (SIGKILL, a crash): a `sh` process that waits on a pipe only the
/// agent holds (see [`WATCHDOG_SCRIPT`]). [`Watchdog::disarm`] after an orderly cleanup;
/// dropping it otherwise (a panic unwinding) sweeps.
#[derive(Debug)]
pub(crate) struct Watchdog {
    /// The `sh` process; its stdin is the pipe. Closing the pipe without `done` sweeps.
    child: Option<std::process::Child>,
}

impl Watchdog {
    /// Starts a watchdog for `work_dir`; `None` (with a warning) when `sh` cannot be started.
    pub(crate) fn start(work_dir: &Path) -> Option<Watchdog> {
        use std::io::Write as _;
        let spawned = std::process::Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("patrol-browser-watchdog")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(error = %e, "Could not start the browser watchdog (`sh`); if the agent is killed, its Chromium processes stay until the next start.");
                return None;
            }
        };
        let line = format!("{}\n", work_dir.display());
        let handed = child
            .stdin
            .as_mut()
            .is_some_and(|pipe| pipe.write_all(line.as_bytes()).is_ok());
        if !handed {
            tracing::warn!("Could not hand the browser watchdog its directory.");
            let _ = child.kill();
            reap_later(child);
            return None;
        }
        Some(Watchdog { child: Some(child) })
    }

    /// Ends the watchdog without a sweep (the agent cleaned up itself), and reaps it.
    pub(crate) fn disarm(mut self) {
        use std::io::Write as _;
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(b"done\n");
        }
        // `sh` exits as soon as it reads the line.
        for _ in 0..100 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        reap_later(child);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // End of file without `done`: the watchdog sweeps, then exits.
            drop(child.stdin.take());
            reap_later(child);
        }
    }
}

/// Waits for `child` on a thread of its own, so it does not stay a zombie.
fn reap_later(mut child: std::process::Child) {
    std::thread::spawn(move || child.wait());
}

/// Removes a directory tree, retrying while a dying Chromium may still be writing into it.
pub(crate) async fn remove_dir(dir: &Path) {
    for attempt in 0..10 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 9 => {
                tracing::warn!(error = %e, dir = %dir.display(), "Could not remove a browser profile directory.");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Blocking variant of [`remove_dir`].
pub(crate) fn remove_dir_blocking(dir: &Path) {
    for _ in 0..5 {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_by_a_path_in_its_command_line() {
        let marker = std::env::temp_dir().join(format!("patrol-procs-{}", uuid::Uuid::new_v4()));
        // `sh -c CMD NAME`: NAME becomes `$0`, so the marker sits in the command line.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("while :; do sleep 0.1; done")
            .arg(&marker)
            .spawn()
            .expect("sh runs");
        // `spawn` returns once the child called `execve`, but the kernel fills in the new
        // command line a moment later: poll briefly instead of reading it once.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = matching(&marker);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            found = matching(&marker);
        }
        assert_eq!(found, vec![child.id()]);
        kill_matching_blocking(&marker, Duration::from_secs(2));
        let status = child.wait().expect("reaped");
        assert!(!status.success());
        assert!(matching(&marker).is_empty());
    }
}
