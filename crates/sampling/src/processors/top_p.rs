use crate::candidates::cmp_desc;
use crate::{Candidate, Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Number of histogram buckets of the selection pass.
const BUCKETS: usize = 2048;
/// Buckets per logit unit: bucket `b` holds candidates whose logit lies in
/// `(max − (b+1)/SCALE, max − b/SCALE]`; everything `≥ BUCKETS/SCALE = 32` below the
/// maximum (probability ratio < 1.3·10⁻¹⁴ to the best) shares the last bucket.
const SCALE: f32 = 64.0;
/// At or below this many unsorted candidates a plain sort beats the selection.
const SMALL: usize = 128;
/// Pools at most this large are sorted outright; larger ones go through the histogram.
const SORT_POOL: usize = 1024;
/// At most this many rounds of re-applying the pool bound.
const ROUNDS: usize = 8;
/// Lanes of the vectorised reductions: independent accumulators let the compiler use
/// SIMD without reassociating a single float sum.
const LANES: usize = 16;

/// Top-p (nucleus) sampling: keep the smallest set of most probable candidates whose
/// total probability is at least `p`.
///
/// With candidates ranked by descending probability `p₍₁₎ ≥ p₍₂₎ ≥ …`, keeps the first
/// `m = max(min_keep, min{ j : Σ_{i≤j} p₍ᵢ₎ ≥ p })`: the token whose probability
/// *crosses* `p` is kept, as in HF `TopPLogitsWarper` and llama.cpp `top_p`.
///
/// Edge cases:
/// - `p = 1.0` keeps every candidate and does no work at all.
/// - Ties at the boundary are broken by the crate-wide order (lower id first), so
///   exactly `m` candidates survive.
/// - Masked (`-inf`) candidates have probability 0 and are dropped unless `min_keep`
///   asks for more candidates than have a finite logit.
/// - A NaN or `+inf` logit is an error ([`SamplingError::NanLogit`] /
///   [`SamplingError::InfiniteLogit`]); an empty or all-masked set is
///   [`SamplingError::EmptyCandidates`].
///
/// Cost: no full sort. With `Z = Σ exp(logit − max)`, every nucleus member has
/// probability `≥ (1 − p)/n` (were the last member below that, everything ranked
/// after the others would weigh `< 1 − p`, so the others alone would reach `p`). One
/// vectorised pass computes `Z`; one branch-free compaction keeps only that *pool*;
/// the same bound, re-applied with the mass outside the pool, shrinks it further.
/// A pool of at most 1,024 left after up to 8 rounds is sorted; a larger one (a flat distribution) is ranked
/// by a histogram of the distance to the maximum logit (1/64 logit per bucket) in
/// which only the bucket that crosses `p` is sorted. Already-sorted input (e.g. after
/// top-k) takes a prefix scan. The survivors leave with renormalised probabilities
/// ([`Candidates::has_probs`] is true), sorted unless the histogram was used.
/// Scratch buffers live in the stage: no allocation per call once warm.
#[derive(Clone)]
pub struct TopP {
    p: f32,
    min_keep: usize,
    /// Histogram of unnormalised mass, two interleaved copies (even / odd positions)
    /// so that consecutive hits on one bucket do not serialise on a single add.
    bucket_mass: Vec<f64>,
    /// Contiguous logits and `exp(logit − max)` of the current call (SIMD-friendly).
    logits: Vec<f32>,
    exps: Vec<f32>,
    /// The members of the crossing bucket.
    crossing: Vec<Candidate>,
}

impl std::fmt::Debug for TopP {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopP").field("p", &self.p).field("min_keep", &self.min_keep).finish()
    }
}

impl PartialEq for TopP {
    fn eq(&self, other: &Self) -> bool {
        self.p == other.p && self.min_keep == other.min_keep
    }
}

impl TopP {
    /// A top-p stage keeping at least one candidate. Errors unless `0 < p ≤ 1`.
    pub fn new(p: f32) -> Result<Self> {
        Self::with_min_keep(p, 1)
    }

    /// A top-p stage keeping at least `min_keep` candidates. Errors unless
    /// `0 < p ≤ 1` and `min_keep ≥ 1`.
    pub fn with_min_keep(p: f32, min_keep: usize) -> Result<Self> {
        if !(p > 0.0 && p <= 1.0) {
            return Err(SamplingError::invalid("top_p", p, "must be in (0, 1]"));
        }
        if min_keep == 0 {
            return Err(SamplingError::invalid("min_keep", min_keep, "must be >= 1"));
        }
        Ok(Self {
            p,
            min_keep,
            bucket_mass: vec![0.0; 2 * BUCKETS],
            logits: Vec::new(),
            exps: Vec::new(),
            crossing: Vec::new(),
        })
    }

