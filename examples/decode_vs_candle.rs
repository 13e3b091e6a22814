//! Decode and prefill speed of the burn backend against the candle backend, in one
//! process on the same model file (the numbers in docs/PERFORMANCE.md, "burn backend").
//!
//! ```text
//! cargo run --release -p perpetua-examples --features burn --example decode_vs_candle -- [--rounds 3] [--new-tokens 64] \
//!     [--position 1000] [--contenders candle,candle-f32,burn]
//! ```
//!
//! Contenders, each through the same `Generator` (greedy, EOS never ends a run); the
//! first listed is the baseline of the ratios:
//! - `candle` — the candle backend's defaults (Q8_0 weights, f16 KV cache, fused
//!   attention);
//! - `candle-kv32` — the same with an f32 KV cache (the default before the f16 cache);
//! - `candle-q8` — the same with the 8-bit KV cache (`KvDtype::Q8`);
//! - `candle-f32` — the candle backend with f32 weights, an f32 KV cache and reference
//!   attention: the
//!   parity reference of the burn backend, doing the same arithmetic in f32;
//! - `burn` — `perpetua-burn` on `Device::default()` (burn's ndarray CPU backend, the
//!   `burn` feature);
//! - `burn-flex` — the same on `Device::flex()` (needs `--features burn-flex`).
//!
//! Each round runs every contender once, in rotating order, so drift of the machine
//! hits all of them; the report is the median over rounds and the ratio of every
//! contender to `candle`. A run prefills the chat prompt, then decodes `--new-tokens`
//! tokens; `--position P` adds a run that fills the cache with `P` tokens first and
//! times 16 decode steps there.

use std::path::Path;

