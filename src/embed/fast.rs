//! The fast forward pass of EfficientNet-Lite, used for every embedding.
//!
//! Same network and weights as [`super::EfficientNetLite`] (the candle
//! reference, kept for tests), rearranged at load time for the kernels in
//! [`super::kernels`]: activations in NHWC, 1x1 convolution weights as
//! `[cin][cout]` matrices, depthwise weights as `[k][k][c]`, batch norm
//! already folded in. Work is spread over the rayon pool the call runs in.

use std::cell::RefCell;

use rayon::prelude::*;

use super::efficientnet_lite::{EfficientNetLite, FoldedConv};
use super::kernels::{self, Depthwise, Shape};
use super::pointwise::{self, Epilogue, PointwiseWeights};
use crate::error::{Error, Result};

/// Activation buffers reused from one forward pass to the next: no
/// allocation, zeroing or page faults once warm.
#[derive(Default)]
struct Workspace {
    cols: Vec<f32>,
    x: Vec<f32>,
    y: Vec<f32>,
    expanded: Vec<f32>,
    depthwise: Vec<f32>,
    /// The early layers' outputs of a group of images, stacked for the
    /// last stage.
    stacked: Vec<f32>,
}

/// Blocks whose expanded activations are larger than this (bytes) run
/// fused, row by row ([`Block::forward_fused`]), in bands of rows when
/// several threads share one image.
const FUSE_BYTES: usize = 512 * 1024;

/// Bytes of expanded activations a group of images may take in the last
/// stage ([`FastEfficientNetLite::group_size`]): about a core's L2.
const GROUP_BYTES: usize = 1024 * 1024;

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// The first `len` elements of `buf`, growing it if needed (contents are
/// overwritten by the caller).
fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// A 1x1 convolution: weights and a bias.
struct Pointwise {
    weights: PointwiseWeights,
    bias: Vec<f32>,
}

impl Pointwise {
    fn from(conv: &FoldedConv) -> Result<Self> {
        let (cout, cin, k) = (conv.cout, conv.cin_per_group, conv.kernel);
        if k != 1 {
            return Err(Error::Model(format!(
                "expected a 1x1 convolution, got {k}x{k}"
            )));
        }
        let mut weight = vec![0f32; cin * cout];
        for o in 0..cout {
            for i in 0..cin {
                weight[i * cout + o] = conv.weight[o * cin + i];
            }
        }
        Ok(Pointwise {
            weights: PointwiseWeights::new(weight, cin, cout),
            bias: conv.bias.clone(),
        })
    }

    /// `out = relu6?(x · W + bias + residual?)` for NHWC `x` of `shape`.
    fn forward(
        &self,
        x: &[f32],
        shape: Shape,
        residual: Option<&[f32]>,
        relu6: bool,
        out: &mut Vec<f32>,
        parallel: bool,
    ) -> Shape {
        let out_shape = Shape {
            c: self.weights.cout(),
            ..shape
        };
        let epilogue = Epilogue {
            bias: &self.bias,
            residual,
            relu6,
        };
        let out = grow(out, out_shape.len());
        pointwise::conv1x1(&x[..shape.len()], &self.weights, &epilogue, out, parallel);
        out_shape
    }

    /// [`Self::forward`] on this thread into `out`, which holds exactly the
    /// output.
    fn forward_into(
        &self,
        x: &[f32],
        shape: Shape,
        residual: Option<&[f32]>,
        relu6: bool,
        out: &mut [f32],
    ) {
        let epilogue = Epilogue {
            bias: &self.bias,
            residual,
            relu6,
        };
        pointwise::conv1x1(&x[..shape.len()], &self.weights, &epilogue, out, false);
    }
}

/// A depthwise convolution, weights `[k][k][c]`.
struct DepthwiseConv {
    weight: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
}

impl DepthwiseConv {
    fn from(conv: &FoldedConv) -> Self {
        let (c, k) = (conv.cout, conv.kernel);
        let mut weight = vec![0f32; k * k * c];
        for ch in 0..c {
            for t in 0..k * k {
                weight[t * c + ch] = conv.weight[ch * k * k + t];
            }
        }
        DepthwiseConv {
            weight,
            bias: conv.bias.clone(),
            kernel: k,
            stride: conv.stride,
        }
    }

