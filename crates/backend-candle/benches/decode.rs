//! Decode / prefill throughput of our llama forward vs candle-transformers'
//! `quantized_llama` + `LogitsProcessor` greedy loop, same binary, same flags.
//!
//! `cargo bench -p perpetua-candle --bench decode` (set `RAYON_NUM_THREADS=2` to pin
//! the thread count). Env: `PERPETUA_BENCH_TOKENS` (decode tokens per run, default
//! 128), `PERPETUA_BENCH_ROUNDS` (alternating rounds, default 3),
//! `PERPETUA_BENCH_LONG=0` to skip the position-4,000 measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::ModelWeights;
use perpetua_candle::{Attention, GgmlDType, Llama, LlamaTokenizer, LoadOptions, default_model_path};
use perpetua_generator::{ChatMessage, KvCache, LanguageModel, Tokenizer};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// (prefill tok/s, decode tok/s) of candle-transformers' greedy loop.
fn run_reference(model: &mut ModelWeights, prompt: &[u32], n: usize) -> (f64, f64, Vec<u32>) {
    model.clear_kv_cache();
    let mut lp = LogitsProcessor::new(0, None, None);
    let t = Instant::now();
    let input = Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, 0).unwrap().squeeze(0).unwrap();
    let mut next = lp.sample(&logits).unwrap();
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut out = vec![next];
    let t = Instant::now();
    for i in 0..n {
        let input = Tensor::new(&[next], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&input, prompt.len() + i).unwrap().squeeze(0).unwrap();
        next = lp.sample(&logits).unwrap();
        out.push(next);
    }
    (prefill, n as f64 / t.elapsed().as_secs_f64(), out)
}

fn run_ours(model: &Llama, prompt: &[u32], n: usize) -> (f64, f64, Vec<u32>) {
    let mut cache = model.new_cache_with_capacity(prompt.len() + n + 1).unwrap();
    let mut logits = Vec::with_capacity(model.vocab_size());
    let t = Instant::now();
    model.forward(prompt, &mut cache, &mut logits).unwrap();
    let mut next = argmax(&logits);
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut out = vec![next];
    let t = Instant::now();
    for _ in 0..n {
        model.forward(&[next], &mut cache, &mut logits).unwrap();
        next = argmax(&logits);
        out.push(next);
    }
    (prefill, n as f64 / t.elapsed().as_secs_f64(), out)
}

