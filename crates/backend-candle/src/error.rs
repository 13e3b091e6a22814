//! The error type of this crate: the one shared with the model-file reader
//! ([`perpetua_model_files::ModelError`]), under this crate's historical name, so an
//! error from reading a file and one from running it are matched the same way.

pub use perpetua_model_files::{ModelError as CandleBackendError, Result};
