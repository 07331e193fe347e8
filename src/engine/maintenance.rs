//! Index loading and background maintenance.
//!
//! At start the index is built from the store (it is only a cache of it).
//! Afterwards one background task watches the store and, off the request
//! path: fits the PCA once `pca_min_images` are stored (switching from exact
//! search to PCA + HNSW), refits it when the store has grown by
//! `pca_refit_growth`, and rebuilds the graph when tombstones pass
//! `rebuild_tombstone_fraction`. Each job builds a new index without locks,
//! then takes the write lock briefly to add what was inserted meanwhile and
//! swap it in.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::task::JoinHandle;

use super::{blocking, load_projection, Engine, Shared, META_PCA};
use crate::error::Result;
use crate::index::{GraphParams, Index};
use crate::pca::Projection;

/// Records added to a new index per batch while building it.
const BUILD_BATCH: usize = 4096;
/// How often the task looks for work when nothing wakes it.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// A maintenance job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// Fit (or refit) the PCA, then build a graph over it.
    Refit,
    /// Rebuild the graph over the current PCA, dropping tombstones.
    Rebuild,
}

impl Engine {
    /// Builds the index from the store. Requests other than Get and Compare
    /// are refused as not ready until this returns.
    pub async fn load_index(&self) -> Result<()> {
        let shared = self.shared.clone();
        blocking(move || {
            let started = Instant::now();
            let projection = load_projection(&*shared.store)?.map(Arc::new);
            let (index, built_upto) = shared.build(projection)?;
            shared.swap_in(index, built_upto)?;
            tracing::info!(
                images = shared.store.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "index loaded"
            );
            Ok(())
        })
        .await?;
        self.shared.ready.store(true, Ordering::SeqCst);
        self.shared.maintenance.notify_one();
        Ok(())
    }

    /// Starts the background maintenance task; it stops after [`Engine::close`].
    pub fn spawn_maintenance(&self) -> JoinHandle<()> {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(IDLE_CHECK, shared.maintenance.notified()).await;
                if shared.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                let Some(job) = shared.due() else { continue };
                let worker = shared.clone();
                if let Err(e) = blocking(move || worker.run(job)).await {
                    tracing::error!(?job, error = %e, "index maintenance failed");
                    tokio::time::sleep(IDLE_CHECK).await;
                }
            }
        })
    }

    /// Runs whatever maintenance is due now, in the caller's task. For tests
    /// and tools that want the PCA fitted without waiting for the task.
    pub async fn maintain_now(&self) -> Result<bool> {
        let shared = self.shared.clone();
        blocking(move || match shared.due() {
            Some(job) => shared.run(job).map(|()| true),
            None => Ok(false),
        })
        .await
    }
}

impl Shared {
    /// The job the store's state calls for, if any.
    fn due(&self) -> Option<Job> {
        if !self.ready.load(Ordering::SeqCst) {
            return None;
        }
        let index = self.current_index();
        let count = self.store.len();
        match index.projection() {
            None if count >= self.config.pca_min_images => Some(Job::Refit),
            None => None,
            Some(p) if count as f64 >= p.fitted_on() as f64 * self.config.pca_refit_growth => {
                Some(Job::Refit)
            }
            Some(_) => {
                let dead = index.tombstones();
                let limit = index.size() as f64 * self.config.rebuild_tombstone_fraction;
                (dead > 0 && dead as f64 > limit).then_some(Job::Rebuild)
            }
        }
    }

    fn run(&self, job: Job) -> Result<()> {
        let started = Instant::now();
        let projection = match job {
            Job::Refit => {
                let p = self.fit_projection()?;
                self.store.meta_put(META_PCA, &p.to_bytes())?;
                self.store.flush()?;
                Arc::new(p)
            }
            Job::Rebuild => match self.current_index().projection() {
                Some(p) => p.clone(),
                None => return Ok(()),
            },
        };
        let (index, built_upto) = self.build(Some(projection))?;
        self.swap_in(index, built_upto)?;
        tracing::info!(
            ?job,
            images = self.store.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index rebuilt"
        );
        Ok(())
    }

    /// Fits the PCA on (a seeded random sample of) the stored features.
    fn fit_projection(&self) -> Result<Projection> {
        let cap = self.config.pca_max_fit_samples.max(2);
        let mut rng = StdRng::seed_from_u64(0x100c_a11e);
        let mut sample: Vec<Vec<f32>> = Vec::with_capacity(cap.min(self.store.len()));
        let mut seen = 0usize;
        for record in self.store.scan_after(0) {
            let features = record?.features;
            seen += 1;
            if sample.len() < cap {
                sample.push(features);
            } else {
                // Reservoir sampling: every record is kept with equal odds.
                let slot = rng.random_range(0..seen);
                if slot < cap {
                    sample[slot] = features;
                }
            }
        }
        Projection::fit(&sample, self.config.pca_components, seen)
    }

    /// A new index over every stored record, and the highest seq it holds.
    fn build(&self, projection: Option<Arc<Projection>>) -> Result<(Index, u64)> {
        let index = match projection {
            Some(p) => Index::graph(p, self.graph_params(), self.store.len()),
            None => Index::exact(),
        };
        let built_upto = add_records_after(&index, &*self.store, 0)?;
        Ok((index, built_upto))
    }

    /// Under the write lock: adds records stored since `built_upto`, carries
    /// over tombstones, and makes `index` current.
    fn swap_in(&self, index: Index, built_upto: u64) -> Result<()> {
        let mut slot = self.index.write().unwrap_or_else(|e| e.into_inner());
        add_records_after(&index, &*self.store, built_upto)?;
        index.inherit_tombstones(&slot, built_upto);
        *slot = Arc::new(index);
        Ok(())
    }

    fn graph_params(&self) -> GraphParams {
        GraphParams {
            m: self.config.hnsw_m,
            ef_construction: self.config.hnsw_ef_construction,
            ef_search: self.config.hnsw_ef_search,
        }
    }
}

/// Adds every record with seq above `after`; returns the highest seq added
/// (or `after` when none).
fn add_records_after(index: &Index, store: &dyn crate::store::Store, after: u64) -> Result<u64> {
    let mut upto = after;
    let mut batch = Vec::with_capacity(BUILD_BATCH);
    for record in store.scan_after(after) {
        let record = record?;
        upto = upto.max(record.seq);
        batch.push((record.seq, record.features));
        if batch.len() == BUILD_BATCH {
            index.add_batch(&batch);
            batch.clear();
        }
    }
    index.add_batch(&batch);
    Ok(upto)
}