    /// The configured p.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// The configured minimum number of survivors.
    pub fn min_keep(&self) -> usize {
        self.min_keep
    }
}

impl LogitsProcessor for TopP {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }

    fn name(&self) -> &'static str {
        "top_p"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::TopP)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        if self.p >= 1.0 {
            return Ok(());
        }
        if candidates.is_empty() {
            return Err(SamplingError::EmptyCandidates { stage: "top_p" });
        }
        if candidates.is_sorted() || candidates.len() <= SMALL {
            return sorted_prefix(candidates, self.p, self.min_keep);
        }
        self.select(candidates)
    }
}

/// The sorted path: sort (cheap when small or already sorted), softmax, prefix scan.
fn sorted_prefix(candidates: &mut Candidates, p: f32, min_keep: usize) -> Result<()> {
    candidates.sort_by_logit();
    candidates.softmax()?;
    let keep = prefix_crossing(candidates.as_slice(), 0, 0.0, f64::from(p))
        .unwrap_or(candidates.len())
        .max(min_keep)
        .min(candidates.len());
    if keep < candidates.len() {
        candidates.truncate(keep);
        renormalise(candidates);
    }
    Ok(())
}

/// Divide the survivors' `prob` by their sum and mark probabilities valid. Callers
/// guarantee `prob` holds (possibly unnormalised) `exp(logit − max)` of every survivor
/// and at least one survivor is the maximum (so the sum is ≥ 1·p_max > 0).
fn renormalise(candidates: &mut Candidates) {
    let sorted = candidates.is_sorted();
    let data = candidates.raw_mut();
    let sum: f64 = data.iter().map(|c| f64::from(c.prob)).sum();
    if sum > 0.0 {
        let inv = (1.0 / sum) as f32;
        for c in data.iter_mut() {
            c.prob *= inv;
        }
    }
    candidates.set_flags_unchecked(sorted, sum > 0.0);
}

/// `exp(−d)` for `d ≥ 0` (`+inf` → 0, NaN → NaN), relative error < 3·10⁻⁷.
///
/// Branch-free (Cody–Waite range reduction, degree-6 polynomial, exponent built from
/// the float's bits) so the compiler vectorises loops over it: ≈ 25× faster than
/// `f32::exp` on the benchmark machine, which matters because top-p touches every
/// logit of a 49k–128k vocabulary once per token.
#[inline(always)]
pub(crate) fn exp_neg(d: f32) -> f32 {
    let x = -d;
    let xc = x.max(-87.0);
    // Adding 1.5·2²³ rounds x·log₂e to an integer n kept in the low mantissa bits.
    let f = xc * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = f - 12_582_912.0;
    let r = xc - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let poly = 1.0
        + r * (1.0
            + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_03 + r * (0.008_333_6 + r * 0.001_398_3)))));
    // 2ⁿ: n + 127 in the exponent field (n ∈ [−126, 0] after the clamp).
    let two_n = f32::from_bits(f.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    // `x − x` is 0 for finite x and NaN for NaN: propagates NaN, which the clamp
    // above would otherwise have hidden.
    #[allow(clippy::eq_op)]
    let v = poly * two_n + (x - x);
    if x < -87.0 { 0.0 } else { v }
}

/// The typed error for a set known to hold a NaN or `+inf` logit.
fn bad_logit(candidates: &Candidates) -> Result<()> {
    candidates.check_logits()?;
    // Unreachable: only called once a NaN or +inf has been seen.
    Err(SamplingError::EmptyCandidates { stage: "top_p" })
}

/// Bucket of a candidate at logit distance `d = max − logit ≥ 0` from the maximum.
/// Must be computed identically in the histogram and the partition passes.
#[inline(always)]
fn bucket_of(max: f32, logit: f32) -> usize {
    // `as usize` saturates (+inf → usize::MAX) and maps NaN to 0; NaN never gets here
    // because the mass pass rejects it first.
    (((max - logit) * SCALE) as usize).min(BUCKETS - 1)
}

/// The maximum of `logits` (NaN entries ignored; they are caught by the mass pass).
fn max_logit(logits: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &l) in acc.iter_mut().zip(chunk) {
            *a = a.max(l);
        }
    }
    rest.iter().fold(acc.iter().copied().fold(f32::NEG_INFINITY, f32::max), |m, &l| m.max(l))
}

