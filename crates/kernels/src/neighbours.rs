//! Who else wants the CPU: a background thread reads the scheduler's view of the other
//! processes' runnable threads, so that a [`crate::spin_team`] poller knows whether yielding
//! its core helps anyone who matters, and a team whether its helpers can have cores at all.
//!
//! A poller yields now and then so that a busy process of normal priority, or the team's own
//! caller queued behind it, gets the core within microseconds. But a `sched_yield` hands the
//! core to whatever is queued, and a `nice 19` background loop then runs until the next tick
//! (measured: 2 threads decoded 111 tokens/s yielding against 182 not yielding beside two
//! niced loops, while llama.cpp's threads, which never yield, kept the cores). Which kind of
//! neighbour is there cannot be told from inside the team without costly probing (tried: 20 ms
//! spells of not yielding cost 0.85x beside a normal-priority process), but the kernel says it
//! in `/proc/<pid>/task/<tid>/stat`: each thread's state, nice value and policy. A scan of a
//! device's few hundred threads takes one or two milliseconds, on a thread of its own twice a
//! second while teams are at work (at most about 1% of a core).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A thread at least this much nicer than ours weighs at most a tenth of ours with the
/// scheduler (each step of nice is a factor of 1.25): its share barely changes whether we
/// yield or not, and a yield gives it a whole slice.
pub const BACKGROUND_NICE_GAP: i32 = 10;

/// How often the watcher scans while teams are working (or less often, when a scan takes
/// more than a hundredth of that).
const SCAN_EVERY: Duration = Duration::from_millis(500);

/// How often it scans while no team is working.
const IDLE_SCAN_EVERY: Duration = Duration::from_secs(10);

/// Scans in a row that must find only background neighbours before pollers stop yielding:
/// a normal-priority neighbour that is runnable only part of the time can be missed by one.
const CLEAR_SCANS: u32 = 2;

/// How soon a scan that starts such a streak is confirmed. A team's first jobs come within
/// a hundred milliseconds of its start (a warm-up, then the prompt), and at [`SCAN_EVERY`]
/// the pollers yielded to a niced loop through the whole first prompt: 2 threads prefilled
/// at 1.04x of 1 thread beside one `nice 19` loop, against 1.60x quiet (`bench/llama.sh`).
const CONFIRM_AFTER: Duration = Duration::from_millis(40);

/// What one scan found: the other processes' runnable threads, by how they weigh against ours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Runnable threads of our own weight or more (nice below ours + the gap, real-time, or a
    /// policy this does not know).
    pub peers: usize,
    /// Runnable threads of background weight (nice ≥ ours + [`BACKGROUND_NICE_GAP`], or
    /// `SCHED_IDLE`).
    pub background: usize,
    /// `/proc` hides other users' processes (`hidepid`, systemd's `ProtectProc=invisible`):
    /// what competes for the cores is unknown.
    pub hidden: bool,
}

/// A thread's scheduling state, from its `stat` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskState {
    pub runnable: bool,
    pub nice: i32,
    /// Threads of the task's process (in a process's own `stat`).
    pub threads: u32,
    /// `SCHED_OTHER` 0, `SCHED_FIFO` 1, `SCHED_RR` 2, `SCHED_BATCH` 3, `SCHED_IDLE` 5.
    pub policy: u32,
}

/// Parses a `/proc/.../stat` line: the name (field 2) is in parentheses and may hold spaces
/// and parentheses itself, so fields are counted after the last `)`.
pub fn parse_stat(line: &str) -> Option<TaskState> {
    let rest = &line[line.rfind(')')? + 1..];
    // Field 3 is the first after the name; nice is field 19, policy field 41.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(39).collect();
    let state = fields.first()?;
    let nice = fields.get(19 - 3)?.parse().ok()?;
    let threads = fields.get(20 - 3)?.parse().ok()?;
    let policy = fields.get(41 - 3).and_then(|p| p.parse().ok()).unwrap_or(0);
    Some(TaskState { runnable: *state == "R", nice, threads, policy })
}

/// How a runnable neighbour weighs against a thread of nice `own_nice`.
fn is_background(task: TaskState, own_nice: i32) -> bool {
    const SCHED_IDLE: u32 = 5;
    task.policy == SCHED_IDLE || (matches!(task.policy, 0 | 3) && task.nice >= own_nice + BACKGROUND_NICE_GAP)
}

