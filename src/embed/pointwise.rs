//! 1x1 convolutions (and the stem's im2col product) as one matrix multiply
//! per layer, with the epilogue fused in: `out[p] = act(x[p] · W + bias +
//! residual[p])`.
//!
//! On x86-64 CPUs with AVX2 + FMA this runs our own kernel. The weights are
//! packed once, at load, into panels of 16 output channels (`[cin][16]`,
//! the last panel 8 wide where `cout` is not a multiple of 16), so nothing
//! is copied per call: the activations are read in place, a few pixels at a
//! time, each input value broadcast against the weight vectors into
//! accumulators that stay in registers, and bias, residual and ReLU6 are
//! applied as the tile is stored. That removes the per-call packing and the
//! separate epilogue pass a general GEMM needs.
//!
//! Two register tiles: with AVX2, 6 pixels by 16 channels (12 `ymm`
//! accumulators of 16 registers); with AVX-512, 12 pixels by 32 channels
//! (24 `zmm` accumulators of 32, two panels at once), which doubles the
//! work per instruction on CPUs with two 512-bit FMA units.
//! Elsewhere (other architectures, channel counts not a multiple of 8) the
//! `gemm` crate does the product and [`kernels`] the epilogue.

use std::ops::Range;

use rayon::prelude::*;

use super::kernels;

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
        assert!(cin > 0 && cout > 0, "pointwise layer of {cin} x {cout}");
        assert_eq!(weight.len(), cin * cout, "pointwise weights");
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
    conv1x1_on(Isa::detect(w.cout), x, w, epilogue, out, parallel)
}

/// [`conv1x1`] with our kernel for `isa`, or the general path for `None`.
fn conv1x1_on(
    isa: Option<Isa>,
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
    assert_eq!(w.panels.len(), w.cin * w.cout, "pointwise panels");
    if let Some(isa) = isa {
        // The kernels read whole 8- or 16-wide panels.
        assert!(
            w.cout.is_multiple_of(8) && isa.runs_here(),
            "{isa:?} for {} channels",
            w.cout
        );
    }
    let Some(isa) = isa else {
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
        return;
    };
    let out = OutPtr(out.as_mut_ptr());
    let layer = Layer {
        x,
        w,
        ep: epilogue,
        out: &out,
    };
    let panels = w.cout.div_ceil(16);
    let threads = rayon::current_num_threads();
    if parallel && w.cout > pixels && panels >= threads {
        // Fewer pixels than output channels (the last, small stages of
        // one image): each thread takes a share of the weight panels,
        // so each reads only its part of the (then larger) weights.
        let share = panels.div_ceil(threads);
        (0..threads).into_par_iter().for_each(|t| {
            let mine = (t * share).min(panels)..((t + 1) * share).min(panels);
            // SAFETY: `Isa::detect` checked the CPU; lengths are checked
            // above; the threads write disjoint channels.
            unsafe { pixel_blocks(isa, &layer, pixels, mine) }
        });
        return;
    }
    // Pixel blocks whose activations stay in L2 while every panel
    // passes over them; at least two per thread when parallel.
    if !parallel {
        // SAFETY: `Isa::detect` checked the CPU; lengths are checked above.
        unsafe { pixel_blocks(isa, &layer, pixels, 0..panels) };
        return;
    }
    let tile = isa.tile_rows(w.cout);
    let share = pixels.div_ceil(2 * threads);
    let block = block_rows(w.cin, tile)
        .min(share.div_ceil(tile) * tile)
        .max(tile);
    (0..pixels)
        .into_par_iter()
        .step_by(block)
        .for_each(|first| {
            let rows = block.min(pixels - first);
            // SAFETY: as above; each block writes its own pixels.
            unsafe { isa.block(&layer, first, rows, 0..panels) }
        });
}

/// Which of our kernels runs on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx2,
    Avx512,
}

impl Isa {
    /// Our fastest kernel for this CPU, where `cout` is a multiple of 8.
    fn detect(cout: usize) -> Option<Isa> {
        if !cout.is_multiple_of(8) {
            return None;
        }
        Isa::supported().last()
    }

