//! Pure logit processors and samplers for LLM text generation.
//!
//! `perpetua-sampling` knows nothing of tensors or backends: it turns a slice of
//! logits into a chosen token id. The pieces:
//!
//! - [`Candidates`]: a reusable candidate buffer (ids, logits, probabilities and a
//!   `sorted` flag, in the spirit of llama.cpp's `llama_token_data_array`). It is
//!   refilled every step without allocating.
//! - [`LogitsProcessor`]: one stage that edits candidates (temperature, top-k, a
//!   penalty…), seeing a read-only [`SamplingContext`] (all tokens so far, prompt
//!   length, step, EOS ids, an optional temperature override).
//! - [`Sampler`]: picks a token from what is left with a caller-seeded RNG.
//! - [`Chain`]: ordered processors plus a sampler, itself the thing the generator
//!   calls once per step.
//! - [`ChainBuilder`] assembles the standard stages in the default order of [`Stage`]
//!   (HF's: penalties and masks, then temperature → top-k → top-p → min-p → …);
//!   [`Preset`]s give ready-made chains; [`SamplingConfig`] reads HF
//!   `generation_config.json` (serde) and builds a validated chain.
//!
//! ```
//! use perpetua_sampling::{Chain, SamplingContext, processors::{Temperature, TopK}, samplers::Multinomial};
//! use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};
//!
//! let mut chain = Chain::new(Multinomial)
//!     .with(TopK::new(2)?)
//!     .with(Temperature::new(0.8)?);
//! let logits = [1.0_f32, 3.0, 2.5, -1.0];
//! let ctx = SamplingContext::new(&[], 0);
//! let mut rng = ChaCha8Rng::seed_from_u64(42);
//! let token = chain.sample(&logits, &ctx, &mut rng)?;
//! assert!(token == 1 || token == 2); // top-k 2 keeps ids 1 and 2
//! # Ok::<(), perpetua_sampling::SamplingError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod candidates;
mod chain;
pub mod config;
mod context;
mod error;
pub mod processors;
pub mod samplers;
pub mod stats;
#[cfg(feature = "testing")]
pub mod testing;

pub use candidates::{Candidate, Candidates, sanitize_logits};
pub use chain::{Chain, ChainBuilder, NonFinitePolicy, Preset, Stage};
pub use config::SamplingConfig;
pub use context::SamplingContext;
pub use error::{Result, SamplingError};

use rand::RngCore;

/// One stage of the sampling pipeline: edits the candidate set in place.
///
/// A processor may rescale logits, set them to `-inf` (masking), or remove candidates
/// (filtering). It must leave at least one candidate with a finite logit unless it
/// returns an error, and it must keep [`Candidates::is_sorted`] truthful (use the
/// buffer's methods, which maintain the flag).
///
/// Processors are `Send` so a [`Chain`] (and the generator holding it) can move
/// between threads.
pub trait LogitsProcessor: Send {
    /// A short, stable name for traces, errors and configs (`"top_p"`).
    fn name(&self) -> &'static str;

    /// Apply this stage to `candidates`.
    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()>;

    /// Told which token was finally chosen (stateful processors update here).
    fn accept(&mut self, _token: u32) {}

    /// Forget all state accumulated by [`accept`](Self::accept).
    fn reset(&mut self) {}

    /// Which standard [`Stage`] this processor is (`None` for custom stages): how a
    /// [`Chain`] finds its temperature, truncation or penalty stages without matching
    /// names.
    fn stage(&self) -> Option<Stage> {
        None
    }

    /// The temperature this stage applies when it is a temperature stage (used by
    /// [`Chain::base_temperature`] so a schedule knows its base); `None` otherwise.
    fn temperature(&self) -> Option<f32> {
        None
    }

    /// True when this stage only applies one strictly increasing map to every logit
    /// (a plain temperature `T > 0`, or `T = 0` keeping the argmax). Together with
    /// [`depends_only_on_rank`](Self::depends_only_on_rank) it lets [`Chain`] run a
    /// rank-only stage first — same survivors, far fewer logits to rescale.
    fn is_monotone_rescale(&self) -> bool {
        false
    }

    /// True when which candidates survive depends only on their order by logit (top-k),
    /// so the stage commutes with a [monotone rescale](Self::is_monotone_rescale).
    fn depends_only_on_rank(&self) -> bool {
        false
    }

    /// A copy of this stage, configuration and state, for a generator running several
    /// sequences at once, each with its own chain ([`Chain::try_clone`]). `None` (the
    /// default, e.g. for closures) when the stage cannot be copied: the generator then
    /// runs those sequences one after another, with the same results.
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        None
    }
}

/// Picks one token from the candidates left by the processors.
pub trait Sampler: Send {
    /// A short, stable name (`"multinomial"`).
    fn name(&self) -> &'static str;

    /// Choose one token id. Candidates with a `-inf` logit are never chosen; an empty
    /// (or all `-inf`) set is [`SamplingError::EmptyCandidates`].
    fn sample(
        &mut self,
        candidates: &mut Candidates,
        ctx: &SamplingContext<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<u32>;

    /// Told which token was finally chosen (mirostat updates its state here).
    fn accept(&mut self, _token: u32) {}

    /// Forget accumulated state.
    fn reset(&mut self) {}

    /// A copy of this sampler, configuration and state (see
    /// [`LogitsProcessor::boxed_clone`]); `None` (the default) when it cannot be copied.
    fn boxed_clone(&self) -> Option<Box<dyn Sampler>> {
        None
    }
}
