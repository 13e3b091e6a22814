//! Robustness of the generator on the fake model: non-finite logits, panics
//! in code the generator calls, partial output on failure, and thread safety.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use perpetua_generator::testing::{ByteTokenizer, FakeCache, FakeModel};
use perpetua_generator::{FinishReason, GenerateError, Generation, Generator, LanguageModel};
use perpetua_perpetual::{EosAction, EosDrawn, EosStrategy, StepInfo, StepPlan};
use perpetua_sampling::processors::{TopK, from_fn};
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Chain, NonFinitePolicy, SamplingError};

const EOS: u32 = ByteTokenizer::EOS;
const V: usize = ByteTokenizer::VOCAB_SIZE;
const PROMPT: [u32; 3] = [10, 20, 30];

fn model(seed: u64) -> FakeModel {
    FakeModel::new(V).with_eos(EOS).with_eos_bias(-100.0).with_seed(seed)
}

/// What a corrupted forward pass writes.
#[derive(Clone, Copy, Debug)]
enum Corruption {
    /// One NaN at this token id.
    Nan(usize),
    /// `+inf` at this token id.
    PosInf(usize),
    /// Every logit NaN.
    AllNan,
}

/// The fake model, but the `n`-th forward pass (0-based, prefill included) and every
/// later one writes corrupted logits: a backend going numerically bad midway.
struct Corrupting {
    inner: FakeModel,
    from_call: usize,
    what: Corruption,
    calls: AtomicUsize,
}

impl LanguageModel for Corrupting {
    type Cache = FakeCache;
    type Error = <FakeModel as LanguageModel>::Error;

    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    fn new_cache(&self) -> Result<FakeCache, Self::Error> {
        self.inner.new_cache()
    }
    fn forward(&self, tokens: &[u32], cache: &mut FakeCache, out: &mut Vec<f32>) -> Result<(), Self::Error> {
        self.inner.forward(tokens, cache, out)?;
        if self.calls.fetch_add(1, Ordering::Relaxed) >= self.from_call {
            match self.what {
                Corruption::Nan(id) => out[id] = f32::NAN,
                Corruption::PosInf(id) => out[id] = f32::INFINITY,
                Corruption::AllNan => out.iter_mut().for_each(|l| *l = f32::NAN),
            }
        }
        Ok(())
    }
}

fn corrupting(from_call: usize, what: Corruption) -> Corrupting {
    Corrupting { inner: model(7), from_call, what, calls: AtomicUsize::new(0) }
}

fn partial(err: &GenerateError) -> (&Generation, &GenerateError) {
    match err {
        GenerateError::PartialGeneration { output, source } => (output, source),
        other => panic!("expected PartialGeneration, got {other:?}"),
    }
}

#[test]
fn nan_logits_are_an_error_by_default_and_keep_the_output() {
    // Call 0 is the prefill of the first two prompt tokens, calls 1.. are decode steps:
    // from call 6 on, token 5 is NaN, so steps 0..=4 succeed.
    let mut g = Generator::builder(corrupting(6, Corruption::Nan(5)))
        .chain(Chain::new(Multinomial).with(TopK::new(10).unwrap()))
        .eos_ids([EOS])
        .max_new_tokens(50)
        .seed(3)
        .build()
        .unwrap();
    let err = g.generate(PROMPT.as_slice()).unwrap_err();
    let (output, source) = partial(&err);
    assert_eq!(output.finish_reason, FinishReason::Error);
    assert_eq!(output.ids.len(), 5, "the tokens before the NaN step are kept");
    assert!(matches!(source, GenerateError::Sampling(SamplingError::NanLogit { id: 5 })), "{source:?}");
    // The same prefix as a clean run with the same seed: nothing was altered before it.
    let mut clean = Generator::builder(model(7))
        .chain(Chain::new(Multinomial).with(TopK::new(10).unwrap()))
        .eos_ids([EOS])
        .max_new_tokens(5)
        .seed(3)
        .build()
        .unwrap();
    assert_eq!(clean.generate(PROMPT.as_slice()).unwrap().ids, output.ids);
}

#[test]
fn pos_inf_logits_are_an_error_by_default() {
    let mut g = Generator::builder(corrupting(2, Corruption::PosInf(9))).max_new_tokens(20).build().unwrap();
    let err = g.generate(PROMPT.as_slice()).unwrap_err();
    let (output, source) = partial(&err);
    assert_eq!(output.ids.len(), 1);
    assert!(matches!(source, GenerateError::Sampling(SamplingError::InfiniteLogit { id: 9 })), "{source:?}");
}

#[test]
fn sanitize_policy_masks_nan_tokens_and_counts_repairs() {
    let mut g = Generator::builder(corrupting(1, Corruption::Nan(5)))
        .eos_ids([EOS])
        .non_finite_policy(NonFinitePolicy::Sanitize)
        .max_new_tokens(200)
        .trace(true)
        .seed(11)
        .build()
        .unwrap();
    let out = g.generate(PROMPT.as_slice()).unwrap();
    assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
    assert_eq!(out.ids.len(), 200);
    assert!(!out.ids.contains(&5), "a NaN token must never be chosen");
    assert_eq!(out.counts.sanitized_logits, 200, "one repair per step, counted");
    let trace = out.trace.as_ref().unwrap();
    assert!(trace.iter().all(|t| t.entropy.is_finite()), "statistics see the repaired logits");
}

