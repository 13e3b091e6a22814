//! Resumed turns ([`EosAction::Resume`], the `resume` EOS method) on the fake model:
//! the resume tokens come from the chat template, are fed to the cache but never
//! appear in the output, the budget counts only visible tokens, back steps never remove
//! them, the cache stays in sync (with and without context rolls), and a generator
//! that cannot resume refuses the mode with a typed error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_generator::testing::{ByteTokenizer, FakeCache, FakeModel};
use perpetua_generator::{Event, FinishReason, GenerateError, Generator, PerpetualMode, TraceEvent};
use perpetua_perpetual::{EosAction, EosDrawn, EosStrategy};
use perpetua_sampling::Chain;
use perpetua_sampling::processors::{Temperature, TopK};
use perpetua_sampling::samplers::Multinomial;
use proptest::prelude::*;

const EOS: u32 = ByteTokenizer::EOS;

/// What the byte tokenizer's template writes between an assistant message and the next
/// assistant turn header, with the default message.
const RESUME: &[u8] = b"\nuser: Continue.\nassistant: ";

fn chain() -> Chain {
    Chain::new(Multinomial).with(TopK::new(20).unwrap()).with(Temperature::new(1.0).unwrap())
}

/// A fake model that draws EOS often (bias +3 over logits in [-4, 4)).
fn eager_model(seed: u64) -> FakeModel {
    FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_seed(seed).with_order(2).with_eos(EOS).with_eos_bias(3.0)
}

fn generator(model: FakeModel, spec: &str, budget: usize) -> Generator<FakeModel> {
    windowed(model, spec, 11, budget, None)
}

/// A generator in mode `spec` with the byte tokenizer; `window`: a context window and,
/// when given, that many sink tokens.
fn windowed(
    model: FakeModel,
    spec: &str,
    seed: u64,
    budget: usize,
    window: Option<(usize, Option<usize>)>,
) -> Generator<FakeModel> {
    let mut b = Generator::builder(model)
        .tokenizer(ByteTokenizer::new())
        .chain(chain())
        .seed(seed)
        .perpetual(PerpetualMode::parse(spec).unwrap())
        .max_new_tokens(budget);
    if let Some((w, sinks)) = window {
        b = b.context_window(w);
        if let Some(n) = sinks {
            b = b.sink_tokens(n);
        }
    }
    b.build().unwrap()
}

/// What the cache may hold between events.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// The sequence minus its pending token.
    Full,
    /// Anything in sync by length (context rolls).
    Rolls,
    /// The prompt, then a contiguous run of the sequence ending before the pending token
    /// (turns that forget).
    Forgets,
    /// All of the prompt but its last token, then a contiguous run (turns that restart:
    /// the hidden token of a resume is the prompt's last token again).
    Restarts,
}

/// The cache holds the prompt then `seq[start..len - 1]` for some `start`.
fn assert_prompt_then_suffix(cache: &[u32], seq: &[u32], prompt_len: usize) {
    assert!(cache.len() >= prompt_len && cache.len() < seq.len(), "{} / {}", cache.len(), seq.len());
    assert_eq!(&cache[..prompt_len], &seq[..prompt_len], "the prompt leads the cache");
    let tail = cache.len() - prompt_len;
    assert_eq!(&cache[prompt_len..], &seq[seq.len() - 1 - tail..seq.len() - 1], "then a recent run");
}

