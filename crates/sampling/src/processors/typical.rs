use crate::{Candidate, Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Locally typical sampling (Meister et al. 2022), as HF `TypicalLogitsWarper`.
///
/// With `H = −Σ p ln p` the entropy of the candidates, rank them by how far their
/// information content is from it, `|−ln p_i − H|` ascending, and keep the shortest
/// prefix of that ranking whose mass reaches `p` (the crossing token kept), plus every
/// candidate tied with the last kept one on that distance, plus at least the first
/// `min_keep` of the ranking.
///
/// Edge cases:
/// - `p = 1.0` keeps every candidate (no work).
/// - Masked (`-inf`) candidates are infinitely far from typical and never kept unless
///   `min_keep` exceeds the number of finite candidates.
/// - A NaN or `+inf` logit is an error; an empty or all-masked set is
///   [`SamplingError::EmptyCandidates`].
///
/// Cost: a softmax, an entropy pass, and ranking by selection in growing chunks
/// (64, 256, 1,024, … candidates: `select_nth_unstable` on the rest, then a sort of the
/// chunk) until the mass is reached — no sort of the whole vocabulary. The distance
/// is computed from the logit as `|centre − logit|` with `centre = lse − H`, so no
/// logarithm per candidate. The survivors are left unsorted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Typical {
    p: f32,
    min_keep: usize,
}

impl Typical {
    /// A typical stage keeping at least one candidate. Errors unless `0 < p ≤ 1`.
    pub fn new(p: f32) -> Result<Self> {
        Self::with_min_keep(p, 1)
    }

    /// A typical stage keeping at least `min_keep` candidates. Errors unless
    /// `0 < p ≤ 1` and `min_keep ≥ 1`.
    pub fn with_min_keep(p: f32, min_keep: usize) -> Result<Self> {
        if !(p > 0.0 && p <= 1.0) {
            return Err(SamplingError::invalid("typical_p", p, "must be in (0, 1]"));
        }
        if min_keep == 0 {
            return Err(SamplingError::invalid("min_keep", min_keep, "must be >= 1"));
        }
        Ok(Self { p, min_keep })
    }

    /// The configured mass.
    pub fn p(&self) -> f32 {
        self.p
    }
}

impl LogitsProcessor for Typical {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "typical"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::Typical)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        if self.p >= 1.0 {
            return Ok(());
        }
        candidates.softmax().map_err(|e| match e {
            SamplingError::EmptyCandidates { .. } => SamplingError::EmptyCandidates { stage: "typical" },
            other => other,
        })?;
        let (mut h, mut p_max, mut l_max) = (0.0_f64, 0.0_f32, f32::NEG_INFINITY);
        for c in candidates.as_slice() {
            if c.prob > 0.0 {
                h -= f64::from(c.prob) * f64::from(c.prob).ln();
            }
            if c.prob > p_max {
                (p_max, l_max) = (c.prob, c.logit);
            }
        }
        // −ln p_i − H = (lse − logit_i) − H with lse = logit_max − ln p_max, so the
        // distance is |centre − logit_i|: the typical set is an interval of logits
        // around `centre`, and ranking needs no logarithm per candidate.
        let centre = (f64::from(l_max) - f64::from(p_max).ln() - h) as f32;
        let key = |c: &Candidate| {
            if c.logit == f32::NEG_INFINITY { f32::INFINITY } else { (c.logit - centre).abs() }
        };
        let cmp = |a: &Candidate, b: &Candidate| key(a).total_cmp(&key(b)).then(a.id.cmp(&b.id));
        let target = f64::from(self.p);
        // Rank by selection in growing chunks (64, 256, 1024, …): O(n) per chunk plus
        // a sort of the chunk, instead of a sort of the whole vocabulary.
        let data = candidates.raw_mut();
        let n = data.len();
        let (mut ranked, mut chunk, mut cum, mut last) = (0, 64, 0.0_f64, None);
        while ranked < n && last.is_none() {
            let end = (ranked + chunk).min(n);
            if end < n {
                data[ranked..].select_nth_unstable_by(end - ranked - 1, cmp);
            }
            data[ranked..end].sort_unstable_by(cmp);
            for (i, c) in data[ranked..end].iter().enumerate() {
                cum += f64::from(c.prob);
                if cum >= target {
                    last = Some(ranked + i);
                    break;
                }
            }
            ranked = end;
            chunk *= 4;
        }
        let last = last.unwrap_or(n - 1);
        // Tie rule (HF keeps every candidate whose distance equals the boundary's).
        let boundary = key(&data[last]);
        let mut keep = last + 1;
        while keep < ranked && key(&data[keep]) <= boundary {
            keep += 1;
        }
        if keep == ranked {
            for i in ranked..n {
                if key(&data[i]) <= boundary {
                    data.swap(keep, i);
                    keep += 1;
                }
            }
        }
        if keep < self.min_keep && keep < n {
            let want = self.min_keep.min(n);
            data[keep..].select_nth_unstable_by(want - keep - 1, cmp);
            keep = want;
        }
        data.truncate(keep);
        candidates.set_flags_unchecked(false, false);
        Ok(())
    }
}
