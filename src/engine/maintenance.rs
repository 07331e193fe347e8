//! Index loading and background maintenance.
//!
//! At start the index is the graph saved at the last clean shutdown when it
//! matches the store, or, after a crash, when it was saved for this
//! database: then what was deleted since leaves it and what was stored
//! since is added (see `Shared::load_saved`). Else it is built from the
//! store (the index is only a cache of it).
//! Afterwards one background task watches the store and, off the request
//! path: fits the PCA once `pca_min_images` are stored (switching from exact
//! search to PCA + HNSW), refits it when the store has grown by
//! `pca_refit_growth`, and rebuilds the graph when tombstones pass
//! `rebuild_tombstone_fraction`. Each job builds a new index without locks,
//! then takes the write lock briefly to add what was inserted meanwhile and
//! swap it in. A new graph is built in parallel batches (`Index::add_batch`,
//! on rayon's pool); inserts between builds go into the graph one by one.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{blocking, load_projection, Engine, Shared, META_PCA};
use crate::error::{Error, Result};
use crate::index::{sums::FileSums, GraphParams, Index};
use crate::pca::Projection;

/// Folder under the data dir holding the graph saved at shutdown.
pub(super) const INDEX_DIR: &str = "index";
/// Where the graph is written before it replaces `INDEX_DIR`.
const INDEX_TMP_DIR: &str = "index.tmp";
/// The file in `INDEX_DIR` recording which store state the graph matches.
const STAMP: &str = "stamp.json";

/// What a saved graph was built from.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stamp {
    last_seq: u64,
    count: usize,
    pca_fitted_on: usize,
    pca_dimensions: usize,
    tombstones: Vec<u64>,
    /// Length and CRC-32 of every file of the graph; a graph without them
    /// (saved by lookalike before 2026-12-05) is rebuilt.
    #[serde(default)]
    files: FileSums,
    /// The store's identity ([`crate::store::Store::identity`]); a graph
    /// without it is used only when it matches the store exactly.
    #[serde(default)]
    identity: Option<u64>,
}

/// Records added to a new index per batch while building it.
const BUILD_BATCH: usize = 4096;
/// A swap catches up without the lock until at most this many records
/// were added in one pass; the rest are added under the lock.
const CATCH_UP_UNDER_LOCK: usize = 256;
/// How often the task looks for work when nothing wakes it.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// A maintenance job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// Fit (or refit) the PCA, then build a graph over it.
    Refit,
    /// Rebuild the graph over the current PCA, dropping tombstones.
    Rebuild,
    /// Rebuild over the current PCA (or exact), because the store was
    /// reopened after a failed write and may hold other than the index.
    Resync,
}

impl Engine {
    /// Builds the index from the store. Requests other than Get and Compare
    /// are refused as not ready until this returns.
    pub async fn load_index(&self) -> Result<()> {
        let shared = self.shared.clone();
        blocking(move || {
            let started = Instant::now();
            let projection = load_projection(&*shared.store)?.map(Arc::new);
            let saved = projection.as_ref().and_then(|p| shared.load_saved(p));
            let (index, built_upto) = match saved {
                Some(saved) => saved,
                None => shared.build(projection)?,
            };
            let known = shared.current_index().tombstone_seqs();
            shared.swap_in(index, built_upto, &known)?;
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

    /// Starts the background maintenance task; [`Engine::close`] stops it
    /// and waits for it.
    pub fn spawn_maintenance(&self) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(IDLE_CHECK, shared.maintenance.notified()).await;
                if shared.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                let Some(job) = shared.due() else { continue };
                let worker = shared.clone();
                match blocking(move || worker.run(job)).await {
                    Ok(()) => {}
                    Err(_) if shared.shutdown.load(Ordering::SeqCst) => return,
                    Err(e) => {
                        tracing::error!(?job, error = %e, "index maintenance failed");
                        let _ =
                            tokio::time::timeout(IDLE_CHECK, shared.maintenance.notified()).await;
                    }
                }
            }
        });
        let mut slot = self
            .shared
            .maintenance_task
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(task) {
            old.abort();
        }
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
    /// Saves the graph for the next start (clean shutdown only): the dump
    /// plus a stamp of the store's state it matches. `index` is the slot's
    /// write guard: no write can land between the dump and the stamp.
    pub(super) fn save_index(&self, index: &Index) -> Result<()> {
        if index.projection().is_none() {
            return Ok(());
        }
        let (dir, tmp) = (
            self.config.data_dir.join(INDEX_DIR),
            self.config.data_dir.join(INDEX_TMP_DIR),
        );
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(Error::file("create the index folder", &tmp))?;
        let saved = self.save_index_into(index, &tmp)?;
        let _ = std::fs::remove_dir_all(&dir);
        if !saved {
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok(());
        }
        std::fs::rename(&tmp, &dir)
            .map_err(Error::file("move the saved index into place", &dir))?;
        Ok(())
    }