/// Stream a chat prompt, checking at every event that the cache holds what `layout`
/// says and that no back step removes a resume token; returns the output, the visible
/// ids streamed, and the hidden ranges seen.
fn run_checked(
    g: &mut Generator<FakeModel>,
    layout: Layout,
) -> (perpetua_generator::Generation, Vec<u32>, Vec<std::ops::Range<usize>>) {
    let prompt = vec![perpetua_generator::ChatMessage::user("Tell me more")];
    let mut stream = g.stream(prompt).unwrap();
    let mut visible: Vec<(usize, u32)> = Vec::new();
    let mut hidden: Vec<std::ops::Range<usize>> = Vec::new();
    let mut text = String::new();
    let prompt_len = stream.sequence_len() - stream.generated_ids().len();
    while let Some(event) = stream.next() {
        match event.unwrap() {
            Event::Token { index, id, text: delta, .. } => {
                visible.push((index, id));
                text.push_str(&delta);
            }
            Event::Resumed { position, hidden: k } => {
                let seq = stream.sequence();
                let got = &seq[prompt_len + position..prompt_len + position + k];
                assert!(k == 1 || layout != Layout::Restarts, "a restart hides one token, not {k}");
                if k == 1 {
                    assert_eq!(got, &seq[prompt_len - 1..prompt_len], "a restart feeds the prompt's end");
                    if layout != Layout::Rolls {
                        assert_eq!(stream.cache().tokens(), &seq[..prompt_len - 1], "then the prompt alone");
                    }
                } else {
                    assert!(got.iter().copied().eq(RESUME.iter().map(|&b| u32::from(b))), "{got:?}");
                }
                hidden.push(position..position + k);
            }
            Event::Backstep { to, text_len, .. } => {
                let end = hidden.last().map_or(0, |r| r.end);
                assert!(to >= end, "a back step to {to} removed resume tokens ending at {end}");
                visible.retain(|&(i, _)| i < to);
                text.truncate(text_len);
            }
            Event::Finished { text: rest, .. } => text.push_str(&rest),
            _ => {}
        }
        match layout {
            Layout::Full => assert_eq!(stream.cache_len(), stream.sequence_len() - 1),
            Layout::Forgets => {
                assert_prompt_then_suffix(stream.cache().tokens(), stream.sequence(), prompt_len)
            }
            Layout::Restarts => {
                assert_prompt_then_suffix(stream.cache().tokens(), stream.sequence(), prompt_len - 1)
            }
            Layout::Rolls => {}
        }
    }
    let out = stream.into_output();
    let ids: Vec<u32> = visible.iter().map(|&(_, id)| id).collect();
    assert_eq!(out.ids, ids, "the output holds exactly the visible tokens");
    assert_eq!(out.text, text, "the streamed text is the output text");
    (out, ids, hidden)
}

#[test]
fn resumed_turns_are_fed_hidden_and_the_budget_counts_visible_tokens() {
    let mut g = generator(eager_model(1), "resume", 400);
    let (out, _, hidden) = run_checked(&mut g, Layout::Full);
    assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
    assert_eq!((out.ids.len(), out.counts.generated_tokens), (400, 400));
    assert!(out.counts.resumes >= 3, "{:?}", out.counts);
    assert_eq!(out.counts.resumes, hidden.len());
    assert_eq!(out.counts.resume_tokens, hidden.len() * RESUME.len());
    // No resume token and no EOS in the output; each turn is separated by a paragraph.
    assert!(!out.ids.contains(&EOS));
    assert!(!out.text.contains("Continue."), "{}", out.text);
    assert!(out.text.matches("\n\n").count() >= out.counts.resumes);
}

#[test]
fn resume_composes_with_loop_and_stale_back_steps_and_context_rolls() {
    for (spec, window) in [("resume+dry+loop+stale", None), ("resume+loop+stale", Some(96))] {
        let mut b = Generator::builder(eager_model(2))
            .tokenizer(ByteTokenizer::new())
            .chain(chain())
            .seed(3)
            .trace(true)
            .perpetual(PerpetualMode::parse(spec).unwrap())
            .max_new_tokens(600);
        if let Some(w) = window {
            b = b.context_window(w);
        }
        let mut g = b.build().unwrap();
        let (out, _, _) = run_checked(&mut g, if window.is_some() { Layout::Rolls } else { Layout::Full });
        assert_eq!((out.ids.len(), out.finish_reason.clone()), (600, FinishReason::MaxNewTokens), "{spec}");
        assert!(out.counts.resumes > 0, "{spec}: {:?}", out.counts);
        if window.is_some() {
            assert!(out.counts.context_rolls > 0, "{spec}: {:?}", out.counts);
        }
        let resumed =
            out.trace.unwrap().iter().filter(|s| matches!(s.event, TraceEvent::Resumed { .. })).count();
        assert_eq!(resumed, out.counts.resumes, "{spec}");
    }
}

