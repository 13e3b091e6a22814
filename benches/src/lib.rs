//! Shared inputs of the sampling benchmarks (`benches/sampling.rs`, criterion) and
//! `examples/sampling_floor.rs` (minimum/median), so both measure the same workload.

pub mod record;

use perpetua_sampling::Chain;
use perpetua_sampling::processors::{
    FrequencyPresencePenalty, MinP, RepetitionPenalty, Temperature, TopK, TopP,
};
use perpetua_sampling::samplers::Multinomial;
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};

/// The vocabulary sizes measured: SmolLM2 / Llama-2-like and Llama-3-like.
pub const VOCABS: [usize; 2] = [49_152, 128_256];

/// LM-like logits: a Zipf head `logit = −1.1 · ln(rank)` (natural text's exponent is
/// ≈ 1) plus Gaussian noise (σ 0.5), shuffled over ids; a few tokens carry most of
/// the mass and a long tail the rest. The shape of `perpetua_sampling::testing`'s
/// `lm_like_logits`, with fixed parameters.
pub fn lm_like_logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<f32> = (0..vocab)
        .map(|rank| {
            let u: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
            let v: f32 = rng.random();
            let noise = (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos();
            -1.1 * ((rank + 1) as f32).ln() + 0.5 * noise
        })
        .collect();
    out.shuffle(&mut rng);
    out
}

/// 32 prompt tokens then 64 generated ones, drawn from 48 ids so that tokens repeat.
pub fn history(vocab: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let pool: Vec<u32> = (0..48).map(|_| rng.random_range(0..vocab as u32)).collect();
    (0..96).map(|_| pool[rng.random_range(0..pool.len())]).collect()
}

/// Repetition 1.1 and frequency 0.2 / presence 0.3, each over the last 64 tokens.
pub fn penalties() -> Chain {
    Chain::new(Multinomial)
        .with(RepetitionPenalty::new(1.1).expect("valid").with_last_n(64))
        .with(FrequencyPresencePenalty::new(0.2, 0.3).expect("valid").with_last_n(64))
}

/// The issue-2 full chain: penalties, T 0.8, top-k 40, top-p 0.95, min-p 0.05, draw.
pub fn full_chain() -> Chain {
    penalties()
        .with(Temperature::new(0.8).expect("valid"))
        .with(TopK::new(40).expect("valid"))
        .with(TopP::new(0.95).expect("valid"))
        .with(MinP::new(0.05).expect("valid"))
}
