//! [`AsyncStream`] (feature `tokio`): an [`OwnedStream`] driven on its own thread, its
//! events delivered through a bounded channel as a `futures_core::Stream`, so async
//! code (an axum handler streaming Server-Sent Events, say) consumes a generation
//! without blocking its runtime. Dropping the stream — a client that went away —
//! cancels the generation at its next event.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::{Event, Generation, Generator, OwnedStream};
use crate::{GenerateError, LanguageModel};

/// Events of a generation running on its own thread ([`OwnedStream::into_async`]).
///
/// Implements `futures_core::Stream<Item = Result<Event, GenerateError>>`: the same
/// items as the iterator, in order, ending after [`Event::Finished`] (or the error).
/// Dropping it (or [`cancel`](Self::cancel)) stops the generation at its next event;
/// [`join`](Self::join) waits for the thread and gives the generator back.
pub struct AsyncStream<M: LanguageModel> {
    rx: mpsc::Receiver<Result<Event, GenerateError>>,
    worker: std::thread::JoinHandle<(Generator<M>, Generation)>,
}

impl<M> OwnedStream<M>
where
    M: LanguageModel + Send + 'static,
    M::Cache: Send,
{
    /// Run the generation on a new thread; its events arrive through a channel of
    /// `buffer` events (at least 1): the thread waits while the consumer is `buffer`
    /// events behind, so a slow client slows the generation instead of growing memory.
    ///
    /// Errors: the thread could not be started.
    pub fn into_async(self, buffer: usize) -> std::io::Result<AsyncStream<M>> {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let worker = std::thread::Builder::new().name("perpetua-generation".into()).spawn(move || {
            let mut stream = self;
            for item in stream.by_ref() {
                if tx.blocking_send(item).is_err() {
                    // The consumer is gone: stop here (into_parts cancels).
                    break;
                }
            }
            stream.into_parts()
        })?;
        Ok(AsyncStream { rx, worker })
    }
}

impl<M: LanguageModel> AsyncStream<M> {
    /// Stop the generation at its next event; events already sent can still be read.
    pub fn cancel(&mut self) {
        self.rx.close();
    }

    /// Whether the generation thread has ended.
    pub fn is_finished(&self) -> bool {
        self.worker.is_finished()
    }

    /// Cancel what is left, wait for the thread (blocking: from async code, call it in
    /// `spawn_blocking`) and return the generator with the result. Errors: the thread
    /// panicked (its payload).
    pub fn join(mut self) -> std::thread::Result<(Generator<M>, Generation)> {
        self.rx.close();
        // Unblock a sender waiting on a full channel.
        while self.rx.try_recv().is_ok() {}
        self.worker.join()
    }
}

impl<M: LanguageModel> futures_core::Stream for AsyncStream<M> {
    type Item = Result<Event, GenerateError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
