//! Decoding beyond sampling on the fake model: beam search against
//! brute-force enumeration, speculative decoding's output distribution against the
//! target's (chi-square, fixed seeds), chain-of-thought decoding against its
//! definition, and the default `forward_all`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_generator::{
    BeamConfig, CotConfig, EarlyStopping, FinishReason, GenerateError, Generator, KvCache, LanguageModel,
    SpeculativeConfig,
};
use perpetua_sampling::Chain;
use perpetua_sampling::processors::{NoRepeatNGram, Temperature, TopK};
use perpetua_sampling::samplers::{Greedy, Multinomial};
use proptest::prelude::*;

// ---------------------------------------------------------------- statistics

use perpetua_sampling::testing::chi_square;

// ---------------------------------------------------------------- helpers

/// `log_softmax(model logits after tokens)`, rounded to f32 exactly as beam search
/// rounds its scores.
fn log_probs(model: &FakeModel, tokens: &[u32]) -> Vec<f32> {
    let mut logits = Vec::new();
    model.logits_for(tokens, &mut logits);
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let m = f64::from(max);
    let lse = m + logits.iter().map(|&l| (f64::from(l) - m).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| (f64::from(l) - lse) as f32).collect()
}

/// Softmax of the model's logits after `tokens`, in f64.
fn probs(model: &FakeModel, tokens: &[u32], temperature: f64) -> Vec<f64> {
    let mut logits = Vec::new();
    model.logits_for(tokens, &mut logits);
    let l: Vec<f64> = logits.iter().map(|&x| f64::from(x) / temperature).collect();
    let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = l.iter().map(|x| (x - max).exp()).sum();
    l.iter().map(|x| (x - max).exp() / z).collect()
}

/// Every finished sequence of at most `max_len` generated tokens, by brute force:
/// `(ids without EOS, sum of log-probs, length-penalised score)`, best first.
/// `ngram`: skip sequences in which no-repeat-n-gram would have masked a token.
fn enumerate(
    model: &FakeModel,
    prompt: &[u32],
    eos: u32,
    max_len: usize,
    alpha: f32,
    ngram: Option<usize>,
) -> Vec<(Vec<u32>, f64, f64)> {
    let vocab = model.vocab_size() as u32;
    let mut out = Vec::new();
    let mut stack: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    let blocker = ngram.map(|n| NoRepeatNGram::new(n).unwrap());
    let mut banned = Vec::new();
    while let Some((ids, sum)) = stack.pop() {
        let mut context = prompt.to_vec();
        context.extend_from_slice(&ids);
        let lp = log_probs(model, &context);
        banned.clear();
        if let Some(b) = &blocker {
            b.banned_after(&context, &mut banned);
        }
        for t in 0..vocab {
            if banned.contains(&t) {
                continue;
            }
            let s = sum + f64::from(lp[t as usize]);
            let len = ids.len() + 1;
            let score = s / (len as f64).powf(f64::from(alpha));
            let mut next = ids.clone();
            if t == eos {
                out.push((next, s, score));
                continue;
            }
            next.push(t);
            if len == max_len {
                out.push((next, s, score));
            } else {
                stack.push((next, s));
            }
        }
    }
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out
}

