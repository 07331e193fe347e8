//! Keypoints and binary descriptors (ORB-style: FAST-9 corners on an image
//! pyramid, ranked by Harris response, oriented by their intensity
//! centroid, described by 256 steered BRIEF tests).
//!
//! They let a pair of images be checked point by point: a copy that keeps
//! 15 % of a photo, or shows it inside a screenshot, shares hundreds of
//! such points with the photo at one consistent scale, rotation and shift,
//! where the pooled CNN vector of the crop no longer looks like the
//! photo's. Rotation comes from the orientation, scale from the pyramid.

use image::{GrayImage, RgbImage};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{Keypoint, Keypoints};

/// Longest side the image is analysed at (larger images are shrunk first).
pub const ANALYSED_SIDE: u32 = 480;
/// Keypoints stored per image at most (the strongest; see
/// [`super::Keypoints::to_bytes`]). A crop keeping 15 % of a photo holds
/// only its share of them, so this bounds how heavy a crop the check can
/// find: with 480 rather than 320, copies passing the check went 0.907 ->
/// 0.924 on the eval's photos (15-25 % crops 0.841 -> 0.885), unrelated
/// photos passing stayed 0 of 32,760 (`examples/keypoint_pass_rates.rs`);
/// 640 gave 0.930 (the same on those crops) for a third more matching.
pub const MAX_KEYPOINTS: usize = 480;
/// Keypoints found per image at most, the side a query checks with: what
/// is stored and a third more, so a copy whose own additions are rich in
/// corners (a caption's letters, a screenshot's frame) keeps the photo's
/// corners too, and a zoomed crop its coarse ones (see `query_set`). Only
/// the pair count costs: each is checked against a stored image's
/// [`MAX_KEYPOINTS`] (with 480 of them, 480 found per query instead of 640
/// passed 15-25 % crops 0.813 instead of 0.885).
pub const QUERY_KEYPOINTS: usize = 640;
/// Pyramid levels and the shrink between two: eight levels span 6.3x, the
/// zoom of a copy that keeps 15 % of a large photo against that photo as
/// stored (analysed at a quarter or an eighth of its size).
const LEVELS: usize = 8;
const LEVEL_SCALE: f32 = 1.3;
/// Radius of the patch a descriptor reads (pixels of its level).
const PATCH: i32 = 13;
/// FAST's brightness threshold (grey levels): low enough that sky, water
/// and walls keep a few corners (each grid cell keeps its strongest, so
/// textured parts lose nothing).
const FAST_THRESHOLD: i16 = 12;
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
/// [`ANALYSED_SIDE`]: the strongest [`MAX_KEYPOINTS`] first, then more
/// for a query, [`QUERY_KEYPOINTS`] in all (see `query_set`). An image
/// too small for one patch has none.
pub fn extract(image: &RgbImage) -> Keypoints {
    extract_grey(analysed(image))
}

/// The image as [`extract_grey`] analyses it: grey, its longest side at
/// most [`ANALYSED_SIDE`]. Cheap next to the extraction, so the engine
/// makes it while it has the decoded pixels and extracts later, beside
/// the network's forward pass.
pub fn analysed(image: &RgbImage) -> GrayImage {
    let grey = grey(image);
    let (w, h) = grey.dimensions();
    // Larger images are shrunk; smaller ones are not enlarged (measured:
    // no more copies found, more time spent).
    let s = ANALYSED_SIDE as f32 / w.max(h).max(1) as f32;
    if s < 1.0 {
        let (nw, nh) = (
            ((w as f32 * s).round() as u32).max(1),
            ((h as f32 * s).round() as u32).max(1),
        );
        shrink(&grey, nw, nh)
    } else {
        grey
    }
}

/// `image::imageops::grayscale` (the same Rec. 709 weights and integer
/// arithmetic, so the same grey levels and keypoints) as one tight loop:
/// the generic one was 2.4 % of a bulk insert's CPU.
fn grey(image: &RgbImage) -> GrayImage {
    let luma: Vec<u8> = image
        .as_raw()
        .chunks_exact(3)
        .map(|p| {
            let l = 2126 * u32::from(p[0]) + 7152 * u32::from(p[1]) + 722 * u32::from(p[2]);
            (l / 10_000) as u8
        })
        .collect();
    GrayImage::from_raw(image.width(), image.height(), luma).unwrap_or_default()
}

