//! Repetition (CTRL) and frequency/presence (OpenAI) penalties.
//!
//! Both count tokens over a window of the history: the last `last_n` tokens (`0` = all
//! of them) of either the whole sequence (prompt included) or only the generated
//! tokens. Counting uses a vocabulary-sized table kept in the stage and cleared after
//! each step, so a step costs O(window + distinct ids). It allocates nothing after
//! the first call when the window is bounded (`last_n > 0`): the table is sized to the
//! vocabulary and the id lists to `last_n` then. An unbounded window (`last_n = 0`)
//! grows its id lists with the history, amortised.

use super::masks::IdLookup;
use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// The tokens a penalty looks at: the last `last_n` (`0` = all) of the full sequence
/// when `include_prompt`, else of the generated tokens.
fn window<'a>(ctx: &SamplingContext<'a>, last_n: usize, include_prompt: bool) -> &'a [u32] {
    let source = if include_prompt { ctx.tokens } else { ctx.generated() };
    if last_n == 0 { source } else { &source[source.len().saturating_sub(last_n)..] }
}

/// Ids below this are counted in a dense table (at most 4 MiB); vocabularies are far
/// smaller (SmolLM2 49,152; Llama 3 128,256; Gemma 3 262,144).
const DENSE_LIMIT: usize = 1 << 20;

/// Occurrence counts of the distinct tokens of a window, without allocating per step.
#[derive(Debug, Clone, Default)]
struct TokenCounts {
    /// `dense[id]` = count of `id` in the window being counted; all zero between steps.
    /// Grows to the largest id seen, but never past [`DENSE_LIMIT`]: a history id far
    /// outside any vocabulary must not size an allocation.
    dense: Vec<u32>,
    /// Counts of ids at or beyond [`DENSE_LIMIT`] (outside every real vocabulary; rare),
    /// searched linearly.
    far: Vec<(u32, u32)>,
    /// Distinct ids of the window: those below `DENSE_LIMIT` in first-seen order, then
    /// the others.
    ids: Vec<u32>,
    /// `counts[j]` = occurrences of `ids[j]`.
    counts: Vec<u32>,
}

impl TokenCounts {
    /// Count `window`. `vocab_hint` sizes the dense table and `window_hint` (the
    /// configured window length, 0 = unbounded; capped by the vocabulary, which bounds
    /// the distinct ids) presizes the id lists, so that after the first call nothing
    /// grows: not even while a bounded window fills up.
    fn count(&mut self, window: &[u32], vocab_hint: usize, window_hint: usize) {
        self.ids.clear();
        self.counts.clear();
        if self.dense.len() < vocab_hint {
            self.dense.resize(vocab_hint, 0);
        }
        let distinct_max = window_hint.min(vocab_hint).max(window.len().min(vocab_hint));
        self.ids.reserve(distinct_max);
        self.counts.reserve(distinct_max);
        for &t in window {
            let i = t as usize;
            if i >= self.dense.len() && i < DENSE_LIMIT {
                self.dense.resize(i + 1, 0);
            }
            match self.dense.get_mut(i) {
                Some(count) => {
                    if *count == 0 {
                        self.ids.push(t);
                    }
                    *count += 1;
                }
                None => match self.far.iter_mut().find(|(id, _)| *id == t) {
                    Some((_, count)) => *count += 1,
                    None => self.far.push((t, 1)),
                },
            }
        }
        for &t in &self.ids {
            let i = t as usize;
            self.counts.push(self.dense[i]);
            self.dense[i] = 0;
        }
        for (t, count) in self.far.drain(..) {
            self.ids.push(t);
            self.counts.push(count);
        }
    }
}

/// Repetition penalty (CTRL, Keskar et al. 2019; HF `RepetitionPenaltyLogitsProcessor`,
/// llama.cpp `penalty_repeat`): for every *distinct* token `id` in the window,
///
/// `logit' = logit / penalty` if `logit > 0`, else `logit · penalty`.
///
/// So `penalty > 1` lowers a seen token whatever the sign of its logit, `penalty = 1`
/// is a no-op and `penalty < 1` favours repetition. A token counts once however often
/// it occurs. `-inf` stays `-inf`.
///
/// Window: the last [`last_n`](Self::with_last_n) tokens (`0`, the default, = the whole
/// history). Prompt tokens count by default, as in HF (which penalises every id of
/// `input_ids`); [`with_include_prompt(false)`](Self::with_include_prompt) restricts the
/// window to generated tokens.
///
/// Errors at construction: `penalty` not finite or `<= 0`.
#[derive(Debug, Clone)]
pub struct RepetitionPenalty {
    penalty: f32,
    last_n: usize,
    include_prompt: bool,
    counts: TokenCounts,
    lookup: IdLookup,
}

impl RepetitionPenalty {
    /// A repetition penalty over the whole history, prompt included.
    pub fn new(penalty: f32) -> Result<Self> {
        if !penalty.is_finite() || penalty <= 0.0 {
            return Err(SamplingError::invalid("repetition_penalty", penalty, "must be finite and > 0"));
        }
        Ok(Self {
            penalty,
            last_n: 0,
            include_prompt: true,
            counts: TokenCounts::default(),
            lookup: IdLookup::default(),
        })
    }

    /// Look only at the last `last_n` tokens (`0` = the whole history).
    pub fn with_last_n(mut self, last_n: usize) -> Self {
        self.last_n = last_n;
        self
    }

