//! Decoding beyond sampling: beam search ([`Generator::beam_search`]), speculative
//! decoding ([`Generator::speculative`]) and chain-of-thought decoding
//! ([`Generator::cot_decode`]).
//!
//! Each decoder is a method of the [`Generator`] and uses its configuration: the
//! tokenizer (prompt encoding, output text), the chain's *processors* (each decoder
//! says how it uses them; the chain's sampler is used only by speculative decoding),
//! the EOS ids, `max_new_tokens` (default: the rest of the context window), the
//! prefill chunk size and the seed. The EOS strategy, stop strings, repetition
//! detection, context rolling and traces belong to the sampling loop and are not used.
//! Results reuse [`Generation`] (text, ids, finish reason, counts, timings) and add what
//! each decoder knows (n-best hypotheses, acceptance statistics, path confidences).
//!
//! [`Generation`]: crate::Generation

mod beam;
mod cot;
mod speculative;

pub use beam::{BeamConfig, BeamHypothesis, BeamSearchOutput, EarlyStopping};
pub use cot::{AnswerSpan, CotConfig, CotOutput, CotPath};
pub use speculative::{SpeculativeConfig, SpeculativeOutput, SpeculativeStats};

use perpetua_sampling::{Chain, SamplingContext};
use rand::{Rng, RngCore};

use crate::generator::Feed;
use crate::{GenerateError, Generator, LanguageModel, Prompt};

/// A prompt encoded and prefilled into a fresh cache.
pub(crate) struct Prefilled<C> {
    pub(crate) ids: Vec<u32>,
    pub(crate) cache: C,
    /// Logits after the whole prompt (when `feed_all`) or empty.
    pub(crate) logits: Vec<f32>,
    /// New tokens allowed: `max_new_tokens`, at most what the window leaves.
    pub(crate) budget: usize,
    pub(crate) prefill: std::time::Duration,
}

impl<M: LanguageModel> Generator<M> {
    /// Open `prompt` for a decoder ([`Generator::open`] with [`Feed::Decoder`]): every
    /// prompt token fed when `feed_all` (the logits of the last one are returned), else
    /// all but the last. The window is the sampling loop's
    /// ([`GeneratorBuilder::context_window`](crate::GeneratorBuilder::context_window), a
    /// mode's window, the cache and the model; the same errors), which `limit` caps
    /// further (another model's window); the decoders do not roll, so prompt and new
    /// tokens must fit it.
    pub(crate) fn prefilled(
        &mut self,
        prompt: Prompt,
        feed_all: bool,
        limit: Option<usize>,
    ) -> Result<Prefilled<M::Cache>, GenerateError> {
        let opened = self.open(prompt, Feed::Decoder { all: feed_all, limit })?;
        let budget =
            self.settings().max_new_tokens.unwrap_or(usize::MAX).min(opened.at.window - opened.ids.len());
        let logits = if feed_all {
            check_len(self.last_logits(), self.model().vocab_size())?;
            self.last_logits().to_vec()
        } else {
            Vec::with_capacity(self.model().vocab_size())
        };
        Ok(Prefilled { ids: opened.ids, cache: opened.cache, logits, budget, prefill: opened.at.prefill })
    }
}

/// A logit vector must have `vocab` entries.
/// Run a decoder with the generator's panic rule: a panic in the code it calls (the
/// model, a draft model, custom processors) becomes [`GenerateError::Panicked`] with
/// `during` naming the decoder. The decoders keep no single partial sequence to return
/// (beams, branches), so the error carries no output; the generator stays usable (each
/// decoder resets the chain and builds fresh caches when it starts).
pub(crate) fn catching<T>(
    during: &'static str,
    decoder: impl FnOnce() -> Result<T, GenerateError>,
) -> Result<T, GenerateError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decoder))
        .unwrap_or_else(|payload| Err(GenerateError::from_panic(during, payload)))
}

pub(crate) fn check_len(logits: &[f32], vocab: usize) -> Result<(), GenerateError> {
    if logits.len() != vocab {
        return Err(GenerateError::LogitsLength { got: logits.len(), expected: vocab });
    }
    Ok(())
}

/// The distribution the chain samples from, as a dense vector (`out[id]`, length
/// `vocab`): softmax over the candidates its processors leave; for a
/// [`Greedy`](perpetua_sampling::samplers::Greedy) sampler, the one-hot argmax.
pub(crate) fn dense_probs(
    chain: &mut Chain,
    logits: &[f32],
    ctx: &SamplingContext<'_>,
    greedy: bool,
    out: &mut Vec<f32>,
) -> Result<(), GenerateError> {
    let vocab = logits.len();
    let candidates = chain.process(logits, ctx)?;
    out.clear();
    out.resize(vocab, 0.0);
    if greedy {
        let id = argmax(candidates.as_slice().iter().map(|c| (c.id, c.logit)))
            .ok_or(perpetua_sampling::SamplingError::EmptyCandidates { stage: "greedy" })?;
        out[id as usize] = 1.0;
        return Ok(());
    }
    candidates.softmax()?;
    for c in candidates.as_slice() {
        if let Some(p) = out.get_mut(c.id as usize) {
            *p = c.prob;
        }
    }
    Ok(())
}

/// The id with the highest finite value (ties: the lowest id), or `None`.
pub(crate) fn argmax(values: impl Iterator<Item = (u32, f32)>) -> Option<u32> {
    let mut best: Option<(u32, f32)> = None;
    for (id, v) in values {
        if v == f32::NEG_INFINITY || v.is_nan() {
            continue;
        }
        best = match best {
            Some((b, bv)) if bv > v || (bv == v && b < id) => Some((b, bv)),
            _ => Some((id, v)),
        };
    }
    best.map(|(id, _)| id)
}

/// One draw from the dense distribution `probs` (need not be normalised; `total` is
/// its sum): inverse CDF at `u·total`. `None` when every weight is zero.
pub(crate) fn draw_dense(probs: &[f32], rng: &mut dyn RngCore) -> Option<u32> {
    let total: f64 = probs.iter().map(|&p| f64::from(p.max(0.0))).sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let u = rng.random::<f64>() * total;
    let mut acc = 0.0_f64;
    let mut last = None;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += f64::from(p);
            last = Some(i as u32);
            if u < acc {
                return last;
            }
        }
    }
    // Round-off left `acc` a hair below `u`: the last token with weight.
    last
}
