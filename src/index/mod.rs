//! The nearest-neighbour index over stored features.
//!
//! Two modes. Until the store holds enough images to fit a PCA, the index is
//! exact: every stored feature vector is scanned. After that it is an HNSW
//! graph over the PCA projections, whose candidates the engine re-ranks on
//! the full features. Projections are unit vectors, so cosine distance is
//! `1 - dot`.
//!
//! The graph lives in flat arrays ([`flat`]): a build from the store inserts
//! its points in parallel batches ([`Index::add_batch`]), later inserts go
//! in one at a time, and a saved graph loads as fast as its file can be
//! read.
//!
//! In graph mode the index also keeps every point's full features as 8-bit
//! codes ([`codes`]), so that [`Index::rescore`] can re-rank the graph's
//! candidates without reading each from the store. The daemon keeps them in
//! a file beside the saved graph ([`Index::graph_in`]), read a record per
//! candidate, so that they take no RAM beyond the page cache.
//!
//! The graph cannot delete, so deleted or replaced points stay in it as
//! tombstones that the search filter skips; the engine rebuilds the graph
//! when they pile up. The index is a cache of the store: it is rebuilt from
//! the store at start when no saved copy matches, and whenever the PCA is
//! refitted.
//!
//! # Locks
//! Every method may run on many threads at once. The index's own locks are
//! taken in this order, outermost first, and a method holds two of them at
//! once only where it says so:
//!
//! 1. `inserting` (serialises inserts into the flat graph, across the
//!    whole insert or batch, so that nothing changes between a plan and
//!    its apply);
//! 2. `tombstones` (held by a search across the graph search, because the
//!    search filter reads it);
//! 3. `codes`, then `flat` (each alone, never both); `codes` is held across
//!    its file's positioned reads and writes, which take no lock of ours.
//!
//! A batch's plans run on rayon's pool while its caller holds `inserting`
//! and a `flat` read guard; the plans themselves take no lock. So
//! [`Index::add_batch`] must not be called from a rayon task (a worker
//! waiting for `inserting` there could be the one the plans need). The
//! engine's index slot (`engine::Shared::index`) comes before all of these.

mod codes;
mod f16;
mod flat;
pub mod sums;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::pca::Projection;
use crate::vector::dot;
use codes::{Codes, Scored};
use flat::FlatGraph;
use sums::FileSums;

/// The result of a scoped thread; its panic (a bug) as an error.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    handle.join().unwrap_or_else(|_| {
        Err(Error::Internal(
            "a thread saving or loading the index panicked".into(),
        ))
    })
}

/// File of a saved graph ([`FlatGraph::write`]).
const GRAPH_FILE: &str = "graph.flat";

/// Graph construction and search parameters.
#[derive(Debug, Clone, Copy)]
pub struct GraphParams {
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

/// A search hit: the record's seq and its similarity in this index's space
/// (exact cosine in exact mode, cosine of projections in graph mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub seq: u64,
    pub similarity: f32,
}

enum Mode {
    /// seq to full features, scanned linearly.
    Exact(RwLock<HashMap<u64, Vec<f32>>>),
    Graph {
        projection: Arc<Projection>,
        params: GraphParams,
        /// The graph (boxed, as are the other large fields: the other mode
        /// is small).
        flat: Box<RwLock<FlatGraph>>,
        /// Serialises inserts into `flat`; draws their levels.
        inserting: Box<Mutex<StdRng>>,
        /// Full features of every live point, for re-ranking.
        codes: Box<RwLock<Codes>>,
    },
}

pub struct Index {
    mode: Mode,
    /// Graph points deleted or replaced since the graph was built.
    tombstones: RwLock<HashSet<u64>>,
}

impl Index {
    /// An empty exact index.
    pub fn exact() -> Self {
        Index {
            mode: Mode::Exact(RwLock::new(HashMap::new())),
            tombstones: RwLock::new(HashSet::new()),
        }
    }

    /// An empty graph index over `projection`, sized for `capacity` points.
    pub fn graph(projection: Arc<Projection>, params: GraphParams, capacity: usize) -> Self {
        let codes = Codes::new(projection.in_dim(), capacity);
        Self::building(projection, params, capacity, codes)
    }

