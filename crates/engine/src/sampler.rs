//! Next-token selection: greedy, or seeded sampling with temperature, top-k, top-p and a
//! repetition penalty. The candidate buffer is allocated once per engine (vocabulary size),
//! so sampling never allocates on the decode path.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 selects greedy decoding.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables nucleus sampling.
    pub top_p: f32,
    /// 1.0 disables the penalty.
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repetition_window: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.1,
            repetition_window: 64,
            seed: 0,
        }
    }
}

/// SplitMix64: tiny, fast, and its output for a given seed never changes between releases,
/// which is what "seeded sampling is reproducible" needs (rand's StdRng makes no such promise).
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(vocab: usize) -> Self {
        Sampler { candidates: Vec::with_capacity(vocab) }
    }

    /// Picks the next token from `logits` (modified in place by the repetition penalty).
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32], params: &SamplingParams, rng: &mut SeededRng) -> u32 {
        if params.repetition_penalty != 1.0 {
            let window = &recent[recent.len().saturating_sub(params.repetition_window)..];
            for (j, &id) in window.iter().enumerate() {
                // Once per distinct token, as Hugging Face does; the window is small.
                if window[..j].contains(&id) {
                    continue;
                }
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / params.repetition_penalty } else { *l * params.repetition_penalty };
                }
            }
        }
        if params.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / params.temperature;
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &l)| (l * inv_t, i as u32)));
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        let k = if params.top_k == 0 { self.candidates.len() } else { params.top_k.min(self.candidates.len()) };
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        let max = self.candidates[0].0;
        let mut total = 0.0f32;
        for c in self.candidates.iter_mut() {
            c.0 = (c.0 - max).exp();
            total += c.0;
        }
        // Nucleus: the smallest prefix whose mass reaches top_p.
        let mut kept = self.candidates.len();
        if params.top_p < 1.0 {
            let mut mass = 0.0;
            for (i, c) in self.candidates.iter().enumerate() {
                mass += c.0 / total;
                if mass >= params.top_p {
                    kept = i + 1;
                    break;
                }
            }
        }
        let kept_total: f32 = self.candidates[..kept].iter().map(|c| c.0).sum();
        let mut target = rng.next_f32() * kept_total;
        for c in &self.candidates[..kept] {
            target -= c.0;
            if target <= 0.0 {
                return c.1;
            }
        }
        self.candidates[kept - 1].1
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best_value = l;
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut l = logits();
        let expected = argmax(&l);
        assert_eq!(l[expected as usize], 9.9);
        let mut s = Sampler::new(100);
        let p = SamplingParams { temperature: 0.0, repetition_penalty: 1.0, ..Default::default() };
        assert_eq!(s.sample(&mut l, &[], &p, &mut SeededRng::new(1)), expected);
    }

    #[test]
    fn same_seed_same_choices_different_seed_differs() {
        let p = SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, ..Default::default() };
        let run = |seed| {
            let mut s = Sampler::new(100);
            let mut rng = SeededRng::new(seed);
            (0..50).map(|_| s.sample(&mut logits(), &[], &p, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams { temperature: 2.0, top_k: 1, repetition_penalty: 1.0, ..Default::default() };
        let mut s = Sampler::new(100);
        let mut rng = SeededRng::new(3);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[], &p, &mut rng), argmax(&logits()));
        }
    }

    #[test]
    fn repetition_penalty_moves_choice_away_from_recent_token() {
        let mut l = vec![1.0, 2.0, 1.9];
        let p = SamplingParams { temperature: 0.0, repetition_penalty: 1.3, ..Default::default() };
        assert_eq!(Sampler::new(3).sample(&mut l, &[1], &p, &mut SeededRng::new(0)), 2);
    }
}
