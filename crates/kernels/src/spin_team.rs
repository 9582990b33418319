//! Helper threads that wait for work by spinning, for the many short products of a decode step,
//! and that step aside when the CPU is shared.
//!
//! A decode step runs about two hundred matrix-vector products of 20–100 µs each, with a few
//! microseconds of other work between them. Handing half of each to a thread of a sleeping
//! pool costs a wake-up of tens of microseconds, which is as long as the half it saves
//! (measured: rayon's pool made these products slower). A [`SpinTeam`] helper instead polls
//! for the next job for a short while after each one ([`SPIN_FOR`]), so it is awake whenever
//! the step needs it, and sleeps once generation stops.
//!
//! Spinning is only cheap while every thread of the team has a core. When another process
//! takes one, a helper that polls competes with the thread it waits for, and a caller that
//! waits for a descheduled helper's half waits a whole scheduler slice (measured before this
//! design: 2 threads decoded at 4 tokens/s beside a busy process, against 210 on 1 thread).
//! So:
//! - the parts of a job are claimed one by one from a counter, the caller included: a part no
//!   helper has started when the caller is free is run by the caller, never waited for;
//! - every poll loop yields the core now and then, and a caller that waits for a part a helper
//!   has started parks after a short spin, which lets the kernel move that helper onto the
//!   freed core; while the only other runnable threads are of background priority
//!   (`nice 19`, `SCHED_IDLE`), which a yield or a parked caller's core hands a whole slice,
//!   the yields are skipped and the caller spins longer before it parks ([`neighbours`]);
//! - while every core but the caller's already has a runnable thread of another process of
//!   our weight ([`neighbours::crowded`]), jobs run on the caller alone from the first one;
//! - the caller measures what the helpers save ([`Balance`]): when they save too little (they
//!   are not scheduled in time), the team runs jobs on the caller alone for a while, with the
//!   helpers asleep, then tries them again. What the caller alone would take is judged from
//!   its own parts, corrected by how much of a core it had ([`CpuTimes`]): the helpers' share
//!   of the cores slows those parts too, and would otherwise make them look worth keeping.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, Thread, ThreadId};
use std::time::{Duration, Instant};

use crate::neighbours;

/// How long an idle helper polls before it sleeps: longer than any gap inside a step.
const SPIN_FOR: Duration = Duration::from_millis(3);

/// Polls between two `yield_now`s: a poller gives its core to anything queued on it within a
/// couple of microseconds, and costs one system call per that much spinning when nothing is.
const POLLS_PER_YIELD: u32 = 64;

/// How long the caller spins for a started part before it parks: longer than two helpers'
/// parts ever end apart when both have a core, far shorter than a scheduler slice.
const WAIT_SPIN_FOR: Duration = Duration::from_micros(40);

/// The same while only background threads compete ([`neighbours`]): a helper then keeps its
/// core, and parking would hand the caller's core to a background thread, which the caller
/// has to win back when it wakes.
const WAIT_SPIN_KEEPING_CORES: Duration = Duration::from_millis(1);

/// Jobs over which the helpers' saving is judged.
const WINDOW_JOBS: u32 = 256;

/// The least speed-up over the caller alone, within the team's jobs, for the helpers to stay
/// on. Above 1 because a helper that has a core only part of the time also takes it from the
/// caller's work between jobs, which the window does not see. Quiet, two threads read 1.54 to
/// 1.88 (AMD EPYC Zen 3, 10th to 90th percentile of 66 windows), median 1.76. Before the
/// caller's share of a core corrected the estimate, beside two busy processes windows read
/// 1.23-1.39 while the 2-thread prompt ran slower than 1 thread, and the bar was 1.4.
const MIN_SPEEDUP: f64 = 1.25;

/// A window is judged at once, however few its jobs, when they have already taken this much
/// longer than the caller alone would have: a helper that lost its core in the middle of a
/// part (every core shared with a busy process) costs a scheduler slice, and a prompt of 77
/// tokens is over in about 256 jobs, before a whole window could send the team solo
/// (`bench/contention.sh`, 2 busy processes: prefill on 2 threads at 0.40x of 1 thread).
const POOR_LOSS: Duration = Duration::from_millis(2);

/// How long the team first runs on the caller alone after a poor window; doubled after each
/// further poor window, up to [`SOLO_MAX`].
const SOLO_MIN: Duration = Duration::from_millis(16);
const SOLO_MAX: Duration = Duration::from_millis(512);

/// Bits of [`Shared::claims`] that count the claimed parts; the rest hold the job's epoch.
const CLAIM_BITS: u32 = 16;
const CLAIM_MASK: u64 = (1 << CLAIM_BITS) - 1;

/// The calling thread and `threads - 1` helper threads, sharing out one job at a time.
pub struct SpinTeam {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One job at a time: the job slot is not shared between callers.
    dispatch: Mutex<Dispatch>,
}

/// The dispatching caller's own state.
struct Dispatch {
    epoch: u64,
    /// Jobs dispatched, with the helpers or on the caller alone.
    jobs: u64,
    balance: Balance,
}

