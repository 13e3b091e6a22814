//! Several sequences generated side by side ([`Generator::generate_batch`],
//! [`Generator::generate_n`]). Each *lane* is one sequence with its own session (cache,
//! tokens, RNG, counters, trace), chain, strategy and buffers. A step runs the limits
//! and context rolls of every lane, then one [`LanguageModel::forward_batch`] over all
//! their pending tokens, then the rest of each lane's step with that lane's state
//! swapped into the generator: the same phases, in the same code, as a single stream,
//! so a sequence's tokens do not depend on what else is in the batch. Lanes that finish
//! leave; waiting sequences join (continuous batching). Back steps, resumed turns and
//! context rolls stay per lane (they feed alone, as in a single stream).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use perpetua_perpetual::EosStrategy;
use perpetua_sampling::Chain;

use super::session::{Feed, Session, model_err};
use super::{Buffers, Event, FinishReason, Generation, Generator, Prompt};
use crate::{BatchItem, ForkableCache, GenerateError, KvCache, LanguageModel};

/// The per-sequence state that lives in the generator while one lane steps.
struct LaneState {
    chain: Chain,
    strategy: Box<dyn EosStrategy>,
    buffers: Buffers,
    /// This sequence's resume tokens rendered from its prompt (`reask`).
    from_prompt: Option<Vec<u32>>,
}

/// One sequence of a batch.
struct Lane<C> {
    /// Position in the caller's input.
    index: usize,
    session: Session<C>,
    state: LaneState,
    events: VecDeque<Event>,
    /// Set when the lane's step failed: the lane leaves with it.
    error: Option<GenerateError>,
}

impl<C: KvCache> Lane<C> {
    fn new(index: usize, session: Session<C>, state: LaneState) -> Self {
        Self { index, session, state, events: VecDeque::new(), error: None }
    }
}

/// A lane cannot be set up because a stage or the strategy cannot be copied (checked
/// before a batch starts, so only a stage that stops copying midway gets here).
fn uncopyable() -> GenerateError {
    GenerateError::invalid("chain", "a stage or the EOS strategy", "cannot be copied for another sequence")
}

impl<M: LanguageModel> Generator<M> {
    /// Generate from every prompt, up to [`max_batch`](super::GeneratorBuilder::max_batch)
    /// sequences side by side (one forward pass per step for all of them); a sequence
    /// that finishes makes room for the next prompt. Results come in input order, each
    /// exactly what [`generate`](Self::generate) gives for that prompt (same seed and
    /// stream), whatever else is in the batch.
    ///
    /// A failure is that sequence's: its entry is the error
    /// ([`GenerateError::PartialGeneration`] with its output once decoding began), and
    /// the others run on. When a stage or the EOS strategy cannot be copied
    /// ([`Chain::try_clone`], [`EosStrategy::boxed_clone`]), the prompts run one after
    /// another, with the same results.
    ///
    /// ```
    /// use perpetua_generator::Generator;
    /// use perpetua_generator::testing::FakeModel;
    ///
    /// let mut generator = Generator::builder(FakeModel::new(64)).max_new_tokens(6).build()?;
    /// let prompts = vec![vec![1_u32, 2, 3], vec![4, 5], vec![6, 7, 8, 9]];
    /// let batch = generator.generate_batch(prompts.clone());
    /// for (prompt, result) in prompts.into_iter().zip(batch) {
    ///     assert_eq!(result?.ids, generator.generate(prompt)?.ids);
    /// }
    /// # Ok::<(), perpetua_generator::GenerateError>(())
    /// ```
    pub fn generate_batch<P: Into<Prompt>>(
        &mut self,
        prompts: impl IntoIterator<Item = P>,
    ) -> Vec<Result<Generation, GenerateError>> {
        self.generate_batch_with(prompts, |_, _| ControlFlow::Continue(()))
    }

