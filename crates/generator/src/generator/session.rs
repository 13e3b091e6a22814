//! Opening a generation (encode, cache, window, prefill: one path for the sampling loop
//! and the decoders) and the state of one sequence being generated.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use super::builder::resume_tokens_from_template;
use super::{Counts, Event, FinishReason, Generation, Generator, Prompt, StepTrace, Timings};
use crate::{GenerateError, IncrementalDecoder, KvCache, LanguageModel};

/// The state of one sequence being generated.
pub(super) struct Session<C> {
    pub(super) cache: C,
    /// Prompt followed by generated tokens. The last one is *pending*: not yet fed.
    pub(super) tokens: Vec<u32>,
    pub(super) prompt_len: usize,
    pub(super) window: usize,
    pub(super) sink_cap: usize,
    /// Cache layout: `tokens[..sink_len]` then `tokens[recent_start..len - 1]`, so
    /// `cache.seq_len() == sink_len + (len - 1 - recent_start)` between steps.
    pub(super) sink_len: usize,
    pub(super) recent_start: usize,
    pub(super) rng: ChaCha8Rng,
    pub(super) decoder: IncrementalDecoder,
    /// Bytes of `decoder.text()` streamed so far.
    pub(super) emitted: usize,
    /// Text length at the last stop-string search.
    pub(super) stop_scanned: usize,
    /// End of the output text once a stop string matched.
    pub(super) text_end: Option<usize>,
    pub(super) temperature: f32,
    pub(super) base_temperature: f32,
    pub(super) counts: Counts,
    pub(super) timings: Timings,
    pub(super) trace: Option<Vec<StepTrace>>,
    pub(super) started: Instant,
    pub(super) decode_started: Instant,
    pub(super) finish: Option<FinishReason>,
    /// Generated-index ranges of hidden resume tokens (in `tokens`, not in the output).
    pub(super) hidden: Vec<std::ops::Range<usize>>,
    /// `tokens[..frozen]` cannot be removed by a back step (the last resume's end).
    pub(super) frozen: usize,
}

impl<C: KvCache> Session<C> {
    /// Generated tokens in the sequence, hidden resume tokens included: the index space
    /// of strategies, events and the trace.
    pub(super) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Generated tokens of the output (hidden resume tokens left out): what
    /// `max_new_tokens` and `min_new_tokens` count.
    pub(super) fn produced(&self) -> usize {
        // Hidden tokens are frozen against back steps, so every one fed is still there.
        self.generated() - self.counts.resume_tokens
    }

    /// Generated tokens a back step can remove: all of them, except that after a
    /// context roll the cache can only drop what was fed since (`tokens.len() - 1 >=
    /// recent_start` always: the pending token is never in the cache).
    pub(super) fn removable(&self) -> usize {
        (self.tokens.len() - 1 - self.recent_start).min(self.tokens.len() - self.frozen.max(self.prompt_len))
    }

    /// Cache length the feeding scheme requires between steps.
    pub(super) fn expected_cache_len(&self) -> usize {
        self.sink_len + (self.tokens.len() - 1 - self.recent_start)
    }

    /// End the session with `source` as the reason: the
    /// [`PartialGeneration`](GenerateError::PartialGeneration) error carrying the
    /// output so far.
    pub(super) fn fail(&mut self, source: GenerateError) -> GenerateError {
        self.finish = Some(FinishReason::Error);
        self.timings.decode = self.decode_started.elapsed();
        GenerateError::PartialGeneration { output: Box::new(self.output()), source: Box::new(source) }
    }

    /// The feeding scheme's invariant: the cache holds what [`expected_cache_len`]
    /// says ([`GenerateError::CacheOutOfSync`] otherwise).
    ///
    /// [`expected_cache_len`]: Self::expected_cache_len
    pub(super) fn check_cache(&self) -> Result<(), GenerateError> {
        let (cache_len, expected) = (self.cache.seq_len(), self.expected_cache_len());
        if cache_len != expected {
            return Err(GenerateError::CacheOutOfSync { cache_len, expected });
        }
        Ok(())
    }

