//! `LanguageModel::forward_all` on the real model: one batched pass gives
//! every fed position's logits, matching token-by-token `forward` up to float
//! rounding, for the quantized default load and for f32 weights (whose few-row kernel
//! differs from the decode path), and errors leave the cache as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use perpetua_candle::{GgmlDType, KvDtype, Llama, LoadOptions};
use perpetua_generator::{KvCache, LanguageModel};

fn check(options: &LoadOptions, tolerance: f32) {
    let model = Llama::load(common::model_path(), options).unwrap();
    let vocab = model.vocab_size();
    let prompt = [1_u32, 504, 3458, 282, 4649, 314];
    let next = [1552_u32, 253, 1345, 30, 2090];
    let mut batched = model.new_cache().unwrap();
    let mut single = model.new_cache().unwrap();
    let mut row = Vec::new();
    model.forward(&prompt, &mut batched, &mut row).unwrap();
    model.forward(&prompt, &mut single, &mut row).unwrap();

    let mut all = Vec::new();
    model.forward_all(&next, &mut batched, &mut all).unwrap();
    assert_eq!(all.len(), next.len() * vocab);
    assert_eq!(batched.seq_len(), prompt.len() + next.len());
    for (i, &t) in next.iter().enumerate() {
        model.forward(&[t], &mut single, &mut row).unwrap();
        let got = &all[i * vocab..(i + 1) * vocab];
        let diff = common::max_abs_diff(got, &row);
        println!("{options:?} row {i}: max |Δ logit| = {diff:e}");
        assert!(diff <= tolerance, "row {i}: max |Δ| = {diff}");
        assert_eq!(common::argmax(got), common::argmax(&row), "row {i}: greedy token differs");
    }

    // An invalid id fails without touching the cache.
    let before = batched.seq_len();
    assert!(model.forward_all(&[1, u32::MAX], &mut batched, &mut all).is_err());
    assert_eq!(batched.seq_len(), before);
}

#[test]
fn forward_all_matches_token_by_token_forward() {
    // Q8_0 (quantized kernels tile rows; batch-invariant attention): equal up to
    // rounding of the output head.
    check(&LoadOptions::default(), 1e-3);
    // The 8-bit cache: the same keys and values give the same codes.
    check(&LoadOptions { kv_dtype: KvDtype::Q8, ..LoadOptions::default() }, 1e-3);
    // f32 weights through the few-row kernel, f32 cache: equal up to f32 rounding.
    let f32_weights = LoadOptions { requantize: Some(GgmlDType::F32), ..LoadOptions::default() };
    check(&LoadOptions { kv_dtype: KvDtype::F32, ..f32_weights.clone() }, 1e-3);
    // The same with the default f16 cache: the few-row kernel's keys/values differ from
    // the decode path's by f32 rounding, which the cache's f16 rounding can turn into one
    // f16 step (2⁻¹¹ relative) of a key or value: measured up to 1.2e-3 here.
    check(&f32_weights, 1e-2);
}
