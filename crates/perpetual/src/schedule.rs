//! Temperature schedules: how the temperature returns from a raised peak to the base.

use std::fmt;
use std::sync::Arc;

use crate::{PerpetualError, Result};

/// What a [`TemperatureSchedule::Custom`] closure is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleInput {
    /// Steps since the event (0 = the first step after it, which runs at the peak).
    pub steps_since: usize,
    /// Steps over which the schedule returns to base; `steps_since >= span` is base.
    pub span: usize,
    /// The base temperature (the chain's own).
    pub base: f32,
    /// The temperature at `steps_since = 0`.
    pub peak: f32,
}

/// A user closure `(ScheduleInput) -> temperature`, shared and thread-safe.
#[derive(Clone)]
pub struct CustomSchedule(Arc<dyn Fn(ScheduleInput) -> f32 + Send + Sync>);

impl CustomSchedule {
    /// Wrap a closure.
    pub fn new(f: impl Fn(ScheduleInput) -> f32 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Call the closure.
    pub fn call(&self, input: ScheduleInput) -> f32 {
        (self.0)(input)
    }
}

impl fmt::Debug for CustomSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomSchedule(<closure>)")
    }
}

/// A temperature schedule: a pure function of (steps since the event `s`, span `S`,
/// base `b`, peak `p`) that starts at `p` and is exactly `b` from `s = S` on.
///
/// | variant | `T(s)` for `s < S` |
/// |---|---|
/// | `Constant` | `p` (a plateau, then `b`) |
/// | `Linear` | `p + (b − p)·s/S` |
/// | `Exponential { half_life: h }` | `b + (p − b)·0.5^(s/h)` |
/// | `Cosine` | `b + (p − b)·(1 + cos(π·s/S))/2` |
/// | `Step { delta_per_token: d }` | `p − d·s`, never past `b` (the paper: `d = 0.1`) |
/// | `Custom(f)` | `f(input)`, clamped |
///
/// Guarantees, for every built-in variant and any finite `b`, `p`:
/// - `T(0) = p` when `S > 0`; `T(s) = b` exactly for every `s >= S` (so `S = 0` is
///   always `b`);
/// - `T` moves monotonically from `p` to `b` (non-increasing when `p >= b`,
///   non-decreasing when `p < b`: a peak below the base is a cool-down and is
///   handled symmetrically);
/// - `T(s)` lies in `[min(b, p), max(b, p)]`.
///
/// A `Custom` closure's value is clamped to `[min(b, p), max(b, p)]` (a non-finite
/// value becomes `b`) and `s >= S` is `b` whatever it returns; monotonicity is the
/// closure's responsibility. Non-finite `b` or `p` give `b`.
#[derive(Debug, Clone, Default)]
pub enum TemperatureSchedule {
    /// Stay at the peak for the whole span, then drop to base.
    Constant,
    /// Straight line from peak to base over the span.
    #[default]
    Linear,
    /// Halve the distance to base every `half_life` steps; exactly base at the span.
    Exponential {
        /// Steps for the distance to base to halve (finite, > 0).
        half_life: f32,
    },
    /// Half a cosine period from peak to base: gentle at both ends.
    Cosine,
    /// Move `delta_per_token` towards base each step (the paper's reference: −0.1 per
    /// token from 2.0); reaches base after `ceil(|p − b| / d)` steps even when the span
    /// is longer, and jumps to base at the span when it is shorter.
    Step {
        /// Temperature change per token (finite, > 0).
        delta_per_token: f32,
    },
    /// A user closure (see [`CustomSchedule`]).
    Custom(CustomSchedule),
}

impl TemperatureSchedule {
    /// The paper's reference decay: [`Step`](Self::Step) with `delta_per_token = 0.1`.
    pub const PAPER_STEP: Self = Self::Step { delta_per_token: 0.1 };

    /// An exponential schedule. Errors unless `half_life` is finite and > 0.
    pub fn exponential(half_life: f32) -> Result<Self> {
        let s = Self::Exponential { half_life };
        s.validate()?;
        Ok(s)
    }

    /// A step schedule. Errors unless `delta_per_token` is finite and > 0.
    pub fn step(delta_per_token: f32) -> Result<Self> {
        let s = Self::Step { delta_per_token };
        s.validate()?;
        Ok(s)
    }

    /// A user closure schedule.
    pub fn custom(f: impl Fn(ScheduleInput) -> f32 + Send + Sync + 'static) -> Self {
        Self::Custom(CustomSchedule::new(f))
    }

