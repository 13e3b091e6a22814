//! A perpetual generation served as Server-Sent Events by axum, on the generator's
//! owned async stream (`OwnedStream::into_async`, feature `tokio` of `perpetua`): the
//! prompt is prefilled on a blocking thread (`spawn_blocking`), the generation runs on
//! its own thread, the async side only forwards its events, and a client that
//! disconnects stops the generation at its next token.
//!
//! ```text
//! cargo run --release -p perpetua-examples --example axum_sse -- [PORT]
//! curl -N 'http://127.0.0.1:3000/generate?prompt=Tell+me+a+story&tokens=2000'
//! ```
//! Defaults: port 3000 on 127.0.0.1, 256 tokens (at most 8,192). Needs the model
//! (`cargo xtask fetch-model`).
//!
//! Events, one JSON object each: `token` (`{"index", "id", "text"}`), `backstep`
//! (`{"text_len", "cause"}`: the text streamed so far is cut back to `text_len` bytes,
//! then regenerated), `eos_avoided`, `finished` (`{"reason", "text"}`). The one
//! generator is lent to one request at a time (a second gets 503): a request takes it
//! out of the slot, and when the stream ends — finished, or dropped by axum because
//! the client went away — the generator goes back with the result
//! (`AsyncStream::join`); a generation thread that panics takes it along, and later
//! requests get a 500 saying so. For many requests sharing forward passes, see
//! `perpetua serve` (crates/server), built on `Generator::generate_continuous`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, KeepAliveStream, Sse};
use axum::routing::get;
use axum::{Json, Router};
use perpetua::generator::{AsyncStream, Event, Generation};
use perpetua::prelude::*;

/// The most tokens one request may ask for.
pub const MAX_TOKENS: usize = 8192;

/// The generator's place between requests.
enum Slot {
    Free(Box<Generator<Llama>>),
    /// Lent to a running generation.
    Lent,
    /// Gone with a generation thread that panicked (or could not start): every later
    /// request gets a 500 saying so, not a 503 that would never clear.
    Lost,
}

/// What the handlers share: the generator when it is free, and what to do with each
/// finished (or cancelled) generation.
#[derive(Clone)]
pub struct AppState {
    slot: Arc<Mutex<Slot>>,
    on_done: Arc<dyn Fn(&Generation) + Send + Sync>,
}

impl AppState {
    /// Serve `generator`; `on_done` sees every generation once its thread has ended
    /// and the generator is back (so a client told of the end can send the next request).
    pub fn new(generator: Generator<Llama>, on_done: impl Fn(&Generation) + Send + Sync + 'static) -> Self {
        Self { slot: Arc::new(Mutex::new(Slot::Free(Box::new(generator)))), on_done: Arc::new(on_done) }
    }

    /// The slot, whatever a panicking holder left (its state is a plain enum).
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put_back(&self, generator: Generator<Llama>) {
        *self.slot() = Slot::Free(Box::new(generator));
    }
}

/// `GET /generate?prompt=…&tokens=…`.
#[derive(serde::Deserialize)]
pub struct Params {
    prompt: String,
    tokens: Option<usize>,
}

/// The router: `GET /generate` streams one generation as Server-Sent Events.
pub fn app(state: AppState) -> Router {
    Router::new().route("/generate", get(generate)).with_state(state)
}

type Refusal = (StatusCode, Json<serde_json::Value>);

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Refusal {
    (status, Json(serde_json::json!({ "error": message.to_string() })))
}

