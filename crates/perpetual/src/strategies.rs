//! The paper's four EOS strategies.

use crate::controls::{Oversight, Verdict, replace_with_runner_up};
use crate::{
    Budget, EosAction, EosDrawn, EosStrategy, LoopGuard, Peak, PerpetualError, Result, StepInfo, StepPlan,
    TemperatureSchedule,
};

/// The paper's back step: 10 tokens.
pub const DEFAULT_BACKSTEP: usize = 10;

/// Span of a post-EOS schedule that has no natural span of its own (every schedule
/// but [`TemperatureSchedule::Step`]): 10 tokens, the length of the paper's 2.0 → 1.0
/// decay at −0.1 per token.
pub const DEFAULT_RESAMPLE_SPAN: usize = 10;

/// A schedule in progress: started at generated index `start`, over `span` steps, from
/// `peak` (already resolved and escalated).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ActiveSchedule {
    pub(crate) start: usize,
    pub(crate) span: usize,
    pub(crate) peak: f32,
}

/// The plan temperature of an active schedule at `step`, clearing it once it is over.
/// Before `start` (cannot happen through the protocol) the chain's own temperature.
pub(crate) fn scheduled_temperature(
    active: &mut Option<ActiveSchedule>,
    schedule: &TemperatureSchedule,
    step: &StepInfo,
) -> Option<f32> {
    let a = (*active)?;
    let s = step.generated.checked_sub(a.start)?;
    if s >= a.span {
        *active = None;
        return None;
    }
    Some(schedule.temperature(s, a.span, step.base_temperature, a.peak))
}

macro_rules! controls_builders {
    () => {
        /// Replace the budget controls (default: [`Budget::unlimited`]).
        pub fn with_budget(mut self, budget: Budget) -> Self {
            self.oversight.budget = budget;
            self
        }

        /// Replace the loop guard (default: [`LoopGuard::new`]). Errors when its
        /// fields are invalid (see [`LoopGuard::validate`]).
        pub fn with_loop_guard(mut self, guard: LoopGuard) -> Result<Self> {
            guard.validate()?;
            self.oversight.guard = guard;
            Ok(self)
        }

        /// The budget controls.
        pub fn budget(&self) -> &Budget {
            &self.oversight.budget
        }

        /// Interventions made in this sequence (replacements and back steps).
        pub fn interventions(&self) -> usize {
            self.oversight.interventions()
        }

        /// The loop guard's current escalation level (0 when EOS has not come back).
        pub fn escalation_level(&self) -> u32 {
            self.oversight.level()
        }
    };
}
pub(crate) use controls_builders;

/// Method 1, "Suppress EOS": draw two candidates without replacement; when the first
/// is EOS, take the second. The temperature is never changed.
///
/// [`SuppressEos::hard_mask`] instead masks every EOS id before sampling, so EOS is
/// never drawn at all (cheaper: one draw; the mask is lifted once a budget accepts EOS).
/// The paper observed that suppression alone makes the model *write* an ending ("The
/// end.") instead: pair it with [`EndingPhrases`](crate::EndingPhrases).
///
/// When the EOS was the only candidate with mass (no runner-up, e.g. greedy decoding
/// with a top-k of 1), the EOS is accepted: there is nothing else to write.
#[derive(Debug, Clone, Default)]
pub struct SuppressEos {
    mask: bool,
    oversight: Oversight,
}

impl SuppressEos {
    /// Two draws, take the runner-up when the first is EOS.
    pub fn new() -> Self {
        Self::default()
    }

    /// The hard-mask variant: EOS ids are masked before sampling (`plan.mask_eos`).
    pub fn hard_mask() -> Self {
        Self { mask: true, oversight: Oversight::default() }
    }

    /// Whether this is the hard-mask variant.
    pub fn is_hard_mask(&self) -> bool {
        self.mask
    }

    controls_builders!();
}

impl EosStrategy for SuppressEos {
    fn boxed_clone(&self) -> Option<Box<dyn EosStrategy>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        if self.mask { "suppress_eos_masked" } else { "suppress_eos" }
    }

    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        let on = self.oversight.intervening(step);
        StepPlan {
            mask_eos: self.mask && on,
            draws: if on && !self.mask { 2 } else { 1 },
            ..StepPlan::default()
        }
    }

    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction {
        match self.oversight.judge(event) {
            Verdict::Accept => EosAction::Stop,
            Verdict::Intervene { .. } | Verdict::Fallback => replace_with_runner_up(event),
        }
    }

    fn on_token(&mut self, _token: u32, index: usize) {
        self.oversight.on_token(index);
    }

    fn reset(&mut self) {
        self.oversight.reset();
    }
}

