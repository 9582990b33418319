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

use std::sync::Arc;

use edgellm_kernels::Isa;
use edgellm_kernels::q4::{
    BLOCK, Columns, Outputs, PANEL_BLOCK_BYTES, PANEL_ROWS, Scales, Weight, add_zero_point_products, product, products,
};
use edgellm_kernels::spin_team;
use tract_linalg::block_quant::{PackedBlockQuantFormat, Q4_0};
use tract_linalg::mmm::{EagerPackedInput, MMMInputValue, PackedMatrixStorage};
use tract_linalg::pack::PackedFormat;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, SessionId, StaticName, TypedModelPatch, TypedOp};
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::ops::matmul::pack::OptMatMulPack;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

use super::axis_chain::source_before_reshape;

use crate::tuning::SameShapeBinary;

/// Wraps every 4-bit weight product the fused kernels can take; returns how many.
pub(super) fn accelerate_q4_matvecs(model: &mut TypedModel) -> usize {
    if !kernel_available() {
        return 0;
    }
    super::tuning::replace_ops(model, Q4MatVec::wrap)
}

/// Columns per panel for prompt chunks on the 16-bit tiles (AVX-512 VNNI): the widest tile.
const CHUNK_PANEL_COLUMNS: usize = 8;

/// Repacks the activations of prompt chunks in panels of [`CHUNK_PANEL_COLUMNS`] columns for
/// the products that only [`Q4MatVec`]'s 16-bit tiles take; returns how many packing nodes.
///
/// tract packs them in panels of 6 columns, the width of its own AVX-512 f32 tile, and the
/// rounded tiles follow its panels: a 20-token question was four passes over every weight
/// (6 + 6 + 6 + 2 columns), with 8 it is three (8 + 8 + 4), and a 64-token chunk eight
/// instead of eleven. One token stays one column. Only where the CPU takes chunks on the
/// 16-bit tiles, so that tract's own kernels (which read panels of 6) never see these.
pub(super) fn pack_chunks_for_wide_tiles(model: &mut TypedModel) -> TractResult<usize> {
    // Rounding chunks implies the chunk kernels (`Isa::fused_q4_chunks`).
    if !Isa::current().rounds_chunk_activations() {
        return Ok(0);
    }
    let mut repacked = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if !node.op_is::<OptMatMulPack>() || node.inputs.len() != 1 || model.outputs.contains(&OutletId::new(id, 0)) {
            continue;
        }
        let input = model.outlet_fact(node.inputs[0])?;
        let consumers = &node.outputs[0].successors;
        let products: Vec<&Q4MatVec> =
            consumers.iter().filter_map(|c| model.node(c.node).op_as::<Q4MatVec>()).collect();
        if input.rank() != 2 || input.datum_type != f32::datum_type() || products.len() != consumers.len() {
            continue;
        }
        // [n, k]: the tokens first, as the products' outputs have them.
        let k = products.first().map(|p| p.k);
        let every_product_takes_it = products.iter().zip(consumers).all(|(p, c)| {
            Some(p.k) == k
                && c.slot == p.b_input
                && p.inner.c_n_axis == Some(0)
                && p.inner.c_m_axis == Some(1)
                && p.inner.c_fact.shape.rank() == 2
                && p.inner.c_fact.shape[0] == input.shape[0]
        });
        if !every_product_takes_it || k.map(|k| k.to_dim()) != Some(input.shape[1].clone()) {
            continue;
        }
        let fact = node.outputs[0].fact.clone();
        model.node_mut(id).op = Box::new(PackColumns { fact });
        for consumer in model.node(id).outputs[0].successors.clone() {
            let mut product = model.node(consumer.node).op_as::<Q4MatVec>().expect("a Q4MatVec").clone();
            product.wide_panels = true;
            model.node_mut(consumer.node).op = Box::new(product);
        }
        repacked += 1;
    }
    Ok(repacked)
}

/// Packs `n x k` activations for [`Q4MatVec`]: one token one to a panel, as tract does,
/// several in panels of [`CHUNK_PANEL_COLUMNS`] (see [`pack_chunks_for_wide_tiles`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PackColumns {
    /// The fact of the packing it replaced (the products' plan reads its shape).
    fact: TypedFact,
}

