//! The chromedriver process: started on a free loopback port when first needed, checked before
//! every run (`try_wait`, then `GET /status`) and restarted when it died.
//!
//! chromedriver accepts only local connections unless told otherwise, and it is never told
//! otherwise here (no `--allowed-ips`, which when empty would mean "anyone").
//!
//! Everything chromedriver and Chromium write stays in the browser's work directory: its log
//! (`--log-path`, warnings only), `XDG_CONFIG_HOME` (Chromium's crash handler database) and
//! `TMPDIR` (Chromium's singleton sockets, chromedriver's scoped directories, both left behind
//! when a browser is killed). So every process started names a path under that directory in its
//! command line, and the cleanup in [`super::procs`] finds them all by it — also after a crash of
//! the agent itself: at once, by the watchdog ([`super::procs::Watchdog`]), and on the next
//! start ([`sweep_abandoned`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::fmt_duration;

/// How long a `/status` check may take before chromedriver counts as hung.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `/status` is polled while chromedriver starts.
const START_POLL: Duration = Duration::from_millis(20);
/// Ports tried before giving up (another process may grab the port between probe and bind).
const START_ATTEMPTS: usize = 3;

/// A running chromedriver, killed when dropped.
#[derive(Debug)]
pub(crate) struct Driver {
    child: tokio::process::Child,
    port: u16,
}

impl Driver {
    /// Starts `binary` on a free loopback port and waits (until `until`) for it to be ready.
    pub(crate) async fn start(
        binary: &Path,
        work_dir: &Path,
        until: Instant,
    ) -> Result<Driver, String> {
        let (xdg, tmp) = (work_dir.join("xdg"), work_dir.join("tmp"));
        for dir in [&xdg, &tmp] {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "could not create the browser work directory {}: {e}",
                    dir.display()
                )
            })?;
        }
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port().map_err(|e| {
                format!("could not find a free loopback port for chromedriver: {e}")
            })?;
            let started = Instant::now();
            let mut child = tokio::process::Command::new(binary)
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--log-path={}",
                    work_dir.join("chromedriver.log").display()
                ))
                .arg("--log-level=WARNING")
                .env("XDG_CONFIG_HOME", &xdg)
                .env("TMPDIR", &tmp)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    format!("could not start chromedriver at {}: {e}", binary.display())
                })?;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("chromedriver exited while starting on port {port} ({status})");
                    break;
                }
                if status_ready(port, until.min(Instant::now() + STATUS_TIMEOUT)).await {
                    tracing::info!(port, pid = child.id(), started_in = ?started.elapsed(), "Chromedriver started.");
                    return Ok(Driver { child, port });
                }
                if Instant::now() >= until {
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                    return Err(format!(
                        "chromedriver at {} did not become ready on 127.0.0.1:{port} within {}",
                        binary.display(),
                        fmt_duration(started.elapsed())
                    ));
                }
                tokio::time::sleep(START_POLL).await;
            }
        }
        Err(last)
    }

    /// The WebDriver endpoint.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// True when the process is alive and answers `/status` as ready (reaps it when it died).
    pub(crate) async fn is_healthy(&mut self, until: Instant) -> bool {
        match self.child.try_wait() {
            Ok(None) => status_ready(self.port, until.min(Instant::now() + STATUS_TIMEOUT)).await,
            Ok(Some(status)) => {
                tracing::warn!(port = self.port, %status, "Chromedriver exited.");
                false
            }
            Err(_) => false,
        }
    }

    /// Kills chromedriver and reaps it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(port = self.port, "Chromedriver did not exit after SIGKILL.");
        }
    }

    /// Kills chromedriver without a runtime (for `Drop`), reaping it if it goes quickly.
    pub(crate) fn stop_blocking(mut self) {
        let _ = self.child.start_kill();
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The prefix of every browser work directory in the temp directory; the agent's pid follows.
pub(crate) const WORK_DIR_PREFIX: &str = "patrol-browser-";

/// Cleans up after agents that died without shutting their browser down (killed, crashed): for
/// each `patrol-browser-<pid>-*` work directory whose pid no longer runs, kills the processes
/// naming it and removes it. Returns how many directories were swept.
pub(crate) async fn sweep_abandoned(temp_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(temp_dir) else {
        return 0;
    };
    let mut swept = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(WORK_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = entry.path();
        let killed = super::procs::kill_matching(&dir, Duration::from_secs(2)).await;
        super::procs::remove_dir(&dir).await;
        tracing::warn!(dir = %dir.display(), killed, "Browser work directory of a dead agent swept.");
        swept += 1;
    }
    swept
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// `GET /status` answers `"ready": true`.
async fn status_ready(port: u16, until: Instant) -> bool {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        // chromedriver answers `Connection: close` but keeps the socket open: read by length.
        let mut response = Vec::with_capacity(1024);
        let body = loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())?;
            if body.len() >= length {
                break body.to_string();
            }
        };
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json.pointer("/value/ready")
            .and_then(serde_json::Value::as_bool)
    };
    matches!(tokio::time::timeout_at(until, check).await, Ok(Some(true)))
}

/// Where a binary named in the settings is: a path as given, or a bare name looked up in `PATH`.
pub(crate) fn locate_binary(configured: &Path) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if configured.components().count() > 1 || configured.is_absolute() {
        return is_exec(configured).then(|| configured.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(configured))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_are_looked_up_in_path() {
        assert!(locate_binary(Path::new("sh")).is_some());
        assert!(locate_binary(Path::new("surely-not-a-binary-patrol")).is_none());
        assert!(locate_binary(Path::new("/nonexistent/chromium")).is_none());
    }
}
