//! Samplers: the last stage of a chain, picking one token.

use rand::{Rng, RngCore};

use crate::{Candidates, Result, Sampler, SamplingContext, SamplingError};

/// Greedy: the highest logit. Ties → the lowest id (documented and tested).
#[derive(Debug, Clone, Copy, Default)]
pub struct Greedy;

impl Sampler for Greedy {
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

/// One draw from softmax over `candidates` (computing probabilities if needed).
pub fn draw(candidates: &mut Candidates, rng: &mut dyn RngCore) -> Result<u32> {
    candidates.softmax().map_err(|_| SamplingError::EmptyCandidates { stage: "multinomial" })?;
    let u: f32 = rng.random::<f32>();
    let mut acc = 0.0_f32;
    let mut last = None;
    for c in candidates.as_slice() {
        if c.prob > 0.0 {
            acc += c.prob;
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
    candidates.softmax().map_err(|_| SamplingError::EmptyCandidates { stage: "draw_without_replacement" })?;
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
