//! The `Generator`: what it holds, its accessors and its entry points. The sampling
//! loop is split by role:
//!
//! - [`builder`]: [`GeneratorBuilder`] and the [`Settings`] it hands to the generator;
//! - [`types`]: prompts, events, results;
//! - [`session`]: opening a generation (encode, cache, window, prefill) and the
//!   per-sequence state;
//! - [`step`]: one decode step, phase by phase ([`forward`]: its forward half);
//! - [`rolling`]: what rewrites a sequence: back steps, resumed turns, context rolls;
//! - [`stream`]: the event iterator that drives the steps;
//! - [`batch`]: several sequences side by side, one forward pass per step.

#[cfg(feature = "tokio")]
mod async_stream;
mod batch;
mod builder;
mod forward;
mod rolling;
mod session;
mod step;
mod stream;
mod types;

use std::ops::ControlFlow;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use perpetua_perpetual::EosStrategy;
use perpetua_sampling::{Chain, Stage};

#[cfg(feature = "tokio")]
pub use async_stream::AsyncStream;
pub use batch::{BatchRequest, SequenceOptions};
pub use builder::{DEFAULT_RESUME_MESSAGE, GeneratorBuilder};
pub(crate) use session::{feed_chunks, model_err};
pub use stream::{OwnedStream, Stream, StreamOf};
pub use types::{
    Alternative, BackstepCause, ContextRoll, Counts, Event, FinishReason, Generation, Prompt, StepTrace,
    TRACE_TOP, Timings, TraceEvent,
};

use crate::{GenerateError, LanguageModel, PerpetualMode, RepetitionDetection, StopStrings, Tokenizer};
pub(crate) use session::Feed;

/// The options a [`GeneratorBuilder`] collects and a [`Generator`] runs with: one value,
/// moved from the builder into the generator at [`GeneratorBuilder::build`] (the
/// builder's methods document each default).
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) seed: u64,
    pub(crate) include_stop_string: bool,
    pub(crate) max_new_tokens: Option<usize>,
    pub(crate) max_time: Option<Duration>,
    pub(crate) min_new_tokens: usize,
    pub(crate) repetition: Option<RepetitionDetection>,
    pub(crate) context_window: Option<usize>,
    pub(crate) sink_tokens: Option<usize>,
    pub(crate) context_roll: ContextRoll,
    pub(crate) prefill_chunk: usize,
    pub(crate) max_batch: usize,
    pub(crate) top_logprobs: usize,
    pub(crate) trace: bool,
    pub(crate) cancel: Option<Arc<AtomicBool>>,
    pub(crate) skip_special_tokens: bool,
    pub(crate) add_special_tokens: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            seed: 0,
            include_stop_string: false,
            max_new_tokens: None,
            max_time: None,
            min_new_tokens: 0,
            repetition: None,
            context_window: None,
            sink_tokens: None,
            context_roll: ContextRoll::default(),
            prefill_chunk: 512,
            max_batch: 8,
            top_logprobs: 0,
            trace: false,
            cancel: None,
            skip_special_tokens: true,
            add_special_tokens: true,
        }
    }
}

/// How a perpetual mode and resumed turns are set up (from the builder's perpetual
/// options, or [`Generator::set_perpetual`]).
#[derive(Default, Clone)]
struct Resumes {
    /// Where the perpetual mode's stages sit in the chain: `(index, count)`.
    mode_stages: Option<(usize, usize)>,
    /// The perpetual mode's attention window ([`PerpetualMode::window`]): narrows the
    /// context window.
    mode_window: Option<usize>,
    /// The perpetual mode in effect, after the fallback without resume tokens.
    mode: Option<PerpetualMode>,
    /// Fed after an [`EosAction::Resume`](perpetua_perpetual::EosAction::Resume) (in
    /// place of the drawn EOS).
    tokens: Option<Vec<u32>>,
    /// Resumed turns repeat the chat prompt's last user message
    /// ([`GeneratorBuilder::resume_with_prompt`], [`PerpetualMode::reask`]).
    reask: bool,
    /// This generation's resume tokens when they come from the prompt (`reask`).
    from_prompt: Option<Vec<u32>>,
    /// A resumed turn rolls the context back to the prompt and this many recent
    /// tokens ([`GeneratorBuilder::forget_on_resume`], [`PerpetualMode::forget`]).
    forget: Option<usize>,
    /// Resumed turns restart from the prompt alone ([`GeneratorBuilder::restart_on_resume`],
    /// [`PerpetualMode::restart`]); wins over `forget` and `reask`.
    restart: bool,
}

