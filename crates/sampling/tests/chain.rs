//! The chain's default order, the builder, presets, free reordering, custom stages and
//! the serde config (HF `generation_config.json` field names).
#![allow(missing_docs)]

use perpetua_sampling::config::OneOrMany;
use perpetua_sampling::processors::{
    BannedTokens, FrequencyPresencePenalty, MinP, RepetitionPenalty, Temperature, TopK, TopP, from_fn,
};
use perpetua_sampling::samplers::{Greedy, Multinomial};
use perpetua_sampling::{Chain, ChainBuilder, Preset, SamplingConfig, SamplingContext, SamplingError, Stage};
use proptest::prelude::*;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};

fn names(chain: &Chain) -> Vec<&'static str> {
    chain.stage_names().collect()
}

#[test]
fn builder_orders_stages_by_the_default_order_whatever_the_call_order() {
    let chain = ChainBuilder::new()
        .stage(Stage::MinP, MinP::new(0.05).unwrap())
        .stage(Stage::TopP, TopP::new(0.9).unwrap())
        .stage(Stage::TopK, TopK::new(40).unwrap())
        .stage(Stage::Temperature, Temperature::new(0.7).unwrap())
        .stage(Stage::BannedTokens, BannedTokens::new([5]))
        .stage(Stage::FrequencyPresencePenalty, FrequencyPresencePenalty::new(0.1, 0.1).unwrap())
        .stage(Stage::RepetitionPenalty, RepetitionPenalty::new(1.1).unwrap())
        .build();
    assert_eq!(
        names(&chain),
        [
            "repetition_penalty",
            "frequency_presence_penalty",
            "banned_tokens",
            "temperature",
            "top_k",
            "top_p",
            "min_p"
        ]
    );
    assert_eq!(chain.sampler_name(), "multinomial");
    assert_eq!(chain.base_temperature(), 0.7);
}

#[test]
fn stage_order_is_the_documented_one() {
    let all = Stage::ALL;
    assert!(all.windows(2).all(|w| w[0] < w[1]), "ALL follows Ord");
    let pos = |s: Stage| all.iter().position(|&x| x == s).unwrap();
    // Penalties and masks before temperature; then top-k → top-p → min-p.
    for s in
        [Stage::LogitBias, Stage::RepetitionPenalty, Stage::Dry, Stage::BannedSequences, Stage::MinNewTokens]
    {
        assert!(pos(s) < pos(Stage::Temperature));
    }
    assert!(pos(Stage::Temperature) < pos(Stage::TopK));
    assert!(pos(Stage::TopK) < pos(Stage::TopP));
    assert!(pos(Stage::TopP) < pos(Stage::MinP));
}

#[test]
fn custom_stages_go_before_or_after_any_stage_and_setting_twice_replaces() {
    let chain = ChainBuilder::new()
        .stage(Stage::TopK, TopK::new(10).unwrap())
        .stage(Stage::TopK, TopK::new(20).unwrap())
        .stage(Stage::Temperature, Temperature::new(0.8).unwrap())
        .after(Stage::TopK, from_fn("after_top_k", |_, _| Ok(())))
        .before(Stage::Temperature, from_fn("before_temperature", |_, _| Ok(())))
        .before(Stage::LogitBias, from_fn("first", |_, _| Ok(())))
        .after(Stage::Xtc, from_fn("last", |_, _| Ok(())))
        .sampler(Greedy)
        .build();
    assert_eq!(names(&chain), ["first", "before_temperature", "temperature", "top_k", "after_top_k", "last"]);
    assert_eq!(chain.sampler_name(), "greedy");
    let b = ChainBuilder::new().stage(Stage::TopK, TopK::new(3).unwrap()).without(Stage::TopK);
    assert!(!b.has(Stage::TopK));
    assert!(b.build().is_empty());
}

