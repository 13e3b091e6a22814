//! Property-testing kit for logit processors and samplers (feature `testing`).
//!
//! Two halves:
//! - **Strategies** ([`proptest`](mod@proptest)) for the inputs a sampling stage meets: LM-like
//!   logits (a Zipf-shaped head over Gaussian noise, shuffled), peaked and flat
//!   distributions, heavy ties, masked (`-inf`) entries, invalid (NaN / `+inf`)
//!   entries, and token histories with repeats.
//! - **Invariant checks** that hold for every well-behaved stage: a masked token is
//!   never sampled; the survivors are a non-empty subset that renormalises (sum
//!   within 1e-5); the same seed gives the same draws; NaN / `+inf` logits end in an
//!   error, never a panic or a silent pick. Each `check_*` returns
//!   `Result<(), TestCaseError>` for use inside `proptest!` with `?`, and
//!   [`check_processor`] / [`check_sampler`] run all of them over all strategies in
//!   one call:
//!
//! ```
//! use perpetua_sampling::{processors::TopK, testing};
//! testing::check_processor(|| TopK::new(5).unwrap());
//! ```
//!
//! This crate's own property tests use the same kit (`tests/proptest_truncation.rs`).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::samplers::Multinomial;
use crate::{Candidates, Chain, LogitsProcessor, Sampler, SamplingContext};

/// Tolerance of the renormalisation check: `|Σ p − 1| ≤ 1e-5`.
pub const SUM_TOLERANCE: f32 = 1e-5;

/// A standard normal deviate by Box–Muller (keeps `rand_distr` out of the tree).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// LM-like logits over a vocabulary of `vocab` tokens (a `lo..hi` range): a Zipf head
/// `logit = −s·ln(rank)·scale` plus Gaussian noise (σ 0.5–2), shuffled over ids, so a
/// few tokens carry most mass and a long tail carries the rest — the shape real
/// models produce.
pub fn lm_like_logits(vocab: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> + Clone {
    (vocab, any::<u64>(), 0.6_f32..1.6, 0.5_f32..4.0, 0.5_f32..2.0).prop_map(|(n, seed, s, scale, noise)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut logits: Vec<f32> =
            (0..n).map(|rank| -s * ((rank + 1) as f32).ln() * scale + noise * gaussian(&mut rng)).collect();
        logits.shuffle(&mut rng);
        logits
    })
}

/// Peaked: one token 5–25 logits above a narrow rest (the model is sure).
pub fn peaked_logits(vocab: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> + Clone {
    (vocab, any::<u64>(), 5.0_f32..25.0).prop_map(|(n, seed, gap)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut logits: Vec<f32> = (0..n).map(|_| gaussian(&mut rng)).collect();
        let top = rng.random_range(0..n);
        logits[top] += gap;
        logits
    })
}

/// Flat: every logit equal to one value, or within 10⁻³ of it (maximum entropy).
pub fn flat_logits(vocab: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> + Clone {
    (vocab, -20.0_f32..20.0, any::<bool>(), any::<u64>()).prop_map(|(n, level, jitter, seed)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| if jitter { level + 1e-3 * rng.random::<f32>() } else { level }).collect()
    })
}

/// Heavy ties: logits from a set of at most four values, so most tokens tie with
/// others (tests tie policies at every boundary).
pub fn tied_logits(vocab: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> + Clone {
    (vocab, vec(-10.0_f32..10.0, 1..5), any::<u64>()).prop_map(|(n, levels, seed)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| levels[rng.random_range(0..levels.len())]).collect()
    })
}

