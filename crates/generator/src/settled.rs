//! [`SettledText`]: the part of a streamed generation that back steps can no longer
//! take back, for consumers that cannot retract what they showed (a terminal, an
//! OpenAI-style event stream).

use std::collections::VecDeque;

use crate::{EosMethod, Event, PerpetualMode};

/// Accumulates a generation's [`Event`]s and releases its text only once it lies more
/// than `holdback` tokens behind the newest token: a back step removes recent tokens,
/// so text held back that long is, in practice, final. Each token can carry a payload
/// `T` (its log-probabilities, say), released with its text.
///
/// With `holdback = 0` (a generation without back steps) every token's text is
/// released at once. A back step that reaches into released text cannot be undone:
/// [`retracted`](Self::retracted) counts the bytes that were shown and then removed.
///
/// ```
/// use perpetua_generator::{BackstepCause, Event, SettledText};
///
/// let token = |index, text: &str| Event::Token { index, id: 0, text: text.into(), logprob: 0.0, top: vec![] };
/// let mut settled = SettledText::<()>::new(2);
/// assert_eq!(settled.push(&token(0, "a"), ()), ("".to_string(), vec![]));
/// settled.push(&token(1, "b"), ());
/// assert_eq!(settled.push(&token(2, "c"), ()).0, "a"); // "a" is 2 tokens behind
/// // A back step removes "b" and "c": never shown.
/// let back = Event::Backstep { from: 3, to: 1, text_len: 1, cause: BackstepCause::Eos };
/// settled.push(&back, ());
/// settled.push(&token(1, "x"), ());
/// let end = Event::Finished { reason: perpetua_generator::FinishReason::MaxNewTokens, text: String::new() };
/// assert_eq!(settled.push(&end, ()).0, "x");
/// assert_eq!(settled.text(), "ax");
/// assert_eq!(settled.retracted(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct SettledText<T> {
    holdback: usize,
    text: String,
    /// Tokens not yet released: generated index, text end after it, payload.
    pending: VecDeque<(usize, usize, T)>,
    released: usize,
    retracted: usize,
}

impl<T> SettledText<T> {
    /// Release a token's text once `holdback` newer tokens follow it.
    pub fn new(holdback: usize) -> Self {
        Self { holdback, text: String::new(), pending: VecDeque::new(), released: 0, retracted: 0 }
    }

    /// The holdback a generation in `mode` needs (`None`: no perpetual mode, no back
    /// steps: 0): four back steps of methods 3 and 4 (at least 16 tokens; back steps can
    /// follow one another), 64 tokens with loop or staleness detection (loop back steps
    /// remove a repeat, 12–64 tokens by default), and a stale back step's rewind reach.
    pub fn holdback_for(mode: Option<&PerpetualMode>) -> usize {
        let Some(mode) = mode else { return 0 };
        let mut tokens = 0;
        if matches!(mode.method, EosMethod::Backstep | EosMethod::Dynamic) {
            tokens = mode.backstep.unwrap_or(perpetua_perpetual::DEFAULT_BACKSTEP).saturating_mul(4).max(16);
        }
        if mode.loop_detection.is_some() || mode.staleness.is_some() {
            tokens = tokens.max(64);
        }
        if let Some(stale) = &mode.staleness {
            tokens = tokens.max(stale.rewind.saturating_add(stale.backstep));
        }
        tokens
    }

    /// Take in one event; returns the text released by it (and the payloads of the
    /// tokens it completes). [`Event::Finished`] releases everything.
    pub fn push(&mut self, event: &Event, payload: T) -> (String, Vec<T>) {
        match event {
            Event::Token { index, text, .. } => {
                self.text.push_str(text);
                self.pending.push_back((*index, self.text.len(), payload));
                self.release(self.holdback)
            }
            Event::Backstep { to, text_len, .. } => {
                while self.pending.back().is_some_and(|(index, ..)| index >= to) {
                    self.pending.pop_back();
                }
                let keep = (*text_len).min(self.text.len());
                self.text.truncate(keep);
                if keep < self.released {
                    self.retracted += self.released - keep;
                    self.released = keep;
                }
                (String::new(), Vec::new())
            }
            Event::Finished { text, .. } => {
                self.text.push_str(text);
                let (mut released, payloads) = self.release(0);
                if self.released < self.text.len() {
                    released.push_str(&self.text[self.released..]);
                    self.released = self.text.len();
                }
                (released, payloads)
            }
            _ => (String::new(), Vec::new()),
        }
    }

    fn release(&mut self, keep: usize) -> (String, Vec<T>) {
        let mut payloads = Vec::new();
        let mut end = self.released;
        while self.pending.len() > keep {
            let Some((_, token_end, payload)) = self.pending.pop_front() else { break };
            end = end.max(token_end.min(self.text.len()));
            payloads.push(payload);
        }
        let released = self.text.get(self.released..end).unwrap_or_default().to_string();
        self.released = self.released.max(end);
        (released, payloads)
    }

    /// The text so far (released or not), after back steps.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Bytes released and later removed by a back step that reached past the holdback.
    pub fn retracted(&self) -> usize {
        self.retracted
    }
}
