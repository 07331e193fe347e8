//! CPU kernels for the fast EfficientNet-Lite forward pass, NHWC layout.
//!
//! candle runs a depthwise convolution as one small matrix multiply per
//! channel, which made depthwise layers 75-88 % of the plain port's time.
//! Here a depthwise convolution is a direct loop whose innermost dimension
//! is the channel, contiguous in NHWC, so it vectorises: written once over
//! [`simd::Lanes`] and compiled for AVX-512 (16 channels per register) and
//! AVX2+FMA (8), picked at run time, so one binary runs fast on the machine
//! it lands on. 1x1 convolutions (most of the arithmetic) live in
//! [`super::pointwise`]; the general matrix multiply and epilogue here are
//! its fallback where our kernels do not apply.

use rayon::prelude::*;

/// Output rows handed to a rayon task at once in element-wise passes.
const ROWS_PER_TASK: usize = 64;

/// Runs `f(index, chunk)` over `chunk`-sized pieces of `out`, on the rayon
/// pool when `parallel`, else on this thread (the caller already runs one
/// image per thread).
fn for_each_chunk<F>(out: &mut [f32], chunk: usize, parallel: bool, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if parallel {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Output size and leading pad of TensorFlow "SAME" padding.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (out, total / 2)
}

/// Shape of one NHWC activation: `n` images of `h` x `w` x `c`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
}

