//! The safetensors path on a tiny random llama written by the test: our forward vs
//! candle-transformers' `llama` on the same weights (f32), f16/bf16 loading, and typed
//! errors for malformed checkpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use perpetua_candle::{CandleBackendError, KvDtype, Llama, LoadOptions};
use perpetua_generator::{KvCache, LanguageModel};

use perpetua_candle::testing::{TINY_LLAMA_CONFIG as CONFIG, tiny_llama_weights, write_tiny_llama};

fn random_weights() -> HashMap<String, Tensor> {
    tiny_llama_weights().unwrap()
}

fn write_checkpoint(dir: &Path, weights: &HashMap<String, Tensor>, dtype: DType) {
    write_tiny_llama(dir, weights, dtype).unwrap();
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("perpetua-candle-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn reference_logits(weights: &HashMap<String, Tensor>, tokens: &[u32]) -> Vec<f32> {
    use candle_transformers::models::llama as hf;
    let dev = Device::Cpu;
    let config: hf::LlamaConfig = serde_json::from_str(CONFIG).unwrap();
    let config = config.into_config(false);
    let vb = candle_nn::VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
    let model = hf::Llama::load(vb, &config).unwrap();
    let mut cache = hf::Cache::new(true, DType::F32, &config, &dev).unwrap();
    let input = Tensor::new(tokens, &dev).unwrap().unsqueeze(0).unwrap();
    model.forward(&input, 0, &mut cache).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

/// The kv-cache kit's difference (`inf` for different lengths or a NaN), without the index.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    perpetua_kv_cache::testing::max_abs_diff(a, b).0
}

#[test]
fn f32_checkpoint_matches_candle_transformers_llama() {
    let weights = random_weights();
    let dir = scratch("f32");
    write_checkpoint(&dir, &weights, DType::F32);
    // f32 cache: the reference keeps keys/values in f32 (the default f16 cache is
    // checked against it below).
    let exact_cache = LoadOptions { kv_dtype: KvDtype::F32, ..LoadOptions::default() };
    let model = Llama::load(&dir, &exact_cache).unwrap();
    assert!(!model.config().rope_interleaved);
    let tokens = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38];
    let expected = reference_logits(&weights, &tokens);

    let mut cache = model.new_cache().unwrap();
    assert_eq!(cache.capacity(), 64);
    let mut logits = Vec::new();
    model.forward(&tokens, &mut cache, &mut logits).unwrap();
    let diff = max_abs_diff(&logits, &expected);
    assert!(diff <= 1e-4, "prefill: max abs diff {diff}");

    // Token by token through the cache gives the same last logits.
    let mut cache = model.new_cache().unwrap();
    for &t in &tokens {
        model.forward(&[t], &mut cache, &mut logits).unwrap();
    }
    let diff = max_abs_diff(&logits, &expected);
    assert!(diff <= 1e-4, "incremental: max abs diff {diff}");

    // The default f16 cache: keys/values rounded to 11 significant bits.
    let model = Llama::load(&dir, &LoadOptions::default()).unwrap();
    let mut cache = model.new_cache().unwrap();
    model.forward(&tokens, &mut cache, &mut logits).unwrap();
    let diff = max_abs_diff(&logits, &expected);
    println!("f16 cache: max abs diff {diff:e}");
    assert!(diff <= 1e-2, "f16 cache: max abs diff {diff}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn half_precision_checkpoints_load_close_to_f32() {
    let weights = random_weights();
    let tokens = [1, 2, 3, 4, 5, 6];
    // Round the weights to f16 first so the only difference left is the file dtype.
    let rounded: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap()))
        .collect();
    let dir = scratch("f32-rounded");
    write_checkpoint(&dir, &rounded, DType::F32);
    let reference = Llama::load(&dir, &LoadOptions::default()).unwrap();
    let mut cache = reference.new_cache().unwrap();
    let mut expected = Vec::new();
    reference.forward(&tokens, &mut cache, &mut expected).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = scratch("f16");
    write_checkpoint(&dir, &rounded, DType::F16);
    let model = Llama::load(&dir, &LoadOptions::default()).unwrap();
    let mut cache = model.new_cache().unwrap();
    let mut logits = Vec::new();
    model.forward(&tokens, &mut cache, &mut logits).unwrap();
    assert_eq!(logits, expected, "f16 weights are exact in f32");
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = scratch("bf16");
    write_checkpoint(&dir, &weights, DType::BF16);
    let model = Llama::load(&dir, &LoadOptions::default()).unwrap();
    let mut cache = model.new_cache().unwrap();
    model.forward(&tokens, &mut cache, &mut logits).unwrap();
    let diff = max_abs_diff(&logits, &expected);
    assert!(diff < 0.1, "bf16 rounding moved logits by {diff}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_checkpoints_give_typed_errors() {
    let weights = random_weights();

    let mut missing = weights.clone();
    missing.remove("model.layers.1.mlp.up_proj.weight");
    let dir = scratch("missing");
    write_checkpoint(&dir, &missing, DType::F32);
    let err = Llama::load(&dir, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, CandleBackendError::MissingTensor { name } if name == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let mut bad = weights.clone();
    bad.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = scratch("shape");
    write_checkpoint(&dir, &bad, DType::F32);
    let err = Llama::load(&dir, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, CandleBackendError::BadShape { expected, actual, .. } if expected == &[32, 64] && actual == &[64, 64]),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let mut ints = weights.clone();
    ints.insert("model.norm.weight".into(), Tensor::zeros(64, DType::U32, &Device::Cpu).unwrap());
    let dir = scratch("dtype");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    candle_core::safetensors::save(&ints, dir.join("model.safetensors")).unwrap();
    let err = Llama::load(&dir, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, CandleBackendError::UnsupportedDtype { name, .. } if name == "model.norm.weight"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Other families and features we would run wrongly are refused, naming why.
    for (name, extra, named) in [
        ("gemma", r#""model_type": "gemma","#, "gemma"),
        ("rope-scaling", r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0},"#, "rope_scaling"),
        ("bias", r#""attention_bias": true,"#, "attention_bias"),
    ] {
        let dir = scratch(name);
        write_checkpoint(&dir, &weights, DType::F32);
        std::fs::write(dir.join("config.json"), CONFIG.replacen('{', &format!("{{ {extra}"), 1)).unwrap();
        let err = Llama::load(&dir, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                CandleBackendError::Metadata { .. } | CandleBackendError::UnsupportedArchitecture(_)
            ),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(named), "{name}: `{err}` does not name `{named}`");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // A Qwen2 config over llama weights: the biases it needs are missing.
    let dir = scratch("qwen2");
    write_checkpoint(&dir, &weights, DType::F32);
    std::fs::write(dir.join("config.json"), CONFIG.replacen('{', r#"{ "model_type": "qwen2","#, 1)).unwrap();
    let err = Llama::load(&dir, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, CandleBackendError::MissingTensor { name } if name.ends_with("q_proj.bias")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // An explicit `llama`, `null` scaling and no biases load.
    let dir = scratch("explicit-llama");
    write_checkpoint(&dir, &weights, DType::F32);
    let explicit = r#""model_type": "llama", "rope_scaling": null, "attention_bias": false,"#;
    std::fs::write(dir.join("config.json"), CONFIG.replacen('{', &format!("{{ {explicit}"), 1)).unwrap();
    Llama::load(&dir, &LoadOptions::default()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let err = Llama::load(scratch("nowhere"), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, CandleBackendError::ModelNotFound { .. }));
    assert!(err.to_string().contains("cargo xtask fetch-model"));

    let dir = scratch("garbage");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("model.gguf");
    std::fs::write(&file, b"not a gguf file at all").unwrap();
    let err = Llama::load(&file, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, CandleBackendError::MalformedGguf { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