/// Scans `/proc` for the runnable threads of every process but `own_pid`.
pub fn scan(own_pid: u32, own_nice: i32) -> Scan {
    let mut found = Scan::default();
    // init's directory is there for every process unless `/proc` hides other users'.
    if own_pid != 1 && !std::path::Path::new("/proc/1").exists() {
        found.hidden = true;
        return found;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return found;
    };
    let mut text = String::with_capacity(512);
    for process in processes.flatten() {
        let name = process.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        // A process may end between the listing and the read: it is then simply not counted.
        text.clear();
        let Some(main) = read_into(&process.path().join("stat"), &mut text).ok().and_then(|_| parse_stat(&text)) else {
            continue;
        };
        if main.threads <= 1 {
            // Most processes, and every kernel thread: one read.
            found.count(main, own_nice);
            continue;
        }
        // A process's own line shows its main thread's state; each thread has its own.
        let Ok(tasks) = std::fs::read_dir(process.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            text.clear();
            if let Some(t) = read_into(&task.path().join("stat"), &mut text).ok().and_then(|_| parse_stat(&text)) {
                found.count(t, own_nice);
            }
        }
    }
    found
}

impl Scan {
    fn count(&mut self, task: TaskState, own_nice: i32) {
        match task.runnable {
            true if is_background(task, own_nice) => self.background += 1,
            true => self.peers += 1,
            false => {}
        }
    }
}

fn read_into(path: &std::path::Path, text: &mut String) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open(path)?.read_to_string(text).map(|_| ())
}

/// The calling thread's nice value: a thread inherits its creator's, so the watcher's is the
/// team's. (`/proc/thread-self`, not `/proc/self`: user-mode QEMU fakes the latter with nice 0.)
fn own_nice() -> i32 {
    std::fs::read_to_string("/proc/thread-self/stat").ok().as_deref().and_then(parse_stat).map_or(0, |t| t.nice)
}

/// Turns scans into the pollers' rule: stop yielding once [`CLEAR_SCANS`] scans in a row found
/// background neighbours and no peer; yield again at the first scan that finds a peer, finds
/// nobody (yielding to nobody costs a system call and nothing else), or cannot see. And into
/// the teams' rule: run on the caller alone while as many scans in a row found a runnable peer
/// on every core but the caller's ([`crowded`]).
#[derive(Debug)]
pub struct Verdict {
    clear_in_a_row: u32,
    crowded_in_a_row: u32,
    /// The cores this process may run on.
    cores: usize,
}

impl Verdict {
    pub fn new(cores: usize) -> Verdict {
        Verdict { clear_in_a_row: 0, crowded_in_a_row: 0, cores: cores.max(1) }
    }

    /// Takes one scan; returns whether pollers may keep their cores.
    pub fn update(&mut self, scan: Scan) -> bool {
        if !scan.hidden && scan.peers == 0 && scan.background > 0 {
            self.clear_in_a_row = self.clear_in_a_row.saturating_add(1);
        } else {
            self.clear_in_a_row = 0;
        }
        if !scan.hidden && scan.peers + 1 >= self.cores {
            self.crowded_in_a_row = self.crowded_in_a_row.saturating_add(1);
        } else {
            self.crowded_in_a_row = 0;
        }
        self.clear_in_a_row >= CLEAR_SCANS
    }

    /// Whether every core but one already has a runnable thread of our weight, scan after
    /// scan: a team's helpers then get a core only by taking it from someone, their caller
    /// included.
    pub fn crowded(&self) -> bool {
        self.crowded_in_a_row >= CLEAR_SCANS
    }

    /// Whether a streak towards keeping the cores is under way but not yet long enough: the
    /// next scan should come soon ([`CONFIRM_AFTER`]).
    pub fn confirming(&self) -> bool {
        (1..CLEAR_SCANS).contains(&self.clear_in_a_row) || (1..CLEAR_SCANS).contains(&self.crowded_in_a_row)
    }
}

/// Set while only background threads compete for the cores: pollers then do not yield.
static KEEP_CORES: AtomicBool = AtomicBool::new(false);
/// Set while every core but one has a runnable thread of another process of our weight.
static CROWDED: AtomicBool = AtomicBool::new(false);
/// Milliseconds since [`EPOCH`] when a team last ran a job: the watcher mostly idles otherwise.
static LAST_WORK_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();
static WATCHER: OnceLock<()> = OnceLock::new();

