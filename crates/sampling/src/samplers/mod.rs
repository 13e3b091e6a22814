//! Samplers: the last stage of a chain, picking one token.

use rand::{Rng, RngCore};

use crate::{Candidates, Result, Sampler, SamplingContext, SamplingError};

mod mirostat;

pub use mirostat::{Mirostat, MirostatV2};

/// Greedy: the highest logit. Ties → the lowest id (documented and tested).
///
/// Errors: a NaN or `+inf` logit is [`SamplingError::NanLogit`] /
/// [`SamplingError::InfiniteLogit`] (never a silent pick); an empty or all-masked set
/// is [`SamplingError::EmptyCandidates`]. One pass, no sort, RNG unused.
#[derive(Debug, Clone, Copy, Default)]
pub struct Greedy;

impl Sampler for Greedy {
    fn boxed_clone(&self) -> Option<Box<dyn Sampler>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "greedy"
    }

    fn sample(
        &mut self,
        candidates: &mut Candidates,
        _ctx: &SamplingContext<'_>,
        _rng: &mut dyn RngCore,
    ) -> Result<u32> {
        let mut best: Option<(u32, f32)> = None;
        for c in candidates.as_slice() {
            if c.logit.is_nan() {
                return Err(SamplingError::NanLogit { id: c.id });
            }
            if c.logit == f32::INFINITY {
                return Err(SamplingError::InfiniteLogit { id: c.id });
            }
            if c.logit == f32::NEG_INFINITY {
                continue;
            }
            best = match best {
                Some((id, l)) if l > c.logit || (l == c.logit && id < c.id) => Some((id, l)),
                _ => Some((c.id, c.logit)),
            };
        }
        best.map(|(id, _)| id).ok_or(SamplingError::EmptyCandidates { stage: "greedy" })
    }
}

/// Multinomial: draw from softmax(logits) of the candidates with the caller's RNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct Multinomial;

impl Sampler for Multinomial {
    fn boxed_clone(&self) -> Option<Box<dyn Sampler>> {
        Some(Box::new(*self))
    }

    fn name(&self) -> &'static str {
        "multinomial"
    }

    fn sample(
        &mut self,
        candidates: &mut Candidates,
        _ctx: &SamplingContext<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<u32> {
        draw(candidates, rng)
    }
}

/// One draw from softmax over `candidates` (computing probabilities if needed):
/// `P(id) = p_id`, by inverting the cumulative distribution at `u ~ U[0, 1)` in
/// candidate order. Masked (`-inf`, probability 0) candidates are never drawn.
///
/// Errors: NaN / `+inf` logits as their typed errors; an empty or all-masked set is
/// [`SamplingError::EmptyCandidates`].
pub fn draw(candidates: &mut Candidates, rng: &mut dyn RngCore) -> Result<u32> {
    candidates.softmax().map_err(|e| empty_as(e, "multinomial"))?;
    // f64 accumulation: summing 10⁵ f32 probabilities in f32 drifts by ~10⁻⁴.
    let u: f64 = rng.random::<f64>();
    let mut acc = 0.0_f64;
    let mut last = None;
    for c in candidates.as_slice() {
        if c.prob > 0.0 {
            acc += f64::from(c.prob);
            last = Some(c.id);
            if u < acc {
                return Ok(c.id);
            }
        }
    }
    // Float round-off can leave acc slightly below 1: fall back to the last candidate
    // with non-zero probability (never a masked one).
    last.ok_or(SamplingError::EmptyCandidates { stage: "multinomial" })
}

/// Draw up to `k` distinct tokens *without replacement*, in draw order, into `out`
/// (cleared first). This is the Plackett–Luce process: each draw is from the softmax
/// of the candidates not yet drawn. Fewer than `k` are returned when fewer candidates
/// have non-zero probability. The perpetual strategies use `k = 2`.
///
/// Does not allocate once `out` has capacity `k`.
pub fn draw_without_replacement(
    candidates: &mut Candidates,
    k: usize,
    rng: &mut dyn RngCore,
    out: &mut Vec<u32>,
) -> Result<()> {
    out.clear();
    candidates.softmax().map_err(|e| empty_as(e, "draw_without_replacement"))?;
    let mut remaining = 1.0_f64;
    while out.len() < k {
        if remaining <= 1e-12 {
            break;
        }
        let u = rng.random::<f64>() * remaining;
        let mut acc = 0.0_f64;
        let mut chosen = None;
        let mut last = None;
        for c in candidates.as_slice() {
            if c.prob <= 0.0 || out.contains(&c.id) {
                continue;
            }
            acc += f64::from(c.prob);
            last = Some((c.id, c.prob));
            if u < acc {
                chosen = Some((c.id, c.prob));
                break;
            }
        }
        match chosen.or(last) {
            Some((id, p)) => {
                out.push(id);
                remaining -= f64::from(p);
            }
            None => break,
        }
    }
    if out.is_empty() {
        return Err(SamplingError::EmptyCandidates { stage: "draw_without_replacement" });
    }
    Ok(())
}

/// Rename the stage of an `EmptyCandidates` error; other errors (NaN / `+inf` logits)
/// pass through unchanged so they are never reported as an empty set.
fn empty_as(e: SamplingError, stage: &'static str) -> SamplingError {
    match e {
        SamplingError::EmptyCandidates { .. } => SamplingError::EmptyCandidates { stage },
        other => other,
    }
}
