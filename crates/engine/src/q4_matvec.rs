//! The tract op for the fused 4-bit products over tract's packed Q4_0 weights.
//!
//! tract multiplies a Q4_0 weight by one token's activations in two passes per panel of 32
//! rows: its extractor unpacks the panel to f32 in a scratch buffer, then the 32x1 f32 kernel
//! reads it back. On a decode step these products are three quarters of the time.
//! [`accelerate_q4_matvecs`] wraps each in [`Q4MatVec`], which hands tract's own packed panels
//! and packed activations to [`edgellm_kernels::q4::product`] (one column with AVX2, AVX-512
//! or NEON, several with AVX-512 or NEON, shared out over the `SpinTeam`). Anything else goes
//! to the wrapped tract op unchanged, and so does everything on other CPUs (armv7, or x86_64
//! without AVX2). tract packs the panels with the scales first on x86_64 and last on aarch64
//! (`scales_at_end`); the wrap takes either. The weights are not copied.

use edgellm_kernels::Isa;
use edgellm_kernels::q4::{BLOCK, Columns, Outputs, PANEL_BLOCK_BYTES, PANEL_ROWS, Scales, product};
use edgellm_kernels::spin_team;
use tract_linalg::block_quant::{PackedBlockQuantFormat, Q4_0};
use tract_linalg::mmm::{EagerPackedInput, PackedMatrixStorage};
use tract_linalg::pack::PackedFormat;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, SessionId, StaticName, TypedOp};
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

/// Wraps every 4-bit weight product the fused kernels can take; returns how many.
pub(super) fn accelerate_q4_matvecs(model: &mut TypedModel) -> usize {
    if !kernel_available() {
        return 0;
    }
    super::tuning::replace_ops(model, Q4MatVec::wrap)
}

/// One product `c = W x` with a constant Q4_0 weight `W` (`m x k`, packed by tract) and the
/// activations as input `b`; what the fused kernels do not take goes to `inner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Q4MatVec {
    inner: OptMatMul,
    weight: EagerPackedInput,
    scales: Scales,
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
        let scales = [Scales::First, Scales::Last]
            .into_iter()
            .find(|s| *format == PackedBlockQuantFormat::new(&Q4_0, PANEL_ROWS, 16, s.at_end()))?;
        let (m, k) = (weight.mn, weight.fact.k);
        let panels = m.div_ceil(PANEL_ROWS);
        if m == 0
            || k % BLOCK != 0
            || weight.panel_bytes != k / BLOCK * PANEL_BLOCK_BYTES
            || weight.packed.len() < panels * weight.panel_bytes
        {
            return None;
        }
        Some(Q4MatVec { inner: op.clone(), weight: weight.clone(), scales, b_input: *b_input, m, k })
    }

    /// The activations in place, if `b` holds one f32 matrix packed by tract (panels of `r`
    /// columns, each `k` steps of `r` floats) and `wanted(n)`.
    fn columns<'a>(&self, b: &'a TValue, wanted: impl Fn(usize) -> bool) -> Option<Columns<'a>> {
        let packed = b.try_storage_as::<PackedMatrixStorage>().ok()?;
        if packed.values().len() != 1 {
            return None;
        }
        let value = packed.value().downcast_ref::<EagerPackedInput>()?;
        let format = value.fact.format.downcast_ref::<PackedFormat>()?;
        let (n, r, k) = (value.mn, format.r, value.fact.k);
        if format.dt != f32::datum_type() || k != self.k || r == 0 || n == 0 || !wanted(n) {
            return None;
        }
        if value.panel_bytes % 4 != 0 || value.packed.len() < n.div_ceil(r) * value.panel_bytes {
            return None;
        }
        let bytes = &value.packed[..n.div_ceil(r) * value.panel_bytes];
        Columns::from_bytes(bytes, n, k, r, value.panel_bytes / 4)
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
        let team = spin_team::current();
        let wanted = |n| self.handles(&c_shape, n);
        if let Some(columns) = inputs.get(self.b_input).and_then(|b| self.columns(b, wanted)) {
            let n = columns.len();
            let panels = &self.weight.packed[..self.m.div_ceil(PANEL_ROWS) * self.weight.panel_bytes];
            let strides = Tensor::natural_strides(&c_shape);
            let stride_of = |axis: Option<usize>| axis.map(|ax| strides[ax] as usize).unwrap_or(0);
            let mut c = Tensor::zero::<f32>(&c_shape)?;
            let mut view = c.try_as_plain_ram_mut()?;
            let outputs = Outputs::new(
                view.as_slice_mut::<f32>()?,
                self.m,
                n,
                stride_of(self.inner.c_m_axis),
                stride_of(self.inner.c_n_axis),
            );
            product(panels, self.scales, &columns, &outputs, team.as_deref(), Isa::current());
            return Ok(tvec!(c.into_tvalue()));
        }
        self.inner.eval(ctx, inputs)
    }
}

