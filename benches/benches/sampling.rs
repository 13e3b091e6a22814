//! Per-token sampling cost: perpetua's chain against candle-transformers'
//! `LogitsProcessor` on the same LM-like logits, in the same run.
//!
//! Run: `cargo bench -p perpetua-benches --bench sampling`. Results and ratios are
//! recorded in docs/PERFORMANCE.md ("Sampling").
//!
//! - `top_p`: temperature 0.8 then top-p 0.95 and a multinomial draw; candle:
//!   `Sampling::TopP { p: 0.95, temperature: 0.8 }`.
//! - `full_chain`: repetition penalty 1.1 over the last 64 tokens, frequency 0.2 /
//!   presence 0.3 over the last 64 generated tokens, T 0.8, top-k 40, top-p 0.95,
//!   min-p 0.05, draw; candle: `Sampling::TopKThenTopP { k: 40, p: 0.95, T: 0.8 }`,
//!   alone and preceded by `candle_transformers::utils::apply_repeat_penalty` over the
//!   same 64 tokens (candle has no frequency/presence penalty and no min-p).
//!
//! Inputs: perpetua reads host `&[f32]` logits (what `LanguageModel::forward` writes);
//! candle reads a CPU `Tensor` built once outside the timed loop (what a candle model
//! returns). Each iteration samples one token from the same logits.
#![allow(missing_docs)]

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor as CandleLogitsProcessor, Sampling};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use perpetua_benches::{VOCABS, full_chain, history, lm_like_logits};
use perpetua_sampling::processors::{Temperature, TopP};
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Chain, SamplingContext};
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};

fn top_p(c: &mut Criterion) {
    let mut group = c.benchmark_group("top_p");
    for vocab in VOCABS {
        let logits = lm_like_logits(vocab, 7);
        let tensor = Tensor::new(logits.as_slice(), &Device::Cpu).expect("tensor");
        let tokens = history(vocab);
        let ctx = SamplingContext::new(&tokens, 32);

        let mut chain = Chain::new(Multinomial)
            .with(Temperature::new(0.8).expect("valid"))
            .with(TopP::new(0.95).expect("valid"));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        group.bench_with_input(BenchmarkId::new("perpetua", vocab), &vocab, |b, _| {
            b.iter(|| chain.sample(&logits, &ctx, &mut rng).expect("sample"))
        });

        let mut candle =
            CandleLogitsProcessor::from_sampling(1, Sampling::TopP { p: 0.95, temperature: 0.8 });
        group.bench_with_input(BenchmarkId::new("candle", vocab), &vocab, |b, _| {
            b.iter(|| candle.sample(&tensor).expect("sample"))
        });
    }
    group.finish();
}

fn full(c: &mut Criterion) {
    let mut group = c.benchmark_group("full_chain");
    for vocab in VOCABS {
        let logits = lm_like_logits(vocab, 11);
        let tensor = Tensor::new(logits.as_slice(), &Device::Cpu).expect("tensor");
        let tokens = history(vocab);
        let ctx = SamplingContext::new(&tokens, 32);
        let last_64 = &tokens[tokens.len() - 64..];

        let mut chain = full_chain();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        group.bench_with_input(BenchmarkId::new("perpetua", vocab), &vocab, |b, _| {
            b.iter(|| chain.sample(&logits, &ctx, &mut rng).expect("sample"))
        });

        let sampling = Sampling::TopKThenTopP { k: 40, p: 0.95, temperature: 0.8 };
        let mut candle = CandleLogitsProcessor::from_sampling(1, sampling.clone());
        group.bench_with_input(BenchmarkId::new("candle_topk_topp", vocab), &vocab, |b, _| {
            b.iter(|| candle.sample(&tensor).expect("sample"))
        });

        let mut candle = CandleLogitsProcessor::from_sampling(1, sampling);
        group.bench_with_input(BenchmarkId::new("candle_penalty_topk_topp", vocab), &vocab, |b, _| {
            b.iter(|| {
                let penalised =
                    candle_transformers::utils::apply_repeat_penalty(&tensor, 1.1, last_64).expect("penalty");
                candle.sample(&penalised).expect("sample")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, top_p, full);
criterion_main!(benches);
