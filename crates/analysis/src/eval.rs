//! Strategy evaluation: prompts × perpetual modes × seeds on one generator, aggregated
//! per mode into a Markdown table and JSON.
//!
//! Each run sets the generator's seed and [`PerpetualMode`] (parsed from the strategy
//! spec, e.g. `"dynamic+dry+loop"`; `plain` stops at the first EOS), generates with the
//! trace on, and records: new tokens, whether it reached the budget, interventions
//! (avoided EOS draws + back steps, loop back steps among them), forward passes per kept
//! token, word-level freshness per 200-word window ([`Freshness`]: rep-2/3/4, diversity,
//! the worst window, "looped"), the mean log-probability of the kept tokens under the
//! model's raw distribution, and decode tok/s.
//!
//! **Resumable**: with [`EvalConfig::runs_dir`] set, every finished run is written there
//! as one JSON file (plain runs with their trace) and a later evaluation with the same
//! configuration loads it instead of generating again, so a long table survives an
//! interrupted session.
//!
//! ```
//! use perpetua_analysis::eval::{EvalConfig, run_eval};
//! use perpetua_generator::testing::{ByteTokenizer, FakeModel};
//! use perpetua_generator::Generator;
//!
//! let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(ByteTokenizer::EOS);
//! let mut generator = Generator::builder(model).tokenizer(ByteTokenizer::new()).build()?;
//! let config = EvalConfig {
//!     prompts: vec!["Once upon a time".into(), "The recipe".into()],
//!     strategies: vec!["plain".into(), "suppress+loop".into()],
//!     seeds: vec![1],
//!     max_new_tokens: 40,
//!     ..EvalConfig::default()
//! };
//! let report = run_eval(&mut generator, &config, &mut |_| {})?;
//! assert_eq!(report.runs.len(), 4);
//! assert_eq!(report.summaries.len(), 2);
//! assert!(report.markdown_table().contains("| suppress+loop |"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use perpetua_generator::{
    ChatMessage, FinishReason, Generation, Generator, LanguageModel, PerpetualMode, Prompt,
};
use serde::{Deserialize, Serialize};

use crate::TraceRow;
use crate::metrics::{FRESHNESS_WINDOW, Freshness, distinct_n, freshness, mean_logprob, repeated_ngram_rate};
use crate::trace::rows_from_generation;
use crate::{AnalysisError, Result};

/// The strategy name meaning "no strategy": stop at the first EOS.
pub const PLAIN: &str = "plain";

/// The default strategy set: plain generation, the four perpetual methods and the
/// recommended mode.
pub const DEFAULT_STRATEGIES: [&str; 6] = [PLAIN, "suppress", "post_eos", "backstep", "dynamic", "perpetual"];

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// User prompts.
    pub prompts: Vec<String>,
    /// Strategy specs ([`PerpetualMode::parse`]: `plain`, `dynamic`, `dynamic+dry+loop`,
    /// `perpetual`, …). Tables show each spec as given.
    pub strategies: Vec<String>,
    /// Seeds; every (prompt, strategy) pair runs once per seed.
    pub seeds: Vec<u64>,
    /// Token budget of each run.
    pub max_new_tokens: usize,
    /// Wrap each prompt as a user message through the chat template.
    pub chat_template: bool,
    /// Where finished runs are kept so a later evaluation does not redo them (`None`:
    /// nothing is kept).
    #[serde(default)]
    pub runs_dir: Option<PathBuf>,
    /// What else makes a run (model file, chain): stored with each kept run, and a kept
    /// run with another fingerprint is redone.
    #[serde(default)]
    pub fingerprint: String,
}

impl Default for EvalConfig {
    /// One seed (1), 500 tokens, chat template off, nothing kept; no prompts or
    /// strategies (set them).
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            strategies: Vec::new(),
            seeds: vec![1],
            max_new_tokens: 500,
            chat_template: false,
            runs_dir: None,
            fingerprint: String::new(),
        }
    }
}

impl EvalConfig {
    /// Check the configuration: non-empty prompts, strategies and seeds, strategy specs
    /// that parse, a positive budget.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |name, value: String, reason| Err(AnalysisError::InvalidParameter { name, value, reason });
        if self.prompts.is_empty() {
            return invalid("prompts", "[]".into(), "need at least one prompt");
        }
        if self.strategies.is_empty() {
            return invalid("strategies", "[]".into(), "need at least one strategy");
        }
        if self.seeds.is_empty() {
            return invalid("seeds", "[]".into(), "need at least one seed");
        }
        if self.max_new_tokens == 0 {
            return invalid("max_new_tokens", "0".into(), "must be at least 1");
        }
        for s in &self.strategies {
            mode_of(s)?;
        }
        Ok(())
    }

    /// Number of runs.
    pub fn total_runs(&self) -> usize {
        self.prompts.len() * self.strategies.len() * self.seeds.len()
    }
}

