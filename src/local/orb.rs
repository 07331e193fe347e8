//! Keypoints and binary descriptors (ORB-style: FAST-9 corners on an image
//! pyramid, ranked by Harris response, oriented by their intensity
//! centroid, described by 256 steered BRIEF tests).
//!
//! They let a pair of images be checked point by point: a copy that keeps
//! 15 % of a photo, or shows it inside a screenshot, shares hundreds of
//! such points with the photo at one consistent scale, rotation and shift,
//! where the pooled CNN vector of the crop no longer looks like the
//! photo's. Rotation comes from the orientation, scale from the pyramid.

use image::{imageops, GrayImage, RgbImage};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{Keypoint, Keypoints};

/// Longest side the image is analysed at (larger images are shrunk first).
pub const ANALYSED_SIDE: u32 = 480;
/// Keypoints kept per image at most.
pub const MAX_KEYPOINTS: usize = 320;
/// Pyramid levels and the shrink between two.
const LEVELS: usize = 6;
const LEVEL_SCALE: f32 = 1.3;
/// Radius of the patch a descriptor reads (pixels of its level).
const PATCH: i32 = 13;
/// FAST's brightness threshold (grey levels).
const FAST_THRESHOLD: i16 = 18;
/// Smallest level side worth searching.
const MIN_LEVEL_SIDE: u32 = 2 * PATCH as u32 + 12;
/// Keypoints per cell of an 8 x 8 grid over each level, so they spread.
const PER_CELL: usize = 6;

/// The 16 pixels of FAST's circle of radius 3, in order.
const CIRCLE: [(i32, i32); 16] = [
    (0, -3),
    (1, -3),
    (2, -2),
    (3, -1),
    (3, 0),
    (3, 1),
    (2, 2),
    (1, 3),
    (0, 3),
    (-1, 3),
    (-2, 2),
    (-3, 1),
    (-3, 0),
    (-3, -1),
    (-2, -2),
    (-1, -3),
];

/// The 256 pixel pairs of the descriptor, inside a circle of radius
/// [`PATCH`] (drawn once, from a fixed seed: every image must use the same).
fn pattern() -> &'static [[(f32, f32); 2]; 256] {
    static PATTERN: std::sync::OnceLock<[[(f32, f32); 2]; 256]> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(0x0b5e_55ed);
        let sigma = PATCH as f32 / 2.2;
        let mut point = || loop {
            // Box-Muller: an isotropic Gaussian around the keypoint.
            let (u, v): (f32, f32) = (rng.random_range(1e-6..1.0), rng.random_range(0.0..1.0));
            let r = (-2.0 * u.ln()).sqrt() * sigma;
            let (x, y) = (
                r * (std::f32::consts::TAU * v).cos(),
                r * (std::f32::consts::TAU * v).sin(),
            );
            if x * x + y * y <= (PATCH * PATCH) as f32 {
                return (x, y);
            }
        };
        let mut out = [[(0.0, 0.0); 2]; 256];
        for pair in out.iter_mut() {
            *pair = [point(), point()];
        }
        out
    })
}

