//! Online detection of repetition loops in the generated tail.
//!
//! A loop is degeneration's other face: a small model whose EOS is
//! forbidden falls into self-reinforcing repetition (Xu et al. 2022, "Learning to Break
//! the Loop"). [`LoopDetector`] watches the generated ids one token at a time and
//! reports a [`Repeat`] as soon as the tail repeats earlier text by the thresholds of
//! [`LoopDetection`].
//!
//! How: for every distance `k` in `1..=window` it keeps `match[k]`, the length of the
//! common suffix of the text and the text shifted by `k` tokens. Appending token `t_n`
//! sets `match[k] = match[k] + 1` when `t_n == t_{n−k}`, else `0`: O(window) per token,
//! no allocation after the first call. A back step (or anything that rewrites the tail)
//! is followed by one rebuild from the ids, O(window²) at worst.

use crate::{PerpetualError, Result};

/// Thresholds of [`LoopDetector`].
///
/// With `r = min_repeats`, the tail is a loop when either holds:
/// - **in a row**: the last tokens are `r` or more back-to-back copies of a pattern of
///   period `p ≤ max_period`, and the copies after the first hold at least
///   `min_repeated_tokens` tokens (so a short pattern needs more copies: period 1 needs
///   `min_repeated_tokens + 1` equal tokens, period 12 two copies);
/// - **within a window**: a span of at least `min_span` tokens ending the text already
///   occurred `r − 1` more times, each ending at most `window` tokens earlier (the copies
///   may be separated by other text: a paragraph written again).
///
/// Defaults: `max_period` 64, `min_repeats` 2, `min_repeated_tokens` 12, `min_span` 24,
/// `window` 256. Natural text rarely repeats 24 tokens verbatim within 256, or a
/// 12-token stretch back to back; lists and code sometimes do, and then a loop back
/// step only makes the model word the repeat differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoopDetection {
    /// Longest period (tokens) of a back-to-back repeat (>= 1, <= `window`).
    pub max_period: usize,
    /// Copies of a pattern or span, the first included (>= 2).
    pub min_repeats: usize,
    /// Tokens after the first copy that a back-to-back repeat needs (>= 1).
    pub min_repeated_tokens: usize,
    /// Length of a span repeated at a distance (`0` turns this check off).
    pub min_span: usize,
    /// How far back (tokens) a copy may begin to count (>= 1, <= 4,096).
    pub window: usize,
}

impl Default for LoopDetection {
    fn default() -> Self {
        Self { max_period: 64, min_repeats: 2, min_repeated_tokens: 12, min_span: 24, window: 256 }
    }
}

/// Upper bound of [`LoopDetection::window`] (the detector keeps one counter per
/// distance and rebuilds them in O(window²) after a back step).
pub const MAX_LOOP_WINDOW: usize = 4_096;

impl LoopDetection {
    /// The defaults (see the type docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Check the fields (they are public). Errors name the field and the value.
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 || self.window > MAX_LOOP_WINDOW {
            return Err(PerpetualError::invalid("window", self.window, "must be in 1..=4096"));
        }
        if self.max_period == 0 || self.max_period > self.window {
            return Err(PerpetualError::invalid("max_period", self.max_period, "must be in 1..=window"));
        }
        if self.min_repeats < 2 {
            return Err(PerpetualError::invalid("min_repeats", self.min_repeats, "must be >= 2"));
        }
        if self.min_repeated_tokens == 0 {
            return Err(PerpetualError::invalid("min_repeated_tokens", 0, "must be >= 1"));
        }
        Ok(())
    }
}

/// A repeat found at the end of the generated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    /// Tokens between a copy and the one before it: the period of a back-to-back loop.
    pub distance: usize,
    /// Tokens at the end of the text that repeat earlier text. A back step of `len`
    /// tokens removes the repeat and lands where it began (the first copy stays).
    pub len: usize,
    /// Whether the copies are back to back (a loop of period `distance`).
    pub in_a_row: bool,
}

impl Repeat {
    /// Copies of the repeated pattern at the end of the text, the first included
    /// (back to back: `1 + len / distance`; at a distance: 2 or more).
    pub fn copies(&self) -> usize {
        if self.in_a_row { 1 + self.len / self.distance.max(1) } else { 2 }
    }
}

