//! Logit processors: each a validated type implementing [`LogitsProcessor`].
//!
//! [`LogitsProcessor`]: crate::LogitsProcessor

mod temperature;
mod top_k;

pub use temperature::Temperature;
pub use top_k::TopK;
