//! Four gaps in tract 0.23.9's CPU code generation, worked around here until tract closes them
//! (the upstream fixes for the first two are in `patches/tract-0.23.9/`). Each is measured by `edgellm bench`
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
//! 3. **Rotary embedding.** tract-transformers' `ApplyRope` is evaluated as a rotate-half copy,
//!    two broadcasting multiplies and an add, the multiplies element by element (a tenth of a
//!    prefill chunk's time). [`fuse_rotary_embeddings`] swaps in [`FusedRope`], one pass over
//!    the rows.
//! 4. **Attention softmax.** tract-transformers' `ScaledMaskedSoftmax` multiplies the scores
//!    by the scale into one new tensor, adds the causal mask through a broadcasting add (element
//!    by element) into another, then runs the softmax. [`fuse_scaled_masked_softmaxes`] swaps
//!    in [`FusedScaledMaskedSoftmax`], which writes `scores * scale + mask` row by row into one
//!    buffer and runs tract's own softmax on it in place: the same arithmetic, bit for bit.

use std::sync::Arc;

use tract_linalg::BinFn;
use tract_linalg::multithread::BShare;
use tract_linalg::routines::Func;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedModelPatch, TypedOp};
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_transformers::ops::apply_rope::ApplyRope;
use tract_transformers::ops::scaled_masked_softmax::ScaledMaskedSoftmax;

use super::axis_chain::source_before_reshape;

/// Swaps the op of every node of type `Theirs` for the one `ours` makes of it, where it makes
/// one; returns how many were swapped. The passes here and in `q4_matvec` are all of this kind:
/// same inputs, same outputs, another implementation.
pub(super) fn replace_ops<Theirs: TypedOp, Ours: TypedOp>(
    model: &mut TypedModel,
    ours: impl Fn(&Theirs) -> Option<Ours>,
) -> usize {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        if let Some(op) = model.node(id).op_as::<Theirs>().and_then(&ours) {
            model.node_mut(id).op = Box::new(op);
            replaced += 1;
        }
    }
    replaced
}

/// Replaces tract-transformers' `ApplyRope` nodes by [`FusedRope`]; returns how many.
pub(super) fn fuse_rotary_embeddings(model: &mut TypedModel) -> usize {
    replace_ops(model, |_: &ApplyRope| Some(FusedRope))
}

/// `x * cos + rotate_half(x) * sin` in one pass per row of the last axis, `cos` and `sin`
/// broadcast to `x` (they are shared by the heads). Other types or shapes go to `ApplyRope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FusedRope;

impl Op for FusedRope {
    fn name(&self) -> StaticName {
        "FusedRope".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for FusedRope {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match rope_f32(&inputs)? {
            Some(out) => Ok(tvec!(out.into_tvalue())),
            None => ApplyRope.eval(ctx, inputs),
        }
    }
}

impl TypedOp for FusedRope {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    tract_onnx::tract_core::as_op!();
}

/// `None` when the inputs are not f32 of a broadcastable shape with an even last axis.
fn rope_f32(inputs: &[TValue]) -> TractResult<Option<Tensor>> {
    use tract_ndarray::Axis;
    let [x, cos, sin] = inputs else { return Ok(None) };
    if [x, cos, sin].iter().any(|t| t.datum_type() != f32::datum_type()) || x.rank() == 0 {
        return Ok(None);
    }
    let x = x.to_plain_array_view::<f32>()?;
    let (cos, sin) = (cos.to_plain_array_view::<f32>()?, sin.to_plain_array_view::<f32>()?);
    let (Some(cos), Some(sin)) = (cos.broadcast(x.shape()), sin.broadcast(x.shape())) else { return Ok(None) };
    let last = Axis(x.ndim() - 1);
    let width = x.len_of(last);
    if width == 0 || width % 2 != 0 {
        return Ok(None);
    }
    // `out` is filled row by row in `x`'s logical order, the order `lanes` walks.
    let mut out = vec![0f32; x.len()];
    let rows = x.lanes(last).into_iter().zip(cos.lanes(last)).zip(sin.lanes(last));
    for (o, ((x, c), s)) in out.chunks_exact_mut(width).zip(rows) {
        rope_row(o, &contiguous(x), &contiguous(c), &contiguous(s));
    }
    Ok(Some(tract_ndarray::ArrayD::from_shape_vec(x.shape(), out)?.into_tensor()))
}

/// A row as a slice: borrowed when contiguous (rows of `x`), else copied once (a broadcast
/// `cos`/`sin` row may not be).
fn contiguous<'a>(row: tract_ndarray::ArrayView1<'a, f32>) -> std::borrow::Cow<'a, [f32]> {
    match row.to_slice() {
        Some(slice) => slice.into(),
        None => row.to_vec().into(),
    }
}

