//! One decode step, phase by phase: the forward half ([`super::forward`]: limits, context
//! roll, the forward pass of the pending token), then the strategy's plan and the raw
//! statistics, the draw, the answer to an EOS draw, the appended token (text, stop
//! strings, its event), the strategy's degeneration hook.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Instant;

use perpetua_perpetual::{EosAction, EosDrawn, StepInfo, StepPlan, TokenAction, TokenAppended};
use perpetua_sampling::samplers::draw_without_replacement;
use perpetua_sampling::{Candidates, SamplingContext, stats};
use rand_chacha::ChaCha8Rng;

use super::session::Session;
use super::{Alternative, BackstepCause, Event, FinishReason, Generator, StepTrace, TRACE_TOP, TraceEvent};
use crate::{GenerateError, LanguageModel};

/// What the phases of one step share.
struct Step {
    /// Generated index of the step.
    generated: usize,
    /// When the forward pass ended: sampling time runs from here.
    sampled_from: Instant,
    /// The strategy's plan for the step.
    plan: StepPlan,
    /// The temperature the step samples at.
    temperature: f32,
    /// Whether the EOS ids are masked (by the plan or `min_new_tokens`).
    mask_eos: bool,
    /// Log-sum-exp of the raw logits.
    lse: f64,
    /// Entropy of the raw distribution when the plan asked for it.
    entropy: Option<f32>,
    /// Raw-distribution statistics for the trace (`None` without a trace).
    raw: Option<RawStats>,
    /// Whether the first draw is an EOS id (never when EOS is masked).
    eos_drawn: bool,
    /// The processed probability of the EOS set when an EOS was drawn.
    p_eos: f32,
    /// Raw logit of the token the trace records (read before anything refeeds).
    chosen: f32,
}

/// Raw-distribution statistics of one step for the trace.
struct RawStats {
    entropy: f64,
    varentropy: f64,
    p_eos: f64,
    top: Vec<Alternative>,
}

/// What the step does after its draw.
enum Drawn {
    /// Append this token (the draw, or the replacement of an EOS draw).
    Append(u32, TraceEvent),
    /// The EOS draw ends generation.
    Stop,
    /// The EOS draw is answered by a back step of up to `n` tokens.
    Backstep(usize),
    /// The EOS draw ends the turn and the generator resumes it.
    Resume,
}

impl Step {
    /// Record the step in the session's trace (when tracing) as `event` for `token`.
    fn trace<C>(&mut self, s: &mut Session<C>, token: u32, event: TraceEvent) {
        if let (Some(trace), Some(raw)) = (s.trace.as_mut(), self.raw.take()) {
            trace.push(StepTrace {
                index: self.generated,
                token,
                p_eos: raw.p_eos as f32,
                eos_information_bits: stats::information_bits(raw.p_eos) as f32,
                entropy: raw.entropy as f32,
                varentropy: raw.varentropy as f32,
                chosen_prob: (f64::from(self.chosen) - self.lse).exp() as f32,
                temperature: self.temperature,
                event,
                top: raw.top,
            });
        }
    }
}

/// A raw logit that masking cannot have touched (masking changes only EOS and banned
/// entries, and the trace reads it before the next forward pass), `-inf` for an id
/// outside the vocabulary.
fn raw_logit(logits: &[f32], id: u32) -> f32 {
    logits.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY)
}

impl<M: LanguageModel> Generator<M> {
    /// One decode step (or a finish). Events go to `ev`.
    pub(super) fn step(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
    ) -> Result<(), GenerateError> {
        if !self.ready_to_forward(s, ev)? {
            return Ok(());
        }
        let sampled_from = self.forward_pending(s)?;
        self.after_forward(s, ev, sampled_from)
    }

