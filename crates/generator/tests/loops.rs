//! Loop back steps driven by the real `Generator` on a fake model that falls into a
//! loop: sequence and cache lengths agree after every loop back step (with
//! and without context rolls), a loop back step never reaches into the prompt, the
//! regenerated token at the landing differs from the evicted one, the trace and counts
//! record them, and perpetual modes (DRY with string breakers) build and run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_generator::{BackstepCause, Event, FinishReason, Generator, PerpetualMode, TraceEvent};
use perpetua_perpetual::{BackstepWithSchedule, LoopBackstep, Staleness, StopAtEos};
use perpetua_sampling::Chain;
use perpetua_sampling::processors::{Temperature, TopK};
use perpetua_sampling::samplers::Multinomial;
use proptest::prelude::*;

const EOS: u32 = ByteTokenizer::EOS;

fn prompt_ids() -> Vec<u32> {
    let mut ids = vec![ByteTokenizer::BOS];
    ids.extend("Sing me a song".bytes().map(u32::from));
    ids
}

/// An order-1 fake model with a strong 5-token cycle `a b c d e a …`: once the text
/// reaches the cycle it loops (p(next in cycle) > 0.99 at T 1 with top-k 20).
fn looping_model(seed: u64) -> FakeModel {
    let cycle = b"abcde";
    let mut m = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_seed(seed).with_order(1).with_eos(EOS);
    for i in 0..cycle.len() {
        m = m.with_rule(&[u32::from(cycle[i])], u32::from(cycle[(i + 1) % cycle.len()]), 14.0);
    }
    // Every other byte leads into the cycle now and then.
    m.with_rule(&[u32::from(b' ')], u32::from(b'a'), 6.0)
}

fn chain() -> Chain {
    Chain::new(Multinomial).with(TopK::new(20).unwrap()).with(Temperature::new(1.0).unwrap())
}

/// Run with `strategy`, checking the invariants at every event; returns the output
/// and how many regenerated landings were compared with their evicted token.
fn run_checked(
    generator: &mut Generator<FakeModel>,
    context_rolls: bool,
) -> (perpetua_generator::Generation, usize) {
    let prompt = prompt_ids();
    let mut stream = generator.stream(prompt.clone()).unwrap();
    let mut ids: Vec<u32> = Vec::new();
    let mut evicted: Option<(usize, u32)> = None;
    let mut compared = 0;
    while let Some(event) = stream.next() {
        match event.unwrap() {
            Event::Token { index, id, .. } => {
                assert_eq!(index, ids.len());
                if let Some((at, old)) = evicted.take() {
                    assert_eq!(at, index, "the landing is regenerated first");
                    assert_ne!(id, old, "the token that began the loop was drawn again at {index}");
                    compared += 1;
                }
                ids.push(id);
            }
            Event::Backstep { from, to, cause, .. } => {
                assert_eq!(from, ids.len());
                assert!(
                    to < from && to <= ids.len(),
                    "{from} -> {to} {cause:?} seq {} cache {}",
                    stream.sequence_len(),
                    stream.cache_len()
                );
                // An EOS back step at the landing moves it: only a loop's landing is banned.
                evicted = (cause == BackstepCause::Loop).then(|| (to, ids[to]));
                ids.truncate(to);
                // Never into the prompt; the cache holds the sequence minus its pending
                // token (fewer after a roll, which the generator checks itself).
                assert_eq!(stream.sequence_len(), prompt.len() + to);
                assert_eq!(&stream.sequence()[..prompt.len()], &prompt[..]);
                if !context_rolls {
                    assert_eq!(stream.cache_len(), stream.sequence_len() - 1);
                }
            }
            _ => {}
        }
    }
    let out = stream.into_output();
    assert_eq!(out.ids, ids);
    (out, compared)
}

