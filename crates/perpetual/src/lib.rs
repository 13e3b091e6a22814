//! Perpetual generation: what to do when the model draws EOS.
//!
//! This crate is pure policy. An [`EosStrategy`] is told, step by
//! step, what the generator is about to do and what it drew; it answers with a
//! [`StepPlan`] (temperature for this step, whether EOS is hard-masked, how many
//! distinct draws to make) and, when the first draw is an EOS id, an [`EosAction`]
//! (stop, replace the token, or back step `n` tokens). The generator carries the
//! action out — truncating its sequence and KV cache — so every strategy here is
//! tested without a model.
//!
//! # The four methods
//!
//! From "Perpetual Text Generation Using Dynamic Temperature Adjustment" (ICLR 2025
//! blog track); the defaults are the paper's parameters.
//!
//! | strategy | on EOS | temperature | cost | use when |
//! |---|---|---|---|---|
//! | [`SuppressEos`] | take the runner-up of two draws without replacement | unchanged | none | cheapest; pair with [`EndingPhrases`], the model tends to write "The end." |
//! | [`SuppressEos::hard_mask`] | EOS is masked and never drawn | unchanged | none | the same, one draw |
//! | [`PostEosResample`] | take the runner-up, then sample at 2.0, −0.1 per token back to base | raised after the event | none | leave the ending's neighbourhood without losing text |
//! | [`Backstep`] | remove the last 10 tokens (sequence *and* KV cache) and regenerate | unchanged | re-decoding `n` tokens | the ending began a few tokens earlier: rewrite it |
//! | [`BackstepWithSchedule`] | as `Backstep`, regenerate from 2× base, linear decay, back at base exactly where EOS was | raised over the rewritten span | re-decoding `n` tokens | the paper's most refined method: rewrite *and* move away from the ending |
//!
//! Every strategy shares [`Budget`] controls (maximum interventions, accept a natural
//! EOS after `n` new tokens, a target length) and a [`LoopGuard`] that escalates when
//! EOS keeps coming back at the same place (longer back step, higher peak) and finally
//! falls back to the runner-up, so no strategy can loop forever. Temperatures follow a
//! [`TemperatureSchedule`] from a [`Peak`] back to the chain's base temperature.
//!
//! ```
//! use perpetua_perpetual::{
//!     BackstepWithSchedule, Budget, EosAction, EosDrawn, EosStrategy, StepInfo, StopAtEos,
//! };
//!
//! // Plain generation: an EOS ends it.
//! let mut stop = StopAtEos;
//! let plan = stop.plan_step(&StepInfo { prompt_len: 5, generated: 3, base_temperature: 0.7 });
//! assert_eq!(plan.temperature, None); // the chain's own temperature
//! let eos = EosDrawn { prompt_len: 5, generated: 3, removable: 3, draws: &[2, 17], p_eos: 0.6, base_temperature: 0.7 };
//! assert_eq!(stop.on_eos(&eos), EosAction::Stop);
//!
//! // Method 4: EOS drawn at generated index 40 → back step 10, restart at 2× base.
//! let mut s = BackstepWithSchedule::new(10)?.with_budget(Budget::unlimited().allow_eos_after(2_000));
//! let eos = EosDrawn { prompt_len: 5, generated: 40, removable: 40, draws: &[2, 17], p_eos: 0.6, base_temperature: 1.0 };
//! assert_eq!(s.on_eos(&eos), EosAction::Backstep { n: 10 });
//! s.on_backstep(10, 30); // the generator removed 10 tokens, 30 remain
//! let at = |s: &mut BackstepWithSchedule, generated| {
//!     s.plan_step(&StepInfo { prompt_len: 5, generated, base_temperature: 1.0 }).effective_temperature(1.0)
//! };
//! assert_eq!(at(&mut s, 30), 2.0); // the peak where the rewrite starts
//! assert_eq!(at(&mut s, 35), 1.5); // linear decay
//! assert_eq!(at(&mut s, 40), 1.0); // exactly base where EOS had been drawn
//! # Ok::<(), perpetua_perpetual::PerpetualError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod controls;
mod ending;
mod error;
mod fresh;
mod kind;
mod loops;
mod resume;
mod schedule;
mod strategies;

