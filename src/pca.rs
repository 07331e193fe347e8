//! PCA projection of CNN features.
//!
//! The HNSW graph is built over 100-d projections instead of the 1280-d
//! features: distance evaluations are 13x cheaper and the graph is smaller.
//! Search results are re-ranked on the full features afterwards, so the
//! projection trades a little candidate recall for speed, not accuracy.
//!
//! The fit takes the top eigenvectors of the samples' covariance (f64) by
//! subspace iteration: a fixed number of rounds of multiplying a random
//! block of `components + 20` vectors by the covariance and
//! re-orthonormalising it (linfa-linalg's QR), then a Rayleigh-Ritz step
//! (linfa-linalg's symmetric eigensolver on the small block). Its time
//! depends only on the sample count and the width, never on the spectrum.
//! linfa-reduction's `Pca`, used before, runs LOBPCG to a tight tolerance
//! with no iteration cap a caller can set: on a flat spectrum (nearly equal
//! variance in every direction) it crawled, 61 s for 5,000 samples and over
//! 6 min at 20,000; a full dense eigendecomposition of the 1280 x 1280
//! covariance took 42 s. On such a spectrum any top subspace is as good as
//! another for the graph, whose candidates are re-ranked anyway. The fitted
//! mean and components are kept as f32, applied here, and persisted in the
//! store as a small blob.

use linfa_linalg::{
    eigh::{EigSort, EighInto},
    qr::QRInto,
    Order,
};
use ndarray::{Array2, Axis};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::vector::dot;

const BLOB_VERSION: u32 = 1;
/// Extra vectors carried through the subspace iteration beyond those kept.
const OVERSAMPLE: usize = 20;
/// Rounds of subspace iteration.
const ROUNDS: usize = 16;

/// A fitted projection: `y = components · (x - mean)`, then L2-normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    mean: Vec<f32>,
    /// `out_dim` rows of `in_dim`, row-major.
    components: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
    /// Images the projection was fitted on, to decide when to refit.
    fitted_on: usize,
}

impl Projection {
    /// Fits `components` dimensions (fewer when there are fewer samples) on
    /// `samples`, all of one width.
    pub fn fit(samples: &[Vec<f32>], components: usize, fitted_on: usize) -> Result<Self> {
        let in_dim = samples.first().map(Vec::len).unwrap_or(0);
        if samples.len() < 2 || in_dim == 0 {
            return Err(Error::Pca(format!(
                "need at least 2 samples to fit, got {}",
                samples.len()
            )));
        }
        let out_dim = components.min(samples.len() - 1).min(in_dim);
        let mut data = Array2::<f64>::zeros((samples.len(), in_dim));
        for (mut row, sample) in data.rows_mut().into_iter().zip(samples) {
            if sample.len() != in_dim {
                return Err(Error::Pca("samples differ in width".into()));
            }
            row.iter_mut()
                .zip(sample)
                .for_each(|(r, &v)| *r = f64::from(v));
        }
        let mean = data
            .mean_axis(Axis(0))
            .ok_or_else(|| Error::Pca("no samples".into()))?;
        data -= &mean;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(Error::Pca("the samples hold non-finite values".into()));
        }
        let vectors = if samples.len() >= in_dim {
            top_eigenvectors(&data.t().dot(&data), out_dim)?
        } else {
            // Fewer samples than dimensions: the same directions from the
            // smaller Gram matrix, v = X^T u / |X^T u|.
            let mut v = data
                .t()
                .dot(&top_eigenvectors(&data.dot(&data.t()), out_dim)?);
            for mut column in v.columns_mut() {
                let norm = column.dot(&column).sqrt();
                if norm > 1e-12 {
                    column /= norm;
                }
            }
            v
        };
        let components = (0..out_dim)
            .flat_map(|k| {
                vectors
                    .column(k)
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Projection {
            mean: mean.iter().map(|&v| v as f32).collect(),
            components,
            in_dim,
            out_dim,
            fitted_on,
        })
    }

    /// Width of the vectors it projects.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The principal directions, `out_dim` rows of the input width.
    pub fn components(&self) -> &[f32] {
        &self.components
    }

    pub fn fitted_on(&self) -> usize {
        self.fitted_on
    }