/// Method 2, "modified sampling after EOS": take the runner-up instead of the EOS,
/// then sample the next token at the `peak` temperature and follow `schedule` back to
/// the base over `span` tokens.
///
/// Defaults (the paper): peak `Absolute(2.0)`, schedule [`TemperatureSchedule::PAPER_STEP`]
/// (−0.1 per token), span = the schedule's natural span (10 tokens from 2.0 to a base
/// of 1.0), else [`DEFAULT_RESAMPLE_SPAN`]. With EOS replaced at generated index `g`,
/// the token at `g + 1 + s` is sampled at `schedule(s, span, base, peak)`, and at the
/// base from `g + 1 + span` on. A new EOS during the decay restarts it (at a higher
/// peak when the loop guard escalates).
#[derive(Debug, Clone)]
pub struct PostEosResample {
    peak: Peak,
    schedule: TemperatureSchedule,
    span: Option<usize>,
    oversight: Oversight,
    active: Option<ActiveSchedule>,
}

impl Default for PostEosResample {
    fn default() -> Self {
        Self {
            peak: Peak::Absolute(2.0),
            schedule: TemperatureSchedule::PAPER_STEP,
            span: None,
            oversight: Oversight::default(),
            active: None,
        }
    }
}

impl PostEosResample {
    /// The paper's parameters (peak 2.0, −0.1 per token).
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the peak. Errors when it is not finite and > 0.
    pub fn with_peak(mut self, peak: Peak) -> Result<Self> {
        peak.validate()?;
        self.peak = peak;
        Ok(self)
    }

    /// Set the schedule. Errors when its parameters are invalid.
    pub fn with_schedule(mut self, schedule: TemperatureSchedule) -> Result<Self> {
        schedule.validate()?;
        self.schedule = schedule;
        Ok(self)
    }

    /// Set the decay span in tokens (overrides the schedule's natural span). Errors
    /// when 0.
    pub fn with_span(mut self, span: usize) -> Result<Self> {
        if span == 0 {
            return Err(PerpetualError::invalid("span", span, "must be >= 1"));
        }
        self.span = Some(span);
        Ok(self)
    }

    /// The configured peak.
    pub fn peak(&self) -> Peak {
        self.peak
    }

    /// The configured schedule.
    pub fn schedule(&self) -> &TemperatureSchedule {
        &self.schedule
    }

    controls_builders!();
}

impl EosStrategy for PostEosResample {
    fn boxed_clone(&self) -> Option<Box<dyn EosStrategy>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "post_eos_resample"
    }

    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        let temperature = scheduled_temperature(&mut self.active, &self.schedule, step);
        let draws = if self.oversight.intervening(step) { 2 } else { 1 };
        StepPlan { temperature, draws, ..StepPlan::default() }
    }

    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction {
        let level = match self.oversight.judge(event) {
            Verdict::Accept => return EosAction::Stop,
            Verdict::Fallback => return replace_with_runner_up(event),
            Verdict::Intervene { level } => level,
        };
        let action = replace_with_runner_up(event);
        if matches!(action, EosAction::Replace { .. }) {
            let base = event.base_temperature;
            let peak = self.oversight.guard.peak_at(self.peak.resolve(base), level);
            let span =
                self.span.or_else(|| self.schedule.natural_span(base, peak)).unwrap_or(DEFAULT_RESAMPLE_SPAN);
            self.active = Some(ActiveSchedule { start: event.generated.saturating_add(1), span, peak });
        }
        action
    }

    fn on_token(&mut self, _token: u32, index: usize) {
        self.oversight.on_token(index);
    }

    fn reset(&mut self) {
        self.oversight.reset();
        self.active = None;
    }
}

/// Method 3, "back step": on EOS, remove the last `n` generated tokens from the
/// sequence *and the tail of the KV cache*, and regenerate from there (default
/// `n = 10`, the paper's). The temperature is never changed.
///
/// A back step never eats into the prompt: the strategy asks for at most the number of
/// generated tokens (and the generator clamps again). An EOS drawn before any token was
/// generated cannot be stepped back from: it is replaced by the runner-up. When EOS
/// comes back at the same place, the loop guard lengthens the back step and finally
/// falls back to the runner-up.
#[derive(Debug, Clone)]
pub struct Backstep {
    n: usize,
    oversight: Oversight,
}

impl Default for Backstep {
    fn default() -> Self {
        Self { n: DEFAULT_BACKSTEP, oversight: Oversight::default() }
    }
}

/// The back step for an intervention at `level`, or the runner-up when nothing can be
/// removed.
fn backstep_action(oversight: &Oversight, n: usize, level: u32, event: &EosDrawn<'_>) -> EosAction {
    let removable = event.removable.min(event.generated);
    if removable == 0 {
        return replace_with_runner_up(event);
    }
    EosAction::Backstep { n: oversight.guard.backstep_at(n, level).min(removable) }
}

