use super::masks::IdLookup;
use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// `ln(f32::MAX)`: llama.cpp clamps the exponent so `base^exp` cannot overflow.
const FLOAT_MAX_LOG: f32 = 88.722_84;

/// DRY, "Don't Repeat Yourself" (p-e-w, 2024; llama.cpp `llama_sampler_dry`): penalises
/// the tokens that would *extend* a repetition of a sequence already in the context,
/// growing exponentially with the repeated length.
///
/// Over the window `w` (the last `penalty_last_n` context tokens, prompt included; `0`
/// = all): for each earlier position `j` whose suffix `w[..=j]` matches the end of `w`
/// for `len(j)` tokens (`len(j) ≥ allowed_length`), the token `w[j+1]` that followed it
/// would continue the repeat. With `m(id)` the largest such `len` for that token,
///
/// `logit'[id] = logit[id] − multiplier · base^(m(id) − allowed_length)`.
///
/// Sequence breakers (llama.cpp's defaults are `"\n"`, `":"`, `"\""`, `"*"`) stop
/// matching: repeats are only counted after the last breaker in the window, and a
/// token that is itself a one-token breaker is never penalised. This crate has no
/// tokenizer, so breakers are given as token-id sequences (encode each breaker string
/// with your tokenizer, without special tokens); a multi-token breaker matches when
/// all its tokens occur in order.
///
/// Differences from llama.cpp, on purpose: `penalty_last_n = 0` means the whole context
/// (llama.cpp: 0 disables, −1 = context; here disable with `multiplier = 0` or leave
/// the stage out); parameters out of domain are errors rather than silently disabling.
///
/// Edge cases: `multiplier = 0` is a no-op; a window of at most `allowed_length`
/// tokens penalises nothing; the exponent is clamped to `ln(f32::MAX) / ln(base)`.
/// Errors at construction: `multiplier` negative or not finite, `base` below 1 or not
/// finite, an empty breaker. Repeat lengths are found in O(window) with the
/// Z-algorithm, as llama.cpp does.
#[derive(Debug, Clone)]
pub struct Dry {
    multiplier: f32,
    base: f32,
    allowed_length: usize,
    penalty_last_n: usize,
    /// `(head, tail)` of every breaker, sorted by head.
    breakers: Vec<(u32, Vec<u32>)>,
    scratch: DryScratch,
}

#[derive(Debug, Clone, Default)]
struct DryScratch {
    /// `repeat[last - k]` = repeat length ending `k` tokens before the end.
    repeat: Vec<u32>,
    /// `dense[id]` = 1 + longest repeat that `id` would extend; 0 = none.
    dense: Vec<u32>,
    ids: Vec<u32>,
    penalties: Vec<f32>,
    lookup: IdLookup,
}

impl Dry {
    /// A DRY stage. llama.cpp's recommended values: `multiplier 0.8`, `base 1.75`,
    /// `allowed_length 2`.
    pub fn new(
        multiplier: f32,
        base: f32,
        allowed_length: usize,
        penalty_last_n: usize,
        sequence_breakers: impl IntoIterator<Item = Vec<u32>>,
    ) -> Result<Self> {
        if !multiplier.is_finite() || multiplier < 0.0 {
            return Err(SamplingError::invalid("dry_multiplier", multiplier, "must be finite and >= 0"));
        }
        if !base.is_finite() || base < 1.0 {
            return Err(SamplingError::invalid("dry_base", base, "must be finite and >= 1"));
        }
        let mut breakers = Vec::new();
        for (i, b) in sequence_breakers.into_iter().enumerate() {
            let Some((&head, tail)) = b.split_first() else {
                return Err(SamplingError::invalid(
                    "dry_sequence_breakers",
                    format!("[{i}] = []"),
                    "a sequence breaker must be non-empty",
                ));
            };
            breakers.push((head, tail.to_vec()));
        }
        breakers.sort();
        breakers.dedup();
        Ok(Self {
            multiplier,
            base,
            allowed_length,
            penalty_last_n,
            breakers,
            scratch: DryScratch::default(),
        })
    }

    /// The multiplier.
    pub fn multiplier(&self) -> f32 {
        self.multiplier
    }

    /// The exponential base.
    pub fn base(&self) -> f32 {
        self.base
    }

    /// Repeats up to this length are free.
    pub fn allowed_length(&self) -> usize {
        self.allowed_length
    }

    /// The window length (`0` = whole context).
    pub fn penalty_last_n(&self) -> usize {
        self.penalty_last_n
    }

    fn breakers_with_head(&self, head: u32) -> &[(u32, Vec<u32>)] {
        let lo = self.breakers.partition_point(|b| b.0 < head);
        let hi = self.breakers.partition_point(|b| b.0 <= head);
        &self.breakers[lo..hi]
    }

