//! Resize (and, for the centre view, crop) and normalise in one pass: the
//! last step from pixels to network input.
//!
//! The network sees a `size` x `size` square, one of two [`View`]s of the
//! image: all of it, scaled to the square whatever its shape (databases
//! made since 2026-12-07), or the central square of it scaled so its
//! shorter side is `size / 0.875` (the view the EfficientNet-Lite weights
//! were trained with; databases made before). Only the square is computed: a
//! separable triangle (linear) filter, widened by the scale factor when
//! shrinking so every input pixel counts (the `image` crate's `Triangle`),
//! first along rows for just the input rows the square needs, then down the
//! columns, straight into `(v - 127) / 128` floats. No intermediate image
//! is rounded to bytes.

use image::{imageops, RgbImage};

/// The shorter side an image is resized to before the `size` centre crop.
pub fn resize_target(size: u32) -> u32 {
    (size as f32 / 0.875).round() as u32
}

/// What of an image the network sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// All of it, squeezed to the square: a crop from any part of a photo,
    /// and a wide photo's sides, are in its vector. A copy keeps the
    /// photo's shape (crops of it keep the same squeeze).
    #[default]
    Whole,
    /// The central square of it: what a wide photo shows between its
    /// sides. A screenshot of a photo loses most of the frame around it.
    Centre,
}

impl View {
    /// Its name, as a database records it.
    pub fn name(self) -> &'static str {
        match self {
            View::Whole => "whole",
            View::Centre => "centre",
        }
    }

    /// The view named `name` ([`View::name`]).
    pub fn from_name(name: &[u8]) -> Option<View> {
        match name {
            b"whole" => Some(View::Whole),
            b"centre" => Some(View::Centre),
            _ => None,
        }
    }
}

/// HWC floats `(v - 127) / 128` of `image` as `view` shows it: the whole
/// image resized to `size` x `size`, or the centre `size` square of it
/// resized so its shorter side is [`resize_target`]`(size)` (the scaling
/// the EfficientNet-Lite weights were trained with).
pub fn to_input(image: &RgbImage, size: u32, view: View) -> Vec<f32> {
    let target = resize_target(size);
    let (w, h) = image.dimensions();
    let (nw, nh) = match view {
        View::Whole => (size, size),
        View::Centre => scaled_size(w, h, target),
    };
    // Very large images are first box-filtered to twice the size, cheaply.
    if w.min(h) >= 3 * target {
        let rough = imageops::thumbnail(image, nw * 2, nh * 2);
        return crop_resized(&rough, nw, nh, size);
    }
    crop_resized(image, nw, nh, size)
}

/// The size that makes the shorter side `target`, keeping the aspect ratio.
fn scaled_size(w: u32, h: u32, target: u32) -> (u32, u32) {
    let scale = f64::from(target) / f64::from(w.min(h).max(1));
    let scaled = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
    if w <= h {
        (target, scaled(h))
    } else {
        (scaled(w), target)
    }
}

/// The centre `size` square (or less, if the resized image is smaller) of
/// `image` resized to `nw` x `nh`, normalised, in a `size` x `size` buffer.
fn crop_resized(image: &RgbImage, nw: u32, nh: u32, size: u32) -> Vec<f32> {
    let (w, h) = image.dimensions();
    let (cw, ch) = (size.min(nw), size.min(nh));
    let (x0, y0) = ((nw - cw) / 2, (nh - ch) / 2);
    let columns = Taps::new(w, nw, x0..x0 + cw);
    let rows = Taps::new(h, nh, y0..y0 + ch);
    let (first_row, last_row) = rows.input_span();
    let row_len = 3 * cw as usize;
    // Each needed input row, filtered along its length.
    let mut filtered = vec![0f32; (last_row - first_row) * row_len];
    let stride = 3 * w as usize;
    for (y, out) in (first_row..last_row).zip(filtered.chunks_exact_mut(row_len)) {
        let src = &image.as_raw()[y * stride..(y + 1) * stride];
        for (j, px) in out.chunks_exact_mut(3).enumerate() {
            let (start, weights) = columns.get(j);
            let mut acc = [0f32; 3];
            for (k, &wt) in weights.iter().enumerate() {
                let s = &src[3 * (start + k)..3 * (start + k) + 3];
                for c in 0..3 {
                    acc[c] += wt * f32::from(s[c]);
                }
            }
            px.copy_from_slice(&acc);
        }
    }
    // Down the columns, into the output rows.
    let mut out = vec![0f32; 3 * (size * size) as usize];
    let out_stride = 3 * size as usize;
    let mut acc = vec![0f32; row_len];
    for i in 0..ch as usize {
        let (start, weights) = rows.get(i);
        acc.fill(0.0);
        for (k, &wt) in weights.iter().enumerate() {
            let src = &filtered[(start + k - first_row) * row_len..][..row_len];
            for (a, &v) in acc.iter_mut().zip(src) {
                *a += wt * v;
            }
        }
        for (o, &a) in out[i * out_stride..][..row_len].iter_mut().zip(&acc) {
            *o = (a - 127.0) / 128.0;
        }
    }
    out
}