#[test]
fn plain_generation_loops_and_loop_back_steps_cut_it() {
    let build = |strategy: Box<dyn perpetua_perpetual::EosStrategy>| {
        Generator::builder(looping_model(3))
            .tokenizer(ByteTokenizer::new())
            .chain(chain())
            .seed(5)
            .eos_strategy(strategy)
            .max_new_tokens(400)
            .trace(true)
            .build()
            .unwrap()
    };
    let detector =
        || perpetua_perpetual::LoopDetector::new(perpetua_perpetual::LoopDetection::default()).unwrap();
    let loops_in = |ids: &[u32]| {
        let mut d = detector();
        (1..=ids.len()).filter(|&n| d.observe(&ids[..n]).is_some()).count()
    };
    let (plain, _) = run_checked(&mut build(Box::new(StopAtEos)), false);
    assert!(loops_in(&plain.ids) > 50, "the fake model does not loop: {:?}", plain.ids);

    let (out, compared) = run_checked(&mut build(Box::new(LoopBackstep::new(StopAtEos))), false);
    assert!(out.counts.loop_backsteps >= 3, "{:?}", out.counts);
    assert_eq!(out.counts.loop_backsteps, out.counts.backsteps);
    assert!(compared >= 3);
    assert!(out.counts.forward_passes > out.ids.len(), "regenerated tokens cost passes");
    // The trace records each loop back step on the step whose token completed it.
    let trace = out.trace.as_ref().unwrap();
    let traced = trace.iter().filter(|r| matches!(r.event, TraceEvent::LoopBackstep { .. })).count();
    assert_eq!(traced, out.counts.loop_backsteps);
    assert_eq!(trace.len(), out.counts.forward_passes);
    // Far fewer loops survive than in plain generation.
    assert!(
        loops_in(&out.ids) * 4 < loops_in(&plain.ids),
        "{} vs {}",
        loops_in(&out.ids),
        loops_in(&plain.ids)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any seed, with and without context rolls, with method 4 inside: every invariant
    /// of `run_checked` holds and the budget is reached.
    #[test]
    fn loop_back_steps_keep_sequence_and_cache_in_step(seed in 0u64..1000, model_seed in 0u64..50, window in prop_oneof![Just(None), (48usize..120).prop_map(Some)], stale in any::<bool>()) {
        let mut strategy = LoopBackstep::new(BackstepWithSchedule::new(10).unwrap());
        if stale {
            strategy = strategy.with_staleness(Staleness { window: 32, min_distinct: 0.4, backstep: 16, budget: 0.2, ..Staleness::default() }).unwrap();
        }
        let mut b = Generator::builder(looping_model(model_seed).with_eos_bias(0.5))
            .tokenizer(ByteTokenizer::new())
            .chain(chain())
            .seed(seed)
            .eos_strategy(strategy)
            .max_new_tokens(300);
        if let Some(w) = window {
            b = b.context_window(w);
        }
        let mut g = b.build().unwrap();
        let (out, _) = run_checked(&mut g, window.is_some());
        prop_assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
        prop_assert_eq!(out.ids.len(), 300);
        prop_assert!(!out.ids.contains(&EOS));
    }
}

#[test]
fn perpetual_modes_build_with_string_breakers_and_switch_cleanly() {
    let mut g = Generator::builder(looping_model(1).with_eos_bias(1.0))
        .tokenizer(ByteTokenizer::new())
        .chain(chain())
        .seed(2)
        .perpetual(PerpetualMode::recommended())
        .max_new_tokens(250)
        .build()
        .unwrap();
    let names = |g: &mut Generator<FakeModel>| g.chain_mut().stage_names().collect::<Vec<_>>();
    assert_eq!(names(&mut g), ["dry", "top_k", "temperature"]);
    // The recommended mode restarts the answer where the model ends it.
    let out = g.generate(prompt_ids()).unwrap();
    assert_eq!(out.ids.len(), 250);
    assert!(out.counts.resumes > 0 && out.counts.resume_tokens == out.counts.resumes, "{:?}", out.counts);
    g.set_perpetual(&PerpetualMode::parse("dynamic+dry+loop").unwrap()).unwrap();
    assert_eq!(names(&mut g), ["dry", "top_k", "temperature"]);
    let (out, _) = run_checked(&mut g, false);
    assert_eq!(out.ids.len(), 250);
    // Switching modes replaces the mode's stages, never the user's.
    g.set_perpetual(&PerpetualMode::parse("suppress+rep=1.2/64").unwrap()).unwrap();
    assert_eq!(names(&mut g), ["repetition_penalty", "top_k", "temperature"]);
    g.set_perpetual(&PerpetualMode::parse("plain").unwrap()).unwrap();
    assert_eq!(names(&mut g), ["top_k", "temperature"]);
    let out = g.generate(prompt_ids()).unwrap();
    assert!(out.ids.len() <= 250);

    // DRY needs the tokenizer for its breakers: a typed error without one.
    let err =
        Generator::builder(looping_model(1)).perpetual(PerpetualMode::recommended()).build().err().unwrap();
    assert!(err.to_string().contains("DRY sequence breakers"), "{err}");
    // Bad parts of a spec are named.
    for (spec, part) in [
        ("dynamic=0", "backstep"),
        ("dynamic+dry=-1", "dry_multiplier"),
        ("nope", "strategy"),
        ("dynamic+sparkle", "sparkle"),
        ("dynamic+window=3", "window"),
        ("dynamic+window=x", "window=x"),
    ] {
        let e = PerpetualMode::parse(spec).unwrap_err().to_string();
        assert!(e.contains(part), "{spec}: {e}");
    }
}

#[test]
fn a_mode_window_narrows_the_context_window_and_rolls_in_step() {
    let mode = PerpetualMode::parse("dynamic+loop+window=64").unwrap();
    assert_eq!(mode.window, Some(64));
    assert_eq!(mode.spec(), "dynamic+loop+window=64");
    assert_eq!(PerpetualMode::parse(&mode.spec()).unwrap(), mode);
    let mut g = Generator::builder(looping_model(3).with_eos_bias(1.0))
        .tokenizer(ByteTokenizer::new())
        .chain(chain())
        .seed(4)
        .perpetual(mode)
        .max_new_tokens(300)
        .build()
        .unwrap();
    let (out, _) = run_checked(&mut g, true);
    assert_eq!(out.ids.len(), 300);
    assert!(out.counts.context_rolls >= 4, "64-position window over 300 tokens: {:?}", out.counts);
    // The mode only narrows: a wider mode window leaves a narrower context window.
    let mut g = Generator::builder(looping_model(3))
        .chain(chain())
        .context_window(48)
        .perpetual(PerpetualMode::parse("dynamic+window=4096").unwrap())
        .max_new_tokens(200)
        .build()
        .unwrap();
    let rolls_48 = g.generate(prompt_ids()).unwrap().counts.context_rolls;
    assert!(rolls_48 >= 5, "{rolls_48}");
    // Switching to a mode without a window drops it again.
    let mut g = Generator::builder(looping_model(3))
        .chain(chain())
        .perpetual(PerpetualMode::parse("dynamic+window=32").unwrap())
        .max_new_tokens(100)
        .build()
        .unwrap();
    assert!(g.generate(prompt_ids()).unwrap().counts.context_rolls >= 3);
    g.set_perpetual(&PerpetualMode::parse("dynamic").unwrap()).unwrap();
    assert_eq!(g.generate(prompt_ids()).unwrap().counts.context_rolls, 0);
    // A hand-made mode with a window below 4 is refused at build, naming it.
    let bad = PerpetualMode { window: Some(2), ..PerpetualMode::parse("dynamic").unwrap() };
    let err = Generator::builder(looping_model(3)).perpetual(bad).build().err().unwrap();
    assert!(err.to_string().contains("window"), "{err}");
}

#[test]
fn bans_that_would_empty_the_candidates_are_ignored() {
    // A model with one possible token (order 0, that token boosted, top-k 1): a
    // strategy banning it every step must not make the step fail.
    struct BanEverything;
    impl perpetua_perpetual::EosStrategy for BanEverything {
        fn name(&self) -> &'static str {
            "ban_everything"
        }
        fn plan_step(&mut self, _: &perpetua_perpetual::StepInfo) -> perpetua_perpetual::StepPlan {
            let mut plan = perpetua_perpetual::StepPlan::default();
            for id in 0..8 {
                plan.bans.insert(id);
            }
            plan
        }
        fn on_eos(&mut self, _: &perpetua_perpetual::EosDrawn<'_>) -> perpetua_perpetual::EosAction {
            perpetua_perpetual::EosAction::Stop
        }
    }
    let mut g = Generator::builder(FakeModel::new(8))
        .seed(1)
        .eos_strategy(BanEverything)
        .max_new_tokens(5)
        .build()
        .unwrap();
    let out = g.generate(vec![1u32, 2]).unwrap();
    assert_eq!(out.ids.len(), 5);
    // With one id left free, the bans hold.
    struct BanAllButSeven;
    impl perpetua_perpetual::EosStrategy for BanAllButSeven {
        fn name(&self) -> &'static str {
            "ban_all_but_seven"
        }
        fn plan_step(&mut self, _: &perpetua_perpetual::StepInfo) -> perpetua_perpetual::StepPlan {
            let mut plan = perpetua_perpetual::StepPlan::default();
            for id in 0..7 {
                plan.bans.insert(id);
            }
            plan
        }
        fn on_eos(&mut self, _: &perpetua_perpetual::EosDrawn<'_>) -> perpetua_perpetual::EosAction {
            perpetua_perpetual::EosAction::Stop
        }
    }
    let mut g = Generator::builder(FakeModel::new(8))
        .seed(1)
        .eos_strategy(BanAllButSeven)
        .max_new_tokens(5)
        .build()
        .unwrap();
    assert_eq!(g.generate(vec![1u32, 2]).unwrap().ids, vec![7; 5]);
}