pub use controls::{Budget, LoopGuard};
pub use ending::{COMMON_ENDING_PHRASES, EndingMode, EndingPhrases};
pub use error::{PerpetualError, Result};
pub use fresh::{Anticipation, DEFAULT_LOOP_SPAN, LoopBackstep, MAX_ANTICIPATION_WINDOW, default_loop_guard};
pub use kind::StrategyKind;
pub use loops::{
    DEFAULT_TOLERANCE, LoopDetection, LoopDetector, MAX_LOOP_WINDOW, MAX_REWIND, Repeat, Staleness,
};
pub use resume::{DEFAULT_MIN_TURN, ResumeTurn};
pub use schedule::{CustomSchedule, Peak, ScheduleInput, TemperatureSchedule};
pub use strategies::{
    Backstep, BackstepWithSchedule, DEFAULT_BACKSTEP, DEFAULT_RESAMPLE_SPAN, PostEosResample, SuppressEos,
};

/// What the generator tells a strategy before each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Tokens generated so far (the index of the token about to be drawn).
    pub generated: usize,
    /// The chain's configured temperature (1.0 when it has no temperature stage).
    pub base_temperature: f32,
}

/// A strategy's instructions for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPlan {
    /// `Some(t)`: sample this step at temperature `t` instead of the chain's own.
    pub temperature: Option<f32>,
    /// Hard-mask every EOS id before sampling (EOS then can never be drawn).
    pub mask_eos: bool,
    /// Distinct tokens to draw without replacement, in draw order (1 or 2: the
    /// strategies that replace an EOS draw need the runner-up).
    pub draws: usize,
    /// Token ids masked before sampling at this step only (e.g. the token that began a
    /// loop a [`LoopBackstep`] just removed, so the regeneration cannot walk back into
    /// it). When the bans would leave no candidate the generator ignores them.
    pub bans: TokenBans,
    /// Ask the generator for this step's raw-distribution entropy in
    /// [`TokenAppended::entropy`] (one extra pass over the logits; off by default).
    pub observe_entropy: bool,
}

impl StepPlan {
    /// The temperature this step samples at: the plan's, else `base` (the chain's).
    pub fn effective_temperature(&self, base: f32) -> f32 {
        self.temperature.unwrap_or(base)
    }

    /// Combine the plan of a wrapped strategy with a wrapper's own raised temperature,
    /// bans and entropy request: the hotter temperature wins, bans are merged.
    pub fn merged(mut self, temperature: Option<f32>, bans: &TokenBans, observe_entropy: bool) -> Self {
        self.temperature = match (self.temperature, temperature) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for &id in bans.as_slice() {
            self.bans.insert(id);
        }
        self.observe_entropy |= observe_entropy;
        self
    }
}

impl Default for StepPlan {
    fn default() -> Self {
        Self { temperature: None, mask_eos: false, draws: 1, bans: TokenBans::new(), observe_entropy: false }
    }
}

/// A small set of token ids banned at one step ([`StepPlan::bans`]): at most
/// [`TokenBans::CAPACITY`] ids, kept in insertion order without duplicates; inserting
/// into a full set drops the oldest id. `Copy`, so a plan never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenBans {
    ids: [u32; TokenBans::CAPACITY],
    len: u8,
}

impl TokenBans {
    /// Most ids one step can ban.
    pub const CAPACITY: usize = 8;

    /// No bans.
    pub const fn new() -> Self {
        Self { ids: [0; Self::CAPACITY], len: 0 }
    }

    /// Add `id` (no-op when present; a full set forgets its oldest id).
    pub fn insert(&mut self, id: u32) {
        if self.contains(id) {
            return;
        }
        let len = usize::from(self.len);
        if len == Self::CAPACITY {
            self.ids.copy_within(1.., 0);
            self.ids[Self::CAPACITY - 1] = id;
        } else {
            self.ids[len] = id;
            self.len += 1;
        }
    }

    /// Whether `id` is banned.
    pub fn contains(&self, id: u32) -> bool {
        self.as_slice().contains(&id)
    }

    /// The banned ids, oldest first.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..usize::from(self.len)]
    }

    /// Whether nothing is banned.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Remove every id.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// What the generator tells a strategy after it appended a token (the degeneration
