//! Two gaps in tract 0.23.9's CPU code generation, worked around here until tract closes them
//! (the upstream fixes are in `patches/tract-0.23.9/`). Each is measured by `edgellm bench`
//! (see the README's performance section).
//!
//! 1. **4-bit prefill on x86_64.** tract keeps a Q4_0 weight packed for its 32x1
//!    matrix-vector kernel and ships a panel extractor that unpacks such a panel to f32 for the
//!    wider kernels. But the extractor's output is declared with a 32-byte alignment and the
//!    kernels' f32 packing with 256 (fma) or 512 (avx512), so they never match and every prompt
//!    token runs through the 32x1 kernel on its own. Registering the same extractor with the
//!    kernels' alignments (an over-aligned scratch panel, the same bytes) lets tract pick 32x1
//!    for one token and a 32x3..32x6 tile for a chunk, unpacking each panel once.
//!    aarch64 needs nothing: there the extractor and the kernels already agree.
//! 2. **Element-wise nodes on symbolic shapes.** tract replaces a binary node by its
//!    vectorised kernel only when it can prove the tensor has at least 32 elements, which it
//!    cannot for `sequence_length x 1536`; such nodes (residual adds, the gated MLP's product,
//!    the 4-bit zero-point correction) then run one scalar closure call per element.
//!    [`vectorize_same_shape_binaries`] swaps in the vectorised kernel where both operands
//!    have the same shape.

use std::sync::Arc;

use tract_linalg::BinFn;
use tract_linalg::multithread::BShare;
use tract_linalg::routines::Func;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedOp};
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};

/// Replaces same-shape float binary nodes of an optimised model by [`SameShapeBinary`];
/// returns how many were replaced.
pub(super) fn vectorize_same_shape_binaries(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let Some(bin) = model.node(id).op_as::<TypedBinOp>() else { continue };
        let (Some(linalg_op), None) = (bin.0.as_linalg_binop(), bin.1) else { continue };
        let facts = model.node_input_facts(id)?;
        let &[a, b] = &facts[..] else { continue };
        let dt = a.datum_type;
        if a.shape != b.shape || b.datum_type != dt || !dt.is_float() || bin.0.result_datum_type(dt, dt)? != dt {
            continue;
        }
        let binop = bin.0.clone();
        drop(facts);
        let Some(kernel) = Func::BinUnicast(linalg_op).bin(dt) else { continue };
        let op = SameShapeBinary { binop, kernel: Arc::from(kernel) };
        model.node_mut(id).op = Box::new(op);
        replaced += 1;
    }
    Ok(replaced)
}

/// `a op b` for two tensors of the same shape, by tract-linalg's vectorised kernel, in place
/// in `a` when nothing else holds it.
#[derive(Clone)]
pub(super) struct SameShapeBinary {
    binop: Box<dyn BinMiniOp>,
    kernel: Arc<BinFn>,
}

impl std::fmt::Debug for SameShapeBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SameShapeBinary({})", self.binop.name())
    }
}

impl PartialEq for SameShapeBinary {
    fn eq(&self, other: &Self) -> bool {
        self.binop.name() == other.binop.name()
    }
}

impl Eq for SameShapeBinary {}

impl Op for SameShapeBinary {
    fn name(&self) -> StaticName {
        format!("SameShape{}", self.binop.name()).into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for SameShapeBinary {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [a, b]: [TValue; 2] =
            inputs.into_iter().collect::<Vec<_>>().try_into().map_err(|_| anyhow::anyhow!("two inputs expected"))?;
        let natural = |t: &Tensor| {
            t.len() == t.shape().iter().product::<usize>() && *t.strides() == *Tensor::natural_strides(t.shape())
        };
        if a.shape() != b.shape() || a.datum_type() != b.datum_type() || !natural(&a) || !natural(&b) {
            let dt = self.binop.result_datum_type(a.datum_type(), b.datum_type())?;
            return Ok(tvec!(self.binop.eval(a, b, dt)?.into_tvalue()));
        }
        let mut a = a.into_tensor();
        tract_linalg::multithread::par_bin(&*self.kernel, &mut a, &b, b.len(), BShare::Lockstep)?;
        Ok(tvec!(a.into_tvalue()))
    }
}

impl TypedOp for SameShapeBinary {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    tract_onnx::tract_core::as_op!();
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use tract_linalg::isa::Arch;
    use tract_linalg::mmm::PanelExtractor;
    use tract_linalg::mmm_routines::MmmExtractor;
    use tract_linalg::pack::Packing;

