//! A watchdog for stress tests and benches: fails the run, with every
//! thread's stack, when progress stops.
//!
//! A hang cannot fail a test by itself: the test's thread is the one stuck.
//! So the watchdog runs on a thread of its own and watches one counter per
//! worker (each kind of operation: inserts, queries, deletes, copies...),
//! which the worker ticks after every completed operation. A counter that
//! has not moved for `stall`, and whose worker has not finished, means that
//! something is stuck, even while other workers still make progress (a
//! deadlock between inserts leaves searches running). The watchdog then
//! prints the stacks of this process and of the processes it was told about
//! (a daemon under test), kills those processes, and exits the test process
//! with a failure code.
//! Stacks come from gdb when it is installed, else from the kernel
//! (`/proc/PID/task/*/stack` and `wchan`), which still show where each
//! thread sleeps.

#![allow(dead_code)]

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Exit code of a run the watchdog stopped.
pub const STALLED_EXIT: i32 = 86;

/// One worker's progress.
pub struct Progress {
    name: String,
    count: AtomicU64,
    finished: AtomicBool,
}

impl Progress {
    /// One more operation completed.
    pub fn tick(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// The worker is done: no more ticks are expected.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

/// A running watchdog; stops watching when dropped.
pub struct Watchdog {
    counters: Arc<Mutex<Vec<Arc<Progress>>>>,
    watched: Arc<Mutex<Vec<u32>>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching; `what` names the run in the failure report.
    pub fn start(what: &str, stall: Duration) -> Watchdog {
        let counters: Arc<Mutex<Vec<Arc<Progress>>>> = Arc::default();
        let watched = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counters, watched, done) = (counters.clone(), watched.clone(), done.clone());
            let what = what.to_string();
            std::thread::spawn(move || {
                // Per counter: the count last seen and when it last moved.
                let mut seen: Vec<(u64, Instant)> = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    let counters = counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    seen.resize(counters.len(), (u64::MAX, Instant::now()));
                    for (c, (last, since)) in counters.iter().zip(seen.iter_mut()) {
                        let now = c.count();
                        if now != *last {
                            (*last, *since) = (now, Instant::now());
                        } else if !c.finished.load(Ordering::SeqCst) && since.elapsed() >= stall {
                            let pids = watched.lock().unwrap_or_else(|e| e.into_inner()).clone();
                            let all: Vec<(String, u64)> = counters
                                .iter()
                                .map(|c| (c.name.clone(), c.count()))
                                .collect();
                            report_stall(&what, &c.name, stall, &all, &pids);
                            std::process::exit(STALLED_EXIT);
                        }
                    }
                }
            })
        };
        Watchdog {
            counters,
            watched,
            done,
            thread: Some(thread),
        }
    }

    /// A new counter for one worker, watched from now on.
    pub fn counter(&self, name: &str) -> Arc<Progress> {
        let progress = Arc::new(Progress {
            name: name.to_string(),
            count: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        });
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(progress.clone());
        progress
    }

    /// Also dump `pid`'s stacks on a stall (a daemon under test).
    pub fn watch_process(&self, pid: u32) {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn report_stall(
    what: &str,
    stuck: &str,
    stall: Duration,
    counts: &[(String, u64)],
    others: &[u32],
) {
    eprintln!(
        "\n=== WATCHDOG: {what}: '{stuck}' made no progress for {} s; counts: {counts:?}; thread stacks follow ===",
        stall.as_secs()
    );
    for pid in others.iter().copied().chain([std::process::id()]) {
        eprintln!("\n--- process {pid} ---");
        dump_stacks(pid);
    }
    // The exit below skips destructors, which would have killed them.
    for pid in others {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    eprintln!("=== WATCHDOG: failing the run ===");
}

/// Prints every thread's stack of `pid` to stderr.
pub fn dump_stacks(pid: u32) {
    // gdb writes to a file, not a pipe: when `pid` is this process, gdb
    // stops every thread of it, the reader of a pipe included, and would
    // block for ever on a full pipe.
    let out =
        std::env::temp_dir().join(format!("lookalike-stacks-{pid}-{}.txt", std::process::id()));
    let gdb = std::fs::File::create(&out).and_then(|file| {
        Command::new("gdb")
            .args(["-p", &pid.to_string(), "-batch", "-nx"])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
    });
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    match gdb {
        Ok(status) if status.success() && text.contains("Thread") => {
            eprintln!("{text}");
            return;
        }
        Ok(status) => eprintln!(
            "(gdb failed, {status}: {}; kernel stacks instead)",
            text.trim()
        ),
        Err(e) => eprintln!("(gdb not available: {e}; kernel stacks instead)"),
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        eprintln!("(cannot read /proc/{pid}/task)");
        return;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
        eprintln!(
            "thread {} ({}) wchan={}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim(),
            read("stack")
        );
    }
}