    /// Check the variant's parameters (the variants are public, so strategies call this
    /// when given a schedule). Errors name the parameter and the value.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Exponential { half_life } if !(half_life.is_finite() && half_life > 0.0) => {
                Err(PerpetualError::invalid("half_life", half_life, "must be finite and > 0"))
            }
            Self::Step { delta_per_token } if !(delta_per_token.is_finite() && delta_per_token > 0.0) => {
                Err(PerpetualError::invalid("delta_per_token", delta_per_token, "must be finite and > 0"))
            }
            _ => Ok(()),
        }
    }

    /// A short, stable name (`"step"`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Linear => "linear",
            Self::Exponential { .. } => "exponential",
            Self::Cosine => "cosine",
            Self::Step { .. } => "step",
            Self::Custom(_) => "custom",
        }
    }

    /// The span this schedule needs on its own to get from `peak` to `base`:
    /// `ceil(|peak − base| / d)` for [`Step`](Self::Step) (a 1e-4 tolerance absorbs
    /// float error, so 2.0 → 1.0 at 0.1 is 10 steps), `None` for the others (they
    /// need a span from the caller). Invalid parameters or non-finite inputs: `None`.
    pub fn natural_span(&self, base: f32, peak: f32) -> Option<usize> {
        match *self {
            Self::Step { delta_per_token } if delta_per_token.is_finite() && delta_per_token > 0.0 => {
                let distance = (f64::from(peak) - f64::from(base)).abs();
                if !distance.is_finite() {
                    return None;
                }
                let steps = (distance / f64::from(delta_per_token) - 1e-4).ceil().max(0.0);
                // Bounded: temperatures are f32 and delta > 0, but a tiny delta could
                // overflow usize on 32-bit targets; saturate.
                Some(if steps >= usize::MAX as f64 { usize::MAX } else { steps as usize })
            }
            _ => None,
        }
    }

    /// The temperature `steps_since` steps after the event (see the type docs for the
    /// formulas and guarantees).
    pub fn temperature(&self, steps_since: usize, span: usize, base: f32, peak: f32) -> f32 {
        if steps_since >= span || !base.is_finite() || !peak.is_finite() {
            return base;
        }
        let (b, p) = (f64::from(base), f64::from(peak));
        let s = steps_since as f64;
        let frac = s / span as f64;
        let raw = match self {
            Self::Constant => p,
            Self::Linear => p + (b - p) * frac,
            Self::Exponential { half_life } => {
                let h = f64::from(*half_life);
                if h.is_finite() && h > 0.0 { b + (p - b) * 0.5_f64.powf(s / h) } else { b }
            }
            Self::Cosine => b + (p - b) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()),
            Self::Step { delta_per_token } => {
                let d = f64::from(*delta_per_token);
                if !(d.is_finite() && d > 0.0) {
                    b
                } else if p >= b {
                    (p - d * s).max(b)
                } else {
                    (p + d * s).min(b)
                }
            }
            Self::Custom(f) => {
                let v = f.call(ScheduleInput { steps_since, span, base, peak });
                if v.is_finite() { f64::from(v) } else { b }
            }
        };
        // Rounding to f32 is monotone, and the clamp keeps float error (and custom
        // closures) inside the documented band.
        let (lo, hi) = if base <= peak { (base, peak) } else { (peak, base) };
        (raw as f32).clamp(lo, hi)
    }
}

/// The raised temperature of a schedule: absolute, or a multiple of the base.
///
/// `Times(f)` resolves to `f · base`, so a greedy base (0) stays 0: use `Absolute` to
/// raise from greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Peak {
    /// This temperature (finite, > 0). The paper's post-EOS reference: 2.0.
    Absolute(f32),
    /// This multiple of the base temperature (finite, > 0). The paper's back-step
    /// reference: 2× base.
    Times(f32),
}

impl Peak {
    /// `Peak::Absolute(t)`, validated (finite, > 0).
    pub fn absolute(temperature: f32) -> Result<Self> {
        let p = Self::Absolute(temperature);
        p.validate()?;
        Ok(p)
    }

    /// `Peak::Times(f)`, validated (finite, > 0).
    pub fn times(factor: f32) -> Result<Self> {
        let p = Self::Times(factor);
        p.validate()?;
        Ok(p)
    }

