//! Tokenizer decoding of arbitrary id sequences (in and out of the vocabulary, special
//! tokens, split UTF-8) on the real SmolLM2 tokenizer, through both `decode` and the
//! generator's `IncrementalDecoder`. Needs the default model (`cargo xtask
//! fetch-model`). Invariants: no panic; out-of-vocabulary ids are errors or skipped,
//! never a crash; incremental text equals the one-shot decode of in-vocabulary ids.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use perpetua_candle::LlamaTokenizer;
use perpetua_generator::{IncrementalDecoder, Tokenizer};

fn tokenizer() -> &'static LlamaTokenizer {
    static TOKENIZER: OnceLock<LlamaTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = perpetua_candle::default_model_path().expect("model path");
        LlamaTokenizer::from_gguf(path).expect("run `cargo xtask fetch-model` first")
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tokenizer();
    // Two bytes per id: ids up to 65,535 cover the 49,152-token vocabulary and beyond.
    let ids: Vec<u32> = data.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
    for skip in [false, true] {
        let _ = t.decode(&ids, skip);
    }
    let known: Vec<u32> = ids.iter().copied().filter(|&id| t.token_bytes(id).is_some()).collect();
    let mut dec = IncrementalDecoder::new();
    for &id in &known {
        if let Some(bytes) = t.token_bytes(id) {
            dec.push(&bytes);
        }
    }
    dec.finish();
    let one_shot = t.decode(&known, false).expect("in-vocabulary ids decode");
    assert_eq!(dec.text(), one_shot, "incremental and one-shot decoding differ for {known:?}");
    // Back steps: truncating the decoder to any token count must not panic.
    if let Some(&n) = data.first() {
        dec.truncate_tokens(usize::from(n) % (known.len() + 1));
        let _ = dec.text();
    }
});
