//! The candle backend's hot CPU kernels against the alternatives they were chosen over,
//! in the same run (the kernels' correctness is property-tested in `perpetua-candle`):
//!
//! - `dot/*`: the model's dot product (one chain of 8 accumulators) vs four chains, over
//!   4,096 rows of SmolLM2's head width (64);
//! - `value_sums/*`: the attention kernel's register-blocked value sums vs the plain loop
//!   (3 query heads per key/value head, one 256-position work item);
//! - `attention/*`: one decode step's attention over 30 layers at position 4,000
//!   (`PERPETUA_BENCH_VISIBLE` to change it), f32 vs f16 vs Q8 cache, with 30 distinct
//!   layers' buffers (memory traffic) and with one layer's (`cache_resident`: the
//!   arithmetic alone).
//!
//! `cargo bench -p perpetua-benches --bench kernels` (`RAYON_NUM_THREADS=2` to pin the
//! thread count).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use perpetua_candle::testing::kernels::{
    ATTENTION_CHUNK, AttentionLayers, CacheKind, dot, dot_four_chains, value_sums_blocked, value_sums_plain,
};

fn dots(c: &mut Criterion) {
    let rows = 4096;
    let k: Vec<f32> = (0..rows * 64).map(|i| (i % 17) as f32 / 17.0).collect();
    let q: Vec<f32> = (0..64).map(|i| (i % 5) as f32 / 5.0).collect();
    let mut group = c.benchmark_group("dot");
    for (name, f) in [("one_chain", dot as fn(&[f32], &[f32]) -> f32), ("four_chains", dot_four_chains)] {
        group.bench_function(name, |b| {
            b.iter(|| k.chunks_exact(64).map(|k_t| f(black_box(&q), k_t)).sum::<f32>())
        });
    }
    group.finish();
}

fn value_sums(c: &mut Criterion) {
    let (d, heads, len) = (64, 3, ATTENTION_CHUNK);
    let scores: Vec<f32> = (0..heads * len).map(|i| (i % 7) as f32 / 7.0).collect();
    let v: Vec<f32> = (0..len * d).map(|i| (i % 13) as f32 / 13.0).collect();
    let mut group = c.benchmark_group("value_sums");
    group.bench_function("blocked", |b| {
        b.iter_batched_ref(
            || vec![0.0; heads * (d + 2)],
            |out| value_sums_blocked(black_box(&scores), len, &v, d, heads, out),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("plain", |b| b.iter(|| value_sums_plain(black_box(&scores), len, &v, d, heads)));
    group.finish();
}

fn attention(c: &mut Criterion) {
    let visible = std::env::var("PERPETUA_BENCH_VISIBLE").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    for (layers, label) in [(30, "30_layers"), (1, "cache_resident")] {
        let mut setup = AttentionLayers::new(visible, layers);
        for (kind, name) in [(CacheKind::F32, "f32"), (CacheKind::F16, "f16"), (CacheKind::Q8, "q8")] {
            group.bench_with_input(
                BenchmarkId::new(format!("{label}/{name}"), visible),
                &kind,
                |b, &kind| b.iter(|| setup.decode_step(kind)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, dots, value_sums, attention);
criterion_main!(benches);