/// `out[i] = exp(logits[i] − max)`; returns `Σ out` (f64 lane accumulators; NaN if a
/// logit is NaN).
fn exps_and_mass(logits: &[f32], max: f32, out: &mut Vec<f32>) -> f64 {
    out.clear();
    out.extend(logits.iter().map(|&l| exp_neg(max - l)));
    let mut acc = [0.0_f64; LANES];
    let chunks = out.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &e) in acc.iter_mut().zip(chunk) {
            *a += f64::from(e);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&e| f64::from(e)).sum::<f64>()
}

/// Keep the candidates with `prob ≥ cut` at the front, in order, without branches
/// (each candidate is written, the write index advances only for kept ones), then
/// truncate. With `probs`, `prob` is first set from it (`probs[i]` for `data[i]`).
/// No float accumulation here: a running sum would serialise the loop.
fn compact(data: &mut Vec<Candidate>, cut: f32, probs: Option<&[f32]>) {
    let mut w = 0;
    match probs {
        Some(probs) => {
            for (i, &p) in probs.iter().enumerate().take(data.len()) {
                let mut c = data[i];
                c.prob = p;
                data[w] = c;
                w += usize::from(p >= cut);
            }
        }
        None => {
            for i in 0..data.len() {
                let c = data[i];
                data[w] = c;
                w += usize::from(c.prob >= cut);
            }
        }
    }
    data.truncate(w);
}

/// `Σ prob` over `data` with independent lane accumulators.
fn total_prob(data: &[Candidate]) -> f64 {
    let mut acc = [0.0_f64; 4];
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, c) in acc.iter_mut().zip(chunk) {
            *a += f64::from(c.prob);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|c| f64::from(c.prob)).sum::<f64>()
}

/// First `m > start` with `cum + Σ_{start≤i<m} prob_i ≥ target` over `data` (ranked
/// from `start` on), or `None`.
fn prefix_crossing(data: &[Candidate], start: usize, mut cum: f64, target: f64) -> Option<usize> {
    for (i, c) in data.iter().enumerate().skip(start) {
        cum += f64::from(c.prob);
        if cum >= target {
            return Some(i + 1);
        }
    }
    None
}

impl TopP {
    /// The unsorted path (see the type's doc for the argument).
    fn select(&mut self, candidates: &mut Candidates) -> Result<()> {
        let data = candidates.raw_mut();
        let n = data.len();
        self.logits.clear();
        self.logits.extend(data.iter().map(|c| c.logit));
        let max = max_logit(&self.logits);
        if max.is_nan() || max == f32::INFINITY {
            return bad_logit(candidates);
        }
        if max == f32::NEG_INFINITY {
            return Err(SamplingError::EmptyCandidates { stage: "top_p" });
        }
        let z = exps_and_mass(&self.logits, max, &mut self.exps);
        if !z.is_finite() {
            return bad_logit(candidates);
        }
        let target = f64::from(self.p) * z;
        let tail = (1.0 - f64::from(self.p)) * z;
        // The bound, halved as a margin for float error in z and the exps.
        let cut = (0.5 * tail / n as f64) as f32;
        let pool_len = self.exps.iter().filter(|&&e| e >= cut).count();
        if pool_len < self.min_keep {
            // min_keep reaches below the bound: the exact path over everything.
            return sorted_prefix(candidates, self.p, self.min_keep);
        }
        compact(data, cut, Some(&self.exps));
        let mut pool_mass = total_prob(data);
        // Re-apply the bound inside the pool: with `M_out` the mass outside a pool of
        // `s` candidates (all ranked below every member), every nucleus member has
        // `e ≥ ((1 − p)·Z − M_out) / s`.
        for _ in 0..ROUNDS {
            let s = data.len();
            if s <= SMALL {
                break;
            }
            let cut = (0.5 * (tail - (z - pool_mass)) / s as f64) as f32;
            let kept = data.iter().filter(|c| c.prob >= cut).count();
            if cut <= 0.0 || kept < self.min_keep || kept * 10 > s * 9 {
                break; // no safe or worthwhile progress (a flat distribution)
            }
            compact(data, cut, None);
            pool_mass = total_prob(data);
        }
        let sorted = data.len() <= SORT_POOL;
        let (m, ranked) = if sorted {
            data.sort_unstable_by(cmp_desc);
            (prefix_crossing(data, 0, 0.0, target), data.len())
        } else {
            self.bucket_crossing(data, max, target)
        };
        // `None`: round-off left the pool's mass just under p·Z (p within ~1e-6 of
        // 1); the whole pool, a superset of the nucleus, is kept.
        let keep = m.unwrap_or(ranked).max(self.min_keep);
        if keep <= ranked {
            data.truncate(keep);
        } else {
            // min_keep reaches past the ranked part of a histogram pool (rare).
            data.sort_unstable_by(cmp_desc);
            data.truncate(keep);
        }
        candidates.set_flags_unchecked(sorted || keep > ranked, false);
        renormalise(candidates);
        Ok(())
    }

