//! The forward half of a decode step: the limits, a context roll when the cache is full,
//! the forward pass of the pending token and the checks of its logits. A single stream
//! runs it inside [`Generator::step`]; a batch ([`super::batch`]) runs
//! [`ready_to_forward`](Generator::ready_to_forward) for every lane, one batched pass,
//! then [`check_logits`](Generator::check_logits) per lane.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use perpetua_sampling::{NonFinitePolicy, SamplingError};

use super::session::{Session, model_err};
use super::{Event, FinishReason, Generator};
use crate::{GenerateError, KvCache, LanguageModel};

impl<M: LanguageModel> Generator<M> {
    /// What comes before a step's forward pass: the limits (`false`: the session
    /// finished) and a context roll when the cache is full.
    pub(super) fn ready_to_forward(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
    ) -> Result<bool, GenerateError> {
        if let Some(reason) = self.limit_reached(s) {
            self.finish(s, ev, reason);
            return Ok(false);
        }
        if s.cache.seq_len() >= s.window {
            self.roll(s, ev)?;
        }
        Ok(true)
    }

    /// Limits checked before a step: the cancel flag, `max_new_tokens`, `max_time`.
    fn limit_reached(&self, s: &Session<M::Cache>) -> Option<FinishReason> {
        let settings = &self.settings;
        if settings.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            Some(FinishReason::Cancelled)
        } else if settings.max_new_tokens.is_some_and(|m| s.produced() >= m) {
            Some(FinishReason::MaxNewTokens)
        } else if settings.max_time.is_some_and(|t| s.started.elapsed() >= t) {
            Some(FinishReason::MaxTime)
        } else {
            None
        }
    }

    /// Feed the pending token (its logits predict the next one) and check the logits:
    /// their length, and NaN / `+inf` under the chain's [`NonFinitePolicy`] (repaired
    /// here, once, under `Sanitize`; the chain is then given clean logits).
    pub(super) fn forward_pending(&mut self, s: &mut Session<M::Cache>) -> Result<Instant, GenerateError> {
        let pending = s.tokens[s.tokens.len() - 1];
        let t0 = Instant::now();
        self.model.forward(&[pending], &mut s.cache, &mut self.buffers.logits).map_err(model_err)?;
        let sampled_from = Instant::now();
        s.timings.forward += sampled_from - t0;
        s.counts.forward_passes += 1;
        self.check_logits(s)?;
        Ok(sampled_from)
    }

    /// The logits buffer checked: the vocabulary's length, and under
    /// `NonFinitePolicy::Sanitize` NaN/`+inf` repaired (counted), once per step.
    pub(super) fn check_logits(&mut self, s: &mut Session<M::Cache>) -> Result<(), GenerateError> {
        let logits = &mut self.buffers.logits;
        let vocab = self.model.vocab_size();
        if logits.len() != vocab {
            return Err(GenerateError::LogitsLength { got: logits.len(), expected: vocab });
        }
        if self.chain.non_finite_policy() == NonFinitePolicy::Sanitize {
            let repaired = perpetua_sampling::sanitize_logits(logits);
            if repaired > 0 {
                s.counts.sanitized_logits += repaired;
                tracing::warn!(
                    position = s.generated(),
                    repaired,
                    "non-finite logits from the model were sanitized"
                );
                if logits.iter().all(|&l| l == f32::NEG_INFINITY) {
                    return Err(SamplingError::EmptyCandidates { stage: "sanitize_non_finite" }.into());
                }
            }
        }
        Ok(())
    }
}
