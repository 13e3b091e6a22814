//! Perpetual generation: what to do when the model draws EOS.
//!
//! This crate is pure policy (DESIGN.md §1, §3). An [`EosStrategy`] is told, step by
//! step, what the generator is about to do and what it drew; it answers with a
//! [`StepPlan`] (temperature for this step, whether EOS is hard-masked, how many
//! distinct draws to make) and, when the first draw is an EOS id, an [`EosAction`]
//! (stop, replace the token, or back step `n` tokens). The generator carries the
//! action out — truncating its sequence and KV cache — so every strategy here is
//! tested without a model.
//!
//! ```
//! use perpetua_perpetual::{EosAction, EosDrawn, EosStrategy, StepInfo, StopAtEos};
//!
//! let mut s = StopAtEos;
//! let plan = s.plan_step(&StepInfo { prompt_len: 5, generated: 3, base_temperature: 0.7 });
//! assert_eq!(plan.temperature, None); // the chain's own temperature
//! let action = s.on_eos(&EosDrawn { prompt_len: 5, generated: 3, draws: &[2, 17], p_eos: 0.6, base_temperature: 0.7 });
//! assert_eq!(action, EosAction::Stop);
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

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
}

impl Default for StepPlan {
    fn default() -> Self {
        Self { temperature: None, mask_eos: false, draws: 1 }
    }
}

/// The event of a first draw that is an EOS id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EosDrawn<'a> {
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Tokens generated before this draw (the EOS would be at generated index
    /// `generated`).
    pub generated: usize,
    /// The draws of this step in draw order; `draws[0]` is the EOS id. Holds
    /// `StepPlan::draws` entries, fewer when fewer candidates had non-zero mass.
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
    /// continue from there. The generator clamps `n` to the generated count (a back
    /// step never eats into the prompt) and reports the clamped value through
    /// [`EosStrategy::on_backstep`].
    Backstep {
        /// Tokens to remove.
        n: usize,
    },
}

/// A policy for EOS draws and the temperature around them.
///
/// Call order per step: [`plan_step`](Self::plan_step) → the generator draws →
/// [`on_eos`](Self::on_eos) if `draws[0]` is an EOS id → [`on_token`](Self::on_token)
/// for the token finally appended, or [`on_backstep`](Self::on_backstep) after a
/// back step was carried out.
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

    /// A back step removed `removed` tokens; `generated` tokens remain.
    fn on_backstep(&mut self, _removed: usize, _generated: usize) {}

    /// Forget all state (a new sequence).
    fn reset(&mut self) {}
}

/// The default strategy: an EOS draw ends generation, as every other library does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopAtEos;

impl EosStrategy for StopAtEos {
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
    fn on_backstep(&mut self, removed: usize, generated: usize) {
        (**self).on_backstep(removed, generated)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}
