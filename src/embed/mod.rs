//! Image embedding: decoded image in, L2-normalised CNN features out.
//!
//! The network runs in-process on the CPU with candle. The default model's
//! weights are compiled into the binary, so `lookalike serve` needs no files
//! besides its database.

mod efficientnet_lite;
mod fast;
mod kernels;
mod pointwise;
pub mod regions;

use std::{fmt, path::Path, str::FromStr};

use candle_core::{Device, Tensor};
use image::RgbImage;

pub use efficientnet_lite::{l2_normalise, EfficientNetLite};
use fast::FastEfficientNetLite;
pub use fast::TapShape;

use crate::decode;
use crate::error::{Error, Result};
use crate::vector::normalised;

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

/// One image through the network.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// L2-normalised pooled features.
    pub features: Vec<f32>,
    /// The head's map before pooling, NHWC (empty unless asked for).
    pub tap: Vec<f32>,
}

/// A loaded network plus the preprocessing it expects.
pub struct Embedder {
    kind: ModelKind,
    /// The candle port: the reference the fast path is tested against, and
    /// the ImageNet classifier.
    reference: EfficientNetLite,
    fast: FastEfficientNetLite,
    /// Threads one forward pass may use.
    pool: rayon::ThreadPool,
    device: Device,
    /// What of an image [`Embedder::input`] shows the network.
    view: decode::View,
}