struct Shared {
    /// The current job's epoch (high bits) and how many of its parts are claimed (low
    /// [`CLAIM_BITS`]). A part is claimed by a compare-exchange that also checks the epoch, so
    /// a helper never claims a part of a job other than the one whose closure it read.
    claims: AtomicU64,
    /// The current job: a `*const &(dyn Fn(usize) + Sync)` on the caller's stack. Valid while
    /// its epoch has unclaimed or unfinished parts (`run` waits for them before it returns).
    job: AtomicPtr<()>,
    /// The team's threads, the caller included.
    threads: usize,
    /// Parts of the current job (stored before its epoch is published).
    parts: AtomicUsize,
    /// Parts of the current job finished by helpers.
    helper_done: AtomicUsize,
    /// A helper's part panicked.
    panicked: AtomicBool,
    /// The caller is parked until `helper_done` grows; `caller` is whom to unpark.
    caller_parked: AtomicBool,
    caller: Mutex<Option<Thread>>,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    /// Helpers go to sleep at once rather than poll: the caller runs jobs alone for a while.
    solo: AtomicBool,
    shutdown: AtomicBool,
    /// Jobs run with the helpers and on the caller alone, since the team started.
    team_jobs: AtomicU64,
    solo_jobs: AtomicU64,
    /// Test hook: helpers do not claim parts while it is set, as if descheduled.
    #[cfg(test)]
    hold_helpers: AtomicBool,
    /// Test hook: stands for the neighbours' [`neighbours::crowded`], which would make the
    /// tests depend on what else the machine runs.
    #[cfg(test)]
    crowd: AtomicBool,
}

/// Counters of how a team ran its jobs, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TeamStats {
    /// Jobs shared with the helpers.
    pub team_jobs: u64,
    /// Jobs run on the caller alone: the helpers were judged too slow to help, or every core
    /// but the caller's was taken by other processes ([`neighbours::crowded`]).
    pub solo_jobs: u64,
}

impl SpinTeam {
    /// A team of `threads` in all: the caller and `threads - 1` helpers.
    pub fn new(threads: usize) -> std::io::Result<SpinTeam> {
        let threads = threads.clamp(1, CLAIM_MASK as usize / 2);
        let shared = Arc::new(Shared {
            claims: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            threads,
            parts: AtomicUsize::new(threads),
            helper_done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            caller_parked: AtomicBool::new(false),
            caller: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            solo: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            team_jobs: AtomicU64::new(0),
            solo_jobs: AtomicU64::new(0),
            #[cfg(test)]
            hold_helpers: AtomicBool::new(false),
            #[cfg(test)]
            crowd: AtomicBool::new(false),
        });
        let mut team = SpinTeam {
            shared: shared.clone(),
            helpers: Vec::new(),
            dispatch: Mutex::new(Dispatch {
                epoch: 0,
                jobs: 0,
                balance: Balance::new(threads, neighbours::usable_cores()),
            }),
        };
        if threads > 1 {
            // The neighbours' first scans happen before the first job (an engine starts the
            // watcher earlier still, while its model loads).
            neighbours::at_work();
        }
        for i in 1..threads {
            let shared = shared.clone();
            // On an error, dropping `team` stops the helpers already started.
            team.helpers
                .push(std::thread::Builder::new().name(format!("edgellm-spin-{i}")).spawn(move || helper(&shared))?);
        }
        Ok(team)
    }

    /// Threads that take part in a job, the caller included.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// How the team has run its jobs so far.
    pub fn stats(&self) -> TeamStats {
        TeamStats {
            team_jobs: self.shared.team_jobs.load(Ordering::Relaxed),
            solo_jobs: self.shared.solo_jobs.load(Ordering::Relaxed),
        }
    }

    /// Runs `part(i)` once for every `i` in `0..self.threads()` and returns when all are done.
    /// Any thread of the team may run any part; the caller runs whatever no helper has started
    /// when it gets to it. A panic in a part is raised here, after the other parts have ended.
    pub fn run(&self, part: &(dyn Fn(usize) + Sync)) {
        self.run_parts(self.threads(), part)
    }

    /// [`SpinTeam::run`] for `parts` parts (at least 1): more parts than threads keep what a
    /// descheduled helper holds small, since the caller claims every part no helper has
    /// started; the job then waits at most for the one part a helper lost its core in.
    pub fn run_parts(&self, parts: usize, part: &(dyn Fn(usize) + Sync)) {
        self.run_job(parts, part, &|parts| (0..parts).for_each(part))
    }

    /// Runs `range` over `0..units` in `parts` runs of consecutive units (sizes that differ by
    /// at most one), shared out as [`SpinTeam::run_parts`] shares parts; a job the caller runs
    /// alone (a team of one, crowded, or set aside) is one call over all the units, as on a
    /// team of one thread: no part's set-up is paid more than once.
    pub fn run_ranges(&self, units: usize, parts: usize, range: &(dyn Fn(Range<usize>) + Sync)) {
        if units == 0 {
            return;
        }
        // Clamped as `run_job` clamps, so that the ranges of the parts it runs cover every unit.
        let parts = parts.clamp(1, units.min(CLAIM_MASK as usize / 2));
        self.run_job(parts, &|i| range(i * units / parts..(i + 1) * units / parts), &|_| range(0..units))
    }

