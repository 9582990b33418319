//! A fused 4-bit matrix-vector product for decode steps.
//!
//! tract multiplies a Q4_0 weight by one token's activations in two passes per panel of 32
//! rows: its extractor unpacks the panel to f32 in a scratch buffer, then the 32x1 f32 kernel
//! reads it back. On a decode step these products are three quarters of the time, and the
//! unpacking dominates them. [`accelerate_q4_matvecs`] wraps each such product in
//! [`Q4MatVec`], which reads tract's own packed panels and multiplies as it unpacks; any other
//! shape (a prompt chunk, a batch) goes to the wrapped tract op unchanged.
//!
//! The packed panel (`Q4_0` for 32 rows, nibbles zipped by 16) holds, for each block of 32
//! values along k: the 32 rows' f16 scales, then for each of the 32 positions 16 bytes whose
//! low nibbles are rows 0..16 and high nibbles rows 16..32, each value `(nibble - 8) * scale`.
//! Only x86_64 with AVX2, FMA and F16C has a kernel; elsewhere the pass changes nothing.

use super::spin_team::SpinTeam;
use tract_linalg::block_quant::{PackedBlockQuantFormat, Q4_0};
use tract_linalg::mmm::{EagerPackedInput, PackedMatrixStorage};
use tract_linalg::pack::PackedFormat;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, SessionId, StaticName, TypedOp};
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

/// Rows in a packed panel, values in a block along k.
const PANEL_ROWS: usize = 32;
const BLOCK: usize = 32;
/// Bytes of one block of one panel: 32 f16 scales, then 32 positions of 16 bytes.
const PANEL_BLOCK_BYTES: usize = PANEL_ROWS * 2 + BLOCK * PANEL_ROWS / 2;

/// Wraps every 4-bit weight product the fused kernel can take; returns how many.
pub(super) fn accelerate_q4_matvecs(model: &mut TypedModel) -> TractResult<usize> {
    if !kernel_available() {
        return Ok(0);
    }
    let mut wrapped = 0;
    for id in 0..model.nodes().len() {
        let Some(op) = model.node(id).op_as::<OptMatMul>() else { continue };
        if let Some(fused) = Q4MatVec::wrap(op) {
            model.node_mut(id).op = Box::new(fused);
            wrapped += 1;
        }
    }
    Ok(wrapped)
}

/// One product `c = W x` with a constant Q4_0 weight `W` (`m x k`, packed by tract) and the
/// activations as input `b`; one column is computed here, more go to `inner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Q4MatVec {
    inner: OptMatMul,
    weight: EagerPackedInput,
    b_input: usize,
    m: usize,
    k: usize,
}

impl Q4MatVec {
    fn wrap(op: &OptMatMul) -> Option<Q4MatVec> {
        let [
            ProtoFusedSpec::AddMatMul { a: MatMulOperand::Const(a), b: MatMulOperand::Input(b_input), .. },
            ProtoFusedSpec::Store(_),
        ] = op.micro_ops.as_slice()
        else {
            return None;
        };
        if op.c_fact.datum_type != f32::datum_type() {
            return None;
        }
        let weight = a.downcast_ref::<EagerPackedInput>()?;
        let format = weight.fact.format.downcast_ref::<PackedBlockQuantFormat>()?;
        let expected = PackedBlockQuantFormat::new(&Q4_0, PANEL_ROWS, 16, false);
        let (m, k) = (weight.mn, weight.fact.k);
        let panels = m.div_ceil(PANEL_ROWS);
        if *format != expected
            || k % BLOCK != 0
            || weight.panel_bytes != k / BLOCK * PANEL_BLOCK_BYTES
            || weight.packed.len() < panels * weight.panel_bytes
        {
            return None;
        }
        Some(Q4MatVec { inner: op.clone(), weight: weight.clone(), b_input: *b_input, m, k })
    }

