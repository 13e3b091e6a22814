//! Strategies that keep perpetual text fresh: they wrap any EOS strategy and act on
//! degeneration as well as on EOS.
//!
//! - [`LoopBackstep`]: a repetition loop is an event like EOS. When the generated tail
//!   repeats itself ([`LoopDetector`]), remove the repeat (back to where it began, never
//!   into the prompt), ban the token the evicted text had at the landing position, and
//!   regenerate from a raised temperature that decays to base. Escalates like
//!   [`LoopGuard`] when the loop comes back at the same place, so it can never loop
//!   forever.
//! - [`Anticipation`]: the paper's Figure 1 — entropy falls before the model ends. When
//!   the entropy of the last few steps falls well below its running level, raise the
//!   temperature before an EOS or a loop arrives.
//!
//! Both compose with every EOS method and with each other:
//! `Anticipation::new(LoopBackstep::new(BackstepWithSchedule::default()))`.

use crate::strategies::{ActiveSchedule, scheduled_temperature};
use crate::{
    EosAction, EosDrawn, EosStrategy, LoopDetection, LoopDetector, LoopGuard, Peak, PerpetualError, Result,
    Staleness, StepInfo, StepPlan, StopAtEos, TemperatureSchedule, TokenAction, TokenAppended, TokenBans,
};

/// Default span (tokens) of the raised temperature after a loop back step.
pub const DEFAULT_LOOP_SPAN: usize = 16;

/// The loop guard [`LoopBackstep`] starts with: a detection within 32 tokens of the
/// frontier where the last one happened is "the same loop again"; otherwise
/// [`LoopGuard`]'s defaults (back step ×2 and peak +0.25 per level, 3 levels, then 64
/// tokens of fall-back).
pub fn default_loop_guard() -> LoopGuard {
    LoopGuard { window: 32, ..LoopGuard::default() }
}

/// A loop back step the strategy asked for and the generator has not yet confirmed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PendingLoopStep {
    /// Tokens asked to be removed.
    n: usize,
    /// The token the evicted text had at the landing position.
    evicted: u32,
    /// Peak of the regeneration (resolved and escalated).
    peak: f32,
}

/// Tokens banned at one generated index.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IndexBans {
    index: usize,
    bans: TokenBans,
}

impl IndexBans {
    fn at(&self, index: usize) -> Option<&TokenBans> {
        (self.index == index).then_some(&self.bans)
    }
}

/// Add `id` to the bans at `index` (accumulating when the index is the same as before,
/// so a loop re-entered at the same place cannot take any of its earlier ways in).
fn ban_at(slot: &mut Option<IndexBans>, index: usize, id: u32) {
    match slot {
        Some(b) if b.index == index => b.bans.insert(id),
        _ => {
            let mut bans = TokenBans::new();
            bans.insert(id);
            *slot = Some(IndexBans { index, bans });
        }
    }
}