    /// Writes the graph and its stamp into the existing folder `dir`;
    /// false for an exact index (nothing to save) or one whose re-rank
    /// codes were found damaged (the next start rebuilds). No write may
    /// land meanwhile (the caller holds the slot's or the writes' lock).
    pub(super) fn save_index_into(&self, index: &Index, dir: &std::path::Path) -> Result<bool> {
        let Some(projection) = index.projection() else {
            return Ok(false);
        };
        if index.damaged() {
            tracing::warn!("not saving the index: its re-rank codes are damaged");
            return Ok(false);
        }
        let Some(files) = index.dump(dir)? else {
            return Ok(false);
        };
        let stamp = Stamp {
            last_seq: self.store.last_seq()?,
            count: self.store.len(),
            pca_fitted_on: projection.fitted_on(),
            pca_dimensions: projection.out_dim(),
            tombstones: index.tombstone_list(),
            files,
            identity: self.store.identity(),
        };
        let json = serde_json::to_vec(&stamp).map_err(|e| Error::Internal(e.to_string()))?;
        let stamp_path = dir.join(STAMP);
        std::fs::write(&stamp_path, json)
            .map_err(Error::file("write the index stamp", &stamp_path))?;
        Ok(true)
    }

    /// The graph saved at the last clean stop, brought up to date with the
    /// store, and the seq up to which it holds every record (the caller
    /// adds the later ones); None when it cannot be used (it is removed,
    /// and the caller rebuilds).
    ///
    /// A graph that matches the store exactly is used as it is. One that is
    /// older (the daemon stopped without saving since: a crash, kill -9)
    /// is used when it was saved for this very database (its identity: a
    /// seq names one record for good only within one database) over the
    /// same PCA: records deleted or replaced since, whose seqs are no
    /// longer in the store, become tombstones, and records stored since
    /// have higher seqs. The files stay until the next save, so that a
    /// crash after this start is caught up the same way.
    fn load_saved(&self, projection: &Arc<Projection>) -> Option<(Index, u64)> {
        let dir = self.config.data_dir.join(INDEX_DIR);
        if !dir.exists() {
            return None;
        }
        let loaded = (|| -> Result<std::result::Result<(Index, u64), &'static str>> {
            let path = dir.join(STAMP);
            let bytes = std::fs::read(&path).map_err(Error::file("read the index stamp", &path))?;
            let stamp: Stamp = serde_json::from_slice(&bytes)
                .map_err(Error::file("parse the index stamp", &path))?;
            if stamp.pca_fitted_on != projection.fitted_on()
                || stamp.pca_dimensions != projection.out_dim()
            {
                return Ok(Err("it was built over another PCA"));
            }
            let exact = stamp.last_seq == self.store.last_seq()? && stamp.count == self.store.len();
            let this_store = stamp.identity.is_some() && stamp.identity == self.store.identity();
            if !exact && !this_store {
                return Ok(Err(
                    "it does not match the store, and was saved for another database or by an \
                     older lookalike",
                ));
            }
            let index = Index::load_graph(
                &dir,
                &stamp.files,
                projection.clone(),
                self.graph_params(),
                stamp.tombstones,
            )?;
            if !exact {
                let live = self.store.live_seqs()?;
                let gone: Vec<u64> = index
                    .held_seqs()
                    .into_iter()
                    .filter(|seq| !live.contains(seq))
                    .collect();
                for &seq in &gone {
                    index.remove(seq);
                }
                tracing::info!(
                    saved_upto_seq = stamp.last_seq,
                    removed_since = gone.len(),
                    "the saved index is older than the store (no clean stop since it was \
                     saved); catching it up"
                );
            }
            Ok(Ok((index, stamp.last_seq)))
        })();
        let why = match loaded {
            Ok(Ok(loaded)) => return Some(loaded),
            Ok(Err(why)) => {
                tracing::info!(why, "saved index is stale; rebuilding from the store");
                why.to_string()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the saved index; rebuilding from the store");
                e.to_string()
            }
        };
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(error = %e, why, "cannot remove the unusable saved index");
        }
        None
    }

    /// The job the store's state calls for, if any.
    fn due(&self) -> Option<Job> {
        if !self.ready.load(Ordering::SeqCst) {
            return None;
        }
        let index = self.current_index();
        if self.store.reopens() != self.store_reopens_seen.load(Ordering::SeqCst) {
            return Some(Job::Resync);
        }
        let count = self.store.len();
        match index.projection() {
            None if count >= self.config.pca_min_images => Some(Job::Refit),
            None => None,
            Some(p) if count as f64 >= p.fitted_on() as f64 * self.config.pca_refit_growth => {
                Some(Job::Refit)
            }
            Some(_) if index.damaged() => Some(Job::Rebuild),
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
            Job::Resync => {
                // Read before the build: a reopen during it calls for another.
                let reopens = self.store.reopens();
                self.store_reopens_seen.store(reopens, Ordering::SeqCst);
                tracing::warn!("the store was reopened: rebuilding the index from it");
                self.current_index().projection().cloned()
            }
            Job::Refit => {
                let p = self.fit_projection()?;
                metrics::counter!("lookalike_pca_fits_total").increment(1);
                self.store.meta_put(META_PCA, &p.to_bytes())?;
                self.store.flush()?;
                Some(Arc::new(p))
            }
            Job::Rebuild => match self.current_index().projection() {
                Some(p) => Some(p.clone()),
                None => return Ok(()),
            },
        };
        let known = self.current_index().tombstone_seqs();
        let (index, built_upto) = self.build(projection)?;
        self.swap_in(index, built_upto, &known)?;
        let kind = match job {
            Job::Refit => "refit",
            Job::Resync => "resync",
            _ => "rebuild",
        };
        metrics::counter!("lookalike_index_builds_total", "job" => kind).increment(1);
        metrics::histogram!("lookalike_index_build_seconds", "job" => kind)
            .record(started.elapsed().as_secs_f64());
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
            let features = match record {
                Ok(record) => record.features,
                Err(e) => {
                    self.skip_damaged(e)?;
                    continue;
                }
            };
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
            Some(p) => Index::graph_in(
                p,
                self.graph_params(),
                self.store.len(),
                &self.config.data_dir.join(INDEX_DIR),
            )?,
            None => Index::exact(),
        };
        let built_upto = self.add_records_after(&index, 0)?.0;
        Ok((index, built_upto))
    }

    /// Adds records stored since `built_upto` to `index`, carries over
    /// tombstones, and makes it current. Catches up without the slot's
    /// lock while many records arrived during the build, then takes the
    /// write lock for the last few only, so writers wait briefly.
    fn swap_in(
        &self,
        index: Index,
        mut built_upto: u64,
        known: &std::collections::HashSet<u64>,
    ) -> Result<()> {
        loop {
            let (upto, added) = self.add_records_after(&index, built_upto)?;
            built_upto = upto;
            if added <= CATCH_UP_UNDER_LOCK {
                break;
            }
        }
        let mut slot = self.index.write().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            // Shutdown saved the index in the slot; this one is dropped.
            return Ok(());
        }
        built_upto = self.add_records_after(&index, built_upto)?.0;
        index.inherit_tombstones(&slot, built_upto, known);
        *slot = Arc::new(index);
        Ok(())
    }

    /// Adds every record with seq above `after`; returns the highest seq
    /// added (or `after` when none) and how many were added. Gives up with
    /// an error once shutdown has begun: a build then has no use.
    fn add_records_after(&self, index: &Index, after: u64) -> Result<(u64, usize)> {
        let (mut upto, mut added) = (after, 0);
        let mut batch = Vec::with_capacity(BUILD_BATCH);
        for record in self.store.scan_after(after) {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    if let Error::Damaged { seq, .. } = &e {
                        upto = upto.max(*seq);
                    }
                    self.skip_damaged(e)?;
                    continue;
                }
            };
            upto = upto.max(record.seq);
            batch.push((record.seq, record.features));
            if batch.len() == BUILD_BATCH {
                if self.shutdown.load(Ordering::SeqCst) {
                    return Err(Error::Unavailable("shutting down".into()));
                }
                index.add_batch(&batch);
                added += batch.len();
                batch.clear();
            }
        }
        index.add_batch(&batch);
        added += batch.len();
        Ok((upto, added))
    }

    fn graph_params(&self) -> GraphParams {
        GraphParams {
            m: self.config.hnsw_m,
            ef_construction: self.config.hnsw_ef_construction,
            ef_search: self.config.hnsw_ef_search,
        }
    }
}
