//! The perpetua `Generator`: one builder that composes a model, a sampling chain, an
//! EOS strategy and stop criteria over any backend implementing [`LanguageModel`].
//!
//! - [`LanguageModel`]: forward-with-cache over a truncatable [`KvCache`]; backends
//!   implement it. [`Tokenizer`]: encode, token bytes, decode, special tokens, EOS ids,
//!   an optional chat template.
//! - [`Generator`] (built with [`Generator::builder`]): a seeded
//!   [`Chain`](perpetua_sampling::Chain), an [`EosStrategy`](perpetua_perpetual::EosStrategy)
//!   slot (default [`StopAtEos`](perpetua_perpetual::StopAtEos)), and stop criteria —
//!   EOS ids, stop strings matched across token boundaries (trimmed by default, held
//!   back while streaming), max new tokens (exact), max time, min new tokens (EOS
//!   masked until reached), repetition detection, cancellation.
//! - Each step follows the strategy protocol: `plan_step` → temperature override, EOS
//!   mask and one-step bans → the chain's processors → `draws` distinct draws →
//!   `on_eos` when the first is EOS (stop, replace, or back step: sequence *and* cache
//!   truncated, so a back step costs only the regenerated forward passes) → `on_token`
//!   → `after_token` (the degeneration hook: a strategy that finds a loop in the tail
//!   answers with a back step, carried out the same way; the step's raw entropy is
//!   computed when the plan asks for it).
//! - [`PerpetualMode`] names a whole perpetual configuration (`"dynamic+dry+loop"`,
//!   `"perpetual"`): [`GeneratorBuilder::perpetual`] installs its strategy and its
//!   sampling stages (DRY with string sequence breakers, a windowed repetition
//!   penalty) in one line.
//! - When the cache is full the context *rolls*: the first `sink` tokens and the most
//!   recent ones are re-prefilled into a cleared cache, so generation can run
//!   indefinitely.
//! - Output: [`Generator::generate`] (a [`Generation`]: text, ids, finish reason,
//!   counts, timings, optional per-step [`StepTrace`]), [`Generator::stream`] (an
//!   iterator of [`Event`]s), [`Generator::generate_with`] (a callback), and
//!   [`Generator::generate_n`] (`n` samples sharing one prefill through
//!   [`ForkableCache::fork`]).
//! - Decoding beyond sampling, with the same builder: [`Generator::beam_search`]
//!   (length penalty, HF early stopping, n-best), [`Generator::speculative`] (a draft
//!   model, exact acceptance rule, both caches truncated on rejection) and
//!   [`Generator::cot_decode`] (chain-of-thought decoding). Watermarking is a sampling
//!   stage: `perpetua_sampling::processors::Watermark`.
//!
//! # Failures, bad logits and panics
//!
//! - **Nothing generated is lost.** An error after the first decode step is
//!   [`GenerateError::PartialGeneration`]: the output so far (text, ids, counts, trace)
//!   with finish reason `Error`, and the cause.
//! - **NaN / `+inf` logits** from the model are an error by default
//!   ([`SamplingError::NanLogit`](perpetua_sampling::SamplingError::NanLogit) /
//!   `InfiniteLogit`, naming the token id) and are never sampled silently.
//!   [`GeneratorBuilder::non_finite_policy`]`(Sanitize)` (HF `remove_invalid_values`)
//!   masks NaN tokens and gives `+inf` tokens all the mass, counting each repair in
//!   [`Counts::sanitized_logits`].
//! - **Panics** in code the generator calls — the backend's `forward`, custom
//!   processors and samplers, the EOS strategy, the [`Generator::generate_with`]
//!   callback — are caught at the step boundary with `catch_unwind` and returned as
//!   [`GenerateError::Panicked`] (inside `PartialGeneration` once tokens exist). The
//!   run ends; the generator stays usable (the next run resets the chain and the
//!   strategy; the cache was the run's own). The panic hook still runs (the default
//!   one prints the message), and with `panic = "abort"` nothing can be caught. Code
//!   the caller runs between [`Stream`] items is the caller's own. Beam search,
//!   speculative and CoT decoding catch panics at their call boundary: `Panicked`
//!   names the decoder, with no partial output (they keep several candidates, not one
//!   sequence).
//! - **Threads.** `Generator<M>` is `Send` when `M` is; a model is shared read-only as
//!   `Arc<M>` (every backend here is `Sync`), with one generator — and so one cache —
//!   per thread. The same seed gives the same tokens on any thread.
//!
//! The feature `testing` adds [`testing`]: a deterministic fake model whose cache
//! passes the kv-cache conformance kit, and a byte-level tokenizer.
//!
//! ```
//! # #[cfg(feature = "testing")] {
//! use perpetua_generator::testing::{ByteTokenizer, FakeModel};
//! use perpetua_generator::{Event, FinishReason, Generator};
//! use perpetua_sampling::{Chain, processors::TopK, samplers::Multinomial};
//!
//! let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(ByteTokenizer::EOS);
//! let chain = Chain::new(Multinomial).with(TopK::new(20)?);
//! let mut generator = Generator::builder(model)
//!     .tokenizer(ByteTokenizer::new())
//!     .chain(chain)
//!     .seed(7)
//!     .max_new_tokens(32)
//!     .build()?;
//!
//! let out = generator.generate("Once upon a time")?;
//! assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
//! assert_eq!(out.ids.len(), 32);
//! assert_eq!(generator.generate("Once upon a time")?.ids, out.ids); // same seed, same tokens
//!
//! // Streaming: token events carry text deltas; they add up to the final text.
//! let mut text = String::new();
//! for event in generator.stream("Once upon a time")? {
//!     match event? {
//!         Event::Token { text: delta, .. } => text.push_str(&delta),
//!         Event::Finished { text: rest, .. } => text.push_str(&rest),
//!         _ => {}
//!     }
//! }
//! assert_eq!(text, out.text);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod decoding;
mod detok;
mod error;
mod generator;
pub mod mode;
mod settled;
mod stop;
#[cfg(feature = "testing")]
pub mod testing;

