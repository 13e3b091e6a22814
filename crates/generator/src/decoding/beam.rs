//! Beam search with length normalisation, HF's three early-stopping modes and n-best
//! results, over forked KV caches.

use std::time::Instant;

use perpetua_sampling::{SamplingContext, stats};

use super::{Prefilled, check_len};
use crate::generator::model_err;
use crate::{
    Counts, FinishReason, ForkableCache, GenerateError, Generation, Generator, LanguageModel, Prompt, Timings,
};

/// When beam search stops (HF `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// HF `True`: stop as soon as `num_beams` hypotheses are finished.
    AsSoonAsFull,
    /// HF `False` (the default): stop when the best running beam, normalised at its
    /// *current* length, cannot beat the worst kept hypothesis. A heuristic: with a
    /// positive length penalty a longer continuation could still have won.
    #[default]
    Heuristic,
    /// HF `"never"`: stop only when no continuation can beat the worst kept hypothesis
    /// (with a positive length penalty, the bound uses the longest length allowed).
    /// Exact as long as the processors never raise a log-probability.
    Never,
}

/// Beam-search parameters. Defaults: 4 beams, length penalty 1.0, heuristic early
/// stopping, 1 returned sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamConfig {
    /// Beams kept per step (`>= 1`; 1 is greedy search).
    pub num_beams: usize,
    /// `α` of the score `Σ log p / len^α`, `len` counting the generated tokens with
    /// the EOS that ended the hypothesis. `α > 0` favours longer sequences, `α < 0`
    /// shorter ones, `0` compares raw sums. Finite.
    pub length_penalty: f32,
    /// When to stop.
    pub early_stopping: EarlyStopping,
    /// Hypotheses returned (`1..=num_beams`).
    pub num_return_sequences: usize,
}

impl Default for BeamConfig {
    fn default() -> Self {
        Self {
            num_beams: 4,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            num_return_sequences: 1,
        }
    }
}

impl BeamConfig {
    /// `num_beams` beams, the other fields at their defaults.
    pub fn new(num_beams: usize) -> Self {
        Self { num_beams, ..Self::default() }
    }

    /// Set the length penalty `α`.
    pub fn length_penalty(mut self, alpha: f32) -> Self {
        self.length_penalty = alpha;
        self
    }

    /// Set the early-stopping mode.
    pub fn early_stopping(mut self, mode: EarlyStopping) -> Self {
        self.early_stopping = mode;
        self
    }

    /// Return the `n` best hypotheses.
    pub fn num_return_sequences(mut self, n: usize) -> Self {
        self.num_return_sequences = n;
        self
    }

    fn validate(&self) -> Result<(), GenerateError> {
        if self.num_beams == 0 {
            return Err(GenerateError::invalid("num_beams", 0, "must be >= 1"));
        }
        if !self.length_penalty.is_finite() {
            return Err(GenerateError::invalid("length_penalty", self.length_penalty, "must be finite"));
        }
        if self.num_return_sequences == 0 || self.num_return_sequences > self.num_beams {
            return Err(GenerateError::invalid(
                "num_return_sequences",
                self.num_return_sequences,
                "must be in 1..=num_beams",
            ));
        }
        Ok(())
    }
}

/// One finished beam-search hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamHypothesis {
    /// Generated ids (the EOS that ended it excluded).
    pub ids: Vec<u32>,
    /// Their text (empty without a tokenizer).
    pub text: String,
    /// Sum of the processed log-probabilities of every generated token, the EOS
    /// included.
    pub sum_logprobs: f64,
    /// `sum_logprobs / len^α`, `len = ids.len()` plus one for an EOS: what hypotheses
    /// are ranked by.
    pub score: f64,
    /// [`FinishReason::Eos`] or [`FinishReason::MaxNewTokens`].
    pub finish_reason: FinishReason,
}

/// The result of [`Generator::beam_search`].
#[derive(Debug, Clone, PartialEq)]
pub struct BeamSearchOutput {
    /// The best hypothesis as a [`Generation`] (counts and timings of the whole search;
    /// `forward_passes` counts beam-token forward calls).
    pub generation: Generation,
    /// The `num_return_sequences` best hypotheses, best first (ties: finished first).
    pub hypotheses: Vec<BeamHypothesis>,
}

/// A running beam.
struct Beam<C> {
    ids: Vec<u32>,
    sum: f64,
    cache: C,
    logits: Vec<f32>,
}

/// A kept hypothesis before its text is decoded.
struct Finished {
    ids: Vec<u32>,
    sum: f64,
    score: f64,
    reason: FinishReason,
}

fn normalise(sum: f64, len: usize, alpha: f32) -> f64 {
    sum / (len as f64).powf(f64::from(alpha))
}

