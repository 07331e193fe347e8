//! Cold start: time from process start to health SERVING with 100k and 1M
//! stored images, `cargo bench --bench cold_start`.
//!
//! The database is written directly through the library (sled store, model
//! name, a fitted PCA), with features DRAWN from a low-dimensional latent
//! model (`support/drawn_store.rs` says why and how), not embedded from
//! photos: embedding a million photos would take hours here, and start-up
//! time depends on the number of records and the graph, not on what the
//! vectors show. Each size is timed twice: the first start rebuilds the
//! HNSW graph from the store (as after a crash); the second loads the graph
//! the clean shutdown before it saved.
//!
//! After the second start it also times Query by id (k = 10) on the loaded
//! graph, one call at a time: the first 500 calls (caches cold, as after a
//! restart), then 2,000 more (steady state).
//!
//! Environment: BENCH_SIZES (default "100000,1000000"); BENCH_DATA_DIR, when
//! set, keeps each size's database in `BENCH_DATA_DIR/<size>` and a later
//! run reuses it: the bulk write and the rebuild start are skipped ("-" in
//! the table) and the run times the saved-graph start and the queries, for
//! profiling Query by id at a million without rebuilding one each time;
//! BENCH_QUERIES (default 2000) sets the steady-state calls.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "support/drawn_store.rs"]
mod drawn_store;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{bench_sizes, env_usize, query_by_id, rss_mib, Daemon};
use drawn_store::{build_store, record_id};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = bench_sizes("100000,1000000");
    println!("\n## Cold start: process start to health SERVING\n");
    let queries = env_usize("BENCH_QUERIES", 2000);
    println!("| stored images | bulk write s | start, graph rebuilt from store s | clean stop s | start, saved graph loaded s | RSS after start MiB | Query by id p50 / p99 ms, first 500 | next {queries} |");
    println!("|---|---|---|---|---|---|---|---|");
    let kept = std::env::var_os("BENCH_DATA_DIR").map(PathBuf::from);
    for n in sizes {
        let temp;
        let (dir, reused) = match &kept {
            Some(root) => {
                let dir = root.join(n.to_string());
                (dir.clone(), dir.join("index").is_dir())
            }
            None => {
                temp = tempfile::tempdir().expect("tempdir");
                (temp.path().to_path_buf(), false)
            }
        };
        let args = ["--pca-min-images", "1000"];
        let (mut write, mut rebuilt, mut stop) =
            ("-".to_string(), "-".to_string(), "-".to_string());
        if !reused {
            // A kept database without a saved graph is an interrupted one.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("data dir");
            let t = Instant::now();
            build_store(&dir, n);
            write = format!("{:.1}", t.elapsed().as_secs_f64());
            eprintln!("{n}: bulk write {write} s");
            let t = Instant::now();
            let daemon = Daemon::start_waiting(&dir, &args, Duration::from_secs(3600)).await;
            rebuilt = format!("{:.1}", t.elapsed().as_secs_f64());
            eprintln!("{n}: first start (graph rebuilt from the store) {rebuilt} s");
            let t = Instant::now();
            daemon.stop();
            stop = format!("{:.1}", t.elapsed().as_secs_f64());
            eprintln!("{n}: clean stop {stop} s");
        }
        let t = Instant::now();
        let daemon = Daemon::start_waiting(&dir, &args, Duration::from_secs(3600)).await;
        let loaded = t.elapsed().as_secs_f64();
        eprintln!(
            "{n}: start with the saved graph {loaded:.1} s (pid {})",
            daemon.pid()
        );
        let rss = rss_mib(daemon.pid());
        let (p50, p99) = query_latency(&daemon, n, 500, 5).await;
        let (warm50, warm99) = query_latency(&daemon, n, queries, 6).await;
        daemon.stop();
        println!("| {n} | {write} | {rebuilt} | {stop} | {loaded:.1} | {rss:.0} | {p50:.2} / {p99:.2} | {warm50:.2} / {warm99:.2} |");
    }
}

/// p50 and p99 of `calls` sequential Query-by-id calls, k = 10, in ms.
async fn query_latency(daemon: &Daemon, n: usize, calls: usize, seed: u64) -> (f64, f64) {
    let mut client = daemon.client().await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut times = Vec::new();
    for _ in 0..calls {
        let id = record_id(rng.random_range(0..n));
        let t = Instant::now();
        query_by_id(&mut client, &id).await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() * 99 / 100])
}