    /// tract's Q4_0 -> f32 extractor, its output declared with `alignment`.
    fn q40_to_f32_aligned(alignment: usize) -> PanelExtractor {
        let mut extractor = tract_linalg::x86_64::panel_extract::packed_32_q40_to_f32.clone();
        extractor.name = format!("edgellm_packed_32_q40_to_f32_a{alignment}");
        extractor.to = f32::packing(32).align(alignment);
        extractor
    }

    // The fma kernels (`fma_mmm_f32_32x3`) pack f32 weights at 256 bytes, the avx512 ones
    // (`avx512_mmm_f32_32x6`) at 512.
    inventory::submit! { MmmExtractor { target: Arch::X86_64, make: || q40_to_f32_aligned(256) } }
    inventory::submit! { MmmExtractor { target: Arch::X86_64, make: || q40_to_f32_aligned(512) } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::{add, mul};

    /// An add and a multiply of `[S, 64]` tensors: tract leaves both generic, the pass swaps in
    /// the vectorised kernel, and the answers stay exact.
    #[test]
    fn same_shape_binaries_are_vectorized_and_exact() -> TractResult<()> {
        let mut model = TypedModel::default();
        let s = model.symbols.sym("S");
        let fact = f32::fact([s.to_dim(), 64.to_dim()]);
        let a = model.add_source("a", fact.clone())?;
        let b = model.add_source("b", fact)?;
        let sum = model.wire_node("sum", add(), &[a, b])?[0];
        let product = model.wire_node("product", mul(), &[sum, b])?[0];
        model.select_output_outlets(&[product])?;
        let mut model = model.into_optimized()?;
        assert_eq!(vectorize_same_shape_binaries(&mut model)?, 2);
        let values =
            |seed: f32| Tensor::from_shape(&[5, 64], &(0..320).map(|i| seed + i as f32 * 0.25).collect::<Vec<_>>());
        let (a, b) = (values(1.0)?, values(-3.0)?);
        let out = model.into_runnable()?.run(tvec!(a.clone().into_tvalue(), b.clone().into_tvalue()))?;
        let flat =
            |t: &Tensor| -> TractResult<Vec<f32>> { Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect()) };
        let expected: Vec<f32> = flat(&a)?.iter().zip(flat(&b)?).map(|(x, y)| (x + y) * y).collect();
        assert_eq!(flat(&out[0])?, expected);
        Ok(())
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod x86_64_tests {
    use tract_linalg::WeightType;
    use tract_linalg::block_quant::Q4_0;
    use tract_linalg::mmm::Query;
    use tract_onnx::prelude::*;

    /// Without the extractor the only fast kernel for a Q4_0 weight is the 32x1 matrix-vector
    /// one; with it, a kernel that multiplies several prompt tokens per pass is on offer.
    #[test]
    fn a_q4_weight_can_use_a_multi_column_kernel() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let query = Query {
            weight: WeightType::BlockQuant(Box::new(Q4_0)),
            activation: f32::datum_type(),
            accumulators: tvec!(f32::datum_type()),
            store: Some(f32::datum_type()),
            allow_extractor: true,
            m: Some(576),
            k: Some(576),
            n: Some(64),
        };
        let suitable = tract_linalg::MmmDispatch::native().suitable(&query);
        let wide: Vec<String> = suitable
            .iter()
            .filter(|(kernel, _, _)| kernel.nr() > 1 && kernel.arch().is_some())
            .map(|(kernel, _, _)| kernel.name().to_string())
            .collect();
        assert!(wide.iter().any(|name| name.starts_with("fma_mmm_f32_32x")), "wide kernels for Q4_0: {wide:?}");
    }
}
