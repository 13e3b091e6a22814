//! `Generator::generate_batch` and `generate_n` on the fake model: ragged batches of
//! 1–8 prompts under perpetual modes with forced EOS (back steps), loops (loop back
//! steps) and resumed turns give every sequence exactly its solo run — ids, text,
//! finish reason, counts and trace — whatever else is in the batch and however wide
//! it is (sequences join as others finish); the generator checks each sequence's cache
//! against its tokens after every step. A failing or panicking sequence leaves the
//! others' outputs intact and keeps its own partial output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;

use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_generator::{
    BatchRequest, Counts, Event, FinishReason, GenerateError, Generation, Generator, PerpetualMode,
    SequenceOptions, StepTrace,
};
use perpetua_sampling::processors::{FnProcessor, Temperature, TopK};
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Candidates, Chain, LogitsProcessor, SamplingContext};
use proptest::prelude::*;

const EOS: u32 = ByteTokenizer::EOS;

/// An order-1 fake model with a strong cycle `a b c d e a …` (it loops) and EOS
/// certain at the given cache lengths.
fn model(seed: u64, eos_at: &[usize]) -> FakeModel {
    let cycle = b"abcde";
    let mut m = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_seed(seed).with_order(1).with_eos(EOS);
    for i in 0..cycle.len() {
        m = m.with_rule(&[u32::from(cycle[i])], u32::from(cycle[(i + 1) % cycle.len()]), 14.0);
    }
    for &p in eos_at {
        m = m.force_eos_at(p);
    }
    m.with_rule(&[u32::from(b' ')], u32::from(b'a'), 6.0)
}

fn chain() -> Chain {
    Chain::new(Multinomial).with(TopK::new(20).unwrap()).with(Temperature::new(1.0).unwrap())
}

fn prompt(bytes: &[u8]) -> Vec<u32> {
    std::iter::once(ByteTokenizer::BOS).chain(bytes.iter().map(|&b| u32::from(b))).collect()
}

fn generator(m: FakeModel, mode: &str, width: usize, max_new: usize) -> Generator<FakeModel> {
    Generator::builder(m)
        .tokenizer(ByteTokenizer::new())
        .chain(chain())
        .seed(5)
        .perpetual(if mode == "recommended" {
            PerpetualMode::recommended()
        } else {
            PerpetualMode::parse(mode).unwrap()
        })
        .max_new_tokens(max_new)
        .max_batch(width)
        .trace(true)
        .build()
        .unwrap()
}

/// Everything of a generation but its timings.
type Essence = (Vec<u32>, String, FinishReason, Counts, Option<Vec<StepTrace>>);

fn essence(g: &Generation) -> Essence {
    (g.ids.clone(), g.text.clone(), g.finish_reason.clone(), g.counts, g.trace.clone())
}

