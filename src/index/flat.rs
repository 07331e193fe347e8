//! The search graph: HNSW over the projections in flat arrays, built and
//! grown in place, saved and loaded as one file.
//!
//! Vectors are contiguous and kept at half precision (`super::f16`: half
//! the cache lines a search pulls in), points are dense `u32` ids, and
//! each point's layer-0 neighbours sit in a fixed run of `2 M` slots: about
//! 0.4 KB a point at 100-d, written and read back as plain arrays.
//!
//! Searches run the way hnswlib's do (a per-thread visited array stamped
//! with a generation number, two binary heaps of (similarity, id)) and
//! score a point's unseen neighbours the way FAISS does: four at a time
//! (AVX-512 or AVX2 where the CPU has them), the next four's vectors and
//! the next candidate's list prefetched meanwhile. Inserts use hnswlib's
//! algorithm too (random level, beam search of width `ef_construction` on
//! each layer, `M` neighbours chosen by the neighbour-selection heuristic,
//! lists over their cap, `2 M` on layer 0, pruned by the same heuristic),
//! split in two so that searches are never held up by one: [`FlatGraph::plan`] works out
//! every change on a shared reference, [`FlatGraph::apply`] writes them
//! (a few copies of neighbour lists). The index serialises inserts, so no
//! change lands between an insert's plan and its apply (`super::Index`).
//!
//! A build inserts many points at once ([`FlatGraph::plan_batch`]): the
//! plans of a small batch run in parallel against the graph as it stands,
//! then are applied in order, a neighbour list that an earlier plan of the
//! same batch changed being merged again rather than overwritten. The
//! points of one batch do not see each other while planned, as threads
//! inserting at once into hnswlib's graph barely do; the first points of
//! a graph go in one at a time. hnsw_rs built the graph before (its
//! parallel insert, then a copy into these arrays): 4-5x hnswlib's build
//! time for the same graph (`cargo bench --bench index`, which keeps it as
//! a peer row).

use std::{
    cell::RefCell,
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, HashMap, HashSet},
    io::Write,
};

use rayon::prelude::*;

use super::f16;
use crate::error::{Error, Result};

/// First bytes of a saved graph: vectors at half precision, padded
/// ([`f16::stride`]).
const MAGIC: &[u8; 8] = b"LKGRAPH2";
/// First bytes of a graph saved before 2026-12-06, vectors as `f32`s: read
/// and narrowed, so an upgrade keeps its saved graph.
const MAGIC_F32: &[u8; 8] = b"LKGRAPH1";
/// Layers a point may reach.
pub const MAX_LAYERS: usize = 16;
/// A build inserts its first points one at a time, until the graph holds
/// this many: while it is small, points planned together would miss too
/// large a share of their true neighbours (each other).
const SERIAL_UNTIL: usize = 2_000;
/// Points planned together per thread, once the graph is past
/// [`SERIAL_UNTIL`]: enough to keep every thread busy between two applies,
/// few against the graph, so that the batch's points missing each other
/// costs no recall (hnswlib's threads miss as many).
const PLANS_PER_THREAD: usize = 8;

/// The graph: every point's projected vector, seq and neighbour lists.
pub struct FlatGraph {
    dim: usize,
    /// Most neighbours a point keeps on layers 1 and up; `2 m` on layer 0.
    m: usize,
    /// Point `i`'s vector, at half precision and padded, is
    /// `vectors[i * stride..(i + 1) * stride]` (see [`f16`]).
    vectors: Vec<u16>,
    /// `dim` rounded up to [`f16::LANES`].
    stride: usize,
    seqs: Vec<u64>,
    /// Point `i`'s layer-0 neighbours are the first `counts[i]` of
    /// `links[i * 2m..(i + 1) * 2m]`.
    links: Vec<u32>,
    counts: Vec<u16>,
    /// Neighbours on layers 1 and up, for the few points that reach them:
    /// `upper[&i][layer - 1]`.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    entry: u32,
    top_layer: u8,
    dot: f16::Dot,
    dot4: f16::Dot4,
}

