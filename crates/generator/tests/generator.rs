//! Generator acceptance tests on the fake model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_generator::{
    ChatMessage, ContextRoll, Event, FinishReason, GenerateError, Generation, Generator, Prompt,
    RepetitionDetection,
};
use perpetua_kv_cache::testing::{ConformanceConfig, run_all};
use perpetua_perpetual::{EosAction, EosDrawn, EosStrategy, StepInfo, StepPlan};
use perpetua_sampling::samplers::{Greedy, Multinomial};
use perpetua_sampling::{Candidates, Chain, LogitsProcessor, SamplingContext};
use proptest::prelude::*;

const EOS: u32 = ByteTokenizer::EOS;
const V: usize = ByteTokenizer::VOCAB_SIZE;

fn model() -> FakeModel {
    FakeModel::new(V).with_eos(EOS)
}

/// A model that (almost) never draws EOS on its own.
fn no_eos_model(seed: u64) -> FakeModel {
    FakeModel::new(V).with_eos(EOS).with_eos_bias(-100.0).with_seed(seed)
}

/// Replace an EOS draw by the runner-up (two draws per step).
struct RunnerUp;
impl EosStrategy for RunnerUp {
    fn name(&self) -> &'static str {
        "runner_up"
    }
    fn plan_step(&mut self, _: &StepInfo) -> StepPlan {
        StepPlan { draws: 2, ..StepPlan::default() }
    }
    fn on_eos(&mut self, e: &EosDrawn<'_>) -> EosAction {
        e.draws.get(1).map_or(EosAction::Stop, |&token| EosAction::Replace { token })
    }
}

/// Back step `n` tokens on the first `times` EOS draws, then take the runner-up.
/// Records what `on_backstep` was told.
struct BackstepBy {
    n: usize,
    times: usize,
    seen: Vec<(usize, usize)>,
}
impl EosStrategy for BackstepBy {
    fn name(&self) -> &'static str {
        "backstep_by"
    }
    fn plan_step(&mut self, _: &StepInfo) -> StepPlan {
        StepPlan { draws: 2, ..StepPlan::default() }
    }
    fn on_eos(&mut self, e: &EosDrawn<'_>) -> EosAction {
        if self.times > 0 {
            self.times -= 1;
            EosAction::Backstep { n: self.n }
        } else {
            e.draws.get(1).map_or(EosAction::Stop, |&token| EosAction::Replace { token })
        }
    }
    fn on_backstep(&mut self, removed: usize, generated: usize) {
        self.seen.push((removed, generated));
    }
}

/// Masks a fixed set of ids.
struct Ban(Vec<u32>);
impl LogitsProcessor for Ban {
    fn name(&self) -> &'static str {
        "ban"
    }
    fn process(&mut self, c: &mut Candidates, _: &SamplingContext<'_>) -> perpetua_sampling::Result<()> {
        for &id in &self.0 {
            c.mask(id);
        }
        Ok(())
    }
}

/// Replays a stream's text protocol: token deltas appended, back steps truncate,
/// the finish releases the rest.
fn collect_stream(events: &[Event]) -> String {
    let mut text = String::new();
    for e in events {
        match e {
            Event::Token { text: d, .. } => text.push_str(d),
            Event::Backstep { text_len, .. } => text.truncate(*text_len),
            Event::Finished { text: d, .. } => text.push_str(d),
            _ => {}
        }
    }
    text
}

fn run_stream(
    g: &mut Generator<impl perpetua_generator::LanguageModel>,
    prompt: Prompt,
) -> (Vec<Event>, Generation) {
    let mut stream = g.stream(prompt).unwrap();
    let mut events = Vec::new();
    for e in stream.by_ref() {
        events.push(e.unwrap());
    }
    (events, stream.into_output())
}