/// One row: `out = x * cos + rotate_half(x) * sin`, `rotate_half(x) = [-x_hi, x_lo]`.
fn rope_row(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32]) {
    let half = out.len() / 2;
    let (out_lo, out_hi) = out.split_at_mut(half);
    let (x_lo, x_hi) = x.split_at(half);
    let (cos_lo, cos_hi) = cos.split_at(half);
    let (sin_lo, sin_hi) = sin.split_at(half);
    for i in 0..half {
        out_lo[i] = x_lo[i] * cos_lo[i] - x_hi[i] * sin_lo[i];
        out_hi[i] = x_hi[i] * cos_hi[i] + x_lo[i] * sin_hi[i];
    }
}

/// Replaces tract-transformers' `ScaledMaskedSoftmax` nodes by [`FusedScaledMaskedSoftmax`];
/// returns how many.
pub(super) fn fuse_scaled_masked_softmaxes(model: &mut TypedModel) -> usize {
    replace_ops(model, |op: &ScaledMaskedSoftmax| Some(FusedScaledMaskedSoftmax { inner: op.clone() }))
}

/// `softmax(scores * scale + mask)` over the last axis with an f32 mask broadcast to the scores,
/// in one buffer. A boolean mask or a post-softmax mask goes to the op it replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FusedScaledMaskedSoftmax {
    inner: ScaledMaskedSoftmax,
}

impl Op for FusedScaledMaskedSoftmax {
    fn name(&self) -> StaticName {
        "FusedScaledMaskedSoftmax".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for FusedScaledMaskedSoftmax {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let scale = self.inner.scale.cast_to_scalar::<f32>()?;
        let fused = if self.inner.post_softmax_mask { None } else { masked_scores_f32(&inputs, scale)? };
        match fused {
            Some(scores) => {
                let last_axis = scores.rank() - 1;
                Softmax::new(tvec!(last_axis), None, SoftmaxKind::Softmax).eval(ctx, tvec!(scores.into_tvalue()))
            }
            None => self.inner.eval(ctx, inputs),
        }
    }
}

impl TypedOp for FusedScaledMaskedSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }

    tract_onnx::tract_core::as_op!();
}

/// `scores * scale + mask`, row by row; `None` unless both are f32 and the mask broadcasts to
/// the scores. The product and the sum are rounded separately, as tract's two nodes round them.
fn masked_scores_f32(inputs: &[TValue], scale: f32) -> TractResult<Option<Tensor>> {
    use tract_ndarray::Axis;
    let [scores, mask] = inputs else { return Ok(None) };
    if [scores, mask].iter().any(|t| t.datum_type() != f32::datum_type()) || scores.rank() == 0 {
        return Ok(None);
    }
    let scores = scores.to_plain_array_view::<f32>()?;
    let mask = mask.to_plain_array_view::<f32>()?;
    let Some(mask) = mask.broadcast(scores.shape()) else { return Ok(None) };
    let last = Axis(scores.ndim() - 1);
    let width = scores.len_of(last);
    if width == 0 {
        return Ok(None);
    }
    let mut out = vec![0f32; scores.len()];
    let rows = scores.lanes(last).into_iter().zip(mask.lanes(last));
    for (o, (s, m)) in out.chunks_exact_mut(width).zip(rows) {
        for ((o, s), m) in o.iter_mut().zip(contiguous(s).iter()).zip(contiguous(m).iter()) {
            *o = s * scale + m;
        }
    }
    Ok(Some(tract_ndarray::ArrayD::from_shape_vec(scores.shape(), out)?.into_tensor()))
}

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
        let op = SameShapeBinary { binop, kernel: Arc::from(kernel), b_reshaped: false };
        model.node_mut(id).op = Box::new(op);
        replaced += 1;
    }
    Ok(replaced)
}

/// Lets each [`SameShapeBinary`] read its second operand from before a reshape-only axis chain
/// ([`source_before_reshape`]: a product's `(batch*sequence) x n` output unmerged to `batch x
/// sequence x n`, then added to the residual stream): the values are the same and in the same
/// order, so the chain's node leaves the plan (two a layer). Returns how many went.
pub(super) fn binaries_through_reshapes(model: &mut TypedModel) -> TractResult<usize> {
    let mut removed = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(bin) = node.op_as::<SameShapeBinary>() else { continue };
        let (Some(&a), Some(&chain_outlet)) = (node.inputs.first(), node.inputs.get(1)) else { continue };
        let Some(source) = source_before_reshape(model, chain_outlet) else { continue };
        if model.outlet_fact(source)?.datum_type != model.outlet_fact(a)?.datum_type {
            continue;
        }
        let op = SameShapeBinary { b_reshaped: true, ..bin.clone() };
        let name = format!("{}.direct", node.name);
        let mut patch = TypedModelPatch::default();
        let taps = [patch.tap_model(model, a)?, patch.tap_model(model, source)?];
        let out = patch.wire_node(name, op, &taps)?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), out)?;
        patch.apply(model)?;
        removed += 1;
    }
    Ok(removed)
}

