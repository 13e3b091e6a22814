use super::masks::{IdLookup, mask_ids};
use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// No-repeat n-gram blocking (HF `NoRepeatNGramLogitsProcessor`, `no_repeat_ngram_size`):
/// masks every token that would complete an `n`-gram already present in the sequence.
///
/// With `t` the context tokens (prompt and generated, as HF's `input_ids`) and
/// `L = t.len()`: for every `i` with `t[i..i+n-1] == t[L-n+1..L]`, the token `t[i+n-1]`
/// gets logit `-inf`.
///
/// Edge cases: `n = 1` bans every token already in the sequence; fewer than `n` tokens
/// bans nothing; `n = 0` is rejected. Errors when applied: every candidate ends at
/// `-inf`. Cost per step: O(L · n), no allocation after warm-up.
#[derive(Debug, Clone)]
pub struct NoRepeatNGram {
    n: usize,
    banned_now: Vec<u32>,
    lookup: IdLookup,
}

impl NoRepeatNGram {
    /// Block repeated `n`-grams. Errors when `n == 0`.
    pub fn new(n: usize) -> Result<Self> {
        if n == 0 {
            return Err(SamplingError::invalid("no_repeat_ngram_size", n, "must be >= 1"));
        }
        Ok(Self { n, banned_now: Vec::new(), lookup: IdLookup::default() })
    }

    /// The n-gram size.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The ids this stage bans after `tokens` (into `out`, cleared first; ascending,
    /// distinct).
    pub fn banned_after(&self, tokens: &[u32], out: &mut Vec<u32>) {
        out.clear();
        let n = self.n;
        let len = tokens.len();
        if len < n {
            return;
        }
        let prefix = &tokens[len + 1 - n..];
        for i in 0..=len - n {
            if &tokens[i..i + n - 1] == prefix {
                out.push(tokens[i + n - 1]);
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

impl LogitsProcessor for NoRepeatNGram {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "no_repeat_ngram"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::NoRepeatNGram)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        let mut banned = std::mem::take(&mut self.banned_now);
        self.banned_after(ctx.tokens, &mut banned);
        let result = mask_ids(&mut self.lookup, candidates, &banned, "no_repeat_ngram");
        self.banned_now = banned;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banned(n: usize, tokens: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        NoRepeatNGram::new(n).unwrap().banned_after(tokens, &mut out);
        out
    }

    #[test]
    fn hand_checked_bans() {
        // trigram (1, 2, 3) exists; the context ends with (1, 2) → 3 is banned.
        assert_eq!(banned(3, &[1, 2, 3, 1, 2]), vec![3]);
        // (1, 2) is followed by 3 and by 4 earlier.
        assert_eq!(banned(3, &[1, 2, 3, 1, 2, 4, 1, 2]), vec![3, 4]);
        // bigram: the context ends with 2; 2 was followed by 3.
        assert_eq!(banned(2, &[1, 2, 3, 1, 2]), vec![3]);
        // unigram: everything seen.
        assert_eq!(banned(1, &[5, 1, 5]), vec![1, 5]);
        // too short.
        assert_eq!(banned(3, &[1, 2]), Vec::<u32>::new());
        assert!(NoRepeatNGram::new(0).is_err());
    }
}
