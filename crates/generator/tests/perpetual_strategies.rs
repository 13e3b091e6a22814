//! The perpetual strategies driven by the real `Generator` on the fake model, with EOS
//! forced at known positions: sequence and cache lengths agree after every
//! back step, the output never contains EOS, a seeded regeneration differs from the
//! evicted span, every strategy reaches a budget where plain generation stops, the
//! schedules' temperatures reach the chain, and ending phrases are banned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_generator::{Event, FinishReason, Generator, TraceEvent};
use perpetua_perpetual::{
    Backstep, BackstepWithSchedule, Budget, EndingPhrases, EosStrategy, PostEosResample, SuppressEos,
    strategy_by_name,
};
use perpetua_sampling::Chain;
use perpetua_sampling::processors::{Temperature, TopK};
use perpetua_sampling::samplers::Multinomial;

const EOS: u32 = ByteTokenizer::EOS;
/// `<s>Once upon a time`: 17 tokens.
const PROMPT: &str = "Once upon a time";

fn prompt_ids() -> Vec<u32> {
    let mut ids = vec![ByteTokenizer::BOS];
    ids.extend(PROMPT.bytes().map(u32::from));
    ids
}

/// A fake model where EOS never comes naturally and is certain at these generated
/// indices (after the 17-token prompt).
fn model_with_eos_at(indices: &[usize]) -> FakeModel {
    let p = prompt_ids().len();
    indices
        .iter()
        .fold(FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(EOS).with_eos_bias(-100.0), |m, &i| {
            m.force_eos_at(p + i)
        })
}

fn chain(temperature: f32) -> Chain {
    Chain::new(Multinomial).with(TopK::new(20).unwrap()).with(Temperature::new(temperature).unwrap())
}

fn generator(model: FakeModel, strategy: impl EosStrategy + 'static, budget: usize) -> Generator<FakeModel> {
    Generator::builder(model)
        .tokenizer(ByteTokenizer::new())
        .chain(chain(1.0))
        .seed(11)
        .eos_strategy(strategy)
        .max_new_tokens(budget)
        .trace(true)
        .build()
        .unwrap()
}

const PERPETUAL: [&str; 5] =
    ["suppress_eos", "suppress_eos_masked", "post_eos_resample", "backstep", "backstep_with_schedule"];

#[test]
fn plain_generation_stops_at_the_forced_eos() {
    let mut g = generator(model_with_eos_at(&[30, 31, 70, 150]), strategy_by_name("stop").unwrap(), 300);
    let out = g.generate(prompt_ids()).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Eos);
    assert_eq!(out.ids.len(), 30);
}

#[test]
fn every_strategy_reaches_the_budget_keeping_sequence_and_cache_in_step() {
    const BUDGET: usize = 300;
    for name in PERPETUAL {
        let mut g = generator(model_with_eos_at(&[30, 31, 70, 150]), strategy_by_name(name).unwrap(), BUDGET);
        let mut stream = g.stream(prompt_ids()).unwrap();
        // Our own copy of the generated ids, maintained from the events.
        let mut ids: Vec<u32> = Vec::new();
        // Evicted spans waiting for their regeneration: (to, from, evicted ids).
        let mut pending: Vec<(usize, usize, Vec<u32>)> = Vec::new();
        let (mut backsteps, mut compared) = (0, 0);
        while let Some(event) = stream.next() {
            match event.unwrap() {
                Event::Token { index, id, .. } => {
                    assert_ne!(id, EOS, "{name}: EOS written at {index}");
                    assert_eq!(index, ids.len(), "{name}");
                    ids.push(id);
                    // A regenerated span is complete: it must differ from the evicted one.
                    pending.retain(|(to, from, evicted)| {
                        if ids.len() == *from {
                            assert_ne!(
                                &ids[*to..*from],
                                &evicted[..],
                                "{name}: {to}..{from} regenerated identically"
                            );
                            compared += 1;
                            false
                        } else {
                            true
                        }
                    });
                }
                Event::Backstep { from, to, .. } => {
                    backsteps += 1;
                    assert!(to < from && from == ids.len(), "{name}: back step {from} -> {to}");
                    // The generator state right after the back step.
                    assert_eq!(stream.generated_ids().len(), to, "{name}");
                    assert_eq!(stream.sequence_len(), prompt_ids().len() + to, "{name}");
                    assert_eq!(stream.cache_len() + 1, stream.sequence_len(), "{name}: cache out of step");
                    pending.retain(|(t, _, _)| *t < to);
                    pending.push((to, from, ids[to..from].to_vec()));
                    ids.truncate(to);
                }
                Event::Finished { reason, .. } => assert_eq!(reason, FinishReason::MaxNewTokens, "{name}"),
                _ => {}
            }
        }
        let out = stream.into_output();
        assert_eq!(out.ids.len(), BUDGET, "{name}");
        assert_eq!(out.ids, ids, "{name}");
        assert!(!out.ids.contains(&EOS), "{name}");
        eprintln!(
            "{name}: {} tokens, {backsteps} back steps, {compared} regenerated spans compared, {} EOS avoided, {} forward passes",
            out.ids.len(),
            out.counts.eos_avoided,
            out.counts.forward_passes
        );
        match name {
            "backstep" | "backstep_with_schedule" => {
                assert!(backsteps > 0 && compared > 0, "{name}: {backsteps} back steps, {compared} compared");
                assert_eq!(out.counts.backsteps, backsteps, "{name}");
            }
            // EOS is masked: never drawn, never replaced.
            "suppress_eos_masked" => assert_eq!((backsteps, out.counts.eos_avoided), (0, 0), "{name}"),
            _ => assert_eq!((backsteps, out.counts.eos_avoided), (0, 4), "{name}"),
        }
    }
}

