//! Loop detection and loop back steps without a model: planted loops of every period
//! are found exactly when the thresholds say, de Bruijn text never counts as a loop,
//! and a loop-seeking "model" cannot keep [`LoopBackstep`] (around any EOS method)
//! from moving the text on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_perpetual::{
    Anticipation, Backstep, BackstepWithSchedule, EosAction, EosDrawn, EosStrategy, LoopBackstep,
    LoopDetection, LoopDetector, LoopGuard, PostEosResample, Repeat, Staleness, StepInfo, StopAtEos,
    SuppressEos, TokenAction, TokenAppended,
};
use proptest::prelude::*;

/// The first index at which the detector reports, and what.
fn first_detection(d: &mut LoopDetector, ids: &[u32]) -> Option<(usize, Repeat)> {
    (1..=ids.len()).find_map(|n| d.observe(&ids[..n]).map(|r| (n, r)))
}

/// A de Bruijn sequence B(k, n): every length-`n` word over `k` symbols exactly once
/// (Fredricksen–Maiorana: concatenated Lyndon words).
fn de_bruijn(k: u32, n: usize) -> Vec<u32> {
    let mut a = vec![0u32; n + 1];
    let mut out = Vec::new();
    fn db(t: usize, p: usize, k: u32, n: usize, a: &mut Vec<u32>, out: &mut Vec<u32>) {
        if t > n {
            if n.is_multiple_of(p) {
                out.extend_from_slice(&a[1..=p]);
            }
        } else {
            a[t] = a[t - p];
            db(t + 1, p, k, n, a, out);
            for j in a[t - p] + 1..k {
                a[t] = j;
                db(t + 1, t, k, n, a, out);
            }
        }
    }
    db(1, 1, k, n, &mut a, &mut out);
    out
}

