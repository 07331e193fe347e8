//! Regional CNN vectors: the head map pooled over parts of the picture, so
//! that a copy keeping a part of a photo can be compared with that part.
//!
//! The CNN feature vector is the head map (7 x 7 x 1280 for Lite0) averaged
//! over every cell. A heavy crop's vector describes only what it kept, so
//! its cosine to the whole photo's vector is low, often below that of a
//! merely similar photo. Averaging the stored photo's map over 3 x 3-cell
//! windows (stride 2: nine windows, each about 43 % of each side of what
//! the network sees) gives vectors of its parts; a copy's cosine to the
//! best of them, or to the whole, is the *regional cosine*. Measured in
//! `lookalike eval siamese` (see `models/README.md`); the daemon does not
//! store these vectors yet.

use crate::embed::TapShape;
use crate::vector::dot;

/// Side of a window, in cells of the head map.
pub const WINDOW: usize = 3;
/// Step between windows, in cells.
pub const STRIDE: usize = 2;

/// The map's windows pooled and L2-normalised, row by row: `WINDOW` x
/// `WINDOW` cells every `STRIDE` cells, the last row and column of windows
/// flush with the map's edge. `map` is NHWC for one image, of `shape`; a
/// map smaller than a window gives none.
pub fn regional_vectors(map: &[f32], shape: TapShape) -> Vec<Vec<f32>> {
    let (rows, cols) = (starts(shape.h), starts(shape.w));
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for &y0 in &rows {
        for &x0 in &cols {
            let mut sum = vec![0f32; shape.c];
            for y in y0..y0 + WINDOW {
                for x in x0..x0 + WINDOW {
                    let cell = &map[(y * shape.w + x) * shape.c..][..shape.c];
                    sum.iter_mut().zip(cell).for_each(|(s, v)| *s += v);
                }
            }
            let norm = dot(&sum, &sum).sqrt();
            if norm > 0.0 {
                sum.iter_mut().for_each(|s| *s /= norm);
            }
            out.push(sum);
        }
    }
    out
}

/// First cells of the windows along a side of `len` cells.
fn starts(len: usize) -> Vec<usize> {
    if len < WINDOW {
        return Vec::new();
    }
    let last = len - WINDOW;
    let mut starts: Vec<usize> = (0..=last).step_by(STRIDE).collect();
    if starts.last() != Some(&last) {
        starts.push(last);
    }
    starts
}

/// The regional cosine of a query (its CNN features) against a stored
/// photo (its features and regional vectors): the best of the whole and
/// each part.
pub fn regional_cosine(query: &[f32], stored: &[f32], regions: &[Vec<f32>]) -> f32 {
    regions
        .iter()
        .map(|r| dot(query, r))
        .fold(dot(query, stored), f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn windows_cover_the_map_and_pool_their_cells() {
        assert_eq!(starts(7), vec![0, 2, 4]);
        assert_eq!(starts(8), vec![0, 2, 4, 5]);
        assert_eq!(starts(3), vec![0]);
        assert!(starts(2).is_empty());
        // Each cell holds (1, y, x): a window's mean is (1, centre y, centre x).
        let shape = TapShape { h: 7, w: 7, c: 3 };
        let map: Vec<f32> = (0..49)
            .flat_map(|i| [1.0, (i / 7) as f32, (i % 7) as f32])
            .collect();
        let regions = regional_vectors(&map, shape);
        assert_eq!(regions.len(), 9);
        for (r, (cy, cx)) in regions.iter().zip(
            [1.0f32, 3.0, 5.0]
                .iter()
                .flat_map(|&y| [1.0f32, 3.0, 5.0].map(|x| (y, x))),
        ) {
            let want = unit(vec![1.0, cy, cx]);
            assert!(r.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
        }
    }

    #[test]
    fn the_best_part_counts_and_the_whole_is_a_floor() {
        let whole = unit(vec![1.0, 1.0, 0.0]);
        let parts = vec![unit(vec![0.0, 1.0, 0.0]), unit(vec![0.0, 0.0, 1.0])];
        let crop = unit(vec![0.0, 0.0, 1.0]); // one part of the photo, exactly
        assert!((regional_cosine(&crop, &whole, &parts) - 1.0).abs() < 1e-6);
        let other = unit(vec![1.0, 0.0, 0.0]); // like the whole more than any part
        assert!((regional_cosine(&other, &whole, &parts) - dot(&other, &whole)).abs() < 1e-6);
        assert_eq!(regional_cosine(&other, &whole, &[]), dot(&other, &whole));
    }
}