/// Arbitrary finite logits in `[−100, 100]` with no shape at all.
pub fn arbitrary_logits(vocab: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> + Clone {
    vocab.prop_flat_map(|n| vec(-100.0_f32..100.0, n))
}

/// Any finite logits: a mix of every shape above (LM-like twice as often), vocabulary
/// `1..1024` (large enough to reach the selection paths of top-p and friends).
pub fn finite_logits() -> impl Strategy<Value = Vec<f32>> + Clone {
    prop_oneof![
        2 => lm_like_logits(1..1024),
        1 => peaked_logits(1..512),
        1 => flat_logits(1..512),
        1 => tied_logits(1..512),
        1 => arbitrary_logits(1..256),
    ]
}

/// Finite logits with some entries masked to `-inf`: `(logits, masked ids)`. At least
/// one entry stays finite; about a third of the entries are masked, including, half
/// of the time, the most probable one (so a stage that ignores masks is caught).
pub fn masked_logits() -> impl Strategy<Value = (Vec<f32>, Vec<u32>)> + Clone {
    (finite_logits(), any::<u64>(), any::<bool>()).prop_map(|(mut logits, seed, mask_best)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = logits.len();
        let keep = rng.random_range(0..n);
        let best = (0..n).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a))).unwrap_or(0);
        let mut masked = Vec::new();
        for (i, l) in logits.iter_mut().enumerate() {
            let hit = rng.random_range(0..3) == 0 || (mask_best && i == best);
            if i != keep && hit {
                *l = f32::NEG_INFINITY;
                masked.push(i as u32);
            }
        }
        (logits, masked)
    })
}

/// Finite logits with at least one NaN or `+inf` entry (and sometimes `-inf` ones).
pub fn invalid_logits() -> impl Strategy<Value = Vec<f32>> + Clone {
    (finite_logits(), any::<u64>(), 1_usize..4).prop_map(|(mut logits, seed, bad)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = logits.len();
        for _ in 0..bad {
            let i = rng.random_range(0..n);
            logits[i] = match rng.random_range(0..3) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                _ => -f32::NAN,
            };
        }
        if rng.random_bool(0.3) {
            let i = rng.random_range(0..n);
            if logits[i].is_finite() {
                logits[i] = f32::NEG_INFINITY;
            }
        }
        logits
    })
}

/// A token history of `len` ids below `vocab`, drawn from a small pool so that
/// repeats (what penalties react to) are common.
pub fn token_history(vocab: u32, len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u32>> + Clone {
    let vocab = vocab.max(1);
    (len, any::<u64>(), 1..=vocab.min(16)).prop_map(move |(n, seed, pool)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids: Vec<u32> = (0..pool).map(|_| rng.random_range(0..vocab)).collect();
        (0..n).map(|_| ids[rng.random_range(0..ids.len())]).collect()
    })
}

fn fill(logits: &[f32]) -> Candidates {
    Candidates::from_pairs(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)))
}

/// Run `processor` on `logits` and check the output set: it is non-empty, its ids are
/// distinct and a subset of the input's, no logit became NaN or `+inf`, at least one
/// is finite, and the survivors renormalise (softmax sums to 1 within
/// [`SUM_TOLERANCE`]; when the stage leaves [`Candidates::has_probs`] set, those
/// probabilities must sum to 1 and match a fresh softmax). A processor may also
/// return an error instead; it must not panic.
pub fn check_survivors_renormalise(
    processor: &mut dyn LogitsProcessor,
    logits: &[f32],
    ctx: &SamplingContext<'_>,
) -> Result<(), TestCaseError> {
    let mut c = fill(logits);
    if processor.process(&mut c, ctx).is_err() {
        return Ok(());
    }
    prop_assert!(!c.is_empty(), "`{}` left no candidate without an error", processor.name());
    let mut seen = vec![false; logits.len()];
    for cand in c.as_slice() {
        let i = cand.id as usize;
        prop_assert!(i < logits.len(), "`{}` invented id {}", processor.name(), cand.id);
        prop_assert!(!seen[i], "`{}` duplicated id {}", processor.name(), cand.id);
        seen[i] = true;
        prop_assert!(
            !cand.logit.is_nan() && cand.logit != f32::INFINITY,
            "`{}` produced logit {} for id {}",
            processor.name(),
            cand.logit,
            cand.id
        );
    }
    if c.is_sorted() {
        let ok = c.as_slice().windows(2).all(|w| crate::candidates::cmp_desc(&w[0], &w[1]).is_le());
        prop_assert!(ok, "`{}` set the sorted flag on unsorted candidates", processor.name());
    }
    if c.has_probs() {
        let sum: f32 = c.as_slice().iter().map(|c| c.prob).sum();
        prop_assert!((sum - 1.0).abs() <= SUM_TOLERANCE, "`{}`: probs sum to {sum}", processor.name());
        let kept: Vec<f32> = c.as_slice().iter().map(|c| c.prob).collect();
        let mut fresh = Candidates::from_pairs(c.as_slice().iter().map(|c| (c.id, c.logit)));
        prop_assert!(fresh.softmax().is_ok(), "`{}` left only masked candidates", processor.name());
        for (a, b) in kept.iter().zip(fresh.as_slice()) {
            prop_assert!(
                (a - b.prob).abs() <= SUM_TOLERANCE,
                "`{}`: stale prob {a} vs {}",
                processor.name(),
                b.prob
            );
        }
    } else {
        let res = c.softmax();
        prop_assert!(res.is_ok(), "`{}` left only masked candidates: {res:?}", processor.name());
        let sum: f32 = c.as_slice().iter().map(|c| c.prob).sum();
        prop_assert!((sum - 1.0).abs() <= SUM_TOLERANCE, "`{}`: survivors sum to {sum}", processor.name());
    }
    Ok(())
}

