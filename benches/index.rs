//! The ANN index next to hnswlib and FAISS, on the same vectors in the same
//! run: `cargo bench --bench index`.
//!
//! Two comparisons per size, each printed as a table:
//!
//! 1. **The search path**: ours is the daemon's, PCA (100 components, fitted
//!    on up to 20,000 vectors) + HNSW (our flat graph) + re-rank of the top 2k to
//!    16k (the daemon's default is 8k, `--rerank-factor 8`) candidates on the
//!    full 1280-d features held as 8-bit codes, then of the best 2k on the
//!    exact f32 features. The peers build HNSW over the full 1280-d vectors
//!    with the same M and ef_construction (inner product on unit vectors =
//!    cosine). Recall@10 is against exact search on the full features.
//! 2. **HNSW alone, same vectors**: our graph (no re-rank), hnsw_rs (which
//!    built our graph until 2026-12-05: its own parallel build and search),
//!    hnswlib and FAISS, all on the very same 100-d PCA projections,
//!    recall@10 against exact search in that space. This isolates the graph
//!    implementation. Our build time here is the graph's alone (it includes
//!    projecting the 1280-d vectors and writing their re-rank codes, which
//!    the peers do not do), without the PCA fit; the search path's includes
//!    the fit.
//!
//! For each: build time, memory, and recall@10 versus queries per second as
//! ef sweeps; then our QPS over each peer's at recall@10 = 0.95 (each curve
//! log-interpolated between the ef values around 0.95). Every QPS figure,
//! ours and the peers', is a warm-up pass and then the median of 5 trials,
//! each repeating the pass for at least 0.3 s.
//!
//! Vectors: real embeddings (EfficientNet-Lite0) of the Fashion-MNIST photos
//! that `scripts/fetch-datasets.sh --with-fashion-mnist` lays out, cached in
//! target/bench-cache. The first BENCH_QUERIES photos are the queries, the
//! rest the base. Past the 70,000 photos the base continues with the same
//! base photos mirrored left-right (real embeddings of real, mirrored
//! photos; never a query's mirror); the table says how many. Sizes beyond
//! that use vectors DRAWN to match the real ones, queries included: the
//! real embeddings resampled with jitter (each draw a random real vector
//! moved as far as its nearest real neighbour is, within the top-100
//! principal directions and outside them; clipped at 0 as ReLU features
//! are, then normalised; see `drawn_vectors`).
//!
//! Environment: BENCH_SIZES (default "10000,100000"; add 1000000 for a
//! million), BENCH_QUERIES (500), BENCH_FULL_PEERS_UPTO (100000: the
//! largest size at which the peers also build over the 1280-d vectors,
//! which costs them 13x the distance work of the 100-d run), BENCH_DRAWN=1
//! (drawn vectors at every size, to compare them with the real ones),
//! BENCH_DUMP_DIR (writes each size's 100-d projections, queries and exact
//! neighbours under DIR/SIZE/ as `scripts/peer_index.py` reads them),
//! BENCH_HNSW_RS_UPTO (every size: the largest size at which hnsw_rs also
//! builds its graph; at a million its build is 12 of the run's 32 minutes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use common::rss_mib;
use hnsw_rs::prelude::{DistDot, Hnsw};
use lookalike::decode;
use lookalike::embed::{Embedder, ModelKind};
use lookalike::index::{GraphParams, Index};
use lookalike::pca::Projection;
use lookalike::vector::dot;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

const DIM: usize = 1280;
const PCA_DIM: usize = 100;
const K: usize = 10;
const M: usize = 24;
const EF_CONSTRUCTION: usize = 200;
/// Search widths swept; 16 to 32 is where recall@10 crosses 0.95 on these
/// vectors at 100k, so 24 sits between them for the interpolation; at a
/// million every graph was past 0.95 at 16 already (0.97-0.98), so 10 and
/// 12 (k is 10) bracket it there.
const EFS: [usize; 9] = [10, 12, 16, 24, 32, 64, 128, 256, 512];
/// Candidates re-ranked per query, as multiples of K (the daemon default is 8).
const RERANKS: [usize; 4] = [2, 4, 8, 16];
/// Each timed trial repeats the pass until this long, after a warm-up pass
/// (as the peers); a figure is the median of TRIALS trials, since the VMs
/// this runs on lend their cores to neighbours now and then (one trial of
/// the same search moved by up to 50 % between runs).
const MIN_TIMED: Duration = Duration::from_millis(300);
const TRIALS: usize = 5;
/// Photos embedded per call while filling the cache.
const EMBED_CHUNK: usize = 256;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    env_list(name, &default.to_string())
        .first()
        .copied()
        .unwrap_or(default)
}

