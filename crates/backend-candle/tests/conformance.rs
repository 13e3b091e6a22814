//! The kv-cache conformance kit (`perpetua_kv_cache::testing`) on the real model, and its
//! batch half (`perpetua_generator::testing::check_batch_isolation`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use perpetua_candle::{KvDtype, Llama, LlamaTokenizer, LoadOptions};
use perpetua_kv_cache::testing::{ConformanceConfig, Property, run_all};

use perpetua_generator::testing::{ModelHarness, check_batch_isolation};

#[test]
fn real_model_cache_passes_the_conformance_kit_exactly() {
    let path = common::model_path();
    let options = LoadOptions { cache_capacity: Some(128), ..LoadOptions::exact() };
    let model = Llama::load(&path, &options).unwrap();
    let tokens = LlamaTokenizer::from_gguf(&path)
        .unwrap()
        .encode_ids(
            "The detective dog sniffed the rain-soaked alley, 12 clues in mind, and barked twice.",
            false,
        )
        .unwrap();
    assert!(tokens.len() >= 16);
    // Tolerance 0: the forward is batch-invariant, so truncate-and-refeed, forks and
    // clears reproduce a fresh prefill bit for bit.
    let config =
        ConformanceConfig { truncate_to: tokens.len() / 2, tokens, tolerance: 0.0, small_capacity: 24 };
    let report = run_all(&mut ModelHarness(model), &config).unwrap();
    println!("{report}");
    assert_eq!(report.max_abs_diff(), 0.0);
    assert!(report.checks.iter().any(|c| c.property == Property::ContextShift), "{report}");
}

#[test]
fn fast_configuration_passes_the_conformance_kit_exactly() {
    fast_configuration_exactly(KvDtype::F16);
}

/// The 8-bit cache too: a row's codes and scale depend only on that row's keys/values,
/// which the batch-invariant forward computes bit for bit alike in a prefill and in
/// decode.
#[test]
fn q8_cache_passes_the_conformance_kit_exactly() {
    fast_configuration_exactly(KvDtype::Q8);
}

fn fast_configuration_exactly(kv_dtype: KvDtype) {
    let path = common::model_path();
    let options = LoadOptions {
        cache_capacity: Some(64),
        requantize: Some(perpetua_candle::GgmlDType::Q8_0),
        kv_dtype,
        ..LoadOptions::default()
    };
    let model = Llama::load(&path, &options).unwrap();
    let tokens: Vec<u32> = (0..20).map(|i| 100 + 37 * i).collect();
    // The batch half: the real batched pass, with a truncation, a fork and a shift of
    // single sequences between passes, equals every sequence's solo run bit for bit.
    assert_eq!(check_batch_isolation(&model, &tokens, 0.0).unwrap(), 0.0);
    let config = ConformanceConfig { truncate_to: 9, tokens, tolerance: 0.0, small_capacity: 16 };
    let report = run_all(&mut ModelHarness(model), &config).unwrap();
    println!("{report}");
    assert_eq!(report.max_abs_diff(), 0.0);
}