/// Keypoints of `image`, analysed with its longest side at most
/// [`ANALYSED_SIDE`]. An image too small for one patch has none.
pub fn extract(image: &RgbImage) -> Keypoints {
    let grey = imageops::grayscale(image);
    let (w, h) = grey.dimensions();
    // Larger images are shrunk; smaller ones are not enlarged (measured:
    // no more copies found, more time spent).
    let s = ANALYSED_SIDE as f32 / w.max(h).max(1) as f32;
    let base = if s < 1.0 {
        let (nw, nh) = (
            ((w as f32 * s).round() as u32).max(1),
            ((h as f32 * s).round() as u32).max(1),
        );
        imageops::resize(&grey, nw, nh, imageops::FilterType::Triangle)
    } else {
        grey
    };
    let (bw, bh) = base.dimensions();
    let mut found: Vec<(f32, Keypoint)> = Vec::new();
    let mut level_img = base;
    for level in 0..LEVELS {
        let scale = LEVEL_SCALE.powi(level as i32);
        if level > 0 {
            let (nw, nh) = (
                (bw as f32 / scale).round() as u32,
                (bh as f32 / scale).round() as u32,
            );
            if nw.min(nh) < MIN_LEVEL_SIDE {
                break;
            }
            level_img = imageops::resize(&level_img, nw, nh, imageops::FilterType::Triangle);
        } else if bw.min(bh) < MIN_LEVEL_SIDE {
            break;
        }
        let smooth = box_blur(&level_img);
        for (response, x, y) in corners(&level_img) {
            let angle = orientation(&smooth, x, y);
            let descriptor = describe(&smooth, x, y, angle);
            found.push((
                response,
                Keypoint {
                    x: x as f32 * scale,
                    y: y as f32 * scale,
                    angle,
                    scale,
                    descriptor,
                },
            ));
        }
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    found.truncate(MAX_KEYPOINTS);
    Keypoints {
        width: bw,
        height: bh,
        points: found.into_iter().map(|(_, k)| k).collect(),
    }
}

/// FAST-9 corners of one level away from its border, non-maximum
/// suppressed, the strongest per grid cell, as (Harris response, x, y).
fn corners(img: &GrayImage) -> Vec<(f32, i32, i32)> {
    let (w, h) = (img.width() as i32, img.height() as i32);
    let px = |x: i32, y: i32| img.as_raw()[(y * w + x) as usize] as i16;
    let border = PATCH + 3;
    let mut score = vec![0i32; (w * h) as usize];
    let mut candidates = Vec::new();
    for y in border..h - border {
        for x in border..w - border {
            let p = px(x, y);
            let (hi, lo) = (p + FAST_THRESHOLD, p - FAST_THRESHOLD);
            // Quick reject: an arc of 9 holds at least 2 of the 4 compass points.
            let compass = [px(x, y - 3), px(x + 3, y), px(x, y + 3), px(x - 3, y)];
            let bright = compass.iter().filter(|&&v| v > hi).count();
            let dark = compass.iter().filter(|&&v| v < lo).count();
            if bright < 2 && dark < 2 {
                continue;
            }
            let ring: [i16; 16] = std::array::from_fn(|i| px(x + CIRCLE[i].0, y + CIRCLE[i].1));
            if !arc_of_nine(&ring, |v| v > hi) && !arc_of_nine(&ring, |v| v < lo) {
                continue;
            }
            let s: i32 = ring
                .iter()
                .map(|&v| ((v - p).abs() - FAST_THRESHOLD).max(0) as i32)
                .sum();
            score[(y * w + x) as usize] = s;
            candidates.push((x, y));
        }
    }
    let cell_w = (w as f32 / 8.0).max(1.0);
    let cell_h = (h as f32 / 8.0).max(1.0);
    let mut kept: Vec<(f32, i32, i32)> = candidates
        .into_iter()
        .filter(|&(x, y)| {
            let s = score[(y * w + x) as usize];
            (-1..=1).all(|dy| {
                (-1..=1).all(|dx| {
                    let o = score[((y + dy) * w + x + dx) as usize];
                    (dx == 0 && dy == 0) || o < s || (o == s && (dy, dx) < (0, 0))
                })
            })
        })
        .map(|(x, y)| (harris(img, x, y), x, y))
        .collect();
    kept.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut per_cell = [0usize; 64];
    kept.retain(|&(_, x, y)| {
        let cell =
            ((y as f32 / cell_h) as usize).min(7) * 8 + ((x as f32 / cell_w) as usize).min(7);
        per_cell[cell] += 1;
        per_cell[cell] <= PER_CELL
    });
    kept
}

fn arc_of_nine(ring: &[i16; 16], test: impl Fn(i16) -> bool) -> bool {
    let mut run = 0;
    for i in 0..16 + 8 {
        if test(ring[i % 16]) {
            run += 1;
            if run >= 9 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Harris corner response over a 7 x 7 window of central differences.
fn harris(img: &GrayImage, x: i32, y: i32) -> f32 {
    let w = img.width() as i32;
    let px = |x: i32, y: i32| img.as_raw()[(y * w + x) as usize] as f32;
    let (mut a, mut b, mut c) = (0.0f32, 0.0f32, 0.0f32);
    for dy in -3..=3 {
        for dx in -3..=3 {
            let (u, v) = (x + dx, y + dy);
            let ix = px(u + 1, v) - px(u - 1, v);
            let iy = px(u, v + 1) - px(u, v - 1);
            a += ix * ix;
            b += iy * iy;
            c += ix * iy;
        }
    }
    a * b - c * c - 0.04 * (a + b) * (a + b)
}

/// Angle of the intensity centroid of the patch around (x, y).
fn orientation(img: &GrayImage, x: i32, y: i32) -> f32 {
    let w = img.width() as i32;
    let (mut m10, mut m01) = (0.0f32, 0.0f32);
    for dy in -PATCH..=PATCH {
        for dx in -PATCH..=PATCH {
            if dx * dx + dy * dy > PATCH * PATCH {
                continue;
            }
            let v = img.as_raw()[((y + dy) * w + x + dx) as usize] as f32;
            m10 += dx as f32 * v;
            m01 += dy as f32 * v;
        }
    }
    m01.atan2(m10)
}

/// 256 brightness comparisons of pixel pairs, turned by `angle`.
fn describe(img: &GrayImage, x: i32, y: i32, angle: f32) -> [u64; 4] {
    let w = img.width() as i32;
    let (sin, cos) = angle.sin_cos();
    let at = |(px, py): (f32, f32)| {
        let u = x + (cos * px - sin * py).round() as i32;
        let v = y + (sin * px + cos * py).round() as i32;
        img.as_raw()[(v * w + u) as usize]
    };
    let mut out = [0u64; 4];
    for (i, [p, q]) in pattern().iter().enumerate() {
        if at(*p) < at(*q) {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    out
}

/// A 5 x 5 box blur (edges clamped): BRIEF's tests compare smoothed pixels,
/// so noise and JPEG blocks do not flip them.
fn box_blur(img: &GrayImage) -> GrayImage {
    let (w, h) = (img.width() as i32, img.height() as i32);
    let src = img.as_raw();
    let mut rows = vec![0u16; src.len()];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0u16;
            for d in -2..=2 {
                s += src[(y * w + (x + d).clamp(0, w - 1)) as usize] as u16;
            }
            rows[(y * w + x) as usize] = s;
        }
    }
    let mut out = vec![0u8; src.len()];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0u32;
            for d in -2..=2 {
                s += rows[((y + d).clamp(0, h - 1) * w + x) as usize] as u32;
            }
            out[(y * w + x) as usize] = (s / 25) as u8;
        }
    }
    GrayImage::from_raw(w as u32, h as u32, out).unwrap_or_default()
}