#[test]
fn de_bruijn_words_are_unique() {
    let s = de_bruijn(4, 6);
    assert_eq!(s.len(), 4usize.pow(6));
    // Cyclic: every 6-word of the sequence (not wrapping) is distinct.
    let words: std::collections::HashSet<&[u32]> = s.windows(6).collect();
    assert_eq!(words.len(), s.len() - 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A loop of any period 1–64 after any prefix is found the moment the copies after
    /// the first hold max(p, 12) tokens (24 for periods above 24: then the second copy
    /// is a repeated 24-token span) — not a token earlier — with its true period.
    #[test]
    fn planted_loops_of_every_period_are_found(period in 1usize..=64, prefix in 0usize..300, tail in 0usize..40) {
        let mut ids: Vec<u32> = (0..prefix as u32).map(|i| 10_000 + i).collect();
        let pattern: Vec<u32> = (0..period as u32).map(|i| 50_000 + i).collect();
        let need = period.clamp(12, 24);
        let loop_len = period + need + tail;
        ids.extend((0..loop_len).map(|i| pattern[i % period]));
        let mut d = LoopDetector::new(LoopDetection::default()).unwrap();
        let (n, r) = first_detection(&mut d, &ids).expect("the planted loop is found");
        prop_assert_eq!(n, prefix + period + need);
        prop_assert_eq!(r, Repeat { distance: period, len: need, in_a_row: need >= period });
        // A back step of `len` tokens keeps exactly one copy: never into the prefix.
        prop_assert!(n - r.len >= prefix + period);
    }

    /// A 24-token span written again after other text is found at its 24th token.
    #[test]
    fn spans_repeated_at_a_distance_are_found(span in 24usize..120, gap in 1usize..120, prefix in 0usize..50) {
        prop_assume!(span + gap <= 256);
        let mut ids: Vec<u32> = (0..prefix as u32).map(|i| 10_000 + i).collect();
        let para: Vec<u32> = (0..span as u32).map(|i| 50_000 + i).collect();
        ids.extend(&para);
        ids.extend((0..gap as u32).map(|i| 70_000 + i));
        ids.extend(&para);
        let mut d = LoopDetector::new(LoopDetection::default()).unwrap();
        let (n, r) = first_detection(&mut d, &ids).expect("the repeated span is found");
        prop_assert_eq!(n, prefix + span + gap + 24);
        prop_assert_eq!((r.distance, r.len, r.in_a_row), (span + gap, 24, false));
    }

    /// De Bruijn text (no 6-word repeats) is never a loop, incrementally or after a
    /// rebuild, whatever slice of it is generated.
    #[test]
    fn de_bruijn_text_is_never_a_loop(start in 0usize..2000, len in 1usize..2000, rebuild_every in 1usize..200) {
        let s = de_bruijn(4, 6);
        let ids = &s[start..(start + len).min(s.len())];
        let mut d = LoopDetector::new(LoopDetection::default()).unwrap();
        for n in 1..=ids.len() {
            if n.is_multiple_of(rebuild_every) {
                d.invalidate();
            }
            prop_assert!(d.observe(&ids[..n]).is_none(), "a loop reported at {n}");
        }
    }
}

const EOS: u32 = 0;
const RUNNER_UP: u32 = 7;
const PROMPT: usize = 5;

#[derive(Debug, Default)]
struct Run {
    loop_backsteps: usize,
    eos_events: usize,
    max_steps_without_new_frontier: usize,
    generated: usize,
    /// A back step (loop or EOS) that would have reached into the prompt or past
    /// `removable`, or removed nothing.
    overreach: bool,
    /// The regenerated token at a loop back step's landing equalled the evicted one.
    same_as_evicted: usize,
    stopped: bool,
}

/// A loop-seeking "model": it copies the token `period` back (a loop of that period),
/// takes a fresh token when that one is banned, and draws EOS where the script says.
/// `removable` is capped as after a context roll at `roll_cap` tokens.
fn simulate(s: &mut dyn EosStrategy, period: usize, eos_every: usize, steps: usize, roll_cap: usize) -> Run {
    let mut run = Run::default();
    let mut text: Vec<u32> = Vec::new();
    let (mut frontier, mut since) = (0usize, 0usize);
    let mut fresh = 1_000u32;
    let mut evicted_at: Option<(usize, u32)> = None;
    for i in 0..steps {
        let g = text.len();
        let plan = s.plan_step(&StepInfo { prompt_len: PROMPT, generated: g, base_temperature: 1.0 });
        let mut token = if g >= period { text[g - period] } else { 100 + g as u32 };
        if plan.bans.contains(token) {
            fresh += 1;
            token = fresh;
        }
        if eos_every > 0 && i.is_multiple_of(eos_every) && !plan.mask_eos {
            run.eos_events += 1;
            // The generator masks bans before drawing: the runner-up is never banned.
            let runner_up = if plan.bans.contains(RUNNER_UP) { RUNNER_UP + 1 } else { RUNNER_UP };
            let pair = [EOS, runner_up];
            let draws: &[u32] = if plan.draws >= 2 { &pair } else { &pair[..1] };
            match s.on_eos(&EosDrawn {
                prompt_len: PROMPT,
                generated: g,
                removable: g.min(roll_cap),
                draws,
                p_eos: 0.9,
                base_temperature: 1.0,
            }) {
                EosAction::Stop => {
                    run.stopped = true;
                    break;
                }
                EosAction::Replace { token: t } => token = t,
                EosAction::Resume => panic!("no strategy simulated here resumes turns"),
                EosAction::Backstep { n } => {
                    run.overreach |= n > g.min(roll_cap) || n == 0;
                    let n = n.min(g).min(roll_cap);
                    text.truncate(g - n);
                    s.on_backstep(n, text.len());
                    token = u32::MAX;
                }
            }
        }
        if token != u32::MAX {
            if let Some((at, evicted)) = evicted_at.take()
                && at == text.len()
                && token == evicted
            {
                run.same_as_evicted += 1;
            }
            text.push(token);
            s.on_token(token, text.len() - 1);
            let removable = text.len().min(roll_cap);
            let ev = TokenAppended {
                prompt_len: PROMPT,
                generated: &text,
                removable,
                entropy: Some(if i % 50 < 10 { 0.2 } else { 2.5 }),
                temperature: 1.0,
                base_temperature: 1.0,
            };
            if let TokenAction::Backstep { n } = s.after_token(&ev) {
                run.overreach |= n > text.len() || n > removable || n == 0;
                let n = n.min(removable);
                let landing = text.len() - n;
                evicted_at = Some((landing, text[landing]));
                text.truncate(landing);
                s.on_backstep(n, text.len());
                run.loop_backsteps += 1;
            }
        }
        since += 1;
        if text.len() > frontier {
            frontier = text.len();
            since = 0;
        }
        run.max_steps_without_new_frontier = run.max_steps_without_new_frontier.max(since);
    }
    run.generated = text.len();
    run
}

fn wrapped(loop_guard: LoopGuard) -> Vec<Box<dyn EosStrategy>> {
    let lb = |s: Box<dyn EosStrategy>| -> Box<dyn EosStrategy> {
        Box::new(LoopBackstep::new(s).with_loop_guard(loop_guard).unwrap())
    };
    vec![
        lb(Box::new(SuppressEos::new())),
        lb(Box::new(SuppressEos::hard_mask())),
        lb(Box::new(PostEosResample::new())),
        lb(Box::new(Backstep::new(7).unwrap())),
        lb(Box::new(BackstepWithSchedule::new(10).unwrap())),
        Box::new(Anticipation::new(lb(Box::new(BackstepWithSchedule::new(10).unwrap())))),
        Box::new(
            LoopBackstep::new(BackstepWithSchedule::new(10).unwrap())
                .with_loop_guard(loop_guard)
                .unwrap()
                .with_staleness(Staleness::default())
                .unwrap(),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Against a model that always walks back into its loop, with any EOS method and
    /// any loop-guard settings: a loop back step never reaches into the prompt or past
    /// what the cache can drop; the regenerated token at the landing is never the
    /// evicted one (it is banned); and the text keeps growing: the frontier advances
    /// within a bounded number of steps (escalation, then the fall-back that only bans
    /// and heats), so no loop is ever infinite.
    #[test]
    fn loop_back_steps_are_bounded_and_never_eat_the_prompt(
        period in 1usize..40,
        eos_every in prop_oneof![Just(0usize), 7usize..200],
        window in 0usize..64,
        cool_down in 1usize..100,
        max_escalations in 0u32..5,
        growth in 1usize..4,
        max_backstep in 1usize..300,
        roll_cap in prop_oneof![Just(usize::MAX), 1usize..100],
    ) {
        let guard = LoopGuard::new().window(window).cool_down(cool_down).unwrap().max_escalations(max_escalations)
            .backstep_growth(growth).unwrap().max_backstep(max_backstep).unwrap();
        // Loop back steps within a streak: E_l; the EOS guard's: 4 (its defaults); each
        // removes at most M tokens (the larger of the two guards' caps).
        let e = (max_escalations as usize + 1) + 4;
        let m = max_backstep.max(256);
        let bound = 2 * e * (m + 1) + 64;
        for mut s in wrapped(guard) {
            let run = simulate(&mut *s, period, eos_every, 4_000, roll_cap);
            prop_assert!(!run.overreach, "{run:?}");
            prop_assert_eq!(run.same_as_evicted, 0, "{:?}", run);
            prop_assert!(!run.stopped, "{run:?}");
            prop_assert!(run.max_steps_without_new_frontier <= bound, "{run:?} > {bound}");
            prop_assert!(run.generated > 0);
        }
    }
}

#[test]
fn a_loop_seeking_model_is_cut_and_the_text_grows() {
    let mut s = LoopBackstep::new(StopAtEos);
    let run = simulate(&mut s, 5, 0, 3_000, usize::MAX);
    assert!(run.loop_backsteps > 10, "{run:?}");
    assert!(s.loop_backsteps() == run.loop_backsteps && s.fallbacks() > 0, "{run:?}");
    assert!(run.generated > 300, "{run:?}");
    // Without the wrapper the same model loops and nothing intervenes.
    let mut plain = StopAtEos;
    assert_eq!(simulate(&mut plain, 5, 0, 300, usize::MAX).loop_backsteps, 0);
}

#[test]
fn reset_and_inner_strategy_keep_their_roles() {
    let mut s = LoopBackstep::new(BackstepWithSchedule::new(10).unwrap());
    simulate(&mut s, 3, 50, 500, usize::MAX);
    assert!(s.loop_backsteps() > 0 && s.inner().interventions() > 0);
    s.reset();
    assert_eq!(
        (s.loop_backsteps(), s.fallbacks(), s.escalation_level(), s.inner().interventions()),
        (0, 0, 0, 0)
    );
    // The wrapper answers EOS exactly as its inner strategy does.
    let mut a = LoopBackstep::new(BackstepWithSchedule::new(10).unwrap());
    let mut b = BackstepWithSchedule::new(10).unwrap();
    let ev = EosDrawn {
        prompt_len: 5,
        generated: 40,
        removable: 40,
        draws: &[EOS, RUNNER_UP],
        p_eos: 0.5,
        base_temperature: 1.0,
    };
    assert_eq!(a.on_eos(&ev), b.on_eos(&ev));
    a.on_backstep(10, 30);
    b.on_backstep(10, 30);
    for g in 30..42 {
        let step = StepInfo { prompt_len: 5, generated: g, base_temperature: 1.0 };
        assert_eq!(a.plan_step(&step).temperature, b.plan_step(&step).temperature, "at {g}");
    }
}

/// A "model" whose vocabulary has collapsed without looping verbatim: it writes tokens
/// from an alphabet of `alphabet` ids in a pseudo-random order (salad), with a fresh
/// token whenever the strategy bans the one it wanted.
fn salad(s: &mut LoopBackstep<StopAtEos>, alphabet: u32, steps: usize, seed: u64) -> (usize, usize, usize) {
    let mut text: Vec<u32> = (5_000..5_100).collect(); // 100 fresh tokens first
    let (mut frontier, mut removed) = (text.len(), 0usize);
    let mut x = seed | 1;
    for _ in 0..steps {
        let g = text.len();
        let plan = s.plan_step(&StepInfo { prompt_len: PROMPT, generated: g, base_temperature: 1.0 });
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut token = (x % u64::from(alphabet)) as u32;
        if plan.bans.contains(token) {
            token = 9_000 + g as u32;
        }
        text.push(token);
        s.on_token(token, text.len() - 1);
        let ev = TokenAppended {
            prompt_len: PROMPT,
            generated: &text,
            removable: text.len(),
            entropy: None,
            temperature: 1.0,
            base_temperature: 1.0,
        };
        // The longest the text has been, the token just appended included.
        frontier = frontier.max(text.len());
        match s.after_token(&ev) {
            TokenAction::Backstep { n } => {
                assert!(n >= 1 && n <= text.len(), "{n} of {}", text.len());
                text.truncate(text.len() - n);
                removed += n;
                s.on_backstep(n, text.len());
            }
            TokenAction::Resume { n } => {
                assert!(n <= text.len(), "{n} of {}", text.len());
                if n > 0 {
                    text.truncate(text.len() - n);
                    removed += n;
                    s.on_backstep(n, text.len());
                }
                // The generator feeds the resume tokens (4 here, paid from the budget
                // like removed ones), then tells the strategy.
                text.extend(7_000..7_004);
                removed += 4;
                frontier = frontier.max(text.len());
                s.on_resume(text.len());
            }
            TokenAction::Continue => {}
        }
    }
    (text.len(), frontier, removed)
}

#[test]
fn stale_turns_end_the_turn_within_the_budget_and_rearm_after_a_window() {
    let st = Staleness::default();
    // The verbatim detector off in effect, so only staleness acts.
    let detection =
        LoopDetection { max_period: 1, min_repeated_tokens: 4_000, min_span: 0, ..LoopDetection::new() };
    let mut s = LoopBackstep::new(StopAtEos)
        .with_detection(detection)
        .unwrap()
        .with_staleness(st)
        .unwrap()
        .with_stale_turns(true);
    assert!(s.stale_turns());
    let mut frontier = 0;
    let mut text: Vec<u32> = (5_000..5_100).collect();
    let (mut resumes, mut last_resume_end, mut removed, mut paid) = (Vec::new(), 0usize, 0usize, 0usize);
    for i in 0..3_000u32 {
        text.push(i % 5);
        frontier = frontier.max(text.len());
        s.on_token(i % 5, text.len() - 1);
        let ev = TokenAppended {
            prompt_len: PROMPT,
            generated: &text,
            removable: text.len() - last_resume_end,
            entropy: None,
            temperature: 1.0,
            base_temperature: 1.0,
        };
        match s.after_token(&ev) {
            TokenAction::Resume { n } => {
                // Never before a window of new turn text exists.
                assert!(last_resume_end == 0 || text.len() >= last_resume_end + st.window, "{}", text.len());
                text.truncate(text.len() - n);
                removed += n;
                if n > 0 {
                    s.on_backstep(n, text.len());
                }
                text.extend(7_000..7_004);
                paid += n + 4;
                frontier = frontier.max(text.len());
                last_resume_end = text.len();
                s.on_resume(text.len());
                resumes.push(n);
            }
            TokenAction::Backstep { .. } => panic!("stale turns never regenerate"),
            TokenAction::Continue => {}
        }
    }
    assert!(resumes.len() > 5, "{resumes:?}");
    // Tokens removed stay within the budget; near it, turns end without removal; the
    // resume tokens are paid from it too (the last turn may overshoot by its own 4).
    assert!(removed as f64 <= f64::from(st.budget) * frontier as f64, "{removed} of {frontier}");
    assert!(paid as f64 <= f64::from(st.budget) * frontier as f64 + 4.0, "{paid} of {frontier}");
    assert!(resumes.contains(&st.backstep), "{resumes:?}");
    // Past the budget a stale window only heats: the last stretch has no turn.
    assert!(s.stale_heats() > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Stale text (a collapsed vocabulary that a verbatim detector cannot see) is cut,
    /// and the regeneration stays within its budget: tokens removed never exceed
    /// `budget ×` the longest text, whatever the thresholds, so stale back steps cost at
    /// most `1 + budget` forward passes per kept token.
    #[test]
    fn stale_back_steps_stay_within_their_budget(
        alphabet in 2u32..12,
        window in 32usize..200,
        backstep_share in 0.05f64..1.0,
        budget in 0.01f32..0.5,
        seed in 1u64..10_000,
        rewind in prop_oneof![Just(0usize), 1usize..600],
    ) {
        let st = Staleness {
            window,
            min_distinct: 0.4,
            backstep: ((window as f64 * backstep_share) as usize).max(1),
            budget,
            rewind,
            ..Staleness::default()
        };
        // The verbatim detector off in effect (huge thresholds), so only staleness acts.
        let detection = LoopDetection { max_period: 1, min_repeated_tokens: 4_000, min_span: 0, ..LoopDetection::new() };
        let mut s = LoopBackstep::new(StopAtEos).with_detection(detection).unwrap().with_staleness(st).unwrap();
        let (len, frontier, removed) = salad(&mut s, alphabet, 3_000, seed);
        prop_assert!(s.stale_backsteps() + s.stale_heats() > 0, "never stale: {len}");
        prop_assert!(removed as f64 <= f64::from(budget) * frontier as f64 + 1e-9, "{removed} > {budget} × {frontier}");
        prop_assert_eq!(s.loop_backsteps(), s.stale_backsteps());
    }
}

#[test]
fn fresh_text_is_never_stale_and_thresholds_are_named() {
    let mut s = LoopBackstep::new(StopAtEos).with_staleness(Staleness::default()).unwrap();
    // 400 distinct tokens, then every fourth token from a small set (natural function
    // words): above 0.4 distinct per 64-token window throughout.
    let text: Vec<u32> = (0..2_000u32).map(|i| if i % 4 == 0 { i % 7 } else { 100 + i }).collect();
    assert_eq!(first_backstep(&mut s, &text), None);
    assert_eq!((s.stale_backsteps(), s.stale_heats()), (0, 0));
    let bad = |st: Staleness| LoopBackstep::new(StopAtEos).with_staleness(st).unwrap_err().to_string();
    assert!(bad(Staleness { window: 4, ..Staleness::default() }).contains("stale_window"));
    assert!(bad(Staleness { min_distinct: 1.0, ..Staleness::default() }).contains("stale_min_distinct"));
    assert!(bad(Staleness { backstep: 65, ..Staleness::default() }).contains("stale_backstep"));
    assert!(bad(Staleness { budget: 0.0, ..Staleness::default() }).contains("stale_budget"));
    // A salad of 5 ids is stale; it is cut once the budget allows.
    let mut s = LoopBackstep::new(StopAtEos).with_staleness(Staleness::default()).unwrap();
    let (_, _, removed) = salad(&mut s, 5, 2_000, 3);
    assert!(s.stale_backsteps() > 0 && removed > 0);
}

/// Text that degrades gradually: `fresh` distinct tokens, then `fade` tokens in which
/// the share of a 5-id salad grows from 0 to 1 (at pseudo-random places), then salad.
fn fading(fresh: usize, fade: usize, total: usize) -> Vec<u32> {
    let hash = |i: usize| (i as u32).wrapping_mul(2_654_435_761);
    (0..total)
        .map(|i| {
            let fresh_token =
                i < fresh || (i < fresh + fade && (hash(i - fresh) >> 8) as usize % fade >= i - fresh);
            if fresh_token { 10_000 + i as u32 } else { 1 + hash(i).rotate_left(7) % 5 }
        })
        .collect()
}

/// Feed `text` until the first back step (`on_token`, then `after_token`, as the
/// generator does); returns its length and where it landed.
fn first_backstep(s: &mut LoopBackstep<StopAtEos>, text: &[u32]) -> Option<(usize, usize)> {
    (1..=text.len()).find_map(|n| {
        s.on_token(text[n - 1], n - 1);
        let ev = TokenAppended {
            prompt_len: PROMPT,
            generated: &text[..n],
            removable: n,
            entropy: None,
            temperature: 1.0,
            base_temperature: 1.0,
        };
        match s.after_token(&ev) {
            TokenAction::Backstep { n: k } => Some((k, n - k)),
            _ => None,
        }
    })
}

/// A rewind lands where the text was freshest: at the end of the latest window within
/// `tolerance` of the best one in reach — here near where the fade began, far past the
/// plain back step — and never past `rewind`. Without a rewind the back step is
/// `backstep`; over budget a rewind shrinks to it.
#[test]
fn a_rewind_lands_where_the_text_was_freshest() {
    let text = fading(400, 240, 900);
    let detection =
        LoopDetection { max_period: 1, min_repeated_tokens: 4_000, min_span: 0, ..LoopDetection::new() };
    let plain = Staleness { budget: 1.0, ..Staleness::default() };
    let rewind = Staleness { rewind: 256, ..plain };
    let build =
        |st| LoopBackstep::new(StopAtEos).with_detection(detection).unwrap().with_staleness(st).unwrap();
    let distinct = |end: usize| Staleness::distinct(&text[end - 64..end], &mut Vec::new());

    let (n, at) = first_backstep(&mut build(plain), &text).unwrap();
    assert_eq!(n, plain.backstep);
    let detected = at + n;

    let mut s = build(rewind);
    let (n, landing) = first_backstep(&mut s, &text).unwrap();
    assert_eq!(landing + n, detected, "the same detection");
    let best = (detected - 256..detected).map(distinct).max().unwrap();
    // tolerance 0.05 × 64 = 3.2 distinct ids
    assert!(distinct(landing) + 3 >= best, "{} at {landing}, best {best}", distinct(landing));
    assert!((landing + 1..detected).all(|end| distinct(end) + 3 < best), "a later window was as fresh");
    assert!(n > 2 * rewind.backstep && n <= rewind.rewind, "{n}");
    assert!((400..480).contains(&landing), "lands near the start of the fade: {landing}");
    assert_eq!(s.rewinds(), 1);
    // A rewind of at most the back step is the plain back step.
    let (n, _) = first_backstep(&mut build(Staleness { rewind: 8, ..plain }), &text).unwrap();
    assert_eq!(n, plain.backstep);

    // Over budget the rewind shrinks to the plain back step.
    let mut tight = build(Staleness { budget: 0.1, ..rewind });
    let (n, _) = first_backstep(&mut tight, &text).unwrap();
    assert_eq!(n, rewind.backstep);
    assert_eq!(tight.rewinds(), 0);
    // Invalid values are named.
    let bad = |st: Staleness| LoopBackstep::new(StopAtEos).with_staleness(st).unwrap_err().to_string();
    assert!(bad(Staleness { rewind: 5_000, ..Staleness::default() }).contains("stale_rewind"));
    assert!(
        bad(Staleness { rewind: 64, tolerance: 1.0, ..Staleness::default() }).contains("stale_tolerance")
    );
}
