//! The scheduler: turns each probe's [`Schedule`] into a stream of [`SchedulerEvent`]s.
//!
//! Fire times are points of the schedule's wall-clock sequence, never "last run ended + period",
//! so runs do not drift:
//! - `every: D` fires on an epoch-aligned grid shifted by [`spread_offset`] of the probe's name,
//!   so many probes with the same interval are spread across it rather than firing at once;
//! - `cron` fires at exactly the expression's times, in the probe's `tz` (UTC when unset).
//!
//! One task drives every probe from a min-heap keyed by the next tokio [`Instant`]: O(log n) per
//! fire, one timer in total. Wall-clock times map to instants through an anchor taken when
//! [`Scheduler::run`] starts and taken again if the wall clock steps (clock set, suspend). A late
//! wake-up (busy machine) fires once for the slot that was due, reports the lag, and resumes at
//! the first slot after now: missed slots are coalesced, never replayed as a burst. A probe
//! still running when its next slot comes is not started twice: the slot is reported as
//! [`SchedulerEvent::Skipped`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Schedule;

/// The [`SchedulerEvent::Skipped`] reason when the previous run has not finished.
pub const SKIP_OVERLAP: &str = "overlap";

/// A probe that runs on its own.
#[derive(Debug, Clone)]
pub struct ScheduledProbe {
    /// The probe's name, unique in the config.
    pub name: String,
    /// When it runs.
    pub schedule: Schedule,
    /// The time zone of a cron schedule; UTC when `None`. Intervals ignore it.
    pub tz: Option<Tz>,
}

/// What the scheduler asks of the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerEvent {
    /// Start a run now. The probe is already marked in [`InFlight`]; the runner calls
    /// [`InFlight::finish`] when the run ends.
    Fire {
        /// The probe's name.
        probe: String,
        /// The slot this run is for.
        scheduled: Instant,
        /// How late the fire is: the instant it was sent minus `scheduled` (on the monotonic
        /// clock; a wall-clock step is not lag).
        lag: Duration,
    },
    /// A slot passed without a run.
    Skipped {
        /// The probe's name.
        probe: String,
        /// Why: [`SKIP_OVERLAP`] when the previous run was still going.
        reason: &'static str,
        /// The slot that was skipped.
        scheduled: Instant,
    },
}

/// Tracks which probes are running, shared between the scheduler and the runner; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    running: Arc<Mutex<HashSet<String>>>,
}

impl InFlight {
    /// Marks `name` running; false (and no change) if it already is.
    pub fn try_start(&self, name: &str) -> bool {
        let mut running = lock(&self.running);
        if running.contains(name) {
            return false;
        }
        running.insert(name.to_owned())
    }

    /// Marks `name` no longer running. Finishing a probe that is not running does nothing.
    pub fn finish(&self, name: &str) {
        lock(&self.running).remove(name);
    }

    /// Whether `name` is running.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "used by tests; kept for the API")
    )]
    pub fn is_running(&self, name: &str) -> bool {
        lock(&self.running).contains(name)
    }
}

/// The next fire time of each scheduled probe, for the API and status page; cheap to clone.
///
/// One handle lives as long as the agent and is handed to every [`Scheduler`] it starts (one per
/// config reload). Each new scheduler takes it over: entries of the previous one are cleared and
/// any late update from it is ignored.
#[derive(Debug, Clone, Default)]
pub struct NextRuns {
    inner: Arc<Mutex<NextRunsInner>>,
}

#[derive(Debug, Default)]
struct NextRunsInner {
    /// Bumped by each scheduler that takes the handle over; only the latest may write.
    generation: u64,
    next: HashMap<String, DateTime<Utc>>,
}

impl NextRuns {
    /// The next fire time of `probe`; `None` when it is not scheduled (on demand only, or its
    /// schedule has no future time).
    pub fn get(&self, probe: &str) -> Option<DateTime<Utc>> {
        lock(&self.inner).next.get(probe).copied()
    }