    /// The kernels this CPU can run, slowest first.
    fn supported() -> impl DoubleEndedIterator<Item = Isa> {
        [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.runs_here())
    }

    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            match self {
                Isa::Avx2 => avx2,
                Isa::Avx512 => avx2 && has!("avx512f") && has!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Pixels per register tile, for a layer of `cout` channels.
    fn tile_rows(self, cout: usize) -> usize {
        match self {
            Isa::Avx2 => YMM_ROWS,
            Isa::Avx512 if cout <= NARROW_COUT => 12,
            Isa::Avx512 => 6,
        }
    }

    /// See [`block_avx2`].
    ///
    /// # Safety
    /// As [`block_avx2`], and the CPU has this instruction set.
    unsafe fn block(self, l: &Layer<'_>, first: usize, rows: usize, panels: Range<usize>) {
        match self {
            Isa::Avx2 => block_avx2(l, first, rows, panels),
            Isa::Avx512 => block_avx512(l, first, rows, panels),
        }
    }
}

/// What every block of one `conv1x1` call shares.
struct Layer<'a> {
    x: &'a [f32],
    w: &'a PointwiseWeights,
    ep: &'a Epilogue<'a>,
    out: &'a OutPtr,
}

/// The output buffer, shared by threads that write disjoint parts of it.
struct OutPtr(*mut f32);

// SAFETY: only used to write disjoint pixels or channels from each thread,
// while the `&mut [f32]` it came from is borrowed by `conv1x1`.
unsafe impl Sync for OutPtr {}

/// All `pixels` in blocks of [`block_rows`], for the panels in `panels`.
///
/// # Safety
/// As [`Isa::block`].
unsafe fn pixel_blocks(isa: Isa, l: &Layer<'_>, pixels: usize, panels: Range<usize>) {
    let block = block_rows(l.w.cin, isa.tile_rows(l.w.cout));
    for first in (0..pixels).step_by(block) {
        let rows = block.min(pixels - first);
        isa.block(l, first, rows, panels.clone());
    }
}

/// Pixels per block: about 96 KiB of activations, a multiple of the tile.
fn block_rows(cin: usize, tile: usize) -> usize {
    let rows = (96 * 1024 / 4 / cin.max(1)).clamp(tile, 16 * 6 * 8);
    rows / tile * tile
}

/// Calls `tile(row, m, start, width)` for every register tile of a block
/// of `rows` pixels: strips of `tile_rows` pixels (`m` of them, fewer in the
/// last strip) by the output channel groups `groups` yields (`width`
/// channels from `start`). With small weights each strip crosses every
/// group, so output rows are written whole, once; with large ones each
/// group crosses every strip, whose activations stay in L2.
#[inline(always)]
fn for_each_tile<G, F>(rows: usize, tile_rows: usize, small_weights: bool, groups: G, mut tile: F)
where
    G: Iterator<Item = (usize, usize)> + Clone,
    F: FnMut(usize, usize, usize, usize),
{
    let strips = (0..rows)
        .step_by(tile_rows)
        .map(|row| (row, (rows - row).min(tile_rows)));
    if small_weights {
        for (row, m) in strips {
            for (start, width) in groups.clone() {
                tile(row, m, start, width);
            }
        }
    } else {
        for (start, width) in groups {
            for (row, m) in strips.clone() {
                tile(row, m, start, width);
            }
        }
    }
}

/// Output channel groups over the panels in `panels` (indices of
/// [`panel_spans`]): `(start, width)`, up to `most` neighbouring 16-wide
/// panels at a time; an 8-wide last panel alone.
fn channel_groups(
    cout: usize,
    panels: Range<usize>,
    most: usize,
) -> impl Iterator<Item = (usize, usize)> + Clone {
    let full = panels.start..panels.end.min(cout / 16);
    let grouped = full.clone().step_by(most).map(move |j| {
        let n = most.min(full.end - j);
        (16 * j, 16 * n)
    });
    let narrow = (panels.end > cout / 16).then(|| (16 * (cout / 16), cout % 16));
    grouped.chain(narrow)
}

/// Weights (bytes) small enough to stay in L1/L2 across a pixel block.
const SMALL_WEIGHTS: usize = 128 * 1024;