    /// [`Index::graph`], with the re-rank codes in a new file in `dir`
    /// (the daemon's way: they are most of an index's bytes).
    pub fn graph_in(
        projection: Arc<Projection>,
        params: GraphParams,
        capacity: usize,
        dir: &Path,
    ) -> Result<Self> {
        let codes = Codes::create_in(dir, projection.in_dim(), capacity)?;
        Ok(Self::building(projection, params, capacity, codes))
    }

    fn building(
        projection: Arc<Projection>,
        params: GraphParams,
        capacity: usize,
        codes: Codes,
    ) -> Self {
        let empty = FlatGraph::new(projection.out_dim(), params.m, capacity);
        Self::over(projection, empty, params, codes, HashSet::new())
    }

    fn over(
        projection: Arc<Projection>,
        flat: FlatGraph,
        params: GraphParams,
        codes: Codes,
        tombstones: HashSet<u64>,
    ) -> Self {
        Index {
            mode: Mode::Graph {
                projection,
                params,
                flat: Box::new(RwLock::new(flat)),
                inserting: Box::new(Mutex::new(StdRng::seed_from_u64(0x9a7f))),
                codes: Box::new(RwLock::new(codes)),
            },
            tombstones: RwLock::new(tombstones),
        }
    }

    /// Writes a graph index's graph ([`FlatGraph::write`]) into `dir` and saves its re-rank codes there ([`Codes::dump`]:
    /// a link to their file and a table); returns the files'
    /// checksums, which [`Index::load_graph`] needs. `None` for an exact
    /// index, which has nothing to save.
    pub fn dump(&self, dir: &Path) -> Result<Option<FileSums>> {
        let Mode::Graph { flat, codes, .. } = &self.mode else {
            return Ok(None);
        };
        // The graph (0.6 GB at a million images) while the codes' file is
        // synced and linked (each under its own lock, taken alone).
        let (graph, codes) = std::thread::scope(|scope| {
            let graph = scope.spawn(|| {
                sums::write(&dir.join(GRAPH_FILE), "write the graph", |out| {
                    read(flat).write(&mut { out })
                })
            });
            let codes = write(codes).dump(dir);
            (join(graph), codes)
        });
        Ok(Some(FileSums::from([
            (GRAPH_FILE.to_string(), graph?),
            (codes::SLOTS_FILE.to_string(), codes?),
        ])))
    }

    /// Reads a graph written by [`Index::dump`] once every file matches
    /// its checksum in `sums`. A damaged file is an error, never a panic
    /// or a wrong answer.
    pub fn load_graph(
        dir: &Path,
        sums: &FileSums,
        projection: Arc<Projection>,
        params: GraphParams,
        tombstones: Vec<u64>,
    ) -> Result<Self> {
        // Both files at once, as they were written.
        let (flat, codes) = std::thread::scope(|scope| {
            let flat = scope.spawn(|| {
                sums::read(dir, GRAPH_FILE, sums, |input, len| {
                    let mut bytes = Vec::with_capacity(len as usize);
                    input
                        .read_to_end(&mut bytes)
                        .map_err(Error::file("read the graph", dir.join(GRAPH_FILE)))?;
                    FlatGraph::read(&bytes)
                })
            });
            let codes = if sums.contains_key(codes::OLD_CODES_FILE) {
                tracing::info!("converting the saved re-rank codes to this version's file");
                sums::read(dir, codes::OLD_CODES_FILE, sums, |input, len| {
                    Codes::import(input, len, dir)
                })
            } else {
                Codes::load(dir, sums)
            };
            (join(flat), codes)
        });
        let (flat, codes) = (flat?, codes?);
        if flat.len() > 0 && flat.dim() != projection.out_dim() {
            return Err(Error::Internal(format!(
                "the saved graph holds {}-d points, the projection makes {}-d ones",
                flat.dim(),
                projection.out_dim()
            )));
        }
        Ok(Self::over(
            projection,
            flat,
            params,
            codes,
            tombstones.into_iter().collect(),
        ))
    }

    /// The tombstoned seqs, for saving with a dump.
    pub fn tombstone_list(&self) -> Vec<u64> {
        read(&self.tombstones).iter().copied().collect()
    }

    /// The projection of a graph index.
    pub fn projection(&self) -> Option<&Arc<Projection>> {
        match &self.mode {
            Mode::Exact(_) => None,
            Mode::Graph { projection, .. } => Some(projection),
        }
    }

