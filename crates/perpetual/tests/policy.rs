//! Policy tests without a model: scripted draws in, expected actions and temperatures
//! out; and the loop guard's bound for arbitrary scripts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_perpetual::{
    Backstep, BackstepWithSchedule, Budget, EosAction, EosDrawn, EosStrategy, LoopGuard, Peak,
    PostEosResample, ResumeTurn, StepInfo, SuppressEos, TemperatureSchedule, strategy_by_name,
};
use proptest::prelude::*;

const EOS: u32 = 0;
const RUNNER_UP: u32 = 7;
const PROMPT: usize = 5;

fn step(generated: usize, base: f32) -> StepInfo {
    StepInfo { prompt_len: PROMPT, generated, base_temperature: base }
}

fn eos_at(generated: usize, base: f32) -> EosDrawn<'static> {
    EosDrawn {
        prompt_len: PROMPT,
        generated,
        removable: generated,
        draws: &[EOS, RUNNER_UP],
        p_eos: 0.8,
        base_temperature: base,
    }
}

fn temp_at(s: &mut impl EosStrategy, generated: usize, base: f32) -> f32 {
    s.plan_step(&step(generated, base)).effective_temperature(base)
}

fn assert_close(got: f32, want: f32) {
    assert!((got - want).abs() < 1e-5, "got {got}, want {want}");
}

#[test]
fn suppress_takes_the_runner_up_and_never_touches_temperature() {
    let mut s = SuppressEos::new();
    let plan = s.plan_step(&step(4, 0.7));
    assert_eq!((plan.temperature, plan.mask_eos, plan.draws), (None, false, 2));
    assert_eq!(s.on_eos(&eos_at(4, 0.7)), EosAction::Replace { token: RUNNER_UP });
    // Only EOS had mass: nothing else to write.
    let lone = EosDrawn { draws: &[EOS], ..eos_at(9, 0.7) };
    assert_eq!(s.on_eos(&lone), EosAction::Stop);
    assert_eq!(s.interventions(), 2);
}

#[test]
fn hard_mask_masks_until_a_budget_accepts_eos() {
    let mut s = SuppressEos::hard_mask().with_budget(Budget::unlimited().allow_eos_after(10));
    let plan = s.plan_step(&step(9, 1.0));
    assert_eq!((plan.mask_eos, plan.draws), (true, 1));
    let plan = s.plan_step(&step(10, 1.0));
    assert_eq!((plan.mask_eos, plan.draws), (false, 1));
    assert_eq!(s.on_eos(&eos_at(10, 1.0)), EosAction::Stop);
}

#[test]
fn post_eos_resample_goes_from_two_down_by_tenths_to_base() {
    let mut s = PostEosResample::new();
    assert_eq!(temp_at(&mut s, 20, 1.0), 1.0);
    assert_eq!(s.on_eos(&eos_at(20, 1.0)), EosAction::Replace { token: RUNNER_UP });
    s.on_token(RUNNER_UP, 20);
    let want = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1];
    for (i, w) in want.iter().enumerate() {
        let plan = s.plan_step(&step(21 + i, 1.0));
        assert_close(plan.temperature.expect("scheduled"), *w);
        s.on_token(3, 21 + i);
    }
    assert_eq!(s.plan_step(&step(31, 1.0)).temperature, None); // back at base
    assert_eq!(s.plan_step(&step(32, 1.0)).temperature, None);

    // Base 0.7: 13 steps of -0.1 from 2.0, then exactly 0.7.
    let mut s = PostEosResample::new();
    s.on_eos(&eos_at(0, 0.7));
    assert_close(temp_at(&mut s, 1, 0.7), 2.0);
    assert_close(temp_at(&mut s, 13, 0.7), 0.8);
    assert_eq!(temp_at(&mut s, 14, 0.7), 0.7);
}

