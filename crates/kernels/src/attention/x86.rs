//! The attention head in AVX-512 and in AVX2.

use std::arch::x86_64::*;

use super::{Head, RowSoftmax, Scratch};

/// [`Head::run_reference`] in AVX-512. A query row meets four keys at a time (a decode
/// step); from four rows on (a prompt chunk) the keys are transposed once per group of
/// query heads, so that a row meets up to 128 keys at a time without a horizontal sum per
/// key.
///
/// # Safety
/// The CPU has AVX-512F; `head.dim` is a multiple of 16.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn head_avx512<S: RowSoftmax>(
    head: &Head,
    softmax: &S,
    scratch: &mut Scratch,
    out: &mut [f32],
) -> Result<(), S::Error> {
    let d = head.dim;
    let keys = head.k.len() / d;
    let rows = head.q.len() / d;
    assert!(
        d.is_multiple_of(16) && head.v.len() == keys * d && head.mask.len() == rows * keys && out.len() == rows * d
    );
    let padded = keys.next_multiple_of(16);
    scratch.scores.clear();
    scratch.scores.resize(padded, 0.0);
    let transposed = rows >= 4;
    if transposed {
        scratch.transpose_keys(head.k, d, padded);
    }
    for ((q, mask), out) in head.q.chunks_exact(d).zip(head.mask.chunks_exact(keys)).zip(out.chunks_exact_mut(d)) {
        // The keys this row sees: a causal mask hides the tail of a prompt chunk's rows, whose
        // weights would be zero.
        let seen = super::visible_keys(mask);
        if transposed {
            scores_transposed(q, &scratch.keys_t, padded, &mut scratch.scores[..seen.next_multiple_of(16)]);
        } else {
            scores_by_dots(q, &head.k[..seen * d], &mut scratch.scores[..seen]);
        }
        let scores = &mut scratch.scores[..seen];
        for (score, m) in scores.iter_mut().zip(mask) {
            *score = *score * head.scale + m;
        }
        softmax.run(scores)?;
        weighted_values(scores, &head.v[..seen * d], out);
    }
    Ok(())
}

/// `scores[t] = q . k[t]`, four keys at a time.
#[target_feature(enable = "avx512f")]
fn scores_by_dots(q: &[f32], k: &[f32], scores: &mut [f32]) {
    let d = q.len();
    assert!(d.is_multiple_of(16) && k.len() == scores.len() * d);
    let mut t = 0;
    while t < scores.len() {
        let group = (scores.len() - t).min(4);
        let scores = &mut scores[t..t + group];
        match group {
            4 => dots::<4>(q, &k[t * d..], scores),
            3 => dots::<3>(q, &k[t * d..], scores),
            2 => dots::<2>(q, &k[t * d..], scores),
            _ => dots::<1>(q, &k[t * d..], scores),
        }
        t += group;
    }
}

/// `scores[r] = q . k[r]` for the first `G` keys of `k`.
#[target_feature(enable = "avx512f")]
fn dots<const G: usize>(q: &[f32], k: &[f32], scores: &mut [f32]) {
    let d = q.len();
    assert!(k.len() >= G * d && scores.len() == G);
    let mut acc = [_mm512_setzero_ps(); G];
    for j in (0..d).step_by(16) {
        // SAFETY: j + 16 <= d, and r < G: inside `q` and `k`.
        let qv = unsafe { _mm512_loadu_ps(q.as_ptr().add(j)) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < G and j + 16 <= d: inside key r, which `k` holds (asserted above).
            let kv = unsafe { _mm512_loadu_ps(k.as_ptr().add(r * d + j)) };
            *acc = _mm512_fmadd_ps(qv, kv, *acc);
        }
    }
    for (score, acc) in scores.iter_mut().zip(acc) {
        *score = _mm512_reduce_add_ps(acc);
    }
}