/// Per-step buffers, reused across steps and generations.
#[derive(Default)]
struct Buffers {
    logits: Vec<f32>,
    draws: Vec<u32>,
    extra_draws: Vec<u32>,
    top: Vec<Alternative>,
}

/// Composes a model, a sampling chain, an EOS strategy and stop criteria; see the
/// crate docs. Built with [`Generator::builder`]; reusable across generations (each
/// starts from a fresh cache, the configured seed, and reset chain and strategy).
///
/// Buffers (logits, draws, candidates) live in the generator and are reused: a decode
/// step allocates only the text of its token event.
pub struct Generator<M: LanguageModel> {
    model: M,
    tokenizer: Option<Box<dyn Tokenizer + Send>>,
    chain: Chain,
    strategy: Box<dyn EosStrategy>,
    eos_ids: Vec<u32>,
    stops: StopStrings,
    settings: Settings,
    resumes: Resumes,
    buffers: Buffers,
}

/// What the decoders ([`crate::decoding`]) use of a generator, borrowed apart so a
/// decoder can run the chain while it reads the EOS ids.
pub(crate) struct Parts<'g, M: LanguageModel> {
    pub(crate) model: &'g M,
    pub(crate) chain: &'g mut Chain,
    pub(crate) eos_ids: &'g [u32],
    pub(crate) settings: &'g Settings,
    pub(crate) tokenizer: Option<&'g (dyn Tokenizer + Send)>,
}

impl<M: LanguageModel> Parts<'_, M> {
    /// The text of generated `ids` (empty without a tokenizer).
    pub(crate) fn text_of(&self, ids: &[u32]) -> Result<String, GenerateError> {
        match self.tokenizer {
            Some(tok) => tok.decode(ids, self.settings.skip_special_tokens).map_err(GenerateError::Tokenizer),
            None => Ok(String::new()),
        }
    }
}

impl<M: LanguageModel> Generator<M> {
    /// The perpetual mode in effect ([`GeneratorBuilder::perpetual`],
    /// [`set_perpetual`](Self::set_perpetual)), after the fallback a generator without
    /// resume tokens applies ([`PerpetualMode::for_resume_tokens`]): compare its
    /// [`spec`](PerpetualMode::spec) with the requested one to tell a user what runs.
    /// `None` when no mode was set (a plain [`EosStrategy`], or
    /// [`set_eos_strategy`](Self::set_eos_strategy) since; that replaces the mode's
    /// strategy, so the mode no longer describes the generator).
    pub fn perpetual_mode(&self) -> Option<&PerpetualMode> {
        self.resumes.mode.as_ref()
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
        self.settings.seed = seed;
    }

    /// The tokenizer, when one was given.
    pub fn tokenizer(&self) -> Option<&(dyn Tokenizer + Send)> {
        self.tokenizer.as_deref()
    }

    /// Change the new-token limit for the following generations (`None`: no limit
    /// but the other stop criteria).
    pub fn set_max_new_tokens(&mut self, n: Option<usize>) {
        self.settings.max_new_tokens = n;
    }

    /// Turn the per-step trace on or off for the following generations.
    pub fn set_trace(&mut self, on: bool) {
        self.settings.trace = on;
    }

    /// Replace the EOS strategy.
    pub fn set_eos_strategy(&mut self, strategy: impl EosStrategy + 'static) {
        self.strategy = Box::new(strategy);
        self.resumes.mode = None;
    }

