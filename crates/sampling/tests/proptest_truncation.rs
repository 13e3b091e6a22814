//! Property tests of the truncation processors (top-p, min-p, typical, top-nσ,
//! epsilon / eta, XTC), dynamic temperature and the samplers (greedy, multinomial,
//! without replacement, mirostat v1 / v2), on the strategies of the `testing` kit.
#![allow(clippy::unwrap_used)]

use perpetua_sampling::processors::{
    DynamicTemperature, EpsilonCutoff, EtaCutoff, MinP, Temperature, TopNSigma, TopP, Typical, Xtc,
};
use perpetua_sampling::samplers::{Greedy, Mirostat, MirostatV2, Multinomial, draw_without_replacement};
use perpetua_sampling::testing::{self, finite_logits, masked_logits, tied_logits};
use perpetua_sampling::{Candidates, Chain, LogitsProcessor, Sampler, SamplingContext, SamplingError};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

fn ctx() -> SamplingContext<'static> {
    SamplingContext::new(&[], 0)
}

fn fill(logits: &[f32]) -> Candidates {
    let mut c = Candidates::default();
    c.fill_from_logits(logits).unwrap();
    c
}

/// Reference order (descending logit, ties by ascending id) and f64 probabilities.
fn reference(logits: &[f32]) -> (Vec<u32>, Vec<f64>) {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    let max = f64::from(logits[order[0] as usize]);
    let z: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    let probs = logits.iter().map(|&l| (f64::from(l) - max).exp() / z).collect();
    (order, probs)
}

fn argmax(logits: &[f32]) -> u32 {
    reference(logits).0[0]
}

fn survivor_ids(c: &Candidates) -> Vec<u32> {
    let mut ids: Vec<u32> = c.ids().collect();
    ids.sort_unstable();
    ids
}

// One call per processor and sampler: renormalisation, masks, determinism, NaN/+inf.
#[test]
fn kit_invariants_hold_for_every_truncation_processor() {
    testing::check_processor(|| TopP::new(0.9).unwrap());
    testing::check_processor(|| TopP::with_min_keep(0.3, 5).unwrap());
    testing::check_processor(|| MinP::new(0.05).unwrap());
    testing::check_processor(|| MinP::with_min_keep(0.5, 3).unwrap());
    testing::check_processor(|| Typical::new(0.9).unwrap());
    testing::check_processor(|| TopNSigma::new(1.0).unwrap());
    testing::check_processor(|| TopNSigma::new(0.0).unwrap());
    testing::check_processor(|| EpsilonCutoff::new(3e-3).unwrap());
    testing::check_processor(|| EtaCutoff::new(1e-2).unwrap());
    testing::check_processor(|| Xtc::new(1.0, 0.1, 7).unwrap());
    testing::check_processor(|| Xtc::new(0.5, 0.05, 7).unwrap());
    testing::check_processor(|| DynamicTemperature::new(0.5, 1.5, 1.0).unwrap());
    testing::check_processor(|| DynamicTemperature::new(0.0, 0.0, 1.0).unwrap());
}

