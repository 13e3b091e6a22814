//! The safetensors path on burn: a tiny random Hugging Face llama (non-interleaved RoPE,
//! grouped-query attention, untied output head) written by the test, loaded by both
//! backends; burn's logits equal the candle backend's (f32 cache), which
//! `perpetua-candle`'s own tests check against candle-transformers' `llama`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::DType;
use perpetua_generator::LanguageModel;

/// The tiny checkpoint of `perpetua_candle::testing`, bf16 on disk (the loader converts
/// every dtype to f32).
fn write_checkpoint(dir: &std::path::Path) {
    use perpetua_candle::testing::{tiny_llama_weights, write_tiny_llama};
    write_tiny_llama(dir, &tiny_llama_weights().unwrap(), DType::BF16).unwrap();
}

#[test]
fn safetensors_checkpoint_matches_the_candle_backend() {
    let dir = std::env::temp_dir().join(format!("perpetua-burn-st-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_checkpoint(&dir);

    let candle = perpetua_candle::Llama::load(
        &dir,
        &perpetua_candle::LoadOptions { kv_dtype: perpetua_candle::KvDtype::F32, ..Default::default() },
    )
    .unwrap();
    let burn = perpetua_burn::Llama::load(&dir, &perpetua_burn::LoadOptions::default()).unwrap();
    assert!(!burn.config().rope_interleaved, "Hugging Face checkpoints pair (i, i + d/2)");
    assert_eq!(burn.config(), candle.config());

    let tokens = [3_u32, 14, 15, 92, 65, 35, 89, 79, 32, 38];
    let (mut c_cache, mut b_cache) = (candle.new_cache().unwrap(), burn.new_cache().unwrap());
    let (mut c_logits, mut b_logits) = (Vec::new(), Vec::new());
    // A prefill, then token-by-token decode steps: both paths of each backend.
    candle.forward(&tokens[..6], &mut c_cache, &mut c_logits).unwrap();
    burn.forward(&tokens[..6], &mut b_cache, &mut b_logits).unwrap();
    let mut worst = max_abs_diff(&c_logits, &b_logits);
    for &t in &tokens[6..] {
        candle.forward(&[t], &mut c_cache, &mut c_logits).unwrap();
        burn.forward(&[t], &mut b_cache, &mut b_logits).unwrap();
        worst = worst.max(max_abs_diff(&c_logits, &b_logits));
    }
    println!("max |Δ logit| over 5 positions: {worst:e}");
    assert!(worst <= 1e-4, "burn vs candle on the safetensors checkpoint: {worst}");

    // A cache made by a model of another shape (one layer fewer) is refused, typed,
    // and the model's own cache is untouched by the attempt.
    let mut weights = perpetua_burn::DenseWeights::load(&dir).unwrap();
    weights.layers.pop();
    // Inconsistent hand-edited weights are refused before any tensor is built.
    let err = perpetua_burn::Llama::from_dense(weights.clone(), &perpetua_burn::LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("differs from config.n_layers"), "{err}");
    let mut bad = weights.clone();
    bad.config.n_layers -= 1;
    bad.layers[0].w_up.data.pop();
    let err = perpetua_burn::Llama::from_dense(bad, &perpetua_burn::LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("layers[0].w_up"), "{err}");
    weights.config.n_layers -= 1;
    let shallow = perpetua_burn::Llama::from_dense(weights, &perpetua_burn::LoadOptions::default()).unwrap();
    let mut foreign = shallow.new_cache().unwrap();
    let err = burn.forward(&[1], &mut foreign, &mut b_logits).unwrap_err();
    assert!(matches!(err, perpetua_burn::BurnBackendError::InvalidParameter { name: "cache", .. }), "{err}");
    shallow.forward(&[1, 2], &mut foreign, &mut b_logits).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The kv-cache kit's difference (`inf` for different lengths or a NaN), without the index.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    perpetua_kv_cache::testing::max_abs_diff(a, b).0
}
