//! The async event stream (feature `tokio`): the same events as the iterator, the
//! generator handed back, and a dropped stream stops the generation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_core::Stream as _;
use perpetua_generator::testing::{FakeCache, FakeError, FakeModel};
use perpetua_generator::{AsyncStream, Event, GenerateError, Generator, LanguageModel};

/// A fake model that counts its forward passes.
struct Counting {
    inner: FakeModel,
    forwards: Arc<AtomicUsize>,
}

impl LanguageModel for Counting {
    type Cache = FakeCache;
    type Error = FakeError;
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    fn new_cache(&self) -> Result<FakeCache, FakeError> {
        self.inner.new_cache()
    }
    fn forward(&self, tokens: &[u32], cache: &mut FakeCache, out: &mut Vec<f32>) -> Result<(), FakeError> {
        self.forwards.fetch_add(1, Ordering::SeqCst);
        self.inner.forward(tokens, cache, out)
    }
}

fn next<M: LanguageModel>(
    rt: &tokio::runtime::Runtime,
    s: &mut AsyncStream<M>,
) -> Option<Result<Event, GenerateError>> {
    rt.block_on(std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

#[test]
fn async_events_equal_the_iterators_and_the_generator_comes_back() {
    let build = || {
        Generator::builder(FakeModel::new(300).with_eos(7).with_seed(3))
            .seed(11)
            .max_new_tokens(200)
            .build()
            .unwrap()
    };
    let mut generator = build();
    let expected: Vec<Event> = generator.stream([1_u32, 2, 3]).unwrap().map(Result::unwrap).collect();
    assert!(matches!(expected.last(), Some(Event::Finished { .. })));

    let rt = runtime();
    let mut stream = build().into_stream([1_u32, 2, 3]).map_err(|(e, _)| e).unwrap().into_async(4).unwrap();
    let mut got = Vec::new();
    while let Some(item) = next(&rt, &mut stream) {
        got.push(item.unwrap());
    }
    assert_eq!(got, expected);
    let (mut generator, output) = stream.join().unwrap();
    let again = generator.generate([1_u32, 2, 3]).unwrap();
    assert_eq!(output.ids, again.ids, "the same generator, reset, gives the same tokens");
}

#[test]
fn dropping_the_stream_stops_the_generation() {
    let forwards = Arc::new(AtomicUsize::new(0));
    let model = Counting { inner: FakeModel::new(300).with_seed(5), forwards: forwards.clone() };
    let generator = Generator::builder(model).max_new_tokens(1_000_000).build().unwrap();
    let rt = runtime();
    let mut stream = generator.into_stream([1_u32, 2, 3]).map_err(|(e, _)| e).unwrap().into_async(2).unwrap();
    for _ in 0..10 {
        assert!(matches!(next(&rt, &mut stream), Some(Ok(Event::Token { .. }))));
    }
    drop(stream);
    std::thread::sleep(Duration::from_millis(200));
    let stopped = forwards.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(forwards.load(Ordering::SeqCst), stopped, "the generation went on after the drop");
    // 10 events read, at most `buffer` more queued, one blocked send, one more step.
    assert!(stopped <= 16, "{stopped} forward passes for 10 events read");
}

#[test]
fn a_cancelled_stream_ends_with_the_events_already_sent() {
    let generator = Generator::builder(FakeModel::new(300)).max_new_tokens(1_000_000).build().unwrap();
    let rt = runtime();
    let mut stream = generator.into_stream([1_u32]).map_err(|(e, _)| e).unwrap().into_async(3).unwrap();
    assert!(next(&rt, &mut stream).is_some());
    stream.cancel();
    let mut rest = 0;
    while next(&rt, &mut stream).is_some() {
        rest += 1;
    }
    assert!(rest <= 3, "{rest} events after cancel");
    let (_, output) = stream.join().unwrap();
    assert!(output.ids.len() < 10);
}