/// Online loop detection over the generated ids (see the module docs).
///
/// ```
/// use perpetua_perpetual::{LoopDetection, LoopDetector};
///
/// let mut d = LoopDetector::new(LoopDetection::default())?;
/// let mut text: Vec<u32> = (100..140).collect(); // 40 distinct tokens
/// for n in 1..=text.len() {
///     assert!(d.observe(&text[..n]).is_none());
/// }
/// // A 5-token pattern written again and again: found once 12 tokens repeat it.
/// let pattern = [7, 8, 9, 10, 11];
/// let mut found = None;
/// for i in 0..40 {
///     text.push(pattern[i % 5]);
///     if let Some(r) = d.observe(&text) { found = Some((i, r)); break; }
/// }
/// let (i, r) = found.unwrap();
/// assert_eq!((i, r.distance, r.len, r.in_a_row), (16, 5, 12, true)); // 17 tokens: 3.4 copies
/// # Ok::<(), perpetua_perpetual::PerpetualError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LoopDetector {
    config: LoopDetection,
    /// `matches[k - 1]`: common suffix length of the text and the text shifted by `k`,
    /// saturating at `window`.
    matches: Vec<u32>,
    /// Tokens the counters describe; `None` = rebuild at the next call.
    seen: Option<usize>,
}

impl LoopDetector {
    /// A detector with these thresholds. Errors: [`LoopDetection::validate`].
    pub fn new(config: LoopDetection) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, matches: Vec::new(), seen: None })
    }

    /// The thresholds.
    pub fn config(&self) -> &LoopDetection {
        &self.config
    }

    /// Forget the counters: the next [`observe`](Self::observe) rebuilds them from the
    /// ids it is given. Call after anything rewrote the tail (a back step).
    pub fn invalidate(&mut self) {
        self.seen = None;
    }

    /// Observe the generated text `ids` (the newest token last) and report a repeat at
    /// its end, if the thresholds are met. Successive calls normally add one token;
    /// any other change of length triggers a rebuild (so a missed call costs time,
    /// never correctness — unless the tail was rewritten at the same length: call
    /// [`invalidate`](Self::invalidate) then).
    pub fn observe(&mut self, ids: &[u32]) -> Option<Repeat> {
        let w = self.config.window;
        if self.matches.len() != w {
            self.matches = vec![0; w];
            self.seen = None;
        }
        let n = ids.len();
        let cap = w as u32;
        match self.seen {
            Some(seen) if seen + 1 == n => {
                let last = ids[n - 1];
                for (i, m) in self.matches.iter_mut().enumerate() {
                    let k = i + 1;
                    *m = if k < n && ids[n - 1 - k] == last { (*m + 1).min(cap) } else { 0 };
                }
            }
            Some(seen) if seen == n => {}
            _ => self.rebuild(ids),
        }
        self.seen = Some(n);
        self.detect(n)
    }

    fn rebuild(&mut self, ids: &[u32]) {
        let n = ids.len();
        let cap = self.config.window;
        for (i, m) in self.matches.iter_mut().enumerate() {
            let k = i + 1;
            let mut len = 0;
            while len < cap && len + k < n && ids[n - 1 - len] == ids[n - 1 - len - k] {
                len += 1;
            }
            *m = len as u32;
        }
    }

    fn detect(&self, n: usize) -> Option<Repeat> {
        let c = &self.config;
        let need_in_row = |k: usize| k.saturating_mul(c.min_repeats - 1).max(c.min_repeated_tokens);
        let mut span_hits = 0;
        let mut span_first: Option<Repeat> = None;
        for (i, &m) in self.matches.iter().enumerate().take(n.saturating_sub(1)) {
            let k = i + 1;
            let len = m as usize;
            if len == 0 {
                continue;
            }
            if k <= c.max_period && len >= need_in_row(k) {
                return Some(Repeat { distance: k, len, in_a_row: true });
            }
            if c.min_span > 0 && len >= c.min_span {
                span_hits += 1;
                span_first.get_or_insert(Repeat { distance: k, len, in_a_row: len >= k });
                if span_hits + 1 >= c.min_repeats {
                    return span_first;
                }
            }
        }
        None
    }
}

/// Longest [`Staleness::rewind`].
pub const MAX_REWIND: usize = 4096;

