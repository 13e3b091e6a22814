//! The `Generator`: builder, per-step loop, streaming, results.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use perpetua_perpetual::{EosAction, EosDrawn, EosStrategy, StepInfo, StopAtEos, TokenAction, TokenAppended};
use perpetua_sampling::samplers::{Multinomial, draw_without_replacement};
use perpetua_sampling::{Candidates, Chain, NonFinitePolicy, SamplingContext, stats};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use crate::{
    ChatMessage, ForkableCache, GenerateError, IncrementalDecoder, KvCache, LanguageModel, PerpetualMode,
    RepetitionDetection, StopStrings, Tokenizer,
};

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text, encoded with the tokenizer (adding its special prefix, e.g. BOS, when
    /// [`GeneratorBuilder::add_special_tokens`] is on, the default).
    Text(String),
    /// A conversation, rendered through the tokenizer's chat template with the
    /// assistant's turn header appended, then encoded (the template writes its own
    /// special tokens).
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are.
    Ids(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for Prompt {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Self::Ids(ids)
    }
}

impl From<&[u32]> for Prompt {
    fn from(ids: &[u32]) -> Self {
        Self::Ids(ids.to_vec())
    }
}

impl<const N: usize> From<[u32; N]> for Prompt {
    fn from(ids: [u32; N]) -> Self {
        Self::Ids(ids.to_vec())
    }
}

impl From<Vec<ChatMessage>> for Prompt {
    fn from(messages: Vec<ChatMessage>) -> Self {
        Self::Chat(messages)
    }
}

impl From<&[ChatMessage]> for Prompt {
    fn from(messages: &[ChatMessage]) -> Self {
        Self::Chat(messages.to_vec())
    }
}

/// Why generation finished.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum FinishReason {
    /// An EOS id was drawn and the EOS strategy answered [`EosAction::Stop`]. The EOS
    /// token is not part of the output.
    Eos,
    /// The stop string `index` (in the order given to the builder) appeared in the text.
    StopString {
        /// Index into the configured stop strings.
        index: usize,
    },
    /// `max_new_tokens` tokens were generated.
    MaxNewTokens,
    /// `max_time` elapsed.
    MaxTime,
    /// The tail repeated a pattern of `pattern_len` tokens `repeats` times.
    Repetition {
        /// Tokens in the repeated pattern.
        pattern_len: usize,
        /// Times it repeated.
        repeats: usize,
    },
    /// The cancel flag was set, the stream was cancelled, or the callback broke.
    Cancelled,
    /// An error ended generation (see [`GenerateError::PartialGeneration`]).
    Error,
}

/// A top-n alternative at one step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alternative {
    /// Token id.
    pub id: u32,
    /// Its log-probability (nats) under the model's raw distribution.
    pub logprob: f32,
}

/// One streaming event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A token was appended at generated index `index`.
    Token {
        /// Generated index (0 = the first generated token).
        index: usize,
        /// Token id.
        id: u32,
        /// Text released by this token: whole UTF-8 characters only; text that could
        /// still begin a stop string is held back and released by a later event.
        /// Empty without a tokenizer.
        text: String,
        /// Log-probability (nats) of the token under the model's raw distribution
        /// (softmax of the logits before any processor).
        logprob: f32,
        /// The `top_logprobs` most likely tokens under the raw distribution, best
        /// first; empty unless [`GeneratorBuilder::top_logprobs`] is set.
        top: Vec<Alternative>,
    },
    /// An EOS draw was replaced (the strategy answered `Replace`).
    EosAvoided {
        /// Generated index where the EOS was drawn.
        position: usize,
        /// Probability of the EOS set under the processed distribution of that step.
        p_eos: f32,
        /// The token written instead.
        replacement: u32,
    },
    /// A back step removed generated tokens `to..from` from the sequence and the cache.
    Backstep {
        /// Generated count before the back step.
        from: usize,
        /// Generated count after it.
        to: usize,
        /// Streamed text length (bytes) that remains valid: a consumer truncates the
        /// text it accumulated to this length.
        text_len: usize,
        /// What the strategy was answering: an EOS draw or a loop it detected.
        cause: BackstepCause,
    },
    /// The sampling temperature changed (driven by the EOS strategy's plan).
    TemperatureChanged {
        /// The previous temperature.
        from: f32,
        /// The new one.
        to: f32,
    },
    /// The cache was full: it now holds the first `sink` tokens and the most recent
    /// ones ([`ContextRoll`]).
    ContextRolled {
        /// Tokens between the sink and the recent window that are no longer attended.
        dropped: usize,
        /// Positions held by the cache after the roll.
        kept: usize,
        /// Tokens re-prefilled (0: the cache was shifted in place).
        reprefilled: usize,
        /// Time the roll took.
        took: Duration,
    },
    /// The strategy resumed the turn ([`EosAction::Resume`]): the model's turn ended
    /// at generated index `position` and the generator fed `hidden` resume tokens (a
    /// hidden user turn and a new assistant turn header) that are in the cache but not
    /// in the output. The output text gets a paragraph break (`"\n\n"`) there,
    /// released with the next token's text.
    Resumed {
        /// Generated index where the EOS was drawn (the first hidden token's index).
        position: usize,
        /// Resume tokens fed.
        hidden: usize,
    },
    /// Generation finished; always the last event.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Text still held back (a partial stop-string match that never completed, or a
        /// trailing incomplete character flushed as U+FFFD).
        text: String,
    },
}

/// Why a back step happened ([`Event::Backstep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackstepCause {
    /// An EOS was drawn and the strategy's [`EosAction::Backstep`] rewrote the tail.
    Eos,
    /// The strategy's [`EosStrategy::after_token`] found degeneration (a loop) and
    /// answered [`TokenAction::Backstep`].
    Loop,
}

/// What happened at a traced step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TraceEvent {
    /// The drawn token was appended.
    Token,
    /// An EOS draw was replaced by the token recorded.
    EosAvoided,
    /// An EOS draw caused a back step removing `removed` tokens.
    Backstep {
        /// Tokens removed.
        removed: usize,
    },
    /// The drawn token was appended, then the strategy found a loop and removed the
    /// last `removed` generated tokens (this one included).
    LoopBackstep {
        /// Tokens removed.
        removed: usize,
    },
    /// An EOS draw ended generation.
    Eos,
    /// An EOS draw ended the turn and the generator fed `hidden` resume tokens
    /// ([`Event::Resumed`]).
    Resumed {
        /// Resume tokens fed.
        hidden: usize,
    },
}

/// One step of the optional trace (DESIGN.md §1: the quantities that move before an
/// EOS). Distribution statistics are of the model's raw distribution at that step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepTrace {
    /// Generated index of the step.
    pub index: usize,
    /// The token appended, or the EOS drawn for `Eos` / `Backstep` steps.
    pub token: u32,
    /// `Σ_{e ∈ EOS} p(e)`.
    pub p_eos: f32,
    /// EOS information content `−log₂ p_eos` in bits (`+inf` when `p_eos = 0`).
    pub eos_information_bits: f32,
    /// Entropy `H = −Σ p ln p` (nats).
    pub entropy: f32,
    /// Varentropy `Σ p (ln p + H)²` (nats²).
    pub varentropy: f32,
    /// Probability of `token`.
    pub chosen_prob: f32,
    /// The sampling temperature used.
    pub temperature: f32,
    /// What happened.
    pub event: TraceEvent,
    /// The [`TRACE_TOP`] most probable tokens of the raw distribution, most probable
    /// first (log-probabilities in nats): what EOS competed with at this step.
    pub top: Vec<Alternative>,
}

/// Number of raw top candidates recorded per [`StepTrace`].
pub const TRACE_TOP: usize = 5;

/// Counters of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens fed in the prefill (all but the last, which the first decode
    /// step feeds).
    pub prefill_tokens: usize,
    /// Generated tokens in the output.
    pub generated_tokens: usize,
    /// Decode forward passes (one per step, including regenerated ones).
    pub forward_passes: usize,
    /// Back steps carried out (after an EOS draw or a detected loop).
    pub backsteps: usize,
    /// Of those, back steps a strategy asked for after a token ([`BackstepCause::Loop`]).
    #[serde(default)]
    pub loop_backsteps: usize,
    /// Tokens removed by back steps.
    pub tokens_removed: usize,
    /// EOS draws replaced.
    pub eos_avoided: usize,
    /// Context rolls.
    pub context_rolls: usize,
    /// Tokens re-prefilled by context rolls (0 when every roll shifted the cache).
    #[serde(default)]
    pub reprefilled_tokens: usize,
    /// NaN / `+inf` logits repaired under [`NonFinitePolicy::Sanitize`] (0 under the
    /// default policy, where the first one is an error).
    ///
    /// [`NonFinitePolicy::Sanitize`]: perpetua_sampling::NonFinitePolicy::Sanitize
    #[serde(default)]
    pub sanitized_logits: usize,
    /// Turns resumed ([`EosAction::Resume`]).
    #[serde(default)]
    pub resumes: usize,
    /// Hidden resume tokens fed to the model (in the cache, not in the output nor in
    /// `generated_tokens`); they are fed in chunks, not by decode passes.
    #[serde(default)]
    pub resume_tokens: usize,
}

