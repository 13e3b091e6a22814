//! llama-family models on [burn](https://burn.dev): one model definition that runs on
//! whichever burn backend the [`Device`] names, with a truncatable KV cache that grows
//! on demand, for perpetua's `Generator` and every perpetual strategy unchanged.
//!
//! - [`Llama`]: grouped-query attention, RoPE over the model's whole context with its
//!   `rope.freq_base`, RMSNorm, SwiGLU, tied embeddings, and every family's variation
//!   the candle backend runs (Llama 3 RoPE scaling, Mistral/Phi-3 windows, Qwen2 biases,
//!   Qwen3 q/k norms, Gemma 2/3: GeGLU, soft-capping, post norms, windowed layers with
//!   their own RoPE base); weights from GGUF (dequantized to `f32` at load) or Hugging
//!   Face safetensors. It implements
//!   [`perpetua_generator::LanguageModel`].
//! - [`LlamaCache`]: per-layer keys/values on the device, grown by doubling up to
//!   `capacity` positions as the sequence needs them, appended in place, truncated in
//!   O(1), forkable
//!   ([`perpetua_kv_cache::KvCache`], [`perpetua_kv_cache::ForkableCache`]).
//! - [`LlamaTokenizer`]: the GGUF tokenizer and chat template, and the checkpoint
//!   reading and validation, from `perpetua-model-files` (shared with `perpetua-candle`,
//!   which this crate does not depend on).
//!
//! # Backends (features)
//!
//! | feature | device | notes |
//! |---|---|---|
//! | `ndarray` (default) | `Device::ndarray()` | CPU, multi-threaded, SIMD kernels |
//! | `wgpu` | `Device::wgpu(..)` | Vulkan / Metal / DX12 / WebGPU |
//! | `cuda` | `Device::cuda(0)` | NVIDIA, needs the CUDA toolkit |
//!
//! [`LoadOptions::default`] takes [`Device::default`]: the first enabled backend in
//! burn's priority order (GPUs before CPUs).
//!
//! # Numerics
//!
//! Everything runs in `f32` (a GGUF's quantized matrices are dequantized exactly at
//! load). Logits match the candle backend loaded with `f32` weights
//! (`requantize: Some(GgmlDType::F32)`, `kv_dtype: KvDtype::F32`, reference attention)
//! to within 1e-3 — the
//! tests check it on the real model — but not bit for bit: the matmuls sum in another
//! order, and a batched prefill differs from token-by-token feeding by float rounding
//! (the kv-cache conformance kit passes with tolerance 1e-3). Against the candle
//! backend's default (Q8_0 weights with 8-bit activations) the difference is the
//! quantization error, not rounding.
//!
//! ```no_run
//! use perpetua_burn::{Llama, LlamaTokenizer, LoadOptions};
//! use perpetua_generator::LanguageModel;
//!
//! let path = perpetua_burn::default_model_path()?;
//! let model = Llama::load(&path, &LoadOptions::default())?;
//! let tokenizer = LlamaTokenizer::from_gguf(&path)?;
//! let mut cache = model.new_cache()?;
//! let mut logits = Vec::new();
//! let prompt = tokenizer.encode_ids("The capital of France is", false)?;
//! model.forward(&prompt, &mut cache, &mut logits)?;
//! assert_eq!(logits.len(), model.vocab_size());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod error;
mod model;

pub use burn_tensor::Device;
pub use cache::{INITIAL_POSITIONS, LlamaCache};
pub use error::{BurnBackendError, Result};
pub use model::{Llama, LoadOptions, PREFILL_ROWS};
pub use perpetua_model_files::dense::DenseWeights;
pub use perpetua_model_files::{LlamaConfig, LlamaTokenizer, ModelError, default_model_path};
