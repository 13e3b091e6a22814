//! Strategy evaluation: prompts × EOS strategies × seeds on one generator, aggregated
//! per strategy into a Markdown table and JSON.
//!
//! Each run resets the generator's seed and strategy, generates with the trace on, and
//! records: new tokens, whether it reached the budget, EOS interventions (avoided EOS
//! draws + back steps), distinct-1/2/3, the repeated-4-gram rate, the mean
//! log-probability of the output tokens under the raw distribution, and decode tok/s.
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
//!     strategies: vec!["plain".into(), "suppress_eos".into()],
//!     seeds: vec![1],
//!     max_new_tokens: 40,
//!     chat_template: false,
//! };
//! let report = run_eval(&mut generator, &config, &mut |_| {})?;
//! assert_eq!(report.runs.len(), 4);
//! assert_eq!(report.summaries.len(), 2);
//! assert!(report.markdown_table().contains("| suppress_eos |"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use perpetua_generator::{ChatMessage, FinishReason, Generator, LanguageModel, Prompt};
use serde::{Deserialize, Serialize};

use crate::TraceRow;
use crate::metrics::{distinct_n, mean_logprob, repeated_ngram_rate};
use crate::trace::rows_from_generation;
use crate::{AnalysisError, Result};

/// The strategy name meaning "no strategy": stop at the first EOS.
pub const PLAIN: &str = "plain";

/// The default strategy set: plain generation and the four perpetual strategies.
pub const DEFAULT_STRATEGIES: [&str; 5] =
    [PLAIN, "suppress_eos", "post_eos_resample", "backstep", "backstep_with_schedule"];

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// User prompts.
    pub prompts: Vec<String>,
    /// Strategy names: [`PLAIN`] or a name accepted by
    /// [`strategy_by_name`](perpetua_perpetual::strategy_by_name).
    pub strategies: Vec<String>,
    /// Seeds; every (prompt, strategy) pair runs once per seed.
    pub seeds: Vec<u64>,
    /// Token budget of each run.
    pub max_new_tokens: usize,
    /// Wrap each prompt as a user message through the chat template.
    pub chat_template: bool,
}

impl EvalConfig {
    /// Check the configuration: non-empty prompts, strategies and seeds, known strategy
    /// names, a positive budget.
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
            if s != PLAIN && perpetua_perpetual::strategy_by_name(s).is_err() {
                return invalid(
                    "strategy",
                    s.clone(),
                    "must be plain, stop, suppress_eos, suppress_eos_masked, post_eos_resample, backstep or backstep_with_schedule",
                );
            }
        }
        Ok(())
    }

    /// Number of runs.
    pub fn total_runs(&self) -> usize {
        self.prompts.len() * self.strategies.len() * self.seeds.len()
    }
}

/// One run's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Prompt index in [`EvalConfig::prompts`].
    pub prompt: usize,
    /// Strategy name.
    pub strategy: String,
    /// Seed.
    pub seed: u64,
    /// Generated tokens in the output.
    pub new_tokens: usize,
    /// Whether the run reached [`EvalConfig::max_new_tokens`].
    pub reached_budget: bool,
    /// Why it finished (`Debug` of [`FinishReason`]).
    pub finish_reason: String,
    /// EOS draws replaced plus back steps.
    pub interventions: usize,
    /// Decode forward passes (regenerated tokens included).
    pub forward_passes: usize,
    /// distinct-1/2/3 of the output ids (`NaN` when too short).
    pub distinct: [f64; 3],
    /// Repeated-4-gram rate of the output ids (`NaN` when too short).
    pub repeated_4gram: f64,
    /// Mean natural-log probability of the output tokens (raw distribution).
    pub mean_logprob: f64,
    /// Decode forward passes per second.
    pub decode_tok_s: f64,
    /// The generated text.
    pub text: String,
}

/// Per-strategy aggregates over all its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategySummary {
    /// Strategy name.
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
    /// Mean distinct-1/2/3 (runs where defined).
    pub distinct: [f64; 3],
    /// Mean repeated-4-gram rate.
    pub repeated_4gram: f64,
    /// Mean of the runs' mean log-probabilities.
    pub mean_logprob: f64,
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
    /// The trace of each run (aligned with `runs`; not serialized).
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
            Some(StrategySummary {
                strategy: name.clone(),
                runs: rs.len(),
                mean_new_tokens: mean(rs.iter().map(|r| r.new_tokens as f64)),
                median_new_tokens: median(rs.iter().map(|r| r.new_tokens as f64).collect()),
                reached_budget: mean(rs.iter().map(|r| f64::from(u8::from(r.reached_budget)))),
                mean_interventions: mean(rs.iter().map(|r| r.interventions as f64)),
                distinct: [0, 1, 2].map(|i| mean(rs.iter().map(|r| r.distinct[i]))),
                repeated_4gram: mean(rs.iter().map(|r| r.repeated_4gram)),
                mean_logprob: mean(rs.iter().map(|r| r.mean_logprob)),
                decode_tok_s: mean(rs.iter().map(|r| r.decode_tok_s)),
            })
        })
        .collect()
}