#[test]
fn sanitize_policy_lets_pos_inf_tokens_take_all_the_mass() {
    let mut g = Generator::builder(corrupting(1, Corruption::PosInf(9)))
        .non_finite_policy(NonFinitePolicy::Sanitize)
        .max_new_tokens(30)
        .build()
        .unwrap();
    let out = g.generate(PROMPT.as_slice()).unwrap();
    assert_eq!(out.ids, vec![9; 30]);
}

#[test]
fn sanitize_policy_with_nothing_finite_left_is_an_empty_candidate_error() {
    let mut g = Generator::builder(corrupting(3, Corruption::AllNan))
        .non_finite_policy(NonFinitePolicy::Sanitize)
        .max_new_tokens(30)
        .build()
        .unwrap();
    let err = g.generate(PROMPT.as_slice()).unwrap_err();
    let (output, source) = partial(&err);
    assert_eq!(output.ids.len(), 2);
    assert!(
        matches!(
            source,
            GenerateError::Sampling(SamplingError::EmptyCandidates { stage: "sanitize_non_finite" })
        ),
        "{source:?}"
    );
}

#[test]
fn a_chain_built_with_sanitize_is_followed_by_the_generator() {
    let chain = Chain::new(Multinomial).with_non_finite_policy(NonFinitePolicy::Sanitize);
    let mut g = Generator::builder(corrupting(1, Corruption::Nan(5)))
        .chain(chain)
        .max_new_tokens(40)
        .build()
        .unwrap();
    let out = g.generate(PROMPT.as_slice()).unwrap();
    assert_eq!(out.counts.sanitized_logits, 40);
}

/// An EOS strategy that panics on its `n`-th planned step.
struct PanickyStrategy {
    at: usize,
}
impl EosStrategy for PanickyStrategy {
    fn name(&self) -> &'static str {
        "panicky"
    }
    fn plan_step(&mut self, info: &StepInfo) -> StepPlan {
        assert!(info.generated != self.at, "strategy bug at step {}", self.at);
        StepPlan::default()
    }
    fn on_eos(&mut self, _: &EosDrawn<'_>) -> EosAction {
        EosAction::Stop
    }
}