/// A repetition loop treated like an EOS: detect it, back step to where it began,
/// regenerate hotter without re-entering it. Wraps an EOS strategy `S` (default
/// [`StopAtEos`]), which keeps handling EOS draws exactly as on its own.
///
/// On a [`Repeat`](crate::Repeat) of `len` tokens found after the token at generated
/// index `g − 1`:
/// 1. **Back step** `n = min(backstep_at(len, level), removable)` tokens — at level 0
///    exactly the repeat, so the text lands where the repeat began and its first copy
///    stays. Never into the prompt (`n ≤ generated`) nor past a context roll.
/// 2. **Ban** the token the evicted text had at the landing index `g − n` for the step
///    that regenerates that index (bans accumulate while landings repeat the index).
/// 3. **Regenerate hotter**: from the landing index, `span` tokens follow `schedule`
///    from `peak` (+ `level · peak_increment`) back to the base temperature. A hotter
///    plan of the wrapped strategy wins.
///
/// **Escalation** ([`LoopGuard`] rules, its own guard: [`default_loop_guard`]): a
/// detection while the frontier (the longest the text has been) is within
/// `guard.window` tokens of where the streak began is the same loop again and raises
/// the level: back steps `len · growth^level` (at most `max_backstep`), higher peaks.
/// Past `max_escalations` the strategy **falls back**: no more back steps until the
/// frontier is `cool_down` tokens further; each detection in that stretch only bans the
/// token that would continue the repeat and raises the temperature. So within a streak
/// there are at most `max_escalations + 1` loop back steps, after which every step
/// appends a token: the text cannot loop forever (`tests/policy.rs`).
///
/// ```
/// use perpetua_perpetual::{EosStrategy, LoopBackstep, StepInfo, TokenAction, TokenAppended};
///
/// let mut s = LoopBackstep::new(perpetua_perpetual::StopAtEos);
/// let mut text: Vec<u32> = (100..120).collect();
/// let pattern = [1, 2, 3, 4];
/// let mut i = 0;
/// let action = loop {
///     text.push(pattern[i % 4]);
///     i += 1;
///     s.on_token(*text.last().unwrap(), text.len() - 1);
///     let ev = TokenAppended {
///         prompt_len: 3, generated: &text, removable: text.len(), entropy: None,
///         temperature: 1.0, base_temperature: 1.0,
///     };
///     match s.after_token(&ev) {
///         TokenAction::Continue => continue,
///         other => break other,
///     }
/// };
/// // 4 + 12 tokens of the pattern: the 12 repeated ones go, the first copy stays.
/// assert_eq!(action, TokenAction::Backstep { n: 12 });
/// text.truncate(text.len() - 12);
/// s.on_backstep(12, text.len());
/// let plan = s.plan_step(&StepInfo { prompt_len: 3, generated: text.len(), base_temperature: 1.0 });
/// assert_eq!(plan.bans.as_slice(), &[1]); // the token that began the second copy
/// assert_eq!(plan.temperature, Some(1.5)); // regenerate from 1.5× base
/// ```
#[derive(Debug, Clone)]
pub struct LoopBackstep<S = StopAtEos> {
    inner: S,
    detector: LoopDetector,
    peak: Peak,
    schedule: TemperatureSchedule,
    span: usize,
    guard: LoopGuard,
    staleness: Option<Staleness>,
    stale_turns: bool,
    // State (reset per sequence).
    pending: Option<PendingLoopStep>,
    active: Option<ActiveSchedule>,
    bans: Option<IndexBans>,
    frontier: usize,
    streak_mark: Option<usize>,
    level: u32,
    fallback_until: Option<usize>,
    loop_backsteps: usize,
    fallbacks: usize,
    /// Staleness checks wait until the text reaches this length (only new text is judged).
    stale_quiet_until: usize,
    /// Extra tokens paid for: removed by back steps of every cause, and fed hidden by
    /// resumed turns (rationed by `Staleness::budget`).
    spent: usize,
    /// The text length as last reported (to count the hidden tokens of a resume).
    len: usize,
    stale_backsteps: usize,
    stale_heats: usize,
    stale_scratch: Vec<u32>,
    /// With a rewind: `(text length, distinct ids in the window ending there)` for the
    /// last `rewind` positions, oldest first (truncated by back steps).
    stale_history: std::collections::VecDeque<(usize, u16)>,
    rewinds: usize,
}