pub use decoding::{
    AnswerSpan, BeamConfig, BeamHypothesis, BeamSearchOutput, CotConfig, CotOutput, CotPath, EarlyStopping,
    SpeculativeConfig, SpeculativeOutput, SpeculativeStats,
};
pub use detok::IncrementalDecoder;
pub use error::GenerateError;
#[cfg(feature = "tokio")]
pub use generator::AsyncStream;
pub use generator::{
    Alternative, BackstepCause, BatchRequest, ContextRoll, Counts, DEFAULT_RESUME_MESSAGE, Event,
    FinishReason, Generation, Generator, GeneratorBuilder, OwnedStream, Prompt, SequenceOptions, StepTrace,
    Stream, StreamOf, TRACE_TOP, Timings, TraceEvent,
};
pub use mode::{
    AnticipationOptions, DEFAULT_DRY_BREAKERS, DEFAULT_RECALL, DEFAULT_REWIND, DryOptions, EosMethod,
    PerpetualMode, WindowedRepetition,
};
pub use settled::SettledText;
pub use stop::{RepetitionDetection, StopStrings};

pub use perpetua_kv_cache::{CacheError, ForkableCache, KvCache};
pub use perpetua_perpetual::StrategyKind;

/// The error type a backend returns, boxed so the generator stays backend-agnostic.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One sequence's part of a batched forward pass ([`LanguageModel::forward_batch`]).
#[derive(Debug)]
pub struct BatchItem<'a, C> {
    /// Tokens to feed (non-empty), at positions `cache.seq_len()..`.
    pub tokens: &'a [u32],
    /// The sequence's own cache.
    pub cache: &'a mut C,
}

/// A failed batched forward pass ([`LanguageModel::forward_batch`]): every cache is at
/// its length before the call.
#[derive(Debug, thiserror::Error)]
#[error("batched forward pass failed{}: {source}", index.map(|i| format!(" at item {i}")).unwrap_or_default())]
pub struct BatchError<E: std::error::Error + 'static> {
    /// The item whose input or cache failed; `None` when the failure was the pass's
    /// (a device error), not one item's.
    pub index: Option<usize>,
    /// What failed.
    #[source]
    pub source: E,
}

/// A causal language model with an external, truncatable KV cache.
///
/// Weights are read-only during `forward` (`&self`), so one model can be shared across
/// threads (`Arc<M>`) with one cache per sequence.
pub trait LanguageModel {
    /// The model's cache type.
    type Cache: KvCache;
    /// The backend's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Vocabulary size: the length of every logit vector `forward` writes.
    fn vocab_size(&self) -> usize;

