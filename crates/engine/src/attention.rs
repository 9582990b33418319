//! A layer's attention as one op: `softmax(q k^T * scale + mask) v` for every head.
//!
//! tract runs it as two matrix products around the softmax, each with its operands packed for
//! the product kernels first. For a decode step that is one query row against the cached keys:
//! the packing copies the whole KV cache twice per layer and the products run kernels tiled
//! for wide matrices on a 3 x T one, so attention took as long as all the 4-bit weight products
//! together (about 96 us a layer at 109 cached tokens, on 2 threads). [`FusedAttention`] reads
//! the cache where it lies: a query row meets four keys at a time in a decode step (7 us for
//! all nine heads), and in a prompt chunk the keys are transposed once so that a row meets up
//! to 128 at a time; the heads of a chunk are shared out over the [`SpinTeam`]. The softmax
//! is tract's own row kernel.
//!
//! This file holds the tract side: the graph pass, the op, its NNEF form. The per-head
//! kernels are in [`edgellm_kernels::attention`]: AVX-512, AVX2 and NEON; on other CPUs
//! (x86 without AVX2, armv7) the pass leaves the graph to tract. A head size the vector paths
//! do not take (x86: not a multiple of 8) runs the kernels' reference.

use edgellm_kernels::Isa;
use edgellm_kernels::attention::{Head, RowSoftmax, Scratch};
use edgellm_kernels::spin_team::{self, SpinTeam};
use tract_linalg::element_wise::ElementWise;
use tract_linalg::reduce::{MapReduce, Reduce};
use tract_linalg::routines::Func;
use tract_nnef::internal::{
    IntoAst, ModelBuilder, RValue, Registry, ResolvedInvocation, TypeName, Value, invocation, numeric,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedModelPatch, TypedOp};
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_transformers::ops::scaled_masked_softmax::ScaledMaskedSoftmax;

/// Scores of the query heads of a group against its shared keys (GQA), then the weighted
/// values: the two products of the graph our converter (and tract's decluttering) produces.
const SCORES: &str = "abcmk,abnk->abcmn";
const WEIGHTED_VALUES: &str = "abcmk,abkn->abcmn";