/// Keypoints of an image made by [`analysed`] (as [`extract`]).
pub fn extract_grey(base: GrayImage) -> Keypoints {
    let (bw, bh) = base.dimensions();
    // Corners of every level first, as (response, level, x, y); only the
    // strongest are then oriented and described.
    let mut found: Vec<(f32, usize, i32, i32)> = Vec::new();
    let mut smoothed = Vec::new();
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
            level_img = shrink(&level_img, nw, nh);
        } else if bw.min(bh) < MIN_LEVEL_SIDE {
            break;
        }
        found.extend(
            corners(&level_img)
                .into_iter()
                .map(|(response, x, y)| (response, level, x, y)),
        );
        smoothed.push(box_blur(&level_img));
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    let found = query_set(found);
    let points = found
        .into_iter()
        .map(|(_, level, x, y)| {
            let smooth = &smoothed[level];
            let angle = orientation(smooth, x, y);
            let scale = LEVEL_SCALE.powi(level as i32);
            Keypoint {
                x: x as f32 * scale,
                y: y as f32 * scale,
                angle,
                scale,
                descriptor: describe(smooth, x, y, angle),
            }
        })
        .collect();
    Keypoints {
        width: bw,
        height: bh,
        points,
    }
}

/// The keypoints a query checks with, from all corners found (strongest
/// first, as (response, level, x, y)): the strongest [`MAX_KEYPOINTS`]
/// (what is stored), then up to [`QUERY_KEYPOINTS`] taken from each level
/// in turn, strongest first within a level. A copy zoomed into a photo
/// (a heavy crop) shares the stored image's corners on its coarse levels,
/// whose few, weaker corners rarely make the overall strongest (measured:
/// with 320 stored and the extra 320 taken level by level rather than by
/// strength, 15-25 % crops passing the check went 0.819 -> 0.841 on the
/// eval's photos, no change on others; `examples/keypoint_pass_rates.rs`).
fn query_set(mut found: Vec<(f32, usize, i32, i32)>) -> Vec<(f32, usize, i32, i32)> {
    if found.len() <= QUERY_KEYPOINTS {
        return found;
    }
    let rest = found.split_off(MAX_KEYPOINTS);
    let mut taken = [0usize; LEVELS];
    let mut turns: Vec<(usize, usize)> = rest
        .iter()
        .enumerate()
        .map(|(i, &(_, level, _, _))| {
            taken[level] += 1;
            (taken[level], i)
        })
        .collect();
    turns.sort_unstable();
    let mut keep: Vec<usize> = turns
        .into_iter()
        .take(QUERY_KEYPOINTS - MAX_KEYPOINTS)
        .map(|(_, i)| i)
        .collect();
    keep.sort_unstable();
    found.extend(keep.into_iter().map(|i| rest[i]));
    found
}

