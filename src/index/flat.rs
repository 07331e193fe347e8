//! A read-only copy of the HNSW graph, laid out for search speed.
//!
//! hnsw_rs builds, extends and saves the graph, but its search allocates an
//! `Arc` per candidate, keeps visited points in a SipHash map of `Arc`
//! clones and takes a lock per expanded node: on the same 100-d vectors it
//! answered about a quarter of hnswlib's queries per second
//! (`cargo bench --bench index`). This module copies the graph into flat
//! arrays (vectors contiguous, dense `u32` ids, each point's layer-0
//! neighbours one run of a shared array) and searches it the way hnswlib
//! does: a per-thread visited array stamped with a generation number, two
//! binary heaps of (similarity, id), and a prefetch of the next neighbour's
//! vector. The index keeps the points added after the copy aside and scans
//! them exactly until the next copy (`super::SearchCopy`).

use std::{
    cell::RefCell,
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, HashMap},
};

use hnsw_rs::prelude::{DistDot, Hnsw};

use crate::vector::fastest_dot;

/// The copy: every point's projected vector, seq and neighbour lists.
pub struct FlatGraph {
    dim: usize,
    /// Point `i`'s vector is `vectors[i * dim..(i + 1) * dim]`.
    vectors: Vec<f32>,
    seqs: Vec<u64>,
    /// Point `i`'s layer-0 neighbours are `links[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    links: Vec<u32>,
    /// Neighbours on layers 1 and up, for the few points that reach them:
    /// `upper[&i][layer - 1]`.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    entry: u32,
    top_layer: u8,
    dot: fn(&[f32], &[f32]) -> f32,
}

impl FlatGraph {
    /// Copies `graph`; None when it holds no point. Points inserted while
    /// the copy is made may or may not be in it (the caller keeps them
    /// aside either way); links to points missing from the copy are dropped.
    ///
    /// Safe while other threads insert: see [`point_handles`].
    pub fn copy_of(graph: &Hnsw<'static, f32, DistDot>) -> Option<Self> {
        let points = point_handles(graph);
        let first = points.first()?;
        let dim = first.get_v().len();
        let ids: HashMap<(u8, i32), u32> = points
            .iter()
            .zip(0u32..)
            .map(|(p, i)| (id_key(p.get_point_id()), i))
            .collect();
        let resolve = |layer: &[hnsw_rs::prelude::Neighbour]| -> Vec<u32> {
            layer
                .iter()
                .filter_map(|nb| ids.get(&id_key(nb.p_id)).copied())
                .collect()
        };
        let mut flat = FlatGraph {
            dim,
            vectors: Vec::with_capacity(points.len() * dim),
            seqs: Vec::with_capacity(points.len()),
            offsets: Vec::with_capacity(points.len() + 1),
            links: Vec::new(),
            upper: HashMap::new(),
            entry: 0,
            top_layer: first.get_point_id().0,
            dot: fastest_dot(),
        };
        flat.offsets.push(0);
        for (p, i) in points.iter().zip(0u32..) {
            flat.vectors.extend_from_slice(p.get_v());
            flat.seqs.push(p.get_origin_id() as u64);
            let layers = p.get_neighborhood_id();
            if let Some(layer0) = layers.first() {
                flat.links.extend(resolve(layer0));
            }
            flat.offsets.push(flat.links.len() as u32);
            let level = p.get_point_id().0;
            if level > 0 {
                flat.upper
                    .insert(i, layers.iter().skip(1).map(|l| resolve(l)).collect());
            }
            if level > flat.top_layer {
                (flat.entry, flat.top_layer) = (i, level);
            }
        }
        Some(flat)
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// The dot product this copy uses (AVX2 + FMA where the CPU has them).
    pub fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        (self.dot)(a, b)
    }

