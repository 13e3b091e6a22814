//! Shared helpers of the real-model tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// The default model's path; panics (the test FAILS, never skips) when it is missing.
pub fn model_path() -> PathBuf {
    let path = perpetua_candle::default_model_path().expect("a model directory");
    assert!(path.exists(), "model file {} is missing: run `cargo xtask fetch-model` first", path.display());
    path
}

/// Index of the largest value (first on ties), as candle's greedy `argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Largest absolute element-wise difference (the kv-cache kit's, without the index).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    perpetua_kv_cache::testing::max_abs_diff(a, b).0
}

/// A model family's tiny checkpoint directory (`tests/data/families/FAMILY`).
pub fn family_dir(family: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/families").join(family)
}

/// transformers' logits for a family's checkpoint (`reference.json`, written by
/// `scripts/model-families/make_tiny.py`).
#[derive(serde::Deserialize)]
pub struct FamilyReference {
    pub tokens: Vec<u32>,
    pub prefill: usize,
    /// The prefill's last position, then one row per decode step.
    pub logits: Vec<Vec<f32>>,
    /// Every position of `tokens` in one pass.
    pub full: Vec<Vec<f32>>,
}

pub fn family_reference(family: &str) -> FamilyReference {
    let text = std::fs::read_to_string(family_dir(family).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A family's prefill, then one decode step per reference row: the largest logit
/// difference from transformers per step.
pub fn decode_diffs(model: &perpetua_candle::Llama, r: &FamilyReference) -> Vec<f32> {
    use perpetua_generator::{KvCache, LanguageModel};
    let mut cache = model.new_cache().unwrap();
    let mut out = Vec::new();
    model.forward(&r.tokens[..r.prefill], &mut cache, &mut out).unwrap();
    let mut diffs = vec![max_abs_diff(&out, &r.logits[0])];
    for (step, want) in r.logits[1..].iter().enumerate() {
        model.forward(&[r.tokens[r.prefill + step]], &mut cache, &mut out).unwrap();
        diffs.push(max_abs_diff(&out, want));
    }
    assert_eq!(cache.seq_len(), r.prefill + r.logits.len() - 1);
    diffs
}
