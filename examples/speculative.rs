//! Speculative decoding on SmolLM2-135M-Instruct: a cheap copy of the model
//! drafts for a more expensive, higher-precision copy of the same weights. Weights are
//! chosen with `SPECULATIVE_DRAFT` / `SPECULATIVE_TARGET` (see `options`; default: the
//! Q8_0 re-quantization drafts for the Q4_1 weights dequantized to f32).
//!
//! Reports, in one run, target-only decoding (before and after the speculative runs),
//! speculative decoding for several K, the acceptance rate and the speed-up.
//!
//! ```text
//! SPECULATIVE_TARGET=exact cargo run --release -p perpetua-examples --example speculative -- [new_tokens] [K,K,...]
//! ```

use std::time::Instant;

use perpetua::candle::GgmlDType;
use perpetua::prelude::*;

const PROMPT: &str = "Write a short story about a lighthouse keeper who finds a message in a bottle.";

/// Builds a fresh sampling chain.
type MakeChain = fn() -> Chain;

/// Load options by name: `q8_0` (the default load: Q4_1 re-quantized to Q8_0), `exact`
/// (the file's Q4_1 bit for bit), `f32` (Q4_1 dequantized to f32: f32 matmuls, no
/// activation quantization), `q4k` (re-quantized to Q4_K).
fn options(kind: &str) -> Result<LoadOptions, String> {
    let requantize = match kind {
        "q8_0" => Some(GgmlDType::Q8_0),
        "exact" => None,
        "f32" => Some(GgmlDType::F32),
        "q4k" => Some(GgmlDType::Q4K),
        other => return Err(format!("unknown weights {other:?}: q8_0, exact, f32 or q4k")),
    };
    Ok(LoadOptions { requantize, ..LoadOptions::default() })
}

/// Milliseconds per pass.
fn ms_per(time: std::time::Duration, passes: usize) -> f64 {
    time.as_secs_f64() * 1e3 / passes.max(1) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(128);
    let ks: Vec<usize> = match args.next() {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![2, 4, 6],
    };
    let path = perpetua::candle::default_model_path()?;
    let t0 = Instant::now();
    let draft_kind = std::env::var("SPECULATIVE_DRAFT").unwrap_or_else(|_| "q8_0".into());
    let target_kind = std::env::var("SPECULATIVE_TARGET").unwrap_or_else(|_| "f32".into());
    let draft = Llama::load(&path, &options(&draft_kind)?)?;
    let target = Llama::load(&path, &options(&target_kind)?)?;
    println!("loaded draft ({draft_kind}) and target ({target_kind}) in {:.1} s", t0.elapsed().as_secs_f64());

    let modes: [(&str, MakeChain); 2] = [
        ("greedy", || Chain::new(Greedy)),
        ("T 1.0, top-k 20", || {
            Chain::new(Multinomial)
                .with(TopK::new(20).expect("top-k"))
                .with(Temperature::new(1.0).expect("T"))
        }),
    ];
    println!("\nSmolLM2-135M-Instruct, {tokens} new tokens, chat prompt {PROMPT:?}");
    println!(
        "| mode | decoder | K | tokens | wall s | tok/s | acceptance | tokens / target pass | draft ms / pass | target ms / pass | speed-up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mode, chain) in modes {
        let mut generator = Generator::builder(&target)
            .tokenizer(LlamaTokenizer::from_gguf(&path)?)
            .chain(chain())
            .seed(7)
            .max_new_tokens(tokens)
            .build()?;
        let prompt = || vec![ChatMessage::user(PROMPT)];

        // Draft alone, for reference.
        let mut draft_only = Generator::builder(&draft)
            .tokenizer(LlamaTokenizer::from_gguf(&path)?)
            .chain(chain())
            .seed(7)
            .max_new_tokens(tokens)
            .build()?;
        let t = Instant::now();
        let d = draft_only.generate(prompt())?;
        let d_wall = t.elapsed().as_secs_f64();
        println!(
            "| {mode} | draft only ({draft_kind}) | – | {} | {d_wall:.2} | {:.1} | – | – | {:.1} | – | – |",
            d.ids.len(),
            d.ids.len() as f64 / d_wall,
            ms_per(d.timings.forward, d.counts.forward_passes)
        );

        let t = Instant::now();
        let base = generator.generate(prompt())?;
        let base_wall_1 = t.elapsed().as_secs_f64();
        let mut rows = Vec::new();
        for &k in &ks {
            let t = Instant::now();
            let out = generator.speculative(&draft, prompt(), &SpeculativeConfig::new(k))?;
            let wall = t.elapsed().as_secs_f64();
            if mode == "greedy" {
                let agree = out.generation.ids.iter().zip(&base.ids).take_while(|(a, b)| a == b).count();
                println!(
                    "  (greedy, K {k}: first {agree} of {} tokens identical to target-only greedy)",
                    base.ids.len()
                );
            }
            rows.push((k, out, wall));
        }
        let t = Instant::now();
        let base2 = generator.generate(prompt())?;
        let base_wall_2 = t.elapsed().as_secs_f64();
        let base_rate = (base.ids.len() + base2.ids.len()) as f64 / (base_wall_1 + base_wall_2);
        for (label, g, wall) in
            [("target only, first", &base, base_wall_1), ("target only, last", &base2, base_wall_2)]
        {
            println!(
                "| {mode} | {label} | – | {} | {wall:.2} | {:.1} | – | 1.00 | – | {:.1} | 1.00× |",
                g.ids.len(),
                g.ids.len() as f64 / wall,
                ms_per(g.timings.forward, g.counts.forward_passes)
            );
        }
        for (k, out, wall) in rows {
            let n = out.generation.ids.len();
            let rate = n as f64 / wall;
            println!(
                "| {mode} | speculative | {k} | {n} | {wall:.2} | {rate:.1} | {:.3} | {:.2} | {:.1} | {:.1} | {:.2}× |",
                out.stats.acceptance_rate(),
                n as f64 / out.stats.target_passes.max(1) as f64,
                ms_per(out.stats.draft_time, out.stats.draft_passes),
                ms_per(out.stats.target_time, out.stats.target_passes),
                rate / base_rate
            );
        }
    }
    Ok(())
}
