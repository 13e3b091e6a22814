//! Streaming on the real model: print each token's text the moment it is generated,
//! in the recommended perpetual mode (`PerpetualMode::recommended()`: where the model
//! ends its answer or its text goes stale, it starts a new answer to the prompt from the
//! prompt alone; a repetition loop is cut like an EOS; DRY against verbatim repeats),
//! then the finish reason and the throughput.
//!
//! ```text
//! cargo run --release -p perpetua-examples --example streaming -- [TOKENS] [SEED] [PROMPT]
//! ```
//! Defaults: 100 new tokens, seed 7, a prompt the model answers in a few lines (so it
//! draws EOS early and the strategy has work to do). Needs the model
//! (`cargo xtask fetch-model`).
//!
//! `Generator::stream` returns an iterator of `Event`s: `Token` carries the text the
//! token released (whole UTF-8 characters only), `Backstep` says how much of the text
//! streamed so far is still valid (and whether an EOS or a loop caused it), `Finished` ends the stream with the reason and any
//! text still held back. A terminal cannot take text back, so a back step is shown as a
//! marker and the regenerated text follows it; the `shown` buffer below applies the
//! back steps exactly and ends equal to `Generation::text`.

use std::io::Write;

use perpetua::prelude::*;

const PROMPT: &str = "Write a haiku about a lighthouse.";

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> &str {
    let start = text.char_indices().rev().nth(n.saturating_sub(1)).map_or(0, |(i, _)| i);
    &text[start..]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let seed: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(7);
    let prompt = args.next().unwrap_or_else(|| PROMPT.to_string());

    let path = perpetua::candle::default_model_path()?;
    let model = Llama::load(&path, &LoadOptions::default())?;
    let tokenizer = LlamaTokenizer::from_gguf(&path)?;
    let chain = Chain::new(Multinomial).with(TopK::new(20)?).with(Temperature::new(1.0)?);
    let mut generator = Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(chain)
        .perpetual(PerpetualMode::recommended())
        .seed(seed)
        .max_new_tokens(tokens)
        .build()?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "> {prompt}\n")?;
    // The prompt is encoded (chat template) and prefilled here; tokens come as we pull.
    let mut stream = generator.stream(vec![ChatMessage::user(prompt)])?;
    let mut shown = String::new(); // the text as it stands after every back step
    let mut reason = None;
    // `by_ref`: keep the stream to take its `Generation` (counts, timings) afterwards.
    // An error ends the stream with `GenerateError::PartialGeneration` (the output so
    // far); `?` just reports it here.
    for event in stream.by_ref() {
        match event? {
            Event::Token { text, .. } => {
                write!(stdout, "{text}")?;
                stdout.flush()?; // line-buffered otherwise: show each token now
                shown.push_str(&text);
            }
            Event::Backstep { from, to, text_len, cause } => {
                // Tokens `to..from` were removed (from the cache too); keep the first
                // `text_len` bytes of the streamed text.
                shown.truncate(text_len);
                let why = match cause {
                    BackstepCause::Eos => "EOS drawn",
                    _ => "loop cut",
                };
                write!(
                    stdout,
                    " ⟲[{why}: back {} tokens, resuming after …{:?}] ",
                    from - to,
                    tail(&shown, 20)
                )?;
            }
            Event::EosAvoided { .. } => write!(stdout, " ⟲[EOS avoided] ")?,
            // The model ended its answer (or went stale): a new answer follows, after a
            // paragraph break that comes with the next token's text.
            Event::Resumed { .. } => write!(stdout, " ⟲[new answer]")?,
            Event::Finished { reason: r, text } => {
                write!(stdout, "{text}")?; // anything held back until the end
                shown.push_str(&text);
                reason = Some(r);
            }
            // Temperature changes (the schedule after each back step), context rolls.
            _ => {}
        }
    }
    let out = stream.into_output();
    writeln!(stdout, "\n")?;
    writeln!(
        stdout,
        "finish: {:?}; {} new tokens, {} forward passes, {} back steps, {} new answers; {:.1} tok/s \
         decode, {:.1} tok/s net (prefill {} tokens at {:.0} tok/s); streamed text == Generation::text: {}",
        reason.as_ref().unwrap_or(&out.finish_reason),
        out.ids.len(),
        out.counts.forward_passes,
        out.counts.backsteps,
        out.counts.resumes,
        out.decode_tokens_per_second(),
        out.net_tokens_per_second(),
        out.counts.prefill_tokens,
        out.prefill_tokens_per_second(),
        shown == out.text,
    )?;
    Ok(())
}
