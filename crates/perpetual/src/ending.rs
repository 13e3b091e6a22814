//! Ending phrases: the endings a model writes when it may not emit EOS.

use perpetua_sampling::{Candidates, LogitsProcessor, SamplingContext, SamplingError};

use crate::{PerpetualError, Result};

/// Texts the paper (and experience) sees a model write when EOS is suppressed.
/// Tokenize each — usually both with and without a leading space, since BPE
/// vocabularies spell `" The end"` and `"The end"` differently — and pass the ids to
/// [`EndingPhrases`].
pub const COMMON_ENDING_PHRASES: &[&str] = &[
    "The end",
    "THE END",
    "In conclusion",
    "To conclude",
    "In summary",
    "The End",
    "And they lived happily ever after",
];

/// How [`EndingPhrases`] treats a phrase about to be completed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EndingMode {
    /// Mask the completing token (`-inf`): the phrase can never be written.
    Ban,
    /// Subtract this value from the completing token's logit (finite, >= 0).
    Penalty(f32),
}

/// A [`LogitsProcessor`] that bans or penalises ending phrases given as token-id
/// sequences (this crate has no tokenizer: encode the phrases with the model's).
///
/// For every phrase `[t₁ … t_L]`, when the generated tokens end with `[t₁ … t_{L−1}]`
/// (always, for `L = 1`), the completing token `t_L` is masked ([`EndingMode::Ban`]) or
/// its logit lowered by the penalty ([`EndingMode::Penalty`]) — the same matching as
/// banned sequences. Only generated tokens are matched: a prefix inside the prompt does
/// not count. A phrase's first tokens remain writable ("The" is fine; "The end" is not).
///
/// Errors at run time: [`SamplingError::EmptyCandidates`] when banning leaves no
/// candidate with a finite logit. Add it to the chain *before* truncating stages
/// (top-k/top-p) so the runner-up is still a candidate.
///
/// ```
/// use perpetua_perpetual::EndingPhrases;
/// use perpetua_sampling::{Candidates, LogitsProcessor, SamplingContext};
///
/// // "The end" = [10, 11] in some vocabulary.
/// let mut ban = EndingPhrases::ban([vec![10, 11]])?;
/// let tokens = [1, 2, 10]; // prompt [1, 2], generated [10]
/// let ctx = SamplingContext::new(&tokens, 2);
/// let mut c = Candidates::from_pairs([(11, 5.0), (12, 1.0)]);
/// ban.process(&mut c, &ctx)?;
/// assert_eq!(c.as_slice()[0].logit, f32::NEG_INFINITY);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EndingPhrases {
    phrases: Vec<Vec<u32>>,
    mode: EndingMode,
}

impl EndingPhrases {
    /// Ban these phrases. Errors when a phrase is empty.
    pub fn ban(phrases: impl IntoIterator<Item = Vec<u32>>) -> Result<Self> {
        Self::new(phrases, EndingMode::Ban)
    }

    /// Penalise these phrases by `penalty` (logit units). Errors when a phrase is empty
    /// or the penalty is not finite and >= 0.
    pub fn penalize(phrases: impl IntoIterator<Item = Vec<u32>>, penalty: f32) -> Result<Self> {
        Self::new(phrases, EndingMode::Penalty(penalty))
    }

    /// Phrases with an explicit mode. Errors as [`ban`](Self::ban) and
    /// [`penalize`](Self::penalize).
    pub fn new(phrases: impl IntoIterator<Item = Vec<u32>>, mode: EndingMode) -> Result<Self> {
        if let EndingMode::Penalty(p) = mode
            && !(p.is_finite() && p >= 0.0)
        {
            return Err(PerpetualError::invalid("penalty", p, "must be finite and >= 0"));
        }
        let phrases: Vec<Vec<u32>> = phrases.into_iter().collect();
        if let Some(i) = phrases.iter().position(Vec::is_empty) {
            return Err(PerpetualError::invalid(
                "phrases",
                format!("phrase #{i} = []"),
                "phrases must not be empty",
            ));
        }
        Ok(Self { phrases, mode })
    }

    /// The phrases.
    pub fn phrases(&self) -> &[Vec<u32>] {
        &self.phrases
    }