#[test]
fn post_eos_resample_drives_the_chain_temperature_from_two_back_to_base() {
    let mut g = generator(model_with_eos_at(&[20]), PostEosResample::new(), 60);
    let mut changes = Vec::new();
    let mut avoided = Vec::new();
    for event in g.stream(prompt_ids()).unwrap() {
        match event.unwrap() {
            Event::TemperatureChanged { to, .. } => changes.push(to),
            Event::EosAvoided { position, .. } => avoided.push(position),
            _ => {}
        }
    }
    assert_eq!(avoided, vec![20]);
    let want = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0];
    assert_eq!(changes.len(), want.len(), "{changes:?}");
    for (got, want) in changes.iter().zip(want) {
        assert!((got - want).abs() < 1e-5, "{changes:?}");
    }
    assert_eq!(changes[10], 1.0);
    // The trace agrees: index 21 at the peak, base from index 31 on.
    let out = g.generate(prompt_ids()).unwrap();
    let trace = out.trace.unwrap();
    assert_eq!(trace[21].temperature, 2.0);
    assert!(trace[31..].iter().all(|t| t.temperature == 1.0));
}

#[test]
fn backstep_with_schedule_is_back_at_base_exactly_where_eos_was_drawn() {
    // Base 0.7, peak 2x = 1.4; EOS forced at generated index 40 (it comes back there,
    // and the loop guard escalates).
    let mut g = Generator::builder(model_with_eos_at(&[40]))
        .chain(chain(0.7))
        .eos_ids([EOS])
        .seed(3)
        .eos_strategy(BackstepWithSchedule::default())
        .max_new_tokens(100)
        .trace(true)
        .build()
        .unwrap();
    let out = g.generate(prompt_ids()).unwrap();
    assert_eq!(out.ids.len(), 100);
    let trace = out.trace.unwrap();
    let first = trace.iter().position(|t| matches!(t.event, TraceEvent::Backstep { .. })).unwrap();
    assert_eq!((trace[first].index, trace[first].event), (40, TraceEvent::Backstep { removed: 10 }));
    let rewrite = &trace[first + 1..first + 12];
    let indices: Vec<usize> = rewrite.iter().map(|t| t.index).collect();
    assert_eq!(indices, (30..=40).collect::<Vec<_>>());
    assert!((rewrite[0].temperature - 1.4).abs() < 1e-6, "{:?}", rewrite[0]);
    assert!((rewrite[5].temperature - 1.05).abs() < 1e-6, "{:?}", rewrite[5]);
    assert!(rewrite.windows(2).all(|w| w[1].temperature < w[0].temperature));
    // Index 40, where EOS had been drawn: exactly the base (and EOS is drawn again).
    assert_eq!(rewrite[10].temperature, 0.7);
    assert_eq!(rewrite[10].token, EOS);
}