    /// One job of `parts` parts, or `alone(parts)` where the caller runs it by itself.
    fn run_job(&self, parts: usize, part: &(dyn Fn(usize) + Sync), alone: &dyn Fn(usize)) {
        let shared = &*self.shared;
        let parts = parts.clamp(1, CLAIM_MASK as usize / 2);
        if self.helpers.is_empty() {
            return alone(parts);
        }
        let mut dispatch = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        // The watcher keeps scanning only while teams work, solo jobs included: a crowded team
        // must hear within a scan, not ten seconds, that a core has freed.
        dispatch.jobs += 1;
        if dispatch.jobs.is_multiple_of(64) {
            neighbours::at_work();
        }
        if crowded(shared) || dispatch.balance.solo() {
            shared.solo.store(true, Ordering::Relaxed);
            shared.solo_jobs.fetch_add(1, Ordering::Relaxed);
            return alone(parts);
        }
        shared.solo.store(false, Ordering::Relaxed);
        shared.team_jobs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        dispatch.epoch += 1;
        let epoch = dispatch.epoch;
        shared.job.store(&part as *const &(dyn Fn(usize) + Sync) as *mut (), Ordering::Relaxed);
        shared.helper_done.store(0, Ordering::Relaxed);
        shared.parts.store(parts, Ordering::Relaxed);
        // Publishes the job and the reset count with it.
        shared.claims.store(epoch << CLAIM_BITS, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        // The caller's parts; the helpers' must finish even if one of these panics, since
        // they borrow `part`.
        let (mut mine, mut working) = (0usize, Duration::ZERO);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while let Some(i) = shared.claim(epoch) {
                mine += 1;
                let start = Instant::now();
                part(i);
                working += start.elapsed();
            }
        }));
        // No part can be claimed any more (a panic may have left some unclaimed). The count is
        // set past any job's part count, not to this job's: a helper still in `claim(epoch)`
        // may read the next job's `parts` (stored before that job's epoch is published), and a
        // larger one must not let it claim a part of this finished job.
        let claimed = ((shared.claims.swap((epoch << CLAIM_BITS) | CLAIM_MASK, Ordering::SeqCst) & CLAIM_MASK)
            as usize)
            .min(parts);
        shared.wait_for_helpers(claimed - mine);
        shared.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if ran.is_ok() {
            dispatch.balance.record(started.elapsed(), working, mine, parts);
        }
        drop(dispatch);
        let helper_panicked = shared.panicked.swap(false, Ordering::SeqCst);
        if let Err(panic) = ran {
            std::panic::resume_unwind(panic);
        }
        if helper_panicked {
            panic!("a spin-team helper panicked");
        }
    }
}

impl Shared {
    /// Claims the next part of job `epoch`, if it is still the current job and has one left.
    fn claim(&self, epoch: u64) -> Option<usize> {
        let mut word = self.claims.load(Ordering::Acquire);
        loop {
            let claimed = (word & CLAIM_MASK) as usize;
            // `parts` was stored before the epoch this load acquired; once the job is over its
            // count is CLAIM_MASK, above every job's `parts`.
            if word >> CLAIM_BITS != epoch || claimed >= self.parts.load(Ordering::Relaxed) {
                return None;
            }
            match self.claims.compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(claimed),
                Err(now) => word = now,
            }
        }
    }

    /// Returns once helpers have finished `count` parts of the current job: spins (yielding)
    /// for [`WAIT_SPIN_FOR`] (without yielding, [`WAIT_SPIN_KEEPING_CORES`], while only
    /// background threads compete), then parks until the last of them unparks it.
    fn wait_for_helpers(&self, count: usize) {
        let done = || self.helper_done.load(Ordering::Acquire) >= count;
        let spinning = Instant::now();
        let mut polls = 0u32;
        while !done() {
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(POLLS_PER_YIELD) {
                std::hint::spin_loop();
                continue;
            }
            let keep = neighbours::keep_cores();
            if spinning.elapsed() < if keep { WAIT_SPIN_KEEPING_CORES } else { WAIT_SPIN_FOR } {
                if !keep {
                    std::thread::yield_now();
                }
                continue;
            }
            // A helper started a part and lost its core: free this one so that the kernel can
            // move the helper here, and sleep until it is done.
            *self.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
            self.caller_parked.store(true, Ordering::SeqCst);
            while self.helper_done.load(Ordering::SeqCst) < count {
                std::thread::park_timeout(Duration::from_millis(1));
            }
            self.caller_parked.store(false, Ordering::SeqCst);
        }
    }

    /// Whether a poll loop should stop polling the current job.
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

