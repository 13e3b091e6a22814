//! Speculative decoding (Leviathan et al., 2023; Chen et al., 2023): a cheap draft
//! model proposes `K` tokens, the target verifies them in one forward pass, and the
//! accept/resample rule makes the output distributed exactly as the target's.

use std::time::{Duration, Instant};

use perpetua_sampling::{SamplingContext, SamplingError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use super::{Prefilled, check_len, dense_probs, draw_dense};
use crate::generator::{feed_chunks, model_err};
use crate::{
    Counts, FinishReason, GenerateError, Generation, Generator, KvCache, LanguageModel, Prompt, Timings,
};

/// Speculative-decoding parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculativeConfig {
    /// Draft tokens proposed per round, `K >= 1` (default 4).
    pub draft_tokens: usize,
}

impl Default for SpeculativeConfig {
    fn default() -> Self {
        Self { draft_tokens: 4 }
    }
}

impl SpeculativeConfig {
    /// `k` draft tokens per round.
    pub fn new(k: usize) -> Self {
        Self { draft_tokens: k }
    }

    fn validate(&self) -> Result<(), GenerateError> {
        if self.draft_tokens == 0 {
            return Err(GenerateError::invalid("draft_tokens", 0, "must be >= 1"));
        }
        Ok(())
    }
}

/// What speculative decoding did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpeculativeStats {
    /// Draft-then-verify rounds (one target forward pass each).
    pub rounds: usize,
    /// Draft tokens proposed.
    pub drafted: usize,
    /// Draft tokens accepted by the rule `u < p_target / p_draft`.
    pub accepted: usize,
    /// Rounds ending in a rejection (a token resampled from `norm(max(0, p_t − p_d))`).
    pub resampled: usize,
    /// Rounds where every draft token was accepted and the target's next token came
    /// for free (the bonus token).
    pub bonus: usize,
    /// Target forward calls after the prefill (one [`LanguageModel::forward_all`] per
    /// round).
    pub target_passes: usize,
    /// Draft forward calls after the prefill.
    pub draft_passes: usize,
    /// Time in target forward calls (verification).
    pub target_time: Duration,
    /// Time in draft forward calls (drafting, prefill included).
    pub draft_time: Duration,
}

impl SpeculativeStats {
    /// `accepted / drafted` (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 { 0.0 } else { self.accepted as f64 / self.drafted as f64 }
    }
}

/// The result of [`Generator::speculative`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpeculativeOutput {
    /// The generation (its `counts.forward_passes` are the target's passes;
    /// `timings.forward` is target plus draft time).
    pub generation: Generation,
    /// Acceptance counters and times.
    pub stats: SpeculativeStats,
}

impl<M: LanguageModel> Generator<M> {
    /// Speculative decoding: this generator's model is the *target*, `draft` a cheaper
    /// model over the same vocabulary. Each round:
    ///
    /// 1. the draft draws `K` tokens `x₁…x_K` from its distributions `p_d`;
    /// 2. the target scores all of them with one [`LanguageModel::forward_all`] call,
    ///    giving `p_t` at the `K + 1` positions;
    /// 3. `x_i` is accepted with probability `min(1, p_t(x_i) / p_d(x_i))`; at the
    ///    first rejection a token is drawn from `norm(max(0, p_t − p_d))` and the round
    ///    ends; when all `K` are accepted a bonus token is drawn from `p_t` at position
    ///    `K + 1`;
    /// 4. both caches are truncated to the accepted sequence (the rejected tail is
    ///    dropped from the target's cache, the draft re-feeds what it has not seen).
    ///
    /// `p_t` and `p_d` are the distributions the chain samples from: its processors
    /// applied to each model's logits with the same context, then softmax — or, with a
    /// [`Greedy`](perpetua_sampling::samplers::Greedy) sampler, the one-hot argmax (the
    /// output is then the target's greedy text). The rule makes every output token
    /// distributed exactly as sampling the target alone; only the speed depends on the
    /// draft. Near `max_new_tokens` the last round drafts fewer tokens.
    ///
    /// Errors: `draft_tokens = 0`; a draft whose `vocab_size` differs; a sampler other
    /// than `multinomial` or `greedy`; prompt, model, cache and processor errors as
    /// [`generate`](Self::generate).
    ///
    /// ```
    /// use perpetua_generator::testing::FakeModel;
    /// use perpetua_generator::{Generator, SpeculativeConfig};
    ///
    /// let target = FakeModel::new(16).with_seed(1);
    /// let draft = FakeModel::new(16).with_seed(2);
    /// let mut generator = Generator::builder(target).seed(3).max_new_tokens(20).build()?;
    /// let out = generator.speculative(&draft, [1_u32, 2, 3], &SpeculativeConfig::new(4))?;
    /// assert_eq!(out.generation.ids.len(), 20);
    /// assert!(out.stats.target_passes < 20); // fewer target passes than tokens
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn speculative<D: LanguageModel>(
        &mut self,
        draft: &D,
        prompt: impl Into<Prompt>,
        config: &SpeculativeConfig,
    ) -> Result<SpeculativeOutput, GenerateError> {
        let prompt = prompt.into();
        super::catching("speculative decoding", || self.speculative_impl(draft, prompt, config))
    }

