//! Budget controls and the loop guard, shared by every strategy of this crate.

use crate::{EosDrawn, PerpetualError, Result, StepInfo};

/// When a strategy stops intervening and lets an EOS through.
///
/// Every limit is optional (`None`: no limit); an EOS is accepted as soon as *any*
/// limit is met:
/// - `max_interventions = k`: after `k` interventions (replacements or back steps) in
///   this sequence. `Some(0)` never intervenes. The hard-mask variant of
///   [`SuppressEos`](crate::SuppressEos) never sees an EOS draw, so for it this limit
///   never triggers: lift its mask with the other two.
/// - `allow_eos_after = n`: once at least `n` *new* tokens exist (a natural EOS at
///   generated index `>= n` ends generation).
/// - `target_length = n`: once the *whole* sequence (prompt + generated) holds at least
///   `n` tokens — the limit to use when a context or page budget is fixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Budget {
    /// Interventions after which EOS is accepted.
    pub max_interventions: Option<usize>,
    /// New tokens after which a natural EOS is accepted.
    pub allow_eos_after: Option<usize>,
    /// Total sequence length (prompt included) after which EOS is accepted.
    pub target_length: Option<usize>,
}

impl Budget {
    /// No limits: intervene on every EOS (the loop guard still bounds the work).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Set [`max_interventions`](Self::max_interventions).
    pub fn max_interventions(mut self, k: usize) -> Self {
        self.max_interventions = Some(k);
        self
    }

    /// Set [`allow_eos_after`](Self::allow_eos_after).
    pub fn allow_eos_after(mut self, n: usize) -> Self {
        self.allow_eos_after = Some(n);
        self
    }

    /// Set [`target_length`](Self::target_length).
    pub fn target_length(mut self, n: usize) -> Self {
        self.target_length = Some(n);
        self
    }

    /// Whether an EOS at generated index `generated` is accepted, `interventions`
    /// having been made so far.
    pub fn accepts_eos(&self, prompt_len: usize, generated: usize, interventions: usize) -> bool {
        self.max_interventions.is_some_and(|k| interventions >= k)
            || self.allow_eos_after.is_some_and(|n| generated >= n)
            || self.target_length.is_some_and(|n| prompt_len.saturating_add(generated) >= n)
    }
}

/// Escalation when EOS keeps coming back without the text moving on, so that no
/// strategy can loop forever.
///
/// The guard tracks the *frontier* `F`: the longest the generated text has ever been
/// in this sequence. An intervention whose `F` is within `window` tokens of the
/// frontier recorded at the start of the current streak counts as a repeat ("EOS came
/// back at the same place") and raises the escalation level by one; otherwise a new
/// streak starts at level 0. At level `k`:
/// - back steps are `n · backstep_growth^k` tokens (saturating, at most
///   `max_backstep`),
/// - peaks are raised by `k · peak_increment`,
/// - and past `k = max_escalations` the strategy falls back to replacing the EOS by
///   the runner-up draw (accepting the EOS when there is none), and keeps doing so
///   until the frontier has advanced `cool_down` tokens past the point where it fell
///   back — a model that keeps wanting to end is not sent back to the mildest
///   intervention four tokens later.
///
/// Bound: a replacement always appends a token, so within one streak there are at most
/// `max_escalations + 1` back steps; after them every step appends, the frontier passes
/// the streak's mark within a bounded number of steps, and a new streak begins with
/// `F` strictly higher. Hence `F` grows without bound (or generation stops):
/// `tests/policy.rs` checks this for arbitrary scripted draws.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoopGuard {
    /// Frontier advance (tokens) that still counts as "the same place". Default 3.
    pub window: usize,
    /// Frontier advance (tokens) after a fall-back during which EOS draws keep being
    /// replaced by the runner-up (>= 1). Default 64.
    pub cool_down: usize,
    /// Escalation levels before falling back to the runner-up. Default 3.
    pub max_escalations: u32,
    /// Factor by which a back step grows per level (>= 1). Default 2.
    pub backstep_growth: usize,
    /// Added to the peak temperature per level (finite, >= 0). Default 0.25.
    pub peak_increment: f32,
    /// Longest back step the guard will ask for (>= 1). Default 256.
    pub max_backstep: usize,
}

