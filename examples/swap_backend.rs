//! Swapping the model implementation: the generation code is written once, generic over
//! `M: LanguageModel`, and run on two implementations of the candle backend — the
//! default load (weights re-quantized to Q8_0, the fused CPU attention kernel) and
//! `LoadOptions::exact()` (the file's weights bit for bit, candle's reference attention,
//! logits identical to candle-transformers). Greedy decoding, so the two texts agree
//! until the small numeric differences (8-bit re-quantized weights, another summation
//! order) flip a near-tie between the two best tokens; from there each is a fluent
//! continuation of its own.
//!
//! ```text
//! cargo run --release -p perpetua-examples --example swap_backend -- [TOKENS]
//! ```
//! Default: 60 new tokens. Needs the model (`cargo xtask fetch-model`).
//!
//! Other backends slot in the same way: anything implementing `LanguageModel` (and a
//! `Tokenizer`) goes through `run` unchanged. Built with `--features burn` (or
//! `burn-flex`), the example runs a third time on the burn backend
//! (`perpetua::burn::Llama`, f32 weights on burn's CPU backend):
//!
//! ```text
//! cargo run --release -p perpetua-examples --features burn-flex --example swap_backend
//! ```
//!
//! For candle the device is chosen by Cargo features and `LoadOptions`: build with `--features cuda` (or `metal`) and load
//! with `LoadOptions { device: perpetua::candle::Device::new_cuda(0)?, ..LoadOptions::default() }`
//! (`Device::new_metal(0)?` on macOS); the CPU is the default.

use std::time::Instant;

use perpetua::prelude::*;

const PROMPT: &str = "Explain in three sentences why the sky is blue.";

/// Everything after loading, written once for any backend: build a generator with a
/// greedy chain and generate. `M` only needs to be a [`LanguageModel`]; its cache type
/// and error type come with it. (`&M` and `Arc<M>` are `LanguageModel`s too, so one
/// loaded model can serve several generators.)
fn run<M: LanguageModel>(
    label: &str,
    model: M,
    tokenizer: impl Tokenizer + Send + 'static,
    max_new_tokens: usize,
) -> Result<Generation, GenerateError> {
    let mut generator = Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(Chain::new(Greedy)) // deterministic: the outputs are comparable
        .max_new_tokens(max_new_tokens)
        .build()?;
    let out = generator.generate(vec![ChatMessage::user(PROMPT)])?;
    println!(
        "[{label}] {} tokens ({:?}), {:.1} tok/s decode:\n{}\n",
        out.ids.len(),
        out.finish_reason,
        out.decode_tokens_per_second(),
        out.text.trim()
    );
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tokens: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(60);
    let path = perpetua::candle::default_model_path()?;

    // One implementation: Q8_0 weights, fused attention (the default; fastest on CPU).
    let t = Instant::now();
    let fast = Llama::load(&path, &LoadOptions::default())?;
    println!("loaded default (Q8_0, fused attention) in {:.2} s", t.elapsed().as_secs_f64());
    let a = run("default", fast, LlamaTokenizer::from_gguf(&path)?, tokens)?;

    // The other: the reference path, bit-identical to candle-transformers.
    let t = Instant::now();
    let exact = Llama::load(&path, &LoadOptions::exact())?;
    println!("loaded exact (file's Q4_1, reference attention) in {:.2} s", t.elapsed().as_secs_f64());
    let b = run("exact", exact, LlamaTokenizer::from_gguf(&path)?, tokens)?;

    #[cfg(any(feature = "burn", feature = "burn-flex"))]
    {
        // A third implementation on another tensor library: burn, f32 weights, on the
        // device `LoadOptions::default()` picks (the enabled CPU backend here).
        let t = Instant::now();
        let burn = perpetua::burn::Llama::load(&path, &perpetua::burn::LoadOptions::default())?;
        println!("loaded burn ({:?}, f32) in {:.2} s", burn.device(), t.elapsed().as_secs_f64());
        let c = run("burn", burn, LlamaTokenizer::from_gguf(&path)?, tokens)?;
        let same = b.ids.iter().zip(&c.ids).take_while(|(x, y)| x == y).count();
        println!("burn vs exact: first {same} tokens identical");
    }

    // Same model, slightly different numbers: the greedy paths agree until a near-tie
    // between the two best tokens flips (if it ever does), then go their own ways.
    let same = a.ids.iter().zip(&b.ids).take_while(|(x, y)| x == y).count();
    println!(
        "first {same} of {} / {} tokens identical; texts {}",
        a.ids.len(),
        b.ids.len(),
        if a.text == b.text { "equal" } else { "differ" }
    );
    Ok(())
}
