//! Perpetual generation by turns: let the model end its turn, then ask for more.

use crate::controls::{Oversight, Verdict, replace_with_runner_up};
use crate::strategies::controls_builders;
use crate::{Budget, EosAction, EosDrawn, EosStrategy, LoopGuard, Result, StepInfo, StepPlan};

/// Tokens a turn must have before [`ResumeTurn`] resumes after it (shorter turns get
/// the runner-up instead, so the model cannot end turn after empty turn).
pub const DEFAULT_MIN_TURN: usize = 16;

/// "Resume the turn": when the model draws EOS, let its turn end and ask for more, the
/// way a user of a chat model presses *continue*. The generator closes the assistant
/// turn, feeds its resume tokens — a user turn asking to go on (`"Continue."`) and a
/// new assistant turn header, rendered from the model's chat template and hidden from
/// the output — and the model writes its next turn with the whole text before it in
/// context ([`EosAction::Resume`]).
///
/// Why: forbidding the EOS (methods 1–4) keeps the model inside a turn it considers
/// finished; its entropy stays low and a small model drifts into repetition. A new
/// turn starts from the state the model is in at the start of any answer, so each
/// turn is as fresh as the model's own text, and it follows from what came before
/// because all of it stays in the cache. The cost is the resume tokens (about a dozen
/// per turn), fed as one chunk; nothing is regenerated.
///
/// Guards: a turn shorter than [`min_turn`](Self::with_min_turn) tokens (default
/// [`DEFAULT_MIN_TURN`]) is not ended — its EOS is replaced by the runner-up, as method
/// 1 does — so the model cannot end turn after empty turn; [`Budget`] decides when an
/// EOS is finally accepted, and the [`LoopGuard`] falls back to the runner-up when EOS
/// keeps coming back right after a resume. Needs a generator with resume tokens (a
/// tokenizer with a chat template); without them the generator reports the action as
/// an error.
///
/// ```
/// use perpetua_perpetual::{EosAction, EosDrawn, EosStrategy, ResumeTurn, StepInfo};
///
/// let mut s = ResumeTurn::new();
/// let eos = |generated| EosDrawn { prompt_len: 4, generated, removable: generated, draws: &[0, 7], p_eos: 0.9, base_temperature: 1.0 };
/// // A 3-token turn is too short to end: the runner-up is taken.
/// for i in 0..3 {
///     s.on_token(5, i);
/// }
/// assert_eq!(s.on_eos(&eos(3)), EosAction::Replace { token: 7 });
/// // After 20 more tokens the turn may end: resume.
/// for i in 4..24 {
///     s.on_token(5, i);
/// }
/// assert_eq!(s.on_eos(&eos(24)), EosAction::Resume);
/// assert_eq!(s.turns(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct ResumeTurn {
    min_turn: usize,
    oversight: Oversight,
    /// Tokens appended in the current turn (net of back steps).
    turn_len: usize,
    turns: usize,
}

impl Default for ResumeTurn {
    fn default() -> Self {
        Self::new()
    }
}

impl ResumeTurn {
    /// Resume after every EOS of a turn of at least [`DEFAULT_MIN_TURN`] tokens.
    pub fn new() -> Self {
        Self { min_turn: DEFAULT_MIN_TURN, oversight: Oversight::default(), turn_len: 0, turns: 0 }
    }

    /// Turns shorter than `min_turn` tokens are not ended (their EOS is replaced by the
    /// runner-up). `0` resumes after every EOS.
    pub fn with_min_turn(mut self, min_turn: usize) -> Self {
        self.min_turn = min_turn;
        self
    }

    /// The shortest turn that may end.
    pub fn min_turn(&self) -> usize {
        self.min_turn
    }

    /// Turns resumed after an EOS in this sequence.
    pub fn turns(&self) -> usize {
        self.turns
    }

    controls_builders!();
}

impl EosStrategy for ResumeTurn {
    fn boxed_clone(&self) -> Option<Box<dyn EosStrategy>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "resume_turn"
    }

    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        // Two draws whenever an EOS may be replaced by the runner-up.
        StepPlan { draws: if self.oversight.intervening(step) { 2 } else { 1 }, ..StepPlan::default() }
    }

    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction {
        match self.oversight.judge(event) {
            Verdict::Accept => EosAction::Stop,
            Verdict::Intervene { .. } if self.turn_len >= self.min_turn => {
                self.turn_len = 0;
                self.turns += 1;
                EosAction::Resume
            }
            Verdict::Intervene { .. } | Verdict::Fallback => replace_with_runner_up(event),
        }
    }

    fn on_token(&mut self, _token: u32, index: usize) {
        self.turn_len += 1;
        self.oversight.on_token(index);
    }

    fn on_backstep(&mut self, removed: usize, _generated: usize) {
        self.turn_len = self.turn_len.saturating_sub(removed);
    }

    fn on_resume(&mut self, _generated: usize) {
        // A turn ended by a wrapper (a stale stretch) starts over too.
        self.turn_len = 0;
    }

    fn reset(&mut self) {
        self.oversight.reset();
        self.turn_len = 0;
        self.turns = 0;
    }
}
