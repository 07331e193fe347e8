//! A database of drawn (not embedded) features, for benchmarks at sizes
//! where embedding real photos would take hours: `cold_start` and
//! `examples/profile_query`.
//!
//! Features come from a low-dimensional latent model, because that is what
//! makes a graph index cheap or dear to build and search. Real photo
//! embeddings sit near a low-dimensional, clustered surface; features drawn
//! independently per dimension (our first version of this bench) are
//! near-isotropic noise after PCA, the worst case for any HNSW graph: a 100k
//! rebuild took 410 s on them against 109 s for real embeddings of 100k
//! Fashion-MNIST photos on the same machine. Here each feature is
//! `relu(mean + A z + noise)`, normalised, with `z` in [`LATENT`] dimensions
//! drawn around one of [`CLUSTERS`] centres, `A` a fixed random matrix and a
//! small isotropic `noise`. The latent dimensions' spread decays (the `j`-th
//! has scale `1 / (1 + j / 4)`), as a photo embedding's principal components
//! do: a flat spectrum after a few large components is also what makes
//! linfa's truncated SVD (LOBPCG) crawl.

use std::{collections::BTreeMap, path::Path};

use lookalike::engine::{META_MODEL, META_PCA};
use lookalike::pca::Projection;
use lookalike::store::{Attachments, Record, SledStore, Store};
use rand::{rngs::StdRng, Rng, SeedableRng};

pub const DIM: usize = 1280;
/// Dimensions of the latent space.
const LATENT: usize = 64;
/// Cluster centres in the latent space ("kinds of photo").
const CLUSTERS: usize = 1000;
/// Spread of a cluster around its centre, relative to the centres' spread.
const CLUSTER_SD: f32 = 0.35;
/// Isotropic noise per feature dimension, relative to the latent signal.
const NOISE_SD: f32 = 0.004;

/// The latent model: mean, mixing matrix and cluster centres, fixed by a
/// seed so every run draws from the same distribution.
pub struct Latent {
    mean: Vec<f32>,
    /// DIM x LATENT, row-major.
    mixing: Vec<f32>,
    centres: Vec<[f32; LATENT]>,
}

impl Latent {
    pub fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(0x1a7e);
        let mean = (0..DIM).map(|_| rng.random_range(0.0..0.05f32)).collect();
        let mixing = (0..DIM * LATENT)
            .map(|_| gaussian(&mut rng) * 0.02)
            .collect();
        let centres = (0..CLUSTERS)
            .map(|_| std::array::from_fn(|j| gaussian(&mut rng) * scale(j)))
            .collect();
        Latent {
            mean,
            mixing,
            centres,
        }
    }

    /// One L2-normalised, non-negative feature vector.
    pub fn draw(&self, rng: &mut StdRng) -> Vec<f32> {
        let centre = &self.centres[rng.random_range(0..CLUSTERS)];
        let z: [f32; LATENT] =
            std::array::from_fn(|j| centre[j] + gaussian(rng) * CLUSTER_SD * scale(j));
        let mut v: Vec<f32> = self
            .mean
            .iter()
            .zip(self.mixing.chunks_exact(LATENT))
            .map(|(m, row)| {
                let signal: f32 = row.iter().zip(&z).map(|(a, b)| a * b).sum();
                (m + signal + gaussian(rng) * NOISE_SD).max(0.0)
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

/// Spread of latent dimension `j`.
fn scale(j: usize) -> f32 {
    1.0 / (1.0 + j as f32 / 4.0)
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// The id of the `i`-th drawn record.
pub fn record_id(i: usize) -> String {
    format!("img-{i:07}")
}

/// Writes `n` drawn records into a sled store in `dir/sled`, plus the model
/// name and a PCA fitted on a sample, as a daemon with `--data-dir dir`
/// expects them.
#[allow(dead_code)] // not every bench that includes this module uses it
pub fn build_store(dir: &Path, n: usize) {
    build_store_with_copies(dir, n, 0);
}

/// [`build_store`], where with `copy_every` > 0 every `copy_every`-th
/// record is a near-copy of the record before it (its features plus a
/// little noise, renormalised: cosine about 0.99), so that a grouping has
/// known duplicate pairs to find: record `i` is then a copy of `i - 1`
/// when `i % copy_every == copy_every - 1`.
pub fn build_store_with_copies(dir: &Path, n: usize, copy_every: usize) {
    let store = SledStore::open(&dir.join("sled")).expect("open");
    store
        .meta_put(META_MODEL, b"efficientnet-lite0")
        .expect("meta");
    let latent = Latent::new();
    let mut rng = StdRng::seed_from_u64(11);
    let sample: Vec<Vec<f32>> = (0..2000).map(|_| latent.draw(&mut rng)).collect();
    let projection = Projection::fit(&sample, 100, n).expect("fit");
    store
        .meta_put(META_PCA, &projection.to_bytes())
        .expect("meta");
    let mut previous: Vec<f32> = Vec::new();
    for i in 0..n {
        let features = if copy_every > 0 && i % copy_every == copy_every - 1 && i > 0 {
            let mut v: Vec<f32> = previous
                .iter()
                .map(|x| (x + gaussian(&mut rng) * 0.003).max(0.0))
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            v
        } else {
            latent.draw(&mut rng)
        };
        previous.clone_from(&features);
        let record = Record {
            id: record_id(i),
            seq: 0,
            features,
            siamese: None,
            metadata: BTreeMap::new(),
            inserted_at_ms: 0,
            facts: None,
        };
        store
            .insert(&record, false, Attachments::default())
            .expect("insert");
    }
    store.flush().expect("flush");
}
