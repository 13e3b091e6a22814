//! The axum routes: authentication, body limits, the completions handlers (a JSON
//! answer, or Server-Sent Events ending with `data: [DONE]`) and the status routes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use perpetua_generator::Tokenizer;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::api::{Endpoint, Parsed, Request};
use crate::engine::{Finished, Job, TokenInfo, Update};
use crate::error::ApiError;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `Authorization: Bearer KEY` when the server has a key.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.config.api_key else { return Ok(()) };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit on the first differing byte.
    let ok = given.is_some_and(|g| {
        g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok { Ok(()) } else { Err(ApiError::unauthorized()) }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "not_found_error",
        message: "no such route: see /v1/chat/completions, /v1/completions, /v1/models, /health, /stats"
            .into(),
        param: None,
        code: None,
    }
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn stats(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    axum::Json(state.stats.snapshot()).into_response()
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    axum::Json(json!({
        "object": "list",
        "data": [{"id": state.config.model_name, "object": "model", "created": state.started, "owned_by": "perpetua"}],
    }))
    .into_response()
}

async fn chat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(state, headers, body, Endpoint::Chat).await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(state, headers, body, Endpoint::Completions).await.unwrap_or_else(IntoResponse::into_response)
}

/// Check, queue and answer one request.
async fn complete(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        kind: "invalid_request_error",
        message: rejection.body_text(),
        param: None,
        code: None,
    })?;
    let request = Request::parse(&body)?;
    if let Some(model) = &request.model
        && model != &state.config.model_name
    {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!(
                "model `{model}` does not exist: this server serves `{}`",
                state.config.model_name
            ),
            param: Some("model".into()),
            code: Some("model_not_found"),
        });
    }
    let seq = state.next_request.fetch_add(1, Ordering::Relaxed);
    let fallback_seed =
        u64::from(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()))
            ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let parsed = request.into_parsed(endpoint, &state.config, fallback_seed)?;
    let Parsed { prompt, options, n, stream, include_usage, logprobs } = parsed;
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job { prompt, options, n, stream, logprobs: logprobs.is_some(), tx };
    state.enqueue(job)?;
    let meta = Meta {
        id: format!("{}-{seq}", if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" }),
        created: unix_now(),
        model: state.config.model_name.clone(),
        endpoint,
        tokenizer: Arc::clone(&state.tokenizer),
    };
    if stream {
        let events = ChunkStream::new(rx, meta, n, include_usage);
        return Ok(Sse::new(events).into_response());
    }
    answer(rx, meta, n, logprobs.is_some()).await
}

/// What every answer of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
    tokenizer: Arc<dyn Tokenizer + Send + Sync>,
}

impl Meta {
    fn token_str(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.tokenizer.token_bytes(id).map(|b| b.into_owned()).unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// Log-probabilities in the endpoint's shape: chat's `{"content": [...]}`, or
    /// completions' parallel lists.
    fn logprobs(&self, tokens: &[TokenInfo], text_offset: usize) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let (token, bytes) = self.token_str(t.id);
                        let top: Vec<Value> = t
                            .top
                            .iter()
                            .map(|&(id, lp)| {
                                let (token, bytes) = self.token_str(id);
                                json!({"token": token, "logprob": lp, "bytes": bytes})
                            })
                            .collect();
                        json!({"token": token, "logprob": t.logprob, "bytes": bytes, "top_logprobs": top})
                    })
                    .collect();
                json!({ "content": content })
            }
            Endpoint::Completions => {
                let (mut strs, mut lps, mut tops, mut offsets) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                let mut offset = text_offset;
                for t in tokens {
                    let (token, _) = self.token_str(t.id);
                    offsets.push(offset);
                    offset += token.len();
                    strs.push(token);
                    lps.push(t.logprob);
                    let top: serde_json::Map<String, Value> =
                        t.top.iter().map(|&(id, lp)| (self.token_str(id).0, json!(lp))).collect();
                    tops.push(Value::Object(top));
                }
                json!({"tokens": strs, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
            }
        }
    }

    fn usage(prompt: usize, completion: usize) -> Value {
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }
}