impl<S: EosStrategy> LoopBackstep<S> {
    /// Wrap `inner` with the defaults: [`LoopDetection::default`], peak `Times(1.5)`,
    /// [`TemperatureSchedule::Linear`] over [`DEFAULT_LOOP_SPAN`] tokens,
    /// [`default_loop_guard`].
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            // The defaults are valid: `LoopDetection::validate` accepts them (tested).
            detector: LoopDetector::new(LoopDetection::default())
                .unwrap_or_else(|_| unreachable!("default loop thresholds are valid")),
            peak: Peak::Times(1.5),
            schedule: TemperatureSchedule::Linear,
            span: DEFAULT_LOOP_SPAN,
            guard: default_loop_guard(),
            staleness: None,
            stale_turns: false,
            pending: None,
            active: None,
            bans: None,
            frontier: 0,
            streak_mark: None,
            level: 0,
            fallback_until: None,
            loop_backsteps: 0,
            fallbacks: 0,
            stale_quiet_until: 0,
            spent: 0,
            len: 0,
            stale_backsteps: 0,
            stale_heats: 0,
            stale_scratch: Vec::new(),
            stale_history: std::collections::VecDeque::new(),
            rewinds: 0,
        }
    }

    /// Also treat staleness (a collapsed vocabulary that repeats nothing verbatim) like a
    /// loop, within a regeneration budget ([`Staleness`]). Errors: [`Staleness::validate`].
    pub fn with_staleness(mut self, staleness: Staleness) -> Result<Self> {
        staleness.validate()?;
        self.staleness = Some(staleness);
        Ok(self)
    }

    /// A stale window ends the model's turn instead of being regenerated: remove the
    /// last `backstep` tokens (while the regeneration budget allows, else none) and
    /// answer [`TokenAction::Resume`], so the generator feeds its resume tokens and the
    /// model starts a new turn — the state it writes its freshest text in — with its
    /// text so far in context. Needs a generator with resume tokens (a chat template).
    /// Without staleness thresholds this does nothing.
    pub fn with_stale_turns(mut self, on: bool) -> Self {
        self.stale_turns = on;
        self
    }

    /// Whether stale windows end the turn ([`with_stale_turns`](Self::with_stale_turns)).
    pub fn stale_turns(&self) -> bool {
        self.stale_turns
    }

    /// The staleness thresholds, if staleness is checked.
    pub fn staleness(&self) -> Option<&Staleness> {
        self.staleness.as_ref()
    }

    /// Stale back steps asked for in this sequence (counted in
    /// [`loop_backsteps`](Self::loop_backsteps) too).
    pub fn stale_backsteps(&self) -> usize {
        self.stale_backsteps
    }

    /// Stale windows answered by a temperature raise only (the budget was spent).
    pub fn stale_heats(&self) -> usize {
        self.stale_heats
    }

    /// Stale back steps that reached back past `backstep` to the freshest recent window
    /// ([`Staleness::rewind`]).
    pub fn rewinds(&self) -> usize {
        self.rewinds
    }

    /// The distinct ids of the window ending at `g = generated.len() >= window`,
    /// recorded for a rewind.
    fn record_window(&mut self, st: &Staleness, generated: &[u32]) -> usize {
        let g = generated.len();
        let distinct = Staleness::distinct(&generated[g - st.window..], &mut self.stale_scratch);
        if st.rewind > 0 {
            while self.stale_history.back().is_some_and(|&(at, _)| at >= g) {
                self.stale_history.pop_back();
            }
            while self.stale_history.front().is_some_and(|&(at, _)| at + st.rewind < g) {
                self.stale_history.pop_front();
            }
            self.stale_history.push_back((g, u16::try_from(distinct).unwrap_or(u16::MAX)));
        }
        distinct
    }

    /// Tokens a stale back step at text length `g` removes: `backstep`, or with a rewind
    /// back to the end of the latest window within `tolerance` of the freshest one that
    /// ends in the last `rewind` tokens (at least `backstep`).
    fn stale_backstep_len(&self, st: &Staleness, g: usize) -> usize {
        if st.rewind == 0 {
            return st.backstep;
        }
        let reach = || self.stale_history.iter().rev().filter(|&&(at, _)| at < g && at + st.rewind >= g);
        let Some(best) = reach().map(|&(_, d)| d).max() else {
            return st.backstep;
        };
        let floor = f32::from(best) - st.tolerance * st.window as f32;
        let landing = reach().find(|&&(_, d)| f32::from(d) >= floor).map_or(g, |&(at, _)| at);
        (g - landing).clamp(st.backstep, st.rewind.max(st.backstep))
    }

    /// Set the detection thresholds. Errors: [`LoopDetection::validate`].
    pub fn with_detection(mut self, detection: LoopDetection) -> Result<Self> {
        self.detector = LoopDetector::new(detection)?;
        Ok(self)
    }

    /// Set the peak of the regeneration. Errors when it is not finite and > 0.
    pub fn with_peak(mut self, peak: Peak) -> Result<Self> {
        peak.validate()?;
        self.peak = peak;
        Ok(self)
    }

    /// Set the schedule from the peak back to base. Errors when its parameters are
    /// invalid.
    pub fn with_schedule(mut self, schedule: TemperatureSchedule) -> Result<Self> {
        schedule.validate()?;
        self.schedule = schedule;
        Ok(self)
    }

    /// Set the span (tokens) of the raised temperature. Errors when 0.
    pub fn with_span(mut self, span: usize) -> Result<Self> {
        if span == 0 {
            return Err(PerpetualError::invalid("span", span, "must be >= 1"));
        }
        self.span = span;
        Ok(self)
    }

    /// Replace the loop guard. Errors when its fields are invalid.
    pub fn with_loop_guard(mut self, guard: LoopGuard) -> Result<Self> {
        guard.validate()?;
        self.guard = guard;
        Ok(self)
    }

    /// The wrapped EOS strategy.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The detection thresholds.
    pub fn detection(&self) -> &LoopDetection {
        self.detector.config()
    }

    /// Loop back steps asked for in this sequence.
    pub fn loop_backsteps(&self) -> usize {
        self.loop_backsteps
    }

    /// Detections answered by the fall-back (ban and heat, no back step).
    pub fn fallbacks(&self) -> usize {
        self.fallbacks
    }

    /// The current escalation level (0 unless the same loop came back).
    pub fn escalation_level(&self) -> u32 {
        self.level
    }

    /// Judge a detection at the current frontier: the escalation level, or `None` for
    /// the fall-back.
    fn judge(&mut self) -> Option<u32> {
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
            None
        } else {
            Some(self.level)
        }
    }

    fn heat_from(&mut self, start: usize, peak: f32) {
        self.active = Some(ActiveSchedule { start, span: self.span, peak });
    }

    /// The staleness check after a token that completed no verbatim repeat.
    fn check_staleness(&mut self, generated: &[u32], removable: usize, base: f32) -> TokenAction {
        let Some(st) = self.staleness else {
            return TokenAction::Continue;
        };
        let g = generated.len();
        // While quiet, windows are only needed for a rewind's history.
        if g < st.window || (st.rewind == 0 && g < self.stale_quiet_until) {
            return TokenAction::Continue;
        }
        let distinct = self.record_window(&st, generated);
        if g < self.stale_quiet_until || (distinct as f32) >= st.min_distinct * st.window as f32 {
            return TokenAction::Continue;
        }
        let peak = self.peak.resolve(base);
        // The budget covers every back step (EOS, loop, stale): stale ones are the
        // optional kind, taken only while the whole regeneration stays within it. A
        // rewind the budget cannot pay for shrinks to the plain back step.
        let allowed = (f64::from(st.budget) * self.frontier as f64) as usize;
        let mut n = self.stale_backstep_len(&st, g).min(removable);
        if self.spent + n > allowed {
            n = st.backstep.min(removable);
        }
        if self.stale_turns && self.spent < allowed {
            // End the turn here (after removing the stale tail while the budget allows);
            // the resume tokens are paid from the budget too (`on_resume`), which also
            // re-arms the check once the new turn has a window of text. Over budget, heat.
            let n = if self.spent + n <= allowed { n } else { 0 };
            self.stale_backsteps += 1;
            self.stale_quiet_until = usize::MAX;
            return TokenAction::Resume { n };
        }
        if n > 0 && self.spent + n <= allowed {
            self.stale_backsteps += 1;
            self.loop_backsteps += 1;
            if n > st.backstep {
                self.rewinds += 1;
            }
            // The next check judges only text written after the landing.
            self.stale_quiet_until = g - n + st.window;
            self.pending = Some(PendingLoopStep { n, evicted: generated[g - n], peak });
            TokenAction::Backstep { n }
        } else {
            // Over budget: heat the next tokens instead, and look again a back step later.
            self.stale_heats += 1;
            self.stale_quiet_until = g + st.backstep;
            if self.active.is_none() {
                self.heat_from(g, peak);
            }
            TokenAction::Continue
        }
    }
}

