//! An OpenAI-compatible HTTP server over a perpetua [`Generator`]: what
//! `perpetua serve` runs, and a library for programs that mount the routes in their
//! own axum application.
//!
//! - `POST /v1/chat/completions` and `POST /v1/completions`: JSON answers, or with
//!   `"stream": true` Server-Sent Events (`data: {chunk}` … `data: [DONE]`);
//!   OpenAI's parameters (`max_tokens`/`max_completion_tokens`, `temperature`,
//!   `top_p`, `n`, `stop`, `seed`, `presence_penalty`, `frequency_penalty`,
//!   `logit_bias`, `logprobs`/`top_logprobs`, `stream_options.include_usage`), the
//!   llama.cpp / vLLM extensions (`top_k`, `min_p`, `typical_p`, `repetition_penalty`,
//!   `min_tokens`, `ignore_eos`, `dry_*`, `xtc_*`, `top_n_sigma`) and ours:
//!   `"perpetual": true` (the recommended perpetual mode: EOS never ends the text,
//!   `max_tokens` does), a mode spec (`"backstep+dry"`) or
//!   `{"strategy": SPEC, "backstep": N, "peak": TIMES}`. An unknown field is an
//!   error; every error has OpenAI's shape (`{"error": {"message", "type", "param",
//!   "code"}}`).
//! - `GET /v1/models`, `GET /health`, `GET /stats` (the counters of [`StatsSnapshot`]).
//!
//! Requests share the model: one generation thread runs them side by side with
//! continuous batching ([`Generator::generate_continuous`]), up to the generator's
//! `max_batch`; the rest wait in a bounded queue, and a request that finds it full is
//! answered 503. A client that disconnects cancels its generation. With an API key,
//! every route but `/health` needs `Authorization: Bearer KEY`.
//!
//! Streamed text under a perpetual mode is held back by as many tokens as the mode's
//! back steps can remove ([`perpetua_generator::SettledText`]), so a client never sees
//! text that is taken back; the non-streaming answer is the final text.
//!
//! ```no_run
//! use perpetua_generator::Generator;
//! use perpetua_generator::testing::{ByteTokenizer, FakeModel};
//! use perpetua_server::{Server, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let generator = Generator::builder(FakeModel::new(ByteTokenizer::VOCAB_SIZE))
//!     .tokenizer(ByteTokenizer::new())
//!     .build()?;
//! let server = Server::start(generator, ByteTokenizer::new(), ServerConfig::new("fake"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener).await?;
//! # Ok(())
//! # }
//! ```

mod api;
mod engine;
mod error;
mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use perpetua_generator::{Generator, LanguageModel, Tokenizer};

pub use engine::StatsSnapshot;
pub use error::{ApiError, ServerError};

use engine::{Job, Stats};

/// The server's settings (see each field's default in [`ServerConfig::new`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The model id `/v1/models` lists; a request naming another model is refused.
    pub model_name: String,
    /// When set, every route but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests that may wait for a place in the batch (default 64); beyond, 503.
    pub max_queue: usize,
    /// `max_tokens` of a request that gives none (default 256).
    pub default_max_tokens: usize,
    /// The largest `max_tokens` accepted (default 16,384).
    pub max_tokens_limit: usize,
    /// The largest `n` accepted (default 8).
    pub max_n: usize,
    /// The largest request body in bytes (default 1 MiB); beyond, 413.
    pub max_body_bytes: usize,
}