/// A batch result equals the solo one: both finished alike, or both failed with the
/// same partial output.
fn assert_same(
    batch: &Result<Generation, GenerateError>,
    solo: &Result<Generation, GenerateError>,
    i: usize,
) {
    match (batch, solo) {
        (Ok(b), Ok(s)) => assert_eq!(essence(b), essence(s), "sequence {i}"),
        (Err(b), Err(s)) => {
            assert_eq!(b.to_string(), s.to_string(), "sequence {i}");
            let (b, s) = (b.partial_output().unwrap(), s.partial_output().unwrap());
            assert_eq!(essence(b), essence(s), "sequence {i}");
        }
        _ => panic!("sequence {i}: batch {batch:?} vs solo {solo:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_sequence_is_its_solo_run(
        prompts in proptest::collection::vec(proptest::collection::vec(prop::sample::select(b"abcdexyz ".to_vec()), 0..16), 1..=8),
        eos_at in proptest::collection::vec(3usize..60, 0..4),
        mode in prop::sample::select(vec!["plain", "backstep", "dynamic+dry+loop", "backstep+loop+stale", "recommended"]),
        width in 1usize..=8,
        seed in 0u64..1000,
    ) {
        let prompts: Vec<Vec<u32>> = prompts.iter().map(|p| prompt(p)).collect();
        let mut batched = generator(model(seed, &eos_at), mode, width, 40);
        let results = batched.generate_batch(prompts.clone());
        prop_assert_eq!(results.len(), prompts.len());
        let mut solo = generator(model(seed, &eos_at), mode, 1, 40);
        for (i, (p, r)) in prompts.iter().zip(&results).enumerate() {
            assert_same(r, &solo.generate(p.clone()), i);
        }
        // The generator stays usable, its own chain and strategy untouched.
        let again = batched.generate(prompts[0].clone()).unwrap();
        assert_same(&Ok(again), &results[0], 0);
    }
}

/// The batches above do exercise what they claim: back steps at EOS, loop back steps
/// and resumed turns all happen, in sequences that run side by side.
#[test]
fn the_batch_sees_back_steps_loops_and_resumes() {
    let prompts: Vec<Vec<u32>> =
        ["", "xyz", "a b", "zz zz zz", "c", "yyy", "x a", "b"].iter().map(|p| prompt(p.as_bytes())).collect();
    let eos = [6, 9, 14, 20, 31];
    let mut totals = [0usize; 3];
    for mode in ["backstep", "backstep+loop", "recommended"] {
        let mut g = generator(model(3, &eos), mode, 8, 120);
        let results = g.generate_batch(prompts.clone());
        let mut solo = generator(model(3, &eos), mode, 1, 120);
        for (i, (p, r)) in prompts.iter().zip(&results).enumerate() {
            assert_same(r, &solo.generate(p.clone()), i);
            let c = r.as_ref().unwrap().counts;
            totals[0] += c.backsteps;
            totals[1] += c.loop_backsteps;
            totals[2] += c.resumes;
        }
    }
    assert!(totals.iter().all(|&n| n > 0), "back steps, loop back steps, resumes: {totals:?}");
}

/// A stage that panics for one sequence (its prompt starts `BOS x`) at its 5th
/// generated token; copyable, so the batch runs side by side.
#[derive(Clone)]
struct PanicOnX;

impl LogitsProcessor for PanicOnX {
    fn name(&self) -> &'static str {
        "panic_on_x"
    }
    fn process(&mut self, _: &mut Candidates, ctx: &SamplingContext<'_>) -> perpetua_sampling::Result<()> {
        if ctx.tokens.get(1) == Some(&u32::from(b'x')) && ctx.tokens.len() - ctx.prompt_len == 4 {
            panic!("stage failure for the x sequence");
        }
        Ok(())
    }
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(self.clone()))
    }
}

#[test]
fn a_panicking_sequence_keeps_its_output_and_leaves_the_others_intact() {
    let prompts: Vec<Vec<u32>> = ["ab", "xa", "cd", "e"].iter().map(|p| prompt(p.as_bytes())).collect();
    let make = |width| {
        let mut g = generator(model(1, &[10]), "backstep", width, 20);
        g.chain_mut().push(Box::new(PanicOnX));
        g
    };
    let results = make(4).generate_batch(prompts.clone());
    let mut solo = make(1);
    for (i, (p, r)) in prompts.iter().zip(&results).enumerate() {
        assert_same(r, &solo.generate(p.clone()), i);
    }
    let err = results[1].as_ref().unwrap_err();
    assert!(matches!(err.partial_output(), Some(out) if out.ids.len() == 4), "{err}");
    assert!(err.to_string().contains("panic in decode step"), "{err}");
    assert!(results.iter().enumerate().all(|(i, r)| i == 1 || r.is_ok()));
}

/// A model failure is the failing sequence's: the others finish as they would alone,
/// the failing one keeps the tokens it had.
#[test]
fn a_failing_forward_pass_fails_one_sequence() {
    let prompts: Vec<Vec<u32>> = ["ab", "xa", "cd"].iter().map(|p| prompt(p.as_bytes())).collect();
    // Calls 0–2 prefill the three prompts; then each step feeds the three in turn:
    // call 3 + 3·4 + 1 is sequence 1's 5th step.
    let results = generator(model(1, &[]).fail_at_call(16), "plain", 3, 12).generate_batch(prompts.clone());
    let mut solo = generator(model(1, &[]), "plain", 1, 12);
    for (i, p) in prompts.iter().enumerate() {
        let alone = solo.generate(p.clone()).unwrap();
        match &results[i] {
            Ok(g) => assert_eq!(essence(g), essence(&alone), "sequence {i}"),
            Err(e) => {
                assert_eq!(i, 1, "{e}");
                let out = e.partial_output().unwrap();
                assert_eq!((&out.ids[..], &out.finish_reason), (&alone.ids[..4], &FinishReason::Error));
            }
        }
    }
    assert!(results[1].is_err());
}