/// The register tile of the channels from `start` for the pixels from
/// `pixel`.
///
/// # Safety
/// The pixels and channels lie inside the layer's input, residual and
/// output.
#[inline(always)]
unsafe fn tile_at(l: &Layer<'_>, pixel: usize, start: usize) -> Tile {
    let (cin, cout) = (l.w.cin, l.w.cout);
    Tile {
        a: l.x.as_ptr().add(pixel * cin),
        lda: cin,
        panel: l.w.panels.as_ptr().add(start * cin),
        k: cin,
        bias: l.ep.bias.as_ptr().add(start),
        residual: l.ep.residual.map(|r| r.as_ptr().add(pixel * cout + start)),
        relu6: l.ep.relu6,
        c: l.out.0.add(pixel * cout + start),
        ldc: cout,
    }
}

/// Pixels per AVX2 register tile.
const YMM_ROWS: usize = 6;

/// Pixels `first..first + rows` of the output, for the weight panels in
/// `panels` (indices of [`panel_spans`]), in 6 x 16 `ymm` tiles.
///
/// # Safety
/// The CPU has AVX2 and FMA; `x`, the residual and `out` hold all pixels;
/// no other thread writes these pixels' channels of these panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(l: &Layer<'_>, first: usize, rows: usize, panels: Range<usize>) {
    let small = l.w.cin * l.w.cout * 4 <= SMALL_WEIGHTS;
    let groups = channel_groups(l.w.cout, panels, 1);
    for_each_tile(rows, YMM_ROWS, small, groups, |row, m, start, width| {
        let tile = tile_at(l, first + row, start);
        match (width, m) {
            (16, 6) => tile.run16::<6>(),
            (16, 5) => tile.run16::<5>(),
            (16, 4) => tile.run16::<4>(),
            (16, 3) => tile.run16::<3>(),
            (16, 2) => tile.run16::<2>(),
            (16, 1) => tile.run16::<1>(),
            (_, m) => tile.run8_rows(m, YMM_ROWS),
        }
    });
}

/// As [`block_avx2`] in 6 x 64 `zmm` tiles (12 x 32 for narrow layers;
/// narrower ones at the edge).
///
/// # Safety
/// As [`block_avx2`], and the CPU has AVX-512F and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn block_avx512(l: &Layer<'_>, first: usize, rows: usize, panels: Range<usize>) {
    let small = l.w.cin * l.w.cout * 4 <= SMALL_WEIGHTS;
    let tile_rows = Isa::Avx512.tile_rows(l.w.cout);
    let groups = channel_groups(l.w.cout, panels, ZMM_ACCUMULATORS / tile_rows);
    for_each_tile(rows, tile_rows, small, groups, |row, m, start, width| {
        let tile = tile_at(l, first + row, start);
        match width {
            64 => tile.run_zmm_rows::<4>(m),
            48 => tile.run_zmm_rows::<3>(m),
            32 => tile.run_zmm_rows::<2>(m),
            16 => tile.run_zmm_rows::<1>(m),
            _ => tile.run8_rows(m, tile_rows),
        }
    });
}

/// Accumulators in an AVX-512 register tile (of 32 registers).
const ZMM_ACCUMULATORS: usize = 24;