    /// Repeat lengths capped by breakers: `repeat[last - k]` for `k in 1..n`, the
    /// number of tokens before position `n-1-k` that equal the tokens before the end,
    /// `rat(j) == rat(j + k)`, capped at `rep_limit`. Z-algorithm over the reversed
    /// window (llama.cpp's formulation).
    fn repeat_lengths(w: &[u32], rep_limit: usize, repeat: &mut Vec<u32>) {
        let n = w.len();
        let rat = |i: usize| w[n - 1 - i];
        repeat.clear();
        repeat.resize(n, 0);
        if n == 0 {
            return;
        }
        let last = n - 1;
        let (mut lt, mut rt) = (0_usize, 0_usize);
        for k in 1..n {
            if k > rt {
                let mut m = 0;
                while m + k < n && rat(m) == rat(m + k) {
                    m += 1;
                }
                repeat[last - k] = m.min(rep_limit) as u32;
                if m > 0 {
                    lt = k;
                    rt = k + m - 1;
                }
            } else {
                let p = k - lt;
                let right_part_len = rt - k + 1;
                let zp = repeat[last - p] as usize;
                if zp < right_part_len {
                    repeat[last - k] = zp.min(rep_limit) as u32;
                } else {
                    let mut i = rt + 1;
                    while i < n && rat(i) == rat(i - k) {
                        i += 1;
                    }
                    repeat[last - k] = (i - k).min(rep_limit) as u32;
                    lt = k;
                    rt = i - 1;
                }
            }
        }
    }

    /// How many trailing tokens of `w` may take part in a repeat: the tokens after the
    /// last complete sequence breaker (the longest breaker wins at one position).
    fn repeat_limit(&self, w: &[u32]) -> usize {
        let n = w.len();
        let rat = |i: usize| w[n - 1 - i];
        for i in 0..n {
            let mut longest: Option<usize> = None;
            for (_, tail) in self.breakers_with_head(rat(i)) {
                let len = tail.len();
                if longest.is_none_or(|l| len > l)
                    && len <= i
                    && tail.iter().enumerate().all(|(o, &t)| t == rat(i - o - 1))
                {
                    longest = Some(len);
                }
            }
            if let Some(len) = longest {
                return i - len;
            }
        }
        n
    }
}

impl LogitsProcessor for Dry {
    fn name(&self) -> &'static str {
        "dry"
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        if self.multiplier == 0.0 {
            return Ok(());
        }
        let tokens = ctx.tokens;
        let n = if self.penalty_last_n == 0 { tokens.len() } else { self.penalty_last_n.min(tokens.len()) };
        if n <= self.allowed_length {
            return Ok(());
        }
        let w = &tokens[tokens.len() - n..];
        let rep_limit = self.repeat_limit(w);
        if rep_limit < self.allowed_length {
            return Ok(());
        }
        let mut s = std::mem::take(&mut self.scratch);
        Self::repeat_lengths(w, rep_limit, &mut s.repeat);

        // The token following each long-enough repeat would extend it.
        s.ids.clear();
        if s.dense.len() < candidates.len() {
            s.dense.resize(candidates.len(), 0);
        }
        let mut max_candidate: Option<u32> = None;
        for i in 0..n - 1 {
            let len = s.repeat[i];
            if len as usize >= self.allowed_length {
                let token = w[i + 1];
                let t = token as usize;
                if t >= s.dense.len() {
                    // Beyond the vocabulary-sized table: only grow for an id some
                    // candidate has (a history id outside the vocabulary cannot be
                    // penalised, and must not size an allocation).
                    let max_candidate = *max_candidate
                        .get_or_insert_with(|| candidates.as_slice().iter().map(|c| c.id).max().unwrap_or(0));
                    if token > max_candidate {
                        continue;
                    }
                    s.dense.resize(t + 1, 0);
                }
                if s.dense[t] == 0 {
                    s.ids.push(token);
                }
                s.dense[t] = s.dense[t].max(len + 1);
            }
        }
        let max_exponent = if self.base > 1.000_001 { (FLOAT_MAX_LOG / self.base.ln()) as i32 } else { 0 };
        s.penalties.clear();
        let mut kept = 0;
        for j in 0..s.ids.len() {
            let id = s.ids[j];
            let len = s.dense[id as usize] - 1;
            s.dense[id as usize] = 0;
            if self.breakers_with_head(id).iter().any(|(_, tail)| tail.is_empty()) {
                continue;
            }
            let mut exponent = (len as usize - self.allowed_length) as i32;
            if max_exponent > 0 {
                exponent = exponent.min(max_exponent);
            }
            s.ids[kept] = id;
            kept += 1;
            s.penalties.push(self.multiplier * self.base.powi(exponent));
        }
        s.ids.truncate(kept);
        let penalties = &s.penalties;
        s.lookup.edit(candidates, &s.ids, |j, c| c.logit -= penalties[j]);
        self.scratch = s;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn penalised(dry: &mut Dry, tokens: &[u32], vocab: u32) -> Vec<(u32, f32)> {
        let mut c = Candidates::from_pairs((0..vocab).map(|i| (i, 0.0)));
        dry.process(&mut c, &SamplingContext::new(tokens, 0)).unwrap();
        c.as_slice().iter().filter(|c| c.logit != 0.0).map(|c| (c.id, c.logit)).collect()
    }

