//! Masks and biases: additive logit bias, banned tokens, banned token sequences, an
//! allow-list, EOS suppression and a minimum number of new tokens.
//!
//! A masked candidate gets the logit `-inf` (probability 0, never sampled); it stays
//! in the buffer, so later stages see the same ids. Every mask returns
//! [`SamplingError::EmptyCandidates`] when it would leave no candidate with a finite
//! logit, rather than handing the sampler an impossible distribution.

use crate::{Candidate, Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Locates candidates by id without allocating after warm-up.
///
/// Fast path: a buffer freshly filled from logits holds id `i` at index `i`, so
/// `slice[id].id == id` finds it in O(1). Ids not found that way (the buffer was
/// reordered or filtered, or the id is out of range) are resolved by one pass over the
/// candidates with a dense id → slot table kept here.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdLookup {
    /// `slot[id]` = index into the caller's id list, `u32::MAX` = not looked up.
    slot: Vec<u32>,
    /// Indices (into the caller's id list) that missed the fast path.
    misses: Vec<u32>,
}

impl IdLookup {
    /// Call `edit(j, candidate)` for every candidate whose id is `ids[j]`. Ids absent
    /// from the buffer are skipped. When an id appears twice in `ids`, only its last
    /// occurrence is edited on the slow path, both on the fast path: callers pass
    /// distinct ids (or idempotent edits).
    pub(crate) fn edit(
        &mut self,
        candidates: &mut Candidates,
        ids: &[u32],
        mut edit: impl FnMut(usize, &mut Candidate),
    ) {
        if ids.is_empty() {
            return;
        }
        let slice = candidates.as_mut_slice();
        self.misses.clear();
        for (j, &id) in ids.iter().enumerate() {
            match slice.get_mut(id as usize) {
                Some(c) if c.id == id => edit(j, c),
                _ => self.misses.push(j as u32),
            }
        }
        if self.misses.is_empty() {
            return;
        }
        // Only ids some candidate has can match: ids beyond the largest candidate id
        // (a caller's id outside the vocabulary) are dropped here, so the table is
        // sized by the candidates, never by an arbitrary caller id.
        let max_candidate = slice.iter().map(|c| c.id).max().unwrap_or(0);
        self.misses.retain(|&j| ids[j as usize] <= max_candidate);
        if self.misses.is_empty() {
            return;
        }
        let max_id = self.misses.iter().map(|&j| ids[j as usize]).max().unwrap_or(0) as usize;
        if self.slot.len() <= max_id {
            self.slot.resize(max_id + 1, u32::MAX);
        }
        for &j in &self.misses {
            self.slot[ids[j as usize] as usize] = j;
        }
        for c in slice.iter_mut() {
            if let Some(&j) = self.slot.get(c.id as usize)
                && j != u32::MAX
            {
                edit(j as usize, c);
            }
        }
        for &j in &self.misses {
            self.slot[ids[j as usize] as usize] = u32::MAX;
        }
    }
}

/// Set the logits of `ids` to `-inf`; error when no finite candidate is left.
pub(crate) fn mask_ids(
    lookup: &mut IdLookup,
    candidates: &mut Candidates,
    ids: &[u32],
    stage: &'static str,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    lookup.edit(candidates, ids, |_, c| c.logit = f32::NEG_INFINITY);
    ensure_finite_left(candidates, stage)
}

/// [`SamplingError::EmptyCandidates`] unless some candidate has a finite logit. Stops
/// at the first finite one, so it is O(1) in the usual case.
pub(crate) fn ensure_finite_left(candidates: &Candidates, stage: &'static str) -> Result<()> {
    if candidates.as_slice().iter().any(|c| c.logit > f32::NEG_INFINITY) {
        Ok(())
    } else {
        Err(SamplingError::EmptyCandidates { stage })
    }
}

/// Additive logit bias per token id (OpenAI `logit_bias`, HF `sequence_bias` for
/// one-token sequences): `logit'[id] = logit[id] + bias[id]`.
///
/// A bias of `-inf` bans the token. Ids absent from the candidates are ignored.
/// Errors at construction: a NaN or `+inf` bias, or the same id twice. Errors when
/// applied: every candidate ends at `-inf`.
#[derive(Debug, Clone, Default)]
pub struct LogitBias {
    ids: Vec<u32>,
    biases: Vec<f32>,
    lookup: IdLookup,
}

