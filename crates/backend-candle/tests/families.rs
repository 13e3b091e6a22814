//! Model families beyond the default model, against Hugging Face transformers: tiny
//! random-weight checkpoints (2 layers, hidden 64, each family's features switched on)
//! and the logits transformers computed for them, made by
//! `scripts/model-families/make_tiny.py` and committed under `tests/data/families/`.
//!
//! Per family: a 12-token prefill and 8 decode steps within 1e-4 of HF (f32), in both
//! attention kernels; all 20 positions of one batched pass likewise; the kv-cache
//! conformance kit; a perpetual run with back steps whose cache stays in step. Then the
//! refusals: a checkpoint whose `config.json` does not describe it, and every setting
//! not implemented, is a typed error, never a silently different model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use perpetua_candle::{
    Architecture, Attention, CandleBackendError, KvDtype, Llama, LoadOptions, RopeScaling,
};
use perpetua_generator::testing::{ByteTokenizer, ModelHarness};
use perpetua_generator::{Event, Generator, KvCache, LanguageModel};
use perpetua_kv_cache::testing::{ConformanceConfig, run_all};
use perpetua_sampling::processors::LogitBias;
use perpetua_sampling::samplers::Multinomial;
use perpetua_sampling::{Chain, processors::TopK};

const FAMILIES: [&str; 6] = ["llama3", "llama-linear", "mistral", "qwen2", "qwen3", "phi3"];

fn dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/families").join(family)
}

#[derive(serde::Deserialize)]
struct Reference {
    tokens: Vec<u32>,
    prefill: usize,
    /// The prefill's last position, then one row per decode step.
    logits: Vec<Vec<f32>>,
    /// Every position of `tokens` in one pass.
    full: Vec<Vec<f32>>,
}

