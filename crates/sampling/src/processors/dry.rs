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
    gate: Option<StalenessGate>,
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
    grams: Vec<u64>,
}

/// Token n-gram length of [`staleness`].
pub const STALENESS_GRAM: usize = 4;

/// Token-level rep-4 of `window`: the share of its 4-token grams that repeat an earlier
/// gram of the window (`1 − distinct / total`; 0 when it holds fewer than 5 tokens).
/// `scratch` is reused (no allocation once it has grown to the window).
///
/// ```
/// use perpetua_sampling::processors::staleness;
/// let mut scratch = Vec::new();
/// assert_eq!(staleness(&[1, 2, 3, 4, 5, 6, 7, 8], &mut scratch), 0.0);
/// let looped: Vec<u32> = [1, 2, 3].iter().cycle().take(30).copied().collect();
/// assert!(staleness(&looped, &mut scratch) > 0.85);
/// ```
pub fn staleness(window: &[u32], scratch: &mut Vec<u64>) -> f32 {
    if window.len() <= STALENESS_GRAM {
        return 0.0;
    }
    scratch.clear();
    scratch.extend(window.windows(STALENESS_GRAM).map(|g| {
        g.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &t| (h ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3))
    }));
    scratch.sort_unstable();
    let total = scratch.len();
    let mut distinct = 0;
    let mut prev = None;
    for &h in scratch.iter() {
        if prev != Some(h) {
            distinct += 1;
            prev = Some(h);
        }
    }
    1.0 - distinct as f32 / total as f32
}

/// A gate that lets DRY act only as much as the recent text is stale: with `s` the
/// [`staleness`] of the last `window` tokens, DRY's multiplier is scaled by
/// `clamp((s − low) / (high − low), 0, 1)` — off while the text repeats no more than
/// natural text does, full strength once it loops. Natural text keeps the model's own
/// distribution (and likelihood); degenerating text is pushed off its repeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StalenessGate {
    /// Tokens looked at (8..=4096).
    pub window: usize,
    /// Staleness at and below which DRY is off (in [0, 1)).
    pub low: f32,
    /// Staleness at and above which DRY has its full multiplier (in (low, 1]).
    pub high: f32,
}

impl StalenessGate {
    /// A gate; errors name the parameter and value.
    pub fn new(window: usize, low: f32, high: f32) -> Result<Self> {
        if !(8..=4096).contains(&window) {
            return Err(SamplingError::invalid("dry_gate_window", window, "must be in 8..=4096"));
        }
        if !(low.is_finite() && (0.0..1.0).contains(&low)) {
            return Err(SamplingError::invalid("dry_gate_low", low, "must be in [0, 1)"));
        }
        if !(high.is_finite() && high > low && high <= 1.0) {
            return Err(SamplingError::invalid("dry_gate_high", high, "must be in (low, 1]"));
        }
        Ok(Self { window, low, high })
    }

    /// The multiplier scale for a staleness `s`.
    pub fn scale(&self, s: f32) -> f32 {
        ((s - self.low) / (self.high - self.low)).clamp(0.0, 1.0)
    }
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
            gate: None,
            multiplier,
            base,
            allowed_length,
            penalty_last_n,
            breakers,
            scratch: DryScratch::default(),
        })
    }

    /// Scale the multiplier by how stale the recent text is ([`StalenessGate`]).
    pub fn with_gate(mut self, gate: StalenessGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The gate, if any.
    pub fn gate(&self) -> Option<&StalenessGate> {
        self.gate.as_ref()
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
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "dry"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::Dry)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        if self.multiplier == 0.0 {
            return Ok(());
        }
        let tokens = ctx.tokens;
        let mut multiplier = self.multiplier;
        if let Some(gate) = self.gate {
            let recent = &tokens[tokens.len().saturating_sub(gate.window)..];
            multiplier *= gate.scale(staleness(recent, &mut self.scratch.grams));
            if multiplier == 0.0 {
                return Ok(());
            }
        }
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
            s.penalties.push(multiplier * self.base.powi(exponent));
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
    fn gate_parameters_are_checked() {
        assert!(StalenessGate::new(4, 0.1, 0.2).is_err());
        assert!(StalenessGate::new(64, 0.3, 0.2).is_err());
        assert!(StalenessGate::new(64, f32::NAN, 0.2).is_err());
        let e = StalenessGate::new(64, 0.1, 1.5).unwrap_err();
        assert!(e.to_string().contains("dry_gate_high"), "{e}");
        let g = StalenessGate::new(64, 0.1, 0.3).unwrap();
        assert_eq!((g.scale(0.0), g.scale(0.9)), (0.0, 1.0));
        assert!((g.scale(0.2) - 0.5).abs() < 1e-6);
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

        /// The staleness gate only ever weakens DRY: a gated penalty is the ungated one
        /// times the gate's scale, zero while the recent text is no staler than `low`.
        #[test]
        fn the_gate_scales_the_penalty_down(w in prop::collection::vec(0_u32..5, 0..80), low in 0.0_f32..0.5, span in 0.05_f32..0.5) {
            let gate = StalenessGate::new(16, low, (low + span).min(1.0)).unwrap();
            let mut plain = Dry::new(0.8, 1.75, 2, 0, []).unwrap();
            let mut gated = Dry::new(0.8, 1.75, 2, 0, []).unwrap().with_gate(gate);
            let p = penalised(&mut plain, &w, 6);
            let g = penalised(&mut gated, &w, 6);
            let s = staleness(&w[w.len().saturating_sub(16)..], &mut Vec::new());
            let scale = gate.scale(s);
            if scale == 0.0 {
                prop_assert!(g.is_empty());
            } else {
                prop_assert_eq!(p.len(), g.len());
                for ((a, x), (b, y)) in p.iter().zip(&g) {
                    prop_assert_eq!(a, b);
                    prop_assert!((x * scale - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} * {scale} vs {y}");
                }
            }
        }

        /// Staleness is the token-level rep-4 of the window.
        #[test]
        fn staleness_is_rep4(w in prop::collection::vec(0_u32..4, 0..60)) {
            let s = staleness(&w, &mut Vec::new());
            if w.len() <= STALENESS_GRAM {
                prop_assert_eq!(s, 0.0);
            } else {
                let grams: Vec<&[u32]> = w.windows(4).collect();
                let distinct: std::collections::HashSet<&[u32]> = grams.iter().copied().collect();
                prop_assert!((s - (1.0 - distinct.len() as f32 / grams.len() as f32)).abs() < 1e-6);
            }
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