impl Default for LoopGuard {
    fn default() -> Self {
        Self {
            window: 3,
            cool_down: 64,
            max_escalations: 3,
            backstep_growth: 2,
            peak_increment: 0.25,
            max_backstep: 256,
        }
    }
}

impl LoopGuard {
    /// The defaults (window 3, 3 escalations, back step ×2 and peak +0.25 per level,
    /// back steps of at most 256 tokens, a cool-down of 64 tokens after a fall-back).
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`window`](Self::window).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window;
        self
    }

    /// Set [`cool_down`](Self::cool_down). Errors when 0.
    pub fn cool_down(mut self, tokens: usize) -> Result<Self> {
        if tokens == 0 {
            return Err(PerpetualError::invalid("cool_down", tokens, "must be >= 1"));
        }
        self.cool_down = tokens;
        Ok(self)
    }

    /// Set [`max_escalations`](Self::max_escalations).
    pub fn max_escalations(mut self, levels: u32) -> Self {
        self.max_escalations = levels;
        self
    }

    /// Set [`backstep_growth`](Self::backstep_growth). Errors when 0.
    pub fn backstep_growth(mut self, factor: usize) -> Result<Self> {
        if factor == 0 {
            return Err(PerpetualError::invalid("backstep_growth", factor, "must be >= 1"));
        }
        self.backstep_growth = factor;
        Ok(self)
    }

    /// Set [`peak_increment`](Self::peak_increment). Errors unless finite and >= 0.
    pub fn peak_increment(mut self, increment: f32) -> Result<Self> {
        if !(increment.is_finite() && increment >= 0.0) {
            return Err(PerpetualError::invalid("peak_increment", increment, "must be finite and >= 0"));
        }
        self.peak_increment = increment;
        Ok(self)
    }

    /// Set [`max_backstep`](Self::max_backstep). Errors when 0.
    pub fn max_backstep(mut self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(PerpetualError::invalid("max_backstep", n, "must be >= 1"));
        }
        self.max_backstep = n;
        Ok(self)
    }

    /// Check the fields (they are public): the same rules as the setters.
    pub fn validate(&self) -> Result<()> {
        Self::new()
            .cool_down(self.cool_down)?
            .backstep_growth(self.backstep_growth)?
            .peak_increment(self.peak_increment)?
            .max_backstep(self.max_backstep)
            .map(|_| ())
    }

    /// The back step at escalation `level`: `min(n · growth^level, max_backstep)`,
    /// saturating.
    pub fn backstep_at(&self, n: usize, level: u32) -> usize {
        let growth = self.backstep_growth.saturating_pow(level);
        n.saturating_mul(growth).min(self.max_backstep).max(1)
    }

    /// The peak at escalation `level`: `peak + level · peak_increment`.
    pub fn peak_at(&self, peak: f32, level: u32) -> f32 {
        peak + level as f32 * self.peak_increment
    }
}

/// The verdict on one EOS draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A budget is met: let the EOS through.
    Accept,
    /// Intervene the strategy's way, at this escalation level.
    Intervene { level: u32 },
    /// The loop guard's bound is reached: replace with the runner-up.
    Fallback,
}

/// Run-time state of the budget and the loop guard (reset per sequence).
#[derive(Debug, Clone, Default)]
pub(crate) struct Oversight {
    pub(crate) budget: Budget,
    pub(crate) guard: LoopGuard,
    interventions: usize,
    frontier: usize,
    streak_mark: Option<usize>,
    level: u32,
    /// After a fall-back: the frontier below which every EOS still falls back.
    fallback_until: Option<usize>,
}

impl Oversight {
    /// Whether the strategy should still prepare to intervene at this step.
    pub(crate) fn intervening(&self, step: &StepInfo) -> bool {
        !self.budget.accepts_eos(step.prompt_len, step.generated, self.interventions)
    }

