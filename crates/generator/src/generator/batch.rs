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
use super::{Buffers, Event, FinishReason, Generation, Generator, Prompt, Resumes, Settings};
use crate::{BatchItem, ForkableCache, GenerateError, KvCache, LanguageModel, PerpetualMode, StopStrings};

/// The per-sequence state that lives in the generator while one lane steps: the
/// configuration a sequence runs with (chain, strategy, stop strings, settings, perpetual
/// set-up) and its buffers.
struct LaneState {
    chain: Chain,
    strategy: Box<dyn EosStrategy>,
    buffers: Buffers,
    stops: StopStrings,
    settings: Settings,
    resumes: Resumes,
}

/// One sequence of a batch.
struct Lane<K, C> {
    /// The caller's name for the sequence (its position in the input, a request id).
    key: K,
    session: Session<C>,
    state: LaneState,
    events: VecDeque<Event>,
    /// Set when the lane's step failed: the lane leaves with it.
    error: Option<GenerateError>,
}

impl<K, C: KvCache> Lane<K, C> {
    fn new(key: K, session: Session<C>, state: LaneState) -> Self {
        Self { key, session, state, events: VecDeque::new(), error: None }
    }
}

/// A lane cannot be set up because a stage or the strategy cannot be copied (checked
/// before a batch starts, so only a stage that stops copying midway gets here).
fn uncopyable() -> GenerateError {
    GenerateError::invalid("chain", "a stage or the EOS strategy", "cannot be copied for another sequence")
}

/// What one sequence of [`Generator::generate_continuous`] runs with where it differs
/// from the generator's configuration; every `None` keeps the generator's value.
/// Built with [`SequenceOptions::default`] and the setters.
///
/// ```
/// use perpetua_generator::{PerpetualMode, SequenceOptions};
///
/// let options = SequenceOptions::default().seed(7).max_new_tokens(64).perpetual(PerpetualMode::recommended());
/// assert_eq!(options.max_new_tokens, Some(64));
/// ```
#[derive(Default)]
#[non_exhaustive]
pub struct SequenceOptions {
    /// Seed of the sequence's RNG ([`GeneratorBuilder::seed`](super::GeneratorBuilder::seed)).
    pub seed: Option<u64>,
    /// ChaCha stream of the seed (default 0): sample `i` of [`Generator::generate_n`]
    /// uses stream `i`, so `n` samples of one request differ and each is reproducible.
    pub stream: u64,
    /// New-token limit.
    pub max_new_tokens: Option<usize>,
    /// EOS masked for this many new tokens.
    pub min_new_tokens: Option<usize>,
    /// Stop strings (replacing the generator's).
    pub stop_strings: Option<Vec<String>>,
    /// Alternatives reported with each token ([`Event::Token::top`]).
    pub top_logprobs: Option<usize>,
    /// The sampling chain (the generator's perpetual mode, if any, adds its stages to it).
    pub chain: Option<Chain>,
    /// A perpetual mode for this sequence ([`Generator::set_perpetual`]).
    pub perpetual: Option<PerpetualMode>,
}

impl SequenceOptions {
    /// Set [`seed`](Self::seed).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Set [`stream`](Self::stream).
    #[must_use]
    pub fn stream(mut self, stream: u64) -> Self {
        self.stream = stream;
        self
    }

    /// Set [`max_new_tokens`](Self::max_new_tokens).
    #[must_use]
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = Some(n);
        self
    }

    /// Set [`min_new_tokens`](Self::min_new_tokens).
    #[must_use]
    pub fn min_new_tokens(mut self, n: usize) -> Self {
        self.min_new_tokens = Some(n);
        self
    }

    /// Set [`stop_strings`](Self::stop_strings).
    #[must_use]
    pub fn stop_strings<S: Into<String>>(mut self, stops: impl IntoIterator<Item = S>) -> Self {
        self.stop_strings = Some(stops.into_iter().map(Into::into).collect());
        self
    }

    /// Set [`top_logprobs`](Self::top_logprobs).
    #[must_use]
    pub fn top_logprobs(mut self, n: usize) -> Self {
        self.top_logprobs = Some(n);
        self
    }

    /// Set [`chain`](Self::chain).
    #[must_use]
    pub fn chain(mut self, chain: Chain) -> Self {
        self.chain = Some(chain);
        self
    }

    /// Set [`perpetual`](Self::perpetual).
    #[must_use]
    pub fn perpetual(mut self, mode: PerpetualMode) -> Self {
        self.perpetual = Some(mode);
        self
    }

    /// A copy (for another sample of the same request); `None` when a stage of the
    /// chain cannot be copied ([`Chain::try_clone`]).
    pub fn try_clone(&self) -> Option<Self> {
        let chain = match &self.chain {
            Some(chain) => Some(chain.try_clone()?),
            None => None,
        };
        Some(Self {
            seed: self.seed,
            stream: self.stream,
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            stop_strings: self.stop_strings.clone(),
            top_logprobs: self.top_logprobs,
            chain,
            perpetual: self.perpetual.clone(),
        })
    }
}

