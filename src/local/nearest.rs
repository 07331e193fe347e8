//! For each descriptor of one image, its nearest and second-nearest
//! descriptor of another, by Hamming distance: the inner loop of the
//! keypoint check ([`super::verify`]).
//!
//! Two sets of up to 320 descriptors make 102,400 distances per candidate,
//! and a query checks 24 to 64 candidates, an insert 24: on the bulk-insert
//! path this loop took about 15 % of both cores. One descriptor at a time
//! (POPCNT on four 64-bit words) is the portable path; where the CPU has
//! AVX-512 VPOPCNTDQ, 16 descriptors of the other set are compared at once,
//! laid out word by word ([`Columns`]).
//!
//! Every path gives the same answer, ties included: `d1` is the smallest
//! distance, `j1` the first index that has it, `d2` the smallest distance
//! of any other index (equal to `d1` on a tie; `u32::MAX` with one
//! descriptor).

/// The nearest two of one descriptor among a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NearestTwo {
    pub d1: u32,
    pub j1: usize,
    pub d2: u32,
}

/// The nearest two in `b` of each descriptor of `a`; empty when `b` is.
pub(super) fn nearest_two(a: &[[u64; 4]], b: &[[u64; 4]]) -> Vec<NearestTwo> {
    if b.is_empty() {
        return Vec::new();
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
        {
            // SAFETY: the CPU has both features, checked just above.
            return unsafe { nearest_two_avx512(a, &Columns::of(b)) };
        }
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT, checked just above.
            return unsafe { nearest_two_popcnt(a, b) };
        }
    }
    nearest_two_portable(a, b)
}

fn hamming(a: &[u64; 4], b: &[u64; 4]) -> u32 {
    (a[0] ^ b[0]).count_ones()
        + (a[1] ^ b[1]).count_ones()
        + (a[2] ^ b[2]).count_ones()
        + (a[3] ^ b[3]).count_ones()
}

/// [`nearest_two_portable`] compiled with the POPCNT instruction (the
/// baseline x86-64 target counts bits in software, 10x slower here).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn nearest_two_popcnt(a: &[[u64; 4]], b: &[[u64; 4]]) -> Vec<NearestTwo> {
    nearest_two_portable(a, b)
}

#[inline(always)]
fn nearest_two_portable(a: &[[u64; 4]], b: &[[u64; 4]]) -> Vec<NearestTwo> {
    a.iter()
        .map(|p| {
            let (mut d1, mut d2, mut j1) = (u32::MAX, u32::MAX, 0);
            for (j, q) in b.iter().enumerate() {
                let d = hamming(p, q);
                if d < d1 {
                    (d2, d1, j1) = (d1, d, j);
                } else if d < d2 {
                    d2 = d;
                }
            }
            NearestTwo { d1, j1, d2 }
        })
        .collect()
}

/// Lanes of one AVX-512 register of 32-bit words.
const LANES: usize = 16;

/// A set of descriptors as eight columns of 32-bit words (word `w` of
/// descriptor `j` at `words[w][j]`), padded with zeros to a multiple of
/// [`LANES`] descriptors, so that one load reads one word of 16 of them.
struct Columns {
    words: [Vec<u32>; 8],
    len: usize,
}

impl Columns {
    fn of(b: &[[u64; 4]]) -> Self {
        let padded = b.len().div_ceil(LANES) * LANES;
        let mut words: [Vec<u32>; 8] = std::array::from_fn(|_| vec![0u32; padded]);
        for (j, d) in b.iter().enumerate() {
            for (w, column) in words.iter_mut().enumerate() {
                let word = d[w / 2] >> (32 * (w % 2));
                column[j] = word as u32;
            }
        }
        Columns {
            words,
            len: b.len(),
        }
    }
}