/// The Fashion-MNIST photos, classes interleaved so that every prefix is
/// balanced (or the committed test photos when the dataset is missing).
fn photo_files() -> Vec<PathBuf> {
    let dir = root().join("datasets/fashion-mnist");
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    classes.sort();
    let mut per_class: Vec<Vec<PathBuf>> = classes
        .iter()
        .map(|c| {
            let mut files = images_in(c);
            files.sort();
            files
        })
        .collect();
    if per_class.iter().all(|f| f.is_empty()) {
        eprintln!("no datasets/fashion-mnist: run scripts/fetch-datasets.sh --with-fashion-mnist; using the committed photos only");
        let mut files = images_in(&root().join("tests/data"));
        files.sort();
        return files;
    }
    let longest = per_class.iter().map(Vec::len).max().unwrap_or(0);
    per_class.iter_mut().for_each(|f| f.reverse());
    let mut out = Vec::new();
    for _ in 0..longest {
        out.extend(per_class.iter_mut().filter_map(Vec::pop));
    }
    out
}

fn images_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg")))
        .collect()
}

/// The real vectors: row `i` is photo `i` of `files` while `i < files.len()`,
/// then the photos from `mirror_from` on, mirrored left-right.
struct RealSet {
    files: Vec<PathBuf>,
    mirror_from: usize,
}

impl RealSet {
    fn rows(&self) -> usize {
        2 * self.files.len() - self.mirror_from
    }

    fn cache_path(&self) -> PathBuf {
        root().join(format!(
            "target/bench-cache/fashion-mnist-lite0-{}-mirror-from-{}.f32",
            self.files.len(),
            self.mirror_from
        ))
    }