impl LogitBias {
    /// A bias stage from `(id, bias)` pairs.
    pub fn new(biases: impl IntoIterator<Item = (u32, f32)>) -> Result<Self> {
        let mut pairs: Vec<(u32, f32)> = biases.into_iter().collect();
        for &(id, b) in &pairs {
            if b.is_nan() || b == f32::INFINITY {
                return Err(SamplingError::invalid(
                    "logit_bias",
                    format!("{id}: {b}"),
                    "bias must be finite or -inf",
                ));
            }
        }
        pairs.sort_unstable_by_key(|&(id, _)| id);
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(SamplingError::invalid("logit_bias", w[0].0, "token id given twice"));
        }
        Ok(Self {
            ids: pairs.iter().map(|p| p.0).collect(),
            biases: pairs.iter().map(|p| p.1).collect(),
            lookup: IdLookup::default(),
        })
    }

    /// The `(id, bias)` pairs, by ascending id.
    pub fn biases(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.ids.iter().copied().zip(self.biases.iter().copied())
    }
}

impl LogitsProcessor for LogitBias {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "logit_bias"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::LogitBias)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let biases = &self.biases;
        self.lookup.edit(candidates, &self.ids, |j, c| c.logit += biases[j]);
        ensure_finite_left(candidates, "logit_bias")
    }
}

/// Bans tokens: `logit'[id] = -inf` for every listed id (HF `bad_words_ids` with
/// one-token entries). An empty list is a no-op. Errors when applied: every candidate
/// ends at `-inf`.
#[derive(Debug, Clone, Default)]
pub struct BannedTokens {
    ids: Vec<u32>,
    lookup: IdLookup,
}

impl BannedTokens {
    /// A ban on `ids` (duplicates are merged).
    pub fn new(ids: impl IntoIterator<Item = u32>) -> Self {
        let mut ids: Vec<u32> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        Self { ids, lookup: IdLookup::default() }
    }

    /// The banned ids, ascending.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

impl LogitsProcessor for BannedTokens {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "banned_tokens"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::BannedTokens)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        mask_ids(&mut self.lookup, candidates, &self.ids, "banned_tokens")
    }
}

/// Bans token sequences (HF `bad_words_ids`): for each banned sequence `s`, when the
/// context (prompt and generated tokens) ends with `s[..len-1]`, the last token
/// `s[len-1]` is masked, so the sequence can never be completed.
///
/// A one-token sequence is a plain ban (its prefix is empty, which every context ends
/// with). Errors at construction: an empty sequence. Errors when applied: every
/// candidate ends at `-inf`. Cost per step: O(Σ |s|).
#[derive(Debug, Clone, Default)]
pub struct BannedSequences {
    sequences: Vec<Vec<u32>>,
    banned_now: Vec<u32>,
    lookup: IdLookup,
}

impl BannedSequences {
    /// A ban on `sequences`. Errors when one of them is empty.
    pub fn new<S: Into<Vec<u32>>>(sequences: impl IntoIterator<Item = S>) -> Result<Self> {
        let sequences: Vec<Vec<u32>> = sequences.into_iter().map(Into::into).collect();
        if let Some(i) = sequences.iter().position(Vec::is_empty) {
            return Err(SamplingError::invalid(
                "banned_sequences",
                format!("[{i}] = []"),
                "a banned sequence must be non-empty",
            ));
        }
        let capacity = sequences.len();
        Ok(Self { sequences, banned_now: Vec::with_capacity(capacity), lookup: IdLookup::default() })
    }

    /// The banned sequences.
    pub fn sequences(&self) -> &[Vec<u32>] {
        &self.sequences
    }
}

impl LogitsProcessor for BannedSequences {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "banned_sequences"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::BannedSequences)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        self.banned_now.clear();
        for s in &self.sequences {
            // Non-empty by construction.
            let Some((&last, prefix)) = s.split_last() else { continue };
            if ctx.tokens.ends_with(prefix) {
                self.banned_now.push(last);
            }
        }
        self.banned_now.sort_unstable();
        self.banned_now.dedup();
        mask_ids(&mut self.lookup, candidates, &self.banned_now, "banned_sequences")
    }
}