    pub(super) fn output(&self) -> Generation {
        let text = self.decoder.text();
        let end = self.text_end.unwrap_or(text.len()).min(text.len());
        Generation {
            text: text[..end].to_owned(),
            ids: visible_ids(&self.tokens[self.prompt_len..], &self.hidden),
            prompt_len: self.prompt_len,
            finish_reason: self.finish.clone().unwrap_or(FinishReason::Cancelled),
            counts: self.counts,
            timings: self.timings,
            trace: self.trace.clone(),
        }
    }
}

/// `ids` without the generated-index ranges in `hidden`.
fn visible_ids(ids: &[u32], hidden: &[std::ops::Range<usize>]) -> Vec<u32> {
    if hidden.is_empty() {
        return ids.to_vec();
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut from = 0;
    for r in hidden {
        out.extend_from_slice(&ids[from.min(ids.len())..r.start.min(ids.len())]);
        from = r.end;
    }
    out.extend_from_slice(&ids[from.min(ids.len())..]);
    out
}

pub(crate) fn model_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> GenerateError {
    GenerateError::Model(Box::new(e))
}

/// Feed `tokens` in chunks of `chunk` (logits of the last chunk land in `logits`).
pub(crate) fn feed_chunks<M: LanguageModel>(
    model: &M,
    cache: &mut M::Cache,
    tokens: &[u32],
    chunk: usize,
    logits: &mut Vec<f32>,
) -> Result<(), GenerateError> {
    for c in tokens.chunks(chunk) {
        model.forward(c, cache, logits).map_err(model_err)?;
    }
    Ok(())
}

/// How [`Generator::open`] feeds the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// The sampling loop: every prompt token but the last (the first step feeds it);
    /// with `reask`, this generation's resume tokens are rendered from the prompt.
    AllButLast,
    /// A decoder ([`crate::decoding`]), which does not roll: the window is capped at
    /// `limit` too (another model's window) and must leave at least one new position;
    /// `all` feeds every prompt token (the logits of the last are kept), else all but
    /// the last.
    Decoder { all: bool, limit: Option<usize> },
}

/// A prompt opened for generation ([`Generator::open`]).
pub(crate) struct Opened<C> {
    pub(crate) ids: Vec<u32>,
    pub(crate) cache: C,
    pub(crate) at: Opening,
}

/// What a session needs to know of the opening besides the ids and the cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opening {
    /// The context window.
    pub(crate) window: usize,
    /// Time the prefill took.
    pub(crate) prefill: Duration,
    /// When the generation started (`max_time` counts from here).
    pub(crate) started: Instant,
}

impl<M: LanguageModel> Generator<M> {
    /// What every generation starts with, for the sampling loop and the decoders alike:
    /// the prompt encoded, a new cache, the window checked, the prompt prefilled as
    /// `feed` says (a panic in the model becomes [`GenerateError::Panicked`]
    /// `"prefill"`). The logits of the last token fed are in the logits buffer.
    ///
    /// Errors: prompt errors ([`encode_prompt`](Self::encode_prompt)), an invalid
    /// window, a prompt longer than the window, model errors in the prefill.
    pub(crate) fn open(&mut self, prompt: Prompt, feed: Feed) -> Result<Opened<M::Cache>, GenerateError> {
        let started = Instant::now();
        let ids = match feed {
            Feed::AllButLast => self.start_prompt(prompt)?,
            Feed::Decoder { .. } => self.encode_prompt(prompt)?,
        };
        let mut cache = self.model.new_cache().map_err(model_err)?;
        let mut window = self.window_for(&cache, ids.len())?;
        let fed = match feed {
            Feed::AllButLast => ids.len() - 1,
            Feed::Decoder { all, limit } => {
                window = window.min(limit.unwrap_or(usize::MAX));
                // Prompt plus at least one new position.
                if ids.len() >= window {
                    return Err(GenerateError::PromptTooLong { len: ids.len(), window });
                }
                if all { ids.len() } else { ids.len() - 1 }
            }
        };
        let t0 = Instant::now();
        let (model, chunk, logits) = (&self.model, self.settings.prefill_chunk, &mut self.buffers.logits);
        logits.clear();
        panic::catch_unwind(AssertUnwindSafe(|| feed_chunks(model, &mut cache, &ids[..fed], chunk, logits)))
            .unwrap_or_else(|payload| Err(GenerateError::from_panic("prefill", payload)))?;
        Ok(Opened { ids, cache, at: Opening { window, prefill: t0.elapsed(), started } })
    }