/// Run `processor` (when given) then `sampler` `draws` times on `logits` (with
/// `masked` ids set to `-inf`) and check no masked id is ever chosen.
pub fn check_never_picks_masked(
    processor: Option<&mut dyn LogitsProcessor>,
    sampler: &mut dyn Sampler,
    logits: &[f32],
    masked: &[u32],
    ctx: &SamplingContext<'_>,
    seed: u64,
    draws: usize,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut processor = processor;
    for _ in 0..draws {
        let mut c = fill(logits);
        if let Some(p) = processor.as_deref_mut()
            && p.process(&mut c, ctx).is_err()
        {
            return Ok(());
        }
        if let Ok(id) = sampler.sample(&mut c, ctx, &mut rng) {
            prop_assert!(!masked.contains(&id), "picked masked token {id}");
            prop_assert!((id as usize) < logits.len(), "picked unknown token {id}");
            sampler.accept(id);
            if let Some(p) = processor.as_deref_mut() {
                p.accept(id);
            }
        }
    }
    Ok(())
}

/// Two fresh stages from `make` and two RNGs seeded with `seed` must give the same
/// `steps` draws on `logits` (each draw accepted, so stateful stages are covered).
pub fn check_deterministic<P, S>(
    make: &dyn Fn() -> (Option<P>, S),
    logits: &[f32],
    ctx: &SamplingContext<'_>,
    seed: u64,
    steps: usize,
) -> Result<(), TestCaseError>
where
    P: LogitsProcessor,
    S: Sampler,
{
    let run = || {
        let (mut p, mut s) = make();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(steps);
        for _ in 0..steps {
            let mut c = fill(logits);
            let r = match p.as_mut() {
                Some(p) => p.process(&mut c, ctx),
                None => Ok(()),
            }
            .and_then(|()| s.sample(&mut c, ctx, &mut rng));
            if let Ok(id) = r {
                s.accept(id);
                if let Some(p) = p.as_mut() {
                    p.accept(id);
                }
            }
            out.push(r);
        }
        out
    };
    let (a, b) = (run(), run());
    prop_assert_eq!(a, b, "same seed, different draws");
    Ok(())
}

