//! The Rust contenders of `cargo xtask bench`: one measurement per process,
//! printed as one JSON object on stdout, so that the peak RSS (`VmHWM`) is that of a
//! single contender. `cargo xtask bench` builds this example in release, runs it (and
//! `xtask/bench_llama_cpp.py` for llama.cpp) in alternating rounds and writes the report.
//!
//! ```text
//! e2e --mode tokens --out target/bench/tokens.json
//! e2e --contender perpetua|perpetua-exact|candle-transformers --mode greedy|sampled \
//!     --tokens-file target/bench/tokens.json --new-tokens 128
//! e2e --contender perpetua|perpetua-exact|candle-transformers --mode position \
//!     --tokens-file target/bench/tokens.json --position 2000 --steps 32
//! e2e --contender perpetua --mode perpetual --tokens-file target/bench/tokens.json --new-tokens 2000 \
//!     [--spec dynamic|perpetual|…]
//! e2e --contender perpetua --mode long --tokens-file target/bench/tokens.json --new-tokens 20000 --window 8192
//! e2e --contender perpetua --mode batch --tokens-file target/bench/tokens.json --batch 8 --new-tokens 64
//! e2e --contender perpetua --mode generate-batch --tokens-file target/bench/tokens.json --batch 8 \
//!     --new-tokens 256 [--spec perpetual] [--check]
//! ```
//!
//! - `tokens`: the chat prompt ("Write a book about a dog that can talk and is a
//!   detective." through the model's chat template, exactly as `Generator` encodes a
//!   `Prompt::Chat`) and the filler ids (a story text tokenized and repeated) that every
//!   contender, llama.cpp included, then reads, so all run the same token ids.
//! - `greedy` / `sampled`: prefill the prompt, then `--new-tokens` decode steps (EOS
//!   never ends the run). Ours runs the `Generator` (default `LoadOptions`: Q8_0 repack
//!   and fused attention; `perpetua-exact`: `LoadOptions::exact()`), greedy or T 1.0 /
//!   top-k 20 / seed 1; candle-transformers runs `quantized_llama::ModelWeights` with a
//!   `LogitsProcessor` loop (`Sampling::ArgMax` or `Sampling::TopK { k: 20, temperature: 1.0 }`).
//! - `position`: fill the cache to `--position` positions with filler ids (chunks of
//!   512), then time `--steps` greedy decode steps. candle-transformers' RoPE table ends
//!   at `quantized_llama::MAX_SEQ_LEN` (4,096): beyond it the run is reported as skipped.
//! - `perpetual`: a perpetual run of `--new-tokens` in the mode `--spec` (a
//!   `PerpetualMode` spec; default `dynamic`, i.e. `BackstepWithSchedule`, back step 10;
//!   `perpetual` is the recommended mode), T 1.0, top-k 20, seed 1, then a plain
//!   `StopAtEos` run doing the same number of forward passes (`min_new_tokens` =
//!   `max_new_tokens` = that count).
//!
//! - `long`: `--new-tokens` sampled tokens (T 1.0, top-k 20, seed 1, EOS
//!   masked: `SuppressEos::hard_mask`) through a `--window`-position context, rolled by
//!   the default `ContextRoll::Shift` (keep the prompt as sinks and the most recent half
//!   of the rest; the same amounts as `xtask/bench_llama_cpp.py --mode long`, llama.cpp's
//!   own context shift). Reports new tokens ÷ wall time (prefill and rolls included), the
//!   roll count and time, and RSS sampled every 1,000 tokens after the first roll.
//!
//! - `batch`: `--batch B` sequences with ragged prompts (20–200 filler ids), each
//!   prefilled alone, then `--new-tokens` greedy steps of all of them per
//!   `LanguageModel::forward_batch` pass (the model alone); the aggregate decode rate.
//!
//! - `generate-batch`: the same ragged prompts through `Generator::generate_batch` with
//!   `max_batch` = `--batch`, T 1.0 / top-k 20 / seed 1 and the perpetual mode `--spec`
//!   (so EOS, back steps and resumed turns happen per sequence), `--new-tokens` each;
//!   reports generated tokens ÷ (wall time − the prefills). `--batch 1` is the
//!   single-sequence rate of the same code. `--check` also runs every prompt alone and
//!   records whether each batched sequence equals its solo run (`same_as_solo`).
//!
//! Threads: set `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS` (the xtask sets both to 2).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use perpetua_benches::record::{BenchRecord, DecodeRecord, PerpetualRecord, rate, thousands};
use perpetua_candle::{Llama, LlamaTokenizer, LoadOptions, default_model_path};
use perpetua_generator::{ChatMessage, Generation, Generator, PerpetualMode, Prompt, Tokenizer};
use perpetua_perpetual::StopAtEos;
use perpetua_sampling::Chain;
use perpetua_sampling::processors::{Temperature, TopK};
use perpetua_sampling::samplers::{Greedy, Multinomial};
use serde_json::{Value, json};

