//! perpetua: LLM text generation that can keep writing past EOS.
//!
//! The facade re-exports the workspace crates; backends are chosen by Cargo feature
//! (`candle`, the default).

pub use perpetua_generator as generator;
pub use perpetua_kv_cache as kv_cache;
pub use perpetua_perpetual as perpetual;
pub use perpetua_sampling as sampling;

#[cfg(feature = "candle")]
pub use perpetua_candle as candle;