#[test]
fn post_eos_resample_with_relative_peak_and_cosine() {
    let mut s = PostEosResample::new()
        .with_peak(Peak::times(3.0).unwrap())
        .unwrap()
        .with_schedule(TemperatureSchedule::Cosine)
        .unwrap()
        .with_span(4)
        .unwrap();
    s.on_eos(&eos_at(10, 0.5));
    let ts: Vec<f32> = (11..=15).map(|g| temp_at(&mut s, g, 0.5)).collect();
    assert_close(ts[0], 1.5);
    assert_close(ts[2], 1.0);
    assert_eq!(ts[4], 0.5);
    assert!(ts.windows(2).all(|w| w[1] <= w[0]), "{ts:?}");
    assert!(PostEosResample::new().with_span(0).is_err());
}

#[test]
fn backstep_removes_n_clamps_at_the_prompt_and_escalates() {
    let mut s = Backstep::default();
    assert_eq!(s.plan_step(&step(30, 1.0)).temperature, None);
    assert_eq!(s.on_eos(&eos_at(30, 1.0)), EosAction::Backstep { n: 10 });
    s.on_backstep(10, 20);
    // EOS comes back at the same place: longer back steps, then the runner-up.
    assert_eq!(s.on_eos(&eos_at(30, 1.0)), EosAction::Backstep { n: 20 });
    assert_eq!(s.on_eos(&eos_at(30, 1.0)), EosAction::Backstep { n: 30 }); // 40, clamped to 30 generated
    assert_eq!(s.on_eos(&eos_at(30, 1.0)), EosAction::Backstep { n: 30 });
    assert_eq!(s.escalation_level(), 3);
    assert_eq!(s.on_eos(&eos_at(30, 1.0)), EosAction::Replace { token: RUNNER_UP });
    // Nothing generated yet: nothing to step back from.
    let mut s = Backstep::new(4).unwrap();
    assert_eq!(s.on_eos(&eos_at(0, 1.0)), EosAction::Replace { token: RUNNER_UP });
    // A repeat within the window (level 1: 8 tokens), clamped to the 2 generated.
    assert_eq!(s.on_eos(&eos_at(2, 1.0)), EosAction::Backstep { n: 2 });
    assert!(Backstep::new(0).is_err());
}

#[test]
fn backstep_with_schedule_is_back_at_base_exactly_at_the_evicted_eos() {
    let base = 0.8;
    let mut s = BackstepWithSchedule::default();
    assert_eq!(s.on_eos(&eos_at(40, base)), EosAction::Backstep { n: 10 });
    s.on_backstep(10, 30);
    let ts: Vec<f32> = (30..=41).map(|g| temp_at(&mut s, g, base)).collect();
    assert_close(ts[0], 1.6); // 2x base
    assert_close(ts[5], 1.2);
    assert_close(ts[9], 0.88);
    assert_eq!(ts[10], base); // generated index 40: where EOS was drawn
    assert_eq!(ts[11], base);
    assert!(ts.windows(2).all(|w| w[1] <= w[0]), "{ts:?}");

    // EOS comes back at 40: back step 20, peak 1.6 + 0.25, back at base at 40 again.
    assert_eq!(s.on_eos(&eos_at(40, base)), EosAction::Backstep { n: 20 });
    s.on_backstep(20, 20);
    assert_close(temp_at(&mut s, 20, base), 1.85);
    assert_close(temp_at(&mut s, 30, base), (1.85 + base) / 2.0);
    assert_eq!(temp_at(&mut s, 40, base), base);

    // Clamped by the generator (only 6 generated): the span is what was removed.
    let mut s = BackstepWithSchedule::new(10).unwrap();
    assert_eq!(s.on_eos(&eos_at(6, 1.0)), EosAction::Backstep { n: 6 });
    s.on_backstep(6, 0);
    assert_eq!(temp_at(&mut s, 0, 1.0), 2.0);
    assert_close(temp_at(&mut s, 3, 1.0), 1.5);
    assert_eq!(temp_at(&mut s, 6, 1.0), 1.0);
}

