//! The 8-bit KV cache (`KvDtype::Q8`) on the real model: what it costs against the
//! default f16 cache, in logits after a long prompt and in greedy text, and that the
//! reference attention reads it too (decoded to f32) with the same result as the fused
//! kernel up to float rounding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use perpetua_candle::{Attention, GgmlDType, KvDtype, Llama, LlamaTokenizer, LoadOptions};
use perpetua_generator::{ChatMessage, LanguageModel, Tokenizer};

fn load(kv_dtype: KvDtype) -> Llama {
    Llama::load(common::model_path(), &LoadOptions { kv_dtype, ..LoadOptions::default() }).unwrap()
}

/// Greedy continuation of `prompt`: `n` tokens.
fn greedy(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache().unwrap();
    let mut logits = Vec::new();
    model.forward(prompt, &mut cache, &mut logits).unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = common::argmax(&logits);
        out.push(t);
        model.forward(&[t], &mut cache, &mut logits).unwrap();
    }
    out
}

#[test]
fn q8_cache_stays_close_to_the_f16_cache() {
    let tok = LlamaTokenizer::from_gguf(common::model_path()).unwrap();
    let story = "Rex followed the smell of oil past the fish market, through the churchyard and along \
                 the canal, where the barges slept under the bridges of the old town. "
        .repeat(8);
    let long = tok.encode_ids(&story, false).unwrap();
    assert!(long.len() > 250, "{} tokens", long.len());
    let f16 = load(KvDtype::F16);
    let q8 = load(KvDtype::Q8);

    let last = |model: &Llama| {
        let mut cache = model.new_cache().unwrap();
        let mut logits = Vec::new();
        model.forward(&long, &mut cache, &mut logits).unwrap();
        logits
    };
    let (a, b) = (last(&f16), last(&q8));
    let diff = common::max_abs_diff(&a, &b);
    let range =
        a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) - a.iter().fold(f32::INFINITY, |m, &x| m.min(x));
    println!("after {} tokens: max |Δ logit| q8 vs f16 = {diff:e} (logit range {range:.1})", long.len());
    // Measured 0.68 of a 29.8 logit range (Q8_0 weights against the file's Q4_1 move
    // logits by about as much).
    assert!(diff < 1.5, "max |Δ logit| = {diff}");
    assert_eq!(common::argmax(&a), common::argmax(&b));

    let text = tok.render_chat(
        &[ChatMessage::user("Write a book about a dog that can talk and is a detective.")],
        true,
    );
    let prompt = tok.encode(&text.unwrap().unwrap(), false).unwrap();
    let (ga, gb) = (greedy(&f16, &prompt, 64), greedy(&q8, &prompt, 64));
    let same = ga.iter().zip(&gb).take_while(|(x, y)| x == y).count();
    println!("greedy, 64 tokens: q8 agrees with f16 on the first {same}");
    println!("f16: {}", tok.decode(&ga, true).unwrap());
    println!("q8:  {}", tok.decode(&gb, true).unwrap());
    assert!(same >= 16, "q8 greedy text left f16's after {same} tokens");
}

#[test]
fn reference_attention_reads_the_q8_cache() {
    let tok = LlamaTokenizer::from_gguf(common::model_path()).unwrap();
    let ids =
        tok.encode_ids("The detective dog sniffed the rain-soaked alley and barked twice.", false).unwrap();
    let run = |attention| {
        // f32 weights: with quantized ones, the two attention paths' ulp differences
        // grow into logit differences of ~0.5 whatever the cache (measured 0.82 with f16).
        let options = LoadOptions {
            kv_dtype: KvDtype::Q8,
            attention,
            requantize: Some(GgmlDType::F32),
            ..LoadOptions::default()
        };
        let model = Llama::load(common::model_path(), &options).unwrap();
        let mut cache = model.new_cache().unwrap();
        let mut logits = Vec::new();
        model.forward(&ids, &mut cache, &mut logits).unwrap();
        model.forward(&[common::argmax(&logits)], &mut cache, &mut logits).unwrap();
        logits
    };
    let diff = common::max_abs_diff(&run(Attention::Fused), &run(Attention::Reference));
    println!("q8 cache, fused vs reference attention: max |Δ logit| = {diff:e}");
    // Measured 6.5e-2 (f16 cache: 1.6e-3). Both paths decode the same codes, but the
    // ulp differences of earlier layers reach the next layers' keys and values, where
    // they now and then move a value across a code boundary: one Q8 step is up to 1/127
    // of its row's largest value, one f16 step 1/2048 of the value. A decoding error
    // (a lost scale or zero point) would be off by whole logits.
    assert!(diff < 0.25, "max |Δ logit| = {diff}");
}
