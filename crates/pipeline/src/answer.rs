//! [`Pipeline::answer`]: one request from its prompt to its `done` event, every stage in its
//! order. The worker calls it; transports never see it.

use std::time::Instant;

use edgellm_engine::{Engine, FinishReason as EngineFinish, Flow, GenerateRequest, SamplingParams};
use edgellm_protocol::{Conversation, Done, FinishReason, GenerateParams, SafetyReport, Timings, Usage};
use edgellm_text::grounding::{self, AnswerCache, CachedAnswer, GroundingReport, Verdict};
use edgellm_text::postprocess::Guarded;
use edgellm_text::safety::Finding;

use crate::{Pipeline, PipelineError, PreparedPrompt, PromptInput};

/// One request as the pipeline needs it.
#[derive(Debug, Clone, Copy)]
pub struct AnswerRequest<'a> {
    pub prompt: &'a str,
    pub session: Option<&'a str>,
    pub params: &'a GenerateParams,
    /// Released pieces go to the sink as they come; otherwise only the final text is sent.
    pub stream: bool,
    /// When the request was admitted: its queue time counts in its timings.
    pub admitted: Instant,
    pub deadline: Option<Instant>,
    /// A conversation the client keeps itself, instead of the session memory.
    pub conversation: Option<&'a Conversation>,
}

/// Where an answer goes while it is generated, and who may stop it.
pub trait AnswerSink {
    /// A piece of the answer that passed output safety. `false` means nobody listens any more:
    /// generation stops and the request ends [`PipelineError::Cancelled`].
    fn piece(&mut self, text: &str) -> bool;
    /// Asked before every token: `false` stops generation ([`PipelineError::Cancelled`]).
    fn keep_going(&mut self) -> bool;
}

impl Pipeline {
    /// Runs the stages in order: clean, safety on the prompt, grounding, template and tokens,
    /// the answer cache or inference with output safety on the stream, tidying, memory. Every
    /// failure is a [`PipelineError`]; the findings of the safety rules that did not block are
    /// in the returned [`Done`].
    pub fn answer(
        &mut self,
        engine: &mut Engine,
        request: AnswerRequest<'_>,
        sink: &mut dyn AnswerSink,
    ) -> Result<Done, PipelineError> {
        let input = PromptInput { prompt: request.prompt, session: request.session };
        let prepared = self.prepare_conversation(engine, input, request.conversation)?;
        let (sampling, max_new_tokens) = self.generation.for_request(request.params);
        let mut stop_strings = self.generation.stop_strings.clone();
        stop_strings.extend(request.params.stop.iter().filter(|s| !s.is_empty()).cloned());
        let cache_key = answer_cache_key(&prepared.ids, &sampling, max_new_tokens, &stop_strings);
        let input_findings = prepared.input_safety.findings();

        if let Some(hit) = self.cache.get(&cache_key) {
            if request.stream && !hit.text.is_empty() && !sink.piece(&hit.text) {
                return Err(PipelineError::Cancelled);
            }
            let text = self.finish(&prepared, request.session, &hit.text, false, None);
            let (text, grounding) = self.checked(&prepared, text, request.stream, sink)?;
            return Ok(Done {
                text,
                finish_reason: if hit.cut_by_length { FinishReason::Length } else { FinishReason::Stop },
                usage: Usage { prompt_tokens: hit.prompt_tokens, completion_tokens: hit.completion_tokens },
                timings: Timings { total_ms: round1(elapsed_ms(request.admitted)), ..Timings::default() },
                sources: prepared.sources,
                grounding,
                entities: prepared.entities.to_vec(),
                safety: SafetyReport { input: input_findings, output: hit.output_findings },
                cached: true,
            });
        }

        let generate = GenerateRequest {
            prompt_ids: &prepared.ids,
            shared_prefix_len: prepared.shared_prefix_len,
            max_new_tokens,
            sampling,
            stop_strings: &stop_strings,
            deadline: request.deadline,
            ignore_eos: false,
        };
        let mut guard = self.output_guard();
        let mut released = String::new();
        let mut blocked = None;
        let generation = engine.generate(&generate, |piece| {
            if !sink.keep_going() {
                return Flow::Cancel;
            }
            match guard.push(piece) {
                Guarded::Release(text) if release(&text, &mut released, request.stream, sink) => Flow::Continue,
                Guarded::Release(_) => Flow::Cancel,
                Guarded::Blocked(d) => {
                    blocked = Some(d);
                    Flow::Cancel
                }
            }
        })?;
        match generation.finish_reason {
            _ if blocked.is_some() => {}
            EngineFinish::Cancelled => return Err(PipelineError::Cancelled),
            EngineFinish::Deadline => return Err(PipelineError::DeadlinePassed),
            EngineFinish::Stop | EngineFinish::Length => match guard.finish() {
                Guarded::Release(text) => {
                    release(&text, &mut released, request.stream, sink);
                }
                Guarded::Blocked(d) => blocked = Some(d),
            },
        }
        if let Some(d) = blocked {
            return Err(PipelineError::AnswerBlocked { rule: d.rule, kind: d.kind });
        }
        let output_findings: Vec<Finding> = guard.detections.iter().map(Finding::from).collect();
        drop(guard);
        let cut_by_length = generation.finish_reason == EngineFinish::Length;
        let cached = CachedAnswer {
            text: String::new(),
            cut_by_length,
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
            output_findings: output_findings.clone(),
        };
        let text = self.finish(&prepared, request.session, &released, cut_by_length, Some((cache_key, cached)));
        let (text, grounding) = self.checked(&prepared, text, request.stream, sink)?;
        let t = &generation.timings;
        let total_ms = elapsed_ms(request.admitted);
        let queue_ms = (total_ms - (t.prefill_ms + t.decode_ms + prepared.retrieval_ms)).max(0.0);
        Ok(Done {
            text,
            finish_reason: if cut_by_length { FinishReason::Length } else { FinishReason::Stop },
            usage: Usage { prompt_tokens: generation.prompt_tokens, completion_tokens: generation.completion_tokens },
            timings: Timings {
                queue_ms: Some(round1(queue_ms)),
                retrieval_ms: Some(round1(prepared.retrieval_ms)),
                prefill_ms: Some(round1(t.prefill_ms)),
                decode_ms: Some(round1(t.decode_ms)),
                time_to_first_token_ms: Some(round1(t.time_to_first_token_ms)),
                total_ms: round1(total_ms),
                reused_prefix_tokens: Some(t.reused_prefix_tokens),
            },
            sources: prepared.sources,
            grounding,
            entities: prepared.entities.to_vec(),
            safety: SafetyReport { input: input_findings, output: output_findings },
            cached: false,
        })
    }
}

