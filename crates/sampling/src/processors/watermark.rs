//! Green-list watermarking (Kirchenbauer et al., 2023, "A Watermark for Large Language
//! Models", soft watermark): a processor that favours a pseudo-random "green" part of
//! the vocabulary seeded by the previous token, and a detector that counts green tokens
//! and returns the z-score.

use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// splitmix64's finaliser: a cheap, well-mixed 64-bit hash step.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The green-list rule shared by [`Watermark`] and [`WatermarkDetector`]: token `t`
/// is green after token `prev` when `hash(hash(key, prev), t) / 2⁶⁴ < γ`.
///
/// Unlike the paper's `randperm` (exactly `γ|V|` green tokens per step), each token is
/// green independently with probability `γ` over the hash: the detector's null
/// hypothesis (text written without the key has each token green with probability
/// `γ`) holds exactly as in the paper, and no permutation of the vocabulary is built
/// per step (the processor costs one hash per candidate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreenList {
    key: u64,
    gamma: f64,
    /// `γ · 2⁶⁴`, saturated: a token is green when its hash is below it.
    threshold: u64,
}

impl GreenList {
    /// The green list of `key` with green fraction `gamma`.
    ///
    /// Errors: `gamma` outside the open interval `(0, 1)` (at 0 or 1 the z-score is
    /// undefined).
    pub fn new(key: u64, gamma: f32) -> Result<Self> {
        if !(gamma > 0.0 && gamma < 1.0) {
            return Err(SamplingError::invalid("gamma", gamma, "must be in (0, 1)"));
        }
        let gamma = f64::from(gamma);
        // gamma < 1, so the product is below 2^64 and the cast does not saturate.
        let threshold = (gamma * 18_446_744_073_709_551_616.0) as u64;
        Ok(Self { key, gamma, threshold })
    }

    /// The green fraction `γ`.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// The key.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The per-step seed after `prev` (the paper's `hash(s⁽ᵗ⁻¹⁾)` combined with the key).
    fn seed(&self, prev: u32) -> u64 {
        mix(mix(self.key) ^ u64::from(prev))
    }

    fn is_green_seeded(&self, seed: u64, token: u32) -> bool {
        mix(seed ^ u64::from(token).wrapping_mul(0xA24B_AED4_963E_E407)) < self.threshold
    }

    /// Whether `token` is green when it follows `prev`.
    pub fn is_green(&self, prev: u32, token: u32) -> bool {
        self.is_green_seeded(self.seed(prev), token)
    }
}

/// The soft watermark: adds `δ` to the logit of every green candidate (see
/// [`GreenList`]) given the previous token of the context.
///
/// Put it where the logits are still the model's (before temperature and truncation,
/// like any bias) so that sampling picks green tokens more often; the text stays
/// fluent where the model is confident (a low-entropy step is barely changed) and
/// carries the watermark where it is not.
///
/// Edge cases: with an empty context (no previous token) the stage does nothing;
/// `δ = 0` leaves every logit unchanged; masked (`-inf`) candidates stay masked.
///
/// ```
/// use perpetua_sampling::processors::{Watermark, WatermarkDetector};
/// use perpetua_sampling::{Chain, SamplingContext, samplers::Multinomial};
/// use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};
///
/// // A flat 1,000-token "model": every token equally likely before the watermark.
/// let logits = vec![0.0_f32; 1000];
/// let mut chain = Chain::new(Multinomial).with(Watermark::new(42, 0.25, 4.0)?);
/// let mut rng = ChaCha8Rng::seed_from_u64(0);
/// let mut tokens = vec![7_u32];
/// for _ in 0..100 {
///     let next = chain.sample(&logits, &SamplingContext::new(&tokens, 1), &mut rng)?;
///     tokens.push(next);
/// }
/// let score = WatermarkDetector::new(42, 0.25)?.score(&tokens);
/// assert_eq!(score.scored, 100);
/// assert!(score.z > 4.0, "z = {}", score.z);
/// // Another key sees no watermark.
/// assert!(WatermarkDetector::new(43, 0.25)?.score(&tokens).z < 4.0);
/// # Ok::<(), perpetua_sampling::SamplingError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watermark {
    list: GreenList,
    delta: f32,
}

impl Watermark {
    /// A watermark with key `key`, green fraction `gamma` and bias `delta` (the paper
    /// uses `γ = 0.25` or `0.5`, `δ = 2`).
    ///
    /// Errors: `gamma` outside `(0, 1)`, `delta` negative or not finite.
    pub fn new(key: u64, gamma: f32, delta: f32) -> Result<Self> {
        if !delta.is_finite() || delta < 0.0 {
            return Err(SamplingError::invalid("delta", delta, "must be finite and >= 0"));
        }
        Ok(Self { list: GreenList::new(key, gamma)?, delta })
    }

    /// The green list.
    pub fn green_list(&self) -> &GreenList {
        &self.list
    }

    /// The bias `δ` added to green logits.
    pub fn delta(&self) -> f32 {
        self.delta
    }

    /// The detector for this watermark (same key and `γ`).
    pub fn detector(&self) -> WatermarkDetector {
        WatermarkDetector { list: self.list }
    }
}

