//! [`GeneratorBuilder`]: collects the options, validates them and builds a [`Generator`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use perpetua_perpetual::{EosStrategy, StopAtEos};
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Chain, NonFinitePolicy};

use super::{Buffers, ContextRoll, Generator, Resumes, Settings};
use crate::{
    ChatMessage, GenerateError, LanguageModel, PerpetualMode, RepetitionDetection, StopStrings, Tokenizer,
};

/// Builder of a [`Generator`]; see each method for defaults.
pub struct GeneratorBuilder<M: LanguageModel> {
    model: M,
    tokenizer: Option<Box<dyn Tokenizer + Send>>,
    chain: Option<Chain>,
    strategy: Box<dyn EosStrategy>,
    eos_ids: Option<Vec<u32>>,
    stop_strings: Vec<String>,
    non_finite: Option<NonFinitePolicy>,
    settings: Settings,
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

    /// The user message of a resumed turn ([`EosAction::Resume`](perpetua_perpetual::EosAction::Resume), the `resume` EOS
    /// method). Default [`DEFAULT_RESUME_MESSAGE`]. The resume tokens are rendered from
    /// the tokenizer's chat template at [`build`](Self::build): the end of the
    /// assistant's turn, this message as a user turn, and the assistant's turn header.
    pub fn resume_message(mut self, message: impl Into<String>) -> Self {
        self.resume_message = message.into();
        self
    }

    /// Resumed turns repeat the request: when the prompt is a chat
    /// ([`Prompt::Chat`](super::Prompt::Chat)), the hidden user turn of a resume is the prompt's last user
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
    /// turn): fed after an [`EosAction::Resume`](perpetua_perpetual::EosAction::Resume) in place of the drawn EOS. Overrides
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
    /// repairs in [`Counts::sanitized_logits`](super::Counts::sanitized_logits) and logs a `tracing` warning.
    pub fn non_finite_policy(mut self, policy: NonFinitePolicy) -> Self {
        self.non_finite = Some(policy);
        self
    }