/// How the generator rolls its context when the cache holds the context window: in
/// both cases the first sink tokens and the most recent half of the rest are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ContextRoll {
    /// Shift the cache in place ([`LanguageModel::shift_cache`]: drop the oldest
    /// positions after the sinks, re-rotate the kept keys), as llama.cpp's context
    /// shift: O(cache) memory work per roll. The kept entries still carry what they
    /// attended to before the roll. Backends that cannot shift re-prefill instead.
    #[default]
    Shift,
    /// Clear the cache and re-prefill the sink and kept tokens: the kept tokens are
    /// recomputed without the dropped text, at the cost of a prefill of about half the
    /// window per roll (StreamingLLM's re-computation baseline).
    Reprefill,
}

/// Wall-clock times of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// Prompt prefill.
    pub prefill: Duration,
    /// The decode loop, from the first step to the finish.
    pub decode: Duration,
    /// Model forward passes inside the decode loop.
    pub forward: Duration,
    /// Sampling inside the decode loop: statistics, processors, draws, strategy.
    pub sampling: Duration,
    /// Context rolls, shifts or re-prefills (inside `decode`).
    pub roll: Duration,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated text (a trimmed stop string excluded unless configured otherwise).
    pub text: String,
    /// Generated token ids (the EOS that ended generation is not included, nor the
    /// hidden resume tokens of resumed turns).
    pub ids: Vec<u32>,
    /// Prompt length in tokens.
    pub prompt_len: usize,
    /// Why generation finished.
    pub finish_reason: FinishReason,
    /// Counters.
    pub counts: Counts,
    /// Times.
    pub timings: Timings,
    /// Per-step trace, when [`GeneratorBuilder::trace`] is on.
    pub trace: Option<Vec<StepTrace>>,
}

fn rate(n: usize, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

impl Generation {
    /// Prefill throughput: `prefill_tokens / prefill` (0 when nothing was timed).
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.counts.prefill_tokens, self.timings.prefill)
    }

    /// Decode throughput: `forward_passes / decode` (0 when nothing was timed).
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.counts.forward_passes, self.timings.decode)
    }

    /// Net output rate: `generated_tokens / decode` (lower than the decode throughput
    /// when back steps regenerated tokens).
    pub fn net_tokens_per_second(&self) -> f64 {
        rate(self.counts.generated_tokens, self.timings.decode)
    }

    /// Share of the decode loop spent sampling: `sampling / decode` in `[0, 1]`.
    pub fn sampling_share(&self) -> f64 {
        let d = self.timings.decode.as_secs_f64();
        if d > 0.0 { (self.timings.sampling.as_secs_f64() / d).min(1.0) } else { 0.0 }
    }
}

/// Builder of a [`Generator`]; see each method for defaults.
pub struct GeneratorBuilder<M: LanguageModel> {
    model: M,
    tokenizer: Option<Box<dyn Tokenizer + Send>>,
    chain: Option<Chain>,
    seed: u64,
    strategy: Box<dyn EosStrategy>,
    eos_ids: Option<Vec<u32>>,
    stop_strings: Vec<String>,
    include_stop_string: bool,
    max_new_tokens: Option<usize>,
    max_time: Option<Duration>,
    min_new_tokens: usize,
    repetition: Option<RepetitionDetection>,
    context_window: Option<usize>,
    sink_tokens: Option<usize>,
    context_roll: ContextRoll,
    prefill_chunk: usize,
    top_logprobs: usize,
    trace: bool,
    cancel: Option<Arc<AtomicBool>>,
    skip_special_tokens: bool,
    add_special_tokens: bool,
    non_finite: Option<perpetua_sampling::NonFinitePolicy>,
    mode: Option<PerpetualMode>,
    resume_message: String,
    resume_tokens: Option<Vec<u32>>,
    resume_with_prompt: bool,
    forget_on_resume: Option<usize>,
    restart_on_resume: Option<bool>,
}

impl<M: LanguageModel> GeneratorBuilder<M> {
    /// Perpetual generation in one line: the mode's strategy (replacing any
    /// [`eos_strategy`](Self::eos_strategy)) and its sampling stages (DRY with breakers
    /// encoded by the tokenizer, a windowed repetition penalty), inserted into the chain
    /// before its first warper at [`build`](Self::build).
    /// [`PerpetualMode::recommended`] is the CLI's `--strategy perpetual`.
    ///
    /// ```
    /// use perpetua_generator::testing::{ByteTokenizer, FakeModel};
    /// use perpetua_generator::{Generator, PerpetualMode};
    /// use perpetua_sampling::{Chain, processors::TopK, samplers::Multinomial};
    ///
    /// let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(ByteTokenizer::EOS);
    /// let mut generator = Generator::builder(model)
    ///     .tokenizer(ByteTokenizer::new())
    ///     .chain(Chain::new(Multinomial).with(TopK::new(20)?))
    ///     .perpetual(PerpetualMode::recommended())
    ///     .max_new_tokens(300)
    ///     .build()?;
    /// assert_eq!(generator.chain_mut().stage_names().collect::<Vec<_>>(), ["dry", "top_k"]);
    /// let out = generator.generate("Once upon a time")?;
    /// assert_eq!(out.ids.len(), 300); // past every EOS the fake model draws
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn perpetual(mut self, mode: PerpetualMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// The user message of a resumed turn ([`EosAction::Resume`], the `resume` EOS
    /// method). Default [`DEFAULT_RESUME_MESSAGE`]. The resume tokens are rendered from
    /// the tokenizer's chat template at [`build`](Self::build): the end of the
    /// assistant's turn, this message as a user turn, and the assistant's turn header.
    pub fn resume_message(mut self, message: impl Into<String>) -> Self {
        self.resume_message = message.into();
        self
    }

    /// Resumed turns repeat the request: when the prompt is a chat
    /// ([`Prompt::Chat`]), the hidden user turn of a resume is the prompt's last user
    /// message (rendered with the chat template) instead of
    /// [`resume_message`](Self::resume_message), so the model answers the request
    /// afresh with everything it wrote in context. Other prompts keep the resume
    /// message. [`PerpetualMode::reask`] sets it too. Default off.
    pub fn resume_with_prompt(mut self, on: bool) -> Self {
        self.resume_with_prompt = on;
        self
    }

    /// Resumed turns start from a fresh context: when a turn resumes, the model's
    /// context is cut back to the prompt (kept in the cache as it is) and fed the last
    /// `recall` tokens written and the resume tokens (counted as a context roll). The text written before
    /// stays in the output and in the history of the chain's stateful stages and of the
    /// strategy; the model no longer attends to it, so it can neither copy it nor be
    /// primed by a stale stretch. `None` (the default) keeps everything in context.
    /// [`PerpetualMode::forget`] sets it too (this one wins when both do).
    pub fn forget_on_resume(mut self, recall: Option<usize>) -> Self {
        self.forget_on_resume = recall;
        self
    }

    /// Resumed turns restart the answer: when a turn resumes, the model's context
    /// becomes the prompt alone (kept in the cache as it is; the prompt's last token is
    /// fed again, one forward pass, counted as a context roll) and the model writes a
    /// new answer to it. No resume tokens are needed, so a generator without a chat
    /// template can restart turns. The text written before stays in the output, with a
    /// paragraph break before the new answer, and in the history of the chain's
    /// stateful stages and of the strategy. When on, it replaces
    /// [`forget_on_resume`](Self::forget_on_resume) and
    /// [`resume_with_prompt`](Self::resume_with_prompt). [`PerpetualMode::restart`]
    /// sets it too; this one wins when both are given.
    pub fn restart_on_resume(mut self, on: bool) -> Self {
        self.restart_on_resume = Some(on);
        self
    }

    /// Resume tokens given as ids (for a model without a chat template, or a custom
    /// turn): fed after an [`EosAction::Resume`] in place of the drawn EOS. Overrides
    /// [`resume_message`](Self::resume_message). Errors at `build`: empty, or an id
    /// outside the vocabulary.
    pub fn resume_tokens(mut self, ids: Vec<u32>) -> Self {
        self.resume_tokens = Some(ids);
        self
    }

    /// The tokenizer: needed for text and chat prompts, stop strings and text deltas.
    /// Without one the generator works on ids only (texts are empty).
    pub fn tokenizer(mut self, tokenizer: impl Tokenizer + Send + 'static) -> Self {
        self.tokenizer = Some(Box::new(tokenizer));
        self
    }

    /// The sampling chain. Default: `Chain::new(Multinomial)` (the model's own
    /// distribution at temperature 1).
    pub fn chain(mut self, chain: Chain) -> Self {
        self.chain = Some(chain);
        self
    }

    /// What to do with NaN / `+inf` logits from the model: sets the chain's
    /// [`NonFinitePolicy`](perpetua_sampling::NonFinitePolicy) (the generator follows the
    /// chain's policy, whichever way it was set). Default `Error`: the step fails with
    /// [`SamplingError::NanLogit`](perpetua_sampling::SamplingError::NanLogit) /
    /// `InfiniteLogit` inside a [`GenerateError::PartialGeneration`] carrying every token
    /// so far. `Sanitize` masks NaN tokens, gives `+inf` tokens all the mass, counts the
    /// repairs in [`Counts::sanitized_logits`] and logs a `tracing` warning.
    pub fn non_finite_policy(mut self, policy: perpetua_sampling::NonFinitePolicy) -> Self {
        self.non_finite = Some(policy);
        self
    }

    /// Seed of the `ChaCha8Rng` each generation starts from. Default 0. The same seed,
    /// prompt and configuration give the same tokens.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// What to do when EOS is drawn. Default: [`StopAtEos`].
    pub fn eos_strategy(mut self, strategy: impl EosStrategy + 'static) -> Self {
        self.strategy = Box::new(strategy);
        self
    }

    /// The EOS id set. Default: the tokenizer's [`Tokenizer::eos_ids`], or none.
    pub fn eos_ids(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        self.eos_ids = Some(ids.into_iter().collect());
        self
    }

    /// Add a stop string (matched on the decoded text, across token boundaries).
    pub fn stop_string(mut self, stop: impl Into<String>) -> Self {
        self.stop_strings.push(stop.into());
        self
    }

    /// Add several stop strings.
    pub fn stop_strings<I, S>(mut self, stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.stop_strings.extend(stops.into_iter().map(Into::into));
        self
    }

    /// Keep the matched stop string at the end of the output. Default false (trimmed).
    pub fn include_stop_string(mut self, include: bool) -> Self {
        self.include_stop_string = include;
        self
    }

    /// Generate at most `n` tokens; exactly `n` unless another criterion stops first.
    /// `0` finishes at once. Default: unbounded.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = Some(n);
        self
    }