/// [`nearest_two_portable`] over 16 descriptors of `b` at a time: each lane
/// keeps the nearest two of the descriptors it saw (indices `lane`,
/// `lane + 16`, ...), then the lanes are merged.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 VPOPCNTDQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn nearest_two_avx512(a: &[[u64; 4]], b: &Columns) -> Vec<NearestTwo> {
    use std::arch::x86_64::*;

    let chunks = b.len.div_ceil(LANES);
    let last_valid: __mmask16 = match b.len % LANES {
        0 => 0xFFFF,
        r => (1u16 << r) - 1,
    };
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let max = _mm512_set1_epi32(-1); // u32::MAX in every lane
    let mut out = Vec::with_capacity(a.len());
    for p in a {
        let q: [__m512i; 8] =
            std::array::from_fn(|w| _mm512_set1_epi32((p[w / 2] >> (32 * (w % 2))) as u32 as i32));
        let (mut d1, mut d2, mut j1) = (max, max, _mm512_setzero_si512());
        for c in 0..chunks {
            let at = c * LANES;
            let mut d = _mm512_setzero_si512();
            for (w, qw) in q.iter().enumerate() {
                // SAFETY: each column holds `chunks * LANES` words.
                let column = _mm512_loadu_si512(b.words[w].as_ptr().add(at).cast());
                d = _mm512_add_epi32(d, _mm512_popcnt_epi32(_mm512_xor_si512(*qw, column)));
            }
            if c + 1 == chunks {
                // Padding lanes are never nearest.
                d = _mm512_mask_mov_epi32(max, last_valid, d);
            }
            let closer = _mm512_cmplt_epu32_mask(d, d1);
            d2 = _mm512_mask_blend_epi32(closer, _mm512_min_epu32(d2, d), d1);
            d1 = _mm512_mask_mov_epi32(d1, closer, d);
            let j = _mm512_add_epi32(iota, _mm512_set1_epi32(at as i32));
            j1 = _mm512_mask_mov_epi32(j1, closer, j);
        }
        // The nearest overall, at its first index; the second is the best
        // of every other lane's nearest and that lane's own second.
        let best = _mm512_reduce_min_epu32(d1);
        let holders = _mm512_cmpeq_epi32_mask(d1, _mm512_set1_epi32(best as i32));
        let first = _mm512_mask_reduce_min_epu32(holders, j1) as usize;
        let lane: __mmask16 = 1 << (first % LANES);
        let second = _mm512_reduce_min_epu32(_mm512_mask_mov_epi32(d1, lane, d2));
        out.push(NearestTwo {
            d1: best,
            j1: first,
            d2: second,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Descriptors from few bits, so that equal distances (ties) are common.
    fn descriptors(rng: &mut StdRng, n: usize, sparse: bool) -> Vec<[u64; 4]> {
        (0..n)
            .map(|_| {
                std::array::from_fn(|_| match sparse {
                    true => rng.random::<u64>() & rng.random::<u64>() & rng.random::<u64>() & 0xF0F,
                    false => rng.random(),
                })
            })
            .collect()
    }

    #[test]
    fn every_path_finds_the_same_nearest_two_ties_included() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in (0..40).chain([47, 48, 49, 319, 320]) {
            for sparse in [false, true] {
                let a = descriptors(&mut rng, 30, sparse);
                let b = descriptors(&mut rng, n, sparse);
                let expected = if n == 0 {
                    Vec::new()
                } else {
                    nearest_two_portable(&a, &b)
                };
                assert_eq!(
                    nearest_two(&a, &b),
                    expected,
                    "{n} descriptors, sparse {sparse}"
                );
                #[cfg(target_arch = "x86_64")]
                if n > 0 && std::arch::is_x86_feature_detected!("popcnt") {
                    // SAFETY: the CPU has POPCNT, checked just above.
                    let counted = unsafe { nearest_two_popcnt(&a, &b) };
                    assert_eq!(
                        counted, expected,
                        "POPCNT, {n} descriptors, sparse {sparse}"
                    );
                }
                #[cfg(target_arch = "x86_64")]
                if n > 0
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
                {
                    // SAFETY: the CPU has both features, checked just above.
                    let wide = unsafe { nearest_two_avx512(&a, &Columns::of(&b)) };
                    assert_eq!(wide, expected, "AVX-512, {n} descriptors, sparse {sparse}");
                }
            }
        }
    }

    #[test]
    fn one_descriptor_has_no_second() {
        let a = [[1u64, 2, 3, 4]];
        let got = nearest_two(&a, &a);
        assert_eq!(
            got,
            vec![NearestTwo {
                d1: 0,
                j1: 0,
                d2: u32::MAX
            }]
        );
    }
}