/// `scores[t] = q . k[t]` for the first `scores.len()` keys (a multiple of 16) from the keys
/// transposed (`d` rows of `padded`), 128 keys at a time: eight independent sums keep the FMA
/// units busy.
#[target_feature(enable = "avx512f")]
fn scores_transposed(q: &[f32], keys_t: &[f32], padded: usize, scores: &mut [f32]) {
    let wanted = scores.len();
    assert!(wanted.is_multiple_of(16) && wanted <= padded && keys_t.len() == q.len() * padded);
    let mut t = 0;
    while t < wanted {
        let blocks = ((wanted - t) / 16).min(8);
        match blocks {
            8 => transposed_blocks::<8>(q, keys_t, padded, t, scores),
            7 => transposed_blocks::<7>(q, keys_t, padded, t, scores),
            6 => transposed_blocks::<6>(q, keys_t, padded, t, scores),
            5 => transposed_blocks::<5>(q, keys_t, padded, t, scores),
            4 => transposed_blocks::<4>(q, keys_t, padded, t, scores),
            3 => transposed_blocks::<3>(q, keys_t, padded, t, scores),
            2 => transposed_blocks::<2>(q, keys_t, padded, t, scores),
            _ => transposed_blocks::<1>(q, keys_t, padded, t, scores),
        }
        t += 16 * blocks;
    }
}

/// Keys `t..t + 16 * B` of [`scores_transposed`].
#[target_feature(enable = "avx512f")]
fn transposed_blocks<const B: usize>(q: &[f32], keys_t: &[f32], padded: usize, t: usize, scores: &mut [f32]) {
    assert!(t + 16 * B <= scores.len() && scores.len() <= padded && keys_t.len() == q.len() * padded);
    let mut acc = [_mm512_setzero_ps(); B];
    for (i, &x) in q.iter().enumerate() {
        let xv = _mm512_set1_ps(x);
        for (b, acc) in acc.iter_mut().enumerate() {
            // SAFETY: t + 16 * b + 16 <= padded: inside row i of `keys_t`.
            let kv = unsafe { _mm512_loadu_ps(keys_t.as_ptr().add(i * padded + t + 16 * b)) };
            *acc = _mm512_fmadd_ps(xv, kv, *acc);
        }
    }
    for (b, acc) in acc.iter().enumerate() {
        // SAFETY: as above, inside `scores`.
        unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(t + 16 * b), *acc) };
    }
}

/// `out = sum_t p[t] v[t]`, 64 columns at a time.
#[target_feature(enable = "avx512f")]
fn weighted_values(p: &[f32], v: &[f32], out: &mut [f32]) {
    let d = out.len();
    assert!(d.is_multiple_of(16) && v.len() == p.len() * d);
    let mut j = 0;
    while j < d {
        let blocks = ((d - j) / 16).min(4);
        match blocks {
            4 => weighted_blocks::<4>(p, v, j, out),
            3 => weighted_blocks::<3>(p, v, j, out),
            2 => weighted_blocks::<2>(p, v, j, out),
            _ => weighted_blocks::<1>(p, v, j, out),
        }
        j += 16 * blocks;
    }
}

/// Columns `j..j + 16 * B` of [`weighted_values`], even and odd `t` in separate sums so
/// that twice as many are under way.
#[target_feature(enable = "avx512f")]
fn weighted_blocks<const B: usize>(p: &[f32], v: &[f32], j: usize, out: &mut [f32]) {
    let d = out.len();
    assert!(j + 16 * B <= d && v.len() == p.len() * d);
    let row = |t: usize, b: usize| {
        // SAFETY: t < p.len() and j + 16 * b + 16 <= d: inside `v`.
        unsafe { _mm512_loadu_ps(v.as_ptr().add(t * d + j + 16 * b)) }
    };
    let mut even = [_mm512_setzero_ps(); B];
    let mut odd = [_mm512_setzero_ps(); B];
    let mut pairs = p.chunks_exact(2);
    for (pair, t) in (&mut pairs).zip((0..).step_by(2)) {
        let (p0, p1) = (_mm512_set1_ps(pair[0]), _mm512_set1_ps(pair[1]));
        for b in 0..B {
            even[b] = _mm512_fmadd_ps(p0, row(t, b), even[b]);
            odd[b] = _mm512_fmadd_ps(p1, row(t + 1, b), odd[b]);
        }
    }
    if let [last] = pairs.remainder() {
        let pv = _mm512_set1_ps(*last);
        for (b, even) in even.iter_mut().enumerate() {
            *even = _mm512_fmadd_ps(pv, row(p.len() - 1, b), *even);
        }
    }
    for b in 0..B {
        // SAFETY: j + 16 * b + 16 <= d: inside `out`.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(j + 16 * b), _mm512_add_ps(even[b], odd[b])) };
    }
}

