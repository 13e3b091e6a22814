//! Penalties, masks and biases: a hand-checked case per penalty, and property tests
//! for each processor (a banned / masked / suppressed token is never sampled;
//! penalties never raise a penalised logit; min-new-tokens holds; n-grams never
//! repeat; NaN logits are an error).
#![allow(missing_docs)]
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use perpetua_sampling::processors::{
    AllowList, BannedSequences, BannedTokens, Dry, FrequencyPresencePenalty, LogitBias, MinNewTokens,
    NoRepeatNGram, RepetitionPenalty, SuppressEos, from_fn,
};
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Candidates, Chain, LogitsProcessor, SamplingContext, SamplingError, testing};
use proptest::prelude::*;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};

/// Apply `p` to `logits` (id = index) and return the logits by id.
fn apply(p: &mut dyn LogitsProcessor, logits: &[f32], ctx: &SamplingContext<'_>) -> Vec<f32> {
    let mut c = Candidates::with_capacity(logits.len());
    c.fill_from_logits(logits).unwrap();
    p.process(&mut c, ctx).unwrap();
    let mut out = vec![f32::NAN; logits.len()];
    for cand in c.as_slice() {
        out[cand.id as usize] = cand.logit;
    }
    out
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-5 || g == w, "id {i}: got {g}, want {w} (all: {got:?})");
    }
}

// ---------------------------------------------------------------- hand-checked cases

#[test]
fn repetition_penalty_hand_checked() {
    // ids {0, 1, 2} present (1 twice: counted once), penalty 1.5:
    // 5/1.5 = 3.333, 3/1.5 = 2, 2/1.5 = 1.333; 1 and −1 untouched.
    let tokens = [0, 1, 2, 1];
    let ctx = SamplingContext::new(&tokens, 2);
    let mut p = RepetitionPenalty::new(1.5).unwrap();
    assert_close(
        &apply(&mut p, &[5.0, 3.0, 2.0, 1.0, -1.0], &ctx),
        &[3.333_333_3, 2.0, 1.333_333_3, 1.0, -1.0],
    );
    // A negative logit is multiplied: token 4 seen → −1 · 1.5.
    let tokens = [4];
    let ctx = SamplingContext::new(&tokens, 1);
    assert_close(&apply(&mut p, &[5.0, 3.0, 2.0, 1.0, -1.0], &ctx), &[5.0, 3.0, 2.0, 1.0, -1.5]);
}

#[test]
fn repetition_penalty_window_and_prompt() {
    // prompt [0, 1], generated [2, 3].
    let tokens = [0, 1, 2, 3];
    let ctx = SamplingContext::new(&tokens, 2);
    let logits = [2.0, 2.0, 2.0, 2.0, 2.0];
    let mut generated_only = RepetitionPenalty::new(2.0).unwrap().with_include_prompt(false);
    assert_close(&apply(&mut generated_only, &logits, &ctx), &[2.0, 2.0, 1.0, 1.0, 2.0]);
    let mut last_3 = RepetitionPenalty::new(2.0).unwrap().with_last_n(3);
    assert_close(&apply(&mut last_3, &logits, &ctx), &[2.0, 1.0, 1.0, 1.0, 2.0]);
}

#[test]
fn frequency_presence_penalty_hand_checked() {
    // prompt [3], generated [0, 0, 1]; f = 0.5, p = 1.0:
    // id 0: 5 − 2·0.5 − 1 = 3; id 1: 3 − 0.5 − 1 = 1.5; id 3 is prompt-only: untouched.
    let tokens = [3, 0, 0, 1];
    let ctx = SamplingContext::new(&tokens, 1);
    let logits = [5.0, 3.0, 2.0, 1.0, -1.0];
    let mut p = FrequencyPresencePenalty::new(0.5, 1.0).unwrap();
    assert_close(&apply(&mut p, &logits, &ctx), &[3.0, 1.5, 2.0, 1.0, -1.0]);
    // With the prompt: id 3: 1 − 0.5 − 1 = −0.5.
    let mut p = FrequencyPresencePenalty::new(0.5, 1.0).unwrap().with_include_prompt(true);
    assert_close(&apply(&mut p, &logits, &ctx), &[3.0, 1.5, 2.0, -0.5, -1.0]);
}