/// `out[P, cout] = x[P, cin] · w[cin, cout]` (row-major), with `threads`.
pub fn matmul(x: &[f32], w: &[f32], out: &mut [f32], cin: usize, cout: usize, threads: usize) {
    assert!(cin > 0 && cout > 0, "matmul of {cin} x {cout} weights");
    let p = x.len() / cin;
    assert_eq!(x.len(), p * cin, "matmul input");
    assert_eq!(w.len(), cin * cout, "matmul weights");
    assert_eq!(out.len(), p * cout, "matmul output");
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the pointers and strides describe the three row-major
    // matrices whose lengths are checked above; `out` does not alias.
    unsafe {
        gemm::gemm(
            p,
            cout,
            cin,
            out.as_mut_ptr(),
            1,
            cout as isize,
            false,
            x.as_ptr(),
            1,
            cin as isize,
            w.as_ptr(),
            1,
            cout as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Adds `bias` (per channel) and `residual` (if any) to `out` and applies
/// ReLU6 if asked, in one pass.
pub fn bias_residual_act(
    out: &mut [f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    relu6: bool,
    parallel: bool,
) {
    let chunk = bias.len() * ROWS_PER_TASK;
    for_each_chunk(out, chunk, parallel, |i, rows| {
        let res = residual.map(|r| &r[i * chunk..i * chunk + rows.len()]);
        dispatch_epilogue(rows, bias, res, relu6);
    });
}

fn dispatch_epilogue(rows: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu6: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { epilogue_avx512(rows, bias, residual, relu6) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { epilogue_avx2(rows, bias, residual, relu6) };
        }
    }
    epilogue(rows, bias, residual, relu6)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_avx512(rows: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu6: bool) {
    epilogue(rows, bias, residual, relu6)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn epilogue_avx2(rows: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu6: bool) {
    epilogue(rows, bias, residual, relu6)
}

#[inline(always)]
fn epilogue(rows: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu6: bool) {
    let c = bias.len();
    match residual {
        Some(res) => {
            for (row, rrow) in rows.chunks_exact_mut(c).zip(res.chunks_exact(c)) {
                for ((v, b), r) in row.iter_mut().zip(bias).zip(rrow) {
                    *v += b + r;
                }
            }
        }
        None => {
            for row in rows.chunks_exact_mut(c) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
        }
    }
    if relu6 {
        for v in rows.iter_mut() {
            *v = v.clamp(0.0, 6.0);
        }
    }
}

/// A depthwise convolution's parameters, weights as `[k][k][c]`.
pub struct Depthwise<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub kernel: usize,
    pub stride: usize,
}

/// Depthwise convolution with TF SAME padding, bias and ReLU6, NHWC.
/// Returns the output shape; `out` must hold it.
pub fn depthwise(
    x: &[f32],
    shape: Shape,
    p: &Depthwise<'_>,
    out: &mut [f32],
    parallel: bool,
) -> Shape {
    depthwise_on(
        DepthwisePath::detect(shape.c, p.kernel),
        x,
        shape,
        p,
        out,
        parallel,
    )
}

/// [`depthwise`] on the given path.
fn depthwise_on(
    path: DepthwisePath,
    x: &[f32],
    shape: Shape,
    p: &Depthwise<'_>,
    out: &mut [f32],
    parallel: bool,
) -> Shape {
    assert!(p.kernel > 0 && p.stride > 0, "depthwise window");
    assert_eq!(x.len(), shape.len(), "depthwise input");
    let (ho, pad_top) = same_padding(shape.h, p.kernel, p.stride);
    let (wo, pad_left) = same_padding(shape.w, p.kernel, p.stride);
    let out_shape = Shape {
        h: ho,
        w: wo,
        ..shape
    };
    let image_len = shape.h * shape.w * shape.c;
    for_each_chunk(
        &mut out[..out_shape.len()],
        wo * shape.c,
        parallel,
        |row, out_row| {
            let (n, oy) = (row / ho, row % ho);
            let image = &x[n * image_len..(n + 1) * image_len];
            let geometry = RowGeometry {
                shape,
                oy,
                pad_top,
                pad_left,
                ring: None,
            };
            depthwise_row_on(path, image, &geometry, p, out_row);
        },
    );
    out_shape
}

/// Where one output row of a depthwise convolution reads from.
struct RowGeometry {
    shape: Shape,
    oy: usize,
    pad_top: usize,
    pad_left: usize,
    /// The input is a ring of this many rows (input row `iy` in slot
    /// `iy % ring`) rather than the whole image.
    ring: Option<usize>,
}

impl RowGeometry {
    /// Where input row `iy` is in the buffer, in rows.
    fn slot(&self, iy: usize) -> usize {
        self.ring.map_or(iy, |r| iy % r)
    }

    /// Rows the buffer holds.
    fn buffer_rows(&self) -> usize {
        self.ring.unwrap_or(self.shape.h)
    }
}

/// One output row `oy` of a depthwise convolution over an input held as a
/// ring of `ring` rows (row `iy` of the `shape` input at slot `iy % ring`,
/// each `[w][c]`): lets a caller produce input rows just before they are
/// needed, so they are still in cache.
pub fn depthwise_ring_row(
    ring: &[f32],
    rows: usize,
    shape: Shape,
    oy: usize,
    p: &Depthwise<'_>,
    out_row: &mut [f32],
) {
    let geometry = RowGeometry {
        shape,
        oy,
        pad_top: same_padding(shape.h, p.kernel, p.stride).1,
        pad_left: same_padding(shape.w, p.kernel, p.stride).1,
        ring: Some(rows),
    };
    assert!(p.kernel > 0 && p.stride > 0 && rows > 0, "depthwise window");
    let path = DepthwisePath::detect(shape.c, p.kernel);
    depthwise_row_on(
        path,
        &ring[..rows * shape.w * shape.c],
        &geometry,
        p,
        out_row,
    );
}

/// The ways a depthwise row can be computed: portable code, or our vector
/// kernel on 8 (AVX2 + FMA) or 16 (AVX-512F) lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DepthwisePath {
    Portable,
    Avx2,
    Avx512,
}

impl DepthwisePath {
    /// Whether this CPU runs the path for `c` channels and a `k`-wide window.
    fn runs(self, c: usize, k: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let vectors = has!("avx2") && has!("fma") && k <= MAX_KERNEL;
            match self {
                DepthwisePath::Portable => true,
                DepthwisePath::Avx2 => vectors && c.is_multiple_of(8),
                DepthwisePath::Avx512 => vectors && has!("avx512f") && c.is_multiple_of(16),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (c, k);
            self == DepthwisePath::Portable
        }
    }

    /// Every path this CPU runs for `c` channels and window `k`, slowest
    /// first.
    fn supported(c: usize, k: usize) -> impl DoubleEndedIterator<Item = DepthwisePath> {
        [
            DepthwisePath::Portable,
            DepthwisePath::Avx2,
            DepthwisePath::Avx512,
        ]
        .into_iter()
        .filter(move |path| path.runs(c, k))
    }

    /// The fastest path this CPU runs.
    fn detect(c: usize, k: usize) -> DepthwisePath {
        Self::supported(c, k)
            .next_back()
            .unwrap_or(DepthwisePath::Portable)
    }
}

/// One output row on `path`. Checks everything the vector kernels read or
/// write through pointers: the input rows the window can reach, the
/// weights, the bias and the output row.
fn depthwise_row_on(
    path: DepthwisePath,
    image: &[f32],
    g: &RowGeometry,
    p: &Depthwise<'_>,
    out_row: &mut [f32],
) {
    let (c, k, w) = (g.shape.c, p.kernel, g.shape.w);
    let (ho, _) = same_padding(g.shape.h, k, p.stride);
    let (wo, _) = same_padding(w, k, p.stride);
    assert!(g.oy < ho, "depthwise row {} of {ho}", g.oy);
    assert_eq!(p.weight.len(), k * k * c, "depthwise weights");
    assert_eq!(p.bias.len(), c, "depthwise bias");
    assert!(image.len() >= g.buffer_rows() * w * c, "depthwise input");
    assert_eq!(out_row.len(), wo * c, "depthwise output row");
    assert!(
        path.runs(c, k),
        "{path:?} does not run here for {c} channels, window {k}"
    );
    match path {
        #[cfg(target_arch = "x86_64")]
        DepthwisePath::Avx512 => {
            // SAFETY: `runs` checked that the CPU has AVX-512F and that `c`
            // is a multiple of 16; the buffers' lengths are checked above.
            unsafe { depthwise_row_avx512(image, g, p, out_row) }
        }
        #[cfg(target_arch = "x86_64")]
        DepthwisePath::Avx2 => {
            // SAFETY: `runs` checked that the CPU has AVX2 and FMA and that
            // `c` is a multiple of 8; the buffers' lengths are checked above.
            unsafe { depthwise_row_avx2(image, g, p, out_row) }
        }
        _ => depthwise_pixels::<false>(image, g, p, 0, out_row),
    }
}

/// [`depthwise_row`] on 8-channel `ymm` vectors.
///
/// # Safety
/// The CPU has AVX2 and FMA; `c` is a multiple of 8; the buffers are as
/// [`depthwise_row_on`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_row_avx2(
    image: &[f32],
    g: &RowGeometry,
    p: &Depthwise<'_>,
    out_row: &mut [f32],
) {
    depthwise_row::<simd::Ymm>(image, g, p, out_row)
}

/// [`depthwise_row`] on 16-channel `zmm` vectors.
///
/// # Safety
/// The CPU has AVX-512F; `c` is a multiple of 16; the buffers are as
/// [`depthwise_row_on`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_row_avx512(
    image: &[f32],
    g: &RowGeometry,
    p: &Depthwise<'_>,
    out_row: &mut [f32],
) {
    depthwise_row::<simd::Zmm>(image, g, p, out_row)
}

/// One output row: strips of interior pixels in registers, border pixels
/// one at a time. Inlined into a function compiled for `V`'s instructions.
///
/// # Safety
/// The CPU has `V`'s instructions; `c` is a multiple of `V::LANES`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn depthwise_row<V: simd::Lanes>(
    image: &[f32],
    g: &RowGeometry,
    p: &Depthwise<'_>,
    out_row: &mut [f32],
) {
    let c = g.shape.c;
    assert!(c.is_multiple_of(V::LANES) && p.kernel <= MAX_KERNEL);
    let interior = interior_pixels(g, p, out_row.len() / c);
    // Window rows inside the image; the others are zero padding.
    let mut rows = [(0usize, 0usize); MAX_KERNEL];
    let mut count = 0;
    for ky in 0..p.kernel {
        if let Some(iy) = (g.oy * p.stride + ky)
            .checked_sub(g.pad_top)
            .filter(|&iy| iy < g.shape.h)
        {
            rows[count] = (ky, g.slot(iy));
            count += 1;
        }
    }
    let rows = &rows[..count];
    let (left, rest) = out_row.split_at_mut(interior.start * c);
    let (middle, right) = rest.split_at_mut(interior.len() * c);
    let border = left.chunks_exact_mut(c).enumerate().chain(
        right
            .chunks_exact_mut(c)
            .enumerate()
            .map(|(i, px)| (interior.end + i, px)),
    );
    for (ox, out) in border {
        Strip {
            image,
            g,
            p,
            rows,
            ox,
            out,
        }
        .run_border::<V>();
    }
    let mut ox = interior.start;
    for strip in middle.chunks_mut(STRIP * c) {
        let n = strip.len() / c;
        let s = Strip {
            image,
            g,
            p,
            rows,
            ox,
            out: strip,
        };
        // With 32 vector registers a window row's weights stay in
        // registers beside the sums (at stride 2 that measured no faster).
        match (V::LANES, p.kernel, p.stride) {
            (16, 3, 1) => s.run_window_n::<V, 3, 1>(n),
            (16, 5, 1) => s.run_window_n::<V, 5, 1>(n),
            _ => match n {
                8 => s.run::<V, 8>(),
                7 => s.run::<V, 7>(),
                6 => s.run::<V, 6>(),
                5 => s.run::<V, 5>(),
                4 => s.run::<V, 4>(),
                3 => s.run::<V, 3>(),
                2 => s.run::<V, 2>(),
                _ => s.run::<V, 1>(),
            },
        }
        ox += n;
    }
}