    fn forward(&self, x: &[f32], shape: Shape, out: &mut Vec<f32>, parallel: bool) -> Shape {
        let (ho, _) = kernels::same_padding(shape.h, self.kernel, self.stride);
        let (wo, _) = kernels::same_padding(shape.w, self.kernel, self.stride);
        let out = grow(out, shape.n * ho * wo * shape.c);
        kernels::depthwise(&x[..shape.len()], shape, &self.params(), out, parallel)
    }

    fn params(&self) -> Depthwise<'_> {
        Depthwise {
            weight: &self.weight,
            bias: &self.bias,
            kernel: self.kernel,
            stride: self.stride,
        }
    }
}

struct Block {
    expand: Option<Pointwise>,
    depthwise: DepthwiseConv,
    project: Pointwise,
    residual: bool,
}

impl Block {
    /// Bytes of this block's expanded activations for an input of `shape`.
    fn expanded_bytes(&self, shape: Shape) -> usize {
        self.expand
            .as_ref()
            .map_or(0, |e| 4 * shape.n * shape.h * shape.w * e.weights.cout())
    }

    /// One block, fused row by row when `shape` is one image whose expanded
    /// activations would not stay in cache, else layer by layer.
    fn run(
        &self,
        x: &[f32],
        shape: Shape,
        expanded: &mut Vec<f32>,
        depthwise: &mut Vec<f32>,
        out: &mut Vec<f32>,
        parallel: bool,
    ) -> Shape {
        if shape.n == 1 && self.expanded_bytes(shape) > FUSE_BYTES {
            self.forward_fused(x, shape, expanded, depthwise, out, parallel)
        } else {
            self.forward(x, shape, expanded, depthwise, out, parallel)
        }
    }

    /// Expand, depthwise and project one layer at a time; returns the
    /// output shape (in `out`).
    fn forward(
        &self,
        x: &[f32],
        shape: Shape,
        expanded: &mut Vec<f32>,
        depthwise: &mut Vec<f32>,
        out: &mut Vec<f32>,
        parallel: bool,
    ) -> Shape {
        let (h, hs) = match &self.expand {
            Some(e) => {
                let hs = e.forward(x, shape, None, true, expanded, parallel);
                (&expanded[..], hs)
            }
            None => (x, shape),
        };
        let ds = self.depthwise.forward(h, hs, depthwise, parallel);
        let residual = self.residual.then_some(&x[..shape.len()]);
        self.project
            .forward(depthwise, ds, residual, false, out, parallel)
    }

    /// The same, row by row for one image: each depthwise output row
    /// expands just the input rows its window needs that are not already
    /// in a ring of `kernel` rows, then is projected at once, so the large
    /// expanded activations never leave the cache. With `parallel`, the
    /// output rows are split into one band per thread, each with its own
    /// ring (the `kernel - 1` input rows where two bands meet are expanded
    /// by both).
    fn forward_fused(
        &self,
        x: &[f32],
        shape: Shape,
        ring: &mut Vec<f32>,
        dw_row: &mut Vec<f32>,
        out: &mut Vec<f32>,
        parallel: bool,
    ) -> Shape {
        let Some(expand) = &self.expand else {
            return self.forward(x, shape, ring, dw_row, out, parallel);
        };
        let (k, stride) = (self.depthwise.kernel, self.depthwise.stride);
        let (ho, _) = kernels::same_padding(shape.h, k, stride);
        let (wo, _) = kernels::same_padding(shape.w, k, stride);
        let row_len = wo * self.project.weights.cout();
        let out = grow(out, ho * row_len);
        let exp_row = shape.w * expand.weights.cout();
        if parallel {
            let band = ho.div_ceil(rayon::current_num_threads()).max(1);
            out.par_chunks_mut(band * row_len)
                .enumerate()
                .for_each(|(i, rows)| {
                    let (mut ring, mut dw_row) = (Vec::new(), Vec::new());
                    self.fused_rows(expand, x, shape, i * band, &mut ring, &mut dw_row, rows);
                });
        } else {
            grow(ring, k * exp_row);
            self.fused_rows(expand, x, shape, 0, ring, dw_row, out);
        }
        Shape {
            n: 1,
            h: ho,
            w: wo,
            c: self.project.weights.cout(),
        }
    }

