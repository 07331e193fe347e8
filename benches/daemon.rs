//! A real daemon on loopback under load from tonic clients:
//! `cargo bench --bench daemon`.
//!
//! Inserts real photos (the committed set plus seeded transformed variants,
//! so every image is distinct) at concurrency 1, 8 and 32, then through
//! InsertStream (1 stream, then 8 at once), against the network's
//! forward-only rate on the same images in this process first (the peer:
//! what ingest could reach if storing cost nothing), then measures
//! Query-by-id and Query-by-image latency at each concurrency (by image: of
//! stored images, and of mirror images, whose keypoints match none), and the
//! daemon's resident memory. The PCA + HNSW index is on (the threshold is
//! set below the image count) so queries take the production path. All of
//! it twice, in one run: with the keypoint check (the default) and with
//! `--no-keypoints` (cosine only, as before the check existed), then the
//! ratios.
//!
//! Environment: BENCH_IMAGES (distinct images per insert round, default 240),
//! BENCH_QUERIES (queries per measurement, default 400).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{data, photos, query_by_id, read, rss_mib, Client, Daemon};
use futures_util::{stream, StreamExt};
use lookalike::api::proto::{InsertRequest, QueryRequest, StatsRequest};
use lookalike::embed::{Embedder, ModelKind};
use lookalike::lab::augment;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` distinct JPEG images: the committed photos under seeded crops and
/// colour shifts.
fn images(n: usize) -> Vec<Vec<u8>> {
    let bases: Vec<image::RgbImage> = photos()
        .iter()
        .map(|(_, p)| {
            image::load_from_memory(&read(p))
                .expect("decode")
                .into_rgb8()
        })
        .collect();
    (0..n)
        .map(|i| {
            let base = &bases[i % bases.len()];
            let round = (i / bases.len()) as f32;
            let img = augment::crop(
                base,
                1.0 - 0.05 * (round % 6.0),
                0.2 + 0.1 * (round % 7.0),
                0.5,
            );
            let img = augment::hue_saturation(&img, 7.0 * round, 1.0);
            augment::encode_jpeg(&img, 88).expect("jpeg")
        })
        .collect()
}

/// Mirror images of `images`, as JPEGs.
fn mirror(images: &[Vec<u8>]) -> Vec<Vec<u8>> {
    images
        .iter()
        .map(|bytes| {
            let img = image::load_from_memory(bytes).expect("decode").into_rgb8();
            augment::encode_jpeg(&augment::flip_horizontal(&img), 88).expect("jpeg")
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Runs `calls` at `concurrency`; returns (calls per second, sorted latencies).
async fn load<F, Fut>(concurrency: usize, calls: usize, call: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut latencies: Vec<Duration> = stream::iter(0..calls)
        .map(|i| {
            let fut = call(i);
            async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

/// Images per second through the network alone (Lite0, batch 16, 2
/// threads, inputs decoded beforehand), for 5 s.
fn forward_only_rate(images: &[Vec<u8>]) -> f64 {
    let embedder = Embedder::load(ModelKind::EfficientNetLite0, None, 2).expect("load");
    let size = embedder.kind().input_size();
    let inputs: Vec<Vec<f32>> = images
        .iter()
        .take(64)
        .map(|b| {
            lookalike::decode::network_input(b, 1 << 26, size, embedder.view()).expect("decode")
        })
        .collect();
    embedder.embed_inputs(&inputs[..16]);
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed() < Duration::from_secs(5) {
        for batch in inputs.chunks(16) {
            embedder.embed_inputs(batch);
            done += batch.len();
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// Stores `per_stream` images per stream over `streams` InsertStreams at
/// once; returns images acknowledged per second.
async fn insert_streams(
    clients: &[Client],
    images: &[Vec<u8>],
    round: usize,
    streams: usize,
) -> f64 {
    let per_stream = images.len() / streams;
    let started = Instant::now();
    let tasks = (0..streams).map(|s| {
        let mut client = clients[s % clients.len()].clone();
        let items: Vec<InsertRequest> = (0..per_stream)
            .map(|i| InsertRequest {
                id: format!("img-{round}-{}", s * per_stream + i),
                image: images[s * per_stream + i].clone(),
                ..Default::default()
            })
            .collect();
        async move {
            let mut responses = client
                .insert_stream(stream::iter(items))
                .await
                .expect("insert stream")
                .into_inner();
            let mut acknowledged = 0;
            while let Some(r) = responses.message().await.expect("stream response") {
                assert!(r.error.is_none(), "{:?}", r.error);
                acknowledged += 1;
            }
            acknowledged
        }
    });
    let acknowledged: usize = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .sum();
    assert_eq!(acknowledged, per_stream * streams);
    acknowledged as f64 / started.elapsed().as_secs_f64()
}

const LEVELS: [usize; 3] = [1, 8, 32];
const STREAM_LEVELS: [usize; 2] = [1, 8];
/// Images queried mirrored (see `run`).
const MIRRORED: usize = 200;

/// One measured row: (operation and concurrency, per second, p50 ms).
type Measured = (String, f64, f64);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let per_round = env("BENCH_IMAGES", 240);
    let queries = env("BENCH_QUERIES", 400);
    let all = Arc::new(images(per_round * (LEVELS.len() + STREAM_LEVELS.len())));
    let forward = forward_only_rate(&all);
    println!(
        "\nForward only (the network alone, in this process before the daemons started, \
         Lite0, batch 16, 2 threads): {forward:.1} images/s"
    );
    let mirrored = Arc::new(mirror(&all[..MIRRORED.min(all.len())]));
    let with = run(
        &all,
        &mirrored,
        per_round,
        queries,
        forward,
        &[],
        "keypoint check on (default)",
    )
    .await;
    let without = run(
        &all,
        &mirrored,
        per_round,
        queries,
        forward,
        &["--no-keypoints"],
        "--no-keypoints (cosine only: the before)",
    )
    .await;
    println!("\n## The keypoint check's cost, same run\n");
    println!("| operation | concurrency | with / without, per second | p50 ms with / without |");
    println!("|---|---|---|---|");
    for ((name, rate, p50), (_, rate0, p50_0)) in with.iter().zip(&without) {
        let (op, c) = name.split_once('@').unwrap_or((name, ""));
        let latency = match p50.is_nan() {
            true => "-".to_string(),
            false => format!("{p50:.2} / {p50_0:.2} = {:.2}x", p50 / p50_0),
        };
        println!(
            "| {op} | {c} | {rate:.1} / {rate0:.1} = {:.2}x | {latency} |",
            rate / rate0
        );
    }
}

/// Every round against a fresh daemon started with `flags`; prints its
/// table and returns its rows.
async fn run(
    all: &Arc<Vec<Vec<u8>>>,
    mirrored: &Arc<Vec<Vec<u8>>>,
    per_round: usize,
    queries: usize,
    forward: f64,
    flags: &[&str],
    label: &str,
) -> Vec<Measured> {
    let levels = LEVELS;
    let stream_levels = STREAM_LEVELS;
    let mut rows = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pca = (per_round / 2).to_string();
    let mut args = vec!["--pca-min-images", &pca];
    args.extend_from_slice(flags);
    let daemon = Daemon::start(dir.path(), &args).await;
    let clients: Vec<Client> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(daemon.client().await);
        }
        v
    };
    println!(
        "\n## Daemon on loopback, {label} ({} images per insert round, {queries} queries per row)\n",
        per_round
    );
    println!("| operation | concurrency | per second | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for (round, &c) in levels.iter().enumerate() {
        let all = all.clone();
        let (rate, lat) = load(c, per_round, |i| {
            let mut client = clients[i % clients.len()].clone();
            let image = all[round * per_round + i].clone();
            async move {
                client
                    .insert(InsertRequest {
                        id: format!("img-{round}-{i}"),
                        image,
                        metadata: HashMap::new(),
                        upsert: false,
                    })
                    .await
                    .expect("insert");
            }
        })
        .await;
        println!(
            "| Insert | {c} | {rate:.1} | {:.2} | {:.2} |",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        rows.push((format!("Insert@{c}"), rate, percentile(&lat, 0.5)));
    }
    for (k, &streams) in stream_levels.iter().enumerate() {
        let round = levels.len() + k;
        let rate = insert_streams(
            &clients,
            &all[round * per_round..(round + 1) * per_round],
            round,
            streams,
        )
        .await;
        println!(
            "| InsertStream | {streams} stream{} | {rate:.1} ({:.2}x forward only) | | |",
            if streams == 1 { "" } else { "s" },
            rate / forward
        );
        rows.push((format!("InsertStream@{streams} streams"), rate, f64::NAN));
    }
    // Let the background PCA fit and graph build finish.
    let mut client = clients[0].clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let stats = loop {
        let s = client
            .stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        if s.pca_fitted && s.index_size as usize >= s.count as usize || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored = stats.count as usize;
    for &c in &levels {
        let (rate, lat) = load(c, queries, |i| {
            let mut client = clients[i % clients.len()].clone();
            let id = format!("img-{}-{}", i % levels.len(), (i * 7919) % per_round);
            async move {
                query_by_id(&mut client, &id).await;
            }
        })
        .await;
        println!(
            "| Query by id, k=10 | {c} | {rate:.1} | {:.2} | {:.2} |",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        rows.push((
            format!("Query by id, k=10@{c}"),
            rate,
            percentile(&lat, 0.5),
        ));
    }
    // Stored images (a copy is among the first candidates checked), then
    // mirror images of them: as alike to the CNN, but no keypoint geometry
    // agrees, so every query checks all its candidates (the worst case).
    let queried = [
        ("Query by image, k=10", all.clone()),
        (
            "Query by image, no copy stored (mirrored), k=10",
            mirrored.clone(),
        ),
    ];
    for (operation, images) in queried {
        for &c in &levels {
            let images = images.clone();
            let (rate, lat) = load(c, queries / 2, |i| {
                let mut client = clients[i % clients.len()].clone();
                let image = images[(i * 7919) % images.len()].clone();
                async move {
                    client
                        .query(QueryRequest {
                            image: data(image),
                            k: 10,
                            min_similarity: None,
                            omit_metadata: false,
                        })
                        .await
                        .expect("query by image");
                }
            })
            .await;
            println!(
                "| {operation} | {c} | {rate:.1} | {:.2} | {:.2} |",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
            rows.push((format!("{operation}@{c}"), rate, percentile(&lat, 0.5)));
        }
    }
    println!(
        "stored {stored} images; index: {} (PCA-{}, {} points); daemon RSS {:.0} MiB",
        if stats.pca_fitted { "HNSW" } else { "exact" },
        stats.pca_dimensions,
        stats.index_size,
        rss_mib(daemon.pid())
    );
    daemon.stop();
    rows
}