fn mode_of(spec: &str) -> Result<PerpetualMode> {
    PerpetualMode::parse(spec).map_err(|e| AnalysisError::InvalidParameter {
        name: "strategy",
        value: format!("{spec} ({e})"),
        reason: "a spec such as plain, dynamic, dynamic+dry+loop or perpetual",
    })
}

/// One run's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Prompt index in [`EvalConfig::prompts`].
    pub prompt: usize,
    /// Strategy spec, as given.
    pub strategy: String,
    /// Seed.
    pub seed: u64,
    /// Generated tokens in the output.
    pub new_tokens: usize,
    /// Whether the run reached [`EvalConfig::max_new_tokens`].
    pub reached_budget: bool,
    /// Why it finished (`Debug` of [`FinishReason`]).
    pub finish_reason: String,
    /// EOS draws replaced plus back steps (loop back steps included).
    pub interventions: usize,
    /// Back steps a loop strategy asked for.
    #[serde(default)]
    pub loop_backsteps: usize,
    /// Decode forward passes (regenerated tokens included), plus hidden resume tokens
    /// and tokens re-prefilled by context rolls, counted one pass each.
    pub forward_passes: usize,
    /// distinct-1/2/3 of the output ids (`NaN` when too short).
    pub distinct: [f64; 3],
    /// Repeated-4-gram rate of the output ids (`NaN` when too short).
    pub repeated_4gram: f64,
    /// Word-level freshness per [`FRESHNESS_WINDOW`]-word window (`None` when the text
    /// has fewer than 4 words).
    #[serde(default)]
    pub freshness: Option<Freshness>,
    /// Mean natural-log probability of the kept tokens (raw distribution).
    pub mean_logprob: f64,
    /// Decode forward passes per second.
    pub decode_tok_s: f64,
    /// The generated text.
    pub text: String,
}

impl RunResult {
    /// Forward passes per kept token (`forward_passes / new_tokens`; 1 = no token was
    /// ever regenerated).
    pub fn passes_per_token(&self) -> f64 {
        if self.new_tokens == 0 { f64::NAN } else { self.forward_passes as f64 / self.new_tokens as f64 }
    }

    /// The text of the run's worst window (the lowest diversity), or `""`.
    pub fn worst_window_text(&self) -> String {
        self.freshness
            .as_ref()
            .map(|f| crate::metrics::word_window(&self.text, f.worst_window, FRESHNESS_WINDOW))
            .unwrap_or_default()
    }
}

/// Per-strategy aggregates over all its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategySummary {
    /// Strategy spec.
    pub strategy: String,
    /// Runs aggregated.
    pub runs: usize,
    /// Mean new tokens.
    pub mean_new_tokens: f64,
    /// Median new tokens.
    pub median_new_tokens: f64,
    /// Share of runs that reached the budget.
    pub reached_budget: f64,
    /// Mean interventions per run.
    pub mean_interventions: f64,
    /// Mean loop back steps per run.
    #[serde(default)]
    pub mean_loop_backsteps: f64,
    /// Mean distinct-1/2/3 of the ids (runs where defined).
    pub distinct: [f64; 3],
    /// Mean repeated-4-gram rate of the ids.
    pub repeated_4gram: f64,
    /// Mean over runs of the mean window rep-2, rep-3, rep-4 (words).
    #[serde(default)]
    pub rep: [f64; 3],
    /// Mean over runs of the mean window diversity.
    #[serde(default)]
    pub diversity: f64,
    /// The lowest window diversity of any run.
    #[serde(default)]
    pub worst_diversity: f64,
    /// Share of runs with a looped window (rep-4 > 0.5).
    #[serde(default)]
    pub looped: f64,
    /// Mean of the runs' mean log-probabilities.
    pub mean_logprob: f64,
    /// Mean forward passes per kept token.
    #[serde(default)]
    pub passes_per_token: f64,
    /// Mean decode tok/s.
    pub decode_tok_s: f64,
}

/// All runs and their per-strategy summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// What ran.
    pub config: EvalConfig,
    /// Every run, in execution order (prompt-major, then strategy, then seed).
    pub runs: Vec<RunResult>,
    /// One per strategy, in [`EvalConfig::strategies`] order.
    pub summaries: Vec<StrategySummary>,
    /// Runs loaded from [`EvalConfig::runs_dir`] instead of generated.
    #[serde(default)]
    pub resumed: usize,
    /// The trace of each run (aligned with `runs`; not serialized; empty for a resumed
    /// run that is not plain).
    #[serde(skip)]
    pub traces: Vec<Vec<TraceRow>>,
}

