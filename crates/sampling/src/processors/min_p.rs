use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Min-p: keep the candidates whose probability is at least `min_p` times the
/// probability of the most likely one.
///
/// `p_i ≥ min_p · p_max  ⇔  logit_i ≥ logit_max + ln(min_p)`, so no softmax and no
/// sort are needed: one pass for the maximum, one filtering pass (order preserved,
/// so a sorted set stays sorted).
///
/// Edge cases:
/// - `min_p = 0` keeps every candidate (no work); `min_p = 1` keeps the maximum and
///   its ties.
/// - When fewer than `min_keep` candidates pass, the `min_keep` best are kept instead
///   (ties → lower id), as llama.cpp's `min_keep`.
/// - Masked (`-inf`) candidates are always dropped when `min_p > 0`.
/// - A NaN or `+inf` logit is an error; an empty or all-masked set is
///   [`SamplingError::EmptyCandidates`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinP {
    min_p: f32,
    min_keep: usize,
}

impl MinP {
    /// A min-p stage keeping at least one candidate. Errors unless `0 ≤ min_p ≤ 1`.
    pub fn new(min_p: f32) -> Result<Self> {
        Self::with_min_keep(min_p, 1)
    }

    /// A min-p stage keeping at least `min_keep` candidates. Errors unless
    /// `0 ≤ min_p ≤ 1` and `min_keep ≥ 1`.
    pub fn with_min_keep(min_p: f32, min_keep: usize) -> Result<Self> {
        if !(0.0..=1.0).contains(&min_p) {
            return Err(SamplingError::invalid("min_p", min_p, "must be in [0, 1]"));
        }
        if min_keep == 0 {
            return Err(SamplingError::invalid("min_keep", min_keep, "must be >= 1"));
        }
        Ok(Self { min_p, min_keep })
    }

    /// The configured ratio.
    pub fn min_p(&self) -> f32 {
        self.min_p
    }
}

impl LogitsProcessor for MinP {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "min_p"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::MinP)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        if self.min_p == 0.0 {
            return Ok(());
        }
        candidates.check_logits()?;
        let max = match candidates.max_logit() {
            Some(m) if m > f32::NEG_INFINITY => m,
            _ => return Err(SamplingError::EmptyCandidates { stage: "min_p" }),
        };
        let threshold = max + self.min_p.ln();
        let passing = candidates.as_slice().iter().filter(|c| c.logit >= threshold).count();
        if passing >= self.min_keep {
            candidates.retain(|c| c.logit >= threshold);
        } else {
            candidates.keep_top_k(self.min_keep);
        }
        Ok(())
    }
}