#[test]
fn budgets_let_eos_through() {
    let mut s = BackstepWithSchedule::default().with_budget(Budget::unlimited().max_interventions(2));
    assert!(matches!(s.on_eos(&eos_at(50, 1.0)), EosAction::Backstep { .. }));
    s.on_backstep(10, 40);
    assert!(matches!(s.on_eos(&eos_at(100, 1.0)), EosAction::Backstep { .. }));
    s.on_backstep(10, 90);
    assert_eq!(s.plan_step(&step(95, 1.0)).draws, 1);
    assert_eq!(s.on_eos(&eos_at(200, 1.0)), EosAction::Stop);

    let mut s = PostEosResample::new().with_budget(Budget::unlimited().target_length(105));
    assert!(matches!(s.on_eos(&eos_at(99, 1.0)), EosAction::Replace { .. }));
    assert_eq!(s.on_eos(&eos_at(100, 1.0)), EosAction::Stop); // 5 + 100 >= 105

    let mut s = Backstep::default().with_budget(Budget::unlimited().allow_eos_after(64));
    assert!(matches!(s.on_eos(&eos_at(63, 1.0)), EosAction::Backstep { .. }));
    assert_eq!(s.on_eos(&eos_at(64, 1.0)), EosAction::Stop);
}

#[test]
fn reset_forgets_everything() {
    let mut s = BackstepWithSchedule::default();
    for _ in 0..6 {
        let _ = s.on_eos(&eos_at(40, 1.0));
    }
    s.on_backstep(10, 30);
    assert!(s.escalation_level() > 0 && s.interventions() == 6);
    s.reset();
    assert_eq!((s.escalation_level(), s.interventions()), (0, 0));
    assert_eq!(s.plan_step(&step(30, 1.0)).temperature, None);
    assert_eq!(s.on_eos(&eos_at(40, 1.0)), EosAction::Backstep { n: 10 });

    let mut s = PostEosResample::new();
    s.on_eos(&eos_at(3, 1.0));
    s.reset();
    assert_eq!(s.plan_step(&step(4, 1.0)).temperature, None);
}

#[test]
fn strategies_by_name() {
    for name in [
        "stop",
        "suppress_eos",
        "suppress_eos_masked",
        "post_eos_resample",
        "backstep",
        "backstep_with_schedule",
        "resume_turn",
    ] {
        assert_eq!(strategy_by_name(name).unwrap().name(), name);
    }
    assert!(strategy_by_name("nope").is_err());
}

/// What happened in a simulated run.
#[derive(Debug, Default)]
struct Run {
    /// Longest run of back steps with no token appended in between.
    max_consecutive_backsteps: usize,
    /// Most steps between two increases of the frontier (longest text so far).
    max_steps_without_new_frontier: usize,
    stopped: bool,
    eos_written: bool,
    generated: usize,
    /// Lowest and highest plan temperature seen (base 1.0 when never overridden).
    temperature_range: (f32, f32),
    /// Turns resumed, and the shortest turn (tokens appended) that was ended.
    resumes: usize,
    shortest_ended_turn: Option<usize>,
    /// Back steps asked for when nothing was removable (the generator then falls
    /// back to a replacement; built-in strategies replace by themselves).
    empty_backsteps: usize,
}

/// Hidden tokens the simulated generator feeds after a resume.
const HIDDEN: usize = 4;