/// EOS often enough that back steps land right after a roll (with seeds 2 and 3: 4
/// and 9 fallbacks), yet the budget is reached.
const EOS_BIAS: f32 = 6.0;

/// A strategy that answers every EOS with a back step of 4, whatever is removable (as
/// a careless custom strategy would), and records what it was told.
struct AlwaysBackstep {
    seen: Seen,
}

/// `("eos", generated, removable)` and `("backstep", removed, generated)` in call order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(&'static str, usize, usize)>>>;

impl perpetua_perpetual::EosStrategy for AlwaysBackstep {
    fn name(&self) -> &'static str {
        "always_backstep"
    }
    fn on_eos(&mut self, event: &perpetua_perpetual::EosDrawn<'_>) -> perpetua_perpetual::EosAction {
        let mut seen = self.seen.lock().unwrap();
        seen.push(("eos", event.generated, event.removable));
        // A bound, so that a generator that never progresses fails the test, not hangs.
        if seen.len() > 20_000 {
            return perpetua_perpetual::EosAction::Stop;
        }
        perpetua_perpetual::EosAction::Backstep { n: 4 }
    }
    fn on_backstep(&mut self, removed: usize, generated: usize) {
        self.seen.lock().unwrap().push(("backstep", removed, generated));
    }
}