    /// As [`generate_batch`](Self::generate_batch), calling `on_event(index, event)`
    /// with every event of the sequence of prompt `index` (the events of one sequence
    /// in order; sequences interleave). `ControlFlow::Break` cancels that sequence
    /// (finish reason `Cancelled`); a panic in the callback fails it.
    pub fn generate_batch_with<P: Into<Prompt>>(
        &mut self,
        prompts: impl IntoIterator<Item = P>,
        mut on_event: impl FnMut(usize, &Event) -> ControlFlow<()>,
    ) -> Vec<Result<Generation, GenerateError>> {
        let prompts: Vec<Prompt> = prompts.into_iter().map(Into::into).collect();
        let Some(first) = self.lane_state() else {
            tracing::debug!("a stage or the EOS strategy cannot be copied: the batch runs one after another");
            return prompts
                .into_iter()
                .enumerate()
                .map(|(i, prompt)| self.generate_with(prompt, |event| on_event(i, event)))
                .collect();
        };
        let total = prompts.len();
        let mut prompts: Vec<Option<Prompt>> = prompts.into_iter().map(Some).collect();
        let join = |g: &mut Self, i: usize, mut state: LaneState| {
            let prompt = prompts[i].take().unwrap_or(Prompt::Ids(Vec::new()));
            g.swap_lane(&mut state);
            let session = g.open(prompt, Feed::AllButLast).map(|o| g.start_session(o.ids, o.cache, o.at, 0));
            g.swap_lane(&mut state);
            Ok(Lane::new(i, session?, state))
        };
        self.run_lanes(total, first, join, &mut on_event)
    }

    /// `n` samples from one prompt, side by side (see
    /// [`generate_batch`](Self::generate_batch)): the prompt is prefilled once and each
    /// sample continues from a [`ForkableCache::fork`] of that cache. Sample `i` uses
    /// the seed's ChaCha stream `i`, so sample 0 equals [`generate`](Self::generate);
    /// each sample's tokens are those it has alone.
    ///
    /// Each sample's `counts` and `timings` report the shared prefill.
    ///
    /// Errors: as [`generate`](Self::generate) before any sample starts, and when
    /// every sample fails (the first failure); otherwise a failure is
    /// [`GenerateError::PartialSamples`], which keeps every other sample and the failing
    /// ones' partial output.
    pub fn generate_n(
        &mut self,
        prompt: impl Into<Prompt>,
        n: usize,
    ) -> Result<Vec<Generation>, GenerateError>
    where
        M::Cache: ForkableCache,
    {
        let opened = self.open(prompt.into(), Feed::AllButLast)?;
        let from_prompt = self.resumes.from_prompt.clone();
        let join = |g: &mut Self, i: usize, mut state: LaneState| {
            let cache = opened.cache.fork()?;
            state.from_prompt = from_prompt.clone();
            g.swap_lane(&mut state);
            let session = g.start_session(opened.ids.clone(), cache, opened.at, i as u64);
            g.swap_lane(&mut state);
            Ok(Lane::new(i, session, state))
        };
        let results = if let Some(first) = self.lane_state() {
            self.run_lanes(n, first, join, &mut |_, _| ControlFlow::Continue(()))
        } else {
            // One after another, on the generator's own chain and strategy.
            (0..n)
                .map(|i| {
                    let session =
                        self.start_session(opened.ids.clone(), opened.cache.fork()?, opened.at, i as u64);
                    let mut stream = super::Stream::new(&mut *self, session);
                    for item in stream.by_ref() {
                        item?;
                    }
                    Ok(stream.into_output())
                })
                .collect()
        };
        samples(results, n)
    }

    /// A copy of the generator's chain and strategy for one more sequence: the
    /// perpetual mode's strategy is rebuilt from the mode, any other copied. `None`
    /// when something cannot be copied.
    fn lane_state(&self) -> Option<LaneState> {
        let chain = self.chain.try_clone()?;
        let strategy = match &self.resumes.mode {
            Some(mode) => mode.strategy().ok()?,
            None => self.strategy.boxed_clone()?,
        };
        Some(LaneState { chain, strategy, buffers: Buffers::default(), from_prompt: None })
    }

    /// Exchange the generator's per-sequence state with a lane's.
    fn swap_lane(&mut self, state: &mut LaneState) {
        std::mem::swap(&mut self.chain, &mut state.chain);
        std::mem::swap(&mut self.strategy, &mut state.strategy);
        std::mem::swap(&mut self.buffers, &mut state.buffers);
        std::mem::swap(&mut self.resumes.from_prompt, &mut state.from_prompt);
    }