/// `a op b` for two tensors of the same shape, by tract-linalg's vectorised kernel, in place
/// in `a` when nothing else holds it.
#[derive(Clone)]
pub(super) struct SameShapeBinary {
    binop: Box<dyn BinMiniOp>,
    kernel: Arc<BinFn>,
    /// `b` arrives in another shape with the same values in the same order (a product's
    /// output before its unmerge, [`binaries_through_reshapes`]); it takes `a`'s shape.
    b_reshaped: bool,
}

impl SameShapeBinary {
    pub(super) fn is_add(&self) -> bool {
        self.binop.name() == "Add"
    }
}

impl std::fmt::Debug for SameShapeBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SameShapeBinary({})", self.binop.name())
    }
}

impl PartialEq for SameShapeBinary {
    fn eq(&self, other: &Self) -> bool {
        self.binop.name() == other.binop.name() && self.b_reshaped == other.b_reshaped
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
        let b = if self.b_reshaped && b.shape() != a.shape() {
            anyhow::ensure!(b.len() == a.len(), "{} values against {}", b.len(), a.len());
            let mut b = b.into_tensor();
            b.set_shape(a.shape())?;
            b.into_tvalue()
        } else {
            b
        };
        if !elementwise_as_slices(&a, &b) {
            let dt = self.binop.result_datum_type(a.datum_type(), b.datum_type())?;
            return Ok(tvec!(self.binop.eval(a, b, dt)?.into_tvalue()));
        }
        let mut a = a.into_tensor();
        tract_linalg::multithread::par_bin(&*self.kernel, &mut a, &b, b.len(), BShare::Lockstep)?;
        Ok(tvec!(a.into_tvalue()))
    }
}

/// Whether `a` and `b` are the same shape and type laid out alike in one block each, so that
/// the kernel can take them as two flat slices (see [`is_natural`]: tract's AddAxis leaves
/// odd strides on unit axes).
fn elementwise_as_slices(a: &Tensor, b: &Tensor) -> bool {
    a.shape() == b.shape() && a.datum_type() == b.datum_type() && is_natural(a) && is_natural(b)
}

