//! Runs of tract's axis nodes (reshapes, moves, added or removed unit axes) as one node.
//!
//! The optimised graph of a decoder layer holds about twenty such nodes: a projection's output
//! is unmerged from `(batch*sequence) x n` to `batch x sequence x n`, split into heads, moved
//! to heads-first, and back again after attention, often three or four in a row. Each is a
//! node of tract's plan: its inputs gathered, its symbolic shapes evaluated, its output
//! stored, and a move copies the tensor even when the axis it moves only crosses unit axes,
//! which is every move of a one-token decode step. A decode step ran about 600 of them, a
//! tenth of the step once tract's work between nodes is counted (`edgellm bench --profile`).
//! [`fuse_axis_chains`] replaces each run by one [`AxisChain`] node that applies the run's
//! reshapes as one change of shape and moves data only for a move that reorders it, and drops
//! a run that ends where it started (an unmerge followed by a merge). Same values, no
//! arithmetic: golden tokens are unchanged.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedModelPatch, TypedOp};
use tract_onnx::tract_core::ops::change_axes::AxisOp;

/// Replaces every run of axis nodes by one [`AxisChain`] (or by nothing where it changes
/// nothing); returns how many axis nodes left the plan.
pub(super) fn fuse_axis_chains(model: &mut TypedModel) -> TractResult<usize> {
    let mut removed = 0;
    let mut taken = vec![false; model.nodes().len()];
    for id in model.eval_order()? {
        if taken[id] || !is_axis_node(model, id) {
            continue;
        }
        // Only a run's first node starts one: its input does not come from a node the run
        // would have taken.
        let mut run = vec![id];
        while let Some(next) = single_axis_successor(model, *run.last().unwrap_or(&id)) {
            run.push(next);
        }
        for &node in &run {
            taken[node] = true;
        }
        let first = model.node(run[0]);
        let input = first.inputs[0];
        let last = OutletId::new(*run.last().unwrap_or(&id), 0);
        let input_fact = model.outlet_fact(input)?.clone();
        let output_fact = model.outlet_fact(last)?.clone();
        let mut steps: Vec<Step> = Vec::new();
        // The shape the current step of reshapes started from.
        let mut shape_before = input_fact.shape.clone();
        for &node in &run {
            let op = model.node(node).op_as::<AxisOp>().expect("an axis node");
            let shape = model.outlet_fact(OutletId::new(node, 0))?.shape.clone();
            match (op, steps.last_mut()) {
                (AxisOp::Move(from, to), _) if !keeps_values_in_order(model, node) => {
                    steps.push(Step::Move(*from, *to));
                    shape_before = shape;
                    continue;
                }
                (_, Some(Step::Shape(last))) => *last = shape.clone(),
                (_, _) => steps.push(Step::Shape(shape.clone())),
            }
            // Reshapes back to the shape before them (an unmerge, then a merge) are no step.
            if shape == shape_before {
                steps.pop();
            }
        }
        let mut patch = TypedModelPatch::default();
        let tapped = patch.tap_model(model, input)?;
        let unchanged = steps.is_empty();
        let out = if unchanged {
            tapped
        } else {
            let name = format!("{}.axis_chain", model.node(run[0]).name);
            patch.wire_node(name, AxisChain { steps, output: output_fact.without_value() }, &[tapped])?[0]
        };
        patch.shunt_outside(model, last, out)?;
        patch.apply(model)?;
        removed += run.len() - usize::from(!unchanged);
    }
    Ok(removed)
}

/// What a reshape-only [`AxisChain`] reads, when `outlet` is that chain's output and nothing
/// else reads it (no other node, not a model output): a node that takes the same values in
/// another shape can read them there, and the chain leaves the plan.
pub(super) fn source_before_reshape(model: &TypedModel, outlet: OutletId) -> Option<OutletId> {
    let chain = model.node(outlet.node);
    let reshape_only = chain.op_as::<AxisChain>().is_some_and(AxisChain::only_reshapes);
    let read_once = chain.outputs[0].successors.len() == 1 && !model.outputs.contains(&outlet);
    (reshape_only && read_once).then(|| chain.inputs[0])
}

fn is_axis_node(model: &TypedModel, id: usize) -> bool {
    let node = model.node(id);
    node.op_is::<AxisOp>() && node.inputs.len() == 1 && node.outputs.len() == 1
}

/// The axis node that alone reads `id`'s output, if the output is nothing else (not read by
/// another node, not a model output).
fn single_axis_successor(model: &TypedModel, id: usize) -> Option<usize> {
    let outlet = OutletId::new(id, 0);
    let successors = &model.node(id).outputs[0].successors;
    if successors.len() != 1 || model.outputs.contains(&outlet) {
        return None;
    }
    let next = successors[0].node;
    is_axis_node(model, next).then_some(next)
}

/// One step of a run: a new shape (the run's consecutive reshapes, added and removed unit
/// axes, folded into the last one's output shape) or a move of one axis.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Shape(ShapeFact),
    Move(usize, usize),
}

/// A run of tract's axis nodes as one node (see the module's doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AxisChain {
    steps: Vec<Step>,
    output: TypedFact,
}

impl AxisChain {
    /// Whether the chain only changes the shape (no move): the values keep their order.
    pub(super) fn only_reshapes(&self) -> bool {
        self.steps.iter().all(|s| matches!(s, Step::Shape(_)))
    }
}

