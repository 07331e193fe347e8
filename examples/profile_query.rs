//! Times Query by id through the engine (no gRPC) on a database of drawn
//! features, for profilers:
//! `cargo run --release --example profile_query -- DIR N [QUERIES]`.
//!
//! The first run writes N drawn records into DIR (see
//! `benches/support/drawn_store.rs`) and builds the graph; it saves the graph
//! on exit, so later runs on the same DIR start in seconds.

#[path = "../benches/support/drawn_store.rs"]
mod drawn_store;

use std::time::Instant;

use lookalike::engine::ImageSource;
use lookalike::store::{SledStore, Store};
use lookalike::{Config, Engine};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().expect("usage: DIR N [QUERIES]"));
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).expect("N");
    let queries: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    if !dir.join("sled").exists() {
        let t = Instant::now();
        drawn_store::build_store(&dir, n);
        eprintln!("wrote {n} records in {:.1} s", t.elapsed().as_secs_f64());
    }
    if std::env::var_os("STORE_ONLY").is_some() {
        store_reads(&dir, n, queries);
        return;
    }
    let engine = Engine::open(Config::with_data_dir(&dir)).expect("open");
    let t = Instant::now();
    engine.load_index().await.expect("load index");
    eprintln!("index ready in {:.1} s", t.elapsed().as_secs_f64());
    let mut rng = StdRng::seed_from_u64(5);
    let mut times = Vec::with_capacity(queries);
    for _ in 0..queries {
        let id = drawn_store::record_id(rng.random_range(0..n));
        let t = Instant::now();
        let found = engine
            .query(ImageSource::Id(id), 10, None)
            .await
            .expect("query");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(found);
    }
    report(&format!("Query by id, k=10, {queries} queries"), times);
    engine.close().await.expect("close");
}

/// With STORE_ONLY set: p50 / p99 of 21 random record reads from sled (what
/// Query by id with k = 10 reads), no engine.
fn store_reads(dir: &std::path::Path, n: usize, queries: usize) {
    let store = SledStore::open(&dir.join("sled")).expect("open");
    let mut rng = StdRng::seed_from_u64(7);
    let times: Vec<f64> = (0..queries)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..21 {
                let seq = rng.random_range(1..=n as u64);
                std::hint::black_box(store.get_by_seq(seq).expect("get"));
            }
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    report("21 sled reads", times);
}

/// Prints p50, p99 and the maximum of `times` (ms).
fn report(label: &str, mut times: Vec<f64>) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{label}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