// ---------------------------------------------------------------- beam search

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With a beam wider than every step's candidate set nothing is pruned, so the
    /// n-best list must be exactly the n best sequences of the brute-force enumeration
    /// — with and without no-repeat-n-gram, for any length penalty.
    #[test]
    fn wide_beam_equals_brute_force(
        vocab in 3usize..=5,
        max_len in 1usize..=3,
        seed in 0u64..1000,
        alpha in prop_oneof![Just(0.0f32), Just(1.0), Just(2.0), -1.0f32..2.0],
        eos_bias in -1.0f32..2.0,
        ngram in prop_oneof![Just(None), Just(Some(1usize)), Just(Some(2usize))],
        mode in prop_oneof![Just(EarlyStopping::Never), Just(EarlyStopping::Heuristic)],
    ) {
        let eos = vocab as u32 - 1;
        let model = FakeModel::new(vocab).with_seed(seed).with_order(2).with_eos(eos).with_eos_bias(eos_bias);
        let reference = FakeModel::new(vocab).with_seed(seed).with_order(2).with_eos(eos).with_eos_bias(eos_bias);
        let prompt = [0u32, 1];
        let mut chain = Chain::new(Greedy);
        if let Some(n) = ngram {
            chain = chain.with(NoRepeatNGram::new(n).unwrap());
        }
        let mut generator = Generator::builder(model)
            .chain(chain)
            .eos_ids([eos])
            .max_new_tokens(max_len)
            .build()
            .unwrap();
        // 4^2 running beams × 5 tokens = 80 candidates at most: 128 beams prune nothing.
        let width = 128;
        let expected = enumerate(&reference, &prompt, eos, max_len, alpha, ngram);
        let n = expected.len().min(10);
        let config = BeamConfig::new(width).length_penalty(alpha).early_stopping(mode).num_return_sequences(n);
        let out = generator.beam_search(prompt, &config);
        if n == 0 {
            // Every token of the first step masked: a typed error, not a panic.
            prop_assert!(out.is_err());
            return Ok(());
        }
        let out = out.unwrap();
        prop_assert_eq!(out.hypotheses.len(), n);
        for (i, (h, (ids, sum, score))) in out.hypotheses.iter().zip(&expected).enumerate() {
            prop_assert!((h.score - score).abs() < 1e-9, "rank {}: score {} vs brute force {}", i, h.score, score);
            prop_assert!((h.sum_logprobs - sum).abs() < 1e-9);
            // Ids must agree unless two sequences tie.
            let tied = expected.iter().filter(|e| (e.2 - score).abs() < 1e-9).count() > 1;
            if !tied {
                prop_assert_eq!(&h.ids, ids, "rank {}", i);
            }
        }
        prop_assert_eq!(&out.generation.ids, &out.hypotheses[0].ids);
    }

    /// Whatever the width and stopping mode, every hypothesis reports the true score of
    /// its sequence, the list is sorted, and a wider search under `Never` with α = 0
    /// finds nothing worse than greedy search (width 1).
    #[test]
    fn reported_scores_are_true_scores(
        seed in 0u64..1000,
        width in 1usize..6,
        max_len in 1usize..7,
        alpha in -1.0f32..2.0,
        mode in prop_oneof![Just(EarlyStopping::Never), Just(EarlyStopping::Heuristic), Just(EarlyStopping::AsSoonAsFull)],
    ) {
        let vocab = 6;
        let eos = 5u32;
        let make = || FakeModel::new(vocab).with_seed(seed).with_order(2).with_eos(eos).with_eos_bias(1.0);
        let reference = make();
        let prompt = [1u32, 2];
        let mut generator = Generator::builder(make()).chain(Chain::new(Greedy)).eos_ids([eos]).max_new_tokens(max_len).build().unwrap();
        let config = BeamConfig::new(width).length_penalty(alpha).early_stopping(mode).num_return_sequences(width);
        let out = generator.beam_search(prompt, &config).unwrap();
        prop_assert!(!out.hypotheses.is_empty());
        for pair in out.hypotheses.windows(2) {
            prop_assert!(pair[0].score >= pair[1].score);
        }
        for h in &out.hypotheses {
            let mut context = prompt.to_vec();
            let mut sum = 0.0f64;
            for &t in &h.ids {
                sum += f64::from(log_probs(&reference, &context)[t as usize]);
                context.push(t);
            }
            let mut len = h.ids.len();
            if h.finish_reason == FinishReason::Eos {
                sum += f64::from(log_probs(&reference, &context)[eos as usize]);
                len += 1;
            } else {
                prop_assert_eq!(h.ids.len(), max_len);
            }
            prop_assert!((h.sum_logprobs - sum).abs() < 1e-9);
            prop_assert!((h.score - sum / (len as f64).powf(f64::from(alpha))).abs() < 1e-9);
        }
    }
}

