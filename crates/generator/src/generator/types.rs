//! What goes in and comes out of a generation: prompts, events, traces, results.

use std::time::Duration;

#[cfg(doc)]
use super::{Generator, GeneratorBuilder};
use crate::ChatMessage;
#[cfg(doc)]
use crate::{GenerateError, LanguageModel};
#[cfg(doc)]
use perpetua_perpetual::{EosAction, EosStrategy, TokenAction};

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

/// One step of the optional trace (the quantities that move before an EOS). Distribution statistics are of the model's raw distribution at that step.
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
