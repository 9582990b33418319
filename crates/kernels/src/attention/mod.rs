//! One attention head, `softmax(q kᵀ · scale + mask) v`, reading the KV cache where it lies.
//!
//! A decode step's query row meets four keys at a time; in a prompt chunk the keys are
//! transposed once per group of query heads (they share them under GQA) so that a row meets
//! up to 128 at a time. The softmax of a row is the caller's ([`RowSoftmax`]: the engine
//! passes tract's own row kernels, so the result is the one tract's softmax gives).
//!
//! Paths: [`Head::run_reference`] (plain loops, every CPU), `x86` (AVX-512, head sizes that
//! are multiples of 16; AVX2, multiples of 8), `aarch64` (NEON, head sizes that are multiples
//! of 4).

use crate::Isa;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;

/// The softmax of one row of scores, in place.
pub trait RowSoftmax: Sync {
    type Error;
    fn run(&self, row: &mut [f32]) -> Result<(), Self::Error>;
}

/// One query head: `q` S rows of D, `k` and `v` T rows of D, `mask` S rows of T.
pub struct Head<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub mask: &'a [f32],
    pub scale: f32,
    pub dim: usize,
}

/// Per-thread buffers of one evaluation: a row of scores, and the keys transposed for a
/// prompt chunk.
#[derive(Default)]
pub struct Scratch {
    scores: Vec<f32>,
    /// Only the SIMD paths transpose keys; 32-bit ARM and others have the reference alone.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    keys_t: Vec<f32>,
    /// Which keys `keys_t` holds (their address and length in the op's input, and the padded
    /// width), so that the query heads of a group, which share them, transpose them once.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    keys_t_of: Option<(usize, usize, usize)>,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Scratch {
    /// `k` (T rows of `d`) transposed into `keys_t` (`d` rows of `padded`, zeros after the T
    /// keys), unless it holds them already.
    fn transpose_keys(&mut self, k: &[f32], d: usize, padded: usize) {
        let id = (k.as_ptr() as usize, k.len(), padded);
        if self.keys_t_of == Some(id) {
            return;
        }
        self.keys_t_of = Some(id);
        self.keys_t.clear();
        self.keys_t.resize(d * padded, 0.0);
        for (t, key) in k.chunks_exact(d).enumerate() {
            for (i, &x) in key.iter().enumerate() {
                self.keys_t[i * padded + t] = x;
            }
        }
    }
}

/// How many keys a row of `mask` sees: up to its last key not hidden. A key is hidden when its
/// mask is below -1e30 (`-inf`, or the dtype's lowest value as exporters write it): its
/// softmax weight is zero, so the row's scores and weighted values can stop before it. At
/// least one key, so that a row hidden all over keeps the reference's result.
#[cfg(target_arch = "x86_64")]
pub(crate) fn visible_keys(mask: &[f32]) -> usize {
    const HIDDEN: f32 = -1e30;
    mask.iter().rposition(|&m| m >= HIDDEN || m.is_nan()).map_or(mask.len(), |last| last + 1).max(1)
}