#[test]
fn width_one_is_greedy_search() {
    for seed in 0..20 {
        let make = || {
            FakeModel::new(ByteTokenizer::VOCAB_SIZE)
                .with_seed(seed)
                .with_eos(ByteTokenizer::EOS)
                .with_eos_bias(3.0)
        };
        let mut greedy = Generator::builder(make())
            .tokenizer(ByteTokenizer::new())
            .chain(Chain::new(Greedy))
            .max_new_tokens(12)
            .build()
            .unwrap();
        let expected = greedy.generate("abc").unwrap();
        let mut beam = Generator::builder(make())
            .tokenizer(ByteTokenizer::new())
            .chain(Chain::new(Greedy))
            .max_new_tokens(12)
            .build()
            .unwrap();
        let out = beam.beam_search("abc", &BeamConfig::new(1)).unwrap();
        assert_eq!(out.generation.ids, expected.ids, "seed {seed}");
        assert_eq!(out.generation.text, expected.text, "seed {seed}");
        assert_eq!(out.generation.finish_reason, expected.finish_reason, "seed {seed}");
    }
}

#[test]
fn early_stopping_modes_stop_in_order() {
    // A likely EOS fills the hypothesis list quickly: `AsSoonAsFull` stops first,
    // `Never` last (it proves no continuation can win).
    let run = |mode| {
        let model = FakeModel::new(8).with_seed(5).with_order(2).with_eos(7).with_eos_bias(2.5);
        let mut g = Generator::builder(model)
            .chain(Chain::new(Greedy))
            .eos_ids([7])
            .max_new_tokens(30)
            .build()
            .unwrap();
        g.beam_search([1u32], &BeamConfig::new(3).length_penalty(1.0).early_stopping(mode)).unwrap()
    };
    let full = run(EarlyStopping::AsSoonAsFull);
    let heuristic = run(EarlyStopping::Heuristic);
    let never = run(EarlyStopping::Never);
    println!(
        "forward passes: as-soon-as-full {}, heuristic {}, never {}",
        full.generation.counts.forward_passes,
        heuristic.generation.counts.forward_passes,
        never.generation.counts.forward_passes
    );
    assert!(full.generation.counts.forward_passes <= heuristic.generation.counts.forward_passes);
    assert!(heuristic.generation.counts.forward_passes <= never.generation.counts.forward_passes);
    assert!(full.generation.counts.forward_passes < never.generation.counts.forward_passes);
    assert!(never.hypotheses[0].score >= heuristic.hypotheses[0].score);
}

#[test]
fn beam_config_errors_name_the_parameter() {
    let mut g = Generator::builder(FakeModel::new(8)).max_new_tokens(4).build().unwrap();
    let mut err = |c: BeamConfig| match g.beam_search([1u32], &c) {
        Err(GenerateError::InvalidParameter { name, .. }) => name,
        other => panic!("expected an invalid parameter, got {other:?}"),
    };
    assert_eq!(err(BeamConfig::new(0)), "num_beams");
    assert_eq!(err(BeamConfig::new(2).num_return_sequences(3)), "num_return_sequences");
    assert_eq!(err(BeamConfig::new(2).num_return_sequences(0)), "num_return_sequences");
    assert_eq!(err(BeamConfig::new(2).length_penalty(f32::NAN)), "length_penalty");
}

