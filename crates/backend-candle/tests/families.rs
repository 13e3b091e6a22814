//! Model families beyond the default model, against Hugging Face transformers: tiny
//! random-weight checkpoints (2 layers, hidden 64, each family's features switched on)
//! and the logits transformers computed for them, made by
//! `scripts/model-families/make_tiny.py` and committed under `tests/data/families/`.
//!
//! Per family: a 12-token prefill and 8 decode steps within 1e-4 of HF (f32), in both
//! attention kernels; all 20 positions of one batched pass likewise; the kv-cache
//! conformance kit; a perpetual run with back steps whose cache stays in step; on the
//! Q8_0 files, a batch of sequences with other caches beside each = its solo run. Then the
//! refusals: a checkpoint whose `config.json` does not describe it, and every setting
//! not implemented, is a typed error, never a silently different model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{decode_diffs, family_dir as dir, family_reference as reference};

use perpetua_candle::{
    Architecture, Attention, CandleBackendError, KvDtype, Llama, LoadOptions, RopeScaling,
};
use perpetua_generator::testing::{ByteTokenizer, ModelHarness};
use perpetua_generator::{Event, Generator, LanguageModel};
use perpetua_kv_cache::testing::{ConformanceConfig, run_all};
use perpetua_sampling::processors::LogitBias;
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Chain, processors::TopK};