#[test]
fn kit_invariants_hold_for_every_sampler() {
    testing::check_sampler(|| Greedy);
    testing::check_sampler(|| Multinomial);
    testing::check_sampler(|| Mirostat::new(5.0, 0.1, 100).unwrap());
    testing::check_sampler(|| MirostatV2::new(5.0, 0.1).unwrap());
    testing::check_sampler(|| MirostatV2::new(0.5, 1.0).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Top-p keeps a prefix of the ranking whose mass reaches p, and dropping its last
    /// member would fall below p (minimal), unless min_keep forced more.
    #[test]
    fn top_p_nucleus_is_the_minimal_prefix_reaching_p(
        logits in finite_logits(), p in 0.01_f32..0.999, min_keep in 1_usize..4,
    ) {
        let mut c = fill(&logits);
        TopP::with_min_keep(p, min_keep).unwrap().process(&mut c, &ctx()).unwrap();
        let (order, probs) = reference(&logits);
        let m = c.len();
        let mut prefix: Vec<u32> = order[..m].to_vec();
        prefix.sort_unstable();
        prop_assert_eq!(survivor_ids(&c), prefix, "not a prefix of the ranking");
        let mass: f64 = order[..m].iter().map(|&i| probs[i as usize]).sum();
        prop_assert!(mass >= f64::from(p) - 1e-5 || m == logits.len(), "mass {} < p {}", mass, p);
        if m > min_keep {
            let without_last = mass - probs[order[m - 1] as usize];
            prop_assert!(without_last < f64::from(p) + 1e-5, "not minimal: {} without the last", without_last);
        }
        prop_assert!(m >= min_keep.min(logits.len()));
    }

    /// The same on large, flat vocabularies, where the pool exceeds 1,024 candidates
    /// and top-p ranks it by histogram (only the crossing bucket sorted).
    #[test]
    fn top_p_nucleus_is_minimal_on_large_flat_vocabularies(
        logits in (2_000_usize..6_000, 0.5_f32..4.0).prop_flat_map(|(n, w)| proptest::collection::vec(-w..w, n)),
        p in 0.05_f32..0.999,
    ) {
        let mut c = fill(&logits);
        TopP::new(p).unwrap().process(&mut c, &ctx()).unwrap();
        let (order, probs) = reference(&logits);
        let m = c.len();
        let mut prefix: Vec<u32> = order[..m].to_vec();
        prefix.sort_unstable();
        prop_assert_eq!(survivor_ids(&c), prefix, "not a prefix of the ranking");
        let mass: f64 = order[..m].iter().map(|&i| probs[i as usize]).sum();
        prop_assert!(mass >= f64::from(p) - 1e-5, "mass {} < p {}", mass, p);
        let without_last = mass - probs[order[m - 1] as usize];
        prop_assert!(m == 1 || without_last < f64::from(p) + 1e-5, "not minimal");
        let sum: f32 = c.as_slice().iter().map(|c| c.prob).sum();
        prop_assert!(c.has_probs() && (sum - 1.0).abs() < 1e-5, "probs sum {}", sum);
    }

    /// Typical keeps exactly HF's set: rank by |−ln p − H|, keep through the token whose
    /// cumulative mass crosses p, plus ties with it (float borders skipped).
    #[test]
    fn typical_matches_the_hf_reference(logits in finite_logits(), mass in 0.05_f32..0.99) {
        let (_, probs) = reference(&logits);
        let h: f64 = probs.iter().filter(|&&p| p > 0.0).map(|&p| -p * p.ln()).sum();
        let dist: Vec<f64> = probs.iter().map(|&p| if p > 0.0 { (-p.ln() - h).abs() } else { f64::INFINITY }).collect();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)));
        let mut cum = 0.0;
        let mut last = logits.len() - 1;
        for (r, &i) in order.iter().enumerate() {
            cum += probs[i];
            prop_assume!((cum - f64::from(mass)).abs() > 1e-5);
            if cum >= f64::from(mass) { last = r; break; }
        }
        let bd = dist[order[last]];
        let mut c = fill(&logits);
        Typical::new(mass).unwrap().process(&mut c, &ctx()).unwrap();
        let kept = survivor_ids(&c);
        for (i, &d) in dist.iter().enumerate() {
            if (d - bd).abs() <= 1e-4 * (1.0 + bd) { continue; }
            prop_assert_eq!(kept.binary_search(&(i as u32)).is_ok(), d < bd, "id {} d {} boundary {}", i, d, bd);
        }
    }

    /// p = 1 keeps everything and leaves the buffer untouched.
    #[test]
    fn top_p_one_keeps_all(logits in finite_logits()) {
        let mut c = fill(&logits);
        TopP::new(1.0).unwrap().process(&mut c, &ctx()).unwrap();
        prop_assert_eq!(c.len(), logits.len());
    }

    /// Min-p keeps exactly the candidates with p ≥ min_p · p_max (or the min_keep best).
    #[test]
    fn min_p_keeps_exactly_the_threshold_set(logits in finite_logits(), min_p in 0.001_f32..1.0) {
        let mut c = fill(&logits);
        MinP::new(min_p).unwrap().process(&mut c, &ctx()).unwrap();
        let (_, probs) = reference(&logits);
        let p_max = probs.iter().cloned().fold(0.0, f64::max);
        let thr = f64::from(min_p) * p_max;
        let kept = survivor_ids(&c);
        for (i, &p) in probs.iter().enumerate() {
            // Skip the float-ambiguous border (relative 1e-4).
            if (p - thr).abs() <= 1e-4 * thr { continue; }
            prop_assert_eq!(kept.binary_search(&(i as u32)).is_ok(), p >= thr, "id {} p {} thr {}", i, p, thr);
        }
    }

    /// Top-nσ keeps exactly the finite logits ≥ max − n·σ (population σ).
    #[test]
    fn top_n_sigma_keeps_exactly_the_sigma_band((logits, _) in masked_logits(), n in 0.0_f32..3.0) {
        let mut c = fill(&logits);
        TopNSigma::new(n).unwrap().process(&mut c, &ctx()).unwrap();
        let finite: Vec<f64> = logits.iter().filter(|l| l.is_finite()).map(|&l| f64::from(l)).collect();
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let sigma = (finite.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / finite.len() as f64).sqrt();
        let max = finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let thr = max - f64::from(n) * sigma;
        let kept = survivor_ids(&c);
        prop_assert!(!kept.is_empty());
        for (i, &l) in logits.iter().enumerate() {
            let l = f64::from(l);
            if (l - thr).abs() <= 1e-4 * (1.0 + thr.abs()) { continue; }
            prop_assert_eq!(kept.binary_search(&(i as u32)).is_ok(), l.is_finite() && l >= thr, "id {}", i);
        }
    }

    /// Epsilon and eta drop exactly the candidates below their cutoff (or keep the best).
    #[test]
    fn epsilon_and_eta_cut_below_their_cutoff(logits in finite_logits(), eps in 1e-4_f32..0.2) {
        let (_, probs) = reference(&logits);
        let h: f64 = probs.iter().filter(|&&p| p > 0.0).map(|&p| -p * p.ln()).sum();
        let eta = EtaCutoff::new(eps).unwrap();
        for (mut stage, cutoff) in [
            (Box::new(EpsilonCutoff::new(eps).unwrap()) as Box<dyn LogitsProcessor>, f64::from(eps)),
            (Box::new(eta) as Box<dyn LogitsProcessor>, eta.cutoff(h)),
        ] {
            let mut c = fill(&logits);
            stage.process(&mut c, &ctx()).unwrap();
            let kept = survivor_ids(&c);
            if probs.iter().all(|&p| p < cutoff * (1.0 + 1e-4)) {
                prop_assert_eq!(kept.len(), 1, "`{}` kept more than the best", stage.name());
                continue;
            }
            for (i, &p) in probs.iter().enumerate() {
                if (p - cutoff).abs() <= 1e-4 * cutoff { continue; }
                prop_assert_eq!(kept.binary_search(&(i as u32)).is_ok(), p >= cutoff, "`{}` id {}", stage.name(), i);
            }
        }
    }

    /// XTC at probability 1: of the tokens with p ≥ threshold exactly the least likely
    /// survives (when there are at least two), and every token below it survives.
    #[test]
    fn xtc_removes_all_top_choices_but_the_least_likely(logits in finite_logits(), threshold in 0.01_f32..0.5) {
        let mut c = fill(&logits);
        Xtc::new(1.0, threshold, 1).unwrap().process(&mut c, &ctx()).unwrap();
        let (order, probs) = reference(&logits);
        let t = f64::from(threshold);
        if probs.iter().any(|&p| (p - t).abs() <= 1e-5) { return Ok(()); }
        let top: Vec<u32> = order.iter().copied().filter(|&i| probs[i as usize] >= t).collect();
        let kept = survivor_ids(&c);
        for (i, &p) in probs.iter().enumerate() {
            let id = i as u32;
            let expect = p < t || top.len() < 2 || Some(&id) == top.last();
            prop_assert_eq!(kept.binary_search(&id).is_ok(), expect, "id {} p {}", id, p);
        }
    }

    /// Dynamic temperature stays within its range: the applied temperature, recovered
    /// from the logit gaps, lies in [T_min, T_max].
    #[test]
    fn dynamic_temperature_stays_in_range(logits in finite_logits(), lo in 0.1_f32..1.0, width in 0.0_f32..2.0, e in 0.0_f32..3.0) {
        let (order, _) = reference(&logits);
        let (a, b) = (order[0] as usize, *order.last().unwrap() as usize);
        let gap = logits[a] - logits[b];
        prop_assume!(logits.len() >= 2 && gap > 1e-2);
        let mut c = fill(&logits);
        DynamicTemperature::new(lo, lo + width, e).unwrap().process(&mut c, &ctx()).unwrap();
        let new = |id: usize| c.as_slice().iter().find(|x| x.id as usize == id).unwrap().logit;
        let t = gap / (new(a) - new(b));
        prop_assert!(t >= lo * (1.0 - 1e-3) && t <= (lo + width) * (1.0 + 1e-3), "T' = {} outside [{}, {}]", t, lo, lo + width);
    }

    /// Temperature → 0 is argmax: T = 0 (plain or dynamic) then multinomial, and greedy,
    /// all pick the best token, ties → the lowest id.
    #[test]
    fn zero_temperature_is_argmax(logits in prop_oneof![finite_logits(), tied_logits(1..64)], seed in any::<u64>()) {
        let want = argmax(&logits);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut chain = Chain::new(Multinomial).with(Temperature::new(0.0).unwrap());
        prop_assert_eq!(chain.sample(&logits, &ctx(), &mut rng).unwrap(), want);
        let mut chain = Chain::new(Multinomial).with(DynamicTemperature::new(0.0, 0.0, 1.0).unwrap());
        prop_assert_eq!(chain.sample(&logits, &ctx(), &mut rng).unwrap(), want);
        prop_assert_eq!(Greedy.sample(&mut fill(&logits), &ctx(), &mut rng).unwrap(), want);
    }

    /// A small positive temperature concentrates on the argmax when it is clear.
    #[test]
    fn small_temperature_tends_to_argmax(logits in finite_logits(), seed in any::<u64>()) {
        let (order, _) = reference(&logits);
        prop_assume!(logits.len() == 1 || logits[order[0] as usize] - logits[order[1] as usize] > 0.1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut chain = Chain::new(Multinomial).with(Temperature::new(1e-3).unwrap());
        prop_assert_eq!(chain.sample(&logits, &ctx(), &mut rng).unwrap(), order[0]);
    }

    /// Greedy picks the lowest id among tied maxima.
    #[test]
    fn greedy_ties_go_to_the_lowest_id(logits in tied_logits(1..64)) {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lowest = logits.iter().position(|&l| l == max).unwrap() as u32;
        prop_assert_eq!(Greedy.sample(&mut fill(&logits), &ctx(), &mut rng).unwrap(), lowest);
    }

    /// Draws without replacement are distinct, never masked, at most k, in draw order
    /// (the first equals a plain multinomial draw from the same RNG state).
    #[test]
    fn draws_without_replacement_are_distinct_and_unmasked((logits, masked) in masked_logits(), k in 1_usize..5, seed in any::<u64>()) {
        let mut out = Vec::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        draw_without_replacement(&mut fill(&logits), k, &mut rng, &mut out).unwrap();
        let finite = logits.iter().filter(|l| l.is_finite()).count();
        prop_assert!(!out.is_empty() && out.len() <= k.min(finite));
        for (i, id) in out.iter().enumerate() {
            prop_assert!(!masked.contains(id));
            prop_assert!(!out[..i].contains(id), "duplicate {}", id);
        }
    }

    /// The same seed gives the same tokens through a whole chain of these stages.
    #[test]
    fn same_seed_same_draws_through_a_chain(logits in finite_logits(), seed in any::<u64>()) {
        let run = || {
            let mut chain = Chain::new(MirostatV2::new(4.0, 0.2).unwrap())
                .with(TopNSigma::new(2.0).unwrap())
                .with(Xtc::new(0.5, 0.1, 3).unwrap())
                .with(DynamicTemperature::new(0.5, 1.5, 1.0).unwrap())
                .with(TopP::new(0.95).unwrap())
                .with(MinP::new(0.02).unwrap());
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..6).map(|_| {
                let t = chain.sample(&logits, &ctx(), &mut rng).unwrap();
                chain.accept(t);
                t
            }).collect::<Vec<_>>()
        };
        prop_assert_eq!(run(), run());
    }

    /// NaN or +inf logits are an error from every stage on a raw buffer (never a
    /// panic, never a pick), and from the chain.
    #[test]
    fn invalid_logits_are_errors(logits in testing::invalid_logits(), seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let raw = || Candidates::from_pairs(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let is_bad = |e: &SamplingError| matches!(e, SamplingError::NanLogit { .. } | SamplingError::InfiniteLogit { .. });
        let stages: Vec<Box<dyn LogitsProcessor>> = vec![
            Box::new(TopP::new(0.9).unwrap()),
            Box::new(MinP::new(0.05).unwrap()),
            Box::new(Typical::new(0.9).unwrap()),
            Box::new(TopNSigma::new(1.0).unwrap()),
            Box::new(EpsilonCutoff::new(1e-3).unwrap()),
            Box::new(EtaCutoff::new(1e-3).unwrap()),
            Box::new(Xtc::new(1.0, 0.1, 0).unwrap()),
            Box::new(DynamicTemperature::new(0.5, 1.5, 1.0).unwrap()),
        ];
        for mut s in stages {
            let r = s.process(&mut raw(), &ctx());
            prop_assert!(r.as_ref().is_err_and(is_bad), "`{}` gave {:?}", s.name(), r);
        }
        let samplers: Vec<Box<dyn Sampler>> = vec![
            Box::new(Greedy),
            Box::new(Multinomial),
            Box::new(Mirostat::new(5.0, 0.1, 100).unwrap()),
            Box::new(MirostatV2::new(5.0, 0.1).unwrap()),
        ];
        for mut s in samplers {
            let r = s.sample(&mut raw(), &ctx(), &mut rng);
            prop_assert!(r.as_ref().is_err_and(is_bad), "`{}` gave {:?}", s.name(), r);
        }
        let mut chain = Chain::new(Multinomial).with(TopP::new(0.9).unwrap());
        prop_assert!(chain.sample(&logits, &ctx(), &mut rng).is_err());
    }
}

