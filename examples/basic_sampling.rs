//! Basic sampling, no model needed: build sampling chains — by hand from the standard
//! stages (top-k, temperature, top-p, min-p), from a [`Preset`], from an HF-style
//! `generation_config.json` ([`SamplingConfig`]) and a greedy one — apply each to a
//! hand-made logit vector over a toy vocabulary, and show which candidates survive,
//! with what probability, and what a seeded RNG draws from them.
//!
//! ```text
//! cargo run -p perpetua-examples --example basic_sampling [-- SEED]
//! ```
//!
//! The same seed always gives the same draws (every generation in perpetua is
//! reproducible from its seed); `examples/tests/examples.rs` runs [`run`] and
//! checks exactly that.

use std::error::Error;
use std::io::Write;

use perpetua::sampling::processors::{MinP, Temperature, TopK, TopP};
use perpetua::sampling::samplers::{Greedy, Multinomial};
use perpetua::sampling::{Chain, Preset, SamplingConfig, SamplingContext};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

/// The toy vocabulary: token id = index.
pub const VOCAB: [&str; 12] =
    ["the", "a", "dog", "cat", "detective", "ran", "sat", ".", "!", "and", "<eos>", "banana"];

/// What a model might output after "Once upon a time there was": one logit per token
/// of [`VOCAB`] (unnormalised log-probabilities).
pub const LOGITS: [f32; 12] = [2.0, 1.5, 3.2, 3.0, 2.6, 0.5, 0.2, 1.0, -0.5, 0.8, 1.8, -2.0];

/// Tokens "so far" (prompt ids), seen by history-aware stages such as the repetition
/// penalty of the presets: "the dog".
pub const HISTORY: [u32; 2] = [0, 2];

/// Draws taken from each chain.
pub const DRAWS: usize = 12;

/// What one chain did to [`LOGITS`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRun {
    /// A label for the chain.
    pub label: &'static str,
    /// Its stages, in the order they were configured.
    pub stages: Vec<&'static str>,
    /// The surviving candidates `(id, probability)`, most probable first.
    pub survivors: Vec<(u32, f32)>,
    /// [`DRAWS`] draws with a fresh `ChaCha8Rng` seeded with the run's seed.
    pub draws: Vec<u32>,
}

/// The chains this example compares, each with a label.
fn chains() -> Result<Vec<(&'static str, Chain)>, Box<dyn Error>> {
    // 1. By hand: stages run in exactly the order they are added. (The chain may run
    //    top-k before a directly preceding temperature — they commute — but the
    //    result is the same.)
    let by_hand = Chain::new(Multinomial)
        .with(TopK::new(5)?) // keep the 5 highest logits
        .with(Temperature::new(0.8)?) // sharpen: logits / 0.8
        .with(TopP::new(0.9)?) // smallest set holding 90% of the mass
        .with(MinP::new(0.1)?); // drop tokens below 10% of the top token's probability

    // 2. A preset: repetition penalty 1.2 over the history, T 0.8, top-p 0.9. The
    //    penalty makes "the" and "dog" (already in the history) less likely.
    let preset = Preset::Balanced.chain();

    // 3. HF `generation_config.json` names, validated: a bad value (say top_p 1.5) is
    //    an error naming the parameter, never a panic.
    let config = SamplingConfig::from_json_str(
        r#"{ "do_sample": true, "temperature": 0.7, "top_k": 4, "min_p": 0.05 }"#,
    )?
    .chain()?;

    // 4. Greedy: no processors, always the argmax.
    let greedy = Chain::new(Greedy);

    Ok(vec![
        ("top-k 5 → T 0.8 → top-p 0.9 → min-p 0.1", by_hand),
        ("Preset::Balanced", preset),
        ("SamplingConfig (T 0.7, top-k 4, min-p 0.05)", config),
        ("greedy", greedy),
    ])
}

/// Runs every chain on [`LOGITS`] with [`HISTORY`] as context, writes a readable
/// report to `out` and returns what each chain did. Draws use `seed`.
pub fn run(out: &mut impl Write, seed: u64) -> Result<Vec<ChainRun>, Box<dyn Error>> {
    // The read-only view of the sequence a stage gets: all tokens so far and the prompt
    // length (here the whole history is "prompt"). The generator builds one per step.
    let ctx = SamplingContext::new(&HISTORY, HISTORY.len());
    let mut runs = Vec::new();
    for (label, mut chain) in chains()? {
        let stages: Vec<&'static str> = chain.stage_names().collect();
        writeln!(out, "\n## {label}\nstages: {stages:?}, sampler: {}", chain.sampler_name())?;

        // `process` runs the stages and leaves the survivors in the chain's own buffer
        // (reused every step: nothing is allocated once it has grown to the vocabulary).
        let candidates = chain.process(&LOGITS, &ctx)?;
        candidates.softmax()?; // probabilities over the surviving set
        let mut survivors: Vec<(u32, f32)> = candidates
            .as_slice()
            .iter()
            .filter(|c| c.logit.is_finite()) // a `-inf` logit means "masked"
            .map(|c| (c.id, c.prob))
            .collect();
        survivors.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for &(id, p) in &survivors {
            writeln!(out, "  {:>10} (id {id:>2})  p = {p:.3}", VOCAB[id as usize])?;
        }

        // Draws: `sample` = process + draw, one call per generation step. A fresh RNG
        // with the same seed for every chain makes the chains comparable.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let draws =
            (0..DRAWS).map(|_| chain.sample(&LOGITS, &ctx, &mut rng)).collect::<Result<Vec<_>, _>>()?;
        let words: Vec<&str> = draws.iter().map(|&id| VOCAB[id as usize]).collect();
        writeln!(out, "  {DRAWS} draws (seed {seed}): {}", words.join(" "))?;
        runs.push(ChainRun { label, stages, survivors, draws });
    }
    Ok(runs)
}

fn main() -> Result<(), Box<dyn Error>> {
    let seed = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(42);
    let logits: Vec<String> =
        VOCAB.iter().zip(LOGITS).map(|(word, logit)| format!("{word} {logit}")).collect();
    println!("logits: {}", logits.join(", "));
    run(&mut std::io::stdout().lock(), seed)?;
    Ok(())
}