    /// Finish (reason `MaxTime`) at the first step boundary after `limit` has elapsed
    /// since the generation started (prefill included). Default: none.
    pub fn max_time(mut self, limit: Duration) -> Self {
        self.max_time = Some(limit);
        self
    }

    /// Mask every EOS id until `n` tokens have been generated. Default 0.
    pub fn min_new_tokens(mut self, n: usize) -> Self {
        self.min_new_tokens = n;
        self
    }

    /// Finish when the tail repeats a pattern (see [`RepetitionDetection`]). Default: off.
    pub fn repetition_detection(mut self, detection: RepetitionDetection) -> Self {
        self.repetition = Some(detection);
        self
    }

    /// Context window in positions; when the cache holds this many, the context rolls.
    /// Must be `>= 4` and at most the cache capacity and the model's `max_context`.
    /// Default: the smaller of the two.
    pub fn context_window(mut self, positions: usize) -> Self {
        self.context_window = Some(positions);
        self
    }

    /// Tokens kept from the start of the sequence when the context rolls (attention
    /// sinks). Default: the prompt; always capped at half the window.
    pub fn sink_tokens(mut self, n: usize) -> Self {
        self.sink_tokens = Some(n);
        self
    }

    /// How the context rolls: [`ContextRoll::Shift`] (the default; re-prefills where
    /// the backend cannot shift) or [`ContextRoll::Reprefill`].
    pub fn context_roll(mut self, roll: ContextRoll) -> Self {
        self.context_roll = roll;
        self
    }

    /// Prompt tokens fed per forward call during prefill (and re-prefill after a roll).
    /// Must be `>= 1`. Default 512.
    pub fn prefill_chunk(mut self, n: usize) -> Self {
        self.prefill_chunk = n;
        self
    }

    /// Report the `n` most likely tokens with every token event. Default 0 (off).
    pub fn top_logprobs(mut self, n: usize) -> Self {
        self.top_logprobs = n;
        self
    }

    /// Record a [`StepTrace`] per step. Default off (it costs two passes over the
    /// logits per step).
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// A flag polled before every step: once `true`, generation finishes with reason
    /// `Cancelled`, keeping what was generated. The generator never resets it.
    pub fn cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Leave special tokens out of the text. Default true.
    pub fn skip_special_tokens(mut self, skip: bool) -> Self {
        self.skip_special_tokens = skip;
        self
    }

    /// Let the tokenizer add its special prefix (BOS) to text prompts. Default true.
    pub fn add_special_tokens(mut self, add: bool) -> Self {
        self.add_special_tokens = add;
        self
    }

    /// Validate and build.
    ///
    /// Errors: an empty stop string, stop strings without a tokenizer, `prefill_chunk
    /// = 0`, an EOS id or `top_logprobs` outside the vocabulary.
    pub fn build(self) -> Result<Generator<M>, GenerateError> {
        let stops = StopStrings::new(self.stop_strings)?;
        if !stops.is_empty() && self.tokenizer.is_none() {
            return Err(GenerateError::NoTokenizer { needed_for: "stop strings" });
        }
        if self.prefill_chunk == 0 {
            return Err(GenerateError::invalid("prefill_chunk", 0, "must be >= 1"));
        }
        let vocab = self.model.vocab_size();
        let eos_ids = match self.eos_ids {
            Some(ids) => ids,
            None => self.tokenizer.as_ref().map(|t| t.eos_ids().to_vec()).unwrap_or_default(),
        };
        if let Some(&bad) = eos_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::invalid("eos_ids", bad, "every EOS id must be < vocab_size"));
        }
        if self.top_logprobs > vocab {
            return Err(GenerateError::invalid("top_logprobs", self.top_logprobs, "must be <= vocab_size"));
        }
        let resume = match self.resume_tokens {
            Some(ids) => {
                if ids.is_empty() {
                    return Err(GenerateError::invalid("resume_tokens", "[]", "must hold >= 1 id"));
                }
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(GenerateError::invalid(
                        "resume_tokens",
                        bad,
                        "every id must be < vocab_size",
                    ));
                }
                Some(ids)
            }
            None => match self.tokenizer.as_deref() {
                Some(t) => resume_tokens_from_template(t, &self.resume_message)?,
                None => None,
            },
        };
        // Without resume tokens, stale turns fall back to stale back steps (the
        // `resume` method is an error), unless turns restart: that needs none.
        let restart = self.restart_on_resume.unwrap_or_else(|| self.mode.as_ref().is_some_and(|m| m.restart));
        let mode =
            self.mode.as_ref().map(|m| m.for_resume_tokens(resume.is_some() || restart)).transpose()?;
        let mut strategy = self.strategy;
        let mut chain = self.chain.unwrap_or_else(|| Chain::new(Multinomial));
        let mut mode_stages = None;
        if let Some(mode) = &mode {
            strategy = mode.strategy()?;
            mode_stages = Some(install_mode_stages(
                &mut chain,
                mode,
                self.tokenizer.as_deref().map(|t| t as &dyn Tokenizer),
                vocab,
            )?);
        }
        Ok(Generator {
            model: self.model,
            tokenizer: self.tokenizer,
            chain: {
                if let Some(policy) = self.non_finite {
                    chain.set_non_finite_policy(policy);
                }
                chain
            },
            seed: self.seed,
            strategy,
            mode_stages,
            mode_window: mode.as_ref().and_then(|m| m.window),
            mode: mode.clone(),
            resume,
            reask: self.resume_with_prompt || mode.as_ref().is_some_and(|m| m.reask),
            prompt_resume: None,
            forget: self.forget_on_resume.or_else(|| mode.as_ref().and_then(|m| m.forget)),
            restart,
            eos_ids,
            stops,
            include_stop_string: self.include_stop_string,
            max_new_tokens: self.max_new_tokens,
            max_time: self.max_time,
            min_new_tokens: self.min_new_tokens,
            repetition: self.repetition,
            context_window: self.context_window,
            sink_tokens: self.sink_tokens,
            context_roll: self.context_roll,
            prefill_chunk: self.prefill_chunk,
            top_logprobs: self.top_logprobs,
            trace: self.trace,
            cancel: self.cancel,
            skip_special_tokens: self.skip_special_tokens,
            add_special_tokens: self.add_special_tokens,
            logits: Vec::with_capacity(vocab),
            draws: Vec::with_capacity(4),
            extra_draws: Vec::with_capacity(4),
            top: Vec::new(),
        })
    }
}

/// Composes a model, a sampling chain, an EOS strategy and stop criteria; see the
/// crate docs. Built with [`Generator::builder`]; reusable across generations (each
/// starts from a fresh cache, the configured seed, and reset chain and strategy).
///
/// Buffers (logits, draws, candidates) live in the generator and are reused: a decode
/// step allocates only the text of its token event.
pub struct Generator<M: LanguageModel> {
    pub(crate) model: M,
    pub(crate) tokenizer: Option<Box<dyn Tokenizer + Send>>,
    pub(crate) chain: Chain,
    pub(crate) seed: u64,
    strategy: Box<dyn EosStrategy>,
    /// Where the perpetual mode's stages sit in the chain: `(index, count)`.
    mode_stages: Option<(usize, usize)>,
    /// The perpetual mode's attention window ([`PerpetualMode::window`]): narrows the
    /// context window.
    mode_window: Option<usize>,
    /// The perpetual mode in effect, after the fallback without resume tokens.
    mode: Option<PerpetualMode>,
    /// Fed after an [`EosAction::Resume`] (in place of the drawn EOS).
    resume: Option<Vec<u32>>,
    /// Resumed turns repeat the chat prompt's last user message
    /// ([`GeneratorBuilder::resume_with_prompt`], [`PerpetualMode::reask`]).
    reask: bool,
    /// This generation's resume tokens when they come from the prompt (`reask`).
    prompt_resume: Option<Vec<u32>>,
    /// A resumed turn rolls the context back to the prompt and this many recent
    /// tokens ([`GeneratorBuilder::forget_on_resume`], [`PerpetualMode::forget`]).
    forget: Option<usize>,
    /// Resumed turns restart from the prompt alone ([`GeneratorBuilder::restart_on_resume`],
    /// [`PerpetualMode::restart`]); wins over `forget` and `reask`.
    restart: bool,
    pub(crate) eos_ids: Vec<u32>,
    stops: StopStrings,
    include_stop_string: bool,
    pub(crate) max_new_tokens: Option<usize>,
    max_time: Option<Duration>,
    min_new_tokens: usize,
    repetition: Option<RepetitionDetection>,
    context_window: Option<usize>,
    sink_tokens: Option<usize>,
    context_roll: ContextRoll,
    pub(crate) prefill_chunk: usize,
    top_logprobs: usize,
    trace: bool,
    cancel: Option<Arc<AtomicBool>>,
    pub(crate) skip_special_tokens: bool,
    add_special_tokens: bool,
    logits: Vec<f32>,
    draws: Vec<u32>,
    extra_draws: Vec<u32>,
    top: Vec<Alternative>,
}