impl<S: EosStrategy + Default> Default for LoopBackstep<S> {
    fn default() -> Self {
        Self::new(S::default())
    }
}

impl<S: EosStrategy> EosStrategy for LoopBackstep<S> {
    fn name(&self) -> &'static str {
        "loop_backstep"
    }

    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        let plan = self.inner.plan_step(step);
        let temperature = scheduled_temperature(&mut self.active, &self.schedule, step);
        let none = TokenBans::new();
        let bans = self.bans.as_ref().and_then(|b| b.at(step.generated)).unwrap_or(&none);
        plan.merged(temperature, bans, false)
    }

    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction {
        self.frontier = self.frontier.max(event.generated);
        self.inner.on_eos(event)
    }

    fn on_token(&mut self, token: u32, index: usize) {
        self.frontier = self.frontier.max(index.saturating_add(1));
        self.len = index.saturating_add(1);
        if self.bans.is_some_and(|b| index > b.index) {
            self.bans = None;
        }
        self.inner.on_token(token, index);
    }

    fn after_token(&mut self, event: &TokenAppended<'_>) -> TokenAction {
        let inner = self.inner.after_token(event);
        if inner != TokenAction::Continue {
            // The wrapped strategy rewrites the tail: our counters follow at the next call.
            self.detector.invalidate();
            return inner;
        }
        let g = event.generated.len();
        self.frontier = self.frontier.max(g);
        let base = event.base_temperature;
        let removable = event.removable.min(g);
        let Some(repeat) = self.detector.observe(event.generated) else {
            return self.check_staleness(event.generated, removable, base);
        };
        match self.judge() {
            Some(level) if removable > 0 => {
                let n = self.guard.backstep_at(repeat.len, level).min(removable);
                let peak = self.guard.peak_at(self.peak.resolve(base), level);
                self.pending = Some(PendingLoopStep { n, evicted: event.generated[g - n], peak });
                self.loop_backsteps += 1;
                TokenAction::Backstep { n }
            }
            level => {
                // Fall-back (or nothing removable): no back step. Ban the token that
                // would continue the repeat at the next index and heat the next steps.
                let level = level.unwrap_or(self.level);
                let next = event.generated[g - repeat.distance.min(g)];
                ban_at(&mut self.bans, g, next);
                self.heat_from(g, self.guard.peak_at(self.peak.resolve(base), level));
                self.fallbacks += 1;
                TokenAction::Continue
            }
        }
    }

    fn on_resume(&mut self, generated: usize) {
        self.detector.invalidate();
        self.spent = self.spent.saturating_add(generated.saturating_sub(self.len));
        self.len = generated;
        self.frontier = self.frontier.max(generated);
        if let Some(st) = self.staleness {
            self.stale_quiet_until = generated.saturating_add(st.window);
        }
        self.inner.on_resume(generated);
    }

    fn on_backstep(&mut self, removed: usize, generated: usize) {
        self.detector.invalidate();
        self.spent = self.spent.saturating_add(removed);
        self.len = generated;
        if let Some(p) = self.pending.take() {
            if removed == p.n {
                ban_at(&mut self.bans, generated, p.evicted);
            }
            if removed > 0 {
                self.heat_from(generated, p.peak);
            }
        }
        self.inner.on_backstep(removed, generated);
    }

    fn reset(&mut self) {
        self.inner.reset();
        self.detector.invalidate();
        self.pending = None;
        self.active = None;
        self.bans = None;
        self.frontier = 0;
        self.streak_mark = None;
        self.level = 0;
        self.fallback_until = None;
        self.loop_backsteps = 0;
        self.fallbacks = 0;
        self.stale_quiet_until = 0;
        self.spent = 0;
        self.len = 0;
        self.stale_backsteps = 0;
        self.stale_heats = 0;
        self.stale_history.clear();
        self.rewinds = 0;
    }
}