use perpetua::generator::{
    ChatMessage, FinishReason, Generation, Generator, LanguageModel, Prompt, Tokenizer,
};
use perpetua::perpetual::StopAtEos;
use perpetua::sampling::Chain;
use perpetua::sampling::samplers::Greedy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `(prefill tok/s, decode tok/s)` of one greedy run of exactly `n` tokens.
fn run<M: LanguageModel>(
    model: &M,
    tok: &perpetua::burn::LlamaTokenizer,
    prompt: &[u32],
    n: usize,
) -> Result<(f64, f64), BoxError> {
    let mut generator = Generator::builder(model)
        .tokenizer(tok.clone())
        .chain(Chain::new(Greedy))
        .eos_strategy(StopAtEos)
        .min_new_tokens(n)
        .max_new_tokens(n)
        .build()?;
    let g: Generation = generator.generate(Prompt::Ids(prompt.to_vec()))?;
    if g.finish_reason != FinishReason::MaxNewTokens || g.ids.len() != n {
        return Err(format!("run ended early: {:?} after {} tokens", g.finish_reason, g.ids.len()).into());
    }
    Ok((g.prefill_tokens_per_second(), g.decode_tokens_per_second()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Args {
    rounds: usize,
    new_tokens: usize,
    position: Option<usize>,
    contenders: Vec<String>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        rounds: 3,
        new_tokens: 64,
        position: None,
        contenders: ["candle", "candle-f32", "burn"].map(String::from).to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rounds" => args.rounds = value.parse()?,
            "--new-tokens" => args.new_tokens = value.parse()?,
            "--position" => args.position = Some(value.parse()?),
            "--contenders" => args.contenders = value.split(',').map(String::from).collect(),
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    if args.rounds == 0 || args.new_tokens == 0 {
        return Err("--rounds and --new-tokens must be positive".into());
    }
    if let Some(bad) = args.contenders.iter().find(|c| !CONTENDERS.contains(&c.as_str())) {
        return Err(format!("unknown contender `{bad}` (known: {})", CONTENDERS.join(", ")).into());
    }
    Ok(args)
}

const CONTENDERS: [&str; 6] = ["candle", "candle-kv32", "candle-q8", "candle-f32", "burn", "burn-flex"];

enum Contender {
    Candle(Box<perpetua::candle::Llama>),
    Burn(Box<perpetua::burn::Llama>),
}

fn load(name: &str, path: &Path, capacity: usize) -> Result<Contender, BoxError> {
    Ok(match name {
        "candle" => Contender::Candle(Box::new(perpetua::candle::Llama::load(
            path,
            &perpetua::candle::LoadOptions { cache_capacity: Some(capacity), ..Default::default() },
        )?)),
        "candle-kv32" | "candle-q8" => {
            let kv_dtype = if name == "candle-q8" {
                perpetua::candle::KvDtype::Q8
            } else {
                perpetua::candle::KvDtype::F32
            };
            let options = perpetua::candle::LoadOptions {
                cache_capacity: Some(capacity),
                kv_dtype,
                ..Default::default()
            };
            Contender::Candle(Box::new(perpetua::candle::Llama::load(path, &options)?))
        }
        "candle-f32" => Contender::Candle(Box::new(perpetua::candle::Llama::load(
            path,
            &perpetua::candle::LoadOptions {
                cache_capacity: Some(capacity),
                requantize: Some(perpetua::candle::GgmlDType::F32),
                attention: perpetua::candle::Attention::Reference,
                kv_dtype: perpetua::candle::KvDtype::F32,
                ..Default::default()
            },
        )?)),
        #[cfg(feature = "burn-flex")]
        "burn-flex" => Contender::Burn(Box::new(perpetua::burn::Llama::load(
            path,
            &perpetua::burn::LoadOptions {
                cache_capacity: Some(capacity),
                device: perpetua::burn::Device::flex(),
                ..Default::default()
            },
        )?)),
        #[cfg(not(feature = "burn-flex"))]
        "burn-flex" => return Err("the `burn-flex` contender needs `--features burn-flex`".into()),
        _ => Contender::Burn(Box::new(perpetua::burn::Llama::load(
            path,
            &perpetua::burn::LoadOptions { cache_capacity: Some(capacity), ..Default::default() },
        )?)),
    })
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let path = perpetua::burn::default_model_path()?;
    if !path.is_file() {
        return Err(format!("model missing at {}: run `cargo xtask fetch-model`", path.display()).into());
    }
    let tok = perpetua::burn::LlamaTokenizer::from_gguf(&path)?;
    let text = tok
        .render_chat(&[ChatMessage::user("Write a book about a dog that can talk and is a detective.")], true)
        .ok_or("the model has no chat template")??;
    let prompt = tok.encode(&text, false)?;
    let long: Option<Vec<u32>> = args.position.map(|p| {
        let piece = tok.encode_ids("Rex followed the smell of oil past the fish market, through the churchyard and along the canal. ", false);
        let piece = piece.unwrap_or_default();
        piece.iter().copied().cycle().take(p).collect()
    });
    let capacity = prompt.len() + args.new_tokens + args.position.unwrap_or(0) + 32;

    let names = &args.contenders;
    let models: Vec<Contender> = names.iter().map(|n| load(n, &path, capacity)).collect::<Result<_, _>>()?;
    let mut prefill = vec![Vec::new(); names.len()];
    let mut decode = vec![Vec::new(); names.len()];
    let mut far = vec![Vec::new(); names.len()];
    for round in 0..args.rounds {
        for k in 0..names.len() {
            let i = (k + round) % names.len();
            let (p, d) = match &models[i] {
                Contender::Candle(m) => run(m.as_ref(), &tok, &prompt, args.new_tokens)?,
                Contender::Burn(m) => run(m.as_ref(), &tok, &prompt, args.new_tokens)?,
            };
            prefill[i].push(p);
            decode[i].push(d);
            if let Some(long) = &long {
                let (_, d) = match &models[i] {
                    Contender::Candle(m) => run(m.as_ref(), &tok, long, 16)?,
                    Contender::Burn(m) => run(m.as_ref(), &tok, long, 16)?,
                };
                far[i].push(d);
            }
            eprintln!("round {round}: {} done", names[i]);
        }
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "<unset>".into());
    println!(
        "prompt {} tokens, {} decode steps, {} rounds (medians), RAYON_NUM_THREADS={threads}",
        prompt.len(),
        args.new_tokens,
        args.rounds
    );
    let far_col = args
        .position
        .map(|p| format!(" decode tok/s at {p} | ratio | at {p} ÷ after the prompt |"))
        .unwrap_or_default();
    let far_sep = if args.position.is_some() { "---|---|---|" } else { "" };
    println!("ratios: to `{}`, same run", names[0]);
    println!("| contender | prefill tok/s | ratio | decode tok/s | ratio |{far_col}");
    println!("|---|---|---|---|---|{far_sep}");
    let (p0, d0) = (median(prefill[0].clone()), median(decode[0].clone()));
    let f0 = if far[0].is_empty() { 0.0 } else { median(far[0].clone()) };
    for (i, name) in names.iter().enumerate() {
        let (p, d) = (median(prefill[i].clone()), median(decode[i].clone()));
        let far_cells = if far[i].is_empty() {
            String::new()
        } else {
            let f = median(far[i].clone());
            format!(" {f:.1} | {:.2}× | {:.0} % |", f / f0, 100.0 * f / d)
        };
        println!("| {name} | {p:.1} | {:.2}× | {d:.1} | {:.2}× |{far_cells}", p / p0, d / d0);
    }
    Ok(())
}