impl Op for PackColumns {
    fn name(&self) -> StaticName {
        "PackColumns".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for PackColumns {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [input] = <[TValue; 1]>::try_from(inputs.into_vec()).map_err(|_| anyhow::anyhow!("one input expected"))?;
        anyhow::ensure!(input.rank() >= 2, "activations of rank {}, 2 or more expected", input.rank());
        // Leading axes (batch, sequence) merged into rows of k: a new shape, no copy.
        let input = if input.rank() == 2 {
            input
        } else {
            let k = input.shape()[input.rank() - 1];
            let mut rows = input.into_tensor();
            rows.set_shape(&[rows.len() / k.max(1), k])?;
            rows.into_tvalue()
        };
        let r = if input.shape()[0] == 1 { 1 } else { CHUNK_PANEL_COLUMNS };
        let packed = PackedFormat::new(f32::datum_type(), r, 4).pack_tensor(&input, 1, 0)?;
        Ok(tvec!(PackedMatrixStorage::new(packed).into_tensor(f32::datum_type()).into_tvalue()))
    }
}

impl TypedOp for PackColumns {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.fact.clone()))
    }

    tract_onnx::tract_core::as_op!();
}

/// Lets each [`PackColumns`] read its activations from before a reshape-only axis chain
/// ([`source_before_reshape`]: `batch x sequence x k` merged to `(batch*sequence) x k`, before
/// q/k/v, before gate/up and before the output head): the packing takes rows of k whatever the
/// leading axes, so the chain's node leaves the plan (each a node of tract's per-step work).
/// Returns how many went.
pub(super) fn pack_through_reshapes(model: &mut TypedModel) -> TractResult<usize> {
    let mut removed = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pack) = node.op_as::<PackColumns>() else { continue };
        let Some(&chain_outlet) = node.inputs.first() else { continue };
        let Some(source) = source_before_reshape(model, chain_outlet) else { continue };
        let (before, after) = (&model.outlet_fact(source)?.shape, &model.outlet_fact(chain_outlet)?.shape);
        if after.rank() != 2 || before.rank() < 2 || before.last() != after.last() {
            continue;
        }
        let (pack, name) = (pack.clone(), format!("{}.direct", node.name));
        let mut patch = TypedModelPatch::default();
        let tapped = patch.tap_model(model, source)?;
        let packed = patch.wire_node(name, pack, &[tapped])?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), packed)?;
        patch.apply(model)?;
        removed += 1;
    }
    Ok(removed)
}

/// Puts the [`Q4MatVec`]s that read the same activations into one [`Q4MatVecs`] node;
/// returns how many products went into such nodes.
///
/// A layer's q, k and v read the same normed activations, and so do its gate and up. Apart,
/// each rounded them again and each woke the team and waited for it: five jobs a layer where
/// two do the same work, and on two threads every job ends with one thread waiting for the
/// other. Runs last but one, after the packing pass (whose output the products share).
pub(super) fn group_products_of_shared_activations(model: &mut TypedModel) -> TractResult<usize> {
    let mut grouped = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if node.outputs.len() != 1 {
            continue;
        }
        let mut members: Vec<(usize, Q4MatVec)> = Vec::new();
        for consumer in &node.outputs[0].successors {
            let reader = model.node(consumer.node);
            let Some(product) = reader.op_as::<Q4MatVec>() else { continue };
            let only_reads_this = reader.inputs.len() == 1 && consumer.slot == 0 && product.b_input == 0;
            if only_reads_this && !members.iter().any(|(n, _)| *n == consumer.node) {
                members.push((consumer.node, product.clone()));
            }
        }
        let Some((_, first)) = members.first() else { continue };
        let alike = members.iter().all(|(_, p)| p.k == first.k && p.wide_panels == first.wide_panels);
        if members.len() < 2 || !alike {
            continue;
        }
        let name = format!("{}.products", node.name);
        let mut patch = TypedModelPatch::default();
        let tapped = patch.tap_model(model, OutletId::new(id, 0))?;
        let op = Q4MatVecs { products: members.iter().map(|(_, p)| p.clone()).collect() };
        let outputs = patch.wire_node(name, op, &[tapped])?;
        for ((member, _), output) in members.iter().zip(outputs) {
            patch.shunt_outside(model, OutletId::new(*member, 0), output)?;
        }
        patch.apply(model)?;
        grouped += members.len();
    }
    Ok(grouped)
}

