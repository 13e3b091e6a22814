//! A sampling config (JSON through serde, as `generation_config.json` is read) applied
//! to arbitrary logits for a few steps. Invariants: no panic; a config either fails
//! validation with a typed error or builds a chain; a chain either errors or returns an
//! id that indexes the logits and never names a NaN or masked (`-inf`) logit; under the
//! default policy any NaN / `+inf` logit is an error.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use perpetua_sampling::{NonFinitePolicy, SamplingConfig, SamplingContext};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde_json::{Map, Value, json};

/// Every key `SamplingConfig` reads, with the JSON kind it expects.
const KEYS: &[(&str, Kind)] = &[
    ("do_sample", Kind::Bool),
    ("temperature", Kind::Float),
    ("top_k", Kind::Int),
    ("top_p", Kind::Float),
    ("min_p", Kind::Float),
    ("typical_p", Kind::Float),
    ("epsilon_cutoff", Kind::Float),
    ("eta_cutoff", Kind::Float),
    ("top_n_sigma", Kind::Float),
    ("xtc_probability", Kind::Float),
    ("xtc_threshold", Kind::Float),
    ("xtc_seed", Kind::Int),
    ("dynatemp_range", Kind::Float),
    ("dynatemp_exponent", Kind::Float),
    ("mirostat", Kind::Int),
    ("mirostat_tau", Kind::Float),
    ("mirostat_eta", Kind::Float),
    ("repetition_penalty", Kind::Float),
    ("repetition_penalty_last_n", Kind::Int),
    ("repetition_penalty_include_prompt", Kind::Bool),
    ("frequency_penalty", Kind::Float),
    ("presence_penalty", Kind::Float),
    ("frequency_presence_last_n", Kind::Int),
    ("frequency_presence_include_prompt", Kind::Bool),
    ("dry_multiplier", Kind::Float),
    ("dry_base", Kind::Float),
    ("dry_allowed_length", Kind::Int),
    ("dry_penalty_last_n", Kind::Int),
    ("dry_sequence_breakers", Kind::IdLists),
    ("no_repeat_ngram_size", Kind::Int),
    ("min_new_tokens", Kind::Int),
    ("bad_words_ids", Kind::IdLists),
    ("suppress_tokens", Kind::Ids),
    ("allowed_token_ids", Kind::Ids),
    ("suppress_eos", Kind::Bool),
    ("remove_invalid_values", Kind::Bool),
    ("logit_bias", Kind::Bias),
    ("eos_token_id", Kind::Ids),
];

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Float,
    Int,
    Ids,
    IdLists,
    Bias,
}

/// A token id: usually inside the small vocabulary, sometimes anything (a caller's id
/// far outside the vocabulary must not size an allocation).
fn small_id(u: &mut Unstructured<'_>) -> arbitrary::Result<u32> {
    if u.ratio(1, 16)? {
        return u.arbitrary();
    }
    Ok(u32::from(u.arbitrary::<u8>()?) % 40)
}

fn float(u: &mut Unstructured<'_>) -> arbitrary::Result<f64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => f64::from(u.arbitrary::<f32>()?),
        1 => f64::from(u.int_in_range(0..=100u8)?) / 50.0,
        2 => f64::from(u.int_in_range(0..=20u8)?) / 10.0 - 1.0,
        _ => [0.0, 1.0, -1.0, 1e-30, 1e30, f64::MIN_POSITIVE][usize::from(u.int_in_range(0..=5u8)?)],
    })
}

fn value(u: &mut Unstructured<'_>, kind: Kind) -> arbitrary::Result<Value> {
    // One value in eight has a random kind: serde must reject it with a typed error.
    let kind = if u.ratio(1, 8)? {
        [Kind::Bool, Kind::Float, Kind::Int, Kind::Ids, Kind::IdLists, Kind::Bias][usize::from(u.int_in_range(0..=5u8)?)]
    } else {
        kind
    };
    Ok(match kind {
        Kind::Bool => json!(u.arbitrary::<bool>()?),
        Kind::Float => json!(float(u)?),
        Kind::Int => {
            if u.ratio(1, 4)? {
                json!(u.arbitrary::<i64>()?)
            } else {
                json!(u.int_in_range(0..=64u32)?)
            }
        }
        Kind::Ids => {
            let n = u.int_in_range(0..=6u8)?;
            Value::Array((0..n).map(|_| small_id(u).map(|i| json!(i))).collect::<Result<_, _>>()?)
        }
        Kind::IdLists => {
            let n = u.int_in_range(0..=3u8)?;
            let mut lists = Vec::new();
            for _ in 0..n {
                let m = u.int_in_range(0..=3u8)?;
                lists.push(Value::Array((0..m).map(|_| small_id(u).map(|i| json!(i))).collect::<Result<_, _>>()?));
            }
            Value::Array(lists)
        }
        Kind::Bias => {
            let n = u.int_in_range(0..=3u8)?;
            let mut map = Map::new();
            for _ in 0..n {
                let key = if u.ratio(1, 6)? { String::arbitrary(u)? } else { small_id(u)?.to_string() };
                map.insert(key, json!(float(u)?));
            }
            Value::Object(map)
        }
    })
}

fn logit(u: &mut Unstructured<'_>) -> arbitrary::Result<f32> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        3 => u.arbitrary::<f32>()?,
        _ => f32::from(u.arbitrary::<i8>()?) / 8.0,
    })
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    // The config: either raw text (the JSON parser on junk) or a structured object.
    let text = if u.ratio(1, 16)? {
        String::arbitrary(u)?
    } else {
        let mut map = Map::new();
        for &(key, kind) in KEYS {
            if u.ratio(1, 4)? {
                map.insert(key.to_owned(), value(u, kind)?);
            }
        }
        Value::Object(map).to_string()
    };
    let Ok(config) = SamplingConfig::from_json_str(&text) else { return Ok(()) };
    let Ok(mut chain) = config.chain() else { return Ok(()) };

    let vocab = usize::from(u.int_in_range(1..=40u8)?);
    let mut logits = Vec::with_capacity(vocab);
    for _ in 0..vocab {
        logits.push(logit(u)?);
    }
    let mut history: Vec<u32> = Vec::new();
    for _ in 0..u.int_in_range(0..=8u8)? {
        history.push(small_id(u)?);
    }
    let prompt_len = usize::from(u.int_in_range(0..=8u8)?).min(history.len());
    let eos = [small_id(u)?];
    let mut rng = ChaCha8Rng::seed_from_u64(u.arbitrary()?);
    for _ in 0..u.int_in_range(1..=4u8)? {
        let ctx = SamplingContext::new(&history, prompt_len).with_eos_ids(&eos);
        let result = chain.sample(&logits, &ctx, &mut rng);
        let bad = logits.iter().any(|l| l.is_nan() || *l == f32::INFINITY);
        if bad && chain.non_finite_policy() == NonFinitePolicy::Error {
            assert!(result.is_err(), "a non-finite logit was sampled through: {result:?}");
        }
        let Ok(id) = result else { return Ok(()) };
        let raw = logits.get(id as usize).copied();
        assert!(raw.is_some(), "id {id} outside a vocabulary of {vocab}");
        let raw = raw.unwrap_or_default();
        assert!(!raw.is_nan(), "picked NaN token {id}");
        assert!(raw != f32::NEG_INFINITY, "picked masked token {id}");
        chain.accept(id);
        history.push(id);
        // Perturb the logits a little between steps, as a model would.
        for l in logits.iter_mut().take(usize::from(u.int_in_range(0..=4u8)?)) {
            *l = logit(u)?;
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