    /// Projects and L2-normalises one feature vector.
    pub fn project(&self, x: &[f32]) -> Vec<f32> {
        let centred: Vec<f32> = x.iter().zip(&self.mean).map(|(a, m)| a - m).collect();
        let mut y: Vec<f32> = self
            .components
            .chunks_exact(self.in_dim)
            .map(|row| dot(row, &centred))
            .collect();
        let norm = dot(&y, &y).sqrt();
        if !norm.is_finite() || norm < 1e-12 {
            // Nothing to point at (or non-finite input): the zero vector,
            // similar to nothing, instead of NaNs in the graph.
            y.iter_mut().for_each(|v| *v = 0.0);
            return y;
        }
        y.iter_mut().for_each(|v| *v /= norm);
        y
    }

    /// Serialises for the store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 4 * (self.mean.len() + self.components.len()));
        for v in [BLOB_VERSION, self.in_dim as u32, self.out_dim as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.fitted_on as u64).to_le_bytes());
        for v in self.mean.iter().chain(&self.components) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads what [`Projection::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let corrupt = |what: &str| Error::Storage(format!("stored PCA is corrupt: {what}"));
        if bytes.len() < 20 {
            return Err(corrupt("truncated header"));
        }
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        if word(0) != BLOB_VERSION {
            return Err(corrupt("unknown version"));
        }
        let (in_dim, out_dim) = (word(4) as usize, word(8) as usize);
        let fitted_on =
            u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| corrupt("header"))?);
        let floats: Vec<f32> = bytes[20..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if floats.len() != in_dim * (out_dim + 1) || !(bytes.len() - 20).is_multiple_of(4) {
            return Err(corrupt("length does not match dimensions"));
        }
        Ok(Projection {
            mean: floats[..in_dim].to_vec(),
            components: floats[in_dim..].to_vec(),
            in_dim,
            out_dim,
            fitted_on: fitted_on as usize,
        })
    }
}

/// The `k` eigenvectors of the symmetric (positive semi-definite) `matrix`
/// with the largest
/// eigenvalues, as columns, by subspace iteration (see the module docs).
/// Scale does not matter, so the covariance need not be divided by `n - 1`.
fn top_eigenvectors(matrix: &Array2<f64>, k: usize) -> Result<Array2<f64>> {
    let dim = matrix.nrows();
    let width = (k + OVERSAMPLE).min(dim);
    let failed = |what: &str, e: linfa_linalg::LinalgError| {
        Error::Pca(format!("fitting {k} components: {what}: {e}"))
    };
    let mut rng = StdRng::seed_from_u64(0x00ca_11ed);
    let mut block = Array2::from_shape_fn((dim, width), |_| rng.random_range(-1.0..1.0));
    for _ in 0..ROUNDS {
        block = matrix
            .dot(&block)
            .qr_into()
            .map_err(|e| failed("orthonormalising", e))?
            .generate_q();
    }
    let small = block.t().dot(&matrix.dot(&block));
    let small = (&small + &small.t()) / 2.0;
    let (_, rotation) = small
        .eigh_into()
        .map_err(|e| failed("the small eigenproblem", e))?
        .sort_eig(Order::Largest);
    Ok(block.dot(&rotation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Points near a 3-d subspace of a 40-d space.
    fn samples(n: usize) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(7);
        let basis: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..40).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        (0..n)
            .map(|_| {
                let c: Vec<f32> = (0..3).map(|_| rng.random_range(-1.0..1.0)).collect();
                (0..40)
                    .map(|j| {
                        (0..3).map(|i| c[i] * basis[i][j]).sum::<f32>()
                            + rng.random_range(-0.01..0.01)
                    })
                    .collect()
            })
            .collect()
    }

    /// 100 components asked of 1280-d features that span only 5
    /// dimensions (many copies of a few images): 95 eigenvalues are 0,
    /// where LOBPCG never converges.
    #[test]
    fn a_degenerate_spectrum_fits_and_projects() {
        let mut rng = StdRng::seed_from_u64(11);
        let basis: Vec<Vec<f32>> = (0..5)
            .map(|_| (0..1280).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let samples: Vec<Vec<f32>> = (0..4000)
            .map(|i| {
                let c = (i % 5, ((i / 5) % 7) as f32 * 0.1 + 0.3);
                (0..1280).map(|j| basis[c.0][j] * c.1).collect()
            })
            .collect();
        let started = std::time::Instant::now();
        let p = Projection::fit(&samples, 100, samples.len()).expect("fit");
        eprintln!("degenerate fit: {:?}", started.elapsed());
        assert_eq!(p.out_dim(), 100);
        // The projection still tells the five directions apart.
        let y: Vec<Vec<f32>> = (0..5).map(|i| p.project(&samples[i])).collect();
        for a in 0..5 {
            for b in 0..5 {
                let cos = dot(&y[a], &y[b]);
                assert!(cos.is_finite());
                if a == b {
                    assert!((cos - 1.0).abs() < 1e-3, "{a}: {cos}");
                }
            }
        }
    }

    /// By hand (it only prints the time): `PCA_N=20000 cargo test --lib --
    /// pca::tests::flat_spectrum_fit_time --ignored --nocapture`.
    #[test]
    #[ignore]
    fn flat_spectrum_fit_time() {
        let n: usize = std::env::var("PCA_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20000);
        let mut rng = StdRng::seed_from_u64(12);
        let samples: Vec<Vec<f32>> = (0..n)
            .map(|_| (0..1280).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let started = std::time::Instant::now();
        let p = Projection::fit(&samples, 100, samples.len()).expect("fit");
        eprintln!(
            "flat fit n={n}: {:?} out {}",
            started.elapsed(),
            p.out_dim()
        );
    }

    /// On a decaying spectrum like real features', the components capture
    /// the variance the exact top eigenvectors do.
    #[test]
    fn subspace_iteration_matches_the_exact_top_eigenvectors() {
        // More samples than dimensions (the covariance), and fewer (the
        // Gram matrix).
        for (n, d, k) in [(3000, 200, 50), (150, 400, 50)] {
            captures_the_exact_variance(n, d, k);
        }
    }

    fn captures_the_exact_variance(n: usize, d: usize, k: usize) {
        let mut rng = StdRng::seed_from_u64(13);
        let samples: Vec<Vec<f32>> = (0..n)
            .map(|_| {
                (0..d)
                    .map(|i| rng.random_range(-1.0f32..1.0) / (i as f32 + 1.0).sqrt())
                    .collect()
            })
            .collect();
        let p = Projection::fit(&samples, k, n).expect("fit");
        let mut data = Array2::<f64>::zeros((n, d));
        for (mut row, s) in data.rows_mut().into_iter().zip(&samples) {
            row.iter_mut().zip(s).for_each(|(r, &v)| *r = f64::from(v));
        }
        let mean = data.mean_axis(Axis(0)).expect("mean");
        data -= &mean;
        let cov = data.t().dot(&data) / (n - 1) as f64;
        let (exact, _) = cov
            .clone()
            .eigh_into()
            .expect("eigh")
            .sort_eig(Order::Largest);
        let exact: f64 = exact.iter().take(k).sum();
        let captured: f64 = p
            .components()
            .chunks_exact(d)
            .map(|c| {
                let c = ndarray::Array1::from_iter(c.iter().map(|&v| f64::from(v)));
                c.dot(&cov.dot(&c))
            })
            .sum();
        assert!(
            captured >= 0.999 * exact,
            "captured {captured}, exact {exact}"
        );
    }

    #[test]
    fn dot_matches_the_definition() {
        for len in [0, 1, 15, 16, 17, 100, 1280] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-3, "len {len}");
        }
    }

    #[test]
    fn keeps_the_structure_of_a_low_rank_set() {
        let data = samples(200);
        let p = Projection::fit(&data, 3, data.len()).expect("fit");
        assert_eq!(p.out_dim(), 3);
        // Cosine between projections tracks cosine between centred inputs.
        let centre =
            |x: &[f32]| -> Vec<f32> { x.iter().zip(&p.mean).map(|(a, m)| a - m).collect() };
        let cos = |a: &[f32], b: &[f32]| dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt());
        for pair in data.chunks(2).take(50) {
            let full = cos(&centre(&pair[0]), &centre(&pair[1]));
            let proj = dot(&p.project(&pair[0]), &p.project(&pair[1]));
            assert!(
                (full - proj).abs() < 0.05,
                "full {full} vs projected {proj}"
            );
        }
    }

    #[test]
    fn components_are_capped_by_samples_and_blob_round_trips() {
        let data = samples(10);
        let p = Projection::fit(&data, 100, 10).expect("fit");
        assert_eq!(p.out_dim(), 9);
        let back = Projection::from_bytes(&p.to_bytes()).expect("parse");
        assert_eq!(back, p);
        assert!(Projection::from_bytes(&p.to_bytes()[..30]).is_err());
    }
}