/// Keeps only the listed tokens: every other candidate is removed (not just masked,
/// so later stages work on the small set). Order is preserved, so a sorted buffer
/// stays sorted.
///
/// Errors at construction: an empty list. Errors when applied: no listed token is
/// among the candidates, or all of them are at `-inf`.
#[derive(Debug, Clone)]
pub struct AllowList {
    /// `allowed[id]`, dense up to the largest allowed id below [`Self::DENSE_LIMIT`].
    allowed: Vec<bool>,
    /// Allowed ids at or above `DENSE_LIMIT`, sorted: a caller's huge id must not size
    /// an allocation.
    far: Vec<u32>,
}

impl AllowList {
    /// Ids below this live in a dense table (at most 1 MiB); larger ones (beyond every
    /// real vocabulary) in a sorted list.
    const DENSE_LIMIT: u32 = 1 << 20;

    /// An allow-list of `ids`. Errors when `ids` is empty.
    pub fn new(ids: impl IntoIterator<Item = u32>) -> Result<Self> {
        let mut allowed = Vec::new();
        let mut far = Vec::new();
        for id in ids {
            if id >= Self::DENSE_LIMIT {
                far.push(id);
                continue;
            }
            let i = id as usize;
            if allowed.len() <= i {
                allowed.resize(i + 1, false);
            }
            allowed[i] = true;
        }
        if allowed.is_empty() && far.is_empty() {
            return Err(SamplingError::invalid("allow_list", "[]", "must list at least one token id"));
        }
        far.sort_unstable();
        far.dedup();
        Ok(Self { allowed, far })
    }

    /// Whether `id` is allowed.
    pub fn allows(&self, id: u32) -> bool {
        match self.allowed.get(id as usize) {
            Some(&a) => a,
            None => id >= Self::DENSE_LIMIT && self.far.binary_search(&id).is_ok(),
        }
    }
}

impl LogitsProcessor for AllowList {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "allow_list"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::AllowList)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        candidates.retain(|c| self.allows(c.id));
        ensure_finite_left(candidates, "allow_list")
    }
}

/// Suppresses end-of-sequence: masks every id of [`SamplingContext::eos_ids`], so
/// generation can only stop by another criterion (max tokens, a stop string).
///
/// No EOS ids in the context: a no-op. Errors when applied: only EOS candidates had a
/// finite logit.
#[derive(Debug, Clone, Default)]
pub struct SuppressEos {
    lookup: IdLookup,
}

impl SuppressEos {
    /// An EOS-suppression stage.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LogitsProcessor for SuppressEos {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "suppress_eos"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::SuppressEos)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        mask_ids(&mut self.lookup, candidates, ctx.eos_ids, "suppress_eos")
    }
}

/// Minimum number of new tokens (HF `min_new_tokens`): masks every EOS id of the
/// context while `ctx.step() < min`, i.e. the first `min` generated tokens are never
/// EOS. `min = 0` never masks.
///
/// Errors when applied: only EOS candidates had a finite logit.
#[derive(Debug, Clone, Default)]
pub struct MinNewTokens {
    min: usize,
    lookup: IdLookup,
}

impl MinNewTokens {
    /// At least `min` generated tokens before any EOS.
    pub fn new(min: usize) -> Self {
        Self { min, lookup: IdLookup::default() }
    }

    /// The configured minimum.
    pub fn min(&self) -> usize {
        self.min
    }
}

