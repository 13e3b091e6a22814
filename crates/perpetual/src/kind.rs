//! [`StrategyKind`]: the EOS methods by name, one vocabulary for configs, command
//! lines, evaluation tables and [`strategy_by_name`](crate::strategy_by_name).

use std::fmt;
use std::str::FromStr;

use crate::{
    Backstep, BackstepWithSchedule, DEFAULT_BACKSTEP, EosStrategy, Peak, PerpetualError, PostEosResample,
    Result, ResumeTurn, StopAtEos, SuppressEos,
};

/// The EOS methods of the paper, plus plain generation and resumed turns.
///
/// Each has one canonical name ([`name`](Self::name), what [`Display`](fmt::Display)
/// and serde write) and a few accepted aliases ([`names`](Self::names): the
/// strategy's own [`EosStrategy::name`] among them), which [`FromStr`] and serde
/// read.
///
/// ```
/// use perpetua_perpetual::StrategyKind;
///
/// let kind: StrategyKind = "backstep_with_schedule".parse()?;
/// assert_eq!(kind, StrategyKind::Dynamic);
/// assert_eq!(kind.to_string(), "dynamic");
/// assert_eq!(kind.strategy().name(), "backstep_with_schedule");
/// assert!("forever".parse::<StrategyKind>().is_err());
/// # Ok::<(), perpetua_perpetual::PerpetualError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// Stop at the first EOS ([`StopAtEos`]). Names: `plain`, `none`, `stop`.
    Stop,
    /// Method 1, the runner-up of two draws ([`SuppressEos::new`]). Names: `suppress`,
    /// `suppress_eos`.
    Suppress,
    /// Method 1 as a hard mask ([`SuppressEos::hard_mask`]). Names: `suppress_masked`,
    /// `suppress_eos_masked`.
    SuppressMasked,
    /// Method 2, runner-up then a temperature burst ([`PostEosResample`]). Names:
    /// `post_eos`, `post-eos`, `post_eos_resample`.
    PostEos,
    /// Method 3, back step `n` tokens ([`Backstep`]). Name: `backstep`.
    Backstep,
    /// Method 4, back step + dynamic temperature ([`BackstepWithSchedule`]). Names:
    /// `dynamic`, `backstep_with_schedule`.
    Dynamic,
    /// Let the turn end and resume it: the generator feeds a hidden user turn and a new
    /// assistant turn header ([`ResumeTurn`]; needs a chat template). Names: `resume`,
    /// `resume_turn`.
    Resume,
}

impl StrategyKind {
    /// Every kind, in the paper's order after plain generation.
    pub const ALL: [StrategyKind; 7] = [
        StrategyKind::Stop,
        StrategyKind::Suppress,
        StrategyKind::SuppressMasked,
        StrategyKind::PostEos,
        StrategyKind::Backstep,
        StrategyKind::Dynamic,
        StrategyKind::Resume,
    ];