/// The benchmark's user message (rendered through the chat template).
const PROMPT: &str = "Write a book about a dog that can talk and is a detective.";

/// Real text for filling the cache at long positions: tokenized, then repeated.
const FILLER: &str = "Rex was not an ordinary dog. On the morning the baker's bicycle went missing, \
he trotted down Harbour Street, sniffed the cold air and said, quite clearly, \"Somebody oiled \
that chain last night.\" Mrs Alder dropped her basket of apples. The postman laughed until he \
saw that the dog was serious. Rex followed the smell of oil past the fish market, through the \
churchyard and along the canal, where the water was brown and slow. He noticed a bootprint with \
a crack across the heel, a torn ticket for the evening ferry, and a trail of flour that stopped \
at a green door. Inside, an old sailor was repairing nets by lamplight. \"You have flour on your \
sleeve,\" Rex said, \"and a ticket for a ferry that left without you.\" The sailor put down his \
needle and told him a long story about debts, a lost brother and a bicycle that was only borrowed. \
By the time the church bell rang noon, the bicycle was back outside the bakery, the brother had \
been found working on a barge upriver, and the whole town was talking about the detective who \
walked on four legs and never forgot a smell. ";

/// Seed of every sampled run.
const SEED: u64 = 1;

struct Args {
    mode: String,
    contender: Option<String>,
    tokens_file: Option<PathBuf>,
    out: Option<PathBuf>,
    model: Option<PathBuf>,
    new_tokens: usize,
    position: usize,
    steps: usize,
    spec: String,
    window: usize,
    batch: usize,
    check: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        mode: String::new(),
        contender: None,
        tokens_file: None,
        out: None,
        model: None,
        new_tokens: 128,
        position: 100,
        steps: 32,
        spec: "dynamic".to_string(),
        window: 8_192,
        batch: 1,
        check: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => args.mode = value()?,
            "--contender" => args.contender = Some(value()?),
            "--tokens-file" => args.tokens_file = Some(value()?.into()),
            "--out" => args.out = Some(value()?.into()),
            "--model" => args.model = Some(value()?.into()),
            "--new-tokens" => args.new_tokens = value()?.parse().context("--new-tokens")?,
            "--position" => args.position = value()?.parse().context("--position")?,
            "--steps" => args.steps = value()?.parse().context("--steps")?,
            "--spec" => args.spec = value()?,
            "--window" => args.window = value()?.parse().context("--window")?,
            "--batch" => args.batch = value()?.parse().context("--batch")?,
            "--check" => args.check = true,
            other => bail!("unknown argument `{other}` (see the module docs of benches/examples/e2e.rs)"),
        }
    }
    if args.mode.is_empty() {
        bail!("--mode is required: tokens, greedy, sampled, position or perpetual");
    }
    Ok(args)
}

/// Peak resident set size of this process (`VmHWM`), MiB.
fn peak_rss_mib() -> Result<f64> {
    status_mib("VmHWM:")
}

/// A `/proc/self/status` memory field (`VmHWM:`, `VmRSS:`), MiB.
fn status_mib(field: &str) -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).ok_or_else(|| anyhow!("no {field}"))?;
    let kib: f64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow!("bad {field} line"))?.parse()?;
    Ok(kib / 1024.0)
}

fn env_threads(name: &str) -> Value {
    std::env::var(name).map(Value::String).unwrap_or(Value::Null)
}

struct Tokens {
    prompt: Vec<u32>,
    filler: Vec<u32>,
}

