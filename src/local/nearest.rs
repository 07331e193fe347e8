//! For each descriptor of one image, its nearest and second-nearest
//! descriptor of another, by Hamming distance: the inner loop of the
//! keypoint check ([`super::verify`]).
//!
//! A query's 640 descriptors against a stored image's 480 make 307,200
//! distances per candidate, and a query checks 24 to 64 candidates, an
//! insert 24: on the bulk-insert path this loop took about 15 % of both
//! cores (with 320 stored). One descriptor at a time
//! (POPCNT on four 64-bit words) is the portable path; where the CPU has
//! AVX-512 VPOPCNTDQ, 16 descriptors of the other set are compared at once,
//! laid out word by word ([`Columns`]); with AVX2 only, 8 at once, bits
//! counted by table lookup (no AVX2 instruction counts them).
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
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { nearest_two_avx2(a, &Columns::of(b)) };
        }
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT, checked just above.
            return unsafe { nearest_two_popcnt(a, b) };
        }
    }
    nearest_two_portable(a, b)
}

#[inline(always)]
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
    // A plain loop, not a closure: a closure is compiled on its own,
    // without the POPCNT of `nearest_two_popcnt` that inlines this.
    let mut out = Vec::with_capacity(a.len());
    for p in a {
        let (mut d1, mut d2, mut j1) = (u32::MAX, u32::MAX, 0);
        for (j, q) in b.iter().enumerate() {
            let d = hamming(p, q);
            if d < d1 {
                (d2, d1, j1) = (d1, d, j);
            } else if d < d2 {
                d2 = d;
            }
        }
        out.push(NearestTwo { d1, j1, d2 });
    }
    out
}

/// Word `w` (0..8) of a descriptor, as 32 bits: the layout of [`Columns`]
/// and of the query words the kernels compare with them.
#[inline(always)]
fn word(d: &[u64; 4], w: usize) -> u32 {
    (d[w / 2] >> (32 * (w % 2))) as u32
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
                column[j] = word(d, w);
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
        let q: [__m512i; 8] = std::array::from_fn(|w| _mm512_set1_epi32(word(p, w) as i32));
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

/// [`nearest_two_avx512`] with AVX2: 8 descriptors of `b` at a time, bits
/// counted per byte by a 16-entry table (`vpshufb`) and summed into each
/// 32-bit lane. Distances are at most 256, so signed compares serve, with
/// `i32::MAX` for "none yet".
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nearest_two_avx2(a: &[[u64; 4]], b: &Columns) -> Vec<NearestTwo> {
    use std::arch::x86_64::*;

    const WIDE: usize = 8;
    let chunks = b.len.div_ceil(WIDE);
    let bits = _mm256_setr_epi8(
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3,
        3, 4,
    );
    let nibble = _mm256_set1_epi8(0x0F);
    let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let (none, len) = (_mm256_set1_epi32(i32::MAX), _mm256_set1_epi32(b.len as i32));
    let mut out = Vec::with_capacity(a.len());
    for p in a {
        let q: [__m256i; 8] = std::array::from_fn(|w| _mm256_set1_epi32(word(p, w) as i32));
        let (mut d1, mut d2, mut j1) = (none, none, _mm256_setzero_si256());
        for c in 0..chunks {
            let at = c * WIDE;
            // Per byte, the bits set over all eight words (at most 64).
            let mut per_byte = _mm256_setzero_si256();
            for (w, qw) in q.iter().enumerate() {
                // SAFETY: each column holds a multiple of 16 words, so
                // `chunks * 8` of them.
                let column = _mm256_loadu_si256(b.words[w].as_ptr().add(at).cast());
                let x = _mm256_xor_si256(*qw, column);
                let lo = _mm256_shuffle_epi8(bits, _mm256_and_si256(x, nibble));
                let hi =
                    _mm256_shuffle_epi8(bits, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble));
                per_byte = _mm256_add_epi8(per_byte, _mm256_add_epi8(lo, hi));
            }
            let pairs = _mm256_maddubs_epi16(per_byte, ones8);
            let d = _mm256_madd_epi16(pairs, ones16);
            let j = _mm256_add_epi32(iota, _mm256_set1_epi32(at as i32));
            // Padding lanes are never nearest.
            let d = _mm256_blendv_epi8(none, d, _mm256_cmpgt_epi32(len, j));
            let closer = _mm256_cmpgt_epi32(d1, d);
            d2 = _mm256_blendv_epi8(_mm256_min_epi32(d2, d), d1, closer);
            d1 = _mm256_blendv_epi8(d1, d, closer);
            j1 = _mm256_blendv_epi8(j1, j, closer);
        }
        let (mut n1, mut n2, mut m1) = ([0i32; WIDE], [0i32; WIDE], [0i32; WIDE]);
        _mm256_storeu_si256(n1.as_mut_ptr().cast(), d1);
        _mm256_storeu_si256(n2.as_mut_ptr().cast(), d2);
        _mm256_storeu_si256(m1.as_mut_ptr().cast(), j1);
        // As in the AVX-512 merge: the nearest at its first index, then the
        // best of the other lanes' nearest and that lane's own second.
        let best = *n1.iter().min().unwrap_or(&i32::MAX);
        let lane = (0..WIDE)
            .filter(|&l| n1[l] == best)
            .min_by_key(|&l| m1[l])
            .unwrap_or(0);
        let second = (0..WIDE)
            .map(|l| if l == lane { n2[l] } else { n1[l] })
            .min()
            .unwrap_or(i32::MAX);
        let wide = |d: i32| if d == i32::MAX { u32::MAX } else { d as u32 };
        out.push(NearestTwo {
            d1: wide(best),
            j1: m1[lane] as usize,
            d2: wide(second),
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
                if n > 0 && std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, checked just above.
                    let wide = unsafe { nearest_two_avx2(&a, &Columns::of(&b)) };
                    assert_eq!(wide, expected, "AVX2, {n} descriptors, sparse {sparse}");
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