/// [`head_avx512`] in AVX2 (head sizes that are multiples of 8): the same steps in registers
/// of eight lanes, for the x86 CPUs without AVX-512 (AMD before Zen 4, Intel's client cores).
///
/// # Safety
/// The CPU has AVX2 and FMA; `head.dim` is a multiple of 8.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn head_avx2<S: RowSoftmax>(
    head: &Head,
    softmax: &S,
    scratch: &mut Scratch,
    out: &mut [f32],
) -> Result<(), S::Error> {
    let d = head.dim;
    let keys = head.k.len() / d;
    let rows = head.q.len() / d;
    assert!(d.is_multiple_of(8) && head.v.len() == keys * d && head.mask.len() == rows * keys && out.len() == rows * d);
    // Padded to 16 keys as [`head_avx512`] pads (two registers of eight).
    let padded = keys.next_multiple_of(16);
    scratch.scores.clear();
    scratch.scores.resize(padded, 0.0);
    let transposed = rows >= 4;
    if transposed {
        scratch.transpose_keys(head.k, d, padded);
    }
    for ((q, mask), out) in head.q.chunks_exact(d).zip(head.mask.chunks_exact(keys)).zip(out.chunks_exact_mut(d)) {
        let seen = super::visible_keys(mask);
        if transposed {
            scores_transposed_avx2(q, &scratch.keys_t, padded, &mut scratch.scores[..seen.next_multiple_of(8)]);
        } else {
            scores_by_dots_avx2(q, &head.k[..seen * d], &mut scratch.scores[..seen]);
        }
        let scores = &mut scratch.scores[..seen];
        for (score, m) in scores.iter_mut().zip(mask) {
            *score = *score * head.scale + m;
        }
        softmax.run(scores)?;
        weighted_values_avx2(scores, &head.v[..seen * d], out);
    }
    Ok(())
}

/// The sum of a register's eight lanes.
#[target_feature(enable = "avx2,fma")]
fn sum_lanes(v: __m256) -> f32 {
    let four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)))
}

/// [`scores_by_dots`] in AVX2.
#[target_feature(enable = "avx2,fma")]
fn scores_by_dots_avx2(q: &[f32], k: &[f32], scores: &mut [f32]) {
    let d = q.len();
    assert!(d.is_multiple_of(8) && k.len() == scores.len() * d);
    let mut t = 0;
    while t < scores.len() {
        let group = (scores.len() - t).min(4);
        let scores = &mut scores[t..t + group];
        match group {
            4 => dots_avx2::<4>(q, &k[t * d..], scores),
            3 => dots_avx2::<3>(q, &k[t * d..], scores),
            2 => dots_avx2::<2>(q, &k[t * d..], scores),
            _ => dots_avx2::<1>(q, &k[t * d..], scores),
        }
        t += group;
    }
}

/// [`dots`] in AVX2.
#[target_feature(enable = "avx2,fma")]
fn dots_avx2<const G: usize>(q: &[f32], k: &[f32], scores: &mut [f32]) {
    let d = q.len();
    assert!(k.len() >= G * d && scores.len() == G);
    let mut acc = [_mm256_setzero_ps(); G];
    for j in (0..d).step_by(8) {
        // SAFETY: j + 8 <= d, and r < G: inside `q` and `k`.
        let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add(j)) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < G and j + 8 <= d: inside key r, which `k` holds (asserted above).
            let kv = unsafe { _mm256_loadu_ps(k.as_ptr().add(r * d + j)) };
            *acc = _mm256_fmadd_ps(qv, kv, *acc);
        }
    }
    for (score, acc) in scores.iter_mut().zip(acc) {
        *score = sum_lanes(acc);
    }
}

