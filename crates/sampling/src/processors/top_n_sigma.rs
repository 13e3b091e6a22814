use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Top-nσ (Tang et al. 2024, "Top-nσ: Not All Logits Are You Need"): keep the
/// candidates whose logit is within `n` standard deviations of the maximum,
/// `logit ≥ max − n·σ`, where `σ` is the population standard deviation of the finite
/// logits (`-inf` entries are excluded from the mean and σ, and always dropped).
///
/// The rule is temperature invariant in the kept *set* (scaling logits by 1/T scales
/// `max`, `σ` and the gap alike), which is why it is usually placed before the
/// temperature stage.
///
/// Edge cases:
/// - `n = 0` keeps the maximum and its ties; larger `n` keeps more.
/// - All finite logits equal (σ = 0): all of them are kept.
/// - A NaN or `+inf` logit is an error; an empty or all-masked set is
///   [`SamplingError::EmptyCandidates`].
///
/// Cost: two passes (max, mean and σ in `f64`; then filtering, order preserved). No
/// sort.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopNSigma {
    n: f32,
}

impl TopNSigma {
    /// A top-nσ stage. Errors unless `n` is finite and `≥ 0`.
    pub fn new(n: f32) -> Result<Self> {
        if !(n.is_finite() && n >= 0.0) {
            return Err(SamplingError::invalid("top_n_sigma", n, "must be finite and >= 0"));
        }
        Ok(Self { n })
    }

    /// The configured number of standard deviations.
    pub fn n(&self) -> f32 {
        self.n
    }
}

impl LogitsProcessor for TopNSigma {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "top_n_sigma"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::TopNSigma)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        candidates.check_logits()?;
        let (mut count, mut sum, mut max) = (0_usize, 0.0_f64, f32::NEG_INFINITY);
        for c in candidates.as_slice() {
            if c.logit > f32::NEG_INFINITY {
                count += 1;
                sum += f64::from(c.logit);
                max = max.max(c.logit);
            }
        }
        if count == 0 {
            return Err(SamplingError::EmptyCandidates { stage: "top_n_sigma" });
        }
        let mean = sum / count as f64;
        let var = candidates
            .as_slice()
            .iter()
            .filter(|c| c.logit > f32::NEG_INFINITY)
            .map(|c| (f64::from(c.logit) - mean).powi(2))
            .sum::<f64>()
            / count as f64;
        let threshold = (f64::from(max) - f64::from(self.n) * var.sqrt()) as f32;
        // The maximum always passes (threshold ≤ max), so the set never empties.
        let threshold = threshold.min(max);
        candidates.retain(|c| c.logit >= threshold && c.logit > f32::NEG_INFINITY);
        Ok(())
    }
}
