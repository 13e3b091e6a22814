//! The one error type of this crate, shared by the backends (`perpetua-candle` names it
//! `CandleBackendError`).

use std::path::PathBuf;

use perpetua_kv_cache::CacheError;

/// Everything that can go wrong loading or running a model, its cache or tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The model file is not where the path resolution contract says it is.
    #[error("model file not found at {path}: run `cargo xtask fetch-model`")]
    ModelNotFound {
        /// The path that was looked up.
        path: PathBuf,
    },
    /// A GGUF file could not be parsed (bad magic, truncated header, unknown tensor type code).
    #[error("malformed GGUF file {path}: {reason}")]
    MalformedGguf {
        /// The file.
        path: PathBuf,
        /// What candle's GGUF reader reported.
        reason: String,
    },
    /// A tensor is stored in a GGUF type code candle cannot read at all (llama.cpp's
    /// newer `IQ*` / `TQ*` / `MXFP4` types): re-quantize the model (e.g. Q4_K, Q8_0).
    #[error(
        "{path}: tensor type code {code} is not supported (readable: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K); re-quantize the model"
    )]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The GGML type code in the tensor directory.
        code: u32,
    },
    /// A required metadata key (GGUF) or `config.json` field is absent or has the wrong type.
    #[error("missing or invalid metadata `{key}`: {reason}")]
    Metadata {
        /// The key, e.g. `llama.attention.head_count`.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A required weight tensor is absent.
    #[error("missing tensor `{name}`")]
    MissingTensor {
        /// The tensor name, e.g. `blk.3.attn_q.weight`.
        name: String,
    },
    /// A checkpoint holds a tensor its configuration does not use: running without it
    /// would compute another model (e.g. a Qwen2 checkpoint's q/k/v biases under a
    /// llama `config.json`), so the file is refused.
    #[error(
        "tensor `{name}` (and {more} more) is not used by the `{architecture}` configuration: the checkpoint is another architecture or variant"
    )]
    UnexpectedTensor {
        /// The first unused tensor, in name order.
        name: String,
        /// The architecture the configuration names.
        architecture: crate::Architecture,
        /// How many other tensors are unused.
        more: usize,
    },
    /// A weight tensor has a shape the configuration does not allow.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    BadShape {
        /// The tensor name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// A weight tensor is stored in a type this backend cannot multiply.
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype, as the file names it.
        dtype: String,
    },
    /// The file names an architecture this backend does not run (see
    /// [`Architecture`](crate::Architecture) for those it does).
    #[error(
        "unsupported architecture `{0}` (safetensors: llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text; GGUF: llama, qwen2, qwen3, phi3, gemma2, gemma3)"
    )]
    UnsupportedArchitecture(String),
    /// A caller-supplied parameter is out of range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        /// The parameter name.
        name: &'static str,
        /// Its value, rendered.
        value: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A cache operation failed (capacity exceeded, truncation beyond the length).
    #[error("cache: {0}")]
    Cache(
        #[from]
        #[source]
        CacheError,
    ),
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A tensor operation inside candle failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// An [`InvalidParameter`](Self::InvalidParameter) error.
    pub fn invalid(name: &'static str, value: impl std::fmt::Display, reason: &'static str) -> Self {
        Self::InvalidParameter { name, value: value.to_string(), reason }
    }

    /// A [`Metadata`](Self::Metadata) error.
    pub fn metadata(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Metadata { key: key.into(), reason: reason.into() }
    }
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
