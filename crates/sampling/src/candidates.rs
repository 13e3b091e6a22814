use crate::{Result, SamplingError};

/// One candidate token: its id, logit, and (when [`Candidates::has_probs`]) its
/// probability under the softmax of the current candidate set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Token id.
    pub id: u32,
    /// Logit (unnormalised log-probability). `-inf` means masked.
    pub logit: f32,
    /// Probability; meaningful only while [`Candidates::has_probs`] is true.
    pub prob: f32,
}

/// A reusable buffer of candidate tokens, refilled from the model's logits each step.
///
/// Invariants the methods maintain:
/// - `is_sorted()` ⇒ candidates are in descending logit order (ties by ascending id).
/// - `has_probs()` ⇒ `prob` of every candidate is the softmax of the current logits
///   over the current set (sums to 1 within float error).
///
/// Any mutable access through [`as_mut_slice`](Self::as_mut_slice) clears both flags,
/// so stale flags can never be observed.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    data: Vec<Candidate>,
    sorted: bool,
    has_probs: bool,
}

impl Candidates {
    /// An empty buffer with room for `capacity` candidates (use the vocabulary size to
    /// never allocate afterwards).
    pub fn with_capacity(capacity: usize) -> Self {
        Self { data: Vec::with_capacity(capacity), sorted: false, has_probs: false }
    }

    /// Refill from a full logit vector, id = index. Does not allocate once the buffer
    /// has grown to `logits.len()`.
    ///
    /// Errors: a NaN logit is [`SamplingError::NanLogit`], `+inf` is
    /// [`SamplingError::InfiniteLogit`] (`-inf` is allowed: it means masked).
    pub fn fill_from_logits(&mut self, logits: &[f32]) -> Result<()> {
        self.data.clear();
        self.sorted = false;
        self.has_probs = false;
        self.data.extend(logits.iter().enumerate().map(|(i, &logit)| Candidate {
            id: i as u32,
            logit,
            prob: 0.0,
        }));
        // Validate in a second pass so the fill loop stays branch-free and vectorisable;
        // the check runs over the contiguous input with no early exit (so it
        // vectorises too), and only a failure pays for locating the culprit.
        let mut bad = false;
        for &l in logits {
            bad |= l.is_nan() | (l == f32::INFINITY);
        }
        if !bad {
            return Ok(());
        }
        if let Some(c) = self.data.iter().find(|c| c.logit.is_nan() || c.logit == f32::INFINITY) {
            return Err(if c.logit.is_nan() {
                SamplingError::NanLogit { id: c.id }
            } else {
                SamplingError::InfiniteLogit { id: c.id }
            });
        }
        Ok(())
    }

    /// Refill like [`fill_from_logits`](Self::fill_from_logits), but repair non-finite
    /// logits instead of failing (the [`NonFinitePolicy::Sanitize`](crate::NonFinitePolicy)
    /// policy, cf. HF's `InfNanRemoveLogitsProcessor`), as [`sanitize_logits`] does.
    /// Returns how many NaN / `+inf` logits there were.
    ///
    /// ```
    /// use perpetua_sampling::Candidates;
    /// let mut c = Candidates::default();
    /// assert_eq!(c.fill_from_logits_sanitized(&[0.5, f32::NAN, 2.0]), 1);
    /// assert_eq!(c.as_slice()[1].logit, f32::NEG_INFINITY); // NaN: masked
    /// assert_eq!(c.fill_from_logits_sanitized(&[0.5, f32::INFINITY, 2.0]), 1);
    /// let logits: Vec<f32> = c.as_slice().iter().map(|c| c.logit).collect();
    /// assert_eq!(logits, [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]); // +inf takes all the mass
    /// ```
    pub fn fill_from_logits_sanitized(&mut self, logits: &[f32]) -> usize {
        self.data.clear();
        self.sorted = false;
        self.has_probs = false;
        let any_pos_inf = logits.contains(&f32::INFINITY);
        let mut replaced = 0;
        self.data.extend(logits.iter().enumerate().map(|(i, &logit)| {
            replaced += usize::from(logit.is_nan() || logit == f32::INFINITY);
            Candidate { id: i as u32, logit: sanitize_logit(logit, any_pos_inf), prob: 0.0 }
        }));
        replaced
    }

    /// Build from (id, logit) pairs (tests, small vocabularies).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, f32)>) -> Self {
        let data = pairs.into_iter().map(|(id, logit)| Candidate { id, logit, prob: 0.0 }).collect();
        Self { data, sorted: false, has_probs: false }
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether no candidate is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Whether the candidates are in descending logit order.
    pub fn is_sorted(&self) -> bool {
        self.sorted
    }

    /// Whether `prob` fields hold the softmax of the current set.
    pub fn has_probs(&self) -> bool {
        self.has_probs
    }

    /// The candidates.
    pub fn as_slice(&self) -> &[Candidate] {
        &self.data
    }

