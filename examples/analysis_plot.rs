//! What moves before an EOS, on the real model: a short *traced* perpetual generation
//! (`.trace(true)`: one record per step with p(EOS), EOS information content, entropy,
//! varentropy and the top raw candidates), turned into `perpetua::analysis` rows,
//! averaged per block (from the start, and counted back from each EOS the strategy
//! avoided), and drawn as PNG and SVG charts. This is what `perpetua generate --trace
//! t.csv` followed by `perpetua analyze t.csv --out DIR` does, as library calls.
//!
//! ```text
//! cargo run --release -p perpetua-examples --features plots --example analysis_plot -- [OUT_DIR] [TOKENS]
//! ```
//! Defaults: `target/analysis-example`, 120 new tokens. Needs the model
//! (`cargo xtask fetch-model`) and the `plots` feature (plotters; text is drawn from an
//! embedded font, so no system fonts are needed). The prompt asks for one sentence, so
//! the model wants to stop early and often; `BackstepWithSchedule` keeps it writing, and
//! every EOS it drew is an event in the trace.

use std::path::PathBuf;
use std::time::Instant;

use perpetua::analysis::blocks::{BlockStats, block_means, blocks_before_eos};
use perpetua::analysis::{TraceRow, plot, trace};
use perpetua::prelude::*;

const PROMPT: &str = "Describe the sea in one sentence.";
/// Block size for the means from the start of the trace.
const BLOCK: usize = 25;
/// Block size and number of blocks counted back from each EOS event.
const BLOCK_BEFORE_EOS: usize = 5;
const BLOCKS_BEFORE_EOS: usize = 4;
/// Steps shown in the token-wise chart before the last EOS event.
const STEPS_BEFORE_EOS: usize = 30;

fn print_blocks(title: &str, blocks: &[BlockStats]) {
    println!("\n{title}\n| block | steps | p(EOS) | EOS information (bits) | entropy (nats) | varentropy |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for b in blocks {
        println!(
            "| {} | {} | {:.3e} | {:.2} | {:.3} | {:.3} |",
            b.block, b.n, b.p_eos, b.eos_information_bits, b.entropy, b.varentropy
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/analysis-example".into()));
    let tokens: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(120);

    let path = perpetua::candle::default_model_path()?;
    let model = Llama::load(&path, &LoadOptions::default())?;
    let tokenizer = LlamaTokenizer::from_gguf(&path)?;
    let chain = Chain::new(Multinomial).with(TopK::new(20)?).with(Temperature::new(1.0)?);
    let mut generator = Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(chain)
        .eos_strategy(BackstepWithSchedule::new(10)?)
        .seed(3)
        .max_new_tokens(tokens)
        .trace(true) // record every step (regenerated ones included) in `Generation::trace`
        .build()?;

    let start = Instant::now();
    let out = generator.generate(vec![ChatMessage::user(PROMPT)])?;
    println!(
        "{} new tokens in {:.1} s ({:?}), {} forward passes, {} back steps:\n{}",
        out.ids.len(),
        start.elapsed().as_secs_f64(),
        out.finish_reason,
        out.counts.forward_passes,
        out.counts.backsteps,
        out.text.trim()
    );

    // One row per forward pass, in execution order; the tokenizer gives each row its
    // token text. Trace statistics are of the model's *raw* distribution (before
    // temperature and top-k), so traces of different strategies compare.
    let tokenizer = generator.tokenizer().map(|t| t as &dyn Tokenizer);
    let rows = trace::rows_from_generation(&out, tokenizer)?;
    let events: Vec<&TraceRow> = rows.iter().filter(|r| r.is_eos_event()).collect();
    let kinds: Vec<&str> = events.iter().map(|r| r.event.as_str()).collect();
    println!("\ntrace: {} rows, {} EOS events: {}", rows.len(), events.len(), kinds.join(", "));

    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("trace.csv"); // readable back by `perpetua analyze`
    trace::write_path(&rows, &csv)?;
    let mut written = vec![csv];

    // Block means from the start, and counted back from each EOS event (averaged over
    // the events; a block never reaches back across the previous event).
    let forward = block_means(&rows, BLOCK)?;
    print_blocks(&format!("blocks of {BLOCK} steps from the start"), &forward);
    let before = blocks_before_eos(&rows, BLOCK_BEFORE_EOS, BLOCKS_BEFORE_EOS)?;
    if !before.is_empty() {
        print_blocks(&format!("blocks of {BLOCK_BEFORE_EOS} steps before EOS (−1 ends at the EOS)"), &before);
    }

    // The format follows the file extension.
    for ext in ["png", "svg"] {
        let p = dir.join(format!("blocks.{ext}"));
        plot::blocks_figure(&forward, &format!("SmolLM2-135M — blocks of {BLOCK} steps"), &p)?;
        written.push(p);
        if !before.is_empty() {
            let p = dir.join(format!("blocks_before_eos.{ext}"));
            let title = format!("SmolLM2-135M — {} EOS events, blocks of {BLOCK_BEFORE_EOS}", events.len());
            plot::blocks_figure(&before, &title, &p)?;
            written.push(p);
        }
        // Token-wise: p(EOS) and the event step's top candidates over the steps before
        // the last EOS event.
        if let Some(event) = rows.iter().rposition(TraceRow::is_eos_event) {
            let p = dir.join(format!("before_eos_tokens.{ext}"));
            plot::before_eos_figure(&rows, event, STEPS_BEFORE_EOS, 4, &p)?;
            written.push(p);
        }
    }
    println!();
    for p in written {
        println!("wrote {} ({} bytes)", p.display(), std::fs::metadata(&p)?.len());
    }
    Ok(())
}