    #[test]
    fn hand_checked_repeat_of_three() {
        // [1 2 3] 4 [1 2 3]: the tail (1, 2, 3) repeats the start, which was followed by
        // 4; repeat length 3, allowed 2 → penalty 1 · 2^(3−2) = 2 on token 4 only.
        let mut dry = Dry::new(1.0, 2.0, 2, 0, []).unwrap();
        assert_eq!(penalised(&mut dry, &[1, 2, 3, 4, 1, 2, 3], 6), vec![(4, -2.0)]);
        // A window of 4 sees only 4 1 2 3: no repeat.
        let mut dry = Dry::new(1.0, 2.0, 2, 4, []).unwrap();
        assert_eq!(penalised(&mut dry, &[1, 2, 3, 4, 1, 2, 3], 6), vec![]);
    }

    #[test]
    fn breakers_cut_repeats_and_are_never_penalised() {
        // Breaker 2 sits one token before the end: only 1 token may repeat < allowed 2.
        let mut dry = Dry::new(1.0, 2.0, 2, 0, [vec![2]]).unwrap();
        assert_eq!(penalised(&mut dry, &[1, 2, 3, 4, 1, 2, 3], 6), vec![]);
        // (1 9 8 2 3) repeats, then 4 followed it: length 5 → 2^(5−2) = 8. The breaker
        // [9, 8] matches in order and caps the repeat at the 2 tokens after it → 2^0.
        let w = [1, 9, 8, 2, 3, 4, 1, 9, 8, 2, 3];
        let mut dry = Dry::new(1.0, 2.0, 2, 0, [vec![9, 8]]).unwrap();
        assert_eq!(penalised(&mut dry, &w, 10), vec![(4, -1.0)]);
        // [8, 9] never occurs in that order: no cut.
        let mut dry = Dry::new(1.0, 2.0, 2, 0, [vec![8, 9]]).unwrap();
        assert_eq!(penalised(&mut dry, &w, 10), vec![(4, -8.0)]);
        let mut dry = Dry::new(1.0, 2.0, 1, 0, [vec![4]]).unwrap();
        // 1 2 → next 4 has repeat 2 but 4 is a one-token breaker: not penalised.
        assert_eq!(penalised(&mut dry, &[5, 1, 2, 4, 1, 2], 6), vec![]);
    }

    #[test]
    fn constructor_rejects_out_of_domain() {
        assert!(matches!(
            Dry::new(-1.0, 2.0, 2, 0, []),
            Err(SamplingError::InvalidParameter { name: "dry_multiplier", .. })
        ));
        assert!(matches!(
            Dry::new(1.0, 0.5, 2, 0, []),
            Err(SamplingError::InvalidParameter { name: "dry_base", .. })
        ));
        assert!(Dry::new(1.0, f32::NAN, 2, 0, []).is_err());
        assert!(Dry::new(1.0, 2.0, 2, 0, [vec![]]).is_err());
    }

    fn naive_repeat_lengths(w: &[u32], rep_limit: usize) -> Vec<u32> {
        let n = w.len();
        let rat = |i: usize| w[n - 1 - i];
        let mut out = vec![0; n];
        for k in 1..n {
            let mut m = 0;
            while m + k < n && rat(m) == rat(m + k) {
                m += 1;
            }
            out[n - 1 - k] = m.min(rep_limit) as u32;
        }
        out
    }

    proptest! {
        /// The Z-algorithm gives the same capped repeat lengths as the definition.
        #[test]
        fn z_algorithm_matches_naive(w in prop::collection::vec(0_u32..3, 0..60), cap in 0_usize..70) {
            let mut fast = Vec::new();
            Dry::repeat_lengths(&w, cap, &mut fast);
            prop_assert_eq!(fast, naive_repeat_lengths(&w, cap));
        }

        /// DRY only ever lowers logits, and only of tokens in the window.
        #[test]
        fn only_lowers_tokens_of_the_window(w in prop::collection::vec(0_u32..6, 0..40)) {
            let mut dry = Dry::new(0.8, 1.75, 2, 0, [vec![5]]).unwrap();
            for (id, l) in penalised(&mut dry, &w, 8) {
                prop_assert!(l < 0.0);
                prop_assert!(w.contains(&id));
                prop_assert_ne!(id, 5);
            }
        }
    }
}
