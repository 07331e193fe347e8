//! The bulk-load stress run shared by `tests/stress.rs` (short, in CI) and
//! `benches/stress.rs` (tens of thousands of images).
//!
//! Several InsertStreams of distinct real images run at once against a real
//! daemon, with Query (by id and by image) and Delete calls mixed in and
//! Stats polled throughout, under a [`Watchdog`] that fails the run with
//! the daemon's thread stacks if no call completes for the stall time. The
//! daemon is started with a low `--pca-min-images`, so the run crosses the
//! first PCA fit, several refits (each builds a new graph while inserts go
//! on, seals it into the flat graph and swaps it in) and many inserts into
//! the flat graph meanwhile.

#![allow(dead_code)]

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use image::RgbImage;
use lookalike::api::proto::{DeleteRequest, GetRequest, InsertRequest, QueryRequest, StatsRequest};
use lookalike::lab::augment;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tonic::Code;

use super::watchdog::Watchdog;
use super::{by_id, data, photos, read, Client, Daemon};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Images inserted in all, spread over the streams.
    pub images: usize,
    /// InsertStreams in flight at once.
    pub streams: usize,
    /// One Delete per this many acknowledged inserts.
    pub delete_every: usize,
    /// How long without any completed call fails the run.
    pub stall: Duration,
}

/// What the run saw.
#[derive(Debug)]
pub struct Outcome {
    pub inserted: usize,
    pub deleted: usize,
    pub queries: usize,
    /// Times Stats showed the graph replaced by a new one (a PCA refit or
    /// a rebuild): its size, tombstones included, fell between two polls.
    pub swaps_seen: usize,
    pub elapsed: Duration,
    /// Ids acknowledged and not deleted.
    pub live: Vec<String>,
    /// Ids deleted.
    pub gone: Vec<String>,
}

/// Base photos, shrunk so that each variant is quick to make.
pub fn bases() -> Vec<RgbImage> {
    photos()
        .iter()
        .map(|(_, p)| {
            let img = image::load_from_memory(&read(p))
                .expect("decode a test photo")
                .into_rgb8();
            let scale = 256.0 / img.width().max(img.height()) as f32;
            augment::rescale(&img, scale.min(1.0))
        })
        .collect()
}

/// Image `i` of a run: a seeded random crop, colour shift and flip of one
/// of the committed photos, as JPEG; distinct for every `i`.
pub fn variant(bases: &[RgbImage], i: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(0x57e5 ^ i as u64);
    let base = &bases[i % bases.len()];
    let img = augment::crop(
        base,
        rng.random_range(0.55..1.0),
        rng.random_range(0.3..0.7),
        rng.random_range(0.3..0.7),
    );
    let img = augment::hue_saturation(
        &img,
        rng.random_range(0.0..360.0),
        rng.random_range(0.7..1.3),
    );
    let img =
        augment::brightness_contrast(&img, rng.random_range(0.8..1.2), rng.random_range(0.8..1.2));
    let img = if rng.random_bool(0.5) {
        augment::flip_horizontal(&img)
    } else {
        img
    };
    augment::encode_jpeg(&img, 85).expect("encode a variant")
}

pub fn id_of(i: usize) -> String {
    format!("stress-{i:06}")
}

/// Runs `plan` against `daemon`, under `watchdog` (which it tells about the
/// daemon's process). Panics on any failed call.
pub async fn run(daemon: &Daemon, plan: Plan, watchdog: &Watchdog) -> Outcome {
    watchdog.watch_process(daemon.pid());
    let bases = Arc::new(bases());
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let inserting = Arc::new(AtomicBool::new(true));
    let started = Instant::now();

    // The insert streams: stream s sends images s, s + streams, ...
    let mut streams = Vec::new();
    for s in 0..plan.streams {
        let mut client = daemon.client().await;
        let (bases, acked) = (bases.clone(), acked.clone());
        let progress = watchdog.counter(&format!("InsertStream {s}"));
        streams.push(tokio::spawn(async move {
            let ids: Vec<usize> = (s..plan.images).step_by(plan.streams).collect();
            let expected = ids.len();
            let requests = tokio_stream::iter(ids.into_iter().map(move |i| InsertRequest {
                id: id_of(i),
                image: variant(&bases, i),
                metadata: [("i".to_string(), i.to_string())].into(),
                upsert: false,
            }));
            let mut responses = client
                .insert_stream(requests)
                .await
                .expect("open an InsertStream")
                .into_inner();
            let mut got = 0;
            while let Some(r) = responses.message().await.expect("InsertStream response") {
                assert!(r.error.is_none(), "insert {} failed: {:?}", r.id, r.error);
                acked.lock().unwrap().push(r.id);
                progress.tick();
                got += 1;
            }
            progress.finish();
            assert_eq!(got, expected, "stream {s} ended early");
        }));
    }

    // Deletes: one per `delete_every` acknowledged inserts.
    let deleter = {
        let mut client = daemon.client().await;
        let (acked, inserting) = (acked.clone(), inserting.clone());
        let progress = watchdog.counter("Delete");
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            let mut gone = HashSet::new();
            while inserting.load(Ordering::SeqCst) {
                let pick = {
                    let acked = acked.lock().unwrap();
                    let due = acked.len() / plan.delete_every;
                    (gone.len() < due).then(|| acked[rng.random_range(0..acked.len())].clone())
                };
                match pick {
                    Some(id) if !gone.contains(&id) => {
                        client
                            .delete(DeleteRequest { id: id.clone() })
                            .await
                            .expect("delete");
                        gone.insert(id);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                progress.tick();
            }
            progress.finish();
            gone
        })
    };

    // Queries: by the id of an acknowledged image, or by a fresh image.
    let querier = {
        let mut client = daemon.client().await;
        let (acked, inserting, bases) = (acked.clone(), inserting.clone(), bases.clone());
        let progress = watchdog.counter("Query");
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(11);
            let mut done = 0usize;
            while inserting.load(Ordering::SeqCst) {
                let id = {
                    let acked = acked.lock().unwrap();
                    (!acked.is_empty()).then(|| acked[rng.random_range(0..acked.len())].clone())
                };
                let image = match id {
                    Some(id) if done % 4 != 3 => by_id(&id),
                    _ => data(variant(&bases, 1_000_000 + done)),
                };
                let result = client
                    .query(QueryRequest {
                        image,
                        k: 10,
                        min_similarity: None,
                        omit_metadata: false,
                    })
                    .await;
                match result {
                    Ok(_) => {}
                    // A race with the deleter is not a failure.
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => panic!("query failed: {s:?}"),
                }
                done += 1;
                progress.tick();
            }
            progress.finish();
            done
        })
    };

    // Stats, polled: a fall of the graph's size is a new graph swapped in.
    let monitor = {
        let mut client = daemon.client().await;
        let inserting = inserting.clone();
        let progress = watchdog.counter("Stats");
        tokio::spawn(async move {
            let (mut swaps, mut last) = (0usize, None);
            while inserting.load(Ordering::SeqCst) {
                let s = client
                    .stats(StatsRequest {})
                    .await
                    .expect("stats")
                    .into_inner();
                if s.pca_fitted {
                    if matches!(last, Some(size) if s.index_size < size) {
                        swaps += 1;
                    }
                    last = Some(s.index_size);
                }
                progress.tick();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            progress.finish();
            swaps
        })
    };

    for s in streams {
        s.await.expect("insert stream task");
    }
    inserting.store(false, Ordering::SeqCst);
    let gone = deleter.await.expect("deleter task");
    let queries = querier.await.expect("querier task");
    let swaps_seen = monitor.await.expect("monitor task");
    let elapsed = started.elapsed();
    let acked = acked.lock().unwrap().clone();
    let live: Vec<String> = acked
        .iter()
        .filter(|id| !gone.contains(*id))
        .cloned()
        .collect();
    Outcome {
        inserted: acked.len(),
        deleted: gone.len(),
        queries,
        swaps_seen,
        elapsed,
        live,
        gone: gone.into_iter().collect(),
    }
}