    /// The first `n` rows (at most `rows()`), embedding what the cache lacks
    /// and appending it to the cache as it goes.
    fn vectors(&self, n: usize) -> Vec<Vec<f32>> {
        let n = n.min(self.rows());
        let cache = self.cache_path();
        let mut out: Vec<Vec<f32>> = std::fs::read(&cache)
            .unwrap_or_default()
            .chunks_exact(4 * DIM)
            .take(n)
            .map(|row| {
                row.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect();
        if out.len() == n {
            return out;
        }
        let embedder = Embedder::load(ModelKind::EfficientNetLite0, None, 2).expect("model");
        let _ = std::fs::create_dir_all(cache.parent().expect("parent"));
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cache)
            .ok()
            .filter(|f| {
                f.metadata()
                    .is_ok_and(|m| m.len() == (out.len() * 4 * DIM) as u64)
            })
            .map(BufWriter::new);
        let started = Instant::now();
        let first = out.len();
        while out.len() < n {
            let rows: Vec<usize> = (out.len()..n.min(out.len() + EMBED_CHUNK)).collect();
            let inputs: Vec<Vec<f32>> =
                rows.par_iter().map(|&r| self.input(&embedder, r)).collect();
            let vectors = embedder.embed_inputs(&inputs);
            if let Some(w) = writer.as_mut() {
                let bytes: Vec<u8> = vectors
                    .iter()
                    .flatten()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                let _ = w.write_all(&bytes);
            }
            out.extend(vectors);
            eprint!(
                "\rembedded {} / {n} real photos ({:.0} /s)",
                out.len(),
                (out.len() - first) as f64 / started.elapsed().as_secs_f64()
            );
        }
        eprintln!();
        if let Some(mut w) = writer {
            let _ = w.flush();
        }
        out
    }

    fn input(&self, embedder: &Embedder, row: usize) -> Vec<f32> {
        let (file, mirrored) = match row.checked_sub(self.files.len()) {
            None => (&self.files[row], false),
            Some(i) => (&self.files[self.mirror_from + i], true),
        };
        let bytes = std::fs::read(file).expect("read photo");
        if !mirrored {
            let size = embedder.kind().input_size();
            return decode::network_input(&bytes, u64::MAX, size, embedder.view()).expect("decode");
        }
        let image = image::load_from_memory(&bytes).expect("decode").to_rgb8();
        embedder.input(&image::imageops::flip_horizontal(&image))
    }
}

/// `n` vectors drawn to match `real` by resampling it with jitter (a
/// smoothed bootstrap). Each draw is a random real vector moved by a
/// Gaussian step as long as the distance to that vector's nearest real
/// neighbour, split as that distance is: the part within the real vectors'
/// top principal directions (shaped by their variances), the rest spread
/// evenly over the other directions. Then clipped at 0 (ReLU features) and
/// normalised. So the draws keep the real vectors' clusters and their
/// nearest-neighbour scale in both parts of the space, where a single
/// Gaussian fitted to them has neither (and made a graph over a million of
/// them far dearer to build than over real ones), and where jitter in the
/// principal directions alone would leave a source's draws sharing its
/// residual exactly, a fingerprint that no projection keeps.
fn drawn_vectors(real: &[Vec<f32>], n: usize, seed: u64) -> Vec<Vec<f32>> {
    let fit_on = real.len().min(20_000);
    let p = Projection::fit(&real[..fit_on], PCA_DIM, fit_on).expect("fit");
    let basis = p.components();
    let coords =
        |v: &[f32]| -> Vec<f32> { basis.chunks_exact(DIM).map(|row| dot(row, v)).collect() };
    let projected: Vec<Vec<f32>> = real.par_iter().map(|v| coords(v)).collect();
    let sd: Vec<f32> = (0..p.out_dim())
        .map(|i| {
            let mean = projected.iter().map(|c| c[i]).sum::<f32>() / projected.len() as f32;
            let var = projected
                .iter()
                .map(|c| (c[i] - mean) * (c[i] - mean))
                .sum::<f32>()
                / projected.len() as f32;
            var.sqrt()
        })
        .collect();
    let shape_norm = sd.iter().map(|s| s * s).sum::<f32>().sqrt().max(1e-12);
    // Per real vector: its nearest neighbour's distance within the
    // principal directions and outside them.
    let steps: Vec<(f32, f32)> = nearest(&projected)
        .par_iter()
        .enumerate()
        .map(|(i, &(j, top2))| {
            let full2 = squared_distance(&real[i], &real[j]);
            (top2.sqrt(), (full2 - top2).max(0.0).sqrt())
        })
        .collect();
    let spread = ((DIM - p.out_dim()) as f32).sqrt();
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let source = rng.random_range(0..real.len());
            let (top, rest) = steps[source];
            let mut v = real[source].clone();
            for (row, s) in basis.chunks_exact(DIM).zip(&sd) {
                let z: f32 = gaussian(&mut rng) * s * top / shape_norm;
                v.iter_mut().zip(row).for_each(|(x, b)| *x += z * b);
            }
            let mut g: Vec<f32> = (0..DIM).map(|_| gaussian(&mut rng)).collect();
            for row in basis.chunks_exact(DIM) {
                let c = dot(row, &g);
                g.iter_mut().zip(row).for_each(|(x, b)| *x -= c * b);
            }
            v.iter_mut()
                .zip(&g)
                .for_each(|(x, z)| *x = (*x + z * rest / spread).max(0.0));
            let norm = dot(&v, &v).sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Each vector's nearest other vector (exact) and their squared distance.
fn nearest(vectors: &[Vec<f32>]) -> Vec<(usize, f32)> {
    const BLOCK: usize = 64;
    vectors
        .par_chunks(BLOCK)
        .enumerate()
        .flat_map_iter(|(block, rows)| {
            let mut best = vec![(0usize, f32::INFINITY); rows.len()];
            for (j, other) in vectors.iter().enumerate() {
                for (r, (row, b)) in rows.iter().zip(best.iter_mut()).enumerate() {
                    let d2 = squared_distance(row, other);
                    if block * BLOCK + r != j && d2 < b.1 {
                        *b = (j, d2);
                    }
                }
            }
            best
        })
        .collect()
}

fn gaussian(rng: &mut StdRng) -> f32 {
    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// Keeps the best K of `scored`, best first.
fn keep_top(scored: &mut Vec<(f32, u32)>) {
    if scored.len() > K {
        scored.select_nth_unstable_by(K, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(K);
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
}

/// Exact top-K by inner product (cosine on unit vectors), for recall. The
/// base is scanned in blocks that stay in cache while every query visits
/// them, so a million 1280-d rows are read once, not once per query.
fn truth(base: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<Vec<u32>> {
    const BLOCK: usize = 256;
    let empty = || vec![Vec::<(f32, u32)>::new(); queries.len()];
    let merge = |mut a: Vec<Vec<(f32, u32)>>, b: Vec<Vec<(f32, u32)>>| {
        for (x, y) in a.iter_mut().zip(b) {
            x.extend(y);
            keep_top(x);
        }
        a
    };
    base.par_chunks(BLOCK)
        .enumerate()
        .fold(empty, |mut best, (block, rows)| {
            for (q, top) in queries.iter().zip(best.iter_mut()) {
                let first = (block * BLOCK) as u32;
                top.extend(rows.iter().zip(first..).map(|(b, i)| (dot(q, b), i)));
                keep_top(top);
            }
            best
        })
        .reduce(empty, merge)
        .into_iter()
        .map(|top| top.iter().map(|s| s.1).collect())
        .collect()
}

fn recall(found: &[Vec<u32>], truth: &[Vec<u32>]) -> f64 {
    let hits: usize = found
        .iter()
        .zip(truth)
        .map(|(f, t)| f.iter().filter(|i| t.contains(i)).count())
        .sum();
    hits as f64 / (truth.len() * K) as f64
}

/// Runs `pass` once untimed, then TRIALS timed trials, each repeating it
/// until `MIN_TIMED`. Returns the last pass's answers and the median
/// trial's queries/s.
fn timed(nq: usize, pass: impl Fn() -> Vec<Vec<u32>>) -> (Vec<Vec<u32>>, f64) {
    let mut found = pass();
    let mut qps: Vec<f64> = (0..TRIALS)
        .map(|_| {
            let (started, mut passes) = (Instant::now(), 0);
            while passes == 0 || started.elapsed() < MIN_TIMED {
                found = pass();
                passes += 1;
            }
            (passes * nq) as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    qps.sort_by(f64::total_cmp);
    (found, qps[TRIALS / 2])
}

struct Run {
    label: String,
    ef: usize,
    recall: f64,
    qps_single: f64,
    qps_batch: f64,
}

/// Runs `search` for every ef on one thread and on the rayon pool (2 threads).
fn sweep(
    label: &str,
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
    search: impl Fn(&[f32], usize) -> Vec<u32> + Sync,
) -> Vec<Run> {
    EFS.iter()
        .map(|&ef| {
            let (found, qps_single) = timed(queries.len(), || {
                queries.iter().map(|q| search(q, ef)).collect()
            });
            let (_, qps_batch) = timed(queries.len(), || {
                queries.par_iter().map(|q| search(q, ef)).collect()
            });
            Run {
                label: label.to_string(),
                ef,
                recall: recall(&found, truth),
                qps_single,
                qps_batch,
            }
        })
        .collect()
}

/// Our index over `base`: PCA fitted on up to 20,000 of them, then the
/// graph. Returns it with its build time (s), the graph's part of it (s),
/// and its memory (MiB).
fn build_ours(base: &[Vec<f32>]) -> (Index, f64, f64, f64) {
    let rss0 = rss_mib(std::process::id());
    let started = Instant::now();
    let sample: Vec<Vec<f32>> = base
        .iter()
        .step_by((base.len() / 20_000).max(1))
        .cloned()
        .collect();
    let projection = Arc::new(Projection::fit(&sample, PCA_DIM, base.len()).expect("fit"));
    drop(sample);
    eprintln!("PCA fitted in {:.1} s", started.elapsed().as_secs_f64());
    let graph_started = Instant::now();
    let params = GraphParams {
        m: M,
        ef_construction: EF_CONSTRUCTION,
        ef_search: 64,
    };
    let index = Index::graph(projection, params, base.len());
    for (c, chunk) in base.chunks(20_000).enumerate() {
        let batch: Vec<(u64, Vec<f32>)> = chunk
            .iter()
            .zip((c * 20_000) as u64..)
            .map(|(v, i)| (i, v.clone()))
            .collect();
        index.add_batch(&batch);
    }
    let build = started.elapsed().as_secs_f64();
    let graph = graph_started.elapsed().as_secs_f64();
    (index, build, graph, rss_mib(std::process::id()) - rss0)
}

/// hnsw_rs's own graph over `base` (100-d projections), built by its
/// parallel insert with the same M and ef_construction: the builder our
/// graph replaced. Returns it with its build time (s) and memory (MiB).
fn build_hnsw_rs(base: &[Vec<f32>]) -> (Hnsw<'static, f32, DistDot>, f64, f64) {
    let rss0 = rss_mib(std::process::id());
    let started = Instant::now();
    let graph = Hnsw::new(M, base.len(), 16, EF_CONSTRUCTION, DistDot {});
    let refs: Vec<(&[f32], usize)> = base
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_slice(), i))
        .collect();
    graph.parallel_insert_slice(&refs);
    let build = started.elapsed().as_secs_f64();
    (graph, build, rss_mib(std::process::id()) - rss0)
}

/// The search path as the engine runs it: graph candidates, re-ranked on
/// the full features the index holds as 8-bit codes (`Index::rescore`),
/// then the best 2K scored exactly on the full f32 features (which the
/// engine reads from the store).
fn sweep_ours_full(
    index: &Index,
    base: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
) -> Vec<Run> {
    RERANKS
        .iter()
        .flat_map(|&rerank| {
            let label = format!("lookalike PCA-100+HNSW, re-rank {rerank}k");
            sweep(&label, queries, truth, |q, ef| {
                let hits = index.search_ef(q, K * rerank, None, ef);
                let mut scored: Vec<(f32, u32)> = index
                    .rescore(q, hits, 2 * K)
                    .iter()
                    .map(|h| (dot(q, &base[h.seq as usize]), h.seq as u32))
                    .collect();
                keep_top(&mut scored);
                scored.iter().map(|s| s.1).collect()
            })
        })
        .collect()
}

fn write_f32(path: &Path, rows: &[Vec<f32>]) {
    let mut w = BufWriter::new(std::fs::File::create(path).expect("create"));
    for row in rows {
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes).expect("write");
    }
    w.flush().expect("flush");
}

/// Where the peer script is, or why it cannot run.
fn peer_python() -> Result<PathBuf, String> {
    let python = root().join(".tools/bench-venv/bin/python");
    if python.exists() {
        Ok(python)
    } else {
        Err("skipped: no .tools/bench-venv (run scripts/setup-bench-env.sh)".into())
    }
}

/// hnswlib and FAISS over `base`, through scripts/peer_index.py.
fn peers(
    base: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
) -> Result<serde_json::Value, String> {
    let python = peer_python()?;
    let dim = base.first().map_or(0, Vec::len);
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, q, t) = (
        dir.path().join("base.f32"),
        dir.path().join("q.f32"),
        dir.path().join("truth.u32"),
    );
    write_f32(&b, base);
    write_f32(&q, queries);
    let tb: Vec<u8> = truth
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&t, tb).expect("write");
    let efs: Vec<String> = EFS.iter().map(|e| e.to_string()).collect();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let out = Command::new(python)
        .arg(root().join("scripts/peer_index.py"))
        .args([
            "--base",
            &path(&b),
            "--queries",
            &path(&q),
            "--truth",
            &path(&t),
        ])
        .args([
            "--dim",
            &dim.to_string(),
            "--k",
            &K.to_string(),
            "--m",
            &M.to_string(),
        ])
        .args([
            "--ef-construction",
            &EF_CONSTRUCTION.to_string(),
            "--efs",
            &efs.join(","),
        ])
        .args(["--threads", "2", "--lib", "both"])
        .args(["--min-seconds", &MIN_TIMED.as_secs_f64().to_string()])
        .args(["--trials", &TRIALS.to_string()])
        .output()
        .map_err(|e| format!("peer_index.py did not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "peer_index.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("peer_index.py output: {e}"))
}

/// One table being filled: its rows, and the QPS ratio lines under it.
#[derive(Default)]
struct Table {
    rows: Vec<String>,
    ratios: Vec<String>,
}

impl Table {
    fn add(&mut self, n: usize, kind: &str, build: f64, mem: f64, run: &Run) {
        let row = format!(
            "| {n} | {kind} | {} | {build:.1} | {mem:.0} | {} | {:.4} | {:.0} | {:.0} |",
            run.label, run.ef, run.recall, run.qps_single, run.qps_batch
        );
        eprintln!("{row}");
        self.rows.push(row);
    }

    /// Adds the peers' rows and our QPS over theirs at recall@10 >= 0.95.
    fn add_peers(
        &mut self,
        n: usize,
        kind: &str,
        dim: usize,
        (ours, our_build): (&[Run], f64),
        peers: Result<serde_json::Value, String>,
    ) {
        let our_best = qps_at_95(ours);
        let peers = match peers {
            Ok(p) => p,
            Err(why) => {
                self.ratios.push(format!("size {n}: peers {why}"));
                return;
            }
        };
        for lib in ["hnswlib", "faiss"] {
            let p = &peers[lib];
            let (build, mem) = (
                p["build_s"].as_f64().unwrap_or(f64::NAN),
                p["mem_mib"].as_f64().unwrap_or(f64::NAN),
            );
            self.ratios.push(format!(
                "size {n}: lookalike / {lib} build time = {:.2} ({our_build:.1} s / {build:.1} s)",
                our_build / build
            ));
            let runs: Vec<Run> = p["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| Run {
                    label: format!("{lib} HNSW ({dim}-d)"),
                    ef: r["ef"].as_u64().unwrap_or(0) as usize,
                    recall: r["recall"].as_f64().unwrap_or(0.0),
                    qps_single: r["qps_single"].as_f64().unwrap_or(0.0),
                    qps_batch: r["qps_batch"].as_f64().unwrap_or(0.0),
                })
                .collect();
            runs.iter().for_each(|r| self.add(n, kind, build, mem, r));
            self.ratios.push(match (our_best, qps_at_95(&runs)) {
                (Some(o), Some(p)) => format!(
                    "size {n}: lookalike / {lib} QPS (2 threads) at recall@10 = 0.95 (interpolated) = {:.2}",
                    o / p
                ),
                _ => format!("size {n}: lookalike / {lib}: one side never reached recall@10 0.95"),
            });
        }
    }

    fn print(&self, title: &str) {
        println!("\n## {title}\n");
        println!("| size | vectors | index | build s | memory MiB | ef | recall@10 | QPS 1 thread | QPS 2 threads |");
        println!("|---|---|---|---|---|---|---|---|---|");
        self.rows.iter().for_each(|r| println!("{r}"));
        println!();
        self.ratios.iter().for_each(|r| println!("{r}"));
    }
}

/// 2-thread QPS at recall@10 = 0.95. On each curve (one index label, ef
/// rising) it is read at the first point reaching 0.95, log-interpolated
/// with the point before it when that one falls short, so that the step
/// between two ef values favours neither side; the best curve counts. None
/// when no curve reaches 0.95.
fn qps_at_95(runs: &[Run]) -> Option<f64> {
    const TARGET: f64 = 0.95;
    let mut labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    labels.dedup();
    labels
        .into_iter()
        .filter_map(|label| {
            let mut curve: Vec<&Run> = runs.iter().filter(|r| r.label == label).collect();
            curve.sort_by_key(|r| r.ef);
            let i = curve.iter().position(|r| r.recall >= TARGET)?;
            let hit = curve[i];
            Some(match i.checked_sub(1).map(|j| curve[j]) {
                Some(lo) if hit.recall > lo.recall => {
                    let t = (TARGET - lo.recall) / (hit.recall - lo.recall);
                    let (a, b) = (lo.qps_batch.ln(), hit.qps_batch.ln());
                    (a + t * (b - a)).exp()
                }
                _ => hit.qps_batch,
            })
        })
        .reduce(f64::max)
}

/// Base and queries for size `n`, and a word on where they come from.
fn vectors_for(real: &RealSet, n: usize, nq: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, String) {
    let force_drawn = std::env::var_os("BENCH_DRAWN").is_some_and(|v| v == "1");
    if nq + n <= real.rows() && !force_drawn {
        let mut base = real.vectors(nq + n);
        let queries: Vec<Vec<f32>> = base.drain(..nq).collect();
        let mirrored = (nq + n).saturating_sub(real.files.len());
        let kind = match mirrored {
            0 => "real".to_string(),
            m => format!("real, {m} of them mirrored"),
        };
        return (base, queries, kind);
    }
    let sample = real.vectors(nq + real.files.len());
    let sources = &sample[nq..];
    let mut base = drawn_vectors(sources, n + nq, n as u64);
    let queries = base.split_off(n);
    let kind = format!("drawn around {} real", sources.len());
    (base, queries, kind)
}

fn main() {
    let sizes = env_list("BENCH_SIZES", "10000,100000");
    let nq = env_usize("BENCH_QUERIES", 500);
    let full_peers_upto = env_usize("BENCH_FULL_PEERS_UPTO", 100_000);
    let hnsw_rs_upto = env_usize("BENCH_HNSW_RS_UPTO", usize::MAX);
    let files = photo_files();
    let real = RealSet {
        mirror_from: nq.min(files.len()),
        files,
    };
    let (mut full, mut graph) = (Table::default(), Table::default());
    for &n in &sizes {
        let (base, queries, kind) = vectors_for(&real, n, nq);
        eprintln!("size {n}: {kind}; exact neighbours ...");
        let exact = truth(&base, &queries);
        let (index, build, graph_build, mem) = build_ours(&base);
        eprintln!("size {n}: index built in {build:.1} s (graph {graph_build:.1} s)");

        // Everyone's graph on the same projections, recall against exact
        // search in that space.
        let projection = index.projection().expect("graph index").clone();
        let project = |v: &[Vec<f32>]| -> Vec<Vec<f32>> {
            v.par_iter().map(|x| projection.project(x)).collect()
        };
        let (pbase, pqueries) = (project(&base), project(&queries));
        let exact_projected = truth(&pbase, &pqueries);
        if let Some(dir) = std::env::var_os("BENCH_DUMP_DIR") {
            let dir = PathBuf::from(dir).join(n.to_string());
            std::fs::create_dir_all(&dir).expect("dump dir");
            write_f32(&dir.join("base.f32"), &pbase);
            write_f32(&dir.join("q.f32"), &pqueries);
            let tb: Vec<u8> = exact_projected
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            std::fs::write(dir.join("truth.u32"), tb).expect("write");
        }
        let graph_search = |q: &[f32], ef: usize| -> Vec<u32> {
            let hits = index.search_projected(q, K, ef);
            hits.iter().map(|h| h.seq as u32).collect()
        };

        let runs = sweep_ours_full(&index, &base, &queries, &exact);
        runs.iter().for_each(|r| full.add(n, &kind, build, mem, r));
        let peer_runs = if n <= full_peers_upto {
            peers(&base, &queries, &exact)
        } else {
            Err(format!(
                "over 1280-d skipped above BENCH_FULL_PEERS_UPTO={full_peers_upto}"
            ))
        };
        full.add_peers(n, &kind, DIM, (&runs, build), peer_runs);
        drop(base);

        let label = "lookalike HNSW (100-d)";
        let runs = sweep(label, &pqueries, &exact_projected, graph_search);
        runs.iter()
            .for_each(|r| graph.add(n, &kind, graph_build, mem, r));
        if n > hnsw_rs_upto {
            eprintln!("size {n}: hnsw_rs skipped above BENCH_HNSW_RS_UPTO={hnsw_rs_upto}");
        } else {
            let (theirs, build, mem) = build_hnsw_rs(&pbase);
            eprintln!("size {n}: hnsw_rs built its graph in {build:.1} s");
            let label = "hnsw_rs, its own build and search (100-d)";
            let search = |q: &[f32], ef: usize| -> Vec<u32> {
                let hits = theirs.search(q, K, ef);
                hits.iter().map(|h| h.d_id as u32).collect()
            };
            let their_runs = sweep(label, &pqueries, &exact_projected, search);
            their_runs
                .iter()
                .for_each(|r| graph.add(n, &kind, build, mem, r));
            graph.ratios.push(format!(
                "size {n}: lookalike / hnsw_rs build time = {:.2} ({graph_build:.1} s / {build:.1} s)",
                graph_build / build
            ));
        }
        let peer_runs = peers(&pbase, &pqueries, &exact_projected);
        graph.add_peers(n, &kind, PCA_DIM, (&runs, graph_build), peer_runs);
    }
    full.print(&format!(
        "Search path: recall@10 vs exact search on the 1280-d features, M={M}, ef_construction={EF_CONSTRUCTION}"
    ));
    graph.print(&format!(
        "HNSW alone on the same 100-d PCA projections: recall@10 vs exact search there, M={M}, ef_construction={EF_CONSTRUCTION}"
    ));
}
