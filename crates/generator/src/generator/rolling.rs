//! What rewrites a sequence: back steps, resumed turns (forgetting or restarting the
//! context) and context rolls. Each keeps the cache layout of [`Session`] and checks
//! the cache against it.

use std::collections::VecDeque;
use std::time::Instant;

use super::session::{Session, feed_chunks, model_err};
use super::{BackstepCause, ContextRoll, Event, Generator};
use crate::{GenerateError, KvCache, LanguageModel};

impl<M: LanguageModel> Generator<M> {
    /// Remove up to `n` generated tokens from the sequence and the cache; returns the
    /// number removed (clamped to the generated count and to the tokens after the last
    /// context roll, which are the only ones the cache can drop from its tail).
    pub(super) fn backstep(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        n: usize,
        cause: BackstepCause,
    ) -> Result<usize, GenerateError> {
        let generated = s.generated();
        let n = n.min(s.removable());
        let to = generated - n;
        s.tokens.truncate(s.tokens.len() - n);
        s.decoder.truncate_tokens(to);
        // The pending token (now the new last one) was fed already: drop it too, the
        // next step refeeds it. Cost: exactly the regenerated forward passes.
        s.cache.truncate(s.expected_cache_len())?;
        s.check_cache()?;
        let text_len = s.decoder.text().len();
        s.emitted = s.emitted.min(text_len);
        s.stop_scanned = s.stop_scanned.min(text_len);
        // Stateful processors saw the removed tokens: replay the survivors.
        self.chain.reset();
        for &t in &s.tokens[s.prompt_len..] {
            self.chain.accept(t);
        }
        self.strategy.on_backstep(n, to);
        s.counts.backsteps += 1;
        if cause == BackstepCause::Loop {
            s.counts.loop_backsteps += 1;
        }
        s.counts.tokens_removed += n;
        s.counts.generated_tokens = to - s.counts.resume_tokens;
        ev.push_back(Event::Backstep { from: generated, to, text_len: s.emitted, cause });
        Ok(n)
    }

    /// End the model's turn and open the next one ([`EosAction::Resume`]): append the
    /// resume tokens in place of the drawn EOS, feed all but the last (which becomes the
    /// pending token, as after any append), rolling the context first when they do not
    /// fit. The output gets `"\n\n"`. Returns the number of resume tokens.
    pub(super) fn resume(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
    ) -> Result<usize, GenerateError> {
        let ids = self.resume_ids(s)?;
        let t0 = Instant::now();
        let position = s.generated();
        let old_len = s.tokens.len();
        // After an EOS draw the step has fed the pending token; after a token action
        // (or a back step) the cache still lacks it.
        let from = if s.cache.seq_len() == s.expected_cache_len() { old_len - 1 } else { old_len };
        s.tokens.extend_from_slice(&ids);
        let k = ids.len();
        for (i, &t) in ids.iter().enumerate() {
            self.chain.accept(t);
            s.decoder.push(if i == 0 { &b"\n\n"[..] } else { &[][..] });
        }
        // The cache holds `tokens[..old_len]` (this step fed the pending token); it must
        // end up holding all but the new last token.
        let mut fed_new = old_len + k - 1 - from;
        // Forgetting keeps the prompt; a restart all of it but the last token, which is
        // its one resume token.
        let fresh = if self.resumes.restart {
            Some((old_len, s.prompt_len - 1))
        } else {
            self.resumes
                .forget
                .and_then(|recall| forget_start(s, old_len, k, recall))
                .map(|start| (start, s.prompt_len))
        };
        if let Some((start, head)) = fresh {
            fed_new = k - 1;
            self.forget_context(s, ev, start, head)?;
        } else if s.expected_cache_len() >= s.window {
            self.roll(s, ev)?;
        } else {
            self.feed(&mut s.cache, &s.tokens[from..old_len + k - 1])?;
        }
        s.check_cache()?;
        s.hidden.push(position..position + k);
        s.frozen = s.tokens.len();
        s.counts.resumes += 1;
        s.counts.resume_tokens += k;
        s.counts.prefill_tokens += fed_new;
        s.counts.generated_tokens = s.produced();
        s.timings.forward += t0.elapsed();
        self.strategy.on_resume(s.generated());
        ev.push_back(Event::Resumed { position, hidden: k });
        Ok(k)
    }

    /// The hidden tokens of a resumed turn: the prompt's last token again for a restart
    /// (fed after the prompt alone, it asks for a new answer), else the tokens rendered
    /// from this prompt (`reask`), else the generator's resume tokens.
    fn resume_ids(&self, s: &Session<M::Cache>) -> Result<Vec<u32>, GenerateError> {
        let restart = self.resumes.restart.then(|| vec![s.tokens[s.prompt_len - 1]]);
        restart
            .or_else(|| self.resumes.from_prompt.clone())
            .or_else(|| self.resumes.tokens.clone())
            .ok_or_else(|| GenerateError::InvalidStrategyAction {
                strategy: self.strategy.name(),
                action: "Resume: the generator has no resume tokens (it needs a tokenizer with a chat \
                         template, or GeneratorBuilder::resume_tokens)"
                    .to_owned(),
            })
    }

    /// Feed `tokens` to `cache` in prefill chunks (the last chunk's logits land in the
    /// logits buffer).
    fn feed(&mut self, cache: &mut M::Cache, tokens: &[u32]) -> Result<(), GenerateError> {
        feed_chunks(&self.model, cache, tokens, self.settings.prefill_chunk, &mut self.buffers.logits)
    }

