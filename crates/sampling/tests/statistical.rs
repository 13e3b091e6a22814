//! Statistical tests with fixed seeds: the samplers draw from the distributions they
//! claim. Pearson's chi-square against the exact probabilities; a test passes when
//! the p-value exceeds 0.001, and a control test shows the same statistic rejects a
//! wrong distribution (so the tests have power).
#![allow(clippy::unwrap_used)]

use perpetua_sampling::processors::{Temperature, TopP};
use perpetua_sampling::samplers::{Multinomial, draw_without_replacement};
use perpetua_sampling::{Candidates, Chain, LogitsProcessor, Sampler, SamplingContext};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use perpetua_sampling::testing::{chi_square, gamma_q};

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    logits.iter().map(|l| (l - max).exp() / z).collect()
}

const LOGITS: [f32; 6] = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0];
const DRAWS: usize = 50_000;

fn multinomial_counts(logits: &[f32], temperature: f32, seed: u64) -> Vec<u64> {
    let mut chain = Chain::new(Multinomial).with(Temperature::new(temperature).unwrap());
    let ctx = SamplingContext::new(&[], 0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts = vec![0_u64; logits.len()];
    for _ in 0..DRAWS {
        counts[chain.sample(logits, &ctx, &mut rng).unwrap() as usize] += 1;
    }
    counts
}

#[test]
fn chi_square_p_values_are_right() {
    // Reference values: chi2(df=5) critical value at 0.001 is 20.515; at 0.5, 4.351.
    assert!((gamma_q(2.5, 20.515 / 2.0) - 0.001).abs() < 2e-6);
    assert!((gamma_q(2.5, 4.351 / 2.0) - 0.5).abs() < 1e-3);
    // df = 19 at 0.001: 43.820.
    assert!((gamma_q(9.5, 43.820 / 2.0) - 0.001).abs() < 2e-6);
}

#[test]
fn multinomial_frequencies_match_the_softmax() {
    let expected = softmax(&LOGITS.map(f64::from));
    for seed in [1_u64, 2, 3] {
        let (stat, p) = chi_square(&multinomial_counts(&LOGITS, 1.0, seed), &expected);
        println!("multinomial seed {seed}: chi2 = {stat:.2} (df 5), p = {p:.4}");
        assert!(p > 0.001, "seed {seed}: chi2 {stat}, p {p}");
    }
}

#[test]
fn multinomial_at_a_temperature_matches_the_tempered_softmax() {
    let expected = softmax(&LOGITS.map(|l| f64::from(l) / 0.7));
    let (stat, p) = chi_square(&multinomial_counts(&LOGITS, 0.7, 11), &expected);
    println!("multinomial T 0.7: chi2 = {stat:.2} (df 5), p = {p:.4}");
    assert!(p > 0.001, "chi2 {stat}, p {p}");
}

/// Power control: draws at T 1.2 are clearly rejected as samples of the T 1 softmax.
#[test]
fn chi_square_rejects_the_wrong_distribution() {
    let expected = softmax(&LOGITS.map(f64::from));
    let (stat, p) = chi_square(&multinomial_counts(&LOGITS, 1.2, 1), &expected);
    println!("control (T 1.2 vs T 1): chi2 = {stat:.2}, p = {p:.3e}");
    assert!(p < 1e-6, "chi2 {stat}, p {p}");
}

/// After top-p on a 300-token vocabulary (the histogram path), draws follow the
/// renormalised nucleus; cells with expected count < 5 are pooled.
#[test]
fn top_p_then_multinomial_matches_the_renormalised_nucleus() {
    let logits: Vec<f32> = (0..300).map(|i| -((i * 37 % 300) as f32 + 1.0).ln() * 1.3).collect();
    let ctx = SamplingContext::new(&[], 0);
    let mut nucleus = Candidates::default();
    nucleus.fill_from_logits(&logits).unwrap();
    TopP::new(0.8).unwrap().process(&mut nucleus, &ctx).unwrap();
    let ids: Vec<u32> = nucleus.ids().collect();
    let kept: Vec<f64> = ids.iter().map(|&i| f64::from(logits[i as usize])).collect();
    let probs = softmax(&kept);
    let mut chain = Chain::new(Multinomial).with(TopP::new(0.8).unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut counts = vec![0_u64; ids.len()];
    let mut outside = 0;
    for _ in 0..DRAWS {
        let t = chain.sample(&logits, &ctx, &mut rng).unwrap();
        match ids.iter().position(|&i| i == t) {
            Some(k) => counts[k] += 1,
            None => outside += 1,
        }
    }
    assert_eq!(outside, 0, "drew outside the nucleus");
    let (mut obs, mut exp, mut pool_o, mut pool_e) = (Vec::new(), Vec::new(), 0, 0.0);
    for (&o, &p) in counts.iter().zip(&probs) {
        if p * DRAWS as f64 >= 5.0 {
            obs.push(o);
            exp.push(p);
        } else {
            pool_o += o;
            pool_e += p;
        }
    }
    if pool_e > 0.0 {
        obs.push(pool_o);
        exp.push(pool_e);
    }
    let (stat, p) = chi_square(&obs, &exp);
    println!("top-p 0.8 nucleus of {}: chi2 = {stat:.2} (df {}), p = {p:.4}", ids.len(), obs.len() - 1);
    assert!(p > 0.001, "chi2 {stat}, p {p}");
}

/// Two draws without replacement follow Plackett–Luce:
/// `P(first = i, second = j) = p_i · p_j / (1 − p_i)`, 20 ordered pairs of 5 tokens.
#[test]
fn two_draws_without_replacement_match_plackett_luce() {
    let logits = [1.5_f32, 1.0, 0.3, 0.0, -0.5];
    let p = softmax(&logits.map(f64::from));
    let n = logits.len();
    let mut expected = Vec::new();
    for i in 0..n {
        for j in 0..n {
            if i != j {
                expected.push(p[i] * p[j] / (1.0 - p[i]));
            }
        }
    }
    let cell = |i: usize, j: usize| i * (n - 1) + if j > i { j - 1 } else { j };
    for seed in [5_u64, 6] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut counts = vec![0_u64; n * (n - 1)];
        let mut out = Vec::with_capacity(2);
        let mut c = Candidates::default();
        for _ in 0..DRAWS {
            c.fill_from_logits(&logits).unwrap();
            draw_without_replacement(&mut c, 2, &mut rng, &mut out).unwrap();
            counts[cell(out[0] as usize, out[1] as usize)] += 1;
        }
        let (stat, pv) = chi_square(&counts, &expected);
        println!("plackett-luce seed {seed}: chi2 = {stat:.2} (df 19), p = {pv:.4}");
        assert!(pv > 0.001, "seed {seed}: chi2 {stat}, p {pv}");
    }
}

/// Power control for the pair test: a wrong second-draw rule (an independent
/// redraw, bumped to the next id on a collision) is clearly rejected.
#[test]
fn pair_test_rejects_a_wrong_second_draw_rule() {
    let logits = [1.5_f32, 1.0, 0.3, 0.0, -0.5];
    let p = softmax(&logits.map(f64::from));
    let n = logits.len();
    let mut expected = Vec::new();
    for i in 0..n {
        for j in 0..n {
            if i != j {
                expected.push(p[i] * p[j] / (1.0 - p[i]));
            }
        }
    }
    let cell = |i: usize, j: usize| i * (n - 1) + if j > i { j - 1 } else { j };
    let ctx = SamplingContext::new(&[], 0);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut counts = vec![0_u64; n * (n - 1)];
    let mut c = Candidates::default();
    for _ in 0..DRAWS {
        c.fill_from_logits(&logits).unwrap();
        let a = Multinomial.sample(&mut c, &ctx, &mut rng).unwrap() as usize;
        let mut b = Multinomial.sample(&mut c, &ctx, &mut rng).unwrap() as usize;
        if b == a {
            b = (a + 1) % n;
        }
        counts[cell(a, b)] += 1;
    }
    let (stat, pv) = chi_square(&counts, &expected);
    println!("control (wrong pair rule): chi2 = {stat:.2}, p = {pv:.3e}");
    assert!(pv < 1e-6, "chi2 {stat}, p {pv}");
}