    /// Rank a large pool by a histogram of the distance to the maximum: afterwards
    /// `data` holds the buckets above the crossing one (unordered) followed by the
    /// crossing bucket sorted. Returns the nucleus size (`None`: never crossed) and
    /// the length of that ranked prefix.
    fn bucket_crossing(
        &mut self,
        data: &mut Vec<Candidate>,
        max: f32,
        target: f64,
    ) -> (Option<usize>, usize) {
        self.bucket_mass.fill(0.0);
        let (even, odd) = self.bucket_mass.split_at_mut(BUCKETS);
        let mut pairs = data.chunks_exact(2);
        for pair in &mut pairs {
            even[bucket_of(max, pair[0].logit)] += f64::from(pair[0].prob);
            odd[bucket_of(max, pair[1].logit)] += f64::from(pair[1].prob);
        }
        for c in pairs.remainder() {
            even[bucket_of(max, c.logit)] += f64::from(c.prob);
        }
        let mut cum = 0.0_f64;
        let mut crossing = BUCKETS - 1;
        for b in 0..BUCKETS {
            let mass = even[b] + odd[b];
            if cum + mass >= target {
                crossing = b;
                break;
            }
            cum += mass;
        }
        // Branch-free compaction of the buckets above; the crossing bucket (few
        // members, so a predictable branch) goes to its own buffer.
        self.crossing.clear();
        let mut w = 0;
        for i in 0..data.len() {
            let c = data[i];
            let b = bucket_of(max, c.logit);
            if b == crossing {
                self.crossing.push(c);
            }
            data[w] = c;
            w += usize::from(b < crossing);
        }
        data.truncate(w);
        self.crossing.sort_unstable_by(cmp_desc);
        data.extend_from_slice(&self.crossing);
        let ranked = data.len();
        (prefix_crossing(data, w, cum, target), ranked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SamplingContext<'static> {
        SamplingContext::new(&[], 0)
    }

    #[test]
    fn exp_neg_matches_std() {
        for i in 0..10_000 {
            let d = i as f32 * 0.01;
            let (a, b) = ((-d).exp(), exp_neg(d));
            assert!((a - b).abs() <= 3e-7 * a + 1e-37, "d={d}: {a} vs {b}");
        }
        assert_eq!(exp_neg(f32::INFINITY), 0.0);
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(f32::NAN).is_nan());
    }

    #[test]
    fn keeps_the_crossing_token() {
        // probs 0.5, 0.3, 0.2: p = 0.6 crosses at the second token.
        let mut c = Candidates::from_pairs([(0, 0.5_f32.ln()), (1, 0.3_f32.ln()), (2, 0.2_f32.ln())]);
        TopP::new(0.6).unwrap().process(&mut c, &ctx()).unwrap();
        assert_eq!(c.ids().collect::<Vec<_>>(), vec![0, 1]);
        let s: f32 = c.as_slice().iter().map(|c| c.prob).sum();
        assert!(c.has_probs() && (s - 1.0).abs() < 1e-6);
    }

    #[test]
    fn histogram_path_equals_sorted_path() {
        let logits: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 1000) as f32 / 97.0).collect();
        for p in [0.05_f32, 0.5, 0.9, 0.95, 0.999] {
            let mut a = Candidates::default();
            a.fill_from_logits(&logits).unwrap();
            let mut b = a.clone();
            TopP::new(p).unwrap().process(&mut a, &ctx()).unwrap();
            sorted_prefix(&mut b, p, 1).unwrap();
            let mut ia: Vec<u32> = a.ids().collect();
            let mut ib: Vec<u32> = b.ids().collect();
            ia.sort_unstable();
            ib.sort_unstable();
            assert_eq!(ia.len(), ib.len(), "p={p}");
            assert_eq!(ia, ib, "p={p}");
        }
    }

    #[test]
    fn rejects_bad_parameters_and_logits() {
        assert!(TopP::new(0.0).is_err());
        assert!(TopP::new(1.5).is_err());
        assert!(TopP::new(f32::NAN).is_err());
        assert!(TopP::with_min_keep(0.5, 0).is_err());
        let mut logits = vec![0.0_f32; 1000];
        logits[17] = f32::NAN;
        let mut c = Candidates::from_pairs(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        assert_eq!(TopP::new(0.9).unwrap().process(&mut c, &ctx()), Err(SamplingError::NanLogit { id: 17 }));
    }
}