    /// The longest context the model supports (positions).
    fn max_context(&self) -> usize;

    /// A new, empty cache (capacity: the model's default, usually `max_context`).
    fn new_cache(&self) -> Result<Self::Cache, Self::Error>;

    /// A new, empty cache holding at most `capacity` positions (small caches for tests,
    /// a per-sequence memory budget). The default ignores `capacity` and returns
    /// [`new_cache`](Self::new_cache); backends that can size their caches override it
    /// (both of ours do, erroring on `0` or more than `max_context`).
    fn new_cache_with_capacity(&self, capacity: usize) -> Result<Self::Cache, Self::Error> {
        let _ = capacity;
        self.new_cache()
    }

    /// Feed `tokens` at positions `cache.seq_len()..`, append their keys/values to the
    /// cache, and write the logits of the *last* position (host `f32`, length
    /// `vocab_size`) into `out` (cleared first, reused to avoid allocation).
    ///
    /// Errors leave the cache at its length before the call.
    fn forward(&self, tokens: &[u32], cache: &mut Self::Cache, out: &mut Vec<f32>)
    -> Result<(), Self::Error>;

    /// Feed `tokens` like [`forward`](Self::forward), but write the logits of *every*
    /// fed position: `out` (cleared first) holds `tokens.len() × vocab_size` values,
    /// row `i` predicting the token after `tokens[i]`. Speculative decoding verifies
    /// all draft tokens with one call.
    ///
    /// The default feeds the tokens one at a time through `forward` (correct for every
    /// model, no faster than a loop); backends that compute every position's hidden
    /// state in a prefill override it with one batched pass.
    ///
    /// Errors leave the cache at its length before the call.
    fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        out: &mut Vec<f32>,
    ) -> Result<(), Self::Error> {
        out.clear();
        if tokens.is_empty() {
            // Let the backend report empty input its own way.
            return self.forward(tokens, cache, out);
        }
        let start = cache.seq_len();
        let mut row = Vec::with_capacity(self.vocab_size());
        for t in tokens {
            if let Err(e) = self.forward(std::slice::from_ref(t), cache, &mut row) {
                // Best effort: `start <= seq_len` always holds here, so this cannot fail
                // on a conforming cache.
                let _ = cache.truncate(start);
                return Err(e);
            }
            out.extend_from_slice(&row);
        }
        Ok(())
    }

    /// Shift the cache (a context shift, as llama.cpp's): drop the cached positions
    /// `start..start + n` and move the later ones down by `n`, re-rotating their keys
    /// so they read as if fed at their new positions. The generator rolls its context
    /// this way (O(cache) memory work instead of re-prefilling the kept tokens).
    ///
    /// Returns `Ok(false)` when the backend cannot shift (the default; the cache is
    /// untouched and the generator re-prefills instead).
    ///
    /// Only positions change: a kept entry still carries what its token attended to
    /// when it was computed (the dropped text included, in every layer but the first),
    /// so the logits after a shift differ from a fresh prefill of the kept tokens by an
    /// amount each backend measures and documents.
    ///
    /// Errors: `start + n > cache.seq_len()`, backend failures; after an error the
    /// cache may be partly shifted (clear it before use).
    fn shift_cache(&self, cache: &mut Self::Cache, start: usize, n: usize) -> Result<bool, Self::Error> {
        let _ = (cache, start, n);
        Ok(false)
    }

    /// Several sequences in one forward pass: `batch[i]` feeds its tokens at positions
    /// `cache.seq_len()..` of its own cache (ragged: a prefill of one sequence and
    /// decode steps of others may share a pass), and `out` (cleared first) gets each
    /// item's last-position logits, row `i` at `out[i · vocab_size..]`.
    ///
    /// The default runs [`forward`](Self::forward) item by item (correct for every
    /// model, no faster than a loop); backends that can share the weight reads of a
    /// pass override it. Either way an item's logits equal its solo `forward`'s, and
    /// feeding, truncating or rolling one item never changes another's.
    ///
    /// Errors: [`BatchError`] naming the failing item (its index, when the failure is
    /// that item's) with its error; every cache is left at its length before the call,
    /// so a caller can drop the failing item and run the others again.
    fn forward_batch(
        &self,
        batch: &mut [BatchItem<'_, Self::Cache>],
        out: &mut Vec<f32>,
    ) -> Result<(), BatchError<Self::Error>> {
        out.clear();
        let mut row = Vec::with_capacity(self.vocab_size());
        for i in 0..batch.len() {
            let item = &mut batch[i];
            if let Err(source) = self.forward(item.tokens, item.cache, &mut row) {
                for done in &mut batch[..i] {
                    let _ = done.cache.truncate(done.cache.seq_len() - done.tokens.len());
                }
                return Err(BatchError { index: Some(i), source });
            }
            out.extend_from_slice(&row);
        }
        Ok(())
    }
}

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// An assistant message (an earlier reply of the model, in a multi-turn chat).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Text ↔ token ids for a model.
pub trait Tokenizer {
    /// Encode `text`. `add_special`: add the model's BOS (or other special prefix) if it
    /// uses one. Special-token text (`<|im_start|>`) in `text` is parsed as the special
    /// token.
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, BoxError>;