/// Wait for every choice and answer one JSON body.
async fn answer(
    mut rx: mpsc::UnboundedReceiver<Update>,
    meta: Meta,
    n: usize,
    logprobs: bool,
) -> Result<Response, ApiError> {
    let mut done: Vec<Option<Finished>> = (0..n).map(|_| None).collect();
    let mut left = n;
    while left > 0 {
        match rx.recv().await {
            Some(Update::Done { choice, result }) => {
                let finished = result.map_err(|message| ApiError::invalid(None, message))?;
                if let Some(slot) = done.get_mut(choice) {
                    *slot = Some(finished);
                    left -= 1;
                }
            }
            Some(Update::Delta { .. }) => {}
            None => return Err(ApiError::internal("the generation thread stopped")),
        }
    }
    let done: Vec<Finished> = done.into_iter().flatten().collect();
    let prompt_tokens = done.first().map_or(0, |f| f.prompt_tokens);
    let completion_tokens: usize = done.iter().map(|f| f.completion_tokens).sum();
    let choices: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let lp = if logprobs { meta.logprobs(&f.tokens, 0) } else { Value::Null };
            let mut choice = match meta.endpoint {
                Endpoint::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": f.text},
                    "logprobs": lp,
                    "finish_reason": f.reason,
                }),
                Endpoint::Completions => {
                    json!({"index": i, "text": f.text, "logprobs": lp, "finish_reason": f.reason})
                }
            };
            if let Some(error) = &f.error {
                choice["error"] = json!(error);
            }
            choice
        })
        .collect();
    let object = if meta.endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" };
    Ok(axum::Json(json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": Meta::usage(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

/// The SSE events of a streaming request: one chunk per update, a final chunk per
/// choice with its `finish_reason`, the usage chunk when asked, then `[DONE]`.
/// Dropping it (the client went away) closes the request's channel, which cancels
/// its generation.
struct ChunkStream {
    rx: mpsc::UnboundedReceiver<Update>,
    meta: Meta,
    n: usize,
    include_usage: bool,
    /// Choices that got their first chunk (chat's `role`).
    started: Vec<bool>,
    /// Text bytes sent per choice (completions' `text_offset`).
    sent: Vec<usize>,
    finished: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
    ended: bool,
    /// Events made from an update and not yet sent.
    queue: VecDeque<SseEvent>,
}

impl ChunkStream {
    fn new(rx: mpsc::UnboundedReceiver<Update>, meta: Meta, n: usize, include_usage: bool) -> Self {
        Self {
            rx,
            meta,
            n,
            include_usage,
            started: vec![false; n],
            sent: vec![0; n],
            finished: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            ended: false,
            queue: VecDeque::new(),
        }
    }

    fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> SseEvent {
        let object =
            if self.meta.endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut body = json!({
            "id": self.meta.id,
            "object": object,
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        });
        if self.include_usage {
            body["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::default().data(body.to_string())
    }

    fn choice(&mut self, index: usize, text: &str, tokens: &[TokenInfo], finish: Option<&str>) -> Value {
        let logprobs = if tokens.is_empty() {
            Value::Null
        } else {
            self.meta.logprobs(tokens, self.sent.get(index).copied().unwrap_or(0))
        };
        if let Some(sent) = self.sent.get_mut(index) {
            *sent += text.len();
        }
        match self.meta.endpoint {
            Endpoint::Chat => {
                let first = self.started.get(index).is_some_and(|s| !s);
                if let Some(s) = self.started.get_mut(index) {
                    *s = true;
                }
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if !text.is_empty() || finish.is_none() {
                    delta.insert("content".into(), json!(text));
                }
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Endpoint::Completions => {
                json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    /// The events of one update.
    fn events(&mut self, update: Update) -> Vec<SseEvent> {
        match update {
            Update::Delta { choice, text, tokens } => {
                let c = self.choice(choice, &text, &tokens, None);
                vec![self.chunk(vec![c], None)]
            }
            Update::Done { choice, result } => {
                self.finished += 1;
                let mut events = Vec::new();
                match result {
                    Ok(f) => {
                        self.prompt_tokens = f.prompt_tokens;
                        self.completion_tokens += f.completion_tokens;
                        let mut c = self.choice(choice, "", &[], Some(f.reason));
                        if let Some(error) = f.error {
                            c["error"] = json!(error);
                        }
                        events.push(self.chunk(vec![c], None));
                    }
                    Err(message) => {
                        events.push(
                            SseEvent::default().data(ApiError::invalid(None, message).body().to_string()),
                        );
                    }
                }
                if self.finished == self.n {
                    if self.include_usage {
                        let usage = Meta::usage(self.prompt_tokens, self.completion_tokens);
                        events.push(self.chunk(Vec::new(), Some(usage)));
                    }
                    events.push(SseEvent::default().data("[DONE]"));
                    self.ended = true;
                }
                events
            }
        }
    }
}

impl futures_core::Stream for ChunkStream {
    type Item = Result<SseEvent, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(update)) => {
                    let events = this.events(update);
                    this.queue.extend(events);
                }
                Poll::Ready(None) => {
                    let error = ApiError::internal("the generation thread stopped");
                    this.queue.push_back(SseEvent::default().data(error.body().to_string()));
                    this.queue.push_back(SseEvent::default().data("[DONE]"));
                    this.ended = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
