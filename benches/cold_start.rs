//! Cold start: time from process start to health SERVING with 100k and 1M
//! stored images, `cargo bench --bench cold_start`.
//!
//! The database is written directly through the library (sled store, model
//! name, a fitted PCA), with features DRAWN at random around a fixed mean
//! direction, not embedded from photos: embedding a million photos would
//! take hours here, and start-up time depends on the number of records and
//! the graph, not on what the vectors show. Each size is timed twice: the
//! first start rebuilds the HNSW graph from the store (as after a crash);
//! the second loads the graph the clean shutdown before it saved.
//!
//! After the second start it also times Query by id (k = 10) on the loaded
//! graph, one call at a time.
//!
//! Environment: BENCH_SIZES (default "100000,1000000").

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{query_by_id, rss_mib, Daemon};
use lookalike::engine::{META_MODEL, META_PCA};
use lookalike::pca::Projection;
use lookalike::store::{Record, SledStore, Store};
use rand::{rngs::StdRng, Rng, SeedableRng};

const DIM: usize = 1280;

fn feature(rng: &mut StdRng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM)
        .map(|i| 0.5 + (i % 7) as f32 * 0.1 + rng.random_range(0.0..1.0f32))
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Writes `n` records plus the model name and a fitted PCA.
fn build_store(dir: &std::path::Path, n: usize) {
    let store = SledStore::open(&dir.join("sled")).expect("open");
    store
        .meta_put(META_MODEL, b"efficientnet-lite0")
        .expect("meta");
    let mut rng = StdRng::seed_from_u64(11);
    let sample: Vec<Vec<f32>> = (0..2000).map(|_| feature(&mut rng)).collect();
    let projection = Projection::fit(&sample, 100, n).expect("fit");
    store
        .meta_put(META_PCA, &projection.to_bytes())
        .expect("meta");
    for i in 0..n {
        let record = Record {
            id: format!("img-{i:07}"),
            seq: 0,
            features: feature(&mut rng),
            siamese: Vec::new(),
            metadata: BTreeMap::new(),
            inserted_at_ms: 0,
        };
        store.insert(&record, false).expect("insert");
    }
    store.flush().expect("flush");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("\n## Cold start: process start to health SERVING\n");
    println!("| stored images | bulk write s | start, graph rebuilt from store s | clean stop s | start, saved graph loaded s | RSS after start MiB | Query by id p50 / p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Instant::now();
        build_store(dir.path(), n);
        let write = t.elapsed().as_secs_f64();
        eprintln!("{n}: bulk write {write:.1} s");
        let args = ["--pca-min-images", "1000"];
        let t = Instant::now();
        let daemon = Daemon::start_waiting(dir.path(), &args, Duration::from_secs(3600)).await;
        let rebuilt = t.elapsed().as_secs_f64();
        eprintln!("{n}: first start (graph rebuilt from the store) {rebuilt:.1} s");
        let t = Instant::now();
        daemon.stop();
        let stop = t.elapsed().as_secs_f64();
        eprintln!("{n}: clean stop {stop:.1} s");
        let t = Instant::now();
        let daemon = Daemon::start_waiting(dir.path(), &args, Duration::from_secs(3600)).await;
        let loaded = t.elapsed().as_secs_f64();
        eprintln!("{n}: second start (saved graph loaded) {loaded:.1} s");
        let rss = rss_mib(daemon.pid());
        let (p50, p99) = query_latency(&daemon, n).await;
        daemon.stop();
        println!("| {n} | {write:.1} | {rebuilt:.1} | {stop:.1} | {loaded:.1} | {rss:.0} | {p50:.2} / {p99:.2} |");
    }
}

/// p50 and p99 of 500 sequential Query-by-id calls, k = 10, in ms.
async fn query_latency(daemon: &Daemon, n: usize) -> (f64, f64) {
    let mut client = daemon.client().await;
    let mut rng = StdRng::seed_from_u64(5);
    let mut times = Vec::new();
    for _ in 0..500 {
        let id = format!("img-{:07}", rng.random_range(0..n));
        let t = Instant::now();
        query_by_id(&mut client, &id).await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() * 99 / 100])
}