/// Thresholds of staleness, the degeneration a verbatim-loop detector cannot see: text
/// whose vocabulary has collapsed without repeating itself word for word ("King of King
/// Loki King King Hathor", "It I It I"), which is what a small model writes in its
/// low-entropy state once DRY forbids the verbatim loop. [`LoopBackstep`] treats it like a
/// loop when configured ([`LoopBackstep::with_staleness`]).
///
/// The text is stale when the last `window` generated tokens hold fewer than
/// `min_distinct × window` distinct ids. Then `backstep` tokens (with a
/// [`rewind`](Self::rewind), back to the freshest recent window) are removed and
/// regenerated hotter, and the next check waits until `window` tokens were written past
/// the landing (it judges only new text). Regeneration is rationed: a stale back step is
/// taken only while the extra tokens paid for — removed by back steps of *every* cause
/// (EOS, loop, stale), and the hidden tokens of resumed turns — stay within `budget ×`
/// the longest the text has been, so stale back steps and stale turns never push the
/// cost past `1 + budget` forward passes per kept token (EOS back steps and EOS resumes
/// are not rationed: a method that spends more on its own keeps doing so); past the
/// budget a stale window only raises the temperature.
///
/// Defaults: window 64, min distinct 0.45, back step 32, budget 0.12. On SmolLM2's own
/// text (plain generation at T 1.0 / top-k 20, 20 runs on held-out prompts), every run
/// that ended at its own EOS kept at least 0.57 × 64 distinct ids in every 64-token
/// window; the runs that went on past 700 tokens fell to 0.05–0.37 where their text had
/// degenerated (docs/EVALUATION.md).
///
/// [`LoopBackstep`]: crate::LoopBackstep
/// [`LoopBackstep::with_staleness`]: crate::LoopBackstep::with_staleness
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Staleness {
    /// Tokens looked at (8..=1024).
    pub window: usize,
    /// Stale below this share of distinct ids in the window (in (0, 1)).
    pub min_distinct: f32,
    /// Tokens a stale back step removes (1..=window).
    pub backstep: usize,
    /// Extra tokens paid for (removed by back steps of every cause, fed hidden by
    /// resumed turns), as a share of the longest text so far, beyond which no stale back
    /// step or stale turn is taken (in (0, 1]).
    pub budget: f32,
    /// **Rewind**: how far back (tokens, `0` = off) a stale back step may reach, to land
    /// where the text was freshest: the end of the latest window, among those ending in
    /// the last `rewind` tokens, whose distinct ids are within `tolerance × window` of the
    /// best of them. The stale stretch then leaves the context as a whole — a window
    /// turns stale only after the text has been degrading for a while, and removing its
    /// last `backstep` tokens leaves the rest of the degraded stretch to pull the model
    /// back. Never less than `backstep`; `0..=4096`.
    #[serde(default)]
    pub rewind: usize,
    /// How close to the freshest window a rewind's landing must be, as a share of the
    /// window (in `[0, 1)`; used only when `rewind > 0`).
    #[serde(default = "default_tolerance")]
    pub tolerance: f32,
}

/// [`Staleness::tolerance`]'s default: 0.05 (3 of 64 distinct ids).
pub const DEFAULT_TOLERANCE: f32 = 0.05;

fn default_tolerance() -> f32 {
    DEFAULT_TOLERANCE
}

impl Default for Staleness {
    fn default() -> Self {
        Self {
            window: 64,
            min_distinct: 0.45,
            backstep: 32,
            budget: 0.12,
            rewind: 0,
            tolerance: DEFAULT_TOLERANCE,
        }
    }
}

impl Staleness {
    /// Check the fields (they are public). Errors name the field and the value.
    pub fn validate(&self) -> Result<()> {
        if !(8..=1024).contains(&self.window) {
            return Err(PerpetualError::invalid("stale_window", self.window, "must be in 8..=1024"));
        }
        if !(self.min_distinct.is_finite() && self.min_distinct > 0.0 && self.min_distinct < 1.0) {
            return Err(PerpetualError::invalid(
                "stale_min_distinct",
                self.min_distinct,
                "must be in (0, 1)",
            ));
        }
        if self.backstep == 0 || self.backstep > self.window {
            return Err(PerpetualError::invalid("stale_backstep", self.backstep, "must be in 1..=window"));
        }
        if !(self.budget.is_finite() && self.budget > 0.0 && self.budget <= 1.0) {
            return Err(PerpetualError::invalid("stale_budget", self.budget, "must be in (0, 1]"));
        }
        if self.rewind > MAX_REWIND {
            return Err(PerpetualError::invalid("stale_rewind", self.rewind, "must be in 0..=4096"));
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            return Err(PerpetualError::invalid("stale_tolerance", self.tolerance, "must be in [0, 1)"));
        }
        Ok(())
    }

