//! A long perpetual run on the real model with the context rolling, reporting memory as
//! it goes: resident set (VmRSS) and its peak (VmHWM) from `/proc/self/status` every
//! 1,000 tokens, so a flat line is visible rather than claimed.
//!
//! ```text
//! cargo run --release -p perpetua-examples --example long_run -- [TOKENS] [WINDOW] [SEED] [shift|reprefill]
//! ```
//! Defaults: 20,000 new tokens, context window 8,192 (SmolLM2's full context), seed 1,
//! rolls by shifting the cache (`ContextRoll::Shift`; `reprefill` re-prefills instead);
//! strategy `BackstepWithSchedule` (back step 10, peak 2× base), T 1.0 / top-k 20.

use std::time::Instant;

use perpetua::prelude::*;

/// `(VmRSS, VmHWM)` in MiB, from `/proc/self/status` (Linux); `(0, 0)` elsewhere.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn arg(i: usize, default: u64) -> u64 {
    std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tokens = arg(1, 20_000) as usize;
    let window = arg(2, 8_192) as usize;
    let seed = arg(3, 1);
    let roll = match std::env::args().nth(4).as_deref() {
        None | Some("shift") => ContextRoll::Shift,
        Some("reprefill") => ContextRoll::Reprefill,
        Some(other) => {
            return Err(format!("the 4th argument is `shift` or `reprefill`, not `{other}`").into());
        }
    };
    let path = perpetua::candle::default_model_path()?;
    let model = Llama::load(&path, &LoadOptions::default())?;
    let tokenizer = LlamaTokenizer::from_gguf(&path)?;
    let (rss, _) = memory_mib();
    println!("model loaded: RSS {rss:.0} MiB; {tokens} tokens, window {window}, seed {seed}, roll {roll:?}");
    let chain = Chain::new(Multinomial).with(TopK::new(20)?).with(Temperature::new(1.0)?);
    let mut generator = Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(chain)
        .eos_strategy(BackstepWithSchedule::new(10)?)
        .seed(seed)
        .max_new_tokens(tokens)
        .context_window(window)
        .context_roll(roll)
        .build()?;

    println!(
        "| new tokens | cache positions | rolls | EOS events | RSS MiB | peak RSS MiB | tok/s (last 1,000) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut last = (Instant::now(), 0usize);
    let (mut rolls, mut events, mut next_report) = (0usize, 0usize, 1_000usize);
    let mut samples = Vec::new();
    let mut stream = generator
        .stream(vec![ChatMessage::user("Write a book about a dog that can talk and is a detective.")])?;
    while let Some(event) = stream.next() {
        match event? {
            Event::ContextRolled { .. } => rolls += 1,
            Event::Backstep { .. } | Event::EosAvoided { .. } => events += 1,
            Event::Token { .. } => {
                let n = stream.generated_ids().len();
                if n >= next_report {
                    let (rss, hwm) = memory_mib();
                    let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    println!(
                        "| {n} | {} | {rolls} | {events} | {rss:.0} | {hwm:.0} | {rate:.1} |",
                        stream.cache_len()
                    );
                    samples.push((n, rss));
                    last = (Instant::now(), n);
                    next_report += 1_000;
                }
            }
            _ => {}
        }
    }
    let out = stream.into_output();
    let (rss, hwm) = memory_mib();
    println!(
        "\n{} new tokens ({:?}) in {:.1} min: {} forward passes, {} back steps, {} context rolls \
         ({:.2} s rolling, {} tokens re-prefilled), final RSS {rss:.0} MiB, peak {hwm:.0} MiB",
        out.ids.len(),
        out.finish_reason,
        start.elapsed().as_secs_f64() / 60.0,
        out.counts.forward_passes,
        out.counts.backsteps,
        out.counts.context_rolls,
        out.timings.roll.as_secs_f64(),
        out.counts.reprefilled_tokens,
    );
    // Flatness after the cache first filled: RSS spread over the samples past the window.
    let after: Vec<f64> = samples.iter().filter(|(n, _)| *n > window).map(|(_, r)| *r).collect();
    if let (Some(lo), Some(hi)) =
        (after.iter().copied().reduce(f64::min), after.iter().copied().reduce(f64::max))
    {
        println!("RSS after the first {window} tokens: {lo:.0}..{hi:.0} MiB (spread {:.0} MiB)", hi - lo);
    }
    Ok(())
}
