//! The ANN index next to hnswlib and FAISS, on the same vectors in the same
//! run: `cargo bench --bench index`.
//!
//! Our path is the daemon's: PCA (100 components, fitted on up to 20,000
//! vectors) + HNSW (hnsw_rs) + exact re-rank of the top 2k or 4k (the
//! daemon's default, `--rerank-factor 4`) candidates on the full 1280-d
//! features. The peers build HNSW over the full
//! 1280-d vectors with the same M and ef_construction (inner product on
//! unit vectors = cosine). For each size: build time, memory, and recall@10
//! against exact search versus queries per second as ef sweeps; then our
//! QPS over each peer's at recall@10 >= 0.95.
//!
//! Vectors: real embeddings (EfficientNet-Lite0) of the Fashion-MNIST photos
//! that `scripts/fetch-datasets.sh --with-fashion-mnist` lays out, cached in
//! target/bench-cache. Sizes beyond the real photos use vectors DRAWN to
//! match them (Gaussian with the real vectors' mean and top-100 principal
//! covariance plus isotropic residual, clipped at 0 as ReLU features are,
//! then normalised); the table says which.
//!
//! Environment: BENCH_SIZES (default "10000,100000"), BENCH_QUERIES (500).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Instant,
};

use common::rss_mib;
use lookalike::embed::{Embedder, ModelKind};
use lookalike::index::{GraphParams, Index};
use lookalike::pca::{dot, Projection};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

const DIM: usize = 1280;
const K: usize = 10;
const M: usize = 24;
const EF_CONSTRUCTION: usize = 200;
const EFS: [usize; 6] = [16, 32, 64, 128, 256, 512];
/// Candidates re-ranked per query, as multiples of K (the daemon default is 4).
const RERANKS: [usize; 2] = [2, 4];

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