impl Drop for SpinTeam {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

fn helper(shared: &Shared) {
    // The epoch the team was created with: a job may be posted before this thread starts.
    let mut seen = 0;
    loop {
        let idle_since = Instant::now();
        let mut polls = 0u32;
        let epoch = loop {
            if shared.stopping() {
                return;
            }
            let epoch = shared.claims.load(Ordering::Acquire) >> CLAIM_BITS;
            if epoch != seen && !held(shared) {
                break epoch;
            }
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(POLLS_PER_YIELD) {
                std::hint::spin_loop();
                continue;
            }
            courteous_yield();
            if shared.solo.load(Ordering::Relaxed) || idle_since.elapsed() > SPIN_FOR {
                let mut guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                while shared.claims.load(Ordering::SeqCst) >> CLAIM_BITS == seen && !shared.stopping() {
                    guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        };
        seen = epoch;
        let job = shared.job.load(Ordering::Acquire) as *const &(dyn Fn(usize) + Sync);
        while let Some(i) = shared.claim(epoch) {
            // SAFETY: the claim succeeded for `epoch`, so `job` was read while `epoch` was the
            // current job (epochs only grow, and the caller replaces `job` only after every
            // part of its job was claimed and finished), and the caller keeps the closure
            // alive until this part is counted in `helper_done`.
            let part = unsafe { &*job };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| part(i))).is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
            shared.helper_done.fetch_add(1, Ordering::SeqCst);
            if shared.caller_parked.load(Ordering::SeqCst)
                && let Some(caller) = &*shared.caller.lock().unwrap_or_else(|e| e.into_inner())
            {
                caller.unpark();
            }
        }
    }
}

/// A poller's yield, skipped while only background-priority threads want the cores: they
/// would get a whole slice from it and barely less without it ([`neighbours`]).
fn courteous_yield() {
    if !neighbours::keep_cores() {
        std::thread::yield_now();
    }
}

/// Test hook: whether helpers are held back from claiming parts.
#[cfg(test)]
fn held(shared: &Shared) -> bool {
    shared.hold_helpers.load(Ordering::SeqCst)
}

#[cfg(not(test))]
fn held(_: &Shared) -> bool {
    false
}

/// Whether every core but the caller's has a runnable thread of another process
/// ([`neighbours::crowded`]).
#[cfg(test)]
fn crowded(shared: &Shared) -> bool {
    shared.crowd.load(Ordering::SeqCst)
}

#[cfg(not(test))]
fn crowded(_: &Shared) -> bool {
    neighbours::crowded()
}

/// What the helpers save, judged over windows of [`WINDOW_JOBS`] jobs (or fewer, once they
/// have lost [`POOR_LOSS`]): the time the jobs took against the time the caller alone would
/// have taken (its own parts' time, scaled to all parts, and by [`alone_share_correction`]).
struct Balance {
    jobs: u32,
    took: Duration,
    alone: Duration,
    /// The team runs on the caller alone until then.
    solo_until: Option<Instant>,
    /// How long the next poor window sends it solo.
    backoff: Duration,
    /// The caller's scheduler times when the window began, and the thread they are of.
    window_start: Option<(ThreadId, CpuTimes)>,
    /// The team's threads, and the cores this process may use.
    threads: usize,
    cores: usize,
    /// Reads the calling thread's [`CpuTimes`] (a fake in tests).
    times: fn() -> Option<CpuTimes>,
}

impl Balance {
    fn new(threads: usize, cores: usize) -> Balance {
        Balance {
            jobs: 0,
            took: Duration::ZERO,
            alone: Duration::ZERO,
            solo_until: None,
            backoff: Duration::ZERO,
            window_start: None,
            threads,
            cores,
            times: CpuTimes::of_this_thread,
        }
    }

    /// Whether this job is to run on the caller alone.
    fn solo(&mut self) -> bool {
        match self.solo_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.solo_until = None;
                false
            }
            None => false,
        }
    }

    /// A team job took `took`; the caller spent `working` on its `mine` parts of `parts`.
    fn record(&mut self, took: Duration, working: Duration, mine: usize, parts: usize) {
        if mine == 0 {
            return;
        }
        if self.jobs == 0 && self.window_start.is_none() {
            self.window_start = (self.times)().map(|t| (std::thread::current().id(), t));
        }
        self.jobs += 1;
        self.took += took;
        self.alone += working * parts as u32 / mine as u32;
        if self.jobs < WINDOW_JOBS && self.took < self.alone + POOR_LOSS {
            return;
        }
        let now = (self.times)().map(|t| (std::thread::current().id(), t));
        let correction = match (self.window_start, now) {
            (Some((before, start)), Some((thread, end))) if before == thread => {
                alone_share_correction(end.since(start), self.cores, self.threads)
            }
            _ => 1.0,
        };
        self.judge(correction);
        // A solo spell is no part of the next window: it starts at the next team job.
        self.window_start = if self.solo_until.is_some() { None } else { now };
    }

    /// Ends the window: the helpers stay on if the jobs took less than the caller alone would
    /// have (its estimate times `correction`) by [`MIN_SPEEDUP`].
    fn judge(&mut self, correction: f64) {
        let speedup = self.alone.as_secs_f64() * correction / self.took.as_secs_f64().max(1e-9);
        if speedup < MIN_SPEEDUP {
            self.backoff = (self.backoff * 2).clamp(SOLO_MIN, SOLO_MAX);
            self.solo_until = Some(Instant::now() + self.backoff);
        } else {
            self.backoff = Duration::ZERO;
        }
        (self.jobs, self.took, self.alone) = (0, Duration::ZERO, Duration::ZERO);
    }
}

/// A thread's time on a CPU and time spent runnable but waiting for one, from the scheduler's
/// statistics: how much of a core the thread had, with its sleeps left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    pub running_ns: u64,
    pub waiting_ns: u64,
}