#[test]
fn no_repeat_ngram_hand_checked() {
    // Trigram (1, 2, 3) exists and the context ends with (1, 2): 3 is banned.
    let tokens = [1, 2, 3, 1, 2];
    let ctx = SamplingContext::new(&tokens, 0);
    let mut p = NoRepeatNGram::new(3).unwrap();
    let ninf = f32::NEG_INFINITY;
    assert_close(&apply(&mut p, &[0.0, 1.0, 2.0, 3.0, 4.0], &ctx), &[0.0, 1.0, 2.0, ninf, 4.0]);
}

#[test]
fn dry_hand_checked() {
    // [1 2 3] 4 [1 2 3]: continuing with 4 would repeat a run of length 3;
    // allowed 2 → penalty 0.8 · 1.75^(3−2) = 1.4 on token 4 only.
    let tokens = [1, 2, 3, 4, 1, 2, 3];
    let ctx = SamplingContext::new(&tokens, 0);
    let mut p = Dry::new(0.8, 1.75, 2, 0, []).unwrap();
    assert_close(&apply(&mut p, &[1.0; 6], &ctx), &[1.0, 1.0, 1.0, 1.0, 1.0 - 1.4, 1.0]);
}

#[test]
fn logit_bias_banned_allow_suppress_hand_checked() {
    let ninf = f32::NEG_INFINITY;
    let eos = [4_u32];
    let tokens = [0_u32];
    let ctx = SamplingContext::new(&tokens, 1).with_eos_ids(&eos);
    let logits = [5.0, 3.0, 2.0, 1.0, -1.0];
    let mut bias = LogitBias::new([(1, 2.5), (2, ninf)]).unwrap();
    assert_close(&apply(&mut bias, &logits, &ctx), &[5.0, 5.5, ninf, 1.0, -1.0]);
    let mut banned = BannedTokens::new([0, 3]);
    assert_close(&apply(&mut banned, &logits, &ctx), &[ninf, 3.0, 2.0, ninf, -1.0]);
    let mut suppress = SuppressEos::new();
    assert_close(&apply(&mut suppress, &logits, &ctx), &[5.0, 3.0, 2.0, 1.0, ninf]);
    let mut min_new = MinNewTokens::new(1);
    assert_close(&apply(&mut min_new, &logits, &ctx), &[5.0, 3.0, 2.0, 1.0, ninf]);
    let mut allow = AllowList::new([1, 4]).unwrap();
    let mut c = Candidates::with_capacity(5);
    c.fill_from_logits(&logits).unwrap();
    allow.process(&mut c, &ctx).unwrap();
    assert_eq!(c.ids().collect::<Vec<_>>(), vec![1, 4]);
}

#[test]
fn nan_logits_are_an_error_through_every_stage() {
    let tokens = [0_u32, 1, 0, 1];
    let eos = [2_u32];
    let ctx = SamplingContext::new(&tokens, 1).with_eos_ids(&eos);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let stages: Vec<Box<dyn LogitsProcessor>> = vec![
        Box::new(RepetitionPenalty::new(1.3).unwrap()),
        Box::new(FrequencyPresencePenalty::new(0.5, 0.5).unwrap()),
        Box::new(NoRepeatNGram::new(2).unwrap()),
        Box::new(Dry::new(0.8, 1.75, 1, 0, []).unwrap()),
        Box::new(LogitBias::new([(0, 1.0)]).unwrap()),
        Box::new(BannedTokens::new([3])),
        Box::new(BannedSequences::new([vec![1, 3]]).unwrap()),
        Box::new(AllowList::new([0, 1, 2]).unwrap()),
        Box::new(SuppressEos::new()),
        Box::new(MinNewTokens::new(5)),
    ];
    for stage in stages {
        let name = stage.name();
        let mut chain = Chain::new(Multinomial);
        chain.push(stage);
        let r = chain.sample(&[0.0, f32::NAN, 1.0, 2.0], &ctx, &mut rng);
        assert_eq!(r, Err(SamplingError::NanLogit { id: 1 }), "{name}");
    }
}

