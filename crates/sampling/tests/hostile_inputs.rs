//! Caller inputs that must not size allocations or panic (the first was found
//! by the `chain_config` fuzz target: `repetition_penalty_last_n` = 2^63 overflowed a
//! `reserve`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_sampling::processors::{
    AllowList, Dry, FrequencyPresencePenalty, LogitBias, RepetitionPenalty, TopK,
};
use perpetua_sampling::samplers::Greedy;
use perpetua_sampling::{Chain, SamplingConfig, SamplingContext};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

const LOGITS: [f32; 6] = [0.1, 0.5, 3.0, 2.0, -1.0, 0.0];

fn pick(chain: &mut Chain, history: &[u32]) -> u32 {
    let ctx = SamplingContext::new(history, 0);
    chain.sample(&LOGITS, &ctx, &mut ChaCha8Rng::seed_from_u64(0)).unwrap()
}

#[test]
fn a_huge_penalty_window_is_just_the_whole_history() {
    // Found by fuzzing: reserve(usize::MAX) panicked with "capacity overflow".
    let json = r#"{"do_sample": false, "repetition_penalty": 2.0, "repetition_penalty_last_n": 9223372036854775807,
                   "frequency_penalty": 1.0, "frequency_presence_last_n": 9223372036854775807}"#;
    let mut chain = SamplingConfig::from_json_str(json).unwrap().chain().unwrap();
    assert_eq!(pick(&mut chain, &[2, 2]), 3, "token 2 is penalised, 3 wins");
    let mut rp = Chain::new(Greedy).with(RepetitionPenalty::new(4.0).unwrap().with_last_n(usize::MAX));
    assert_eq!(pick(&mut rp, &[2]), 3);
}

#[test]
fn history_ids_outside_the_vocabulary_are_ignored_without_allocating_for_them() {
    // Were: a dense table resized to id + 1 (16 GiB for u32::MAX).
    let far = [u32::MAX, 4_000_000_000, 2, u32::MAX - 1, 2];
    let mut rp = Chain::new(Greedy).with(RepetitionPenalty::new(4.0).unwrap());
    assert_eq!(pick(&mut rp, &far), 3);
    let mut fp = Chain::new(Greedy).with(FrequencyPresencePenalty::new(1.0, 0.0).unwrap());
    assert_eq!(pick(&mut fp, &far), 3, "two occurrences of 2: 3.0 - 2 < 2.0");
    // DRY: the tail "MAX, 7" repeats at 2..4, followed by 2 (penalised: 3.0 - 2 = 1.0);
    // the "7" at 0 is followed by u32::MAX - 1, far outside the vocabulary: skipped.
    let mut dry =
        Chain::new(Greedy).with(TopK::new(6).unwrap()).with(Dry::new(1.0, 2.0, 1, 0, [vec![9]]).unwrap());
    let history = [7, u32::MAX - 1, u32::MAX, 7, 2, 3, 4, u32::MAX, 7];
    assert_eq!(pick(&mut dry, &history), 3);
}

#[test]
fn config_ids_outside_the_vocabulary_match_nothing() {
    let mut allow = Chain::new(Greedy).with(AllowList::new([u32::MAX, 3, 4_000_000_000]).unwrap());
    assert_eq!(pick(&mut allow, &[]), 3);
    let only_far = AllowList::new([u32::MAX]).unwrap();
    assert!(only_far.allows(u32::MAX) && !only_far.allows(3));
    let mut only = Chain::new(Greedy).with(only_far);
    let ctx = SamplingContext::new(&[], 0);
    assert!(
        only.sample(&LOGITS, &ctx, &mut ChaCha8Rng::seed_from_u64(0)).is_err(),
        "nothing allowed is an error"
    );
    // A bias on a far id after a reorder (top-k first forces the slow lookup path).
    let mut bias = Chain::new(Greedy)
        .with(TopK::new(3).unwrap())
        .with(LogitBias::new([(u32::MAX, 100.0), (1, 10.0)]).unwrap());
    assert_eq!(pick(&mut bias, &[]), 1);
}
