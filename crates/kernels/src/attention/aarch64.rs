//! The NEON attention head (every aarch64 CPU has NEON: no run-time check).

use std::arch::aarch64::*;

use super::{Head, RowSoftmax, Scratch};

/// [`Head::run_reference`] in NEON, for head sizes that are multiples of 4. A query row meets
/// four keys at a time (a decode step); from four rows on (a prompt chunk) the keys are
/// transposed once per group of query heads, so that a row meets up to 32 keys at a time
/// without a horizontal sum per key.
///
/// # Safety
/// The CPU has NEON: every aarch64 CPU does.
#[target_feature(enable = "neon")]
pub(super) unsafe fn head_neon<S: RowSoftmax>(
    head: &Head,
    softmax: &S,
    scratch: &mut Scratch,
    out: &mut [f32],
) -> Result<(), S::Error> {
    let d = head.dim;
    let keys = head.k.len() / d;
    let rows = head.q.len() / d;
    assert!(d.is_multiple_of(4) && head.v.len() == keys * d && head.mask.len() == rows * keys && out.len() == rows * d);
    let padded = keys.next_multiple_of(4);
    scratch.scores.clear();
    scratch.scores.resize(padded, 0.0);
    let transposed = rows >= 4;
    if transposed {
        scratch.transpose_keys(head.k, d, padded);
    }
    for ((q, mask), out) in head.q.chunks_exact(d).zip(head.mask.chunks_exact(keys)).zip(out.chunks_exact_mut(d)) {
        if transposed {
            scores_transposed(q, &scratch.keys_t, &mut scratch.scores);
        } else {
            scores_by_dots(q, head.k, &mut scratch.scores[..keys]);
        }
        let scores = &mut scratch.scores[..keys];
        for (score, m) in scores.iter_mut().zip(mask) {
            *score = *score * head.scale + m;
        }
        softmax.run(scores)?;
        weighted_values(scores, head.v, out);
    }
    Ok(())
}

/// `scores[t] = q . k[t]`, four keys at a time.
#[target_feature(enable = "neon")]
fn scores_by_dots(q: &[f32], k: &[f32], scores: &mut [f32]) {
    let d = q.len();
    assert!(d.is_multiple_of(4) && k.len() == scores.len() * d);
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

/// `scores[r] = q . k[r]` for the first `G` keys of `k`, two sums per key.
#[target_feature(enable = "neon")]
fn dots<const G: usize>(q: &[f32], k: &[f32], scores: &mut [f32]) {
    let d = q.len();
    assert!(d.is_multiple_of(4) && k.len() >= G * d && scores.len() == G);
    let mut acc = [[vdupq_n_f32(0.0); 2]; G];
    let mut j = 0;
    while j < d {
        let lane = (j / 4) % 2;
        // SAFETY: j + 4 <= d: inside `q`.
        let qv = unsafe { vld1q_f32(q.as_ptr().add(j)) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < G and j + 4 <= d: inside key r, which `k` holds (asserted above).
            let kv = unsafe { vld1q_f32(k.as_ptr().add(r * d + j)) };
            acc[lane] = vfmaq_f32(acc[lane], qv, kv);
        }
        j += 4;
    }
    for (score, acc) in scores.iter_mut().zip(acc) {
        *score = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
    }
}

/// `scores[t] = q . k[t]` from the keys transposed (`d` rows of `scores.len()`, a multiple
/// of 4), 32 keys at a time: eight independent sums keep the FMA units busy.
#[target_feature(enable = "neon")]
fn scores_transposed(q: &[f32], keys_t: &[f32], scores: &mut [f32]) {
    let padded = scores.len();
    assert!(padded.is_multiple_of(4) && keys_t.len() == q.len() * padded);
    let mut t = 0;
    while t < padded {
        let blocks = ((padded - t) / 4).min(8);
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
        t += 4 * blocks;
    }
}

/// Keys `t..t + 4 * B` of [`scores_transposed`].
#[target_feature(enable = "neon")]
fn transposed_blocks<const B: usize>(q: &[f32], keys_t: &[f32], padded: usize, t: usize, scores: &mut [f32]) {
    assert!(t + 4 * B <= padded && keys_t.len() == q.len() * padded && scores.len() == padded);
    let mut acc = [vdupq_n_f32(0.0); B];
    for (i, &x) in q.iter().enumerate() {
        for (b, acc) in acc.iter_mut().enumerate() {
            // SAFETY: t + 4 * b + 4 <= padded: inside row i of `keys_t`.
            let kv = unsafe { vld1q_f32(keys_t.as_ptr().add(i * padded + t + 4 * b)) };
            *acc = vfmaq_n_f32(*acc, kv, x);
        }
    }
    for (b, acc) in acc.iter().enumerate() {
        // SAFETY: as above, inside `scores`.
        unsafe { vst1q_f32(scores.as_mut_ptr().add(t + 4 * b), *acc) };
    }
}

/// `out = sum_t p[t] v[t]`, 16 columns at a time.
#[target_feature(enable = "neon")]
fn weighted_values(p: &[f32], v: &[f32], out: &mut [f32]) {
    let d = out.len();
    assert!(d.is_multiple_of(4) && v.len() == p.len() * d);
    let mut j = 0;
    while j < d {
        let blocks = ((d - j) / 4).min(4);
        match blocks {
            4 => weighted_blocks::<4>(p, v, j, out),
            3 => weighted_blocks::<3>(p, v, j, out),
            2 => weighted_blocks::<2>(p, v, j, out),
            _ => weighted_blocks::<1>(p, v, j, out),
        }
        j += 4 * blocks;
    }
}

/// Columns `j..j + 4 * B` of [`weighted_values`], even and odd `t` in separate sums so that
/// twice as many are under way.
#[target_feature(enable = "neon")]
fn weighted_blocks<const B: usize>(p: &[f32], v: &[f32], j: usize, out: &mut [f32]) {
    let d = out.len();
    assert!(j + 4 * B <= d && v.len() == p.len() * d);
    let row = |t: usize, b: usize| {
        // SAFETY: t < p.len() and j + 4 * b + 4 <= d: inside `v`.
        unsafe { vld1q_f32(v.as_ptr().add(t * d + j + 4 * b)) }
    };
    let mut even = [vdupq_n_f32(0.0); B];
    let mut odd = [vdupq_n_f32(0.0); B];
    let mut pairs = p.chunks_exact(2);
    for (pair, t) in (&mut pairs).zip((0..).step_by(2)) {
        for b in 0..B {
            even[b] = vfmaq_n_f32(even[b], row(t, b), pair[0]);
            odd[b] = vfmaq_n_f32(odd[b], row(t + 1, b), pair[1]);
        }
    }
    if let [last] = pairs.remainder() {
        for (b, even) in even.iter_mut().enumerate() {
            *even = vfmaq_n_f32(*even, row(p.len() - 1, b), *last);
        }
    }
    for b in 0..B {
        // SAFETY: j + 4 * b + 4 <= d: inside `out`.
        unsafe { vst1q_f32(out.as_mut_ptr().add(j + 4 * b), vaddq_f32(even[b], odd[b])) };
    }
}