#[test]
fn invalid_parameters_are_typed_errors() {
    let name = |e: SamplingError| match e {
        SamplingError::InvalidParameter { name, .. } => name,
        other => panic!("not an InvalidParameter: {other}"),
    };
    assert_eq!(name(RepetitionPenalty::new(f32::NAN).unwrap_err()), "repetition_penalty");
    assert_eq!(name(RepetitionPenalty::new(0.0).unwrap_err()), "repetition_penalty");
    assert_eq!(name(FrequencyPresencePenalty::new(f32::INFINITY, 0.0).unwrap_err()), "frequency_penalty");
    assert_eq!(name(FrequencyPresencePenalty::new(0.0, f32::NAN).unwrap_err()), "presence_penalty");
    assert_eq!(name(NoRepeatNGram::new(0).unwrap_err()), "no_repeat_ngram_size");
    assert_eq!(name(Dry::new(f32::NAN, 1.75, 2, 0, []).unwrap_err()), "dry_multiplier");
    assert_eq!(name(Dry::new(0.8, 0.9, 2, 0, []).unwrap_err()), "dry_base");
    assert_eq!(name(Dry::new(0.8, 1.75, 2, 0, [vec![]]).unwrap_err()), "dry_sequence_breakers");
    assert_eq!(name(LogitBias::new([(0, f32::NAN)]).unwrap_err()), "logit_bias");
    assert_eq!(name(BannedSequences::new([Vec::<u32>::new()]).unwrap_err()), "banned_sequences");
    assert_eq!(name(AllowList::new([]).unwrap_err()), "allow_list");
    let msg = RepetitionPenalty::new(-2.0).unwrap_err().to_string();
    assert!(msg.contains("repetition_penalty") && msg.contains("-2"), "{msg}");
}

// ---------------------------------------------------------------- the testing kit

/// Every processor of this file passes the crate's reusable invariant checks
/// (survivors renormalise, masked never picked, deterministic, NaN/+inf → error).
#[test]
fn every_penalty_and_mask_passes_the_testing_kit() {
    testing::check_processor(|| RepetitionPenalty::new(1.3).unwrap());
    testing::check_processor(|| {
        RepetitionPenalty::new(1.3).unwrap().with_last_n(2).with_include_prompt(false)
    });
    testing::check_processor(|| FrequencyPresencePenalty::new(0.4, 0.6).unwrap());
    testing::check_processor(|| NoRepeatNGram::new(2).unwrap());
    testing::check_processor(|| Dry::new(0.8, 1.75, 1, 0, [vec![3]]).unwrap());
    testing::check_processor(|| LogitBias::new([(0, 1.5), (1, -2.0)]).unwrap());
    testing::check_processor(|| BannedTokens::new([1]));
    testing::check_processor(|| BannedSequences::new([vec![2, 3], vec![5]]).unwrap());
    testing::check_processor(|| AllowList::new([0, 1, 2, 3]).unwrap());
    testing::check_processor(SuppressEos::new);
    testing::check_processor(|| MinNewTokens::new(3));
    testing::check_processor(|| from_fn("identity", |_, _| Ok(())));
}

// ---------------------------------------------------------------- property tests

fn logits_strategy(vocab: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-20.0_f32..20.0, vocab)
}

fn history_strategy(vocab: u32) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0..vocab, 0..40)
}

