//! Full feature vectors in memory as 8-bit codes, for re-ranking.
//!
//! The graph searches PCA projections, which lose recall, so the engine
//! re-ranks several times more candidates than it returns on the full
//! features. Reading those from the store cost one sled lookup each; once the
//! store outgrows sled's cache, each is a read from disk with a checksum and
//! a page rebuilt, and Query by id at 100k spent most of its time there. So
//! the index keeps every point's full features as 8-bit codes (one byte per
//! dimension plus a scale: 1.28 KB per 1280-d vector, a quarter of the f32
//! size) and ranks candidates on them; the engine then reads only the few
//! best from the store, for their exact cosine, id and metadata.
//!
//! A code is `round(x / scale)` with `scale = max |x| / 127`, so each
//! dimension is off by at most `scale / 2`; on unit vectors the cosine is
//! off by about 1e-3, far less than separates the candidates kept for
//! exact scoring from those dropped.

use std::{
    collections::HashMap,
    io::{Read, Write},
};

use crate::error::{Error, Result};
use crate::vector::dot_i8;

/// First bytes of a saved [`Codes`] file.
const MAGIC: &[u8; 8] = b"LKCODES1";
/// Bytes before the first vector: magic, width, count.
const HEADER_BYTES: u64 = 8 + 4 + 8;
/// Widest vector a saved file may hold (ours are 1280 or 1408 wide).
const MAX_DIM: usize = 1 << 16;

/// Quantised full features, by seq.
pub struct Codes {
    dim: usize,
    /// seq to slot; a removed seq's slot stays in `codes` until the next
    /// rebuild, which starts afresh.
    slots: HashMap<u64, u32>,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

impl Codes {
    /// Empty, with room for `capacity` vectors of width `dim`.
    pub fn new(dim: usize, capacity: usize) -> Self {
        Codes {
            dim,
            slots: HashMap::with_capacity(capacity),
            codes: Vec::with_capacity(capacity.saturating_mul(dim)),
            scales: Vec::with_capacity(capacity),
        }
    }

    /// Adds (or replaces) `seq`'s features. A vector of another width is
    /// ignored: it cannot be compared with the rest.
    pub fn insert(&mut self, seq: u64, features: &[f32]) {
        if features.len() != self.dim {
            return;
        }
        let max = features.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = if max.is_finite() && max > 0.0 {
            max / 127.0
        } else {
            0.0
        };
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let slot = self.scales.len() as u32;
        self.codes
            .extend(features.iter().map(|x| (x * inv).round() as i8));
        self.scales.push(scale);
        self.slots.insert(seq, slot);
    }

    pub fn remove(&mut self, seq: u64) {
        self.slots.remove(&seq);
    }

    /// Every held seq, in no order.
    pub fn seqs(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    /// Whether `seq`'s features are held (added and not removed).
    pub fn contains(&self, seq: u64) -> bool {
        self.slots.contains_key(&seq)
    }

    /// Approximate dot product of `query` (full width) with `seq`'s
    /// features; `None` if `seq` is not held or `query` has another width.
    pub fn dot(&self, query: &[f32], seq: u64) -> Option<f32> {
        if query.len() != self.dim {
            return None;
        }
        let slot = *self.slots.get(&seq)? as usize;
        let code = &self.codes[slot * self.dim..(slot + 1) * self.dim];
        Some(dot_i8(query, code) * self.scales[slot])
    }

    /// Writes every held vector (not the removed ones): magic, width,
    /// count, then per vector its seq, scale and code bytes.
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&(self.dim as u32).to_le_bytes())?;
        out.write_all(&(self.slots.len() as u64).to_le_bytes())?;
        let mut record = Vec::with_capacity(12 + self.dim);
        for (&seq, &slot) in &self.slots {
            let slot = slot as usize;
            record.clear();
            record.extend_from_slice(&seq.to_le_bytes());
            record.extend_from_slice(&self.scales[slot].to_le_bytes());
            let code = &self.codes[slot * self.dim..(slot + 1) * self.dim];
            record.extend(code.iter().map(|&c| c as u8));
            out.write_all(&record)?;
        }
        Ok(())
    }

