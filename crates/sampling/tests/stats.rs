//! The hot-path statistics against their exact definitions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_sampling::stats::{entropy, entropy_fast, log_sum_exp_fast};
use proptest::prelude::*;

proptest! {
    /// `entropy_fast` equals the f64 definition within 1e-4 nats, `-inf` logits
    /// (masked tokens) included, over vocabularies up to 20k.
    #[test]
    fn entropy_fast_matches_the_definition(
        logits in prop::collection::vec(prop_oneof![9 => -30.0_f32..30.0, 1 => Just(f32::NEG_INFINITY)], 1..20_000),
        scale in 0.01_f32..4.0,
    ) {
        let logits: Vec<f32> = logits.iter().map(|&l| l * scale).collect();
        prop_assume!(logits.iter().any(|l| l.is_finite()));
        let exact = entropy(&logits).unwrap();
        let fast = entropy_fast(&logits, log_sum_exp_fast(&logits).unwrap());
        prop_assert!((exact - fast).abs() < 1e-4, "{exact} vs {fast}");
    }
}

#[test]
fn entropy_fast_edge_cases() {
    assert!(
        (entropy_fast(&[0.0; 1000], log_sum_exp_fast(&[0.0; 1000]).unwrap()) - 1000f64.ln()).abs() < 1e-5
    );
    assert!(entropy_fast(&[3.0], 3.0).abs() < 1e-6); // one token: certain
    assert!(entropy_fast(&[1.0, 2.0], f64::NAN).is_nan());
}