/// Replaces each `EinSum -> ScaledMaskedSoftmax -> EinSum` chain of a decluttered model by
/// [`FusedAttention`]; returns how many. To run before `optimize`, which would turn the
/// products into packed matrix products, and before the model is kept as NNEF (whose
/// products come back as reshapes around a matrix product): [`nnef_registry`] keeps the op.
pub(super) fn fuse_attention(model: &mut TypedModel) -> TractResult<usize> {
    if !kernel_available() {
        return Ok(0);
    }
    let mut fused = 0;
    for softmax_id in 0..model.nodes().len() {
        let Some(chain) = attention_chain(model, softmax_id)? else { continue };
        let mut patch = TypedModelPatch::default();
        let mut taps = TVec::new();
        for outlet in [chain.q, chain.k, chain.v, chain.mask] {
            taps.push(patch.tap_model(model, outlet)?);
        }
        let name = format!("{}.fused_attention", model.node(chain.output.node).name);
        if let Some(slice) = chain.row_slice {
            // Only these query rows are wanted: the same rows of the queries and of the mask.
            for (input, which) in [(0, "q"), (3, "mask")] {
                taps[input] = patch.wire_node(format!("{name}.{which}_rows"), slice.clone(), &[taps[input]])?[0];
            }
        }
        let op = FusedAttention { softmax: chain.softmax };
        let out = patch.wire_node(name, op, &taps)?[0];
        patch.shunt_outside(model, chain.output, out)?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

/// NNEF for [`FusedAttention`], so that the compiled-model cache keeps it.
pub(super) fn nnef_registry() -> Registry {
    let mut registry = Registry::new("edgellm").with_doc("edgellm's fused operators");
    registry.register_dumper(ser_fused_attention);
    registry.register_primitive(
        "edgellm_fused_attention",
        &[
            TypeName::Scalar.tensor().named("q"),
            TypeName::Scalar.tensor().named("k"),
            TypeName::Scalar.tensor().named("v"),
            TypeName::Scalar.tensor().named("mask"),
            TypeName::Scalar.named("scale"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        de_fused_attention,
    );
    registry
}

fn ser_fused_attention(ast: &mut IntoAst, node: &TypedNode, op: &FusedAttention) -> TractResult<Option<Arc<RValue>>> {
    let inputs: Vec<Arc<RValue>> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
    let scale = op.softmax.scale.cast_to_scalar::<f32>()?;
    Ok(Some(invocation("edgellm_fused_attention", &inputs, &[("scale", numeric(scale))])))
}

fn de_fused_attention(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let inputs: Vec<OutletId> = ["q", "k", "v", "mask"]
        .iter()
        .map(|name| invocation.named_arg_as(builder, name))
        .collect::<TractResult<_>>()?;
    let scale: Arc<Tensor> = invocation.named_arg_as(builder, "scale")?;
    let softmax = ScaledMaskedSoftmax { scale, post_softmax_mask: false };
    builder.wire(FusedAttention { softmax }, &inputs)
}

struct Chain {
    /// A slice of the query rows between the softmax and the weighted values (the last
    /// layer's, where only the last position's logits are computed).
    row_slice: Option<Slice>,
    q: OutletId,
    k: OutletId,
    v: OutletId,
    mask: OutletId,
    softmax: ScaledMaskedSoftmax,
    output: OutletId,
}

/// The chain around the softmax node `softmax_id`, if it is one: f32 products with the
/// expected axes, an additive mask, and nothing else reading the scores or the weights.
fn attention_chain(model: &TypedModel, softmax_id: usize) -> TractResult<Option<Chain>> {
    let node = model.node(softmax_id);
    let Some(softmax) = node.op_as::<ScaledMaskedSoftmax>() else { return Ok(None) };
    if softmax.post_softmax_mask || softmax.scale.len() != 1 || node.inputs.len() != 2 {
        return Ok(None);
    }
    let einsum = |id: usize, axes: &str| {
        let node = model.node(id);
        node.op_as::<EinSum>()
            .filter(|op| op.q_params.is_none() && op.operating_dt == f32::datum_type() && op.axes.to_string() == axes)
            .is_some()
            && node.inputs.len() == 2
    };
    let scores = node.inputs[0];
    let single_reader = |outlet: OutletId| model.outlet_successors(outlet).len() == 1;
    if !einsum(scores.node, SCORES) || !single_reader(scores) || !single_reader(OutletId::new(softmax_id, 0)) {
        return Ok(None);
    }
    let mut weighted = model.outlet_successors(OutletId::new(softmax_id, 0))[0];
    let mut row_slice = None;
    if let Some(slice) = model.node(weighted.node).op_as::<Slice>() {
        let rows_axis = 3;
        let rows = |outlet: OutletId| model.outlet_fact(outlet).map(|f| f.shape.get(rows_axis).cloned());
        let same_rows = rows(scores)? == rows(node.inputs[1])?;
        let sliced = OutletId::new(weighted.node, 0);
        if slice.axis != rows_axis || !same_rows || !single_reader(sliced) {
            return Ok(None);
        }
        row_slice = Some(slice.clone());
        weighted = model.outlet_successors(sliced)[0];
    }
    let mask = node.inputs[1];
    let all_f32 = [model.node(scores.node).inputs[0], model.node(scores.node).inputs[1], mask]
        .iter()
        .chain(&model.node(weighted.node).inputs)
        .map(|o| model.outlet_fact(*o).map(|f| f.datum_type == f32::datum_type()))
        .collect::<TractResult<Vec<_>>>()?;
    if all_f32.contains(&false) {
        return Ok(None);
    }
    Ok(Some(Chain {
        row_slice,
        q: model.node(scores.node).inputs[0],
        k: model.node(scores.node).inputs[1],
        v: model.node(weighted.node).inputs[1],
        mask,
        softmax: softmax.clone(),
        output: OutletId::new(weighted.node, 0),
    }))
}

/// Inputs `q` `[B, H, G, S, D]` (G query heads per key head), `k` and `v` `[B, H, T, D]`, an
/// f32 `mask` `[1 or B, 1, 1, S, T]`; output `[B, H, G, S, D]`. Other shapes go through the
/// three ops it replaced, evaluated as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FusedAttention {
    softmax: ScaledMaskedSoftmax,
}

impl Op for FusedAttention {
    fn name(&self) -> StaticName {
        "FusedAttention".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for FusedAttention {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let scale = self.softmax.scale.cast_to_scalar::<f32>()?;
        if let Some(out) = fused_f32(&inputs, scale)? {
            return Ok(tvec!(out.into_tvalue()));
        }
        let [q, k, v, mask]: [TValue; 4] =
            inputs.into_iter().collect::<Vec<_>>().try_into().map_err(|_| anyhow::anyhow!("four inputs expected"))?;
        let einsum = |axes: &str| -> TractResult<EinSum> { Ok(EinSum::new(axes.parse()?, f32::datum_type())) };
        let scores = einsum(SCORES)?.eval(ctx, tvec!(q, k))?.remove(0);
        let weights = self.softmax.eval(ctx, tvec!(scores, mask))?.remove(0);
        einsum(WEIGHTED_VALUES)?.eval(ctx, tvec!(weights, v))
    }
}

impl TypedOp for FusedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    tract_onnx::tract_core::as_op!();
}

/// The layout the kernel reads, or `None` (then the caller takes the slow path).
struct Shapes {
    batch: usize,
    kv_heads: usize,
    group: usize,
    rows: usize,
    keys: usize,
    dim: usize,
    mask_per_batch: bool,
}

fn shapes(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Option<Shapes> {
    let (&[batch, kv_heads, group, rows, dim], &[kb, kh, keys, kd], &[mb, 1, 1, mr, mk]) =
        (q.shape(), k.shape(), mask.shape())
    else {
        return None;
    };
    let ok = [q, k, v, mask].iter().all(|t| t.datum_type() == f32::datum_type() && super::tuning::is_natural(t))
        && (kb, kh, kd) == (batch, kv_heads, dim)
        && v.shape() == k.shape()
        && (mb == 1 || mb == batch)
        && (mr, mk) == (rows, keys)
        && rows > 0
        && keys > 0
        && dim > 0;
    ok.then_some(Shapes { batch, kv_heads, group, rows, keys, dim, mask_per_batch: mb > 1 })
}

/// Products below this many multiply-adds stay on the calling thread (a decode step's, up
/// to a few hundred cached tokens).
const PARALLEL_MIN_MACS: usize = 1 << 18;

fn fused_f32(inputs: &[TValue], scale: f32) -> TractResult<Option<Tensor>> {
    let [q, k, v, mask] = inputs else { return Ok(None) };
    let Some(s) = shapes(q, k, v, mask) else { return Ok(None) };
    let (q, k, v, mask) = (
        q.try_as_plain_ram()?.as_slice::<f32>()?,
        k.try_as_plain_ram()?.as_slice::<f32>()?,
        v.try_as_plain_ram()?.as_slice::<f32>()?,
        mask.try_as_plain_ram()?.as_slice::<f32>()?,
    );
    let heads = s.batch * s.kv_heads * s.group;
    let (head_rows, key_rows) = (s.rows * s.dim, s.keys * s.dim);
    let shape = [s.batch, s.kv_heads, s.group, s.rows, s.dim];
    let mut output = Tensor::zero::<f32>(&shape)?;
    let mut view = output.try_as_plain_ram_mut()?;
    let out = view.as_slice_mut::<f32>()?;
    let softmax = TractSoftmax::new()?;
    let isa = Isa::current();
    // Head `h` (batch b, key head kh, group member g) reads q's and writes out's h-th block.
    let run = |first: usize, outs: &mut [f32]| -> TractResult<()> {
        let mut scratch = Scratch::default();
        for (h, out) in (first..).zip(outs.chunks_exact_mut(head_rows)) {
            let (b, kh) = (h / (s.kv_heads * s.group), h / s.group % s.kv_heads);
            let kv = (b * s.kv_heads + kh) * key_rows;
            let mask = if s.mask_per_batch { &mask[b * s.rows * s.keys..] } else { mask };
            let head = Head {
                q: &q[h * head_rows..][..head_rows],
                k: &k[kv..][..key_rows],
                v: &v[kv..][..key_rows],
                mask: &mask[..s.rows * s.keys],
                scale,
                dim: s.dim,
            };
            head.run(&softmax, &mut scratch, out, isa)?;
        }
        Ok(())
    };
    let team = spin_team::current().filter(|team| team.threads() > 1);
    match team {
        Some(team) if heads > 1 && heads * s.rows * s.keys * s.dim * 2 >= PARALLEL_MIN_MACS => {
            run_on_team(&team, heads, head_rows, out, &run)?
        }
        _ => run(0, out)?,
    }
    Ok(Some(output))
}

/// The heads split in runs of consecutive heads, up to four per thread, so that a helper that
/// loses its core holds few heads and the caller runs the others.
fn run_on_team(
    team: &SpinTeam,
    heads: usize,
    head_rows: usize,
    out: &mut [f32],
    run: &(dyn Fn(usize, &mut [f32]) -> TractResult<()> + Sync),
) -> TractResult<()> {
    let per_part = heads.div_ceil(heads.min(team.threads() * 4));
    /// The first head of a part, its outputs, and how it went.
    type Part<'a> = std::sync::Mutex<(usize, &'a mut [f32], TractResult<()>)>;
    let parts: Vec<Part> = out
        .chunks_mut(per_part * head_rows)
        .enumerate()
        .map(|(i, out)| std::sync::Mutex::new((i * per_part, out, Ok(()))))
        .collect();
    team.run_parts(parts.len(), &|i| {
        if let Some(part) = parts.get(i) {
            let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
            let (first, out, result) = &mut *part;
            *result = run(*first, out);
        }
    });
    for part in parts {
        part.into_inner().unwrap_or_else(|e| e.into_inner()).2?;
    }
    Ok(())
}

/// tract's f32 softmax of a row: its max, exp-and-sum and scale kernels.
struct TractSoftmax {
    max: Box<dyn Reduce<f32>>,
    exp_sum: Box<dyn MapReduce<f32, f32>>,
    scale: Box<dyn ElementWise<f32, f32>>,
}

impl TractSoftmax {
    fn new() -> TractResult<TractSoftmax> {
        Ok(TractSoftmax {
            max: Func::ReduceMax.reduce_f32()?,
            exp_sum: Func::Softmax2.map_reduce_f32()?,
            scale: Func::MulByScalar.ew_f32_param()?,
        })
    }
}

impl RowSoftmax for TractSoftmax {
    type Error = TractError;

    fn run(&self, row: &mut [f32]) -> TractResult<()> {
        let max = self.max.run(row)?;
        let sum = self.exp_sum.run_with_params(row, max)?;
        self.scale.run_with_params(row, sum.recip())
    }
}

/// Whether this CPU has the fused kernel (elsewhere attention stays with tract's products).
pub(super) fn kernel_available() -> bool {
    edgellm_kernels::Isa::current().fused_attention()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `softmax(q k^T * scale + mask) v` in f64, head by head, the mask broadcast as given.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Vec<f64> {
        let (q, k, v, m) = (
            q.to_plain_array_view::<f32>().unwrap(),
            k.to_plain_array_view::<f32>().unwrap(),
            v.to_plain_array_view::<f32>().unwrap(),
            mask.to_plain_array_view::<f32>().unwrap(),
        );
        let &[b_n, h_n, g_n, s_n, d_n] = q.shape() else { panic!() };
        let t_n = k.shape()[2];
        let mut out = vec![];
        for b in 0..b_n {
            for h in 0..h_n {
                for g in 0..g_n {
                    for s in 0..s_n {
                        let mb = if m.shape()[0] == 1 { 0 } else { b };
                        let scores: Vec<f64> = (0..t_n)
                            .map(|t| {
                                let dot: f64 =
                                    (0..d_n).map(|d| q[[b, h, g, s, d]] as f64 * k[[b, h, t, d]] as f64).sum();
                                dot * scale + m[[mb, 0, 0, s, t]] as f64
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let exps: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                        let sum: f64 = exps.iter().sum();
                        for d in 0..d_n {
                            out.push((0..t_n).map(|t| exps[t] / sum * v[[b, h, t, d]] as f64).sum());
                        }
                    }
                }
            }
        }
        out
    }

    fn values(shape: &[usize], seed: f32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_shape(shape, &(0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect::<Vec<_>>()).unwrap()
    }

    /// A causal mask of `rows` new positions after `past` cached ones, tract's -1e9 above it.
    fn causal(batch: usize, rows: usize, keys: usize) -> Tensor {
        let past = keys - rows;
        let m: Vec<f32> =
            (0..batch * rows * keys).map(|i| if i % keys > (i / keys) % rows + past { -1e9 } else { 0.0 }).collect();
        Tensor::from_shape(&[batch, 1, 1, rows, keys], &m).unwrap()
    }

    /// The fused op matches attention computed in f64, for a decode step and a prompt chunk,
    /// GQA groups, key counts that are not a multiple of four, a head size that is not a
    /// multiple of 16, a mask per batch, on one thread and shared over two.
    #[test]
    fn fused_attention_equals_the_reference() -> TractResult<()> {
        let op = FusedAttention {
            softmax: ScaledMaskedSoftmax { scale: Arc::new(tensor0(0.125f32)), post_softmax_mask: false },
        };
        let team = Arc::new(SpinTeam::new(2)?);
        for (batch, kv_heads, group, rows, keys, dim, mask_batch) in [
            (1, 3, 3, 1, 109, 64, 1),
            (1, 3, 3, 64, 77, 64, 1),
            (2, 2, 2, 5, 7, 24, 2),
            (1, 1, 1, 3, 3, 8, 1),
            (1, 2, 1, 4, 130, 80, 1),
            (1, 1, 2, 2, 6, 16, 1),
        ] {
            let q = values(&[batch, kv_heads, group, rows, dim], 0.0);
            let k = values(&[batch, kv_heads, keys, dim], 1.0);
            let v = values(&[batch, kv_heads, keys, dim], 2.0);
            let mask = causal(mask_batch, rows, keys);
            let expected = reference(&q, &k, &v, &mask, 0.125);
            for team in [None, Some(&team)] {
                let inputs = tvec!(
                    q.clone().into_tvalue(),
                    k.clone().into_tvalue(),
                    v.clone().into_tvalue(),
                    mask.clone().into_tvalue()
                );
                let out = spin_team::with_team(team, || op.eval(&EvalContext::out_of_plan(), inputs))?.remove(0);
                assert_eq!(out.shape(), q.shape());
                let got = out.to_plain_array_view::<f32>()?;
                for (got, want) in got.iter().zip(&expected) {
                    assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want} ({rows} rows, {keys} keys)");
                }
            }
        }
        Ok(())
    }

    /// The pass finds the chain in a graph shaped like the model's, with and without a slice
    /// of the last query row before the weighted values, and the fused graph computes what
    /// the original did.
    #[test]
    fn the_pass_fuses_the_chain_and_keeps_the_answers() -> TractResult<()> {
        if !kernel_available() {
            return Ok(());
        }
        for last_row_only in [false, true] {
            let mut model = TypedModel::default();
            let s = model.symbols.sym("S");
            let (rows, keys) = (s.to_dim(), s.to_dim() + 2);
            let q = model.add_source("q", f32::fact([1.to_dim(), 2.into(), 2.into(), rows.clone(), 16.into()]))?;
            let k = model.add_source("k", f32::fact([1.to_dim(), 2.into(), keys.clone(), 16.into()]))?;
            let v = model.add_source("v", f32::fact([1.to_dim(), 2.into(), keys.clone(), 16.into()]))?;
            let mask = model.add_source("mask", f32::fact([1.to_dim(), 1.into(), 1.into(), rows.clone(), keys]))?;
            let einsum = |axes: &str| EinSum::new(axes.parse().unwrap(), f32::datum_type());
            let scores = model.wire_node("scores", einsum(SCORES), &[q, k])?[0];
            let softmax = ScaledMaskedSoftmax { scale: Arc::new(tensor0(0.25f32)), post_softmax_mask: false };
            let mut weights = model.wire_node("softmax", softmax, &[scores, mask])?[0];
            if last_row_only {
                weights = model.wire_node("last", Slice::new(3, rows.clone() - 1, rows.clone()), &[weights])?[0];
            }
            let out = model.wire_node("out", einsum(WEIGHTED_VALUES), &[weights, v])?[0];
            model.select_output_outlets(&[out])?;

            let inputs = tvec!(
                values(&[1, 2, 2, 5, 16], 0.0).into_tvalue(),
                values(&[1, 2, 7, 16], 1.0).into_tvalue(),
                values(&[1, 2, 7, 16], 2.0).into_tvalue(),
                causal(1, 5, 7).into_tvalue()
            );
            let expected = model.clone().into_runnable()?.run(inputs.clone())?.remove(0);
            assert_eq!(fuse_attention(&mut model)?, 1);
            let model = model.into_optimized()?;
            assert!(model.nodes().iter().any(|n| n.op_is::<FusedAttention>()));
            assert!(!model.nodes().iter().any(|n| n.op_is::<ScaledMaskedSoftmax>()));
            let got = model.into_runnable()?.run(inputs)?.remove(0);
            assert_eq!(got.shape(), expected.shape());
            let (got, expected) = (got.to_plain_array_view::<f32>()?, expected.to_plain_array_view::<f32>()?);
            for (g, e) in got.iter().zip(expected.iter()) {
                assert!((g - e).abs() < 1e-5, "{g} vs {e} (last row only: {last_row_only})");
            }
        }
        Ok(())
    }

    /// A shape the kernel does not take (a mask of another layout) goes through the ops it
    /// replaced and gives the same answer.
    #[test]
    fn other_shapes_take_the_unfused_ops() -> TractResult<()> {
        let op = FusedAttention {
            softmax: ScaledMaskedSoftmax { scale: Arc::new(tensor0(0.5f32)), post_softmax_mask: false },
        };
        let (q, k, v) = (values(&[1, 1, 2, 3, 8], 0.0), values(&[1, 1, 3, 8], 1.0), values(&[1, 1, 3, 8], 2.0));
        // The mask broadcast over the group axis as [1, 1, 2, 3, 3]: not the kernel's layout.
        let mask2 = Tensor::from_shape(&[1, 1, 2, 3, 3], &[0f32; 18])?;
        assert!(shapes(&q, &k, &v, &mask2).is_none());
        let inputs =
            tvec!(q.clone().into_tvalue(), k.clone().into_tvalue(), v.clone().into_tvalue(), mask2.into_tvalue());
        let out = op.eval(&EvalContext::out_of_plan(), inputs)?.remove(0);
        let expected = reference(&q, &k, &v, &Tensor::from_shape(&[1, 1, 1, 3, 3], &[0f32; 9])?, 0.5);
        for (got, want) in out.to_plain_array_view::<f32>()?.iter().zip(&expected) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
        Ok(())
    }
}