/// Decode tok/s for `n` tokens after the cache already holds `position` positions.
fn decode_at(model: &Llama, filler: &[u32], position: usize, n: usize) -> f64 {
    let mut cache = model.new_cache_with_capacity(position + n + 1).unwrap();
    let mut logits = Vec::new();
    while cache.seq_len() < position {
        let take = (position - cache.seq_len()).min(256);
        let start = cache.seq_len() % (filler.len() - take);
        model.forward(&filler[start..start + take], &mut cache, &mut logits).unwrap();
    }
    let mut next = argmax(&logits);
    let t = Instant::now();
    for _ in 0..n {
        model.forward(&[next], &mut cache, &mut logits).unwrap();
        next = argmax(&logits);
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let path = default_model_path().unwrap();
    if !path.exists() {
        eprintln!("model file {} is missing: run `cargo xtask fetch-model`", path.display());
        std::process::exit(1);
    }
    let n = env_usize("PERPETUA_BENCH_TOKENS", 128);
    let rounds = env_usize("PERPETUA_BENCH_ROUNDS", 3);
    println!(
        "model {}; threads {}; avx {}; decode {n} tokens; {rounds} rounds",
        path.display(),
        candle_core::utils::get_num_threads(),
        candle_core::utils::with_avx(),
    );
    let tok = LlamaTokenizer::from_gguf(&path).unwrap();
    let prompt = tok
        .apply_chat_template(
            &[ChatMessage::user("Write a book about a dog that can talk and is a detective.")],
            true,
        )
        .unwrap()
        .unwrap();
    let prompt = tok.encode(&prompt, false).unwrap();

    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut reference = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let ours = Llama::load(&path, &LoadOptions::exact()).unwrap();
    let t = Instant::now();
    let ours_q8 =
        Llama::load(&path, &LoadOptions { requantize: Some(GgmlDType::Q8_0), ..LoadOptions::default() })
            .unwrap(); // the default: Q8_0 and fused attention
    println!("load with Q8_0 repack: {:.2} s", t.elapsed().as_secs_f64());

    let mut best = [(0f64, 0f64); 3];
    for round in 0..rounds {
        let (rp, rd, rtoks) = run_reference(&mut reference, &prompt, n);
        let (op, od, otoks) = run_ours(&ours, &prompt, n);
        let (qp, qd, qtoks) = run_ours(&ours_q8, &prompt, n);
        let same = rtoks == otoks;
        let same_q8 = qtoks.iter().zip(&otoks).take_while(|(a, b)| a == b).count();
        println!(
            "round {round}: candle-transformers decode {rd:6.1} tok/s (prefill {rp:6.1}) | ours {od:6.1} tok/s (prefill {op:6.1}), same tokens: {same} | ours+Q8_0 {qd:6.1} tok/s (prefill {qp:6.1}), first {same_q8}/{} tokens as ours",
            rtoks.len()
        );
        for (b, (p, d)) in best.iter_mut().zip([(rp, rd), (op, od), (qp, qd)]) {
            b.0 = b.0.max(p);
            b.1 = b.1.max(d);
        }
    }
    let [r, o, q] = best;
    println!(
        "best of {rounds}: decode tok/s  candle-transformers {:.1} | ours {:.1} ({:.2}x) | ours+Q8_0 {:.1} ({:.2}x)",
        r.1,
        o.1,
        o.1 / r.1,
        q.1,
        q.1 / r.1
    );
    println!(
        "best of {rounds}: prefill tok/s ({} tokens) candle-transformers {:.1} | ours {:.1} | ours+Q8_0 {:.1}",
        prompt.len(),
        r.0,
        o.0,
        q.0
    );

    // Long prompt prefill.
    let text = "The detective dog sniffed the air, listened to the rain, and wrote down every clue in a small notebook. ".repeat(40);
    let long = tok.encode(&text, false).unwrap();
    let long = &long[..long.len().min(512)];
    let t = Instant::now();
    let mut cache = ours.new_cache_with_capacity(long.len()).unwrap();
    let mut logits = Vec::new();
    ours.forward(long, &mut cache, &mut logits).unwrap();
    let ours_prefill = long.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut cache = ours_q8.new_cache_with_capacity(long.len()).unwrap();
    ours_q8.forward(long, &mut cache, &mut logits).unwrap();
    let q8_prefill = long.len() as f64 / t.elapsed().as_secs_f64();
    reference.clear_kv_cache();
    let t = Instant::now();
    let input = Tensor::new(long, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    reference.forward(&input, 0).unwrap();
    let ref_prefill = long.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "prefill {} tokens: candle-transformers {ref_prefill:.1} tok/s | ours {ours_prefill:.1} | ours+Q8_0 {q8_prefill:.1}",
        long.len()
    );

    if std::env::var("PERPETUA_BENCH_LONG").as_deref() != Ok("0") {
        let filler = tok.encode(&text.repeat(3), false).unwrap();
        let q8_reference_attention =
            Llama::load(&path, &LoadOptions { attention: Attention::Reference, ..LoadOptions::default() })
                .unwrap();
        for (name, model) in [
            ("ours (exact: Q4_1, reference attention)", &ours),
            ("ours+Q8_0, reference attention", &q8_reference_attention),
            ("ours+Q8_0, fused attention (default)", &ours_q8),
        ] {
            let at100 = decode_at(model, &filler, 100, 32);
            let at4000 = decode_at(model, &filler, 4000, 32);
            println!(
                "{name}: decode at position 100 {at100:.1} tok/s, at 4000 {at4000:.1} tok/s ({:.0}%)",
                100.0 * at4000 / at100
            );
        }
    }
}