/// Real embeddings of up to `n` Fashion-MNIST photos, cached.
fn real_vectors(n: usize) -> Vec<Vec<f32>> {
    let dir = root().join("datasets/fashion-mnist");
    let cache = root().join(format!("target/bench-cache/fashion-mnist-lite0-{n}.f32"));
    if let Ok(bytes) = std::fs::read(&cache) {
        return bytes
            .chunks_exact(4 * DIM)
            .map(|row| {
                row.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect();
    }
    let mut files: Vec<PathBuf> = walk(&dir);
    files.sort();
    if files.is_empty() {
        eprintln!("no datasets/fashion-mnist: run scripts/fetch-datasets.sh --with-fashion-mnist; using the committed photos only");
        files = walk(&root().join("tests/data"));
    }
    // Interleave classes: files are grouped by class folder.
    let stride = (files.len() / n.max(1)).max(1);
    let picked: Vec<&PathBuf> = files.iter().step_by(stride).take(n).collect();
    let embedder = Embedder::load(ModelKind::EfficientNetLite0, None, 2).expect("model");
    let started = Instant::now();
    let inputs: Vec<Vec<f32>> = picked
        .par_iter()
        .map(|p| {
            embedder
                .input_from_bytes(&std::fs::read(p).expect("read"), u64::MAX)
                .expect("decode")
        })
        .collect();
    let vectors = embedder.embed_inputs(&inputs);
    eprintln!(
        "embedded {} real photos in {:.1} s",
        vectors.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::create_dir_all(cache.parent().expect("parent"));
    let bytes: Vec<u8> = vectors
        .iter()
        .flatten()
        .flat_map(|v: &f32| v.to_le_bytes())
        .collect();
    let _ = std::fs::write(&cache, bytes);
    vectors
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg")) {
            out.push(p);
        }
    }
    out
}

/// `n` vectors drawn to match `real`: mean + top principal directions with
/// their variances + isotropic residual, clipped at 0, normalised.
fn drawn_vectors(real: &[Vec<f32>], n: usize, seed: u64) -> Vec<Vec<f32>> {
    let p = Projection::fit(real, 100, real.len()).expect("fit");
    let mean: Vec<f32> = (0..DIM)
        .map(|j| real.iter().map(|v| v[j]).sum::<f32>() / real.len() as f32)
        .collect();
    let basis = p.components();
    let coords: Vec<Vec<f32>> = real
        .iter()
        .map(|v| {
            let c: Vec<f32> = v.iter().zip(&mean).map(|(a, m)| a - m).collect();
            basis.chunks_exact(DIM).map(|row| dot(row, &c)).collect()
        })
        .collect();
    let sd: Vec<f32> = (0..p.out_dim())
        .map(|i| (coords.iter().map(|c| c[i] * c[i]).sum::<f32>() / coords.len() as f32).sqrt())
        .collect();
    let total: f32 = real
        .iter()
        .map(|v| {
            v.iter()
                .zip(&mean)
                .map(|(a, m)| (a - m) * (a - m))
                .sum::<f32>()
        })
        .sum::<f32>()
        / real.len() as f32;
    let explained: f32 = sd.iter().map(|s| s * s).sum();
    let residual_sd = ((total - explained).max(0.0) / DIM as f32).sqrt();
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut v = mean.clone();
            for (row, s) in basis.chunks_exact(DIM).zip(&sd) {
                let z: f32 = gaussian(&mut rng) * s;
                v.iter_mut().zip(row).for_each(|(x, b)| *x += z * b);
            }
            v.iter_mut()
                .for_each(|x| *x = (*x + gaussian(&mut rng) * residual_sd).max(0.0));
            let norm = dot(&v, &v).sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn gaussian(rng: &mut StdRng) -> f32 {
    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// Exact top-K by cosine, for recall.
fn truth(base: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<Vec<u32>> {
    queries
        .par_iter()
        .map(|q| {
            let mut scored: Vec<(f32, u32)> = base
                .iter()
                .enumerate()
                .map(|(i, b)| (dot(q, b), i as u32))
                .collect();
            scored.select_nth_unstable_by(K, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(K);
            scored.iter().map(|s| s.1).collect()
        })
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

struct Run {
    ef: usize,
    recall: f64,
    qps_single: f64,
    qps_batch: f64,
}

/// Our PCA + HNSW + re-rank over `base`.
fn ours(
    base: &Arc<Vec<Vec<f32>>>,
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
) -> (f64, f64, Vec<(usize, Run)>) {
    let rss0 = rss_mib(std::process::id());
    let started = Instant::now();
    let sample: Vec<Vec<f32>> = base
        .iter()
        .step_by((base.len() / 20_000).max(1))
        .cloned()
        .collect();
    let projection = Arc::new(Projection::fit(&sample, 100, base.len()).expect("fit"));
    let params = GraphParams {
        m: M,
        ef_construction: EF_CONSTRUCTION,
        ef_search: 64,
    };
    let index = Index::graph(projection, params, base.len());
    let batch: Vec<(u64, Vec<f32>)> = base
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v.clone()))
        .collect();
    index.add_batch(&batch);
    drop(batch);
    let build = started.elapsed().as_secs_f64();
    let mem = rss_mib(std::process::id()) - rss0;
    let search = |q: &Vec<f32>, ef: usize, rerank: usize| -> Vec<u32> {
        let hits = index.search_ef(q, K * rerank, None, ef);
        let mut scored: Vec<(f32, u32)> = hits
            .iter()
            .map(|h| (dot(q, &base[h.seq as usize]), h.seq as u32))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.iter().take(K).map(|s| s.1).collect()
    };
    let mut runs = Vec::new();
    for rerank in RERANKS {
        for ef in EFS {
            let t = Instant::now();
            let found: Vec<Vec<u32>> = queries.iter().map(|q| search(q, ef, rerank)).collect();
            let qps_single = queries.len() as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            let _: Vec<Vec<u32>> = queries.par_iter().map(|q| search(q, ef, rerank)).collect();
            let qps_batch = queries.len() as f64 / t.elapsed().as_secs_f64();
            let recall = recall(&found, truth);
            runs.push((
                rerank,
                Run {
                    ef,
                    recall,
                    qps_single,
                    qps_batch,
                },
            ));
        }
    }
    (build, mem, runs)
}

fn write_f32(path: &Path, rows: &[Vec<f32>]) {
    let bytes: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v: &f32| v.to_le_bytes())
        .collect();
    std::fs::write(path, bytes).expect("write");
}

fn peers(base: &[Vec<f32>], queries: &[Vec<f32>], truth: &[Vec<u32>]) -> Option<serde_json::Value> {
    let python = root().join(".tools/bench-venv/bin/python");
    if !python.exists() {
        return None;
    }
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
    let out = Command::new(python)
        .arg(root().join("scripts/peer_index.py"))
        .args([
            "--base",
            &b.to_string_lossy(),
            "--queries",
            &q.to_string_lossy(),
            "--truth",
            &t.to_string_lossy(),
        ])
        .args([
            "--dim",
            &DIM.to_string(),
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
            "--threads",
            "2",
            "--lib",
            "both",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "peer_index.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Best 2-thread QPS among runs at recall >= 0.95.
fn best_at_95(runs: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    runs.filter(|(r, _)| *r >= 0.95)
        .map(|(_, q)| q)
        .fold(None, |a, q| Some(a.map_or(q, |a: f64| a.max(q))))
}

fn main() {
    let sizes = env_list("BENCH_SIZES", "10000,100000");
    let nq = env_list("BENCH_QUERIES", "500")
        .first()
        .copied()
        .unwrap_or(500);
    let max_real = 10_000 + nq;
    let real = real_vectors(max_real);
    println!(
        "\n## ANN index: recall@10 vs exact search, M={M}, ef_construction={EF_CONSTRUCTION}\n"
    );
    println!("| size | vectors | index | build s | memory MiB | ef | recall@10 | QPS 1 thread | QPS 2 threads |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &n in &sizes {
        let (base, queries, kind) = if n + nq <= real.len() {
            (real[..n].to_vec(), real[real.len() - nq..].to_vec(), "real")
        } else {
            let drawn = drawn_vectors(&real, n + nq, n as u64);
            (drawn[..n].to_vec(), drawn[n..].to_vec(), "drawn")
        };
        let truth = truth(&base, &queries);
        let base = Arc::new(base);
        let (build, mem, runs) = ours(&base, &queries, &truth);
        for (rerank, r) in &runs {
            println!(
                "| {n} | {kind} | lookalike PCA-100+HNSW, re-rank {rerank}k | {build:.1} | {mem:.0} | {} | {:.4} | {:.0} | {:.0} |",
                r.ef, r.recall, r.qps_single, r.qps_batch
            );
        }
        let our_best = best_at_95(runs.iter().map(|(_, r)| (r.recall, r.qps_batch)));
        match peers(&base, &queries, &truth) {
            Some(v) => {
                for lib in ["hnswlib", "faiss"] {
                    let p = &v[lib];
                    let (b, m) = (
                        p["build_s"].as_f64().unwrap_or(f64::NAN),
                        p["mem_mib"].as_f64().unwrap_or(f64::NAN),
                    );
                    let runs = p["runs"].as_array().cloned().unwrap_or_default();
                    for r in &runs {
                        println!(
                            "| {n} | {kind} | {lib} HNSW (1280-d) | {b:.1} | {m:.0} | {} | {:.4} | {:.0} | {:.0} |",
                            r["ef"], r["recall"].as_f64().unwrap_or(0.0),
                            r["qps_single"].as_f64().unwrap_or(0.0), r["qps_batch"].as_f64().unwrap_or(0.0)
                        );
                    }
                    let peer_best = best_at_95(runs.iter().map(|r| {
                        (
                            r["recall"].as_f64().unwrap_or(0.0),
                            r["qps_batch"].as_f64().unwrap_or(0.0),
                        )
                    }));
                    ratios.push(match (our_best, peer_best) {
                        (Some(o), Some(p)) => format!(
                            "size {n}: lookalike / {lib} QPS at recall@10 >= 0.95 = {:.2}",
                            o / p
                        ),
                        _ => format!(
                            "size {n}: lookalike / {lib}: one side never reached recall 0.95"
                        ),
                    });
                }
            }
            None => ratios.push(format!(
                "size {n}: peers skipped (run scripts/setup-bench-env.sh)"
            )),
        }
    }
    println!();
    for r in ratios {
        println!("{r}");
    }
}
