//! The kv-cache conformance kit (`perpetua_kv_cache::testing`) and its batch half on the
//! real model, and
//! the error contract of the burn model (typed errors, the cache untouched).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_burn::{BurnBackendError, Llama, LlamaTokenizer, LoadOptions};
use perpetua_generator::LanguageModel;
use perpetua_generator::testing::{ModelHarness, check_batch_isolation};
use perpetua_kv_cache::testing::{ConformanceConfig, Property, run_all};
use perpetua_kv_cache::{CacheError, ForkableCache, KvCache};

fn load(capacity: usize) -> (Llama, LlamaTokenizer) {
    let path = perpetua_burn::default_model_path().unwrap();
    assert!(path.is_file(), "model missing at {}: run `cargo xtask fetch-model`", path.display());
    let model =
        Llama::load(&path, &LoadOptions { cache_capacity: Some(capacity), ..Default::default() }).unwrap();
    println!("burn device: {:?}", model.device());
    (model, LlamaTokenizer::from_gguf(&path).unwrap())
}

#[test]
fn real_model_cache_passes_the_conformance_kit() {
    let (model, tokenizer) = load(128);
    let tokens = tokenizer
        .encode_ids(
            "The detective dog sniffed the rain-soaked alley, 12 clues in mind, and barked twice.",
            false,
        )
        .unwrap();
    assert!(tokens.len() >= 16);
    // Not 0: a batched prefill sums in another order than token-by-token feeding (f32
    // rounding); the kit's comparisons are logits of the same positions.
    // The batch half (burn's forward_batch is the default loop): every sequence equals
    // its solo run through truncation, fork and shift of its neighbours.
    assert_eq!(check_batch_isolation(&model, &tokens, 0.0).unwrap(), 0.0);
    let config =
        ConformanceConfig { truncate_to: tokens.len() / 2, tokens, tolerance: 1e-3, small_capacity: 24 };
    let report = run_all(&mut ModelHarness(model), &config).unwrap();
    println!("{report}");
    assert!(report.max_abs_diff() <= 1e-3, "{report}");
    assert!(report.checks.iter().any(|c| c.property == Property::ContextShift), "{report}");
}

#[test]
fn invalid_input_is_a_typed_error_and_leaves_the_cache_alone() {
    let (model, tokenizer) = load(16);
    let mut cache = model.new_cache().unwrap();
    let mut logits = Vec::new();
    let prompt = tokenizer.encode_ids("A dog that talks", false).unwrap();
    model.forward(&prompt, &mut cache, &mut logits).unwrap();
    let len = cache.seq_len();
    assert_eq!(len, prompt.len());
    assert_eq!(logits.len(), model.vocab_size());
    assert!(logits.iter().all(|l| l.is_finite()));

    let err = model.forward(&[], &mut cache, &mut logits).unwrap_err();
    assert!(matches!(err, BurnBackendError::InvalidParameter { name: "tokens", .. }), "{err}");
    let vocab = model.vocab_size() as u32;
    let err = model.forward(&[1, vocab], &mut cache, &mut logits).unwrap_err();
    assert!(matches!(err, BurnBackendError::InvalidParameter { name: "token id", .. }), "{err}");
    assert!(err.to_string().contains(&vocab.to_string()), "{err}");
    let too_many = vec![1; 16 - len + 1];
    let err = model.forward(&too_many, &mut cache, &mut logits).unwrap_err();
    assert!(
        matches!(err, BurnBackendError::Cache(CacheError::CapacityExceeded { needed: 17, capacity: 16 })),
        "{err}"
    );
    assert_eq!(cache.seq_len(), len, "errors must leave the cache at its length");
    assert_eq!(cache.truncate(len + 1), Err(CacheError::TruncateBeyondLength { requested: len + 1, len }));

    // The cache still works after the errors, and a fork is independent.
    let mut fork = cache.fork().unwrap();
    model.forward(&[prompt[0]], &mut fork, &mut logits).unwrap();
    assert_eq!((cache.seq_len(), fork.seq_len()), (len, len + 1));

    assert!(matches!(
        model.new_cache_with_capacity(0),
        Err(BurnBackendError::InvalidParameter { name: "cache capacity", .. })
    ));
    assert!(model.new_cache_with_capacity(model.max_context() + 1).is_err());
}

#[test]
fn load_errors_are_typed() {
    let err = Llama::load("/nonexistent/model.gguf", &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, BurnBackendError::Load(perpetua_model_files::ModelError::ModelNotFound { .. })),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("perpetua-burn-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"not a gguf file at all").unwrap();
    let err = Llama::load(&bad, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, BurnBackendError::Load(perpetua_model_files::ModelError::MalformedGguf { .. })),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let path = perpetua_burn::default_model_path().unwrap();
    let err = Llama::load(&path, &LoadOptions { cache_capacity: Some(0), ..Default::default() }).unwrap_err();
    assert!(matches!(err, BurnBackendError::InvalidParameter { name: "cache_capacity", .. }), "{err}");
}