/// The decoders open a prompt with the sampling loop's window rules: the context window
/// (and a mode's) bounds prompt plus new tokens, a bad window is the same typed error.
#[test]
fn decoders_keep_the_context_window() {
    let g = |window: usize| {
        Generator::builder(FakeModel::new(8).with_seed(3).with_eos(7).with_eos_bias(-50.0))
            .chain(Chain::new(Greedy))
            .eos_ids([7])
            .context_window(window)
            .max_new_tokens(40)
            .build()
            .unwrap()
    };
    let prompt = [1u32, 2, 3, 4, 5];
    let beam = g(12).beam_search(prompt, &BeamConfig::new(2)).unwrap();
    assert_eq!(beam.generation.ids.len(), 7, "12 positions hold the 5 prompt tokens and 7 new");
    let cot = g(12).cot_decode(prompt, &CotConfig::new(2)).unwrap();
    assert!(cot.paths.iter().all(|p| p.generation.ids.len() <= 7));
    // No room for a new token, and a window past the model's limit: typed errors.
    match g(5).beam_search(prompt, &BeamConfig::new(2)) {
        Err(GenerateError::PromptTooLong { len: 5, window: 5 }) => {}
        other => panic!("{other:?}"),
    }
    match g(1 << 30).beam_search(prompt, &BeamConfig::new(2)) {
        Err(GenerateError::InvalidParameter { name: "context_window", .. }) => {}
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- speculative

/// Outcomes of a generation of at most `max_len` tokens over vocab {0, 1, 2} + EOS 3:
/// the sequences without EOS, each ended by EOS or by the length limit (121 cells for
/// `max_len = 4`).
fn outcome_index(ids: &[u32], eos_ended: bool) -> usize {
    // Encode as base-4 digits with a length marker; mapped to a dense index by the caller.
    let mut code = ids.len();
    for &t in ids {
        code = code * 4 + t as usize;
    }
    code * 2 + usize::from(eos_ended)
}

/// Exact probability of every outcome under `model` at `temperature` (prompt `prompt`).
fn exact_outcomes(model: &FakeModel, prompt: &[u32], temperature: f64, max_len: usize) -> Vec<(usize, f64)> {
    let mut out = Vec::new();
    let mut stack: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 1.0)];
    while let Some((ids, p)) = stack.pop() {
        let mut context = prompt.to_vec();
        context.extend_from_slice(&ids);
        let dist = probs(model, &context, temperature);
        out.push((outcome_index(&ids, true), p * dist[3]));
        for t in 0..3u32 {
            let mut next = ids.clone();
            next.push(t);
            let q = p * dist[t as usize];
            if next.len() == max_len {
                out.push((outcome_index(&next, false), q));
            } else {
                stack.push((next, q));
            }
        }
    }
    out
}

fn pair(seed_target: u64, seed_draft: u64) -> (FakeModel, FakeModel) {
    let target = FakeModel::new(4).with_seed(seed_target).with_order(2).with_eos(3).with_eos_bias(-1.0);
    let draft = FakeModel::new(4).with_seed(seed_draft).with_order(1).with_eos(3).with_eos_bias(0.5);
    (target, draft)
}

/// Chi-square of speculative outputs against `expected` (cells with expected counts
/// below 5 pooled). Returns (statistic, p-value, acceptance rate, bonus rounds).
fn speculative_chi_square(
    chain: impl Fn() -> Chain,
    k: usize,
    temperature: f64,
    max_len: usize,
    runs: u64,
) -> (f64, f64, f64, usize, f64) {
    let (target, draft) = pair(11, 12);
    let (reference, draft_reference) = pair(11, 12);
    let prompt = [0u32, 1];
    let expected = exact_outcomes(&reference, &prompt, temperature, max_len);
    let draft_expected = exact_outcomes(&draft_reference, &prompt, temperature, max_len);
    let mut g =
        Generator::builder(target).chain(chain()).eos_ids([3]).max_new_tokens(max_len).build().unwrap();
    let mut counts = std::collections::HashMap::<usize, u64>::new();
    let (mut drafted, mut accepted, mut bonus) = (0, 0, 0);
    for seed in 0..runs {
        g.set_seed(seed);
        let out = g.speculative(&draft, prompt, &SpeculativeConfig::new(k)).unwrap();
        let eos = out.generation.finish_reason == FinishReason::Eos;
        *counts.entry(outcome_index(&out.generation.ids, eos)).or_default() += 1;
        drafted += out.stats.drafted;
        accepted += out.stats.accepted;
        bonus += out.stats.bonus;
    }
    let observed: Vec<u64> = expected.iter().map(|(i, _)| counts.get(i).copied().unwrap_or(0)).collect();
    assert_eq!(observed.iter().sum::<u64>(), runs, "an outcome outside the enumeration");
    let pooled = |probs: &[(usize, f64)]| {
        let (mut o, mut p) = (Vec::new(), Vec::new());
        let (mut small_o, mut small_p) = (0u64, 0.0);
        for ((_, prob), &obs) in probs.iter().zip(&observed) {
            if prob * runs as f64 >= 5.0 {
                o.push(obs);
                p.push(*prob);
            } else {
                small_o += obs;
                small_p += prob;
            }
        }
        if small_p > 0.0 {
            o.push(small_o);
            p.push(small_p);
        }
        chi_square(&o, &p)
    };
    let (stat, p) = pooled(&expected);
    // Control: the same counts against the *draft's* distribution (same cells).
    let draft_probs: Vec<(usize, f64)> = expected
        .iter()
        .map(|(i, _)| (*i, draft_expected.iter().find(|(j, _)| j == i).map_or(0.0, |(_, q)| *q)))
        .collect();
    let (_, p_draft) = pooled(&draft_probs);
    (stat, p, accepted as f64 / drafted as f64, bonus, p_draft)
}