/// FAST-9 corners of one level away from its border, non-maximum
/// suppressed, the strongest per grid cell, as (Harris response, x, y).
fn corners(img: &GrayImage) -> Vec<(f32, i32, i32)> {
    let (w, h) = (img.width() as i32, img.height() as i32);
    let raw = img.as_raw();
    let border = PATCH + 3;
    let ring_at: [isize; 16] = std::array::from_fn(|i| (CIRCLE[i].1 * w + CIRCLE[i].0) as isize);
    let mut score = vec![0u16; (w * h) as usize];
    let mut candidates = Vec::new();
    let (lo_x, hi_x) = (border as usize, (w - border) as usize);
    let n = hi_x.saturating_sub(lo_x);
    let mut scratch = RowScratch::new(n);
    for y in border..h - border {
        let row = (y * w) as usize;
        scratch.mark(raw, row + lo_x, &ring_at);
        // Eight flags (0 or 1) at a time: most bytes are not corners.
        for (at, flags) in scratch.corner.chunks(8).enumerate() {
            let mut bytes = [0u8; 8];
            bytes[..flags.len()].copy_from_slice(flags);
            let mut word = u64::from_le_bytes(bytes);
            while word != 0 {
                let x = (lo_x + 8 * at + word.trailing_zeros() as usize / 8) as i32;
                word &= word - 1;
                let c = row as isize + x as isize;
                let p = raw[c as usize] as i16;
                let s: i32 = ring_at
                    .iter()
                    .map(|&o| {
                        ((raw[(c + o) as usize] as i16 - p).abs() - FAST_THRESHOLD).max(0) as i32
                    })
                    .sum();
                score[c as usize] = s.min(u16::MAX as i32) as u16;
                candidates.push((x, y));
            }
        }
    }
    let cell_w = (w as f32 / 8.0).max(1.0);
    let cell_h = (h as f32 / 8.0).max(1.0);
    let cell_of = |x: i32, y: i32| {
        ((y as f32 / cell_h) as usize).min(7) * 8 + ((x as f32 / cell_w) as usize).min(7)
    };
    // Local maxima of the FAST score, the strongest few per cell by that
    // score, then the best per cell by Harris response (which ranks
    // corners better, at 50 times the cost).
    let mut kept: Vec<(u16, i32, i32)> = candidates
        .into_iter()
        .filter_map(|(x, y)| {
            let s = score[(y * w + x) as usize];
            let peak = (-1..=1).all(|dy| {
                (-1..=1).all(|dx| {
                    let o = score[((y + dy) * w + x + dx) as usize];
                    (dx == 0 && dy == 0) || o < s || (o == s && (dy, dx) < (0, 0))
                })
            });
            peak.then_some((s, x, y))
        })
        .collect();
    kept.sort_by_key(|k| std::cmp::Reverse(k.0));
    let mut per_cell = [0usize; 64];
    let mut ranked: Vec<(f32, i32, i32)> = kept
        .into_iter()
        .filter(|&(_, x, y)| {
            let cell = cell_of(x, y);
            per_cell[cell] += 1;
            per_cell[cell] <= 3 * PER_CELL
        })
        .map(|(_, x, y)| (harris(img, x, y), x, y))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut per_cell = [0usize; 64];
    ranked.retain(|&(_, x, y)| {
        let cell = cell_of(x, y);
        per_cell[cell] += 1;
        per_cell[cell] <= PER_CELL
    });
    ranked
}

/// One row of FAST's test, for every pixel at once: per pixel, which ring
/// pixels are brighter than the centre by more than the threshold (bits
/// 0-7 and 8-15 in two bytes) and which darker, written ring pixel by ring
/// pixel over the whole row, then the arc test, all branch-free so that it
/// vectorises; only the corners are then visited one by one.
struct RowScratch {
    bright: [Vec<u8>; 2],
    dark: [Vec<u8>; 2],
    above: Vec<u8>,
    below: Vec<u8>,
    /// 1 where the pixel is a FAST-9 corner, else 0.
    corner: Vec<u8>,
}

impl RowScratch {
    fn new(n: usize) -> Self {
        let row = || vec![0u8; n];
        RowScratch {
            bright: [row(), row()],
            dark: [row(), row()],
            above: row(),
            below: row(),
            corner: row(),
        }
    }

    /// Marks the corners among `raw[start..]` (as many pixels as the
    /// scratch is wide); `ring_at` is the circle as offsets in `raw`.
    fn mark(&mut self, raw: &[u8], start: usize, ring_at: &[isize; 16]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.mark_avx2(raw, start, ring_at) };
        }
        self.mark_portable(raw, start, ring_at)
    }

    /// [`RowScratch::mark_portable`] compiled for AVX2 (twice the lanes).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn mark_avx2(&mut self, raw: &[u8], start: usize, ring_at: &[isize; 16]) {
        self.mark_portable(raw, start, ring_at)
    }

    #[inline(always)]
    fn mark_portable(&mut self, raw: &[u8], start: usize, ring_at: &[isize; 16]) {
        let n = self.corner.len();
        let t = FAST_THRESHOLD as u8;
        let centre = &raw[start..][..n];
        for ((a, b), &p) in self.above.iter_mut().zip(self.below.iter_mut()).zip(centre) {
            (*a, *b) = (p.saturating_add(t), p.saturating_sub(t));
        }
        for (k, &offset) in ring_at.iter().enumerate() {
            let ring = &raw[(start as isize + offset) as usize..][..n];
            let (half, bit) = (k / 8, k % 8);
            let (brighter, darker) = (&mut self.bright[half], &mut self.dark[half]);
            if bit == 0 {
                brighter.fill(0);
                darker.fill(0);
            }
            let limits = self.above.iter().zip(&self.below);
            for (((br, dk), &v), (&a, &b)) in brighter
                .iter_mut()
                .zip(darker.iter_mut())
                .zip(ring)
                .zip(limits)
            {
                *br |= u8::from(v > a) << bit;
                *dk |= u8::from(v < b) << bit;
            }
        }
        let halves = self.bright[0]
            .iter()
            .zip(&self.bright[1])
            .zip(self.dark[0].iter().zip(&self.dark[1]));
        for (c, ((&b0, &b1), (&d0, &d1))) in self.corner.iter_mut().zip(halves) {
            let b = u32::from(b0) | u32::from(b1) << 8;
            let d = u32::from(d0) | u32::from(d1) << 8;
            *c = u8::from(arc_of_nine(b) | arc_of_nine(d));
        }
    }
}