#[test]
fn empty_and_all_masked_sets_are_empty_candidates_errors() {
    let empty = Candidates::default;
    let all_masked = || Candidates::from_pairs([(0, f32::NEG_INFINITY), (1, f32::NEG_INFINITY)]);
    let stages: Vec<Box<dyn LogitsProcessor>> = vec![
        Box::new(TopP::new(0.9).unwrap()),
        Box::new(MinP::new(0.05).unwrap()),
        Box::new(Typical::new(0.9).unwrap()),
        Box::new(TopNSigma::new(1.0).unwrap()),
        Box::new(EpsilonCutoff::new(1e-3).unwrap()),
        Box::new(EtaCutoff::new(1e-3).unwrap()),
        Box::new(DynamicTemperature::new(0.5, 1.5, 1.0).unwrap()),
    ];
    for mut s in stages {
        for mut c in [empty(), all_masked()] {
            let r = s.process(&mut c, &ctx());
            assert!(matches!(r, Err(SamplingError::EmptyCandidates { .. })), "`{}` gave {r:?}", s.name());
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let samplers: Vec<Box<dyn Sampler>> = vec![
        Box::new(Greedy),
        Box::new(Multinomial),
        Box::new(Mirostat::new(5.0, 0.1, 100).unwrap()),
        Box::new(MirostatV2::new(5.0, 0.1).unwrap()),
    ];
    for mut s in samplers {
        for mut c in [empty(), all_masked()] {
            let r = s.sample(&mut c, &ctx(), &mut rng);
            assert!(matches!(r, Err(SamplingError::EmptyCandidates { .. })), "`{}` gave {r:?}", s.name());
        }
    }
}

#[test]
fn constructors_reject_out_of_domain_parameters() {
    for bad in [0.0, -0.1, 1.01, f32::NAN, f32::INFINITY] {
        assert!(TopP::new(bad).is_err(), "top_p {bad}");
        assert!(Typical::new(bad).is_err(), "typical {bad}");
    }
    for bad in [-0.1, 1.01, f32::NAN] {
        assert!(MinP::new(bad).is_err(), "min_p {bad}");
        assert!(Xtc::new(bad, 0.1, 0).is_err(), "xtc probability {bad}");
    }
    for bad in [0.0, 1.0, -1.0, f32::NAN] {
        assert!(EpsilonCutoff::new(bad).is_err(), "epsilon {bad}");
        assert!(EtaCutoff::new(bad).is_err(), "eta {bad}");
    }
    assert!(TopNSigma::new(-1.0).is_err() && TopNSigma::new(f32::INFINITY).is_err());
    assert!(Xtc::new(0.5, 0.0, 0).is_err() && Xtc::new(0.5, 1.5, 0).is_err());
    assert!(DynamicTemperature::new(1.0, 0.5, 1.0).is_err());
    assert!(DynamicTemperature::new(-0.1, 0.5, 1.0).is_err());
    assert!(DynamicTemperature::new(0.5, 1.0, f32::NAN).is_err());
    assert!(Mirostat::new(0.0, 0.1, 100).is_err() && Mirostat::new(5.0, -0.1, 100).is_err());
    assert!(Mirostat::new(5.0, 0.1, 1).is_err());
    assert!(MirostatV2::new(f32::NAN, 0.1).is_err());
    assert_eq!(
        TopP::with_min_keep(0.9, 0),
        Err(SamplingError::InvalidParameter { name: "min_keep", value: "0".into(), reason: "must be >= 1" })
    );
}

/// Hand-checked typical set: probs (0.4, 0.3, 0.2, 0.1), H = 1.2799 nats; distances
/// |−ln p − H|: 0.363, 0.076, 0.330, 1.023 → ranking 1, 2, 0, 3; mass 0.45 is crossed at
/// id 2 (0.3 + 0.2), so {1, 2} survive.
#[test]
fn typical_hand_checked() {
    let mut c =
        Candidates::from_pairs([(0, 0.4_f32.ln()), (1, 0.3_f32.ln()), (2, 0.2_f32.ln()), (3, 0.1_f32.ln())]);
    Typical::new(0.45).unwrap().process(&mut c, &ctx()).unwrap();
    assert_eq!(survivor_ids(&c), vec![1, 2]);
}

/// Hand-checked dynamic temperature: two equal logits have H = ln 2 = max entropy, so
/// T' = T_max; with an override of 2.0 the range [0.5, 1.5] moves to [1.5, 2.5].
#[test]
fn dynamic_temperature_hand_checked() {
    let stage = DynamicTemperature::new(0.5, 1.5, 1.0).unwrap();
    assert_eq!(stage.range(Some(2.0)), (1.5, 2.5));
    assert_eq!(stage.temperature(), Some(1.0));
    let mut c = Candidates::from_pairs([(0, 3.0), (1, 3.0), (2, f32::NEG_INFINITY)]);
    let ctx2 = ctx().with_temperature_override(Some(2.0));
    DynamicTemperature::new(0.5, 1.5, 1.0).unwrap().process(&mut c, &ctx2).unwrap();
    assert!((c.as_slice()[0].logit - 3.0 / 2.5).abs() < 1e-6);
}

/// Mirostat μ moves against the surprise error: accepting a surprising token (more
/// than τ bits) lowers μ, an unsurprising one raises it; reset restores 2τ.
#[test]
fn mirostat_mu_tracks_the_target_surprise() {
    let logits: Vec<f32> = (0..200).map(|i| -(i as f32 + 1.0).ln() * 1.1).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut v2 = MirostatV2::new(3.0, 0.5).unwrap();
    v2.sample(&mut fill(&logits), &ctx(), &mut rng).unwrap();
    let mu0 = v2.mu();
    v2.accept(0);
    assert!(v2.mu() > mu0, "μ {} should rise above {mu0}", v2.mu());
    let mu1 = v2.mu();
    let mut c = fill(&logits);
    v2.sample(&mut c, &ctx(), &mut rng).unwrap();
    let rare = c.as_slice().iter().min_by(|a, b| a.prob.total_cmp(&b.prob)).unwrap();
    assert!(-rare.prob.log2() > 3.0, "the least likely survivor is surprising");
    v2.accept(rare.id);
    assert!(v2.mu() < mu1);
    v2.reset();
    assert_eq!(v2.mu(), 6.0);

    let mut v1 = Mirostat::new(3.0, 0.5, 100).unwrap();
    v1.sample(&mut fill(&logits), &ctx(), &mut rng).unwrap();
    v1.accept(0);
    assert!(v1.mu() > 6.0);
    v1.reset();
    assert_eq!(v1.mu(), 6.0);
}

/// XTC draws from its own seeded RNG: `reset` replays the same decisions, and at
/// probability 0.5 it acts on some steps and not on others.
#[test]
fn xtc_reset_replays_its_decisions() {
    let logits = [3.0_f32, 2.9, 2.8, 0.0, -1.0, -2.0];
    let mut xtc = Xtc::new(0.5, 0.1, 42).unwrap();
    let run = |xtc: &mut Xtc| -> Vec<usize> {
        (0..32)
            .map(|_| {
                let mut c = fill(&logits);
                xtc.process(&mut c, &ctx()).unwrap();
                c.len()
            })
            .collect()
    };
    let first = run(&mut xtc);
    xtc.reset();
    assert_eq!(run(&mut xtc), first);
    assert!(first.contains(&6) && first.contains(&4), "{first:?}");
}

/// Hand-checked mirostat v1 `k`: τ = 3 (μ = 6), ŝ = 1.1, n = 1000:
/// ε̂ = 0.1, k = (0.1·2⁶ / (1 − 1000^−0.1))^(1/1.1) = (6.4 / 0.4988)^(0.909) = 10.17 → 10.
/// ŝ = 1 exactly is 0/0: all candidates are kept; ŝ → 0 drives k to 0, clamped to 1
/// (as llama.cpp, whose `max(int(k), 1)` does the same).
#[test]
fn mirostat_k_hand_checked() {
    let m = Mirostat::new(3.0, 0.1, 100).unwrap();
    assert_eq!(m.k_for(1.1, 1000), 10);
    assert_eq!(m.k_for(1.0, 1000), 1000);
    assert_eq!(m.k_for(0.0, 1000), 1);
    assert_eq!(m.k_for(50.0, 1000), 1);
}