/// Vectors a border pixel sums at once.
const BORDER_GROUPS: usize = 4;

/// Output pixels per register strip of the depthwise kernel.
const STRIP: usize = 8;

/// Largest window the strip kernel takes (EfficientNet uses 3 and 5).
const MAX_KERNEL: usize = 7;

/// The output pixels of a row whose whole window lies inside the image
/// (no padding to handle).
fn interior_pixels(g: &RowGeometry, p: &Depthwise<'_>, wo: usize) -> std::ops::Range<usize> {
    let first = g.pad_left.div_ceil(p.stride).min(wo);
    let end = if g.shape.w + g.pad_left >= p.kernel {
        ((g.shape.w + g.pad_left - p.kernel) / p.stride + 1).min(wo)
    } else {
        0
    };
    first..end.max(first)
}

/// Up to [`STRIP`] neighbouring interior output pixels of one row, computed
/// one vector of channels at a time with the sums in registers across the
/// window.
#[cfg(target_arch = "x86_64")]
struct Strip<'a, 'b> {
    image: &'a [f32],
    g: &'a RowGeometry,
    p: &'a Depthwise<'b>,
    /// `(ky, buffer row)` of the window rows inside the image.
    rows: &'a [(usize, usize)],
    /// Output pixel of the strip's first element.
    ox: usize,
    out: &'a mut [f32],
}

