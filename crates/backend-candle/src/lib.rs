//! llama-family models (GGUF quantized, safetensors) on candle, with a preallocated,
//! truncatable KV cache, the GGUF tokenizer and its chat template.
//!
//! - [`Llama`]: our own llama forward (grouped-query attention, RoPE over the model's
//!   whole context with its `rope.freq_base`, RMSNorm, SwiGLU, tied embeddings), weights
//!   from GGUF through candle's `QMatMul` or from Hugging Face safetensors. It implements
//!   [`perpetua_generator::LanguageModel`].
//! - [`LlamaCache`]: per-layer keys/values preallocated for `capacity` positions,
//!   appended in place, truncated in O(1), forkable
//!   ([`perpetua_kv_cache::KvCache`], [`perpetua_kv_cache::ForkableCache`]).
//! - From `perpetua-model-files` (re-exported): [`LlamaConfig`] and the families it
//!   describes, [`dense::DenseWeights`] (the same checkpoints dequantized to plain `f32`
//!   arrays, for backends with their own tensor library), [`LlamaTokenizer`] (byte-level
//!   BPE and SentencePiece from GGUF metadata or a `tokenizer.json`, with the chat
//!   template), [`inspect`].
//!
//! Numerics: the forward is *batch-invariant* — a prefill is bit-identical to feeding
//! the same tokens one by one — so truncate-and-refeed reproduces a fresh prefill
//! exactly (the kv-cache conformance kit passes with tolerance 0). With
//! [`LoadOptions::exact`] (the file's weight types) its logits equal
//! candle-transformers' `quantized_llama` decode path bit for bit.
//!
//! Speed: [`LoadOptions::default`] re-quantizes block-quantized weights (Q4_1 here) to
//! Q8_0 at load (≈ 0.5 s), whose scalar kernel is the fastest candle has on CPUs
//! without AVX2: measured 126 vs 78 tok/s decode on SmolLM2 Q4_1 (2 threads), at the
//! cost of bit parity with the file (greedy text agrees for a few dozen tokens, then
//! diverges; Q8_0 holds Q4_1 values to within 1/254 of a block's range).
//!
//! Devices: CPU by default; the `cuda` and `metal` features enable candle's GPU
//! backends (pass the device in [`LoadOptions`]).
//!
//! ```no_run
//! use perpetua_candle::{Llama, LlamaTokenizer, LoadOptions, default_model_path};
//! use perpetua_generator::{LanguageModel, Tokenizer};
//!
//! let path = default_model_path()?;
//! let model = Llama::load(&path, &LoadOptions::default())?;
//! let tokenizer = LlamaTokenizer::from_gguf(&path)?;
//! let mut cache = model.new_cache()?;
//! let mut logits = Vec::new();
//! let prompt = tokenizer.encode_ids("The capital of France is", false)?;
//! model.forward(&prompt, &mut cache, &mut logits)?;
//! assert_eq!(logits.len(), model.vocab_size());
//! # Ok::<(), perpetua_candle::CandleBackendError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod error;
mod kernels;
mod model;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::LlamaCache;
pub use candle_core::Device;
pub use candle_core::quantized::GgmlDType;
pub use error::{CandleBackendError, Result};
pub use model::{Attention, KvDtype, Llama, LoadOptions, MemoryReport};
// Reading, validating and tokenizing model files lives in `perpetua-model-files`
// (shared with the burn backend); re-exported so this crate's API stays whole.
pub use perpetua_model_files::{
    Activation, Architecture, DEFAULT_MODEL_FILE, LlamaConfig, LlamaTokenizer, MAX_CONTEXT, MODEL_DIR_ENV,
    ModelInfo, RopeScaling, SUPPORTED_PRE_TOKENIZERS, default_model_path, dense, inspect, model_dir,
};