/// Longest entropy window [`Anticipation`] accepts.
pub const MAX_ANTICIPATION_WINDOW: usize = 64;

/// Raise the temperature *before* the model ends or loops: when the mean raw entropy of
/// the last `window` steps falls below `ratio ×` its running level, sample the next
/// `span` tokens from `peak` back down to base (the paper's Figure 1: entropy falls in
/// the blocks before EOS). Wraps an EOS strategy `S`, which keeps handling EOS.
///
/// The running level is an exponential moving average of the per-step entropy with a
/// half-life of `half_life` steps. Nothing triggers during the first `warmup` steps or
/// while a raise is under way. Defaults: window 16, ratio 0.5, half-life 256, warm-up
/// 32, peak `Times(1.3)`, linear over 16 tokens. It asks the generator for the entropy
/// every step ([`StepPlan::observe_entropy`]: one pass over the logits).
///
/// ```
/// use perpetua_perpetual::{Anticipation, EosStrategy, StepInfo, StopAtEos, TokenAppended};
///
/// let mut s = Anticipation::new(StopAtEos);
/// let ids: Vec<u32> = (0..200).collect();
/// let mut raised = None;
/// for g in 0..200 {
///     let plan = s.plan_step(&StepInfo { prompt_len: 1, generated: g, base_temperature: 1.0 });
///     assert!(plan.observe_entropy);
///     if plan.temperature.is_some() && raised.is_none() { raised = Some(g); }
///     // Entropy 3 nats for 100 steps, then the model "wants to stop": 0.5 nats.
///     let entropy = if g < 100 { 3.0 } else { 0.5 };
///     s.after_token(&TokenAppended {
///         prompt_len: 1, generated: &ids[..=g], removable: g + 1, entropy: Some(entropy),
///         temperature: 1.0, base_temperature: 1.0,
///     });
/// }
/// assert!(matches!(raised, Some(g) if (100..120).contains(&g)), "{raised:?}");
/// ```
#[derive(Debug, Clone)]
pub struct Anticipation<S = StopAtEos> {
    inner: S,
    window: usize,
    ratio: f32,
    half_life: f32,
    warmup: usize,
    peak: Peak,
    schedule: TemperatureSchedule,
    span: usize,
    // State.
    recent: [f32; MAX_ANTICIPATION_WINDOW],
    filled: usize,
    next: usize,
    level: Option<f64>,
    steps: usize,
    active: Option<ActiveSchedule>,
    triggers: usize,
}