    /// Adds one record's full features.
    pub fn add(&self, seq: u64, features: &[f32]) {
        match &self.mode {
            Mode::Exact(map) => {
                write(map).insert(seq, features.to_vec());
            }
            Mode::Graph { projection, .. } => {
                self.insert_flat(seq, features, projection.project(features));
            }
        }
    }

    /// Inserts into the graph: the insert is planned under a read guard
    /// (searches go on) and applied under the write guard.
    fn insert_flat(&self, seq: u64, features: &[f32], projected: Vec<f32>) {
        let Mode::Graph {
            params,
            flat,
            inserting,
            codes,
            ..
        } = &self.mode
        else {
            return;
        };
        let mut rng = inserting.lock().unwrap_or_else(|e| e.into_inner());
        write(codes).insert(seq, features);
        let planned = {
            let flat = read(flat);
            let level = flat.level_for(1.0 - rng.random::<f64>());
            flat.plan(seq, projected, level, params.ef_construction)
        };
        write(flat).apply(planned);
    }

    /// Adds many records; in graph mode in parallel batches
    /// ([`FlatGraph::plan_batch`]), each planned under a read guard of the
    /// graph and applied under its write guard, so that searches go on.
    /// Not from a rayon task (see the lock order).
    pub fn add_batch(&self, batch: &[(u64, Vec<f32>)]) {
        match &self.mode {
            Mode::Exact(map) => {
                let mut map = write(map);
                for (seq, features) in batch {
                    map.insert(*seq, features.clone());
                }
            }
            Mode::Graph {
                projection,
                params,
                flat,
                inserting,
                codes,
            } => {
                let mut projected: Vec<(u64, Vec<f32>)> = batch
                    .par_iter()
                    .map(|(seq, f)| (*seq, projection.project(f)))
                    .collect();
                let mut rng = inserting.lock().unwrap_or_else(|e| e.into_inner());
                {
                    let mut codes = write(codes);
                    for (seq, features) in batch {
                        codes.insert(*seq, features);
                    }
                }
                let mut rest = projected.drain(..);
                loop {
                    let plans = {
                        let flat = read(flat);
                        let points: Vec<(u64, Vec<f32>, u8)> = rest
                            .by_ref()
                            .take(flat.batch_size())
                            .map(|(seq, v)| (seq, v, flat.level_for(1.0 - rng.random::<f64>())))
                            .collect();
                        if points.is_empty() {
                            break;
                        }
                        flat.plan_batch(points, params.ef_construction)
                    };
                    write(flat).apply_batch(plans);
                }
            }
        }
    }

    /// Forgets a record (deleted, or replaced by a newer seq).
    pub fn remove(&self, seq: u64) {
        match &self.mode {
            Mode::Exact(map) => {
                // Recorded too, for the graph index that may replace this
                // one (`inherit_tombstones`); an exact index searches its
                // map and reports no tombstones.
                if write(map).remove(&seq).is_some() {
                    write(&self.tombstones).insert(seq);
                }
            }
            Mode::Graph { codes, .. } => {
                write(&self.tombstones).insert(seq);
                write(codes).remove(seq);
            }
        }
    }

    /// Carries over from the index this one replaces the removals that
    /// this one missed: records removed from the old index (its
    /// tombstones, or its exact map's removals) after this one's build had
    /// read them. Only seqs this index holds live become tombstones here;
    /// seqs the build never saw are dropped, or the tombstone count would
    /// never fall and every rebuild would call for another. Tombstones in
    /// `known` (the old index's when the build began) are not carried:
    /// their records were gone from the store before the build read it,
    /// so a build that holds one holds a record the store has again (an
    /// upsert that failed, undone by a reopen of the store).
    pub fn inherit_tombstones(&self, old: &Index, built_upto: u64, known: &HashSet<u64>) {
        // Copied out first: no lock of `old` is held while taking ours.
        let removed: Vec<u64> = read(&old.tombstones)
            .iter()
            .copied()
            .filter(|&s| s <= built_upto && !known.contains(&s))
            .collect();
        for seq in removed {
            let held = match &self.mode {
                Mode::Exact(map) => read(map).contains_key(&seq),
                Mode::Graph { codes, .. } => read(codes).contains(seq),
            };
            if held {
                self.remove(seq);
            }
        }
    }