    /// The activations of a one-column product (`k` floats), if `b` is that.
    fn column(&self, b: &TValue) -> Option<Vec<f32>> {
        let packed = b.try_storage_as::<PackedMatrixStorage>().ok()?;
        if packed.values().len() != 1 {
            return None;
        }
        let value = packed.value().downcast_ref::<EagerPackedInput>()?;
        let format = value.fact.format.downcast_ref::<PackedFormat>()?;
        if format.dt != f32::datum_type() || format.r != 1 || value.mn != 1 || value.fact.k != self.k {
            return None;
        }
        let bytes = value.packed.get(..self.k * 4)?;
        Some(bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

impl Op for Q4MatVec {
    fn name(&self) -> StaticName {
        "Q4MatVec".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for Q4MatVec {
    tract_onnx::tract_core::not_out_of_plan!();

    /// tract keeps the wrapped op's scratch space per session and frees it here.
    fn drop_session(&self, session: SessionId, node_id: usize) {
        self.inner.drop_session(session, node_id)
    }

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let c_shape = self.inner.c_fact.shape.eval_to_usize(ctx.symbols)?;
        let one_column = c_shape.iter().product::<usize>() == self.m;
        if let Some(x) = inputs.get(self.b_input).filter(|_| one_column).and_then(|b| self.column(b)) {
            let mut c = vec![0f32; self.m.div_ceil(PANEL_ROWS) * PANEL_ROWS];
            let panels_bytes = &self.weight.packed[..self.m.div_ceil(PANEL_ROWS) * self.weight.panel_bytes];
            matvec(panels_bytes, self.k, &x, &mut c, super::spin_team::current().as_deref());
            c.truncate(self.m);
            return Ok(tvec!(Tensor::from_shape(&c_shape, &c)?.into_tvalue()));
        }
        self.inner.eval(ctx, inputs)
    }
}

impl TypedOp for Q4MatVec {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }

    tract_onnx::tract_core::as_op!();
}

fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Products with fewer multiply-adds than this stay on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// `out[r] = sum_k W[r][k] x[k]` over whole panels (`out.len()` a multiple of 32), the panels
/// shared out over `team` when there is one and the product is large enough.
fn matvec(panels: &[u8], k: usize, x: &[f32], out: &mut [f32], team: Option<&SpinTeam>) {
    let blocks = k / BLOCK;
    let panel_bytes = blocks * PANEL_BLOCK_BYTES;
    debug_assert_eq!(x.len(), k);
    debug_assert_eq!(panels.len(), out.len() / PANEL_ROWS * panel_bytes);
    // sum(nibble * x) - 8 * sum(x) per block: the offset leaves the inner loop.
    let block_sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
    let run = |panels: &[u8], out: &mut [f32]| {
        for (panel, rows) in panels.chunks_exact(panel_bytes).zip(out.chunks_exact_mut(PANEL_ROWS)) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature is present (checked) and the slices have the sizes above.
                unsafe { x86::panel_avx512(panel, x, &block_sums, rows) };
                continue;
            } else if kernel_available() {
                // SAFETY: as above.
                unsafe { x86::panel_avx2(panel, x, &block_sums, rows) };
                continue;
            }
            panel_scalar(panel, x, &block_sums, rows);
        }
    };
    match team {
        Some(team) if team.threads() > 1 && out.len() * k >= PARALLEL_MIN_MACS => {
            let n_panels = out.len() / PANEL_ROWS;
            let per_part = n_panels.div_ceil(team.threads());
            let parts: Vec<std::sync::Mutex<(&[u8], &mut [f32])>> = panels
                .chunks(per_part * panel_bytes)
                .zip(out.chunks_mut(per_part * PANEL_ROWS))
                .map(std::sync::Mutex::new)
                .collect();
            team.run(&|i| {
                if let Some(part) = parts.get(i) {
                    let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
                    let (panels, out) = &mut *part;
                    run(panels, out);
                }
            });
        }
        _ => run(panels, out),
    }
}

/// The reference: one panel, value by value.
fn panel_scalar(panel: &[u8], x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
    rows.fill(0.0);
    for (blk, (bytes, xs)) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).enumerate() {
        let (scales, nibbles) = bytes.split_at(PANEL_ROWS * 2);
        let mut acc = [0f32; PANEL_ROWS];
        for (pos, &xv) in xs.iter().enumerate() {
            for (j, &byte) in nibbles[pos * 16..][..16].iter().enumerate() {
                acc[j] += (byte & 0x0f) as f32 * xv;
                acc[j + 16] += (byte >> 4) as f32 * xv;
            }
        }
        for (r, out) in rows.iter_mut().enumerate() {
            let scale = f16::from_le_bytes([scales[2 * r], scales[2 * r + 1]]).to_f32();
            *out += (acc[r] - 8.0 * block_sums[blk]) * scale;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, PANEL_BLOCK_BYTES, PANEL_ROWS};
    use std::arch::x86_64::*;

    /// [`super::panel_avx2`] with sixteen rows per register: per position, 16 bytes widen to
    /// sixteen lanes whose low and high nibbles are rows 0..16 and 16..32. Two positions at a
    /// time, in separate accumulators, to keep both FMA units fed.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `panel` holds `x.len() / 32` blocks, `rows` 32 floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel_avx512(panel: &[u8], x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
        assert!(panel.len() == x.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
        let low = _mm512_set1_epi32(0x0f);
        let (mut out_lo, mut out_hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for ((bytes, xs), &block_sum) in
            panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums)
        {
            let (scales, nibbles) = bytes.split_at(PANEL_ROWS * 2);
            let mut acc = [_mm512_setzero_ps(); 4];
            for (pair, xs) in nibbles.chunks_exact(32).zip(xs.chunks_exact(2)) {
                // SAFETY: `pair` is 32 bytes long.
                let (v0, v1) = unsafe {
                    (
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(pair.as_ptr() as *const __m128i)),
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(pair.as_ptr().add(16) as *const __m128i)),
                    )
                };
                let (x0, x1) = (_mm512_set1_ps(xs[0]), _mm512_set1_ps(xs[1]));
                acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v0, low)), x0, acc[0]);
                acc[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v0)), x0, acc[1]);
                acc[2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v1, low)), x1, acc[2]);
                acc[3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v1)), x1, acc[3]);
            }
            let offset = _mm512_set1_ps(8.0 * block_sum);
            // SAFETY: `scales` is 64 bytes long: 32 f16.
            let (scale_lo, scale_hi) = unsafe {
                (
                    _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr() as *const __m256i)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(32) as *const __m256i)),
                )
            };
            let lo = _mm512_sub_ps(_mm512_add_ps(acc[0], acc[2]), offset);
            let hi = _mm512_sub_ps(_mm512_add_ps(acc[1], acc[3]), offset);
            out_lo = _mm512_fmadd_ps(lo, scale_lo, out_lo);
            out_hi = _mm512_fmadd_ps(hi, scale_hi, out_hi);
        }
        // SAFETY: `rows` is 32 floats long.
        unsafe {
            _mm512_storeu_ps(rows.as_mut_ptr(), out_lo);
            _mm512_storeu_ps(rows.as_mut_ptr().add(16), out_hi);
        }
    }

    /// [`super::panel_scalar`] with eight rows per register: per position, 16 bytes become
    /// 32 floats that meet the broadcast activation in four FMAs.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `panel` holds `x.len() / 32` blocks, `rows` 32 floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn panel_avx2(panel: &[u8], x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
        assert!(panel.len() == x.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
        let low = _mm256_set1_epi32(0x0f);
        let mut out = [_mm256_setzero_ps(); 4];
        for ((bytes, xs), &block_sum) in
            panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums)
        {
            let (scales, nibbles) = bytes.split_at(PANEL_ROWS * 2);
            let mut acc = [_mm256_setzero_ps(); 4];
            for (pos, xv) in nibbles.chunks_exact(16).zip(xs) {
                // Bytes 0..8 hold rows 0..8 (low nibbles) and 16..24 (high), bytes 8..16 the rest;
                // widened from memory, so that only the widening uses the shuffle port.
                // SAFETY: `pos` is 16 bytes long.
                let (a, b) = unsafe {
                    (
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(pos.as_ptr() as *const __m128i)),
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(pos.as_ptr().add(8) as *const __m128i)),
                    )
                };
                let xv = _mm256_set1_ps(*xv);
                let w0 = _mm256_cvtepi32_ps(_mm256_and_si256(a, low));
                let w1 = _mm256_cvtepi32_ps(_mm256_and_si256(b, low));
                let w2 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(a));
                let w3 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(b));
                acc[0] = _mm256_fmadd_ps(w0, xv, acc[0]);
                acc[1] = _mm256_fmadd_ps(w1, xv, acc[1]);
                acc[2] = _mm256_fmadd_ps(w2, xv, acc[2]);
                acc[3] = _mm256_fmadd_ps(w3, xv, acc[3]);
            }
            let offset = _mm256_set1_ps(8.0 * block_sum);
            for ((acc, out), scales) in acc.iter().zip(out.iter_mut()).zip(scales.chunks_exact(16)) {
                // SAFETY: `scales` is 16 bytes long: eight f16.
                let scale = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(scales.as_ptr() as *const __m128i) });
                *out = _mm256_fmadd_ps(_mm256_sub_ps(*acc, offset), scale, *out);
            }
        }
        for (out, rows) in out.iter().zip(rows.chunks_exact_mut(8)) {
            // SAFETY: `rows` is 8 floats long.
            unsafe { _mm256_storeu_ps(rows.as_mut_ptr(), *out) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_linalg::block_quant::BlockQuant;

    /// Q4_0 blocks of an `m x k` matrix in GGML's layout, and the values they stand for.
    fn random_q4(m: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let (mut bytes, mut values) = (vec![], vec![0f32; m * k]);
        for row in 0..m {
            for blk in 0..k / BLOCK {
                let scale = f16::from_f32((next() % 1000) as f32 / 20000.0 + 0.001);
                bytes.extend_from_slice(&scale.to_le_bytes());
                let nibbles: Vec<u8> = (0..BLOCK).map(|_| (next() % 16) as u8).collect();
                for j in 0..16 {
                    bytes.push(nibbles[j] | (nibbles[j + 16] << 4));
                }
                for (j, &q) in nibbles.iter().enumerate() {
                    values[row * k + blk * BLOCK + j] = (q as f32 - 8.0) * scale.to_f32();
                }
            }
        }
        (bytes, values)
    }

    /// Every kernel this CPU has, and the scalar reference, on tract's own packing of a weight,
    /// agree with the product computed in f64 from the values the GGML blocks stand for (padding
    /// rows included), and splitting the panels over two threads changes no sum.
    #[test]
    fn fused_product_equals_the_dequantized_product() -> TractResult<()> {
        for (m, k) in [(64, 64), (96, 576), (40, 128), (320, 576)] {
            let (ggml, values) = random_q4(m, k, (m * k) as u64);
            let packed = Q4_0.pack(&ggml, k, PANEL_ROWS, 16, false)?;
            let panels = m.div_ceil(PANEL_ROWS);
            assert_eq!(packed.panel_bytes, k / BLOCK * PANEL_BLOCK_BYTES);
            let x: Vec<f32> = (0..k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let expected: Vec<f64> =
                (0..m).map(|r| (0..k).map(|c| values[r * k + c] as f64 * x[c] as f64).sum()).collect();
            let mut fused = vec![0f32; panels * PANEL_ROWS];
            matvec(&packed.packed[..panels * packed.panel_bytes], k, &x, &mut fused, None);
            let block_sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
            let panel_bytes = packed.panel_bytes;
            let mut reference = vec![0f32; panels * PANEL_ROWS];
            for (p, rows) in reference.chunks_exact_mut(PANEL_ROWS).enumerate() {
                panel_scalar(&packed.packed[p * panel_bytes..][..panel_bytes], &x, &block_sums, rows);
            }
            let mut kernels = vec![("dispatched", fused), ("scalar", reference)];
            #[cfg(target_arch = "x86_64")]
            for (name, available, kernel) in [
                ("avx2", kernel_available(), x86::panel_avx2 as unsafe fn(&[u8], &[f32], &[f32], &mut [f32])),
                ("avx512", std::is_x86_feature_detected!("avx512f"), x86::panel_avx512),
            ] {
                if !available {
                    continue;
                }
                let mut rows = vec![0f32; panels * PANEL_ROWS];
                for (p, out) in rows.chunks_exact_mut(PANEL_ROWS).enumerate() {
                    // SAFETY: the features are present (checked) and the sizes are the kernels'.
                    unsafe { kernel(&packed.packed[p * panel_bytes..][..panel_bytes], &x, &block_sums, out) };
                }
                kernels.push((name, rows));
            }
            for (name, rows) in &kernels {
                for r in 0..m {
                    let tolerance = 1e-4 * (1.0 + expected[r].abs());
                    assert!(
                        (rows[r] as f64 - expected[r]).abs() < tolerance,
                        "{name}, {m}x{k} row {r}: {} vs {}",
                        rows[r],
                        expected[r]
                    );
                }
            }
            let team = SpinTeam::new(2)?;
            let mut shared = vec![0f32; panels * PANEL_ROWS];
            matvec(&packed.packed[..panels * packed.panel_bytes], k, &x, &mut shared, Some(&team));
            assert_eq!(shared, kernels[0].1, "split over two threads: the same sums");
        }
        Ok(())
    }
}