#[test]
fn a_panicking_custom_processor_becomes_an_error_with_the_partial_output() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let chain = Chain::new(Multinomial).with(from_fn("explodes", move |_candidates, _ctx| {
        if seen.fetch_add(1, Ordering::Relaxed) == 12 {
            panic!("custom processor exploded");
        }
        Ok(())
    }));
    let mut g = Generator::builder(model(1)).chain(chain).max_new_tokens(40).build().unwrap();
    let err = g.generate(PROMPT.as_slice()).unwrap_err();
    let (output, source) = partial(&err);
    assert_eq!(output.ids.len(), 12);
    assert_eq!(output.finish_reason, FinishReason::Error);
    match source {
        GenerateError::Panicked { during, message } => {
            assert_eq!(*during, "decode step");
            assert_eq!(message, "custom processor exploded");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    // The generator is still usable: the next run starts clean (the processor no
    // longer panics after its 13th call) and gives 40 tokens.
    let out = g.generate(PROMPT.as_slice()).unwrap();
    assert_eq!(out.ids.len(), 40);
}

#[test]
fn a_panicking_strategy_becomes_an_error_with_the_partial_output() {
    let mut g = Generator::builder(model(2))
        .eos_strategy(PanickyStrategy { at: 7 })
        .max_new_tokens(40)
        .build()
        .unwrap();
    let err = g.generate(PROMPT.as_slice()).unwrap_err();
    let (output, source) = partial(&err);
    assert_eq!(output.ids.len(), 7);
    assert!(
        matches!(source, GenerateError::Panicked { during: "decode step", message } if message == "strategy bug at step 7"),
        "{source:?}"
    );
}

#[test]
fn a_panicking_callback_becomes_an_error_with_the_partial_output() {
    let mut g = Generator::builder(model(3)).max_new_tokens(40).build().unwrap();
    let mut tokens = 0;
    let err = g
        .generate_with(PROMPT.as_slice(), |event| {
            if matches!(event, perpetua_generator::Event::Token { .. }) {
                tokens += 1;
                if tokens == 9 {
                    panic!("callback bug");
                }
            }
            ControlFlow::Continue(())
        })
        .unwrap_err();
    let (output, source) = partial(&err);
    assert_eq!(output.ids.len(), 9, "the token whose event panicked was already accepted");
    assert!(
        matches!(source, GenerateError::Panicked { during: "on_event callback", message } if message == "callback bug"),
        "{source:?}"
    );
}

#[test]
fn a_panicking_model_in_the_prefill_is_an_error() {
    struct PanicsInPrefill(FakeModel);
    impl LanguageModel for PanicsInPrefill {
        type Cache = FakeCache;
        type Error = <FakeModel as LanguageModel>::Error;
        fn vocab_size(&self) -> usize {
            self.0.vocab_size()
        }
        fn max_context(&self) -> usize {
            self.0.max_context()
        }
        fn new_cache(&self) -> Result<FakeCache, Self::Error> {
            self.0.new_cache()
        }
        fn forward(
            &self,
            tokens: &[u32],
            cache: &mut FakeCache,
            out: &mut Vec<f32>,
        ) -> Result<(), Self::Error> {
            if tokens.len() > 1 {
                panic!("backend bug: {} tokens", tokens.len());
            }
            self.0.forward(tokens, cache, out)
        }
    }
    let mut g = Generator::builder(PanicsInPrefill(model(4))).max_new_tokens(5).build().unwrap();
    let err = g.generate(PROMPT.as_slice()).unwrap_err();
    assert!(
        matches!(&err, GenerateError::Panicked { during: "prefill", message } if message == "backend bug: 2 tokens"),
        "{err:?}"
    );
    // `generate_n` opens its prompt the same way: the same typed error, no unwinding.
    let err = g.generate_n(PROMPT.as_slice(), 2).unwrap_err();
    assert!(matches!(&err, GenerateError::Panicked { during: "prefill", .. }), "{err:?}");
    // A one-token prompt has no prefill, so the same generator still works.
    assert_eq!(g.generate([1u32].as_slice()).unwrap().ids.len(), 5);
}

/// The decoders (beam search, speculative, CoT) follow the same rule: a panic in the
/// model or a processor they call becomes `Panicked`, naming the decoder, and the
/// generator stays usable.
#[test]
fn a_panic_inside_a_decoder_is_an_error_naming_the_decoder() {
    use perpetua_generator::{BeamConfig, CotConfig, SpeculativeConfig};
    let explodes_after = |n: usize| {
        let calls = Arc::new(AtomicUsize::new(0));
        Chain::new(Multinomial).with(from_fn("explodes", move |_candidates, _ctx| {
            if calls.fetch_add(1, Ordering::Relaxed) == n {
                panic!("processor bug");
            }
            Ok(())
        }))
    };
    let expect = |err: GenerateError, decoder: &str| {
        assert!(
            matches!(&err, GenerateError::Panicked { during, message } if *during == decoder && message == "processor bug"),
            "{err:?}"
        );
    };

    let mut g = Generator::builder(model(5)).chain(explodes_after(3)).max_new_tokens(8).build().unwrap();
    expect(g.beam_search(PROMPT.as_slice(), &BeamConfig::new(2)).unwrap_err(), "beam search");
    // Still usable: the processor only panics once.
    assert!(g.beam_search(PROMPT.as_slice(), &BeamConfig::new(2)).is_ok());

    let mut g = Generator::builder(model(6)).chain(explodes_after(3)).max_new_tokens(8).build().unwrap();
    expect(g.cot_decode(PROMPT.as_slice(), &CotConfig::new(2)).unwrap_err(), "CoT decoding");
    assert!(g.cot_decode(PROMPT.as_slice(), &CotConfig::new(2)).is_ok());

    let draft = model(7);
    let mut g = Generator::builder(model(7)).chain(explodes_after(3)).max_new_tokens(8).build().unwrap();
    expect(
        g.speculative(&draft, PROMPT.as_slice(), &SpeculativeConfig::new(2)).unwrap_err(),
        "speculative decoding",
    );
    assert!(g.speculative(&draft, PROMPT.as_slice(), &SpeculativeConfig::new(2)).is_ok());
}

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

#[test]
fn generators_are_send_and_shared_models_give_sequential_results_across_threads() {
    assert_send::<Generator<FakeModel>>();
    assert_send::<Generator<Arc<FakeModel>>>();
    assert_sync::<FakeModel>();

    let shared = Arc::new(model(5));
    let run = |m: Arc<FakeModel>, seed: u64| {
        let mut g = Generator::builder(m)
            .chain(Chain::new(Multinomial).with(TopK::new(8).unwrap()))
            .seed(seed)
            .max_new_tokens(300)
            .build()
            .unwrap();
        g.generate(PROMPT.as_slice()).unwrap().ids
    };
    let sequential: Vec<Vec<u32>> = [1, 2].iter().map(|&s| run(shared.clone(), s)).collect();
    assert_ne!(sequential[0], sequential[1], "different seeds must differ for the check to mean anything");
    let parallel: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [1, 2, 1, 2]
            .iter()
            .map(|&seed| {
                let m = shared.clone();
                scope.spawn(move || run(m, seed))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(parallel[0], sequential[0]);
    assert_eq!(parallel[1], sequential[1]);
    assert_eq!(parallel[2], sequential[0]);
    assert_eq!(parallel[3], sequential[1]);
}
