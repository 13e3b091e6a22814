use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = SamplingError> = std::result::Result<T, E>;

/// Everything that can go wrong while configuring or running a sampling chain.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SamplingError {
    /// A constructor or config got a value outside the parameter's domain.
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name as the user wrote it (`"top_p"`).
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// What the valid domain is.
        reason: &'static str,
    },
    /// A logit from the model was NaN.
    #[error("logit of token {id} is NaN")]
    NanLogit {
        /// The offending token id.
        id: u32,
    },
    /// A logit was `+inf`: the distribution is undefined.
    #[error("logit of token {id} is +inf")]
    InfiniteLogit {
        /// The offending token id.
        id: u32,
    },
    /// Every candidate was removed or masked: nothing can be sampled.
    #[error("no candidate left to sample from (after `{stage}`)")]
    EmptyCandidates {
        /// The stage after which the set was empty.
        stage: &'static str,
    },
    /// A config file could not be read or parsed.
    #[error("invalid sampling config: {0}")]
    Config(String),
}

impl SamplingError {
    /// Shorthand for [`SamplingError::InvalidParameter`].
    pub fn invalid(name: &'static str, value: impl std::fmt::Display, reason: &'static str) -> Self {
        Self::InvalidParameter { name, value: value.to_string(), reason }
    }
}