fn prompt_ids() -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(0u32..256, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The fake model's cache passes the kv-cache conformance kit, exactly.
    #[test]
    fn fake_cache_passes_the_conformance_kit(
        tokens in proptest::collection::vec(0u32..V as u32, 2..40),
        cut in 0usize..1000,
        seed in any::<u64>(),
        order in 0usize..6,
        extra in 1usize..32,
    ) {
        let truncate_to = 1 + cut % (tokens.len() - 1);
        let config = ConformanceConfig { tokens, truncate_to, tolerance: 0.0, small_capacity: truncate_to + extra };
        let mut m = FakeModel::new(V).with_seed(seed).with_order(order).with_eos(EOS);
        let report = run_all(&mut m, &config).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(report.max_abs_diff(), 0.0);
    }

    /// Same seed, same prompt, same configuration: the same tokens (fresh generator or
    /// reused one).
    #[test]
    fn same_seed_same_tokens(seed in any::<u64>(), prompt in prompt_ids(), n in 1usize..40) {
        let build = || Generator::builder(model())
            .tokenizer(ByteTokenizer)
            .chain(Chain::new(Multinomial))
            .seed(seed)
            .max_new_tokens(n)
            .build()
            .unwrap();
        let mut g = build();
        let a = g.generate(prompt.clone()).unwrap();
        let b = g.generate(prompt.clone()).unwrap();
        let c = build().generate(prompt).unwrap();
        prop_assert_eq!(&a.ids, &b.ids);
        prop_assert_eq!(&a.ids, &c.ids);
        prop_assert_eq!(&a.text, &c.text);
    }

    /// `max_new_tokens` is exact when nothing else stops generation.
    #[test]
    fn max_new_tokens_is_exact(seed in any::<u64>(), prompt in prompt_ids(), n in 0usize..80) {
        let mut g = Generator::builder(no_eos_model(seed)).seed(seed).max_new_tokens(n).build().unwrap();
        let out = g.generate(prompt).unwrap();
        prop_assert_eq!(out.ids.len(), n);
        prop_assert_eq!(out.counts.generated_tokens, n);
        prop_assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
    }

    /// EOS is masked until `min_new_tokens`: with EOS forced at every position, the
    /// output has exactly `min_new_tokens` tokens, none of them EOS.
    #[test]
    fn min_new_tokens_holds(seed in any::<u64>(), prompt in prompt_ids(), min in 0usize..30) {
        let mut m = model().with_seed(seed);
        for pos in 0..prompt.len() + 40 {
            m = m.force_eos_at(pos);
        }
        let mut g = Generator::builder(m)
            .tokenizer(ByteTokenizer)
            .seed(seed)
            .min_new_tokens(min)
            .max_new_tokens(60)
            .build()
            .unwrap();
        let out = g.generate(prompt).unwrap();
        prop_assert_eq!(out.finish_reason, FinishReason::Eos);
        prop_assert_eq!(out.ids.len(), min);
        prop_assert!(!out.ids.contains(&EOS));
    }

    /// A token masked by the chain never appears, also through EOS replacement.
    #[test]
    fn a_masked_token_never_appears(
        seed in any::<u64>(),
        prompt in prompt_ids(),
        banned in proptest::collection::vec(0u32..256, 1..200),
        replace in any::<bool>(),
    ) {
        let chain = Chain::new(Multinomial).with(Ban(banned.clone()));
        let mut b = Generator::builder(model().with_seed(seed).with_eos_bias(2.0))
            .chain(chain)
            .eos_ids([EOS])
            .seed(seed)
            .max_new_tokens(50);
        if replace {
            b = b.eos_strategy(RunnerUp);
        }
        let out = b.build().unwrap().generate(prompt).unwrap();
        for id in &out.ids {
            prop_assert!(!banned.contains(id), "banned token {} appeared", id);
        }
        prop_assert!(!out.ids.contains(&EOS));
    }

    /// Stop strings spanning token boundaries are found and trimmed (or kept when
    /// configured), and the streamed text equals the result's text.
    #[test]
    fn stop_strings_spanning_tokens_are_found_and_trimmed(
        seed in any::<u64>(),
        prompt in prompt_ids(),
        start in 0usize..1000,
        len in 2usize..6,
        include in any::<bool>(),
    ) {
        let build = |stop: Option<String>| {
            let mut b = Generator::builder(no_eos_model(seed)).tokenizer(ByteTokenizer).seed(seed).max_new_tokens(60);
            if let Some(s) = stop {
                b = b.stop_string(s).include_stop_string(include);
            }
            b.build().unwrap()
        };
        let reference = build(None).generate(prompt.clone()).unwrap();
        // Pick a substring of whole characters, not touching the final flushed char.
        let chars: Vec<(usize, char)> = reference.text.char_indices().collect();
        prop_assume!(chars.len() > len + 1);
        let i = start % (chars.len() - len - 1);
        let (from, to) = (chars[i].0, chars[i + len].0);
        let stop = reference.text[from..to].to_owned();
        prop_assume!(stop.len() >= 2); // spans at least two byte tokens
        let first = reference.text.find(&stop).unwrap();

        let mut g = build(Some(stop.clone()));
        let (events, out) = run_stream(&mut g, prompt.into());
        prop_assert_eq!(&out.finish_reason, &FinishReason::StopString { index: 0 });
        let expected_end = if include { first + stop.len() } else { first };
        prop_assert_eq!(&out.text, &reference.text[..expected_end]);
        prop_assert_eq!(collect_stream(&events), out.text.clone());
        // Tokens are those of the reference up to the one completing the match.
        prop_assert_eq!(&out.ids[..], &reference.ids[..out.ids.len()]);
    }

    /// Cancelling through the flag after `k` tokens returns exactly those `k` tokens
    /// with reason `Cancelled`.
    #[test]
    fn cancellation_returns_tokens_so_far(seed in any::<u64>(), prompt in prompt_ids(), k in 0usize..30) {
        let reference = Generator::builder(no_eos_model(seed)).seed(seed).max_new_tokens(40).build().unwrap()
            .generate(prompt.clone()).unwrap();
        let flag = Arc::new(AtomicBool::new(k == 0));
        let mut g = Generator::builder(no_eos_model(seed))
            .seed(seed)
            .max_new_tokens(40)
            .cancel_flag(flag.clone())
            .build()
            .unwrap();
        let mut stream = g.stream(prompt).unwrap();
        let mut tokens = 0;
        for e in stream.by_ref() {
            if let Event::Token { .. } = e.unwrap() {
                tokens += 1;
                if tokens == k {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
        let out = stream.into_output();
        prop_assert_eq!(out.finish_reason, FinishReason::Cancelled);
        prop_assert_eq!(&out.ids[..], &reference.ids[..k]);
    }

    /// A model error mid-generation returns the partial output and the error.
    #[test]
    fn model_error_returns_partial_output(seed in any::<u64>(), prompt in prompt_ids(), k in 0usize..30) {
        let reference = Generator::builder(no_eos_model(seed)).seed(seed).max_new_tokens(40).build().unwrap()
            .generate(prompt.clone()).unwrap();
        // Prefill is one call when the prompt has >= 2 tokens; decode call j is step j.
        let prefill_calls = usize::from(prompt.len() >= 2);
        let m = no_eos_model(seed).fail_at_call(prefill_calls + k);
        let err = Generator::builder(m).seed(seed).max_new_tokens(40).build().unwrap().generate(prompt).unwrap_err();
        match err {
            GenerateError::PartialGeneration { output, source } => {
                prop_assert_eq!(&output.ids[..], &reference.ids[..k]);
                prop_assert_eq!(output.finish_reason, FinishReason::Error);
                prop_assert!(matches!(*source, GenerateError::Model(_)), "{}", source);
            }
            other => prop_assert!(false, "expected PartialGeneration, got {}", other),
        }
    }

    /// Back steps: sequence and cache lengths agree after every back step, the
    /// strategy is told the clamped count, the prompt is never eaten, the streamed text
    /// protocol holds, and a back step costs only regenerated forward passes.
    #[test]
    fn backstep_truncates_sequence_and_cache(
        seed in any::<u64>(),
        prompt in prompt_ids(),
        n in 0usize..20,
        times in 1usize..4,
        eos_at in 0usize..25,
    ) {
        let m = model().with_seed(seed).with_eos_bias(-100.0).force_eos_at(prompt.len() + eos_at);
        let strategy = BackstepBy { n, times, seen: Vec::new() };
        let mut g = Generator::builder(&m)
            .tokenizer(ByteTokenizer)
            .eos_strategy(strategy)
            .seed(seed)
            .max_new_tokens(40)
            .build()
            .unwrap();
        let mut stream = g.stream(prompt.clone()).unwrap();
        let mut events = Vec::new();
        let mut backsteps = 0;
        while let Some(e) = stream.next() {
            let e = e.unwrap();
            if let Event::Backstep { from, to, .. } = e {
                backsteps += 1;
                prop_assert_eq!(to, from - n.min(from));
                prop_assert!(stream.sequence_len() >= prompt.len());
                prop_assert_eq!(stream.cache_len(), stream.sequence_len() - 1);
            }
            events.push(e);
        }
        let out = stream.into_output();
        prop_assert_eq!(backsteps, times.min(out.counts.backsteps));
        prop_assert_eq!(out.counts.backsteps, backsteps);
        prop_assert_eq!(collect_stream(&events), out.text.clone());
        // Every decode pass feeds exactly one token; the prompt is prefilled once.
        prop_assert_eq!(m.tokens_fed(), prompt.len() - 1 + out.counts.forward_passes);
        prop_assert_eq!(
            out.counts.forward_passes,
            out.ids.len() + out.counts.tokens_removed + out.counts.backsteps
        );
        prop_assert!(!out.ids.contains(&EOS));
    }

    /// Streamed text deltas are whole characters and add up to the result's text.
    #[test]
    fn streamed_text_equals_result_text(seed in any::<u64>(), prompt in prompt_ids(), n in 0usize..60) {
        let mut g = Generator::builder(no_eos_model(seed)).tokenizer(ByteTokenizer).seed(seed).max_new_tokens(n)
            .build().unwrap();
        let (events, out) = run_stream(&mut g, prompt.into());
        prop_assert_eq!(collect_stream(&events), out.text.clone());
        prop_assert_eq!(out.text, ByteTokenizer.decode_lossy(&out.ids));
    }
}

/// `decode` through the trait, as a helper.
trait DecodeLossy {
    fn decode_lossy(&self, ids: &[u32]) -> String;
}
impl DecodeLossy for ByteTokenizer {
    fn decode_lossy(&self, ids: &[u32]) -> String {
        perpetua_generator::Tokenizer::decode(self, ids, true).unwrap()
    }
}

#[test]
fn dropping_the_stream_stops_the_model() {
    let m = no_eos_model(3);
    let mut g = Generator::builder(&m).max_new_tokens(100).build().unwrap();
    let taken = g.stream([1u32, 2, 3]).unwrap().take(5).count();
    assert_eq!(taken, 5);
    // One prefill call + one decode call per token event taken.
    assert_eq!(m.forward_calls(), 1 + 5);
}

#[test]
fn callback_break_cancels() {
    let mut g = Generator::builder(no_eos_model(1)).max_new_tokens(100).build().unwrap();
    let mut seen = 0;
    let out = g
        .generate_with([5u32, 6], |e| {
            if matches!(e, Event::Token { .. }) {
                seen += 1;
            }
            if seen == 7 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert_eq!(out.ids.len(), 7);
}

#[test]
fn eos_replacement_emits_eos_avoided_and_never_writes_eos() {
    let prompt = [10u32, 11, 12];
    let m = model().with_seed(9).with_eos_bias(-100.0).force_eos_at(prompt.len() + 4);
    let mut g = Generator::builder(m)
        .eos_ids([EOS])
        .eos_strategy(RunnerUp)
        .seed(9)
        .max_new_tokens(10)
        .build()
        .unwrap();
    let (events, out) = run_stream(&mut g, prompt.to_vec().into());
    let avoided: Vec<_> = events.iter().filter(|e| matches!(e, Event::EosAvoided { .. })).collect();
    assert_eq!(avoided.len(), 1);
    assert!(matches!(avoided[0], Event::EosAvoided { position: 4, p_eos, .. } if *p_eos > 0.99));
    assert_eq!(out.ids.len(), 10);
    assert!(!out.ids.contains(&EOS));
    assert_eq!(out.counts.eos_avoided, 1);
}

#[test]
fn default_strategy_stops_at_eos_without_writing_it() {
    let prompt = [10u32, 11, 12];
    let m = model().with_seed(9).with_eos_bias(-100.0).force_eos_at(prompt.len() + 6);
    let mut g = Generator::builder(m).eos_ids([EOS]).seed(9).max_new_tokens(50).build().unwrap();
    let out = g.generate(prompt).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Eos);
    assert_eq!(out.ids.len(), 6);
}

#[test]
fn context_rolls_and_generation_continues() {
    // The fake model shifts exactly, so both ways of rolling give the same tokens; a
    // shift feeds nothing, a re-prefill feeds the sink and the kept tokens.
    let mut runs = Vec::new();
    for (roll, shift) in
        [(ContextRoll::Shift, true), (ContextRoll::Reprefill, true), (ContextRoll::Shift, false)]
    {
        let m = no_eos_model(4).with_max_context(16);
        let m = if shift { m } else { m.without_shift() };
        let mut g = Generator::builder(&m).seed(4).max_new_tokens(200).context_roll(roll).build().unwrap();
        let prompt = [1u32, 2, 3, 4, 5];
        let mut stream = g.stream(prompt).unwrap();
        let (mut rolls, mut reprefilled_sum) = (0, 0);
        while let Some(e) = stream.next() {
            if let Event::ContextRolled { kept, dropped, reprefilled, .. } = e.unwrap() {
                rolls += 1;
                reprefilled_sum += reprefilled;
                assert!(kept < 16);
                let shifted = roll == ContextRoll::Shift && shift;
                assert_eq!(reprefilled == 0, shifted, "{roll:?} shift={shift}: {reprefilled}");
                // Seen after the step that rolled (it then fed the pending token and drew
                // one more): the cache holds the prompt (the sink) then the most recent
                // tokens, all but the new pending one.
                let seq = stream.sequence();
                let cached = stream.cache().tokens();
                assert_eq!(cached.len(), kept + 1);
                assert_eq!(&cached[..prompt.len()], &prompt);
                assert!(seq[..seq.len() - 1].ends_with(&cached[prompt.len()..]));
                assert_eq!(seq.len() - 1, cached.len() + dropped);
            }
            assert!(stream.cache_len() <= 16, "a full cache rolls before the next feed");
        }
        let out = stream.into_output();
        assert_eq!(out.ids.len(), 200);
        assert!(rolls > 5, "{rolls} rolls");
        assert_eq!(out.counts.context_rolls, rolls);
        assert_eq!(out.counts.reprefilled_tokens, reprefilled_sum);
        // Prompt prefill (all but the pending token), one per decode pass, the re-prefills.
        assert_eq!(m.tokens_fed(), prompt.len() - 1 + out.counts.forward_passes + reprefilled_sum);
        runs.push(out.ids);
    }
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], runs[2]);
}

#[test]
fn backstep_after_a_roll_never_crosses_it() {
    let prompt = [1u32, 2, 3];
    let m = model().with_seed(2).with_eos_bias(-100.0).with_max_context(12).force_eos_at(11);
    // Position 11 recurs after every roll (the cache refills to ~8, grows to 11).
    let strategy = BackstepBy { n: 100, times: 5, seen: Vec::new() };
    let mut g = Generator::builder(m)
        .eos_ids([EOS])
        .eos_strategy(strategy)
        .seed(2)
        .max_new_tokens(60)
        .build()
        .unwrap();
    let out = g.generate(prompt).unwrap();
    assert_eq!(out.ids.len(), 60);
    assert!(out.counts.backsteps > 0);
}

#[test]
fn repetition_detection_finishes() {
    let (a, b) = (65u32, 66u32);
    let m = no_eos_model(0).with_rule(&[a], b, 100.0).with_rule(&[b], a, 100.0);
    let mut g = Generator::builder(m)
        .chain(Chain::new(Greedy))
        .repetition_detection(RepetitionDetection::new(1, 4, 3).unwrap())
        .max_new_tokens(50)
        .build()
        .unwrap();
    let out = g.generate([a]).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Repetition { pattern_len: 2, repeats: 3 });
    assert_eq!(out.ids, vec![b, a, b, a, b, a]);
}

#[test]
fn generate_n_shares_one_prefill() {
    let m = no_eos_model(8);
    let prompt: Vec<u32> = (0..20).collect();
    let single = Generator::builder(no_eos_model(8))
        .seed(8)
        .max_new_tokens(10)
        .build()
        .unwrap()
        .generate(prompt.clone())
        .unwrap();
    let mut g = Generator::builder(&m).seed(8).max_new_tokens(10).build().unwrap();
    let outs = g.generate_n(prompt.clone(), 3).unwrap();
    assert_eq!(outs.len(), 3);
    assert_eq!(outs[0].ids, single.ids, "sample 0 is the plain generation");
    assert_ne!(outs[0].ids, outs[1].ids, "samples use different streams");
    let passes: usize = outs.iter().map(|o| o.counts.forward_passes).sum();
    assert_eq!(m.tokens_fed(), prompt.len() - 1 + passes);
}

/// A sample that fails keeps every other sample: the error carries them all, the
/// failing sample's partial output in its place (nothing generated is lost).
#[test]
fn generate_n_keeps_the_other_samples_when_one_fails() {
    let prompt: Vec<u32> = (0..20).collect();
    // Call 0 prefills (one chunk); the samples then step side by side, each step one
    // call per sample in order: call 15 is the 5th step of sample 2.
    let m = no_eos_model(8).fail_at_call(15);
    let mut g = Generator::builder(&m).seed(8).max_new_tokens(10).build().unwrap();
    let err = g.generate_n(prompt.clone(), 3).unwrap_err();
    let samples = err.partial_samples().unwrap_or_else(|| panic!("samples dropped: {err}"));
    assert_eq!(samples.len(), 3, "{err}");
    assert_eq!((samples[0].ids.len(), samples[0].finish_reason.clone()), (10, FinishReason::MaxNewTokens));
    assert_eq!((samples[1].ids.len(), samples[1].finish_reason.clone()), (10, FinishReason::MaxNewTokens));
    assert_eq!((samples[2].ids.len(), samples[2].finish_reason.clone()), (4, FinishReason::Error));
    assert!(
        matches!(err, GenerateError::PartialSamples { ref source, .. } if matches!(**source, GenerateError::Model(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("sample 2 of 3"), "{err}");
    // The same samples as a run that does not fail, up to the failure.
    let ok = Generator::builder(no_eos_model(8))
        .seed(8)
        .max_new_tokens(10)
        .build()
        .unwrap()
        .generate_n(prompt.clone(), 3)
        .unwrap();
    assert_eq!(samples[0].ids, ok[0].ids);
    assert_eq!(samples[1].ids, ok[1].ids);
    assert_eq!(samples[2].ids, ok[2].ids[..4]);
    // When no sample finishes, the error is the (first) failure's partial generation,
    // as `generate`'s.
    let m = no_eos_model(8).fail_at_call(3);
    let mut g = Generator::builder(&m).seed(8).max_new_tokens(10).build().unwrap();
    let err = g.generate_n(prompt, 1).unwrap_err();
    assert_eq!(err.partial_output().map(|o| o.ids.len()), Some(2), "{err:?}");
}

#[test]
fn trace_has_one_entry_per_forward_pass() {
    let mut g = Generator::builder(model().with_seed(5).with_eos_bias(1.0))
        .tokenizer(ByteTokenizer)
        .seed(5)
        .trace(true)
        .top_logprobs(3)
        .max_new_tokens(30)
        .build()
        .unwrap();
    let (events, out) = run_stream(&mut g, Prompt::Text("hello".into()));
    let trace = out.trace.as_ref().unwrap();
    assert_eq!(trace.len(), out.counts.forward_passes);
    for t in trace {
        assert!((0.0..=1.0).contains(&t.p_eos));
        assert!((t.eos_information_bits - (-(t.p_eos as f64).log2()) as f32).abs() < 1e-3);
        assert!(t.chosen_prob > 0.0 && t.chosen_prob <= 1.0);
        assert!(t.entropy >= 0.0 && t.varentropy >= 0.0);
        assert_eq!(t.temperature, 1.0);
    }
    for e in &events {
        if let Event::Token { top, logprob, .. } = e {
            assert_eq!(top.len(), 3);
            assert!(top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
            assert!(*logprob <= top[0].logprob + 1e-6);
        }
    }
    assert!(out.timings.decode >= out.timings.forward);
    assert!((0.0..=1.0).contains(&out.sampling_share()));
}

#[test]
fn chat_prompts_go_through_the_template() {
    let m = no_eos_model(6);
    let mut g = Generator::builder(&m).tokenizer(ByteTokenizer).max_new_tokens(3).build().unwrap();
    let ids = g.encode_prompt(Prompt::Chat(vec![ChatMessage::user("hi")])).unwrap();
    assert_eq!(ids[0], ByteTokenizer::BOS);
    assert!(ids.ends_with(b"assistant: ".map(u32::from).as_slice()));
    assert_eq!(g.generate(vec![ChatMessage::user("hi")]).unwrap().ids.len(), 3);
}

#[test]
fn invalid_configurations_are_typed_errors() {
    let e = Generator::builder(model()).stop_string("x").build().err().unwrap();
    assert!(matches!(e, GenerateError::NoTokenizer { needed_for: "stop strings" }));
    let e = Generator::builder(model()).tokenizer(ByteTokenizer).stop_string("").build().err().unwrap();
    assert!(matches!(e, GenerateError::InvalidParameter { name: "stop_strings", .. }));
    let e = Generator::builder(model()).prefill_chunk(0).build().err().unwrap();
    assert!(matches!(e, GenerateError::InvalidParameter { name: "prefill_chunk", .. }));
    let e = Generator::builder(model()).eos_ids([9999]).build().err().unwrap();
    assert!(matches!(e, GenerateError::InvalidParameter { name: "eos_ids", .. }));
    let mut g = Generator::builder(model().with_max_context(8)).build().unwrap();
    assert!(matches!(g.generate(Vec::<u32>::new()), Err(GenerateError::EmptyPrompt)));
    assert!(matches!(g.generate(vec![1u32; 9]), Err(GenerateError::PromptTooLong { len: 9, window: 8 })));
    assert!(matches!(g.generate("text"), Err(GenerateError::NoTokenizer { .. })));
    assert!(matches!(g.generate([300u32]), Err(GenerateError::InvalidParameter { name: "prompt", .. })));
    let mut g = Generator::builder(model()).context_window(3).build().unwrap();
    assert!(matches!(
        g.generate([1u32]),
        Err(GenerateError::InvalidParameter { name: "context_window", .. })
    ));
}

#[test]
fn prefill_is_chunked() {
    let m = no_eos_model(0);
    let mut g = Generator::builder(&m).prefill_chunk(4).max_new_tokens(1).build().unwrap();
    g.generate((0..11).collect::<Vec<u32>>()).unwrap();
    // 10 prefill tokens in chunks of 4 → 3 calls, then 1 decode call.
    assert_eq!(m.forward_calls(), 3 + 1);
    assert_eq!(m.tokens_fed(), 11);
}

/// Plans temperature 2.0 for the first three steps, then the chain's own.
struct WarmStart;
impl EosStrategy for WarmStart {
    fn name(&self) -> &'static str {
        "warm_start"
    }
    fn plan_step(&mut self, step: &StepInfo) -> StepPlan {
        StepPlan { temperature: (step.generated < 3).then_some(2.0), ..StepPlan::default() }
    }
    fn on_eos(&mut self, _: &EosDrawn<'_>) -> EosAction {
        EosAction::Stop
    }
}

/// Records the temperature override every step sees.
struct SeeTemperature(Arc<std::sync::Mutex<Vec<Option<f32>>>>);
impl LogitsProcessor for SeeTemperature {
    fn name(&self) -> &'static str {
        "see_temperature"
    }
    fn process(&mut self, _: &mut Candidates, ctx: &SamplingContext<'_>) -> perpetua_sampling::Result<()> {
        self.0.lock().unwrap().push(ctx.temperature_override);
        Ok(())
    }
}

#[test]
fn planned_temperature_reaches_the_chain_and_is_reported() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let chain = Chain::new(Multinomial).with(SeeTemperature(seen.clone()));
    let mut g = Generator::builder(no_eos_model(1))
        .chain(chain)
        .eos_strategy(WarmStart)
        .max_new_tokens(5)
        .build()
        .unwrap();
    let (events, _) = run_stream(&mut g, vec![1u32, 2].into());
    let changes: Vec<(f32, f32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::TemperatureChanged { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(changes, vec![(1.0, 2.0), (2.0, 1.0)]);
    assert_eq!(*seen.lock().unwrap(), vec![Some(2.0), Some(2.0), Some(2.0), None, None]);
}

#[test]
fn max_time_zero_finishes_before_the_first_token() {
    let mut g = Generator::builder(no_eos_model(1)).max_time(std::time::Duration::ZERO).build().unwrap();
    let out = g.generate([1u32, 2]).unwrap();
    assert_eq!(out.finish_reason, FinishReason::MaxTime);
    assert!(out.ids.is_empty());
}

/// A fake model that writes exactly `text` (byte tokens) after `prompt`, then EOS.
fn scripted(prompt: &[u32], text: &str) -> FakeModel {
    let mut m = FakeModel::new(V).with_eos(EOS).with_eos_bias(-100.0);
    let mut context = prompt.to_vec();
    for &b in text.as_bytes() {
        m = m.with_rule(&context, u32::from(b), 100.0);
        context.push(u32::from(b));
    }
    m.force_eos_at(context.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Multi-byte text written one byte per token streams as whole characters that add
    /// up to the text; a multi-byte stop string inside it is found and trimmed.
    #[test]
    fn multibyte_text_streams_whole_chars_and_stops(text in "\\PC{1,16}", from in 0usize..100, len in 1usize..4) {
        let prompt = [1u32, 2];
        let mut g = Generator::builder(scripted(&prompt, &text))
            .tokenizer(ByteTokenizer)
            .chain(Chain::new(Greedy))
            .build()
            .unwrap();
        let (events, out) = run_stream(&mut g, prompt.to_vec().into());
        prop_assert_eq!(&out.finish_reason, &FinishReason::Eos);
        prop_assert_eq!(&out.text, &text);
        prop_assert_eq!(collect_stream(&events), text.clone());

        let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len())).collect();
        let n_chars = chars.len() - 1;
        let i = from % n_chars;
        let j = (i + len).min(n_chars);
        let stop = text[chars[i]..chars[j]].to_owned();
        let first = text.find(&stop).unwrap();
        let mut g = Generator::builder(scripted(&prompt, &text))
            .tokenizer(ByteTokenizer)
            .chain(Chain::new(Greedy))
            .stop_string(stop.clone())
            .build()
            .unwrap();
        let (events, out) = run_stream(&mut g, prompt.to_vec().into());
        prop_assert_eq!(&out.finish_reason, &FinishReason::StopString { index: 0 });
        prop_assert_eq!(&out.text, &text[..first]);
        prop_assert_eq!(collect_stream(&events), text[..first].to_owned());
        // Nothing of the stop string was ever streamed.
        let streamed: String = events.iter().filter_map(|e| match e {
            Event::Token { text, .. } => Some(text.as_str()),
            _ => None,
        }).collect();
        prop_assert_eq!(streamed, text[..first].to_owned());
    }
}

/// Errors and results cross threads (`?` into `Box<dyn Error + Send + Sync>`), and a
/// generator over a `Send` model can move to a worker thread.
#[test]
fn errors_results_and_generators_are_send() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send>() {}
    send_sync::<GenerateError>();
    send_sync::<Generation>();
    send_sync::<Event>();
    send::<Generator<FakeModel>>();
}
