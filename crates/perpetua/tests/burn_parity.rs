//! Issue 7 acceptance on the real model (SmolLM2-135M-Instruct Q4_1): the burn model's
//! logits equal the candle backend's with `f32` weights within 1e-3 on three prompts
//! (after the prefill and after one decode step), and 64 greedy tokens are identical.
//!
//! Needs the model (`cargo xtask fetch-model`; the README test command fetches it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use perpetua_candle::{Attention, GgmlDType, KvDtype};
use perpetua_generator::{ChatMessage, KvCache, LanguageModel};

const TOLERANCE: f32 = 1e-3;

fn model_path() -> PathBuf {
    let path = perpetua_burn::default_model_path().unwrap();
    assert!(path.is_file(), "model missing at {}: run `cargo xtask fetch-model`", path.display());
    path
}

/// The reference: the candle backend with every matrix dequantized to f32, an f32 KV
/// cache and candle's own matmuls for attention.
fn candle_f32(path: &PathBuf) -> perpetua_candle::Llama {
    let options = perpetua_candle::LoadOptions {
        requantize: Some(GgmlDType::F32),
        attention: Attention::Reference,
        kv_dtype: KvDtype::F32,
        cache_capacity: Some(512),
        ..perpetua_candle::LoadOptions::default()
    };
    perpetua_candle::Llama::load(path, &options).unwrap()
}

fn burn(path: &PathBuf) -> perpetua_burn::Llama {
    let options = perpetua_burn::LoadOptions { cache_capacity: Some(512), ..Default::default() };
    let model = perpetua_burn::Llama::load(path, &options).unwrap();
    println!("burn device: {:?}", model.device());
    model
}

/// The kv-cache kit's difference (`inf` for different lengths or a NaN), without the index.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    perpetua_kv_cache::testing::max_abs_diff(a, b).0
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn logits_match_the_candle_backend_in_f32_on_three_prompts() {
    let path = model_path();
    let (reference, model) = (candle_f32(&path), burn(&path));
    let tokenizer = perpetua_burn::LlamaTokenizer::from_gguf(&path).unwrap();
    let prompts = [
        "The capital of France is",
        "fn main() {\n    let v: Vec<u32> = (1..=10).map(|x| x * x).collect();",
        "Once upon a time, in a city of 1,234,567 people, a dog 🐕 learned to talk.",
    ];
    for prompt in prompts {
        let ids = tokenizer.encode_ids(prompt, false).unwrap();
        let (mut c_cache, mut b_cache) = (reference.new_cache().unwrap(), model.new_cache().unwrap());
        let (mut c_logits, mut b_logits) = (Vec::new(), Vec::new());
        reference.forward(&ids, &mut c_cache, &mut c_logits).unwrap();
        model.forward(&ids, &mut b_cache, &mut b_logits).unwrap();
        let prefill = max_abs_diff(&c_logits, &b_logits);
        // One decode step on top of the prefilled cache.
        let next = argmax(&c_logits);
        assert_eq!(next, argmax(&b_logits), "{prompt:?}: different argmax after the prefill");
        reference.forward(&[next], &mut c_cache, &mut c_logits).unwrap();
        model.forward(&[next], &mut b_cache, &mut b_logits).unwrap();
        let decode = max_abs_diff(&c_logits, &b_logits);
        println!("{prompt:?} ({} tokens): max |Δ| prefill {prefill:.2e}, decode {decode:.2e}", ids.len());
        assert!(prefill <= TOLERANCE, "{prompt:?}: prefill logits differ by {prefill}");
        assert!(decode <= TOLERANCE, "{prompt:?}: decode logits differ by {decode}");
    }
}