/// Whether pollers may skip their yields: only background threads are runnable elsewhere.
pub fn keep_cores() -> bool {
    KEEP_CORES.load(Ordering::Relaxed)
}

/// Whether every core but the caller's already has a runnable thread of another process of our
/// weight: a team then runs its jobs on the caller alone. Beside two busy processes on two
/// cores, helpers that had a core only half the time made a 2-thread prompt 0.60-1.32x as fast
/// as 1 thread (median 0.73x, `bench/llama.sh`), though each window of jobs looked faster with
/// them: the parts a descheduled helper holds stall the caller, and the helper's share comes out
/// of the caller's. Beside one, 2 threads never did better than 1 in the medians of five runs
/// (0.90-0.99x prefill, 1.00x decode) and took a third of a core from the busy process.
pub fn crowded() -> bool {
    CROWDED.load(Ordering::Relaxed)
}

/// Notes that a team is at work, starting the watcher thread the first time. Cheap: call it
/// per job.
pub fn at_work() {
    let epoch = *EPOCH.get_or_init(Instant::now);
    LAST_WORK_MS.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    WATCHER.get_or_init(|| {
        if cfg!(target_os = "linux") {
            // Without the watcher pollers keep yielding, as they would beside a peer.
            let _ = std::thread::Builder::new().name("edgellm-neighbours".into()).spawn(watch);
        }
    });
}

