//! Per-token sampling cost as the *minimum* and median over many single-token calls:
//! the minimum is robust to other processes on a shared machine (their interference
//! only ever adds time), so it is the number to compare with a latency budget. Same
//! workloads and inputs as `benches/sampling.rs`, ours and candle's interleaved.
//!
//! Run: `cargo run --release -p perpetua-benches --example sampling_floor`.
#![allow(missing_docs)]

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor as CandleLogitsProcessor, Sampling};
use perpetua_benches::{full_chain, history, lm_like_logits, penalties};
use perpetua_sampling::processors::{MinP, Temperature, TopK, TopP};
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Chain, SamplingContext};
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};

/// (minimum, median) in µs over `runs` calls.
fn measure(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[0], times[runs / 2])
}

fn main() {
    for vocab in [49_152, 128_256] {
        let logits = lm_like_logits(vocab, 7);
        let tensor = Tensor::new(logits.as_slice(), &Device::Cpu).expect("tensor");
        let tokens = history(vocab);
        let ctx = SamplingContext::new(&tokens, 32);
        let last_64 = &tokens[tokens.len() - 64..];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let runs = if vocab > 100_000 { 400 } else { 1000 };

        let mut top_p = Chain::new(Multinomial)
            .with(Temperature::new(0.8).expect("valid"))
            .with(TopP::new(0.95).expect("valid"));
        top_p.sample(&logits, &ctx, &mut rng).expect("sample");
        let nucleus = top_p.candidates().len();
        let ours = measure(runs, || {
            std::hint::black_box(top_p.sample(&logits, &ctx, &mut rng).expect("sample"));
        });
        let mut candle =
            CandleLogitsProcessor::from_sampling(1, Sampling::TopP { p: 0.95, temperature: 0.8 });
        let theirs = measure(runs, || {
            std::hint::black_box(candle.sample(&tensor).expect("sample"));
        });
        report(vocab, &format!("top-p 0.95, T 0.8 (nucleus {nucleus})"), ours, "candle TopP", theirs);

        // The benchmark's full chain, configured in the default (HF) order: T before
        // top-k (the chain itself runs top-k first: they commute).
        let mut full = full_chain();
        let ours = measure(runs, || {
            std::hint::black_box(full.sample(&logits, &ctx, &mut rng).expect("sample"));
        });
        // The same chain with top-k moved before temperature: the same survivors (top-k
        // only ranks, and dividing by T > 0 never reverses the ranking; only rounding
        // ties at the k-th place can differ), and one full pass fewer.
        let mut reordered = penalties()
            .with(TopK::new(40).expect("valid"))
            .with(Temperature::new(0.8).expect("valid"))
            .with(TopP::new(0.95).expect("valid"))
            .with(MinP::new(0.05).expect("valid"));
        let ours_reordered = measure(runs, || {
            std::hint::black_box(reordered.sample(&logits, &ctx, &mut rng).expect("sample"));
        });
        let sampling = Sampling::TopKThenTopP { k: 40, p: 0.95, temperature: 0.8 };
        let mut candle = CandleLogitsProcessor::from_sampling(1, sampling.clone());
        let theirs = measure(runs, || {
            std::hint::black_box(candle.sample(&tensor).expect("sample"));
        });
        report(vocab, "full chain", ours, "candle TopKThenTopP", theirs);
        report(vocab, "full chain, top-k before T", ours_reordered, "candle TopKThenTopP", theirs);
        let mut candle = CandleLogitsProcessor::from_sampling(1, sampling);
        let theirs = measure(runs, || {
            let penalised =
                candle_transformers::utils::apply_repeat_penalty(&tensor, 1.1, last_64).expect("penalty");
            std::hint::black_box(candle.sample(&penalised).expect("sample"));
        });
        report(vocab, "full chain", ours, "candle repeat penalty + TopKThenTopP", theirs);
        breakdown(vocab, &logits, &ctx, runs);
    }
}

/// Minimum cost of `Chain::process` (no draw) for growing prefixes of the full chain.
fn breakdown(vocab: usize, logits: &[f32], ctx: &SamplingContext<'_>, runs: usize) {
    let prefixes: [(&str, Chain); 4] = [
        ("fill only", Chain::new(Multinomial)),
        ("+ repetition, frequency/presence", penalties()),
        ("+ temperature", penalties().with(Temperature::new(0.8).expect("valid"))),
        (
            "+ top-k 40",
            penalties().with(Temperature::new(0.8).expect("valid")).with(TopK::new(40).expect("valid")),
        ),
    ];
    for (what, mut chain) in prefixes {
        let (min, median) = measure(runs, || {
            std::hint::black_box(chain.process(logits, ctx).expect("process").len());
        });
        println!("{vocab:>7} stages: {what:<34} min {min:>8.1} µs (median {median:>8.1})");
    }
}

fn report(vocab: usize, what: &str, ours: (f64, f64), baseline: &str, theirs: (f64, f64)) {
    println!(
        "{vocab:>7} {what:<38} perpetua min {:>8.1} µs (median {:>8.1}) | {baseline} min {:>8.1} µs (median {:>8.1}) | ratio of minima {:>5.1}×",
        ours.0,
        ours.1,
        theirs.0,
        theirs.1,
        theirs.0 / ours.0
    );
}