    /// The logits the last forward pass wrote (after [`open`](Self::open) with
    /// [`Feed::Decoder`] `{ all: true, .. }`: those of the last prompt token).
    pub(crate) fn last_logits(&self) -> &[f32] {
        &self.buffers.logits
    }

    /// The context window of a generation whose prompt has `prompt_len` tokens: the
    /// configured one (default: the cache capacity and the model's `max_context`,
    /// whichever is smaller), narrowed by a perpetual mode's window.
    fn window_for(&self, cache: &M::Cache, prompt_len: usize) -> Result<usize, GenerateError> {
        let limit = cache.capacity().min(self.model.max_context());
        let window = match self.settings.context_window {
            Some(w) if w > limit => {
                return Err(GenerateError::invalid(
                    "context_window",
                    w,
                    "must be <= the cache capacity and the model's max_context",
                ));
            }
            Some(w) => w,
            None => limit,
        };
        let window = self.resumes.mode_window.map_or(window, |m| window.min(m));
        if window < 4 {
            return Err(GenerateError::invalid("context_window", window, "must be >= 4"));
        }
        if prompt_len > window {
            return Err(GenerateError::PromptTooLong { len: prompt_len, window });
        }
        Ok(window)
    }

    /// The prompt's ids for a new generation; with `reask`, also this generation's
    /// resume tokens, rendered from the chat prompt's last user message.
    fn start_prompt(&mut self, prompt: Prompt) -> Result<Vec<u32>, GenerateError> {
        self.resumes.from_prompt = None;
        if self.resumes.reask
            && let (Prompt::Chat(messages), Some(tok)) = (&prompt, self.tokenizer.as_deref())
            && let Some(request) = messages.iter().rev().find(|m| m.role == "user")
        {
            self.resumes.from_prompt = resume_tokens_from_template(tok, &request.content)?;
        }
        self.encode_prompt(prompt)
    }

    /// The session of one sequence over an opened prompt (`ids` and `cache` are the
    /// opened ones, or a fork of them): chain and strategy reset, the RNG on the seed's
    /// ChaCha stream `stream`.
    pub(super) fn start_session(
        &mut self,
        ids: Vec<u32>,
        cache: M::Cache,
        at: Opening,
        stream: u64,
    ) -> Session<M::Cache> {
        self.chain.reset();
        self.strategy.reset();
        // A temperature override from the EOS strategy needs a temperature stage.
        self.chain.ensure_temperature_stage();
        let base_temperature = self.chain.base_temperature();
        let mut rng = ChaCha8Rng::seed_from_u64(self.settings.seed);
        rng.set_stream(stream);
        let prompt_len = ids.len();
        let window = at.window;
        Session {
            cache,
            tokens: ids,
            prompt_len,
            window,
            sink_cap: self.settings.sink_tokens.unwrap_or(prompt_len).min(window / 2),
            sink_len: 0,
            recent_start: 0,
            rng,
            decoder: IncrementalDecoder::new(),
            emitted: 0,
            stop_scanned: 0,
            text_end: None,
            temperature: base_temperature,
            base_temperature,
            counts: Counts { prompt_tokens: prompt_len, prefill_tokens: prompt_len - 1, ..Counts::default() },
            timings: Timings { prefill: at.prefill, ..Timings::default() },
            trace: self.settings.trace.then(Vec::new),
            started: at.started,
            decode_started: Instant::now(),
            finish: None,
            hidden: Vec::new(),
            frozen: 0,
        }
    }

    /// End the session with `reason`: the text still held back is released with the
    /// [`Event::Finished`] event.
    pub(super) fn finish(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        reason: FinishReason,
    ) {
        let end = match s.text_end {
            Some(end) => end,
            None => {
                s.decoder.finish();
                s.decoder.text().len()
            }
        };
        let text = s.decoder.text();
        let rest = if end > s.emitted { text[s.emitted..end].to_owned() } else { String::new() };
        s.emitted = s.emitted.max(end);
        s.timings.decode = s.decode_started.elapsed();
        s.finish = Some(reason.clone());
        ev.push_back(Event::Finished { reason, text: rest });
    }
}