/// A triangle filter's taps for a range of output positions along one
/// axis: for each, the first input index and its normalised weights.
struct Taps {
    starts: Vec<usize>,
    /// `offsets[i]..offsets[i + 1]` are output `i`'s weights.
    offsets: Vec<usize>,
    weights: Vec<f32>,
}

impl Taps {
    /// Taps mapping `input` samples onto `output` ones, for the outputs in
    /// `range`. Same arithmetic as the `image` crate's resampler.
    fn new(input: u32, output: u32, range: std::ops::Range<u32>) -> Taps {
        let ratio = input as f32 / output as f32;
        let widen = ratio.max(1.0);
        let support = widen; // the triangle's support is 1
        let mut taps = Taps {
            starts: Vec::new(),
            offsets: vec![0],
            weights: Vec::new(),
        };
        for out in range {
            let centre = (out as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, i64::from(input) - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, i64::from(input));
            let first = taps.weights.len();
            for i in left..right {
                let t = ((i as f32 - (centre - 0.5)) / widen).abs();
                taps.weights.push((1.0 - t).max(0.0));
            }
            let sum: f32 = taps.weights[first..].iter().sum();
            if sum > 0.0 {
                taps.weights[first..].iter_mut().for_each(|w| *w /= sum);
            }
            taps.starts.push(left as usize);
            taps.offsets.push(taps.weights.len());
        }
        taps
    }

    fn get(&self, i: usize) -> (usize, &[f32]) {
        (
            self.starts[i],
            &self.weights[self.offsets[i]..self.offsets[i + 1]],
        )
    }

    /// The input indices any tap reads: `first..last`.
    fn input_span(&self) -> (usize, usize) {
        let last = (0..self.starts.len())
            .map(|i| self.starts[i] + self.offsets[i + 1] - self.offsets[i])
            .max()
            .unwrap_or(0);
        (self.starts.first().copied().unwrap_or(0), last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward way: resize the whole image with the `image`
    /// crate, round to bytes, crop, normalise.
    fn reference(image: &RgbImage, size: u32, view: View) -> Vec<f32> {
        let (nw, nh) = match view {
            View::Whole => (size, size),
            View::Centre => scaled_size(image.width(), image.height(), resize_target(size)),
        };
        let resized = imageops::resize(image, nw, nh, imageops::FilterType::Triangle);
        let (x0, y0) = ((nw - size) / 2, (nh - size) / 2);
        let crop = imageops::crop_imm(&resized, x0, y0, size, size).to_image();
        crop.as_raw()
            .iter()
            .map(|&v| (f32::from(v) - 127.0) / 128.0)
            .collect()
    }

    fn photo() -> RgbImage {
        let path = format!("{}/tests/data/animal-panda.jpg", env!("CARGO_MANIFEST_DIR"));
        image::open(path).expect("photo").into_rgb8()
    }

    #[test]
    fn matches_resizing_the_whole_image() {
        let panda = photo();
        let portrait = imageops::rotate90(&panda);
        let small = imageops::resize(&panda, 200, 150, imageops::FilterType::Triangle);
        let views = [View::Whole, View::Centre];
        for ((label, img), view) in [
            ("landscape", &panda),
            ("portrait", &portrait),
            ("upscaled", &small),
        ]
        .into_iter()
        .flat_map(|i| views.map(|v| (i, v)))
        {
            let ours = to_input(img, 224, view);
            let want = reference(img, 224, view);
            assert_eq!(ours.len(), want.len());
            let worst = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // The reference rounds to bytes: half a level is 0.5 / 128.
            assert!(
                worst <= 1.01 / 128.0,
                "{label}, {view:?}: worst difference {worst}"
            );
        }
    }
}
