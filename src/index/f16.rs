//! The graph's vectors at half precision (IEEE binary16, 16 bits a
//! component), and the dot products of a single-precision query with them.
//!
//! Why: a graph search is bound by pulling its candidates' vectors through
//! the caches (and, past the last-level cache, from memory). At 16 bits a
//! 100-d vector is 200 bytes instead of 400, so a search touches half the
//! cache lines and a million points hold 0.2 GB of vectors, not 0.4 GB.
//! Unit vectors lose nothing that matters: rounding each component to 11
//! significant bits moves a cosine of unit vectors by at most 2^-12 (about
//! 2.4e-4), inside what the re-rank on the full features (which never uses
//! these) corrects; it can swap near-ties, so the graph alone returns the
//! exact top 10 a little less often (recall@10 0.002 lower at each ef in
//! `cargo bench --bench index`).
//!
//! Every vector is stored padded with zeros to [`LANES`] components, so the
//! kernels read whole blocks and only the query's last block is masked.

/// Components a stored vector is padded to a multiple of: one AVX-512
/// register of 32-bit floats.
pub const LANES: usize = 16;

/// Components stored for a `dim`-wide vector: `dim` rounded up to [`LANES`].
pub fn stride(dim: usize) -> usize {
    dim.div_ceil(LANES) * LANES
}

/// `v` as half-precision bits, padded with zeros to [`stride`].
pub fn narrow(v: &[f32]) -> Vec<u16> {
    let mut out: Vec<u16> = v
        .iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect();
    out.resize(stride(v.len()), 0);
    out
}

/// The first `dim` components of a stored vector, back in single precision
/// (into `out`, whose allocation is reused).
pub fn widen(v: &[u16], dim: usize, out: &mut Vec<f32>) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let v = &v[..dim.min(v.len())];
    out.clear();
    out.resize(v.len(), 0.0);
    // Eight at a time with F16C where the CPU has it.
    let halves: &[half::f16] = v.reinterpret_cast();
    halves.convert_to_f32_slice(out);
}

/// Dot product of a query with one stored vector.
pub type Dot = fn(&[f32], &[u16]) -> f32;

/// Dot products of a query with four stored vectors at once: the graph
/// search scores a point's new neighbours four at a time, so that the
/// loads of four vectors are in flight together (FAISS's
/// `distances_batch_4`).
pub type Dot4 = fn(&[f32], [&[u16]; 4]) -> [f32; 4];

/// The plain dot product over the shorter of the two.
pub fn dot(q: &[f32], v: &[u16]) -> f32 {
    q.iter()
        .zip(v)
        .map(|(&x, &h)| x * half::f16::from_bits(h).to_f32())
        .sum()
}

/// The fastest [`Dot`] this CPU runs: AVX-512, AVX2 + FMA + F16C, or
/// [`dot`].
pub fn fastest_dot() -> Dot {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") {
            return |q, v| x86::dots_avx512(q, [v])[0];
        }
        if avx2_f16c() {
            return |q, v| x86::dots_avx2(q, [v])[0];
        }
    }
    dot
}

/// The fastest [`Dot4`] this CPU runs: AVX-512, AVX2 + FMA + F16C, or four
/// [`dot`]s.
pub fn fastest_dot4() -> Dot4 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") {
            return x86::dots_avx512;
        }
        if avx2_f16c() {
            return x86::dots_avx2;
        }
    }
    |q, v| v.map(|v| dot(q, v))
}