/// Play a script against a strategy the way the generator does. `script[i % len]`:
/// (the first draw is EOS, a runner-up exists). `roll_every > 0` rolls the context
/// each time the text reaches a multiple of it: back steps cannot reach before it.
fn simulate(s: &mut dyn EosStrategy, script: &[(bool, bool)], steps: usize, roll_every: usize) -> Run {
    let mut run = Run { temperature_range: (1.0, 1.0), ..Run::default() };
    let (mut generated, mut frontier, mut since_frontier, mut backsteps_in_row) =
        (0usize, 0usize, 0usize, 0usize);
    let mut turn = 0usize;
    let mut rolled_at = 0usize;
    for i in 0..steps {
        let (eos, runner_up) = script[i % script.len()];
        let plan = s.plan_step(&step(generated, 1.0));
        let t = plan.effective_temperature(1.0);
        run.temperature_range = (run.temperature_range.0.min(t), run.temperature_range.1.max(t));
        let token = if eos && !plan.mask_eos {
            let draws: &[u32] = if plan.draws >= 2 && runner_up { &[EOS, RUNNER_UP] } else { &[EOS] };
            let removable = turn.min(generated - rolled_at);
            let ev = EosDrawn {
                prompt_len: PROMPT,
                generated,
                removable,
                draws,
                p_eos: 0.9,
                base_temperature: 1.0,
            };
            match s.on_eos(&ev) {
                EosAction::Stop => {
                    run.stopped = true;
                    break;
                }
                EosAction::Replace { token } => Some(token),
                EosAction::Resume => {
                    // The generator feeds the resume tokens (no `on_token`): they are
                    // text the model sees, not text a back step may remove.
                    run.resumes += 1;
                    run.shortest_ended_turn = Some(run.shortest_ended_turn.map_or(turn, |m| m.min(turn)));
                    turn = 0;
                    generated += HIDDEN;
                    None
                }
                EosAction::Backstep { n } if n.min(removable) == 0 => {
                    // The generator's fallback: a replacement.
                    run.empty_backsteps += 1;
                    s.on_backstep(0, generated);
                    match draws.get(1) {
                        Some(&t) => Some(t),
                        None => {
                            run.stopped = true;
                            break;
                        }
                    }
                }
                EosAction::Backstep { n } => {
                    let n = n.min(removable);
                    generated -= n;
                    turn -= n;
                    s.on_backstep(n, generated);
                    backsteps_in_row += 1;
                    run.max_consecutive_backsteps = run.max_consecutive_backsteps.max(backsteps_in_row);
                    None
                }
            }
        } else {
            Some(3)
        };
        if let Some(t) = token {
            run.eos_written |= t == EOS;
            s.on_token(t, generated);
            generated += 1;
            turn += 1;
            backsteps_in_row = 0;
            if roll_every > 0 && generated % roll_every == 0 {
                rolled_at = generated;
            }
        }
        since_frontier += 1;
        if generated > frontier {
            frontier = generated;
            since_frontier = 0;
        }
        run.max_steps_without_new_frontier = run.max_steps_without_new_frontier.max(since_frontier);
    }
    run.generated = generated;
    run
}

fn strategies(guard: LoopGuard) -> Vec<Box<dyn EosStrategy>> {
    vec![
        Box::new(SuppressEos::new().with_loop_guard(guard).unwrap()),
        Box::new(SuppressEos::hard_mask().with_loop_guard(guard).unwrap()),
        Box::new(PostEosResample::new().with_loop_guard(guard).unwrap()),
        Box::new(Backstep::new(7).unwrap().with_loop_guard(guard).unwrap()),
        Box::new(BackstepWithSchedule::new(10).unwrap().with_loop_guard(guard).unwrap()),
        Box::new(ResumeTurn::new().with_loop_guard(guard).unwrap()),
    ]
}