/// hook, [`EosStrategy::after_token`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenAppended<'a> {
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Every generated id so far, the token just appended last: its generated index is
    /// `generated.len() - 1`. Never includes the prompt.
    pub generated: &'a [u32],
    /// How many of the last generated tokens a back step can remove (after a context
    /// roll only the tokens since the roll; otherwise `generated.len()`). The generator
    /// clamps a longer back step to this.
    pub removable: usize,
    /// Entropy (nats) of the model's raw distribution at the step that drew the token;
    /// `None` unless the step's plan set [`StepPlan::observe_entropy`] (or the trace
    /// is on).
    pub entropy: Option<f32>,
    /// The temperature the token was sampled at.
    pub temperature: f32,
    /// The chain's configured temperature.
    pub base_temperature: f32,
}

/// What the generator must do after a token was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAction {
    /// Go on.
    Continue,
    /// Remove the last `n` generated tokens (the one just appended included) from the
    /// sequence and the KV cache, then continue from there. The generator clamps `n`
    /// as for [`EosAction::Backstep`] and reports the clamped value through
    /// [`EosStrategy::on_backstep`].
    Backstep {
        /// Tokens to remove.
        n: usize,
    },
    /// Remove the last `n` generated tokens (`0`: none), then end the model's turn and
    /// resume it as [`EosAction::Resume`] does: a stale stretch ends the turn instead of
    /// being regenerated ([`LoopBackstep::with_stale_turns`]). `n` is clamped as for a
    /// back step; the generator then calls [`EosStrategy::on_resume`].
    Resume {
        /// Tokens to remove before the turn ends.
        n: usize,
    },
}

/// The event of a first draw that is an EOS id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EosDrawn<'a> {
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Tokens generated before this draw (the EOS would be at generated index
    /// `generated`).
    pub generated: usize,
    /// How many of the last generated tokens a back step can remove: `generated`,
    /// except after a context roll (only the tokens since the roll) or a resumed turn
    /// (hidden tokens are frozen). A strategy that wants a back step when this is 0
    /// should replace the EOS instead; the generator's fallback for a back step that
    /// can remove nothing is documented on [`EosAction::Backstep`].
    pub removable: usize,
    /// The draws of this step in draw order; `draws[0]` is the EOS id. Holds
    /// `StepPlan::draws` entries, fewer when fewer candidates had non-zero mass.
    /// Strategies replace an EOS by `draws[1]`: with several EOS ids, the generator
    /// must not offer another EOS id as a later draw (mask the EOS ids after the first
    /// draw), or the replacement would write an EOS.
    pub draws: &'a [u32],
    /// Probability of the EOS set under the processed distribution of this step.
    pub p_eos: f32,
    /// The chain's configured temperature.
    pub base_temperature: f32,
}

/// What the generator must do about an EOS draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EosAction {
    /// Accept the EOS: generation finishes with reason "eos".
    Stop,
    /// Use `token` instead of the EOS (typically `draws[1]`).
    Replace {
        /// The replacement token id.
        token: u32,
    },
    /// Remove the last `n` generated tokens from the sequence and the KV cache, then
    /// continue from there. The generator clamps `n` to [`EosDrawn::removable`] (a
    /// back step never eats into the prompt, a context roll's dropped tokens or a
    /// resumed turn's hidden tokens) and reports the clamped value through
    /// [`EosStrategy::on_backstep`]. When the clamped value is 0 the generator falls
    /// back to a replacement: it reports `on_backstep(0, generated)`, then writes
    /// `draws[1]` (or, with a single draw, a fresh draw among the non-EOS candidates)
    /// in place of the EOS, as [`EosAction::Replace`] would; with no non-EOS candidate
    /// left it accepts the EOS, as [`EosAction::Stop`] would.
    Backstep {
        /// Tokens to remove.
        n: usize,
    },
    /// Let the turn end, and ask for more: the generator closes the model's turn,
    /// feeds its *resume tokens* (a hidden user turn asking to go on and a new
    /// assistant turn header, rendered from the chat template), and the model writes on
    /// from its own text ([`ResumeTurn`]). The resume tokens are in the cache, never in
    /// the output; the output gets a paragraph break (`"\n\n"`) where the turn ended. A
    /// generator without resume tokens (no chat template) answers this with an error.
    Resume,
}