impl Q4MatVec {
    /// Whether the fused kernels take a product of `n` columns into an output of `c_shape`
    /// (nothing but m and n in it): one column always; several with AVX-512. On one thread
    /// tract's own tiles took a 77-token prompt as fast and a 20-token question 8% slower
    /// (3 alternating rounds); they gained nothing from a second thread, and ours do.
    fn handles(&self, c_shape: &[usize], n: usize) -> bool {
        let several_ok = wide_kernel_available();
        let m_ok = self.inner.c_m_axis.is_some_and(|ax| c_shape.get(ax) == Some(&self.m));
        let n_ok = match self.inner.c_n_axis {
            Some(ax) => c_shape.get(ax) == Some(&n),
            None => n == 1,
        };
        m_ok && n_ok && c_shape.iter().product::<usize>() == self.m * n && (n == 1 || several_ok)
    }
}

impl TypedOp for Q4MatVec {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }

    tract_onnx::tract_core::as_op!();
}

fn kernel_available() -> bool {
    Isa::current().fused_q4_decode()
}

/// Whether this CPU has the kernel for several columns (a prompt chunk).
pub(super) fn wide_kernel_available() -> bool {
    Isa::current().fused_q4_chunks()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgellm_kernels::q4::layout;
    use tract_linalg::block_quant::BlockQuant;

    /// The kernels read tract's packing as `layout::pack` writes it, with the scales first
    /// (x86_64's f32 kernels) or last (aarch64's): the two agree byte for byte on real rows.
    /// (The wrap refuses any other format.)
    #[test]
    fn tract_packs_q4_0_as_the_kernels_read_it() -> TractResult<()> {
        for ((m, k), placement) in
            [(64, 64), (40, 128), (96, 576)].into_iter().flat_map(|mk| [Scales::First, Scales::Last].map(|s| (mk, s)))
        {
            let (ggml, _) = layout::example(m, k, 7);
            let packed = Q4_0.pack(&ggml, k, PANEL_ROWS, 16, placement.at_end())?;
            let panels = m.div_ceil(PANEL_ROWS);
            assert_eq!(packed.panel_bytes, k / BLOCK * PANEL_BLOCK_BYTES);
            let ours = layout::pack(&ggml, m, k, placement);
            let theirs = &packed.packed[..panels * packed.panel_bytes];
            // tract's padding rows may hold anything: compare the scales and nibbles of real rows.
            for (p, (a, b)) in
                ours.chunks_exact(packed.panel_bytes).zip(theirs.chunks_exact(packed.panel_bytes)).enumerate()
            {
                let rows = PANEL_ROWS.min(m - p * PANEL_ROWS);
                if rows == PANEL_ROWS {
                    assert_eq!(a, b, "{placement:?} {m}x{k} panel {p}");
                    continue;
                }
                for (blk, (a, b)) in
                    a.chunks_exact(PANEL_BLOCK_BYTES).zip(b.chunks_exact(PANEL_BLOCK_BYTES)).enumerate()
                {
                    let ((a_scales, a), (b_scales, b)) = (placement.split(a), placement.split(b));
                    assert_eq!(a_scales[..2 * rows], b_scales[..2 * rows], "{m}x{k} panel {p} block {blk} scales");
                    for pos in 0..BLOCK {
                        for r in 0..rows {
                            let (slot, shift) = (pos * 16 + r % 16, if r < 16 { 0 } else { 4 });
                            assert_eq!(
                                (a[slot] >> shift) & 15,
                                (b[slot] >> shift) & 15,
                                "{placement:?} {m}x{k} p{p} b{blk} pos {pos} row {r}"
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