    /// Run `total` sequences, `join(generator, i, state)` setting up sequence `i` on a
    /// lane state when there is room, until all have finished; results in input order.
    /// `first` is the first lane state; a finished lane's state (chain, strategy,
    /// buffers) serves the next sequence that joins, reset by its session's start as the
    /// generator's own are between generations, so at most `max_batch` are copied.
    fn run_lanes(
        &mut self,
        total: usize,
        first: LaneState,
        mut join: impl FnMut(&mut Self, usize, LaneState) -> Result<Lane<M::Cache>, GenerateError>,
        on_event: &mut dyn FnMut(usize, &Event) -> ControlFlow<()>,
    ) -> Vec<Result<Generation, GenerateError>> {
        let width = self.settings.max_batch.max(1);
        let mut results: Vec<Option<Result<Generation, GenerateError>>> = (0..total).map(|_| None).collect();
        let mut lanes: Vec<Lane<M::Cache>> = Vec::with_capacity(width.min(total));
        let mut spare = vec![first];
        let (mut next, mut logits) = (0, Vec::new());
        loop {
            while lanes.len() < width && next < total {
                let joined = match spare.pop().or_else(|| self.lane_state()) {
                    Some(state) => join(self, next, state),
                    None => Err(uncopyable()),
                };
                match joined {
                    Ok(lane) => lanes.push(lane),
                    Err(e) => results[next] = Some(Err(e)),
                }
                next += 1;
            }
            if lanes.is_empty() {
                break;
            }
            self.batch_step(&mut lanes, &mut logits);
            let mut k = 0;
            while k < lanes.len() {
                let lane = &mut lanes[k];
                if lane.error.is_none()
                    && let Err(e) = self.deliver(lane, on_event)
                {
                    lane.error = Some(e);
                }
                let done = match lane.error.take() {
                    Some(source) => Some(Err(lane.session.fail(source))),
                    None => lane.session.finish.is_some().then(|| Ok(lane.session.output())),
                };
                match done {
                    Some(result) => {
                        let lane = lanes.swap_remove(k);
                        results[lane.index] = Some(result);
                        spare.push(lane.state);
                    }
                    None => k += 1,
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(uncopyable()))).collect()
    }

    /// One step of every lane: limits and rolls, one batched forward pass, the rest.
    /// A lane whose phase fails (or panics) keeps the error in `Lane::error`.
    fn batch_step(&mut self, lanes: &mut [Lane<M::Cache>], logits: &mut Vec<f32>) {
        let ready: Vec<bool> = lanes
            .iter_mut()
            .map(|lane| self.in_lane(lane, |g, s, ev| g.ready_to_forward(s, ev)) == Some(true))
            .collect();
        let fed = self.forward_lanes(lanes, &ready, logits);
        for ((lane, ready), fed) in lanes.iter_mut().zip(ready).zip(fed) {
            if !ready || lane.error.is_some() {
                continue;
            }
            self.in_lane(lane, |g, s, ev| {
                let sampled_from = match fed {
                    Some(at) => {
                        g.check_logits(s)?;
                        at
                    }
                    // The batched pass failed for another lane (or as a whole): feed alone.
                    None => g.forward_pending(s)?,
                };
                g.after_forward(s, ev, sampled_from)?;
                // The feeding scheme's invariant, per sequence, after every step.
                if s.finish.is_none() { s.check_cache() } else { Ok(()) }
            });
        }
    }

    /// One [`LanguageModel::forward_batch`] over the pending token of every ready lane;
    /// each lane's logits go to its logits buffer. Returns, per lane, when its logits
    /// arrived (`None`: not fed; the lane feeds alone). A failure the backend pins on
    /// one item fails that lane; the others' caches are unchanged (the backend's
    /// contract, and re-checked here) and they feed alone.
    fn forward_lanes(
        &mut self,
        lanes: &mut [Lane<M::Cache>],
        ready: &[bool],
        out: &mut Vec<f32>,
    ) -> Vec<Option<Instant>> {
        let mut fed = vec![None; lanes.len()];
        let fed_lanes: Vec<usize> =
            (0..lanes.len()).filter(|&k| ready[k] && lanes[k].error.is_none()).collect();
        if fed_lanes.is_empty() {
            return fed;
        }
        let (model, vocab, t0) = (&self.model, self.model.vocab_size(), Instant::now());
        let result = {
            let mut items: Vec<BatchItem<'_, M::Cache>> = lanes
                .iter_mut()
                .zip(ready)
                .filter(|(lane, ready)| **ready && lane.error.is_none())
                .map(|(lane, _)| {
                    let s = &mut lane.session;
                    BatchItem { tokens: &s.tokens[s.tokens.len() - 1..], cache: &mut s.cache }
                })
                .collect();
            panic::catch_unwind(AssertUnwindSafe(|| model.forward_batch(&mut items, out)))
        };
        let sampled_from = Instant::now();
        match result {
            Ok(Ok(())) if out.len() == fed_lanes.len() * vocab => {
                for (j, &k) in fed_lanes.iter().enumerate() {
                    let lane = &mut lanes[k];
                    lane.state.buffers.logits.clear();
                    lane.state.buffers.logits.extend_from_slice(&out[j * vocab..(j + 1) * vocab]);
                    lane.session.timings.forward += sampled_from - t0;
                    lane.session.counts.forward_passes += 1;
                    fed[k] = Some(sampled_from);
                }
                return fed;
            }
            Ok(Ok(())) => {
                let got = out.len();
                for &k in &fed_lanes {
                    lanes[k].error =
                        Some(GenerateError::LogitsLength { got, expected: fed_lanes.len() * vocab });
                }
            }
            Ok(Err(e)) => match e.index.and_then(|j| fed_lanes.get(j)) {
                Some(&k) => lanes[k].error = Some(model_err(e.source)),
                None => tracing::warn!(error = %e, "batched forward pass failed; each sequence feeds alone"),
            },
            Err(_) => tracing::warn!("batched forward pass panicked; each sequence feeds alone"),
        }
        // Whatever the backend left, a lane that feeds alone starts from its own length.
        for &k in &fed_lanes {
            resync(&mut lanes[k]);
        }
        fed
    }

    /// Run `phase` on a lane with its state swapped in; a failure or a panic is kept in
    /// `Lane::error` (`None` returned).
    fn in_lane<T>(
        &mut self,
        lane: &mut Lane<M::Cache>,
        phase: impl FnOnce(&mut Self, &mut Session<M::Cache>, &mut VecDeque<Event>) -> Result<T, GenerateError>,
    ) -> Option<T> {
        self.swap_lane(&mut lane.state);
        let (session, events) = (&mut lane.session, &mut lane.events);
        let result = panic::catch_unwind(AssertUnwindSafe(|| phase(self, session, events)))
            .unwrap_or_else(|payload| Err(GenerateError::from_panic("decode step", payload)));
        self.swap_lane(&mut lane.state);
        result.map_err(|e| lane.error = Some(e)).ok()
    }

    /// Hand a lane's queued events to the caller; a `Break` cancels the lane.
    fn deliver(
        &mut self,
        lane: &mut Lane<M::Cache>,
        on_event: &mut dyn FnMut(usize, &Event) -> ControlFlow<()>,
    ) -> Result<(), GenerateError> {
        while let Some(event) = lane.events.pop_front() {
            match panic::catch_unwind(AssertUnwindSafe(|| on_event(lane.index, &event))) {
                Ok(flow) if flow.is_break() && lane.session.finish.is_none() => {
                    self.finish(&mut lane.session, &mut lane.events, FinishReason::Cancelled);
                }
                Ok(_) => {}
                Err(payload) => return Err(GenerateError::from_panic("on_event callback", payload)),
            }
        }
        Ok(())
    }
}

/// Cut a lane's cache back to the length its tokens call for (after a failed batched
/// pass: the backend's contract says it is, this makes sure).
fn resync<C: KvCache>(lane: &mut Lane<C>) {
    let s = &mut lane.session;
    let expected = s.expected_cache_len();
    if s.cache.seq_len() > expected
        && let Err(e) = s.cache.truncate(expected)
    {
        lane.error = Some(e.into());
    }
}

/// `generate_n`'s answer from the samples' results: all of them, or the
/// [`GenerateError::PartialSamples`] that keeps every sample's output.
fn samples(
    results: Vec<Result<Generation, GenerateError>>,
    n: usize,
) -> Result<Vec<Generation>, GenerateError> {
    let Some(failed) = results.iter().position(Result::is_err) else {
        return Ok(results.into_iter().flatten().collect());
    };
    if results.iter().all(Result::is_err) {
        return results.into_iter().find_map(Result::err).map_or_else(|| Ok(Vec::new()), Err);
    }
    let (mut kept, mut source) = (Vec::with_capacity(n), None);
    for (i, result) in results.into_iter().enumerate() {
        let error = match result {
            Ok(generation) => {
                kept.push(generation);
                continue;
            }
            Err(GenerateError::PartialGeneration { output, source }) => {
                kept.push(*output);
                source
            }
            Err(other) => Box::new(other),
        };
        if i == failed {
            source = Some(error);
        }
    }
    let source = source.unwrap_or_else(|| Box::new(uncopyable()));
    Err(GenerateError::PartialSamples { samples: kept, failed, n, source })
}