/// Several [`Q4MatVec`]s of the same activations, one output each, as one job of the
/// kernels ([`products`]): the activations are read and rounded once and the team is woken
/// once. What the fused kernels do not take goes to each product's own evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Q4MatVecs {
    products: Vec<Q4MatVec>,
}

impl Op for Q4MatVecs {
    fn name(&self) -> StaticName {
        "Q4MatVecs".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for Q4MatVecs {
    tract_onnx::tract_core::not_out_of_plan!();

    fn drop_session(&self, session: SessionId, node_id: usize) {
        for product in &self.products {
            product.drop_session(session, node_id)
        }
    }

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shapes: Vec<TVec<usize>> = self
            .products
            .iter()
            .map(|p| Ok(p.inner.c_fact.shape.eval_to_usize(ctx.symbols)?.into_owned()))
            .collect::<TractResult<_>>()?;
        let columns = inputs.first().and_then(|b| self.products[0].columns(b));
        let Some(columns) =
            columns.filter(|c| self.products.iter().zip(&shapes).all(|(p, shape)| p.handles(shape, c.len())))
        else {
            let mut outputs = TVec::with_capacity(self.products.len());
            for product in &self.products {
                outputs.push(product.eval(ctx, inputs.clone())?.remove(0));
            }
            return Ok(outputs);
        };
        let n = columns.len();
        let mut tensors: Vec<Tensor> =
            shapes.iter().map(|shape| Tensor::zero::<f32>(shape)).collect::<TractResult<_>>()?;
        let strides: Vec<(usize, usize)> =
            self.products.iter().zip(&shapes).map(|(p, s)| p.output_strides(s)).collect();
        {
            let mut views = tensors.iter_mut().map(|t| t.try_as_plain_ram_mut()).collect::<TractResult<Vec<_>>>()?;
            let slices = views.iter_mut().map(|v| v.as_slice_mut::<f32>()).collect::<TractResult<Vec<_>>>()?;
            let outputs: Vec<Outputs> = slices
                .into_iter()
                .zip(self.products.iter().zip(&strides))
                .map(|(out, (p, &(stride_m, stride_n)))| Outputs::new(out, p.m, n, stride_m, stride_n))
                .collect();
            let weights: Vec<Weight> = self
                .products
                .iter()
                .zip(&outputs)
                .map(|(p, outputs)| Weight { panels: p.panels(), scales: p.scales, outputs })
                .collect();
            products(&weights, &columns, spin_team::current().as_deref(), Isa::current());
        }
        if self.products.iter().any(|p| p.zero_points.is_some()) {
            let sums = columns.block_sums();
            for ((product, tensor), &(stride_m, stride_n)) in self.products.iter().zip(&mut tensors).zip(&strides) {
                if let Some(zero_points) = &product.zero_points {
                    let mut view = tensor.try_as_plain_ram_mut()?;
                    zero_points.add_to(&sums, view.as_slice_mut::<f32>()?, stride_m, stride_n);
                }
            }
        }
        Ok(tensors.into_iter().map(|t| t.into_tvalue()).collect())
    }
}

impl TypedOp for Q4MatVecs {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut facts = TVec::with_capacity(self.products.len());
        for product in &self.products {
            facts.push(product.output_facts(inputs)?.remove(0));
        }
        Ok(facts)
    }

    tract_onnx::tract_core::as_op!();
}