impl LogitsProcessor for MinNewTokens {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "min_new_tokens"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::MinNewTokens)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        if ctx.step() >= self.min {
            return Ok(());
        }
        mask_ids(&mut self.lookup, candidates, ctx.eos_ids, "min_new_tokens")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(c: &Candidates) -> Vec<f32> {
        let mut v: Vec<(u32, f32)> = c.as_slice().iter().map(|c| (c.id, c.logit)).collect();
        v.sort_by_key(|p| p.0);
        v.into_iter().map(|p| p.1).collect()
    }

    #[test]
    fn id_lookup_finds_ids_in_filled_reordered_and_filtered_buffers() {
        let mut lookup = IdLookup::default();
        let mut c = Candidates::with_capacity(5);
        c.fill_from_logits(&[0.0, 1.0, 2.0, 3.0, 4.0]).unwrap();
        lookup.edit(&mut c, &[1, 3, 9], |_, c| c.logit = -1.0);
        assert_eq!(logits(&c), vec![0.0, -1.0, 2.0, -1.0, 4.0]);
        c.sort_by_logit(); // ids now 4, 2, 0, 1, 3
        lookup.edit(&mut c, &[4, 0], |j, c| c.logit = 10.0 + j as f32);
        assert_eq!(logits(&c), vec![11.0, -1.0, 2.0, -1.0, 10.0]);
        c.keep_top_k(2); // ids 4 (10) and 0 (11), sorted → 0, 4
        lookup.edit(&mut c, &[4, 1], |_, c| c.logit = 0.5);
        assert_eq!(
            c.as_slice().iter().map(|c| (c.id, c.logit)).collect::<Vec<_>>(),
            vec![(0, 11.0), (4, 0.5)]
        );
    }

    #[test]
    fn logit_bias_adds_and_rejects_bad_values() {
        let mut b = LogitBias::new([(0, 1.5), (2, f32::NEG_INFINITY)]).unwrap();
        let mut c = Candidates::from_pairs([(0, 1.0), (1, 2.0), (2, 3.0)]);
        b.process(&mut c, &SamplingContext::new(&[], 0)).unwrap();
        assert_eq!(logits(&c), vec![2.5, 2.0, f32::NEG_INFINITY]);
        assert!(matches!(
            LogitBias::new([(0, f32::NAN)]),
            Err(SamplingError::InvalidParameter { name: "logit_bias", .. })
        ));
        assert!(LogitBias::new([(0, f32::INFINITY)]).is_err());
        assert!(LogitBias::new([(3, 1.0), (3, 2.0)]).is_err());
    }

    #[test]
    fn banning_everything_is_an_error() {
        let mut b = BannedTokens::new([0, 1]);
        let mut c = Candidates::from_pairs([(0, 1.0), (1, 2.0)]);
        let err = b.process(&mut c, &SamplingContext::new(&[], 0)).unwrap_err();
        assert_eq!(err, SamplingError::EmptyCandidates { stage: "banned_tokens" });
    }

    #[test]
    fn banned_sequence_blocks_last_token_only_after_prefix() {
        let mut b = BannedSequences::new([vec![7, 8, 9], vec![4]]).unwrap();
        let ids: Vec<u32> = (0..10).collect();
        let mut c = Candidates::from_pairs(ids.iter().map(|&i| (i, 0.0)));
        b.process(&mut c, &SamplingContext::new(&[1, 7, 8], 1)).unwrap();
        let masked: Vec<u32> =
            c.as_slice().iter().filter(|c| c.logit == f32::NEG_INFINITY).map(|c| c.id).collect();
        assert_eq!(masked, vec![4, 9]);
        let mut c = Candidates::from_pairs(ids.iter().map(|&i| (i, 0.0)));
        b.process(&mut c, &SamplingContext::new(&[7, 8, 1], 1)).unwrap();
        let masked: Vec<u32> =
            c.as_slice().iter().filter(|c| c.logit == f32::NEG_INFINITY).map(|c| c.id).collect();
        assert_eq!(masked, vec![4]);
        assert!(BannedSequences::new([Vec::<u32>::new()]).is_err());
    }

    #[test]
    fn allow_list_keeps_only_listed_and_errors_when_none_left() {
        let mut a = AllowList::new([1, 3]).unwrap();
        let mut c = Candidates::from_pairs([(0, 1.0), (1, 2.0), (2, 3.0), (3, 0.0)]);
        a.process(&mut c, &SamplingContext::new(&[], 0)).unwrap();
        assert_eq!(c.ids().collect::<Vec<_>>(), vec![1, 3]);
        let mut c = Candidates::from_pairs([(0, 1.0)]);
        assert!(a.process(&mut c, &SamplingContext::new(&[], 0)).is_err());
        assert!(AllowList::new([]).is_err());
    }

    #[test]
    fn min_new_tokens_masks_eos_only_before_min() {
        let mut m = MinNewTokens::new(2);
        let eos = [2_u32];
        let tokens = [5_u32, 6, 7];
        for (generated, masked) in [(0, true), (1, true), (2, false)] {
            let mut c = Candidates::from_pairs([(0, 1.0), (1, 1.0), (2, 5.0)]);
            let ctx = SamplingContext::new(&tokens[..1 + generated], 1).with_eos_ids(&eos);
            m.process(&mut c, &ctx).unwrap();
            assert_eq!(c.as_slice()[2].logit == f32::NEG_INFINITY, masked, "step {generated}");
        }
    }
}