    /// Check the value (the variants are public, so strategies call this when given a
    /// peak).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Absolute(t) if !(t.is_finite() && t > 0.0) => {
                Err(PerpetualError::invalid("peak", format!("Absolute({t})"), "must be finite and > 0"))
            }
            Self::Times(f) if !(f.is_finite() && f > 0.0) => {
                Err(PerpetualError::invalid("peak", format!("Times({f})"), "must be finite and > 0"))
            }
            _ => Ok(()),
        }
    }

    /// The peak temperature for this base: `t` or `f · base`.
    pub fn resolve(&self, base: f32) -> f32 {
        match *self {
            Self::Absolute(t) => t,
            Self::Times(f) => f * base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn builtin() -> impl Strategy<Value = TemperatureSchedule> {
        prop_oneof![
            Just(TemperatureSchedule::Constant),
            Just(TemperatureSchedule::Linear),
            (0.1_f32..50.0).prop_map(|half_life| TemperatureSchedule::Exponential { half_life }),
            Just(TemperatureSchedule::Cosine),
            (0.001_f32..2.0).prop_map(|delta_per_token| TemperatureSchedule::Step { delta_per_token }),
        ]
    }

    proptest! {
        #[test]
        fn monotone_from_peak_to_base(sched in builtin(), span in 0usize..200, base in 0.0_f32..3.0, peak in 0.0_f32..6.0) {
            let ts: Vec<f32> = (0..span + 5).map(|s| sched.temperature(s, span, base, peak)).collect();
            for w in ts.windows(2) {
                if peak >= base {
                    prop_assert!(w[1] <= w[0], "{sched:?}: {} then {}", w[0], w[1]);
                } else {
                    prop_assert!(w[1] >= w[0], "{sched:?}: {} then {}", w[0], w[1]);
                }
            }
        }

        #[test]
        fn exactly_base_at_and_after_the_span(sched in builtin(), span in 0usize..200, extra in 0usize..50, base in 0.0_f32..3.0, peak in 0.0_f32..6.0) {
            prop_assert_eq!(sched.temperature(span + extra, span, base, peak), base);
        }

        #[test]
        fn within_base_and_peak_and_starts_at_peak(sched in builtin(), span in 1usize..200, s in 0usize..250, base in 0.0_f32..3.0, peak in 0.0_f32..6.0) {
            let t = sched.temperature(s, span, base, peak);
            prop_assert!(t >= base.min(peak) && t <= base.max(peak), "{t} outside [{base}, {peak}]");
            prop_assert_eq!(sched.temperature(0, span, base, peak), peak);
        }

        #[test]
        fn custom_is_clamped_and_base_at_the_span(v in proptest::num::f32::ANY, span in 1usize..50, s in 0usize..60) {
            let sched = TemperatureSchedule::custom(move |_| v);
            let t = sched.temperature(s, span, 1.0, 2.0);
            prop_assert!((1.0..=2.0).contains(&t));
            if s >= span { prop_assert_eq!(t, 1.0); }
        }
    }

    #[test]
    fn paper_step_goes_two_to_one_in_tenths() {
        let s = TemperatureSchedule::PAPER_STEP;
        let span = s.natural_span(1.0, 2.0).unwrap();
        assert_eq!(span, 10);
        let ts: Vec<f32> = (0..=span).map(|i| s.temperature(i, span, 1.0, 2.0)).collect();
        let want = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0];
        for (t, w) in ts.iter().zip(want) {
            assert!((t - w).abs() < 1e-6, "{ts:?}");
        }
        assert_eq!(ts[10], 1.0);
    }

    #[test]
    fn formulas_at_known_points() {
        assert_eq!(TemperatureSchedule::Linear.temperature(5, 10, 1.0, 2.0), 1.5);
        assert_eq!(TemperatureSchedule::Cosine.temperature(5, 10, 1.0, 2.0), 1.5);
        assert_eq!(TemperatureSchedule::Constant.temperature(9, 10, 1.0, 2.0), 2.0);
        let e = TemperatureSchedule::exponential(2.0).unwrap();
        assert!((e.temperature(2, 10, 1.0, 3.0) - 2.0).abs() < 1e-6);
        // Cool-down: peak below base climbs back up.
        assert_eq!(TemperatureSchedule::Linear.temperature(5, 10, 1.0, 0.0), 0.5);
        assert_eq!(TemperatureSchedule::step(0.25).unwrap().temperature(1, 10, 1.0, 0.0), 0.25);
    }

    #[test]
    fn invalid_parameters_are_named() {
        let e = TemperatureSchedule::step(-0.1).unwrap_err();
        assert!(matches!(e, PerpetualError::InvalidParameter { name: "delta_per_token", .. }), "{e}");
        assert!(TemperatureSchedule::exponential(f32::NAN).is_err());
        let e = Peak::times(0.0).unwrap_err();
        assert!(e.to_string().contains("peak") && e.to_string().contains("Times(0)"), "{e}");
        assert!(Peak::absolute(f32::INFINITY).is_err());
        assert_eq!(Peak::times(2.0).unwrap().resolve(0.7), 1.4);
        assert_eq!(Peak::absolute(2.0).unwrap().resolve(0.7), 2.0);
    }
}