/// An insert worked out by [`FlatGraph::plan`], for [`FlatGraph::apply`].
pub struct Planned {
    seq: u64,
    /// At half precision, padded, as the graph keeps it.
    vector: Vec<u16>,
    /// The id the point gets: the graph's length when planned.
    id: u32,
    level: u8,
    /// The point's own neighbours, layer 0 first, up to its level.
    own: Vec<Vec<u32>>,
    /// Neighbour lists that change: (point, layer, new list).
    changed: Vec<(u32, u8, Vec<u32>)>,
}

impl FlatGraph {
    /// An empty graph of `dim`-wide vectors keeping `m` neighbours a point
    /// (`2 m` on layer 0), with room for `capacity` points.
    pub fn new(dim: usize, m: usize, capacity: usize) -> Self {
        let m = m.clamp(1, u16::MAX as usize / 2);
        let stride = f16::stride(dim);
        FlatGraph {
            dim,
            m,
            vectors: Vec::with_capacity(capacity.saturating_mul(stride)),
            stride,
            seqs: Vec::with_capacity(capacity),
            links: Vec::with_capacity(capacity.saturating_mul(2 * m)),
            counts: Vec::with_capacity(capacity),
            upper: HashMap::new(),
            entry: 0,
            top_layer: 0,
            dot: f16::fastest_dot(),
            dot4: f16::fastest_dot4(),
        }
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Width of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The dot product of `q` with a stored vector (AVX-512 or AVX2 where
    /// the CPU has them).
    fn dot(&self, q: &[f32], v: &[u16]) -> f32 {
        (self.dot)(q, v)
    }

    /// The layer a new point reaches, from `uniform` in (0, 1]: hnswlib's
    /// `floor(-ln(u) / ln(M))`.
    pub fn level_for(&self, uniform: f64) -> u8 {
        let level = -uniform.max(f64::MIN_POSITIVE).ln() / (self.m.max(2) as f64).ln();
        (level as usize).min(MAX_LAYERS - 1) as u8
    }

    /// Works out the insert of `vector` (projected, unit length) as `seq`
    /// reaching `level`: its neighbours on each layer, found by a search
    /// of width `ef`, and the lists of those neighbours that gain it
    /// (pruned by the heuristic when over their cap).
    pub fn plan(&self, seq: u64, vector: Vec<f32>, level: u8, ef: usize) -> Planned {
        self.plan_as(self.len() as u32, seq, vector, level, ef)
    }

    /// [`FlatGraph::plan`], for the point that will get id `id`.
    fn plan_as(&self, id: u32, seq: u64, vector: Vec<f32>, level: u8, ef: usize) -> Planned {
        let narrow = f16::narrow(&vector);
        let mut planned = Planned {
            seq,
            vector: Vec::new(),
            id,
            level,
            own: vec![Vec::new(); level as usize + 1],
            changed: Vec::new(),
        };
        if self.len() == 0 {
            planned.vector = narrow;
            return planned;
        }
        let q = vector.as_slice();
        let mut nearest = Scored(self.dot(q, self.vector(self.entry)), self.entry);
        for layer in (level as usize + 1..=self.top_layer as usize).rev() {
            nearest = self.greedy(q, nearest, layer);
        }
        let mut starts = vec![nearest];
        for layer in (0..=(level.min(self.top_layer)) as usize).rev() {
            let found = self.search_layer(q, &starts, ef.max(self.m), layer, None);
            // M neighbours on every layer, as hnswlib chooses; a list may
            // grow to its cap (2 M on layer 0) as later points link to it.
            let chosen = self.select(&found, self.m, |i| self.vector(i));
            for &nb in &chosen {
                let vector_of = |i: u32| {
                    if i == id {
                        narrow.as_slice()
                    } else {
                        self.vector(i)
                    }
                };
                let list = self.joined(nb, layer, id, vector_of);
                planned.changed.push((nb, layer as u8, list));
            }
            planned.own[layer] = chosen;
            starts = found;
        }
        planned.vector = narrow;
        planned
    }

    /// Writes a planned insert. It must be the next change to this graph
    /// after [`FlatGraph::plan`] (the index serialises inserts).
    pub fn apply(&mut self, planned: Planned) {
        self.apply_merging(planned, &mut HashSet::new());
    }

    /// How many points a build plans together next ([`FlatGraph::plan_batch`]).
    pub fn batch_size(&self) -> usize {
        if self.len() < SERIAL_UNTIL {
            1
        } else {
            PLANS_PER_THREAD * rayon::current_num_threads()
        }
    }

    /// Plans the inserts of `points` (seq, projected unit vector, level),
    /// in parallel, each against the graph as it stands, as the next ids
    /// in order; [`FlatGraph::apply_batch`] writes them. Runs on rayon's
    /// pool and takes no lock.
    pub fn plan_batch(&self, points: Vec<(u64, Vec<f32>, u8)>, ef: usize) -> Vec<Planned> {
        let first = self.len() as u32;
        points
            .into_par_iter()
            .enumerate()
            .map(|(j, (seq, vector, level))| self.plan_as(first + j as u32, seq, vector, level, ef))
            .collect()
    }

    /// Writes the plans of one [`FlatGraph::plan_batch`], in order: a
    /// neighbour list that an earlier plan of the batch changed gets the
    /// new point merged in again (and pruned, when over its cap) instead
    /// of the list that plan worked out, which would drop the earlier one.
    pub fn apply_batch(&mut self, plans: Vec<Planned>) {
        let mut touched = HashSet::new();
        for planned in plans {
            self.apply_merging(planned, &mut touched);
        }
    }

    /// [`FlatGraph::apply`], where the lists in `touched` (point, layer)
    /// changed since the plan was made; adds those this plan changes.
    fn apply_merging(&mut self, planned: Planned, touched: &mut HashSet<(u32, u8)>) {
        assert_eq!(planned.id as usize, self.len(), "a stale insert plan");
        let Planned {
            seq,
            vector,
            id,
            level,
            own,
            changed,
        } = planned;
        let was_empty = self.len() == 0;
        self.vectors.extend_from_slice(&vector);
        self.seqs.push(seq);
        self.links.resize(self.links.len() + 2 * self.m, 0);
        self.counts.push(0);
        if level > 0 {
            self.upper.insert(id, own[1..].to_vec());
        }
        self.set_links(id, 0, &own[0]);
        for (point, layer, list) in changed {
            let list = if touched.insert((point, layer)) {
                list
            } else {
                self.joined(point, layer as usize, id, |i| self.vector(i))
            };
            self.set_links(point, layer as usize, &list);
        }
        if was_empty || level > self.top_layer {
            (self.entry, self.top_layer) = (id, level);
        }
    }

    /// `point`'s list on `layer` as it stands, with `id` added; pruned by
    /// the heuristic when that is over the cap. `vector_of` gives every
    /// point's vector, `id`'s included (not yet in the graph while planned).
    fn joined<'a>(
        &'a self,
        point: u32,
        layer: usize,
        id: u32,
        vector_of: impl Fn(u32) -> &'a [u16],
    ) -> Vec<u32> {
        let mut list = self.layer_links(point, layer).to_vec();
        list.push(id);
        let cap = self.cap(layer);
        if list.len() <= cap {
            return list;
        }
        let mut base = Vec::with_capacity(self.dim);
        f16::widen(self.vector(point), self.dim, &mut base);
        let mut candidates: Vec<Scored> = list
            .iter()
            .map(|&c| Scored(self.dot(&base, vector_of(c)), c))
            .collect();
        candidates.sort_by(|a, b| b.cmp(a));
        self.select(&candidates, cap, vector_of)
    }

    /// Up to `ef` points `keep` accepts (all when `None`), most similar to
    /// `q` (a unit vector) first, as (similarity, seq).
    pub fn search(
        &self,
        q: &[f32],
        ef: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<(f32, u64)> {
        if self.len() == 0 {
            return Vec::new();
        }
        let mut start = Scored(self.dot(q, self.vector(self.entry)), self.entry);
        for layer in (1..=self.top_layer as usize).rev() {
            start = self.greedy(q, start, layer);
        }
        self.search_layer(q, &[start], ef.max(1), 0, keep)
            .into_iter()
            .map(|Scored(s, i)| (s, self.seqs[i as usize]))
            .collect()
    }

    /// Greedy walk on `layer` from `from` to the point nearest `q` there.
    fn greedy(&self, q: &[f32], from: Scored, layer: usize) -> Scored {
        let mut best = from;
        loop {
            let mut moved = false;
            for &nb in self.layer_links(best.1, layer) {
                let s = self.dot(q, self.vector(nb));
                if s > best.0 {
                    (best, moved) = (Scored(s, nb), true);
                }
            }
            if !moved {
                return best;
            }
        }
    }

    /// Beam search of width `ef` on `layer` from `starts`: up to `ef`
    /// points whose seq `keep` accepts (all when `None`: no seq is looked
    /// up), best first. Points it refuses still lead the search on (inserts
    /// keep every point: removed ones still carry the graph).
    fn search_layer(
        &self,
        q: &[f32],
        starts: &[Scored],
        ef: usize,
        layer: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Scored> {
        let keep = |i: u32| keep.is_none_or(|keep| keep(self.seqs[i as usize]));
        VISITED.with(|visited| {
            let mut visited = visited.borrow_mut();
            let stamp = visited.begin(self.len());
            let Visited { marks, fresh, .. } = &mut *visited;
            let mut candidates: BinaryHeap<Scored> = BinaryHeap::with_capacity(4 * ef);
            let mut results: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(ef + 1);
            for &s in starts {
                if marks[s.1 as usize] != stamp {
                    marks[s.1 as usize] = stamp;
                    candidates.push(s);
                    if keep(s.1) {
                        results.push(Reverse(s));
                    }
                }
            }
            while results.len() > ef {
                results.pop();
            }
            while let Some(Scored(sim, c)) = candidates.pop() {
                let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0);
                if results.len() >= ef && sim < worst {
                    break;
                }
                if let Some(next) = candidates.peek() {
                    // Likely the next point expanded: its list on its way.
                    self.prefetch_links(next.1, layer);
                }
                // The neighbours not seen yet, then their similarities four
                // at a time, the next four's vectors on their way into the
                // cache meanwhile (FAISS's order of work).
                fresh.clear();
                for &nb in self.layer_links(c, layer) {
                    let mark = &mut marks[nb as usize];
                    if *mark != stamp {
                        *mark = stamp;
                        fresh.push(nb);
                    }
                }
                fresh.iter().take(4).for_each(|&f| self.prefetch_vector(f));
                for (g, group) in fresh.chunks(4).enumerate() {
                    fresh
                        .iter()
                        .skip(4 * (g + 1))
                        .take(4)
                        .for_each(|&f| self.prefetch_vector(f));
                    let sims = match *group {
                        [a, b, c, d] => (self.dot4)(q, [a, b, c, d].map(|i| self.vector(i))),
                        _ => {
                            let mut sims = [0.0; 4];
                            for (s, &nb) in sims.iter_mut().zip(group) {
                                *s = self.dot(q, self.vector(nb));
                            }
                            sims
                        }
                    };
                    for (&s, &nb) in sims.iter().zip(group) {
                        let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0);
                        if results.len() < ef || s > worst {
                            candidates.push(Scored(s, nb));
                            if keep(nb) {
                                results.push(Reverse(Scored(s, nb)));
                                if results.len() > ef {
                                    results.pop();
                                }
                            }
                        }
                    }
                }
            }
            let mut out: Vec<Scored> = results.into_iter().map(|Reverse(s)| s).collect();
            out.sort_by(|a, b| b.cmp(a));
            out
        })
    }

    /// hnswlib's neighbour heuristic: from `candidates` (best first by
    /// similarity to the base point), up to `cap` that are each more
    /// similar to the base than to any already chosen, so that the links
    /// spread in all directions rather than into one cluster.
    fn select<'a>(
        &self,
        candidates: &[Scored],
        cap: usize,
        vector_of: impl Fn(u32) -> &'a [u16],
    ) -> Vec<u32> {
        let mut chosen: Vec<u32> = Vec::with_capacity(cap);
        let mut v = Vec::with_capacity(self.dim);
        for &Scored(to_base, c) in candidates {
            if chosen.len() >= cap {
                break;
            }
            f16::widen(vector_of(c), self.dim, &mut v);
            if chosen
                .iter()
                .all(|&s| self.dot(&v, vector_of(s)) <= to_base)
            {
                chosen.push(c);
            }
        }
        chosen
    }

