//! Vector maths shared by every stage: dot products (portable, AVX2, and
//! against 8-bit codes), L2 normalisation and Euclidean distance.
//!
//! Features are unit vectors, so cosine similarity is a dot product; the
//! engine, the PCA, the index, its flat graph, its re-rank codes and the
//! Siamese verdict all compute one of these, and they live here once.

/// Lanes of partial sums in [`dot`]: independent accumulators let the
/// compiler use SIMD without reordering a single running sum.
const DOT_LANES: usize = 16;

/// Dot product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, bc) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0f32; DOT_LANES];
    for (x, y) in ac.zip(bc) {
        for i in 0..DOT_LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `v` scaled to unit length (a zero vector stays near zero).
pub fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = dot(v, v).sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// Euclidean distance of two vectors (the Siamese verdict's distance).
pub fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// `sum(a[i] * b[i])` of a float vector and an 8-bit code (the index's
/// re-rank codes), with 16 independent sums, which the compiler turns into
/// vector code.
pub fn dot_i8(a: &[f32], b: &[i8]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (a_main, a_rest) = a.split_at(a.len() - a.len() % LANES);
    let (b_main, b_rest) = b.split_at(a_main.len());
    for (x, c) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * f32::from(c[i]);
        }
    }
    let tail: f32 = a_rest
        .iter()
        .zip(b_rest)
        .map(|(x, &c)| x * f32::from(c))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The fastest dot product this CPU runs: AVX-512, else AVX2 + FMA where
/// it has both, else [`dot`]. Picked once by the caller (the index's flat graph keeps
/// it as a function pointer).
pub fn fastest_dot() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return dot_avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return dot_avx2;
        }
    }
    dot
}

/// [`dot`] with AVX2 + FMA; chosen by [`fastest_dot`] only when the CPU
/// has both.
#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through `fastest_dot`, which checked the CPU.
    unsafe { dot_avx2_inner(a, b) }
}

/// # Safety
/// The CPU has AVX2 and FMA. Reads only `min(a.len(), b.len())` floats of
/// each slice.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_inner(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY (all loads): i + 8 <= n, and n is within both slices.
    while i + 16 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        s1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            s1,
        );
        i += 16;
    }
    if i + 8 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        i += 8;
    }
    let s = _mm256_add_ps(s0, s1);
    let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_shuffle_ps::<1>(x, x));
    let mut total = _mm_cvtss_f32(x);
    for j in i..n {
        total += a[j] * b[j];
    }
    total
}

/// Four dot products of `q` with `v[0..4]` at once: the graph search
/// scores a candidate's new neighbours four at a time, so that the loads
/// of four vectors are in flight together (FAISS's `distances_batch_4`).
pub type Dot4 = fn(&[f32], [&[f32]; 4]) -> [f32; 4];

/// The fastest [`Dot4`] this CPU runs: AVX-512, AVX2 + FMA, or four
/// [`dot`]s.
pub fn fastest_dot4() -> Dot4 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return dot4_avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return dot4_avx2;
        }
    }
    |q, v| v.map(|v| dot(q, v))
}

/// [`dot`] with AVX-512; chosen by [`fastest_dot`] only when the CPU has it.
#[cfg(target_arch = "x86_64")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through `fastest_dot`, which checked the CPU.
    unsafe { dot_avx512_inner(a, b) }
}

/// # Safety
/// The CPU has AVX-512F. Reads only `min(a.len(), b.len())` floats of
/// each slice (the tail through a masked load, which touches no lane it
/// leaves out).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512_inner(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    // SAFETY (all loads): i + 16 <= n, and n is within both slices.
    while i + 32 <= n {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
        s1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i + 16)),
            _mm512_loadu_ps(pb.add(i + 16)),
            s1,
        );
        i += 32;
    }
    if i + 16 <= n {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = (1u16 << (n - i)) - 1;
        let (x, y) = (
            _mm512_maskz_loadu_ps(mask, pa.add(i)),
            _mm512_maskz_loadu_ps(mask, pb.add(i)),
        );
        s1 = _mm512_fmadd_ps(x, y, s1);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
}

