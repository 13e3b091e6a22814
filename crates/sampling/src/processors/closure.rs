use crate::{Candidates, LogitsProcessor, Result, SamplingContext};

/// A processor from a closure, so custom logic goes anywhere in a chain without a new
/// type: `f(candidates, ctx)` is called at this stage's position every step.
///
/// The closure has the same duties as any [`LogitsProcessor`]: use the buffer's
/// methods (which keep the `sorted`/`has_probs` flags truthful), leave at least one
/// finite candidate or return an error. Stateful closures see no
/// [`accept`](LogitsProcessor::accept)/[`reset`](LogitsProcessor::reset): implement
/// the trait for those.
///
/// ```
/// use perpetua_sampling::{Chain, SamplingContext, processors::from_fn, samplers::Greedy};
/// use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};
///
/// // Never pick an odd token id.
/// let mut chain = Chain::new(Greedy).with(from_fn("even_only", |c, _ctx| {
///     c.retain(|c| c.id % 2 == 0);
///     Ok(())
/// }));
/// let ctx = SamplingContext::new(&[], 0);
/// let mut rng = ChaCha8Rng::seed_from_u64(0);
/// assert_eq!(chain.sample(&[0.0, 9.0, 1.0, 8.0], &ctx, &mut rng)?, 2);
/// # Ok::<(), perpetua_sampling::SamplingError>(())
/// ```
pub struct FnProcessor<F> {
    name: &'static str,
    f: F,
}

impl<F> std::fmt::Debug for FnProcessor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnProcessor").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<F> FnProcessor<F>
where
    F: FnMut(&mut Candidates, &SamplingContext<'_>) -> Result<()> + Send,
{
    /// A processor named `name` (shown in traces and errors) running `f`.
    pub fn new(name: &'static str, f: F) -> Self {
        Self { name, f }
    }
}

/// Shorthand for [`FnProcessor::new`].
pub fn from_fn<F>(name: &'static str, f: F) -> FnProcessor<F>
where
    F: FnMut(&mut Candidates, &SamplingContext<'_>) -> Result<()> + Send,
{
    FnProcessor::new(name, f)
}

impl<F> LogitsProcessor for FnProcessor<F>
where
    F: FnMut(&mut Candidates, &SamplingContext<'_>) -> Result<()> + Send,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn process(&mut self, candidates: &mut Candidates, ctx: &SamplingContext<'_>) -> Result<()> {
        (self.f)(candidates, ctx)
    }
}
