use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Top-k: keep the `k` highest-logit candidates.
///
/// Tie policy: exactly `k` survive; among equal logits at the boundary the lower ids
/// are kept (the crate-wide order: descending logit, then ascending id). Runs in
/// O(n + k log k) by selection, and leaves the survivors sorted. `k ≥ n` keeps all.
/// `k = 0` is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK {
    k: usize,
}

impl TopK {
    /// A top-k stage. Errors when `k == 0`.
    pub fn new(k: usize) -> Result<Self> {
        if k == 0 {
            return Err(SamplingError::invalid("top_k", k, "must be >= 1"));
        }
        Ok(Self { k })
    }

    /// The configured k.
    pub fn k(&self) -> usize {
        self.k
    }
}

impl LogitsProcessor for TopK {
    fn name(&self) -> &'static str {
        "top_k"
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        candidates.keep_top_k(self.k);
        Ok(())
    }
}