#[test]
fn chain_reorders_freely() {
    let mut chain = Chain::new(Multinomial)
        .with(Temperature::new(0.8).unwrap())
        .with(TopK::new(5).unwrap())
        .with(TopP::new(0.9).unwrap());
    let top_p = chain.position("top_p").unwrap();
    chain.move_stage(top_p, 0);
    assert_eq!(names(&chain), ["top_p", "temperature", "top_k"]);
    let removed = chain.remove(1).unwrap();
    assert_eq!(removed.name(), "temperature");
    chain.insert(99, removed);
    assert_eq!(names(&chain), ["top_p", "top_k", "temperature"]);
    assert!(chain.remove(7).is_none());
    assert_eq!(chain.len(), 3);
}

#[test]
fn a_closure_stage_acts_where_it_is_inserted() {
    // A custom ban of token 1 placed before top-k 1: the best remaining token is 2.
    let mut chain = Chain::new(Greedy).with(TopK::new(1).unwrap());
    chain.insert(
        0,
        Box::new(from_fn("ban_1", |c, _| {
            c.retain(|c| c.id != 1);
            Ok(())
        })),
    );
    let ctx = SamplingContext::new(&[], 0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(chain.sample(&[0.0, 9.0, 5.0], &ctx, &mut rng).unwrap(), 2);
    // An error from a custom stage propagates.
    let mut failing = Chain::new(Greedy)
        .with(from_fn("fails", |_, _| Err(SamplingError::EmptyCandidates { stage: "fails" })));
    assert_eq!(
        failing.sample(&[0.0], &ctx, &mut rng),
        Err(SamplingError::EmptyCandidates { stage: "fails" })
    );
}

#[test]
fn presets_build_with_their_values() {
    for (preset, t, p, r) in [
        (Preset::Conservative, 0.3, 0.85, 1.1),
        (Preset::Balanced, 0.8, 0.9, 1.2),
        (Preset::Creative, 1.2, 0.95, 1.3),
    ] {
        assert_eq!((preset.temperature(), preset.top_p(), preset.repetition_penalty()), (t, p, r));
        let chain = preset.chain();
        assert_eq!(names(&chain), ["repetition_penalty", "temperature", "top_p"], "{preset:?}");
        assert_eq!(chain.base_temperature(), t);
        // The same stages as a config with those values.
        let config = SamplingConfig {
            temperature: Some(t),
            top_p: Some(p),
            repetition_penalty: Some(r),
            ..SamplingConfig::default()
        };
        assert_eq!(names(&config.chain().unwrap()), names(&chain));
    }
    // A preset is a starting point: add a stage.
    let chain = Preset::Balanced.builder().stage(Stage::TopK, TopK::new(40).unwrap()).build();
    assert_eq!(names(&chain), ["repetition_penalty", "temperature", "top_k", "top_p"]);
}

#[test]
fn config_reads_an_hf_generation_config_and_ignores_unknown_fields() {
    let json = r#"{
        "_from_model_config": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "do_sample": true,
        "temperature": 0.6,
        "top_k": 50,
        "top_p": 0.9,
        "min_p": 0.05,
        "typical_p": 1.0,
        "repetition_penalty": 1.15,
        "no_repeat_ngram_size": 3,
        "min_new_tokens": 4,
        "bad_words_ids": [[7, 8], [9]],
        "suppress_tokens": [11, 12],
        "max_new_tokens": 256,
        "transformers_version": "4.42.3"
    }"#;
    let config = SamplingConfig::from_json_str(json).unwrap();
    assert_eq!(config.eos_token_id, Some(OneOrMany::One(2)));
    assert_eq!(config.eos_token_ids(), vec![2]);
    let chain = config.chain().unwrap();
    assert_eq!(
        names(&chain),
        [
            "repetition_penalty",
            "no_repeat_ngram",
            "banned_tokens",
            "banned_sequences",
            "min_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "min_p"
        ]
    );
    assert_eq!(chain.base_temperature(), 0.6);
}