/// The state of one sequence being generated.
struct Session<C> {
    cache: C,
    /// Prompt followed by generated tokens. The last one is *pending*: not yet fed.
    tokens: Vec<u32>,
    prompt_len: usize,
    window: usize,
    sink_cap: usize,
    /// Cache layout: `tokens[..sink_len]` then `tokens[recent_start..len - 1]`, so
    /// `cache.seq_len() == sink_len + (len - 1 - recent_start)` between steps.
    sink_len: usize,
    recent_start: usize,
    rng: ChaCha8Rng,
    decoder: IncrementalDecoder,
    /// Bytes of `decoder.text()` streamed so far.
    emitted: usize,
    /// Text length at the last stop-string search.
    stop_scanned: usize,
    /// End of the output text once a stop string matched.
    text_end: Option<usize>,
    temperature: f32,
    base_temperature: f32,
    counts: Counts,
    timings: Timings,
    trace: Option<Vec<StepTrace>>,
    started: Instant,
    decode_started: Instant,
    finish: Option<FinishReason>,
    /// Generated-index ranges of hidden resume tokens (in `tokens`, not in the output).
    hidden: Vec<std::ops::Range<usize>>,
    /// `tokens[..frozen]` cannot be removed by a back step (the last resume's end).
    frozen: usize,
}

impl<C: KvCache> Session<C> {
    /// Generated tokens in the sequence, hidden resume tokens included: the index space
    /// of strategies, events and the trace.
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Generated tokens of the output (hidden resume tokens left out): what
    /// `max_new_tokens` and `min_new_tokens` count.
    fn produced(&self) -> usize {
        // Hidden tokens are frozen against back steps, so every one fed is still there.
        self.generated() - self.counts.resume_tokens
    }

    /// Generated tokens a back step can remove: all of them, except that after a
    /// context roll the cache can only drop what was fed since (`tokens.len() - 1 >=
    /// recent_start` always: the pending token is never in the cache).
    fn removable(&self) -> usize {
        (self.tokens.len() - 1 - self.recent_start).min(self.tokens.len() - self.frozen.max(self.prompt_len))
    }

    /// Cache length the feeding scheme requires between steps.
    fn expected_cache_len(&self) -> usize {
        self.sink_len + (self.tokens.len() - 1 - self.recent_start)
    }

    fn output(&self) -> Generation {
        let text = self.decoder.text();
        let end = self.text_end.unwrap_or(text.len()).min(text.len());
        Generation {
            text: text[..end].to_owned(),
            ids: visible_ids(&self.tokens[self.prompt_len..], &self.hidden),
            prompt_len: self.prompt_len,
            finish_reason: self.finish.clone().unwrap_or(FinishReason::Cancelled),
            counts: self.counts,
            timings: self.timings,
            trace: self.trace.clone(),
        }
    }
}

/// The user message of a resumed turn unless [`GeneratorBuilder::resume_message`] sets
/// another.
pub const DEFAULT_RESUME_MESSAGE: &str = "Continue.";

