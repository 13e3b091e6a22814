//! `LanguageModel::forward_batch` on the real model: several sequences in one pass,
//! ragged (prefills and decode steps together), each sequence's logits bit-identical to
//! its solo `forward`, whatever else is in the batch, and one sequence's truncation or
//! failure never touching another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use perpetua_candle::{Llama, LlamaCache, LoadOptions};
use perpetua_generator::{BatchItem, KvCache, LanguageModel};

fn prompts() -> Vec<Vec<u32>> {
    // Four ragged prompts (filler ids of the vocabulary).
    [5usize, 23, 1, 41]
        .iter()
        .enumerate()
        .map(|(s, &n)| (0..n).map(|i| 100 + ((s * 977 + i * 131) % 40_000) as u32).collect())
        .collect()
}

/// One batched pass over `(tokens, cache)` pairs; rows of logits.
fn batch(model: &Llama, items: &mut [(Vec<u32>, LlamaCache)]) -> Vec<Vec<f32>> {
    let vocab = model.vocab_size();
    let mut batch: Vec<BatchItem<'_, LlamaCache>> =
        items.iter_mut().map(|(tokens, cache)| BatchItem { tokens, cache }).collect();
    let mut out = Vec::new();
    model.forward_batch(&mut batch, &mut out).unwrap();
    assert_eq!(out.len(), items.len() * vocab);
    out.chunks(vocab).map(<[f32]>::to_vec).collect()
}

#[test]
fn a_batch_gives_each_sequence_its_solo_logits_bit_for_bit() {
    let model =
        Llama::load(common::model_path(), &LoadOptions { cache_capacity: Some(512), ..Default::default() })
            .unwrap();
    let prompts = prompts();
    let mut solo: Vec<LlamaCache> = prompts.iter().map(|_| model.new_cache().unwrap()).collect();
    let mut row = Vec::new();
    let mut expected: Vec<Vec<f32>> = Vec::new();
    for (p, cache) in prompts.iter().zip(&mut solo) {
        model.forward(p, cache, &mut row).unwrap();
        expected.push(row.clone());
    }
    // The prefills in one pass.
    let mut items: Vec<(Vec<u32>, LlamaCache)> =
        prompts.iter().map(|p| (p.clone(), model.new_cache().unwrap())).collect();
    let got = batch(&model, &mut items);
    for (s, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "sequence {s}: prefill logits differ from its solo run");
    }
    // Decode steps together, greedy per sequence; every few steps sequence 2 backs up
    // three tokens (truncate) and sequence 0 feeds two tokens at once (ragged).
    for step in 0..8 {
        for (s, ((tokens, cache), logits)) in items.iter_mut().zip(&expected).enumerate() {
            let next = common::argmax(logits);
            *tokens = if s == 0 && step % 3 == 1 { vec![next, 42] } else { vec![next] };
            if s == 2 && step % 4 == 3 {
                let len = cache.seq_len() - 3;
                cache.truncate(len).unwrap();
                solo[s].truncate(len).unwrap();
            }
        }
        let got = batch(&model, &mut items);
        for (s, (tokens, _)) in items.iter().enumerate() {
            model.forward(tokens, &mut solo[s], &mut row).unwrap();
            assert_eq!(got[s], row, "step {step}, sequence {s}: batched logits differ from its solo run");
            expected[s] = row.clone();
        }
        for (s, (_, cache)) in items.iter().enumerate() {
            assert_eq!(cache.seq_len(), solo[s].seq_len(), "step {step}, sequence {s}: cache lengths");
        }
    }
}

#[test]
fn a_failing_sequence_is_named_and_no_cache_moves() {
    let model =
        Llama::load(common::model_path(), &LoadOptions { cache_capacity: Some(64), ..Default::default() })
            .unwrap();
    let mut a = model.new_cache().unwrap();
    let mut b = model.new_cache().unwrap();
    let mut c = model.new_cache().unwrap();
    let mut out = Vec::new();
    model.forward(&[1, 2, 3], &mut a, &mut out).unwrap();
    let long: Vec<u32> = (0..70).map(|i| 200 + i).collect();
    for (bad, index) in [(vec![5_u32, u32::MAX], 1), (long, 1), (Vec::new(), 1)] {
        let mut batch = [
            BatchItem { tokens: &[7][..], cache: &mut a },
            BatchItem { tokens: &bad, cache: &mut b },
            BatchItem { tokens: &[9, 10][..], cache: &mut c },
        ];
        let err = model.forward_batch(&mut batch, &mut out).unwrap_err();
        assert_eq!(err.index, Some(index), "{err}");
        assert_eq!((a.seq_len(), b.seq_len(), c.seq_len()), (3, 0, 0), "{err}");
    }
    // Without the failing item the others run.
    let mut batch =
        [BatchItem { tokens: &[7][..], cache: &mut a }, BatchItem { tokens: &[9, 10][..], cache: &mut c }];
    model.forward_batch(&mut batch, &mut out).unwrap();
    assert_eq!((a.seq_len(), c.seq_len()), (4, 2));
}

/// The generator on top: `generate_batch` over ragged chat prompts, sampled (T 1.0,
/// top-k 20) in the recommended perpetual mode, gives every sequence exactly the tokens
/// of its solo `generate` — the batched pass's logits are its solo logits, and each
/// sequence keeps its own chain, strategy and RNG. Few tokens: a check, not a benchmark.
#[test]
fn generate_batch_equals_each_solo_generation_on_the_real_model() {
    use perpetua_generator::{ChatMessage, Generator, PerpetualMode, Prompt};
    use perpetua_sampling::Chain;
    use perpetua_sampling::processors::{Temperature, TopK};
    use perpetua_sampling::samplers::Multinomial;

    let path = common::model_path();
    let model = Llama::load(&path, &LoadOptions { cache_capacity: Some(256), ..Default::default() }).unwrap();
    let tokenizer = perpetua_candle::LlamaTokenizer::load(&path).unwrap();
    let build = |width: usize| {
        Generator::builder(&model)
            .tokenizer(tokenizer.clone())
            .chain(Chain::new(Multinomial).with(TopK::new(20).unwrap()).with(Temperature::new(1.0).unwrap()))
            .seed(3)
            .perpetual(PerpetualMode::recommended())
            .max_new_tokens(12)
            .max_batch(width)
            .build()
            .unwrap()
    };
    let prompts: Vec<Prompt> =
        ["Hi.", "Name a colour.", "Write one line about the sea and the wind at night."]
            .iter()
            .map(|q| Prompt::Chat(vec![ChatMessage::user(*q)]))
            .collect();
    let batched = build(3).generate_batch(prompts.clone());
    let mut solo = build(1);
    for (i, (prompt, result)) in prompts.into_iter().zip(batched).enumerate() {
        let (b, s) = (result.unwrap(), solo.generate(prompt).unwrap());
        assert_eq!((b.ids, b.text, b.finish_reason), (s.ids, s.text, s.finish_reason), "sequence {i}");
    }
}
