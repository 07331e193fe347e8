//! 1x1 convolutions (and the stem's im2col product) as one matrix multiply
//! per layer, with the epilogue fused in: `out[p] = act(x[p] · W + bias +
//! residual[p])`.
//!
//! On AVX2 + FMA CPUs without AVX-512 this runs our own kernel. The
//! weights are packed once, at load, into panels of 16 output channels
//! (`[cin][16]`, the last panel 8 wide where `cout` is not a multiple of
//! 16), so nothing is copied per call: the activations are read in place,
//! six pixels at a time, each input value broadcast against two 8-wide
//! weight vectors into 12 accumulators that stay in registers, and bias,
//! residual and ReLU6 are applied as the tile is stored. That removes the
//! per-call packing and the separate epilogue pass a general GEMM needs.
//! Elsewhere (AVX-512, other architectures, channel counts not a multiple
//! of 8) the `gemm` crate does the product and [`kernels`] the epilogue.

use std::ops::Range;

use rayon::prelude::*;

use super::kernels;

/// Pixels per register tile.
const TILE_ROWS: usize = 6;

/// A 1x1 convolution's weights, `[cin][cout]`, plus the same packed in
/// panels for the AVX2 kernel.
pub struct PointwiseWeights {
    /// Row-major `[cin][cout]`, for the general path.
    plain: Vec<f32>,
    /// Panels of 16 (the last maybe 8) output channels, each `[cin][width]`.
    panels: Vec<f32>,
    cin: usize,
    cout: usize,
}

impl PointwiseWeights {
    /// `weight` is row-major `[cin][cout]`.
    pub fn new(weight: Vec<f32>, cin: usize, cout: usize) -> Self {
        let mut panels = Vec::with_capacity(weight.len());
        for (start, width) in panel_spans(cout) {
            for row in weight.chunks_exact(cout) {
                panels.extend_from_slice(&row[start..start + width]);
            }
        }
        PointwiseWeights {
            plain: weight,
            panels,
            cin,
            cout,
        }
    }

    pub fn cout(&self) -> usize {
        self.cout
    }
}

/// Output channel spans of the packed panels: 16 wide, the last one 8 wide
/// if `cout` is an odd multiple of 8 (and whatever is left otherwise,
/// which only the general path handles).
fn panel_spans(cout: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..cout.div_ceil(16)).map(move |j| (16 * j, (cout - 16 * j).min(16)))
}

/// What is added to the product before it is stored.
pub struct Epilogue<'a> {
    pub bias: &'a [f32],
    /// `[p][cout]`, added after the bias.
    pub residual: Option<&'a [f32]>,
    pub relu6: bool,
}

/// `out[p][cout] = act(x[p][cin] · W + bias + residual[p])` for every
/// pixel `p` of `x`, with the rayon pool when `parallel`.
pub fn conv1x1(
    x: &[f32],
    w: &PointwiseWeights,
    epilogue: &Epilogue<'_>,
    out: &mut [f32],
    parallel: bool,
) {
    let pixels = x.len() / w.cin;
    assert_eq!(x.len(), pixels * w.cin);
    assert_eq!(out.len(), pixels * w.cout);
    assert_eq!(epilogue.bias.len(), w.cout);
    if let Some(r) = epilogue.residual {
        assert_eq!(r.len(), out.len());
    }
    if use_own_kernel(w.cout) {
        let out = OutPtr(out.as_mut_ptr());
        let panels = w.cout.div_ceil(16);
        let threads = rayon::current_num_threads();
        if parallel && w.cout > pixels && panels >= threads {
            // Fewer pixels than output channels (the last, small stages of
            // one image): each thread takes a share of the weight panels,
            // so each reads only its part of the (then larger) weights.
            let share = panels.div_ceil(threads);
            (0..threads).into_par_iter().for_each(|t| {
                let mine = (t * share).min(panels)..((t + 1) * share).min(panels);
                // SAFETY: the CPU has AVX2 and FMA (checked by
                // `use_own_kernel`); lengths are checked above; the
                // threads write disjoint channels.
                unsafe { pixel_blocks(x, w, epilogue, pixels, mine, &out) }
            });
            return;
        }
        // Pixel blocks whose activations stay in L2 while every panel
        // passes over them; at least two per thread when parallel.
        if !parallel {
            // SAFETY: the CPU has AVX2 and FMA (checked by
            // `use_own_kernel`); lengths are checked above.
            unsafe { pixel_blocks(x, w, epilogue, pixels, 0..panels, &out) };
            return;
        }
        let share = pixels.div_ceil(2 * threads);
        let block = block_rows(w.cin)
            .min(share.div_ceil(TILE_ROWS) * TILE_ROWS)
            .max(TILE_ROWS);
        (0..pixels)
            .into_par_iter()
            .step_by(block)
            .for_each(|first| {
                let rows = block.min(pixels - first);
                // SAFETY: as above; each block writes its own pixels.
                unsafe { block_avx2(x, w, epilogue, first, rows, 0..panels, &out) }
            });
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    kernels::matmul(x, &w.plain, out, w.cin, w.cout, threads);
    kernels::bias_residual_act(
        out,
        epilogue.bias,
        epilogue.residual,
        epilogue.relu6,
        parallel,
    );
}

/// Our kernel runs where it was measured to beat the general one: AVX2 +
/// FMA without AVX-512 (where `gemm` has 16-wide kernels), channel counts
/// in multiples of 8.
fn use_own_kernel(cout: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cout.is_multiple_of(8)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cout;
        false
    }
}