impl LogitsProcessor for Watermark {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "watermark"
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        let Some(&prev) = ctx.tokens.last() else {
            return Ok(());
        };
        if self.delta == 0.0 {
            return Ok(());
        }
        let seed = self.list.seed(prev);
        for c in candidates.as_mut_slice() {
            if self.list.is_green_seeded(seed, c.id) {
                // -inf + δ stays -inf: masked candidates stay masked.
                c.logit += self.delta;
            }
        }
        Ok(())
    }
}

/// The result of [`WatermarkDetector::score`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatermarkScore {
    /// Tokens scored (every token but the first, which only seeds the next one).
    pub scored: usize,
    /// Green tokens among them.
    pub green: usize,
    /// `z = (green − γT) / √(T γ (1 − γ))` with `T = scored`; 0 when `T = 0`. Text
    /// written without the key has `z` approximately standard normal; the paper flags
    /// `z > 4` as watermarked.
    pub z: f64,
}

/// Counts green tokens of a token sequence and returns the z-score (Kirchenbauer et
/// al., §2: one-proportion z-test against `γ`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatermarkDetector {
    list: GreenList,
}

impl WatermarkDetector {
    /// A detector for key `key` and green fraction `gamma`. Errors: `gamma` outside
    /// `(0, 1)`.
    pub fn new(key: u64, gamma: f32) -> Result<Self> {
        Ok(Self { list: GreenList::new(key, gamma)? })
    }

    /// Score `tokens`: token `i ≥ 1` is green when it is in the green list of token
    /// `i − 1`. Pass the last prompt token first so every generated token is scored.
    pub fn score(&self, tokens: &[u32]) -> WatermarkScore {
        let scored = tokens.len().saturating_sub(1);
        let green = tokens.windows(2).filter(|w| self.list.is_green(w[0], w[1])).count();
        let z = if scored == 0 {
            0.0
        } else {
            let t = scored as f64;
            let g = self.list.gamma();
            (green as f64 - g * t) / (t * g * (1.0 - g)).sqrt()
        };
        WatermarkScore { scored, green, z }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn invalid_parameters_are_errors() {
        assert!(Watermark::new(0, 0.0, 2.0).is_err());
        assert!(Watermark::new(0, 1.0, 2.0).is_err());
        assert!(Watermark::new(0, f32::NAN, 2.0).is_err());
        assert!(Watermark::new(0, 0.5, -1.0).is_err());
        assert!(Watermark::new(0, 0.5, f32::INFINITY).is_err());
        let err = WatermarkDetector::new(0, 1.5).unwrap_err();
        assert!(err.to_string().contains("gamma"), "{err}");
    }

    #[test]
    fn passes_processor_checks() {
        crate::testing::check_processor(|| Watermark::new(11, 0.5, 2.0).unwrap());
    }

    #[test]
    fn green_fraction_is_gamma() {
        let list = GreenList::new(9, 0.25).unwrap();
        let n = 200_000u32;
        let green = (0..n).filter(|&t| list.is_green(t % 97, t)).count();
        let frac = green as f64 / f64::from(n);
        assert!((frac - 0.25).abs() < 0.005, "green fraction {frac}");
    }

    #[test]
    fn empty_and_short_sequences_score_zero() {
        let d = WatermarkDetector::new(1, 0.5).unwrap();
        assert_eq!(d.score(&[]), WatermarkScore { scored: 0, green: 0, z: 0.0 });
        assert_eq!(d.score(&[5]).scored, 0);
        assert_eq!(d.score(&[5, 6]).scored, 1);
    }

    #[test]
    fn unwatermarked_random_text_has_small_z() {
        // Tokens independent of the key: z ~ N(0, 1). Fixed pseudo-random tokens.
        let tokens: Vec<u32> = (0..5000u64).map(|i| (mix(i ^ 0xDEAD) % 50_000) as u32).collect();
        let z = WatermarkDetector::new(77, 0.25).unwrap().score(&tokens).z;
        assert!(z.abs() < 4.0, "z = {z}");
    }

    proptest! {
        /// Green candidates gain exactly δ, the others are untouched, masked stay masked.
        #[test]
        fn adds_delta_to_green_only(
            logits in proptest::collection::vec(prop_oneof![-10.0f32..10.0, Just(f32::NEG_INFINITY)], 1..200),
            prev in 0u32..1000,
            key in any::<u64>(),
            gamma in 0.05f32..0.95,
            delta in 0.0f32..8.0,
        ) {
            let mut wm = Watermark::new(key, gamma, delta).unwrap();
            let mut c = Candidates::default();
            c.fill_from_logits(&logits).unwrap();
            let tokens = [prev];
            wm.process(&mut c, &SamplingContext::new(&tokens, 1)).unwrap();
            for cand in c.as_slice() {
                let before = logits[cand.id as usize];
                let expected = if wm.green_list().is_green(prev, cand.id) { before + delta } else { before };
                prop_assert_eq!(cand.logit.to_bits(), expected.to_bits());
            }
        }

        /// No previous token: the stage is the identity.
        #[test]
        fn empty_context_is_identity(logits in proptest::collection::vec(-10.0f32..10.0, 1..100)) {
            let mut wm = Watermark::new(3, 0.5, 2.0).unwrap();
            let mut c = Candidates::default();
            c.fill_from_logits(&logits).unwrap();
            wm.process(&mut c, &SamplingContext::new(&[], 0)).unwrap();
            let got: Vec<f32> = c.as_slice().iter().map(|c| c.logit).collect();
            prop_assert_eq!(got, logits);
        }

    }
}