/// A prompt longer than two [`perpetua_burn::PREFILL_ROWS`] chunks: `forward` runs it in
/// three batched passes, `forward_all` returns every row of them, and both still match
/// the candle backend (which attends row by row).
#[test]
fn a_prompt_of_several_prefill_chunks_matches_the_candle_backend() {
    let path = model_path();
    let (reference, model) = (candle_f32(&path), burn(&path));
    let tokenizer = perpetua_burn::LlamaTokenizer::from_gguf(&path).unwrap();
    let text = "Rex followed the smell of oil past the fish market and along the canal. ".repeat(20);
    let ids = tokenizer.encode_ids(&text, false).unwrap();
    assert!(ids.len() > 2 * perpetua_burn::PREFILL_ROWS, "{} tokens", ids.len());
    let (mut c_cache, mut b_cache) = (reference.new_cache().unwrap(), model.new_cache().unwrap());
    let (mut c_logits, mut b_logits) = (Vec::new(), Vec::new());
    reference.forward(&ids, &mut c_cache, &mut c_logits).unwrap();
    model.forward(&ids, &mut b_cache, &mut b_logits).unwrap();
    assert_eq!(b_cache.seq_len(), ids.len());
    let last = max_abs_diff(&c_logits, &b_logits);

    // forward_all: rows of every chunk, in order; the last row is forward's logits.
    let mut all = Vec::new();
    let mut fresh = model.new_cache().unwrap();
    model.forward_all(&ids, &mut fresh, &mut all).unwrap();
    let vocab = model.vocab_size();
    assert_eq!(all.len(), ids.len() * vocab);
    let all_last = max_abs_diff(&all[(ids.len() - 1) * vocab..], &b_logits);
    // A row inside the second chunk against candle fed up to that position.
    let row = perpetua_burn::PREFILL_ROWS + 7;
    let mut c_row_cache = reference.new_cache().unwrap();
    reference.forward(&ids[..=row], &mut c_row_cache, &mut c_logits).unwrap();
    let middle = max_abs_diff(&all[row * vocab..(row + 1) * vocab], &c_logits);
    println!(
        "{} tokens: max |Δ| last {last:.2e}, forward_all last vs forward {all_last:.2e}, row {row} {middle:.2e}",
        ids.len()
    );
    assert!(last <= TOLERANCE && middle <= TOLERANCE, "last {last}, row {row} {middle}");
    assert!(all_last <= TOLERANCE, "forward_all's last row differs from forward by {all_last}");
}

#[test]
fn greedy_64_tokens_are_identical_to_the_candle_backend() {
    let path = model_path();
    let (reference, model) = (candle_f32(&path), burn(&path));
    let tokenizer = perpetua_burn::LlamaTokenizer::from_gguf(&path).unwrap();
    let prompt = tokenizer
        .render_chat(&[ChatMessage::user("Write a book about a dog that can talk and is a detective.")], true)
        .expect("the GGUF has a chat template")
        .unwrap();
    let prompt = tokenizer.encode_ids(&prompt, false).unwrap();

    let c_ids = greedy(&reference, &prompt, 64);
    let b_ids = greedy(&model, &prompt, 64);
    println!("candle f32: {:?}", tokenizer.decode_ids(&c_ids, false).unwrap());
    println!("burn:       {:?}", tokenizer.decode_ids(&b_ids, false).unwrap());
    assert_eq!(c_ids.len(), 64);
    assert_eq!(c_ids, b_ids);
}

/// `n` greedy tokens after `prompt` (argmax, no stopping).
fn greedy<M: LanguageModel>(model: &M, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache().unwrap();
    let mut logits = Vec::new();
    model.forward(prompt, &mut cache, &mut logits).unwrap();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let next = argmax(&logits);
        ids.push(next);
        model.forward(&[next], &mut cache, &mut logits).unwrap();
    }
    ids
}

/// A context shift on both backends: the burn cache shifted in place reads
/// the same next-token logits as the candle cache shifted in place (candle's rotation
/// is checked against a fresh prefill in its `cache_shift` test).
#[test]
fn a_shifted_cache_matches_the_candle_backend() {
    let path = model_path();
    let (reference, model) = (candle_f32(&path), burn(&path));
    let tokenizer = perpetua_burn::LlamaTokenizer::from_gguf(&path).unwrap();
    let ids = tokenizer
        .encode_ids(
            "Once upon a time, in a village by the sea, a small dog named Rex found a brass key and",
            false,
        )
        .unwrap();
    let (sink, drop) = (4, 9);
    let next = ids[ids.len() - 1];
    let head = &ids[..ids.len() - 1];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut ca = reference.new_cache().unwrap();
    let mut cb = model.new_cache().unwrap();
    reference.forward(head, &mut ca, &mut a).unwrap();
    model.forward(head, &mut cb, &mut b).unwrap();
    assert!(LanguageModel::shift_cache(&reference, &mut ca, sink, drop).unwrap());
    assert!(LanguageModel::shift_cache(&model, &mut cb, sink, drop).unwrap());
    assert_eq!((ca.seq_len(), cb.seq_len()), (head.len() - drop, head.len() - drop));
    reference.forward(&[next], &mut ca, &mut a).unwrap();
    model.forward(&[next], &mut cb, &mut b).unwrap();
    let diff = max_abs_diff(&a, &b);
    println!("after a shift of {drop} positions: max |Δ logit| burn vs candle = {diff:e}");
    assert!(diff <= TOLERANCE, "{diff}");
    // And the shift changed something: without it the logits differ.
    let mut fresh = model.new_cache().unwrap();
    let mut c = Vec::new();
    model.forward(&ids, &mut fresh, &mut c).unwrap();
    assert!(max_abs_diff(&b, &c) > 10.0 * TOLERANCE);
}