impl Backstep {
    /// Back steps of `n` tokens. Errors when `n` is 0.
    pub fn new(n: usize) -> Result<Self> {
        if n == 0 {
            return Err(PerpetualError::invalid("n", n, "back step must remove >= 1 token"));
        }
        Ok(Self { n, oversight: Oversight::default() })
    }

    /// The configured back step.
    pub fn n(&self) -> usize {
        self.n
    }

    controls_builders!();
}

impl EosStrategy for Backstep {
    fn boxed_clone(&self) -> Option<Box<dyn EosStrategy>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "backstep"
    }

    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        // The runner-up is drawn for the guard's fallback.
        StepPlan { draws: if self.oversight.intervening(step) { 2 } else { 1 }, ..StepPlan::default() }
    }

    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction {
        match self.oversight.judge(event) {
            Verdict::Accept => EosAction::Stop,
            Verdict::Fallback => replace_with_runner_up(event),
            Verdict::Intervene { level } => backstep_action(&self.oversight, self.n, level, event),
        }
    }

    fn on_token(&mut self, _token: u32, index: usize) {
        self.oversight.on_token(index);
    }

    fn reset(&mut self) {
        self.oversight.reset();
    }
}

/// Method 4, "back step + dynamic temperature": as [`Backstep`], and the regeneration
/// restarts at a raised temperature that follows `schedule` back to the base so that
/// it is back at base *exactly* at the position where EOS had been drawn.
///
/// With EOS drawn at generated index `g` and `r` tokens actually removed (the generator
/// reports `r` through [`EosStrategy::on_backstep`]), the token at index `g − r + s` is
/// sampled at `schedule(s, r, base, peak)`: the peak at `g − r`, the base at `g`.
/// Defaults: `n = 10`, peak `Times(2.0)` (2× base, the paper's), [`TemperatureSchedule::Linear`].
#[derive(Debug, Clone)]
pub struct BackstepWithSchedule {
    n: usize,
    peak: Peak,
    schedule: TemperatureSchedule,
    oversight: Oversight,
    pending_peak: Option<f32>,
    active: Option<ActiveSchedule>,
}

impl Default for BackstepWithSchedule {
    fn default() -> Self {
        Self {
            n: DEFAULT_BACKSTEP,
            peak: Peak::Times(2.0),
            schedule: TemperatureSchedule::Linear,
            oversight: Oversight::default(),
            pending_peak: None,
            active: None,
        }
    }
}

impl BackstepWithSchedule {
    /// Back steps of `n` tokens, peak 2× base, linear decay. Errors when `n` is 0.
    pub fn new(n: usize) -> Result<Self> {
        Backstep::new(n)?;
        Ok(Self { n, ..Self::default() })
    }

    /// Set the peak. Errors when it is not finite and > 0.
    pub fn with_peak(mut self, peak: Peak) -> Result<Self> {
        peak.validate()?;
        self.peak = peak;
        Ok(self)
    }

    /// Set the schedule. Errors when its parameters are invalid.
    pub fn with_schedule(mut self, schedule: TemperatureSchedule) -> Result<Self> {
        schedule.validate()?;
        self.schedule = schedule;
        Ok(self)
    }

    /// The configured back step.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The configured peak.
    pub fn peak(&self) -> Peak {
        self.peak
    }

    /// The configured schedule.
    pub fn schedule(&self) -> &TemperatureSchedule {
        &self.schedule
    }

    controls_builders!();
}

impl EosStrategy for BackstepWithSchedule {
    fn boxed_clone(&self) -> Option<Box<dyn EosStrategy>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "backstep_with_schedule"
    }

    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        let temperature = scheduled_temperature(&mut self.active, &self.schedule, step);
        let draws = if self.oversight.intervening(step) { 2 } else { 1 };
        StepPlan { temperature, draws, ..StepPlan::default() }
    }

    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction {
        self.pending_peak = None;
        match self.oversight.judge(event) {
            Verdict::Accept => EosAction::Stop,
            Verdict::Fallback => replace_with_runner_up(event),
            Verdict::Intervene { level } => {
                let action = backstep_action(&self.oversight, self.n, level, event);
                if matches!(action, EosAction::Backstep { .. }) {
                    let peak = self.peak.resolve(event.base_temperature);
                    self.pending_peak = Some(self.oversight.guard.peak_at(peak, level));
                }
                action
            }
        }
    }

    fn on_token(&mut self, _token: u32, index: usize) {
        self.oversight.on_token(index);
    }

    fn on_backstep(&mut self, removed: usize, generated: usize) {
        if let Some(peak) = self.pending_peak.take() {
            self.active = (removed > 0).then_some(ActiveSchedule { start: generated, span: removed, peak });
        }
    }

    fn reset(&mut self) {
        self.oversight.reset();
        self.pending_peak = None;
        self.active = None;
    }
}
