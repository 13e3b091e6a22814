//! `LanguageModel::forward_batch`'s default (item by item) on the fake model: ragged
//! batches of 1–8 sequences with truncations between passes give every sequence its
//! solo logits and cache length; a failing item is named and no cache moves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_generator::testing::{FakeCache, FakeModel};
use perpetua_generator::{BatchItem, KvCache, LanguageModel};
use proptest::prelude::*;

fn pass(model: &FakeModel, items: &mut [(Vec<u32>, FakeCache)]) -> Vec<f32> {
    let mut batch: Vec<BatchItem<'_, FakeCache>> =
        items.iter_mut().map(|(tokens, cache)| BatchItem { tokens, cache }).collect();
    let mut out = Vec::new();
    model.forward_batch(&mut batch, &mut out).unwrap();
    out
}

proptest! {
    #[test]
    fn every_sequence_gets_its_solo_logits(
        prompts in proptest::collection::vec(proptest::collection::vec(0u32..300, 1..20), 1..=8),
        rounds in proptest::collection::vec(
            (proptest::collection::vec(proptest::collection::vec(0u32..300, 1..4), 8), 0usize..8, 0usize..3),
            1..6,
        ),
    ) {
        let model = FakeModel::new(300).with_seed(9);
        let vocab = model.vocab_size();
        let mut items: Vec<(Vec<u32>, FakeCache)> =
            prompts.iter().map(|p| (p.clone(), model.new_cache().unwrap())).collect();
        let mut solo: Vec<FakeCache> = prompts.iter().map(|_| model.new_cache().unwrap()).collect();
        let mut row = Vec::new();
        for round in std::iter::once(None).chain(rounds.iter().map(Some)) {
            if let Some((feeds, cut, by)) = round {
                for (s, (tokens, _)) in items.iter_mut().enumerate() {
                    tokens.clone_from(&feeds[s]);
                }
                // One sequence backs up `by` positions: only its own cache moves.
                let s = cut % items.len();
                let len = items[s].1.seq_len().saturating_sub(*by);
                items[s].1.truncate(len).unwrap();
                solo[s].truncate(len).unwrap();
            }
            let out = pass(&model, &mut items);
            prop_assert_eq!(out.len(), items.len() * vocab);
            for (s, (tokens, cache)) in items.iter().enumerate() {
                model.forward(tokens, &mut solo[s], &mut row).unwrap();
                prop_assert_eq!(&out[s * vocab..(s + 1) * vocab], &row[..], "sequence {}", s);
                prop_assert_eq!(cache.seq_len(), solo[s].seq_len());
            }
        }
    }
}

#[test]
fn a_failing_item_is_named_and_no_cache_moves() {
    let model = FakeModel::new(300);
    let mut a = model.new_cache().unwrap();
    let mut small = FakeCache::with_capacity(4);
    let mut c = model.new_cache().unwrap();
    let mut out = Vec::new();
    model.forward(&[1, 2], &mut a, &mut out).unwrap();
    let mut batch = [
        BatchItem { tokens: &[3][..], cache: &mut a },
        BatchItem { tokens: &[4, 5, 6, 7, 8][..], cache: &mut small },
        BatchItem { tokens: &[9][..], cache: &mut c },
    ];
    let err = model.forward_batch(&mut batch, &mut out).unwrap_err();
    assert_eq!(err.index, Some(1), "{err}");
    assert!(err.to_string().contains("at item 1"), "{err}");
    assert_eq!((a.seq_len(), small.seq_len(), c.seq_len()), (2, 0, 0));
}

/// A backend whose batched pass leaks: every item gets the first item's logits.
struct Leaky(FakeModel);

impl LanguageModel for Leaky {
    type Cache = FakeCache;
    type Error = perpetua_generator::testing::FakeError;
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn max_context(&self) -> usize {
        self.0.max_context()
    }
    fn new_cache(&self) -> Result<FakeCache, Self::Error> {
        self.0.new_cache()
    }
    fn forward(&self, tokens: &[u32], cache: &mut FakeCache, out: &mut Vec<f32>) -> Result<(), Self::Error> {
        self.0.forward(tokens, cache, out)
    }
    fn forward_batch(
        &self,
        batch: &mut [BatchItem<'_, FakeCache>],
        out: &mut Vec<f32>,
    ) -> Result<(), perpetua_generator::BatchError<Self::Error>> {
        self.0.forward_batch(batch, out)?;
        let vocab = self.vocab_size();
        let first = out[..vocab].to_vec();
        for row in out.chunks_mut(vocab) {
            row.copy_from_slice(&first);
        }
        Ok(())
    }
}

/// The kit's batch check passes the fake model exactly and catches a backend whose
/// sequences see each other's results.
#[test]
fn batch_isolation_check_passes_the_fake_model_and_catches_a_leak() {
    use perpetua_generator::testing::{BatchIsolationError, check_batch_isolation};
    let tokens: Vec<u32> = (1..=16).map(|i| i * 7).collect();
    assert_eq!(check_batch_isolation(&FakeModel::new(300).with_seed(2), &tokens, 0.0).unwrap(), 0.0);
    let err = check_batch_isolation(&Leaky(FakeModel::new(300).with_seed(2)), &tokens, 0.0).unwrap_err();
    assert!(matches!(err, BatchIsolationError::Diverged { pass: 0, sequence: 1, .. }), "{err}");
    assert!(matches!(
        check_batch_isolation(&FakeModel::new(300), &tokens[..5], 0.0),
        Err(BatchIsolationError::TooFewTokens(5))
    ));
}
