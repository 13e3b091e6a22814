//! [`Stream`] and [`OwnedStream`]: the event iterator that drives the decode steps of
//! one generation, borrowing its generator or owning it (`'static`, for async code:
//! [`OwnedStream::into_async`] with the `tokio` feature).

use std::borrow::BorrowMut;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};

use super::session::Session;
use super::{Event, FinishReason, Generation, Generator};
use crate::{GenerateError, KvCache, LanguageModel};

/// The event stream of one generation, over a generator it borrows ([`Stream`],
/// from [`Generator::stream`]) or owns ([`OwnedStream`], from
/// [`Generator::into_stream`]).
///
/// Yields `Ok(event)` until [`Event::Finished`]; an error yields one
/// `Err(GenerateError::PartialGeneration { .. })` and ends the stream. Dropping the
/// stream cancels generation.
pub struct StreamOf<G, M: LanguageModel> {
    generator: G,
    session: Session<M::Cache>,
    queue: VecDeque<Event>,
    done: bool,
    model: PhantomData<fn() -> M>,
}

/// The event stream of one generation over a borrowed generator ([`Generator::stream`]).
pub type Stream<'g, M> = StreamOf<&'g mut Generator<M>, M>;

/// The event stream of one generation that owns its generator
/// ([`Generator::into_stream`]): `'static` when the model is, so it can move into a
/// thread or a task; [`into_parts`](StreamOf::into_parts) gives the generator back.
pub type OwnedStream<M> = StreamOf<Generator<M>, M>;

impl<G: BorrowMut<Generator<M>>, M: LanguageModel> StreamOf<G, M> {
    pub(super) fn new(generator: G, session: Session<M::Cache>) -> Self {
        Self { generator, session, queue: VecDeque::new(), done: false, model: PhantomData }
    }

    /// Finish now with reason `Cancelled` (the `Finished` event is still yielded).
    /// No-op once finished.
    pub fn cancel(&mut self) {
        if self.session.finish.is_none() {
            self.generator.borrow_mut().finish(&mut self.session, &mut self.queue, FinishReason::Cancelled);
            self.done = true;
        }
    }

    /// Whether generation has finished (events may still be queued).
    pub fn is_finished(&self) -> bool {
        self.session.finish.is_some()
    }

    /// Generated token ids so far, in the generated-index space of events (hidden
    /// resume tokens of resumed turns included; [`Generation::ids`] leaves them out).
    pub fn generated_ids(&self) -> &[u32] {
        &self.session.tokens[self.session.prompt_len..]
    }

    /// The cache's current length (between steps it is the sequence length minus the
    /// pending token, or less after a context roll).
    pub fn cache_len(&self) -> usize {
        self.session.cache.seq_len()
    }

    /// The sequence length (prompt + generated).
    pub fn sequence_len(&self) -> usize {
        self.session.tokens.len()
    }

    /// The whole sequence so far: prompt then generated tokens.
    pub fn sequence(&self) -> &[u32] {
        &self.session.tokens
    }

    /// The KV cache (read-only): between steps it holds the sequence minus its last,
    /// pending token — after a context roll, the sink tokens then the recent ones.
    pub fn cache(&self) -> &M::Cache {
        &self.session.cache
    }

    /// End the session with `source` as the reason: the
    /// [`PartialGeneration`](GenerateError::PartialGeneration) error carrying the
    /// output so far.
    pub(super) fn fail(&mut self, source: GenerateError) -> GenerateError {
        self.queue.clear();
        self.done = true;
        self.session.fail(source)
    }

    /// The result; an unfinished stream is cancelled first.
    pub fn into_output(mut self) -> Generation {
        self.cancel();
        self.session.output()
    }

    /// The generator (or the borrow of it) and the result; an unfinished stream is
    /// cancelled first.
    pub fn into_parts(mut self) -> (G, Generation) {
        self.cancel();
        let output = self.session.output();
        (self.generator, output)
    }
}

impl<G: BorrowMut<Generator<M>>, M: LanguageModel> Iterator for StreamOf<G, M> {
    type Item = Result<Event, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            // Panics in code the step calls (backend, custom stages, strategy) are caught
            // here so the output so far survives; the session ends with it.
            let step = panic::catch_unwind(AssertUnwindSafe(|| {
                self.generator.borrow_mut().step(&mut self.session, &mut self.queue)
            }))
            .unwrap_or_else(|payload| Err(GenerateError::from_panic("decode step", payload)));
            if let Err(source) = step {
                // Events of the failed step are dropped; the output keeps every token
                // accepted before it.
                return Some(Err(self.fail(source)));
            }
            if self.session.finish.is_some() {
                self.done = true;
            }
        }
    }
}
