//! Groups over the whole database: `cargo bench --bench groups`.
//!
//! A database of drawn features (see `support/drawn_store.rs`; embedding a
//! million photos would take hours here) where every 10th record is a
//! near-copy of the one before it, served by the real daemon (graph built
//! at its first start, not timed here); then one Groups call through gRPC,
//! timed from the request to the last message, with the daemon's resident
//! memory before and at its peak. The planted pairs are the known answer:
//! the table gives how many the groups hold (recall) and how many grouped
//! pairs are not planted ones (drawn features of one cluster can be that
//! close too). With no Siamese embeddings the verdict is cosine: drawn
//! features of one cluster sit above the default 0.85, so the daemon runs
//! with `--duplicate-similarity 0.98` (the planted copies are at about
//! 0.99).
//!
//! Environment: BENCH_SIZES (default "100000,1000000").

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "support/drawn_store.rs"]
mod drawn_store;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{bench_sizes, peak_rss_mib, rss_mib, Daemon};
use drawn_store::{build_store_with_copies, record_id};
use lookalike::api::proto::{groups_response::Item, GroupsRequest};

/// Every `COPY_EVERY`-th record is a copy of the one before.
const COPY_EVERY: usize = 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = bench_sizes("100000,1000000");
    println!(
        "\n## Groups over the whole database (drawn features, every {COPY_EVERY}th a near-copy)\n"
    );
    println!("| stored images | Groups s | groups | images in groups | planted pairs found | grouped pairs not planted | daemon RSS before / peak MiB |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        build_store_with_copies(dir.path(), n, COPY_EVERY);
        let args = ["--pca-min-images", "1000", "--duplicate-similarity", "0.98"];
        let t = Instant::now();
        let daemon = Daemon::start_waiting(dir.path(), &args, Duration::from_secs(3600)).await;
        eprintln!("{n}: graph built in {:.1} s", t.elapsed().as_secs_f64());
        let before = rss_mib(daemon.pid());
        let mut client = daemon.client().await;
        let t = Instant::now();
        let mut stream = client
            .groups(GroupsRequest::default())
            .await
            .expect("groups")
            .into_inner();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        let mut groups = 0;
        while let Some(resp) = stream.message().await.expect("groups stream") {
            match resp.item {
                Some(Item::Group(g)) => {
                    for m in &g.members {
                        group_of.insert(m.id.clone(), groups);
                    }
                    groups += 1;
                }
                Some(Item::Progress(p)) => {
                    eprint!("\r{n}: {} {}/{}   ", p.phase, p.done, p.total)
                }
                None => {}
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let peak = peak_rss_mib(daemon.pid());
        let planted: Vec<usize> = (0..n)
            .filter(|i| i % COPY_EVERY == COPY_EVERY - 1 && *i > 0)
            .collect();
        let found = planted
            .iter()
            .filter(|&&i| {
                let (a, b) = (group_of.get(&record_id(i)), group_of.get(&record_id(i - 1)));
                a.is_some() && a == b
            })
            .count();
        // Pairs in one group, minus the planted pairs among them.
        let mut sizes: HashMap<usize, usize> = HashMap::new();
        for g in group_of.values() {
            *sizes.entry(*g).or_default() += 1;
        }
        let pairs: usize = sizes.values().map(|s| s * (s - 1) / 2).sum();
        daemon.stop();
        eprintln!();
        println!(
            "| {n} | {secs:.1} | {groups} | {} | {found} of {} ({:.3}) | {} | {before:.0} / {peak:.0} |",
            group_of.len(),
            planted.len(),
            found as f64 / planted.len().max(1) as f64,
            pairs - found
        );
    }
}
