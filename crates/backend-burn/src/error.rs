//! The one error type of this crate.

use perpetua_kv_cache::CacheError;
use perpetua_model_files::ModelError;

/// Everything that can go wrong loading or running a model on burn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BurnBackendError {
    /// Reading the checkpoint failed: a missing or malformed file, a missing tensor, a
    /// bad shape, an unsupported type or architecture (the shared GGUF / safetensors
    /// reader of `perpetua-model-files`, whose error says which).
    #[error("loading the model: {0}")]
    Load(
        #[from]
        #[source]
        ModelError,
    ),
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
    /// burn could not run an operation or read a result back from the device.
    #[error("burn: {0}")]
    Device(String),
}

impl BurnBackendError {
    /// An [`InvalidParameter`](Self::InvalidParameter) error.
    pub(crate) fn invalid(name: &'static str, value: impl std::fmt::Display, reason: &'static str) -> Self {
        Self::InvalidParameter { name, value: value.to_string(), reason }
    }
}

/// `Result` with [`BurnBackendError`].
pub type Result<T, E = BurnBackendError> = std::result::Result<T, E>;
