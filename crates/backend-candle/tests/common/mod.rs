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
