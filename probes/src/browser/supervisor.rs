//! What a [`super::Browser`] runs: chromedriver, the `max_sessions` slots and one spare session.
//!
//! Starting Chromium is most of a short probe's wall time (0.4–0.9 s on an idle machine), and
//! none of it is the site's. So once a run has ended, a fresh session is started ahead of the
//! next run and kept as a spare: never used before, with its own new profile, exactly what the
//! run would have started itself. A run takes the spare when its certificate policy matches
//! (the window and phone emulation are switched through DevTools when they differ), checks that
//! it still answers, and otherwise starts its own. The spare holds a slot like any session, so
//! `max_sessions` still bounds live browsers; a run that finds every slot taken waits for a slot
//! or for the spare, whichever comes first.
//!
//! A spare also loads an empty `data:` page once: Chromium's first navigation pays for starting
//! a renderer and its spare process, which would otherwise count in the run's first `goto`
//! (roughly half of it on this machine). No request leaves the browser for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::driver::{self, Driver};
use super::procs;
use super::session::{LaunchOptions, Session, Shape};
use super::steps::Broke;
use super::{BrowserSettings, DEBIAN_BINARY, DEBIAN_WRAPPER};

/// How long a spare may take to prove it still answers.
const SPARE_CHECK: Duration = Duration::from_secs(1);
/// How long a spare may take to start.
const SPARE_START: Duration = Duration::from_secs(30);
/// How long a spare's warm-up navigation may take.
const SPARE_WARM_UP: Duration = Duration::from_secs(5);
/// How long shutdown waits for sessions that are still closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// chromedriver, the slots and the spare session of one browser.
#[derive(Debug)]
pub(crate) struct Supervisor {
    settings: BrowserSettings,
    /// Profiles, chromedriver's log, config home and temp dir; every process started names it.
    work_dir: PathBuf,
    driver: tokio::sync::Mutex<Option<Driver>>,
    /// One permit per live session (the spare included); a permit frees once Chromium is gone.
    slots: Arc<Semaphore>,
    spare: Mutex<Option<Session>>,
    /// Signalled when a spare is put in place.
    spare_ready: Notify,
    /// A spare is being started.
    refilling: AtomicBool,
    /// The task starting it, aborted at shutdown.
    refill_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Anything was ever started (so cleanup has something to do).
    started: AtomicBool,
    /// Kills what is left under the work directory if the agent dies without cleaning up.
    watchdog: Mutex<Option<procs::Watchdog>>,
    /// Shut down: no more drivers, sessions or spares.
    closed: AtomicBool,
}

