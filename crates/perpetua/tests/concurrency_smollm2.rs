//! Thread safety on the real model: one `Llama` shared read-only through an
//! `Arc`, one generator (and so one cache) per thread; the same seeds give the same
//! tokens as sequential runs. Needs the default model (`cargo xtask fetch-model`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use perpetua::prelude::*;

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

fn generate(model: Arc<Llama>, tokenizer: LlamaTokenizer, seed: u64) -> Vec<u32> {
    let chain = Chain::new(Multinomial).with(TopK::new(20).unwrap()).with(Temperature::new(1.0).unwrap());
    let mut generator = Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(chain)
        .eos_strategy(BackstepWithSchedule::new(4).unwrap())
        .seed(seed)
        .max_new_tokens(24)
        .build()
        .unwrap();
    let out = generator.generate(vec![ChatMessage::user("Write a short poem about rivers.")]).unwrap();
    assert_eq!(out.ids.len(), 24);
    out.ids
}

#[test]
fn shared_weights_across_threads_give_the_sequential_outputs() {
    assert_send::<Generator<Arc<Llama>>>();
    assert_sync::<Llama>();
    assert_send::<LlamaCache>();

    let path = perpetua::candle::default_model_path().unwrap();
    assert!(path.exists(), "run `cargo xtask fetch-model` first");
    let model = Arc::new(Llama::load(&path, &LoadOptions::default()).unwrap());
    let tokenizer = LlamaTokenizer::from_gguf(&path).unwrap();

    let sequential: Vec<Vec<u32>> =
        [1, 2].iter().map(|&s| generate(model.clone(), tokenizer.clone(), s)).collect();
    assert_ne!(sequential[0], sequential[1], "different seeds should differ for the check to mean something");

    let parallel: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [1, 2, 1]
            .into_iter()
            .map(|seed| {
                let (m, t) = (model.clone(), tokenizer.clone());
                scope.spawn(move || generate(m, t, seed))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(parallel[0], sequential[0]);
    assert_eq!(parallel[1], sequential[1]);
    assert_eq!(parallel[2], sequential[0]);
}