/// The output buffer, shared by threads that write disjoint parts of it.
struct OutPtr(*mut f32);

// SAFETY: only used to write disjoint pixels or channels from each thread,
// while the `&mut [f32]` it came from is borrowed by `conv1x1`.
unsafe impl Sync for OutPtr {}

/// All `pixels` in blocks of [`block_rows`], for the panels in `panels`.
///
/// # Safety
/// As [`block_avx2`].
unsafe fn pixel_blocks(
    x: &[f32],
    w: &PointwiseWeights,
    ep: &Epilogue<'_>,
    pixels: usize,
    panels: Range<usize>,
    out: &OutPtr,
) {
    let block = block_rows(w.cin);
    for first in (0..pixels).step_by(block) {
        let rows = block.min(pixels - first);
        block_avx2(x, w, ep, first, rows, panels.clone(), out);
    }
}

/// Pixels per block: about 96 KiB of activations, a multiple of the tile.
fn block_rows(cin: usize) -> usize {
    let rows = (96 * 1024 / 4 / cin.max(1)).clamp(TILE_ROWS, 16 * TILE_ROWS * 8);
    rows / TILE_ROWS * TILE_ROWS
}

/// Pixels `first..first + rows` of the output, for the weight panels in
/// `panels` (indices of [`panel_spans`]).
///
/// # Safety
/// The CPU has AVX2 and FMA; `x`, the residual and `out` hold all pixels;
/// no other thread writes these pixels' channels of these panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    x: &[f32],
    w: &PointwiseWeights,
    ep: &Epilogue<'_>,
    first: usize,
    rows: usize,
    panels: Range<usize>,
    out: &OutPtr,
) {
    let (cin, cout) = (w.cin, w.cout);
    let a = x.as_ptr().add(first * cin);
    let res = ep.residual.map(|r| r.as_ptr().add(first * cout));
    let out = out.0.add(first * cout);
    let spans = || {
        panel_spans(cout)
            .skip(panels.start)
            .take(panels.end - panels.start)
    };
    let tile = |row: usize, m: usize, start: usize, width: usize| {
        let tile = Tile {
            a: a.add(row * cin),
            lda: cin,
            panel: w.panels.as_ptr().add(start * cin),
            k: cin,
            bias: ep.bias.as_ptr().add(start),
            residual: res.map(|r| r.add(row * cout + start)),
            relu6: ep.relu6,
            c: out.add(row * cout + start),
            ldc: cout,
        };
        match (width, m) {
            (16, 6) => tile.run16::<6>(),
            (16, 5) => tile.run16::<5>(),
            (16, 4) => tile.run16::<4>(),
            (16, 3) => tile.run16::<3>(),
            (16, 2) => tile.run16::<2>(),
            (16, 1) => tile.run16::<1>(),
            (_, 6) => tile.run8::<6>(),
            (_, 5) => tile.run8::<5>(),
            (_, 4) => tile.run8::<4>(),
            (_, 3) => tile.run8::<3>(),
            (_, 2) => tile.run8::<2>(),
            _ => tile.run8::<1>(),
        }
    };
    let strips = (0..rows)
        .step_by(TILE_ROWS)
        .map(|row| (row, (rows - row).min(TILE_ROWS)));
    if cin * cout * 4 <= SMALL_WEIGHTS {
        // All weights stay in cache: finish each strip of pixels across
        // every panel, so output rows are written whole, once.
        for (row, m) in strips {
            for (start, width) in spans() {
                tile(row, m, start, width);
            }
        }
    } else {
        // Large weights: one panel at a time over the block's pixels, which
        // stay in L2.
        for (start, width) in spans() {
            for (row, m) in strips.clone() {
                tile(row, m, start, width);
            }
        }
    }
}

