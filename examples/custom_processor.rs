//! Custom sampling stages, no model needed: a user-defined [`LogitsProcessor`] (a
//! stateless "boost these tokens" stage and a stateful "never repeat the previous
//! token" stage that learns the chosen token through `accept`), and the closure form
//! [`from_fn`] for one-off logic, inserted into a chain at a chosen position. Each is run
//! on a hand-made logit vector and its effect printed — including how the *position*
//! of a stage changes the result.
//!
//! ```text
//! cargo run -p perpetua-examples --example custom_processor
//! ```
//!
//! The same stages go into a real generation unchanged: pass the chain to
//! `Generator::builder(model).chain(chain)`; the generator calls `process`, draws, and
//! then `accept` with the final token every step. `examples/tests/examples.rs`
//! runs [`run`] and checks the effects shown here.

use std::error::Error;
use std::io::Write;

use perpetua::sampling::processors::{TopK, from_fn};
use perpetua::sampling::samplers::Greedy;
use perpetua::sampling::{
    Candidates, Chain, ChainBuilder, LogitsProcessor, SamplingContext, SamplingError, Stage,
};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

/// The toy vocabulary: token id = index, so "odd" and "even" are easy to see.
pub const VOCAB: [&str; 10] =
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// One logit per token of [`VOCAB`]. The three best are "one" (4.0), "three" (3.5)
/// and "two" (3.2): two odd ids and one even.
pub const LOGITS: [f32; 10] = [1.0, 4.0, 3.2, 3.5, 0.5, 3.0, 2.0, 1.5, 0.0, 2.8];

/// A stateless custom stage: adds `bonus` to the logit of every token in `ids` (think
/// "prefer words from a glossary"). A negative bonus discourages them instead.
#[derive(Debug, Clone)]
pub struct BoostTokens {
    ids: Vec<u32>,
    bonus: f32,
}

impl BoostTokens {
    /// Validate like the built-in stages do: a bad parameter is a typed error naming
    /// it, never a panic later in the generation loop.
    pub fn new(ids: impl IntoIterator<Item = u32>, bonus: f32) -> Result<Self, SamplingError> {
        if !bonus.is_finite() {
            return Err(SamplingError::invalid("boost", bonus, "must be finite"));
        }
        Ok(Self { ids: ids.into_iter().collect(), bonus })
    }
}

impl LogitsProcessor for BoostTokens {
    fn name(&self) -> &'static str {
        "boost_tokens" // shown by `Chain::stage_names`, in traces and in errors
    }

    fn process(
        &mut self,
        candidates: &mut Candidates,
        _ctx: &SamplingContext<'_>,
    ) -> Result<(), SamplingError> {
        // `as_mut_slice` clears the buffer's `sorted` / `has_probs` flags, so later
        // stages never trust an order or probabilities this edit invalidated.
        for c in candidates.as_mut_slice() {
            if self.ids.contains(&c.id) && c.logit.is_finite() {
                c.logit += self.bonus;
            }
        }
        Ok(())
    }
}

/// A stateful custom stage: masks the token chosen at the previous step, so no token
/// is ever picked twice in a row. The chain tells it the final token through
/// [`accept`](LogitsProcessor::accept) and clears it with
/// [`reset`](LogitsProcessor::reset) at the start of a new sequence.
#[derive(Debug, Clone, Default)]
pub struct NoImmediateRepeat {
    last: Option<u32>,
}

impl LogitsProcessor for NoImmediateRepeat {
    fn name(&self) -> &'static str {
        "no_immediate_repeat"
    }

    fn process(
        &mut self,
        candidates: &mut Candidates,
        _ctx: &SamplingContext<'_>,
    ) -> Result<(), SamplingError> {
        // A stage must leave at least one finite candidate: when the previous token is
        // the only one left, leave it rather than fail the step.
        if let Some(last) = self.last
            && candidates.finite_len() > 1
        {
            candidates.mask(last); // logit → -inf: never drawn
        }
        Ok(())
    }

    fn accept(&mut self, token: u32) {
        self.last = Some(token);
    }

    fn reset(&mut self) {
        self.last = None;
    }
}

/// The closure form, for logic that needs no state: keep even token ids only.
fn even_ids_only() -> impl LogitsProcessor + 'static {
    from_fn("even_ids_only", |candidates, _ctx| {
        candidates.retain(|c| c.id % 2 == 0); // keeps the order, so `sorted` stays true
        Ok(())
    })
}

/// What the stages did, for the test to check.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// Survivors of top-k 3 alone.
    pub top_k_only: Vec<u32>,
    /// Survivors of top-k 3, then the even-ids closure.
    pub even_after_top_k: Vec<u32>,
    /// Survivors of the even-ids closure (inserted before top-k), then top-k 3.
    pub even_before_top_k: Vec<u32>,
    /// The same order built with `ChainBuilder::before(Stage::TopK, …)`.
    pub even_before_top_k_builder: Vec<u32>,
    /// The greedy pick without and with `BoostTokens([8], +5)`.
    pub greedy_pick: (u32, u32),
    /// Six greedy steps without and with `NoImmediateRepeat`.
    pub greedy_walk: (Vec<u32>, Vec<u32>),
}