impl<S: EosStrategy> Anticipation<S> {
    /// Wrap `inner` with the defaults (see the type docs).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            window: 16,
            ratio: 0.5,
            half_life: 256.0,
            warmup: 32,
            peak: Peak::Times(1.3),
            schedule: TemperatureSchedule::Linear,
            span: 16,
            recent: [0.0; MAX_ANTICIPATION_WINDOW],
            filled: 0,
            next: 0,
            level: None,
            steps: 0,
            active: None,
            triggers: 0,
        }
    }

    /// Steps in the short entropy window (1..=64).
    pub fn with_window(mut self, steps: usize) -> Result<Self> {
        if steps == 0 || steps > MAX_ANTICIPATION_WINDOW {
            return Err(PerpetualError::invalid("window", steps, "must be in 1..=64"));
        }
        self.window = steps;
        Ok(self)
    }

    /// Trigger when the window mean is below `ratio ×` the running level (0 < ratio ≤ 1).
    pub fn with_ratio(mut self, ratio: f32) -> Result<Self> {
        if !(ratio.is_finite() && ratio > 0.0 && ratio <= 1.0) {
            return Err(PerpetualError::invalid("ratio", ratio, "must be in (0, 1]"));
        }
        self.ratio = ratio;
        Ok(self)
    }

    /// Half-life (steps) of the running entropy level (finite, >= 1).
    pub fn with_half_life(mut self, steps: f32) -> Result<Self> {
        if !(steps.is_finite() && steps >= 1.0) {
            return Err(PerpetualError::invalid("half_life", steps, "must be finite and >= 1"));
        }
        self.half_life = steps;
        Ok(self)
    }

    /// Steps before anything can trigger.
    pub fn with_warmup(mut self, steps: usize) -> Self {
        self.warmup = steps;
        self
    }

    /// The raised temperature. Errors when it is not finite and > 0.
    pub fn with_peak(mut self, peak: Peak) -> Result<Self> {
        peak.validate()?;
        self.peak = peak;
        Ok(self)
    }

    /// Set the schedule from the peak back to base.
    pub fn with_schedule(mut self, schedule: TemperatureSchedule) -> Result<Self> {
        schedule.validate()?;
        self.schedule = schedule;
        Ok(self)
    }

    /// Tokens sampled above base after a trigger (>= 1).
    pub fn with_span(mut self, span: usize) -> Result<Self> {
        if span == 0 {
            return Err(PerpetualError::invalid("span", span, "must be >= 1"));
        }
        self.span = span;
        Ok(self)
    }

    /// The wrapped strategy.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Raises triggered in this sequence.
    pub fn triggers(&self) -> usize {
        self.triggers
    }

    fn window_mean(&self) -> Option<f64> {
        (self.filled >= self.window).then(|| {
            let n = self.window;
            let mut sum = 0.0_f64;
            for i in 0..n {
                let at = (self.next + MAX_ANTICIPATION_WINDOW - 1 - i) % MAX_ANTICIPATION_WINDOW;
                sum += f64::from(self.recent[at]);
            }
            sum / n as f64
        })
    }

    fn observe(&mut self, entropy: f32, next_index: usize, base: f32) {
        if !entropy.is_finite() || entropy < 0.0 {
            return;
        }
        self.recent[self.next] = entropy;
        self.next = (self.next + 1) % MAX_ANTICIPATION_WINDOW;
        self.filled = (self.filled + 1).min(MAX_ANTICIPATION_WINDOW);
        self.steps += 1;
        let alpha = 1.0 - 0.5_f64.powf(1.0 / f64::from(self.half_life));
        let level = match self.level {
            Some(l) => l + alpha * (f64::from(entropy) - l),
            None => f64::from(entropy),
        };
        self.level = Some(level);
        if self.steps < self.warmup.max(self.window) || self.active.is_some() {
            return;
        }
        if let Some(mean) = self.window_mean()
            && mean < f64::from(self.ratio) * level
        {
            self.active =
                Some(ActiveSchedule { start: next_index, span: self.span, peak: self.peak.resolve(base) });
            self.triggers += 1;
        }
    }
}

