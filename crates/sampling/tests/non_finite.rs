//! The non-finite logit policy: `Error` by default, opt-in `Sanitize`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_sampling::processors::{MinP, Temperature, TopK, TopP};
use perpetua_sampling::samplers::{Greedy, Multinomial};
use perpetua_sampling::{
    Chain, NonFinitePolicy, SamplingConfig, SamplingContext, SamplingError, sanitize_logits,
};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

/// A logit: mostly finite, sometimes NaN, ±inf.
fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -30.0f32..30.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
    ]
}

fn chain(policy: NonFinitePolicy) -> Chain {
    Chain::new(Multinomial)
        .with(Temperature::new(0.9).unwrap())
        .with(TopK::new(8).unwrap())
        .with(TopP::new(0.95).unwrap())
        .with(MinP::new(0.01).unwrap())
        .with_non_finite_policy(policy)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The default policy fails on the first NaN / +inf (by id), and never samples.
    #[test]
    fn error_policy_names_the_first_bad_logit(logits in prop::collection::vec(logit(), 1..64), seed: u64) {
        let ctx = SamplingContext::new(&[], 0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let first_bad = logits.iter().position(|l| l.is_nan() || *l == f32::INFINITY);
        let result = chain(NonFinitePolicy::Error).sample(&logits, &ctx, &mut rng);
        match first_bad {
            Some(i) if logits[i].is_nan() => prop_assert_eq!(result, Err(SamplingError::NanLogit { id: i as u32 })),
            Some(i) => prop_assert_eq!(result, Err(SamplingError::InfiniteLogit { id: i as u32 })),
            None => {
                if logits.iter().all(|&l| l == f32::NEG_INFINITY) {
                    prop_assert!(result.is_err());
                } else {
                    let id = result.unwrap() as usize;
                    prop_assert!(logits[id].is_finite());
                }
            }
        }
    }

    /// Sanitize never picks a NaN token, picks a +inf token whenever there is one, and
    /// reports exactly how many logits it repaired; with nothing finite it errors.
    #[test]
    fn sanitize_policy_never_picks_nan_and_counts(logits in prop::collection::vec(logit(), 1..64), seed: u64) {
        let ctx = SamplingContext::new(&[], 0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut c = chain(NonFinitePolicy::Sanitize);
        let result = c.sample(&logits, &ctx, &mut rng);
        let expected_repairs = logits.iter().filter(|l| l.is_nan() || **l == f32::INFINITY).count();
        let usable = logits.iter().any(|l| !l.is_nan() && *l != f32::NEG_INFINITY);
        if !usable {
            prop_assert!(result.is_err(), "nothing usable must be an error, got {result:?}");
        } else {
            let id = result.unwrap() as usize;
            prop_assert!(!logits[id].is_nan(), "picked NaN token {id}");
            prop_assert!(logits[id] != f32::NEG_INFINITY);
            if logits.contains(&f32::INFINITY) {
                prop_assert_eq!(logits[id], f32::INFINITY);
            }
            prop_assert_eq!(c.last_sanitized(), expected_repairs);
        }
        let mut copy = logits.clone();
        prop_assert_eq!(sanitize_logits(&mut copy), expected_repairs);
        prop_assert!(copy.iter().all(|l| !l.is_nan() && *l != f32::INFINITY));
    }

    /// On finite logits the two policies are the same chain: same draws, same RNG use.
    #[test]
    fn policies_agree_on_finite_logits(logits in prop::collection::vec(-30.0f32..30.0, 1..64), seed: u64) {
        let ctx = SamplingContext::new(&[], 0);
        let (mut a, mut b) = (chain(NonFinitePolicy::Error), chain(NonFinitePolicy::Sanitize));
        let (mut ra, mut rb) = (ChaCha8Rng::seed_from_u64(seed), ChaCha8Rng::seed_from_u64(seed));
        for _ in 0..4 {
            prop_assert_eq!(a.sample(&logits, &ctx, &mut ra), b.sample(&logits, &ctx, &mut rb));
        }
        prop_assert_eq!(b.last_sanitized(), 0);
    }
}

#[test]
fn config_remove_invalid_values_selects_sanitize() {
    let config =
        SamplingConfig::from_json_str(r#"{"do_sample": false, "remove_invalid_values": true}"#).unwrap();
    let mut chain = config.chain().unwrap();
    assert_eq!(chain.non_finite_policy(), NonFinitePolicy::Sanitize);
    let ctx = SamplingContext::new(&[], 0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(chain.sample(&[1.0, f32::NAN, 3.0], &ctx, &mut rng), Ok(2));
    let strict = SamplingConfig::from_json_str(r#"{"do_sample": false}"#).unwrap().chain().unwrap();
    assert_eq!(strict.non_finite_policy(), NonFinitePolicy::Error);
    let mut greedy = Chain::new(Greedy);
    assert_eq!(greedy.sample(&[1.0, f32::NAN], &ctx, &mut rng), Err(SamplingError::NanLogit { id: 1 }));
}

proptest! {
    /// The generator's fast log-sum-exp agrees with the exact one within 1e-6 and
    /// fails the same way on NaN / +inf / all `-inf`.
    #[test]
    fn fast_log_sum_exp_matches_the_exact_one(logits in prop::collection::vec(logit(), 1..300)) {
        use perpetua_sampling::stats::{log_sum_exp, log_sum_exp_fast};
        match (log_sum_exp(&logits), log_sum_exp_fast(&logits)) {
            (Ok(a), Ok(b)) => prop_assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{a} vs {b}"),
            (a, b) => prop_assert_eq!(a, b),
        }
    }
}