impl Supervisor {
    pub(crate) fn new(settings: BrowserSettings) -> Supervisor {
        let work_dir = std::env::temp_dir().join(format!(
            "{}{}-{}",
            driver::WORK_DIR_PREFIX,
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let slots = Arc::new(Semaphore::new(settings.max_sessions.max(1)));
        Supervisor {
            settings,
            work_dir,
            driver: tokio::sync::Mutex::new(None),
            slots,
            spare: Mutex::new(None),
            spare_ready: Notify::new(),
            refilling: AtomicBool::new(false),
            refill_task: Mutex::new(None),
            started: AtomicBool::new(false),
            watchdog: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn settings(&self) -> &BrowserSettings {
        &self.settings
    }

    pub(crate) fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    pub(crate) async fn driver_pid(&self) -> Option<u32> {
        self.driver.lock().await.as_ref().and_then(Driver::pid)
    }

    /// A fresh session shaped for a run, within `until`: the spare when it fits, else a new one
    /// once a slot is free.
    pub(crate) async fn checkout(&self, shape: Shape, until: Instant) -> Result<Session, Broke> {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(Broke::error("the browser has been shut down".into()));
            }
            if let Some(mut spare) = self.take_spare() {
                if spare.shape().insecure == shape.insecure
                    && spare.is_alive(SPARE_CHECK).await
                    && spare.reshape(shape.viewport, until).await.is_ok()
                {
                    return Ok(spare);
                }
                // Wrong certificate policy, or its Chromium died: free its slot and go on.
                spare.close_in_background();
            }
            let ready = self.spare_ready.notified();
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => {
                    let permit = permit.map_err(|_| Broke::error("the browser has been shut down".into()))?;
                    return self.open(shape, permit, until).await;
                }
                () = ready => continue,
                () = tokio::time::sleep_until(until) => {
                    return Err(Broke::timeout(format!(
                        "no browser session became free before the probe's deadline (max_sessions = {})",
                        self.settings.max_sessions
                    )));
                }
            }
        }
    }

    fn abort_refill(&self) {
        let task = self
            .refill_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }

    fn take_spare(&self) -> Option<Session> {
        self.spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Starts a spare shaped like the run that just ended, unless one exists or is starting.
    pub(crate) fn refill(self: &Arc<Self>, shape: Shape) {
        if self.closed.load(Ordering::SeqCst) || self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let supervisor = Arc::clone(self);
        let task = tokio::spawn(async move {
            supervisor.start_spare(shape).await;
            supervisor.refilling.store(false, Ordering::SeqCst);
        });
        *self
            .refill_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    async fn start_spare(&self, shape: Shape) {
        let has_spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if has_spare {
            return;
        }
        // Waits behind runs already waiting (the semaphore is fair); they take the spare when
        // it is ready, or a slot when one frees first.
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return;
        };
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let until = Instant::now() + SPARE_START;
        match self.open(shape, permit, until).await {
            Ok(session) => {
                session.warm_up(SPARE_WARM_UP).await;
                let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
                if self.closed.load(Ordering::SeqCst) || spare.is_some() {
                    drop(spare);
                    session.close_in_background();
                    return;
                }
                *spare = Some(session);
                drop(spare);
                self.spare_ready.notify_one();
            }
            Err(broke) => {
                tracing::warn!(error = %broke.message, "Spare browser session could not start.");
            }
        }
    }

    /// A new session on a healthy chromedriver.
    async fn open(
        &self,
        shape: Shape,
        permit: tokio::sync::OwnedSemaphorePermit,
        until: Instant,
    ) -> Result<Session, Broke> {
        let url = self.driver_url(until).await?;
        let launch = LaunchOptions {
            chromium: self.chromium_binary(),
            profile: super::session::new_profile_dir(&self.work_dir),
        };
        Session::open(&url, launch, shape, permit, until).await
    }

    /// A healthy chromedriver's URL, (re)starting it if needed.
    async fn driver_url(&self, until: Instant) -> Result<String, Broke> {
        let mut driver = tokio::time::timeout_at(until, self.driver.lock())
            .await
            .map_err(|_| {
                Broke::timeout("chromedriver was still starting at the probe's deadline".into())
            })?;
        if self.closed.load(Ordering::SeqCst) {
            return Err(Broke::error("the browser has been shut down".into()));
        }
        if let Some(running) = driver.as_mut() {
            if running.is_healthy(until).await {
                return Ok(running.url());
            }
            tracing::warn!("Chromedriver is not answering; restarting it.");
            if let Some(dead) = driver.take() {
                dead.stop().await;
            }
        }
        if !self.started.swap(true, Ordering::SeqCst) {
            // Leftovers of an agent that was killed before it could shut its browser down (one
            // without a watchdog, or killed before its watchdog's sweep was done).
            tokio::spawn(async { driver::sweep_abandoned(&std::env::temp_dir()).await });
            *self.watchdog.lock().unwrap_or_else(PoisonError::into_inner) =
                procs::Watchdog::start(&self.work_dir);
        }
        let binary = driver::locate_binary(&self.settings.chromedriver)
            .unwrap_or_else(|| self.settings.chromedriver.clone());
        let started = Driver::start(&binary, &self.work_dir, until)
            .await
            .map_err(|e| {
                if Instant::now() >= until {
                    Broke::timeout(e)
                } else {
                    Broke::error(e)
                }
            })?;
        let url = started.url();
        *driver = Some(started);
        Ok(url)
    }

    /// The Chromium binary to launch: Debian's wrapper script is skipped for the real binary.
    fn chromium_binary(&self) -> PathBuf {
        let configured = &self.settings.chromium;
        if configured == Path::new(DEBIAN_WRAPPER) && Path::new(DEBIAN_BINARY).exists() {
            return PathBuf::from(DEBIAN_BINARY);
        }
        driver::locate_binary(configured).unwrap_or_else(|| configured.clone())
    }

    /// Closes the spare, lets closing sessions finish, stops chromedriver, kills whatever is
    /// left under the work directory and removes it. Final: later runs get an error.
    pub(crate) async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // A spare half-started is not waited for: whatever it started is killed below.
        self.abort_refill();
        if let Some(spare) = self.take_spare() {
            spare.close_in_background();
        }
        let all = u32::try_from(self.settings.max_sessions.max(1)).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, self.slots.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!("Browser sessions still open at shutdown; killing them.");
        }
        self.slots.close();
        if let Some(driver) = self.driver.lock().await.take() {
            driver.stop().await;
            tracing::info!("Chromedriver stopped.");
        }
        if self.started.load(Ordering::SeqCst) {
            let killed = procs::kill_matching(&self.work_dir, Duration::from_secs(2)).await;
            if killed > 0 {
                tracing::warn!(killed, "Stray Chromium processes killed at shutdown.");
            }
            procs::remove_dir(&self.work_dir).await;
        }
        // Nothing is left for it to kill.
        self.stop_watchdog();
    }

    fn stop_watchdog(&self) {
        let watchdog = self
            .watchdog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(watchdog) = watchdog {
            watchdog.disarm();
        }
    }

    /// [`Supervisor::shutdown`] without a runtime, for `Drop`: kill, don't ask.
    pub(crate) fn kill_blocking(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.abort_refill();
        self.slots.close();
        drop(self.take_spare());
        if let Ok(mut driver) = self.driver.try_lock()
            && let Some(driver) = driver.take()
        {
            driver.stop_blocking();
        }
        if self.started.load(Ordering::SeqCst) {
            procs::kill_matching_blocking(&self.work_dir, Duration::from_secs(1));
            procs::remove_dir_blocking(&self.work_dir);
        }
        self.stop_watchdog();
    }
}