#[test]
fn budgets_let_a_natural_eos_end_generation() {
    let strategies: Vec<Box<dyn EosStrategy>> = vec![
        Box::new(Backstep::default().with_budget(Budget::unlimited().allow_eos_after(50))),
        Box::new(SuppressEos::new().with_budget(Budget::unlimited().max_interventions(1))),
        Box::new(SuppressEos::hard_mask().with_budget(Budget::unlimited().target_length(17 + 50))),
    ];
    for s in strategies {
        let name = s.name();
        let mut g = generator(model_with_eos_at(&[30, 60]), s, 300);
        let out = g.generate(prompt_ids()).unwrap();
        assert_eq!(out.finish_reason, FinishReason::Eos, "{name}");
        assert_eq!(out.ids.len(), 60, "{name}");
        assert!(!out.ids.contains(&EOS), "{name}");
    }
}

/// A fake model that writes " The end" right after the prompt, letter by letter.
fn model_writing_the_end() -> FakeModel {
    let p = prompt_ids();
    let phrase = b" The end";
    (0..phrase.len()).fold(FakeModel::new(ByteTokenizer::VOCAB_SIZE), |m, k| {
        let mut context = p.clone();
        context.extend(phrase[..k].iter().map(|&b| u32::from(b)));
        m.with_rule(&context, u32::from(phrase[k]), 100.0)
    })
}

#[test]
fn ending_phrases_are_banned_through_the_chain() {
    let phrase: Vec<u32> = b" The end".iter().map(|&b| u32::from(b)).collect();
    let run = |ban: bool| {
        let mut c = Chain::new(Multinomial);
        if ban {
            c = c.with(EndingPhrases::ban([phrase.clone()]).unwrap());
        }
        let mut g = Generator::builder(model_writing_the_end())
            .tokenizer(ByteTokenizer::new())
            .chain(c.with(TopK::new(20).unwrap()))
            .seed(5)
            .max_new_tokens(12)
            .build()
            .unwrap();
        g.generate(prompt_ids()).unwrap().text
    };
    let plain = run(false);
    assert!(plain.starts_with(" The end"), "{plain:?}");
    let banned = run(true);
    assert!(banned.starts_with(" The en") && !banned.starts_with(" The end"), "{banned:?}");
}

/// Regression: a chain with no temperature stage (what `SamplingConfig` builds for
/// temperature 1, HF skipping no-op warpers) must still apply the strategies'
/// temperature schedules — the generator inserts a `Temperature(1.0)` stage for them.
/// Before the fix, `PostEosResample` generated exactly what `SuppressEos` did.
#[test]
fn schedules_apply_without_an_explicit_temperature_stage() {
    let config = perpetua_sampling::SamplingConfig {
        temperature: Some(1.0),
        top_k: Some(20),
        ..perpetua_sampling::SamplingConfig::default()
    };
    let run = |strategy: Box<dyn EosStrategy>| {
        let mut g = Generator::builder(model_with_eos_at(&[30]))
            .tokenizer(ByteTokenizer::new())
            .chain(config.chain().unwrap())
            .seed(11)
            .eos_strategy(strategy)
            .max_new_tokens(60)
            .build()
            .unwrap();
        assert_eq!(g.chain_mut().stage_names().collect::<Vec<_>>(), ["top_k"]);
        let out = g.generate(prompt_ids()).unwrap();
        assert_eq!(g.chain_mut().stage_names().collect::<Vec<_>>(), ["temperature", "top_k"]);
        out
    };
    let suppress = run(Box::new(SuppressEos::new()));
    let resample = run(Box::new(PostEosResample::new()));
    assert_eq!(suppress.ids[..30], resample.ids[..30], "identical up to the EOS");
    assert_ne!(suppress.ids[31..41], resample.ids[31..41], "the hot span after the EOS must differ");
    let plain_backstep = run(Box::new(Backstep::new(10).unwrap()));
    let dynamic = run(Box::new(BackstepWithSchedule::new(10).unwrap()));
    assert_ne!(plain_backstep.ids, dynamic.ids);
}