impl CpuTimes {
    /// The calling thread's, from `/proc/thread-self/schedstat` (a few microseconds: read once
    /// a window), or `None` where the kernel keeps no such statistics.
    pub fn of_this_thread() -> Option<CpuTimes> {
        use std::io::Read;
        if !cfg!(target_os = "linux") {
            return None;
        }
        let mut text = [0u8; 96];
        let read = std::fs::File::open("/proc/thread-self/schedstat").ok()?.read(&mut text).ok()?;
        let mut fields = std::str::from_utf8(&text[..read]).ok()?.split_ascii_whitespace();
        Some(CpuTimes { running_ns: fields.next()?.parse().ok()?, waiting_ns: fields.next()?.parse().ok()? })
    }

    pub fn since(self, start: CpuTimes) -> CpuTimes {
        CpuTimes {
            running_ns: self.running_ns.saturating_sub(start.running_ns),
            waiting_ns: self.waiting_ns.saturating_sub(start.waiting_ns),
        }
    }

    /// The part of its runnable time the thread spent on a core (1 when it never waited), or
    /// `None` when it was never runnable.
    pub fn share(self) -> Option<f64> {
        let total = self.running_ns + self.waiting_ns;
        (total > 0).then(|| self.running_ns as f64 / total as f64)
    }
}

/// By how much to scale the caller's time for its parts, measured while its team shared the
/// cores, to estimate the caller's time alone: the share of a core it would have had without
/// its helpers is larger. With `cores` cores shared fairly, a thread that ran a fraction `s` of
/// the time it was runnable sat among `cores / s` runnable threads; without the `threads - 1`
/// helpers it would sit among that many fewer. 1 when the caller had its core (quiet, or
/// unknown); beside two busy processes on two cores 0.5 / (2/3) = 0.75; beside one, 2/3.
fn alone_share_correction(window: CpuTimes, cores: usize, threads: usize) -> f64 {
    let Some(share) = window.share() else {
        return 1.0;
    };
    let share = share.max(1e-3);
    let runnable = cores.max(1) as f64 / share;
    let runnable_alone = (runnable - threads.saturating_sub(1) as f64).max(1.0);
    let share_alone = (cores.max(1) as f64 / runnable_alone).min(1.0);
    (share / share_alone).min(1.0)
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<SpinTeam>>> = const { RefCell::new(None) };
}

/// Runs `f` with `team` as the team of this thread's products (see [`current`]).
pub fn with_team<R>(team: Option<&Arc<SpinTeam>>, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.replace(team.cloned());
    let result = f();
    CURRENT.set(previous);
    result
}