/// Weights (bytes) small enough to stay in L1/L2 across a pixel block.
const SMALL_WEIGHTS: usize = 128 * 1024;

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_avx2(
    _: &[f32],
    _: &PointwiseWeights,
    _: &Epilogue<'_>,
    _: usize,
    _: usize,
    _: Range<usize>,
    _: &OutPtr,
) {
    unreachable!("only selected on x86_64")
}

/// One register tile: `M` pixels by 16 (or 8) output channels.
#[cfg(target_arch = "x86_64")]
struct Tile {
    /// First pixel's inputs; pixel `i` at `a + i * lda`.
    a: *const f32,
    lda: usize,
    /// `[k][width]` weights.
    panel: *const f32,
    k: usize,
    bias: *const f32,
    residual: Option<*const f32>,
    relu6: bool,
    /// First pixel's outputs; pixel `i` at `c + i * ldc`.
    c: *mut f32,
    ldc: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run16<const M: usize>(&self) {
        use std::arch::x86_64::*;
        let mut lo = [_mm256_setzero_ps(); M];
        let mut hi = [_mm256_setzero_ps(); M];
        // Row pointers up front: the loop then only steps one index.
        let rows: [*const f32; M] = std::array::from_fn(|i| self.a.add(i * self.lda));
        let mut b = self.panel;
        for kk in 0..self.k {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            b = b.add(16);
            for i in 0..M {
                let v = _mm256_broadcast_ss(&*rows[i].add(kk));
                lo[i] = _mm256_fmadd_ps(v, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(v, b1, hi[i]);
            }
        }
        for i in 0..M {
            self.store(i, 0, lo[i]);
            self.store(i, 8, hi[i]);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run8<const M: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [_mm256_setzero_ps(); M];
        for kk in 0..self.k {
            let b = _mm256_loadu_ps(self.panel.add(kk * 8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let v = _mm256_broadcast_ss(&*self.a.add(i * self.lda + kk));
                *acc = _mm256_fmadd_ps(v, b, *acc);
            }
        }
        for (i, &acc) in acc.iter().enumerate() {
            self.store(i, 0, acc);
        }
    }

    /// Bias, residual and ReLU6 on 8 channels of pixel `i`, then stores.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(&self, i: usize, offset: usize, acc: std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let mut v = _mm256_add_ps(acc, _mm256_loadu_ps(self.bias.add(offset)));
        if let Some(r) = self.residual {
            v = _mm256_add_ps(v, _mm256_loadu_ps(r.add(i * self.ldc + offset)));
        }
        if self.relu6 {
            v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0));
        }
        _mm256_storeu_ps(self.c.add(i * self.ldc + offset), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::kernels::tests::ramp;

    /// Every tile shape: pixel counts that leave 1..5 rows over, channel
    /// counts with and without an 8-wide panel, with and without residual;
    /// fewer pixels than channels (threads split the panels).
    #[test]
    fn matches_the_definition() {
        for (p, cin, cout) in [
            (37, 19, 24),
            (6, 3, 16),
            (13, 40, 40),
            (200, 27, 32),
            (5, 8, 8),
            (7, 5, 12),
            (5, 12, 48),
            (7, 9, 40),
        ] {
            let x = ramp(p * cin, 1.0);
            let w = ramp(cin * cout, 1.0);
            let bias = ramp(cout, 1.0);
            let res = ramp(p * cout, 2.0);
            let weights = PointwiseWeights::new(w.clone(), cin, cout);
            for (residual, relu6) in [(None, false), (Some(&res[..]), true)] {
                let mut out = vec![0f32; p * cout];
                let ep = Epilogue {
                    bias: &bias,
                    residual,
                    relu6,
                };
                conv1x1(&x, &weights, &ep, &mut out, true);
                for i in 0..p {
                    for j in 0..cout {
                        let dot: f32 = (0..cin).map(|k| x[i * cin + k] * w[k * cout + j]).sum();
                        let mut want = dot + bias[j] + residual.map_or(0.0, |r| r[i * cout + j]);
                        if relu6 {
                            want = want.clamp(0.0, 6.0);
                        }
                        let got = out[i * cout + j];
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{p}x{cin}x{cout} at {i},{j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