/// An EOS back step that can remove nothing (at the first token, and right after a
/// context roll) falls back to a replacement: the strategy hears `on_backstep(0, g)`,
/// the EOS is replaced by a non-EOS draw, and no empty back step is reported.
#[test]
fn a_back_step_that_can_remove_nothing_falls_back_to_a_replacement() {
    // Without rolls: EOS is certain at the first token (nothing generated to remove).
    // With rolls: EOS is frequent, and back steps keep landing right after a roll.
    let first = prompt_ids().len();
    for (window, seed) in [(None, 1), (Some(40), 2), (Some(40), 3)] {
        let seen: Seen = Seen::default();
        let model = match window {
            None => looping_model(7).force_eos_at(first),
            Some(_) => looping_model(7).with_eos_bias(EOS_BIAS),
        };
        let mut b = Generator::builder(model)
            .tokenizer(ByteTokenizer::new())
            .chain(chain())
            .seed(seed)
            .eos_strategy(Box::new(AlwaysBackstep { seen: seen.clone() }))
            .max_new_tokens(120);
        if let Some(w) = window {
            b = b.context_window(w).sink_tokens(4);
        }
        let mut g = b.build().unwrap();
        let (out, _) = run_checked(&mut g, window.is_some());
        assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
        assert_eq!(out.ids.len(), 120);
        assert!(!out.ids.contains(&EOS));
        let seen = seen.lock().unwrap();
        // Every EOS with nothing removable is followed by on_backstep(0, g) and a
        // replacement; every other one by a real back step.
        let mut fallbacks = 0;
        for pair in seen.windows(2) {
            if let [("eos", g, removable), ("backstep", removed, at)] = pair[..] {
                if removable == 0 {
                    assert_eq!((removed, at), (0, g));
                    fallbacks += 1;
                } else {
                    assert_eq!((removed, at), (4.min(removable), g - 4.min(removable)));
                }
            }
        }
        assert!(fallbacks >= 1, "window {window:?}: no EOS found nothing removable: {seen:?}");
        assert_eq!(out.counts.eos_avoided, fallbacks, "window {window:?}");
    }
}

