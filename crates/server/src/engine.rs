//! The generation thread: one [`Generator`] serving every request through
//! [`Generator::generate_continuous`] (continuous batching: requests share forward
//! passes, joining and leaving the batch as they come and finish), fed by a bounded
//! queue. Each request's updates go back through its own channel; a request whose
//! channel is closed (the client went away) is cancelled at its next event.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;

use perpetua_generator::{
    BatchRequest, Event, FinishReason, GenerateError, Generation, Generator, LanguageModel, Prompt,
    SequenceOptions, SettledText,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// One token's log-probabilities: its own and its best alternatives (raw distribution).
#[derive(Debug, Clone)]
pub(crate) struct TokenInfo {
    pub(crate) id: u32,
    pub(crate) logprob: f32,
    pub(crate) top: Vec<(u32, f32)>,
}

/// A finished choice.
#[derive(Debug)]
pub(crate) struct Finished {
    /// OpenAI's `finish_reason`: `stop`, `length`; `error` when generation failed midway
    /// (the text is what was produced).
    pub(crate) reason: &'static str,
    pub(crate) text: String,
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    /// The kept tokens' log-probabilities (when asked).
    pub(crate) tokens: Vec<TokenInfo>,
    /// Why generation stopped early (with `reason = "error"`).
    pub(crate) error: Option<String>,
}

/// What the generation thread sends a request's handler.
#[derive(Debug)]
pub(crate) enum Update {
    /// Text of choice `choice` that no back step will take back, with its tokens.
    Delta { choice: usize, text: String, tokens: Vec<TokenInfo> },
    /// Choice `choice` finished (`Err`: it could not start).
    Done { choice: usize, result: Result<Finished, String> },
}

/// A request waiting for the generation thread.
pub(crate) struct Job {
    pub(crate) prompt: Prompt,
    pub(crate) options: SequenceOptions,
    pub(crate) n: usize,
    pub(crate) stream: bool,
    pub(crate) logprobs: bool,
    pub(crate) tx: mpsc::UnboundedSender<Update>,
}

/// What a sequence's key carries: its request's channel and how to report.
struct Shared {
    id: u64,
    stream: bool,
    logprobs: bool,
    holdback: usize,
    tx: mpsc::UnboundedSender<Update>,
}

type Key = (Arc<Shared>, usize);

/// A running choice's text and tokens.
struct LaneText {
    settled: SettledText<Option<TokenInfo>>,
    tokens: Vec<TokenInfo>,
}

/// The server's counters (`GET /stats`).
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) received: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) tokens: AtomicU64,
    pub(crate) retracted_bytes: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Generation requests accepted into the queue.
    pub received: u64,
    /// Requests answered 503 because the queue was full.
    pub rejected: u64,
    /// Requests waiting for a place in the batch.
    pub queued: u64,
    /// Sequences (choices) generating now.
    pub running: u64,
    /// Choices finished normally.
    pub completed: u64,
    /// Choices cancelled because their client went away.
    pub cancelled: u64,
    /// Choices that failed (their partial output was answered).
    pub failed: u64,
    /// Tokens generated, back-stepped ones included.
    pub tokens: u64,
    /// Streamed text bytes a back step took back after they were sent (a back step
    /// reaching past the stream's holdback).
    pub retracted_bytes: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            received: get(&self.received),
            rejected: get(&self.rejected),
            queued: get(&self.queued),
            running: get(&self.running),
            completed: get(&self.completed),
            cancelled: get(&self.cancelled),
            failed: get(&self.failed),
            tokens: get(&self.tokens),
            retracted_bytes: get(&self.retracted_bytes),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn drop_one(a: &AtomicU64) {
    // Never below zero, whatever the order of updates.
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
}

/// OpenAI's `finish_reason` of a generation.
fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::MaxNewTokens | FinishReason::MaxTime => "length",
        FinishReason::Error => "error",
        _ => "stop",
    }
}