/// Raw pointers to a strip's input, weights, bias and output.
#[cfg(target_arch = "x86_64")]
type StripPointers = (*const f32, *const f32, *const f32, *mut f32);

#[cfg(target_arch = "x86_64")]
impl Strip<'_, '_> {
    /// Checks that the buffers hold every row the window reads and `pixels`
    /// output pixels; returns their pointers.
    fn checked_pointers(&mut self, pixels: usize) -> StripPointers {
        let (c, k, w) = (self.g.shape.c, self.p.kernel, self.g.shape.w);
        let buffered = self.g.buffer_rows();
        assert!(self.out.len() == pixels * c && self.image.len() >= buffered * w * c);
        assert!(self.rows.iter().all(|&(ky, row)| ky < k && row < buffered));
        assert!(self.p.weight.len() >= k * k * c && self.p.bias.len() >= c);
        (
            self.image.as_ptr(),
            self.p.weight.as_ptr(),
            self.p.bias.as_ptr(),
            self.out.as_mut_ptr(),
        )
    }

    /// # Safety
    /// The CPU has `V`'s instructions; `c` is a multiple of `V::LANES`.
    #[inline(always)]
    unsafe fn run<V: simd::Lanes, const N: usize>(mut self) {
        let (c, k, s) = (self.g.shape.c, self.p.kernel, self.p.stride);
        let w = self.g.shape.w;
        let (image, weight, bias, out) = self.checked_pointers(N);
        // Leftmost input column of the first pixel's window (interior: >= 0,
        // and the last pixel's window ends inside the row).
        let x0 = self.ox * s - self.g.pad_left;
        assert!(x0 + (N - 1) * s + k <= w);
        for c0 in (0..c).step_by(V::LANES) {
            let mut acc = [V::load(bias.add(c0)); N];
            for &(ky, iy) in self.rows {
                let row = image.add((iy * w + x0) * c + c0);
                for kx in 0..k {
                    let wv = V::load(weight.add((ky * k + kx) * c + c0));
                    let tap = row.add(kx * c);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = V::fmadd(V::load(tap.add(j * s * c)), wv, *a);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                a.store_relu6(out.add(j * c + c0));
            }
        }
    }

    /// [`Strip::run_window`] for a strip of `n` pixels.
    ///
    /// # Safety
    /// As [`Strip::run_window`].
    #[inline(always)]
    unsafe fn run_window_n<V: simd::Lanes, const K: usize, const S: usize>(self, n: usize) {
        match n {
            8 => self.run_window::<V, 8, K, S>(),
            7 => self.run_window::<V, 7, K, S>(),
            6 => self.run_window::<V, 6, K, S>(),
            5 => self.run_window::<V, 5, K, S>(),
            4 => self.run_window::<V, 4, K, S>(),
            3 => self.run_window::<V, 3, K, S>(),
            2 => self.run_window::<V, 2, K, S>(),
            _ => self.run_window::<V, 1, K, S>(),
        }
    }

    /// As [`Strip::run`] for a `K`-wide window at stride `S`, known at
    /// compile time: each input vector of a window row is loaded once and
    /// used for every pixel of the strip whose window covers it, with the
    /// row's `K` weights in registers, instead of being loaded once per
    /// pixel and tap (about half the loads, which bound the plain strip).
    ///
    /// # Safety
    /// As [`Strip::run`]; the layer's kernel is `K` and its stride `S`.
    #[inline(always)]
    unsafe fn run_window<V: simd::Lanes, const N: usize, const K: usize, const S: usize>(mut self) {
        let (c, w) = (self.g.shape.c, self.g.shape.w);
        assert!(self.p.kernel == K && self.p.stride == S);
        let (image, weight, bias, out) = self.checked_pointers(N);
        let x0 = self.ox * S - self.g.pad_left;
        assert!(x0 + (N - 1) * S + K <= w);
        for c0 in (0..c).step_by(V::LANES) {
            let mut acc = [V::load(bias.add(c0)); N];
            for &(ky, iy) in self.rows {
                let row = image.add((iy * w + x0) * c + c0);
                let wv: [V; K] =
                    std::array::from_fn(|kx| V::load(weight.add((ky * K + kx) * c + c0)));
                for t in 0..(N - 1) * S + K {
                    let x = V::load(row.add(t * c));
                    // Pixel j reads input t = j * S + kx.
                    for (kx, wv) in wv.iter().enumerate() {
                        if t >= kx && (t - kx) % S == 0 && (t - kx) / S < N {
                            let j = (t - kx) / S;
                            acc[j] = V::fmadd(x, *wv, acc[j]);
                        }
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                a.store_relu6(out.add(j * c + c0));
            }
        }
    }

    /// One output pixel whose window crosses the image border: the taps
    /// outside are zero padding and skipped.
    ///
    /// # Safety
    /// The CPU has `V`'s instructions; `c` is a multiple of `V::LANES`.
    #[inline(always)]
    unsafe fn run_border<V: simd::Lanes>(mut self) {
        let (c, k, w) = (self.g.shape.c, self.p.kernel, self.g.shape.w);
        let ptrs = self.checked_pointers(1);
        // Window columns inside the image: kx in taps, at input column x0 + kx.
        let x0 = (self.ox * self.p.stride) as isize - self.g.pad_left as isize;
        let taps = (0..k).filter(|&kx| (0..w as isize).contains(&(x0 + kx as isize)));
        let (first, last) = match (taps.clone().next(), taps.clone().next_back()) {
            (Some(a), Some(b)) => (a, b + 1),
            _ => (0, 0),
        };
        // Several vectors of channels at a time: independent chains of
        // FMAs, so the sums do not wait on each other's latency; a fixed
        // number, so the sums stay in registers.
        let mut c0 = 0;
        while c0 + BORDER_GROUPS * V::LANES <= c {
            self.border_channels::<V, BORDER_GROUPS>(ptrs, x0, first..last, c0);
            c0 += BORDER_GROUPS * V::LANES;
        }
        while c0 < c {
            self.border_channels::<V, 1>(ptrs, x0, first..last, c0);
            c0 += V::LANES;
        }
    }

    /// `G` vectors of channels from `c0` of a border pixel whose window
    /// starts at input column `x0` and is inside the image for `taps`.
    ///
    /// # Safety
    /// As [`Strip::run_border`]; `c0 + G * V::LANES <= c`.
    #[inline(always)]
    unsafe fn border_channels<V: simd::Lanes, const G: usize>(
        &self,
        (image, weight, bias, out): StripPointers,
        x0: isize,
        taps: std::ops::Range<usize>,
        c0: usize,
    ) {
        let (c, k, w) = (self.g.shape.c, self.p.kernel, self.g.shape.w);
        let mut acc: [V; G] = std::array::from_fn(|g| V::load(bias.add(c0 + V::LANES * g)));
        for &(ky, iy) in self.rows {
            for kx in taps.clone() {
                let ix = (x0 + kx as isize) as usize;
                let wp = weight.add((ky * k + kx) * c + c0);
                let xp = image.add((iy * w + ix) * c + c0);
                for (g, acc) in acc.iter_mut().enumerate() {
                    let (x, wv) = (V::load(xp.add(V::LANES * g)), V::load(wp.add(V::LANES * g)));
                    *acc = V::fmadd(x, wv, *acc);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            acc.store_relu6(out.add(c0 + V::LANES * g));
        }
    }
}

/// The vector operations the depthwise kernel needs, for 8-lane (AVX2)
/// and 16-lane (AVX-512) registers, so it is written once. Every method is
/// `#[inline(always)]` and only called from functions compiled with the
/// matching `target_feature`, where the intrinsics inline.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    pub trait Lanes: Copy {
        const LANES: usize;
        /// # Safety
        /// `p` is valid for `LANES` reads; the CPU has the instructions.
        unsafe fn load(p: *const f32) -> Self;
        /// `a * b + c`, fused.
        ///
        /// # Safety
        /// The CPU has the instructions.
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        /// Stores `min(max(self, 0), 6)`.
        ///
        /// # Safety
        /// `p` is valid for `LANES` writes; the CPU has the instructions.
        unsafe fn store_relu6(self, p: *mut f32);
    }

    /// 8 lanes: AVX2 + FMA.
    #[derive(Clone, Copy)]
    pub struct Ymm(__m256);

    impl Lanes for Ymm {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Ymm(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            Ymm(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn store_relu6(self, p: *mut f32) {
            let v = _mm256_min_ps(
                _mm256_max_ps(self.0, _mm256_setzero_ps()),
                _mm256_set1_ps(6.0),
            );
            _mm256_storeu_ps(p, v)
        }
    }

    /// 16 lanes: AVX-512F.
    #[derive(Clone, Copy)]
    pub struct Zmm(__m512);

    impl Lanes for Zmm {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Zmm(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            Zmm(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn store_relu6(self, p: *mut f32) {
            let v = _mm512_min_ps(
                _mm512_max_ps(self.0, _mm512_setzero_ps()),
                _mm512_set1_ps(6.0),
            );
            _mm512_storeu_ps(p, v)
        }
    }
}

/// Floats of output a depthwise tile accumulates (16 KiB, well inside L1).
const TILE_FLOATS: usize = 4096;

/// Output pixels `first..` of one row (as many as `out_row` holds):
/// `out[ox][c] = relu6(bias[c] + Σ x[iy][ix][c] · w[ky][kx][c])`.
/// The row goes in tiles of output pixels small enough that their sums stay
/// in L1 while the `k x k` window is swept; the innermost loop runs over
/// contiguous channels and vectorises. `FMA` picks fused multiply-add, only
/// fast where the CPU has it.
#[inline(always)]
fn depthwise_pixels<const FMA: bool>(
    image: &[f32],
    g: &RowGeometry,
    p: &Depthwise<'_>,
    first: usize,
    out_row: &mut [f32],
) {
    let (c, k, w) = (g.shape.c, p.kernel, g.shape.w);
    // Output pixels per tile: the tile's sums stay in L1 across the window.
    let tile = (TILE_FLOATS / c).max(1);
    for (t, tile_out) in out_row.chunks_mut(tile * c).enumerate() {
        let ox0 = first + t * tile;
        for px in tile_out.chunks_exact_mut(c) {
            px.copy_from_slice(p.bias);
        }
        for ky in 0..k {
            let Some(iy) = (g.oy * p.stride + ky)
                .checked_sub(g.pad_top)
                .filter(|&iy| iy < g.shape.h)
            else {
                continue;
            };
            let slot = g.slot(iy);
            let in_row = &image[slot * w * c..(slot + 1) * w * c];
            for kx in 0..k {
                let wv = &p.weight[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                for (i, dst) in tile_out.chunks_exact_mut(c).enumerate() {
                    let Some(ix) = ((ox0 + i) * p.stride + kx)
                        .checked_sub(g.pad_left)
                        .filter(|&ix| ix < w)
                    else {
                        continue;
                    };
                    let src = &in_row[ix * c..(ix + 1) * c];
                    for ((d, x), wt) in dst.iter_mut().zip(src).zip(wv) {
                        *d = if FMA { x.mul_add(*wt, *d) } else { *d + x * wt };
                    }
                }
            }
        }
        for v in tile_out.iter_mut() {
            *v = v.clamp(0.0, 6.0);
        }
    }
}

/// im2col for the stem: each output pixel's `k x k x c` input patch (zero
/// outside the image, TF SAME padding), as rows of `k*k*c`.
pub fn im2col(
    x: &[f32],
    shape: Shape,
    kernel: usize,
    stride: usize,
    cols: &mut Vec<f32>,
    parallel: bool,
) -> Shape {
    let (ho, pad_top) = same_padding(shape.h, kernel, stride);
    let (wo, pad_left) = same_padding(shape.w, kernel, stride);
    let patch = kernel * kernel * shape.c;
    cols.clear();
    cols.resize(shape.n * ho * wo * patch, 0.0);
    for_each_chunk(cols, wo * patch, parallel, |row, out| {
        let (n, oy) = (row / ho, row % ho);
        for ox in 0..wo {
            for ky in 0..kernel {
                let Some(iy) = (oy * stride + ky)
                    .checked_sub(pad_top)
                    .filter(|&v| v < shape.h)
                else {
                    continue;
                };
                for kx in 0..kernel {
                    let Some(ix) = (ox * stride + kx)
                        .checked_sub(pad_left)
                        .filter(|&v| v < shape.w)
                    else {
                        continue;
                    };
                    let src = ((n * shape.h + iy) * shape.w + ix) * shape.c;
                    let dst = ox * patch + (ky * kernel + kx) * shape.c;
                    out[dst..dst + shape.c].copy_from_slice(&x[src..src + shape.c]);
                }
            }
        }
    });
    Shape {
        h: ho,
        w: wo,
        c: patch,
        ..shape
    }
}

/// Mean over each image's pixels: `[n][h*w][c]` to `[n][c]`.
pub fn global_average_pool(x: &[f32], shape: Shape) -> Vec<f32> {
    let pixels = shape.h * shape.w;
    let mut out = vec![0f32; shape.n * shape.c];
    for (n, acc) in out.chunks_exact_mut(shape.c).enumerate() {
        let image = &x[n * pixels * shape.c..(n + 1) * pixels * shape.c];
        for px in image.chunks_exact(shape.c) {
            for (a, v) in acc.iter_mut().zip(px) {
                *a += v;
            }
        }
        acc.iter_mut().for_each(|a| *a /= pixels as f32);
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (112, 0));
        assert_eq!(same_padding(112, 5, 2), (56, 1));
        assert_eq!(same_padding(65, 3, 2), (33, 1));
        assert_eq!(same_padding(14, 5, 1), (14, 2));
    }

    /// Direct definition, for checking the kernels.
    fn naive_depthwise(
        x: &[f32],
        s: Shape,
        w: &[f32],
        b: &[f32],
        k: usize,
        stride: usize,
    ) -> Vec<f32> {
        let (ho, pt) = same_padding(s.h, k, stride);
        let (wo, pl) = same_padding(s.w, k, stride);
        let mut out = Vec::new();
        for n in 0..s.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for c in 0..s.c {
                        let mut acc = b[c];
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pt as isize;
                                let ix = (ox * stride + kx) as isize - pl as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w
                                {
                                    let xi =
                                        ((n * s.h + iy as usize) * s.w + ix as usize) * s.c + c;
                                    acc += x[xi] * w[(ky * k + kx) * s.c + c];
                                }
                            }
                        }
                        out.push(acc.clamp(0.0, 6.0));
                    }
                }
            }
        }
        out
    }

    /// Deterministic test values in about `[-0.3, 0.7] * scale`.
    pub(in crate::embed) fn ramp(len: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 % 101) as f32 / 101.0 - 0.3) * scale)
            .collect()
    }

    /// Every path the CPU runs (the portable one, AVX2, AVX-512) against the
    /// definition, whole images and rings of rows.
    #[test]
    fn depthwise_matches_the_definition() {
        for (h, w, c, k, stride) in [
            (9, 7, 5, 3, 1),
            (10, 10, 16, 5, 2),
            (7, 9, 33, 3, 2),
            (6, 6, 8, 5, 1),
            // Wide rows: full strips of 8 interior pixels and remainders.
            (5, 30, 24, 3, 1),
            (6, 41, 32, 5, 2),
            (4, 21, 8, 5, 1),
            (5, 40, 16, 3, 2),
            (5, 30, 32, 3, 1),
            (4, 21, 16, 5, 1),
        ] {
            let s = Shape { n: 2, h, w, c };
            let x = ramp(s.len(), 4.0);
            let wt = ramp(k * k * c, 1.0);
            let b = ramp(c, 0.5);
            let params = Depthwise {
                weight: &wt,
                bias: &b,
                kernel: k,
                stride,
            };
            let want = naive_depthwise(&x, s, &wt, &b, k, stride);
            for path in DepthwisePath::supported(c, k) {
                let mut out = vec![0f32; s.len()];
                let os = depthwise_on(path, &x, s, &params, &mut out, true);
                assert_eq!(os.len(), want.len());
                for (a, b) in out[..os.len()].iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{path:?}: {a} vs {b} for {h}x{w}x{c} k{k} s{stride}"
                    );
                }
            }
        }
    }

    /// The paths the vector kernels take on this CPU are all tested above:
    /// a CPU with AVX2 must run the AVX2 path, one with AVX-512 both.
    #[test]
    fn every_vector_path_the_cpu_has_is_exercised() {
        let paths: Vec<DepthwisePath> = DepthwisePath::supported(16, 3).collect();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            assert_eq!(paths.contains(&DepthwisePath::Avx2), avx2, "{paths:?}");
            assert_eq!(
                paths.contains(&DepthwisePath::Avx512),
                avx2 && has!("avx512f"),
                "{paths:?}"
            );
        }
        assert_eq!(paths[0], DepthwisePath::Portable);
    }

    /// A 4 x 4 x 16 depthwise layer, window 3, with `weights` and `bias`
    /// floats of parameters (the layer needs 144 and 16).
    fn depthwise_with(weights: usize, bias: usize) {
        let s = Shape {
            n: 1,
            h: 4,
            w: 4,
            c: 16,
        };
        let (x, wt, b) = (ramp(s.len(), 1.0), ramp(weights, 1.0), ramp(bias, 1.0));
        let params = Depthwise {
            weight: &wt,
            bias: &b,
            kernel: 3,
            stride: 1,
        };
        depthwise(&x, s, &params, &mut vec![0f32; s.len()], false);
    }

    #[test]
    #[should_panic(expected = "depthwise weights")]
    fn depthwise_refuses_short_weights() {
        depthwise_with(3 * 3 * 16 - 1, 16);
    }

    #[test]
    #[should_panic(expected = "depthwise bias")]
    fn depthwise_refuses_a_short_bias() {
        depthwise_with(3 * 3 * 16, 8);
    }

    #[test]
    fn matmul_and_epilogue() {
        let (p, cin, cout) = (37, 19, 23);
        let x = ramp(p * cin, 1.0);
        let w = ramp(cin * cout, 1.0);
        let b = ramp(cout, 1.0);
        let res = ramp(p * cout, 2.0);
        let mut out = vec![0f32; p * cout];
        matmul(&x, &w, &mut out, cin, cout, 2);
        bias_residual_act(&mut out, &b, Some(&res), true, true);
        for i in 0..p {
            for j in 0..cout {
                let dot: f32 = (0..cin).map(|k| x[i * cin + k] * w[k * cout + j]).sum();
                let want = (dot + b[j] + res[i * cout + j]).clamp(0.0, 6.0);
                assert!((out[i * cout + j] - want).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn im2col_and_pool() {
        let s = Shape {
            n: 1,
            h: 4,
            w: 4,
            c: 2,
        };
        let x: Vec<f32> = (0..s.len()).map(|i| i as f32).collect();
        let mut cols = Vec::new();
        let cs = im2col(&x, s, 3, 2, &mut cols, false);
        assert_eq!((cs.h, cs.w, cs.c), (2, 2, 18));
        // Output (0,0) with pad_top = pad_left = 0 reads input (0..3, 0..3).
        assert_eq!(&cols[0..2], &[0.0, 1.0]);
        let pooled = global_average_pool(&x, s);
        assert_eq!(pooled, vec![15.0, 16.0]);
    }
}