    /// Mutable access; clears the `sorted` and `has_probs` flags (the caller may change
    /// logits or order). Use [`set_flags_unchecked`](Self::set_flags_unchecked) to restore
    /// them when the edit provably preserved them.
    pub fn as_mut_slice(&mut self) -> &mut [Candidate] {
        self.sorted = false;
        self.has_probs = false;
        &mut self.data
    }

    /// Restore flags after an edit through [`as_mut_slice`](Self::as_mut_slice) that
    /// preserved them (e.g. a monotone rescale of logits keeps the order).
    pub fn set_flags_unchecked(&mut self, sorted: bool, has_probs: bool) {
        self.sorted = sorted;
        self.has_probs = has_probs;
    }

    /// Iterate over ids.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.data.iter().map(|c| c.id)
    }

    /// Sort by descending logit, ties by ascending id (the documented tie policy of
    /// every processor that ranks). No-op when already sorted.
    pub fn sort_by_logit(&mut self) {
        if !self.sorted {
            self.data.sort_unstable_by(cmp_desc);
            self.sorted = true;
        }
    }

    /// Move the `k` best candidates (by the same order as
    /// [`sort_by_logit`](Self::sort_by_logit)) to the front and sort just them, in
    /// O(n + k log k); then drop the rest. The result is sorted.
    pub fn keep_top_k(&mut self, k: usize) {
        if k < self.data.len() {
            if !self.sorted {
                if k > 0 {
                    self.data.select_nth_unstable_by(k - 1, cmp_desc);
                }
                self.data.truncate(k);
                self.data.sort_unstable_by(cmp_desc);
            } else {
                self.data.truncate(k);
            }
            self.has_probs = false;
        } else {
            self.sort_by_logit();
        }
        self.sorted = true;
    }

    /// Keep the first `len` candidates (meaningful when sorted); probabilities become
    /// stale and are cleared.
    pub fn truncate(&mut self, len: usize) {
        if len < self.data.len() {
            self.data.truncate(len);
            self.has_probs = false;
        }
    }

    /// Keep the candidates for which `keep` is true, preserving order (so `sorted`
    /// survives); probabilities become stale when anything is removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&Candidate) -> bool) {
        let before = self.data.len();
        self.data.retain(|c| keep(c));
        if self.data.len() != before {
            self.has_probs = false;
        }
    }

    /// Set a candidate's logit to `-inf` (masked) by id, if present. O(n).
    pub fn mask(&mut self, id: u32) {
        if let Some(c) = self.data.iter_mut().find(|c| c.id == id) {
            c.logit = f32::NEG_INFINITY;
            // Masking moves the candidate to the end in sorted order: keep the flag
            // honest by clearing it unless it was already last.
            self.sorted = false;
            self.has_probs = false;
        }
    }

    /// Drop candidates whose logit is `-inf`. Order preserved.
    pub fn remove_masked(&mut self) {
        self.retain(|c| c.logit > f32::NEG_INFINITY);
    }

    /// The highest logit, or `None` if empty.
    pub fn max_logit(&self) -> Option<f32> {
        if self.sorted {
            return self.data.first().map(|c| c.logit);
        }
        self.data.iter().map(|c| c.logit).reduce(f32::max)
    }

    /// Compute `prob` = softmax(logit) over the current set (max-subtracted, f32
    /// accumulation in f64 for the normaliser). `-inf` logits get probability 0.
    ///
    /// Errors: [`SamplingError::EmptyCandidates`] when the set is empty or every logit
    /// is `-inf`.
    pub fn softmax(&mut self) -> Result<()> {
        if self.has_probs {
            return Ok(());
        }
        let max = match self.max_logit() {
            Some(m) if m.is_nan() || m == f32::INFINITY => return Err(self.invalid_logit_error()),
            Some(m) if m > f32::NEG_INFINITY => m,
            // No finite maximum: a NaN the maximum skipped over ([NaN, -inf]) is
            // reported as the NaN it is, not as an empty candidate set.
            _ => {
                self.check_logits()?;
                return Err(SamplingError::EmptyCandidates { stage: "softmax" });
            }
        };
        let mut sum = 0.0_f64;
        for c in &mut self.data {
            c.prob = (c.logit - max).exp();
            sum += f64::from(c.prob);
        }
        // A NaN or +inf logit (possible only through `from_pairs` or a custom
        // processor) poisons the sum: report it instead of returning NaN probabilities.
        if !sum.is_finite() {
            return Err(self.invalid_logit_error());
        }
        let inv = (1.0 / sum) as f32;
        for c in &mut self.data {
            c.prob *= inv;
        }
        self.has_probs = true;
        Ok(())
    }
}

impl Candidates {
    /// The first NaN or `+inf` logit as its typed error ([`SamplingError::NanLogit`] /
    /// [`SamplingError::InfiniteLogit`]); `Ok` when every logit is finite or `-inf`.
    /// One O(n) pass; processors that cannot detect bad logits as a by-product of their
    /// own pass call this.
    pub fn check_logits(&self) -> Result<()> {
        if self.data.iter().any(|c| c.logit.is_nan() || c.logit == f32::INFINITY) {
            return Err(self.invalid_logit_error());
        }
        Ok(())
    }

