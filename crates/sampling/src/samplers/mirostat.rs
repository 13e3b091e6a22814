use rand::RngCore;

use super::draw;
use crate::{Candidates, Result, Sampler, SamplingContext, SamplingError};

/// Mirostat v1 (Basu et al. 2021), as llama.cpp `mirostat`: a sampler that steers the
/// surprise of the chosen tokens towards a target `tau` (bits).
///
/// Per step, with the candidates ranked by probability:
/// 1. estimate the Zipf exponent from the top `m`:
///    `ŝ = Σ tᵢbᵢ / Σ tᵢ²`, `tᵢ = ln((i+2)/(i+1))`, `bᵢ = ln(p₍ᵢ₎ / p₍ᵢ₊₁₎)`;
/// 2. `k = ((ε̂ · 2^μ) / (1 − n^(−ε̂)))^(1/ŝ)` with `ε̂ = ŝ − 1` and `n` the number of
///    candidates, clamped to `[1, n]` as llama.cpp's `max(int(k), 1)`; a NaN `k`
///    (`ŝ = 1` exactly: 0/0) keeps all `n`;
/// 3. keep the top `k` and draw from their renormalised softmax.
///
/// State: `μ` starts at `2·tau`. When a token is [accepted](Sampler::accept),
/// `μ ← μ − eta · (−log₂ p(token) − tau)` with `p` its probability in the last drawn
/// distribution. (llama.cpp updates at draw time; here the update waits for the
/// final token because a perpetual strategy may replace the drawn one. A token that
/// was not among the last step's survivors leaves `μ` unchanged.)
/// [`reset`](Sampler::reset) restores `μ = 2·tau`.
///
/// Errors: NaN / `+inf` logits; an empty or all-masked set is
/// [`SamplingError::EmptyCandidates`].
#[derive(Debug, Clone)]
pub struct Mirostat {
    tau: f32,
    eta: f32,
    m: usize,
    mu: f32,
    last: Vec<(u32, f32)>,
}

impl Mirostat {
    /// Mirostat v1. Errors unless `tau` is finite and `> 0`, `eta` finite and `≥ 0`,
    /// and `m ≥ 2` (llama.cpp uses `m = 100`).
    pub fn new(tau: f32, eta: f32, m: usize) -> Result<Self> {
        validate_tau_eta(tau, eta)?;
        if m < 2 {
            return Err(SamplingError::invalid("mirostat_m", m, "must be >= 2"));
        }
        Ok(Self { tau, eta, m, mu: 2.0 * tau, last: Vec::new() })
    }

    /// The current `μ` (maximum surprise, bits).
    pub fn mu(&self) -> f32 {
        self.mu
    }

    /// The `k` of step 2 for exponent estimate `s_hat` over `n` candidates, clamped to
    /// `[1, n]`.
    pub fn k_for(&self, s_hat: f32, n: usize) -> usize {
        let eps = s_hat - 1.0;
        let k = ((eps * 2f32.powf(self.mu)) / (1.0 - (n as f32).powf(-eps))).powf(1.0 / s_hat);
        if k.is_finite() { (k as usize).clamp(1, n.max(1)) } else { n.max(1) }
    }
}

impl Sampler for Mirostat {
    fn boxed_clone(&self) -> Option<Box<dyn Sampler>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "mirostat"
    }

    fn sample(
        &mut self,
        candidates: &mut Candidates,
        _ctx: &SamplingContext<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<u32> {
        softmax(candidates, "mirostat")?;
        let n = candidates.len();
        let top = self.m.min(n);
        candidates.partial_sort(top);
        let (mut sum_tb, mut sum_tt) = (0.0_f32, 0.0_f32);
        let probs = candidates.as_slice();
        for i in 0..top.saturating_sub(1) {
            let (p0, p1) = (probs[i].prob, probs[i + 1].prob);
            if p1 <= 0.0 {
                break; // masked tail: no information about the exponent
            }
            let t = ((i + 2) as f32 / (i + 1) as f32).ln();
            sum_tb += t * (p0 / p1).ln();
            sum_tt += t * t;
        }
        let k = if sum_tt > 0.0 { self.k_for(sum_tb / sum_tt, n) } else { n };
        candidates.keep_top_k(k);
        let id = draw(candidates, rng)?;
        self.last.clear();
        self.last.extend(candidates.as_slice().iter().map(|c| (c.id, c.prob)));
        Ok(id)
    }

    fn accept(&mut self, token: u32) {
        update_mu(&mut self.mu, &self.last, token, self.tau, self.eta);
    }

    fn reset(&mut self) {
        self.mu = 2.0 * self.tau;
        self.last.clear();
    }
}