    /// [`Self::speculative`] without the panic boundary.
    fn speculative_impl<D: LanguageModel>(
        &mut self,
        draft: &D,
        prompt: Prompt,
        config: &SpeculativeConfig,
    ) -> Result<SpeculativeOutput, GenerateError> {
        config.validate()?;
        let vocab = self.model().vocab_size();
        if draft.vocab_size() != vocab {
            return Err(GenerateError::invalid(
                "draft vocab_size",
                draft.vocab_size(),
                "must equal the target's vocab_size",
            ));
        }
        let greedy = match self.chain_mut().sampler_name() {
            "greedy" => true,
            "multinomial" => false,
            other => {
                return Err(GenerateError::invalid(
                    "sampler",
                    other,
                    "speculative decoding draws from the processed distribution: use Multinomial or Greedy",
                ));
            }
        };
        let mut stats = SpeculativeStats::default();
        let mut d_cache = draft.new_cache().map_err(model_err)?;
        let d_window = d_cache.capacity().min(draft.max_context());
        let Prefilled { ids, cache: mut t_cache, budget, prefill, .. } =
            self.prefilled(prompt, false, Some(d_window))?;
        let p = self.parts();
        let prompt_len = ids.len();
        let mut d_logits = Vec::with_capacity(vocab);
        let t0 = Instant::now();
        feed_chunks(draft, &mut d_cache, &ids[..prompt_len - 1], p.settings.prefill_chunk, &mut d_logits)?;
        stats.draft_time += t0.elapsed();

        p.chain.reset();
        let mut rng = ChaCha8Rng::seed_from_u64(p.settings.seed);
        let decode_started = Instant::now();
        let k_max = config.draft_tokens;
        let mut tokens = ids;
        let mut finish = None;
        // Buffers: draft distributions (K × vocab), target rows ((K + 1) × vocab), one
        // processed target row, the residual, the drafted tokens, sequence + drafts.
        let mut p_draft: Vec<f32> = Vec::with_capacity(k_max * vocab);
        let mut t_rows: Vec<f32> = Vec::with_capacity((k_max + 1) * vocab);
        let mut row: Vec<f32> = Vec::with_capacity(vocab);
        let mut residual: Vec<f32> = Vec::with_capacity(vocab);
        let mut drafted: Vec<u32> = Vec::with_capacity(k_max);
        let mut seq: Vec<u32> = Vec::new();
        let mut feed: Vec<u32> = Vec::with_capacity(k_max + 1);
        let empty = |stage| GenerateError::Sampling(SamplingError::EmptyCandidates { stage });

        while finish.is_none() {
            let generated = tokens.len() - prompt_len;
            if generated >= budget {
                finish = Some(FinishReason::MaxNewTokens);
                break;
            }
            // The round yields up to k + 1 tokens.
            let k = k_max.min(budget - generated - 1);
            stats.rounds += 1;
            drafted.clear();
            p_draft.clear();
            seq.clear();
            seq.extend_from_slice(&tokens);

            if k > 0 {
                let t = Instant::now();
                // The draft's cache lags after a fully accepted round: catch up.
                let from = d_cache.seq_len();
                draft.forward(&tokens[from..], &mut d_cache, &mut d_logits).map_err(model_err)?;
                stats.draft_passes += 1;
                for i in 0..k {
                    check_len(&d_logits, vocab)?;
                    let ctx = SamplingContext::new(&seq, prompt_len).with_eos_ids(p.eos_ids);
                    dense_probs(p.chain, &d_logits, &ctx, greedy, &mut row)?;
                    let x = draw_dense(&row, &mut rng).ok_or_else(|| empty("speculative draft"))?;
                    p_draft.extend_from_slice(&row);
                    drafted.push(x);
                    seq.push(x);
                    if i + 1 < k {
                        draft.forward(&[x], &mut d_cache, &mut d_logits).map_err(model_err)?;
                        stats.draft_passes += 1;
                    }
                }
                stats.draft_time += t.elapsed();
            }

            // Verify: the pending token and the drafts in one target pass.
            feed.clear();
            feed.extend_from_slice(&tokens[tokens.len() - 1..]);
            feed.extend_from_slice(&drafted);
            let t = Instant::now();
            p.model.forward_all(&feed, &mut t_cache, &mut t_rows).map_err(model_err)?;
            stats.target_time += t.elapsed();
            stats.target_passes += 1;
            check_len(&t_rows, (k + 1) * vocab)?;

            let mut accepted = 0;
            let mut next = None;
            for i in 0..k {
                let ctx = SamplingContext::new(&seq[..tokens.len() + i], prompt_len).with_eos_ids(p.eos_ids);
                dense_probs(p.chain, &t_rows[i * vocab..(i + 1) * vocab], &ctx, greedy, &mut row)?;
                let x = drafted[i] as usize;
                let q = &p_draft[i * vocab..(i + 1) * vocab];
                // q[x] > 0: x was drawn from q. Accept with probability min(1, p/q).
                let u: f64 = rng.random();
                if u * f64::from(q[x]) < f64::from(row[x]) {
                    accepted += 1;
                    continue;
                }
                residual.clear();
                residual.extend(row.iter().zip(q).map(|(&p, &d)| (p - d).max(0.0)));
                // Mathematically Σ residual ≥ q(x) − p(x) > 0 after a rejection; if
                // round-off emptied it, p and q agree and p itself is the answer.
                let token = match draw_dense(&residual, &mut rng) {
                    Some(t) => t,
                    None => draw_dense(&row, &mut rng).ok_or_else(|| empty("speculative residual"))?,
                };
                next = Some(token);
                stats.resampled += 1;
                break;
            }
            let next = match next {
                Some(t) => t,
                None => {
                    let ctx = SamplingContext::new(&seq, prompt_len).with_eos_ids(p.eos_ids);
                    dense_probs(p.chain, &t_rows[k * vocab..(k + 1) * vocab], &ctx, greedy, &mut row)?;
                    if k > 0 {
                        stats.bonus += 1;
                    }
                    draw_dense(&row, &mut rng).ok_or_else(|| empty("speculative target"))?
                }
            };
            stats.drafted += k;
            stats.accepted += accepted;

            for &t in drafted[..accepted].iter().chain(std::iter::once(&next)) {
                if p.eos_ids.contains(&t) {
                    finish = Some(FinishReason::Eos);
                    break;
                }
                tokens.push(t);
                p.chain.accept(t);
                if tokens.len() - prompt_len >= budget {
                    finish = Some(FinishReason::MaxNewTokens);
                    break;
                }
            }
            // Both caches hold the sequence minus its pending last token (the draft's
            // may hold less and catches up next round).
            let keep = tokens.len() - 1;
            t_cache.truncate(keep.min(t_cache.seq_len()))?;
            d_cache.truncate(keep.min(d_cache.seq_len()))?;
            if t_cache.seq_len() != keep {
                return Err(GenerateError::CacheOutOfSync { cache_len: t_cache.seq_len(), expected: keep });
            }
        }

        let out_ids = tokens[prompt_len..].to_vec();
        let generation = Generation {
            text: p.text_of(&out_ids)?,
            prompt_len,
            finish_reason: finish.unwrap_or(FinishReason::MaxNewTokens),
            counts: Counts {
                prompt_tokens: prompt_len,
                prefill_tokens: prompt_len - 1,
                generated_tokens: out_ids.len(),
                forward_passes: stats.target_passes,
                ..Counts::default()
            },
            timings: Timings {
                prefill,
                decode: decode_started.elapsed(),
                forward: stats.target_time + stats.draft_time,
                ..Timings::default()
            },
            ids: out_ids,
            trace: None,
        };
        Ok(SpeculativeOutput { generation, stats })
    }
}
