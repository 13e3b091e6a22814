use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Epsilon sampling (Hewitt et al. 2022), as HF `EpsilonLogitsWarper`: drop every
/// candidate whose probability is below `epsilon`, `keep p_i ≥ ε`.
///
/// Edge cases:
/// - When fewer than `min_keep` (default 1) candidates pass, the `min_keep` most
///   probable are kept (ties → lower id), so the set never empties.
/// - A NaN or `+inf` logit is an error; an empty or all-masked set is
///   [`SamplingError::EmptyCandidates`].
///
/// Cost: a softmax and a filtering pass (order preserved). No sort.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpsilonCutoff {
    epsilon: f32,
    min_keep: usize,
}

impl EpsilonCutoff {
    /// An epsilon stage keeping at least one candidate. Errors unless `0 < ε < 1`
    /// (HF's domain).
    pub fn new(epsilon: f32) -> Result<Self> {
        Self::with_min_keep(epsilon, 1)
    }

    /// An epsilon stage keeping at least `min_keep` candidates. Errors unless
    /// `0 < ε < 1` and `min_keep ≥ 1`.
    pub fn with_min_keep(epsilon: f32, min_keep: usize) -> Result<Self> {
        if !(epsilon > 0.0 && epsilon < 1.0) {
            return Err(SamplingError::invalid("epsilon_cutoff", epsilon, "must be in (0, 1)"));
        }
        if min_keep == 0 {
            return Err(SamplingError::invalid("min_keep", min_keep, "must be >= 1"));
        }
        Ok(Self { epsilon, min_keep })
    }

    /// The configured cutoff.
    pub fn epsilon(&self) -> f32 {
        self.epsilon
    }
}

impl LogitsProcessor for EpsilonCutoff {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "epsilon_cutoff"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::EpsilonCutoff)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        softmax(candidates, "epsilon_cutoff")?;
        cut_below(candidates, self.epsilon, self.min_keep);
        Ok(())
    }
}

/// Eta sampling (Hewitt et al. 2022), as HF `EtaLogitsWarper`: drop every candidate
/// whose probability is below an entropy-dependent cutoff
/// `η' = min(η, √η · e^(−H))`, with `H = −Σ p ln p` (nats) of the current candidates.
///
/// A flat distribution (high `H`) gets a lower cutoff than a peaked one, so fewer
/// plausible tokens are cut where the model is unsure.
///
/// Edge cases: as [`EpsilonCutoff`] (`min_keep`, default 1, survivors at least; NaN /
/// `+inf` logits and empty sets are errors).
///
/// Cost: a softmax, an entropy pass and a filtering pass. No sort.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtaCutoff {
    eta: f32,
    min_keep: usize,
}

impl EtaCutoff {
    /// An eta stage keeping at least one candidate. Errors unless `0 < η < 1`.
    pub fn new(eta: f32) -> Result<Self> {
        Self::with_min_keep(eta, 1)
    }

    /// An eta stage keeping at least `min_keep` candidates. Errors unless `0 < η < 1`
    /// and `min_keep ≥ 1`.
    pub fn with_min_keep(eta: f32, min_keep: usize) -> Result<Self> {
        if !(eta > 0.0 && eta < 1.0) {
            return Err(SamplingError::invalid("eta_cutoff", eta, "must be in (0, 1)"));
        }
        if min_keep == 0 {
            return Err(SamplingError::invalid("min_keep", min_keep, "must be >= 1"));
        }
        Ok(Self { eta, min_keep })
    }

    /// The configured η.
    pub fn eta(&self) -> f32 {
        self.eta
    }

    /// The cutoff `min(η, √η · e^(−H))` for entropy `h` in nats.
    pub fn cutoff(&self, h: f64) -> f64 {
        let eta = f64::from(self.eta);
        eta.min(eta.sqrt() * (-h).exp())
    }
}

impl LogitsProcessor for EtaCutoff {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "eta_cutoff"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::EtaCutoff)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        softmax(candidates, "eta_cutoff")?;
        let h: f64 = candidates
            .as_slice()
            .iter()
            .filter(|c| c.prob > 0.0)
            .map(|c| -f64::from(c.prob) * f64::from(c.prob).ln())
            .sum();
        cut_below(candidates, self.cutoff(h) as f32, self.min_keep);
        Ok(())
    }
}

/// Softmax with the stage's name in the empty-set error.
fn softmax(candidates: &mut Candidates, stage: &'static str) -> Result<()> {
    candidates.softmax().map_err(|e| match e {
        SamplingError::EmptyCandidates { .. } => SamplingError::EmptyCandidates { stage },
        other => other,
    })
}

/// Keep `prob ≥ cutoff`, or the `min_keep` best when fewer pass. Needs valid probs.
fn cut_below(candidates: &mut Candidates, cutoff: f32, min_keep: usize) {
    let passing = candidates.as_slice().iter().filter(|c| c.prob >= cutoff).count();
    if passing >= min_keep {
        candidates.retain(|c| c.prob >= cutoff);
    } else {
        candidates.keep_top_k(min_keep);
    }
}
