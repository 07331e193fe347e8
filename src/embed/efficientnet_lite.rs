//! EfficientNet-Lite (Lite0 and Lite2) in candle.
//!
//! candle-transformers only has the torchvision B0-B7 EfficientNet, whose
//! blocks carry squeeze-excite and SiLU; the Lite variants drop both, use
//! ReLU6 and TensorFlow "SAME" padding, and keep the stem (32 channels) and
//! head (1280 channels) fixed across sizes. The structure is read off the
//! weights (lukemelas naming: `_conv_stem`, `_blocks.N._expand_conv`, ...):
//! channels, kernel sizes and which blocks expand come from tensor shapes;
//! strides follow the EfficientNet stage plan (stride 2 on entering stages
//! 1, 2, 3 and 5, a stage being a run of blocks with one output width).
//!
//! Batch norm is folded into the preceding convolution at load time, so a
//! layer at inference is one convolution plus a bias.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};

/// Batch-norm epsilon used in training these weights (TensorFlow's 1e-3).
const BN_EPS: f64 = 1e-3;
/// Stages (0-based) whose first block downsamples by 2.
const DOWNSAMPLING_STAGES: [usize; 4] = [1, 2, 3, 5];

/// A convolution with its batch norm folded in: `conv(x, weight) + bias`.
#[derive(Debug)]
struct ConvBn {
    weight: Tensor,
    /// Shaped `(1, C, 1, 1)` to broadcast over a batch.
    bias: Tensor,
    kernel: usize,
    stride: usize,
    groups: usize,
}

impl ConvBn {
    fn load(w: &Weights, conv: &str, bn: &str, stride: usize) -> Result<Self> {
        let weight = w.get(&format!("{conv}.weight"))?;
        let (out_c, in_per_group, kernel, _) = weight.dims4()?;
        let gamma = w.get(&format!("{bn}.weight"))?;
        let beta = w.get(&format!("{bn}.bias"))?;
        let mean = w.get(&format!("{bn}.running_mean"))?;
        let var = w.get(&format!("{bn}.running_var"))?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = weight.broadcast_mul(&scale.reshape((out_c, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?.reshape((1, out_c, 1, 1))?;
        let in_c = w.channels_in(conv, in_per_group)?;
        Ok(ConvBn {
            weight: weight.contiguous()?,
            bias,
            kernel,
            stride,
            groups: in_c / in_per_group,
        })
    }

    fn out_channels(&self) -> usize {
        self.bias.dims()[1]
    }

    fn folded(&self) -> Result<FoldedConv> {
        let (cout, cin_per_group, kernel, _) = self.weight.dims4()?;
        Ok(FoldedConv {
            weight: self.weight.flatten_all()?.to_vec1()?,
            bias: self.bias.flatten_all()?.to_vec1()?,
            cout,
            cin_per_group,
            kernel,
            stride: self.stride,
        })
    }

    fn forward(&self, x: &Tensor, relu6: bool) -> Result<Tensor> {
        let x = same_pad(x, self.kernel, self.stride)?;
        let y = x
            .conv2d(&self.weight, 0, self.stride, 1, self.groups)?
            .broadcast_add(&self.bias)?;
        Ok(if relu6 { y.clamp(0f32, 6f32)? } else { y })
    }
}

/// A convolution with batch norm folded in, as plain numbers in the torch
/// layout `[cout][cin / groups][k][k]`, for the fast kernels.
#[derive(Debug, Clone)]
pub struct FoldedConv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub cout: usize,
    pub cin_per_group: usize,
    pub kernel: usize,
    pub stride: usize,
}

/// One block's folded convolutions.
#[derive(Debug, Clone)]
pub struct FoldedBlock {
    pub expand: Option<FoldedConv>,
    pub depthwise: FoldedConv,
    pub project: FoldedConv,
    pub residual: bool,
}

/// The whole network's folded convolutions.
#[derive(Debug, Clone)]
pub struct Folded {
    pub stem: FoldedConv,
    pub blocks: Vec<FoldedBlock>,
    pub head: FoldedConv,
}

/// TensorFlow "SAME" padding: output size `ceil(in / stride)`, the extra
/// pixel (if any) going to the bottom and right.
fn same_pad(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    if kernel == 1 && stride == 1 {
        return Ok(x.clone());
    }
    let (_, _, h, w) = x.dims4()?;
    let pad = |size: usize| {
        let out = size.div_ceil(stride);
        ((out - 1) * stride + kernel).saturating_sub(size)
    };
    let (ph, pw) = (pad(h), pad(w));
    Ok(x.pad_with_zeros(2, ph / 2, ph - ph / 2)?
        .pad_with_zeros(3, pw / 2, pw - pw / 2)?)
}

/// One inverted-residual (MBConv) block, without squeeze-excite.
#[derive(Debug)]
struct Block {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some(expand) => expand.forward(x, true)?,
            None => x.clone(),
        };
        y = self.depthwise.forward(&y, true)?;
        y = self.project.forward(&y, false)?;
        Ok(if self.residual { (y + x)? } else { y })
    }
}