    /// Whether prompt tokens count (default `true`, as HF).
    pub fn with_include_prompt(mut self, include_prompt: bool) -> Self {
        self.include_prompt = include_prompt;
        self
    }

    /// The configured penalty.
    pub fn penalty(&self) -> f32 {
        self.penalty
    }

    /// The window length (`0` = whole history).
    pub fn last_n(&self) -> usize {
        self.last_n
    }

    /// Whether prompt tokens count.
    pub fn include_prompt(&self) -> bool {
        self.include_prompt
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "repetition_penalty"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::RepetitionPenalty)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        if self.penalty == 1.0 {
            return Ok(());
        }
        self.counts.count(window(ctx, self.last_n, self.include_prompt), candidates.len(), self.last_n);
        let penalty = self.penalty;
        self.lookup.edit(candidates, &self.counts.ids, |_, c| {
            c.logit = if c.logit > 0.0 { c.logit / penalty } else { c.logit * penalty };
        });
        Ok(())
    }
}

/// Frequency and presence penalties (OpenAI semantics): for every token `id` occurring
/// `count > 0` times in the window,
///
/// `logit' = logit − count · frequency − presence`.
///
/// Positive values discourage repetition, negative values encourage it, `0` disables
/// that term. `-inf` stays `-inf`.
///
/// Window: the last [`last_n`](Self::with_last_n) tokens (`0`, the default, = all) of the
/// *generated* tokens, as OpenAI; [`with_include_prompt(true)`](Self::with_include_prompt)
/// counts the prompt too (llama.cpp's behaviour when it is fed the prompt).
///
/// Errors at construction: a NaN or infinite `frequency` or `presence`.
#[derive(Debug, Clone)]
pub struct FrequencyPresencePenalty {
    frequency: f32,
    presence: f32,
    last_n: usize,
    include_prompt: bool,
    counts: TokenCounts,
    lookup: IdLookup,
}

impl FrequencyPresencePenalty {
    /// Frequency `frequency` and presence `presence` over all generated tokens.
    pub fn new(frequency: f32, presence: f32) -> Result<Self> {
        if !frequency.is_finite() {
            return Err(SamplingError::invalid("frequency_penalty", frequency, "must be finite"));
        }
        if !presence.is_finite() {
            return Err(SamplingError::invalid("presence_penalty", presence, "must be finite"));
        }
        Ok(Self {
            frequency,
            presence,
            last_n: 0,
            include_prompt: false,
            counts: TokenCounts::default(),
            lookup: IdLookup::default(),
        })
    }

    /// Look only at the last `last_n` tokens (`0` = all).
    pub fn with_last_n(mut self, last_n: usize) -> Self {
        self.last_n = last_n;
        self
    }

    /// Whether prompt tokens count (default `false`, as OpenAI).
    pub fn with_include_prompt(mut self, include_prompt: bool) -> Self {
        self.include_prompt = include_prompt;
        self
    }

    /// The frequency coefficient.
    pub fn frequency(&self) -> f32 {
        self.frequency
    }

    /// The presence coefficient.
    pub fn presence(&self) -> f32 {
        self.presence
    }
}

impl LogitsProcessor for FrequencyPresencePenalty {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "frequency_presence_penalty"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::FrequencyPresencePenalty)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        if self.frequency == 0.0 && self.presence == 0.0 {
            return Ok(());
        }
        self.counts.count(window(ctx, self.last_n, self.include_prompt), candidates.len(), self.last_n);
        let (frequency, presence) = (self.frequency, self.presence);
        let counts = &self.counts.counts;
        self.lookup.edit(candidates, &self.counts.ids, |j, c| {
            c.logit -= counts[j] as f32 * frequency + presence;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_respects_last_n_and_prompt() {
        let tokens = [1, 2, 3, 4, 5];
        let ctx = SamplingContext::new(&tokens, 2);
        assert_eq!(window(&ctx, 0, true), &[1, 2, 3, 4, 5]);
        assert_eq!(window(&ctx, 0, false), &[3, 4, 5]);
        assert_eq!(window(&ctx, 4, true), &[2, 3, 4, 5]);
        assert_eq!(window(&ctx, 2, false), &[4, 5]);
        assert_eq!(window(&ctx, 9, false), &[3, 4, 5]);
    }

    #[test]
    fn counts_are_per_distinct_id_and_table_is_cleared() {
        let mut c = TokenCounts::default();
        c.count(&[3, 1, 3, 3], 2, 0);
        assert_eq!((c.ids.as_slice(), c.counts.as_slice()), (&[3, 1][..], &[3, 1][..]));
        assert!(c.dense.iter().all(|&n| n == 0));
        c.count(&[], 0, 0);
        assert!(c.ids.is_empty());
    }

    #[test]
    fn constructors_name_the_parameter() {
        for p in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                RepetitionPenalty::new(p),
                Err(SamplingError::InvalidParameter { name: "repetition_penalty", .. })
            ));
        }
        assert!(matches!(
            FrequencyPresencePenalty::new(f32::NAN, 0.0),
            Err(SamplingError::InvalidParameter { name: "frequency_penalty", .. })
        ));
        assert!(matches!(
            FrequencyPresencePenalty::new(0.0, f32::NEG_INFINITY),
            Err(SamplingError::InvalidParameter { name: "presence_penalty", .. })
        ));
    }
}