    /// Every scheduled probe with its next fire time, soonest first.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "used by tests; kept for the API")
    )]
    pub fn snapshot(&self) -> Vec<(String, DateTime<Utc>)> {
        let mut all: Vec<(String, DateTime<Utc>)> = lock(&self.inner)
            .next
            .iter()
            .map(|(name, at)| (name.clone(), *at))
            .collect();
        all.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        all
    }

    /// Takes the handle over for a new scheduler: clears it and returns the new generation.
    fn take_over(&self) -> u64 {
        let mut inner = lock(&self.inner);
        inner.generation += 1;
        inner.next.clear();
        inner.generation
    }

    fn set(&self, generation: u64, probe: &str, at: Option<DateTime<Utc>>) {
        let mut inner = lock(&self.inner);
        if inner.generation != generation {
            return;
        }
        match at {
            Some(at) => match inner.next.get_mut(probe) {
                Some(slot) => *slot = at,
                None => {
                    inner.next.insert(probe.to_owned(), at);
                }
            },
            None => {
                inner.next.remove(probe);
            }
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single insert, remove or read).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fires probes on their schedules until cancelled; see the module docs.
#[derive(Debug)]
pub struct Scheduler {
    probes: Vec<ScheduledProbe>,
    in_flight: InFlight,
    next_runs: NextRuns,
    generation: u64,
}

impl Scheduler {
    /// A scheduler for `probes`, marking runs in `in_flight` and publishing next fire times in
    /// `next_runs` (taken over from any previous scheduler; filled in right away).
    pub fn new(probes: Vec<ScheduledProbe>, in_flight: InFlight, next_runs: NextRuns) -> Scheduler {
        let generation = next_runs.take_over();
        let now = Utc::now();
        for p in &probes {
            next_runs.set(
                generation,
                &p.name,
                next_fire(&p.schedule, p.tz, &p.name, now),
            );
        }
        Scheduler {
            probes,
            in_flight,
            next_runs,
            generation,
        }
    }

    /// Runs until `shutdown` is cancelled (or `events` is closed), sending an event per fire
    /// time: [`SchedulerEvent::Fire`] when [`InFlight::try_start`] succeeds, else
    /// [`SchedulerEvent::Skipped`]. A full channel delays the scheduler but never outlives
    /// `shutdown`.
    pub async fn run(self, events: mpsc::Sender<SchedulerEvent>, shutdown: CancellationToken) {
        self.run_with_clock(Utc::now, events, shutdown).await;
    }

    /// [`Scheduler::run`] reading wall-clock time from `wall_clock`, so tests can pin the grid
    /// and step the clock.
    async fn run_with_clock(
        self,
        wall_clock: impl Fn() -> DateTime<Utc>,
        events: mpsc::Sender<SchedulerEvent>,
        shutdown: CancellationToken,
    ) {
        let Scheduler {
            probes,
            in_flight,
            next_runs,
            generation,
        } = self;
        let mut timetable = Timetable::new(probes, wall_clock());
        timetable.publish(&next_runs, generation);
        tracing::info!(probes = timetable.heap.len(), "Scheduler started.");

        let sleep = tokio::time::sleep_until(timetable.clock.instant);
        tokio::pin!(sleep);
        loop {
            let Some(at) = timetable.earliest() else {
                // Nothing left to schedule: wait for shutdown so callers see one lifetime.
                shutdown.cancelled().await;
                break;
            };
            // Wake at least every CLOCK_CHECK_PERIOD to notice wall-clock steps.
            sleep
                .as_mut()
                .reset(at.min(Instant::now() + CLOCK_CHECK_PERIOD));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = &mut sleep => {}
            }
            if timetable.follow_wall_clock(wall_clock()) {
                timetable.publish(&next_runs, generation);
            }

            // Everything due by now, in slot order (ties in config order).
            while let Some((idx, scheduled, fired)) = timetable.pop_due() {
                let name = &timetable.probes[idx].name;
                let fire = in_flight.try_start(name);
                let event = if fire {
                    SchedulerEvent::Fire {
                        probe: name.clone(),
                        scheduled,
                        lag: fired.saturating_duration_since(scheduled),
                    }
                } else {
                    SchedulerEvent::Skipped {
                        probe: name.clone(),
                        reason: SKIP_OVERLAP,
                        scheduled,
                    }
                };
                let next = timetable.reschedule(idx, fired);
                let name = &timetable.probes[idx].name;
                next_runs.set(generation, name, next);

                let sent = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => false,
                    sent = events.send(event) => sent.is_ok(),
                };
                if !sent {
                    if fire {
                        // Nobody will run it: do not leave the probe marked running.
                        in_flight.finish(name);
                    }
                    if !shutdown.is_cancelled() {
                        tracing::warn!("Scheduler stopped: the event receiver is gone.");
                    }
                    return;
                }
            }
        }
        tracing::info!("Scheduler stopped.");
    }
}