    /// Most neighbours a point keeps on `layer`.
    fn cap(&self, layer: usize) -> usize {
        if layer == 0 {
            2 * self.m
        } else {
            self.m
        }
    }

    /// Asks the CPU to load all of point `i`'s vector into the cache.
    fn prefetch_vector(&self, i: u32) {
        prefetch_lines(self.vector(i));
    }

    /// Asks the CPU to load point `i`'s layer-0 list (when `layer` is 0).
    fn prefetch_links(&self, i: u32, layer: usize) {
        if layer == 0 {
            prefetch(&self.counts[i as usize..]);
            let at = i as usize * 2 * self.m;
            prefetch_lines(&self.links[at..at + 2 * self.m]);
        }
    }

    fn vector(&self, i: u32) -> &[u16] {
        let at = i as usize * self.stride;
        &self.vectors[at..at + self.stride]
    }

    /// Point `i`'s neighbours on `layer` (empty above its level).
    fn layer_links(&self, i: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let at = i as usize * 2 * self.m;
            &self.links[at..at + self.counts[i as usize] as usize]
        } else {
            self.upper
                .get(&i)
                .and_then(|lists| lists.get(layer - 1))
                .map_or(&[], |l| l.as_slice())
        }
    }

    fn set_links(&mut self, i: u32, layer: usize, list: &[u32]) {
        let list = &list[..list.len().min(self.cap(layer))];
        if layer == 0 {
            let at = i as usize * 2 * self.m;
            self.links[at..at + list.len()].copy_from_slice(list);
            self.counts[i as usize] = list.len() as u16;
        } else if let Some(slot) = self
            .upper
            .get_mut(&i)
            .and_then(|lists| lists.get_mut(layer - 1))
        {
            slot.clear();
            slot.extend_from_slice(list);
        }
    }

    /// Writes the graph to `out`: a header, then each array as
    /// little-endian numbers. [`FlatGraph::read`] reads it back.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        for n in [self.dim, self.m, self.len(), self.entry as usize] {
            out.write_all(&(n as u64).to_le_bytes())?;
        }
        out.write_all(&[self.top_layer])?;
        write_all(out, &self.seqs, u64::to_le_bytes)?;
        write_all(out, &self.vectors, u16::to_le_bytes)?;
        write_all(out, &self.counts, u16::to_le_bytes)?;
        write_all(out, &self.links, u32::to_le_bytes)?;
        let mut upper: Vec<(&u32, &Vec<Vec<u32>>)> = self.upper.iter().collect();
        upper.sort_unstable_by_key(|(i, _)| **i);
        out.write_all(&(upper.len() as u64).to_le_bytes())?;
        for (i, lists) in upper {
            out.write_all(&i.to_le_bytes())?;
            out.write_all(&[lists.len() as u8])?;
            for list in lists {
                out.write_all(&(list.len() as u16).to_le_bytes())?;
                write_all(out, list, u32::to_le_bytes)?;
            }
        }
        Ok(())
    }

    /// A graph from [`FlatGraph::write`]'s bytes; an error (never a panic)
    /// names what does not add up.
    pub fn read(bytes: &[u8]) -> Result<Self> {
        let mut r = Bytes(bytes);
        let half = match r.take(MAGIC.len())? {
            m if m == MAGIC => true,
            m if m == MAGIC_F32 => false,
            _ => return Err(malformed("it does not start with the graph file's magic")),
        };
        let [dim, m, n, entry] = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
        let top_layer = r.take(1)?[0];
        let sane = (1..=1 << 16).contains(&dim)
            && (1..=u16::MAX as u64 / 2).contains(&m)
            && n < u32::MAX as u64
            && (entry < n || n == 0)
            && (top_layer as usize) < MAX_LAYERS;
        if !sane {
            return Err(malformed(&format!(
                "header out of range (dim {dim}, m {m}, {n} points, entry {entry}, top layer \
                 {top_layer})"
            )));
        }
        let (dim, m, n) = (dim as usize, m as usize, n as usize);
        let mut flat = FlatGraph::new(dim, m, 0);
        flat.seqs = r.array(n, u64::from_le_bytes)?;
        flat.vectors = if half {
            r.array(n * flat.stride, u16::from_le_bytes)?
        } else {
            let wide = r.array(n * dim, f32::from_le_bytes)?;
            wide.chunks_exact(dim).flat_map(f16::narrow).collect()
        };
        flat.counts = r.array(n, u16::from_le_bytes)?;
        flat.links = r.array(n * 2 * m, u32::from_le_bytes)?;
        (flat.entry, flat.top_layer) = (entry as u32, top_layer);
        if flat.counts.iter().any(|&c| c as usize > 2 * m) {
            return Err(malformed("a layer-0 list is longer than its cap"));
        }
        let uppers = r.u64()?;
        if uppers > n as u64 {
            return Err(malformed("more upper-layer points than points"));
        }
        for _ in 0..uppers {
            let i = u32::from_le_bytes(r.fixed()?);
            let layers = r.take(1)?[0] as usize;
            if i as usize >= n || layers == 0 || layers >= MAX_LAYERS {
                return Err(malformed("an upper-layer point out of range"));
            }
            let mut lists = Vec::with_capacity(layers);
            for _ in 0..layers {
                let len = u16::from_le_bytes(r.fixed()?) as usize;
                if len > m {
                    return Err(malformed("an upper-layer list is longer than its cap"));
                }
                lists.push(r.array(len, u32::from_le_bytes)?);
            }
            flat.upper.insert(i, lists);
        }
        if !r.0.is_empty() {
            return Err(malformed("bytes after the last list"));
        }
        let ids_valid = (0..n).all(|i| {
            flat.layer_links(i as u32, 0)
                .iter()
                .all(|&j| (j as usize) < n)
        }) && flat
            .upper
            .values()
            .flatten()
            .flatten()
            .all(|&j| (j as usize) < n);
        let entry_reaches_top = n == 0
            || top_layer == 0
            || flat.upper.get(&flat.entry).map_or(0, |l| l.len()) == top_layer as usize;
        if !ids_valid || !entry_reaches_top {
            return Err(malformed("a neighbour or the entry point is out of range"));
        }
        Ok(flat)
    }
}