    /// The rest of a step once the pending token's logits are in the logits buffer
    /// (checked): the plan, the draw, the answer to an EOS draw, the appended token.
    pub(super) fn after_forward(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        sampled_from: Instant,
    ) -> Result<(), GenerateError> {
        let mut st = self.observe(s, ev, sampled_from)?;
        let first = self.draw(s, &mut st)?;
        let drawn =
            if st.eos_drawn { self.answer_eos(s, ev, &st)? } else { Drawn::Append(first, TraceEvent::Token) };
        s.timings.sampling += st.sampled_from.elapsed();
        st.chosen = raw_logit(&self.buffers.logits, first);
        let (token, event) = match drawn {
            Drawn::Append(token, event) => (token, event),
            Drawn::Stop => {
                st.trace(s, first, TraceEvent::Eos);
                self.finish(s, ev, FinishReason::Eos);
                return Ok(());
            }
            Drawn::Backstep(n) => {
                let removed = self.backstep(s, ev, n, BackstepCause::Eos)?;
                st.trace(s, first, TraceEvent::Backstep { removed });
                return Ok(());
            }
            Drawn::Resume => {
                let hidden = self.resume(s, ev)?;
                st.trace(s, first, TraceEvent::Resumed { hidden });
                return Ok(());
            }
        };
        st.chosen = raw_logit(&self.buffers.logits, token);
        let stopped = self.append(s, ev, &st, token);
        if let Some(rewritten) = self.after_token(s, ev, &st, stopped.is_some())? {
            st.trace(s, token, rewritten);
            return Ok(());
        }
        st.trace(s, token, event);
        self.finish_after_append(s, ev, stopped);
        Ok(())
    }

    /// The strategy's plan (its temperature, announced when it changes), the raw
    /// distribution's statistics (before any mask), then the EOS mask and the plan's
    /// bans.
    fn observe(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        sampled_from: Instant,
    ) -> Result<Step, GenerateError> {
        let generated = s.generated();
        let plan = self.strategy.plan_step(&StepInfo {
            prompt_len: s.prompt_len,
            generated,
            base_temperature: s.base_temperature,
        });
        let temperature = plan.temperature.unwrap_or(s.base_temperature);
        if temperature != s.temperature {
            ev.push_back(Event::TemperatureChanged { from: s.temperature, to: temperature });
            s.temperature = temperature;
        }
        let lse = stats::log_sum_exp_fast(&self.buffers.logits)?;
        let mut st = Step {
            generated,
            sampled_from,
            plan,
            temperature,
            mask_eos: false,
            lse,
            entropy: None,
            raw: None,
            eos_drawn: false,
            p_eos: 0.0,
            chosen: f32::NEG_INFINITY,
        };
        self.raw_statistics(s, &mut st)?;
        self.apply_masks(s, &mut st);
        Ok(st)
    }

    /// Statistics of the raw distribution (before any mask): the entropy the plan
    /// asked for, the trace's statistics, the top log-probabilities of token events.
    fn raw_statistics(&mut self, s: &Session<M::Cache>, st: &mut Step) -> Result<(), GenerateError> {
        let logits = &self.buffers.logits;
        st.entropy = (st.plan.observe_entropy && s.trace.is_none())
            .then(|| stats::entropy_fast(logits, st.lse) as f32);
        if s.trace.is_some() {
            let (entropy, varentropy) = stats::entropy_varentropy(logits)?;
            let mut top = Vec::with_capacity(TRACE_TOP);
            top_alternatives(logits, st.lse, TRACE_TOP, &mut top);
            let p_eos = stats::set_probability(logits, &self.eos_ids)?;
            st.raw = Some(RawStats { entropy, varentropy, p_eos, top });
        }
        if self.settings.top_logprobs > 0 {
            top_alternatives(logits, st.lse, self.settings.top_logprobs, &mut self.buffers.top);
        }
        Ok(())
    }

    /// Mask the EOS ids (by the plan or `min_new_tokens`) and the plan's bans.
    fn apply_masks(&mut self, s: &Session<M::Cache>, st: &mut Step) {
        let logits = &mut self.buffers.logits;
        st.mask_eos = st.plan.mask_eos || s.produced() < self.settings.min_new_tokens;
        if st.mask_eos {
            mask(logits, &self.eos_ids);
        }
        // Bans, unless they would leave nothing to draw (documented on `StepPlan::bans`).
        let bans = st.plan.bans.as_slice();
        if !bans.is_empty()
            && logits.iter().enumerate().any(|(i, &l)| l > f32::NEG_INFINITY && !bans.contains(&(i as u32)))
        {
            mask(logits, bans);
        }
    }