/// How often a sleeping scheduler wakes to compare the wall clock with its anchor.
const CLOCK_CHECK_PERIOD: Duration = Duration::from_secs(60);

/// How far the wall clock may move away from the monotonic clock before the scheduler
/// re-anchors. Both are slewed alike by NTP, so they part only on a step (clock set, NTP step at
/// boot) or a suspend, which the monotonic clock does not count.
const MAX_CLOCK_DIVERGENCE: TimeDelta = TimeDelta::milliseconds(100);

/// Every probe's next slot: wall-clock times, and the same as instants in a min-heap.
#[derive(Debug)]
struct Timetable {
    probes: Vec<ScheduledProbe>,
    /// The slot each probe waits for; `None` once its schedule has no more times.
    slots: Vec<Option<DateTime<Utc>>>,
    /// `(instant of the slot, index)` for every probe with a slot; ties fire in config order.
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    clock: Anchor,
}

impl Timetable {
    /// Anchors the clock at `wall_now` and queues every probe's first slot after it.
    fn new(probes: Vec<ScheduledProbe>, wall_now: DateTime<Utc>) -> Timetable {
        let mut timetable = Timetable {
            slots: vec![None; probes.len()],
            heap: BinaryHeap::with_capacity(probes.len()),
            clock: Anchor {
                instant: Instant::now(),
                wall: wall_now,
            },
            probes,
        };
        for idx in 0..timetable.probes.len() {
            let p = &timetable.probes[idx];
            let first = next_fire(&p.schedule, p.tz, &p.name, wall_now);
            timetable.queue(idx, first);
        }
        timetable
    }

    /// Publishes every probe's slot.
    fn publish(&self, next_runs: &NextRuns, generation: u64) {
        for (p, slot) in self.probes.iter().zip(&self.slots) {
            next_runs.set(generation, &p.name, *slot);
        }
    }

    /// Re-anchors on the wall clock if it has stepped away from the monotonic clock; true if so.
    /// After a forward step (or a suspend) slots that have passed are due at once and fire once;
    /// after a backward step each probe resumes at its first slot after the new wall time
    /// instead of waiting out the step.
    fn follow_wall_clock(&mut self, wall_now: DateTime<Utc>) -> bool {
        let now = Instant::now();
        let step = wall_now - self.clock.wall_at(now);
        if step.abs() <= MAX_CLOCK_DIVERGENCE {
            return false;
        }
        tracing::warn!(
            step_ms = step.num_milliseconds(),
            "Wall clock stepped; schedules re-anchored to it."
        );
        self.clock = Anchor {
            instant: now,
            wall: wall_now,
        };
        self.heap.clear();
        for idx in 0..self.probes.len() {
            let Some(slot) = self.slots[idx] else {
                continue;
            };
            let p = &self.probes[idx];
            // From just before now, so a slot at this very moment still fires.
            let from = wall_now
                .checked_sub_signed(TimeDelta::nanoseconds(1))
                .unwrap_or(wall_now);
            let next = match next_fire(&p.schedule, p.tz, &p.name, from) {
                Some(fresh) if fresh < slot => fresh,
                _ => slot,
            };
            self.queue(idx, Some(next));
        }
        true
    }

