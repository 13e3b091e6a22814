//! The GGUF loader (model and tokenizer) on mutated files. Seed: the tiny llama GGUF in
//! `fuzz/seeds/gguf_load/` (written by `crates/backend-candle/tests/malformed_gguf.rs`).
//! Invariants: no panic, no abort; every failure is a typed `CandleBackendError`; a
//! model that loads runs a forward pass (error or finite-length logits).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use perpetua_candle::{Llama, LlamaTokenizer, LoadOptions};
use perpetua_generator::{LanguageModel, Tokenizer};

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("perpetua-fuzz-{}.gguf", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    // Exact weights: requantizing would dominate the time per input.
    let options = LoadOptions { cache_capacity: Some(8), ..LoadOptions::exact() };
    if let Ok(model) = Llama::load(path, &options) {
        if let Ok(mut cache) = model.new_cache() {
            let mut out = Vec::new();
            if model.forward(&[0, 1], &mut cache, &mut out).is_ok() {
                assert_eq!(out.len(), model.vocab_size());
            }
        }
    }
    if let Ok(tokenizer) = LlamaTokenizer::from_gguf(path) {
        if let Ok(ids) = tokenizer.encode("Hello, 12 worlds!", true) {
            let _ = tokenizer.decode(&ids, false);
        }
    }
});