/// Progress of [`run_eval`]: called after each run.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Runs finished.
    pub done: usize,
    /// Runs in total.
    pub total: usize,
    /// The run just finished.
    pub last: &'a RunResult,
    /// Whether it was loaded from [`EvalConfig::runs_dir`].
    pub resumed: bool,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = values.filter(|v| v.is_finite()).fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n > 0 { s / n as f64 } else { f64::NAN }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let m = values.len() / 2;
    if values.len() % 2 == 1 { values[m] } else { (values[m - 1] + values[m]) / 2.0 }
}

/// Aggregate `runs` per strategy, in `strategies` order (strategies without runs are
/// left out).
pub fn summarize(strategies: &[String], runs: &[RunResult]) -> Vec<StrategySummary> {
    strategies
        .iter()
        .filter_map(|name| {
            let rs: Vec<&RunResult> = runs.iter().filter(|r| &r.strategy == name).collect();
            if rs.is_empty() {
                return None;
            }
            let fresh = || rs.iter().filter_map(|r| r.freshness.as_ref());
            Some(StrategySummary {
                strategy: name.clone(),
                runs: rs.len(),
                mean_new_tokens: mean(rs.iter().map(|r| r.new_tokens as f64)),
                median_new_tokens: median(rs.iter().map(|r| r.new_tokens as f64).collect()),
                reached_budget: mean(rs.iter().map(|r| f64::from(u8::from(r.reached_budget)))),
                mean_interventions: mean(rs.iter().map(|r| r.interventions as f64)),
                mean_loop_backsteps: mean(rs.iter().map(|r| r.loop_backsteps as f64)),
                distinct: [0, 1, 2].map(|i| mean(rs.iter().map(|r| r.distinct[i]))),
                repeated_4gram: mean(rs.iter().map(|r| r.repeated_4gram)),
                rep: [0, 1, 2].map(|i| mean(fresh().map(|f| f.rep[i]))),
                diversity: mean(fresh().map(|f| f.diversity)),
                worst_diversity: fresh().map(|f| f.worst_diversity).fold(f64::NAN, f64::min),
                looped: mean(
                    rs.iter().map(|r| f64::from(u8::from(r.freshness.as_ref().is_some_and(|f| f.looped)))),
                ),
                mean_logprob: mean(rs.iter().map(|r| r.mean_logprob)),
                passes_per_token: mean(rs.iter().map(|r| r.passes_per_token())),
                decode_tok_s: mean(rs.iter().map(|r| r.decode_tok_s)),
            })
        })
        .collect()
}

/// A kept run: the result, its trace (plain runs only), and what it was made from.
#[derive(Debug, Serialize, Deserialize)]
struct KeptRun {
    prompt_text: String,
    max_new_tokens: usize,
    chat_template: bool,
    fingerprint: String,
    /// The spec expanded ([`PerpetualMode`] as JSON): a name such as `perpetual` whose
    /// meaning changed since the run was kept does not match.
    #[serde(default)]
    mode: String,
    result: RunResult,
    #[serde(default)]
    trace: Vec<TraceRow>,
}

/// File name of a kept run: prompt, seed, budget and the spec with `+ = /` spelled out.
fn kept_path(dir: &Path, prompt: usize, strategy: &str, seed: u64, budget: usize) -> PathBuf {
    let spec: String = strategy
        .chars()
        .map(|c| match c {
            '+' => '_',
            '=' => '-',
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => c,
            _ => '~',
        })
        .collect();
    dir.join(format!("p{prompt:03}-s{seed}-n{budget}-{spec}.json"))
}

/// What identifies a mode in a kept run: the expanded spec as JSON.
fn mode_key(spec: &str) -> Result<String> {
    Ok(serde_json::to_string(&mode_of(spec)?)?)
}

fn load_kept(
    path: &Path,
    config: &EvalConfig,
    prompt: &str,
    mode: &str,
) -> Option<(RunResult, Vec<TraceRow>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let kept: KeptRun = serde_json::from_str(&text).ok()?;
    (kept.prompt_text == prompt
        && kept.max_new_tokens == config.max_new_tokens
        && kept.chat_template == config.chat_template
        && kept.fingerprint == config.fingerprint
        && kept.mode == mode)
        .then_some((kept.result, kept.trace))
}