    /// Distinct ids in `tail`. `scratch` is reused: no allocation once it has grown to
    /// the window. O(window log window).
    pub fn distinct(tail: &[u32], scratch: &mut Vec<u32>) -> usize {
        scratch.clear();
        scratch.extend_from_slice(tail);
        scratch.sort_unstable();
        let mut distinct = 0usize;
        let mut prev = None;
        for &t in scratch.iter() {
            if prev != Some(t) {
                distinct += 1;
                prev = Some(t);
            }
        }
        distinct
    }

    /// Whether `tail` (the last `window` tokens) is stale. `scratch` is reused: no
    /// allocation once it has grown to the window. O(window log window).
    ///
    /// ```
    /// use perpetua_perpetual::Staleness;
    /// let s = Staleness::default();
    /// let mut scratch = Vec::new();
    /// let fresh: Vec<u32> = (0..64).collect();
    /// assert!(!s.is_stale(&fresh, &mut scratch));
    /// let salad: Vec<u32> = (0..64).map(|i| [7, 8, 9][(i * i) % 3]).collect();
    /// assert!(s.is_stale(&salad, &mut scratch));
    /// ```
    pub fn is_stale(&self, tail: &[u32], scratch: &mut Vec<u32>) -> bool {
        (Self::distinct(tail, scratch) as f32) < self.min_distinct * tail.len() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut LoopDetector, ids: &[u32]) -> Option<(usize, Repeat)> {
        (1..=ids.len()).find_map(|n| d.observe(&ids[..n]).map(|r| (n, r)))
    }

    #[test]
    fn period_one_needs_thirteen_equal_tokens() {
        let mut d = LoopDetector::new(LoopDetection::default()).unwrap();
        let ids: Vec<u32> = [1, 2, 3].into_iter().chain(std::iter::repeat_n(9, 20)).collect();
        let (n, r) = feed(&mut d, &ids).unwrap();
        assert_eq!((n, r), (3 + 13, Repeat { distance: 1, len: 12, in_a_row: true }));
        assert_eq!(r.copies(), 13);
    }

    #[test]
    fn a_paragraph_written_again_at_a_distance() {
        let mut d = LoopDetector::new(LoopDetection::default()).unwrap();
        let para: Vec<u32> = (1000..1030).collect();
        let mut ids = para.clone();
        ids.extend(2000..2050); // other text in between
        ids.extend(&para);
        let (n, r) = feed(&mut d, &ids).unwrap();
        assert_eq!(n, 30 + 50 + 24);
        assert_eq!(r, Repeat { distance: 80, len: 24, in_a_row: false });
    }

    #[test]
    fn rebuild_after_a_rewrite_matches_incremental() {
        let mut a = LoopDetector::new(LoopDetection::default()).unwrap();
        let ids: Vec<u32> = (0..200).map(|i| (i * 7 % 13) as u32).collect();
        for n in 1..=ids.len() {
            a.observe(&ids[..n]);
        }
        let inc = a.matches.clone();
        a.invalidate();
        a.observe(&ids);
        assert_eq!(a.matches, inc);
    }

    #[test]
    fn invalid_thresholds_are_named() {
        let bad = |c: LoopDetection| LoopDetector::new(c).unwrap_err().to_string();
        assert!(bad(LoopDetection { window: 0, ..LoopDetection::new() }).contains("window"));
        assert!(bad(LoopDetection { max_period: 300, ..LoopDetection::new() }).contains("max_period"));
        assert!(bad(LoopDetection { min_repeats: 1, ..LoopDetection::new() }).contains("min_repeats"));
        assert!(
            bad(LoopDetection { min_repeated_tokens: 0, ..LoopDetection::new() }).contains("min_repeated")
        );
        assert!(bad(LoopDetection { window: 5000, ..LoopDetection::new() }).contains("4096"));
    }
}
