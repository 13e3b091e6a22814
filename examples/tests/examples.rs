//! The model-free examples run as tests: `examples/basic_sampling.rs` and
//! `examples/custom_processor.rs` are compiled into this test as modules, and what their
//! `run` returns is checked — survivors of each chain, reproducible draws, and the
//! effect of each custom stage — so an example that stops showing what its header
//! promises fails here. (The real-model examples are only built, by `cargo test`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

// `main` of each example is unused here.
#[allow(dead_code)]
#[path = "../basic_sampling.rs"]
mod basic_sampling;

#[allow(dead_code)]
#[path = "../custom_processor.rs"]
mod custom_processor;

fn sampling_runs(seed: u64) -> (Vec<basic_sampling::ChainRun>, String) {
    let mut out = Vec::new();
    let runs = basic_sampling::run(&mut out, seed).expect("basic_sampling runs");
    (runs, String::from_utf8(out).expect("UTF-8 report"))
}

#[test]
fn basic_sampling_survivors_and_probabilities() {
    let (runs, report) = sampling_runs(42);
    assert_eq!(runs.len(), 4);
    let by_label = |prefix: &str| runs.iter().find(|r| r.label.starts_with(prefix)).expect(prefix);
    let (dog, cat, detective) = (2, 3, 4);

    // top-k 5 keeps dog 3.2, cat 3.0, detective 2.6, the 2.0, <eos> 1.8; at T 0.8 top-p
    // 0.9 drops <eos> (the first four hold > 90%), min-p 0.1 keeps the rest.
    let hand = by_label("top-k 5");
    assert_eq!(hand.stages, ["top_k", "temperature", "top_p", "min_p"]);
    let ids: Vec<u32> = hand.survivors.iter().map(|s| s.0).collect();
    assert_eq!(ids, [dog, cat, detective, 0]);

    // The preset's repetition penalty pushes "dog" (in the history) below "cat".
    let preset = by_label("Preset::Balanced");
    assert_eq!(preset.stages, ["repetition_penalty", "temperature", "top_p"]);
    assert_eq!(preset.survivors[0].0, cat);
    assert!(preset.survivors.iter().any(|s| s.0 == dog));

    let config = by_label("SamplingConfig");
    assert_eq!(config.stages, ["temperature", "top_k", "min_p"]);
    assert!(config.survivors.len() <= 4);

    let greedy = by_label("greedy");
    assert!(greedy.stages.is_empty());
    assert!(greedy.draws.iter().all(|&id| id == dog), "greedy always takes the argmax");

    for run in &runs {
        let total: f32 = run.survivors.iter().map(|s| s.1).sum();
        assert!((total - 1.0).abs() < 1e-4, "{}: probabilities sum to {total}", run.label);
        assert!(run.survivors.windows(2).all(|w| w[0].1 >= w[1].1), "{}: most probable first", run.label);
        assert_eq!(run.draws.len(), basic_sampling::DRAWS);
        assert!(
            run.draws.iter().all(|d| run.survivors.iter().any(|s| s.0 == *d)),
            "{}: every draw is a survivor",
            run.label
        );
        assert!(report.contains(run.label), "the report names {}", run.label);
    }
}

#[test]
fn basic_sampling_draws_are_reproducible_from_the_seed() {
    let (first, report_1) = sampling_runs(42);
    let (again, report_2) = sampling_runs(42);
    assert_eq!(first, again);
    assert_eq!(report_1, report_2);
    let (other, _) = sampling_runs(43);
    let draws = |runs: &[basic_sampling::ChainRun]| runs.iter().map(|r| r.draws.clone()).collect::<Vec<_>>();
    assert_ne!(draws(&first), draws(&other), "another seed draws otherwise");
}

#[test]
fn custom_processor_effects() {
    let mut out = Vec::new();
    let effects = custom_processor::run(&mut out).expect("custom_processor runs");
    let report = String::from_utf8(out).unwrap();

    assert_eq!(effects.top_k_only, [1, 3, 2]);
    // Filtering odd ids after top-k 3 leaves "two"; before it, the best three even ids.
    assert_eq!(effects.even_after_top_k, [2]);
    assert_eq!(effects.even_before_top_k, [2, 6, 0]);
    assert_eq!(effects.even_before_top_k_builder, effects.even_before_top_k);
    // Boosting "eight" by +5 makes it the greedy pick instead of "one".
    assert_eq!(effects.greedy_pick, (1, 8));
    // The stateful stage learns each chosen token through `accept`.
    assert_eq!(effects.greedy_walk.0, [1; 6]);
    assert_eq!(effects.greedy_walk.1, [1, 3, 1, 3, 1, 3]);
    assert!(report.contains("even_ids_only") && report.contains("no_immediate_repeat"));
    assert!(report.contains("invalid parameter `boost`"));
}