async fn generate(
    State(state): State<AppState>,
    Query(params): Query<Params>,
) -> Result<Sse<KeepAliveStream<Events>>, Refusal> {
    let tokens = params.tokens.unwrap_or(256);
    if !(1..=MAX_TOKENS).contains(&tokens) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("tokens = {tokens}: must be in 1..={MAX_TOKENS}"),
        ));
    }
    let generator = match std::mem::replace(&mut *state.slot(), Slot::Lent) {
        Slot::Free(generator) => generator,
        Slot::Lent => return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "busy: one generation at a time")),
        Slot::Lost => {
            *state.slot() = Slot::Lost;
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the generator was lost with a panicked generation",
            ));
        }
    };
    // Encoding and prefilling the prompt is model work: off the runtime's workers. The
    // closure's result owns the generator through `Events`, whose drop puts it back —
    // also when this handler is cancelled (the client left) while the prefill runs.
    let state_for_prefill = state.clone();
    let events =
        tokio::task::spawn_blocking(move || start(generator, params.prompt, tokens, state_for_prefill))
            .await
            .map_err(|e| {
                *state.slot() = Slot::Lost;
                refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("the prefill panicked: {e}"))
            })??;
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Encode and prefill `prompt`, start the generation thread: the SSE body.
fn start(
    mut generator: Box<Generator<Llama>>,
    prompt: String,
    tokens: usize,
    state: AppState,
) -> Result<Events, Refusal> {
    generator.set_max_new_tokens(Some(tokens));
    let stream = match generator.into_stream(vec![ChatMessage::user(prompt)]) {
        Ok(stream) => stream,
        Err((error, generator)) => {
            state.put_back(*generator);
            return Err(refuse(StatusCode::BAD_REQUEST, error));
        }
    };
    // A buffer of 16 events: a slow client slows the generation down, memory stays flat.
    match stream.into_async(16) {
        Ok(inner) => Ok(Events { inner: Some(inner), state }),
        Err(error) => {
            // The stream (and the generator in it) went with the thread that did not start.
            *state.slot() = Slot::Lost;
            Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, error))
        }
    }
}

/// The SSE body: the generation's events as SSE events. Dropped — the response ended,
/// or the client went away — it cancels what is left and, on a thread of its own (a
/// drop must not block the runtime), waits for the generation and puts the generator
/// back.
pub struct Events {
    inner: Option<AsyncStream<Llama>>,
    state: AppState,
}

impl futures_core::Stream for Events {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        Pin::new(inner).poll_next(cx).map(|item| item.map(|item| Ok(to_sse(item))))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else { return };
        let state = self.state.clone();
        std::thread::spawn(move || match inner.join() {
            Ok((generator, generation)) => {
                state.put_back(generator);
                (state.on_done)(&generation);
            }
            Err(_) => {
                *state.slot() = Slot::Lost;
                eprintln!("the generation thread panicked: the generator is lost");
            }
        });
    }
}

fn to_sse(item: Result<Event, perpetua::generator::GenerateError>) -> SseEvent {
    let (name, data) = match item {
        Ok(Event::Token { index, id, text, .. }) => {
            ("token", serde_json::json!({ "index": index, "id": id, "text": text }))
        }
        Ok(Event::Backstep { text_len, cause, .. }) => {
            ("backstep", serde_json::json!({ "text_len": text_len, "cause": format!("{cause:?}") }))
        }
        Ok(Event::EosAvoided { position, p_eos, .. }) => {
            ("eos_avoided", serde_json::json!({ "position": position, "p_eos": p_eos }))
        }
        Ok(Event::Finished { reason, text }) => {
            ("finished", serde_json::json!({ "reason": format!("{reason:?}"), "text": text }))
        }
        Ok(other) => ("other", serde_json::json!({ "event": format!("{other:?}") })),
        // The generation ended with an error; the text so far is in its `Generation`.
        Err(error) => ("error", serde_json::json!({ "error": error.to_string() })),
    };
    SseEvent::default().event(name).data(data.to_string())
}

/// The recommended perpetual mode (method 4 with DRY and loop back steps), T 1.0,
/// top-k 20.
pub fn generator(seed: u64) -> Result<Generator<Llama>, Box<dyn std::error::Error>> {
    let path = perpetua::candle::default_model_path()?;
    let model = Llama::load(&path, &LoadOptions::default())?;
    let tokenizer = LlamaTokenizer::from_gguf(&path)?;
    Ok(Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(Chain::new(Multinomial).with(TopK::new(20)?))
        .perpetual(PerpetualMode::recommended())
        .seed(seed)
        .build()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(3000);
    let state = AppState::new(generator(7)?, |g| {
        eprintln!(
            "generation ended: {:?} after {} tokens ({} back steps, {:.1} tok/s)",
            g.finish_reason,
            g.ids.len(),
            g.counts.backsteps + g.counts.loop_backsteps,
            g.decode_tokens_per_second()
        );
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("listening on http://{}/generate?prompt=…&tokens=…", listener.local_addr()?);
        axum::serve(listener, app(state)).await
    })?;
    Ok(())
}