#[test]
fn stale_turns_end_a_salad_turn_and_resume() {
    for (spec, full) in [
        // A budget the loop back steps on the salad do not spend before a turn ends
        // (stale turns are paid from it: removed and resume tokens).
        ("resume+stale=64/0.45/32/0.9+turns", "resume+loop+stale=64/0.45/32/0.9+turns"),
        (
            "dynamic+dry+loop+stale=64/0.45/32/0.9+turns+anticipation",
            "dynamic+dry+loop+stale=64/0.45/32/0.9+turns+anticipation",
        ),
    ] {
        let mut g = generator(FakeModel::salad(7), spec, 500);
        let (out, _, hidden) = run_checked(&mut g, Layout::Full);
        assert_eq!(out.ids.len(), 500, "{spec}");
        assert!(out.counts.resumes >= 1, "{spec}: {:?}", out.counts);
        assert_eq!(hidden.len(), out.counts.resumes, "{spec}");
        assert_eq!(PerpetualMode::parse(spec).unwrap().spec(), full);
    }
    // Without resume tokens stale turns fall back to stale back steps: the same salad
    // gets back steps, never a resume (builder and switch alike).
    let spec = "dynamic+loop+stale=64/0.45/32/0.9+turns+reask+forget";
    let mut g = Generator::builder(FakeModel::salad(7))
        .chain(chain())
        .seed(11)
        .perpetual(PerpetualMode::parse(spec).unwrap())
        .max_new_tokens(500)
        .build()
        .unwrap();
    let out = g.generate(vec![1u32, 2, 3]).unwrap();
    assert_eq!(out.ids.len(), 500);
    assert_eq!(out.counts.resumes, 0, "{:?}", out.counts);
    assert!(out.counts.loop_backsteps > 0, "{:?}", out.counts);
    // The generator reports the mode it runs, not the one asked for.
    let fallback = "dynamic+loop+stale=64/0.45/32/0.9";
    assert_eq!(g.perpetual_mode().map(PerpetualMode::spec).as_deref(), Some(fallback));
    g.set_perpetual(&PerpetualMode::parse(spec).unwrap()).unwrap();
    assert_eq!(g.generate(vec![1u32, 2, 3]).unwrap().counts, out.counts);
    assert_eq!(g.perpetual_mode().map(PerpetualMode::spec).as_deref(), Some(fallback));
    g.set_eos_strategy(perpetua_perpetual::StopAtEos);
    assert!(g.perpetual_mode().is_none());
}

#[test]
fn the_cache_holds_the_resume_tokens_in_order() {
    let mut g = generator(eager_model(4), "resume", 120);
    let prompt = vec![perpetua_generator::ChatMessage::user("Hi")];
    let mut stream = g.stream(prompt).unwrap();
    let mut checked = false;
    while let Some(event) = stream.next() {
        if let Event::Resumed { .. } = event.unwrap() {
            let cache: &FakeCache = stream.cache();
            let seq = stream.sequence();
            assert_eq!(cache.tokens(), &seq[..seq.len() - 1]);
            checked = true;
        }
    }
    assert!(checked, "no turn was resumed");
}

#[test]
fn explicit_resume_tokens_and_a_custom_message() {
    let model = || eager_model(5);
    let mut g = Generator::builder(model())
        .tokenizer(ByteTokenizer::new())
        .chain(chain())
        .perpetual(PerpetualMode::parse("resume").unwrap())
        .resume_message("Go on.")
        .max_new_tokens(200)
        .build()
        .unwrap();
    let out = g.generate(vec![perpetua_generator::ChatMessage::user("Hi")]).unwrap();
    assert!(out.counts.resumes > 0);
    assert_eq!(out.counts.resume_tokens, out.counts.resumes * b"\nuser: Go on.\nassistant: ".len());
    // Ids given by hand need no template.
    let mut g = Generator::builder(model())
        .chain(chain())
        .perpetual(PerpetualMode::parse("resume").unwrap())
        .resume_tokens(vec![10, 10])
        .max_new_tokens(200)
        .build()
        .unwrap();
    let out = g.generate(vec![1u32, 2, 3]).unwrap();
    assert_eq!((out.ids.len(), out.counts.resume_tokens), (200, 2 * out.counts.resumes));
}