    /// Switch to perpetual mode `mode` for the following generations (as
    /// [`GeneratorBuilder::perpetual`]): its strategy replaces the current one, and the
    /// stages an earlier mode inserted are taken out of the chain before this mode's
    /// go in. Without resume tokens its stale turns fall back to stale back steps
    /// ([`PerpetualMode::for_resume_tokens`]). Errors: the mode's validation, DRY
    /// without a tokenizer, the `resume` method without resume tokens; the generator
    /// is unchanged then.
    pub fn set_perpetual(&mut self, mode: &PerpetualMode) -> Result<(), GenerateError> {
        let mode = &mode.for_resume_tokens(self.resumes.tokens.is_some() || mode.restart)?;
        let strategy = mode.strategy()?;
        let stages =
            mode.stages(self.tokenizer.as_deref().map(|t| t as &dyn Tokenizer), self.model.vocab_size())?;
        if let Some((at, n)) = self.resumes.mode_stages.take() {
            // Only what the mode put there (a caller may have edited the chain since).
            for _ in 0..n {
                let ours = self
                    .chain
                    .stages()
                    .nth(at)
                    .flatten()
                    .is_some_and(|stage| matches!(stage, Stage::Dry | Stage::RepetitionPenalty));
                if ours {
                    self.chain.remove(at);
                }
            }
        }
        let at = crate::mode::insert_stages(&mut self.chain, stages);
        let r = &mut self.resumes;
        r.mode_stages = Some(at);
        r.mode_window = mode.window;
        r.reask = mode.reask;
        r.forget = mode.forget;
        r.restart = mode.restart;
        r.mode = Some(mode.clone());
        self.strategy = strategy;
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
                tok.encode(&text, self.settings.add_special_tokens).map_err(GenerateError::Tokenizer)?
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

    /// Start generating: encodes and prefills the prompt, then returns the event
    /// stream. Dropping the stream cancels generation.
    ///
    /// Errors (before any token): prompt errors ([`encode_prompt`](Self::encode_prompt)),
    /// a prompt longer than the window, an invalid window, model errors in the prefill.
    pub fn stream(&mut self, prompt: impl Into<Prompt>) -> Result<Stream<'_, M>, GenerateError> {
        let opened = self.open(prompt.into(), Feed::AllButLast)?;
        let session = self.start_session(opened.ids, opened.cache, opened.at, 0);
        Ok(Stream::new(self, session))
    }

    /// As [`stream`](Self::stream), but the stream owns the generator: `'static` when
    /// the model is (a `Generator<Arc<Llama>>` shares one model among many), so it can
    /// move into a thread or a task; [`OwnedStream::into_parts`] gives the generator
    /// back with the result. With the `tokio` feature, [`OwnedStream::into_async`]
    /// drives it from a blocking thread as a `futures::Stream`.
    ///
    /// ```
    /// use perpetua_generator::testing::FakeModel;
    /// use perpetua_generator::{Event, Generator};
    ///
    /// let generator = Generator::builder(FakeModel::new(64)).max_new_tokens(5).build()?;
    /// let stream = generator.into_stream([1_u32, 2, 3]).map_err(|(e, _)| e)?;
    /// let handle = std::thread::spawn(move || {
    ///     let mut stream = stream;
    ///     let tokens = stream.by_ref().filter(|e| matches!(e, Ok(Event::Token { .. }))).count();
    ///     (tokens, stream.into_parts().0) // the generator comes back
    /// });
    /// let (tokens, mut generator) = handle.join().unwrap();
    /// assert_eq!(tokens, 5);
    /// assert_eq!(generator.generate([1_u32, 2, 3])?.ids.len(), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Errors: as [`stream`](Self::stream), with the generator handed back.
    pub fn into_stream(
        mut self,
        prompt: impl Into<Prompt>,
    ) -> Result<OwnedStream<M>, (GenerateError, Box<Self>)> {
        match self.open(prompt.into(), Feed::AllButLast) {
            Ok(opened) => {
                let session = self.start_session(opened.ids, opened.cache, opened.at, 0);
                Ok(StreamOf::new(self, session))
            }
            Err(e) => Err((e, Box::new(self))),
        }
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

    /// The options the generator runs with.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The parts of the generator a decoder uses, borrowed apart.
    pub(crate) fn parts(&mut self) -> Parts<'_, M> {
        Parts {
            model: &self.model,
            chain: &mut self.chain,
            eos_ids: &self.eos_ids,
            settings: &self.settings,
            tokenizer: self.tokenizer.as_deref(),
        }
    }
}