/// Whether 9 neighbouring pixels of the 16 (the ring wraps round) are all
/// in `mask`: without branches, the ring written twice so that a run may
/// cross pixel 0, then each bit kept only if the 8 after it are set too.
#[inline(always)]
fn arc_of_nine(mask: u32) -> bool {
    let twice = mask | (mask << 16);
    let mut run = twice;
    for k in 1..9 {
        run &= twice >> k;
    }
    run != 0
}

/// Harris corner response over a 7 x 7 window of central differences.
/// The sums are of whole numbers (at most 49 x 255², exact in `f32`), so
/// they are added as integers, then weighed in floating point.
fn harris(img: &GrayImage, x: i32, y: i32) -> f32 {
    let w = img.width() as usize;
    let raw = img.as_raw();
    let (x, y) = (x as usize, y as usize);
    let (mut a, mut b, mut c) = (0i32, 0i32, 0i32);
    for v in y - 3..=y + 3 {
        let (above, row, below) = (&raw[(v - 1) * w..], &raw[v * w..], &raw[(v + 1) * w..]);
        for u in x - 3..=x + 3 {
            let ix = i32::from(row[u + 1]) - i32::from(row[u - 1]);
            let iy = i32::from(below[u]) - i32::from(above[u]);
            a += ix * ix;
            b += iy * iy;
            c += ix * iy;
        }
    }
    let (a, b, c) = (a as f32, b as f32, c as f32);
    a * b - c * c - 0.04 * (a + b) * (a + b)
}

/// Half-width of the patch's disc on each row, `dy` = -PATCH..=PATCH.
fn disc() -> &'static [i32; 2 * PATCH as usize + 1] {
    static DISC: std::sync::OnceLock<[i32; 2 * PATCH as usize + 1]> = std::sync::OnceLock::new();
    DISC.get_or_init(|| {
        std::array::from_fn(|i| {
            let dy = i as i32 - PATCH;
            (0..=PATCH)
                .filter(|dx| dx * dx + dy * dy <= PATCH * PATCH)
                .max()
                .unwrap_or(0)
        })
    })
}

/// Angle of the intensity centroid of the disc of radius [`PATCH`] around
/// (x, y). The moments are whole numbers (below 2^24, exact in `f32`), so
/// they are added as integers, row by row over the disc.
fn orientation(img: &GrayImage, x: i32, y: i32) -> f32 {
    let w = img.width() as i32;
    let raw = img.as_raw();
    let (mut m10, mut m01) = (0i32, 0i32);
    for (dy, &half) in (-PATCH..=PATCH).zip(disc()) {
        let start = ((y + dy) * w + x - half) as usize;
        let row = &raw[start..][..(2 * half + 1) as usize];
        let (mut sum, mut moment) = (0i32, 0i32);
        for (dx, &v) in (-half..=half).zip(row) {
            sum += i32::from(v);
            moment += dx * i32::from(v);
        }
        m10 += moment;
        m01 += dy * sum;
    }
    (m01 as f32).atan2(m10 as f32)
}

/// Orientations the descriptor's pattern is turned to (as ORB: its tests
/// are steered in steps, not for every angle).
const ANGLE_STEPS: usize = 32;

/// The 256 pixel pairs turned to one orientation, as whole pixel offsets.
type TurnedPattern = [[(i32, i32); 2]; 256];

/// The pattern turned to each of [`ANGLE_STEPS`] orientations.
fn turned_patterns() -> &'static [TurnedPattern] {
    static TURNED: std::sync::OnceLock<Vec<TurnedPattern>> = std::sync::OnceLock::new();
    TURNED.get_or_init(|| {
        (0..ANGLE_STEPS)
            .map(|step| {
                let angle = step as f32 * std::f32::consts::TAU / ANGLE_STEPS as f32;
                let (sin, cos) = angle.sin_cos();
                let turn = |(px, py): (f32, f32)| {
                    (
                        (cos * px - sin * py).round() as i32,
                        (sin * px + cos * py).round() as i32,
                    )
                };
                let mut out = [[(0, 0); 2]; 256];
                for (o, [p, q]) in out.iter_mut().zip(pattern()) {
                    *o = [turn(*p), turn(*q)];
                }
                out
            })
            .collect()
    })
}