#[test]
fn config_skips_hf_noop_values_and_reads_openai_and_llama_cpp_fields() {
    let json = r#"{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0,
                   "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "repetition_penalty": 1.0,
                   "no_repeat_ngram_size": 0}"#;
    assert!(SamplingConfig::from_json_str(json).unwrap().chain().unwrap().is_empty());

    let json = r#"{"frequency_penalty": 0.5, "presence_penalty": 0.25, "logit_bias": {"50256": -100},
                   "dry_multiplier": 0.8, "dry_sequence_breakers": [[13]], "top_n_sigma": 1.0,
                   "xtc_probability": 0.5, "xtc_threshold": 0.1, "typical_p": 0.9,
                   "epsilon_cutoff": 0.0003, "eta_cutoff": 0.0009, "suppress_eos": true,
                   "allowed_token_ids": [1, 2, 3], "mirostat": 2}"#;
    let chain = SamplingConfig::from_json_str(json).unwrap().chain().unwrap();
    assert_eq!(
        names(&chain),
        [
            "logit_bias",
            "frequency_presence_penalty",
            "dry",
            "allow_list",
            "suppress_eos",
            "typical",
            "epsilon_cutoff",
            "eta_cutoff",
            "top_n_sigma",
            "xtc"
        ]
    );
    assert_ne!(chain.sampler_name(), "multinomial");
}