    /// Up to `ef` points `keep` accepts, most similar to `q` (a unit vector)
    /// first, as (similarity, seq).
    pub fn search(&self, q: &[f32], ef: usize, keep: &dyn Fn(u64) -> bool) -> Vec<(f32, u64)> {
        let ef = ef.max(1);
        let (start, start_sim) = self.descend(q);
        VISITED.with(|visited| {
            let mut visited = visited.borrow_mut();
            let stamp = visited.begin(self.len());
            let marks = &mut visited.marks;
            let mut candidates = BinaryHeap::with_capacity(4 * ef);
            let mut results: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(ef + 1);
            marks[start as usize] = stamp;
            candidates.push(Scored(start_sim, start));
            if keep(self.seqs[start as usize]) {
                results.push(Reverse(Scored(start_sim, start)));
            }
            while let Some(Scored(sim, c)) = candidates.pop() {
                let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0);
                if results.len() >= ef && sim < worst {
                    break;
                }
                let neighbours = self.neighbours(c);
                for (k, &nb) in neighbours.iter().enumerate() {
                    if let Some(&next) = neighbours.get(k + 1) {
                        prefetch(self.vector(next));
                    }
                    let mark = &mut marks[nb as usize];
                    if *mark == stamp {
                        continue;
                    }
                    *mark = stamp;
                    let s = self.dot(q, self.vector(nb));
                    let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0);
                    if results.len() < ef || s > worst {
                        candidates.push(Scored(s, nb));
                        if keep(self.seqs[nb as usize]) {
                            results.push(Reverse(Scored(s, nb)));
                            if results.len() > ef {
                                results.pop();
                            }
                        }
                    }
                }
            }
            let mut out: Vec<(f32, u64)> = results
                .into_iter()
                .map(|Reverse(Scored(s, i))| (s, self.seqs[i as usize]))
                .collect();
            out.sort_by(|a, b| b.0.total_cmp(&a.0));
            out
        })
    }

    /// Greedy descent through the upper layers to a layer-0 starting point.
    fn descend(&self, q: &[f32]) -> (u32, f32) {
        let mut cur = self.entry;
        let mut cur_sim = self.dot(q, self.vector(cur));
        for layer in (1..=self.top_layer as usize).rev() {
            loop {
                let mut moved = false;
                let lists = self.upper.get(&cur);
                for &nb in lists.and_then(|l| l.get(layer - 1)).into_iter().flatten() {
                    let s = self.dot(q, self.vector(nb));
                    if s > cur_sim {
                        (cur, cur_sim, moved) = (nb, s, true);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        (cur, cur_sim)
    }

    fn vector(&self, i: u32) -> &[f32] {
        let at = i as usize * self.dim;
        &self.vectors[at..at + self.dim]
    }

    fn neighbours(&self, i: u32) -> &[u32] {
        let (from, to) = (self.offsets[i as usize], self.offsets[i as usize + 1]);
        &self.links[from as usize..to as usize]
    }
}

/// A handle on every point of `graph` whose insertion has finished, layer
/// 0 first.
///
/// hnsw_rs keeps its points in one `parking_lot::RwLock` (`points_by_layer`)
/// that every insert takes for writing. Its whole-graph iterator
/// (`IntoIterator for &PointIndexation`) holds a read guard on that lock for
/// its whole life and takes a *second* read guard each time it moves up a
/// layer; parking_lot's lock is fair to writers, so once an insert queues
/// for the write lock that second read waits for the writer, which waits
/// for the first read: a deadlock (it hung the daemon under bulk inserts).
///
/// Here each layer is read through `get_layer_iterator`, which takes one
/// read guard in its constructor and none in `next` (hnsw_rs 0.3.5, pinned
/// in Cargo.toml), and the guard is held only while the layer's `Arc`s are
/// cloned: no other lock is taken under it, so an insert waits at most that
/// long. A point's neighbour lists are read afterwards, one point's lock at
/// a time, with no layer guard held.
///
/// The top layer is read from the entry point *before* the layers: a point
/// is made the entry point only at the end of its insertion, so every point
/// whose insertion had finished when this was called lies at or below it.
fn point_handles(graph: &Hnsw<'static, f32, DistDot>) -> Vec<PointHandle> {
    let indexation = graph.get_point_indexation();
    let top = indexation.get_max_level_observed() as usize;
    let mut points = Vec::with_capacity(indexation.get_nb_point());
    for layer in 0..=top {
        // One statement: the layer's read guard lives only while it runs.
        points.extend(indexation.get_layer_iterator(layer));
    }
    points
}

type PointHandle = std::sync::Arc<hnsw_rs::hnsw::Point<'static, f32>>;

fn id_key(p: hnsw_rs::prelude::PointId) -> (u8, i32) {
    (p.0, p.1)
}

/// A similarity and a point, ordered by similarity (then id, for a total order).
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Which points the current search has seen: `marks[i] == stamp`. A new
/// search takes the next stamp instead of clearing the array.
#[derive(Default)]
struct Visited {
    stamp: u32,
    marks: Vec<u32>,
}

impl Visited {
    fn begin(&mut self, n: usize) -> u32 {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        self.stamp
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

/// Asks the CPU to start loading `v` (its first cache line) into cache.
#[inline]
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and reads nothing
    // into the program. SSE is part of the x86_64 baseline.
    #[allow(unused_unsafe)]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::dot as portable_dot;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn unit(mut v: Vec<f32>) -> Vec<f32> {
        let n = portable_dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    fn random_points(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| unit((0..dim).map(|_| rng.random_range(-1.0..1.0)).collect()))
            .collect()
    }

    fn graph_of(points: &[Vec<f32>]) -> Hnsw<'static, f32, DistDot> {
        let graph = Hnsw::new(16, points.len(), 16, 100, DistDot {});
        let refs: Vec<(&[f32], usize)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i + 1))
            .collect();
        graph.parallel_insert_slice(&refs);
        graph
    }

    fn exact_top(points: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u64> {
        let mut scored: Vec<(f32, u64)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (portable_dot(q, p), i as u64 + 1))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.iter().take(k).map(|s| s.1).collect()
    }

    #[test]
    fn copy_holds_every_point_and_finds_each_first() {
        let points = random_points(1500, 24, 2);
        let flat = FlatGraph::copy_of(&graph_of(&points)).expect("points");
        assert_eq!(flat.len(), points.len());
        let misses = points
            .iter()
            .enumerate()
            .filter(|(i, p)| flat.search(p, 32, &|_| true)[0].1 != *i as u64 + 1)
            .count();
        assert!(misses <= 3, "{misses} points did not find themselves");
    }

    #[test]
    fn recall_is_at_least_hnsw_rs_own() {
        let points = random_points(3000, 32, 3);
        let queries = random_points(200, 32, 4);
        let graph = graph_of(&points);
        let flat = FlatGraph::copy_of(&graph).expect("points");
        let (mut ours, mut theirs) = (0, 0);
        for q in &queries {
            let truth = exact_top(&points, q, 10);
            let found: Vec<u64> = flat
                .search(q, 48, &|_| true)
                .iter()
                .take(10)
                .map(|h| h.1)
                .collect();
            let found_rs: Vec<u64> = graph
                .search(q, 10, 48)
                .iter()
                .map(|n| n.d_id as u64)
                .collect();
            ours += found.iter().filter(|s| truth.contains(s)).count();
            theirs += found_rs.iter().filter(|s| truth.contains(s)).count();
        }
        let total = (queries.len() * 10) as f64;
        let (ours, theirs) = (ours as f64 / total, theirs as f64 / total);
        assert!(
            ours >= 0.9 && ours >= theirs - 0.01,
            "recall {ours} vs hnsw_rs {theirs}"
        );
    }

    #[test]
    fn filtered_points_never_come_back() {
        let points = random_points(800, 16, 5);
        let flat = FlatGraph::copy_of(&graph_of(&points)).expect("points");
        let keep = |seq: u64| !seq.is_multiple_of(3);
        for q in points.iter().take(50) {
            let found = flat.search(q, 20, &keep);
            assert_eq!(found.len(), 20);
            assert!(found.iter().all(|h| keep(h.1)));
            assert!(found.windows(2).all(|w| w[0].0 >= w[1].0));
        }
    }
}