/// 256 brightness comparisons of pixel pairs, turned by `angle`.
fn describe(img: &GrayImage, x: i32, y: i32, angle: f32) -> [u64; 4] {
    let w = img.width() as i32;
    let turn = angle.rem_euclid(std::f32::consts::TAU) / std::f32::consts::TAU;
    let step = ((turn * ANGLE_STEPS as f32 + 0.5) as usize) % ANGLE_STEPS;
    let raw = img.as_raw();
    let at = |(dx, dy): (i32, i32)| raw[((y + dy) * w + x + dx) as usize];
    let mut out = [0u64; 4];
    // Branch-free: each test is a coin toss to the branch predictor.
    for (word, pairs) in out.iter_mut().zip(turned_patterns()[step].chunks_exact(64)) {
        for (bit, [p, q]) in pairs.iter().enumerate() {
            *word |= u64::from(at(*p) < at(*q)) << bit;
        }
    }
    out
}

/// Bilinear resize of a grey image to a smaller size (each pyramid step
/// shrinks by 1.3, the first by at most what brings the longest side to
/// [`ANALYSED_SIDE`]), in 8-bit fixed point.
fn shrink(img: &GrayImage, nw: u32, nh: u32) -> GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = (nw as usize, nh as usize);
    // Source position of each output pixel's centre: index and weight /256.
    let taps = |from: usize, to: usize| -> Vec<(usize, u32)> {
        let ratio = from as f32 / to as f32;
        (0..to)
            .map(|i| {
                let pos = ((i as f32 + 0.5) * ratio - 0.5).clamp(0.0, (from - 1) as f32);
                let i0 = (pos as usize).min(from.saturating_sub(2));
                let frac = ((pos - i0 as f32) * 256.0) as u32;
                (i0, frac.min(256))
            })
            .collect()
    };
    let (xs, ys) = (taps(w, nw), taps(h, nh));
    let src = img.as_raw();
    let mut out = vec![0u8; nw * nh];
    let mut row = vec![0u32; nw];
    for (oy, &(y0, fy)) in ys.iter().enumerate() {
        let y1 = (y0 + 1).min(h - 1);
        let (r0, r1) = (&src[y0 * w..][..w], &src[y1 * w..][..w]);
        for (o, &(x0, fx)) in row.iter_mut().zip(&xs) {
            let x1 = (x0 + 1).min(w - 1);
            let top = r0[x0] as u32 * (256 - fx) + r0[x1] as u32 * fx;
            let bottom = r1[x0] as u32 * (256 - fx) + r1[x1] as u32 * fx;
            *o = top * (256 - fy) + bottom * fy;
        }
        for (o, v) in out[oy * nw..][..nw].iter_mut().zip(&row) {
            *o = ((v + (1 << 15)) >> 16) as u8;
        }
    }
    GrayImage::from_raw(nw as u32, nh as u32, out).unwrap_or_default()
}