#[test]
fn do_sample_false_and_temperature_zero_decode_greedily() {
    let greedy = SamplingConfig::from_json_str(
        r#"{"do_sample": false, "temperature": 0.7, "top_p": 0.9,
                                                   "repetition_penalty": 1.2}"#,
    )
    .unwrap();
    assert!(!greedy.samples());
    let chain = greedy.chain().unwrap();
    // Penalties still apply; warpers are skipped, as in HF.
    assert_eq!(names(&chain), ["repetition_penalty"]);
    assert_eq!(chain.sampler_name(), "greedy");
    let zero = SamplingConfig::from_json_str(r#"{"temperature": 0}"#).unwrap();
    assert_eq!(zero.chain().unwrap().sampler_name(), "greedy");
    // Skipped warpers are still validated.
    let bad = SamplingConfig::from_json_str(r#"{"do_sample": false, "top_p": 2.0}"#).unwrap();
    assert!(bad.validate().is_err());
}

#[test]
fn invalid_config_values_are_typed_errors_naming_the_field() {
    let field = |json: &str| match SamplingConfig::from_json_str(json).unwrap().chain() {
        Err(SamplingError::InvalidParameter { name, .. }) => name,
        other => panic!("{json}: expected InvalidParameter, got {other:?}"),
    };
    assert_eq!(field(r#"{"temperature": -1}"#), "temperature");
    assert_eq!(field(r#"{"top_p": 1.5}"#), "top_p");
    assert_eq!(field(r#"{"min_p": 2.0}"#), "min_p");
    assert_eq!(field(r#"{"repetition_penalty": 0}"#), "repetition_penalty");
    assert_eq!(field(r#"{"logit_bias": {"abc": 1.0}}"#), "logit_bias");
    assert_eq!(field(r#"{"dry_multiplier": 0.8, "dry_base": 0.5}"#), "dry_base");
    assert_eq!(field(r#"{"mirostat": 3}"#), "mirostat");
    assert_eq!(field(r#"{"bad_words_ids": [[]]}"#), "bad_words_ids");
    assert_eq!(field(r#"{"allowed_token_ids": []}"#), "allowed_token_ids");
    // Wrong types and malformed JSON: a config error with serde's message.
    for json in [r#"{"top_k": -1}"#, r#"{"temperature": "hot"}"#, "{"] {
        assert!(matches!(SamplingConfig::from_json_str(json), Err(SamplingError::Config(_))), "{json}");
    }
}

#[test]
fn config_reads_files_and_roundtrips() {
    let dir = std::env::temp_dir().join(format!("perpetua-sampling-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("generation_config.json");
    std::fs::write(&path, r#"{"eos_token_id": [2, 7], "temperature": 0.5, "top_k": 20}"#).unwrap();
    let config = SamplingConfig::from_json_file(&path).unwrap();
    assert_eq!(config.eos_token_ids(), vec![2, 7]);
    let back = SamplingConfig::from_json_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
    let missing = SamplingConfig::from_json_file(dir.join("absent.json")).unwrap_err();
    assert!(matches!(missing, SamplingError::Config(msg) if msg.contains("absent.json")));
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every preset chain gives the same draws under the same seed, all of them ids
    /// of the vocabulary.
    #[test]
    fn preset_chains_are_deterministic_under_a_seed(
        logits in prop::collection::vec(-10.0_f32..10.0, 2..64),
        seed in any::<u64>(),
        preset in prop_oneof![Just(Preset::Conservative), Just(Preset::Balanced), Just(Preset::Creative)],
    ) {
        let history = [0_u32, 1, 1];
        let ctx = SamplingContext::new(&history, 1);
        let run = || {
            let mut chain = preset.chain();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..8).map(|_| chain.sample(&logits, &ctx, &mut rng).unwrap()).collect::<Vec<_>>()
        };
        let a = run();
        prop_assert_eq!(&a, &run());
        prop_assert!(a.iter().all(|&t| (t as usize) < logits.len()));
    }
}

proptest::proptest! {
    /// The chain runs top-k before a directly preceding temperature stage (cheaper);
    /// the survivors and their tempered logits must equal the configured order's.
    #[test]
    fn temperature_then_top_k_equals_the_configured_order(
        logits in proptest::collection::vec(-20.0f32..20.0, 1..300),
        t in 0.05f32..3.0,
        k in 1usize..60,
    ) {
        use perpetua_sampling::{Candidates, LogitsProcessor};
        let ctx = SamplingContext::new(&[], 0);
        let mut chain = Chain::new(Greedy).with(Temperature::new(t).unwrap()).with(TopK::new(k).unwrap());
        let fast: Vec<(u32, f32)> = {
            let c = chain.process(&logits, &ctx).unwrap();
            c.sort_by_logit();
            c.as_slice().iter().map(|c| (c.id, c.logit)).collect()
        };
        let mut reference = Candidates::with_capacity(logits.len());
        reference.fill_from_logits(&logits).unwrap();
        Temperature::new(t).unwrap().process(&mut reference, &ctx).unwrap();
        TopK::new(k).unwrap().process(&mut reference, &ctx).unwrap();
        reference.sort_by_logit();
        let slow: Vec<(u32, f32)> = reference.as_slice().iter().map(|c| (c.id, c.logit)).collect();
        proptest::prop_assert_eq!(fast.len(), slow.len());
        for (a, b) in fast.iter().zip(&slow) {
            proptest::prop_assert_eq!(a.0, b.0);
            proptest::prop_assert!((a.1 - b.1).abs() <= 1e-6 * a.1.abs().max(1.0));
        }
    }
}

#[test]
fn processors_report_their_stage_and_custom_stages_are_never_mistaken_for_one() {
    let chain = ChainBuilder::new()
        .stage(Stage::TopK, TopK::new(40).unwrap())
        .stage(Stage::Temperature, Temperature::new(0.7).unwrap())
        .stage(Stage::RepetitionPenalty, RepetitionPenalty::new(1.1).unwrap())
        .after(Stage::TopK, from_fn("top_p", |_c, _ctx| Ok(())))
        .build();
    assert_eq!(
        chain.stages().collect::<Vec<_>>(),
        [Some(Stage::RepetitionPenalty), Some(Stage::Temperature), Some(Stage::TopK), None]
    );
    // A custom stage that borrows a truncation's name is not a truncation: the
    // temperature stage a generator needs goes at the end, not before it.
    let mut chain = Chain::new(Multinomial).with(from_fn("top_k", |_c, _ctx| Ok(())));
    assert!(chain.ensure_temperature_stage());
    assert_eq!(chain.stages().collect::<Vec<_>>(), [None, Some(Stage::Temperature)]);
    let mut chain = Chain::new(Multinomial).with(TopK::new(5).unwrap());
    assert!(chain.ensure_temperature_stage());
    assert_eq!(chain.stages().collect::<Vec<_>>(), [Some(Stage::Temperature), Some(Stage::TopK)]);
}

/// A custom stage that borrows a truncation's name is not a truncation (before, stages
/// were matched by name): the temperature stage a generator needs goes after it.
#[test]
fn a_custom_stage_named_like_a_truncation_is_not_one() {
    let mut chain = Chain::new(Multinomial).with(from_fn("top_k", |_c, _ctx| Ok(())));
    assert!(chain.ensure_temperature_stage());
    assert_eq!(names(&chain), ["top_k", "temperature"]);
}
