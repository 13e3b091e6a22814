//! Criterion benchmarks of everything around the model: each sampling stage
//! alone, the generator's per-token overhead on the fake model, and cache truncate and
//! fork on the candle backend's real cache.
//!
//! `cargo bench -p perpetua-benches --bench overhead`. The `stage/*` rows have no
//! external baseline (benches/sampling.rs compares the chains with candle-transformers);
//! `generator/*` compares a generation against the bare model calls it makes, in the
//! same run, so the difference is the generator's own cost — and the perpetual modes
//! (loop detection, DRY, anticipation's entropy) against plain generation; `loops/*`
//! times the loop detector and the staleness check per token over a long text against the step it rides on
//! (`entropy_fast` and one top-k draw over 49k logits); `cache/*` needs the default
//! model (`cargo xtask fetch-model`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use perpetua_benches::{VOCABS, history, lm_like_logits};
use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_generator::{Generator, LanguageModel, PerpetualMode};
use perpetua_kv_cache::{ForkableCache, KvCache};
use perpetua_perpetual::{LoopDetection, LoopDetector, Staleness};
use perpetua_sampling::processors::{
    Dry, FrequencyPresencePenalty, MinP, RepetitionPenalty, Temperature, TopK, TopNSigma, TopP, Typical, Xtc,
};
use perpetua_sampling::samplers::{Greedy, Multinomial};
use perpetua_sampling::{Chain, LogitsProcessor, SamplingContext};
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};

/// Every standard stage alone in front of a multinomial draw (plus the bare draw).
fn stages() -> Vec<(&'static str, Option<Box<dyn LogitsProcessor>>)> {
    vec![
        ("draw_only", None),
        ("temperature", Some(Box::new(Temperature::new(0.8).unwrap()))),
        ("top_k_40", Some(Box::new(TopK::new(40).unwrap()))),
        ("top_p_0.95", Some(Box::new(TopP::new(0.95).unwrap()))),
        ("min_p_0.05", Some(Box::new(MinP::new(0.05).unwrap()))),
        ("typical_0.9", Some(Box::new(Typical::new(0.9).unwrap()))),
        ("top_n_sigma_1", Some(Box::new(TopNSigma::new(1.0).unwrap()))),
        ("xtc", Some(Box::new(Xtc::new(0.5, 0.1, 3).unwrap()))),
        ("repetition_1.1_last_64", Some(Box::new(RepetitionPenalty::new(1.1).unwrap().with_last_n(64)))),
        ("frequency_presence", Some(Box::new(FrequencyPresencePenalty::new(0.5, 0.5).unwrap()))),
        ("dry", Some(Box::new(Dry::new(0.8, 1.75, 2, 256, [vec![13]]).unwrap()))),
    ]
}

fn stage(c: &mut Criterion) {
    let mut group = c.benchmark_group("stage");
    for vocab in VOCABS {
        let logits = lm_like_logits(vocab, 3);
        let tokens = history(vocab);
        let ctx = SamplingContext::new(&tokens, 32);
        for (name, processor) in stages() {
            let mut chain = Chain::new(Multinomial);
            if let Some(p) = processor {
                chain.push(p);
            }
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            group.bench_with_input(BenchmarkId::new(name, vocab), &vocab, |b, _| {
                b.iter(|| chain.sample(&logits, &ctx, &mut rng).expect("sample"))
            });
        }
    }
    group.finish();
}

fn generator(c: &mut Criterion) {
    const TOKENS: usize = 64;
    let mut group = c.benchmark_group("generator");
    group.sample_size(20);
    let vocab = 49_152;
    let prompt: Vec<u32> = (0..16).collect();
    // Baseline: the model calls alone (a prefill, then one forward per token, greedy).
    let model = FakeModel::new(vocab).with_eos_bias(-100.0);
    group.bench_function(BenchmarkId::new("bare_forwards_64_tokens", vocab), |b| {
        b.iter(|| {
            let mut cache = model.new_cache().unwrap();
            let mut logits = Vec::new();
            model.forward(&prompt, &mut cache, &mut logits).unwrap();
            let mut next = 0;
            for _ in 0..TOKENS {
                model.forward(&[next], &mut cache, &mut logits).unwrap();
                next = (next + 1) % 100;
            }
            cache.seq_len()
        })
    });
    for (name, chain) in [
        ("generate_64_tokens_greedy", Chain::new(Greedy)),
        ("generate_64_tokens_topk20", Chain::new(Multinomial).with(TopK::new(20).unwrap())),
    ] {
        let mut g = Generator::builder(&model).chain(chain).max_new_tokens(TOKENS).build().unwrap();
        group.bench_function(BenchmarkId::new(name, vocab), |b| {
            b.iter(|| g.generate(prompt.as_slice()).unwrap().ids.len())
        });
    }
    // The same top-k 20 generation in perpetual modes: what the freshness tools cost per
    // token on top of it (the fake model never loops, so no back step is regenerated).
    for spec in ["plain", "dynamic+loop", "dynamic+loop+stale", "perpetual"] {
        let mode = PerpetualMode::parse(spec).unwrap();
        let mut g = Generator::builder(&model)
            .tokenizer(ByteTokenizer::new())
            .chain(Chain::new(Multinomial).with(TopK::new(20).unwrap()))
            .perpetual(mode)
            .max_new_tokens(TOKENS)
            .build()
            .unwrap();
        group.bench_function(BenchmarkId::new(format!("generate_64_tokens_topk20_{spec}"), vocab), |b| {
            b.iter(|| g.generate(prompt.as_slice()).unwrap().ids.len())
        });
    }
    group.finish();
}