    /// A resumed turn forgets ([`GeneratorBuilder::forget_on_resume`]) or restarts
    /// ([`GeneratorBuilder::restart_on_resume`]): the cache is cut back to the first
    /// `head` prompt tokens (the whole prompt when forgetting; all but its last token,
    /// appended again as the pending token, when restarting) and fed
    /// `tokens[start..len - 1]` (the recalled tokens and the resume tokens; nothing for
    /// a restart), which become its recent part. The prompt's entries are kept as they
    /// are (they never attended to what follows them) unless an earlier roll dropped
    /// part of them; then the cache is cleared and they are re-prefilled.
    fn forget_context(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
        start: usize,
        head: usize,
    ) -> Result<(), GenerateError> {
        let t0 = Instant::now();
        let len = s.tokens.len();
        let cached = s.cache.seq_len();
        // Fed before: what the cache held of `tokens[start..]`.
        let covered = (s.recent_start + cached).saturating_sub(s.sink_len).min(len - 1);
        let refed = covered.saturating_sub(start);
        // Cache positions `0..head` hold `tokens[..head]`: no roll yet (the cache holds
        // `tokens[..cached]`), or every roll kept at least them as its sink.
        let head_intact = cached >= head && (s.sink_len >= head || s.recent_start == s.sink_len);
        let mut reprefilled = refed;
        if head_intact {
            s.cache.truncate(head)?;
        } else {
            s.cache.clear();
            self.feed(&mut s.cache, &s.tokens[..head])?;
            reprefilled += head;
        }
        self.feed(&mut s.cache, &s.tokens[start..len - 1])?;
        let dropped = cached.saturating_sub(head + refed);
        rolled(s, ev, t0, (head, start), dropped, reprefilled)
    }

    /// The cache is full: keep the first `sink` tokens and the most recent ones, by a
    /// shift of the cache where the backend can ([`ContextRoll::Shift`]), else by
    /// re-prefilling them into the cleared cache (positions renumbered, as
    /// StreamingLLM).
    pub(super) fn roll(
        &mut self,
        s: &mut Session<M::Cache>,
        ev: &mut VecDeque<Event>,
    ) -> Result<(), GenerateError> {
        let t0 = Instant::now();
        let len = s.tokens.len();
        let sink = s.sink_cap.min(len - 1);
        // window >= 4 and sink <= window / 2, so 1 <= keep and sink + keep < window:
        // the pending token fits after the roll.
        let keep = ((s.window - sink) / 2).max(1).min(len - 1 - sink);
        let recent_start = len - 1 - keep;
        // The cache holds `tokens[..sink_len]` then `tokens[recent_start..covered]`
        // (`covered` is `len - 1` between steps, less when a resumed turn appended
        // tokens not fed yet).
        let cached = s.cache.seq_len();
        let covered = (s.recent_start + cached)
            .checked_sub(s.sink_len)
            .filter(|&c| cached >= s.sink_len && c < len)
            .unwrap_or(len - 1);
        // A shift needs the new sink tokens at cache positions 0..sink (they are unless
        // an earlier roll kept fewer) and drops the cache positions from `sink` to where
        // `tokens[recent_start]` sits; then feeds what the cache did not hold yet.
        let shift = (self.settings.context_roll == ContextRoll::Shift
            && cached >= s.sink_len
            && (sink <= s.sink_len || s.recent_start == s.sink_len)
            && s.recent_start <= recent_start
            && recent_start <= covered)
            .then(|| (sink, s.sink_len + (recent_start - s.recent_start) - sink));
        let shifted = match shift {
            Some((start, n)) => self.model.shift_cache(&mut s.cache, start, n).map_err(model_err)?,
            None => false,
        };
        let mut reprefilled = 0;
        if shifted {
            if covered < len - 1 {
                self.feed(&mut s.cache, &s.tokens[covered..len - 1])?;
            }
        } else {
            s.cache.clear();
            self.feed(&mut s.cache, &s.tokens[..sink])?;
            self.feed(&mut s.cache, &s.tokens[recent_start..len - 1])?;
            // Tokens fed again (not those a resumed turn appended and never fed).
            reprefilled = sink + covered.saturating_sub(recent_start);
        }
        rolled(s, ev, t0, (sink, recent_start), recent_start - sink, reprefilled)
    }
}

/// Finish a context roll (or a forgetting resume): the new cache layout `(sink_len,
/// recent_start)`, checked against the cache; counts, time and the event.
fn rolled<C: KvCache>(
    s: &mut Session<C>,
    ev: &mut VecDeque<Event>,
    t0: Instant,
    (sink_len, recent_start): (usize, usize),
    dropped: usize,
    reprefilled: usize,
) -> Result<(), GenerateError> {
    s.sink_len = sink_len;
    s.recent_start = recent_start;
    s.check_cache()?;
    let expected = s.expected_cache_len();
    let took = t0.elapsed();
    s.counts.context_rolls += 1;
    s.counts.reprefilled_tokens += reprefilled;
    s.timings.roll += took;
    ev.push_back(Event::ContextRolled { dropped, kept: expected, reprefilled, took });
    Ok(())
}

/// Where the recent part of a forgetting resume starts ([`Generator::forget_context`]):
/// the `recall` tokens before the `k` resume tokens just appended (never the prompt),
/// shortened to fit the context window with the prompt; `None` when even the prompt
/// and the resume tokens do not fit (the resume then rolls as usual).
fn forget_start<C: KvCache>(s: &Session<C>, old_len: usize, k: usize, recall: usize) -> Option<usize> {
    // After the roll the cache holds the prompt, the recalled tokens and all but the
    // last resume token; the pending token needs one more position.
    let room = s.window.checked_sub(s.prompt_len + k + 1)?;
    Some(old_len - recall.min(room).min(old_len - s.prompt_len))
}