/// Folds the zero points of an asymmetric 4-bit weight into its [`Q4MatVec`]; returns how many.
///
/// tract reads such a weight as symmetric Q4_0 and adds a second product for the zero points:
/// the activations' sums per block of 32 (a reshape and a `Reduce<Sum>`) times a constant
/// `m x k/32` matrix, packed and multiplied by its f32 kernels, then added to the 4-bit
/// product. That is six nodes a layer (o_proj keeps zero points, see models/convert.py) and
/// 4% of a decode step. [`Q4MatVec`] takes the matrix and adds `Z s` itself, from the block
/// sums of the activations it already holds.
pub(super) fn fuse_zero_point_corrections(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for add in model.eval_order()? {
        let Some(found) = zero_point_correction(model, add)? else { continue };
        let mut op = model.node(found.product).op_as::<Q4MatVec>().expect("a Q4MatVec").clone();
        op.zero_points = Some(found.zero_points);
        model.node_mut(found.product).op = Box::new(op);
        let mut patch = TypedModelPatch::default();
        let product = patch.tap_model(model, OutletId::new(found.product, 0))?;
        patch.shunt_outside(model, OutletId::new(add, 0), product)?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

struct ZeroPointCorrection {
    /// The `Q4MatVec` node whose output the add corrects.
    product: usize,
    zero_points: ZeroPoints,
}

/// Whether node `add` adds a zero-point product to a [`Q4MatVec`]'s output, as tract builds it:
/// `Q4MatVec(pack(x)) + OptMatMul(Z, pack(blocksum(x)))` with the same `x` (up to reshapes).
fn zero_point_correction(model: &TypedModel, add: usize) -> TractResult<Option<ZeroPointCorrection>> {
    let node = model.node(add);
    if !node.op_as::<SameShapeBinary>().is_some_and(SameShapeBinary::is_add) || node.inputs.len() != 2 {
        return Ok(None);
    }
    let only_read_here = |outlet: OutletId| {
        model.node(outlet.node).outputs[outlet.slot].successors.len() == 1 && !model.outputs.contains(&outlet)
    };
    for (product_in, correction_in) in [(node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])] {
        let Some(q4) = model.node(product_in.node).op_as::<Q4MatVec>() else { continue };
        let Some(correction) = model.node(correction_in.node).op_as::<OptMatMul>() else { continue };
        if q4.zero_points.is_some() || !only_read_here(product_in) || !only_read_here(correction_in) {
            continue;
        }
        if correction.c_fact != q4.inner.c_fact
            || correction.c_m_axis != q4.inner.c_m_axis
            || correction.c_n_axis != q4.inner.c_n_axis
        {
            continue;
        }
        let [
            ProtoFusedSpec::AddMatMul { a: MatMulOperand::Const(z), b: MatMulOperand::Input(0), .. },
            ProtoFusedSpec::Store(_),
        ] = correction.micro_ops.as_slice()
        else {
            continue;
        };
        let Some(zero_points) = ZeroPoints::unpack(&**z, q4.m, q4.k / BLOCK) else { continue };
        // The activations both sides read, back through the packing and reshapes.
        let Some(q4_activations) = packed_from(model, model.node(product_in.node).inputs[q4.b_input]) else { continue };
        let Some(summed) = packed_from(model, model.node(correction_in.node).inputs[0]) else { continue };
        let reduce_node = model.node(summed.node);
        let Some(reduce) = reduce_node.op_as::<Reduce>() else { continue };
        let blocks_in = model.outlet_fact(reduce_node.inputs[0])?;
        let rank = blocks_in.rank();
        let is_block_sum = reduce.reducer == Reducer::Sum
            && reduce.axes[..] == [rank - 1]
            && blocks_in.shape[rank - 1] == BLOCK.to_dim()
            && blocks_in.shape[rank - 2] == (q4.k / BLOCK).to_dim();
        if !is_block_sum || !only_read_here(summed) {
            continue;
        }
        let sums_of = reshaped_from(model, reduce_node.inputs[0]);
        if !reshaped_from_all(model, q4_activations).contains(&sums_of) {
            continue;
        }
        return Ok(Some(ZeroPointCorrection { product: product_in.node, zero_points }));
    }
    Ok(None)
}

/// The outlet an `OptMatMulPack` node packs, back through reshapes.
fn packed_from(model: &TypedModel, packed: OutletId) -> Option<OutletId> {
    let pack = model.node(packed.node);
    pack.op_as::<OptMatMulPack>()?;
    Some(reshaped_from(model, *pack.inputs.first()?))
}

/// Where `outlet`'s values come from, back through nodes that keep them in order (reshapes,
/// unit axes added, removed or moved), every outlet on the way.
fn reshaped_from_all(model: &TypedModel, mut outlet: OutletId) -> Vec<OutletId> {
    let mut path = vec![outlet];
    loop {
        let node = model.node(outlet.node);
        let reshapes = crate::axis_chain::keeps_values_in_order(model, outlet.node);
        if !reshapes || node.inputs.len() != 1 {
            return path;
        }
        outlet = node.inputs[0];
        path.push(outlet);
    }
}

fn reshaped_from(model: &TypedModel, outlet: OutletId) -> OutletId {
    *reshaped_from_all(model, outlet).last().unwrap_or(&outlet)
}

/// A weight's zero-point matrix `Z` (`m x blocks`), stored block-major for the correction's
/// loop: `c[t][i] += sum over b of Z[i][b] * s[t][b]`, `s` the activations' block sums.
#[derive(Clone, Debug)]
struct ZeroPoints {
    blocks: usize,
    /// `blocks` rows of `m`.
    by_block: Arc<Vec<f32>>,
}

impl PartialEq for ZeroPoints {
    fn eq(&self, other: &Self) -> bool {
        self.blocks == other.blocks
            && self.by_block.len() == other.by_block.len()
            && self.by_block.iter().zip(other.by_block.iter()).all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Eq for ZeroPoints {}

impl ZeroPoints {
    /// `Z` out of tract's f32 packing (panels of `r` rows, each `k` steps of `r` values), if
    /// `z` is that and `m x blocks`.
    fn unpack(z: &dyn MMMInputValue, m: usize, blocks: usize) -> Option<ZeroPoints> {
        let z = z.downcast_ref::<EagerPackedInput>()?;
        let format = z.fact.format.downcast_ref::<PackedFormat>()?;
        let r = format.r;
        if format.dt != f32::datum_type() || z.mn != m || z.fact.k != blocks || r == 0 || z.panel_bytes % 4 != 0 {
            return None;
        }
        let panel_floats = z.panel_bytes / 4;
        if z.packed.len() < m.div_ceil(r) * z.panel_bytes || panel_floats < blocks * r {
            return None;
        }
        let value = |row: usize, b: usize| {
            let at = (row / r * panel_floats + b * r + row % r) * 4;
            let bytes = &z.packed[at..at + 4];
            f32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        };
        let by_block = (0..blocks).flat_map(|b| (0..m).map(move |row| value(row, b))).collect();
        Some(ZeroPoints { blocks, by_block: Arc::new(by_block) })
    }

    /// Adds `Z s` to each of the `n` columns of `c` (`m` outputs `stride_m` apart, columns
    /// `stride_n` apart); `sums`: `n` rows of `blocks`.
    fn add_to(&self, sums: &[f32], c: &mut [f32], stride_m: usize, stride_n: usize) {
        let m = self.by_block.len() / self.blocks;
        add_zero_point_products(&self.by_block, m, sums, self.blocks, c, stride_m, stride_n, Isa::current());
    }
}

/// One product `c = W x` with a constant Q4_0 weight `W` (`m x k`, packed by tract) and the
/// activations as input `b`, plus the weight's zero points when it has them; what the fused
/// kernels do not take goes to `inner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Q4MatVec {
    inner: OptMatMul,
    weight: EagerPackedInput,
    scales: Scales,
    b_input: usize,
    m: usize,
    k: usize,
    zero_points: Option<ZeroPoints>,
    /// Its activations come from [`PackColumns`]: tract's `inner` cannot read them.
    wide_panels: bool,
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
        Some(Q4MatVec {
            inner: op.clone(),
            weight: weight.clone(),
            scales,
            b_input: *b_input,
            m,
            k,
            zero_points: None,
            wide_panels: false,
        })
    }

    /// The activations in place, if `b` holds one f32 matrix packed by tract (panels of `r`
    /// columns, each `k` steps of `r` floats).
    fn columns<'a>(&self, b: &'a TValue) -> Option<Columns<'a>> {
        let packed = b.try_storage_as::<PackedMatrixStorage>().ok()?;
        if packed.values().len() != 1 {
            return None;
        }
        let value = packed.value().downcast_ref::<EagerPackedInput>()?;
        let format = value.fact.format.downcast_ref::<PackedFormat>()?;
        let (n, r, k) = (value.mn, format.r, value.fact.k);
        if format.dt != f32::datum_type() || k != self.k || r == 0 || n == 0 {
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
        let (stride_m, stride_n) = self.output_strides(&c_shape);
        let team = spin_team::current();
        let columns = inputs.get(self.b_input).and_then(|b| self.columns(b));
        let sums = match (&self.zero_points, &columns) {
            (Some(_), Some(columns)) => Some(columns.block_sums()),
            (Some(_), None) => anyhow::bail!("zero points on activations not packed as f32"),
            (None, _) => None,
        };
        let mut c = if let Some(columns) = columns.filter(|c| self.handles(&c_shape, c.len())) {
            let n = columns.len();
            let mut c = Tensor::zero::<f32>(&c_shape)?;
            let mut view = c.try_as_plain_ram_mut()?;
            let outputs = Outputs::new(view.as_slice_mut::<f32>()?, self.m, n, stride_m, stride_n);
            product(self.panels(), self.scales, &columns, &outputs, team.as_deref(), Isa::current());
            c
        } else {
            anyhow::ensure!(!self.wide_panels, "a product of {c_shape:?} on panels only the fused kernels read");
            let mut outputs = self.inner.eval(ctx, inputs)?;
            match (&self.zero_points, outputs.pop()) {
                (None, Some(c)) => return Ok(tvec!(c)),
                (Some(_), Some(c)) => c.into_tensor(),
                (_, None) => anyhow::bail!("the wrapped product gave no output"),
            }
        };
        if let (Some(zero_points), Some(sums)) = (&self.zero_points, sums) {
            let mut view = c.try_as_plain_ram_mut()?;
            zero_points.add_to(&sums, view.as_slice_mut::<f32>()?, stride_m, stride_n);
        }
        Ok(tvec!(c.into_tvalue()))
    }
}