/// A 5 x 5 box blur (edges clamped): BRIEF's tests compare smoothed pixels,
/// so noise and JPEG blocks do not flip them. Running sums, so each pixel
/// costs a few additions whatever the window.
fn box_blur(img: &GrayImage) -> GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return img.clone();
    }
    let src = img.as_raw();
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    // Sums of five along each row: the edges clamped one by one, the rest
    // over whole rows (so that it vectorises).
    let mut rows = vec![0u16; src.len()];
    let inner = if w >= 5 { 2..w - 2 } else { 0..0 };
    for (line, out) in src.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
        for x in (0..w).filter(|x| !inner.contains(x)) {
            out[x] = (-2..=2)
                .map(|d| line[clamp(x as isize + d, w)] as u16)
                .sum();
        }
        let shifted = |d: usize| line.get(d..).unwrap_or(&[]).iter().map(|&v| v as u16);
        let fives = shifted(0)
            .zip(shifted(1))
            .zip(shifted(2))
            .zip(shifted(3))
            .zip(shifted(4));
        for (o, ((((a, b), c), d), e)) in out[inner.clone()].iter_mut().zip(fives) {
            *o = a + b + c + d + e;
        }
    }
    // Then sums of five such sums down each column, running.
    let mut out = vec![0u8; src.len()];
    let mut sums: Vec<u32> = (0..w)
        .map(|x| (-2..=2).map(|d| rows[clamp(d, h) * w + x] as u32).sum())
        .collect();
    for (y, line) in out.chunks_exact_mut(w).enumerate() {
        let (add, drop) = (clamp(y as isize + 3, h) * w, clamp(y as isize - 2, h) * w);
        let (add, drop) = (&rows[add..][..w], &rows[drop..][..w]);
        for (((o, sum), &a), &d) in line.iter_mut().zip(sums.iter_mut()).zip(add).zip(drop) {
            *o = ((*sum * 2622) >> 16) as u8; // / 25
            *sum = *sum + a as u32 - d as u32;
        }
    }
    GrayImage::from_raw(w as u32, h as u32, out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GrayImage;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Noise over smooth shading: flat runs, edges and corners, so that
    /// every branch of the tests below is taken.
    fn texture(rng: &mut StdRng, w: u32, h: u32) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            let shade = ((x * 7 + y * 3) % 200) as i32;
            let noise = if rng.random_bool(0.3) {
                rng.random_range(-60..60)
            } else {
                0
            };
            image::Luma([(shade + noise).clamp(0, 255) as u8])
        })
    }

    #[test]
    fn grey_is_the_image_crates_grey() {
        let mut rng = StdRng::seed_from_u64(11);
        for (w, h) in [(1, 1), (3, 2), (97, 61)] {
            let img = RgbImage::from_fn(w, h, |_, _| image::Rgb(rng.random::<[u8; 3]>()));
            assert_eq!(grey(&img), image::imageops::grayscale(&img));
        }
        let white = RgbImage::from_pixel(2, 2, image::Rgb([255; 3]));
        assert!(grey(&white).pixels().all(|p| p.0 == [255]));
    }

    /// The row-at-once FAST test against walking the ring pixel by pixel,
    /// on every path the CPU can run.
    #[test]
    fn fast_rows_agree_with_walking_the_ring() {
        let mut rng = StdRng::seed_from_u64(3);
        let img = texture(&mut rng, 97, 61);
        let (w, raw) = (img.width() as i32, img.as_raw());
        let ring_at: [isize; 16] =
            std::array::from_fn(|i| (CIRCLE[i].1 * w + CIRCLE[i].0) as isize);
        let (lo, hi) = (3usize, (w - 3) as usize);
        let mut scratch = RowScratch::new(hi - lo);
        let mut seen = 0;
        for y in 3..img.height() as usize - 3 {
            let start = y * w as usize + lo;
            let expected: Vec<u8> = (0..hi - lo)
                .map(|i| {
                    let c = (start + i) as isize;
                    let p = raw[c as usize] as i16;
                    let ring: Vec<i16> = ring_at
                        .iter()
                        .map(|&o| raw[(c + o) as usize] as i16)
                        .collect();
                    let arc = |test: &dyn Fn(i16) -> bool| {
                        (0..16).any(|from| (0..9).all(|k| test(ring[(from + k) % 16])))
                    };
                    u8::from(arc(&|v| v > p + FAST_THRESHOLD) || arc(&|v| v < p - FAST_THRESHOLD))
                })
                .collect();
            seen += expected.iter().filter(|&&c| c == 1).count();
            scratch.mark_portable(raw, start, &ring_at);
            assert_eq!(scratch.corner, expected, "row {y}");
            scratch.mark(raw, start, &ring_at);
            assert_eq!(scratch.corner, expected, "row {y}, fastest path");
        }
        assert!(seen > 50, "only {seen} corners: the test image is too flat");
    }

    /// The running box blur against summing each 5 x 5 window, edges
    /// clamped, at every small size (where edges meet) and a larger one.
    #[test]
    fn box_blur_agrees_with_summing_each_window() {
        let mut rng = StdRng::seed_from_u64(5);
        let sizes = (1..9).flat_map(|w| (1..9).map(move |h| (w, h)));
        for (w, h) in sizes.chain([(53, 31)]) {
            let img = texture(&mut rng, w, h);
            let clamp = |i: i32, n: u32| i.clamp(0, n as i32 - 1) as u32;
            let expected = GrayImage::from_fn(w, h, |x, y| {
                let sum: u32 = (-2..=2)
                    .flat_map(|dy| (-2..=2).map(move |dx| (dx, dy)))
                    .map(|(dx, dy)| {
                        let (u, v) = (clamp(x as i32 + dx, w), clamp(y as i32 + dy, h));
                        img.get_pixel(u, v)[0] as u32
                    })
                    .sum();
                image::Luma([((sum * 2622) >> 16) as u8])
            });
            assert_eq!(box_blur(&img), expected, "{w}x{h}");
        }
    }

    /// Harris and the orientation, summed in integers, against the same
    /// sums in floating point pixel by pixel.
    #[test]
    fn integer_moments_agree_with_floating_point() {
        let mut rng = StdRng::seed_from_u64(9);
        let img = texture(&mut rng, 64, 64);
        let w = img.width() as i32;
        let px = |x: i32, y: i32| img.as_raw()[(y * w + x) as usize] as f32;
        for (x, y) in [(13, 13), (20, 31), (50, 50), (32, 17)] {
            let (mut a, mut b, mut c) = (0.0f32, 0.0f32, 0.0f32);
            let (mut m10, mut m01) = (0.0f32, 0.0f32);
            for dy in -PATCH..=PATCH {
                for dx in -PATCH..=PATCH {
                    if dx.abs() <= 3 && dy.abs() <= 3 {
                        let (u, v) = (x + dx, y + dy);
                        let ix = px(u + 1, v) - px(u - 1, v);
                        let iy = px(u, v + 1) - px(u, v - 1);
                        (a, b, c) = (a + ix * ix, b + iy * iy, c + ix * iy);
                    }
                    if dx * dx + dy * dy <= PATCH * PATCH {
                        m10 += dx as f32 * px(x + dx, y + dy);
                        m01 += dy as f32 * px(x + dx, y + dy);
                    }
                }
            }
            let response = a * b - c * c - 0.04 * (a + b) * (a + b);
            assert_eq!(harris(&img, x, y), response, "harris at {x},{y}");
            assert_eq!(orientation(&img, x, y), m01.atan2(m10), "angle at {x},{y}");
        }
    }

    /// The bit trick against walking the ring, for every one of the 65,536
    /// masks.
    #[test]
    fn arc_of_nine_agrees_with_walking_the_ring() {
        for mask in 0u32..1 << 16 {
            let mut run = 0;
            let mut walked = false;
            for i in 0..16 + 8 {
                if mask >> (i % 16) & 1 == 1 {
                    run += 1;
                    walked |= run >= 9;
                } else {
                    run = 0;
                }
            }
            assert_eq!(arc_of_nine(mask), walked, "mask {mask:#06x}");
        }
    }

    /// The stored part is the strongest overall; the rest gives every
    /// level its turn, however weak its corners.
    #[test]
    fn a_query_keeps_the_strongest_then_every_level_in_turn() {
        // 1,000 corners on level 0, stronger than 100 on each other level.
        let mut found: Vec<(f32, usize, i32, i32)> = (0..1000)
            .map(|i| (10_000.0 - i as f32, 0, i, 0))
            .chain((1..LEVELS).flat_map(|level| {
                (0..100).map(move |i| (100.0 - i as f32 - level as f32 / 10.0, level, i, 0))
            }))
            .collect();
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        let kept = query_set(found.clone());
        assert_eq!(kept.len(), QUERY_KEYPOINTS);
        assert_eq!(kept[..MAX_KEYPOINTS], found[..MAX_KEYPOINTS]);
        let tail = &kept[MAX_KEYPOINTS..];
        let share = (QUERY_KEYPOINTS - MAX_KEYPOINTS) / LEVELS;
        for level in 0..LEVELS {
            let n = tail.iter().filter(|k| k.1 == level).count();
            assert_eq!(n, share, "level {level}");
            // Each level's strongest of what was left.
            let strongest = found
                .iter()
                .filter(|k| k.1 == level && !kept[..MAX_KEYPOINTS].contains(k))
                .take(share);
            assert!(
                strongest.into_iter().all(|k| tail.contains(k)),
                "level {level}"
            );
        }
        // Fewer than a query keeps: all of them, strongest first.
        assert_eq!(query_set(found[..500].to_vec()), found[..500]);
    }
}