/// The cores this process may run on (its affinity and CPU quota), at least 1.
pub(crate) fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn watch() {
    let epoch = *EPOCH.get_or_init(Instant::now);
    let (pid, nice) = (std::process::id(), own_nice());
    let mut verdict = Verdict::new(usable_cores());
    let mut last_scan: Option<Instant> = None;
    loop {
        let working = {
            let now = epoch.elapsed().as_millis() as u64;
            now.saturating_sub(LAST_WORK_MS.load(Ordering::Relaxed)) < 2 * SCAN_EVERY.as_millis() as u64
        };
        // While no team works the verdict is kept (a request after a pause starts with what
        // held before it) and refreshed only now and then.
        let pause = if working || last_scan.is_none_or(|at| at.elapsed() > IDLE_SCAN_EVERY) {
            let started = Instant::now();
            KEEP_CORES.store(verdict.update(scan(pid, nice)), Ordering::Relaxed);
            CROWDED.store(verdict.crowded(), Ordering::Relaxed);
            last_scan = Some(started);
            // At most about 1% of a core, however many threads the device runs; a confirming
            // scan, once per change of neighbours, may take up to a tenth.
            match verdict.confirming() {
                true => CONFIRM_AFTER.max(started.elapsed() * 10),
                false => SCAN_EVERY.max(started.elapsed() * 100),
            }
        } else {
            SCAN_EVERY
        };
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    #[test]
    fn a_stat_line_is_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (my (odd) name) R 1 4242 4242 0 -1 4194304 100 0 0 0 50 3 0 0 39 19 1 0 \
                    123 4000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 5 0 0 0";
        assert_eq!(parse_stat(line), Some(TaskState { runnable: true, nice: 19, threads: 1, policy: 5 }));
        let sleeping = line.replace(") R ", ") S ").replace(" 39 19 ", " 20 0 ").replace(" 0 5 0 0 0", " 0 0 0 0 0");
        assert_eq!(parse_stat(&sleeping), Some(TaskState { runnable: false, nice: 0, threads: 1, policy: 0 }));
        assert_eq!(parse_stat("12 (cut short) R 1 2"), None);
        let threads = line.replace(" 39 19 1 0 ", " 39 19 7 0 ");
        assert_eq!(parse_stat(&threads).map(|t| t.threads), Some(7));
        assert_eq!(parse_stat("no name here"), None);
    }

    #[test]
    fn this_threads_own_stat_line_parses() {
        let text = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let me = parse_stat(&text).unwrap();
        assert!(me.runnable, "the thread reading its own stat is running: {text}");
        assert_eq!(me.nice, own_nice());
    }

    #[test]
    fn weights_follow_nice_and_policy() {
        let task = |nice, policy| TaskState { runnable: true, nice, threads: 1, policy };
        assert!(is_background(task(19, 0), 0));
        assert!(is_background(task(10, 3), 0));
        assert!(!is_background(task(9, 0), 0));
        assert!(!is_background(task(19, 0), 10), "as nice as a process at nice 10");
        assert!(is_background(task(0, 5), 0), "SCHED_IDLE weighs almost nothing");
        assert!(!is_background(task(19, 1), 0), "real-time preempts us whatever its nice");
    }

    #[test]
    fn pollers_keep_their_cores_only_after_clear_scans_in_a_row() {
        // Four cores: one peer leaves cores for helpers (no crowd streak to confirm).
        let mut verdict = Verdict::new(4);
        let background = Scan { peers: 0, background: 2, hidden: false };
        let peer = Scan { peers: 1, ..background };
        assert!(!verdict.confirming());
        assert!(!verdict.update(background));
        assert!(verdict.confirming(), "one clear scan asks for a quick second one");
        assert!(verdict.update(background));
        assert!(!verdict.confirming(), "the streak is long enough");
        assert!(!verdict.update(peer), "a peer brings the yields back at once");
        assert!(!verdict.confirming(), "a peer ends the streak");
        assert!(!verdict.update(background));
        assert!(verdict.update(background));
        assert!(!verdict.update(Scan::default()), "nobody to yield to: yielding is free");
        assert!(!verdict.update(background));
        let hidden = Scan { hidden: true, ..background };
        assert!(!verdict.update(hidden), "other users' processes unseen: yield as beside a peer");
        assert!(!verdict.update(background), "the streak starts again after a blind scan");
    }

    #[test]
    fn a_team_is_crowded_out_only_when_no_core_is_left_for_a_helper_scan_after_scan() {
        let peers = |peers| Scan { peers, background: 3, hidden: false };
        let mut verdict = Verdict::new(4);
        verdict.update(peers(2));
        assert!(!verdict.crowded() && !verdict.confirming(), "a core is left for a helper");
        verdict.update(peers(3));
        assert!(!verdict.crowded(), "one scan is not enough");
        assert!(verdict.confirming(), "the second comes soon");
        verdict.update(peers(5));
        assert!(verdict.crowded());
        verdict.update(peers(2));
        assert!(!verdict.crowded(), "a core frees: the helpers are back at once");
        verdict.update(peers(3));
        verdict.update(Scan { hidden: true, ..peers(3) });
        assert!(!verdict.crowded(), "unseen neighbours are not counted as a crowd");
        let mut two_cores = Verdict::new(2);
        two_cores.update(peers(0));
        two_cores.update(peers(0));
        assert!(!two_cores.crowded(), "quiet");
        two_cores.update(peers(1));
        two_cores.update(peers(1));
        assert!(two_cores.crowded(), "one busy process takes the helper's core");
    }

    /// A shell busy loop at this process's nice plus `increment` (what `nice -n` takes; the
    /// kernel caps the result at 19), which the scheduler runs as a plain process.
    fn busy(increment: i32) -> Child {
        Command::new("nice")
            .args(["-n", &increment.to_string(), "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("nice and sh")
    }

    /// The scan tells a niced busy process from one of our weight, on real processes.
    #[test]
    fn a_scan_tells_niced_busy_processes_from_ones_of_our_weight() {
        let own = own_nice();
        if scan(std::process::id(), own).hidden {
            eprintln!("skipped: /proc hides other users' processes here");
            return;
        }
        if own > 19 - BACKGROUND_NICE_GAP {
            eprintln!("skipped: this test runs at nice {own}, too nice for a nicer neighbour");
            return;
        }
        let found = |want: &dyn Fn(Scan) -> bool| {
            let started = Instant::now();
            loop {
                let s = scan(std::process::id(), own);
                if want(s) || started.elapsed() > Duration::from_secs(10) {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let timed = Instant::now();
        let mut before = Scan::default();
        for _ in 0..10 {
            before = scan(std::process::id(), own);
        }
        let threads = std::fs::read_dir("/proc").unwrap().count();
        eprintln!("a scan of /proc ({threads} entries) took {:?}", timed.elapsed() / 10);
        let mut niced = busy(19);
        let with_niced = found(&|s| s.background > before.background);
        let mut peer = busy(0);
        let with_peer = found(&|s| s.peers > with_niced.peers);
        for child in [&mut niced, &mut peer] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        assert!(with_niced.background > before.background, "{before:?} -> {with_niced:?}");
        assert!(with_peer.peers > with_niced.peers, "{with_niced:?} -> {with_peer:?}");
    }
}
