//! Helper threads that wait for work by spinning, for the many short products of a decode step.
//!
//! A decode step runs about two hundred matrix-vector products of 50–100 µs each, with a few
//! microseconds of other work between them. Handing half of each to a thread of a sleeping
//! pool costs a wake-up of tens of microseconds, which is as long as the half it saves
//! (measured: rayon's pool made these products slower). A [`SpinTeam`] helper instead polls
//! for the next job for a short while after each one ([`SPIN_FOR`]), so it is awake whenever
//! the step needs it, and sleeps once generation stops.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper polls before it sleeps: longer than any gap inside a step.
const SPIN_FOR: Duration = Duration::from_millis(3);

/// The calling thread and `helpers` spinning threads, sharing out one job at a time.
pub struct SpinTeam {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One job at a time: the job slot is not shared between callers.
    dispatch: Mutex<()>,
}

/// A job: `call(data, part)` for every part of `parts`; `data` points at the caller's closure.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
}

struct Shared {
    /// Bumped for every job; a helper runs a job when it sees a new value.
    epoch: AtomicUsize,
    /// The current job; written only while no helper can be reading it (see `run`).
    job: Mutex<Option<Job>>,
    /// Helpers still working on the current job.
    pending: AtomicUsize,
    /// A helper's part panicked.
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

// SAFETY: `Job.data` points at a `Sync` closure that outlives the job (`run` waits for every
// part to finish before it returns), so it may be used from the helpers.
unsafe impl Send for Job {}

impl SpinTeam {
    /// A team of `threads` in all: the caller and `threads - 1` helpers.
    pub fn new(threads: usize) -> std::io::Result<SpinTeam> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let helpers = (1..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new().name(format!("edgellm-spin-{i}")).spawn(move || helper(&shared, i))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(SpinTeam { shared, helpers, dispatch: Mutex::new(()) })
    }

    /// Threads that take part in a job, the caller included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `part(i)` for every `i` in `0..self.threads()`, part 0 on the calling thread, and
    /// returns when all are done. A panic in a helper's part is raised here.
    pub fn run(&self, part: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() {
            return part(0);
        }
        let _one_job = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        unsafe fn call(data: *const (), i: usize) {
            // SAFETY: `data` is the `&&(dyn Fn(usize) + Sync)` below, alive until `run` returns.
            let part = unsafe { &*(data as *const &(dyn Fn(usize) + Sync)) };
            part(i)
        }
        let data = &part as *const &(dyn Fn(usize) + Sync) as *const ();
        let shared = &*self.shared;
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Job { data, call });
        shared.pending.store(self.helpers.len(), Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        // The caller's own part; the helpers' must finish even if it panics, since they
        // borrow `part`.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| part(0)));
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a spin-team helper panicked");
        }
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

fn helper(shared: &Shared, index: usize) {
    // The epoch the team was created with: a job may be posted before this thread starts.
    let mut seen = 0;
    loop {
        let idle_since = Instant::now();
        let mut polls = 0u32;
        loop {
            if shared.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            std::hint::spin_loop();
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(256) && idle_since.elapsed() > SPIN_FOR {
                let mut guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                while shared.epoch.load(Ordering::SeqCst) == seen && !shared.shutdown.load(Ordering::SeqCst) {
                    guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // SAFETY: the dispatcher keeps the closure alive until `pending` reaches zero.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (job.call)(job.data, index) }));
            if ran.is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
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

    /// Every part runs once per job, on distinct threads, across many jobs in a row and after
    /// the helper has gone to sleep.
    #[test]
    fn every_part_runs_once_per_job() {
        let team = SpinTeam::new(2).unwrap();
        assert_eq!(team.threads(), 2);
        for round in 0..500 {
            let hits: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
            let threads = Mutex::new(std::collections::HashSet::new());
            team.run(&|i| {
                hits[i].fetch_add(1, Ordering::SeqCst);
                threads.lock().unwrap().insert(std::thread::current().id());
            });
            assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1), "round {round}");
            assert_eq!(threads.lock().unwrap().len(), 2);
            if round == 250 {
                std::thread::sleep(SPIN_FOR * 3);
                assert_eq!(team.shared.sleepers.load(Ordering::SeqCst), 1, "an idle helper sleeps");
            }
        }
    }

    #[test]
    fn a_helper_panic_is_raised_to_the_caller_and_the_team_goes_on() {
        let team = SpinTeam::new(2).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(&|i| assert_eq!(i, 0, "a part that fails"));
        }));
        assert!(result.is_err());
        let ran = AtomicUsize::new(0);
        team.run(&|_| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}