/// Whether `t`'s elements lie in one block in row-major order, so that it can be read as a
/// flat slice; an axis of length one may have any stride.
pub(super) fn is_natural(t: &Tensor) -> bool {
    let mut strides = t.shape().iter().zip(t.strides()).zip(Tensor::natural_strides(t.shape()));
    t.len() == t.shape().iter().product::<usize>() && strides.all(|((&dim, &s), n)| dim == 1 || s == n)
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

    /// The vectorised f32 add, as [`vectorize_same_shape_binaries`] builds it.
    fn same_shape_add(b_reshaped: bool) -> SameShapeBinary {
        let binop = add().0;
        let linalg_op = binop.as_linalg_binop().expect("add has a kernel");
        let kernel = Func::BinUnicast(linalg_op).bin(f32::datum_type()).expect("an f32 kernel");
        SameShapeBinary { binop, kernel: Arc::from(kernel), b_reshaped }
    }

    /// A tensor whose axis of length one has an odd stride, as tract's AddAxis leaves it, still
    /// goes to the vectorised kernel (the residual adds of a prompt chunk did not, and took five
    /// times longer), and the sum is right; two shapes that differ do not.
    #[test]
    fn odd_strides_on_unit_axes_stay_on_the_vectorised_path() -> TractResult<()> {
        let op = same_shape_add(false);
        let values = |shape: &[usize], seed: f32| -> TractResult<Tensor> {
            Tensor::from_shape(shape, &(0..48).map(|i| seed + i as f32).collect::<Vec<_>>())
        };
        let a = values(&[1, 6, 8], 0.5)?;
        let mut b = values(&[6, 8], -2.0)?;
        b.insert_axis(0)?;
        assert_eq!(b.strides(), &[8, 8, 1]);
        assert!(elementwise_as_slices(&a, &b) && elementwise_as_slices(&b, &a));
        assert!(!elementwise_as_slices(&a, &values(&[6, 8], 0.0)?));
        let expected: Vec<f32> = (0..48).map(|i| (0.5 + i as f32) + (-2.0 + i as f32)).collect();
        let out = op.eval(&EvalContext::out_of_plan(), tvec!(b.into_tvalue(), a.into_tvalue()))?.remove(0);
        assert_eq!(out.to_plain_array_view::<f32>()?.iter().copied().collect::<Vec<_>>(), expected);
        Ok(())
    }

    /// A second operand in another shape with as many values (here flat, which no broadcast
    /// would take) is added value by value, in `a`'s shape; one with another number of values
    /// is an error.
    #[test]
    fn a_reshaped_second_operand_adds_value_by_value() -> TractResult<()> {
        let op = same_shape_add(true);
        let values = |shape: &[usize], seed: f32| -> TractResult<Tensor> {
            let n: usize = shape.iter().product();
            Tensor::from_shape(shape, &(0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect::<Vec<_>>())
        };
        let (a, b) = (values(&[1, 6, 8], 0.5)?, values(&[48], 3.0)?);
        let flat =
            |t: &Tensor| -> TractResult<Vec<f32>> { Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect()) };
        let expected: Vec<f32> = flat(&a)?.iter().zip(flat(&b)?).map(|(x, y)| x + y).collect();
        let ctx = EvalContext::out_of_plan();
        let out = op.eval(&ctx, tvec!(a.clone().into_tvalue(), b.into_tvalue()))?.remove(0);
        assert_eq!(out.shape(), &[1, 6, 8]);
        assert_eq!(flat(&out.into_tensor())?, expected);
        assert!(op.eval(&ctx, tvec!(a.into_tvalue(), values(&[40], 0.0)?.into_tvalue())).is_err());
        Ok(())
    }

    /// The fused rotary embedding equals tract-transformers' own, with `cos`/`sin` shared by the
    /// heads as in the model.
    #[test]
    fn fused_rope_equals_apply_rope() -> TractResult<()> {
        let values = |shape: &[usize], seed: f32| {
            let n: usize = shape.iter().product();
            Tensor::from_shape(shape, &(0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect::<Vec<_>>())
        };
        let inputs = tvec!(
            values(&[1, 3, 5, 8], 0.0)?.into_tvalue(),
            values(&[1, 1, 5, 8], 1.0)?.into_tvalue(),
            values(&[1, 1, 5, 8], 2.0)?.into_tvalue()
        );
        let ctx = EvalContext::out_of_plan();
        let ours = FusedRope.eval(&ctx, inputs.clone())?.remove(0);
        let theirs = ApplyRope.eval(&ctx, inputs)?.remove(0);
        assert_eq!(ours.shape(), theirs.shape());
        let flat =
            |t: &TValue| -> TractResult<Vec<f32>> { Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect()) };
        for (a, b) in flat(&ours)?.iter().zip(flat(&theirs)?) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
        Ok(())
    }
    /// The fused softmax equals tract-transformers' own bit for bit, with the mask broadcast over
    /// the heads and fully masked positions, as the causal mask of the model has.
    #[test]
    fn fused_scaled_masked_softmax_equals_scaled_masked_softmax() -> TractResult<()> {
        let (heads, rows, cols) = (3, 5, 7);
        let scores: Vec<f32> = (0..heads * rows * cols).map(|i| (i as f32 * 0.731).sin() * 4.0).collect();
        let mask: Vec<f32> =
            (0..rows * cols).map(|i| if i % cols > i / cols + 2 { f32::NEG_INFINITY } else { 0.0 }).collect();
        let inputs = tvec!(
            Tensor::from_shape(&[1, heads, rows, cols], &scores)?.into_tvalue(),
            Tensor::from_shape(&[1, 1, rows, cols], &mask)?.into_tvalue()
        );
        let theirs = ScaledMaskedSoftmax { scale: Arc::new(tensor0(0.125f32)), post_softmax_mask: false };
        let ours = FusedScaledMaskedSoftmax { inner: theirs.clone() };
        let ctx = EvalContext::out_of_plan();
        let expected = theirs.eval(&ctx, inputs.clone())?.remove(0);
        let got = ours.eval(&ctx, inputs)?.remove(0);
        assert_eq!(got.shape(), expected.shape());
        let bits = |t: &TValue| -> TractResult<Vec<u32>> {
            Ok(t.to_plain_array_view::<f32>()?.iter().map(|v| v.to_bits()).collect())
        };
        assert_eq!(bits(&got)?, bits(&expected)?);
        let masked = got.to_plain_array_view::<f32>()?.iter().filter(|v| **v == 0.0).count();
        assert!(masked > 0, "the mask hides some positions");
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