#[cfg(target_arch = "x86_64")]
fn dot4_avx512(q: &[f32], v: [&[f32]; 4]) -> [f32; 4] {
    // SAFETY: only reachable through `fastest_dot4`, which checked the CPU.
    unsafe { dot4_avx512_inner(q, v) }
}

/// # Safety
/// The CPU has AVX-512F. Reads only the first `n` floats of each slice,
/// `n` the shortest length of the five.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot4_avx512_inner(q: &[f32], v: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = v.iter().fold(q.len(), |n, v| n.min(v.len()));
    let pq = q.as_ptr();
    let p = v.map(|v| v.as_ptr());
    let mut s = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): i + 16 <= n, or masked to the lanes below n.
    while i + 16 <= n {
        let x = _mm512_loadu_ps(pq.add(i));
        for k in 0..4 {
            s[k] = _mm512_fmadd_ps(x, _mm512_loadu_ps(p[k].add(i)), s[k]);
        }
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = (1u16 << (n - i)) - 1;
        let x = _mm512_maskz_loadu_ps(mask, pq.add(i));
        for k in 0..4 {
            s[k] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(mask, p[k].add(i)), s[k]);
        }
    }
    s.map(|s| _mm512_reduce_add_ps(s))
}

#[cfg(target_arch = "x86_64")]
fn dot4_avx2(q: &[f32], v: [&[f32]; 4]) -> [f32; 4] {
    // SAFETY: only reachable through `fastest_dot4`, which checked the CPU.
    unsafe { dot4_avx2_inner(q, v) }
}

/// # Safety
/// The CPU has AVX2 and FMA. Reads only the first `n` floats of each
/// slice, `n` the shortest length of the five.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2_inner(q: &[f32], v: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = v.iter().fold(q.len(), |n, v| n.min(v.len()));
    let pq = q.as_ptr();
    let p = v.map(|v| v.as_ptr());
    let mut s = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): i + 8 <= n.
    while i + 8 <= n {
        let x = _mm256_loadu_ps(pq.add(i));
        for k in 0..4 {
            s[k] = _mm256_fmadd_ps(x, _mm256_loadu_ps(p[k].add(i)), s[k]);
        }
        i += 8;
    }
    let mut out = s.map(|s| {
        let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps::<1>(x, x)))
    });
    for j in i..n {
        for k in 0..4 {
            out[k] += q[j] * v[k][j];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dot_agrees_with_the_plain_sum() {
        let a: Vec<f32> = (0..103)
            .map(|i| ((i * 37) % 11) as f32 / 7.0 - 0.6)
            .collect();
        let b: Vec<f32> = (0..103)
            .map(|i| ((i * 13) % 17) as f32 / 9.0 - 0.8)
            .collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        for n in [0, 1, 7, 8, 15, 16, 17, 103] {
            let want: f32 = a[..n].iter().zip(&b[..n]).map(|(x, y)| x * y).sum();
            assert!((dot(&a[..n], &b[..n]) - want).abs() < 1e-4, "dot, n = {n}");
            assert!(
                (fastest_dot()(&a[..n], &b[..n]) - want).abs() < 1e-4,
                "fastest_dot, n = {n}"
            );
            let four = [&b[..n], &a[..n], &b[..n], &a[..n]];
            let want_aa: f32 = a[..n].iter().map(|x| x * x).sum();
            let got = fastest_dot4()(&a[..n], four);
            for (k, want) in [want, want_aa, want, want_aa].into_iter().enumerate() {
                assert!(
                    (got[k] - want).abs() < 1e-4,
                    "fastest_dot4, n = {n}, k = {k}"
                );
            }
        }
        let codes: Vec<i8> = b.iter().map(|x| (x * 100.0) as i8).collect();
        let want: f32 = a.iter().zip(&codes).map(|(x, &c)| x * f32::from(c)).sum();
        assert!((dot_i8(&a, &codes) - want).abs() < 1e-2);
        assert!(plain.is_finite());
    }

    #[test]
    fn normalised_is_unit_and_euclidean_is_the_distance() {
        let v = normalised(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(normalised(&[0.0, 0.0]).iter().all(|x| *x == 0.0));
        assert!((euclidean(&[0.0, 0.0], &[3.0, 4.0]) - 5.0).abs() < 1e-6);
    }
}