#[test]
fn resume_turn_ends_long_turns_and_replaces_short_ones() {
    let mut s = ResumeTurn::new().with_min_turn(3);
    assert_eq!(s.plan_step(&step(0, 1.0)).draws, 2);
    s.on_token(3, 0);
    s.on_token(3, 1);
    assert_eq!(s.on_eos(&eos_at(2, 1.0)), EosAction::Replace { token: RUNNER_UP });
    s.on_token(RUNNER_UP, 2);
    assert_eq!(s.on_eos(&eos_at(3, 1.0)), EosAction::Resume);
    // The turn starts over; a back step counts against it.
    for i in 7..10 {
        s.on_token(3, i);
    }
    s.on_backstep(2, 8);
    assert_eq!(s.on_eos(&eos_at(8, 1.0)), EosAction::Replace { token: RUNNER_UP });
    assert_eq!((s.turns(), s.interventions()), (1, 3));
    // A budget lets the EOS through; reset forgets the turns.
    let mut b = ResumeTurn::new().with_budget(Budget::unlimited().max_interventions(0));
    assert_eq!(b.on_eos(&eos_at(40, 1.0)), EosAction::Stop);
    s.reset();
    assert_eq!((s.turns(), s.interventions()), (0, 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For ANY script of draws, no strategy loops: back steps in a row are bounded by
    /// `max_escalations + 1`, and the text grows past its longest-so-far within
    /// `2(E+1)(M+1) + 1` steps (M = the longest back step), unless generation stops.
    #[test]
    fn no_strategy_loops_forever(
        script in proptest::collection::vec((prop::bool::weighted(0.7), prop::bool::weighted(0.9)), 1..64),
        window in 0usize..6,
        cool_down in 1usize..100,
        max_escalations in 0u32..5,
        growth in 1usize..4,
        max_backstep in 1usize..80,
        roll_every in prop_oneof![Just(0usize), 3usize..60],
    ) {
        let guard = LoopGuard::new().window(window).cool_down(cool_down).unwrap().max_escalations(max_escalations)
            .backstep_growth(growth).unwrap().max_backstep(max_backstep).unwrap();
        let e = max_escalations as usize + 1;
        let bound = 2 * e * (max_backstep + 1) + 1;
        for mut s in strategies(guard) {
            let run = simulate(&mut *s, &script, 3_000, roll_every);
            prop_assert_eq!(run.empty_backsteps, 0, "{}: a back step with nothing removable", s.name());
            prop_assert!(run.max_consecutive_backsteps <= e, "{}: {run:?}", s.name());
            prop_assert!(run.max_steps_without_new_frontier <= bound, "{}: {run:?} > {bound}", s.name());
            prop_assert!(!run.eos_written, "{}", s.name());
            // Temperatures stay between the base (1.0) and the most escalated peak.
            let (lo, hi) = run.temperature_range;
            prop_assert!(lo == 1.0 && hi <= 2.0 + max_escalations as f32 * 0.25 + 1e-6, "{}: {run:?}", s.name());
            // A stop only happens when the EOS had no runner-up.
            if run.stopped {
                prop_assert!(script.iter().any(|&(eos, r)| eos && !r), "{}: {run:?}", s.name());
            }
            // Only the resuming strategy resumes, and never after a turn shorter than
            // its minimum.
            if s.name() != "resume_turn" {
                prop_assert_eq!(run.resumes, 0);
            }
            prop_assert!(run.shortest_ended_turn.is_none_or(|t| t >= perpetua_perpetual::DEFAULT_MIN_TURN), "{run:?}");
        }
    }

    /// With a runner-up always available no strategy ever stops, and the text grows at
    /// the rate the bound above guarantees (at least one new token per `B` steps).
    #[test]
    fn every_strategy_keeps_growing(script in proptest::collection::vec(any::<bool>(), 1..32)) {
        let script: Vec<(bool, bool)> = script.into_iter().map(|e| (e, true)).collect();
        let guard = LoopGuard::new();
        let bound = 2 * (guard.max_escalations as usize + 1) * (guard.max_backstep + 1) + 1;
        let steps = 20_000;
        for mut s in strategies(guard) {
            let run = simulate(&mut *s, &script, steps, 0);
            prop_assert!(!run.stopped && run.generated >= steps / bound, "{}: {run:?}", s.name());
        }
    }
}

/// One strategy vocabulary: `strategy_by_name` takes the canonical names of specs, the
/// CLI and evaluation tables too (before, only each strategy's own name).
#[test]
fn strategy_by_name_takes_the_canonical_names() {
    for (name, strategy) in [
        ("plain", "stop"),
        ("suppress", "suppress_eos"),
        ("suppress_masked", "suppress_eos_masked"),
        ("post_eos", "post_eos_resample"),
        ("backstep", "backstep"),
        ("dynamic", "backstep_with_schedule"),
        ("resume", "resume_turn"),
    ] {
        assert_eq!(strategy_by_name(name).unwrap().name(), strategy, "{name}");
    }
}