/// `ids` without the generated-index ranges in `hidden`.
fn visible_ids(ids: &[u32], hidden: &[std::ops::Range<usize>]) -> Vec<u32> {
    if hidden.is_empty() {
        return ids.to_vec();
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut from = 0;
    for r in hidden {
        out.extend_from_slice(&ids[from.min(ids.len())..r.start.min(ids.len())]);
        from = r.end;
    }
    out.extend_from_slice(&ids[from.min(ids.len())..]);
    out
}

/// The resume tokens of a chat template: what the template writes between the end of
/// an assistant message and the next assistant turn header, with `message` as the user
/// turn between (rendered around a marker, so any template works that renders an
/// assistant message verbatim). `None` when the tokenizer has no template or the
/// marker does not survive rendering; template and tokenizer errors are errors.
fn resume_tokens_from_template(
    tok: &dyn Tokenizer,
    message: &str,
) -> Result<Option<Vec<u32>>, GenerateError> {
    const MARK: &str = "\u{2063}perpetua-resume-mark\u{2063}";
    let messages =
        [ChatMessage::user("Hello."), ChatMessage::new("assistant", MARK), ChatMessage::user(message)];
    let Some(rendered) = tok.apply_chat_template(&messages, true) else {
        return Ok(None);
    };
    let rendered = rendered.map_err(GenerateError::Tokenizer)?;
    let Some(at) = rendered.find(MARK) else {
        return Ok(None);
    };
    let suffix = &rendered[at + MARK.len()..];
    let ids = tok.encode(suffix, false).map_err(GenerateError::Tokenizer)?;
    Ok((!ids.is_empty()).then_some(ids))
}

/// Insert `mode`'s stages; returns where they went (`(index, count)`).
fn install_mode_stages(
    chain: &mut Chain,
    mode: &PerpetualMode,
    tokenizer: Option<&dyn Tokenizer>,
    vocab: usize,
) -> Result<(usize, usize), GenerateError> {
    let stages = mode.stages(tokenizer, vocab)?;
    Ok(crate::mode::insert_stages(chain, stages))
}

pub(crate) fn model_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> GenerateError {
    GenerateError::Model(Box::new(e))
}

/// Feed `tokens` in chunks of `chunk` (logits of the last chunk land in `logits`).
pub(crate) fn feed_chunks<M: LanguageModel>(
    model: &M,
    cache: &mut M::Cache,
    tokens: &[u32],
    chunk: usize,
    logits: &mut Vec<f32>,
) -> Result<(), GenerateError> {
    for c in tokens.chunks(chunk) {
        model.forward(c, cache, logits).map_err(model_err)?;
    }
    Ok(())
}

/// The `n` best raw logits as log-probabilities, best first (ties: lower id first).
fn top_alternatives(logits: &[f32], lse: f64, n: usize, out: &mut Vec<Alternative>) {
    out.clear();
    for (i, &l) in logits.iter().enumerate() {
        if out.len() == n && out.last().is_none_or(|a| l <= a.logprob) {
            continue;
        }
        let at = out.partition_point(|a| a.logprob >= l);
        out.insert(at, Alternative { id: i as u32, logprob: l });
        out.truncate(n);
    }
    for a in out.iter_mut() {
        a.logprob = (f64::from(a.logprob) - lse) as f32;
    }
}

/// `Σ p(e)` over `ids` under softmax of the processed candidates (0 when none is left).
fn processed_set_probability(candidates: &mut Candidates, ids: &[u32]) -> f32 {
    if candidates.softmax().is_err() {
        return 0.0;
    }
    candidates.as_slice().iter().filter(|c| ids.contains(&c.id)).map(|c| c.prob).sum::<f32>().min(1.0)
}

/// Raw-distribution statistics of one step for the trace: (entropy, varentropy, p_eos,
/// top candidates).
type RawStats = Option<(f64, f64, f64, Vec<Alternative>)>;

impl<M: LanguageModel> Generator<M> {
    /// Start building a generator around `model` (owned, `&M` or `Arc<M>`).
    pub fn builder(model: M) -> GeneratorBuilder<M> {
        GeneratorBuilder {
            model,
            tokenizer: None,
            chain: None,
            seed: 0,
            strategy: Box::new(StopAtEos),
            eos_ids: None,
            stop_strings: Vec::new(),
            include_stop_string: false,
            max_new_tokens: None,
            max_time: None,
            min_new_tokens: 0,
            repetition: None,
            context_window: None,
            sink_tokens: None,
            context_roll: ContextRoll::default(),
            prefill_chunk: 512,
            top_logprobs: 0,
            trace: false,
            cancel: None,
            skip_special_tokens: true,
            add_special_tokens: true,
            non_finite: None,
            mode: None,
            resume_message: DEFAULT_RESUME_MESSAGE.to_owned(),
            resume_tokens: None,
            resume_with_prompt: false,
            forget_on_resume: None,
            restart_on_resume: None,
        }
    }

    /// The perpetual mode in effect ([`GeneratorBuilder::perpetual`],
    /// [`set_perpetual`](Self::set_perpetual)), after the fallback a generator without
    /// resume tokens applies ([`PerpetualMode::for_resume_tokens`]): compare its
    /// [`spec`](PerpetualMode::spec) with the requested one to tell a user what runs.
    /// `None` when no mode was set (a plain [`EosStrategy`], or
    /// [`set_eos_strategy`](Self::set_eos_strategy) since; that replaces the mode's
    /// strategy, so the mode no longer describes the generator).
    pub fn perpetual_mode(&self) -> Option<&PerpetualMode> {
        self.mode.as_ref()
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The sampling chain (to add or reorder stages between generations).
    pub fn chain_mut(&mut self) -> &mut Chain {
        &mut self.chain
    }

    /// The EOS id set in use.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Change the seed for the following generations.
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// The tokenizer, when one was given.
    pub fn tokenizer(&self) -> Option<&(dyn Tokenizer + Send)> {
        self.tokenizer.as_deref()
    }

    /// Change the new-token limit for the following generations (`None`: no limit
    /// but the other stop criteria).
    pub fn set_max_new_tokens(&mut self, n: Option<usize>) {
        self.max_new_tokens = n;
    }

    /// Turn the per-step trace on or off for the following generations.
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on;
    }

    /// Replace the EOS strategy.
    pub fn set_eos_strategy(&mut self, strategy: impl EosStrategy + 'static) {
        self.strategy = Box::new(strategy);
        self.mode = None;
    }

    /// Switch to perpetual mode `mode` for the following generations (as
    /// [`GeneratorBuilder::perpetual`]): its strategy replaces the current one, and the
    /// stages an earlier mode inserted are taken out of the chain before this mode's
    /// go in. Without resume tokens its stale turns fall back to stale back steps
    /// ([`PerpetualMode::for_resume_tokens`]). Errors: the mode's validation, DRY
    /// without a tokenizer, the `resume` method without resume tokens; the generator
    /// is unchanged then.
    pub fn set_perpetual(&mut self, mode: &PerpetualMode) -> Result<(), GenerateError> {
        let mode = &mode.for_resume_tokens(self.resume.is_some() || mode.restart)?;
        let strategy = mode.strategy()?;
        let stages =
            mode.stages(self.tokenizer.as_deref().map(|t| t as &dyn Tokenizer), self.model.vocab_size())?;
        if let Some((at, n)) = self.mode_stages.take() {
            // Only what the mode put there (a caller may have edited the chain since).
            for _ in 0..n {
                let ours = self
                    .chain
                    .stage_names()
                    .nth(at)
                    .is_some_and(|name| ["dry", "repetition_penalty"].contains(&name));
                if ours {
                    self.chain.remove(at);
                }
            }
        }
        let at = crate::mode::insert_stages(&mut self.chain, stages);
        self.mode_stages = Some(at);
        self.mode_window = mode.window;
        self.reask = mode.reask;
        self.forget = mode.forget;
        self.restart = mode.restart;
        self.strategy = strategy;
        self.mode = Some(mode.clone());
        Ok(())
    }

    /// The prompt's token ids.
    ///
    /// Errors: text or chat without a tokenizer, chat without a template, tokenizer
    /// failures, an empty prompt, an id outside the vocabulary.
    pub fn encode_prompt(&self, prompt: Prompt) -> Result<Vec<u32>, GenerateError> {
        let ids = match prompt {
            Prompt::Ids(ids) => ids,
            Prompt::Text(text) => {
                let tok = self
                    .tokenizer
                    .as_ref()
                    .ok_or(GenerateError::NoTokenizer { needed_for: "text prompts" })?;
                tok.encode(&text, self.add_special_tokens).map_err(GenerateError::Tokenizer)?
            }
            Prompt::Chat(messages) => {
                let tok = self
                    .tokenizer
                    .as_ref()
                    .ok_or(GenerateError::NoTokenizer { needed_for: "chat prompts" })?;
                let text = tok
                    .apply_chat_template(&messages, true)
                    .ok_or(GenerateError::NoChatTemplate)?
                    .map_err(GenerateError::Tokenizer)?;
                tok.encode(&text, false).map_err(GenerateError::Tokenizer)?
            }
        };
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let vocab = self.model.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::invalid(
                "prompt",
                format!("token id {bad}"),
                "every id must be < vocab_size",
            ));
        }
        Ok(ids)
    }

    pub(crate) fn window_for(&self, cache: &M::Cache, prompt_len: usize) -> Result<usize, GenerateError> {
        let limit = cache.capacity().min(self.model.max_context());
        let window = match self.context_window {
            Some(w) if w > limit => {
                return Err(GenerateError::invalid(
                    "context_window",
                    w,
                    "must be <= the cache capacity and the model's max_context",
                ));
            }
            Some(w) => w,
            None => limit,
        };
        let window = self.mode_window.map_or(window, |m| window.min(m));
        if window < 4 {
            return Err(GenerateError::invalid("context_window", window, "must be >= 4"));
        }
        if prompt_len > window {
            return Err(GenerateError::PromptTooLong { len: prompt_len, window });
        }
        Ok(window)
    }

    /// Prefill all prompt tokens but the last (the first step feeds it).
    fn prefill(&mut self, ids: &[u32], cache: &mut M::Cache) -> Result<Duration, GenerateError> {
        let t0 = Instant::now();
        let head = &ids[..ids.len().saturating_sub(1)];
        feed_chunks(&self.model, cache, head, self.prefill_chunk, &mut self.logits)?;
        Ok(t0.elapsed())
    }

    fn start_session(
        &mut self,
        ids: Vec<u32>,
        cache: M::Cache,
        window: usize,
        prefill: Duration,
        started: Instant,
        stream: u64,
    ) -> Session<M::Cache> {
        self.chain.reset();
        self.strategy.reset();
        // A temperature override from the EOS strategy needs a temperature stage.
        self.chain.ensure_temperature_stage();
        let base_temperature = self.chain.base_temperature();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream);
        let prompt_len = ids.len();
        Session {
            cache,
            tokens: ids,
            prompt_len,
            window,
            sink_cap: self.sink_tokens.unwrap_or(prompt_len).min(window / 2),
            sink_len: 0,
            recent_start: 0,
            rng,
            decoder: IncrementalDecoder::new(),
            emitted: 0,
            stop_scanned: 0,
            text_end: None,
            temperature: base_temperature,
            base_temperature,
            counts: Counts { prompt_tokens: prompt_len, prefill_tokens: prompt_len - 1, ..Counts::default() },
            timings: Timings { prefill, ..Timings::default() },
            trace: self.trace.then(Vec::new),
            started,
            decode_started: Instant::now(),
            finish: None,
            hidden: Vec::new(),
            frozen: 0,
        }
    }

    /// The prompt's ids for a new generation; with `reask`, also this generation's
    /// resume tokens, rendered from the chat prompt's last user message.
    fn start_prompt(&mut self, prompt: Prompt) -> Result<Vec<u32>, GenerateError> {
        self.prompt_resume = None;
        if self.reask
            && let (Prompt::Chat(messages), Some(tok)) = (&prompt, self.tokenizer.as_deref())
            && let Some(request) = messages.iter().rev().find(|m| m.role == "user")
        {
            self.prompt_resume = resume_tokens_from_template(tok, &request.content)?;
        }
        self.encode_prompt(prompt)
    }

    /// Start generating: encodes and prefills the prompt, then returns the event
    /// stream. Dropping the stream cancels generation.
    ///
    /// Errors (before any token): prompt errors ([`encode_prompt`](Self::encode_prompt)),
    /// a prompt longer than the window, an invalid window, model errors in the prefill.
    pub fn stream(&mut self, prompt: impl Into<Prompt>) -> Result<Stream<'_, M>, GenerateError> {
        let Opened { ids, cache, window, prefill, started } = self.open(prompt.into())?;
        let session = self.start_session(ids, cache, window, prefill, started, 0);
        Ok(Stream { generator: self, session, queue: VecDeque::new(), done: false })
    }

    /// What every generation starts with: the prompt encoded, a new cache, the window
    /// checked, the prompt prefilled (a panic in the model becomes
    /// [`GenerateError::Panicked`] `"prefill"`).
    fn open(&mut self, prompt: Prompt) -> Result<Opened<M::Cache>, GenerateError> {
        let started = Instant::now();
        let ids = self.start_prompt(prompt)?;
        let mut cache = self.model.new_cache().map_err(model_err)?;
        let window = self.window_for(&cache, ids.len())?;
        let prefill = panic::catch_unwind(AssertUnwindSafe(|| self.prefill(&ids, &mut cache)))
            .unwrap_or_else(|payload| Err(GenerateError::from_panic("prefill", payload)))?;
        Ok(Opened { ids, cache, window, prefill, started })
    }

    /// Generate to completion.
    ///
    /// Errors: as [`stream`](Self::stream); any error after generation began is
    /// [`GenerateError::PartialGeneration`] with the output so far.
    pub fn generate(&mut self, prompt: impl Into<Prompt>) -> Result<Generation, GenerateError> {
        let mut stream = self.stream(prompt)?;
        for item in stream.by_ref() {
            item?;
        }
        Ok(stream.into_output())
    }

    /// Generate to completion, calling `on_event` with every event.
    /// `ControlFlow::Break` cancels: generation finishes with reason `Cancelled` (the
    /// callback still receives the `Finished` event).
    ///
    /// Errors: as [`generate`](Self::generate).
    pub fn generate_with(
        &mut self,
        prompt: impl Into<Prompt>,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Generation, GenerateError> {
        let mut stream = self.stream(prompt)?;
        while let Some(item) = stream.next() {
            let event = item?;
            match panic::catch_unwind(AssertUnwindSafe(|| on_event(&event))) {
                Ok(flow) if flow.is_break() => stream.cancel(),
                Ok(_) => {}
                Err(payload) => {
                    return Err(stream.fail(GenerateError::from_panic("on_event callback", payload)));
                }
            }
        }
        Ok(stream.into_output())
    }

    /// `n` samples from one prompt: the prompt is prefilled once and each sample
    /// continues from a [`ForkableCache::fork`] of that cache. Sample `i` uses the
    /// seed's ChaCha stream `i`, so sample 0 equals [`generate`](Self::generate).
    ///
    /// Each sample's `counts` and `timings` report the shared prefill.
    ///
    /// Errors: as [`generate`](Self::generate) while no sample has finished (a failure
    /// in sample 0 carries its partial output, [`GenerateError::PartialGeneration`]);
    /// a later sample's failure is [`GenerateError::PartialSamples`], which keeps the
    /// finished samples and the failing one's partial output.
    pub fn generate_n(
        &mut self,
        prompt: impl Into<Prompt>,
        n: usize,
    ) -> Result<Vec<Generation>, GenerateError>
    where
        M::Cache: ForkableCache,
    {
        let Opened { ids, cache: base, window, prefill, started } = self.open(prompt.into())?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let sample = (|| {
                let cache = base.fork()?;
                let session = self.start_session(ids.clone(), cache, window, prefill, started, i as u64);
                let mut stream = Stream { generator: self, session, queue: VecDeque::new(), done: false };
                for item in stream.by_ref() {
                    item?;
                }
                Ok(stream.into_output())
            })();
            match sample {
                Ok(g) => out.push(g),
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    let source = match e {
                        GenerateError::PartialGeneration { output, source } => {
                            out.push(*output);
                            source
                        }
                        other => Box::new(other),
                    };
                    return Err(GenerateError::PartialSamples { samples: out, failed: i, n, source });
                }
            }
        }
        Ok(out)
    }

    fn finish(&mut self, s: &mut Session<M::Cache>, ev: &mut VecDeque<Event>, reason: FinishReason) {
        let end = match s.text_end {
            Some(end) => end,
            None => {
                s.decoder.finish();
                s.decoder.text().len()
            }
        };
        let text = s.decoder.text();
        let rest = if end > s.emitted { text[s.emitted..end].to_owned() } else { String::new() };
        s.emitted = s.emitted.max(end);
        s.timings.decode = s.decode_started.elapsed();
        s.finish = Some(reason.clone());
        ev.push_back(Event::Finished { reason, text: rest });
    }

    /// One decode step (or a finish). Events go to `ev`.
    fn step(&mut self, s: &mut Session<M::Cache>, ev: &mut VecDeque<Event>) -> Result<(), GenerateError> {
        let generated = s.generated();
        if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            self.finish(s, ev, FinishReason::Cancelled);
            return Ok(());
        }
        if self.max_new_tokens.is_some_and(|m| s.produced() >= m) {
            self.finish(s, ev, FinishReason::MaxNewTokens);
            return Ok(());
        }
        if self.max_time.is_some_and(|t| s.started.elapsed() >= t) {
            self.finish(s, ev, FinishReason::MaxTime);
            return Ok(());
        }
        if s.cache.seq_len() >= s.window {
            self.roll(s, ev)?;
        }

        // Feed the pending token: its logits predict the next one.
        let pending = s.tokens[s.tokens.len() - 1];
        let t0 = Instant::now();
        self.model.forward(&[pending], &mut s.cache, &mut self.logits).map_err(model_err)?;
        let t1 = Instant::now();
        s.timings.forward += t1 - t0;
        s.counts.forward_passes += 1;
        let vocab = self.model.vocab_size();
        if self.logits.len() != vocab {
            return Err(GenerateError::LogitsLength { got: self.logits.len(), expected: vocab });
        }
        if self.chain.non_finite_policy() == NonFinitePolicy::Sanitize {
            let repaired = perpetua_sampling::sanitize_logits(&mut self.logits);
            if repaired > 0 {
                s.counts.sanitized_logits += repaired;
                tracing::warn!(
                    position = generated,
                    repaired,
                    "non-finite logits from the model were sanitized"
                );
                if self.logits.iter().all(|&l| l == f32::NEG_INFINITY) {
                    return Err(perpetua_sampling::SamplingError::EmptyCandidates {
                        stage: "sanitize_non_finite",
                    }
                    .into());
                }
            }
        }

        let plan = self.strategy.plan_step(&StepInfo {
            prompt_len: s.prompt_len,
            generated,
            base_temperature: s.base_temperature,
        });
        let temperature = plan.temperature.unwrap_or(s.base_temperature);
        if temperature != s.temperature {
            ev.push_back(Event::TemperatureChanged { from: s.temperature, to: temperature });
            s.temperature = temperature;
        }

        // Raw-distribution quantities, before any mask.
        let lse = stats::log_sum_exp_fast(&self.logits)?;
        let entropy = (plan.observe_entropy && s.trace.is_none())
            .then(|| stats::entropy_fast(&self.logits, lse) as f32);
        let raw: RawStats = if s.trace.is_some() {
            let (h, v) = stats::entropy_varentropy(&self.logits)?;
            let mut top = Vec::with_capacity(TRACE_TOP);
            top_alternatives(&self.logits, lse, TRACE_TOP, &mut top);
            Some((h, v, stats::set_probability(&self.logits, &self.eos_ids)?, top))
        } else {
            None
        };
        if self.top_logprobs > 0 {
            top_alternatives(&self.logits, lse, self.top_logprobs, &mut self.top);
        }

        let mask_eos = plan.mask_eos || s.produced() < self.min_new_tokens;
        // Masking touches only EOS entries, and a masked EOS is never chosen, so the
        // chosen token's raw logit survives in the buffer.
        let raw_logit =
            |logits: &[f32], id: u32| logits.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
        if mask_eos {
            for &id in &self.eos_ids {
                if let Some(l) = self.logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        // Bans, unless they would leave nothing to draw (documented on `StepPlan::bans`).
        let bans = plan.bans.as_slice();
        if !bans.is_empty()
            && self
                .logits
                .iter()
                .enumerate()
                .any(|(i, &l)| l > f32::NEG_INFINITY && !bans.contains(&(i as u32)))
        {
            for &id in bans {
                if let Some(l) = self.logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }

        let ctx = SamplingContext::new(&s.tokens, s.prompt_len)
            .with_eos_ids(&self.eos_ids)
            .with_temperature_override(plan.temperature);
        self.chain.process(&self.logits, &ctx)?;
        let first = self.chain.sample_processed(&ctx, &mut s.rng)?;
        self.draws.clear();
        self.draws.push(first);
        let first_is_eos = !mask_eos && self.eos_ids.contains(&first);
        let mut p_eos = 0.0;
        if first_is_eos {
            let candidates = self.chain.candidates_mut();
            p_eos = processed_set_probability(candidates, &self.eos_ids);
            if plan.draws > 1 {
                // Later draws exclude the first and every EOS id (EosDrawn::draws: a
                // replacement must never be another EOS).
                candidates.mask(first);
                for &id in &self.eos_ids {
                    candidates.mask(id);
                }
                if draw_without_replacement(candidates, plan.draws - 1, &mut s.rng, &mut self.extra_draws)
                    .is_ok()
                {
                    self.draws.extend_from_slice(&self.extra_draws);
                }
            }
        }

        let mut token = first;
        let mut trace_event = TraceEvent::Token;
        if first_is_eos {
            let removable = s.removable();
            let mut action = self.strategy.on_eos(&EosDrawn {
                prompt_len: s.prompt_len,
                generated,
                removable,
                draws: &self.draws,
                p_eos,
                base_temperature: s.base_temperature,
            });
            if let EosAction::Backstep { n } = action
                && n.min(removable) == 0
            {
                // A back step that can remove nothing (right after a context roll, or
                // at the first token): the documented fallback is a replacement.
                self.strategy.on_backstep(0, generated);
                action = match self.non_eos_draw(&mut s.rng) {
                    Some(token) => EosAction::Replace { token },
                    None => EosAction::Stop,
                };
            }
            match action {
                EosAction::Stop => {
                    s.timings.sampling += t1.elapsed();
                    let chosen = raw_logit(&self.logits, first);
                    push_trace(s, raw, generated, first, chosen, lse, temperature, TraceEvent::Eos);
                    self.finish(s, ev, FinishReason::Eos);
                    return Ok(());
                }
                EosAction::Replace { token: replacement } => {
                    if replacement as usize >= vocab || self.eos_ids.contains(&replacement) {
                        return Err(GenerateError::InvalidStrategyAction {
                            strategy: self.strategy.name(),
                            action: format!(
                                "Replace {{ token: {replacement} }}: the replacement must be a non-EOS id < {vocab}"
                            ),
                        });
                    }
                    ev.push_back(Event::EosAvoided { position: generated, p_eos, replacement });
                    s.counts.eos_avoided += 1;
                    token = replacement;
                    trace_event = TraceEvent::EosAvoided;
                }
                EosAction::Backstep { .. } | EosAction::Resume => {
                    s.timings.sampling += t1.elapsed();
                    let chosen = raw_logit(&self.logits, first);
                    let event = match action {
                        EosAction::Backstep { n } => {
                            TraceEvent::Backstep { removed: self.backstep(s, ev, n, BackstepCause::Eos)? }
                        }
                        _ => TraceEvent::Resumed { hidden: self.resume(s, ev)? },
                    };
                    push_trace(s, raw, generated, first, chosen, lse, temperature, event);
                    return Ok(());
                }
            }
        }
        s.timings.sampling += t1.elapsed();

        // Accept `token`.
        let chosen = raw_logit(&self.logits, token);
        s.tokens.push(token);
        self.chain.accept(token);
        self.strategy.on_token(token, generated);
        s.counts.generated_tokens = s.produced();
        match &self.tokenizer {
            Some(tok) => {
                let bytes = if self.skip_special_tokens && tok.is_special(token) {
                    Cow::Borrowed(&[][..])
                } else {
                    tok.token_bytes(token).unwrap_or(Cow::Borrowed(&[][..]))
                };
                s.decoder.push(&bytes);
            }
            None => {
                s.decoder.push(&[]);
            }
        }
        let text = s.decoder.text();
        let mut finished = None;
        let mut release_to = text.len();
        if !self.stops.is_empty() {
            if let Some((start, k)) = self.stops.find(text, s.stop_scanned) {
                let end =
                    if self.include_stop_string { start + self.stops.strings()[k].len() } else { start };
                s.text_end = Some(end);
                release_to = end;
                finished = Some(FinishReason::StopString { index: k });
            } else {
                release_to = text.len() - self.stops.held_back(text);
            }
            s.stop_scanned = text.len();
        }
        let delta =
            if release_to > s.emitted { text[s.emitted..release_to].to_owned() } else { String::new() };
        s.emitted = s.emitted.max(release_to);
        let logprob = (f64::from(chosen) - lse) as f32;
        let top = if self.top_logprobs > 0 { self.top.clone() } else { Vec::new() };
        ev.push_back(Event::Token { index: generated, id: token, text: delta, logprob, top });

        // The degeneration hook: the strategy may answer the appended token with a back
        // step (a loop it found in the tail). Not after a stop string: that text ends.
        let t2 = Instant::now();
        let action = if finished.is_some() {
            TokenAction::Continue
        } else {
            let trace_entropy = raw.as_ref().map(|r| r.0 as f32);
            self.strategy.after_token(&TokenAppended {
                prompt_len: s.prompt_len,
                generated: &s.tokens[s.prompt_len..],
                removable: s.removable(),
                entropy: entropy.or(trace_entropy),
                temperature,
                base_temperature: s.base_temperature,
            })
        };
        s.timings.sampling += t2.elapsed();
        if let TokenAction::Resume { n } = action {
            let removed = if n > 0 { self.backstep(s, ev, n, BackstepCause::Loop)? } else { 0 };
            let hidden = self.resume(s, ev)?;
            let event = if removed > 0 {
                TraceEvent::LoopBackstep { removed }
            } else {
                TraceEvent::Resumed { hidden }
            };
            push_trace(s, raw, generated, token, chosen, lse, temperature, event);
            return Ok(());
        }
        if let TokenAction::Backstep { n } = action {
            let removed = self.backstep(s, ev, n, BackstepCause::Loop)?;
            push_trace(
                s,
                raw,
                generated,
                token,
                chosen,
                lse,
                temperature,
                TraceEvent::LoopBackstep { removed },
            );
            return Ok(());
        }
        push_trace(s, raw, generated, token, chosen, lse, temperature, trace_event);

        if let Some(reason) = finished {
            self.finish(s, ev, reason);
        } else if self.max_new_tokens.is_some_and(|m| s.produced() >= m) {
            self.finish(s, ev, FinishReason::MaxNewTokens);
        } else if let Some((pattern_len, repeats)) =
            self.repetition.as_ref().and_then(|r| r.detect(&s.tokens[s.prompt_len..]))
        {
            self.finish(s, ev, FinishReason::Repetition { pattern_len, repeats });
        }
        Ok(())
    }

    /// A non-EOS token for this step's EOS draw: `draws[1]` when the plan drew it,
    /// else a fresh draw among the processed candidates with the EOS ids masked; `None`
    /// when no non-EOS candidate has mass.
    fn non_eos_draw(&mut self, rng: &mut ChaCha8Rng) -> Option<u32> {
        if let Some(&token) = self.draws.get(1) {
            return Some(token);
        }
        let candidates = self.chain.candidates_mut();
        for &id in &self.eos_ids {
            candidates.mask(id);
        }
        draw_without_replacement(candidates, 1, rng, &mut self.extra_draws).ok()?;
        self.extra_draws.first().copied()
    }

    /// Remove up to `n` generated tokens from the sequence and the cache; returns the
    /// number removed (clamped to the generated count and to the tokens after the last
    /// context roll, which are the only ones the cache can drop from its tail).
    fn backstep(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        n: usize,
        cause: BackstepCause,
    ) -> Result<usize, GenerateError> {
        let generated = s.generated();
        let n = n.min(s.removable());
        let to = generated - n;
        s.tokens.truncate(s.tokens.len() - n);
        s.decoder.truncate_tokens(to);
        // The pending token (now the new last one) was fed already: drop it too, the
        // next step refeeds it. Cost: exactly the regenerated forward passes.
        let expected = s.expected_cache_len();
        s.cache.truncate(expected)?;
        if s.cache.seq_len() != expected {
            return Err(GenerateError::CacheOutOfSync { cache_len: s.cache.seq_len(), expected });
        }
        let text_len = s.decoder.text().len();
        s.emitted = s.emitted.min(text_len);
        s.stop_scanned = s.stop_scanned.min(text_len);
        // Stateful processors saw the removed tokens: replay the survivors.
        self.chain.reset();
        for &t in &s.tokens[s.prompt_len..] {
            self.chain.accept(t);
        }
        self.strategy.on_backstep(n, to);
        s.counts.backsteps += 1;
        if cause == BackstepCause::Loop {
            s.counts.loop_backsteps += 1;
        }
        s.counts.tokens_removed += n;
        s.counts.generated_tokens = to - s.counts.resume_tokens;
        ev.push_back(Event::Backstep { from: generated, to, text_len: s.emitted, cause });
        Ok(n)
    }

    /// End the model's turn and open the next one ([`EosAction::Resume`]): append the
    /// resume tokens in place of the drawn EOS, feed all but the last (which becomes the
    /// pending token, as after any append), rolling the context first when they do not
    /// fit. The output gets `"\n\n"`. Returns the number of resume tokens.
    fn resume(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
    ) -> Result<usize, GenerateError> {
        // A restart appends the prompt's last token again, hidden: fed after the prompt
        // alone, it asks for a new answer.
        let restart = self.restart.then(|| vec![s.tokens[s.prompt_len - 1]]);
        let Some(ids) = restart.or_else(|| self.prompt_resume.clone()).or_else(|| self.resume.clone()) else {
            return Err(GenerateError::InvalidStrategyAction {
                strategy: self.strategy.name(),
                action: "Resume: the generator has no resume tokens (it needs a tokenizer with a chat \
                         template, or GeneratorBuilder::resume_tokens)"
                    .to_owned(),
            });
        };
        let t0 = Instant::now();
        let position = s.generated();
        let old_len = s.tokens.len();
        // After an EOS draw the step has fed the pending token; after a token action
        // (or a back step) the cache still lacks it.
        let from = if s.cache.seq_len() == s.expected_cache_len() { old_len - 1 } else { old_len };
        s.tokens.extend_from_slice(&ids);
        let k = ids.len();
        for (i, &t) in ids.iter().enumerate() {
            self.chain.accept(t);
            s.decoder.push(if i == 0 { &b"\n\n"[..] } else { &[][..] });
        }
        // The cache holds `tokens[..old_len]` (this step fed the pending token); it must
        // end up holding all but the new last token.
        let mut fed_new = old_len + k - 1 - from;
        // Forgetting keeps the prompt; a restart all of it but the last token, which is
        // its one resume token.
        let fresh = if self.restart {
            Some((old_len, s.prompt_len - 1))
        } else {
            self.forget
                .and_then(|recall| forget_start(s, old_len, k, recall))
                .map(|start| (start, s.prompt_len))
        };
        if let Some((start, head)) = fresh {
            fed_new = k - 1;
            self.forget_context(s, ev, start, head)?;
        } else if s.expected_cache_len() >= s.window {
            self.roll(s, ev)?;
        } else {
            feed_chunks(
                &self.model,
                &mut s.cache,
                &s.tokens[from..old_len + k - 1],
                self.prefill_chunk,
                &mut self.logits,
            )?;
        }
        let expected = s.expected_cache_len();
        if s.cache.seq_len() != expected {
            return Err(GenerateError::CacheOutOfSync { cache_len: s.cache.seq_len(), expected });
        }
        s.hidden.push(position..position + k);
        s.frozen = s.tokens.len();
        s.counts.resumes += 1;
        s.counts.resume_tokens += k;
        s.counts.prefill_tokens += fed_new;
        s.counts.generated_tokens = s.produced();
        s.timings.forward += t0.elapsed();
        self.strategy.on_resume(s.generated());
        ev.push_back(Event::Resumed { position, hidden: k });
        Ok(k)
    }

    /// A resumed turn forgets ([`GeneratorBuilder::forget_on_resume`]) or restarts
    /// ([`GeneratorBuilder::restart_on_resume`]): the cache is cut back to the first
    /// `head` prompt tokens (the whole prompt when forgetting; all but its last token,
    /// appended again as the pending token, when restarting) and fed
    /// `tokens[start..len - 1]` (the recalled tokens and the resume tokens; nothing for
    /// a restart), which become its recent part. The prompt's entries are kept as they
    /// are (they never attended to what follows them) unless an earlier roll dropped
    /// part of them; then the cache is cleared and they are re-prefilled.
    fn forget_context(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        start: usize,
        head: usize,
    ) -> Result<(), GenerateError> {
        let t0 = Instant::now();
        let len = s.tokens.len();
        let cached = s.cache.seq_len();
        // Fed before: what the cache held of `tokens[start..]`.
        let covered = (s.recent_start + cached).saturating_sub(s.sink_len).min(len - 1);
        let refed = covered.saturating_sub(start);
        // Cache positions `0..head` hold `tokens[..head]`: no roll yet (the cache holds
        // `tokens[..cached]`), or every roll kept at least them as its sink.
        let head_intact = cached >= head && (s.sink_len >= head || s.recent_start == s.sink_len);
        let mut reprefilled = refed;
        if head_intact {
            s.cache.truncate(head)?;
        } else {
            s.cache.clear();
            feed_chunks(&self.model, &mut s.cache, &s.tokens[..head], self.prefill_chunk, &mut self.logits)?;
            reprefilled += head;
        }
        feed_chunks(
            &self.model,
            &mut s.cache,
            &s.tokens[start..len - 1],
            self.prefill_chunk,
            &mut self.logits,
        )?;
        let dropped = cached.saturating_sub(head + refed);
        rolled(s, ev, t0, (head, start), dropped, reprefilled)
    }

    /// The cache is full: keep the first `sink` tokens and the most recent ones, by a
    /// shift of the cache where the backend can ([`ContextRoll::Shift`]), else by
    /// re-prefilling them into the cleared cache (positions renumbered, as
    /// StreamingLLM).
    fn roll(&mut self, s: &mut Session<M::Cache>, ev: &mut VecDeque<Event>) -> Result<(), GenerateError> {
        let t0 = Instant::now();
        let len = s.tokens.len();
        let sink = s.sink_cap.min(len - 1);
        // window >= 4 and sink <= window / 2, so 1 <= keep and sink + keep < window:
        // the pending token fits after the roll.
        let keep = ((s.window - sink) / 2).max(1).min(len - 1 - sink);
        let recent_start = len - 1 - keep;
        // The cache holds `tokens[..sink_len]` then `tokens[recent_start..covered]`
        // (`covered` is `len - 1` between steps, less when a resumed turn appended
        // tokens not fed yet).
        let cached = s.cache.seq_len();
        let covered = (s.recent_start + cached)
            .checked_sub(s.sink_len)
            .filter(|&c| cached >= s.sink_len && c < len)
            .unwrap_or(len - 1);
        // A shift needs the new sink tokens at cache positions 0..sink (they are unless
        // an earlier roll kept fewer) and drops the cache positions from `sink` to where
        // `tokens[recent_start]` sits; then feeds what the cache did not hold yet.
        let shift = (self.context_roll == ContextRoll::Shift
            && cached >= s.sink_len
            && (sink <= s.sink_len || s.recent_start == s.sink_len)
            && s.recent_start <= recent_start
            && recent_start <= covered)
            .then(|| (sink, s.sink_len + (recent_start - s.recent_start) - sink));
        let shifted = match shift {
            Some((start, n)) => self.model.shift_cache(&mut s.cache, start, n).map_err(model_err)?,
            None => false,
        };
        let mut reprefilled = 0;
        if shifted {
            if covered < len - 1 {
                let new = &s.tokens[covered..len - 1];
                feed_chunks(&self.model, &mut s.cache, new, self.prefill_chunk, &mut self.logits)?;
            }
        } else {
            s.cache.clear();
            feed_chunks(&self.model, &mut s.cache, &s.tokens[..sink], self.prefill_chunk, &mut self.logits)?;
            feed_chunks(
                &self.model,
                &mut s.cache,
                &s.tokens[recent_start..len - 1],
                self.prefill_chunk,
                &mut self.logits,
            )?;
            // Tokens fed again (not those a resumed turn appended and never fed).
            reprefilled = sink + covered.saturating_sub(recent_start);
        }
        rolled(s, ev, t0, (sink, recent_start), recent_start - sink, reprefilled)
    }
}

/// A prompt opened for generation ([`Generator::open`]).
struct Opened<C> {
    ids: Vec<u32>,
    cache: C,
    window: usize,
    prefill: Duration,
    started: Instant,
}

/// Finish a context roll (or a forgetting resume): the new cache layout `(sink_len,
/// recent_start)`, checked against the cache; counts, time and the event.
fn rolled<C: KvCache>(
    s: &mut Session<C>,
    ev: &mut VecDeque<Event>,
    t0: Instant,
    (sink_len, recent_start): (usize, usize),
    dropped: usize,
    reprefilled: usize,
) -> Result<(), GenerateError> {
    s.sink_len = sink_len;
    s.recent_start = recent_start;
    let expected = s.expected_cache_len();
    if s.cache.seq_len() != expected {
        return Err(GenerateError::CacheOutOfSync { cache_len: s.cache.seq_len(), expected });
    }
    let took = t0.elapsed();
    s.counts.context_rolls += 1;
    s.counts.reprefilled_tokens += reprefilled;
    s.timings.roll += took;
    ev.push_back(Event::ContextRolled { dropped, kept: expected, reprefilled, took });
    Ok(())
}

/// Where the recent part of a forgetting resume starts ([`Generator::forget_context`]):
/// the `recall` tokens before the `k` resume tokens just appended (never the prompt),
/// shortened to fit the context window with the prompt; `None` when even the prompt
/// and the resume tokens do not fit (the resume then rolls as usual).
fn forget_start<C: KvCache>(s: &Session<C>, old_len: usize, k: usize, recall: usize) -> Option<usize> {
    // After the roll the cache holds the prompt, the recalled tokens and all but the
    // last resume token; the pending token needs one more position.
    let room = s.window.checked_sub(s.prompt_len + k + 1)?;
    Some(old_len - recall.min(room).min(old_len - s.prompt_len))
}

#[allow(clippy::too_many_arguments)]
fn push_trace<C>(
    s: &mut Session<C>,
    raw: RawStats,
    index: usize,
    token: u32,
    chosen_logit: f32,
    lse: f64,
    temperature: f32,
    event: TraceEvent,
) {
    if let (Some(trace), Some((entropy, varentropy, p_eos, top))) = (s.trace.as_mut(), raw) {
        trace.push(StepTrace {
            index,
            token,
            p_eos: p_eos as f32,
            eos_information_bits: stats::information_bits(p_eos) as f32,
            entropy: entropy as f32,
            varentropy: varentropy as f32,
            chosen_prob: (f64::from(chosen_logit) - lse).exp() as f32,
            temperature,
            event,
            top,
        });
    }
}

/// The event stream of one generation ([`Generator::stream`]).
///
/// Yields `Ok(event)` until [`Event::Finished`]; an error yields one
/// `Err(GenerateError::PartialGeneration { .. })` and ends the stream. Dropping the
/// stream cancels generation.
pub struct Stream<'g, M: LanguageModel> {
    generator: &'g mut Generator<M>,
    session: Session<M::Cache>,
    queue: VecDeque<Event>,
    done: bool,
}