#[test]
fn a_generator_that_cannot_resume_refuses_the_mode() {
    let named = |r: Result<Generator<FakeModel>, GenerateError>, name: &str| match r {
        Err(GenerateError::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("built"),
    };
    let b = || Generator::builder(eager_model(1)).perpetual(PerpetualMode::parse("resume").unwrap());
    named(b().build(), "strategy"); // no tokenizer, no ids
    named(b().resume_tokens(vec![]).build(), "resume_tokens");
    named(b().resume_tokens(vec![ByteTokenizer::VOCAB_SIZE as u32]).build(), "resume_tokens");
    // Switching a built generator to it fails the same way, and leaves it usable.
    let mut g = Generator::builder(eager_model(1)).max_new_tokens(10).build().unwrap();
    assert!(g.set_perpetual(&PerpetualMode::parse("resume").unwrap()).is_err());
    assert!(g.generate(vec![1u32, 2]).is_ok());
    // A hand-written strategy asking to resume without resume tokens is an error that
    // keeps what was generated.
    struct AlwaysResume;
    impl EosStrategy for AlwaysResume {
        fn name(&self) -> &'static str {
            "always_resume"
        }
        fn on_eos(&mut self, _: &EosDrawn<'_>) -> EosAction {
            EosAction::Resume
        }
    }
    let mut g = Generator::builder(eager_model(1).force_eos_at(8))
        .eos_strategy(AlwaysResume)
        .eos_ids(vec![EOS])
        .max_new_tokens(50)
        .build()
        .unwrap();
    match g.generate(vec![1u32, 2, 3]) {
        Err(GenerateError::PartialGeneration { output, source }) => {
            assert!(matches!(*source, GenerateError::InvalidStrategyAction { .. }), "{source}");
            assert_eq!(output.ids.len(), 5);
        }
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// For any model seed and budget: the output has exactly the budget of visible
    /// tokens, none of them hidden, and the cache is in sync after every event.
    #[test]
    fn any_run_keeps_the_output_visible_and_the_cache_in_sync(seed in 0u64..1000, budget in 1usize..300) {
        let (spec, layout, window) = match seed % 5 {
            0 => ("resume+loop+stale", Layout::Full, None),
            1 => ("resume+loop+turns", Layout::Full, None),
            2 => ("resume+loop+turns+forget=4", Layout::Forgets, None),
            3 => ("dynamic+loop+stale=64/0.45/32/0.9+turns+restart", Layout::Restarts, None),
            // Restarts between context rolls (which keep the prompt as sinks).
            _ => ("resume+loop+stale+turns+restart", Layout::Rolls, Some(56)),
        };
        let mut g = windowed(eager_model(seed), spec, 11, budget, window.map(|w| (w, None)));
        let (out, ids, _) = run_checked(&mut g, layout);
        prop_assert_eq!(out.ids.len(), budget);
        prop_assert_eq!(ids.len(), budget);
    }
}

/// `reask` (and `GeneratorBuilder::resume_with_prompt`): a resumed turn repeats the chat
/// prompt's last user message; the cache holds exactly those tokens; a text prompt
/// keeps the resume message; switching the mode off restores "Continue.".
#[test]
fn reask_resumes_with_the_prompts_request() {
    let request = |g: &mut Generator<FakeModel>, prompt: perpetua_generator::Prompt| {
        let mut stream = g.stream(prompt).unwrap();
        let mut fed: Vec<Vec<u32>> = Vec::new();
        while let Some(event) = stream.next() {
            if let Event::Resumed { hidden, .. } = event.unwrap() {
                let seq = stream.sequence();
                // The resume tokens end the sequence, the last one pending.
                fed.push(seq[seq.len() - hidden..].to_vec());
                assert_eq!(stream.cache().tokens(), &seq[..seq.len() - 1]);
            }
        }
        fed
    };
    let chat = || {
        perpetua_generator::Prompt::Chat(vec![
            perpetua_generator::ChatMessage::new("system", "Be brief."),
            perpetua_generator::ChatMessage::user("Sing"),
        ])
    };
    let bytes = |s: &[u8]| s.iter().map(|&b| u32::from(b)).collect::<Vec<u32>>();
    let mut g = generator(eager_model(4), "resume+reask", 150);
    assert_eq!(PerpetualMode::parse("resume+reask").unwrap().spec(), "resume+reask");
    let fed = request(&mut g, chat());
    assert!(!fed.is_empty(), "no turn was resumed");
    assert!(fed.iter().all(|f| *f == bytes(b"\nuser: Sing\nassistant: ")), "{fed:?}");
    // A text prompt has no request to repeat: the resume message.
    let fed = request(&mut g, perpetua_generator::Prompt::Text("Sing".into()));
    assert!(!fed.is_empty() && fed.iter().all(|f| *f == bytes(RESUME)), "{fed:?}");
    // The same generator without `reask` goes back to "Continue.".
    g.set_perpetual(&PerpetualMode::parse("resume").unwrap()).unwrap();
    let fed = request(&mut g, chat());
    assert!(!fed.is_empty() && fed.iter().all(|f| *f == bytes(RESUME)), "{fed:?}");
    // The builder switch does the same without a mode's `reask`.
    let mut b = Generator::builder(eager_model(4))
        .tokenizer(ByteTokenizer::new())
        .chain(chain())
        .seed(11)
        .perpetual(PerpetualMode::parse("resume").unwrap())
        .resume_with_prompt(true)
        .max_new_tokens(150)
        .build()
        .unwrap();
    let fed = request(&mut b, chat());
    assert!(!fed.is_empty() && fed.iter().all(|f| *f == bytes(b"\nuser: Sing\nassistant: ")), "{fed:?}");
}

/// `forget` (and `GeneratorBuilder::forget_on_resume`): a resumed turn rolls the model's
/// context back to the prompt, the last `R` tokens written and the resume tokens; the
/// output keeps everything; back steps stay in sync; with context rolls that dropped
/// part of the prompt the prompt is re-prefilled.
#[test]
fn forgetting_turns_start_from_the_prompt() {
    let prompt = || vec![perpetua_generator::ChatMessage::user("Tell me more")];
    for (spec, recall, window) in [
        ("resume+forget", 0, None),
        ("resume+loop+stale+forget=5", 5, None),
        ("resume+loop+stale+turns+forget=3", 3, Some(96)),
    ] {
        // Sinks shorter than the prompt: a roll drops part of it.
        let mut g = windowed(eager_model(6), spec, 2, 400, window.map(|w| (w, Some(2))));
        let mut stream = g.stream(prompt()).unwrap();
        let prompt_len = stream.sequence_len() - stream.generated_ids().len();
        let mut resumes = 0;
        while let Some(event) = stream.next() {
            if let Event::Resumed { position, hidden: k } = event.unwrap() {
                let seq = stream.sequence();
                let r = recall.min(position);
                let want: Vec<u32> = seq[..prompt_len]
                    .iter()
                    .chain(&seq[prompt_len + position - r..seq.len() - 1])
                    .copied()
                    .collect();
                assert_eq!(stream.cache().tokens(), &want[..], "{spec}: resume at {position} (+{k})");
                resumes += 1;
            }
            if window.is_none() {
                assert_prompt_then_suffix(stream.cache().tokens(), stream.sequence(), prompt_len);
            } else {
                assert!(stream.cache_len() < stream.sequence_len(), "{spec}");
            }
        }
        let out = stream.into_output();
        assert_eq!((out.ids.len(), out.finish_reason.clone()), (400, FinishReason::MaxNewTokens), "{spec}");
        assert!(resumes >= 2 && resumes == out.counts.resumes, "{spec}: {:?}", out.counts);
        assert!(out.counts.context_rolls >= resumes, "{spec}: {:?}", out.counts);
        if window.is_none() {
            // The prompt stays in the cache: only recalled tokens are fed again.
            assert!(out.counts.reprefilled_tokens <= resumes * recall, "{spec}: {:?}", out.counts);
        } else {
            // A resume after a roll that kept 2 sink tokens re-prefills the prompt.
            assert!(out.counts.reprefilled_tokens >= prompt_len, "{spec}: {:?}", out.counts);
        }
        assert_eq!(PerpetualMode::parse(spec).unwrap().spec(), spec);
    }
    // The builder switch forgets without the mode part, and wins over it.
    let mut g = Generator::builder(eager_model(6))
        .tokenizer(ByteTokenizer::new())
        .chain(chain())
        .seed(2)
        .perpetual(PerpetualMode::parse("resume+forget=50").unwrap())
        .forget_on_resume(Some(0))
        .max_new_tokens(200)
        .build()
        .unwrap();
    let mut stream = g.stream(prompt()).unwrap();
    let prompt_len = stream.sequence_len() - stream.generated_ids().len();
    let mut resumes = 0;
    while let Some(event) = stream.next() {
        if let Event::Resumed { hidden: k, .. } = event.unwrap() {
            // The prompt and the resume tokens (the last one pending): nothing recalled.
            assert_eq!(stream.cache_len(), prompt_len + k - 1);
            resumes += 1;
        }
    }
    assert!(resumes > 0);
    // Specs: a recall, a bad value; modes without it serialize as before (kept
    // evaluation runs are keyed by the mode's JSON).
    assert_eq!(PerpetualMode::parse("resume+forget=7").unwrap().forget, Some(7));
    assert!(matches!(
        PerpetualMode::parse("resume+forget=x"),
        Err(GenerateError::InvalidParameter { name: "strategy", .. })
    ));
    let json = serde_json::to_string(
        &PerpetualMode::parse("dynamic+dry+loop+stale+turns+anticipation+reask").unwrap(),
    )
    .unwrap();
    assert!(!json.contains("forget"), "{json}");
}

/// `restart` (and `GeneratorBuilder::restart_on_resume`): every resumed turn (an EOS
/// with the `resume` method, a stale window with `turns`) sees the prompt alone, fed its
/// last token again as one hidden token; the prompt stays cached unless a roll dropped
/// part of it; no chat template is needed; `restart` excludes `reask` and `forget`.
#[test]
fn restarting_turns_answer_the_prompt_afresh() {
    for (spec, bias, window) in [
        ("resume+restart", 3.0, None),
        ("resume+loop+stale+turns+restart", 3.0, None),
        // Turns longer than the window: rolls drop part of the prompt before a restart.
        ("resume+loop+stale+turns+restart", 1.5, Some(96)),
    ] {
        let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE)
            .with_seed(7)
            .with_order(2)
            .with_eos(EOS)
            .with_eos_bias(bias);
        // Sinks shorter than the prompt: a roll drops part of it.
        let mut g = windowed(model, spec, 2, 400, window.map(|w| (w, Some(2))));
        let layout = if window.is_some() { Layout::Rolls } else { Layout::Restarts };
        let (out, _, hidden) = run_checked(&mut g, layout);
        assert_eq!((out.ids.len(), out.finish_reason.clone()), (400, FinishReason::MaxNewTokens), "{spec}");
        assert!(out.counts.resumes >= 2 && hidden.len() == out.counts.resumes, "{spec}: {:?}", out.counts);
        assert_eq!(out.counts.resume_tokens, out.counts.resumes, "{spec}: one hidden token a turn");
        assert!(out.counts.context_rolls >= out.counts.resumes, "{spec}: {:?}", out.counts);
        assert!(out.text.matches("\n\n").count() >= out.counts.resumes, "{spec}");
        if window.is_none() {
            // Nothing fed again: the prompt stays cached, the restart is one pass.
            assert_eq!(out.counts.reprefilled_tokens, 0, "{spec}: {:?}", out.counts);
        } else {
            assert!(out.counts.reprefilled_tokens > 0, "{spec}: {:?}", out.counts);
        }
        assert_eq!(PerpetualMode::parse(spec).unwrap().spec(), spec);
    }
    // No tokenizer, no template, no resume tokens: a restart needs none.
    let mut g = Generator::builder(eager_model(6))
        .chain(chain())
        .eos_ids(vec![EOS])
        .seed(2)
        .perpetual(PerpetualMode::parse("resume+restart").unwrap())
        .max_new_tokens(300)
        .build()
        .unwrap();
    let out = g.generate(vec![7u32, 8, 9]).unwrap();
    assert_eq!(out.ids.len(), 300);
    assert!(out.counts.resumes > 0 && out.counts.resume_tokens == out.counts.resumes, "{:?}", out.counts);
    assert_eq!(g.perpetual_mode().map(PerpetualMode::spec).as_deref(), Some("resume+restart"));
    // The builder switch restarts without the mode part, and wins over `forget`.
    let mut g = Generator::builder(eager_model(6))
        .tokenizer(ByteTokenizer::new())
        .chain(chain())
        .seed(2)
        .perpetual(PerpetualMode::parse("resume+forget=50").unwrap())
        .restart_on_resume(true)
        .max_new_tokens(200)
        .build()
        .unwrap();
    let (out, _, _) = run_checked(&mut g, Layout::Restarts);
    assert_eq!(out.counts.resume_tokens, out.counts.resumes);
    // `restart` replaces `reask` and `forget`: asking for both is a typed error.
    for spec in ["resume+reask+restart", "resume+forget+restart", "dynamic+turns+forget=2+restart"] {
        match PerpetualMode::parse(spec) {
            Err(GenerateError::InvalidParameter { name, .. }) => assert_eq!(name, "strategy", "{spec}"),
            other => panic!("{spec}: {other:?}"),
        }
    }
}
