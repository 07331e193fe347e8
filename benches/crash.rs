//! kill -9 during a bulk InsertStream at full size: `cargo bench --bench
//! crash`.
//!
//! A real daemon (default flags but `--pca-min-images 1000`) takes
//! `CRASH_IMAGES` (default 10,000) distinct real-photo variants over one
//! InsertStream and is killed with SIGKILL at `CRASH_KILLS` (default 20)
//! random moments, restarted each time on the same folder and checked:
//! every acknowledged id stored, Stats and the index agreeing with the
//! store, a sample found first by its own bytes (`tests/common/crash.rs`;
//! the same run, smaller, is a test in `tests/stress.rs`). Any lost
//! acknowledged insert fails the run; otherwise it prints one row:
//! images, kills, acknowledged, stored without acknowledgement, restart
//! times (start to SERVING after kill -9), the whole run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{crash, env_usize, watchdog::Watchdog};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let plan = crash::Plan {
        images: env_usize("CRASH_IMAGES", 10_000),
        kills: env_usize("CRASH_KILLS", 20),
        stall: Duration::from_secs(60),
        flags: &["--pca-min-images", "1000"],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let watchdog = Watchdog::start("kill -9 during InsertStream", plan.stall);
    let outcome = crash::run(dir.path(), plan, &watchdog).await;
    let mut restarts = outcome.restarts.clone();
    restarts.sort_by(f64::total_cmp);
    let median = restarts
        .get(restarts.len() / 2)
        .copied()
        .unwrap_or(f64::NAN);
    let max = restarts.last().copied().unwrap_or(f64::NAN);
    println!("\n## kill -9 during an InsertStream\n");
    println!("| images | kills | acknowledged | stored, not acknowledged | restart to SERVING s, median / max | run s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {median:.2} / {max:.2} | {:.0} |",
        plan.images,
        outcome.restarts.len(),
        outcome.acked,
        outcome.stored_unacked,
        outcome.elapsed.as_secs_f64()
    );
}
