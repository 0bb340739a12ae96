//! One WebDriver session: a fresh Chromium with its own `--user-data-dir`, owned by a guard that
//! closes the session, kills whatever Chromium left running and removes the profile directory —
//! explicitly ([`Session::close_in_background`]) or, when a run is dropped half-way, from `Drop`.
//!
//! The guard also holds a `max_sessions` slot, so a slot frees only once its Chromium is gone and
//! the concurrency bound is a bound on live browsers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::emulation::{self, DEFAULT_VIEWPORT};
use super::procs;
use super::steps::Broke;
use crate::spec::{BrowserProbe, Viewport};

/// How long `DELETE /session` may take before Chromium is killed instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a session creation abandoned at the deadline may still finish, to be closed.
const ABANDONED_CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long killed processes get to disappear.
const KILL_PATIENCE: Duration = Duration::from_secs(2);

/// What Chromium is started with.
#[derive(Debug, Clone)]
pub(crate) struct LaunchOptions {
    /// The Chromium binary itself (not a wrapper script).
    pub chromium: PathBuf,
    /// The profile directory, under the browser's work directory.
    pub profile: PathBuf,
}

/// What a probe needs of a session: its window (or phone) and whether bad certificates pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shape {
    pub viewport: Viewport,
    pub insecure: bool,
}

impl Shape {
    pub(crate) fn of(probe: &BrowserProbe) -> Shape {
        Shape {
            viewport: probe.viewport.unwrap_or(DEFAULT_VIEWPORT),
            insecure: probe.insecure,
        }
    }
}

/// A live session; closing or dropping it releases Chromium, the profile and the slot.
#[derive(Debug)]
pub(crate) struct Session {
    client: Option<Client>,
    profile: PathBuf,
    permit: Option<OwnedSemaphorePermit>,
    shape: Shape,
    /// A command is stuck in the session (a hung page): closing would queue behind it.
    stuck: AtomicBool,
}

impl Session {
    /// Starts Chromium through chromedriver at `driver_url`, within `until`.
    pub(crate) async fn open(
        driver_url: &str,
        launch: LaunchOptions,
        shape: Shape,
        permit: OwnedSemaphorePermit,
        until: Instant,
    ) -> Result<Session, Broke> {
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities(&launch, shape));
        let url = driver_url.to_string();
        // On its own task, so a creation abandoned at the deadline still completes and its
        // browser can be closed rather than leaked.
        let mut creating = tokio::spawn(async move { builder.connect(&url).await });
        let profile = launch.profile;
        match tokio::time::timeout_at(until, &mut creating).await {
            Ok(Ok(Ok(client))) => {
                let mut session = Session {
                    client: Some(client),
                    profile,
                    permit: Some(permit),
                    shape: Shape {
                        viewport: Viewport {
                            mobile: false,
                            ..shape.viewport
                        },
                        ..shape
                    },
                    stuck: AtomicBool::new(false),
                };
                // The window has its size from the command line; a phone needs emulation too.
                session.reshape(shape.viewport, until).await?;
                Ok(session)
            }
            Ok(Ok(Err(e))) => {
                release(None, profile, Some(permit)).await;
                Err(Broke::error(format!(
                    "could not start Chromium: {}",
                    first_line(&e.to_string())
                )))
            }
            Ok(Err(join)) => {
                release(None, profile, Some(permit)).await;
                Err(Broke::error(format!(
                    "could not start Chromium: the session task failed: {join}"
                )))
            }
            Err(_) => {
                tokio::spawn(async move {
                    let client =
                        match tokio::time::timeout(ABANDONED_CREATE_TIMEOUT, creating).await {
                            Ok(Ok(Ok(client))) => Some(client),
                            _ => None,
                        };
                    release(client, profile, Some(permit)).await;
                });
                Err(Broke::timeout(
                    "Chromium did not start before the probe's deadline".to_string(),
                ))
            }
        }
    }

    /// The WebDriver client.
    pub(crate) fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the client is only taken by close or drop")
    }

    /// The window and certificate policy the session has now.
    pub(crate) fn shape(&self) -> Shape {
        self.shape
    }

    /// Switches the session to `viewport` (window size, phone emulation on or off), unless it
    /// has it already.
    pub(crate) async fn reshape(
        &mut self,
        viewport: Viewport,
        until: Instant,
    ) -> Result<(), Broke> {
        if self.shape.viewport == viewport {
            return Ok(());
        }
        let kind = if viewport.mobile { "phone" } else { "window" };
        let applied = emulation::apply(self.client(), viewport);
        match tokio::time::timeout_at(until, applied).await {
            Ok(Ok(())) => {
                self.shape.viewport = viewport;
                Ok(())
            }
            Ok(Err(e)) => Err(Broke::error(format!(
                "could not set up a {}x{} {kind}: {}",
                viewport.width,
                viewport.height,
                first_line(&e.to_string())
            ))),
            Err(_) => Err(Broke::timeout(format!(
                "Chromium did not set up a {}x{} {kind} before the probe's deadline",
                viewport.width, viewport.height
            ))),
        }
    }

    /// True when Chromium and chromedriver still answer for this session: its page runs a
    /// script. (Asking only for the window handle is not enough: chromedriver answers that for a
    /// Chromium that is hung or stopped, and the run would then wait out its deadline.)
    pub(crate) async fn is_alive(&self, within: Duration) -> bool {
        let check = self.client().execute("return 1", Vec::new());
        matches!(tokio::time::timeout(within, check).await, Ok(Ok(v)) if v == 1)
    }

    /// Loads an empty `data:` page, so the first real navigation finds a renderer started.
    pub(crate) async fn warm_up(&self, within: Duration) {
        let loaded = self.client().goto("data:text/html,");
        if !matches!(tokio::time::timeout(within, loaded).await, Ok(Ok(()))) {
            tracing::debug!("A spare browser session's warm-up navigation failed.");
        }
    }

    /// Marks the session as having a command stuck in it: it is killed rather than closed.
    pub(crate) fn mark_stuck(&self) {
        self.stuck.store(true, Ordering::SeqCst);
    }

    /// Closes the session on a background task; the slot frees when Chromium is gone.
    pub(crate) fn close_in_background(self) {
        drop(self);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.profile.as_os_str().is_empty() {
            return;
        }
        let (mut client, profile, permit) = (
            self.client.take(),
            std::mem::take(&mut self.profile),
            self.permit.take(),
        );
        if self.stuck.load(Ordering::SeqCst) {
            // Dropping the client lets fantoccini end the session once chromedriver answers.
            client = None;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(release(client, profile, permit));
            }
            Err(_) => {
                // No runtime: the client cannot talk any more; kill what the profile names.
                drop(client);
                procs::kill_matching_blocking(&profile, KILL_PATIENCE);
                if let Some(singleton) = singleton_dir(&profile) {
                    procs::remove_dir_blocking(&singleton);
                }
                procs::remove_dir_blocking(&profile);
                drop(permit);
            }
        }
    }
}

