//! Logit processors: each a validated type implementing [`LogitsProcessor`].
//!
//! [`LogitsProcessor`]: crate::LogitsProcessor

mod closure;
mod dry;
mod dynamic_temperature;
mod epsilon_eta;
mod masks;
mod min_p;
mod no_repeat_ngram;
mod penalties;
mod temperature;
mod top_k;
mod top_n_sigma;
mod top_p;
mod typical;
mod watermark;
mod xtc;

pub use closure::{FnProcessor, from_fn};
pub use dry::{Dry, STALENESS_GRAM, StalenessGate, staleness};
pub use dynamic_temperature::DynamicTemperature;
pub use epsilon_eta::{EpsilonCutoff, EtaCutoff};
pub use masks::{AllowList, BannedSequences, BannedTokens, LogitBias, MinNewTokens, SuppressEos};
pub use min_p::MinP;
pub use no_repeat_ngram::NoRepeatNGram;
pub use penalties::{FrequencyPresencePenalty, RepetitionPenalty};
pub use temperature::Temperature;
pub use top_k::TopK;
pub use top_n_sigma::TopNSigma;
pub use top_p::TopP;
pub(crate) use top_p::exp_neg;
pub use typical::Typical;
pub use watermark::{GreenList, Watermark, WatermarkDetector, WatermarkScore};
pub use xtc::Xtc;
