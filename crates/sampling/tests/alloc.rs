//! Zero heap allocations per token after warm-up, for the full chain the benchmark
//! measures (repetition over 64 tokens + frequency/presence + T 0.8 + top-k 40 +
//! top-p 0.95 + min-p 0.05 + multinomial draw) over 49,152 LM-like logits.
//!
//! A counting global allocator counts every `alloc`/`realloc` of this test binary.
//! This file holds a single test so no other test thread allocates concurrently.
#![allow(unsafe_code)] // a `GlobalAlloc` impl is unsafe by definition
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use perpetua_sampling::processors::{
    FrequencyPresencePenalty, MinP, RepetitionPenalty, Temperature, TopK, TopP,
};
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Chain, SamplingContext};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const VOCAB: usize = 49_152;

/// LM-like logits, as the benchmark's: a Zipf head `−1.1 · ln(rank)` plus Gaussian
/// noise (σ 0.5), shuffled over ids (a fresh draw every step).
fn lm_like_logits(rng: &mut ChaCha8Rng, out: &mut [f32]) {
    for (rank, l) in out.iter_mut().enumerate() {
        let u: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let v: f32 = rng.random();
        let noise = (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos();
        *l = -1.1 * ((rank + 1) as f32).ln() + 0.5 * noise;
    }
    out.shuffle(rng);
}

#[test]
fn full_chain_allocates_nothing_per_token_after_warm_up() {
    let mut chain = Chain::new(Multinomial)
        .with(RepetitionPenalty::new(1.1).unwrap().with_last_n(64))
        .with(FrequencyPresencePenalty::new(0.2, 0.3).unwrap().with_last_n(64))
        .with(Temperature::new(0.8).unwrap())
        .with(TopK::new(40).unwrap())
        .with(TopP::new(0.95).unwrap())
        .with(MinP::new(0.05).unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let eos = [2_u32];
    let prompt_len = 32;
    // Room for prompt + all steps, reserved up front: the history itself must not
    // allocate inside the measured loop.
    let mut tokens: Vec<u32> = Vec::with_capacity(prompt_len + 256);
    tokens.extend((0..prompt_len as u32).map(|i| i * 997 % VOCAB as u32));
    let mut logits = vec![0.0_f32; VOCAB];

    let mut step = |tokens: &mut Vec<u32>, logits: &mut [f32], rng: &mut ChaCha8Rng| {
        lm_like_logits(rng, logits);
        let ctx = SamplingContext::new(tokens, prompt_len).with_eos_ids(&eos);
        let token = chain.sample(logits, &ctx, rng).expect("sample");
        chain.accept(token);
        tokens.push(token);
    };

    for _ in 0..16 {
        step(&mut tokens, &mut logits, &mut rng);
    }
    // The counter is live: one boxed value is one allocation.
    let probe = ALLOCATIONS.load(Ordering::Relaxed);
    drop(std::hint::black_box(Box::new(7_u64)));
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - probe, 1);

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let steps = 200;
    for _ in 0..steps {
        step(&mut tokens, &mut logits, &mut rng);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!(
        "{allocations} heap allocations in {steps} steps after warm-up ({} tokens of history)",
        tokens.len()
    );
    assert_eq!(allocations, 0, "the chain allocated {allocations} times in {steps} steps");
}