/// Checks the database after a run: the count, every deleted id gone, and a
/// sample of live ids readable and queryable.
pub async fn check_after(client: &mut Client, outcome: &Outcome) {
    let stats = client
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count as usize, outcome.live.len(), "stored count");
    assert!(stats.pca_fitted, "the PCA was never fitted");
    for id in &outcome.gone {
        let err = client
            .get(GetRequest {
                id: id.clone(),
                include_features: false,
                ..Default::default()
            })
            .await
            .expect_err("a deleted id is gone");
        assert_eq!(err.code(), Code::NotFound);
    }
    let step = (outcome.live.len() / 100).max(1);
    for id in outcome.live.iter().step_by(step) {
        client
            .get(GetRequest {
                id: id.clone(),
                include_features: false,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("get {id}: {e:?}"));
        let found = client
            .query(QueryRequest {
                image: by_id(id),
                k: 10,
                min_similarity: None,
                omit_metadata: true,
            })
            .await
            .unwrap_or_else(|e| panic!("query {id}: {e:?}"))
            .into_inner();
        assert_eq!(found.matches.len(), 10, "query by {id}");
        assert!(
            found.matches.iter().all(|m| !outcome.gone.contains(&m.id)),
            "a deleted image came back for {id}"
        );
    }
}

/// Writes `writes` records of lookalike's size (1,280 features, a 128-d
/// Siamese vector, a little metadata) into a fresh [`SledStore`] in `dir`
/// from `threads` threads, flushing every 64 writes per thread as
/// concurrent inserts do, bumping `watchdog`'s counter per write. Then
/// checks every record reads back. Returns the time the writes took.
pub fn store_writes(
    dir: &std::path::Path,
    writes: usize,
    threads: usize,
    watchdog: &Watchdog,
) -> Duration {
    use lookalike::store::{Attachments, Record, SledStore, Store};
    let store = Arc::new(SledStore::open(dir).expect("open sled"));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let progress = watchdog.counter(&format!("writer {t}"));
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t as u64);
                for (n, i) in (t..writes).step_by(threads).enumerate() {
                    let record = Record {
                        id: format!("w{i:08}"),
                        seq: 0,
                        features: (0..1280).map(|_| rng.random_range(0.0..0.1)).collect(),
                        siamese: Some((0..128).map(|_| rng.random_range(-1.0..1.0)).collect()),
                        metadata: [("i".to_string(), i.to_string())].into(),
                        inserted_at_ms: i as i64,
                        facts: None,
                    };
                    store
                        .insert(&record, false, Attachments::default())
                        .expect("insert");
                    if n % 64 == 63 {
                        store.flush().expect("flush");
                    }
                    progress.tick();
                }
                store.flush().expect("flush");
                progress.finish();
            })
        })
        .collect();
    for w in workers {
        w.join().expect("writer thread");
    }
    let elapsed = started.elapsed();
    assert_eq!(store.len(), writes);
    let mut seen = 0;
    let progress = watchdog.counter("read back");
    for record in store.scan_after(0) {
        let record = record.expect("read back");
        assert_eq!(record.features.len(), 1280);
        seen += 1;
        progress.tick();
    }
    progress.finish();
    assert_eq!(seen, writes, "records read back");
    elapsed
}