/// The team installed by [`with_team`] on this thread, if any.
pub fn current() -> Option<Arc<SpinTeam>> {
    CURRENT.with_borrow(|team| team.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::thread::ThreadId;

    /// Runs one job on `team`; returns how many times each part ran and on which threads.
    fn job(team: &SpinTeam, work: impl Fn(usize) + Sync) -> (Vec<usize>, HashSet<ThreadId>) {
        let hits: Vec<AtomicUsize> = (0..team.threads()).map(|_| AtomicUsize::new(0)).collect();
        let threads = Mutex::new(HashSet::new());
        team.run(&|i| {
            hits[i].fetch_add(1, Ordering::SeqCst);
            threads.lock().unwrap().insert(std::thread::current().id());
            work(i);
        });
        (hits.iter().map(|h| h.load(Ordering::SeqCst)).collect(), threads.into_inner().unwrap())
    }

    /// Runs jobs until a helper takes part in one, for at most ten seconds (a loaded machine
    /// may leave a helper without a core for a while, and the team may be running solo).
    fn until_a_helper_helps(team: &SpinTeam) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let (hits, threads) = job(team, |_| std::thread::sleep(Duration::from_micros(200)));
            assert!(hits.iter().all(|&h| h == 1));
            if threads.len() > 1 {
                return true;
            }
        }
        false
    }

    /// Jobs of 1 to 13 parts in a row, on teams of 1, 2 and 3 threads: every part of each job
    /// runs exactly once and none past its count; helpers take parts.
    #[test]
    fn every_part_runs_once_when_each_job_has_its_own_number_of_parts() {
        for threads in 1..=3 {
            let team = SpinTeam::new(threads).unwrap();
            let mut helped = false;
            for round in 0..3000 {
                // 1 to 13 parts, changing from one job to the next.
                let parts = 1 + round * 7 % 13;
                let hits: Vec<AtomicUsize> = (0..parts + 1).map(|_| AtomicUsize::new(0)).collect();
                let caller = std::thread::current().id();
                let by_helper = AtomicUsize::new(0);
                team.run_parts(parts, &|i| {
                    hits[i].fetch_add(1, Ordering::SeqCst);
                    if std::thread::current().id() != caller {
                        by_helper.fetch_add(1, Ordering::SeqCst);
                    }
                    if round % 11 == 0 {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                });
                let hits: Vec<usize> = hits.iter().map(|h| h.load(Ordering::SeqCst)).collect();
                assert!(hits[..parts].iter().all(|&h| h == 1), "{threads} threads, {parts} parts: {hits:?}");
                assert_eq!(hits[parts], 0, "no part past the job's {parts}");
                helped |= by_helper.load(Ordering::SeqCst) > 0;
            }
            if threads == 1 {
                assert!(!helped, "a team of one has no helper");
            } else {
                assert!(helped || until_a_helper_helps(&team), "{threads} threads: no helper ever ran a part");
            }
        }
    }

    /// With 1, 2 and 3 threads, every part runs exactly once per job, over many jobs in a
    /// row, jobs of different lengths and after the helpers have gone to sleep; the helpers
    /// do take parts.
    #[test]
    fn every_part_runs_once_per_job_with_1_2_and_3_threads() {
        for threads in 1..=3 {
            let team = SpinTeam::new(threads).unwrap();
            assert_eq!(team.threads(), threads);
            for round in 0..2000 {
                let sum = AtomicUsize::new(0);
                let (hits, _) = job(&team, |i| {
                    if round % 7 == 0 {
                        std::thread::sleep(Duration::from_micros(50 * i as u64));
                    }
                    sum.fetch_add(i + 1, Ordering::SeqCst);
                });
                assert!(hits.iter().all(|&h| h == 1), "{threads} threads, round {round}: {hits:?}");
                assert_eq!(sum.load(Ordering::SeqCst), threads * (threads + 1) / 2);
                if round == 1000 {
                    std::thread::sleep(SPIN_FOR * 3);
                }
            }
            if threads > 1 {
                assert!(until_a_helper_helps(&team), "{threads} threads: no helper ever ran a part");
            }
        }
    }

    /// An idle helper stops polling and sleeps.
    #[test]
    fn an_idle_helper_sleeps() {
        let team = SpinTeam::new(3).unwrap();
        job(&team, |_| ());
        let started = Instant::now();
        while team.shared.sleepers.load(Ordering::SeqCst) < 2 {
            assert!(started.elapsed() < Duration::from_secs(10), "the helpers still poll");
            std::thread::sleep(SPIN_FOR);
        }
        let (hits, _) = job(&team, |_| ());
        assert_eq!(hits, [1, 1, 1]);
    }

    #[test]
    fn a_helper_panic_is_raised_to_the_caller_and_the_team_goes_on() {
        let team = SpinTeam::new(2).unwrap();
        for _ in 0..50 {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                team.run(&|i| assert_eq!(i, 0, "a part that fails"));
            }));
            assert!(result.is_err());
            let (hits, _) = job(&team, |_| ());
            assert_eq!(hits, [1, 1]);
        }
    }

    /// When the caller's own part panics, a part a helper started still ends before the panic
    /// reaches the caller (it borrows the caller's closure), and the team goes on.
    #[test]
    fn a_panic_on_the_caller_waits_for_the_helpers_part() {
        let team = SpinTeam::new(2).unwrap();
        let caller = std::thread::current().id();
        let mut helper_parts = 0;
        for _ in 0..200 {
            let (started, finished) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                team.run(&|_| {
                    if std::thread::current().id() == caller {
                        std::thread::sleep(Duration::from_micros(100));
                        panic!("the caller's part fails");
                    }
                    started.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                    finished.fetch_add(1, Ordering::SeqCst);
                });
            }));
            assert!(result.is_err());
            assert_eq!(finished.load(Ordering::SeqCst), started.load(Ordering::SeqCst));
            helper_parts += finished.load(Ordering::SeqCst);
            let (hits, _) = job(&team, |_| ());
            assert_eq!(hits, [1, 1]);
        }
        // Not asserted above 0: a loaded machine may never give the helper a part.
        eprintln!("helper parts finished before the caller's panic was raised: {helper_parts}");
    }

    /// A helper that does not turn up (held back, as when it has no core) does not hold the
    /// caller: the caller runs every part itself.
    #[test]
    fn the_caller_runs_the_parts_of_a_helper_that_does_not_turn_up() {
        let team = SpinTeam::new(3).unwrap();
        team.shared.hold_helpers.store(true, Ordering::SeqCst);
        let caller = std::thread::current().id();
        for _ in 0..300 {
            let (hits, threads) = job(&team, |_| ());
            assert_eq!(hits, [1, 1, 1]);
            assert_eq!(threads, HashSet::from([caller]));
        }
        team.shared.hold_helpers.store(false, Ordering::SeqCst);
        assert!(until_a_helper_helps(&team), "the helpers never came back");
    }

    /// While every core but the caller's is taken by other processes, jobs run on the caller
    /// alone, counted as solo, and the helpers come back once a core frees.
    #[test]
    fn a_crowded_team_runs_on_the_caller_alone_until_a_core_frees() {
        let team = SpinTeam::new(2).unwrap();
        let caller = std::thread::current().id();
        team.shared.crowd.store(true, Ordering::SeqCst);
        let before = team.stats();
        for _ in 0..300 {
            let (hits, threads) = job(&team, |_| std::thread::sleep(Duration::from_micros(20)));
            assert_eq!(hits, [1, 1]);
            assert_eq!(threads, HashSet::from([caller]));
        }
        let after = team.stats();
        assert_eq!((after.solo_jobs - before.solo_jobs, after.team_jobs - before.team_jobs), (300, 0));
        team.shared.crowd.store(false, Ordering::SeqCst);
        assert!(until_a_helper_helps(&team), "the helpers never came back");
    }

    /// Ranges share out every unit exactly once in runs whose sizes differ by at most one; a
    /// crowded team, and a team of one, make one call over all the units instead.
    #[test]
    fn ranges_cover_every_unit_once_and_the_caller_alone_takes_them_in_one_call() {
        let ranges_of = |team: &SpinTeam, units: usize, parts: usize| {
            let calls = Mutex::new(Vec::new());
            team.run_ranges(units, parts, &|range| calls.lock().unwrap().push(range));
            let mut calls: Vec<(usize, usize)> = calls.into_inner().unwrap().iter().map(|r| (r.start, r.end)).collect();
            calls.sort();
            calls
        };
        let team = SpinTeam::new(2).unwrap();
        for (units, parts) in [(10, 4), (3, 8), (1, 2), (17, 17), (40, 1), (70_000, 50_000)] {
            let calls = ranges_of(&team, units, parts);
            assert_eq!(calls.len(), parts.min(units).min(CLAIM_MASK as usize / 2), "{units} units in {parts} parts");
            assert!(calls.windows(2).all(|w| w[0].1 == w[1].0), "{calls:?}");
            assert_eq!((calls[0].0, calls[calls.len() - 1].1), (0, units), "{calls:?}");
            let (shortest, longest) = (calls.iter().map(|r| r.1 - r.0).min(), calls.iter().map(|r| r.1 - r.0).max());
            assert!(shortest.unwrap() + 1 >= longest.unwrap() && shortest > Some(0), "{calls:?}");
        }
        assert!(ranges_of(&team, 0, 4).is_empty(), "no units, no call");
        team.shared.crowd.store(true, Ordering::SeqCst);
        assert_eq!(ranges_of(&team, 10, 4), [(0, 10)]);
        team.shared.crowd.store(false, Ordering::SeqCst);
        assert_eq!(ranges_of(&SpinTeam::new(1).unwrap(), 10, 4), [(0, 10)]);
    }

    /// A helper that started a part and then is slow (descheduled, or a long part) is waited
    /// for, with every other part run meanwhile, and the job's result is complete.
    #[test]
    fn a_slow_helper_part_is_waited_for() {
        let team = SpinTeam::new(3).unwrap();
        let caller = std::thread::current().id();
        for _ in 0..20 {
            let finished = AtomicUsize::new(0);
            let (hits, _) = job(&team, |_| {
                if std::thread::current().id() != caller {
                    std::thread::sleep(Duration::from_millis(5));
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(hits, [1, 1, 1]);
            assert_eq!(finished.load(Ordering::SeqCst), 3, "run returned before every part ended");
        }
    }

    /// A team whose helpers save nothing goes solo for a while (its helpers asleep) and
    /// comes back to sharing when they help again.
    #[test]
    fn helpers_that_save_nothing_are_set_aside_then_tried_again() {
        let team = SpinTeam::new(2).unwrap();
        team.shared.hold_helpers.store(true, Ordering::SeqCst);
        for _ in 0..WINDOW_JOBS * 2 {
            job(&team, |_| ());
        }
        assert!(team.stats().solo_jobs > 0, "{:?}", team.stats());
        team.shared.hold_helpers.store(false, Ordering::SeqCst);
        assert!(until_a_helper_helps(&team), "the helpers were never tried again");
    }

    #[test]
    fn balance_goes_solo_on_a_poor_window_and_backs_off() {
        let mut balance = Balance { times: || None, ..Balance::new(2, 2) };
        let us = Duration::from_micros;
        for _ in 0..WINDOW_JOBS {
            assert!(!balance.solo());
            balance.record(us(20), us(19), 1, 2);
        }
        assert!(!balance.solo(), "a speed-up of 1.9 keeps the helpers");
        for _ in 0..WINDOW_JOBS {
            balance.record(us(40), us(38), 2, 2);
        }
        assert!(balance.solo(), "a speed-up of 0.95 sets them aside");
        assert_eq!(balance.backoff, SOLO_MIN);
        balance.solo_until = Some(Instant::now());
        assert!(!balance.solo());
        for _ in 0..WINDOW_JOBS {
            balance.record(us(40), us(38), 2, 2);
        }
        assert_eq!(balance.backoff, SOLO_MIN * 2, "a second poor window in a row sets them aside for longer");
    }

    /// A few jobs that lose a scheduler slice between them send the team solo at once; jobs
    /// that lose a little each wait for the whole window.
    #[test]
    fn balance_goes_solo_at_once_when_a_window_has_lost_enough() {
        let mut balance = Balance { times: || None, ..Balance::new(2, 2) };
        let us = Duration::from_micros;
        for _ in 0..WINDOW_JOBS - 1 {
            balance.record(us(24), us(19), 1, 2);
            assert!(!balance.solo(), "a speed-up of 1.6 keeps the helpers");
        }
        let mut balance = Balance { times: || None, ..Balance::new(2, 2) };
        for _ in 0..WINDOW_JOBS - 1 {
            balance.record(us(45), us(40), 2, 2);
            assert!(!balance.solo(), "losing 5 us a job (1.3 ms in all): judged on the whole window");
        }
        balance.record(us(45), us(40), 2, 2);
        assert!(balance.solo(), "the whole window: a speed-up of 0.9");
        let mut balance = Balance { times: || None, ..Balance::new(2, 2) };
        balance.record(us(100), us(90), 1, 2);
        assert!(!balance.solo());
        balance.record(us(3100), us(90), 1, 2);
        assert!(balance.solo(), "a job that waited 3 ms for a descheduled helper sets them aside");
        assert_eq!(balance.backoff, SOLO_MIN);
    }
    /// The caller's estimate alone is scaled by the share of a core it had beside its helpers
    /// against the share it would have had without them, with the cores shared fairly.
    #[test]
    fn the_estimate_alone_is_corrected_by_the_callers_share_of_a_core() {
        let window =
            |share: f64| CpuTimes { running_ns: (share * 1e6) as u64, waiting_ns: ((1.0 - share) * 1e6) as u64 };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
        assert_eq!(alone_share_correction(window(1.0), 2, 2), 1.0, "quiet: no correction");
        assert_eq!(alone_share_correction(CpuTimes { running_ns: 0, waiting_ns: 0 }, 2, 2), 1.0);
        // Two cores, caller and helper beside one busy process: 3 runnable, 2/3 of a core
        // each; alone the caller would have had its own core.
        assert!(close(alone_share_correction(window(2.0 / 3.0), 2, 2), 2.0 / 3.0));
        // Beside two: half a core with the helper, two thirds without.
        assert!(close(alone_share_correction(window(0.5), 2, 2), 0.75));
        // Four cores, half a core each: 8 runnable, 7 without the helper.
        assert!(close(alone_share_correction(window(0.5), 4, 2), 0.5 / (4.0 / 7.0)));
        // A team of one is its own estimate.
        assert_eq!(alone_share_correction(window(0.5), 2, 1), 1.0);
    }

    thread_local! {
        /// What the fake scheduler statistics of the test below read next.
        static FAKE_TIMES: std::cell::Cell<CpuTimes> = const { std::cell::Cell::new(CpuTimes { running_ns: 0, waiting_ns: 0 }) };
    }

    /// A window that reads a speed-up of 1.33 from the caller's own parts, while the caller had
    /// half of a core (two busy processes on two cores), sets the helpers aside: alone it would
    /// have had two thirds of one, so they saved nothing. The same window with the caller on
    /// its core keeps them.
    #[test]
    fn a_window_that_only_looks_faster_because_the_callers_core_was_shared_goes_solo() {
        let fake = || Some(FAKE_TIMES.get());
        let us = Duration::from_micros;
        for (share, solo) in [(0.5, true), (1.0, false)] {
            let mut balance = Balance { times: fake, ..Balance::new(2, 2) };
            FAKE_TIMES.set(CpuTimes { running_ns: 1_000, waiting_ns: 1_000 });
            for job in 0..WINDOW_JOBS {
                if job + 1 == WINDOW_JOBS {
                    let (running, waiting) = (3_000_000.0 * share, 3_000_000.0 * (1.0 - share));
                    FAKE_TIMES.set(CpuTimes { running_ns: 1_000 + running as u64, waiting_ns: 1_000 + waiting as u64 });
                }
                balance.record(us(30), us(20), 1, 2);
            }
            assert_eq!(balance.solo(), solo, "share of a core {share}");
        }
    }

    /// The scheduler's statistics are read, and tell a thread's running time from its waiting:
    /// beside three busy threads on its CPU, a spinning thread runs about a quarter of the time.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_among_busy_threads_reads_a_small_share_of_a_core() {
        // This thread and its three competitors on one CPU: a fair share is a quarter whatever
        // else the machine runs (spread over every CPU, a CI run read 0.62 where 2 of 7 threads
        // would have 0.29: the balancer does not share cores out evenly in 300 ms).
        // SAFETY: sched_getcpu takes nothing; a zeroed cpu_set_t is a valid empty set, and
        // sched_setaffinity(0, ..) only reads it and changes this thread's (inherited by the
        // threads it spawns below).
        let pinned = unsafe {
            let cpu = libc::sched_getcpu();
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            cpu >= 0 && {
                libc::CPU_SET(cpu as usize, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
            }
        };
        assert!(pinned, "pinning this thread to its CPU: {}", std::io::Error::last_os_error());
        let stop = Arc::new(AtomicBool::new(false));
        let busy: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let start = CpuTimes::of_this_thread().expect("/proc/thread-self/schedstat");
        let began = Instant::now();
        while began.elapsed() < Duration::from_millis(300) {
            std::hint::spin_loop();
        }
        let window = CpuTimes::of_this_thread().unwrap().since(start);
        let wall = began.elapsed().as_nanos() as u64;
        stop.store(true, Ordering::Relaxed);
        busy.into_iter().for_each(|t| t.join().unwrap());
        let share = window.running_ns as f64 / (window.running_ns + window.waiting_ns) as f64;
        eprintln!("{window:?} over {wall} ns: share {share:.2}");
        assert!(window.running_ns > 0 && window.running_ns <= wall + 1_000_000, "{window:?}, wall {wall} ns");
        assert!(share < 0.5, "a thread beside three busy threads on its CPU had {share:.2} of it");
    }
}
