use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Temperature scaling: `logit' = logit / T`.
///
/// - `T = 0` means greedy: only the highest-logit candidate survives (ties → lowest id).
/// - `T = 1` leaves logits unchanged.
/// - Negative, NaN or infinite `T` is rejected by [`Temperature::new`].
///
/// When the [`SamplingContext::temperature_override`] is `Some`, that value is used
/// instead of the configured one (a perpetual schedule drives it per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature {
    temperature: f32,
}

impl Temperature {
    /// A temperature stage. Errors when `temperature` is negative, NaN or infinite.
    pub fn new(temperature: f32) -> Result<Self> {
        validate(temperature)?;
        Ok(Self { temperature })
    }

    /// The configured temperature.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }
}

pub(crate) fn validate(temperature: f32) -> Result<()> {
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(SamplingError::invalid("temperature", temperature, "must be finite and >= 0"));
    }
    Ok(())
}

impl LogitsProcessor for Temperature {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "temperature"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::Temperature)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        let t = match ctx.temperature_override {
            Some(t) => {
                validate(t)?;
                t
            }
            None => self.temperature,
        };
        apply(candidates, t);
        Ok(())
    }

    fn temperature(&self) -> Option<f32> {
        Some(self.temperature)
    }

    fn is_monotone_rescale(&self) -> bool {
        true
    }
}

/// Scale logits by `1/t` (t = 0: keep only the best). Monotone, so order survives.
pub(crate) fn apply(candidates: &mut Candidates, t: f32) {
    if t == 0.0 {
        candidates.keep_top_k(1);
        return;
    }
    if t == 1.0 {
        return;
    }
    let sorted = candidates.is_sorted();
    let inv = 1.0 / t;
    for c in candidates.as_mut_slice() {
        c.logit *= inv;
    }
    candidates.set_flags_unchecked(sorted, false);
}