impl<M: LanguageModel> Stream<'_, M> {
    /// Finish now with reason `Cancelled` (the `Finished` event is still yielded).
    /// No-op once finished.
    pub fn cancel(&mut self) {
        if self.session.finish.is_none() {
            self.generator.finish(&mut self.session, &mut self.queue, FinishReason::Cancelled);
            self.done = true;
        }
    }

    /// Whether generation has finished (events may still be queued).
    pub fn is_finished(&self) -> bool {
        self.session.finish.is_some()
    }

    /// Generated token ids so far, in the generated-index space of events (hidden
    /// resume tokens of resumed turns included; [`Generation::ids`] leaves them out).
    pub fn generated_ids(&self) -> &[u32] {
        &self.session.tokens[self.session.prompt_len..]
    }

    /// The cache's current length (between steps it is the sequence length minus the
    /// pending token, or less after a context roll).
    pub fn cache_len(&self) -> usize {
        self.session.cache.seq_len()
    }

    /// The sequence length (prompt + generated).
    pub fn sequence_len(&self) -> usize {
        self.session.tokens.len()
    }

    /// The whole sequence so far: prompt then generated tokens.
    pub fn sequence(&self) -> &[u32] {
        &self.session.tokens
    }

    /// The KV cache (read-only): between steps it holds the sequence minus its last,
    /// pending token — after a context roll, the sink tokens then the recent ones.
    pub fn cache(&self) -> &M::Cache {
        &self.session.cache
    }

    /// End the session with `source` as the reason: the
    /// [`PartialGeneration`](GenerateError::PartialGeneration) error carrying the
    /// output so far.
    fn fail(&mut self, source: GenerateError) -> GenerateError {
        self.queue.clear();
        self.done = true;
        self.session.finish = Some(FinishReason::Error);
        self.session.timings.decode = self.session.decode_started.elapsed();
        GenerateError::PartialGeneration { output: Box::new(self.session.output()), source: Box::new(source) }
    }

    /// The result; an unfinished stream is cancelled first.
    pub fn into_output(mut self) -> Generation {
        self.cancel();
        self.session.output()
    }
}

impl<M: LanguageModel> Iterator for Stream<'_, M> {
    type Item = Result<Event, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            // Panics in code the step calls (backend, custom stages, strategy) are caught
            // here so the output so far survives; the session ends with it.
            let step = panic::catch_unwind(AssertUnwindSafe(|| {
                self.generator.step(&mut self.session, &mut self.queue)
            }))
            .unwrap_or_else(|payload| Err(GenerateError::from_panic("decode step", payload)));
            if let Err(source) = step {
                // Events of the failed step are dropped; the output keeps every token
                // accepted before it.
                return Some(Err(self.fail(source)));
            }
            if self.session.finish.is_some() {
                self.done = true;
            }
        }
    }
}