    /// The chain's draw; after an EOS draw, the processed EOS probability and the extra
    /// non-EOS draws the plan asked for.
    fn draw(&mut self, s: &mut Session<M::Cache>, st: &mut Step) -> Result<u32, GenerateError> {
        let ctx = SamplingContext::new(&s.tokens, s.prompt_len)
            .with_eos_ids(&self.eos_ids)
            .with_temperature_override(st.plan.temperature);
        self.chain.process_clean(&self.buffers.logits, &ctx)?;
        let first = self.chain.sample_processed(&ctx, &mut s.rng)?;
        let draws = &mut self.buffers.draws;
        draws.clear();
        draws.push(first);
        st.eos_drawn = !st.mask_eos && self.eos_ids.contains(&first);
        if st.eos_drawn {
            let candidates = self.chain.candidates_mut();
            st.p_eos = processed_set_probability(candidates, &self.eos_ids);
            if st.plan.draws > 1 {
                // Later draws exclude the first and every EOS id (EosDrawn::draws: a
                // replacement must never be another EOS).
                candidates.mask(first);
                for &id in &self.eos_ids {
                    candidates.mask(id);
                }
                let extra = &mut self.buffers.extra_draws;
                if draw_without_replacement(candidates, st.plan.draws - 1, &mut s.rng, extra).is_ok() {
                    draws.extend_from_slice(extra);
                }
            }
        }
        Ok(first)
    }

    /// The strategy's answer to an EOS draw. A back step that can remove nothing
    /// (right after a context roll, or at the first token) falls back to a
    /// replacement, as documented; a replacement is checked.
    fn answer_eos(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        st: &Step,
    ) -> Result<Drawn, GenerateError> {
        let removable = s.removable();
        let mut action = self.strategy.on_eos(&EosDrawn {
            prompt_len: s.prompt_len,
            generated: st.generated,
            removable,
            draws: &self.buffers.draws,
            p_eos: st.p_eos,
            base_temperature: s.base_temperature,
        });
        if let EosAction::Backstep { n } = action
            && n.min(removable) == 0
        {
            self.strategy.on_backstep(0, st.generated);
            action = match self.non_eos_draw(&mut s.rng) {
                Some(token) => EosAction::Replace { token },
                None => EosAction::Stop,
            };
        }
        Ok(match action {
            EosAction::Stop => Drawn::Stop,
            EosAction::Backstep { n } => Drawn::Backstep(n),
            EosAction::Resume => Drawn::Resume,
            EosAction::Replace { token } => {
                let vocab = self.model.vocab_size();
                if token as usize >= vocab || self.eos_ids.contains(&token) {
                    return Err(GenerateError::InvalidStrategyAction {
                        strategy: self.strategy.name(),
                        action: format!(
                            "Replace {{ token: {token} }}: the replacement must be a non-EOS id < {vocab}"
                        ),
                    });
                }
                ev.push_back(Event::EosAvoided {
                    position: st.generated,
                    p_eos: st.p_eos,
                    replacement: token,
                });
                s.counts.eos_avoided += 1;
                Drawn::Append(token, TraceEvent::EosAvoided)
            }
        })
    }

    /// Append `token`: the sequence, the chain's and the strategy's state, the text
    /// (held back while it could begin a stop string) and the token event. Returns the
    /// stop string's finish when one matched.
    fn append(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        st: &Step,
        token: u32,
    ) -> Option<FinishReason> {
        s.tokens.push(token);
        self.chain.accept(token);
        self.strategy.on_token(token, st.generated);
        s.counts.generated_tokens = s.produced();
        let bytes = match &self.tokenizer {
            Some(tok) if !(self.settings.skip_special_tokens && tok.is_special(token)) => {
                tok.token_bytes(token).unwrap_or(Cow::Borrowed(&[][..]))
            }
            _ => Cow::Borrowed(&[][..]),
        };
        s.decoder.push(&bytes);
        let (text, stopped) = self.release_text(s);
        let logprob = (f64::from(st.chosen) - st.lse) as f32;
        let top = if self.settings.top_logprobs > 0 { self.buffers.top.clone() } else { Vec::new() };
        ev.push_back(Event::Token { index: st.generated, id: token, text, logprob, top });
        stopped
    }

    /// The text the last token releases: up to a stop string's match (which ends the
    /// generation), else all but what could still begin a stop string.
    fn release_text(&self, s: &mut Session<M::Cache>) -> (String, Option<FinishReason>) {
        let text = s.decoder.text();
        let mut stopped = None;
        let mut release_to = text.len();
        if !self.stops.is_empty() {
            if let Some((start, k)) = self.stops.find(text, s.stop_scanned) {
                let include = self.settings.include_stop_string;
                let end = if include { start + self.stops.strings()[k].len() } else { start };
                s.text_end = Some(end);
                release_to = end;
                stopped = Some(FinishReason::StopString { index: k });
            } else {
                release_to = text.len() - self.stops.held_back(text);
            }
            s.stop_scanned = text.len();
        }
        let delta =
            if release_to > s.emitted { text[s.emitted..release_to].to_owned() } else { String::new() };
        s.emitted = s.emitted.max(release_to);
        (delta, stopped)
    }