    /// The raw bytes a token stands for (byte-level BPE tokens may hold part of a
    /// UTF-8 character). Special tokens give their text. `None` for an id outside the
    /// vocabulary.
    fn token_bytes(&self, id: u32) -> Option<std::borrow::Cow<'_, [u8]>>;

    /// Decode ids to text (invalid UTF-8 replaced by U+FFFD). `skip_special`: leave out
    /// special tokens.
    fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, BoxError>;

    /// Whether `id` is a special (control) token.
    fn is_special(&self, id: u32) -> bool;

    /// The model's end-of-sequence ids (for chat models: the end-of-turn token too).
    fn eos_ids(&self) -> &[u32];

    /// Render a conversation through the model's chat template, ending with the
    /// assistant's turn header when `add_generation_prompt`. `None` when the model has
    /// no template.
    fn apply_chat_template(
        &self,
        _messages: &[ChatMessage],
        _add_generation_prompt: bool,
    ) -> Option<Result<String, BoxError>> {
        None
    }
}

/// `LanguageModel` for a pointer to a model (`&M`, `Arc<M>`): every method forwarded,
/// so a generator can borrow or share its model.
macro_rules! forward_language_model {
    ($pointer:ty) => {
        impl<M: LanguageModel + ?Sized> LanguageModel for $pointer {
            type Cache = M::Cache;
            type Error = M::Error;
            fn vocab_size(&self) -> usize {
                (**self).vocab_size()
            }
            fn max_context(&self) -> usize {
                (**self).max_context()
            }
            fn new_cache(&self) -> Result<Self::Cache, Self::Error> {
                (**self).new_cache()
            }
            fn new_cache_with_capacity(&self, capacity: usize) -> Result<Self::Cache, Self::Error> {
                (**self).new_cache_with_capacity(capacity)
            }
            fn forward(
                &self,
                tokens: &[u32],
                cache: &mut Self::Cache,
                out: &mut Vec<f32>,
            ) -> Result<(), Self::Error> {
                (**self).forward(tokens, cache, out)
            }
            fn forward_all(
                &self,
                tokens: &[u32],
                cache: &mut Self::Cache,
                out: &mut Vec<f32>,
            ) -> Result<(), Self::Error> {
                (**self).forward_all(tokens, cache, out)
            }
            fn shift_cache(
                &self,
                cache: &mut Self::Cache,
                start: usize,
                n: usize,
            ) -> Result<bool, Self::Error> {
                (**self).shift_cache(cache, start, n)
            }
            fn forward_batch(
                &self,
                batch: &mut [BatchItem<'_, Self::Cache>],
                out: &mut Vec<f32>,
            ) -> Result<(), BatchError<Self::Error>> {
                (**self).forward_batch(batch, out)
            }
        }
    };
}

forward_language_model!(&M);
forward_language_model!(std::sync::Arc<M>);

impl<T: Tokenizer + ?Sized> Tokenizer for std::sync::Arc<T> {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, BoxError> {
        (**self).encode(text, add_special)
    }
    fn token_bytes(&self, id: u32) -> Option<std::borrow::Cow<'_, [u8]>> {
        (**self).token_bytes(id)
    }
    fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, BoxError> {
        (**self).decode(ids, skip_special)
    }
    fn is_special(&self, id: u32) -> bool {
        (**self).is_special(id)
    }
    fn eos_ids(&self) -> &[u32] {
        (**self).eos_ids()
    }
    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Option<Result<String, BoxError>> {
        (**self).apply_chat_template(messages, add_generation_prompt)
    }
}
