use rand::RngCore;

use crate::{Candidates, LogitsProcessor, Result, Sampler, SamplingContext, SamplingError};

/// Ordered processors followed by a sampler: the whole per-step sampling pipeline.
///
/// The chain owns its [`Candidates`] buffer, so a step allocates nothing once the
/// buffer has grown to the vocabulary size.
pub struct Chain {
    processors: Vec<Box<dyn LogitsProcessor>>,
    sampler: Box<dyn Sampler>,
    candidates: Candidates,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("processors", &self.processors.iter().map(|p| p.name()).collect::<Vec<_>>())
            .field("sampler", &self.sampler.name())
            .finish()
    }
}

impl Chain {
    /// A chain with no processors and the given sampler.
    pub fn new(sampler: impl Sampler + 'static) -> Self {
        Self { processors: Vec::new(), sampler: Box::new(sampler), candidates: Candidates::default() }
    }

    /// Append a processor (builder style).
    pub fn with(mut self, processor: impl LogitsProcessor + 'static) -> Self {
        self.processors.push(Box::new(processor));
        self
    }

    /// Append a processor.
    pub fn push(&mut self, processor: Box<dyn LogitsProcessor>) {
        self.processors.push(processor);
    }

    /// Insert a processor at `index` (clamped to the end).
    pub fn insert(&mut self, index: usize, processor: Box<dyn LogitsProcessor>) {
        let index = index.min(self.processors.len());
        self.processors.insert(index, processor);
    }

    /// The temperature of the first temperature stage, or 1.0 when there is none
    /// (the model's own distribution). Perpetual schedules scale from this base.
    pub fn base_temperature(&self) -> f32 {
        self.processors.iter().find_map(|p| p.temperature()).unwrap_or(1.0)
    }

    /// The processors' names in order.
    pub fn stage_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.processors.iter().map(|p| p.name())
    }

    /// Run every processor on `logits` and return the surviving candidates (not yet
    /// sampled). Errors: NaN / `+inf` logits, a processor error, or an empty set.
    pub fn process(&mut self, logits: &[f32], ctx: &SamplingContext<'_>) -> Result<&mut Candidates> {
        self.candidates.fill_from_logits(logits)?;
        for p in &mut self.processors {
            p.process(&mut self.candidates, ctx)?;
            if self.candidates.is_empty() {
                return Err(SamplingError::EmptyCandidates { stage: p.name() });
            }
        }
        Ok(&mut self.candidates)
    }

    /// The candidates left by the last [`process`](Self::process).
    pub fn candidates(&self) -> &Candidates {
        &self.candidates
    }

    /// Mutable access to the candidates left by the last [`process`](Self::process).
    pub fn candidates_mut(&mut self) -> &mut Candidates {
        &mut self.candidates
    }

    /// Sample from the candidates left by the last [`process`](Self::process).
    pub fn sample_processed(&mut self, ctx: &SamplingContext<'_>, rng: &mut dyn RngCore) -> Result<u32> {
        self.sampler.sample(&mut self.candidates, ctx, rng)
    }

    /// Process then sample, one call per step. Does not call [`accept`](Self::accept):
    /// the caller does once the token is final (a perpetual strategy may replace it).
    pub fn sample(
        &mut self,
        logits: &[f32],
        ctx: &SamplingContext<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<u32> {
        self.process(logits, ctx)?;
        self.sample_processed(ctx, rng)
    }

    /// Tell every stateful stage which token was finally chosen.
    pub fn accept(&mut self, token: u32) {
        for p in &mut self.processors {
            p.accept(token);
        }
        self.sampler.accept(token);
    }

    /// Reset every stage's state (a new sequence).
    pub fn reset(&mut self) {
        for p in &mut self.processors {
            p.reset();
        }
        self.sampler.reset();
    }
}