fn malformed(what: &str) -> Error {
    Error::Internal(format!("the saved graph is malformed: {what}"))
}

fn write_all<T: Copy, const N: usize>(
    out: &mut impl Write,
    items: &[T],
    to_bytes: fn(T) -> [u8; N],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(items.len().min(1 << 16) * N);
    for chunk in items.chunks(1 << 16) {
        buf.clear();
        chunk
            .iter()
            .for_each(|&x| buf.extend_from_slice(&to_bytes(x)));
        out.write_all(&buf)?;
    }
    Ok(())
}

/// A cursor over a saved graph's bytes.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(malformed("it ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.fixed()?))
    }

    fn array<T, const N: usize>(&mut self, n: usize, from: fn([u8; N]) -> T) -> Result<Vec<T>> {
        let bytes = self.take(n.checked_mul(N).ok_or_else(|| malformed("a huge array"))?)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| from(c.try_into().expect("N bytes")))
            .collect())
    }
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
    /// Two bytes a point, as hnswlib's: half the cache a search touches
    /// (the array is cleared once every 65,535 searches instead).
    stamp: u16,
    marks: Vec<u16>,
    /// The neighbours of the point being expanded that the search has
    /// not seen yet (kept to reuse its allocation).
    fresh: Vec<u32>,
}