fn reference(family: &str) -> Reference {
    let text = std::fs::read_to_string(dir(family).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn exact() -> LoadOptions {
    LoadOptions::exact()
}

/// The default fused kernel with an f32 cache (the f16 cache rounds keys: ~1e-3).
fn fused() -> LoadOptions {
    LoadOptions { attention: Attention::Fused, ..LoadOptions::exact() }
}

const TOLERANCE: f32 = 1e-4;

/// Prefill then one decode step per reference row; the largest difference per step.
fn decode_diffs(model: &Llama, r: &Reference) -> Vec<f32> {
    let mut cache = model.new_cache().unwrap();
    let mut out = Vec::new();
    let mut diffs = Vec::new();
    model.forward(&r.tokens[..r.prefill], &mut cache, &mut out).unwrap();
    diffs.push(common::max_abs_diff(&out, &r.logits[0]));
    for (step, want) in r.logits[1..].iter().enumerate() {
        let t = r.tokens[r.prefill + step];
        model.forward(&[t], &mut cache, &mut out).unwrap();
        diffs.push(common::max_abs_diff(&out, want));
    }
    assert_eq!(cache.seq_len(), r.prefill + r.logits.len() - 1);
    diffs
}

#[test]
fn every_family_matches_transformers_in_prefill_and_decode() {
    for family in FAMILIES {
        let r = reference(family);
        assert_eq!(r.logits.len(), 9, "{family}: a prefill and 8 decode steps");
        for (kernel, options) in [("reference", exact()), ("fused", fused())] {
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
const GGUF_FAMILIES: [&str; 5] = ["llama3", "llama-linear", "qwen2", "qwen3", "phi3"];

/// llama.cpp's F32 conversion computes transformers' logits: the GGUF layout (q/k rows
/// permuted for llama, NeoX RoPE for Qwen, `rope_freqs` factors for Llama 3.1, the
/// linear factor under its GGUF key, biases and q/k norms as llama.cpp names them, Phi-3's
/// fused `attn_qkv` / `ffn_up` and its `attention.sliding_window`).
#[test]
fn every_converted_gguf_matches_transformers() {
    for family in GGUF_FAMILIES {
        let r = reference(family);
        for (kernel, options) in [("reference", exact()), ("fused", fused())] {
            let model = Llama::load(dir(family).join("model-f32.gguf"), &options).unwrap();
            let diffs = decode_diffs(&model, &r);
            let worst = diffs.iter().copied().fold(0.0, f32::max);
            println!("{family} GGUF F32 ({kernel} attention): max |Δlogit| {worst:.1e}");
            assert!(worst <= TOLERANCE, "{family} ({kernel}): {diffs:?}");
        }
    }
}

/// The Q8_0 conversion, as users run it (default options: fused attention, f16 cache),
/// against transformers' f32 logits: within the quantization's error, measured here as
/// the largest difference over the 9 steps relative to the logits' spread.
#[test]
fn every_q8_0_gguf_stays_within_quantization_error_of_transformers() {
    for family in GGUF_FAMILIES {
        let r = reference(family);
        let model = Llama::load(dir(family).join("model-q8_0.gguf"), &LoadOptions::default()).unwrap();
        let worst = decode_diffs(&model, &r).into_iter().fold(0.0, f32::max);
        let spread = r.logits.iter().flatten().fold(0.0f32, |m, &x| m.max(x.abs()));
        println!("{family} GGUF Q8_0: max |Δlogit| {worst:.3} (logits up to {spread:.1})");
        assert!(worst <= 0.06 * spread, "{family}: {worst} against logits up to {spread}");
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

#[test]
fn every_family_matches_transformers_on_all_positions_of_one_pass() {
    for family in FAMILIES {
        let r = reference(family);
        let model = Llama::load(dir(family), &exact()).unwrap();
        let mut cache = model.new_cache().unwrap();
        let mut out = Vec::new();
        model.forward_all(&r.tokens, &mut cache, &mut out).unwrap();
        let want: Vec<f32> = r.full.concat();
        let diff = common::max_abs_diff(&out, &want);
        println!("{family}: forward_all over {} positions, max |Δlogit| {diff:.2e}", r.tokens.len());
        assert!(diff <= TOLERANCE, "{family}: {diff}");
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
    let cases: [(&str, Edit); 4] = [
        ("mistral", |c| c["sliding_window"] = serde_json::Value::Null),
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
    let cases: [(&str, Edit, &str); 8] = [
        ("qwen2", |c| c["model_type"] = "gemma2".into(), "gemma2"),
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

#[test]
fn the_dense_loader_refuses_what_burn_does_not_implement() {
    for family in ["mistral", "qwen2", "qwen3", "phi3"] {
        match perpetua_candle::dense::DenseWeights::load(dir(family)) {
            Err(CandleBackendError::UnsupportedFeature { architecture, .. }) => {
                assert_eq!(architecture.as_str(), family);
            }
            other => panic!("{family}: {other:?}"),
        }
    }
    // RoPE scaling lives in the shared tables: the dense loader takes it.
    let dense = perpetua_candle::dense::DenseWeights::load(dir("llama3")).unwrap();
    assert!(matches!(dense.config.rope_scaling, RopeScaling::Llama3 { .. }));
}

use common::Harness;

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
            let report = run_all(&mut Harness(model), &config).unwrap();
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

/// A SentencePiece-style `tokenizer.json` (Llama 2, Mistral v0.1: `▁` markers and byte
/// fallback) would decode wrongly through the byte-level table: refused.
#[test]
fn a_sentencepiece_style_tokenizer_json_is_refused() {
    use perpetua_candle::LlamaTokenizer;
    let to = std::env::temp_dir().join(format!("perpetua-families-{}-spm", std::process::id()));
    std::fs::create_dir_all(&to).unwrap();
    let json = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                  "vocab": {"<unk>": 0, "▁a": 1, "<0x0A>": 2}, "merges": []}
    });
    std::fs::write(to.join("tokenizer.json"), json.to_string()).unwrap();
    match LlamaTokenizer::load(&to) {
        Err(CandleBackendError::Tokenizer(msg)) => assert!(msg.contains("byte-level"), "{msg}"),
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