    /// Reads what [`Codes::write_to`] wrote, `len` bytes in all; fails on
    /// anything else, checking the header against `len` before allocating.
    pub fn read_from(input: &mut dyn Read, len: u64) -> Result<Self> {
        let bad = |what: &str| Error::Storage(format!("saved re-rank codes: {what}"));
        let io = |e: std::io::Error| bad(&e.to_string());
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(io)?;
        if &magic != MAGIC {
            return Err(bad("not a codes file"));
        }
        let dim = u32::from_le_bytes(read_array(input).map_err(io)?) as usize;
        let count = u64::from_le_bytes(read_array(input).map_err(io)?);
        let expected = (12 + dim as u64)
            .checked_mul(count)
            .and_then(|body| body.checked_add(HEADER_BYTES));
        if dim == 0 || dim > MAX_DIM || count > u32::MAX as u64 || expected != Some(len) {
            return Err(bad(&format!(
                "header says {count} vectors of width {dim}, which does not fit {len} bytes"
            )));
        }
        let count = count as usize;
        let mut codes = Codes::new(dim, count);
        // Many records per read: one `read_exact` per record cost more
        // than the disk at a million.
        let record = 12 + dim;
        let per_chunk = (READ_CHUNK / record).max(1);
        let mut chunk = vec![0u8; per_chunk * record];
        let mut slot = 0;
        while slot < count {
            let n = per_chunk.min(count - slot);
            let chunk = &mut chunk[..n * record];
            input.read_exact(chunk).map_err(io)?;
            for r in chunk.chunks_exact(record) {
                let seq = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                let scale = f32::from_le_bytes(r[8..12].try_into().expect("4 bytes"));
                codes.codes.extend(r[12..].iter().map(|&b| b as i8));
                codes.scales.push(scale);
                if codes.slots.insert(seq, slot as u32).is_some() {
                    return Err(bad(&format!("seq {seq} is listed twice")));
                }
                slot += 1;
            }
        }
        Ok(codes)
    }
}

/// Bytes [`Codes::read_from`] reads at once.
const READ_CHUNK: usize = 1 << 20;

fn read_array<const N: usize>(input: &mut dyn Read) -> std::io::Result<[u8; N]> {
    let mut a = [0u8; N];
    input.read_exact(&mut a)?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-0.2..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn exact(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn approximate_dot_is_within_a_thousandth_on_unit_vectors() {
        let mut rng = StdRng::seed_from_u64(9);
        let dim = 1283; // not a multiple of the 16 lanes
        let points: Vec<Vec<f32>> = (0..50).map(|_| unit(&mut rng, dim)).collect();
        let mut codes = Codes::new(dim, 0);
        for (seq, p) in points.iter().enumerate() {
            codes.insert(seq as u64, p);
        }
        let query = unit(&mut rng, dim);
        for (seq, p) in points.iter().enumerate() {
            let got = codes.dot(&query, seq as u64).expect("held");
            assert!((got - exact(&query, p)).abs() < 1e-3, "seq {seq}");
        }
        assert_eq!(codes.dot(&query[1..], 0), None, "wrong width");
        assert_eq!(codes.dot(&query, 99), None, "never held");
    }

    #[test]
    fn removed_points_are_gone_and_survive_a_round_trip_as_gone() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut codes = Codes::new(64, 4);
        for seq in 1..=5 {
            codes.insert(seq, &unit(&mut rng, 64));
        }
        codes.insert(6, &[0.0; 64]); // all zeros: scale 0, dot 0
        codes.insert(7, &[1.0; 3]); // wrong width: ignored
        codes.remove(3);
        let mut bytes = Vec::new();
        codes.write_to(&mut bytes).expect("write");
        let load = |b: &[u8]| Codes::read_from(&mut &b[..], b.len() as u64);
        let back = load(&bytes).expect("load");
        let query = unit(&mut rng, 64);
        for seq in 1..=7 {
            assert_eq!(back.dot(&query, seq), codes.dot(&query, seq), "seq {seq}");
        }
        assert_eq!(back.dot(&query, 3), None);
        assert_eq!(back.dot(&query, 6), Some(0.0));
        assert_eq!(back.dot(&query, 7), None);
        // Truncated, padded or foreign files are errors, not panics.
        let padded = [bytes.as_slice(), &[0]].concat();
        for bad in [&bytes[..bytes.len() - 1], &padded[..], &b"LKCODES2"[..]] {
            assert!(load(bad).is_err());
        }
    }
}
