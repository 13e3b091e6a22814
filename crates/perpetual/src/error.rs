use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = PerpetualError> = std::result::Result<T, E>;

/// Everything that can go wrong while configuring a perpetual strategy or schedule.
///
/// Strategies never fail at run time: every value is checked when it is built.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum PerpetualError {
    /// A constructor or builder got a value outside the parameter's domain.
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name as the user wrote it (`"half_life"`).
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// What the valid domain is.
        reason: &'static str,
    },
    /// A strategy name not known to [`crate::strategy_by_name`].
    #[error(
        "unknown EOS strategy `{0}` (known: plain, suppress, suppress_masked, post_eos, backstep, dynamic, resume, or a strategy's own name)"
    )]
    UnknownStrategy(String),
}

impl PerpetualError {
    /// Shorthand for [`PerpetualError::InvalidParameter`].
    pub fn invalid(name: &'static str, value: impl std::fmt::Display, reason: &'static str) -> Self {
        Self::InvalidParameter { name, value: value.to_string(), reason }
    }
}
