//! The perpetual real-model test on the burn backend (feature `burn`, or
//! `burn-flex`): SmolLM2-135M-Instruct dequantized to f32 on burn's CPU backend,
//! through the same `Generator` and EOS strategies as on candle. Plain generation ends
//! at its own EOS before the budget; each of the four strategies carries the model
//! past EOS to the full budget without ever emitting it.
//!
//! Shorter than `perpetual_smollm2.rs` (2,000 tokens on candle): burn runs f32 weights
//! at a fraction of the candle backend's speed (docs/PERFORMANCE.md), so the prompt asks
//! for one sentence and the budget is 96 tokens — enough for the model to want to stop
//! well inside it.
//!
//! Two tests: method 4 (back steps with the schedule) and methods 1–3, each from the
//! first seed whose plain run ends at EOS. The device is burn's default
//! (`BURN_DEVICE`): `cargo xtask ci` runs both on the CPU, and the first again on wgpu
//! (lavapipe); `cargo xtask gpu wgpu` runs both on wgpu.
//!
//! Run: `cargo test -p perpetua --features burn --test perpetual_burn -- --nocapture`.
//! Needs the model (`cargo xtask fetch-model`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua::burn::{Llama, LlamaTokenizer, LoadOptions};
use perpetua::prelude::{
    Backstep, BackstepWithSchedule, Chain, ChatMessage, EosStrategy, FinishReason, Generation, Generator,
    Multinomial, PostEosResample, StopAtEos, SuppressEos, Temperature, Tokenizer, TopK,
};

const PROMPT: &str = "Write one sentence about a dog who solves mysteries.";
const BUDGET: usize = 96;
const SEEDS: [u64; 6] = [1, 2, 3, 4, 5, 6];

fn run(model: &Llama, tokenizer: &LlamaTokenizer, strategy: Box<dyn EosStrategy>, seed: u64) -> Generation {
    let eos = tokenizer.eos_ids().to_vec();
    let chain = Chain::new(Multinomial).with(TopK::new(20).unwrap()).with(Temperature::new(1.0).unwrap());
    let mut generator = Generator::builder(model)
        .tokenizer(tokenizer.clone())
        .chain(chain)
        .eos_strategy(strategy)
        .seed(seed)
        .max_new_tokens(BUDGET)
        .build()
        .unwrap();
    let out = generator.generate(vec![ChatMessage::user(PROMPT)]).unwrap();
    assert!(out.ids.iter().all(|id| !eos.contains(id)), "the output holds an EOS id");
    out
}

fn row(name: &str, out: &Generation) {
    println!(
        "| {name} | {} | {:?} | {} | {} | {:.1} | {:?} |",
        out.ids.len(),
        out.finish_reason,
        out.counts.eos_avoided + out.counts.backsteps,
        out.counts.tokens_removed,
        out.decode_tokens_per_second(),
        out.text.chars().take(120).collect::<String>(),
    );
}

fn load() -> (Llama, LlamaTokenizer) {
    let path = perpetua::burn::default_model_path().unwrap();
    assert!(path.is_file(), "model missing at {}: run `cargo xtask fetch-model`", path.display());
    let model = Llama::load(&path, &LoadOptions { cache_capacity: Some(512), ..Default::default() }).unwrap();
    println!("burn device: {:?}", model.device());
    let tokenizer = LlamaTokenizer::from_gguf(&path).unwrap();
    println!("| strategy | new tokens | finish | EOS events | tokens regenerated | decode tok/s | text |");
    println!("|---|---|---|---|---|---|---|");
    (model, tokenizer)
}

/// The first seed whose plain generation stops at its own EOS inside the budget.
fn natural_end(model: &Llama, tokenizer: &LlamaTokenizer) -> u64 {
    for seed in SEEDS {
        let plain = run(model, tokenizer, Box::new(StopAtEos), seed);
        row(&format!("plain (stop at EOS), seed {seed}"), &plain);
        if plain.finish_reason == FinishReason::Eos {
            assert!(plain.ids.len() < BUDGET);
            return seed;
        }
    }
    panic!("plain generation never stopped at its own EOS within the budget");
}

/// Each strategy, from the seed where plain generation ends early, reaches the full
/// budget without emitting EOS, having met (and avoided) at least one.
fn each_reaches_the_budget(strategies: Vec<(&str, Box<dyn EosStrategy>)>) {
    let (model, tokenizer) = load();
    let seed = natural_end(&model, &tokenizer);
    for (name, strategy) in strategies {
        let out = run(&model, &tokenizer, strategy, seed);
        row(&format!("{name}, seed {seed}"), &out);
        assert_eq!(out.finish_reason, FinishReason::MaxNewTokens, "{name} did not reach the budget");
        assert_eq!(out.ids.len(), BUDGET, "{name}");
        assert!(
            out.counts.eos_avoided + out.counts.backsteps > 0,
            "{name}: the model never drew EOS, so the strategy was not exercised"
        );
    }
}

/// Method 4 (back steps with the temperature schedule): the strategy that works the
/// backend hardest — each back step truncates the cache and refeeds. The one of the
/// two tests `cargo xtask ci` also runs on wgpu (lavapipe decodes ~1 token/s).
#[test]
fn on_burn_plain_ends_at_eos_and_backstep_with_schedule_reaches_the_budget() {
    each_reaches_the_budget(vec![(
        "backstep 10 + schedule",
        Box::new(BackstepWithSchedule::new(10).unwrap()),
    )]);
}

/// Methods 1–3: suppression, post-EOS resampling and plain back steps.
#[test]
fn on_burn_suppress_resample_and_backstep_reach_the_budget() {
    each_reaches_the_budget(vec![
        ("suppress", Box::new(SuppressEos::new())),
        ("post-eos resample", Box::new(PostEosResample::new())),
        ("backstep 10", Box::new(Backstep::new(10).unwrap())),
    ]);
}