fn read_tokens(path: &Option<PathBuf>) -> Result<Tokens> {
    let path = path.as_ref().ok_or_else(|| anyhow!("--tokens-file is required"))?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let ids = |key: &str| -> Result<Vec<u32>> {
        v[key]
            .as_array()
            .ok_or_else(|| anyhow!("{}: no `{key}` array", path.display()))?
            .iter()
            .map(|x| {
                x.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| anyhow!("bad token id {x}"))
            })
            .collect()
    };
    Ok(Tokens { prompt: ids("prompt")?, filler: ids("filler")? })
}

fn tokenizer(path: &std::path::Path) -> Result<LlamaTokenizer> {
    LlamaTokenizer::from_gguf(path).with_context(|| format!("tokenizer of {}", path.display()))
}

/// `--mode tokens`: write the prompt and filler ids.
fn write_tokens(path: &std::path::Path, out: &Option<PathBuf>) -> Result<Value> {
    let out = out.as_ref().ok_or_else(|| anyhow!("--out is required with --mode tokens"))?;
    let tok = tokenizer(path)?;
    let messages = vec![ChatMessage::user(PROMPT)];
    let text = tok
        .apply_chat_template(&messages, true)
        .ok_or_else(|| anyhow!("the model has no chat template"))?
        .map_err(|e| anyhow!(e))?;
    let prompt = tok.encode(&text, false).map_err(|e| anyhow!(e))?;
    // The Generator's own encoding of the same conversation must give the same ids.
    let model = Llama::load(path, &LoadOptions::exact())?;
    let generator = Generator::builder(model).tokenizer(tok.clone()).build()?;
    let from_generator = generator.encode_prompt(Prompt::Chat(messages))?;
    if from_generator != prompt {
        bail!("chat prompt ids differ between the tokenizer and Generator::encode_prompt");
    }
    let piece = tok.encode(FILLER, false).map_err(|e| anyhow!(e))?;
    let mut filler = Vec::new();
    while filler.len() < 6_000 + 512 {
        filler.extend_from_slice(&piece);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let body = json!({ "prompt_text": text, "prompt": prompt, "filler": filler });
    std::fs::write(out, serde_json::to_string(&body)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(json!({ "mode": "tokens", "prompt_tokens": prompt.len(), "filler_tokens": filler.len(),
               "filler_piece_tokens": piece.len(), "out": out.display().to_string() }))
}

fn greedy_chain() -> Chain {
    Chain::new(Greedy)
}

fn sampled_chain() -> Result<Chain> {
    Ok(Chain::new(Multinomial).with(TopK::new(20)?).with(Temperature::new(1.0)?))
}

fn load_ours(path: &std::path::Path, contender: &str) -> Result<Llama> {
    let options = match contender {
        "perpetua" => LoadOptions::default(),
        "perpetua-exact" => LoadOptions::exact(),
        other => bail!("not one of ours: {other}"),
    };
    Ok(Llama::load(path, &options)?)
}

/// Ours: a Generator with `chain` that runs exactly `n` decode steps from `prompt`.
fn ours_run(
    model: &Llama,
    tok: &LlamaTokenizer,
    chain: Chain,
    prompt: &[u32],
    n: usize,
) -> Result<Generation> {
    let mut generator = Generator::builder(model)
        .tokenizer(tok.clone())
        .chain(chain)
        .seed(SEED)
        .eos_strategy(StopAtEos)
        .min_new_tokens(n)
        .max_new_tokens(n)
        .build()?;
    Ok(generator.generate(Prompt::Ids(prompt.to_vec()))?)
}

fn decode_record(g: &Generation) -> DecodeRecord {
    DecodeRecord {
        prefill_tokens: Some(g.counts.prefill_tokens),
        forward_passes: Some(g.counts.forward_passes),
        generated_tokens: Some(g.counts.generated_tokens),
        prefill_s: Some(g.timings.prefill.as_secs_f64()),
        decode_s: Some(g.timings.decode.as_secs_f64()),
        forward_s: Some(g.timings.forward.as_secs_f64()),
        sampling_s: Some(g.timings.sampling.as_secs_f64()),
        prefill_tok_s: Some(g.prefill_tokens_per_second()),
        decode_tok_s: Some(g.decode_tokens_per_second()),
        sampling_share: Some(g.sampling_share()),
    }
}

fn candle_load(path: &std::path::Path) -> Result<ModelWeights> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    Ok(ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?)
}

fn candle_forward(model: &mut ModelWeights, tokens: &[u32], pos: usize) -> Result<Tensor> {
    let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
    Ok(model.forward(&input, pos)?.squeeze(0)?)
}

/// candle-transformers: prefill the prompt (one forward), sample, then `n` decode steps.
fn candle_run(model: &mut ModelWeights, sampling: Sampling, prompt: &[u32], n: usize) -> Result<BenchRecord> {
    let mut lp = LogitsProcessor::from_sampling(SEED, sampling);
    let t = Instant::now();
    let logits = candle_forward(model, prompt, 0)?;
    let mut next = lp.sample(&logits)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut ids = vec![next];
    let t = Instant::now();
    for i in 0..n {
        let logits = candle_forward(model, &[next], prompt.len() + i)?;
        next = lp.sample(&logits)?;
        ids.push(next);
    }
    let decode_s = t.elapsed().as_secs_f64();
    Ok(BenchRecord {
        decode: DecodeRecord {
            prefill_tokens: Some(prompt.len()),
            forward_passes: Some(n),
            prefill_s: Some(prefill_s),
            decode_s: Some(decode_s),
            prefill_tok_s: Some(rate(prompt.len(), prefill_s)),
            decode_tok_s: Some(rate(n, decode_s)),
            ..DecodeRecord::default()
        },
        ids: Some(ids),
        ..BenchRecord::default()
    })
}

/// The first `position + 1` filler ids: `position` fill the cache, the last is the
/// first decode step's input.
fn position_fill(filler: &[u32], position: usize) -> Result<&[u32]> {
    if filler.len() < position + 1 {
        bail!("the filler has {} ids, position {position} needs {}", filler.len(), position + 1);
    }
    Ok(&filler[..position + 1])
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("e2e: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Value> {
    let args = parse_args()?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => default_model_path()?,
    };
    if !path.exists() {
        bail!("model file {} is missing: run `cargo xtask fetch-model`", path.display());
    }
    if args.mode == "tokens" {
        return write_tokens(&path, &args.out);
    }
    let contender = args.contender.clone().ok_or_else(|| anyhow!("--contender is required"))?;
    let tokens = read_tokens(&args.tokens_file)?;
    let started = Instant::now();
    let mut out = match (contender.as_str(), args.mode.as_str()) {
        ("perpetua" | "perpetua-exact", mode @ ("greedy" | "sampled")) => {
            let model = load_ours(&path, &contender)?;
            let load_s = started.elapsed().as_secs_f64();
            let tok = tokenizer(&path)?;
            let chain = if mode == "greedy" { greedy_chain() } else { sampled_chain()? };
            let g = ours_run(&model, &tok, chain, &tokens.prompt, args.new_tokens)?;
            // The first generated id, then the rest: comparable with the other contenders'
            // `ids` (their first id comes from the prefill's logits).
            BenchRecord {
                decode: decode_record(&g),
                load_s: Some(load_s),
                ids: Some(g.ids),
                ..BenchRecord::default()
            }
        }
        ("perpetua" | "perpetua-exact", "position") => {
            let model = load_ours(&path, &contender)?;
            let tok = tokenizer(&path)?;
            let ids = position_fill(&tokens.filler, args.position)?;
            // Prefill `position` ids, then `steps` decode steps (the first feeds the last id).
            let g = ours_run(&model, &tok, greedy_chain(), ids, args.steps)?;
            BenchRecord {
                decode: decode_record(&g),
                position: Some(args.position),
                steps: Some(args.steps),
                fill_s: Some(g.timings.prefill.as_secs_f64()),
                ..BenchRecord::default()
            }
        }
        ("candle-transformers", mode @ ("greedy" | "sampled")) => {
            let mut model = candle_load(&path)?;
            let load_s = started.elapsed().as_secs_f64();
            let sampling =
                if mode == "greedy" { Sampling::ArgMax } else { Sampling::TopK { k: 20, temperature: 1.0 } };
            BenchRecord {
                load_s: Some(load_s),
                ..candle_run(&mut model, sampling, &tokens.prompt, args.new_tokens)?
            }
        }
        ("candle-transformers", "position") => {
            // Check first: the RoPE table (cos/sin) has MAX_SEQ_LEN rows, and positions
            // beyond it are an error, not a slowdown.
            let at = BenchRecord {
                position: Some(args.position),
                steps: Some(args.steps),
                ..BenchRecord::default()
            };
            if args.position + args.steps > MAX_SEQ_LEN {
                BenchRecord {
                    skipped: Some(format!("n/a (RoPE table ends at {})", thousands(MAX_SEQ_LEN))),
                    ..at
                }
            } else {
                let mut model = candle_load(&path)?;
                let ids = position_fill(&tokens.filler, args.position)?;
                let t = Instant::now();
                let mut pos = 0;
                for chunk in ids[..args.position].chunks(512) {
                    candle_forward(&mut model, chunk, pos)?;
                    pos += chunk.len();
                }
                let fill_s = t.elapsed().as_secs_f64();
                let mut lp = LogitsProcessor::from_sampling(SEED, Sampling::ArgMax);
                let mut next = ids[args.position];
                let t = Instant::now();
                for i in 0..args.steps {
                    let logits = candle_forward(&mut model, &[next], args.position + i)?;
                    next = lp.sample(&logits)?;
                }
                let decode_s = t.elapsed().as_secs_f64();
                BenchRecord {
                    fill_s: Some(fill_s),
                    decode: DecodeRecord {
                        decode_s: Some(decode_s),
                        decode_tok_s: Some(rate(args.steps, decode_s)),
                        ..DecodeRecord::default()
                    },
                    ..at
                }
            }
        }
        ("perpetua", "perpetual") => {
            let mode = PerpetualMode::parse(&args.spec).with_context(|| format!("--spec {}", args.spec))?;
            let model = load_ours(&path, &contender)?;
            let tok = tokenizer(&path)?;
            let mut generator = Generator::builder(&model)
                .tokenizer(tok.clone())
                .chain(sampled_chain()?)
                .seed(SEED)
                .perpetual(mode.clone())
                .max_new_tokens(args.new_tokens)
                .build()?;
            let t = Instant::now();
            let perpetual = generator.generate(Prompt::Ids(tokens.prompt.clone()))?;
            let perpetual_wall = t.elapsed().as_secs_f64();
            let passes = perpetual.counts.forward_passes;
            let mut generator = Generator::builder(&model)
                .tokenizer(tok.clone())
                .chain(sampled_chain()?)
                .seed(SEED)
                .eos_strategy(StopAtEos)
                .min_new_tokens(passes)
                .max_new_tokens(passes)
                .build()?;
            let t = Instant::now();
            let plain = generator.generate(Prompt::Ids(tokens.prompt.clone()))?;
            let plain_wall = t.elapsed().as_secs_f64();
            let c = perpetual.counts;
            BenchRecord {
                new_tokens: Some(args.new_tokens),
                perpetual: Some(PerpetualRecord {
                    spec: mode.spec(),
                    run: decode_record(&perpetual),
                    wall_s: perpetual_wall,
                    finish: format!("{:?}", perpetual.finish_reason),
                    backsteps: c.backsteps,
                    loop_backsteps: c.loop_backsteps,
                    tokens_removed: c.tokens_removed,
                    eos_avoided: c.eos_avoided,
                    context_rolls: c.context_rolls,
                    plain: decode_record(&plain),
                    plain_wall_s: plain_wall,
                    plain_finish: format!("{:?}", plain.finish_reason),
                    // The issue's identity, and the exact accounting: an EOS back step's own
                    // step (the one that drew EOS) is a forward pass that keeps no token; a
                    // loop back step's step appended its token, which the removed count holds.
                    identity_generated_plus_removed: c.forward_passes
                        == c.generated_tokens + c.tokens_removed,
                    identity_with_eos_steps: c.forward_passes
                        == c.generated_tokens + c.tokens_removed + (c.backsteps - c.loop_backsteps),
                    no_reprefill: c.prefill_tokens + 1 == c.prompt_tokens && c.context_rolls == 0,
                }),
                ..BenchRecord::default()
            }
        }
        ("perpetua", "long") => long_run(&path, &tokens.prompt, args.new_tokens, args.window)?,
        ("perpetua", "batch") => batch_run(&path, &tokens.filler, args.batch, args.new_tokens)?,
        ("perpetua", "generate-batch") => generate_batch_run(&path, &tokens.filler, &args)?,
        (c, m) => bail!("unknown contender/mode `{c}` / `{m}`"),
    };
    out.contender = contender;
    out.mode = args.mode.clone();
    out.prompt_tokens = Some(tokens.prompt.len());
    out.threads = Some(json!({
        "candle": candle_core::utils::get_num_threads(),
        "RAYON_NUM_THREADS": env_threads("RAYON_NUM_THREADS"),
        "CANDLE_NUM_THREADS": env_threads("CANDLE_NUM_THREADS"),
    }));
    out.peak_rss_mib = Some(peak_rss_mib()?);
    out.wall_s = Some(started.elapsed().as_secs_f64());
    Ok(serde_json::to_value(out)?)
}

/// `--mode batch`: `batch` sequences with ragged prompts (20–200 filler ids), each
/// prefilled alone, then `n` greedy decode steps of all of them in one
/// `LanguageModel::forward_batch` pass per step (the model alone: no sampling chain, no
/// strategy). Reports the aggregate decode rate (`batch · n` tokens ÷ decode time).
fn batch_run(path: &std::path::Path, filler: &[u32], batch: usize, n: usize) -> Result<BenchRecord> {
    use perpetua_generator::{BatchItem, LanguageModel};
    if batch == 0 || filler.len() < 200 * batch {
        bail!("--batch {batch}: needs 1..={} sequences", filler.len() / 200);
    }
    let model = load_ours(path, "perpetua")?;
    let vocab = model.vocab_size();
    let mut caches = Vec::with_capacity(batch);
    let mut next = Vec::with_capacity(batch);
    let mut row = Vec::new();
    let t = Instant::now();
    for s in 0..batch {
        // Prompt lengths spread over 20..=200, deterministic.
        let len = 20 + (s * 180) / batch.max(2).saturating_sub(1).max(1);
        let prompt = &filler[s * 200..s * 200 + len.min(200)];
        let mut cache = model.new_cache()?;
        model.forward(prompt, &mut cache, &mut row)?;
        next.push(argmax(&row));
        caches.push(cache);
    }
    let prefill_s = t.elapsed().as_secs_f64();
    let mut out = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&id| [id]).collect();
        let mut items: Vec<BatchItem<'_, _>> =
            caches.iter_mut().zip(&tokens).map(|(cache, t)| BatchItem { tokens: &t[..], cache }).collect();
        model.forward_batch(&mut items, &mut out).map_err(|e| anyhow!("{e}"))?;
        for (s, id) in next.iter_mut().enumerate() {
            *id = argmax(&out[s * vocab..(s + 1) * vocab]);
        }
    }
    let decode_s = t.elapsed().as_secs_f64();
    let mut record = BenchRecord {
        new_tokens: Some(n),
        decode: DecodeRecord {
            prefill_s: Some(prefill_s),
            decode_s: Some(decode_s),
            forward_passes: Some(n),
            decode_tok_s: Some(rate(batch * n, decode_s)),
            ..DecodeRecord::default()
        },
        ..BenchRecord::default()
    };
    record.extra.insert("batch".into(), json!(batch));
    Ok(record)
}