    /// Judge an EOS draw and count the intervention.
    pub(crate) fn judge(&mut self, event: &EosDrawn<'_>) -> Verdict {
        self.frontier = self.frontier.max(event.generated);
        if self.budget.accepts_eos(event.prompt_len, event.generated, self.interventions) {
            return Verdict::Accept;
        }
        self.interventions += 1;
        match self.streak_mark {
            Some(mark) if self.frontier <= mark.saturating_add(self.guard.window) => {
                self.level = self.level.saturating_add(1);
            }
            _ => {
                self.streak_mark = Some(self.frontier);
                if self.fallback_until.is_none_or(|until| self.frontier >= until) {
                    self.level = 0;
                    self.fallback_until = None;
                }
            }
        }
        if self.level > self.guard.max_escalations {
            if self.fallback_until.is_none() {
                self.fallback_until = Some(self.frontier.saturating_add(self.guard.cool_down));
            }
            Verdict::Fallback
        } else {
            Verdict::Intervene { level: self.level }
        }
    }

    pub(crate) fn on_token(&mut self, index: usize) {
        self.frontier = self.frontier.max(index.saturating_add(1));
    }

    pub(crate) fn interventions(&self) -> usize {
        self.interventions
    }

    pub(crate) fn level(&self) -> u32 {
        self.level
    }

    pub(crate) fn reset(&mut self) {
        *self = Self { budget: self.budget, guard: self.guard, ..Self::default() };
    }
}

/// The runner-up replacement, or `Stop` when the EOS was the only candidate drawn.
pub(crate) fn replace_with_runner_up(event: &EosDrawn<'_>) -> crate::EosAction {
    match event.draws.get(1) {
        Some(&token) => crate::EosAction::Replace { token },
        None => crate::EosAction::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eos(generated: usize) -> EosDrawn<'static> {
        EosDrawn {
            prompt_len: 4,
            generated,
            removable: generated,
            draws: &[0, 7],
            p_eos: 0.9,
            base_temperature: 1.0,
        }
    }

    #[test]
    fn budgets_accept_as_documented() {
        let b = Budget::unlimited().max_interventions(2);
        assert!(!b.accepts_eos(4, 100, 1));
        assert!(b.accepts_eos(4, 0, 2));
        let b = Budget::unlimited().allow_eos_after(50);
        assert!(!b.accepts_eos(4, 49, 0) && b.accepts_eos(4, 50, 0));
        let b = Budget::unlimited().target_length(50);
        assert!(!b.accepts_eos(4, 45, 0) && b.accepts_eos(4, 46, 0));
        assert!(!Budget::unlimited().accepts_eos(0, usize::MAX, usize::MAX));
    }

    #[test]
    fn repeats_escalate_then_fall_back_and_progress_resets() {
        let mut o = Oversight::default();
        assert_eq!(o.judge(&eos(100)), Verdict::Intervene { level: 0 });
        assert_eq!(o.judge(&eos(95)), Verdict::Intervene { level: 1 });
        assert_eq!(o.judge(&eos(103)), Verdict::Intervene { level: 2 });
        assert_eq!(o.judge(&eos(90)), Verdict::Intervene { level: 3 });
        assert_eq!(o.judge(&eos(90)), Verdict::Fallback);
        // The frontier moves past the streak (mark 100 + window 3) but not by the
        // cool-down (64) since the fall-back at 103: still falling back.
        o.on_token(110);
        assert_eq!(o.judge(&eos(111)), Verdict::Fallback);
        // 64 tokens past 103: start over.
        o.on_token(166);
        assert_eq!(o.judge(&eos(167)), Verdict::Intervene { level: 0 });
        assert_eq!(o.interventions(), 7);
        o.reset();
        assert_eq!(o.interventions(), 0);
        assert_eq!(o.judge(&eos(5)), Verdict::Intervene { level: 0 });
    }

    #[test]
    fn escalation_formulas_and_validation() {
        let g = LoopGuard::new();
        assert_eq!(g.backstep_at(10, 0), 10);
        assert_eq!(g.backstep_at(10, 3), 80);
        assert_eq!(g.backstep_at(10, 40), 256);
        assert_eq!(g.peak_at(2.0, 2), 2.5);
        assert!(LoopGuard::new().backstep_growth(0).is_err());
        assert!(LoopGuard::new().cool_down(0).is_err());
        assert!(LoopGuard::new().peak_increment(-1.0).is_err());
        let e = LoopGuard::new().max_backstep(0).unwrap_err();
        assert!(e.to_string().contains("max_backstep"), "{e}");
        assert!(LoopGuard { peak_increment: f32::NAN, ..LoopGuard::new() }.validate().is_err());
    }
}
