//! The Siamese branch network, in candle: a ResNet of 4 residual blocks over
//! the frozen CNN's head map, ending in a unit-length embedding.
//!
//! Both images of a pair go through this one network (the twin branches
//! share every weight), and the pair is scored by the Euclidean distance of
//! the two embeddings: 0 for the same image, at most 2.
//!
//! ```text
//! head map (7 x 7 x 1280) ─ standardise ─ 1x1 conv 128
//!   ─ res 128 ─ res 128 ─ res 128 ─ res 128 ─ mean pool ─ linear 128 ─ L2
//! ```
//!
//! A residual block is pre-activation, `x + conv3x3(relu(conv3x3(relu(x))))`,
//! with the second convolution starting at zero, so at initialisation every
//! block is the identity and the whole network is a linear projection of
//! the pooled CNN features (training starts it at their top principal
//! directions): it starts from what the cosine already knows and learns
//! what the cosine gets wrong. There is no batch norm; the input is centred
//! and scaled by statistics of the training maps. Maps are NHWC, as the CNN taps them; a convolution's
//! weights are a `(k * k * C_in, C_out)` matrix over `(ky, kx, c)` windows.
//!
//! The weights live in a flat name → tensor map, which is exactly what the
//! safetensors file holds; training wraps the same tensors in `Var`s.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::embed::l2_normalise;
use crate::error::{Error, Result};

/// Width of the 1x1 stem and of each residual block's output.
pub const STEM: usize = 128;
/// (output channels, stride) of the four residual blocks.
const BLOCKS: [(usize, usize); 4] = [(128, 1), (128, 1), (128, 1), (128, 1)];
/// Width of the embedding.
pub const EMBEDDING_DIM: usize = 128;

/// The network's weights, by name.
pub struct SiameseNet {
    tensors: HashMap<String, Tensor>,
}

impl SiameseNet {
    /// Fresh weights for `in_channels` input maps, seeded: random-projection
    /// stem and head, Kaiming-normal first convolution and zero second
    /// convolution in each block, zero biases, and the given input
    /// statistics.
    ///
    /// `stem`, when given, is the `(in_channels, 128)` stem matrix to start
    /// from (training passes the top principal directions of the pooled
    /// features); the head then starts as the identity, so the network
    /// starts as that projection of the pooled features.
    pub fn init(
        in_channels: usize,
        mean: &[f32],
        std: &[f32],
        stem: Option<Vec<f32>>,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        let mut put = |name: &str, t: Tensor| {
            tensors.insert(name.to_string(), t);
        };
        let dev = Device::Cpu;
        put("input.mean", Tensor::from_slice(mean, in_channels, &dev)?);
        put("input.std", Tensor::from_slice(std, in_channels, &dev)?);
        let identity_head = stem.is_some() && STEM == EMBEDDING_DIM;
        let stem = stem.unwrap_or_else(|| {
            normal(
                &mut rng,
                in_channels * STEM,
                (1.0 / in_channels as f32).sqrt(),
            )
        });
        put(
            "stem.weight",
            Tensor::from_vec(stem, (in_channels, STEM), &dev)?,
        );
        put("stem.bias", Tensor::zeros(STEM, DType::F32, &dev)?);
        let mut cin = STEM;
        for (i, &(cout, stride)) in BLOCKS.iter().enumerate() {
            put(
                &format!("block{i}.conv1.weight"),
                kaiming(&mut rng, 9 * cin, cout)?,
            );
            put(
                &format!("block{i}.conv1.bias"),
                Tensor::zeros(cout, DType::F32, &dev)?,
            );
            put(
                &format!("block{i}.conv2.weight"),
                Tensor::zeros((9 * cout, cout), DType::F32, &dev)?,
            );
            put(
                &format!("block{i}.conv2.bias"),
                Tensor::zeros(cout, DType::F32, &dev)?,
            );
            if cin != cout || stride != 1 {
                put(
                    &format!("block{i}.skip.weight"),
                    kaiming(&mut rng, cin, cout)?,
                );
                put(
                    &format!("block{i}.skip.bias"),
                    Tensor::zeros(cout, DType::F32, &dev)?,
                );
            }
            cin = cout;
        }
        let head = if identity_head {
            Tensor::eye(EMBEDDING_DIM, DType::F32, &dev)?
        } else {
            let head = normal(&mut rng, EMBEDDING_DIM * cin, (1.0 / cin as f32).sqrt());
            Tensor::from_vec(head, (cin, EMBEDDING_DIM), &dev)?
        };
        put("head.weight", head);
        put("head.bias", Tensor::zeros(EMBEDDING_DIM, DType::F32, &dev)?);
        Ok(SiameseNet { tensors })
    }

    /// Weights from a name → tensor map (a loaded safetensors file); checks
    /// that every tensor the network needs is there with the right rank.
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Result<Self> {
        let net = SiameseNet { tensors };
        let in_channels = net.in_channels()?;
        let probe = Tensor::zeros((1, 7, 7, in_channels), DType::F32, &Device::Cpu)?;
        net.forward(&probe)
            .map_err(|e| Error::Model(format!("malformed Siamese weights: {e}")))?;
        Ok(net)
    }

    /// Channels of the input map the network was built for.
    pub fn in_channels(&self) -> Result<usize> {
        Ok(self.get("input.mean")?.dims1()?)
    }