/// Layers up to this many output channels get AVX-512 tiles of 12 pixels
/// by up to 32 channels, so there are enough independent sums to cover the
/// FMA latency; wider ones get 6 pixels by up to 64 channels, which needs
/// fewer broadcasts and address computations per FMA.
const NARROW_COUT: usize = 48;

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_avx2(_: &Layer<'_>, _: usize, _: usize, _: Range<usize>) {
    unreachable!("only selected on x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_avx512(_: &Layer<'_>, _: usize, _: usize, _: Range<usize>) {
    unreachable!("only selected on x86_64")
}

/// One register tile: `M` pixels by up to 64 output channels.
#[cfg(target_arch = "x86_64")]
struct Tile {
    /// First pixel's inputs; pixel `i` at `a + i * lda`.
    a: *const f32,
    lda: usize,
    /// `[k][16]` weights (the next panel follows at `panel + 16 k`), or
    /// `[k][8]` for the last, 8-wide panel.
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
    /// This tile moved down by `rows` pixels.
    fn down(&self, rows: usize) -> Tile {
        Tile {
            a: self.a.wrapping_add(rows * self.lda),
            residual: self.residual.map(|r| r.wrapping_add(rows * self.ldc)),
            c: self.c.wrapping_add(rows * self.ldc),
            ..*self
        }
    }

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

    /// 8 channels of `m` pixels, at most `most` (<= 12) at a time: 6 where
    /// there are 16 vector registers, 12 where AVX-512 gives 32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run8_rows(&self, m: usize, most: usize) {
        for first in (0..m).step_by(most) {
            let tile = self.down(first);
            match (m - first).min(most) {
                1 => tile.run8::<1>(),
                2 => tile.run8::<2>(),
                3 => tile.run8::<3>(),
                4 => tile.run8::<4>(),
                5 => tile.run8::<5>(),
                6 => tile.run8::<6>(),
                7 => tile.run8::<7>(),
                8 => tile.run8::<8>(),
                9 => tile.run8::<9>(),
                10 => tile.run8::<10>(),
                11 => tile.run8::<11>(),
                _ => tile.run8::<12>(),
            }
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

    /// `P` panels (16 channels each) of `m` <= 12 pixels.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_zmm_rows<const P: usize>(&self, m: usize) {
        match m {
            1 => self.run_zmm::<1, P>(),
            2 => self.run_zmm::<2, P>(),
            3 => self.run_zmm::<3, P>(),
            4 => self.run_zmm::<4, P>(),
            5 => self.run_zmm::<5, P>(),
            6 => self.run_zmm::<6, P>(),
            7 => self.run_zmm::<7, P>(),
            8 => self.run_zmm::<8, P>(),
            9 => self.run_zmm::<9, P>(),
            10 => self.run_zmm::<10, P>(),
            11 => self.run_zmm::<11, P>(),
            _ => self.run_zmm::<12, P>(),
        }
    }

    /// `M` pixels by `P` panels of 16 channels, one `zmm` accumulator each.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_zmm<const M: usize, const P: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); P]; M];
        let rows: [*const f32; M] = std::array::from_fn(|i| self.a.add(i * self.lda));
        let panels: [*const f32; P] = std::array::from_fn(|j| self.panel.add(j * 16 * self.k));
        for kk in 0..self.k {
            let b: [__m512; P] = std::array::from_fn(|j| _mm512_loadu_ps(panels[j].add(kk * 16)));
            for i in 0..M {
                let v = _mm512_set1_ps(*rows[i].add(kk));
                for j in 0..P {
                    acc[i][j] = _mm512_fmadd_ps(v, b[j], acc[i][j]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, &acc) in acc.iter().enumerate() {
                self.store_zmm(i, 16 * j, acc);
            }
        }
    }

    /// Bias, residual and ReLU6 on 16 channels of pixel `i`, then stores.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_zmm(&self, i: usize, offset: usize, acc: std::arch::x86_64::__m512) {
        use std::arch::x86_64::*;
        let mut v = _mm512_add_ps(acc, _mm512_loadu_ps(self.bias.add(offset)));
        if let Some(r) = self.residual {
            v = _mm512_add_ps(v, _mm512_loadu_ps(r.add(i * self.ldc + offset)));
        }
        if self.relu6 {
            v = _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(6.0));
        }
        _mm512_storeu_ps(self.c.add(i * self.ldc + offset), v);
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
            (29, 33, 80),
            (150, 16, 96),
            (11, 20, 24),
        ] {
            let x = ramp(p * cin, 1.0);
            let w = ramp(cin * cout, 1.0);
            let bias = ramp(cout, 1.0);
            let res = ramp(p * cout, 2.0);
            let weights = PointwiseWeights::new(w.clone(), cin, cout);
            // The general path, and each of our kernels this CPU has.
            let isas: Vec<Option<Isa>> = std::iter::once(None)
                .chain(Isa::supported().filter(|_| cout % 8 == 0).map(Some))
                .collect();
            let cases = [(None, false, true), (Some(&res[..]), true, false)];
            for (isa, (residual, relu6, parallel)) in
                isas.iter().flat_map(|&i| cases.map(|c| (i, c)))
            {
                let mut out = vec![0f32; p * cout];
                let ep = Epilogue {
                    bias: &bias,
                    residual,
                    relu6,
                };
                conv1x1_on(isa, &x, &weights, &ep, &mut out, parallel);
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
                            "{isa:?} {p}x{cin}x{cout} at {i},{j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