    /// Output rows `first..` of [`Self::forward_fused`], as many as `out`
    /// holds; `expand` is this block's expansion.
    #[allow(clippy::too_many_arguments)]
    fn fused_rows(
        &self,
        expand: &Pointwise,
        x: &[f32],
        shape: Shape,
        first: usize,
        ring: &mut Vec<f32>,
        dw_row: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let (k, stride) = (self.depthwise.kernel, self.depthwise.stride);
        let (_, pad_top) = kernels::same_padding(shape.h, k, stride);
        let (wo, _) = kernels::same_padding(shape.w, k, stride);
        let row_shape = |w: usize, c: usize| Shape { n: 1, h: 1, w, c };
        let expanded = Shape {
            c: expand.weights.cout(),
            ..shape
        };
        let cout = self.project.weights.cout();
        let (in_row, exp_row) = (shape.w * shape.c, shape.w * expanded.c);
        let ring = grow(ring, k * exp_row);
        let dw_row = grow(dw_row, wo * expanded.c);
        let mut held = vec![usize::MAX; k];
        for (oy, row_out) in (first..).zip(out.chunks_exact_mut(wo * cout)) {
            for ky in 0..k {
                let Some(iy) = (oy * stride + ky)
                    .checked_sub(pad_top)
                    .filter(|&iy| iy < shape.h)
                else {
                    continue;
                };
                if held[iy % k] != iy {
                    held[iy % k] = iy;
                    let slot = &mut ring[(iy % k) * exp_row..(iy % k + 1) * exp_row];
                    expand.forward_into(
                        &x[iy * in_row..(iy + 1) * in_row],
                        row_shape(shape.w, shape.c),
                        None,
                        true,
                        slot,
                    );
                }
            }
            kernels::depthwise_ring_row(ring, k, expanded, oy, &self.depthwise.params(), dw_row);
            let residual = self
                .residual
                .then(|| &x[oy * wo * cout..(oy + 1) * wo * cout]);
            self.project
                .forward_into(dw_row, row_shape(wo, expanded.c), residual, false, row_out);
        }
    }
}

/// The whole network in kernel layout.
pub struct FastEfficientNetLite {
    /// Stem 3x3 stride-2 convolution as a `[k*k*cin][cout]` matrix over im2col patches.
    stem: Pointwise,
    stem_kernel: usize,
    blocks: Vec<Block>,
    head: Pointwise,
}

/// Side, height and channels of one image's tapped feature map (NHWC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapShape {
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl TapShape {
    /// Floats in one image's map.
    pub fn floats(&self) -> usize {
        self.h * self.w * self.c
    }
}