    /// The seqs of the records held and not removed (none for an exact
    /// index: it is never saved).
    pub fn held_seqs(&self) -> Vec<u64> {
        match &self.mode {
            Mode::Exact(_) => Vec::new(),
            Mode::Graph { codes, .. } => read(codes).seqs(),
        }
    }

    /// The removed points' seqs, now.
    pub fn tombstone_seqs(&self) -> HashSet<u64> {
        read(&self.tombstones).clone()
    }

    /// Points held, tombstones included.
    pub fn size(&self) -> usize {
        match &self.mode {
            Mode::Exact(map) => read(map).len(),
            Mode::Graph { flat, .. } => read(flat).len(),
        }
    }

    /// Whether a re-rank code read back was damaged: the index should be
    /// rebuilt from the store.
    pub fn damaged(&self) -> bool {
        match &self.mode {
            Mode::Exact(_) => false,
            Mode::Graph { codes, .. } => read(codes).damaged(),
        }
    }

    /// Removed points still in the graph (0 in exact mode).
    pub fn tombstones(&self) -> usize {
        match self.mode {
            Mode::Exact(_) => 0,
            Mode::Graph { .. } => read(&self.tombstones).len(),
        }
    }

    /// Up to `n` nearest records to `query` (full, L2-normalised features),
    /// best first, never `exclude`.
    pub fn search(&self, query: &[f32], n: usize, exclude: Option<u64>) -> Vec<Hit> {
        let ef = match &self.mode {
            Mode::Graph { params, .. } => params.ef_search,
            Mode::Exact(_) => 0,
        };
        self.search_ef(query, n, exclude, ef)
    }

    /// [`Index::search`] with the graph's candidate list size set to `ef`
    /// (raised to `n`); for benchmarks sweeping recall against speed.
    pub fn search_ef(&self, query: &[f32], n: usize, exclude: Option<u64>, ef: usize) -> Vec<Hit> {
        match &self.mode {
            Mode::Exact(map) => exact_search(&read(map), query, n, exclude),
            Mode::Graph { projection, .. } => {
                self.search_graph(&projection.project(query), n, exclude, ef)
            }
        }
    }

    /// Re-ranks `hits` (from [`Index::search`]) by the cosine of `query`
    /// (full, L2-normalised features) with each hit's full features, as
    /// held in the 8-bit codes, and keeps the best `keep`, best first. In
    /// exact mode the hits are exact already and are only cut to `keep`.
    /// Hits removed since the search are dropped.
    pub fn rescore(&self, query: &[f32], mut hits: Vec<Hit>, keep: usize) -> Vec<Hit> {
        if let Mode::Graph { codes, .. } = &self.mode {
            let seqs: Vec<u64> = hits.iter().map(|h| h.seq).collect();
            let scored = read(codes).dot_many(query, &seqs);
            hits = hits
                .into_iter()
                .zip(scored)
                .filter_map(|(hit, scored)| match scored {
                    Scored::Dot(similarity) => Some(Hit { similarity, ..hit }),
                    // Kept on its graph score; the engine rebuilds.
                    Scored::Unreadable => Some(hit),
                    Scored::Absent => None,
                })
                .collect();
            hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        }
        hits.truncate(keep);
        hits
    }