impl Q4MatVec {
    /// How far apart its outputs are along m and along n in an output of `c_shape`.
    fn output_strides(&self, c_shape: &[usize]) -> (usize, usize) {
        let strides = Tensor::natural_strides(c_shape);
        let stride_of = |axis: Option<usize>| axis.map(|ax| strides[ax] as usize).unwrap_or(0);
        (stride_of(self.inner.c_m_axis), stride_of(self.inner.c_n_axis))
    }

    /// The weight's whole panels.
    fn panels(&self) -> &[u8] {
        &self.weight.packed[..self.m.div_ceil(PANEL_ROWS) * self.weight.panel_bytes]
    }

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

    /// `Z` comes out of tract's f32 packing as it went in (odd row counts, panels of 64 as
    /// the zero-point product's, and 6), and `Z s` added to the columns equals the naive sums.
    #[test]
    fn zero_points_unpack_and_correct_as_the_naive_product() -> TractResult<()> {
        for (m, blocks, r) in [(576, 18, 64), (100, 3, 6), (5, 2, 64)] {
            let z: Vec<f32> = (0..m * blocks).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.125).collect();
            let packed = PackedFormat::new(f32::datum_type(), r, 64).pack_tensor(
                &Tensor::from_shape(&[m, blocks], &z)?,
                1,
                0,
            )?;
            let zero_points = ZeroPoints::unpack(&*packed, m, blocks).expect("tract's f32 packing");
            assert!(
                ZeroPoints::unpack(&*packed, m + 1, blocks).is_none()
                    && ZeroPoints::unpack(&*packed, m, blocks + 1).is_none()
            );
            let n = 3;
            let sums: Vec<f32> = (0..n * blocks).map(|i| (i % 7) as f32 - 2.5).collect();
            // Outputs laid out as the products store them: columns m apart.
            let mut c: Vec<f32> = (0..n * m).map(|i| i as f32).collect();
            zero_points.add_to(&sums, &mut c, 1, m);
            for t in 0..n {
                for i in 0..m {
                    let expected: f32 =
                        (0..blocks).map(|b| z[i * blocks + b] * sums[t * blocks + b]).sum::<f32>() + (t * m + i) as f32;
                    assert!(
                        (c[t * m + i] - expected).abs() <= 1e-3 * expected.abs().max(1.0),
                        "{m}x{blocks} r{r} column {t} row {i}"
                    );
                }
            }
        }
        Ok(())
    }

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
