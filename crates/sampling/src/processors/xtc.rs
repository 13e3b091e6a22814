use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// XTC, "exclude top choices" (llama.cpp `xtc`): with chance `probability` per step,
/// remove every candidate whose probability is at least `threshold` *except the least
/// probable of them*, steering away from the most predictable continuations while
/// keeping one good choice.
///
/// Per step: draw `u ~ U[0, 1)` from the stage's own RNG; if `u ≤ probability` and at
/// least two candidates have `p ≥ threshold`, drop all of those but the one with the
/// lowest probability (ties → the highest id, i.e. the last in the crate-wide order),
/// unless fewer than `min_keep` candidates would remain.
///
/// Randomness: [`LogitsProcessor`] gets no RNG, so XTC owns a `ChaCha8Rng` seeded in
/// the constructor; [`reset`](LogitsProcessor::reset) re-seeds it, so a reset chain
/// replays the same decisions. The draw happens only on steps where XTC can act
/// (`probability > 0`, `threshold ≤ 0.5`, at least 2 candidates), as in llama.cpp.
///
/// Edge cases:
/// - `probability = 0` or `threshold > 0.5` (at most one token can exceed it): never
///   acts, no work.
/// - A NaN or `+inf` logit is an error; an empty or all-masked set is
///   [`SamplingError::EmptyCandidates`].
///
/// Cost: a softmax and two passes. No sort.
#[derive(Debug, Clone)]
pub struct Xtc {
    probability: f32,
    threshold: f32,
    min_keep: usize,
    seed: u64,
    rng: ChaCha8Rng,
}

impl Xtc {
    /// An XTC stage keeping at least one candidate, its RNG seeded with `seed`.
    /// Errors unless `0 ≤ probability ≤ 1` and `0 < threshold ≤ 1`.
    pub fn new(probability: f32, threshold: f32, seed: u64) -> Result<Self> {
        Self::with_min_keep(probability, threshold, 1, seed)
    }

    /// As [`new`](Self::new), keeping at least `min_keep ≥ 1` candidates.
    pub fn with_min_keep(probability: f32, threshold: f32, min_keep: usize, seed: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(SamplingError::invalid("xtc_probability", probability, "must be in [0, 1]"));
        }
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(SamplingError::invalid("xtc_threshold", threshold, "must be in (0, 1]"));
        }
        if min_keep == 0 {
            return Err(SamplingError::invalid("min_keep", min_keep, "must be >= 1"));
        }
        Ok(Self { probability, threshold, min_keep, seed, rng: ChaCha8Rng::seed_from_u64(seed) })
    }

    /// The configured chance per step.
    pub fn probability(&self) -> f32 {
        self.probability
    }

    /// The configured probability threshold.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }
}

impl LogitsProcessor for Xtc {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "xtc"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::Xtc)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        if self.probability <= 0.0 || self.threshold > 0.5 || candidates.len() < 2 {
            return candidates.check_logits();
        }
        let chance: f32 = self.rng.random();
        if chance > self.probability {
            return candidates.check_logits();
        }
        candidates.softmax().map_err(|e| match e {
            SamplingError::EmptyCandidates { .. } => SamplingError::EmptyCandidates { stage: "xtc" },
            other => other,
        })?;
        let threshold = self.threshold;
        let mut above = 0_usize;
        let mut last: Option<(f32, u32)> = None;
        for c in candidates.as_slice().iter().filter(|c| c.prob >= threshold) {
            above += 1;
            // The least probable; among equals the highest id (last in sorted order).
            last = match last {
                Some((l, id)) if l < c.logit || (l == c.logit && id > c.id) => Some((l, id)),
                _ => Some((c.logit, c.id)),
            };
        }
        let Some((_, keep_id)) = last else { return Ok(()) };
        if above < 2 || candidates.len() - (above - 1) < self.min_keep {
            return Ok(());
        }
        candidates.retain(|c| c.prob < threshold || c.id == keep_id);
        Ok(())
    }

    fn reset(&mut self) {
        self.rng = ChaCha8Rng::seed_from_u64(self.seed);
    }
}
