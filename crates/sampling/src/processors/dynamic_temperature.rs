use crate::processors::temperature::{apply, validate};
use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Entropy-based dynamic temperature, as llama.cpp `temp_ext`:
///
/// `T' = T_min + (T_max − T_min) · (H / ln n)^exponent`, then `logit' = logit / T'`,
///
/// where `H = −Σ p ln p` (nats) is the entropy of the current candidates and `n` the
/// number of candidates with a finite logit (so `H / ln n ∈ [0, 1]`). A confident
/// (low-entropy) step gets a temperature near `T_min`, an unsure one near `T_max`;
/// `exponent > 1` keeps the temperature low until the entropy is high.
///
/// Perpetual schedules: llama.cpp writes the range as `T ± δ`. This stage keeps that
/// reading: its centre `T = (T_min + T_max) / 2` is what
/// [`temperature`](LogitsProcessor::temperature) reports (the chain's base
/// temperature), and when [`SamplingContext::temperature_override`] is `Some(T₀)` the
/// range becomes `[max(0, T₀ − δ), T₀ + δ]` with `δ = (T_max − T_min) / 2`, so a
/// schedule that raises the temperature moves the whole range.
///
/// Edge cases:
/// - `T_min = T_max`: a constant temperature (then 0 means greedy, as
///   [`Temperature`](crate::processors::Temperature)).
/// - `T' = 0` keeps only the best candidate (ties → lower id).
/// - At most one finite candidate: nothing to scale, left unchanged.
/// - A NaN or `+inf` logit is an error; an all-masked set is
///   [`SamplingError::EmptyCandidates`]; an invalid override is
///   [`SamplingError::InvalidParameter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicTemperature {
    min: f32,
    max: f32,
    exponent: f32,
}

impl DynamicTemperature {
    /// A dynamic temperature stage over `[min, max]`. Errors unless
    /// `0 ≤ min ≤ max < ∞` and `exponent` is finite and `≥ 0`.
    pub fn new(min: f32, max: f32, exponent: f32) -> Result<Self> {
        validate(min).map_err(|_| SamplingError::invalid("dynatemp_min", min, "must be finite and >= 0"))?;
        validate(max).map_err(|_| SamplingError::invalid("dynatemp_max", max, "must be finite and >= 0"))?;
        if max < min {
            return Err(SamplingError::invalid("dynatemp_max", max, "must be >= dynatemp_min"));
        }
        if !(exponent.is_finite() && exponent >= 0.0) {
            return Err(SamplingError::invalid("dynatemp_exponent", exponent, "must be finite and >= 0"));
        }
        Ok(Self { min, max, exponent })
    }

    /// The temperature range `[T_min, T_max]` around a centre (the override, if any).
    pub fn range(&self, centre: Option<f32>) -> (f32, f32) {
        match centre {
            None => (self.min, self.max),
            Some(t) => {
                let delta = (self.max - self.min) / 2.0;
                ((t - delta).max(0.0), t + delta)
            }
        }
    }

    /// The temperature for normalised entropy `h ∈ [0, 1]` over `range`.
    pub fn temperature_at(&self, (t_min, t_max): (f32, f32), normalised_entropy: f32) -> f32 {
        t_min + (t_max - t_min) * normalised_entropy.clamp(0.0, 1.0).powf(self.exponent)
    }
}

impl LogitsProcessor for DynamicTemperature {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "dynamic_temperature"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::Temperature)
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        if let Some(t) = ctx.temperature_override {
            validate(t)?;
        }
        let range = self.range(ctx.temperature_override);
        candidates.softmax().map_err(|e| match e {
            SamplingError::EmptyCandidates { .. } => {
                SamplingError::EmptyCandidates { stage: "dynamic_temperature" }
            }
            other => other,
        })?;
        let n = candidates.finite_len();
        if n <= 1 {
            return Ok(());
        }
        let h: f64 = candidates
            .as_slice()
            .iter()
            .filter(|c| c.prob > 0.0)
            .map(|c| -f64::from(c.prob) * f64::from(c.prob).ln())
            .sum();
        let normalised = (h / (n as f64).ln()) as f32;
        apply(candidates, self.temperature_at(range, normalised));
        Ok(())
    }

    fn temperature(&self) -> Option<f32> {
        Some((self.min + self.max) / 2.0)
    }
}