/// Mirostat v2 (llama.cpp `mirostat_v2`): keep the candidates whose surprise is at most
/// `μ`, `−log₂ p ≤ μ` (i.e. `p ≥ 2^(−μ)`; at least the most probable one survives),
/// and draw from their renormalised softmax. `μ` starts at `2·tau` and is updated on
/// [accept](Sampler::accept) exactly as in [`Mirostat`]; [`reset`](Sampler::reset)
/// restores it. No sort is needed.
///
/// Errors: NaN / `+inf` logits; an empty or all-masked set is
/// [`SamplingError::EmptyCandidates`].
#[derive(Debug, Clone)]
pub struct MirostatV2 {
    tau: f32,
    eta: f32,
    mu: f32,
    last: Vec<(u32, f32)>,
}

impl MirostatV2 {
    /// Mirostat v2. Errors unless `tau` is finite and `> 0` and `eta` finite and `≥ 0`.
    pub fn new(tau: f32, eta: f32) -> Result<Self> {
        validate_tau_eta(tau, eta)?;
        Ok(Self { tau, eta, mu: 2.0 * tau, last: Vec::new() })
    }

    /// The current `μ` (maximum surprise, bits).
    pub fn mu(&self) -> f32 {
        self.mu
    }
}

impl Sampler for MirostatV2 {
    fn boxed_clone(&self) -> Option<Box<dyn Sampler>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "mirostat_v2"
    }

    fn sample(
        &mut self,
        candidates: &mut Candidates,
        _ctx: &SamplingContext<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<u32> {
        softmax(candidates, "mirostat_v2")?;
        let min_prob = (-self.mu).exp2();
        let p_max = candidates.as_slice().iter().map(|c| c.prob).fold(0.0_f32, f32::max);
        if p_max >= min_prob {
            candidates.retain(|c| c.prob >= min_prob && c.prob > 0.0);
        } else {
            candidates.keep_top_k(1);
        }
        let id = draw(candidates, rng)?;
        self.last.clear();
        self.last.extend(candidates.as_slice().iter().map(|c| (c.id, c.prob)));
        Ok(id)
    }

    fn accept(&mut self, token: u32) {
        update_mu(&mut self.mu, &self.last, token, self.tau, self.eta);
    }

    fn reset(&mut self) {
        self.mu = 2.0 * self.tau;
        self.last.clear();
    }
}

fn validate_tau_eta(tau: f32, eta: f32) -> Result<()> {
    if !(tau.is_finite() && tau > 0.0) {
        return Err(SamplingError::invalid("mirostat_tau", tau, "must be finite and > 0"));
    }
    if !(eta.is_finite() && eta >= 0.0) {
        return Err(SamplingError::invalid("mirostat_eta", eta, "must be finite and >= 0"));
    }
    Ok(())
}

fn softmax(candidates: &mut Candidates, stage: &'static str) -> Result<()> {
    candidates.softmax().map_err(|e| match e {
        SamplingError::EmptyCandidates { .. } => SamplingError::EmptyCandidates { stage },
        other => other,
    })
}

/// `μ ← μ − η·(surprise − τ)` for `token`'s probability in `last` (renormalised);
/// unchanged when the token is not there.
fn update_mu(mu: &mut f32, last: &[(u32, f32)], token: u32, tau: f32, eta: f32) {
    if let Some(&(_, p)) = last.iter().find(|&&(id, p)| id == token && p > 0.0) {
        let surprise = -p.log2();
        *mu -= eta * (surprise - tau);
    }
}