#[cfg(target_arch = "x86_64")]
fn avx2_f16c() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `q` with each of `v` (one or four at a time).
    pub fn dots_avx512<const N: usize>(q: &[f32], v: [&[u16]; N]) -> [f32; N] {
        // SAFETY: only reachable through `fastest_dot` / `fastest_dot4`,
        // which checked the CPU.
        unsafe { dots_avx512_inner(q, v) }
    }

    /// # Safety
    /// The CPU has AVX-512F and F16C. Reads only within each slice: the
    /// query's last block through a masked load, a stored vector's last
    /// block whole only when the slice holds it (padded, as stored), else
    /// from a zeroed copy.
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn dots_avx512_inner<const N: usize>(q: &[f32], v: [&[u16]; N]) -> [f32; N] {
        let n = v.iter().fold(q.len(), |n, v| n.min(v.len()));
        let pq = q.as_ptr();
        let p = v.map(|v| v.as_ptr());
        let mut s = [_mm512_setzero_ps(); N];
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= n, within every slice.
        while i + 16 <= n {
            let x = _mm512_loadu_ps(pq.add(i));
            for k in 0..N {
                let h = _mm256_loadu_si256(p[k].add(i).cast());
                s[k] = _mm512_fmadd_ps(x, _mm512_cvtph_ps(h), s[k]);
            }
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u16 << (n - i)) - 1;
            // SAFETY: the mask keeps the lanes below n, within `q`.
            let x = _mm512_maskz_loadu_ps(mask, pq.add(i));
            for k in 0..N {
                let h = if i + 16 <= v[k].len() {
                    // SAFETY: the slice holds 16 more.
                    _mm256_loadu_si256(p[k].add(i).cast())
                } else {
                    let mut tail = [0u16; 16];
                    tail[..n - i].copy_from_slice(&v[k][i..n]);
                    _mm256_loadu_si256(tail.as_ptr().cast())
                };
                // Lanes past n: the query's are 0, so they add nothing.
                s[k] = _mm512_fmadd_ps(x, _mm512_cvtph_ps(h), s[k]);
            }
        }
        s.map(|s| _mm512_reduce_add_ps(s))
    }

    /// `q` with each of `v` (one or four at a time).
    pub fn dots_avx2<const N: usize>(q: &[f32], v: [&[u16]; N]) -> [f32; N] {
        // SAFETY: only reachable through `fastest_dot` / `fastest_dot4`,
        // which checked the CPU.
        unsafe { dots_avx2_inner(q, v) }
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C. Reads only within each slice (the
    /// query's last block from a zeroed copy, so lanes past its end add
    /// nothing).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots_avx2_inner<const N: usize>(q: &[f32], v: [&[u16]; N]) -> [f32; N] {
        let n = v.iter().fold(q.len(), |n, v| n.min(v.len()));
        let pq = q.as_ptr();
        let p = v.map(|v| v.as_ptr());
        let mut s = [_mm256_setzero_ps(); N];
        let mut i = 0;
        // SAFETY (all loads): i + 8 <= n, within every slice.
        while i + 8 <= n {
            let x = _mm256_loadu_ps(pq.add(i));
            for k in 0..N {
                let h = _mm_loadu_si128(p[k].add(i).cast());
                s[k] = _mm256_fmadd_ps(x, _mm256_cvtph_ps(h), s[k]);
            }
            i += 8;
        }
        if i < n {
            let mut qt = [0f32; 8];
            qt[..n - i].copy_from_slice(&q[i..n]);
            let x = _mm256_loadu_ps(qt.as_ptr());
            for k in 0..N {
                let h = if i + 8 <= v[k].len() {
                    // SAFETY: the slice holds 8 more (padded, as stored).
                    _mm_loadu_si128(p[k].add(i).cast())
                } else {
                    let mut tail = [0u16; 8];
                    tail[..n - i].copy_from_slice(&v[k][i..n]);
                    _mm_loadu_si128(tail.as_ptr().cast())
                };
                s[k] = _mm256_fmadd_ps(x, _mm256_cvtph_ps(h), s[k]);
            }
        }
        s.map(|s| {
            let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
            _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps::<1>(x, x)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_agrees_with_the_plain_sum_at_every_length() {
        let q: Vec<f32> = (0..103)
            .map(|i| ((i * 37) % 11) as f32 / 7.0 - 0.6)
            .collect();
        let w: Vec<f32> = (0..103)
            .map(|i| ((i * 13) % 17) as f32 / 9.0 - 0.8)
            .collect();
        for n in [0, 1, 7, 8, 15, 16, 17, 100, 103] {
            let stored = narrow(&w[..n]);
            assert_eq!(stored.len(), stride(n));
            assert!(stored[n..].iter().all(|&h| h == 0), "padding, n = {n}");
            let want: f32 = q[..n].iter().zip(&w[..n]).map(|(a, b)| a * b).sum();
            // Half precision: 11 significant bits of each component.
            let tolerance = 2e-3 * n.max(1) as f32;
            assert!(
                (dot(&q[..n], &stored) - want).abs() < tolerance,
                "dot, n = {n}"
            );
            assert!(
                (fastest_dot()(&q[..n], &stored) - want).abs() < tolerance,
                "fastest_dot, n = {n}"
            );
            // Padded and unpadded slices, and one of each kind in a call.
            let unpadded = &stored[..n];
            let got = fastest_dot4()(&q[..n], [&stored, unpadded, &stored, unpadded]);
            for (k, got) in got.into_iter().enumerate() {
                assert!(
                    (got - want).abs() < tolerance,
                    "fastest_dot4, n = {n}, k = {k}"
                );
            }
            let mut back = Vec::new();
            widen(&stored, n, &mut back);
            assert_eq!(back.len(), n);
            assert!(back.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-3));
        }
    }
}