/// The surviving ids of `chain` on [`LOGITS`], best first.
fn survivors(chain: &mut Chain, ctx: &SamplingContext<'_>) -> Result<Vec<u32>, SamplingError> {
    let candidates = chain.process(&LOGITS, ctx)?;
    candidates.sort_by_logit();
    Ok(candidates.as_slice().iter().filter(|c| c.logit.is_finite()).map(|c| c.id).collect())
}

/// `steps` greedy steps on the same logits, telling the chain each chosen token as the
/// generator does (`sample`, then `accept`).
fn walk(chain: &mut Chain, ctx: &SamplingContext<'_>, steps: usize) -> Result<Vec<u32>, SamplingError> {
    let mut rng = ChaCha8Rng::seed_from_u64(0); // unused by `Greedy`, required by the API
    chain.reset();
    (0..steps)
        .map(|_| {
            let token = chain.sample(&LOGITS, ctx, &mut rng)?;
            chain.accept(token);
            Ok(token)
        })
        .collect()
}

fn words(ids: &[u32]) -> String {
    ids.iter().map(|&id| VOCAB[id as usize]).collect::<Vec<_>>().join(" ")
}

/// Runs every demonstration, writes what happened to `out` and returns the effects.
pub fn run(out: &mut impl Write) -> Result<Effects, Box<dyn Error>> {
    let ctx = SamplingContext::new(&[], 0);
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    // 1. Position matters. Top-k 3 keeps one, three, two; filtering odd ids *after* it
    //    leaves only "two", filtering *before* it keeps the three best even ids.
    let mut chain = Chain::new(Greedy).with(TopK::new(3)?);
    let top_k_only = survivors(&mut chain, &ctx)?;
    writeln!(out, "{:?}: {}", chain.stage_names().collect::<Vec<_>>(), words(&top_k_only))?;

    chain.push(Box::new(even_ids_only())); // append: runs after top-k
    let even_after_top_k = survivors(&mut chain, &ctx)?;
    writeln!(out, "{:?}: {}", chain.stage_names().collect::<Vec<_>>(), words(&even_after_top_k))?;

    // Move it in front of top-k (`position` finds a stage by name; `insert`, `remove`
    // and `move_stage` reorder freely).
    let from = chain.position("even_ids_only").ok_or("stage not found")?;
    let to = chain.position("top_k").ok_or("stage not found")?;
    chain.move_stage(from, to);
    let even_before_top_k = survivors(&mut chain, &ctx)?;
    writeln!(out, "{:?}: {}", chain.stage_names().collect::<Vec<_>>(), words(&even_before_top_k))?;

    // The same placement with the builder, which anchors custom stages to the standard
    // ones (whatever else gets added later, it stays right before top-k).
    let mut built = ChainBuilder::new()
        .stage(Stage::TopK, TopK::new(3)?)
        .before(Stage::TopK, even_ids_only())
        .sampler(Greedy)
        .build();
    let even_before_top_k_builder = survivors(&mut built, &ctx)?;
    writeln!(
        out,
        "{:?} (ChainBuilder): {}",
        built.stage_names().collect::<Vec<_>>(),
        words(&even_before_top_k_builder)
    )?;

    // 2. A trait impl: boosting "eight" by +5 turns the worst-but-one token into the
    //    greedy choice.
    let mut plain = Chain::new(Greedy);
    let mut boosted = Chain::new(Greedy).with(BoostTokens::new([8], 5.0)?);
    let greedy_pick = (plain.sample(&LOGITS, &ctx, &mut rng)?, boosted.sample(&LOGITS, &ctx, &mut rng)?);
    writeln!(
        out,
        "\ngreedy pick: {} — with boost_tokens(eight, +5): {}",
        VOCAB[greedy_pick.0 as usize], VOCAB[greedy_pick.1 as usize]
    )?;
    // Invalid parameters are errors, as for the built-in stages.
    if let Err(e) = BoostTokens::new([8], f32::NAN) {
        writeln!(out, "BoostTokens::new([8], NaN): error: {e}")?;
    }

    // 3. A stateful stage: greedy decoding on fixed logits repeats one token forever;
    //    with `NoImmediateRepeat` it alternates between the two best.
    let mut no_repeat = Chain::new(Greedy).with(NoImmediateRepeat::default());
    let greedy_walk = (walk(&mut plain, &ctx, 6)?, walk(&mut no_repeat, &ctx, 6)?);
    writeln!(out, "\n6 greedy steps: {}", words(&greedy_walk.0))?;
    writeln!(out, "with no_immediate_repeat: {}", words(&greedy_walk.1))?;

    Ok(Effects {
        top_k_only,
        even_after_top_k,
        even_before_top_k,
        even_before_top_k_builder,
        greedy_pick,
        greedy_walk,
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let logits: Vec<String> = VOCAB.iter().zip(LOGITS).map(|(w, l)| format!("{w} {l}")).collect();
    println!("logits: {}\n", logits.join(", "));
    run(&mut std::io::stdout().lock())?;
    Ok(())
}
