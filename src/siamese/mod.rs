//! The Siamese comparison: is this pair a duplicate, or merely similar?
//!
//! CNN cosine says how alike two photos look; two different photos of one
//! fish are alike too. The Siamese network ([`net`]) is trained
//! ([`train`]) to put copies of one photo (cropped, re-encoded, rotated,
//! recoloured, captioned) close together and different photos, including
//! photos of the same kind of thing, far apart. Two images are compared by
//! the Euclidean distance of their embeddings; a pair is a duplicate at or
//! below a threshold calibrated on held-out photos ([`quality`]) and shipped
//! with the weights.
//!
//! The network reads the frozen embedding CNN's head map before pooling, so
//! an image costs one backbone pass for both its CNN features and its
//! Siamese embedding. The bundled weights are for EfficientNet-Lite0.

pub mod net;

use std::{collections::HashMap, path::Path};

use candle_core::{Device, Tensor};

use crate::embed::{ModelKind, TapShape};
use crate::error::{Error, Result};
pub use net::{SiameseNet, EMBEDDING_DIM};

/// The trained weights compiled into the binary (see `models/README.md`).
const BUNDLED: &[u8] = include_bytes!("../../models/siamese.safetensors");
/// Tensor holding the calibrated duplicate threshold.
const META_THRESHOLD: &str = "meta.threshold";
/// Tensor holding the backbone's model name, as UTF-8 bytes.
const META_BACKBONE: &str = "meta.backbone";

/// A loaded Siamese network with its duplicate threshold.
pub struct Siamese {
    net: SiameseNet,
    /// Distance at or below which a pair is a duplicate.
    threshold: f32,
    backbone: String,
    /// Names these weights: a database records it, since vectors from two
    /// Siamese models cannot be compared.
    fingerprint: String,
}

impl Siamese {
    /// The bundled model, or the one at `path`; it must have been trained on
    /// `backbone`'s map of `tap` shape.
    pub fn load(path: Option<&Path>, backbone: ModelKind, tap: TapShape) -> Result<Self> {
        let bytes = match path {
            Some(p) => std::fs::read(p).map_err(Error::file("read the Siamese weights", p))?,
            None => BUNDLED.to_vec(),
        };
        let siamese = Self::from_bytes(&bytes)?;
        if siamese.backbone != backbone.name() || siamese.net.in_channels()? != tap.c {
            return Err(Error::Model(format!(
                "the Siamese weights were trained on {} maps, not {backbone}",
                siamese.backbone
            )));
        }
        Ok(siamese)
    }

    /// Parses a safetensors file written by [`Siamese::save`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| Error::Model(format!("cannot parse Siamese weights: {e}")))?;
        let threshold = take(&mut tensors, META_THRESHOLD)?.to_vec1::<f32>()?;
        let backbone = take(&mut tensors, META_BACKBONE)?.to_vec1::<u8>()?;
        let threshold = match threshold.as_slice() {
            [t] if t.is_finite() && *t > 0.0 => *t,
            _ => return Err(Error::Model("Siamese threshold is malformed".into())),
        };
        Ok(Siamese {
            net: SiameseNet::from_tensors(tensors)?,
            threshold,
            backbone: String::from_utf8_lossy(&backbone).into_owned(),
            fingerprint: fingerprint(bytes),
        })
    }

    /// Wraps a trained network with its calibrated threshold.
    pub fn new(net: SiameseNet, threshold: f32, backbone: ModelKind) -> Self {
        Siamese {
            net,
            threshold,
            backbone: backbone.name().to_string(),
            fingerprint: String::new(),
        }
    }

    /// Writes weights, threshold and backbone name as one safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = self.net.tensors().clone();
        let dev = Device::Cpu;
        tensors.insert(
            META_THRESHOLD.into(),
            Tensor::from_slice(&[self.threshold], 1, &dev)?,
        );
        let name = self.backbone.as_bytes();
        tensors.insert(
            META_BACKBONE.into(),
            Tensor::from_slice(name, name.len(), &dev)?,
        );
        candle_core::safetensors::save(&tensors, path)
            .map_err(Error::file("write the Siamese weights", path))
    }

    /// Sets the duplicate threshold (after calibration).
    pub fn set_threshold(&mut self, threshold: f32) {
        self.threshold = threshold;
    }

    /// The first 16 hex digits of the SHA-256 of the weights file (empty for
    /// a network made in this process).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The calibrated duplicate threshold (Euclidean distance).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Embeddings of tapped maps (NHWC, `shape`), one per map.
    pub fn embed_taps(&self, taps: &[&[f32]], shape: TapShape) -> Result<Vec<Vec<f32>>> {
        if taps.is_empty() {
            return Ok(Vec::new());
        }
        let maps = taps_to_tensor(taps, shape)?;
        Ok(self.net.forward(&maps)?.to_vec2::<f32>()?)
    }
}

/// Stacks NHWC maps into one `(N, H, W, C)` tensor.
pub fn taps_to_tensor(taps: &[&[f32]], shape: TapShape) -> Result<Tensor> {
    let data: Vec<f32> = taps.concat();
    Ok(Tensor::from_vec(
        data,
        (taps.len(), shape.h, shape.w, shape.c),
        &Device::Cpu,
    )?)
}

/// Euclidean distance of two embeddings.
pub use crate::vector::euclidean as distance;

fn fingerprint(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn take(tensors: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    tensors
        .remove(name)
        .ok_or_else(|| Error::Model(format!("Siamese weights lack '{name}'")))
}
