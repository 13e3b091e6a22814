//! perpetua: LLM text generation that can keep writing past EOS.
//!
//! This facade re-exports the workspace crates and gathers the common names in
//! [`prelude`]. Backends are Cargo features: `candle` (the default) brings
//! [`candle`] (llama-family GGUF/safetensors models on candle); `burn` brings `burn`
//! (the same models on burn's CPU `ndarray` backend), `burn-flex` burn's faster Flex
//! CPU backend, `burn-wgpu` and `burn-cuda` burn's GPU backends. Both implement [`generator::LanguageModel`], so a
//! `Generator` and every perpetual strategy run on either unchanged.
//!
//! One screen, from a model file to perpetual text (SmolLM2-135M-Instruct, fetched by
//! `cargo xtask fetch-model`):
//!
//! ```
//! use perpetua::prelude::*;
//!
//! let path = perpetua::candle::default_model_path()?;
//! let model = Llama::load(&path, &LoadOptions::default())?;
//! let tokenizer = LlamaTokenizer::from_gguf(&path)?;
//!
//! // The paper's setting: T 1.0, top-k 20; the recommended perpetual mode: where the
//! // model ends its answer or goes stale, a new answer to the prompt from the prompt
//! // alone; repetition loops cut like an EOS; DRY against verbatim repeats.
//! let chain = Chain::new(Multinomial).with(TopK::new(20)?).with(Temperature::new(1.0)?);
//! let mut generator = Generator::builder(model)
//!     .tokenizer(tokenizer)
//!     .chain(chain)
//!     .perpetual(PerpetualMode::recommended())
//!     .seed(42)
//!     .max_new_tokens(24)
//!     .build()?;
//!
//! let out = generator.generate(vec![ChatMessage::user("Tell me a story about a lighthouse.")])?;
//! assert_eq!(out.finish_reason, FinishReason::MaxNewTokens); // EOS never ends it
//! assert_eq!(out.ids.len(), 24);
//! println!("{}", out.text);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use perpetua_analysis as analysis;
pub use perpetua_generator as generator;
pub use perpetua_kv_cache as kv_cache;
pub use perpetua_perpetual as perpetual;
pub use perpetua_sampling as sampling;

#[cfg(feature = "candle")]
pub use perpetua_candle as candle;

/// The burn backend (features `burn`, `burn-wgpu`, `burn-cuda`). Its types share the
/// candle backend's names (`Llama`, `LlamaCache`, `LoadOptions`): use them through
/// this module (`perpetua::burn::Llama`); the [`prelude`] keeps the candle ones.
#[cfg(any(feature = "burn", feature = "burn-flex", feature = "burn-wgpu", feature = "burn-cuda"))]
pub use perpetua_burn as burn;

/// Text-quality metrics (distinct-n, repeated n-grams, word-window freshness, mean log-probability).
pub use perpetua_analysis::metrics;

/// Decoding beyond sampling, from [`generator`]: beam search, speculative decoding,
/// chain-of-thought decoding, and the watermark stage and detector from [`sampling`].
pub mod decoding {
    pub use perpetua_generator::{
        AnswerSpan, BeamConfig, BeamHypothesis, BeamSearchOutput, CotConfig, CotOutput, CotPath,
        EarlyStopping, SpeculativeConfig, SpeculativeOutput, SpeculativeStats,
    };
    pub use perpetua_sampling::processors::{GreenList, Watermark, WatermarkDetector, WatermarkScore};
}

/// The names most programs need.
pub mod prelude {
    #[cfg(feature = "candle")]
    pub use perpetua_candle::{Llama, LlamaCache, LlamaTokenizer, LoadOptions};
    pub use perpetua_generator::{
        BackstepCause, BeamConfig, ChatMessage, ContextRoll, CotConfig, DryOptions, EarlyStopping, EosMethod,
        Event, FinishReason, GenerateError, Generation, Generator, LanguageModel, PerpetualMode, Prompt,
        SpeculativeConfig, StrategyKind, Tokenizer,
    };
    pub use perpetua_kv_cache::{ForkableCache, KvCache};
    pub use perpetua_perpetual::{
        Anticipation, Backstep, BackstepWithSchedule, Budget, EosStrategy, LoopBackstep, LoopDetection,
        LoopGuard, Peak, PostEosResample, ResumeTurn, StopAtEos, SuppressEos, TemperatureSchedule,
    };
    pub use perpetua_sampling::processors::{
        MinP, RepetitionPenalty, Temperature, TopK, TopP, Watermark, WatermarkDetector,
    };
    pub use perpetua_sampling::samplers::{Greedy, Multinomial};
    pub use perpetua_sampling::{Chain, Preset, SamplingConfig};
}

/// The README's code blocks, compiled as doctests so the front-page example cannot rot.
#[cfg(all(doctest, feature = "candle"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