    /// [`Index::rescore`] for several views of one image (`queries`): each
    /// hit scored by the best of their cosines with it, in exact mode too
    /// (a hit one view found is scored with the others as well).
    pub fn rescore_best(&self, queries: &[&[f32]], hits: Vec<Hit>, keep: usize) -> Vec<Hit> {
        let mut hits: Vec<Hit> = match &self.mode {
            Mode::Graph { codes, .. } => {
                let seqs: Vec<u64> = hits.iter().map(|h| h.seq).collect();
                let codes = read(codes);
                let scored: Vec<Vec<Scored>> =
                    queries.iter().map(|q| codes.dot_many(q, &seqs)).collect();
                hits.into_iter()
                    .enumerate()
                    .filter_map(|(i, hit)| {
                        let mut best: Option<f32> = None;
                        for view in &scored {
                            match view[i] {
                                Scored::Dot(d) => best = Some(best.map_or(d, |b| b.max(d))),
                                Scored::Absent => return None,
                                // Kept on its graph score; the engine rebuilds.
                                Scored::Unreadable => {}
                            }
                        }
                        Some(Hit {
                            similarity: best.unwrap_or(hit.similarity),
                            ..hit
                        })
                    })
                    .collect()
            }
            Mode::Exact(map) => {
                let map = read(map);
                hits.into_iter()
                    .filter_map(|hit| {
                        let stored = map.get(&hit.seq)?;
                        let similarity = queries
                            .iter()
                            .map(|q| dot(q, stored))
                            .fold(f32::NEG_INFINITY, f32::max);
                        Some(Hit { similarity, ..hit })
                    })
                    .collect()
            }
        };
        hits.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then(a.seq.cmp(&b.seq))
        });
        hits.truncate(keep);
        hits
    }

    /// Graph search for a query already projected (and normalised) by this
    /// index's projection; empty in exact mode. For benchmarks that time the
    /// graph alone against other HNSW libraries on the same vectors.
    pub fn search_projected(&self, projected: &[f32], n: usize, ef: usize) -> Vec<Hit> {
        match &self.mode {
            Mode::Exact(_) => Vec::new(),
            Mode::Graph { .. } => self.search_graph(projected, n, None, ef),
        }
    }

    fn search_graph(&self, q: &[f32], n: usize, exclude: Option<u64>, ef: usize) -> Vec<Hit> {
        let Mode::Graph { flat, .. } = &self.mode else {
            return Vec::new();
        };
        let ef = ef.max(n);
        let tombstones = read(&self.tombstones);
        let found: Vec<(f32, u64)> = if tombstones.is_empty() {
            // Nothing to filter in the search (it then looks no seq up):
            // one more, for the one excluded.
            let mut found = read(flat).search(q, ef + usize::from(exclude.is_some()), None);
            found.retain(|&(_, seq)| Some(seq) != exclude);
            found
        } else {
            let keep = |seq: u64| Some(seq) != exclude && !tombstones.contains(&seq);
            read(flat).search(q, ef, Some(&keep))
        };
        let mut seen = HashSet::new();
        found
            .into_iter()
            // A point re-added during a rebuild may appear twice: keep its
            // first (best) place.
            .filter(|(_, seq)| seen.insert(*seq))
            .take(n)
            .map(|(similarity, seq)| Hit { seq, similarity })
            .collect()
    }
}

fn exact_search(
    map: &HashMap<u64, Vec<f32>>,
    query: &[f32],
    n: usize,
    exclude: Option<u64>,
) -> Vec<Hit> {
    let mut hits: Vec<Hit> = map
        .iter()
        .filter(|(seq, _)| Some(**seq) != exclude)
        .map(|(&seq, f)| Hit {
            seq,
            similarity: dot(query, f),
        })
        .collect();
    let by_similarity = |a: &Hit, b: &Hit| {
        b.similarity
            .total_cmp(&a.similarity)
            .then(a.seq.cmp(&b.seq))
    };
    if hits.len() > n {
        hits.select_nth_unstable_by(n, by_similarity);
        hits.truncate(n);
    }
    hits.sort_by(by_similarity);
    hits
}

