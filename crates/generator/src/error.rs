//! The generator's error type.

use thiserror::Error;

use crate::{BoxError, CacheError, Generation};
use perpetua_sampling::SamplingError;

/// Everything that can go wrong while building a [`Generator`](crate::Generator) or
/// generating.
///
/// Errors after the first decode step are wrapped in
/// [`PartialGeneration`](Self::PartialGeneration), which carries every token
/// generated before the failure: nothing generated is lost.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// A builder or call parameter outside its domain.
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// The parameter as the user wrote it (`"max_new_tokens"`).
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// The valid domain.
        reason: &'static str,
    },
    /// The prompt has no tokens (the generator needs at least one to condition on).
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    /// The prompt does not fit the context window.
    #[error("the prompt has {len} tokens but the context window is {window}")]
    PromptTooLong {
        /// Prompt tokens.
        len: usize,
        /// The window.
        window: usize,
    },
    /// A feature that needs a tokenizer was used without one.
    #[error("{needed_for} needs a tokenizer; set one with `GeneratorBuilder::tokenizer`")]
    NoTokenizer {
        /// What needed it (`"text prompts"`, `"stop strings"`).
        needed_for: &'static str,
    },
    /// A chat prompt was given but the tokenizer has no chat template.
    #[error("the tokenizer has no chat template")]
    NoChatTemplate,
    /// The tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(#[source] BoxError),
    /// The model failed.
    #[error("model error: {0}")]
    Model(#[source] BoxError),
    /// The model wrote a logit vector of the wrong length.
    #[error("the model wrote {got} logits, expected vocab_size {expected}")]
    LogitsLength {
        /// Logits written.
        got: usize,
        /// `LanguageModel::vocab_size`.
        expected: usize,
    },
    /// A cache operation failed.
    #[error("cache error: {0}")]
    Cache(#[from] CacheError),
    /// The cache's length disagrees with the sequence it should hold (a backend bug).
    #[error("cache holds {cache_len} positions, the sequence needs {expected}")]
    CacheOutOfSync {
        /// `KvCache::seq_len`.
        cache_len: usize,
        /// What the generator's feeding scheme requires.
        expected: usize,
    },
    /// The sampling chain failed.
    #[error("sampling error: {0}")]
    Sampling(#[from] SamplingError),
    /// The EOS strategy answered something the generator cannot carry out.
    #[error("EOS strategy `{strategy}` answered {action}")]
    InvalidStrategyAction {
        /// The strategy's name.
        strategy: &'static str,
        /// What it answered and why that is invalid.
        action: String,
    },
    /// Code called by the generator panicked: a model backend, a custom processor or
    /// sampler, an EOS strategy, or the `generate_with` callback. The panic is caught at
    /// the step boundary (see the crate docs, "Panics"); inside a run it arrives wrapped
    /// in [`PartialGeneration`](Self::PartialGeneration) with the output so far.
    #[error("panic in {during}: {message}")]
    Panicked {
        /// Where: `"prefill"`, `"decode step"` or `"on_event callback"`; for the
        /// decoders `"beam search"`, `"speculative decoding"` or `"CoT decoding"`.
        during: &'static str,
        /// The panic payload when it was a string, else `"<non-string panic payload>"`.
        message: String,
    },
    /// Generation failed midway: `output` holds everything generated before `source`.
    #[error("generation failed after {} tokens: {source}", output.ids.len())]
    PartialGeneration {
        /// The output up to the failure (finish reason [`FinishReason::Error`](crate::FinishReason::Error)).
        output: Box<Generation>,
        /// What failed.
        #[source]
        source: Box<GenerateError>,
    },
    /// A sample of [`Generator::generate_n`](crate::Generator::generate_n) failed while
    /// others finished: `samples` holds every sample's output in sample order — the
    /// finished ones, and a failing one's partial output when it had begun decoding
    /// (finish reason [`FinishReason::Error`](crate::FinishReason::Error)).
    #[error("sample {failed} of {n} failed (the other samples are kept): {source}")]
    PartialSamples {
        /// Every sample's output, in sample order (a sample that failed before
        /// decoding has none).
        samples: Vec<Generation>,
        /// Index of the (first) sample that failed.
        failed: usize,
        /// Samples asked for.
        n: usize,
        /// What failed.
        #[source]
        source: Box<GenerateError>,
    },
}

impl GenerateError {
    /// Shorthand for [`GenerateError::InvalidParameter`].
    pub fn invalid(name: &'static str, value: impl std::fmt::Display, reason: &'static str) -> Self {
        Self::InvalidParameter { name, value: value.to_string(), reason }
    }

    /// A [`Panicked`](Self::Panicked) error from a caught panic payload.
    pub(crate) fn from_panic(during: &'static str, payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "<non-string panic payload>".to_owned()
        };
        Self::Panicked { during, message }
    }

    /// The partial output of a [`PartialGeneration`](Self::PartialGeneration).
    pub fn partial_output(&self) -> Option<&Generation> {
        match self {
            Self::PartialGeneration { output, .. } => Some(output),
            _ => None,
        }
    }

    /// The samples kept by a [`PartialSamples`](Self::PartialSamples) error.
    pub fn partial_samples(&self) -> Option<&[Generation]> {
        match self {
            Self::PartialSamples { samples, .. } => Some(samples),
            _ => None,
        }
    }
}