/// `rewind` in a mode spec: parsed and written back, bad values named; on the fake
/// model the rewinds reach further back than the plain stale back step, sequence and
/// cache stay in step, and the budget is reached.
#[test]
fn rewind_specs_parse_and_rewinds_keep_sequence_and_cache_in_step() {
    for (spec, full) in [
        ("dynamic+rewind", "dynamic+loop+stale+rewind"),
        (
            "perpetual+rewind=128/0.1",
            "resume+dry=0.5/3/1024+loop+stale=64/0.52/32/0.12+rewind=128/0.1+turns+restart",
        ),
        ("dynamic+stale=64/0.45/32/0.3+rewind=200", "dynamic+loop+stale=64/0.45/32/0.3+rewind=200/0.05"),
    ] {
        assert_eq!(PerpetualMode::parse(spec).unwrap().spec(), full);
    }
    for bad in ["dynamic+rewind=x", "dynamic+rewind=5000", "dynamic+rewind=64/1.5"] {
        let err = PerpetualMode::parse(bad).and_then(|m| {
            Generator::builder(FakeModel::salad(1))
                .tokenizer(ByteTokenizer::new())
                .perpetual(m)
                .build()
                .map(|_| ())
        });
        assert!(err.is_err(), "{bad} accepted");
    }
    let mut longest = 0;
    for seed in 0..4 {
        let mut g = Generator::builder(FakeModel::salad(seed))
            .tokenizer(ByteTokenizer::new())
            .chain(chain())
            .seed(seed)
            .perpetual(PerpetualMode::parse("dynamic+stale=64/0.45/32/0.5+rewind").unwrap())
            .max_new_tokens(600)
            .build()
            .unwrap();
        let mut stream = g.stream(prompt_ids()).unwrap();
        while let Some(event) = stream.next() {
            if let Event::Backstep { from, to, cause: BackstepCause::Loop, .. } = event.unwrap() {
                longest = longest.max(from - to);
                assert_eq!(stream.cache_len(), stream.sequence_len() - 1);
            }
        }
        let out = stream.into_output();
        assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
        assert_eq!(out.ids.len(), 600);
    }
    assert!(longest > 32, "no rewind reached past the plain back step: {longest}");
}