/// The network: stem, MBConv blocks, 1280-channel head, ImageNet classifier.
#[derive(Debug)]
pub struct EfficientNetLite {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    /// ImageNet classifier, `(1000, 1280)` transposed to `(1280, 1000)`.
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl EfficientNetLite {
    /// Builds the network from a safetensors buffer (lukemelas key names).
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        let w = Weights(tensors);
        let stem = ConvBn::load(&w, "_conv_stem", "_bn0", 2)?;
        let blocks = load_blocks(&w)?;
        let head = ConvBn::load(&w, "_conv_head", "_bn1", 1)?;
        let fc_weight = w.get("_fc.weight")?.t()?.contiguous()?;
        let fc_bias = w.get("_fc.bias")?;
        Ok(EfficientNetLite {
            stem,
            blocks,
            head,
            fc_weight,
            fc_bias,
        })
    }

    /// Width of the pooled features (1280).
    pub fn feature_dim(&self) -> usize {
        self.head.out_channels()
    }

    /// Global-average-pooled head activations, `(N, 1280)`, for input
    /// `(N, 3, S, S)` scaled to [-1, 1].
    pub fn features(&self, input: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(input, true)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        x = self.head.forward(&x, true)?;
        Ok(x.mean((2, 3))?)
    }

    /// The folded weights, for the fast forward pass.
    pub fn folded(&self) -> Result<Folded> {
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(FoldedBlock {
                    expand: b.expand.as_ref().map(ConvBn::folded).transpose()?,
                    depthwise: b.depthwise.folded()?,
                    project: b.project.folded()?,
                    residual: b.residual,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Folded {
            stem: self.stem.folded()?,
            blocks,
            head: self.head.folded()?,
        })
    }

    /// ImageNet logits `(N, 1000)` from pooled features.
    pub fn classify(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features
            .matmul(&self.fc_weight)?
            .broadcast_add(&self.fc_bias)?)
    }
}

fn load_blocks(w: &Weights) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut stage = 0;
    let mut prev_out = None;
    while w.has(&format!("_blocks.{}._depthwise_conv.weight", blocks.len())) {
        let p = format!("_blocks.{}", blocks.len());
        let expand = if w.has(&format!("{p}._expand_conv.weight")) {
            Some(ConvBn::load(
                w,
                &format!("{p}._expand_conv"),
                &format!("{p}._bn0"),
                1,
            )?)
        } else {
            None
        };
        let out_c = w.get(&format!("{p}._project_conv.weight"))?.dims()[0];
        let first_of_stage = prev_out.is_some_and(|prev| prev != out_c);
        if first_of_stage {
            stage += 1;
        }
        let stride = if first_of_stage && DOWNSAMPLING_STAGES.contains(&stage) {
            2
        } else {
            1
        };
        let depthwise = ConvBn::load(
            w,
            &format!("{p}._depthwise_conv"),
            &format!("{p}._bn1"),
            stride,
        )?;
        let project = ConvBn::load(w, &format!("{p}._project_conv"), &format!("{p}._bn2"), 1)?;
        let in_c = match &expand {
            Some(e) => e.weight.dims()[1],
            None => depthwise.out_channels(),
        };
        blocks.push(Block {
            residual: stride == 1 && in_c == out_c,
            expand,
            depthwise,
            project,
        });
        prev_out = Some(out_c);
    }
    if blocks.is_empty() {
        return Err(Error::Model("no `_blocks.N` tensors in the weights".into()));
    }
    Ok(blocks)
}

/// The named tensors of a weights file, with errors that name the key.
struct Weights(HashMap<String, Tensor>);

impl Weights {
    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| Error::Model(format!("weights lack tensor '{name}'")))?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// Input channels of a convolution: a depthwise convolution (one input
    /// channel per group) takes as many channels as it outputs.
    fn channels_in(&self, conv: &str, in_per_group: usize) -> Result<usize> {
        let out_c = self.get(&format!("{conv}.weight"))?.dims()[0];
        Ok(if conv.ends_with("_depthwise_conv") {
            out_c
        } else {
            in_per_group
        })
    }
}

/// L2-normalises each row of `(N, D)`.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}