    /// Seed of the `ChaCha8Rng` each generation starts from. Default 0. The same seed,
    /// prompt and configuration give the same tokens.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = seed;
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
        self.settings.include_stop_string = include;
        self
    }

    /// Generate at most `n` tokens; exactly `n` unless another criterion stops first.
    /// `0` finishes at once. Default: unbounded.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.settings.max_new_tokens = Some(n);
        self
    }

    /// Finish (reason `MaxTime`) at the first step boundary after `limit` has elapsed
    /// since the generation started (prefill included). Default: none.
    pub fn max_time(mut self, limit: Duration) -> Self {
        self.settings.max_time = Some(limit);
        self
    }

    /// Mask every EOS id until `n` tokens have been generated. Default 0.
    pub fn min_new_tokens(mut self, n: usize) -> Self {
        self.settings.min_new_tokens = n;
        self
    }

    /// Finish when the tail repeats a pattern (see [`RepetitionDetection`]). Default: off.
    pub fn repetition_detection(mut self, detection: RepetitionDetection) -> Self {
        self.settings.repetition = Some(detection);
        self
    }

    /// Context window in positions; when the cache holds this many, the context rolls.
    /// Must be `>= 4` and at most the cache capacity and the model's `max_context`.
    /// Default: the smaller of the two.
    pub fn context_window(mut self, positions: usize) -> Self {
        self.settings.context_window = Some(positions);
        self
    }

    /// Tokens kept from the start of the sequence when the context rolls (attention
    /// sinks). Default: the prompt; always capped at half the window.
    pub fn sink_tokens(mut self, n: usize) -> Self {
        self.settings.sink_tokens = Some(n);
        self
    }

    /// How the context rolls: [`ContextRoll::Shift`] (the default; re-prefills where
    /// the backend cannot shift) or [`ContextRoll::Reprefill`].
    pub fn context_roll(mut self, roll: ContextRoll) -> Self {
        self.settings.context_roll = roll;
        self
    }

    /// Prompt tokens fed per forward call during prefill (and re-prefill after a roll).
    /// Must be `>= 1`. Default 512.
    pub fn prefill_chunk(mut self, n: usize) -> Self {
        self.settings.prefill_chunk = n;
        self
    }

    /// Sequences [`Generator::generate_batch`] and [`Generator::generate_n`] run side
    /// by side (one forward pass per step for all of them; the others wait and join as
    /// sequences finish). Must be `>= 1`. Default 8.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.settings.max_batch = n;
        self
    }

    /// Report the `n` most likely tokens with every token event. Default 0 (off).
    pub fn top_logprobs(mut self, n: usize) -> Self {
        self.settings.top_logprobs = n;
        self
    }

    /// Record a [`StepTrace`](super::StepTrace) per step. Default off (it costs two passes over the
    /// logits per step).
    pub fn trace(mut self, on: bool) -> Self {
        self.settings.trace = on;
        self
    }

    /// A flag polled before every step: once `true`, generation finishes with reason
    /// `Cancelled`, keeping what was generated. The generator never resets it.
    pub fn cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.settings.cancel = Some(flag);
        self
    }

    /// Leave special tokens out of the text. Default true.
    pub fn skip_special_tokens(mut self, skip: bool) -> Self {
        self.settings.skip_special_tokens = skip;
        self
    }

    /// Let the tokenizer add its special prefix (BOS) to text prompts. Default true.
    pub fn add_special_tokens(mut self, add: bool) -> Self {
        self.settings.add_special_tokens = add;
        self
    }

    /// Validate and build.
    ///
    /// Errors: an empty stop string, stop strings without a tokenizer, `prefill_chunk
    /// = 0`, `max_batch = 0`, an EOS id or `top_logprobs` outside the vocabulary.
    pub fn build(self) -> Result<Generator<M>, GenerateError> {
        let stops = StopStrings::new(self.stop_strings)?;
        if !stops.is_empty() && self.tokenizer.is_none() {
            return Err(GenerateError::NoTokenizer { needed_for: "stop strings" });
        }
        if self.settings.prefill_chunk == 0 {
            return Err(GenerateError::invalid("prefill_chunk", 0, "must be >= 1"));
        }
        if self.settings.max_batch == 0 {
            return Err(GenerateError::invalid("max_batch", 0, "must be >= 1"));
        }
        let vocab = self.model.vocab_size();
        let eos_ids = match self.eos_ids {
            Some(ids) => ids,
            None => self.tokenizer.as_ref().map(|t| t.eos_ids().to_vec()).unwrap_or_default(),
        };
        if let Some(&bad) = eos_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::invalid("eos_ids", bad, "every EOS id must be < vocab_size"));
        }
        if self.settings.top_logprobs > vocab {
            return Err(GenerateError::invalid(
                "top_logprobs",
                self.settings.top_logprobs,
                "must be <= vocab_size",
            ));
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
        if let Some(policy) = self.non_finite {
            chain.set_non_finite_policy(policy);
        }
        let mut mode_stages = None;
        if let Some(mode) = &mode {
            strategy = mode.strategy()?;
            let stages = mode.stages(self.tokenizer.as_deref().map(|t| t as &dyn Tokenizer), vocab)?;
            mode_stages = Some(crate::mode::insert_stages(&mut chain, stages));
        }
        let resumes = Resumes {
            mode_stages,
            mode_window: mode.as_ref().and_then(|m| m.window),
            reask: self.resume_with_prompt || mode.as_ref().is_some_and(|m| m.reask),
            forget: self.forget_on_resume.or_else(|| mode.as_ref().and_then(|m| m.forget)),
            restart,
            mode,
            tokens: resume,
            from_prompt: None,
        };
        let buffers = Buffers {
            logits: Vec::with_capacity(vocab),
            draws: Vec::with_capacity(4),
            extra_draws: Vec::with_capacity(4),
            top: Vec::new(),
        };
        Ok(Generator {
            model: self.model,
            tokenizer: self.tokenizer,
            chain,
            strategy,
            eos_ids,
            stops,
            settings: self.settings,
            resumes,
            buffers,
        })
    }
}

/// The user message of a resumed turn unless [`GeneratorBuilder::resume_message`] sets
/// another.
pub const DEFAULT_RESUME_MESSAGE: &str = "Continue.";

/// The resume tokens of a chat template: what the template writes between the end of
/// an assistant message and the next assistant turn header, with `message` as the user
/// turn between (rendered around a marker, so any template works that renders an
/// assistant message verbatim). `None` when the tokenizer has no template or the
/// marker does not survive rendering; template and tokenizer errors are errors.
pub(super) fn resume_tokens_from_template(
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

impl<M: LanguageModel> Generator<M> {
    /// Start building a generator around `model` (owned, `&M` or `Arc<M>`).
    pub fn builder(model: M) -> GeneratorBuilder<M> {
        GeneratorBuilder {
            model,
            tokenizer: None,
            chain: None,
            strategy: Box::new(StopAtEos),
            eos_ids: None,
            stop_strings: Vec::new(),
            non_finite: None,
            settings: Settings::default(),
            mode: None,
            resume_message: DEFAULT_RESUME_MESSAGE.to_owned(),
            resume_tokens: None,
            resume_with_prompt: false,
            forget_on_resume: None,
            restart_on_resume: None,
        }
    }
}