/// Ends a session: `DELETE /session` (chromedriver quits Chromium), then SIGKILL for anything
/// still naming the profile (chromedriver dead or Chromium hung), then the profile directory and
/// the temp directory of Chromium's singleton socket.
async fn release(client: Option<Client>, profile: PathBuf, permit: Option<OwnedSemaphorePermit>) {
    if let Some(client) = client {
        match tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Browser session close failed; killing Chromium.")
            }
            Err(_) => tracing::warn!("Browser session close timed out; killing Chromium."),
        }
    }
    let killed = procs::kill_matching(&profile, KILL_PATIENCE).await;
    if killed > 0 {
        tracing::info!(killed, profile = %profile.display(), "Stray Chromium processes killed.");
    }
    if let Some(singleton) = singleton_dir(&profile) {
        procs::remove_dir(&singleton).await;
    }
    procs::remove_dir(&profile).await;
    drop(permit);
}

/// The session's capabilities: Chromium binary and flags, window size, logging.
fn capabilities(launch: &LaunchOptions, shape: Shape) -> fantoccini::wd::Capabilities {
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--mute-audio",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", launch.profile.display()));
    args.push(format!(
        "--window-size={},{}",
        shape.viewport.width, shape.viewport.height
    ));
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": shape.insecure,
        "pageLoadStrategy": "normal",
        "timeouts": { "implicit": 0, "pageLoad": 30_000, "script": 30_000 },
        "goog:loggingPrefs": { "browser": "ALL" },
        "goog:chromeOptions": {
            "binary": launch.chromium.display().to_string(),
            "args": args,
        },
    });
    caps.as_object().cloned().unwrap_or_default()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim()
}

/// The temp directory holding the profile's singleton socket, which a killed Chromium leaves
/// behind (the profile links to it).
fn singleton_dir(profile: &Path) -> Option<PathBuf> {
    let socket = std::fs::read_link(profile.join("SingletonSocket")).ok()?;
    let dir = socket.parent()?;
    let name = dir.file_name()?.to_str()?;
    name.starts_with("org.chromium.Chromium.")
        .then(|| dir.to_path_buf())
}

/// The directory a new session's profile lives in.
pub(crate) fn new_profile_dir(work_dir: &Path) -> PathBuf {
    work_dir.join(format!("profile-{}", uuid::Uuid::new_v4().simple()))
}
