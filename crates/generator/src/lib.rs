//! The perpetua `Generator`: one builder that composes a model, a sampling chain, an
//! EOS strategy and stop criteria over any backend implementing [`LanguageModel`].
//!
//! (The generator itself lands with issue 3; this file fixes the two traits every
//! backend implements.)
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub use perpetua_kv_cache::{CacheError, ForkableCache, KvCache};

/// The error type a backend returns, boxed so the generator stays backend-agnostic.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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

    /// Feed `tokens` at positions `cache.seq_len()..`, append their keys/values to the
    /// cache, and write the logits of the *last* position (host `f32`, length
    /// `vocab_size`) into `out` (cleared first, reused to avoid allocation).
    ///
    /// Errors leave the cache at its length before the call.
    fn forward(&self, tokens: &[u32], cache: &mut Self::Cache, out: &mut Vec<f32>)
    -> Result<(), Self::Error>;
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