    /// The mode.
    pub fn mode(&self) -> EndingMode {
        self.mode
    }

    /// The tokens that would complete a phrase after `generated`.
    pub fn completing_tokens<'a>(&'a self, generated: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
        self.phrases.iter().filter_map(move |p| {
            // Invariant: phrases are non-empty (checked by the constructor).
            let (&last, prefix) = p.split_last()?;
            generated.ends_with(prefix).then_some(last)
        })
    }
}

impl LogitsProcessor for EndingPhrases {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "ending_phrases"
    }

    fn process(
        &mut self,
        candidates: &mut Candidates,
        ctx: &SamplingContext<'_>,
    ) -> perpetua_sampling::Result<()> {
        let generated = ctx.generated();
        let mut touched = false;
        for id in self.completing_tokens(generated) {
            match self.mode {
                EndingMode::Ban => candidates.mask(id),
                EndingMode::Penalty(p) => {
                    let sorted = candidates.is_sorted();
                    let slice = candidates.as_mut_slice();
                    if let Some(c) = slice.iter_mut().find(|c| c.id == id) {
                        c.logit -= p;
                    }
                    // A penalty may reorder: only an unsorted buffer keeps its flag.
                    candidates.set_flags_unchecked(sorted && p == 0.0, false);
                }
            }
            touched = true;
        }
        if touched && candidates.as_slice().iter().all(|c| c.logit == f32::NEG_INFINITY) {
            return Err(SamplingError::EmptyCandidates { stage: "ending_phrases" });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn penalty_subtracts_only_on_prefix_match() {
        let mut p = EndingPhrases::penalize([vec![10, 11], vec![12]], 3.0).unwrap();
        let tokens = [10, 10];
        let ctx = SamplingContext::new(&tokens, 1); // generated = [10]
        let mut c = Candidates::from_pairs([(11, 5.0), (12, 1.0), (13, 0.0)]);
        p.process(&mut c, &ctx).unwrap();
        let logits: Vec<f32> = c.as_slice().iter().map(|c| c.logit).collect();
        assert_eq!(logits, vec![2.0, -2.0, 0.0]);
        // The prefix inside the prompt does not count.
        let ctx = SamplingContext::new(&tokens, 2);
        let mut c = Candidates::from_pairs([(11, 5.0)]);
        p.process(&mut c, &ctx).unwrap();
        assert_eq!(c.as_slice()[0].logit, 5.0);
    }

    #[test]
    fn banning_everything_is_an_error_and_bad_config_is_named() {
        let mut p = EndingPhrases::ban([vec![1]]).unwrap();
        let ctx = SamplingContext::new(&[], 0);
        let mut c = Candidates::from_pairs([(1, 5.0)]);
        assert!(matches!(
            p.process(&mut c, &ctx),
            Err(SamplingError::EmptyCandidates { stage: "ending_phrases" })
        ));
        let e = EndingPhrases::ban([vec![1], vec![]]).unwrap_err();
        assert!(e.to_string().contains("phrase #1"), "{e}");
        assert!(EndingPhrases::penalize([vec![1]], f32::NAN).is_err());
    }

    proptest! {
        /// A banned phrase is never completed: whatever the history, the completing
        /// token is masked exactly when the prefix is the tail.
        #[test]
        fn ban_masks_exactly_the_completing_tokens(
            phrases in proptest::collection::vec(proptest::collection::vec(0u32..6, 1..4), 1..4),
            generated in proptest::collection::vec(0u32..6, 0..12),
        ) {
            let mut p = EndingPhrases::ban(phrases.clone()).unwrap();
            let ctx = SamplingContext::new(&generated, 0);
            let mut c = Candidates::from_pairs((0..8).map(|id| (id, 1.0)));
            let result = p.process(&mut c, &ctx);
            prop_assert!(result.is_ok()); // ids 6 and 7 are never in a phrase
            for cand in c.as_slice() {
                let completes = phrases.iter().any(|ph| ph.last() == Some(&cand.id) && generated.ends_with(&ph[..ph.len() - 1]));
                prop_assert_eq!(cand.logit == f32::NEG_INFINITY, completes);
            }
        }
    }
}
