//! The store alone under a bulk write: `cargo bench --bench store_stress`.
//!
//! Writes `STORE_WRITES` (default 1,000,000) records of lookalike's size
//! into a fresh sled database, from 1 thread and from 8, `STORE_RUNS`
//! (default 3) times each, under a watchdog that fails the run with every
//! thread's stack if no write completes for 30 s. sled 0.34.7 as released
//! deadlocked under such loads; lookalike builds a patched copy
//! (vendor/sled/PATCHES.md). Prints one row per run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{env_usize, stress, watchdog::Watchdog};

fn main() {
    let writes = env_usize("STORE_WRITES", 1_000_000);
    let runs = env_usize("STORE_RUNS", 3);
    println!(
        "\n## sled under a bulk write ({writes} records of 5.7 KB, flush every 64 per thread)\n"
    );
    println!("| threads | run | seconds | writes/s |");
    println!("|---|---|---|---|");
    for threads in [1, 8] {
        for run in 1..=runs {
            let dir = tempfile::tempdir().expect("tempdir");
            let watchdog = Watchdog::start("store stress", Duration::from_secs(30));
            let elapsed =
                stress::store_writes(&dir.path().join("sled"), writes, threads, &watchdog);
            let secs = elapsed.as_secs_f64();
            println!(
                "| {threads} | {run} | {secs:.0} | {:.0} |",
                writes as f64 / secs
            );
        }
    }
}