impl std::fmt::Debug for SequenceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceOptions")
            .field("seed", &self.seed)
            .field("stream", &self.stream)
            .field("max_new_tokens", &self.max_new_tokens)
            .field("min_new_tokens", &self.min_new_tokens)
            .field("stop_strings", &self.stop_strings)
            .field("top_logprobs", &self.top_logprobs)
            .field("chain", &self.chain.as_ref().map(|c| c.stage_names().collect::<Vec<_>>()))
            .field("perpetual", &self.perpetual.as_ref().map(PerpetualMode::spec))
            .finish()
    }
}

/// One sequence for [`Generator::generate_continuous`]: the caller's key for it, its
/// prompt and what it changes of the generator's configuration.
#[derive(Debug)]
pub struct BatchRequest<K> {
    /// Handed back with the sequence's events and result.
    pub key: K,
    /// The prompt.
    pub prompt: Prompt,
    /// Per-sequence settings.
    pub options: SequenceOptions,
}

impl<K> BatchRequest<K> {
    /// A request with the generator's own settings.
    pub fn new(key: K, prompt: impl Into<Prompt>) -> Self {
        Self { key, prompt: prompt.into(), options: SequenceOptions::default() }
    }

    /// The same request with `options`.
    #[must_use]
    pub fn with_options(mut self, options: SequenceOptions) -> Self {
        self.options = options;
        self
    }
}