    /// The weights, by name (to save them).
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Wraps every learned weight (not the input statistics) in a `Var`,
    /// so an optimiser can update it in place; returns the vars.
    pub fn make_trainable(&mut self) -> Result<Vec<Var>> {
        let mut names: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| !n.starts_with("input."))
            .cloned()
            .collect();
        names.sort();
        let mut vars = Vec::with_capacity(names.len());
        for name in names {
            let var = Var::from_tensor(self.get(&name)?)?;
            self.tensors.insert(name, var.as_tensor().clone());
            vars.push(var);
        }
        Ok(vars)
    }

    /// Unit-length embeddings `(N, EMBEDDING_DIM)` of NHWC maps `(N, H, W, C)`.
    pub fn forward(&self, maps: &Tensor) -> Result<Tensor> {
        let mean = self.get("input.mean")?;
        let std = self.get("input.std")?;
        let x = maps.broadcast_sub(mean)?.broadcast_div(std)?;
        let mut x = self.conv(&x, "stem", 1, 1)?;
        for (i, &(_, stride)) in BLOCKS.iter().enumerate() {
            x = self.block(&x, i, stride)?;
        }
        let pooled = x.mean(1)?.mean(1)?;
        let head = pooled
            .matmul(self.get("head.weight")?)?
            .broadcast_add(self.get("head.bias")?)?;
        l2_normalise(&head)
    }

    fn block(&self, x: &Tensor, i: usize, stride: usize) -> Result<Tensor> {
        let h = self
            .conv(&x.relu()?, &format!("block{i}.conv1"), stride, 3)?
            .relu()?;
        let h = self.conv(&h, &format!("block{i}.conv2"), 1, 3)?;
        let skip_name = format!("block{i}.skip");
        let skip = if self.tensors.contains_key(&format!("{skip_name}.weight")) {
            self.conv(x, &skip_name, stride, 1)?
        } else {
            x.clone()
        };
        Ok((h + skip)?)
    }

    /// A `kernel` x `kernel` convolution ("same" padding) of NHWC `x`, as a
    /// gather of each output pixel's window followed by one matrix
    /// multiply: both have fast, exact gradients in candle, where its
    /// direct convolution's backward pass is several times slower.
    fn conv(&self, x: &Tensor, name: &str, stride: usize, kernel: usize) -> Result<Tensor> {
        let w = self.get(&format!("{name}.weight"))?;
        let b = self.get(&format!("{name}.bias"))?;
        let (n, h, wd, c) = x.dims4()?;
        let cout = b.dims1()?;
        let flat = x.reshape((n * h * wd, c))?;
        let (cols, ho, wo) = if kernel == 1 && stride == 1 {
            (flat, h, wd)
        } else {
            let (idx, ho, wo) = window_indices(n, h, wd, kernel, stride);
            let zero_row = Tensor::zeros((1, c), DType::F32, x.device())?;
            let padded = Tensor::cat(&[&flat, &zero_row], 0)?;
            let idx = Tensor::from_vec(idx, n * ho * wo * kernel * kernel, x.device())?;
            let cols = padded
                .index_select(&idx, 0)?
                .reshape((n * ho * wo, kernel * kernel * c))?;
            (cols, ho, wo)
        };
        let y = cols.matmul(w)?.broadcast_add(b)?;
        Ok(y.reshape((n, ho, wo, cout))?)
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Model(format!("Siamese weights lack '{name}'")))
    }
}

/// For each output pixel of a `k` x `k`, `stride` convolution with "same"
/// padding over `n` maps of `h` x `w`, the flat input rows of its window in
/// `(ky, kx)` order; row `n * h * w` (one past the end) stands for padding.
fn window_indices(
    n: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
) -> (Vec<u32>, usize, usize) {
    let pad = (k - 1) / 2;
    let (ho, wo) = (
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    );
    let zero = (n * h * w) as u32;
    let mut idx = Vec::with_capacity(n * ho * wo * k * k);
    for b in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = (
                            (oy * stride + ky) as isize - pad as isize,
                            (ox * stride + kx) as isize - pad as isize,
                        );
                        let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                        idx.push(if inside {
                            (b * h * w + iy as usize * w + ix as usize) as u32
                        } else {
                            zero
                        });
                    }
                }
            }
        }
    }
    (idx, ho, wo)
}

/// Kaiming-normal `(fan_in, fan_out)` weights for a ReLU network: std
/// `sqrt(2 / fan_in)`.
fn kaiming(rng: &mut StdRng, fan_in: usize, fan_out: usize) -> Result<Tensor> {
    let values = normal(rng, fan_in * fan_out, (2.0 / fan_in as f32).sqrt());
    Ok(Tensor::from_vec(values, (fan_in, fan_out), &Device::Cpu)?)
}

/// `n` draws from N(0, std²) (Box-Muller over the seeded generator).
fn normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(f32::EPSILON..1.0);
            let u2: f32 = rng.random_range(0.0..1.0);
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_maps(seed: u64, n: usize, c: usize) -> Tensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let v = normal(&mut rng, n * c * 14 * 14, 1.0);
        Tensor::from_vec(v, (n, 14, 14, c), &Device::Cpu).expect("tensor")
    }

    #[test]
    fn embeddings_are_unit_length_and_init_is_seeded() {
        let c = 8;
        let a = SiameseNet::init(c, &[0.0; 8], &[1.0; 8], None, 3).expect("init");
        let b = SiameseNet::init(c, &[0.0; 8], &[1.0; 8], None, 3).expect("init");
        let maps = random_maps(1, 3, c);
        let ea = a.forward(&maps).expect("forward");
        assert_eq!(ea.dims(), &[3, EMBEDDING_DIM]);
        let norms: Vec<f32> = ea.sqr().unwrap().sum(1).unwrap().to_vec1().unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
        let eb = b.forward(&maps).expect("forward");
        let diff: f32 = (ea - eb)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0, "same seed, same network");
    }
}
