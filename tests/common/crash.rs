//! kill -9 during a bulk InsertStream, again and again, shared by
//! `tests/stress.rs` (short, in CI) and `benches/crash.rs` (10,000 images,
//! 20 kills).
//!
//! One InsertStream sends distinct real-photo variants to a real daemon;
//! at each of `kills` random moments (a random number of acknowledged
//! inserts, then a random few milliseconds more, so the kill lands inside
//! decodes, group commits and flushes alike) the daemon is killed with
//! SIGKILL and started again on the same folder. After every restart:
//! every acknowledged id is stored (Get), images in flight at the kill are
//! either stored or not (those stored are not sent again), Stats counts
//! exactly what the store holds, the index holds every stored image (its
//! size less its tombstones equals the count), and a sample of the stored
//! images, the last acknowledged among them, is found first by Query with
//! its own bytes. A [`Watchdog`] fails the run with every thread's stack if
//! the stream or a check stops making progress.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lookalike::api::proto::{GetRequest, InsertRequest, QueryRequest};
use rand::{rngs::StdRng, seq::IndexedRandom, Rng, SeedableRng};
use tonic::Code;

use super::stress::{bases, id_of, variant};
use super::watchdog::{Progress, Watchdog};
use super::{data, index_matches_store, Client, Daemon};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Distinct images to store in all.
    pub images: usize,
    /// kill -9 moments, each followed by a restart and the checks.
    pub kills: usize,
    /// How long without progress fails the run.
    pub stall: Duration,
    /// Extra `lookalike serve` flags.
    pub flags: &'static [&'static str],
}

/// What the run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Inserts acknowledged.
    pub acked: usize,
    /// Images found stored after a kill although the kill came before
    /// their acknowledgement (stored, never acknowledged: allowed).
    pub stored_unacked: usize,
    /// Start to SERVING after each kill -9, seconds.
    pub restarts: Vec<f64>,
    /// The whole run.
    pub elapsed: Duration,
}

/// Runs `plan` on a fresh daemon in `dir`. Panics on any lost
/// acknowledged insert, failed call or disagreement.
pub async fn run(dir: &Path, plan: Plan, watchdog: &Watchdog) -> Outcome {
    let started = Instant::now();
    let bases = Arc::new(bases());
    let mut rng = StdRng::seed_from_u64(0xc4a5_u64 ^ plan.images as u64);
    let mut moments: Vec<usize> = (0..plan.kills)
        .map(|_| rng.random_range(1..plan.images))
        .collect();
    moments.sort_unstable();
    let mut stored = BTreeSet::new();
    let mut outcome = Outcome::default();
    let progress = watchdog.counter("InsertStream and checks");
    let mut daemon = Daemon::start(dir, plan.flags).await;
    watchdog.watch_process(daemon.pid());
    for moment in moments.into_iter().map(Some).chain([None]) {
        let pending: Vec<usize> = (0..plan.images).filter(|i| !stored.contains(i)).collect();
        let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
        let stream = tokio::spawn(stream(
            daemon.client().await,
            pending.clone(),
            bases.clone(),
            acked.clone(),
            progress.clone(),
        ));
        let Some(moment) = moment else {
            stream.await.expect("stream task");
            let acked = std::mem::take(&mut *acked.lock().unwrap());
            outcome.acked += acked.len();
            stored.extend(acked);
            break;
        };
        while stored.len() + acked.lock().unwrap().len() < moment && !stream.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        daemon.kill9();
        stream.await.expect("stream task");
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        outcome.acked += acked.len();
        let last = acked.last().copied();
        stored.extend(acked);

        let t = Instant::now();
        daemon = Daemon::start(dir, plan.flags).await;
        outcome.restarts.push(t.elapsed().as_secs_f64());
        watchdog.watch_process(daemon.pid());
        let mut c = daemon.client().await;
        let in_flight: Vec<usize> = pending
            .into_iter()
            .filter(|i| !stored.contains(i))
            .collect();
        outcome.stored_unacked += check(&mut c, &mut stored, &in_flight, &progress).await;
        findable(&mut c, &stored, last, &bases, &mut rng, &progress).await;
    }
    let mut c = daemon.client().await;
    check(&mut c, &mut stored, &[], &progress).await;
    assert_eq!(stored.len(), plan.images, "not every image was stored");
    progress.finish();
    daemon.stop();
    outcome.elapsed = started.elapsed();
    outcome
}

/// One InsertStream of `ids` until it ends or the daemon dies; each
/// acknowledged index goes to `acked`, in order.
async fn stream(
    mut client: Client,
    ids: Vec<usize>,
    bases: Arc<Vec<image::RgbImage>>,
    acked: Arc<Mutex<Vec<usize>>>,
    progress: Arc<Progress>,
) {
    let requests = tokio_stream::iter(ids.into_iter().map(move |i| InsertRequest {
        id: id_of(i),
        image: variant(&bases, i),
        metadata: [("i".to_string(), i.to_string())].into(),
        upsert: false,
    }));
    let Ok(responses) = client.insert_stream(requests).await else {
        return;
    };
    let mut responses = responses.into_inner();
    // A transport error is the kill.
    while let Ok(Some(r)) = responses.message().await {
        assert!(r.error.is_none(), "insert {} failed: {:?}", r.id, r.error);
        let i = r.id.strip_prefix("stress-").and_then(|n| n.parse().ok());
        acked.lock().unwrap().push(i.expect("an id of this run"));
        progress.tick();
    }
}

/// Every id in `stored` is stored; those of `in_flight` that are get added
/// to it (their number is returned); Stats and the index agree with it.
async fn check(
    c: &mut Client,
    stored: &mut BTreeSet<usize>,
    in_flight: &[usize],
    progress: &Progress,
) -> usize {
    for &i in stored.iter() {
        get(c, i)
            .await
            .unwrap_or_else(|s| panic!("acknowledged {} lost: {s:?}", id_of(i)));
        progress.tick();
    }
    let mut found = 0;
    for &i in in_flight {
        match get(c, i).await {
            Ok(()) => {
                stored.insert(i);
                found += 1;
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => panic!("get {}: {s:?}", id_of(i)),
        }
        progress.tick();
    }
    index_matches_store(c, stored.len(), Duration::from_secs(120), || {
        progress.tick()
    })
    .await;
    found
}

/// The last acknowledged image and a few others are found first by their
/// own bytes.
async fn findable(
    c: &mut Client,
    stored: &BTreeSet<usize>,
    last: Option<usize>,
    bases: &[image::RgbImage],
    rng: &mut StdRng,
    progress: &Progress,
) {
    let all: Vec<usize> = stored.iter().copied().collect();
    let sample: Vec<usize> = last
        .into_iter()
        .chain(all.choose_multiple(rng, 4).copied())
        .collect();
    for i in sample {
        let r = c
            .query(QueryRequest {
                image: data(variant(bases, i)),
                k: 1,
                min_similarity: None,
                omit_metadata: true,
            })
            .await
            .expect("query by image")
            .into_inner();
        let best = r.matches.first().map(|m| (m.id.as_str(), m.similarity));
        assert!(
            matches!(best, Some((id, sim)) if id == id_of(i) && sim > 0.999),
            "{} not found first by its own bytes: {best:?}",
            id_of(i)
        );
        progress.tick();
    }
}

async fn get(c: &mut Client, i: usize) -> Result<(), tonic::Status> {
    c.get(GetRequest {
        id: id_of(i),
        ..Default::default()
    })
    .await
    .map(|_| ())
}