    /// The instant of the earliest slot.
    fn earliest(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest slot if it is due: `(probe index, slot instant, now)`.
    fn pop_due(&mut self) -> Option<(usize, Instant, Instant)> {
        let Reverse((at, idx)) = *self.heap.peek()?;
        let now = Instant::now();
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((idx, at, now))
    }

    /// Queues probe `idx`'s slot after the one that fired at `fired`, returning it. That is the
    /// next slot on the schedule unless it has passed too; then the first one after `fired`, so
    /// a late wake-up fires once rather than catching up.
    fn reschedule(&mut self, idx: usize, fired: Instant) -> Option<DateTime<Utc>> {
        let p = &self.probes[idx];
        let fired_wall = self.clock.wall_at(fired);
        let next = match self.slots[idx] {
            None => None,
            Some(slot) => match next_fire(&p.schedule, p.tz, &p.name, slot) {
                Some(next) if next > fired_wall => Some(next),
                Some(_) => {
                    tracing::debug!(
                        probe = %p.name,
                        late_ms = (fired_wall - slot).num_milliseconds(),
                        "Missed scheduled slots coalesced into one run."
                    );
                    next_fire(&p.schedule, p.tz, &p.name, fired_wall)
                }
                None => None,
            },
        };
        self.queue(idx, next)
    }

    /// Makes `next` probe `idx`'s slot and returns it; `None` (and a warning) when the schedule
    /// has no more times or they lie beyond what the clock can represent.
    fn queue(&mut self, idx: usize, next: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let slot = next.and_then(|wall| Some((wall, self.clock.instant_at(wall)?)));
        self.slots[idx] = slot.map(|(wall, _)| wall);
        match slot {
            Some((_, at)) => self.heap.push(Reverse((at, idx))),
            None => {
                let p = &self.probes[idx];
                tracing::warn!(
                    probe = %p.name,
                    schedule = %p.schedule.describe(),
                    "Probe has no upcoming scheduled run; it runs on demand only."
                );
            }
        }
        self.slots[idx]
    }
}

/// Maps wall-clock times to tokio instants and back, exactly (to the nanosecond), through one
/// pair of readings; the monotonic clock is what keeps consecutive fires exactly one period
/// apart. Replaced when the wall clock steps (see [`Timetable::follow_wall_clock`]).
#[derive(Debug, Clone, Copy)]
struct Anchor {
    instant: Instant,
    wall: DateTime<Utc>,
}

impl Anchor {
    /// The instant of `wall`; the anchor itself for times before it (they are due now). `None`
    /// beyond the range of `Instant`.
    fn instant_at(&self, wall: DateTime<Utc>) -> Option<Instant> {
        match (wall - self.wall).to_std() {
            Ok(ahead) => self.instant.checked_add(ahead),
            Err(_) => Some(self.instant),
        }
    }