impl Embedder {
    /// Loads `kind` from `weights`, or from the bundled weights when `None`;
    /// forward passes use up to `threads` threads (0: one per core).
    pub fn load(kind: ModelKind, weights: Option<&Path>, threads: usize) -> Result<Self> {
        let device = Device::Cpu;
        let reference = match weights {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(Error::file("read the weights", path))?;
                EfficientNetLite::from_safetensors(&bytes, &device)?
            }
            None => EfficientNetLite::from_safetensors(kind.bundled_weights(), &device)?,
        };
        let fast = FastEfficientNetLite::from_reference(&reference)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("lookalike-embed-{i}"))
            .build()
            .map_err(|e| Error::Model(format!("cannot start embedding threads: {e}")))?;
        Ok(Embedder {
            kind,
            reference,
            fast,
            pool,
            device,
            view: decode::View::default(),
        })
    }

    /// The same network, preparing images as `view` shows them (a database
    /// embeds every image in the view it was made with).
    pub fn with_view(mut self, view: decode::View) -> Self {
        self.view = view;
        self
    }

    /// What of an image [`Embedder::input`] shows the network.
    pub fn view(&self) -> decode::View {
        self.view
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Width of the feature vectors.
    pub fn dim(&self) -> usize {
        self.reference.feature_dim()
    }

    /// Preprocesses one decoded image into network input (HWC).
    pub fn input(&self, image: &RgbImage) -> Vec<f32> {
        decode::to_input(image, self.kind.input_size(), self.view)
    }

    /// L2-normalised features, one vector per image, in order.
    pub fn embed(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let inputs: Vec<Vec<f32>> = images.iter().map(|i| self.input(i)).collect();
        Ok(self.embed_inputs(&inputs))
    }

    /// [`Embedder::embed`] from preprocessed inputs (see [`Embedder::input`]).
    pub fn embed_inputs(&self, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.run(inputs, false)
            .into_iter()
            .map(|e| e.features)
            .collect()
    }

    /// Features plus each image's head map before pooling (see
    /// [`Embedder::tap_shape`]), from one forward pass: what the Siamese
    /// network reads.
    pub fn embed_inputs_with_taps(&self, inputs: &[Vec<f32>]) -> Vec<Embedding> {
        self.run(inputs, true)
    }

    /// Only the tapped maps (for training).
    pub fn taps(&self, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.run(inputs, true).into_iter().map(|e| e.tap).collect()
    }

    /// Shape of the map [`Embedder::embed_inputs_with_taps`] returns.
    pub fn tap_shape(&self) -> TapShape {
        self.fast.tap_shape(self.kind.input_size() as usize)
    }

    fn run(&self, inputs: &[Vec<f32>], tap: bool) -> Vec<Embedding> {
        let size = self.kind.input_size() as usize;
        let (dim, tap_len) = (self.dim(), self.tap_shape().floats());
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(MAX_BATCH) {
            let batch = chunk.concat();
            let (pooled, taps) = self
                .pool
                .install(|| self.fast.features_and_tap(&batch, chunk.len(), size, tap));
            let mut taps = taps.chunks_exact(tap_len).map(<[f32]>::to_vec);
            let mut pooled = pooled.chunks_exact(dim).map(normalised);
            out.extend((0..chunk.len()).map(|_| Embedding {
                features: pooled.next().unwrap_or_default(),
                tap: taps.next().unwrap_or_default(),
            }));
        }
        out
    }

    /// The same features from the candle reference network (slow; tests).
    pub fn embed_reference(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let pooled = self.reference.features(&self.tensor(images)?)?;
        Ok(efficientnet_lite::l2_normalise(&pooled)?.to_vec2::<f32>()?)
    }

    /// ImageNet class probabilities `(1000)` of one image (reference network).
    pub fn classify(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let pooled = self
            .reference
            .features(&self.tensor(std::slice::from_ref(image))?)?;
        let logits = self.reference.classify(&pooled)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        Ok(probs.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Stacks preprocessed images into one NCHW `(N, 3, S, S)` tensor.
    fn tensor(&self, images: &[RgbImage]) -> Result<Tensor> {
        let s = self.kind.input_size() as usize;
        let data: Vec<f32> = images.iter().flat_map(|i| self.input(i)).collect();
        let nhwc = Tensor::from_vec(data, (images.len(), s, s, 3), &self.device)?;
        Ok(nhwc.permute((0, 3, 1, 2))?.contiguous()?)
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
            let embedder = Embedder::load(kind, None, 2).expect("load model");
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
        let embedder = Embedder::load(ModelKind::EfficientNetLite0, None, 2).expect("load model");
        let img = photo("chelsea.png");
        let a = embedder.embed(&[img.clone(), img]).expect("embed");
        assert_eq!(a[0].len(), 1280);
        let norm: f32 = a[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let diff: f32 = a[0].iter().zip(&a[1]).map(|(x, y)| (x - y).abs()).sum();
        assert!(diff < 1e-3, "batch rows differ by {diff}");
    }

    /// The fast path must give the reference network's features on every
    /// committed photo (batched, so batch handling is covered too).
    #[test]
    fn fast_path_matches_the_reference_on_every_test_photo() {
        for kind in [ModelKind::EfficientNetLite0, ModelKind::EfficientNetLite2] {
            let embedder = Embedder::load(kind, None, 2).expect("load model");
            let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .expect("tests/data")
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".jpg") || n.ends_with(".png"))
                .collect();
            names.sort();
            let images: Vec<RgbImage> = names.iter().map(|n| photo(n)).collect();
            let fast = embedder.embed(&images).expect("fast");
            for ((images, names), fast) in images.chunks(8).zip(names.chunks(8)).zip(fast.chunks(8))
            {
                let reference = embedder.embed_reference(images).expect("reference");
                for ((name, r), f) in names.iter().zip(&reference).zip(fast) {
                    let cos: f32 = r.iter().zip(f).map(|(a, b)| a * b).sum();
                    assert!(cos >= 0.9999, "{kind} {name}: cosine {cos}");
                }
                // One image alone: split across both threads (row bands,
                // weight panels) rather than one image per thread.
                let alone = embedder.embed(&images[..1]).expect("fast, one image");
                let cos: f32 = reference[0].iter().zip(&alone[0]).map(|(a, b)| a * b).sum();
                assert!(cos >= 0.9999, "{kind} {} alone: cosine {cos}", names[0]);
            }
        }
    }
}