impl ServerConfig {
    /// Defaults, serving the model under `model_name`.
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            api_key: None,
            max_queue: 64,
            default_max_tokens: 256,
            max_tokens_limit: 16_384,
            max_n: 8,
            max_body_bytes: 1 << 20,
        }
    }

    /// Set [`api_key`](Self::api_key).
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Set [`max_queue`](Self::max_queue).
    #[must_use]
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// Set [`default_max_tokens`](Self::default_max_tokens).
    #[must_use]
    pub fn default_max_tokens(mut self, n: usize) -> Self {
        self.default_max_tokens = n;
        self
    }

    /// Set [`max_tokens_limit`](Self::max_tokens_limit).
    #[must_use]
    pub fn max_tokens_limit(mut self, n: usize) -> Self {
        self.max_tokens_limit = n;
        self
    }

    /// Set [`max_n`](Self::max_n).
    #[must_use]
    pub fn max_n(mut self, n: usize) -> Self {
        self.max_n = n;
        self
    }

    /// Set [`max_body_bytes`](Self::max_body_bytes).
    #[must_use]
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    fn validate(&self) -> Result<(), ServerError> {
        let bad = |name, value: usize, reason| {
            Err(ServerError::InvalidSetting { name, value: value.to_string(), reason })
        };
        if self.max_queue == 0 {
            return bad("max_queue", 0, "must be >= 1");
        }
        if self.max_tokens_limit == 0 {
            return bad("max_tokens_limit", 0, "must be >= 1");
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > self.max_tokens_limit {
            return bad("default_max_tokens", self.default_max_tokens, "must be in 1..=max_tokens_limit");
        }
        if self.max_n == 0 {
            return bad("max_n", 0, "must be >= 1");
        }
        if self.max_body_bytes < 64 {
            return bad("max_body_bytes", self.max_body_bytes, "must be >= 64");
        }
        Ok(())
    }
}

/// What the handlers share.
pub(crate) struct AppState {
    config: ServerConfig,
    queue: std_mpsc::SyncSender<Job>,
    stats: Arc<Stats>,
    tokenizer: Arc<dyn Tokenizer + Send + Sync>,
    next_request: AtomicU64,
    started: u64,
}

impl AppState {
    /// Queue a job; a full queue is a 503.
    fn enqueue(&self, job: Job) -> Result<(), ApiError> {
        // Counted before the send: the generation thread decrements when it takes it.
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(job) {
            Ok(()) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                match e {
                    std_mpsc::TrySendError::Full(_) => {
                        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        Err(ApiError::busy(self.config.max_queue))
                    }
                    std_mpsc::TrySendError::Disconnected(_) => {
                        Err(ApiError::internal("the generation thread has stopped"))
                    }
                }
            }
        }
    }
}

/// A running server: the generation thread and the routes' shared state. Mount
/// [`router`](Self::router) in an axum application, or [`serve`](Self::serve) it.
/// The generation thread ends when the server and every router clone are dropped.
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Start the generation thread over `generator` (its chain, perpetual mode and
    /// settings are each request's defaults; a request's fields change them for that
    /// request, its chain is built from its own sampling fields). `tokenizer` renders
    /// tokens in log-probability answers (the generator's own is busy on the
    /// generation thread): the same tokenizer, loaded again.
    ///
    /// Errors: a setting out of range, a generator without a tokenizer, the thread
    /// could not be started.
    pub fn start<M, T>(
        generator: Generator<M>,
        tokenizer: T,
        config: ServerConfig,
    ) -> Result<Self, ServerError>
    where
        M: LanguageModel + Send + 'static,
        T: Tokenizer + Send + Sync + 'static,
    {
        config.validate()?;
        if generator.tokenizer().is_none() {
            return Err(ServerError::NoTokenizer);
        }
        let (queue, rx) = std_mpsc::sync_channel(config.max_queue);
        let stats = Arc::new(Stats::default());
        let worker_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("perpetua-serve".into())
            .spawn(move || engine::run(generator, rx, worker_stats))?;
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let state = Arc::new(AppState {
            config,
            queue,
            stats,
            tokenizer: Arc::new(tokenizer),
            next_request: AtomicU64::new(0),
            started,
        });
        Ok(Self { state })
    }

    /// The routes, to serve or to nest in a larger axum application.
    pub fn router(&self) -> axum::Router {
        http::router(Arc::clone(&self.state))
    }

    /// The counters (also `GET /stats`).
    pub fn stats(&self) -> StatsSnapshot {
        self.state.stats.snapshot()
    }

    /// Serve on `listener` until the process ends (or the future is dropped).
    ///
    /// Errors: the listener failed.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}