/// The answer-cache key: the prompt's tokens and every setting that changes the answer, each
/// field written out in a fixed order (not a `Debug` text, which may change between releases).
fn answer_cache_key(ids: &[u32], sampling: &SamplingParams, max_new_tokens: usize, stops: &[String]) -> [u8; 32] {
    let ids: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let mut settings = Vec::with_capacity(64);
    settings.extend_from_slice(&sampling.temperature.to_bits().to_le_bytes());
    settings.extend_from_slice(&(sampling.top_k as u64).to_le_bytes());
    settings.extend_from_slice(&sampling.top_p.to_bits().to_le_bytes());
    settings.extend_from_slice(&sampling.repetition_penalty.to_bits().to_le_bytes());
    settings.extend_from_slice(&(sampling.repetition_window as u64).to_le_bytes());
    settings.extend_from_slice(&sampling.seed.to_le_bytes());
    settings.extend_from_slice(&(max_new_tokens as u64).to_le_bytes());
    let mut parts: Vec<&[u8]> = vec![&ids, &settings];
    parts.extend(stops.iter().map(|s| s.as_bytes()));
    AnswerCache::key(&parts)
}

impl Pipeline {
    /// The answer checked against the best source sentence, when notes were used; an
    /// `unsupported` answer gets the sentence added after it (`append_evidence`), streamed too,
    /// so that the streamed text and `done.text` stay the same.
    fn checked(
        &self,
        prepared: &PreparedPrompt,
        mut text: String,
        stream: bool,
        sink: &mut dyn AnswerSink,
    ) -> Result<(String, Option<GroundingReport>), PipelineError> {
        let Some(evidence) = &prepared.evidence else { return Ok((text, None)) };
        let report = grounding::verify(&text, evidence, &prepared.user_text, &prepared.rendered);
        if report.verdict == Verdict::Unsupported && self.grounding.append_evidence {
            let addition = format!("{}Source: {}", if text.is_empty() { "" } else { "\n\n" }, report.evidence);
            if stream && !sink.piece(&addition) {
                return Err(PipelineError::Cancelled);
            }
            text.push_str(&addition);
        }
        Ok((text, Some(report)))
    }
}

/// Adds a released piece to the answer and streams it; `false` when the receiver is gone.
fn release(text: &str, released: &mut String, stream: bool, sink: &mut dyn AnswerSink) -> bool {
    released.push_str(text);
    !stream || text.is_empty() || sink.piece(text)
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_changes_the_cache_key() {
        let base = SamplingParams::default();
        let key = |s: &SamplingParams, max: usize, stops: &[String]| answer_cache_key(&[1, 2, 3], s, max, stops);
        let reference = key(&base, 16, &[]);
        assert_eq!(reference, key(&base, 16, &[]));
        let variants = [
            SamplingParams { temperature: 0.5, ..base },
            SamplingParams { top_k: 7, ..base },
            SamplingParams { top_p: 0.5, ..base },
            SamplingParams { repetition_penalty: 1.3, ..base },
            SamplingParams { repetition_window: 3, ..base },
            SamplingParams { seed: 9, ..base },
        ];
        for v in &variants {
            assert_ne!(reference, key(v, 16, &[]), "{v:?}");
        }
        assert_ne!(reference, key(&base, 17, &[]));
        assert_ne!(reference, key(&base, 16, &["\n".into()]));
        assert_ne!(key(&base, 16, &["ab".into(), "c".into()]), key(&base, 16, &["a".into(), "bc".into()]));
        assert_ne!(reference, answer_cache_key(&[1, 2], &base, 16, &[]));
    }
}