impl<M: LanguageModel> Generator<M>
where
    M::Cache: ForkableCache,
{
    /// Beam search from `prompt` (HF `num_beams` generation without sampling).
    ///
    /// Each step, every running beam's next-token scores are the log-softmax of the
    /// model's logits, then the chain's *processors* (no-repeat-n-gram, repetition
    /// penalty, banned tokens, …), added to the beam's sum without renormalisation —
    /// HF's order (`logits_processor(input_ids, log_softmax(logits))`). The chain's
    /// sampler is not used. Of the `2 × num_beams` best (beam, token) candidates, an
    /// EOS ranked within the first `num_beams` finishes a hypothesis; the first
    /// `num_beams` others continue, each on a [`ForkableCache::fork`] of its parent's
    /// cache. At `max_new_tokens` (default: the rest of the window) the first
    /// `num_beams` candidates all finish. At most `num_beams` finished hypotheses are
    /// kept, ranked by `sum / len^α` ([`BeamConfig::length_penalty`]).
    ///
    /// Errors: an invalid [`BeamConfig`] (naming the field); prompt, model, cache and
    /// processor errors as [`generate`](Self::generate).
    ///
    /// ```
    /// use perpetua_generator::testing::{ByteTokenizer, FakeModel};
    /// use perpetua_generator::{BeamConfig, Generator};
    /// use perpetua_sampling::{Chain, processors::NoRepeatNGram, samplers::Greedy};
    ///
    /// let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(ByteTokenizer::EOS);
    /// let mut generator = Generator::builder(model)
    ///     .tokenizer(ByteTokenizer::new())
    ///     .chain(Chain::new(Greedy).with(NoRepeatNGram::new(2)?))
    ///     .max_new_tokens(8)
    ///     .build()?;
    /// let out = generator.beam_search("Once", &BeamConfig::new(4).num_return_sequences(3))?;
    /// assert_eq!(out.hypotheses.len(), 3);
    /// assert!(out.hypotheses[0].score >= out.hypotheses[1].score);
    /// assert_eq!(out.generation.ids, out.hypotheses[0].ids);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn beam_search(
        &mut self,
        prompt: impl Into<Prompt>,
        config: &BeamConfig,
    ) -> Result<BeamSearchOutput, GenerateError> {
        let prompt = prompt.into();
        super::catching("beam search", || self.beam_search_impl(prompt, config))
    }

    /// [`Self::beam_search`] without the panic boundary.
    fn beam_search_impl(
        &mut self,
        prompt: Prompt,
        config: &BeamConfig,
    ) -> Result<BeamSearchOutput, GenerateError> {
        config.validate()?;
        let Prefilled { ids: prompt_ids, cache, logits, budget, prefill } =
            self.prefilled(prompt, true, None)?;
        let p = self.parts();
        let decode_started = Instant::now();
        let vocab = p.model.vocab_size();
        let width = config.num_beams;
        let alpha = config.length_penalty;
        p.chain.reset();

        let mut counts =
            Counts { prompt_tokens: prompt_ids.len(), prefill_tokens: prompt_ids.len(), ..Counts::default() };
        let mut forward_time = std::time::Duration::ZERO;
        let mut beams = vec![Beam { ids: Vec::new(), sum: 0.0, cache, logits }];
        let mut finished: Vec<Finished> = Vec::with_capacity(width + 1);
        let mut scores: Vec<f32> = Vec::with_capacity(vocab);
        let mut context: Vec<u32> = Vec::with_capacity(prompt_ids.len() + budget.min(1 << 16));
        // (total, beam, token) candidates of one step.
        let mut candidates: Vec<(f64, usize, u32)> = Vec::new();

        let add =
            |finished: &mut Vec<Finished>, ids: Vec<u32>, sum: f64, len: usize, reason: FinishReason| {
                let score = normalise(sum, len, alpha);
                finished.push(Finished { ids, sum, score, reason });
                // Keep the best `width`; a stable sort keeps earlier (finished first) on ties.
                finished.sort_by(|a, b| b.score.total_cmp(&a.score));
                finished.truncate(width);
            };

        for step in 0..budget {
            candidates.clear();
            for (b, beam) in beams.iter().enumerate() {
                let lse = stats::log_sum_exp(&beam.logits)?;
                scores.clear();
                scores.extend(beam.logits.iter().map(|&l| (f64::from(l) - lse) as f32));
                context.clear();
                context.extend_from_slice(&prompt_ids);
                context.extend_from_slice(&beam.ids);
                let ctx = SamplingContext::new(&context, prompt_ids.len()).with_eos_ids(p.eos_ids);
                let processed = p.chain.process(&scores, &ctx)?;
                candidates.extend(
                    processed
                        .as_slice()
                        .iter()
                        .filter(|c| c.logit > f32::NEG_INFINITY)
                        .map(|c| (beam.sum + f64::from(c.logit), b, c.id)),
                );
            }
            // Best first; ties by beam then token, so results are deterministic.
            let order = |a: &(f64, usize, u32), b: &(f64, usize, u32)| {
                b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
            };
            let keep = (2 * width).min(candidates.len());
            if keep < candidates.len() {
                candidates.select_nth_unstable_by(keep, order);
                candidates.truncate(keep);
            }
            candidates.sort_unstable_by(order);

            let last_step = step + 1 == budget;
            let mut next: Vec<(f64, usize, u32)> = Vec::with_capacity(width);
            for (rank, &(total, b, token)) in candidates.iter().enumerate() {
                let is_eos = p.eos_ids.contains(&token);
                if is_eos || last_step {
                    if rank < width {
                        let mut ids = beams[b].ids.clone();
                        let reason = if is_eos {
                            FinishReason::Eos
                        } else {
                            ids.push(token);
                            FinishReason::MaxNewTokens
                        };
                        add(&mut finished, ids, total, step + 1, reason);
                    }
                } else if next.len() < width {
                    next.push((total, b, token));
                }
            }
            if last_step || next.is_empty() {
                beams.clear();
                break;
            }

            // Early stopping (HF `_check_early_stop_heuristic`), after this step's tokens.
            if finished.len() == width {
                let worst = finished.last().map_or(f64::NEG_INFINITY, |f| f.score);
                let best_running = next[0].0;
                let done = match config.early_stopping {
                    EarlyStopping::AsSoonAsFull => true,
                    EarlyStopping::Heuristic => worst >= normalise(best_running, step + 1, alpha),
                    EarlyStopping::Never => {
                        let len = if alpha > 0.0 { budget } else { step + 1 };
                        worst >= normalise(best_running, len, alpha)
                    }
                };
                if done {
                    beams.clear();
                    break;
                }
            }

            // Grow the next beams: a parent's last child takes its cache, earlier ones fork.
            let mut uses = vec![0usize; beams.len()];
            for &(_, b, _) in &next {
                uses[b] += 1;
            }
            let mut parents: Vec<Option<Beam<M::Cache>>> = beams.drain(..).map(Some).collect();
            let mut grown = Vec::with_capacity(next.len());
            for &(total, b, token) in &next {
                uses[b] -= 1;
                let (mut ids, mut cache, logits) = if uses[b] == 0 {
                    let parent = parents[b].take().ok_or(GenerateError::CacheOutOfSync {
                        cache_len: 0,
                        expected: prompt_ids.len() + step,
                    })?;
                    (parent.ids, parent.cache, parent.logits)
                } else {
                    let parent = parents[b].as_ref().ok_or(GenerateError::CacheOutOfSync {
                        cache_len: 0,
                        expected: prompt_ids.len() + step,
                    })?;
                    (parent.ids.clone(), parent.cache.fork()?, Vec::with_capacity(vocab))
                };
                let mut logits = logits;
                let t0 = Instant::now();
                p.model.forward(&[token], &mut cache, &mut logits).map_err(model_err)?;
                forward_time += t0.elapsed();
                counts.forward_passes += 1;
                check_len(&logits, vocab)?;
                ids.push(token);
                grown.push(Beam { ids, sum: total, cache, logits });
            }
            beams = grown;
        }
        // Budget 0: the empty hypothesis.
        if budget == 0 {
            add(&mut finished, Vec::new(), 0.0, 0, FinishReason::MaxNewTokens);
        }

        let mut hypotheses = Vec::with_capacity(config.num_return_sequences);
        for f in finished.into_iter().take(config.num_return_sequences) {
            let text = p.text_of(&f.ids)?;
            hypotheses.push(BeamHypothesis {
                text,
                ids: f.ids,
                sum_logprobs: f.sum,
                score: f.score,
                finish_reason: f.reason,
            });
        }
        let best = hypotheses.first().cloned().ok_or(GenerateError::invalid(
            "num_beams",
            width,
            "no hypothesis finished (every candidate was masked)",
        ))?;
        counts.generated_tokens = best.ids.len();
        let timings = Timings {
            prefill,
            decode: decode_started.elapsed(),
            forward: forward_time,
            ..Timings::default()
        };
        let generation = Generation {
            text: best.text,
            ids: best.ids,
            prompt_len: prompt_ids.len(),
            finish_reason: best.finish_reason,
            counts,
            timings,
            trace: None,
        };
        Ok(BeamSearchOutput { generation, hypotheses })
    }
}