impl Head<'_> {
    /// `out` (S rows of D) for this head, with the kernels of `isa` (which the CPU must run).
    pub fn run<S: RowSoftmax>(
        &self,
        softmax: &S,
        scratch: &mut Scratch,
        out: &mut [f32],
        isa: Isa,
    ) -> Result<(), S::Error> {
        assert!(Isa::detected().runs(isa), "{isa:?} is not a path this CPU runs");
        #[cfg(target_arch = "x86_64")]
        if self.dim.is_multiple_of(16) && isa.runs(Isa::Avx512) {
            // SAFETY: the CPU runs AVX-512 (checked above) and the head size is a multiple of 16.
            return unsafe { x86::head_avx512(self, softmax, scratch, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if self.dim.is_multiple_of(8) && isa.runs(Isa::Avx2) {
            // SAFETY: the CPU runs AVX2 and FMA (checked above) and the head size is a multiple
            // of 8.
            return unsafe { x86::head_avx2(self, softmax, scratch, out) };
        }
        #[cfg(target_arch = "aarch64")]
        if self.dim.is_multiple_of(4) && isa.fused_attention() {
            // SAFETY: every aarch64 CPU has NEON, and the head size is a multiple of 4.
            return unsafe { aarch64::head_neon(self, softmax, scratch, out) };
        }
        self.run_reference(softmax, scratch, out)
    }

    /// The reference, in plain loops.
    pub fn run_reference<S: RowSoftmax>(
        &self,
        softmax: &S,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) -> Result<(), S::Error> {
        let d = self.dim;
        let keys = self.k.len() / d;
        scratch.scores.resize(keys, 0.0);
        for ((q, mask), out) in self.q.chunks_exact(d).zip(self.mask.chunks_exact(keys)).zip(out.chunks_exact_mut(d)) {
            for ((score, key), m) in scratch.scores.iter_mut().zip(self.k.chunks_exact(d)).zip(mask) {
                let dot: f32 = q.iter().zip(key).map(|(x, y)| x * y).sum();
                *score = dot * self.scale + m;
            }
            softmax.run(&mut scratch.scores)?;
            out.fill(0.0);
            for (&p, v) in scratch.scores.iter().zip(self.v.chunks_exact(d)) {
                for (o, &v) in out.iter_mut().zip(v) {
                    *o += p * v;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row sees up to its last key that is not hidden, whatever hides it; NaN is not hidden.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_row_sees_up_to_its_last_visible_key() {
        let (inf, low) = (f32::NEG_INFINITY, f32::MIN);
        assert_eq!(visible_keys(&[0.0, 0.0, inf, inf]), 2);
        assert_eq!(visible_keys(&[0.0, low, 0.0, low]), 3);
        assert_eq!(visible_keys(&[0.0, -1e20, 0.0, -5.0]), 4);
        assert_eq!(visible_keys(&[inf, f32::NAN, inf]), 2);
        assert_eq!(visible_keys(&[inf, inf]), 2, "hidden all over: every key, as the reference");
    }

    /// A plain softmax, to test the kernels without tract.
    struct PlainSoftmax;

    impl RowSoftmax for PlainSoftmax {
        type Error = std::convert::Infallible;
        fn run(&self, row: &mut [f32]) -> Result<(), Self::Error> {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            row.iter_mut().for_each(|x| *x /= sum);
            Ok(())
        }
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
    }

    /// Every path this CPU runs agrees with the f64 formula, for decode rows and chunks,
    /// key counts around the kernels' block sizes, head sizes on and off the SIMD width, a
    /// causal mask, and a scratch reused across heads that share keys and heads that do not.
    #[test]
    fn every_path_equals_the_f64_formula() {
        let paths: Vec<Isa> = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::NeonDotprod]
            .into_iter()
            .filter(|isa| Isa::detected().runs(*isa))
            .collect();
        #[cfg(target_arch = "aarch64")]
        assert!(paths.contains(&Isa::Neon), "every aarch64 CPU runs NEON");
        for (rows, keys, dim) in
            [(1, 1, 16), (1, 37, 64), (7, 37, 64), (4, 130, 80), (5, 17, 24), (3, 5, 12), (6, 9, 6), (64, 96, 64)]
        {
            let (q, k, v) = (values(rows * dim, 1.0), values(keys * dim, 2.0), values(keys * dim, 3.0));
            // Causal: row r sees the keys up to keys - rows + r.
            let mask: Vec<f32> = (0..rows * keys)
                .map(|i| if i % keys <= keys - rows + i / keys { 0.0 } else { f32::NEG_INFINITY })
                .collect();
            let scale = 1.0 / (dim as f32).sqrt();
            let mut expected = vec![0f64; rows * dim];
            for r in 0..rows {
                let scores: Vec<f64> = (0..keys)
                    .map(|t| {
                        let dot: f64 = (0..dim).map(|i| q[r * dim + i] as f64 * k[t * dim + i] as f64).sum();
                        dot * scale as f64 + mask[r * keys + t] as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (t, s) in scores.iter().enumerate() {
                    for i in 0..dim {
                        expected[r * dim + i] += (s - max).exp() / sum * v[t * dim + i] as f64;
                    }
                }
            }
            for isa in &paths {
                let mut scratch = Scratch::default();
                for _ in 0..2 {
                    let head = Head { q: &q, k: &k, v: &v, mask: &mask, scale, dim };
                    let mut out = vec![f32::NAN; rows * dim];
                    let Ok(()) = head.run(&PlainSoftmax, &mut scratch, &mut out, *isa);
                    for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                        assert!(
                            (*got as f64 - want).abs() < 1e-5,
                            "{isa:?} rows {rows} keys {keys} dim {dim} at {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
