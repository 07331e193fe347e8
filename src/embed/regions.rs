//! Regional CNN vectors: the head map pooled over parts of the picture, so
//! that a copy keeping a part of a photo can be compared with that part.
//!
//! The CNN feature vector is the head map (7 x 7 x 1280 for Lite0) averaged
//! over every cell. A heavy crop's vector describes only what it kept, so
//! its cosine to the whole photo's vector is low, often below that of a
//! merely similar photo. Averaging the stored photo's map over 3 x 3-cell
//! windows (stride 2: nine windows, each about 43 % of each side of what
//! the network sees) gives vectors of its parts; a copy's cosine to the
//! best of them, or to the whole, is the *regional cosine*.
//!
//! The daemon keeps the nine parts of every stored image ([`encode`]: 8
//! bits a value, 11.5 KB for Lite0's map) and ranks the candidates a query
//! by image checks by the regional cosine (`src/engine/local.rs`); measured
//! in BENCHMARKS.md ("Harder copies") and, as a duplicate verdict, in
//! `lookalike eval siamese` (`models/README.md`).

use crate::embed::TapShape;
use crate::error::{Error, Result};
use crate::vector::dot;

/// Version byte of [`encode`]'s format.
const FORMAT: u8 = 1;
/// Bytes before the first part: version, parts (u16), values each (u16).
const HEADER: usize = 5;

/// Side of a window, in cells of the head map.
pub const WINDOW: usize = 3;
/// Step between windows, in cells.
pub const STRIDE: usize = 2;

/// The map's windows pooled and L2-normalised, row by row: `WINDOW` x
/// `WINDOW` cells every `STRIDE` cells, the last row and column of windows
/// flush with the map's edge. `map` is NHWC for one image, of `shape`; a
/// map smaller than a window, or not of `shape`, gives none.
pub fn regional_vectors(map: &[f32], shape: TapShape) -> Vec<Vec<f32>> {
    if map.len() != shape.h * shape.w * shape.c {
        return Vec::new();
    }
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

/// The parts as bytes: a header, then per part its largest magnitude
/// (`f32`, little-endian) and each value as a signed byte of it.
pub fn encode(regions: &[Vec<f32>]) -> Vec<u8> {
    let dim = regions.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(HEADER + regions.len() * (4 + dim));
    out.push(FORMAT);
    out.extend_from_slice(&(regions.len() as u16).to_le_bytes());
    out.extend_from_slice(&(dim as u16).to_le_bytes());
    for r in regions {
        let scale = r.iter().fold(0f32, |m, v| m.max(v.abs()));
        out.extend_from_slice(&scale.to_le_bytes());
        let k = if scale > 0.0 { 127.0 / scale } else { 0.0 };
        out.extend(r.iter().map(|v| (v * k).round() as i8 as u8));
    }
    out
}

/// The best cosine of `query` (unit length) with the parts in `bytes`
/// ([`encode`]); `None` when there are none.
pub fn best_part(query: &[f32], bytes: &[u8]) -> Result<Option<f32>> {
    let bad = |why: &str| Error::Storage(format!("stored regional vectors: {why}"));
    let (&format, rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
    if format != FORMAT {
        return Err(bad(&format!("unknown format {format}")));
    }
    let count = rest.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let dim = rest.get(2..4).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let (Some(count), Some(dim)) = (count, dim) else {
        return Err(bad("truncated header"));
    };
    let (count, dim) = (usize::from(count), usize::from(dim));
    if count == 0 && bytes.len() == HEADER {
        return Ok(None);
    }
    if dim != query.len() || bytes.len() != HEADER + count * (4 + dim) {
        return Err(bad(&format!(
            "{} bytes for {count} parts of {dim} values, a query of {}",
            bytes.len(),
            query.len()
        )));
    }
    Ok(bytes[HEADER..]
        .chunks_exact(4 + dim)
        .map(|part| {
            let scale = f32::from_le_bytes([part[0], part[1], part[2], part[3]]);
            let values = &part[4..];
            let sum: f32 = query
                .iter()
                .zip(values)
                .map(|(q, &v)| q * f32::from(v as i8))
                .sum();
            let norm: f32 = values
                .iter()
                .map(|&v| f32::from(v as i8) * f32::from(v as i8))
                .sum::<f32>()
                .sqrt();
            if scale > 0.0 && norm > 0.0 {
                sum / norm
            } else {
                0.0
            }
        })
        .reduce(f32::max))
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
        assert!(
            regional_vectors(&map[1..], shape).is_empty(),
            "not of its shape"
        );
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

    #[test]
    fn stored_parts_give_the_cosine_within_a_thousandth() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32
        };
        let parts: Vec<Vec<f32>> = (0..9)
            .map(|_| unit((0..1280).map(|_| next()).collect()))
            .collect();
        let query = unit((0..1280).map(|_| next() - 0.3).collect());
        let bytes = encode(&parts);
        assert_eq!(bytes.len(), HEADER + 9 * (4 + 1280));
        let exact = parts.iter().map(|p| dot(&query, p)).fold(-1.0, f32::max);
        let stored = best_part(&query, &bytes).expect("reads").expect("parts");
        assert!((stored - exact).abs() < 1e-3, "{stored} vs {exact}");
        assert_eq!(best_part(&query, &encode(&[])).expect("reads"), None);
        // Damage is an error, not a panic or a wrong answer.
        assert!(best_part(&query, &bytes[..bytes.len() - 1]).is_err());
        assert!(best_part(&query[..100], &bytes).is_err());
        assert!(best_part(&query, &[]).is_err());
        assert!(best_part(&query, &[9, 0, 0, 0, 0]).is_err());
    }
}