/// The loop detector's per-token work over a 4,096-token text (window 256), against
/// what a step already does over the logits.
fn loops(c: &mut Criterion) {
    let mut group = c.benchmark_group("loops");
    let vocab = 49_152;
    let text = history(vocab);
    let long: Vec<u32> =
        text.iter().cycle().take(4_096).enumerate().map(|(i, &t)| t ^ (i as u32 % 7)).collect();
    group.bench_function("detector_observe_per_token_4096", |b| {
        let mut d = LoopDetector::new(LoopDetection::default()).unwrap();
        let mut n = 256;
        d.observe(&long[..n]);
        b.iter(|| {
            n = if n + 1 > long.len() { 257 } else { n + 1 };
            d.observe(&long[..n]).is_some()
        })
    });
    group.bench_function("detector_rebuild_after_backstep_4096", |b| {
        let mut d = LoopDetector::new(LoopDetection::default()).unwrap();
        b.iter(|| {
            d.invalidate();
            d.observe(&long).is_some()
        })
    });
    group.bench_function("staleness_check_per_token_64", |b| {
        let st = Staleness::default();
        let mut scratch = Vec::new();
        let mut n = 64;
        b.iter(|| {
            n = if n + 1 > long.len() { 65 } else { n + 1 };
            st.is_stale(&long[n - st.window..n], &mut scratch)
        })
    });
    let logits = lm_like_logits(vocab, 3);
    let lse = perpetua_sampling::stats::log_sum_exp_fast(&logits).unwrap();
    group.bench_function("entropy_fast_49152", |b| {
        b.iter(|| perpetua_sampling::stats::entropy_fast(&logits, lse))
    });
    let mut chain = Chain::new(Multinomial).with(TopK::new(20).unwrap());
    let ctx = SamplingContext::new(&long, 32);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    group.bench_function("baseline_topk20_draw_49152", |b| {
        b.iter(|| chain.sample(&logits, &ctx, &mut rng).unwrap())
    });
    let mut dry = Chain::new(Multinomial)
        .with(Dry::new(0.8, 1.75, 2, 0, [vec![13]]).unwrap())
        .with(TopK::new(20).unwrap());
    group.bench_function("dry_whole_4096_context_topk20_draw_49152", |b| {
        b.iter(|| dry.sample(&logits, &ctx, &mut rng).unwrap())
    });
    group.finish();
}

fn cache(c: &mut Criterion) {
    let path = perpetua_candle::default_model_path().unwrap();
    assert!(path.exists(), "run `cargo xtask fetch-model` first");
    let options = perpetua_candle::LoadOptions { cache_capacity: Some(2048), ..Default::default() };
    let model = perpetua_candle::Llama::load(&path, &options).unwrap();
    let mut filled = model.new_cache().unwrap();
    let mut logits = Vec::new();
    let tokens: Vec<u32> = (0..1024u32).map(|i| 100 + i % 4000).collect();
    model.forward(&tokens, &mut filled, &mut logits).unwrap();
    let mut group = c.benchmark_group("cache");
    // The setup (a fork, not timed) gives every iteration a full cache to cut.
    group.bench_function("llama_truncate_1024_to_1014", |b| {
        b.iter_batched(
            || filled.fork().unwrap(),
            |mut cache| {
                cache.truncate(1014).unwrap();
                cache
            },
            BatchSize::LargeInput,
        )
    });
    group.sample_size(20);
    group.bench_function("llama_fork_1024_positions", |b| b.iter(|| filled.fork().unwrap().seq_len()));
    group.finish();
}

criterion_group!(benches, stage, generator, loops, cache);
criterion_main!(benches);
