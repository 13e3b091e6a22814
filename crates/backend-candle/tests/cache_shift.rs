//! Context shifts on the real model: `shift_cache` drops a range of cached
//! positions and re-rotates the kept keys. Layer 0's keys depend only on the token and
//! its position, so after a shift they must equal a fresh prefill's up to rounding —
//! this checks the rotation itself, for f32, f16 and Q8 caches. Deeper layers also
//! carry what the kept tokens attended to before the shift (the dropped text), which a
//! fresh prefill does not: the logits then differ, and the test prints by how much.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use perpetua_candle::{KvDtype, Llama, LlamaTokenizer, LoadOptions};
use perpetua_generator::{CacheError, KvCache, LanguageModel};

fn ids(tok: &LlamaTokenizer, text: &str) -> Vec<u32> {
    tok.encode_ids(text, false).unwrap()
}

#[test]
fn shifted_keys_equal_a_fresh_prefill_and_logits_stay_close() {
    let tok = LlamaTokenizer::from_gguf(common::model_path()).unwrap();
    let sink = ids(&tok, "Once upon a time,");
    let dropped = ids(&tok, " in a village by the sea where the fishermen mended their nets every evening,");
    let kept =
        ids(&tok, " a small dog named Rex found a brass key under the old bridge and carried it home to");
    let mut all = sink.clone();
    all.extend(&dropped);
    all.extend(&kept);
    let mut fresh_tokens = sink.clone();
    fresh_tokens.extend(&kept);

    // Bounds on layer 0 (largest |Δ key| over a key range of about ±20): f32 only
    // rounds the two angle products (measured ~1e-5), f16 rounds to 11 bits on top
    // (one f16 ulp at 16 is 0.0156), Q8 re-quantizes with fresh row scales (half a
    // step of max|x|/127).
    for (dtype, bound) in [(KvDtype::F32, 1e-4), (KvDtype::F16, 0.02), (KvDtype::Q8, 0.2)] {
        let model =
            Llama::load(common::model_path(), &LoadOptions { kv_dtype: dtype, ..LoadOptions::default() })
                .unwrap();
        let mut logits = Vec::new();
        let mut shifted = model.new_cache().unwrap();
        model.forward(&all, &mut shifted, &mut logits).unwrap();
        // Control: the kept tokens' keys before the shift (at their old positions) are
        // far from the fresh prefill's, so the comparison below can fail.
        let before: Vec<f32> = {
            let k = shifted.layer_keys(0).unwrap();
            let k = k.narrow(1, sink.len() + dropped.len(), kept.len()).unwrap();
            k.flatten_all().unwrap().to_vec1().unwrap()
        };
        assert!(LanguageModel::shift_cache(&model, &mut shifted, sink.len(), dropped.len()).unwrap());
        assert_eq!(shifted.seq_len(), fresh_tokens.len());
        let mut fresh = model.new_cache().unwrap();
        model.forward(&fresh_tokens, &mut fresh, &mut logits).unwrap();

        let k0 = |c: &perpetua_candle::LlamaCache| -> Vec<f32> {
            c.layer_keys(0).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let key_diff = common::max_abs_diff(&k0(&shifted), &k0(&fresh));
        let fresh_kept: Vec<f32> = {
            let k = fresh.layer_keys(0).unwrap();
            k.narrow(1, sink.len(), kept.len()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let unrotated = common::max_abs_diff(&before, &fresh_kept);
        assert!(unrotated > 1.0, "{dtype:?}: unrotated keys differ by only {unrotated}");
        // The sink is untouched: its keys are bit for bit the fresh prefill's.
        let head = |c: &perpetua_candle::LlamaCache| -> Vec<f32> {
            let k = c.layer_keys(3).unwrap();
            k.narrow(1, 0, sink.len()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_eq!(head(&shifted), head(&fresh), "{dtype:?}: sink keys");

        // Then both read the same next token.
        let next = ids(&tok, " his")[0];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        model.forward(&[next], &mut shifted, &mut a).unwrap();
        model.forward(&[next], &mut fresh, &mut b).unwrap();
        let logit_diff = common::max_abs_diff(&a, &b);
        let range = b.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
            - b.iter().fold(f32::INFINITY, |m, &x| m.min(x));
        println!(
            "{dtype:?}: layer-0 max |Δ key| {key_diff:e} (unrotated: {unrotated:.2}); next-token max |Δ logit| {logit_diff:.3} of a {range:.1} range; \
             top-1 shifted {} fresh {}",
            common::argmax(&a),
            common::argmax(&b)
        );
        assert!(key_diff < bound, "{dtype:?}: layer-0 keys differ by {key_diff}");
        assert!(logit_diff.is_finite() && logit_diff < range, "{dtype:?}: {logit_diff}");
    }
}

#[test]
fn shift_edge_cases_are_typed_errors_or_no_ops() {
    let tok = LlamaTokenizer::from_gguf(common::model_path()).unwrap();
    let model = Llama::load(common::model_path(), &LoadOptions::default()).unwrap();
    let text = ids(&tok, "The quick brown fox jumps over the lazy dog.");
    let mut cache = model.new_cache().unwrap();
    let mut logits = Vec::new();
    model.forward(&text, &mut cache, &mut logits).unwrap();
    let len = cache.seq_len();
    let err = model.shift_cache(&mut cache, 2, len).unwrap_err();
    assert!(
        matches!(err, perpetua_candle::CandleBackendError::Cache(CacheError::ShiftBeyondLength { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("holds only"), "{err}");
    assert_eq!(cache.seq_len(), len, "a refused shift leaves the cache as it was");
    // Dropping nothing changes nothing; dropping the tail is a truncation.
    model.shift_cache(&mut cache, 3, 0).unwrap();
    assert_eq!(cache.seq_len(), len);
    model.shift_cache(&mut cache, 5, len - 5).unwrap();
    assert_eq!(cache.seq_len(), 5);
}
