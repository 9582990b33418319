//! Where a forward pass spends its time, by tract operator: what `edgellm bench --profile`
//! prints, so that performance work starts from a measurement of this model on this machine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, OpState};

use super::{Engine, EngineError, sampler};

/// Time spent in one kind of operator, or one node, over a phase.
#[derive(Debug, Clone, Serialize)]
pub struct OpCost {
    /// tract's operator name (`OptMatMul`, `SameShapeBinary`, …) or a node name.
    pub name: String,
    /// Node evaluations, summed over the phase's steps.
    pub calls: usize,
    pub ms: f64,
}

/// One phase (the prompt's prefill, or single-token decode steps), operators by total time.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseProfile {
    pub phase: &'static str,
    pub steps: usize,
    pub tokens: usize,
    /// Wall time of the steps, including tract's work between nodes.
    pub ms: f64,
    pub ops: Vec<OpCost>,
    /// The same time by node name, numbers folded (`blk.#.down_proj_#.matmul`), so that one
    /// projection's cost shows across all layers.
    pub nodes: Vec<OpCost>,
}

#[derive(Default)]
struct Timer {
    by_op: HashMap<String, (usize, Duration)>,
    by_node: HashMap<String, (usize, Duration)>,
}

impl Timer {
    fn record(&mut self, node: &TypedNode, spent: Duration) {
        for (map, key) in
            [(&mut self.by_op, node.op().name().to_string()), (&mut self.by_node, fold_numbers(&node.name))]
        {
            let entry = map.entry(key).or_default();
            entry.0 += 1;
            entry.1 += spent;
        }
    }

    fn into_phase(self, phase: &'static str, steps: usize, tokens: usize, ms: f64) -> PhaseProfile {
        PhaseProfile { phase, steps, tokens, ms, ops: by_time(self.by_op), nodes: by_time(self.by_node) }
    }
}

fn by_time(map: HashMap<String, (usize, Duration)>) -> Vec<OpCost> {
    let mut costs: Vec<OpCost> =
        map.into_iter().map(|(name, (calls, spent))| OpCost { name, calls, ms: spent.as_secs_f64() * 1e3 }).collect();
    costs.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    costs
}

/// `blk.12.down_proj_345.matmul` → `blk.#.down_proj_#.matmul`.
fn fold_numbers(name: &str) -> String {
    let mut folded = String::with_capacity(name.len());
    let mut in_number = false;
    for c in name.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                folded.push('#');
            }
            in_number = true;
        } else {
            folded.push(c);
            in_number = false;
        }
    }
    folded
}

impl Engine {
    /// Prefills `prompt_ids` (in the configured chunks), then runs `decode_steps` greedy
    /// single-token steps, timing every node. Timing adds a little per node, so the totals
    /// run slightly above `bench`'s.
    pub fn profile(&self, prompt_ids: &[u32], decode_steps: usize) -> Result<Vec<PhaseProfile>, EngineError> {
        if prompt_ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let mut seq = self.new_state()?;
        let mut logits = Vec::new();
        let mut prefill = Timer::default();
        let started = Instant::now();
        let chunks: Vec<&[u32]> = prompt_ids.chunks(self.options.prefill_chunk_tokens.max(1)).collect();
        for chunk in &chunks {
            self.forward_with(&mut seq, chunk, &mut logits, |ctx, state, node, inputs| {
                timed_eval(&mut prefill, ctx, state, node, inputs)
            })?;
        }
        let prefill_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut decode = Timer::default();
        let started = Instant::now();
        for _ in 0..decode_steps {
            let id = sampler::argmax(&logits);
            self.forward_with(&mut seq, &[id], &mut logits, |ctx, state, node, inputs| {
                timed_eval(&mut decode, ctx, state, node, inputs)
            })?;
        }
        let decode_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(vec![
            prefill.into_phase("prefill", chunks.len(), prompt_ids.len(), prefill_ms),
            decode.into_phase("decode", decode_steps, decode_steps, decode_ms),
        ])
    }
}

fn timed_eval(
    timer: &mut Timer,
    ctx: &EvalContext,
    state: Option<&mut (dyn OpState + 'static)>,
    node: &TypedNode,
    inputs: TVec<TValue>,
) -> TractResult<TVec<TValue>> {
    let started = Instant::now();
    let outputs = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
    timer.record(node, started.elapsed());
    outputs
}