impl Op for AxisChain {
    fn name(&self) -> StaticName {
        "AxisChain".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for AxisChain {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [input] = <[TValue; 1]>::try_from(inputs.into_vec()).map_err(|_| anyhow::anyhow!("one input expected"))?;
        let mut tensor = input.into_tensor();
        for step in &self.steps {
            match *step {
                Step::Shape(ref shape) => tensor.set_shape(&shape.eval_to_usize(ctx.symbols)?)?,
                Step::Move(from, to) => {
                    anyhow::ensure!(
                        from < tensor.rank() && to < tensor.rank(),
                        "{step:?} on a tensor of rank {}",
                        tensor.rank()
                    );
                    let mut shape: TVec<usize> = tensor.shape().into();
                    let moved = shape.remove(from);
                    shape.insert(to, moved);
                    if keeps_order(tensor.shape(), from, to, &1) {
                        tensor.set_shape(&shape)?;
                    } else {
                        tensor = tensor.moved_axis(from, to)?;
                    }
                }
            }
        }
        Ok(tvec!(tensor.into_tvalue()))
    }
}

/// Whether moving axis `from` to `to` leaves the elements in the same row-major order: the
/// moved axis is a unit axis, or every axis it crosses is.
fn keeps_order<D: PartialEq>(shape: &[D], from: usize, to: usize, one: &D) -> bool {
    let crossed = if from < to { from + 1..to + 1 } else { to..from };
    shape[from] == *one || shape[crossed].iter().all(|d| d == one)
}

/// Whether axis node `id` keeps its input's values in order, whatever the symbols: a reshape,
/// an added or removed unit axis, or a move that only crosses unit axes.
pub(super) fn keeps_values_in_order(model: &TypedModel, id: usize) -> bool {
    let node = model.node(id);
    match node.op_as::<AxisOp>() {
        Some(AxisOp::Move(from, to)) => {
            node.inputs.len() == 1
                && model.outlet_fact(node.inputs[0]).is_ok_and(|fact| {
                    let dims: Vec<TDim> = fact.shape.iter().cloned().collect();
                    *from < dims.len() && *to < dims.len() && keeps_order(&dims, *from, *to, &TDim::Val(1))
                })
        }
        Some(_) => true,
        None => node.op_as::<AxisChain>().is_some_and(AxisChain::only_reshapes),
    }
}

impl TypedOp for AxisChain {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.output.clone()))
    }

    tract_onnx::tract_core::as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heads split from a projection, moved first, grouped (a move that copies in a prompt
    /// chunk and not in a decode step), beside a run that unmerges and merges back: the fused
    /// plan has one node where tract's had five, and gives the same tensors for 1 and 5 tokens.
    #[test]
    fn fused_chains_equal_tracts_axis_nodes() -> TractResult<()> {
        let mut model = TypedModel::default();
        let s = model.symbols.sym("S");
        let x = model.add_source("x", f32::fact([1.to_dim(), s.to_dim(), 12.to_dim()]))?;
        let heads =
            model.wire_node("heads", AxisOp::Reshape(2, tvec![12.to_dim()], tvec![3.to_dim(), 4.to_dim()]), &[x])?;
        let moved = model.wire_node("moved", AxisOp::Move(1, 2), &heads)?;
        let grouped =
            model.wire_node("grouped", AxisOp::Reshape(1, tvec![3.to_dim()], tvec![1.to_dim(), 3.to_dim()]), &moved)?;
        let merged =
            model.wire_node("merged", AxisOp::Reshape(0, tvec![1.to_dim(), s.to_dim()], tvec![s.to_dim()]), &[x])?;
        let unmerged = model.wire_node(
            "unmerged",
            AxisOp::Reshape(0, tvec![s.to_dim()], tvec![1.to_dim(), s.to_dim()]),
            &merged,
        )?;
        let doubled = model.wire_node("doubled", tract_onnx::tract_core::ops::math::add(), &[unmerged[0], x])?;
        model.select_output_outlets(&[grouped[0], doubled[0]])?;
        let theirs = model.clone().into_runnable()?;
        assert_eq!(fuse_axis_chains(&mut model)?, 4);
        let axis_nodes = |model: &TypedModel| -> TractResult<Vec<String>> {
            Ok(model
                .eval_order()?
                .into_iter()
                .map(|id| model.node(id).op().name().to_string())
                .filter(|n| n != "Source" && n != "Add")
                .collect())
        };
        assert_eq!(axis_nodes(&model)?, ["AxisChain"]);
        let ours = model.into_runnable()?;
        for tokens in [1, 5] {
            let input = Tensor::from_shape(&[1, tokens, 12], &(0..tokens * 12).map(|i| i as f32).collect::<Vec<_>>())?;
            let expected = theirs.run(tvec!(input.clone().into_tvalue()))?;
            let got = ours.run(tvec!(input.into_tvalue()))?;
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!(g.shape(), e.shape(), "{tokens} tokens");
                assert_eq!(g.to_plain_array_view::<f32>()?, e.to_plain_array_view::<f32>()?, "{tokens} tokens");
            }
        }
        Ok(())
    }

    #[test]
    fn a_move_across_unit_axes_keeps_the_order() {
        assert!(keeps_order(&[1, 1, 9, 64], 1, 2, &1));
        assert!(keeps_order(&[1, 9, 1, 64], 1, 2, &1));
        assert!(keeps_order(&[1, 9, 1, 64], 2, 1, &1));
        assert!(!keeps_order(&[1, 5, 9, 64], 1, 2, &1));
        assert!(!keeps_order(&[1, 9, 5, 64], 2, 1, &1));
        assert!(!keeps_order(&[2, 3, 4], 0, 2, &1));
        assert!(keeps_order(&[2, 1, 1], 0, 2, &1));
    }
}