    /// The degeneration hook: the strategy may answer the appended token with a back
    /// step or a resumed turn (a loop it found in the tail); not after a stop string,
    /// where the text ends. Returns the trace event of what it rewrote.
    fn after_token(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        st: &Step,
        stopped: bool,
    ) -> Result<Option<TraceEvent>, GenerateError> {
        if stopped {
            return Ok(None);
        }
        let t0 = Instant::now();
        let action = self.strategy.after_token(&TokenAppended {
            prompt_len: s.prompt_len,
            generated: &s.tokens[s.prompt_len..],
            removable: s.removable(),
            entropy: st.entropy.or(st.raw.as_ref().map(|r| r.entropy as f32)),
            temperature: st.temperature,
            base_temperature: s.base_temperature,
        });
        s.timings.sampling += t0.elapsed();
        Ok(match action {
            TokenAction::Continue => None,
            TokenAction::Backstep { n } => {
                Some(TraceEvent::LoopBackstep { removed: self.backstep(s, ev, n, BackstepCause::Loop)? })
            }
            TokenAction::Resume { n } => {
                let removed = if n > 0 { self.backstep(s, ev, n, BackstepCause::Loop)? } else { 0 };
                let hidden = self.resume(s, ev)?;
                Some(if removed > 0 {
                    TraceEvent::LoopBackstep { removed }
                } else {
                    TraceEvent::Resumed { hidden }
                })
            }
        })
    }

    /// Limits checked after an append: a stop string, `max_new_tokens`, repetition.
    fn finish_after_append(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        stopped: Option<FinishReason>,
    ) {
        let reason = stopped.or_else(|| {
            if self.settings.max_new_tokens.is_some_and(|m| s.produced() >= m) {
                return Some(FinishReason::MaxNewTokens);
            }
            let (pattern_len, repeats) =
                self.settings.repetition.as_ref()?.detect(&s.tokens[s.prompt_len..])?;
            Some(FinishReason::Repetition { pattern_len, repeats })
        });
        if let Some(reason) = reason {
            self.finish(s, ev, reason);
        }
    }

    /// A non-EOS token for this step's EOS draw: `draws[1]` when the plan drew it,
    /// else a fresh draw among the processed candidates with the EOS ids masked; `None`
    /// when no non-EOS candidate has mass.
    fn non_eos_draw(&mut self, rng: &mut ChaCha8Rng) -> Option<u32> {
        if let Some(&token) = self.buffers.draws.get(1) {
            return Some(token);
        }
        let candidates = self.chain.candidates_mut();
        for &id in &self.eos_ids {
            candidates.mask(id);
        }
        draw_without_replacement(candidates, 1, rng, &mut self.buffers.extra_draws).ok()?;
        self.buffers.extra_draws.first().copied()
    }
}

/// Set `ids` to `-inf` in `logits` (ids outside the vocabulary are skipped).
fn mask(logits: &mut [f32], ids: &[u32]) {
    for &id in ids {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// The `n` best raw logits as log-probabilities, best first (ties: lower id first).
fn top_alternatives(logits: &[f32], lse: f64, n: usize, out: &mut Vec<Alternative>) {
    out.clear();
    for (i, &l) in logits.iter().enumerate() {
        if out.len() == n && out.last().is_none_or(|a| l <= a.logprob) {
            continue;
        }
        let at = out.partition_point(|a| a.logprob >= l);
        out.insert(at, Alternative { id: i as u32, logprob: l });
        out.truncate(n);
    }
    for a in out.iter_mut() {
        a.logprob = (f64::from(a.logprob) - lse) as f32;
    }
}

/// `Σ p(e)` over `ids` under softmax of the processed candidates (0 when none is left).
fn processed_set_probability(candidates: &mut Candidates, ids: &[u32]) -> f32 {
    if candidates.softmax().is_err() {
        return 0.0;
    }
    candidates.as_slice().iter().filter(|c| ids.contains(&c.id)).map(|c| c.prob).sum::<f32>().min(1.0)
}