/// Events arrive per sequence and in order; `Break` cancels one sequence only; a stage
/// that cannot be copied makes the batch run one after another, same results.
#[test]
fn events_per_sequence_cancellation_and_the_one_after_another_fallback() {
    let prompts: Vec<Vec<u32>> = ["ab", "xa", "cd"].iter().map(|p| prompt(p.as_bytes())).collect();
    let mut g = generator(model(2, &[]), "backstep", 3, 15);
    let mut seen = vec![Vec::new(); 3];
    let results = g.generate_batch_with(prompts.clone(), |i, event| {
        if let Event::Token { index, id, .. } = event {
            assert_eq!(*index, seen[i].len());
            seen[i].push(*id);
        }
        if i == 2 && seen[2].len() == 5 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    let mut solo = generator(model(2, &[]), "backstep", 1, 15);
    for i in 0..2 {
        let r = results[i].as_ref().unwrap();
        assert_eq!(r.ids, seen[i]);
        assert_eq!(essence(r), essence(&solo.generate(prompts[i].clone()).unwrap()));
    }
    let cancelled = results[2].as_ref().unwrap();
    assert_eq!((cancelled.ids.len(), &cancelled.finish_reason), (5, &FinishReason::Cancelled));

    let mut closure = generator(model(2, &[]), "backstep", 3, 15);
    closure
        .chain_mut()
        .push(Box::new(FnProcessor::new("noop", |_: &mut Candidates, _: &SamplingContext<'_>| Ok(()))));
    let one_by_one = closure.generate_batch(prompts.clone());
    for (i, r) in one_by_one.iter().enumerate() {
        assert_eq!(essence(r.as_ref().unwrap()), essence(&solo.generate(prompts[i].clone()).unwrap()), "{i}");
    }
}

/// `generate_n` runs its samples side by side: sample `i` is stream `i` whatever the
/// batch width.
#[test]
fn generate_n_is_the_same_at_every_width() {
    let p = prompt(b"a b");
    let wide = generator(model(4, &[12]), "dynamic+dry+loop", 8, 30).generate_n(p.clone(), 5).unwrap();
    let narrow = generator(model(4, &[12]), "dynamic+dry+loop", 1, 30).generate_n(p.clone(), 5).unwrap();
    assert_eq!(wide.len(), 5);
    for (w, n) in wide.iter().zip(&narrow) {
        assert_eq!(essence(w), essence(n));
    }
    assert_eq!(
        essence(&wide[0]),
        essence(&generator(model(4, &[12]), "dynamic+dry+loop", 1, 30).generate(p).unwrap())
    );
}

/// One request of the continuous-batching test: prompt, arrival (in `next` calls),
/// seed, token limit, perpetual mode (`None`: the generator's plain EOS stop), top-k,
/// stop string.
type Request = (Vec<u32>, usize, u64, usize, Option<&'static str>, usize, Option<&'static str>);

fn request_chain(top_k: usize) -> Chain {
    Chain::new(Multinomial).with(TopK::new(top_k).unwrap()).with(Temperature::new(0.9).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// `generate_continuous`: requests arriving while others run, each with its own
    /// seed, limit, chain, perpetual mode and stop string, give exactly the generation
    /// of a generator built with that configuration; every key is answered once; the
    /// generator's own configuration is untouched afterwards.
    #[test]
    fn continuous_requests_are_their_solo_runs(
        requests in proptest::collection::vec((
            proptest::collection::vec(prop::sample::select(b"abcdexyz ".to_vec()), 0..12),
            0usize..30,
            0u64..1000,
            1usize..40,
            prop::sample::select(vec![None, Some("backstep"), Some("dynamic+dry+loop"), Some("recommended")]),
            1usize..30,
            prop::sample::select(vec![None, Some("cd"), Some("e a")]),
        ), 1..=8),
        eos_at in proptest::collection::vec(3usize..50, 0..4),
        width in 1usize..=8,
    ) {
        let requests: Vec<Request> =
            requests.into_iter().map(|(p, at, seed, max, mode, k, stop)| (prompt(&p), at, seed, max, mode, k, stop)).collect();
        let mode_of = |m: &str| if m == "recommended" { PerpetualMode::recommended() } else { PerpetualMode::parse(m).unwrap() };
        let mut base = Generator::builder(model(3, &eos_at))
            .tokenizer(ByteTokenizer::new())
            .chain(chain())
            .seed(5)
            .max_new_tokens(40)
            .max_batch(width)
            .trace(true)
            .build()
            .unwrap();
        let (mut calls, mut next_up) = (0usize, 0usize);
        let mut results: Vec<Option<Result<Generation, GenerateError>>> = requests.iter().map(|_| None).collect();
        base.generate_continuous(
            |idle| {
                calls += 1;
                let (p, at, seed, max, mode, k, stop) = requests.get(next_up)?;
                if !idle && calls < *at {
                    return None; // not arrived yet
                }
                let mut options = SequenceOptions::default().seed(*seed).max_new_tokens(*max).chain(request_chain(*k));
                if let Some(m) = mode {
                    options = options.perpetual(mode_of(m));
                }
                if let Some(s) = stop {
                    options = options.stop_strings([*s]);
                }
                next_up += 1;
                Some(BatchRequest::new(next_up - 1, p.clone()).with_options(options))
            },
            |_, _| ControlFlow::Continue(()),
            |key, result| {
                assert!(results[key].is_none(), "request {key} answered twice");
                results[key] = Some(result);
            },
        );
        for (i, (p, _, seed, max, mode, k, stop)) in requests.iter().enumerate() {
            let mut solo = Generator::builder(model(3, &eos_at))
                .tokenizer(ByteTokenizer::new())
                .chain(request_chain(*k))
                .seed(*seed)
                .max_new_tokens(*max)
                .stop_strings(stop.iter().copied())
                .trace(true);
            if let Some(m) = mode {
                solo = solo.perpetual(mode_of(m));
            }
            let got = results[i].as_ref().unwrap_or_else(|| panic!("request {i} not answered"));
            assert_same(got, &solo.build().unwrap().generate(p.clone()), i);
        }
        // The generator's own configuration (plain, top-k 20, seed 5, 40 tokens) is intact.
        let mut plain = generator(model(3, &eos_at), "plain", 1, 40);
        assert_same(&base.generate(requests[0].0.clone()), &plain.generate(requests[0].0.clone()), 0);
    }
}

/// Invalid options fail that request only, with the parameter named.
#[test]
fn invalid_request_options_fail_that_request_only() {
    let mut g = generator(model(1, &[]), "plain", 4, 10);
    let mut queue = vec![
        BatchRequest::new(0, prompt(b"ab")),
        BatchRequest::new(1, prompt(b"ab")).with_options(SequenceOptions::default().top_logprobs(100_000)),
        BatchRequest::new(2, prompt(b"ab")).with_options(SequenceOptions::default().stop_strings([""])),
        BatchRequest::new(3, Vec::<u32>::new()),
    ];
    queue.reverse();
    let mut done: Vec<(usize, Result<usize, String>)> = Vec::new();
    g.generate_continuous(
        |_| queue.pop(),
        |_, _| ControlFlow::Continue(()),
        |k, r| done.push((k, r.map(|g| g.ids.len()).map_err(|e| e.to_string()))),
    );
    done.sort_by_key(|(k, _)| *k);
    assert_eq!(done[0], (0, Ok(10)));
    assert!(done[1].1.as_ref().unwrap_err().contains("top_logprobs"), "{:?}", done[1]);
    assert!(done[2].1.is_err(), "{:?}", done[2]);
    assert!(done[3].1.as_ref().unwrap_err().contains("empty"), "{:?}", done[3]);
}