#[test]
fn speculative_output_is_distributed_as_the_target() {
    // Outcomes of up to 4 tokens; K = 5 is cut to what the budget leaves.
    for (name, k) in [("K = 1", 1), ("K = 2", 2), ("K = 3", 3), ("K = 5", 5)] {
        let (stat, p, rate, bonus, p_draft) =
            speculative_chi_square(|| Chain::new(Multinomial), k, 1.0, 4, 40_000);
        println!(
            "{name}: chi2 = {stat:.1}, p = {p:.4}; vs the draft's distribution p = {p_draft:.2e}; acceptance {rate:.3}, bonus rounds {bonus}"
        );
        assert!(p > 0.001, "{name}: chi2 {stat}, p {p}");
        // Power: the draft's own distribution is rejected by the same statistic.
        assert!(p_draft < 1e-6, "{name}: the test cannot tell draft from target (p {p_draft})");
        // Both branches of the rule were exercised.
        assert!(rate > 0.05 && rate < 0.95, "{name}: acceptance {rate}");
        assert!(bonus > 0, "{name}: no round accepted every draft");
    }
}

#[test]
fn speculative_respects_the_processors() {
    // Temperature 0.6 applied to both models: the output follows the tempered target.
    let (stat, p, rate, _, p_draft) = speculative_chi_square(
        || Chain::new(Multinomial).with(Temperature::new(0.6).unwrap()),
        3,
        0.6,
        3,
        40_000,
    );
    println!("T 0.6, K = 3: chi2 = {stat:.1}, p = {p:.4}; vs draft p = {p_draft:.2e}; acceptance {rate:.3}");
    assert!(p > 0.001, "chi2 {stat}, p {p}");
    assert!(p_draft < 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// With a greedy chain, speculative decoding writes exactly the target's greedy
    /// text, whatever the draft and K (rejections truncate both caches correctly).
    #[test]
    fn greedy_speculative_equals_greedy_target(
        target_seed in 0u64..500,
        draft_seed in 0u64..500,
        k in 1usize..6,
        max_new in 1usize..40,
        top_k in 1usize..5,
    ) {
        let vocab = ByteTokenizer::VOCAB_SIZE;
        let make = || FakeModel::new(vocab).with_seed(target_seed).with_eos(ByteTokenizer::EOS).with_eos_bias(-1.0);
        // A draft that agrees often: the target's tables with a rule perturbation.
        let draft = if draft_seed % 2 == 0 {
            FakeModel::new(vocab).with_seed(target_seed).with_order(2).with_eos(ByteTokenizer::EOS)
        } else {
            FakeModel::new(vocab).with_seed(draft_seed).with_eos(ByteTokenizer::EOS)
        };
        let chain = || Chain::new(Greedy).with(TopK::new(top_k).unwrap());
        let mut plain = Generator::builder(make()).tokenizer(ByteTokenizer::new()).chain(chain()).max_new_tokens(max_new).build().unwrap();
        let expected = plain.generate("Once upon").unwrap();
        let mut g = Generator::builder(make()).tokenizer(ByteTokenizer::new()).chain(chain()).max_new_tokens(max_new).build().unwrap();
        let out = g.speculative(&draft, "Once upon", &SpeculativeConfig::new(k)).unwrap();
        prop_assert_eq!(&out.generation.ids, &expected.ids);
        prop_assert_eq!(&out.generation.text, &expected.text);
        prop_assert_eq!(&out.generation.finish_reason, &expected.finish_reason);
        prop_assert!(out.stats.accepted <= out.stats.drafted);
        prop_assert_eq!(out.stats.target_passes, out.stats.rounds);
    }
}

#[test]
fn identical_draft_accepts_everything() {
    let mut g =
        Generator::builder(FakeModel::new(50).with_seed(4)).seed(9).max_new_tokens(41).build().unwrap();
    let draft = FakeModel::new(50).with_seed(4);
    let out = g.speculative(&draft, [1u32, 2], &SpeculativeConfig::new(4)).unwrap();
    assert_eq!(out.stats.accepted, out.stats.drafted);
    assert_eq!(out.stats.resampled, 0);
    // 41 tokens in rounds of 4 drafts + 1 bonus.
    assert_eq!(out.stats.rounds, 9);
    assert_eq!(out.generation.ids.len(), 41);
}

#[test]
fn speculative_parameter_errors() {
    let mut g = Generator::builder(FakeModel::new(50)).max_new_tokens(4).build().unwrap();
    let small = FakeModel::new(49);
    match g.speculative(&small, [1u32], &SpeculativeConfig::new(2)) {
        Err(GenerateError::InvalidParameter { name, .. }) => assert_eq!(name, "draft vocab_size"),
        other => panic!("{other:?}"),
    }
    match g.speculative(&FakeModel::new(50), [1u32], &SpeculativeConfig::new(0)) {
        Err(GenerateError::InvalidParameter { name, .. }) => assert_eq!(name, "draft_tokens"),
        other => panic!("{other:?}"),
    }
    let mut mirostat = Generator::builder(FakeModel::new(50))
        .chain(Chain::new(perpetua_sampling::samplers::MirostatV2::new(3.0, 0.1).unwrap()))
        .build()
        .unwrap();
    match mirostat.speculative(&FakeModel::new(50), [1u32], &SpeculativeConfig::new(2)) {
        Err(GenerateError::InvalidParameter { name, .. }) => assert_eq!(name, "sampler"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- forward_all

#[test]
fn default_forward_all_equals_one_by_one() {
    let model = FakeModel::new(30).with_seed(3);
    let mut a = model.new_cache().unwrap();
    let mut b = model.new_cache().unwrap();
    let mut all = Vec::new();
    let mut row = Vec::new();
    model.forward(&[1, 2], &mut a, &mut row).unwrap();
    model.forward(&[1, 2], &mut b, &mut row).unwrap();
    model.forward_all(&[5, 6, 7], &mut a, &mut all).unwrap();
    assert_eq!(all.len(), 3 * 30);
    for (i, t) in [5u32, 6, 7].into_iter().enumerate() {
        model.forward(&[t], &mut b, &mut row).unwrap();
        assert_eq!(&all[i * 30..(i + 1) * 30], &row[..]);
    }
    assert_eq!(a.seq_len(), 5);
}

#[test]
fn default_forward_all_error_restores_the_cache() {
    let model = FakeModel::new(30).fail_at_call(2);
    let mut cache = model.new_cache().unwrap();
    let mut out = Vec::new();
    model.forward(&[1], &mut cache, &mut out).unwrap();
    let err = model.forward_all(&[2, 3, 4], &mut cache, &mut out);
    assert!(err.is_err());
    assert_eq!(cache.seq_len(), 1, "a failed forward_all leaves the cache as it was");
}

// ---------------------------------------------------------------- chain-of-thought

#[test]
fn cot_paths_follow_the_definition() {
    let make = || FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_seed(21).with_eos(ByteTokenizer::EOS);
    let reference = make();
    let mut g =
        Generator::builder(make()).tokenizer(ByteTokenizer::new()).max_new_tokens(10).build().unwrap();
    let out = g.cot_decode("Q: why? A:", &CotConfig::new(6)).unwrap();
    assert_eq!(out.paths.len(), 6);

    // Branch tokens: the 6 most likely first tokens (EOS excluded), in rank order.
    let prompt_ids: Vec<u32> = {
        let mut ids = vec![ByteTokenizer::BOS];
        ids.extend("Q: why? A:".bytes().map(u32::from));
        ids
    };
    let first = probs(&reference, &prompt_ids, 1.0);
    let mut order: Vec<u32> = (0..first.len() as u32).filter(|&t| t != ByteTokenizer::EOS).collect();
    order.sort_by(|&a, &b| first[b as usize].total_cmp(&first[a as usize]).then(a.cmp(&b)));
    let mut by_branch: Vec<_> = out.paths.iter().collect();
    by_branch.sort_by_key(|p| p.branch);
    for (rank, path) in by_branch.iter().enumerate() {
        assert_eq!(path.generation.ids[0], order[rank]);
        // Greedy continuation, margins = p(top1) - p(top2) at each position.
        let mut context = prompt_ids.clone();
        let mut margins = Vec::new();
        for &t in &path.generation.ids {
            let p = probs(&reference, &context, 1.0);
            let mut sorted = p.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            margins.push(sorted[0] - sorted[1]);
            if context.len() > prompt_ids.len() {
                let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a))).unwrap();
                assert_eq!(t as usize, best, "greedy continuation");
            }
            context.push(t);
        }
        for (m, e) in path.margins.iter().zip(&margins) {
            assert!((f64::from(*m) - e).abs() < 1e-5);
        }
        // Default answer: every token after the branching one.
        let answer = &margins[1..];
        let delta = answer.iter().sum::<f64>() / answer.len() as f64;
        assert!((f64::from(path.confidence.unwrap()) - delta).abs() < 1e-5);
    }
    for w in out.paths.windows(2) {
        assert!(w[0].confidence >= w[1].confidence);
    }
}

#[test]
fn cot_answer_span_selects_the_tokens() {
    let mut g = Generator::builder(FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_seed(2))
        .tokenizer(ByteTokenizer::new())
        .max_new_tokens(8)
        .build()
        .unwrap();
    // Answer: tokens 2..4 of each path.
    let config = CotConfig::new(4).answer_span(|ids, _| (ids.len() >= 4).then_some(2..4));
    let out = g.cot_decode("x", &config).unwrap();
    for p in &out.paths {
        let expected = (p.margins[2] + p.margins[3]) / 2.0;
        assert!((p.confidence.unwrap() - expected).abs() < 1e-6);
    }
    // An answer span past the end is clamped; an empty one gives no confidence.
    let config = CotConfig::new(2).answer_span(|_, _| Some(50..60));
    let out = g.cot_decode("x", &config).unwrap();
    for p in &out.paths {
        let n = p.generation.ids.len();
        assert!(p.confidence.is_none() && p.answer == Some(n..n), "{p:?}");
    }
    assert!(matches!(
        g.cot_decode("x", &CotConfig::new(0)),
        Err(GenerateError::InvalidParameter { name: "branches", .. })
    ));
}

#[test]
fn processors_compose_with_beam_search() {
    // No-repeat-bigram: no hypothesis repeats a bigram of prompt + output.
    let model = FakeModel::new(6).with_seed(8).with_order(1).with_eos(5).with_eos_bias(-5.0);
    let mut g = Generator::builder(model)
        .chain(Chain::new(Greedy).with(NoRepeatNGram::new(2).unwrap()))
        .eos_ids([5])
        .max_new_tokens(12)
        .build()
        .unwrap();
    let out = g.beam_search([0u32, 1], &BeamConfig::new(3).num_return_sequences(3)).unwrap();
    for h in &out.hypotheses {
        let mut all = vec![0u32, 1];
        all.extend(&h.ids);
        let mut seen = std::collections::HashSet::new();
        for w in all.windows(2) {
            assert!(seen.insert((w[0], w[1])), "repeated bigram in {all:?}");
        }
    }
}