/// Run the evaluation on `generator` (its chain, model, tokenizer and stop criteria as
/// built; seed, strategy, budget and trace are set per run). `progress` is called
/// after every run. A failing run aborts with [`AnalysisError::Generate`] naming it.
pub fn run_eval<M: LanguageModel>(
    generator: &mut Generator<M>,
    config: &EvalConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<EvalReport> {
    config.validate()?;
    generator.set_max_new_tokens(Some(config.max_new_tokens));
    generator.set_trace(true);
    let total = config.total_runs();
    let mut runs = Vec::with_capacity(total);
    let mut traces = Vec::with_capacity(total);
    for (pi, prompt) in config.prompts.iter().enumerate() {
        for strategy in &config.strategies {
            for &seed in &config.seeds {
                let (result, rows) = run_one(generator, config, pi, prompt, strategy, seed)?;
                runs.push(result);
                traces.push(rows);
                if let Some(last) = runs.last() {
                    progress(Progress { done: runs.len(), total, last });
                }
            }
        }
    }
    let summaries = summarize(&config.strategies, &runs);
    Ok(EvalReport { config: config.clone(), runs, summaries, traces })
}

fn run_one<M: LanguageModel>(
    generator: &mut Generator<M>,
    config: &EvalConfig,
    pi: usize,
    prompt: &str,
    strategy: &str,
    seed: u64,
) -> Result<(RunResult, Vec<TraceRow>)> {
    let name = if strategy == PLAIN { "stop" } else { strategy };
    let boxed = perpetua_perpetual::strategy_by_name(name).map_err(|_| AnalysisError::InvalidParameter {
        name: "strategy",
        value: strategy.to_string(),
        reason: "unknown strategy",
    })?;
    generator.set_eos_strategy(boxed);
    generator.set_seed(seed);
    let p = if config.chat_template {
        Prompt::Chat(vec![ChatMessage::user(prompt)])
    } else {
        Prompt::Text(prompt.to_string())
    };
    let out = generator.generate(p).map_err(|e| AnalysisError::Generate {
        prompt: pi,
        strategy: strategy.to_string(),
        seed,
        source: Box::new(e),
    })?;
    let rows =
        rows_from_generation(&out, generator.tokenizer().map(|t| t as &dyn perpetua_generator::Tokenizer))?;
    let nan = f64::NAN;
    let result = RunResult {
        prompt: pi,
        strategy: strategy.to_string(),
        seed,
        new_tokens: out.ids.len(),
        reached_budget: out.finish_reason == FinishReason::MaxNewTokens,
        finish_reason: format!("{:?}", out.finish_reason),
        interventions: out.counts.eos_avoided + out.counts.backsteps,
        forward_passes: out.counts.forward_passes,
        distinct: [1, 2, 3].map(|n| distinct_n(&out.ids, n).unwrap_or(nan)),
        repeated_4gram: repeated_ngram_rate(&out.ids, 4).unwrap_or(nan),
        mean_logprob: mean_logprob(&rows).unwrap_or(nan),
        decode_tok_s: out.decode_tokens_per_second(),
        text: out.text,
    };
    Ok((result, rows))
}

fn cell(v: f64, digits: usize) -> String {
    if v.is_finite() { format!("{v:.digits$}") } else { "–".into() }
}

impl EvalReport {
    /// The per-strategy table in Markdown.
    pub fn markdown_table(&self) -> String {
        let mut s = String::from(
            "| strategy | runs | mean new tokens | median | reached budget | interventions / run | distinct-1 | distinct-2 | distinct-3 | repeated 4-grams | mean log p | decode tok/s |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in &self.summaries {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {}% | {} | {} | {} | {} | {} | {} | {} |\n",
                m.strategy,
                m.runs,
                cell(m.mean_new_tokens, 1),
                cell(m.median_new_tokens, 1),
                cell(100.0 * m.reached_budget, 0),
                cell(m.mean_interventions, 2),
                cell(m.distinct[0], 3),
                cell(m.distinct[1], 3),
                cell(m.distinct[2], 3),
                cell(m.repeated_4gram, 3),
                cell(m.mean_logprob, 3),
                cell(m.decode_tok_s, 1),
            ));
        }
        s
    }

    /// The whole report as pretty JSON (non-finite numbers become `null`).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}