/// Serve jobs from `rx` until every sender is gone: the generation thread's body.
pub(crate) fn run<M: LanguageModel>(
    mut generator: Generator<M>,
    rx: std_mpsc::Receiver<Job>,
    stats: Arc<Stats>,
) {
    let mut pending: VecDeque<BatchRequest<Key>> = VecDeque::new();
    let mut next_id = 0_u64;
    let lanes: RefCell<HashMap<(u64, usize), LaneText>> = RefCell::new(HashMap::new());
    let next = |idle: bool| -> Option<BatchRequest<Key>> {
        loop {
            if let Some(request) = pending.pop_front() {
                if request.key.0.tx.is_closed() {
                    bump(&stats.cancelled);
                    continue;
                }
                bump(&stats.running);
                return Some(request);
            }
            let job = if idle { rx.recv().ok()? } else { rx.try_recv().ok()? };
            drop_one(&stats.queued);
            next_id += 1;
            let holdback = SettledText::<()>::holdback_for(job.options.perpetual.as_ref());
            let shared = Arc::new(Shared {
                id: next_id,
                stream: job.stream,
                logprobs: job.logprobs,
                holdback,
                tx: job.tx,
            });
            for choice in 0..job.n {
                let options = match job.options.try_clone() {
                    Some(o) => o.stream(choice as u64),
                    None => {
                        let _ = shared.tx.send(Update::Done {
                            choice,
                            result: Err("the request's sampling chain cannot be copied".into()),
                        });
                        continue;
                    }
                };
                pending.push_back(
                    BatchRequest::new((Arc::clone(&shared), choice), job.prompt.clone())
                        .with_options(options),
                );
            }
        }
    };
    let on_event = |key: &Key, event: &Event| -> ControlFlow<()> {
        let (shared, choice) = (&key.0, key.1);
        if shared.tx.is_closed() {
            return ControlFlow::Break(());
        }
        let info = match event {
            Event::Token { id, logprob, top, .. } => {
                bump(&stats.tokens);
                Some(TokenInfo {
                    id: *id,
                    logprob: *logprob,
                    top: top.iter().map(|a| (a.id, a.logprob)).collect(),
                })
            }
            _ => None,
        };
        let mut lanes = lanes.borrow_mut();
        let lane = lanes
            .entry((shared.id, choice))
            .or_insert_with(|| LaneText { settled: SettledText::new(shared.holdback), tokens: Vec::new() });
        match (event, &info) {
            (Event::Token { index, .. }, Some(info)) if shared.logprobs && !shared.stream => {
                lane.tokens.truncate(*index);
                lane.tokens.push(info.clone());
            }
            (Event::Backstep { to, .. }, _) => lane.tokens.truncate(*to),
            _ => {}
        }
        if shared.stream {
            let before = lane.settled.retracted();
            let (text, tokens) = lane.settled.push(event, info);
            let retracted = lane.settled.retracted() - before;
            if retracted > 0 {
                stats.retracted_bytes.fetch_add(retracted as u64, Ordering::Relaxed);
            }
            let tokens: Vec<TokenInfo> =
                if shared.logprobs { tokens.into_iter().flatten().collect() } else { Vec::new() };
            if !text.is_empty() || !tokens.is_empty() {
                let _ = shared.tx.send(Update::Delta { choice, text, tokens });
            }
        }
        ControlFlow::Continue(())
    };
    let on_done = |key: Key, result: Result<Generation, GenerateError>| {
        let (shared, choice) = (&key.0, key.1);
        let lane = lanes.borrow_mut().remove(&(shared.id, choice));
        let tokens = lane.map(|l| l.tokens).unwrap_or_default();
        let finished = match result {
            Ok(g) if g.finish_reason == FinishReason::Cancelled => {
                drop_one(&stats.running);
                bump(&stats.cancelled);
                return;
            }
            Ok(g) => {
                drop_one(&stats.running);
                bump(&stats.completed);
                Ok(Finished {
                    reason: finish_reason(&g.finish_reason),
                    prompt_tokens: g.prompt_len,
                    completion_tokens: g.ids.len(),
                    text: g.text,
                    tokens,
                    error: None,
                })
            }
            Err(e) => {
                let message = match &e {
                    GenerateError::PartialGeneration { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                match e.partial_output() {
                    Some(g) => {
                        drop_one(&stats.running);
                        bump(&stats.failed);
                        tracing::warn!(request = shared.id, choice, "generation failed midway: {message}");
                        Ok(Finished {
                            reason: "error",
                            prompt_tokens: g.prompt_len,
                            completion_tokens: g.ids.len(),
                            text: g.text.clone(),
                            tokens,
                            error: Some(message),
                        })
                    }
                    // It never started (a prompt too long, an invalid option).
                    None => {
                        drop_one(&stats.running);
                        Err(message)
                    }
                }
            }
        };
        let _ = shared.tx.send(Update::Done { choice, result: finished });
    };
    generator.generate_continuous(next, on_event, on_done);
    tracing::info!("generation thread: every request channel closed, stopping");
}
