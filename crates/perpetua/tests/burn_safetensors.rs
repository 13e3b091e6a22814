//! The safetensors path on burn: a tiny random Hugging Face llama (non-interleaved RoPE,
//! grouped-query attention, untied output head) written by the test, loaded by both
//! backends; burn's logits equal the candle backend's (f32 cache), which
//! `perpetua-candle`'s own tests check against candle-transformers' `llama`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use perpetua_generator::LanguageModel;

const CONFIG: &str = r#"{
  "hidden_size": 64, "intermediate_size": 96, "vocab_size": 101,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
  "tie_word_embeddings": false
}"#;

fn write_checkpoint(dir: &std::path::Path) {
    let dev = Device::Cpu;
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f64| {
        let t = (Tensor::randn(0f32, 1f32, shape, &dev).unwrap() * scale).unwrap();
        w.insert(name, t);
    };
    put("model.embed_tokens.weight".into(), &[101, 64], 1.0);
    put("lm_head.weight".into(), &[101, 64], 0.2);
    put("model.norm.weight".into(), &[64], 1.0);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        put(format!("{p}.self_attn.q_proj.weight"), &[64, 64], 0.15);
        put(format!("{p}.self_attn.k_proj.weight"), &[32, 64], 0.15);
        put(format!("{p}.self_attn.v_proj.weight"), &[32, 64], 0.15);
        put(format!("{p}.self_attn.o_proj.weight"), &[64, 64], 0.15);
        put(format!("{p}.mlp.gate_proj.weight"), &[96, 64], 0.15);
        put(format!("{p}.mlp.up_proj.weight"), &[96, 64], 0.15);
        put(format!("{p}.mlp.down_proj.weight"), &[64, 96], 0.15);
        put(format!("{p}.input_layernorm.weight"), &[64], 1.0);
        put(format!("{p}.post_attention_layernorm.weight"), &[64], 1.0);
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    // bf16 on disk: the loader converts every dtype to f32.
    let w: HashMap<String, Tensor> =
        w.into_iter().map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap())).collect();
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
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
