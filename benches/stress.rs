//! The bulk-load stress run at full size: `cargo bench --bench stress`.
//!
//! A real daemon (default flags but `--pca-min-images 1000`) takes
//! `STRESS_IMAGES` (default 20,000) distinct real images over 4 concurrent
//! InsertStreams, with queries and deletes mixed in, under a watchdog that
//! fails the run and prints every thread's stack if no call completes for
//! 30 s (`tests/common/stress.rs`). `STRESS_RUNS` (default 1) repeats it on
//! fresh databases. The same run, smaller, is a test (`tests/stress.rs`).
//! Prints one row per run: images, time, insert rate, graphs swapped in.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{env_usize, stress, watchdog::Watchdog, Daemon};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let plan = stress::Plan {
        images: env_usize("STRESS_IMAGES", 20_000),
        streams: 4,
        delete_every: 25,
        stall: Duration::from_secs(30),
    };
    println!(
        "\n## Bulk-load stress ({} streams, 1 delete per {} inserts, queries throughout)\n",
        plan.streams, plan.delete_every
    );
    println!("| run | images | deleted | queries | seconds | inserts/s | graphs swapped in |");
    println!("|---|---|---|---|---|---|---|");
    for run in 1..=env_usize("STRESS_RUNS", 1) {
        let dir = tempfile::tempdir().expect("tempdir");
        let daemon = Daemon::start(dir.path(), &["--pca-min-images", "1000"]).await;
        let watchdog = Watchdog::start("bulk-load stress", plan.stall);
        let outcome = stress::run(&daemon, plan, &watchdog).await;
        let mut client = daemon.client().await;
        stress::check_after(&mut client, &outcome).await;
        daemon.stop();
        let secs = outcome.elapsed.as_secs_f64();
        println!(
            "| {run} | {} | {} | {} | {secs:.0} | {:.1} | {} |",
            outcome.inserted,
            outcome.deleted,
            outcome.queries,
            outcome.inserted as f64 / secs,
            outcome.swaps_seen
        );
    }
}