    /// The error for the first NaN / `+inf` logit (called once one is known to exist;
    /// falls back to `EmptyCandidates` if none is found, which cannot happen then).
    fn invalid_logit_error(&self) -> SamplingError {
        match self.data.iter().find(|c| c.logit.is_nan() || c.logit == f32::INFINITY) {
            Some(c) if c.logit.is_nan() => SamplingError::NanLogit { id: c.id },
            Some(c) => SamplingError::InfiniteLogit { id: c.id },
            None => SamplingError::EmptyCandidates { stage: "softmax" },
        }
    }

    /// Number of candidates whose logit is not `-inf` (the support of the softmax).
    pub fn finite_len(&self) -> usize {
        self.data.iter().filter(|c| c.logit > f32::NEG_INFINITY).count()
    }

    /// Move the `min(k, n)` best candidates (descending logit, ties by ascending id) to
    /// the front, in that order, leaving the others after them in unspecified order.
    /// Nothing is removed, so probabilities stay valid (`has_probs` is kept);
    /// `is_sorted()` becomes true only when `k >= n - 1`. O(n + k log k).
    pub fn partial_sort(&mut self, k: usize) {
        if self.sorted || k == 0 {
            return;
        }
        let n = self.data.len();
        if k + 1 >= n {
            self.data.sort_unstable_by(cmp_desc);
            self.sorted = true;
            return;
        }
        self.data.select_nth_unstable_by(k - 1, cmp_desc);
        self.data[..k].sort_unstable_by(cmp_desc);
    }

    /// Crate-internal mutable access that keeps the flags: for processors that
    /// reorder or filter while maintaining the invariants themselves.
    pub(crate) fn raw_mut(&mut self) -> &mut Vec<Candidate> {
        &mut self.data
    }
}

/// Descending logit, ties by ascending id. `total_cmp` makes this a total order even
/// if a NaN slipped in (fill rejects NaN; custom processors might not).
#[inline]
pub(crate) fn cmp_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// One logit under [`sanitize_logits`]; `any_pos_inf`: whether the vector has a `+inf`.
#[inline]
fn sanitize_logit(logit: f32, any_pos_inf: bool) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else if any_pos_inf {
        if logit == f32::INFINITY { 0.0 } else { f32::NEG_INFINITY }
    } else {
        logit
    }
}

/// The [`NonFinitePolicy::Sanitize`](crate::NonFinitePolicy) repair, in place: a NaN
/// becomes `-inf` (masked: a NaN token is never chosen); if any logit is `+inf`, the
/// softmax limit is taken exactly: the `+inf` tokens become `0.0` and every other token
/// `-inf`, so they share all the mass equally whatever temperature follows (a finite
/// stand-in such as `f32::MAX` would overflow back to `+inf` under a temperature
/// below 1). Returns how many logits were NaN or `+inf`.
///
/// For callers that need finite statistics (entropy, log-sum-exp) over raw logits
/// before any chain runs, as the generator does under `Sanitize`.
pub fn sanitize_logits(logits: &mut [f32]) -> usize {
    let any_pos_inf = logits.contains(&f32::INFINITY);
    let mut replaced = 0;
    for l in logits {
        replaced += usize::from(l.is_nan() || *l == f32::INFINITY);
        *l = sanitize_logit(*l, any_pos_inf);
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_rejects_nan_and_pos_inf_but_allows_neg_inf() {
        let mut c = Candidates::with_capacity(4);
        assert_eq!(c.fill_from_logits(&[0.0, f32::NAN]), Err(SamplingError::NanLogit { id: 1 }));
        assert_eq!(c.fill_from_logits(&[f32::INFINITY]), Err(SamplingError::InfiniteLogit { id: 0 }));
        assert!(c.fill_from_logits(&[0.0, f32::NEG_INFINITY]).is_ok());
    }

    #[test]
    fn keep_top_k_is_sorted_with_id_tiebreak() {
        let mut c = Candidates::from_pairs([(0, 1.0), (1, 3.0), (2, 3.0), (3, 2.0)]);
        c.keep_top_k(3);
        let ids: Vec<u32> = c.ids().collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(c.is_sorted());
    }

    #[test]
    fn softmax_sums_to_one_and_masks_get_zero() {
        let mut c = Candidates::from_pairs([(0, 1.0), (1, f32::NEG_INFINITY), (2, -2.0)]);
        c.softmax().unwrap();
        let s: f32 = c.as_slice().iter().map(|c| c.prob).sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert_eq!(c.as_slice()[1].prob, 0.0);
    }

    #[test]
    fn softmax_of_all_masked_is_an_error() {
        let mut c = Candidates::from_pairs([(0, f32::NEG_INFINITY)]);
        assert!(matches!(c.softmax(), Err(SamplingError::EmptyCandidates { .. })));
    }
}