    /// The canonical name (`"dynamic"`): specs, tables, [`Display`](fmt::Display), serde.
    pub const fn name(self) -> &'static str {
        self.names()[0]
    }

    /// Every name [`FromStr`] accepts for this kind, the canonical one first.
    pub const fn names(self) -> &'static [&'static str] {
        match self {
            Self::Stop => &["plain", "none", "stop"],
            Self::Suppress => &["suppress", "suppress_eos"],
            Self::SuppressMasked => &["suppress_masked", "suppress_eos_masked"],
            Self::PostEos => &["post_eos", "post-eos", "post_eos_resample"],
            Self::Backstep => &["backstep"],
            Self::Dynamic => &["dynamic", "backstep_with_schedule"],
            Self::Resume => &["resume", "resume_turn"],
        }
    }

    /// The strategy with the paper's defaults.
    pub fn strategy(self) -> Box<dyn EosStrategy> {
        match self {
            Self::Stop => Box::new(StopAtEos),
            Self::Suppress => Box::new(SuppressEos::new()),
            Self::SuppressMasked => Box::new(SuppressEos::hard_mask()),
            Self::PostEos => Box::new(PostEosResample::new()),
            Self::Backstep => Box::new(Backstep::default()),
            Self::Dynamic => Box::new(BackstepWithSchedule::default()),
            Self::Resume => Box::new(ResumeTurn::new()),
        }
    }

    /// The strategy with the back step `n` of methods 3 and 4 (default
    /// [`DEFAULT_BACKSTEP`]) and the peak temperature of methods 2 and 4 (default: the
    /// strategy's); the other kinds ignore both. Errors: `backstep = 0`, a peak that is
    /// not finite and > 0 ([`PerpetualError::InvalidParameter`] naming `backstep` or
    /// `peak`).
    pub fn strategy_with(self, backstep: Option<usize>, peak: Option<Peak>) -> Result<Box<dyn EosStrategy>> {
        let n = backstep.unwrap_or(DEFAULT_BACKSTEP);
        let bad = |_| PerpetualError::invalid("backstep", n, "a back step must remove >= 1 token");
        let bad_peak = |_| PerpetualError::invalid("peak", format!("{peak:?}"), "must be finite and > 0");
        Ok(match (self, peak) {
            (Self::PostEos, Some(p)) => Box::new(PostEosResample::new().with_peak(p).map_err(bad_peak)?),
            (Self::Backstep, _) => Box::new(Backstep::new(n).map_err(bad)?),
            (Self::Dynamic, None) => Box::new(BackstepWithSchedule::new(n).map_err(bad)?),
            (Self::Dynamic, Some(p)) => {
                Box::new(BackstepWithSchedule::new(n).map_err(bad)?.with_peak(p).map_err(bad_peak)?)
            }
            (kind, _) => kind.strategy(),
        })
    }
}

impl FromStr for StrategyKind {
    type Err = PerpetualError;

    /// Any of the kind's [`names`](StrategyKind::names). Errors:
    /// [`PerpetualError::UnknownStrategy`].
    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.names().contains(&name))
            .ok_or_else(|| PerpetualError::UnknownStrategy(name.to_owned()))
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for StrategyKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for StrategyKind {
    /// Any accepted name, or the variant name earlier versions wrote (`"Dynamic"`).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse()
            .or_else(|e| Self::ALL.into_iter().find(|kind| format!("{kind:?}") == name).ok_or(e))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_to_its_kind_and_the_canonical_name_round_trips() {
        for kind in StrategyKind::ALL {
            for name in kind.names() {
                assert_eq!(name.parse::<StrategyKind>().unwrap(), kind, "{name}");
            }
            assert_eq!(kind.to_string().parse::<StrategyKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<StrategyKind>(&json).unwrap(), kind);
            // What the derived serde of earlier versions wrote still reads.
            assert_eq!(serde_json::from_str::<StrategyKind>(&format!("\"{kind:?}\"")).unwrap(), kind);
            // The strategy's own name is one of the kind's names.
            assert!(kind.names().contains(&kind.strategy().name()), "{kind}");
        }
        assert!(
            matches!("forever".parse::<StrategyKind>(), Err(PerpetualError::UnknownStrategy(n)) if n == "forever")
        );
        assert!(serde_json::from_str::<StrategyKind>("\"forever\"").is_err());
    }

    #[test]
    fn strategy_with_validates_backstep_and_peak() {
        assert!(StrategyKind::Backstep.strategy_with(Some(0), None).is_err());
        assert!(StrategyKind::Dynamic.strategy_with(None, Some(Peak::Times(f32::NAN))).is_err());
        assert_eq!(StrategyKind::Stop.strategy_with(Some(0), None).unwrap().name(), "stop");
        assert_eq!(
            StrategyKind::Dynamic.strategy_with(Some(4), None).unwrap().name(),
            "backstep_with_schedule"
        );
    }
}