/// Draw `draws` tokens with `chain` from the same logits and context.
fn draws(chain: &mut Chain, logits: &[f32], ctx: &SamplingContext<'_>, seed: u64, draws: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..draws).map(|_| chain.sample(logits, ctx, &mut rng).unwrap()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    /// Penalties ≥ 1 never raise the logit of a penalised token and leave every other
    /// token unchanged.
    #[test]
    fn repetition_penalty_never_raises_penalised_logits(
        logits in logits_strategy(24),
        history in history_strategy(24),
        prompt_len in 0_usize..40,
        penalty in 1.0_f32..3.0,
        last_n in 0_usize..10,
        include_prompt in any::<bool>(),
    ) {
        let ctx = SamplingContext::new(&history, prompt_len);
        let mut p = RepetitionPenalty::new(penalty).unwrap().with_last_n(last_n).with_include_prompt(include_prompt);
        let out = apply(&mut p, &logits, &ctx);
        let source = if include_prompt { ctx.tokens } else { ctx.generated() };
        let window = if last_n == 0 { source } else { &source[source.len().saturating_sub(last_n)..] };
        for (id, (&before, &after)) in logits.iter().zip(&out).enumerate() {
            if window.contains(&(id as u32)) {
                prop_assert!(after <= before, "id {id}: {before} → {after}");
                let want = if before > 0.0 { before / penalty } else { before * penalty };
                prop_assert!((after - want).abs() <= 1e-5 * want.abs().max(1.0));
            } else {
                prop_assert_eq!(after, before, "unpenalised id {} changed", id);
            }
        }
    }

    /// Frequency/presence penalties ≥ 0 lower a token by exactly `count·f + p` and
    /// never raise any logit.
    #[test]
    fn frequency_presence_never_raise_and_match_the_formula(
        logits in logits_strategy(24),
        history in history_strategy(24),
        prompt_len in 0_usize..40,
        frequency in 0.0_f32..2.0,
        presence in 0.0_f32..2.0,
    ) {
        let ctx = SamplingContext::new(&history, prompt_len);
        let mut p = FrequencyPresencePenalty::new(frequency, presence).unwrap();
        let out = apply(&mut p, &logits, &ctx);
        for (id, (&before, &after)) in logits.iter().zip(&out).enumerate() {
            let count = ctx.generated().iter().filter(|&&t| t == id as u32).count();
            let want = if count > 0 { before - (count as f32 * frequency + presence) } else { before };
            prop_assert!(after <= before);
            prop_assert!((after - want).abs() <= 1e-4, "id {id}: {after} vs {want}");
        }
    }

    /// DRY never raises a logit, and only touches tokens of the window.
    #[test]
    fn dry_never_raises_and_only_touches_window_tokens(
        logits in logits_strategy(8),
        history in prop::collection::vec(0_u32..8, 0..60),
        allowed_length in 0_usize..4,
    ) {
        let ctx = SamplingContext::new(&history, 0);
        let mut p = Dry::new(0.8, 1.75, allowed_length, 0, [vec![7]]).unwrap();
        let out = apply(&mut p, &logits, &ctx);
        for (id, (&before, &after)) in logits.iter().zip(&out).enumerate() {
            prop_assert!(after <= before);
            if after < before {
                prop_assert!(history.contains(&(id as u32)));
                prop_assert_ne!(id, 7, "a one-token breaker was penalised");
            }
        }
    }

    /// A banned token (ban list or `-inf` bias) is never sampled.
    #[test]
    fn banned_tokens_are_never_sampled(
        logits in logits_strategy(16),
        banned in prop::collection::btree_set(0_u32..16, 1..15),
        seed in any::<u64>(),
        as_bias in any::<bool>(),
    ) {
        let mut chain = if as_bias {
            Chain::new(Multinomial).with(LogitBias::new(banned.iter().map(|&id| (id, f32::NEG_INFINITY))).unwrap())
        } else {
            Chain::new(Multinomial).with(BannedTokens::new(banned.iter().copied()))
        };
        let ctx = SamplingContext::new(&[], 0);
        for t in draws(&mut chain, &logits, &ctx, seed, 32) {
            prop_assert!(!banned.contains(&t), "sampled banned token {t}");
        }
    }

    /// Generation with banned sequences never completes one of them.
    #[test]
    fn banned_sequences_are_never_completed(
        logits in logits_strategy(6),
        sequences in prop::collection::vec(prop::collection::vec(0_u32..6, 1..4), 1..4),
        seed in any::<u64>(),
    ) {
        // Sequences of length 1 may ban every token: skip those cases.
        let singles: std::collections::BTreeSet<u32> =
            sequences.iter().filter(|s| s.len() == 1).map(|s| s[0]).collect();
        prop_assume!(singles.len() < 6);
        let mut chain = Chain::new(Multinomial).with(BannedSequences::new(sequences.clone()).unwrap());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tokens: Vec<u32> = Vec::new();
        for _ in 0..40 {
            let ctx = SamplingContext::new(&tokens, 0);
            let t = match chain.sample(&logits, &ctx, &mut rng) {
                Ok(t) => t,
                Err(SamplingError::EmptyCandidates { .. }) => break,
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            tokens.push(t);
            for s in &sequences {
                prop_assert!(!tokens.ends_with(s), "completed banned sequence {s:?} in {tokens:?}");
            }
        }
    }

    /// Only allow-listed tokens are sampled.
    #[test]
    fn only_allowed_tokens_are_sampled(
        logits in logits_strategy(16),
        allowed in prop::collection::btree_set(0_u32..16, 1..16),
        seed in any::<u64>(),
    ) {
        let mut chain = Chain::new(Multinomial).with(AllowList::new(allowed.iter().copied()).unwrap());
        let ctx = SamplingContext::new(&[], 0);
        for t in draws(&mut chain, &logits, &ctx, seed, 32) {
            prop_assert!(allowed.contains(&t));
        }
    }

    /// A suppressed EOS is never sampled, however likely.
    #[test]
    fn suppressed_eos_is_never_sampled(
        mut logits in logits_strategy(8),
        eos in prop::collection::btree_set(0_u32..8, 1..4),
        seed in any::<u64>(),
    ) {
        for &e in &eos {
            logits[e as usize] = 30.0;
        }
        let eos: Vec<u32> = eos.into_iter().collect();
        let mut chain = Chain::new(Multinomial).with(SuppressEos::new());
        let ctx = SamplingContext::new(&[], 0).with_eos_ids(&eos);
        for t in draws(&mut chain, &logits, &ctx, seed, 32) {
            prop_assert!(!eos.contains(&t));
        }
    }

    /// With min-new-tokens m, no EOS among the first m generated tokens even when EOS
    /// dominates; EOS becomes possible afterwards.
    #[test]
    fn min_new_tokens_holds(
        mut logits in logits_strategy(8),
        prompt in prop::collection::vec(0_u32..8, 0..5),
        min in 0_usize..12,
        seed in any::<u64>(),
    ) {
        logits[2] = 40.0; // EOS = 2 overwhelms every other token
        let eos = [2_u32];
        let mut chain = Chain::new(Multinomial).with(MinNewTokens::new(min));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tokens = prompt.clone();
        for step in 0..min + 1 {
            let ctx = SamplingContext::new(&tokens, prompt.len()).with_eos_ids(&eos);
            let t = chain.sample(&logits, &ctx, &mut rng).unwrap();
            if step < min {
                prop_assert_ne!(t, 2, "EOS at step {}", step);
            } else {
                prop_assert_eq!(t, 2, "EOS (p ≈ 1) should be free again at step {}", step);
            }
            tokens.push(t);
        }
    }

    /// Generation with no-repeat-n-gram never produces the same n-gram twice.
    #[test]
    fn no_ngram_repeats_in_generation(
        logits in logits_strategy(6),
        n in 1_usize..4,
        seed in any::<u64>(),
    ) {
        let mut chain = Chain::new(Multinomial).with(NoRepeatNGram::new(n).unwrap());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tokens: Vec<u32> = Vec::new();
        for _ in 0..60 {
            let ctx = SamplingContext::new(&tokens, 0);
            match chain.sample(&logits, &ctx, &mut rng) {
                Ok(t) => tokens.push(t),
                // Every continuation would repeat an n-gram: the typed error, not a pick.
                Err(SamplingError::EmptyCandidates { stage }) => {
                    prop_assert_eq!(stage, "no_repeat_ngram");
                    break;
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for gram in tokens.windows(n) {
            prop_assert!(seen.insert(gram.to_vec()), "{gram:?} repeated in {tokens:?}");
        }
    }
}