impl<S: EosStrategy + Default> Default for Anticipation<S> {
    fn default() -> Self {
        Self::new(S::default())
    }
}

impl<S: EosStrategy> EosStrategy for Anticipation<S> {
    fn name(&self) -> &'static str {
        "anticipation"
    }

    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        let plan = self.inner.plan_step(step);
        let temperature = scheduled_temperature(&mut self.active, &self.schedule, step);
        plan.merged(temperature, &TokenBans::new(), true)
    }

    fn on_eos(&mut self, event: &EosDrawn<'_>) -> EosAction {
        self.inner.on_eos(event)
    }

    fn on_token(&mut self, token: u32, index: usize) {
        self.inner.on_token(token, index);
    }

    fn after_token(&mut self, event: &TokenAppended<'_>) -> TokenAction {
        if let Some(h) = event.entropy {
            self.observe(h, event.generated.len(), event.base_temperature);
        }
        self.inner.after_token(event)
    }

    fn on_resume(&mut self, generated: usize) {
        self.inner.on_resume(generated);
    }

    fn on_backstep(&mut self, removed: usize, generated: usize) {
        // A raise under way restarts from where the text now ends, if it began later.
        if let Some(a) = self.active.as_mut()
            && a.start > generated
        {
            a.start = generated;
        }
        self.inner.on_backstep(removed, generated);
    }

    fn reset(&mut self) {
        self.inner.reset();
        self.filled = 0;
        self.next = 0;
        self.level = None;
        self.steps = 0;
        self.active = None;
        self.triggers = 0;
    }
}