/// `--mode generate-batch` (see the module docs).
fn generate_batch_run(path: &std::path::Path, filler: &[u32], args: &Args) -> Result<BenchRecord> {
    let batch = args.batch;
    if batch == 0 || filler.len() < 200 * batch {
        bail!("--batch {batch}: needs 1..={} sequences", filler.len() / 200);
    }
    let mode = PerpetualMode::parse(&args.spec).with_context(|| format!("--spec {}", args.spec))?;
    let model = load_ours(path, "perpetua")?;
    let tok = tokenizer(path)?;
    let build = |width: usize| -> Result<Generator<&Llama>> {
        Ok(Generator::builder(&model)
            .tokenizer(tok.clone())
            .chain(sampled_chain()?)
            .seed(SEED)
            .perpetual(mode.clone())
            .max_new_tokens(args.new_tokens)
            .max_batch(width)
            .build()?)
    };
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|s| {
            let len = 20 + (s * 180) / batch.max(2).saturating_sub(1).max(1);
            filler[s * 200..s * 200 + len.min(200)].to_vec()
        })
        .collect();
    let mut generator = build(batch)?;
    let t = Instant::now();
    let results = generator.generate_batch(prompts.iter().cloned().map(Prompt::Ids));
    let wall_s = t.elapsed().as_secs_f64();
    let outputs: Vec<_> = results.into_iter().collect::<Result<_, _>>()?;
    let prefill_s: f64 = outputs.iter().map(|g| g.timings.prefill.as_secs_f64()).sum();
    let generated: usize = outputs.iter().map(|g| g.counts.generated_tokens).sum();
    let passes: usize = outputs.iter().map(|g| g.counts.forward_passes).sum();
    let decode_s = wall_s - prefill_s;
    let mut record = BenchRecord {
        new_tokens: Some(args.new_tokens),
        decode: DecodeRecord {
            prefill_s: Some(prefill_s),
            decode_s: Some(decode_s),
            forward_passes: Some(passes),
            decode_tok_s: Some(rate(generated, decode_s)),
            ..DecodeRecord::default()
        },
        ..BenchRecord::default()
    };
    record.extra.insert("batch".into(), json!(batch));
    record.extra.insert("spec".into(), json!(mode.spec()));
    record.extra.insert("generated_tokens".into(), json!(generated));
    record.extra.insert("generate_wall_s".into(), json!(wall_s));
    let c = |f: fn(&perpetua_generator::Counts) -> usize| outputs.iter().map(|g| f(&g.counts)).sum::<usize>();
    record.extra.insert(
        "events".into(),
        json!({ "backsteps": c(|c| c.backsteps), "loop_backsteps": c(|c| c.loop_backsteps),
                "resumes": c(|c| c.resumes), "eos_avoided": c(|c| c.eos_avoided) }),
    );
    if args.check {
        let mut solo = build(1)?;
        let same: Vec<bool> = prompts
            .iter()
            .zip(&outputs)
            .map(|(p, g)| Ok(solo.generate(Prompt::Ids(p.clone()))?.ids == g.ids))
            .collect::<Result<_>>()?;
        record.extra.insert("same_as_solo".into(), json!(same));
    }
    Ok(record)
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// `--mode long`: `n` sampled tokens with EOS masked through a `window`-position context
/// rolled by cache shifts (see the module docs).
fn long_run(path: &std::path::Path, prompt: &[u32], n: usize, window: usize) -> Result<BenchRecord> {
    use perpetua_generator::Event;
    let model = load_ours(path, "perpetua")?;
    let tok = tokenizer(path)?;
    let mut generator = Generator::builder(&model)
        .tokenizer(tok)
        .chain(sampled_chain()?)
        .seed(SEED)
        .eos_strategy(perpetua_perpetual::SuppressEos::hard_mask())
        .max_new_tokens(n)
        .context_window(window)
        .build()?;
    let t = Instant::now();
    let mut stream = generator.stream(Prompt::Ids(prompt.to_vec()))?;
    let (mut rolls, mut next_sample) = (0usize, 1_000usize);
    let mut rss_after_roll: Vec<f64> = Vec::new();
    while let Some(event) = stream.next() {
        match event? {
            Event::ContextRolled { .. } => rolls += 1,
            Event::Token { .. } if stream.generated_ids().len() >= next_sample => {
                next_sample += 1_000;
                if rolls > 0 {
                    rss_after_roll.push(status_mib("VmRSS:")?);
                }
            }
            _ => {}
        }
    }
    let out = stream.into_output();
    let wall = t.elapsed().as_secs_f64();
    let roll_s = out.timings.roll.as_secs_f64();
    let roll_s_each =
        if out.counts.context_rolls > 0 { roll_s / out.counts.context_rolls as f64 } else { 0.0 };
    let (lo, hi) =
        (rss_after_roll.iter().copied().reduce(f64::min), rss_after_roll.iter().copied().reduce(f64::max));
    let mut record = BenchRecord {
        new_tokens: Some(out.ids.len()),
        window: Some(window),
        run_s: Some(wall),
        tok_s: Some(rate(out.ids.len(), wall)),
        rolls: Some(out.counts.context_rolls),
        roll_s: Some(roll_s),
        roll_s_each: Some(roll_s_each),
        reprefilled_tokens: Some(out.counts.reprefilled_tokens),
        finish: Some(format!("{:?}", out.finish_reason)),
        rss_after_first_roll_min_mib: lo,
        rss_after_first_roll_max_mib: hi,
        ..BenchRecord::default()
    };
    record.extra.insert("rolls_seen".into(), json!(rolls));
    Ok(record)
}
