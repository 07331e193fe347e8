//! Image embedding: decoded image in, L2-normalised CNN features out.
//!
//! The network runs in-process on the CPU with candle. The default model's
//! weights are compiled into the binary, so `lookalike serve` needs no files
//! besides its database.

mod efficientnet_lite;

use std::{fmt, path::Path, str::FromStr};

use candle_core::{Device, Tensor};
use image::RgbImage;

pub use efficientnet_lite::EfficientNetLite;

use crate::decode;
use crate::error::{Error, Result};

/// Images embedded per forward pass; larger requests are split.
const MAX_BATCH: usize = 16;

/// The embedding models lookalike ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// EfficientNet-Lite0, ImageNet 75.1 % top-1, 224 px input.
    #[value(name = "efficientnet-lite0")]
    EfficientNetLite0,
    /// EfficientNet-Lite2, ImageNet 77.6 % top-1, 260 px input.
    #[value(name = "efficientnet-lite2")]
    EfficientNetLite2,
}

impl ModelKind {
    /// The name stored in a database and reported by Stats.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::EfficientNetLite0 => "efficientnet-lite0",
            ModelKind::EfficientNetLite2 => "efficientnet-lite2",
        }
    }

    /// Side of the square network input, in pixels.
    pub fn input_size(self) -> u32 {
        match self {
            ModelKind::EfficientNetLite0 => 224,
            ModelKind::EfficientNetLite2 => 260,
        }
    }

    /// The weights compiled into the binary.
    pub fn bundled_weights(self) -> &'static [u8] {
        match self {
            ModelKind::EfficientNetLite0 => {
                include_bytes!("../../models/efficientnet-lite0.safetensors")
            }
            ModelKind::EfficientNetLite2 => {
                include_bytes!("../../models/efficientnet-lite2.safetensors")
            }
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        <Self as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| Error::InvalidArgument(format!("unknown model '{s}'")))
    }
}

/// A loaded network plus the preprocessing it expects.
pub struct Embedder {
    kind: ModelKind,
    net: EfficientNetLite,
    device: Device,
}

impl Embedder {
    /// Loads `kind` from `weights`, or from the bundled weights when `None`.
    pub fn load(kind: ModelKind, weights: Option<&Path>) -> Result<Self> {
        let device = Device::Cpu;
        let net = match weights {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    Error::Model(format!("cannot read weights '{}': {e}", path.display()))
                })?;
                EfficientNetLite::from_safetensors(&bytes, &device)?
            }
            None => EfficientNetLite::from_safetensors(kind.bundled_weights(), &device)?,
        };
        Ok(Embedder { kind, net, device })
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Width of the feature vectors.
    pub fn dim(&self) -> usize {
        self.net.feature_dim()
    }

    /// L2-normalised features, one vector per image, in order.
    pub fn embed(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(MAX_BATCH) {
            let pooled = self.net.features(&self.input(chunk)?)?;
            let normed = efficientnet_lite::l2_normalise(&pooled)?;
            out.extend(normed.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// ImageNet class probabilities `(1000)` of one image.
    pub fn classify(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let pooled = self
            .net
            .features(&self.input(std::slice::from_ref(image))?)?;
        let logits = self.net.classify(&pooled)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        Ok(probs.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Stacks preprocessed images into one `(N, 3, S, S)` tensor.
    fn input(&self, images: &[RgbImage]) -> Result<Tensor> {
        let size = self.kind.input_size();
        let mut data = Vec::with_capacity(images.len() * 3 * (size * size) as usize);
        for image in images {
            data.extend(decode::to_input(image, size));
        }
        let s = size as usize;
        Ok(Tensor::from_vec(
            data,
            (images.len(), 3, s, s),
            &self.device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(name: &str) -> RgbImage {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        decode::decode(&bytes, 1 << 30).expect("decode test photo")
    }

    fn top1(probs: &[f32]) -> usize {
        probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("non-empty")
    }

    /// The pretrained classifier must recognise ImageNet content: this is
    /// what proves the weights were converted and wired correctly.
    #[test]
    fn imagenet_classifier_recognises_cat_and_espresso() {
        for kind in [ModelKind::EfficientNetLite0, ModelKind::EfficientNetLite2] {
            let embedder = Embedder::load(kind, None).expect("load model");
            let cat = top1(&embedder.classify(&photo("chelsea.png")).expect("classify"));
            // ImageNet 281..=285 are the domestic cats (tabby, tiger cat, ...).
            assert!((281..=285).contains(&cat), "{kind}: chelsea -> class {cat}");
            let coffee = top1(&embedder.classify(&photo("coffee.png")).expect("classify"));
            assert_eq!(
                coffee, 967,
                "{kind}: coffee -> class {coffee}, expected 967 espresso"
            );
        }
    }

    #[test]
    fn features_are_unit_length_and_deterministic() {
        let embedder = Embedder::load(ModelKind::EfficientNetLite0, None).expect("load model");
        let img = photo("chelsea.png");
        let a = embedder.embed(&[img.clone(), img]).expect("embed");
        assert_eq!(a[0].len(), 1280);
        let norm: f32 = a[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let diff: f32 = a[0].iter().zip(&a[1]).map(|(x, y)| (x - y).abs()).sum();
        assert!(diff < 1e-3, "batch rows differ by {diff}");
    }
}