/// `logits` holds a NaN or `+inf` entry: the processor (when given) followed by
/// `sampler` must end in an error — never a panic, never a token.
pub fn check_invalid_logits_error(
    processor: Option<&mut dyn LogitsProcessor>,
    sampler: &mut dyn Sampler,
    logits: &[f32],
    ctx: &SamplingContext<'_>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut c = fill(logits);
    if let Some(p) = processor
        && p.process(&mut c, ctx).is_err()
    {
        return Ok(());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let r = sampler.sample(&mut c, ctx, &mut rng);
    prop_assert!(r.is_err(), "NaN/+inf logits silently gave {r:?}");
    Ok(())
}

/// `logits` holds a NaN or `+inf` entry: a whole [`Chain`] step must be an error (the
/// chain validates logits before any stage runs, so this holds for every processor;
/// it checks that nothing panics on the way).
pub fn check_chain_rejects_invalid_logits(
    chain: &mut Chain,
    logits: &[f32],
    seed: u64,
) -> Result<(), TestCaseError> {
    let ctx = SamplingContext::new(&[], 0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let r = chain.sample(logits, &ctx, &mut rng);
    prop_assert!(r.is_err(), "NaN/+inf logits silently gave {r:?}");
    Ok(())
}

fn run_cases<T: std::fmt::Debug + Clone>(
    what: &str,
    cases: u32,
    strategy: impl Strategy<Value = T>,
    test: impl Fn(T) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{what}: {e}");
    }
}

/// Check every processor invariant of this module on a processor built by `make`,
/// over every logit strategy (64 cases each), followed by a [`Multinomial`] sampler
/// for the sampling invariants: survivors renormalise, masked tokens are never
/// picked, same seed → same draws, and NaN / `+inf` logits end a [`Chain`] step in an
/// error. (The stricter [`check_invalid_logits_error`] — the stage itself rejects bad
/// logits in a raw buffer — is left to call explicitly: a stage inside a chain never
/// sees them.) Panics with the minimal failing input.
pub fn check_processor<P: LogitsProcessor + 'static>(make: impl Fn() -> P) {
    let history = [1_u32, 2, 2, 3];
    let ctx = SamplingContext::new(&history, 1);
    run_cases("survivors renormalise", 64, finite_logits(), |logits| {
        check_survivors_renormalise(&mut make(), &logits, &ctx)
    });
    run_cases("masked never picked", 64, (masked_logits(), any::<u64>()), |((logits, masked), seed)| {
        check_never_picks_masked(Some(&mut make()), &mut Multinomial, &logits, &masked, &ctx, seed, 8)
    });
    run_cases("deterministic", 32, (finite_logits(), any::<u64>()), |(logits, seed)| {
        check_deterministic(&|| (Some(make()), Multinomial), &logits, &ctx, seed, 4)
    });
    run_cases("invalid logits", 64, (invalid_logits(), any::<u64>()), |(logits, seed)| {
        check_chain_rejects_invalid_logits(&mut Chain::new(Multinomial).with(make()), &logits, seed)
    });
}

/// Check the sampler invariants (masked never picked, deterministic under a seed,
/// NaN / `+inf` → error) on a sampler built by `make`, 64 cases each. Panics with
/// the minimal failing input.
pub fn check_sampler<S: Sampler>(make: impl Fn() -> S) {
    let ctx = SamplingContext::new(&[], 0);
    run_cases("masked never picked", 64, (masked_logits(), any::<u64>()), |((logits, masked), seed)| {
        check_never_picks_masked(None, &mut make(), &logits, &masked, &ctx, seed, 8)
    });
    run_cases("deterministic", 32, (finite_logits(), any::<u64>()), |(logits, seed)| {
        check_deterministic::<crate::processors::TopK, S>(&|| (None, make()), &logits, &ctx, seed, 4)
    });
    run_cases("invalid logits", 64, (invalid_logits(), any::<u64>()), |(logits, seed)| {
        check_invalid_logits_error(None, &mut make(), &logits, &ctx, seed)
    });
}

// ------------------------------------------------------------ statistics

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; |error| < 1e-13).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised upper incomplete gamma `Q(a, x)` (series below `a + 1`, Lentz's
/// continued fraction above; Numerical Recipes §6.2).
pub fn gamma_q(a: f64, x: f64) -> f64 {
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut ap, mut del) = (a, 1.0 / a);
        let mut sum = del;
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * front
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let (mut c, mut d) = (1.0 / tiny, 1.0 / b);
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        front * h
    }
}

/// Pearson's chi-square of `observed` counts against `expected_probs` (over the
/// total of `observed` draws) and its p-value with `cells − 1` degrees of freedom:
/// the statistical tests of samplers and decoders use it to compare an empirical
/// distribution with an exact one.
pub fn chi_square(observed: &[u64], expected_probs: &[f64]) -> (f64, f64) {
    let n: u64 = observed.iter().sum();
    let stat: f64 = observed
        .iter()
        .zip(expected_probs)
        .map(|(&o, &p)| {
            let e = p * n as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum();
    let df = (observed.len() - 1) as f64;
    (stat, gamma_q(df / 2.0, stat / 2.0))
}
