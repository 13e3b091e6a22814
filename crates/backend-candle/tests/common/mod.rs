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

/// Largest absolute element-wise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logit vectors of different lengths");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The kv-cache conformance kit's harness over a candle model, with small caches.
pub struct Harness(pub perpetua_candle::Llama);

impl perpetua_kv_cache::testing::CacheHarness for Harness {
    type Cache = perpetua_candle::LlamaCache;
    type Error = perpetua_candle::CandleBackendError;

    fn new_cache(&mut self) -> Result<Self::Cache, Self::Error> {
        perpetua_generator::LanguageModel::new_cache(&self.0)
    }

    fn new_cache_with_capacity(&mut self, capacity: usize) -> Result<Self::Cache, Self::Error> {
        self.0.new_cache_with_capacity(capacity)
    }

    fn feed(
        &mut self,
        cache: &mut Self::Cache,
        tokens: &[u32],
        out: &mut Vec<f32>,
    ) -> Result<(), Self::Error> {
        perpetua_generator::LanguageModel::forward(&self.0, tokens, cache, out)
    }

    fn shift(&mut self, cache: &mut Self::Cache, start: usize, n: usize) -> Result<bool, Self::Error> {
        self.0.shift_cache(cache, start, n)?;
        Ok(true)
    }
}