impl Visited {
    fn begin(&mut self, n: usize) -> u16 {
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

/// Asks the CPU to load every cache line of `v` (a 64-byte line's worth
/// of items at a time, and the last item for the line a misaligned slice
/// ends in).
fn prefetch_lines<T>(v: &[T]) {
    for line in (0..v.len()).step_by((64 / std::mem::size_of::<T>().max(1)).max(1)) {
        prefetch(&v[line..]);
    }
    prefetch(&v[v.len().saturating_sub(1)..]);
}

/// Asks the CPU to start loading `v` (its first cache line) into cache.
#[inline]
fn prefetch<T>(v: &[T]) {
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

    fn graph_of(
        points: &[Vec<f32>],
    ) -> hnsw_rs::prelude::Hnsw<'static, f32, hnsw_rs::prelude::DistDot> {
        use hnsw_rs::prelude::{DistDot, Hnsw};
        let graph = Hnsw::new(16, points.len(), 16, 100, DistDot {});
        let refs: Vec<(&[f32], usize)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i + 1))
            .collect();
        graph.parallel_insert_slice(&refs);
        graph
    }

    /// `points` inserted one by one (seqs from 1), as the index does once
    /// its graph is sealed.
    fn grown(points: &[Vec<f32>], m: usize, ef: usize) -> FlatGraph {
        let mut flat = FlatGraph::new(points[0].len(), m, 0);
        let mut rng = StdRng::seed_from_u64(11);
        for (i, p) in points.iter().enumerate() {
            let level = flat.level_for(1.0 - rng.random::<f64>());
            let planned = flat.plan(i as u64 + 1, p.clone(), level, ef);
            flat.apply(planned);
        }
        flat
    }

    /// `points` (seqs from 1) inserted as a build does, but in batches of
    /// 16 once 200 are in (a build waits for [`SERIAL_UNTIL`]), so that
    /// small tests plan most points together.
    fn built(points: &[Vec<f32>], m: usize, ef: usize) -> FlatGraph {
        let mut flat = FlatGraph::new(points[0].len(), m, points.len());
        let mut rng = StdRng::seed_from_u64(13);
        let mut next = 0;
        while next < points.len() {
            let n = if next < 200 { 1 } else { 16 };
            let batch: Vec<(u64, Vec<f32>, u8)> = (next..(next + n).min(points.len()))
                .map(|i| {
                    let level = flat.level_for(1.0 - rng.random::<f64>());
                    (i as u64 + 1, points[i].clone(), level)
                })
                .collect();
            next += batch.len();
            let plans = flat.plan_batch(batch, ef);
            flat.apply_batch(plans);
        }
        flat
    }

    /// Points (seq `i + 1`) that are not their own nearest neighbour.
    fn self_misses(flat: &FlatGraph, points: &[Vec<f32>]) -> usize {
        points
            .iter()
            .enumerate()
            .filter(|(i, p)| flat.search(p, 32, None)[0].1 != *i as u64 + 1)
            .count()
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

    /// Recall@10 of `search` against the exact top 10, over `queries`.
    fn recall(
        points: &[Vec<f32>],
        queries: &[Vec<f32>],
        search: impl Fn(&[f32]) -> Vec<u64>,
    ) -> f64 {
        let hits: usize = queries
            .iter()
            .map(|q| {
                let truth = exact_top(points, q, 10);
                search(q)
                    .iter()
                    .take(10)
                    .filter(|s| truth.contains(s))
                    .count()
            })
            .sum();
        hits as f64 / (queries.len() * 10) as f64
    }

    #[test]
    fn a_batched_build_holds_every_point_and_finds_each_first() {
        let points = random_points(1500, 24, 2);
        let flat = built(&points, 16, 100);
        assert_eq!(flat.len(), points.len());
        let misses = self_misses(&flat, &points);
        assert!(misses <= 3, "{misses} points did not find themselves");
        assert!(flat.counts.iter().all(|&c| c as usize <= 32));
        assert!(flat.upper.values().flatten().all(|l| l.len() <= 16));
    }

    #[test]
    fn recall_is_at_least_hnsw_rs_own_built_in_batches_or_one_by_one() {
        let points = random_points(3000, 32, 3);
        let queries = random_points(200, 32, 4);
        let graph = graph_of(&points);
        let theirs = recall(&points, &queries, |q| {
            graph
                .search(q, 10, 48)
                .iter()
                .map(|n| n.d_id as u64)
                .collect()
        });
        let batched = built(&points, 16, 100);
        let in_batches = recall(&points, &queries, |q| {
            batched.search(q, 48, None).iter().map(|h| h.1).collect()
        });
        let grown = grown(&points, 16, 100);
        let one_by_one = recall(&points, &queries, |q| {
            grown.search(q, 48, None).iter().map(|h| h.1).collect()
        });
        eprintln!("recall: hnsw_rs {theirs}, in batches {in_batches}, one by one {one_by_one}");
        // A new point keeps M neighbours, as in hnswlib: on these uniform
        // 32-d points (far harder than photo embeddings, on which recall at
        // each ef matches hnsw_rs's or beats it: BENCHMARKS.md) that leaves
        // recall about 0.01 below hnsw_rs's at this ef.
        for (what, ours) in [("in batches", in_batches), ("one by one", one_by_one)] {
            assert!(
                ours >= 0.95 && ours >= theirs - 0.02,
                "{what}: recall {ours} vs hnsw_rs {theirs}"
            );
        }
    }

    #[test]
    fn inserts_after_a_build_are_found_and_keep_the_caps() {
        let points = random_points(2000, 24, 6);
        let mut flat = built(&points[..1000], 8, 64);
        let mut rng = StdRng::seed_from_u64(12);
        for (i, p) in points.iter().enumerate().skip(1000) {
            let level = flat.level_for(1.0 - rng.random::<f64>());
            let planned = flat.plan(i as u64 + 1, p.clone(), level, 64);
            flat.apply(planned);
        }
        assert_eq!(flat.len(), 2000);
        let misses = self_misses(&flat, &points);
        assert!(misses <= 6, "{misses} points did not find themselves");
        assert!(flat.counts.iter().all(|&c| c as usize <= 16));
        assert!(flat.upper.values().flatten().all(|l| l.len() <= 8));
    }

    #[test]
    fn a_batch_merges_the_lists_its_plans_share() {
        // Lists far below their cap (32), so that nothing is pruned: every
        // neighbour both new points chose must link back to both, where
        // the second plan's list (worked out without the first point)
        // written as it was would drop the first.
        let mut points = random_points(21, 8, 8);
        let twin = unit(points[20].iter().map(|x| x + 0.02).collect());
        points.push(twin);
        let mut flat = built(&points[..20], 16, 32);
        let batch: Vec<(u64, Vec<f32>, u8)> = (20..22)
            .map(|i| (i as u64 + 1, points[i].clone(), 0))
            .collect();
        let plans = flat.plan_batch(batch, 32);
        let shared: Vec<u32> = plans[0].own[0]
            .iter()
            .filter(|nb| plans[1].own[0].contains(nb))
            .copied()
            .collect();
        assert!(!shared.is_empty(), "the two plans share no neighbour");
        flat.apply_batch(plans);
        for nb in shared {
            let list = flat.layer_links(nb, 0);
            assert!(list.contains(&20) && list.contains(&21), "{nb}: {list:?}");
        }
    }

    #[test]
    fn a_written_graph_reads_back_the_same_and_damage_is_an_error() {
        let points = random_points(700, 16, 7);
        let flat = grown(&points, 6, 40);
        let mut bytes = Vec::new();
        flat.write(&mut bytes).expect("write");
        let back = FlatGraph::read(&bytes).expect("read");
        for q in points.iter().take(40) {
            assert_eq!(flat.search(q, 20, None), back.search(q, 20, None));
        }
        assert!(FlatGraph::read(&bytes[..bytes.len() / 2]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(FlatGraph::read(&extra).is_err());
        // A graph saved with f32 vectors (before 2026-12-06) reads back to
        // the same graph: half precision survives a round trip to f32.
        let vectors_at = 8 + 4 * 8 + 1 + 700 * 8;
        let vectors_end = vectors_at + 700 * 16 * 2;
        let mut old = b"LKGRAPH1".to_vec();
        old.extend(&bytes[8..vectors_at]);
        for h in bytes[vectors_at..vectors_end].chunks_exact(2) {
            let wide = half::f16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f32();
            old.extend(wide.to_le_bytes());
        }
        old.extend(&bytes[vectors_end..]);
        let upgraded = FlatGraph::read(&old).expect("read an f32 graph");
        for q in points.iter().take(40) {
            assert_eq!(flat.search(q, 20, None), upgraded.search(q, 20, None));
        }
        // A neighbour id past the end, in the first layer-0 list.
        let links_at = vectors_end + 700 * 2;
        let mut wild = bytes.clone();
        wild[links_at..links_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = FlatGraph::read(&wild).err().expect("a wild id is refused");
        assert!(err.to_string().contains("out of range"), "{err}");
        let empty = FlatGraph::new(16, 6, 0);
        let mut bytes = Vec::new();
        empty.write(&mut bytes).expect("write");
        assert_eq!(FlatGraph::read(&bytes).expect("read").len(), 0);
    }

    #[test]
    fn filtered_points_never_come_back() {
        let points = random_points(800, 16, 5);
        let flat = built(&points, 16, 100);
        let keep = |seq: u64| !seq.is_multiple_of(3);
        for q in points.iter().take(50) {
            let found = flat.search(q, 20, Some(&keep));
            assert_eq!(found.len(), 20);
            assert!(found.iter().all(|h| keep(h.1)));
            assert!(found.windows(2).all(|w| w[0].0 >= w[1].0));
        }
    }
}
