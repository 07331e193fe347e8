//! The fast forward pass of EfficientNet-Lite, used for every embedding.
//!
//! Same network and weights as [`super::EfficientNetLite`] (the candle
//! reference, kept for tests), rearranged at load time for the kernels in
//! [`super::kernels`]: activations in NHWC, 1x1 convolution weights as
//! `[cin][cout]` matrices, depthwise weights as `[k][k][c]`, batch norm
//! already folded in. Work is spread over the rayon pool the call runs in.

use super::efficientnet_lite::{EfficientNetLite, FoldedConv};
use super::kernels::{self, Depthwise, Shape};
use crate::error::{Error, Result};

/// A 1x1 convolution: `[cin][cout]` weights and a bias.
struct Pointwise {
    weight: Vec<f32>,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
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
            weight,
            bias: conv.bias.clone(),
            cin,
            cout,
        })
    }

    /// `relu6?(x · W + bias + residual?)` for NHWC `x` of `shape`.
    fn forward(
        &self,
        x: &[f32],
        shape: Shape,
        residual: Option<&[f32]>,
        relu6: bool,
    ) -> (Vec<f32>, Shape) {
        let out_shape = Shape {
            c: self.cout,
            ..shape
        };
        let mut out = vec![0f32; out_shape.len()];
        kernels::matmul(
            x,
            &self.weight,
            &mut out,
            self.cin,
            self.cout,
            rayon::current_num_threads(),
        );
        kernels::bias_residual_act(&mut out, &self.bias, residual, relu6);
        (out, out_shape)
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

    fn forward(&self, x: &[f32], shape: Shape) -> (Vec<f32>, Shape) {
        let (ho, _) = kernels::same_padding(shape.h, self.kernel, self.stride);
        let (wo, _) = kernels::same_padding(shape.w, self.kernel, self.stride);
        let mut out = vec![0f32; shape.n * ho * wo * shape.c];
        let params = Depthwise {
            weight: &self.weight,
            bias: &self.bias,
            kernel: self.kernel,
            stride: self.stride,
        };
        let out_shape = kernels::depthwise(x, shape, &params, &mut out);
        (out, out_shape)
    }
}

struct Block {
    expand: Option<Pointwise>,
    depthwise: DepthwiseConv,
    project: Pointwise,
    residual: bool,
}

/// The whole network in kernel layout.
pub struct FastEfficientNetLite {
    /// Stem 3x3 stride-2 convolution as a `[k*k*cin][cout]` matrix over im2col patches.
    stem: Pointwise,
    stem_kernel: usize,
    blocks: Vec<Block>,
    head: Pointwise,
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

    /// Pooled head activations `[n][1280]` (not normalised) for `n` NHWC
    /// images of `size` x `size` x 3.
    pub fn features(&self, input: &[f32], n: usize, size: usize) -> Vec<f32> {
        let shape = Shape {
            n,
            h: size,
            w: size,
            c: 3,
        };
        let (cols, col_shape) = kernels::im2col(input, shape, self.stem_kernel, 2);
        let (mut x, mut shape) = self.stem.forward(&cols, col_shape, None, true);
        for block in &self.blocks {
            let expanded = block
                .expand
                .as_ref()
                .map(|e| e.forward(&x, shape, None, true));
            let (h, hs) = match &expanded {
                Some((h, hs)) => (h.as_slice(), *hs),
                None => (x.as_slice(), shape),
            };
            let (d, ds) = block.depthwise.forward(h, hs);
            let residual = block.residual.then_some(x.as_slice());
            let (y, ys) = block.project.forward(&d, ds, residual, false);
            x = y;
            shape = ys;
        }
        let (h, hs) = self.head.forward(&x, shape, None, true);
        kernels::global_average_pool(&h, hs)
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
        weight,
        bias: conv.bias.clone(),
        cin: patch,
        cout,
    }
}