fn store_kept(
    path: &Path,
    config: &EvalConfig,
    prompt: &str,
    mode: &str,
    result: &RunResult,
    trace: &[TraceRow],
) -> Result<()> {
    let kept = KeptRun {
        prompt_text: prompt.to_string(),
        max_new_tokens: config.max_new_tokens,
        chat_template: config.chat_template,
        fingerprint: config.fingerprint.clone(),
        mode: mode.to_string(),
        result: result.clone(),
        trace: if result.strategy == PLAIN { trace.to_vec() } else { Vec::new() },
    };
    // Written to a temporary name and renamed: an interrupted write leaves no half file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&kept)?).map_err(|e| AnalysisError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AnalysisError::io(path, e))
}

/// Run the evaluation on `generator` (its model, tokenizer, chain and stop criteria as
/// built; seed, perpetual mode, budget and trace are set per run). For each strategy
/// and seed the prompts run side by side ([`Generator::generate_batch`], up to the
/// generator's `max_batch` per forward pass; each run's text is what it would be
/// alone). `progress` is called after every run, in the order runs finish. A failing
/// run aborts with [`AnalysisError::Generate`] naming it; every run that finished is kept
/// in [`EvalConfig::runs_dir`] first.
pub fn run_eval<M: LanguageModel>(
    generator: &mut Generator<M>,
    config: &EvalConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<EvalReport> {
    config.validate()?;
    if let Some(dir) = &config.runs_dir {
        std::fs::create_dir_all(dir).map_err(|e| AnalysisError::io(dir, e))?;
    }
    generator.set_max_new_tokens(Some(config.max_new_tokens));
    generator.set_trace(true);
    let total = config.total_runs();
    let (n_strategies, n_seeds) = (config.strategies.len(), config.seeds.len());
    // Runs by (prompt, strategy, seed) index, in the report's order.
    let slot = |pi: usize, si: usize, ki: usize| (pi * n_strategies + si) * n_seeds + ki;
    let mut slots: Vec<Option<Run>> = (0..total).map(|_| None).collect();
    let (mut done, mut resumed) = (0, 0);
    for (si, strategy) in config.strategies.iter().enumerate() {
        let mode = mode_key(strategy)?;
        for (ki, &seed) in config.seeds.iter().enumerate() {
            let path = |pi: usize| {
                config.runs_dir.as_ref().map(|d| kept_path(d, pi, strategy, seed, config.max_new_tokens))
            };
            let mut missing = Vec::new();
            for (pi, prompt) in config.prompts.iter().enumerate() {
                match path(pi).and_then(|p| load_kept(&p, config, prompt, &mode)) {
                    Some(kept) => {
                        (done, resumed) = (done + 1, resumed + 1);
                        progress(Progress { done, total, last: &kept.0, resumed: true });
                        slots[slot(pi, si, ki)] = Some(kept);
                    }
                    None => missing.push(pi),
                }
            }
            if missing.is_empty() {
                continue;
            }
            let mut first_error = None;
            for (pi, run) in
                missing.iter().copied().zip(run_batch(generator, config, &missing, strategy, seed)?)
            {
                match run {
                    Ok((result, rows)) => {
                        if let Some(p) = path(pi) {
                            store_kept(&p, config, &config.prompts[pi], &mode, &result, &rows)?;
                        }
                        done += 1;
                        progress(Progress { done, total, last: &result, resumed: false });
                        slots[slot(pi, si, ki)] = Some((result, rows));
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
    }
    let (runs, traces): (Vec<RunResult>, Vec<Vec<TraceRow>>) = slots.into_iter().flatten().unzip();
    let summaries = summarize(&config.strategies, &runs);
    Ok(EvalReport { config: config.clone(), runs, summaries, resumed, traces })
}

/// One finished run and its trace.
type Run = (RunResult, Vec<TraceRow>);

/// The prompts `prompts` (indices into the config's) under `strategy` and `seed`, side
/// by side; one result per prompt, in order.
fn run_batch<M: LanguageModel>(
    generator: &mut Generator<M>,
    config: &EvalConfig,
    prompts: &[usize],
    strategy: &str,
    seed: u64,
) -> Result<Vec<Result<Run>>> {
    let failed = |pi: usize, source: perpetua_generator::GenerateError| AnalysisError::Generate {
        prompt: pi,
        strategy: strategy.to_string(),
        seed,
        source: Box::new(source),
    };
    let first = prompts.first().copied().unwrap_or(0);
    generator.set_perpetual(&mode_of(strategy)?).map_err(|e| failed(first, e))?;
    generator.set_seed(seed);
    let inputs = prompts.iter().map(|&pi| {
        let prompt = &config.prompts[pi];
        if config.chat_template {
            Prompt::Chat(vec![ChatMessage::user(prompt.as_str())])
        } else {
            Prompt::Text(prompt.to_string())
        }
    });
    let outputs = generator.generate_batch(inputs);
    let tokenizer = generator.tokenizer().map(|t| t as &dyn perpetua_generator::Tokenizer);
    Ok(prompts
        .iter()
        .zip(outputs)
        .map(|(&pi, out)| {
            let out = out.map_err(|e| failed(pi, e))?;
            let rows = rows_from_generation(&out, tokenizer)?;
            Ok((run_result(pi, strategy, seed, out, &rows), rows))
        })
        .collect())
}

/// One run's measurements.
fn run_result(pi: usize, strategy: &str, seed: u64, out: Generation, rows: &[TraceRow]) -> RunResult {
    let nan = f64::NAN;
    RunResult {
        prompt: pi,
        strategy: strategy.to_string(),
        seed,
        new_tokens: out.ids.len(),
        reached_budget: out.finish_reason == FinishReason::MaxNewTokens,
        finish_reason: format!("{:?}", out.finish_reason),
        interventions: out.counts.eos_avoided + out.counts.backsteps + out.counts.resumes,
        loop_backsteps: out.counts.loop_backsteps,
        // Resume tokens and the re-prefills of context rolls are fed in chunks, not by
        // decode passes; counted one pass each (an upper bound on their cost).
        forward_passes: out.counts.forward_passes + out.counts.resume_tokens + out.counts.reprefilled_tokens,
        distinct: [1, 2, 3].map(|n| distinct_n(&out.ids, n).unwrap_or(nan)),
        repeated_4gram: repeated_ngram_rate(&out.ids, 4).unwrap_or(nan),
        freshness: freshness(&out.text, FRESHNESS_WINDOW),
        mean_logprob: mean_logprob(rows).unwrap_or(nan),
        decode_tok_s: out.decode_tokens_per_second(),
        text: out.text,
    }
}

fn cell(v: f64, digits: usize) -> String {
    if v.is_finite() { format!("{v:.digits$}") } else { "–".into() }
}

impl EvalReport {
    /// The summary of plain generation, when it ran: the reference of the ratios.
    pub fn plain(&self) -> Option<&StrategySummary> {
        self.summaries.iter().find(|s| s.strategy == PLAIN)
    }

    /// The per-strategy table in Markdown. Diversity and mean log p are also given as
    /// ratios to plain generation's (when it ran), for log p as `plain / strategy`
    /// (log-probabilities are negative: above 1 = more likely text than plain's).
    pub fn markdown_table(&self) -> String {
        let mut s = String::from(
            "| strategy | runs | mean new tokens | reached budget | looped | diversity | × plain | worst window | rep-2 | rep-3 | rep-4 | mean log p | × plain | passes / kept token | loop back steps / run | interventions / run | decode tok/s |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let plain = self.plain();
        for m in &self.summaries {
            let div_ratio = plain.map_or(f64::NAN, |p| m.diversity / p.diversity);
            let lp_ratio = plain.map_or(f64::NAN, |p| p.mean_logprob / m.mean_logprob);
            s.push_str(&format!(
                "| {} | {} | {} | {}% | {}% | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                m.strategy,
                m.runs,
                cell(m.mean_new_tokens, 1),
                cell(100.0 * m.reached_budget, 0),
                cell(100.0 * m.looped, 0),
                cell(m.diversity, 3),
                cell(div_ratio, 3),
                cell(m.worst_diversity, 3),
                cell(m.rep[0], 3),
                cell(m.rep[1], 3),
                cell(m.rep[2], 3),
                cell(m.mean_logprob, 3),
                cell(lp_ratio, 3),
                cell(m.passes_per_token, 3),
                cell(m.mean_loop_backsteps, 2),
                cell(m.mean_interventions, 2),
                cell(m.decode_tok_s, 1),
            ));
        }
        s
    }

    /// The `n` runs of `strategy` with the lowest worst-window diversity, worst first.
    pub fn worst_runs(&self, strategy: &str, n: usize) -> Vec<&RunResult> {
        let mut rs: Vec<&RunResult> =
            self.runs.iter().filter(|r| r.strategy == strategy && r.freshness.is_some()).collect();
        rs.sort_by(|a, b| {
            let w = |r: &RunResult| r.freshness.as_ref().map_or(f64::INFINITY, |f| f.worst_diversity);
            w(a).total_cmp(&w(b))
        });
        rs.truncate(n);
        rs
    }

    /// The whole report as pretty JSON (non-finite numbers become `null`).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}