impl FastEfficientNetLite {
    /// Rearranges the reference network's folded weights.
    pub fn from_reference(net: &EfficientNetLite) -> Result<Self> {
        let folded = net.folded()?;
        let stem = stem_matrix(&folded.stem);
        let blocks = folded
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    expand: b.expand.as_ref().map(Pointwise::from).transpose()?,
                    depthwise: DepthwiseConv::from(&b.depthwise),
                    project: Pointwise::from(&b.project)?,
                    residual: b.residual,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FastEfficientNetLite {
            stem,
            stem_kernel: folded.stem.kernel,
            blocks,
            head: Pointwise::from(&folded.head)?,
        })
    }

    /// Shape of the feature map [`Self::features_and_tap`] taps for `size` x
    /// `size` input: the head's activations before pooling (7 x 7 x 1280
    /// for Lite0), which the Siamese network reads. Their average is the
    /// pooled features, so the Siamese network starts from what the cosine
    /// already knows, plus where in the picture each part of it is.
    pub fn tap_shape(&self, size: usize) -> TapShape {
        let side = self
            .blocks
            .iter()
            .fold(size.div_ceil(2), |s, b| s.div_ceil(b.depthwise.stride));
        TapShape {
            h: side,
            w: side,
            c: self.head.weights.cout(),
        }
    }

    /// Pooled head activations `[n][1280]` (not normalised) for `n` NHWC
    /// images of `size` x `size` x 3. With several images and threads, each
    /// thread runs whole groups of images ([`Self::group_size`]; no
    /// synchronisation, activations stay in its cache); a single image is
    /// split across the threads layer by layer (bands of rows in the fused
    /// blocks, pixels or weight panels in the 1x1 layers).
    ///
    /// With `tap`, also each image's head map before pooling (NHWC, see
    /// [`Self::tap_shape`]), concatenated; the tap costs one copy.
    pub fn features_and_tap(
        &self,
        input: &[f32],
        n: usize,
        size: usize,
        tap: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let threads = rayon::current_num_threads();
        if n == 1 && threads > 1 {
            return self.features_with_workspace(input, 1, size, true, tap);
        }
        let group = self.group_size(size).min(n.div_ceil(threads)).max(1);
        let per_image: Vec<(Vec<f32>, Vec<f32>)> = input
            .par_chunks(group * size * size * 3)
            .map(|images| {
                let count = images.len() / (size * size * 3);
                self.features_with_workspace(images, count, size, false, tap)
            })
            .collect();
        let (pooled, taps): (Vec<_>, Vec<_>) = per_image.into_iter().unzip();
        (pooled.concat(), taps.concat())
    }

    /// Runs with this thread's buffers (fresh ones if they are in use, as
    /// when rayon runs a second pass on a thread waiting inside the first).
    fn features_with_workspace(
        &self,
        input: &[f32],
        n: usize,
        size: usize,
        parallel: bool,
        tap: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        WORKSPACE.with(|ws| match ws.try_borrow_mut() {
            Ok(mut ws) => self.forward(input, n, size, parallel, tap, &mut ws),
            Err(_) => self.forward(input, n, size, parallel, tap, &mut Workspace::default()),
        })
    }

    /// `n` images: each one alone through the stem and the blocks before
    /// the last stage (fused where large), then all `n` together through
    /// the last stage and the head, whose large weights are then read once
    /// for the group rather than once per image.
    fn forward(
        &self,
        input: &[f32],
        n: usize,
        size: usize,
        parallel: bool,
        tap: bool,
        ws: &mut Workspace,
    ) -> (Vec<f32>, Vec<f32>) {
        let Workspace {
            cols,
            x,
            y,
            expanded,
            depthwise,
            stacked,
        } = ws;
        let (early, late) = self.blocks.split_at(self.last_stage());
        let image_len = size * size * 3;
        let mut shape = Shape::default();
        for (i, image) in input.chunks_exact(image_len).take(n).enumerate() {
            let one = Shape {
                n: 1,
                h: size,
                w: size,
                c: 3,
            };
            let col_shape = kernels::im2col(image, one, self.stem_kernel, 2, cols, parallel);
            shape = self.stem.forward(cols, col_shape, None, true, x, parallel);
            for block in early {
                shape = block.run(x, shape, expanded, depthwise, y, parallel);
                std::mem::swap(x, y);
            }
            if n > 1 {
                let len = shape.len();
                grow(stacked, n * len)[i * len..(i + 1) * len].copy_from_slice(&x[..len]);
            }
        }
        if n > 1 {
            std::mem::swap(x, stacked);
            shape.n = n;
        }
        for block in late {
            shape = block.run(x, shape, expanded, depthwise, y, parallel);
            std::mem::swap(x, y);
        }
        let hs = self.head.forward(x, shape, None, true, expanded, parallel);
        let map = &expanded[..hs.len()];
        let tapped = if tap { map.to_vec() } else { Vec::new() };
        (kernels::global_average_pool(map, hs), tapped)
    }

    /// Index of the first block of the last stage: the blocks after the
    /// last downsampling, which run at the smallest size with the largest
    /// weights.
    fn last_stage(&self) -> usize {
        self.blocks
            .iter()
            .rposition(|b| b.depthwise.stride > 1)
            .map_or(0, |i| i + 1)
    }

    /// Images run together through the last stage: as many as keep its
    /// largest expanded activations within [`GROUP_BYTES`], at most 8.
    fn group_size(&self, size: usize) -> usize {
        let tap = self.tap_shape(size);
        let widest = self.blocks[self.last_stage()..]
            .iter()
            .filter_map(|b| b.expand.as_ref())
            .map(|e| e.weights.cout())
            .max()
            .unwrap_or(tap.c);
        (GROUP_BYTES / (4 * tap.h * tap.w * widest).max(1)).clamp(1, 8)
    }
}

/// The stem's `[cout][cin][ky][kx]` weights as a `[(ky, kx, cin)][cout]`
/// matrix, matching the im2col patch order.
fn stem_matrix(conv: &FoldedConv) -> Pointwise {
    let (cout, cin, k) = (conv.cout, conv.cin_per_group, conv.kernel);
    let patch = k * k * cin;
    let mut weight = vec![0f32; patch * cout];
    for o in 0..cout {
        for i in 0..cin {
            for t in 0..k * k {
                weight[(t * cin + i) * cout + o] = conv.weight[(o * cin + i) * k * k + t];
            }
        }
    }
    Pointwise {
        weights: PointwiseWeights::new(weight, patch, cout),
        bias: conv.bias.clone(),
    }
}