/// [`scores_transposed`] in AVX2 (`scores.len()` a multiple of 8), 64 keys at a time.
#[target_feature(enable = "avx2,fma")]
fn scores_transposed_avx2(q: &[f32], keys_t: &[f32], padded: usize, scores: &mut [f32]) {
    let wanted = scores.len();
    assert!(wanted.is_multiple_of(8) && wanted <= padded && keys_t.len() == q.len() * padded);
    let mut t = 0;
    while t < wanted {
        let blocks = ((wanted - t) / 8).min(8);
        match blocks {
            8 => transposed_blocks_avx2::<8>(q, keys_t, padded, t, scores),
            7 => transposed_blocks_avx2::<7>(q, keys_t, padded, t, scores),
            6 => transposed_blocks_avx2::<6>(q, keys_t, padded, t, scores),
            5 => transposed_blocks_avx2::<5>(q, keys_t, padded, t, scores),
            4 => transposed_blocks_avx2::<4>(q, keys_t, padded, t, scores),
            3 => transposed_blocks_avx2::<3>(q, keys_t, padded, t, scores),
            2 => transposed_blocks_avx2::<2>(q, keys_t, padded, t, scores),
            _ => transposed_blocks_avx2::<1>(q, keys_t, padded, t, scores),
        }
        t += 8 * blocks;
    }
}

/// Keys `t..t + 8 * B` of [`scores_transposed_avx2`].
#[target_feature(enable = "avx2,fma")]
fn transposed_blocks_avx2<const B: usize>(q: &[f32], keys_t: &[f32], padded: usize, t: usize, scores: &mut [f32]) {
    assert!(t + 8 * B <= scores.len() && scores.len() <= padded && keys_t.len() == q.len() * padded);
    let mut acc = [_mm256_setzero_ps(); B];
    for (i, &x) in q.iter().enumerate() {
        let xv = _mm256_set1_ps(x);
        for (b, acc) in acc.iter_mut().enumerate() {
            // SAFETY: t + 8 * b + 8 <= padded: inside row i of `keys_t`.
            let kv = unsafe { _mm256_loadu_ps(keys_t.as_ptr().add(i * padded + t + 8 * b)) };
            *acc = _mm256_fmadd_ps(xv, kv, *acc);
        }
    }
    for (b, acc) in acc.iter().enumerate() {
        // SAFETY: as above, inside `scores`.
        unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add(t + 8 * b), *acc) };
    }
}

/// [`weighted_values`] in AVX2, 32 columns at a time.
#[target_feature(enable = "avx2,fma")]
fn weighted_values_avx2(p: &[f32], v: &[f32], out: &mut [f32]) {
    let d = out.len();
    assert!(d.is_multiple_of(8) && v.len() == p.len() * d);
    let mut j = 0;
    while j < d {
        let blocks = ((d - j) / 8).min(4);
        match blocks {
            4 => weighted_blocks_avx2::<4>(p, v, j, out),
            3 => weighted_blocks_avx2::<3>(p, v, j, out),
            2 => weighted_blocks_avx2::<2>(p, v, j, out),
            _ => weighted_blocks_avx2::<1>(p, v, j, out),
        }
        j += 8 * blocks;
    }
}

/// Columns `j..j + 8 * B` of [`weighted_values_avx2`], even and odd `t` in separate sums.
#[target_feature(enable = "avx2,fma")]
fn weighted_blocks_avx2<const B: usize>(p: &[f32], v: &[f32], j: usize, out: &mut [f32]) {
    let d = out.len();
    assert!(j + 8 * B <= d && v.len() == p.len() * d);
    let row = |t: usize, b: usize| {
        // SAFETY: t < p.len() and j + 8 * b + 8 <= d: inside `v`.
        unsafe { _mm256_loadu_ps(v.as_ptr().add(t * d + j + 8 * b)) }
    };
    let mut even = [_mm256_setzero_ps(); B];
    let mut odd = [_mm256_setzero_ps(); B];
    let mut pairs = p.chunks_exact(2);
    for (pair, t) in (&mut pairs).zip((0..).step_by(2)) {
        let (p0, p1) = (_mm256_set1_ps(pair[0]), _mm256_set1_ps(pair[1]));
        for b in 0..B {
            even[b] = _mm256_fmadd_ps(p0, row(t, b), even[b]);
            odd[b] = _mm256_fmadd_ps(p1, row(t + 1, b), odd[b]);
        }
    }
    if let [last] = pairs.remainder() {
        let pv = _mm256_set1_ps(*last);
        for (b, even) in even.iter_mut().enumerate() {
            *even = _mm256_fmadd_ps(pv, row(p.len() - 1, b), *even);
        }
    }
    for b in 0..B {
        // SAFETY: j + 8 * b + 8 <= d: inside `out`.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j + 8 * b), _mm256_add_ps(even[b], odd[b])) };
    }
}