/// Locks never stay poisoned here: every critical section is a plain
/// collection update that cannot leave the collection half-changed.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn points(n: usize, dim: usize) -> Vec<(u64, Vec<f32>)> {
        let mut rng = StdRng::seed_from_u64(3);
        (1..=n as u64)
            .map(|seq| {
                (
                    seq,
                    unit((0..dim).map(|_| rng.random_range(0.0..1.0)).collect()),
                )
            })
            .collect()
    }

    const PARAMS: GraphParams = GraphParams {
        m: 16,
        ef_construction: 100,
        ef_search: 64,
    };

    /// A 16-component PCA fitted on all of `pts`.
    fn projection_of(pts: &[(u64, Vec<f32>)]) -> Arc<Projection> {
        let samples: Vec<Vec<f32>> = pts.iter().map(|(_, v)| v.clone()).collect();
        Arc::new(Projection::fit(&samples, 16, samples.len()).expect("fit"))
    }

    fn fill(index: &Index, pts: &[(u64, Vec<f32>)]) {
        index.add_batch(pts);
    }

    #[test]
    fn exact_mode_finds_itself_and_honours_exclude_and_remove() {
        let pts = points(50, 16);
        let index = Index::exact();
        fill(&index, &pts);
        let hits = index.search(&pts[7].1, 3, None);
        assert_eq!(hits[0].seq, pts[7].0);
        assert!((hits[0].similarity - 1.0).abs() < 1e-5);
        assert!(hits.windows(2).all(|w| w[0].similarity >= w[1].similarity));
        assert_ne!(index.search(&pts[7].1, 3, Some(pts[7].0))[0].seq, pts[7].0);
        index.remove(pts[7].0);
        assert_ne!(index.search(&pts[7].1, 1, None)[0].seq, pts[7].0);
        assert_eq!(index.size(), 49);
    }

    #[test]
    fn a_built_graph_takes_inserts_and_a_saved_one_loads_the_same() {
        let pts = points(700, 32);
        let index = Index::graph(projection_of(&pts), PARAMS, pts.len());
        let (old, new) = pts.split_at(400);
        fill(&index, old);
        assert_eq!(index.size(), 400);
        // Added one by one, as the engine's inserts are.
        for (seq, v) in new {
            index.add(*seq, v);
        }
        assert_eq!(index.size(), 700);
        let finds_itself = |index: &Index| {
            pts.iter()
                .filter(|(seq, v)| index.search(v, 1, None).first().map(|h| h.seq) == Some(*seq))
                .count()
        };
        assert!(finds_itself(&index) >= 696);
        let hits = index.search(&pts[500].1, 10, Some(pts[500].0));
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.seq != pts[500].0));
        assert!(hits.windows(2).all(|w| w[0].similarity >= w[1].similarity));
        index.remove(pts[600].0);
        index.remove(pts[10].0);
        for gone in [600, 10] {
            assert!(index
                .search(&pts[gone].1, 10, None)
                .iter()
                .all(|h| h.seq != pts[gone].0));
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let sums = index.dump(dir.path()).expect("dump").expect("a graph");
        let projection = index.projection().expect("graph").clone();
        let loaded = Index::load_graph(
            dir.path(),
            &sums,
            projection.clone(),
            PARAMS,
            index.tombstone_list(),
        )
        .expect("load");
        assert_eq!((loaded.size(), loaded.tombstones()), (700, 2));
        for (_, v) in pts.iter().step_by(7) {
            let (a, b) = (index.search(v, 10, None), loaded.search(v, 10, None));
            assert_eq!(a, b);
            assert_eq!(index.rescore(v, a, 5), loaded.rescore(v, b, 5));
        }
        // It takes inserts too.
        loaded.add(10_000, &pts[3].1);
        assert_eq!(loaded.search(&pts[3].1, 2, None).len(), 2);

        // A damaged graph file is refused, not read.
        let graph = dir.path().join(GRAPH_FILE);
        let mut bytes = std::fs::read(&graph).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&graph, bytes).expect("write");
        let refused = Index::load_graph(dir.path(), &sums, projection, PARAMS, Vec::new());
        assert!(refused.is_err());
    }

    #[test]
    fn rescore_orders_by_full_features_and_drops_removed_points() {
        let pts = points(300, 32);
        let index = Index::graph(projection_of(&pts), PARAMS, pts.len());
        fill(&index, &pts);
        let query = &pts[42].1;
        let hits = index.search(query, 40, None);
        index.remove(hits[1].seq);
        let kept = index.rescore(query, hits.clone(), 10);
        assert_eq!(kept.len(), 10);
        assert_eq!(kept[0].seq, pts[42].0);
        assert!(
            kept.iter().all(|h| h.seq != hits[1].seq),
            "removed point kept"
        );
        assert!(kept.windows(2).all(|w| w[0].similarity >= w[1].similarity));
        // Scores are the full-feature cosines (to 8-bit precision), and the
        // ten kept are the ten best of the live hits by that measure.
        let full = |seq: u64| dot(query, &pts[seq as usize - 1].1);
        for hit in &kept {
            assert!((hit.similarity - full(hit.seq)).abs() < 2e-3);
        }
        let mut best: Vec<f32> = hits
            .iter()
            .filter(|h| h.seq != hits[1].seq)
            .map(|h| full(h.seq))
            .collect();
        best.sort_by(|a, b| b.total_cmp(a));
        assert!(full(kept[9].seq) >= best[9] - 2e-3);

        // Exact mode: the hits are exact already; only the cut applies.
        let exact = Index::exact();
        fill(&exact, &pts);
        let hits = exact.search(query, 20, None);
        assert_eq!(exact.rescore(query, hits.clone(), 5), hits[..5].to_vec());
    }

    #[test]
    fn a_rebuilt_index_inherits_only_the_removals_it_missed() {
        let pts = points(300, 32);
        let projection = projection_of(&pts);
        let old = Index::graph(projection.clone(), PARAMS, pts.len());
        fill(&old, &pts);
        // Removed before the rebuild read the store: the new graph never
        // holds them, so they must not count as its tombstones (or the
        // tombstone fraction that called for the rebuild would never fall).
        for (seq, _) in &pts[..60] {
            old.remove(*seq);
        }
        let rebuilt = Index::graph(projection, PARAMS, pts.len());
        fill(&rebuilt, &pts[60..]);
        // Removed from the old index after the rebuild read them.
        old.remove(pts[100].0);
        old.remove(pts[200].0);
        rebuilt.inherit_tombstones(&old, pts.last().expect("points").0, &HashSet::new());
        assert_eq!(rebuilt.tombstones(), 2);
        for gone in [100, 200] {
            assert!(rebuilt
                .search(&pts[gone].1, 10, None)
                .iter()
                .all(|h| h.seq != pts[gone].0));
        }

        // From an exact index (the first PCA fit) as well.
        let exact = Index::exact();
        fill(&exact, &pts);
        exact.remove(pts[0].0);
        exact.remove(pts[150].0);
        assert_eq!(exact.tombstones(), 0, "an exact index reports none");
        let first = Index::graph(projection_of(&pts), PARAMS, pts.len());
        fill(&first, &pts[1..]);
        first.inherit_tombstones(&exact, pts.last().expect("points").0, &HashSet::new());
        assert_eq!(first.tombstones(), 1);
        assert!(first
            .search(&pts[150].1, 10, None)
            .iter()
            .all(|h| h.seq != pts[150].0));
    }

    #[test]
    fn graph_mode_finds_itself_and_skips_tombstones() {
        let pts = points(400, 32);
        let index = Index::graph(projection_of(&pts), PARAMS, pts.len());
        fill(&index, &pts);
        let mut found = 0;
        for (seq, v) in &pts {
            if index.search(v, 1, None).first().map(|h| h.seq) == Some(*seq) {
                found += 1;
            }
        }
        assert!(found >= 396, "only {found} of 400 points found themselves");
        index.remove(pts[0].0);
        assert!(index
            .search(&pts[0].1, 10, None)
            .iter()
            .all(|h| h.seq != pts[0].0));
        assert_eq!(index.tombstones(), 1);
        assert_eq!(index.size(), 400);

        // Dumped and loaded back, it answers the same.
        let dir = tempfile::tempdir().expect("tempdir");
        let sums = index.dump(dir.path()).expect("dump").expect("a graph");
        let projection = index.projection().expect("graph").clone();
        let load = |sums: &FileSums| {
            Index::load_graph(
                dir.path(),
                sums,
                projection.clone(),
                PARAMS,
                index.tombstone_list(),
            )
        };
        let loaded = load(&sums).expect("load");
        assert_eq!(loaded.size(), 400);
        assert_eq!(loaded.tombstones(), 1);
        for (_, v) in pts.iter().take(20) {
            assert_eq!(loaded.search(v, 5, None), index.search(v, 5, None));
        }

        // Damaged or unlisted files are refused before they are parsed.
        assert!(load(&FileSums::new()).is_err());
        for name in sums.keys() {
            let path = dir.path().join(name);
            let whole = std::fs::read(&path).expect("read");
            std::fs::write(&path, &whole[..whole.len() / 2]).expect("truncate");
            let err = load(&sums).err().expect("a truncated file is refused");
            assert!(err.to_string().contains("damaged"), "{err}");
            let mut garbage = whole.clone();
            let middle = garbage.len() / 2;
            garbage[middle] ^= 0x5a;
            std::fs::write(&path, &garbage).expect("overwrite");
            assert!(load(&sums).is_err(), "a changed byte in {name} is refused");
            std::fs::write(&path, &whole).expect("restore");
        }
        load(&sums).expect("whole again");
    }
}