/// A finished sequence's key and result.
type Done<K> = (K, Result<Generation, GenerateError>);

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
        let mut prompts = prompts.into_iter().enumerate();
        let join = |g: &mut Self, _idle: bool, spare: &mut Vec<LaneState>| {
            let (i, prompt) = prompts.next()?;
            let Some(mut state) = spare.pop().or_else(|| g.lane_state()) else {
                return Some(Err((i, uncopyable())));
            };
            Some(
                g.join_lane(i, &mut state, |g| g.open(prompt, Feed::AllButLast), 0)
                    .map(|s| Lane::new(i, s, state)),
            )
        };
        self.run_indexed(total, first, join, &mut |i, event| on_event(*i, event))
    }

    /// Continuous batching over sequences that arrive while others run (a server's
    /// requests): `next(idle)` is asked for another sequence whenever a lane is free
    /// (up to [`max_batch`](super::GeneratorBuilder::max_batch) side by side); `idle` is
    /// `true` when nothing runs, and `None` then ends the call (a caller that waits for
    /// work blocks in `next` while idle); `None` while sequences run means "nothing
    /// now". Each request runs with the generator's configuration changed by its
    /// [`SequenceOptions`]; its events go to `on_event(key, event)`
    /// (`ControlFlow::Break` cancels it) and its result to `on_done(key, result)`, as
    /// soon as it finishes. A sequence's tokens are those [`generate`](Self::generate)
    /// gives with the same configuration, whatever else runs beside it.
    ///
    /// A request whose options are invalid (an invalid stop string, a perpetual mode
    /// the model cannot run, `top_logprobs` above the vocabulary) or whose prompt
    /// fails to open gets its error in `on_done`; the others run on. Needs copyable
    /// stages and strategy (every built-in one is): otherwise each request fails with
    /// an `InvalidParameter` error naming the chain.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use perpetua_generator::testing::FakeModel;
    /// use perpetua_generator::{BatchRequest, Generator, SequenceOptions};
    ///
    /// let mut generator = Generator::builder(FakeModel::new(64)).max_new_tokens(6).build()?;
    /// let mut queue = vec![
    ///     BatchRequest::new("a", vec![1_u32, 2, 3]),
    ///     BatchRequest::new("b", vec![4_u32, 5]).with_options(SequenceOptions::default().max_new_tokens(3)),
    /// ];
    /// let mut done = Vec::new();
    /// generator.generate_continuous(|_idle| queue.pop(), |_, _| ControlFlow::Continue(()), |key, result| {
    ///     done.push((key, result.map(|g| g.ids.len()).ok()));
    /// });
    /// done.sort_by_key(|(key, _)| *key);
    /// assert_eq!(done, [("a", Some(6)), ("b", Some(3))]);
    /// # Ok::<(), perpetua_generator::GenerateError>(())
    /// ```
    pub fn generate_continuous<K>(
        &mut self,
        mut next: impl FnMut(bool) -> Option<BatchRequest<K>>,
        mut on_event: impl FnMut(&K, &Event) -> ControlFlow<()>,
        mut on_done: impl FnMut(K, Result<Generation, GenerateError>),
    ) {
        let Some(first) = self.lane_state() else {
            while let Some(request) = next(true) {
                on_done(request.key, Err(uncopyable()));
            }
            return;
        };
        let join = |g: &mut Self, idle: bool, spare: &mut Vec<LaneState>| {
            let BatchRequest { key, prompt, options } = next(idle)?;
            // A fresh copy of the generator's configuration (the previous sequence's
            // options must not carry over); the buffers are reused.
            let Some(mut state) = g.lane_state() else {
                return Some(Err((key, uncopyable())));
            };
            if let Some(old) = spare.pop() {
                state.buffers = old.buffers;
            }
            let stream = options.stream;
            let joined = g.join_lane(
                (),
                &mut state,
                |g| {
                    g.apply_options(options)?;
                    g.open(prompt, Feed::AllButLast)
                },
                stream,
            );
            Some(match joined {
                Ok(session) => Ok(Lane::new(key, session, state)),
                Err(((), e)) => Err((key, e)),
            })
        };
        self.run_lanes(first, join, &mut on_event, &mut |(key, result)| on_done(key, result));
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
        let mut samples_left = 0..n;
        let join = |g: &mut Self, _idle: bool, spare: &mut Vec<LaneState>| {
            let i = samples_left.next()?;
            let Some(mut state) = spare.pop().or_else(|| g.lane_state()) else {
                return Some(Err((i, uncopyable())));
            };
            let cache = match opened.cache.fork() {
                Ok(cache) => cache,
                Err(e) => return Some(Err((i, e.into()))),
            };
            state.resumes.from_prompt = from_prompt.clone();
            g.swap_lane(&mut state);
            let session = g.start_session(opened.ids.clone(), cache, opened.at, i as u64);
            g.swap_lane(&mut state);
            Some(Ok(Lane::new(i, session, state)))
        };
        let results = if let Some(first) = self.lane_state() {
            self.run_indexed(n, first, join, &mut |_, _| ControlFlow::Continue(()))
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

    /// Open a sequence on `state` (swapped in for `open`, which prefills its prompt) and
    /// start its session on ChaCha stream `stream`.
    fn join_lane<K>(
        &mut self,
        key: K,
        state: &mut LaneState,
        open: impl FnOnce(&mut Self) -> Result<super::session::Opened<M::Cache>, GenerateError>,
        stream: u64,
    ) -> Result<Session<M::Cache>, (K, GenerateError)> {
        self.swap_lane(state);
        let session = open(self).map(|o| self.start_session(o.ids, o.cache, o.at, stream));
        self.swap_lane(state);
        session.map_err(|e| (key, e))
    }

    /// Change the (swapped-in) configuration by a request's options.
    fn apply_options(&mut self, options: SequenceOptions) -> Result<(), GenerateError> {
        let SequenceOptions {
            seed,
            stream: _,
            max_new_tokens,
            min_new_tokens,
            stop_strings,
            top_logprobs,
            chain,
            perpetual,
        } = options;
        if let Some(n) = top_logprobs {
            if n > self.model.vocab_size() {
                return Err(GenerateError::invalid("top_logprobs", n, "must be <= vocab_size"));
            }
            self.settings.top_logprobs = n;
        }
        if let Some(stops) = stop_strings {
            let stops = StopStrings::new(stops)?;
            if !stops.is_empty() && self.tokenizer.is_none() {
                return Err(GenerateError::NoTokenizer { needed_for: "stop strings" });
            }
            self.stops = stops;
        }
        if let Some(seed) = seed {
            self.settings.seed = seed;
        }
        if max_new_tokens.is_some() {
            self.settings.max_new_tokens = max_new_tokens;
        }
        if let Some(n) = min_new_tokens {
            self.settings.min_new_tokens = n;
        }
        if let Some(chain) = chain {
            self.chain = chain;
            // The generator's mode stages were in the replaced chain: put them in this one.
            self.resumes.mode_stages = None;
            if perpetual.is_none()
                && let Some(mode) = self.resumes.mode.clone()
            {
                self.set_perpetual(&mode)?;
            }
        }
        if let Some(mode) = perpetual {
            self.set_perpetual(&mode)?;
        }
        Ok(())
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
        let (stops, settings) = (self.stops.clone(), self.settings.clone());
        let resumes = Resumes { from_prompt: None, ..self.resumes.clone() };
        Some(LaneState { chain, strategy, buffers: Buffers::default(), stops, settings, resumes })
    }

    /// Exchange the generator's per-sequence state with a lane's.
    fn swap_lane(&mut self, state: &mut LaneState) {
        std::mem::swap(&mut self.chain, &mut state.chain);
        std::mem::swap(&mut self.strategy, &mut state.strategy);
        std::mem::swap(&mut self.buffers, &mut state.buffers);
        std::mem::swap(&mut self.stops, &mut state.stops);
        std::mem::swap(&mut self.settings, &mut state.settings);
        std::mem::swap(&mut self.resumes, &mut state.resumes);
    }

    /// Run sequences until `join` has no more and all have finished. `join(generator,
    /// idle, spare)` sets up the next sequence on a lane state (`spare` holds finished
    /// lanes' states, reset by a session's start as the generator's own are between
    /// generations, so a batch copies at most `max_batch`), or says there is none now
    /// (`None`; while `idle`, nothing runs and that ends the run). `first` is the first
    /// spare state. Each sequence's result goes to `on_done` when it finishes.
    fn run_lanes<K>(
        &mut self,
        first: LaneState,
        mut join: impl FnMut(
            &mut Self,
            bool,
            &mut Vec<LaneState>,
        ) -> Option<Result<Lane<K, M::Cache>, (K, GenerateError)>>,
        on_event: &mut dyn FnMut(&K, &Event) -> ControlFlow<()>,
        on_done: &mut dyn FnMut(Done<K>),
    ) {
        let width = self.settings.max_batch.max(1);
        let mut lanes: Vec<Lane<K, M::Cache>> = Vec::with_capacity(width);
        let mut spare = vec![first];
        let mut logits = Vec::new();
        loop {
            while lanes.len() < width {
                match join(self, lanes.is_empty(), &mut spare) {
                    Some(Ok(lane)) => lanes.push(lane),
                    Some(Err((key, e))) => on_done((key, Err(e))),
                    None => break,
                }
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
                        spare.push(lane.state);
                        on_done((lane.key, result));
                    }
                    None => k += 1,
                }
            }
        }
    }

    /// [`run_lanes`](Self::run_lanes) over sequences `0..total`, their results in that
    /// order.
    fn run_indexed(
        &mut self,
        total: usize,
        first: LaneState,
        join: impl FnMut(
            &mut Self,
            bool,
            &mut Vec<LaneState>,
        ) -> Option<Result<Lane<usize, M::Cache>, (usize, GenerateError)>>,
        on_event: &mut dyn FnMut(&usize, &Event) -> ControlFlow<()>,
    ) -> Vec<Result<Generation, GenerateError>> {
        let mut results: Vec<Option<Result<Generation, GenerateError>>> = (0..total).map(|_| None).collect();
        self.run_lanes(first, join, on_event, &mut |(i, result)| results[i] = Some(result));
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(uncopyable()))).collect()
    }

    /// One step of every lane: limits and rolls, one batched forward pass, the rest.
    /// A lane whose phase fails (or panics) keeps the error in `Lane::error`.
    fn batch_step<K>(&mut self, lanes: &mut [Lane<K, M::Cache>], logits: &mut Vec<f32>) {
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
    fn forward_lanes<K>(
        &mut self,
        lanes: &mut [Lane<K, M::Cache>],
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
    fn in_lane<K, T>(
        &mut self,
        lane: &mut Lane<K, M::Cache>,
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
    fn deliver<K>(
        &mut self,
        lane: &mut Lane<K, M::Cache>,
        on_event: &mut dyn FnMut(&K, &Event) -> ControlFlow<()>,
    ) -> Result<(), GenerateError> {
        while let Some(event) = lane.events.pop_front() {
            match panic::catch_unwind(AssertUnwindSafe(|| on_event(&lane.key, &event))) {
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
fn resync<K, C: KvCache>(lane: &mut Lane<K, C>) {
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