/// A policy for EOS draws, degeneration, and the temperature around them.
///
/// Call order per step: [`plan_step`](Self::plan_step) → the generator draws →
/// [`on_eos`](Self::on_eos) if `draws[0]` is an EOS id → for the token finally
/// appended [`on_token`](Self::on_token) then [`after_token`](Self::after_token) →
/// [`on_backstep`](Self::on_backstep) after a back step (asked by `on_eos` or by
/// `after_token`) was carried out.
///
/// Two events can make a strategy act: an EOS draw (the model wants to stop) and, after
/// any appended token, degeneration it detects in the generated tail (the model loops:
/// [`LoopBackstep`]). Both can answer with a back step. Strategies are pure state
/// machines: they see ids, counts and statistics, never a model.
pub trait EosStrategy: Send {
    /// A short, stable name (`"backstep"`), used in traces and eval tables.
    fn name(&self) -> &'static str;

    /// Instructions for the coming step. The default: the chain's temperature, no
    /// mask, one draw.
    fn plan_step(&mut self, _step: &StepInfo) -> StepPlan {
        StepPlan::default()
    }

    /// The first draw of this step was an EOS id: decide.
    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction;

    /// A token was appended at generated index `index`.
    fn on_token(&mut self, _token: u32, _index: usize) {}

    /// After [`on_token`](Self::on_token): inspect the generated tail (and the step's
    /// entropy, when the plan asked for it) and answer. The default, and every EOS-only
    /// strategy: [`TokenAction::Continue`].
    fn after_token(&mut self, _event: &TokenAppended<'_>) -> TokenAction {
        TokenAction::Continue
    }

    /// A back step removed `removed` tokens; `generated` tokens remain.
    fn on_backstep(&mut self, _removed: usize, _generated: usize) {}

    /// The generator resumed the turn ([`EosAction::Resume`] or
    /// [`TokenAction::Resume`]): it fed the resume tokens, and `generated` tokens (those
    /// included) now exist; the next token opens the new turn.
    fn on_resume(&mut self, _generated: usize) {}

    /// Forget all state (a new sequence).
    fn reset(&mut self) {}

    /// A copy of this strategy, configuration and state, for a generator running
    /// several sequences at once, each with its own strategy. `None` (the default) when
    /// it cannot be copied; the generator then rebuilds a perpetual mode's strategy from
    /// the mode, or runs the sequences one after another (same results). The built-in
    /// strategies copy; the wrappers ([`LoopBackstep`], [`Anticipation`]) are rebuilt
    /// from their perpetual mode (`perpetua_generator::PerpetualMode`) instead.
    fn boxed_clone(&self) -> Option<Box<dyn EosStrategy>> {
        None
    }
}

/// The default strategy: an EOS draw ends generation, as every other library does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopAtEos;

impl EosStrategy for StopAtEos {
    fn boxed_clone(&self) -> Option<Box<dyn EosStrategy>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "stop"
    }

    fn on_eos(&mut self, _event: &EosDrawn<'_>) -> EosAction {
        EosAction::Stop
    }
}

impl<S: EosStrategy + ?Sized> EosStrategy for Box<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        (**self).plan_step(step)
    }
    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction {
        (**self).on_eos(event)
    }
    fn on_token(&mut self, token: u32, index: usize) {
        (**self).on_token(token, index)
    }
    fn after_token(&mut self, event: &TokenAppended<'_>) -> TokenAction {
        (**self).after_token(event)
    }
    fn on_backstep(&mut self, removed: usize, generated: usize) {
        (**self).on_backstep(removed, generated)
    }
    fn on_resume(&mut self, generated: usize) {
        (**self).on_resume(generated)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn boxed_clone(&self) -> Option<Box<dyn EosStrategy>> {
        (**self).boxed_clone()
    }
}

/// A strategy with its defaults, by any name of its [`StrategyKind`] (its
/// [`EosStrategy::name`] among them: `stop`, `suppress_eos`, `suppress_eos_masked`,
/// `post_eos_resample`, `backstep`, `backstep_with_schedule`, `resume_turn`; or the
/// canonical `plain`, `suppress`, … of specs and the CLI). Errors:
/// [`PerpetualError::UnknownStrategy`].
pub fn strategy_by_name(name: &str) -> Result<Box<dyn EosStrategy>> {
    Ok(name.parse::<StrategyKind>()?.strategy())
}