    /// The wall-clock time of `at` (not before the anchor).
    fn wall_at(&self, at: Instant) -> DateTime<Utc> {
        TimeDelta::from_std(at.saturating_duration_since(self.instant))
            .ok()
            .and_then(|d| self.wall.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// The offset of `name`'s grid within `period`: deterministic across runs, hosts and releases
/// (FNV-1a of the name, then a 64-bit finalizer so names that differ in one character land far
/// apart), in whole milliseconds, below `period` (zero for periods under 1 ms).
///
/// Changing this function moves every probe's fire times; `the_spread_is_pinned` guards it.
pub fn spread_offset(name: &str, period: Duration) -> Duration {
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    if period_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(mix64(fnv1a64(name.as_bytes())) % period_ms)
}

/// FNV-1a, 64-bit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// MurmurHash3's 64-bit finalizer: spreads FNV's weak low bits over the whole word.
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The first fire time of probe `name` strictly after `after`; `None` when there is none (a cron
/// schedule whose years have passed, a zero interval) or it is out of range.
///
/// `every: D` fires at `k·D + spread_offset(name, D)` from the Unix epoch, for whole `k`: the
/// grid is the same on every host and after every restart. Cron fires at the expression's times
/// in `tz` (UTC when `None`), with no spread: cron users expect exact times. At a DST fall-back a
/// repeated local time fires once.
pub fn next_fire(
    schedule: &Schedule,
    tz: Option<Tz>,
    name: &str,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match schedule {
        Schedule::Cron { schedule, .. } => match tz {
            Some(tz) => schedule
                .after(&after.with_timezone(&tz))
                .next()
                .map(|t| t.with_timezone(&Utc)),
            None => schedule.after(&after).next(),
        },
        Schedule::Every(period) => {
            let period_ns = i128::try_from(period.as_nanos()).ok()?;
            if period_ns == 0 {
                return None;
            }
            let offset_ns = i128::try_from(spread_offset(name, *period).as_nanos()).ok()?;
            let after_ns = i128::from(after.timestamp()) * NANOS_PER_SEC
                + i128::from(after.timestamp_subsec_nanos());
            let k = (after_ns - offset_ns).div_euclid(period_ns) + 1;
            let next_ns = k * period_ns + offset_ns;
            let secs = i64::try_from(next_ns.div_euclid(NANOS_PER_SEC)).ok()?;
            let nanos = u32::try_from(next_ns.rem_euclid(NANOS_PER_SEC)).ok()?;
            DateTime::from_timestamp(secs, nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schedule::parse_cron;

    fn every(secs: u64) -> Schedule {
        Schedule::Every(Duration::from_secs(secs))
    }

    fn cron(expr: &str) -> Schedule {
        Schedule::Cron {
            expr: expr.to_string(),
            schedule: Box::new(parse_cron(expr).expect("valid cron")),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid RFC 3339")
            .with_timezone(&Utc)
    }

    fn probe(name: &str, schedule: Schedule) -> ScheduledProbe {
        ScheduledProbe {
            name: name.to_string(),
            schedule,
            tz: None,
        }
    }

    /// A scheduler started at `wall_now`, with its event receiver, token and task.
    struct Running {
        /// Added to the virtual wall clock, which otherwise follows tokio's paused clock.
        wall_step: Arc<Mutex<TimeDelta>>,
        events: mpsc::Receiver<SchedulerEvent>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        in_flight: InFlight,
        next_runs: NextRuns,
    }

    fn start(probes: Vec<ScheduledProbe>, wall_now: DateTime<Utc>, capacity: usize) -> Running {
        let in_flight = InFlight::default();
        let next_runs = NextRuns::default();
        let scheduler = Scheduler::new(probes, in_flight.clone(), next_runs.clone());
        let (tx, events) = mpsc::channel(capacity);
        let shutdown = CancellationToken::new();
        let wall_step = Arc::new(Mutex::new(TimeDelta::zero()));
        let step = Arc::clone(&wall_step);
        let started = Instant::now();
        let wall_clock = move || wall_now + (Instant::now() - started) + *lock(&step);
        let task = tokio::spawn(scheduler.run_with_clock(wall_clock, tx, shutdown.clone()));
        Running {
            wall_step,
            events,
            shutdown,
            task,
            in_flight,
            next_runs,
        }
    }

    /// Receives the next event and, like the runner, finishes the run it started.
    async fn next_event(r: &mut Running) -> SchedulerEvent {
        let event = r.events.recv().await.expect("scheduler running");
        if let SchedulerEvent::Fire { probe, .. } = &event {
            r.in_flight.finish(probe);
        }
        event
    }

    fn fire_of(event: &SchedulerEvent) -> (Instant, Duration) {
        match event {
            SchedulerEvent::Fire { scheduled, lag, .. } => (*scheduled, *lag),
            other => panic!("expected a fire, got {other:?}"),
        }
    }

    const T0: &str = "2025-03-01T12:00:00Z";

    #[tokio::test(start_paused = true)]
    async fn every_fires_on_the_grid_without_drift() {
        let t0 = Instant::now();
        let offset = spread_offset("grid", Duration::from_secs(10));
        let mut r = start(vec![probe("grid", every(10))], utc(T0), 16);
        // T0 is a multiple of 10 s from the epoch, so the grid is T0 + offset + 10 s·k.
        let first = if offset.is_zero() {
            Duration::from_secs(10)
        } else {
            offset
        };
        for k in 0..360u32 {
            let event = next_event(&mut r).await;
            let (scheduled, lag) = fire_of(&event);
            assert_eq!(
                scheduled,
                t0 + first + Duration::from_secs(10) * k,
                "fire {k}"
            );
            assert_eq!(Instant::now(), scheduled, "fire {k} fired on time");
            assert_eq!(lag, Duration::ZERO, "fire {k}");
        }
        let elapsed = Instant::now() - t0;
        assert!(elapsed >= Duration::from_secs(3590) && elapsed <= Duration::from_secs(3600));
        r.shutdown.cancel();
        r.task.await.expect("scheduler task");
    }

    #[test]
    fn next_fire_every_is_epoch_aligned_plus_offset() {
        let period = Duration::from_secs(60);
        let offset = TimeDelta::from_std(spread_offset("api", period)).expect("small");
        let minute = utc("2025-03-01T12:00:00Z");
        let mut at = minute;
        for k in 1..=5 {
            let next = next_fire(&every(60), None, "api", at).expect("a next time");
            let expected = if offset.is_zero() {
                minute + TimeDelta::minutes(k)
            } else {
                minute + TimeDelta::minutes(k - 1) + offset
            };
            assert_eq!(next, expected);
            at = next;
        }
        // Strictly after: from a grid point itself the next is one period on.
        let on_grid = minute + offset;
        assert_eq!(
            next_fire(&every(60), None, "api", on_grid),
            Some(on_grid + TimeDelta::minutes(1))
        );
        // Intervals ignore the time zone.
        assert_eq!(
            next_fire(&every(60), Some(chrono_tz::Europe::Berlin), "api", on_grid),
            Some(on_grid + TimeDelta::minutes(1))
        );
        assert_eq!(
            next_fire(&Schedule::Every(Duration::ZERO), None, "api", minute),
            None
        );
    }

    #[test]
    fn the_spread_covers_the_interval_evenly_and_deterministically() {
        let period = Duration::from_secs(60);
        let offsets: Vec<Duration> = (0..500)
            .map(|i| spread_offset(&format!("p{i}"), period))
            .collect();
        let again: Vec<Duration> = (0..500)
            .map(|i| spread_offset(&format!("p{i}"), period))
            .collect();
        assert_eq!(offsets, again);
        let mut per_second = [0usize; 60];
        for o in &offsets {
            assert!(*o < period);
            per_second[o.as_secs() as usize] += 1;
        }
        let busiest = per_second.iter().max().copied().unwrap_or(0);
        assert!(
            busiest <= 25,
            "{busiest} of 500 probes in one second: {per_second:?}"
        );
        let empty = per_second.iter().filter(|&&n| n == 0).count();
        assert!(
            empty <= 2,
            "{empty} seconds without a probe: {per_second:?}"
        );
        assert_eq!(
            spread_offset("p0", Duration::from_micros(500)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_spread_is_pinned() {
        // Changing the hash moves every deployed probe's fire times: do it on purpose only.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            spread_offset("checkout", Duration::from_secs(60)),
            spread_offset("checkout", Duration::from_secs(60))
        );
        assert_eq!(
            spread_offset("checkout", Duration::from_secs(3600)),
            Duration::from_millis(469_380)
        );
    }

    #[test]
    fn cron_fires_at_its_exact_times() {
        let s = cron("*/15 * * * * *");
        let mut at = utc("2025-03-01T12:00:00Z");
        let mut seconds = Vec::new();
        for _ in 0..5 {
            at = next_fire(&s, None, "any", at).expect("a next time");
            seconds.push(at.format("%M:%S").to_string());
        }
        assert_eq!(seconds, ["00:15", "00:30", "00:45", "01:00", "01:15"]);
        // Mid-second, the next time is still on the expression's seconds.
        assert_eq!(
            next_fire(&s, None, "any", utc("2025-03-01T12:00:14.999Z")),
            Some(utc("2025-03-01T12:00:15Z"))
        );
        // No spread: another name fires at the same times.
        assert_eq!(
            next_fire(&s, None, "other", utc("2025-03-01T12:00:00Z")),
            Some(utc("2025-03-01T12:00:15Z"))
        );
    }

    #[test]
    fn cron_follows_the_time_zone() {
        let s = cron("0 0 9 * * *");
        let berlin = Some(chrono_tz::Europe::Berlin);
        let winter = utc("2025-01-15T00:00:00Z");
        assert_eq!(
            next_fire(&s, None, "x", winter),
            Some(utc("2025-01-15T09:00:00Z"))
        );
        assert_eq!(
            next_fire(&s, berlin, "x", winter),
            Some(utc("2025-01-15T08:00:00Z"))
        );
        // Summer time: Berlin is UTC+2.
        let summer = utc("2025-07-15T00:00:00Z");
        assert_eq!(
            next_fire(&s, berlin, "x", summer),
            Some(utc("2025-07-15T07:00:00Z"))
        );
        // Across the spring-forward night the local time holds.
        assert_eq!(
            next_fire(&s, berlin, "x", utc("2025-03-29T08:00:00Z")),
            Some(utc("2025-03-30T07:00:00Z"))
        );
    }

    #[test]
    fn a_cron_schedule_without_future_times_has_no_next_fire() {
        let s = cron("0 0 0 1 1 * 2020");
        assert_eq!(next_fire(&s, None, "x", utc(T0)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_still_running_is_skipped_not_started_twice() {
        let mut r = start(vec![probe("slow", every(10))], utc(T0), 16);
        assert!(r.in_flight.try_start("slow"));
        assert!(!r.in_flight.try_start("slow"), "already running");

        let event = r.events.recv().await.expect("an event");
        let SchedulerEvent::Skipped {
            probe,
            reason,
            scheduled,
        } = event
        else {
            panic!("expected a skip, got {event:?}");
        };
        assert_eq!((probe.as_str(), reason), ("slow", SKIP_OVERLAP));
        assert!(
            r.in_flight.is_running("slow"),
            "the skip leaves the run alone"
        );

        r.in_flight.finish("slow");
        assert!(!r.in_flight.is_running("slow"));
        let event = r.events.recv().await.expect("an event");
        let (next, _) = fire_of(&event);
        assert_eq!(next, scheduled + Duration::from_secs(10));
        assert!(
            r.in_flight.is_running("slow"),
            "a fire marks the probe running"
        );
        r.shutdown.cancel();
        r.task.await.expect("scheduler task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_wake_up_fires_once_and_returns_to_the_grid() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let offset = spread_offset("late", period);
        let first = if offset.is_zero() { period } else { offset };
        let mut r = start(vec![probe("late", every(10))], utc(T0), 16);
        // Let the scheduler take its anchor and go to sleep, then jump over three slots at once.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(35)).await;

        let (scheduled, lag) = fire_of(&next_event(&mut r).await);
        assert_eq!(scheduled, t0 + first);
        assert_eq!(lag, Duration::from_secs(35) - first);

        // Next: the first grid point after the wake-up, on time; no catch-up fires in between.
        let mut expected = t0 + first;
        while expected <= t0 + Duration::from_secs(35) {
            expected += period;
        }
        for _ in 0..3 {
            let (scheduled, lag) = fire_of(&next_event(&mut r).await);
            assert_eq!(scheduled, expected);
            assert_eq!(lag, Duration::ZERO);
            expected += period;
        }
        r.shutdown.cancel();
        r.task.await.expect("scheduler task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_clock_step_keeps_cron_on_wall_clock_time() {
        let t0 = Instant::now();
        let mut r = start(vec![probe("hourly", cron("0 0 * * * *"))], utc(T0), 16);
        tokio::task::yield_now().await;
        assert_eq!(r.next_runs.get("hourly"), Some(utc("2025-03-01T13:00:00Z")));
        // The wall clock jumps 58 minutes (NTP step, resume from suspend): 13:00 is now two
        // minutes away on the monotonic clock, not an hour.
        *lock(&r.wall_step) = TimeDelta::minutes(58);
        let (scheduled, lag) = fire_of(&next_event(&mut r).await);
        assert_eq!(scheduled, t0 + Duration::from_secs(120));
        assert_eq!(lag, Duration::ZERO);
        assert_eq!(r.next_runs.get("hourly"), Some(utc("2025-03-01T14:00:00Z")));
        r.shutdown.cancel();
        r.task.await.expect("scheduler task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backward_clock_step_keeps_intervals_on_cadence() {
        let period = Duration::from_secs(10);
        let mut r = start(vec![probe("grid", every(10))], utc(T0), 16);
        let (mut previous, _) = fire_of(&next_event(&mut r).await);
        let first_wall = r.next_runs.get("grid").expect("scheduled") - TimeDelta::seconds(10);
        *lock(&r.wall_step) = -TimeDelta::hours(1);
        for k in 1..=5 {
            let (scheduled, lag) = fire_of(&next_event(&mut r).await);
            assert_eq!(scheduled, previous + period, "fire {k}");
            assert_eq!(lag, Duration::ZERO);
            previous = scheduled;
        }
        // Still on the probe's grid, now in the stepped-back wall-clock time.
        assert_eq!(
            r.next_runs.get("grid"),
            Some(first_wall - TimeDelta::hours(1) + TimeDelta::seconds(60))
        );
        r.shutdown.cancel();
        r.task.await.expect("scheduler task");
    }

    #[tokio::test(start_paused = true)]
    async fn next_runs_show_each_probes_next_fire() {
        let mut r = start(
            vec![
                probe("a", every(10)),
                probe("b", cron("0 */5 * * * *")),
                probe("gone", cron("0 0 0 1 1 * 2020")),
            ],
            utc(T0),
            16,
        );
        tokio::task::yield_now().await;
        let a0 = next_fire(&every(10), None, "a", utc(T0)).expect("a next time");
        assert_eq!(r.next_runs.get("a"), Some(a0));
        assert_eq!(r.next_runs.get("b"), Some(utc("2025-03-01T12:05:00Z")));
        assert_eq!(r.next_runs.get("gone"), None);
        assert_eq!(
            r.next_runs.snapshot(),
            vec![
                ("a".to_string(), a0),
                ("b".to_string(), utc("2025-03-01T12:05:00Z"))
            ]
        );

        fire_of(&next_event(&mut r).await);
        assert_eq!(r.next_runs.get("a"), Some(a0 + TimeDelta::seconds(10)));

        // A new scheduler (config reload) takes the handle over; the old one no longer writes.
        let replaced = Scheduler::new(
            vec![probe("c", every(10))],
            r.in_flight.clone(),
            r.next_runs.clone(),
        );
        assert_eq!(r.next_runs.get("a"), None);
        assert!(r.next_runs.get("c").is_some());
        fire_of(&next_event(&mut r).await);
        assert_eq!(r.next_runs.get("a"), None);
        drop(replaced);
        r.shutdown.cancel();
        r.task.await.expect("scheduler task");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_run_promptly() {
        let mut r = start(vec![probe("a", every(3600))], utc(T0), 16);
        tokio::task::yield_now().await;
        r.shutdown.cancel();
        tokio::time::timeout(Duration::from_millis(1), &mut r.task)
            .await
            .expect("run ended promptly")
            .expect("scheduler task");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_run_even_with_a_full_channel() {
        // Capacity 1 and nobody receiving: the scheduler blocks on its second send.
        let mut r = start(vec![probe("a", every(1)), probe("b", every(1))], utc(T0), 1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(r.events.len(), 1);
        r.shutdown.cancel();
        tokio::time::timeout(Duration::from_millis(1), &mut r.task)
            .await
            .expect("run ended promptly")
            .expect("scheduler task");
        // The fire that could not be sent does not leave its probe marked running.
        let sent = match r.events.recv().await.expect("the one event") {
            SchedulerEvent::Fire { probe, .. } | SchedulerEvent::Skipped { probe, .. } => probe,
        };
        let other = if sent == "a" { "b" } else { "a" };
        assert!(r.in_flight.is_running(&sent));
        assert!(!r.in_flight.is_running(other));
    }

    #[tokio::test(start_paused = true)]
    async fn run_ends_when_the_receiver_is_dropped() {
        let r = start(vec![probe("a", every(1))], utc(T0), 1);
        drop(r.events);
        tokio::time::timeout(Duration::from_secs(5), r.task)
            .await
            .expect("run ended")
            .expect("scheduler task");
        assert!(!r.in_flight.is_running("a"));
    }
}