const FAMILIES: [&str; 8] =
    ["llama3", "llama-linear", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"];

fn exact() -> LoadOptions {
    LoadOptions::exact()
}

/// The default fused kernel with an f32 cache (the f16 cache rounds keys: ~1e-3).
fn fused() -> LoadOptions {
    LoadOptions { attention: Attention::Fused, ..LoadOptions::exact() }
}

/// All heads and positions in one pair of matmuls (the GPU path), f32 cache.
fn batched() -> LoadOptions {
    LoadOptions { attention: Attention::Batched, ..LoadOptions::exact() }
}

const TOLERANCE: f32 = 1e-4;

#[test]
fn every_family_matches_transformers_in_prefill_and_decode() {
    for family in FAMILIES {
        let r = reference(family);
        assert_eq!(r.logits.len(), 9, "{family}: a prefill and 8 decode steps");
        for (kernel, options) in [("reference", exact()), ("fused", fused()), ("batched", batched())] {
            let model = Llama::load(dir(family), &options).unwrap();
            let diffs = decode_diffs(&model, &r);
            let worst = diffs.iter().copied().fold(0.0, f32::max);
            println!(
                "{family} ({kernel} attention): max |Δlogit| per step {:?}",
                diffs.iter().map(|d| format!("{d:.1e}")).collect::<Vec<_>>()
            );
            assert!(worst <= TOLERANCE, "{family} ({kernel}): {diffs:?}");
        }
    }
}

/// The families llama.cpp's converter writes as GGUF (`make_gguf.py`; Mistral it writes
/// as `llama` without the window, so it has no GGUF here).
const GGUF_FAMILIES: [&str; 7] = ["llama3", "llama-linear", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"];

/// llama.cpp's F32 conversion computes transformers' logits: the GGUF layout (q/k rows
/// permuted for llama, NeoX RoPE for Qwen, `rope_freqs` factors for Llama 3.1, the
/// linear factor under its GGUF key, biases and q/k norms as llama.cpp names them, Phi-3's
/// fused `attn_qkv` / `ffn_up` and its `attention.sliding_window`).
#[test]
fn every_converted_gguf_matches_transformers() {
    for family in GGUF_FAMILIES {
        let r = reference(family);
        for (kernel, options) in [("reference", exact()), ("fused", fused()), ("batched", batched())] {
            let model = Llama::load(dir(family).join("model-f32.gguf"), &options).unwrap();
            let diffs = decode_diffs(&model, &r);
            let worst = diffs.iter().copied().fold(0.0, f32::max);
            println!("{family} GGUF F32 ({kernel} attention): max |Δlogit| {worst:.1e}");
            assert!(worst <= TOLERANCE, "{family} ({kernel}): {diffs:?}");
        }
    }
}

/// The Q8_0 conversion, as users run it (default options: fused attention, f16 cache),
/// against transformers' f32 logits over the prefill and 8 decode steps: within the
/// quantization's error, measured as 6 % of the logits' spread. Gemma's soft-capped
/// logits (Gemma 2) and six chaotic random layers (Gemma 3) make that measure
/// meaningless for them; their quantized files are held to llama.cpp instead (above).
#[test]
fn every_q8_0_gguf_stays_within_quantization_error_of_transformers() {
    for family in GGUF_FAMILIES.into_iter().filter(|f| !f.starts_with("gemma")) {
        let r = reference(family);
        let model = Llama::load(dir(family).join("model-q8_0.gguf"), &LoadOptions::default()).unwrap();
        let worst = decode_diffs(&model, &r).into_iter().fold(0.0, f32::max);
        let spread = r.logits.iter().flatten().fold(0.0f32, |m, &x| m.max(x.abs()));
        println!("{family} GGUF Q8_0: max |Δlogit| {worst:.3} (logits up to {spread:.1})");
        assert!(worst <= 0.06 * spread, "{family}: {worst} against logits up to {spread}");
    }
}

/// llama.cpp's logits for the converted files (`llama_cpp.json`, written by
/// `scripts/model-families/make_llama_cpp_reference.py`): every position of the 20
/// tokens in one batch; F32 with an f32 cache, Q8_0 with llama.cpp's default f16 cache
/// and again with an f32 cache.
#[derive(serde::Deserialize)]
struct LlamaCppReference {
    tokens: Vec<u32>,
    f32: Vec<Vec<f32>>,
    q8_0: Vec<Vec<f32>>,
    q8_0_f32_cache: Vec<Vec<f32>>,
}

fn llama_cpp_reference(family: &str) -> LlamaCppReference {
    let text = std::fs::read_to_string(dir(family).join("llama_cpp.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// All positions of `tokens` in one pass.
fn all_positions(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache().unwrap();
    let mut out = Vec::new();
    model.forward_all(tokens, &mut cache, &mut out).unwrap();
    out
}

/// The runtime reference for quantized files: llama.cpp on the same GGUF.
///
/// - F32 (exact options): within 1e-4 of llama.cpp. Gemma's MLP is the exception:
///   llama.cpp evaluates GELU through a table indexed by the f16-rounded input, which
///   puts its own logits 2.6e-3 (Gemma 2) and 2.3e-2 (Gemma 3, six layers) off
///   transformers'; ours stay within 1e-4 of transformers (tests above), so there the
///   bound is llama.cpp's distance from transformers plus 1e-4.
/// - Q8_0 as users run it (default options: fused attention, f16 cache, like
///   llama.cpp's default): these tiny random models amplify rounding — llama.cpp's
///   own logits move by up to 2.3 when only its cache turns from f16 to f32 — so ours
///   must be no further from llama.cpp than twice that spread (two runtimes, each with
///   its own roundings), with a floor of 0.05 for families where the cache barely
///   matters.
///
/// Phi-3 is left out: llama.cpp's loader disables Phi-3's sliding window ("Phi SWA is
/// currently disabled"), so its logits are ~5.8 off transformers' even in F32 (ours
/// match transformers within 1e-4, above) and it is not a reference there (asserted,
/// so the exclusion stays justified).
#[test]
fn every_gguf_matches_llama_cpp_on_the_same_file() {
    // Mistral's conversion too: llama.cpp writes and runs it as `llama` without its
    // window, and so do we on that file (the window-declaring copy is tested below).
    for family in GGUF_FAMILIES.into_iter().chain(["mistral"]) {
        let lcp = llama_cpp_reference(family);
        let r = reference(family);
        assert_eq!(lcp.tokens, r.tokens, "{family}");
        let hf = r.full.concat();
        if family == "phi3" {
            let off = common::max_abs_diff(&lcp.f32.concat(), &hf);
            assert!(off > 1.0, "llama.cpp now agrees with transformers on phi3 ({off}): test it");
            continue;
        }
        let ours =
            all_positions(&Llama::load(dir(family).join("model-f32.gguf"), &exact()).unwrap(), &r.tokens);
        let diff = common::max_abs_diff(&ours, &lcp.f32.concat());
        let gelu_table =
            if family.starts_with("gemma") { common::max_abs_diff(&lcp.f32.concat(), &hf) } else { 0.0 };
        println!("{family} F32: ours vs llama.cpp {diff:.2e} (llama.cpp vs transformers {gelu_table:.2e})");
        assert!(diff <= TOLERANCE + gelu_table, "{family} F32: {diff}");

        let q8 = Llama::load(dir(family).join("model-q8_0.gguf"), &LoadOptions::default()).unwrap();
        let ours = all_positions(&q8, &r.tokens);
        let diff = common::max_abs_diff(&ours, &lcp.q8_0.concat());
        let cache_rounding = common::max_abs_diff(&lcp.q8_0.concat(), &lcp.q8_0_f32_cache.concat());
        println!(
            "{family} Q8_0: ours vs llama.cpp {diff:.2e}; llama.cpp f16 vs f32 cache {cache_rounding:.2e}; \
             vs transformers: ours {:.2e}, llama.cpp {:.2e}",
            common::max_abs_diff(&ours, &hf),
            common::max_abs_diff(&lcp.q8_0.concat(), &hf)
        );
        assert!(
            diff <= (2.0 * cache_rounding).max(0.05),
            "{family} Q8_0: {diff} (llama.cpp's own spread {cache_rounding})"
        );
    }
}

/// Our Q8_0 path against a second implementation on the same quantized file:
/// candle-transformers' `quantized_qwen2` / `quantized_qwen3` (same quantized matmul
/// kernels), over the prefill and 8 decode steps. What is left of the Q8_0 error above
/// is then the quantization itself, not our reading of the file.
/// A second implementation's forward: tokens at a position → last-position logits.
type Forward = dyn FnMut(&[u32], usize) -> Vec<f32>;

#[test]
fn q8_0_qwen_ggufs_match_candle_transformers() {
    use candle_core::{Device, Tensor};
    for family in ["qwen2", "qwen3"] {
        let r = reference(family);
        let path = dir(family).join("model-q8_0.gguf");
        let mut file = std::fs::File::open(&path).unwrap();
        let mut content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        // quantized_qwen3 computes in f16 unless the file says f32 (`general.dtype` 0).
        content.metadata.insert("general.dtype".into(), candle_core::quantized::gguf_file::Value::U32(0));
        let mut theirs: Box<Forward> = match family {
            "qwen2" => {
                let mut m = candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(
                    content,
                    &mut file,
                    &Device::Cpu,
                )
                .unwrap();
                Box::new(move |t: &[u32], pos: usize| {
                    let x = Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
                    m.forward(&x, pos).unwrap().flatten_all().unwrap().to_vec1().unwrap()
                })
            }
            _ => {
                let mut m = candle_transformers::models::quantized_qwen3::ModelWeights::from_gguf(
                    content,
                    &mut file,
                    &Device::Cpu,
                )
                .unwrap();
                Box::new(move |t: &[u32], pos: usize| {
                    let x = Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
                    m.forward(&x, pos).unwrap().flatten_all().unwrap().to_vec1().unwrap()
                })
            }
        };
        let ours = Llama::load(&path, &exact()).unwrap();
        let mut cache = ours.new_cache().unwrap();
        let mut out = Vec::new();
        ours.forward(&r.tokens[..r.prefill], &mut cache, &mut out).unwrap();
        let mut worst = common::max_abs_diff(&out, &theirs(&r.tokens[..r.prefill], 0));
        for pos in r.prefill..r.prefill + 8 {
            ours.forward(&r.tokens[pos..=pos], &mut cache, &mut out).unwrap();
            worst = worst.max(common::max_abs_diff(&out, &theirs(&r.tokens[pos..=pos], pos)));
        }
        println!("{family} GGUF Q8_0: ours vs candle-transformers max |Δlogit| {worst:.1e}");
        assert!(worst <= 1e-3, "{family}: {worst}");
    }
}

/// Every position of one pass against transformers, in both non-fused kernels: all 20
/// tokens from position 0, and 13 tokens fed after 7 positions — where a sliding window
/// hides the oldest keys from some of the chunk's queries but not others (Mistral's and
/// Gemma's windows are 5, Phi-3's 6).
#[test]
fn every_family_matches_transformers_on_all_positions_of_one_pass() {
    for family in FAMILIES {
        let r = reference(family);
        for (kernel, options) in [("reference", exact()), ("batched", batched())] {
            let model = Llama::load(dir(family), &options).unwrap();
            for before in [0, 7] {
                let mut cache = model.new_cache().unwrap();
                let mut out = Vec::new();
                if before > 0 {
                    model.forward(&r.tokens[..before], &mut cache, &mut out).unwrap();
                }
                model.forward_all(&r.tokens[before..], &mut cache, &mut out).unwrap();
                let diff = common::max_abs_diff(&out, &r.full[before..].concat());
                println!(
                    "{family} ({kernel} attention): forward_all over positions {before}..{}, max |Δlogit| {diff:.2e}",
                    r.tokens.len()
                );
                assert!(diff <= TOLERANCE, "{family} ({kernel}, from {before}): {diff}");
            }
        }
    }
}

#[test]
fn configs_are_read_as_their_family() {
    let arch = |f: &str| Llama::load(dir(f), &exact()).unwrap().config().clone();
    let c = arch("llama3");
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 64
        }
    );
    assert_eq!(arch("llama-linear").rope_scaling, RopeScaling::Linear { factor: 4.0 });
    let c = arch("mistral");
    assert_eq!((c.architecture, c.sliding_window), (Architecture::Mistral, Some(5)));
    let c = arch("qwen2");
    assert_eq!((c.architecture, c.attention_bias, c.qk_norm), (Architecture::Qwen2, true, false));
    let c = arch("qwen3");
    assert_eq!((c.architecture, c.qk_norm, c.head_dim), (Architecture::Qwen3, true, 32));
    let c = arch("phi3");
    assert_eq!((c.architecture, c.sliding_window), (Architecture::Phi3, Some(6)));
    let gguf = Llama::load(dir("phi3").join("model-f32.gguf"), &exact()).unwrap();
    assert_eq!(gguf.config().sliding_window, Some(6), "the converter's window key");
}

/// A copy of `family`'s checkpoint whose `config.json` is edited by `edit`.
fn edited(family: &str, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let to = std::env::temp_dir().join(format!("perpetua-families-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(dir(family).join("model.safetensors"), to.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir(family).join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(to.join("config.json"), config.to_string()).unwrap();
    to
}

/// Checkpoints on the Hub mostly predate transformers 5's `rope_parameters`: the same
/// settings as `rope_theta` + `rope_scaling` load to the same model.
#[test]
fn classic_rope_keys_load_the_same_model() {
    for family in ["llama3", "llama-linear"] {
        let path = edited(family, &format!("classic-{family}"), |c| {
            let mut params = c["rope_parameters"].take();
            c["rope_theta"] = params["rope_theta"].take();
            params.as_object_mut().unwrap().remove("rope_theta");
            c["rope_scaling"] = params;
            c.as_object_mut().unwrap().remove("rope_parameters");
        });
        let classic = Llama::load(&path, &exact()).unwrap();
        let current = Llama::load(dir(family), &exact()).unwrap();
        assert_eq!(classic.config(), current.config(), "{family}");
        assert!(decode_diffs(&classic, &reference(family)).iter().all(|&d| d <= TOLERANCE));
        let _ = std::fs::remove_dir_all(path);
    }
}

/// The reference data exercises each feature: without the window or the RoPE
/// scaling, the same weights miss HF's logits by far more than the tolerance (so the
/// parity tests above could not pass with the feature ignored).
#[test]
fn the_reference_data_exercises_each_feature() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 10] = [
        ("mistral", |c| c["sliding_window"] = serde_json::Value::Null),
        ("gemma2", |c| c["attn_logit_softcapping"] = serde_json::Value::Null),
        ("gemma2", |c| c["final_logit_softcapping"] = serde_json::Value::Null),
        ("gemma2", |c| c["query_pre_attn_scalar"] = 64.into()),
        ("gemma2", |c| c["layer_types"] = serde_json::json!(["full_attention", "full_attention"])),
        ("gemma3", |c| c["layer_types"][0] = "full_attention".into()),
        ("gemma3", |c| c["rope_parameters"]["sliding_attention"]["rope_theta"] = 1e6.into()),
        ("phi3", |c| c["sliding_window"] = serde_json::Value::Null),
        ("llama3", |c| {
            c["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 10000.0})
        }),
        ("llama-linear", |c| {
            c["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 10000.0})
        }),
    ];
    for (family, edit) in cases {
        let path = edited(family, &format!("without-{family}"), edit);
        let model = Llama::load(&path, &exact()).unwrap();
        let worst = decode_diffs(&model, &reference(family)).into_iter().fold(0.0, f32::max);
        println!("{family} without its feature: max |Δlogit| {worst:.2}");
        assert!(worst > 100.0 * TOLERANCE, "{family}: {worst}");
        let _ = std::fs::remove_dir_all(path);
    }
}

#[test]
fn a_checkpoint_under_another_config_is_refused() {
    // Qwen2's biases and Qwen3's q/k norms are tensors a llama config does not use.
    for (family, tensor) in [("qwen2", "self_attn.k_proj.bias"), ("qwen3", "self_attn.k_norm.weight")] {
        let path = edited(family, &format!("as-llama-{family}"), |c| {
            c["model_type"] = "llama".into();
            c.as_object_mut().unwrap().remove("head_dim");
        });
        let path = if family == "qwen3" {
            // Keep the shapes loadable so the check that fires is the unused tensor.
            let _ = std::fs::remove_dir_all(&path);
            edited(family, "as-llama-qwen3", |c| c["model_type"] = "llama".into())
        } else {
            path
        };
        match Llama::load(&path, &exact()) {
            Err(CandleBackendError::UnexpectedTensor { name, architecture, more }) => {
                assert!(name.ends_with(tensor), "{family}: {name}");
                assert_eq!(architecture, Architecture::Llama);
                assert!(more > 0, "{family}: every layer's tensors are counted");
            }
            other => panic!("{family} as llama: {other:?}"),
        }
        let _ = std::fs::remove_dir_all(path);
    }
}

#[test]
fn settings_that_are_not_implemented_are_refused_with_the_key() {
    use serde_json::json;
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 13] = [
        // The multimodal Gemma 3 wrapper (its text model under `text_config`).
        ("qwen2", |c| c["model_type"] = "gemma3".into(), "gemma3"),
        ("gemma2", |c| c["hidden_activation"] = "gelu".into(), "hidden_activation"),
        ("gemma2", |c| c["layer_types"][1] = "chunked_attention".into(), "layer_types"),
        ("gemma3", |c| c["use_bidirectional_attention"] = true.into(), "use_bidirectional_attention"),
        (
            "gemma3",
            |c| {
                c["rope_parameters"]["sliding_attention"] =
                    json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
            },
            "rope_parameters.sliding_attention.rope_type",
        ),
        ("llama3", |c| c["attn_logit_softcapping"] = json!(30.0), "attn_logit_softcapping"),
        ("llama3", |c| c["rope_parameters"]["rope_type"] = "yarn".into(), "rope_parameters.rope_type"),
        ("llama3", |c| c["rope_parameters"]["rope_type"] = "longrope".into(), "rope_parameters.rope_type"),
        (
            "llama3",
            |c| c["rope_parameters"]["high_freq_factor"] = json!(0.5),
            "rope_scaling.high_freq_factor",
        ),
        ("qwen2", |c| c["use_sliding_window"] = true.into(), "use_sliding_window"),
        ("qwen2", |c| c["layer_types"] = json!(["sliding_attention", "full_attention"]), "layer_types"),
        ("llama3", |c| c["hidden_act"] = "gelu_pytorch_tanh".into(), "hidden_act"),
        ("llama3", |c| c["attention_bias"] = true.into(), "attention_bias"),
    ];
    for (i, (family, edit, key)) in cases.into_iter().enumerate() {
        let path = edited(family, &format!("refuse-{i}"), edit);
        let err = Llama::load(&path, &exact()).unwrap_err();
        let named = match &err {
            CandleBackendError::UnsupportedArchitecture(arch) => arch.as_str() == key,
            CandleBackendError::Metadata { key: k, .. } => k == key,
            CandleBackendError::InvalidParameter { name, .. } => *name == key,
            _ => false,
        };
        assert!(named, "case {i} ({key}): {err}");
        println!("refused: {err}");
        let _ = std::fs::remove_dir_all(path);
    }
}

/// The dense loader (the burn backend's) reads every family: each optional part is
/// there exactly when the configuration asks for it (Qwen2's biases, Qwen3's and Gemma
/// 3's q/k norms, Gemma's post norms; Phi-3's fused matrices split), and `validate`
/// refuses weights whose parts disagree with their configuration.
#[test]
fn the_dense_loader_reads_every_family_with_its_parts() {
    use perpetua_candle::dense::DenseWeights;
    for family in FAMILIES {
        let dense = DenseWeights::load(dir(family)).unwrap();
        let (c, l) = (&dense.config, &dense.layers[0]);
        assert_eq!(l.qkv_bias.is_some(), c.attention_bias, "{family}");
        assert_eq!(l.qk_norm.is_some(), c.qk_norm, "{family}");
        assert_eq!(l.post_norms.is_some(), c.sandwich_norms, "{family}");
        assert_eq!((l.wq.rows, l.wk.rows), (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim), "{family}");
        dense.validate().unwrap();
    }
    let mut qwen2 = DenseWeights::load(dir("qwen2")).unwrap();
    qwen2.layers[1].qkv_bias = None;
    match qwen2.validate() {
        Err(CandleBackendError::InvalidParameter { value, .. }) => {
            assert!(value.contains("qkv_bias"), "{value}")
        }
        other => panic!("{other:?}"),
    }
    // RoPE scaling lives in the shared tables: the dense loader takes it.
    let dense = DenseWeights::load(dir("llama3")).unwrap();
    assert!(matches!(dense.config.rope_scaling, RopeScaling::Llama3 { .. }));
}

#[test]
fn every_family_passes_the_cache_conformance_kit() {
    for family in FAMILIES {
        // Tolerances: not 0 as on the quantized default model. f32 weights multiply
        // through gemm, whose blocking (so the summation order) depends on the row count,
        // so a prefill row and a decode of the same position differ by rounding; an f16
        // cache can turn such a difference into one f16 step of a key (2⁻¹¹ relative).
        let kernels = [
            ("reference f32", exact(), 2e-5),
            ("fused f16", LoadOptions { kv_dtype: KvDtype::F16, ..fused() }, 5e-4),
        ];
        for (kernel, options, tolerance) in kernels {
            let model =
                Llama::load(dir(family), &LoadOptions { cache_capacity: Some(64), ..options }).unwrap();
            let tokens = reference(family).tokens;
            let config = ConformanceConfig { truncate_to: 9, tokens, tolerance, small_capacity: 24 };
            let report = run_all(&mut ModelHarness(model), &config).unwrap();
            println!(
                "{family} ({kernel}): conformance kit passed, max |Δlogit| {:.1e}",
                report.max_abs_diff()
            );
        }
        // The generic harness over the LanguageModel trait too.
        let model = Llama::load(dir(family), &LoadOptions { cache_capacity: Some(64), ..exact() }).unwrap();
        let config = ConformanceConfig {
            truncate_to: 9,
            tokens: reference(family).tokens,
            tolerance: 2e-5,
            small_capacity: 24,
        };
        run_all(&mut ModelHarness(model), &config).unwrap();
    }
}

/// A batch gives each sequence its solo logits bit for bit on every quantized family
/// (Q8_0 weights: row-invariant kernels; f32 weights go through gemm, whose rounding
/// depends on the row count): sequences of other lengths and cache capacities (so other
/// buffer strides) beside it, sliding windows and q/k norms included, and a mixed batch
/// whose caches have different element types (a cache made by a second load of the
/// file with a Q8 cache), which the fused kernel runs one sequence at a time.
#[test]
fn a_batch_gives_each_sequence_its_solo_logits_on_every_quantized_family() {
    use perpetua_candle::LlamaCache;
    use perpetua_generator::{BatchItem, KvCache};
    for family in GGUF_FAMILIES {
        let path = dir(family).join("model-q8_0.gguf");
        for kv_dtype in [KvDtype::F16, KvDtype::F32, KvDtype::Q8] {
            let model = Llama::load(&path, &LoadOptions { kv_dtype, ..LoadOptions::default() }).unwrap();
            let q8 =
                Llama::load(&path, &LoadOptions { kv_dtype: KvDtype::Q8, ..LoadOptions::default() }).unwrap();
            let vocab = model.vocab_size();
            let prompts: [Vec<u32>; 4] = [
                vec![5, 9, 200],
                (0..12).map(|t| 3 + t * 19 % 250).collect(),
                (0..20).map(|t| 7 + t * 11 % 240).collect(),
                vec![42],
            ];
            // Capacities 40, 64, 256 and a cache of the Q8 load (mixed element types
            // when this model's are not Q8).
            let fresh = |s: usize| -> LlamaCache {
                match s {
                    0 => model.new_cache_with_capacity(40).unwrap(),
                    1 => model.new_cache_with_capacity(64).unwrap(),
                    2 => model.new_cache().unwrap(),
                    _ => q8.new_cache().unwrap(),
                }
            };
            // Three caches of this model (one kernel call for all), then a fourth, of the
            // Q8 load, beside them (mixed element types unless this model's are Q8 too).
            for width in [3, 4] {
                let mut batch_caches: Vec<LlamaCache> = (0..width).map(fresh).collect();
                let mut solo_caches: Vec<LlamaCache> = (0..width).map(fresh).collect();
                let mut feed: Vec<Vec<u32>> = prompts[..width].to_vec();
                for step in 0..6 {
                    let mut items: Vec<BatchItem<'_, LlamaCache>> = batch_caches
                        .iter_mut()
                        .zip(&feed)
                        .map(|(cache, tokens)| BatchItem { tokens, cache })
                        .collect();
                    let mut together = Vec::new();
                    model.forward_batch(&mut items, &mut together).unwrap();
                    let mut next = Vec::new();
                    for (s, tokens) in feed.iter().enumerate() {
                        let mut alone = Vec::new();
                        model.forward(tokens, &mut solo_caches[s], &mut alone).unwrap();
                        let got = &together[s * vocab..(s + 1) * vocab];
                        let same = got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{family} ({kv_dtype:?} cache), step {step}, sequence {s}: batched logits differ from its solo run"
                        );
                        assert_eq!(
                            batch_caches[s].seq_len(),
                            solo_caches[s].seq_len(),
                            "{family}: cache lengths"
                        );
                        next.push(vec![common::argmax(&alone)]);
                    }
                    feed = next;
                }
            }
            println!(
                "{family} ({kv_dtype:?} cache): batches of 3, and of 4 with a Q8 cache beside, = each solo run"
            );
        }
    }
}

/// Method 4 with EOS made likely (a +4 bias): every EOS is answered by a back step that
/// truncates the cache; after each, the cache holds the sequence minus its pending token.
#[test]
fn a_perpetual_run_with_back_steps_keeps_the_cache_in_step_on_every_family() {
    for family in FAMILIES {
        let model = Llama::load(dir(family), &fused()).unwrap();
        let chain = Chain::new(Multinomial)
            .with(LogitBias::new(vec![(ByteTokenizer::EOS, 4.0)]).unwrap())
            .with(TopK::new(20).unwrap());
        let mut generator = Generator::builder(model)
            .tokenizer(ByteTokenizer::new())
            .chain(chain)
            .eos_strategy(perpetua_perpetual::Backstep::default())
            .max_new_tokens(120)
            .seed(3)
            .build()
            .unwrap();
        let mut stream = generator.stream("Once upon a time").unwrap();
        let mut backsteps = 0;
        while let Some(event) = stream.next() {
            if let Event::Backstep { .. } = event.unwrap() {
                backsteps += 1;
                assert_eq!(stream.cache_len() + 1, stream.sequence_len(), "{family}: cache out of step");
            }
        }
        let out = stream.into_output();
        assert_eq!(out.ids.len(), 120, "{family}");
        assert!(!out.ids.contains(&ByteTokenizer::EOS), "{family}");
        assert!(backsteps > 0, "{family}: no back step was exercised");
        println!("{family}: 120 tokens, {backsteps} back steps");
    }
}

/// `LlamaTokenizer::load` on a checkpoint directory reads `tokenizer.json` and
/// `tokenizer_config.json` as transformers does. Expected values printed by
/// transformers 5.25 for this directory: `encode("hé</s>")` = `[104, 195, 169, 257]`,
/// and the chat template below.
#[test]
fn a_checkpoint_directory_brings_its_tokenizer() {
    use perpetua_candle::LlamaTokenizer;
    use perpetua_generator::{ChatMessage, Tokenizer};
    let tok = LlamaTokenizer::load(dir("qwen2")).unwrap();
    assert_eq!(tok.encode_ids("hé</s>", true).unwrap(), [104, 195, 169, 257]);
    assert_eq!(tok.eos_ids(), [257]);
    assert_eq!(tok.decode_ids(&[104, 195, 169, 257], true).unwrap(), "hé");
    let chat = tok.render_chat(&[ChatMessage::user("hi")], true).unwrap().unwrap();
    assert_eq!(chat, "<s>user\nhi</s>\n<s>assistant\n");
}

/// A SentencePiece-style `tokenizer.json` (Llama 2, Mistral v0.1, TinyLlama, Gemma: `▁`
/// markers and byte fallback) in a checkpoint directory: a vocabulary trained by
/// `sentencepiece` with Llama's settings, converted by transformers' converter into Llama
/// 2's layout (`scripts/model-families/make_spm_tokenizer_json.py`), must tokenize the
/// 300-string corpus as HF `tokenizers` does (which equals `sentencepiece` on all 300),
/// decode back to the text (with the dummy prefix's space, as the GGUF path), and take
/// BOS from `tokenizer_config.json`.
#[test]
fn a_sentencepiece_style_tokenizer_json_matches_transformers() {
    use perpetua_candle::LlamaTokenizer;
    let spm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spm");
    let corpus: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spm.join("reference.json")).unwrap()).unwrap();
    let corpus: Vec<String> = serde_json::from_value(corpus["corpus"].clone()).unwrap();
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spm.join("hf/reference.json")).unwrap()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(hf["ids"].clone()).unwrap();
    let tok = LlamaTokenizer::load(spm.join("hf")).unwrap();
    let mut wrong = Vec::new();
    for (text, want) in corpus.iter().zip(&want) {
        let got = tok.encode_ids(text, false).unwrap();
        if &got != want {
            wrong.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        let expected = if text.is_empty() { String::new() } else { format!(" {text}") };
        assert_eq!(tok.decode_ids(&got, false).unwrap(), expected, "round trip of {text:?}");
    }
    println!(
        "SentencePiece tokenizer.json: {} of {} strings as transformers",
        corpus.len() - wrong.len(),
        corpus.len()
    );
    assert!(wrong.is_empty(), "{} differ, e.g. {}", wrong.len(), wrong[..wrong.len().min(3)].join("; "));
    // BOS `<s>` (id 1) from tokenizer_config.json's `add_bos_token`.
    assert_eq!(tok.encode_ids("hi", true).unwrap()[0], 1);
    assert_eq!(tok.decode_ids(&[1], true).unwrap(), "");
}

/// A `tokenizer.json` of another kind (WordPiece here) would be tokenized or decoded
/// wrongly: refused, naming what is supported.
#[test]
fn another_kind_of_tokenizer_json_is_refused() {
    use perpetua_candle::LlamaTokenizer;
    let to = std::env::temp_dir().join(format!("perpetua-families-{}-wordpiece", std::process::id()));
    std::fs::create_dir_all(&to).unwrap();
    let json = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
        "post_processor": null, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1, "##b": 2}}
    });
    std::fs::write(to.join("tokenizer.json"), json.to_string()).unwrap();
    match LlamaTokenizer::load(&to) {
        Err(CandleBackendError::Tokenizer(msg)) => assert!(msg.contains("SentencePiece-style"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(to);
}

/// What the chat templates of Llama 3.x and Qwen2.5 use beyond the basics renders:
/// `strftime_now` (transformers' global), `tojson`, `raise_exception`, `is defined`
/// tests, `trim`, namespaces and loop variables (a template written for this test in
/// their style; the families' own templates are not redistributed here).
#[test]
fn chat_templates_get_transformers_globals() {
    use perpetua_candle::LlamaTokenizer;
    use perpetua_generator::ChatMessage;
    let template = r#"{%- set ns = namespace(system="") -%}
{%- if strftime_now is defined %}{% set date = strftime_now("%d %b %Y") %}{% else %}{% set date = "none" %}{% endif -%}
{%- for m in messages %}{% if m.role == "system" %}{% set ns.system = m.content | trim %}{% endif %}{% endfor -%}
<s>system
Today: {{ date }}. {{ ns.system }} {{ {"k": [1, 2]} | tojson }}</s>
{% for m in messages if m.role != "system" -%}
{%- if m.role not in ["user", "assistant"] %}{{ raise_exception("bad role " ~ m.role) }}{% endif -%}
<s>{{ m.role }}
{{ m.content | trim }}</s>{% if not loop.last %}
{% endif %}
{%- endfor %}"#;
    let tok = LlamaTokenizer::load(dir("qwen2")).unwrap().with_chat_template(template);
    let chat = tok
        .render_chat(&[ChatMessage::system("  Be brief. "), ChatMessage::user(" hi ")], false)
        .unwrap()
        .unwrap();
    let date = chat.lines().nth(1).unwrap();
    // "Today: 03 Dec 2026. …": a real date, not the fallback.
    let parts: Vec<&str> = date.trim_start_matches("Today: ").split(' ').collect();
    assert!(parts[0].len() == 2 && parts[0].parse::<u32>().is_ok() && parts[2].starts_with("20"), "{chat}");
    assert!(chat.contains(r#"Be brief. {"k":[1,2]}"#), "{chat}");
    assert!(chat.ends_with("<s>user\nhi</s>"), "{chat}");
    let err = tok.render_chat(&[ChatMessage::new("tool", "x")], false).unwrap().unwrap_err();
    assert!(err.to_string().contains("bad role tool"), "{err}");
}

/// A file this test wrote, removed when dropped (and only then: a checkout may itself
/// live under the temporary directory).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A copy of `family`'s F32 GGUF with its metadata edited by `edit`.
fn edited_gguf(
    family: &str,
    name: &str,
    edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>),
) -> Scratch {
    use candle_core::quantized::gguf_file;
    let src = dir(family).join("model-f32.gguf");
    let mut file = std::fs::File::open(&src).unwrap();
    let mut content = gguf_file::Content::read(&mut file).unwrap();
    edit(&mut content.metadata);
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let tensors: Vec<_> =
        names.iter().map(|n| content.tensor(&mut file, n, &candle_core::Device::Cpu).unwrap()).collect();
    let metadata: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &candle_core::quantized::QTensor)> =
        names.iter().map(String::as_str).zip(tensors.iter()).collect();
    let to = std::env::temp_dir().join(format!("perpetua-families-{}-{name}.gguf", std::process::id()));
    let mut out = std::fs::File::create(&to).unwrap();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    Scratch(to)
}

/// Gemma's GGUF settings as llama.cpp reads them: the layer pattern as a period or a
/// per-layer array, llama.cpp's defaults where keys are absent, and the keys Gemma 3
/// does not have refused.
#[test]
fn gemma_gguf_keys_are_read_as_llama_cpp_reads_them() {
    use candle_core::quantized::gguf_file::Value;
    let config = |path: &Path| Llama::load(path, &exact()).map(|m| m.config().clone());
    let c = config(&dir("gemma2").join("model-f32.gguf")).unwrap();
    assert_eq!(c.architecture, Architecture::Gemma2);
    assert_eq!((c.sliding_window, c.sliding_layers.as_deref()), (Some(5), Some(&[true, false][..])));
    assert_eq!((c.attn_logit_softcap, c.final_logit_softcap), (Some(2.0), Some(3.0)));
    let c = config(&dir("gemma3").join("model-f32.gguf")).unwrap();
    assert_eq!(c.sliding_layers.as_deref(), Some(&[true, true, true, true, true, false][..]));
    assert_eq!((c.rope_local_theta, c.rope_theta), (Some(10_000.0), 1_000_000.0));
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });

    // Without the softcap keys Gemma 2 takes llama.cpp's defaults (50, 30).
    let path = edited_gguf("gemma2", "gemma2-defaults", |m| {
        m.remove("gemma2.attn_logit_softcapping");
        m.remove("gemma2.final_logit_softcapping");
        m.remove("gemma2.attention.sliding_window");
    });
    let c = config(&path).unwrap();
    assert_eq!(
        (c.attn_logit_softcap, c.final_logit_softcap, c.sliding_window),
        (Some(50.0), Some(30.0), Some(4096))
    );
    // The pattern as a per-layer flag array, and as a period.
    let flags = Value::Array([false, true, false, true, true, true].map(Value::Bool).to_vec());
    let path = edited_gguf("gemma3", "gemma3-flags", |m| {
        m.insert("gemma3.attention.sliding_window_pattern".into(), flags);
    });
    assert_eq!(
        config(&path).unwrap().sliding_layers.as_deref(),
        Some(&[false, true, false, true, true, true][..])
    );
    let path = edited_gguf("gemma3", "gemma3-period", |m| {
        m.insert("gemma3.attention.sliding_window_pattern".into(), Value::U32(3));
        m.insert("gemma3.rope.freq_base_swa".into(), Value::F32(500.0));
    });
    let c = config(&path).unwrap();
    assert_eq!(c.sliding_layers.as_deref(), Some(&[true, true, false, true, true, false][..]));
    assert_eq!(c.rope_local_theta, Some(500.0));
    // Without a window key Gemma 3 attends globally everywhere, with one RoPE base.
    let path = edited_gguf("gemma3", "gemma3-global", |m| {
        m.remove("gemma3.attention.sliding_window");
    });
    let c = config(&path).unwrap();
    assert_eq!((c.sliding_window, c.sliding_layers, c.rope_local_theta), (None, None, None));

    type Edit = fn(&mut std::collections::HashMap<String, Value>);
    let refused: [(&str, Edit, &str); 3] = [
        (
            "gemma3",
            |m| drop(m.insert("gemma3.attn_logit_softcapping".into(), Value::F32(50.0))),
            "gemma3.attn_logit_softcapping",
        ),
        (
            "gemma2",
            |m| drop(m.insert("gemma2.rope.freq_base_swa".into(), Value::F32(500.0))),
            "gemma2.rope.freq_base_swa",
        ),
        (
            "gemma3",
            |m| {
                drop(m.insert(
                    "gemma3.attention.sliding_window_pattern".into(),
                    Value::Array(vec![Value::Bool(true)]),
                ))
            },
            "gemma3.attention.sliding_window_pattern",
        ),
    ];
    for (i, (family, edit, key)) in refused.into_iter().enumerate() {
        let path = edited_gguf(family, &format!("gemma-refused-{i}"), edit);
        match Llama::load(&path, &exact()) {
            Err(CandleBackendError::Metadata { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: {other:?}"),
        }
    }
}

/// What Gemma's chat templates use renders as transformers renders it: `messages[1:]`,
/// `loop.first`, `is string` / `is iterable`, a system prompt folded into the first
/// user turn, roles renamed, whitespace control, and `raise_exception` for turns that
/// do not alternate. The template (`tests/data/chat/gemma-style.jinja`) is written for
/// this test in Gemma 3's style; the expected text was printed by transformers 5.25's
/// `apply_chat_template` with it on the gemma2 directory's tokenizer.
#[test]
fn gemma_style_chat_templates_render_as_transformers_does() {
    use perpetua_candle::LlamaTokenizer;
    use perpetua_generator::ChatMessage;
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat/gemma-style.jinja"),
    )
    .unwrap();
    let tok = LlamaTokenizer::load(dir("gemma2")).unwrap().with_chat_template(template);
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user(" hi "),
        ChatMessage::assistant("Hello! "),
        ChatMessage::user("Why?"),
    ];
    let chat = tok.render_chat(&messages, true).unwrap().unwrap();
    assert_eq!(
        chat,
        "<s><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    );
    match tok.render_chat(&[ChatMessage::user("a"), ChatMessage::user("b")], false).unwrap() {
        Err(CandleBackendError::ChatTemplate(msg)) => assert!(msg.contains("must alternate"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

/// A context shift re-rotates each layer's keys with that layer's RoPE table: Gemma 3's
/// windowed layers with their own base, its global ones with the scaled global table.
/// Layer 0's keys depend only on token and position, so after dropping positions 2..6
/// they must equal a fresh prefill's of the kept tokens — checked with layer 0 windowed
/// (the checkpoint as made) and global (`layer_types` edited).
#[test]
fn gemma3_context_shifts_rotate_each_layer_with_its_own_table() {
    let tokens = reference("gemma3").tokens[..12].to_vec();
    let fresh_tokens: Vec<u32> = tokens[..2].iter().chain(&tokens[6..]).copied().collect();
    let global_first = edited("gemma3", "shift-global", |c| c["layer_types"][0] = "full_attention".into());
    for (layer0, path) in [("windowed", dir("gemma3")), ("global", global_first.clone())] {
        let model = Llama::load(&path, &exact()).unwrap();
        assert_eq!(model.config().is_sliding_layer(0), layer0 == "windowed");
        let mut out = Vec::new();
        let mut shifted = model.new_cache().unwrap();
        model.forward(&tokens, &mut shifted, &mut out).unwrap();
        let k0 = |c: &perpetua_candle::LlamaCache, from: usize, n: usize| -> Vec<f32> {
            c.layer_keys(0).unwrap().narrow(1, from, n).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let before = k0(&shifted, 6, 6);
        assert!(LanguageModel::shift_cache(&model, &mut shifted, 2, 4).unwrap());
        let mut fresh = model.new_cache().unwrap();
        model.forward(&fresh_tokens, &mut fresh, &mut out).unwrap();
        let diff = common::max_abs_diff(&k0(&shifted, 0, 8), &k0(&fresh, 0, 8));
        let control = common::max_abs_diff(&before, &k0(&fresh, 2, 6));
        println!(
            "gemma3, layer 0 {layer0}: shifted keys vs fresh {diff:.1e} (before the shift {control:.2})"
        );
        assert!(diff <= 1e-4, "{layer0}: {diff}");
        assert!(control > 100.0 * diff.max(1e-6), "{layer0}: the shift moved nothing ({control})");
    }
    let _ = std::fs::remove_dir_all(global_first);
}

/// Mistral's GGUF: llama.cpp's converter writes MistralForCausalLM as `llama` without the
/// sliding window, and llama.cpp runs it so — we load that file as it says (no window;
/// equal to llama.cpp above, 6.8 off transformers here). The same file with
/// `llama.attention.sliding_window` declared (`model-f32-sliding.gguf`, made by
/// `make_gguf.py`) is the model transformers computes: within 1e-4 in both kernels.
#[test]
fn a_mistral_gguf_with_its_window_matches_transformers() {
    let r = reference("mistral");
    let plain = Llama::load(dir("mistral").join("model-f32.gguf"), &exact()).unwrap();
    assert_eq!(plain.config().sliding_window, None);
    let off = decode_diffs(&plain, &r).into_iter().fold(0.0, f32::max);
    println!("mistral GGUF as converted (no window): max |Δlogit| {off:.2} against transformers");
    assert!(off > 100.0 * TOLERANCE, "the window should matter on this checkpoint: {off}");
    for (kernel, options) in [("reference", exact()), ("fused", fused()), ("batched", batched())] {
        let model = Llama::load(dir("mistral").join("model-f32-sliding.gguf"), &options).unwrap();
        assert_eq!(model.config().sliding_window, Some(5));
        let worst = decode_diffs(&model, &r).into_iter().fold(0.0, f32::max);
        println!("mistral GGUF with its window ({kernel} attention): max |Δlogit| {worst:.1e}");
        assert!(worst <= TOLERANCE, "{kernel}: {worst}");
    }
}
