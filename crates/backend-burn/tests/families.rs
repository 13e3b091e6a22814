//! The model families the burn backend runs, against Hugging Face transformers' logits
//! for the tiny checkpoints of `crates/backend-candle/tests/data/families/` (made by
//! `scripts/model-families/make_tiny.py`): Llama 3.1 and linear RoPE scaling (shared
//! with the candle backend through `LlamaConfig::rope_tables`), from safetensors and
//! from llama.cpp's F32 GGUF conversion; the families whose extra weights burn has no
//! place for are refused, never run without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use perpetua_generator::{KvCache, LanguageModel};

fn dir(family: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../backend-candle/tests/data/families")).join(family)
}

#[test]
fn rope_scaled_llamas_match_transformers() {
    for family in ["llama3", "llama-linear"] {
        let text = std::fs::read_to_string(dir(family).join("reference.json")).unwrap();
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let tokens: Vec<u32> = serde_json::from_value(r["tokens"].clone()).unwrap();
        let want: Vec<Vec<f32>> = serde_json::from_value(r["logits"].clone()).unwrap();
        let prefill = r["prefill"].as_u64().unwrap() as usize;
        for path in [dir(family), dir(family).join("model-f32.gguf")] {
            let model = perpetua_burn::Llama::load(&path, &Default::default()).unwrap();
            let mut cache = model.new_cache().unwrap();
            let mut out = Vec::new();
            model.forward(&tokens[..prefill], &mut cache, &mut out).unwrap();
            let mut worst = diff(&out, &want[0]);
            for (step, row) in want[1..].iter().enumerate() {
                model.forward(&tokens[prefill + step..=prefill + step], &mut cache, &mut out).unwrap();
                worst = worst.max(diff(&out, row));
            }
            assert_eq!(cache.seq_len(), prefill + want.len() - 1);
            println!("burn {family} ({}): max |Δlogit| {worst:.1e}", path.display());
            assert!(worst <= 1e-4, "{family} {}: {worst}", path.display());
        }
    }
}

#[test]
fn families_with_weights_burn_lacks_are_refused() {
    for family in ["mistral", "qwen2", "qwen3", "phi3"] {
        let err = perpetua_burn::Llama::load(dir(family), &Default::default()).unwrap_err();
        assert!(err.to_string().contains("not supported by the dense (burn) loader"), "{family}: {err}");
    }
}

fn diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
