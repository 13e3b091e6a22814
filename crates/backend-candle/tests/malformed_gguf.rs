//! Malformed GGUF files: a tiny but complete llama GGUF is written in
//! memory, loads and runs, and each corruption of it gets a typed error naming the
//! problem. With `PERPETUA_WRITE_FUZZ_SEED=DIR` the intact file is also written to `DIR`
//! (the seed of the `gguf_load` fuzz target in `fuzz/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use perpetua_candle::{CandleBackendError, Llama, LlamaTokenizer, LoadOptions};
use perpetua_generator::{LanguageModel, Tokenizer};

const H: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = H / HEADS;
const FFN: usize = 128;
const LAYERS: usize = 2;

/// The tiny vocabulary: three control tokens, byte-level letters, digits, space and a
/// few merges' results.
fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    v.extend(('a'..='z').map(String::from));
    v.extend(('0'..='9').map(String::from));
    v.extend(["Ġ", ",", "!", ".", "H", "he", "ll", "hell", "hello"].map(String::from));
    v
}

/// A metadata entry, and whether it belongs to the tokenizer.
type Entry = (&'static str, Value);

fn metadata(vocab_len: usize) -> Vec<Entry> {
    let u = |v: usize| Value::U32(v as u32);
    let mut types = vec![Value::I32(3); 3];
    types.extend(std::iter::repeat_n(Value::I32(1), vocab_len - 3));
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", u(H)),
        ("llama.attention.head_count", u(HEADS)),
        ("llama.attention.head_count_kv", u(KV_HEADS)),
        ("llama.feed_forward_length", u(FFN)),
        ("llama.block_count", u(LAYERS)),
        ("llama.context_length", u(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(vocab().into_iter().map(Value::String).collect())),
        (
            "tokenizer.ggml.merges",
            Value::Array(["h e", "l l", "he ll", "hell o"].map(|m| Value::String(m.into())).to_vec()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.bos_token_id", u(1)),
        ("tokenizer.ggml.eos_token_id", u(2)),
    ]
}

/// Deterministic weights, small enough that activations stay tame.
fn weight(name: &str, dims: &[usize], dtype: GgmlDType) -> QTensor {
    let n: usize = dims.iter().product();
    let salt = name.bytes().fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    let data: Vec<f32> = if name.ends_with("norm.weight") {
        vec![1.0; n]
    } else {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ salt) % 1000) as f32 / 10_000.0 - 0.05)
            .collect()
    };
    let t = Tensor::from_vec(data, dims, &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

fn tensors(vocab_len: usize) -> Vec<(String, QTensor)> {
    let kv = KV_HEADS * HEAD_DIM;
    let mut specs: Vec<(String, Vec<usize>, GgmlDType)> = vec![
        ("token_embd.weight".into(), vec![vocab_len, H], GgmlDType::F32),
        ("output_norm.weight".into(), vec![H], GgmlDType::F32),
    ];
    for i in 0..LAYERS {
        let p = format!("blk.{i}");
        // One quantized matrix per layer, so the quantized read path is exercised too.
        specs.extend([
            (format!("{p}.attn_norm.weight"), vec![H], GgmlDType::F32),
            (format!("{p}.attn_q.weight"), vec![H, H], GgmlDType::Q8_0),
            (format!("{p}.attn_k.weight"), vec![kv, H], GgmlDType::F32),
            (format!("{p}.attn_v.weight"), vec![kv, H], GgmlDType::F32),
            (format!("{p}.attn_output.weight"), vec![H, H], GgmlDType::F32),
            (format!("{p}.ffn_norm.weight"), vec![H], GgmlDType::F32),
            (format!("{p}.ffn_gate.weight"), vec![FFN, H], GgmlDType::F32),
            (format!("{p}.ffn_up.weight"), vec![FFN, H], GgmlDType::F32),
            (format!("{p}.ffn_down.weight"), vec![H, FFN], GgmlDType::F32),
        ]);
    }
    specs.into_iter().map(|(name, dims, dtype)| (name.clone(), weight(&name, &dims, dtype))).collect()
}

/// Serialise a GGUF from metadata and tensors.
fn gguf(metadata: &[Entry], tensors: &[(String, QTensor)]) -> Vec<u8> {
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &ts).unwrap();
    out.into_inner()
}

fn tiny() -> Vec<u8> {
    let n = vocab().len();
    gguf(&metadata(n), &tensors(n))
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perpetua-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load(name: &str, bytes: &[u8]) -> Result<Llama, CandleBackendError> {
    Llama::load(scratch(name, bytes), &LoadOptions::exact())
}

fn load_err(name: &str, bytes: &[u8]) -> CandleBackendError {
    match load(name, bytes) {
        Ok(_) => panic!("{name}: the corrupted file loaded"),
        Err(e) => e,
    }
}

#[test]
fn the_tiny_file_loads_runs_and_tokenizes() {
    let bytes = tiny();
    if let Some(dir) = std::env::var_os("PERPETUA_WRITE_FUZZ_SEED") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(PathBuf::from(dir).join("tiny_llama.gguf"), &bytes).unwrap();
    }
    let path = scratch("intact", &bytes);
    let model = Llama::load(&path, &LoadOptions::exact()).unwrap();
    assert_eq!(model.vocab_size(), vocab().len());
    let mut cache = model.new_cache().unwrap();
    let mut logits = Vec::new();
    model.forward(&[1, 10, 11], &mut cache, &mut logits).unwrap();
    assert_eq!(logits.len(), vocab().len());
    assert!(logits.iter().all(|l| l.is_finite()));
    // The default options requantize to Q8_0: same file, also loads.
    Llama::load(&path, &LoadOptions::default()).unwrap();

    let tokenizer = LlamaTokenizer::from_gguf(&path).unwrap();
    let ids = tokenizer.encode("hello", false).unwrap();
    assert_eq!(ids, [vocab().iter().position(|t| t == "hello").unwrap() as u32]);
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), "hello");
    assert_eq!(tokenizer.eos_ids(), [2]);
}

#[test]
fn wrong_magic_is_not_a_gguf_file() {
    let mut bytes = tiny();
    bytes[..4].copy_from_slice(b"GGML");
    let err = load_err("magic", &bytes);
    assert!(
        matches!(&err, CandleBackendError::MalformedGguf { reason, .. } if reason.contains("not a GGUF file")),
        "{err}"
    );
    // Too short to hold a magic at all.
    let err = load_err("two-bytes", b"GG");
    assert!(
        matches!(&err, CandleBackendError::MalformedGguf { reason, .. } if reason.contains("2 bytes")),
        "{err}"
    );
    let err = load_err("empty", b"");
    assert!(matches!(err, CandleBackendError::MalformedGguf { .. }), "{err}");
}

#[test]
fn unsupported_version_is_malformed() {
    let mut bytes = tiny();
    bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
    let err = load_err("version", &bytes);
    assert!(
        matches!(&err, CandleBackendError::MalformedGguf { reason, .. } if reason.contains("unsupported magic/version")),
        "{err}"
    );
}

#[test]
fn truncated_files_name_the_first_tensor_cut_off() {
    let bytes = tiny();
    // Cut inside the tensor data (the last tensor loses its tail)...
    let err = load_err("truncated-data", &bytes[..bytes.len() - 100]);
    assert!(
        matches!(&err, CandleBackendError::MalformedGguf { reason, .. } if reason.starts_with("truncated: tensor `")),
        "{err}"
    );
    // ...and inside the header: every cut point gives a typed error, never a panic.
    for cut in (0..2_000).step_by(37).chain([8, 16, 24]) {
        let err = load_err("truncated-header", &bytes[..cut]);
        assert!(matches!(err, CandleBackendError::MalformedGguf { .. }), "cut at {cut}: {err}");
    }
}

#[test]
fn unsupported_tensor_types_are_named() {
    // Readable by candle but not a matmul weight type: Q8_K.
    let n = vocab().len();
    let mut ts = tensors(n);
    let slot = ts.iter().position(|(k, _)| k == "blk.1.ffn_up.weight").unwrap();
    ts[slot].1 = weight("blk.1.ffn_up.weight", &[FFN, H * 4], GgmlDType::Q8K);
    // Q8_K blocks are 256 wide: give the tensor [FFN, 4H] so it quantizes, then the loader
    // must complain about the type before the shape.
    let err = load_err("q8k", &gguf(&metadata(n), &ts));
    assert!(
        matches!(&err, CandleBackendError::UnsupportedDtype { name, dtype } if name == "blk.1.ffn_up.weight" && dtype == "Q8K"),
        "{err}"
    );

    // A type code candle cannot read at all (llama.cpp's IQ2_XXS = 16): patch the code in
    // the tensor directory of an intact file.
    let bytes = tiny();
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // After the name: n_dims (u32), 2 dims (u64 each), then the type code (u32).
    let code_at = at + 4 + 2 * 8;
    let mut patched = bytes.clone();
    assert_eq!(
        u32::from_le_bytes(patched[code_at..code_at + 4].try_into().unwrap()),
        8,
        "Q8_0 expected there"
    );
    patched[code_at..code_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let err = load_err("iq2", &patched);
    assert!(matches!(&err, CandleBackendError::UnsupportedTensorType { code: 16, .. }), "{err}");
    assert!(err.to_string().contains("re-quantize"), "{err}");
}

#[test]
fn tensor_shape_mismatches_name_the_tensor() {
    let n = vocab().len();
    let mut ts = tensors(n);
    let slot = ts.iter().position(|(k, _)| k == "blk.0.attn_k.weight").unwrap();
    ts[slot].1 = weight("blk.0.attn_k.weight", &[H, H], GgmlDType::F32);
    let err = load_err("shape", &gguf(&metadata(n), &ts));
    assert!(
        matches!(&err, CandleBackendError::BadShape { name, expected, actual }
            if name == "blk.0.attn_k.weight" && expected == &[KV_HEADS * HEAD_DIM, H] && actual == &[H, H]),
        "{err}"
    );

    // A missing tensor.
    let ts: Vec<_> = tensors(n).into_iter().filter(|(k, _)| k != "blk.1.ffn_down.weight").collect();
    let err = load_err("missing", &gguf(&metadata(n), &ts));
    assert!(
        matches!(&err, CandleBackendError::MissingTensor { name } if name == "blk.1.ffn_down.weight"),
        "{err}"
    );
}

#[test]
fn bad_model_metadata_is_named() {
    let n = vocab().len();
    let cases: [(&str, Option<Value>, &str); 12] = [
        // Files we would run wrongly are refused (YaRN, windows on some layers only, a
        // family we lack).
        ("llama.rope.scaling.type", Some(Value::String("yarn".into())), "RoPE scaling `yarn`"),
        ("llama.rope.scaling.type", Some(Value::U32(1)), "llama.rope.scaling.type"),
        ("llama.attention.sliding_window_pattern", Some(Value::U32(4)), "sliding_window_pattern"),
        ("llama.block_count", None, "llama.block_count"),
        ("llama.attention.head_count", Some(Value::U32(0)), "llama.attention.head_count"),
        ("llama.attention.head_count_kv", Some(Value::U32(3)), "n_kv_heads"),
        ("llama.context_length", Some(Value::U64(1 << 40)), "max_context"),
        ("llama.embedding_length", Some(Value::String("sixty-four".into())), "llama.embedding_length"),
        ("general.architecture", Some(Value::String("mamba".into())), "mamba"),
        ("general.architecture", Some(Value::String("gemma".into())), "gemma"),
        // Gemma's keys on another family: llama.cpp would ignore them, we refuse.
        ("llama.attn_logit_softcapping", Some(Value::F32(50.0)), "llama.attn_logit_softcapping"),
        ("llama.rope.freq_base_swa", Some(Value::F32(10000.0)), "llama.rope.freq_base_swa"),
    ];
    for (key, value, named) in cases {
        let mut md = metadata(n);
        md.retain(|(k, _)| *k != key);
        if let Some(v) = value {
            md.push((key, v));
        }
        let err = load_err("metadata", &gguf(&md, &tensors(n)));
        assert!(
            matches!(
                err,
                CandleBackendError::Metadata { .. }
                    | CandleBackendError::InvalidParameter { .. }
                    | CandleBackendError::UnsupportedArchitecture(_)
            ),
            "{key}: {err}"
        );
        assert!(err.to_string().contains(named), "{key}: `{err}` does not name `{named}`");
    }
}

#[test]
fn missing_or_bad_tokenizer_metadata_is_named() {
    let n = vocab().len();
    let cases: [(&str, Option<Value>, &str); 8] = [
        // A pre-tokenizer we do not implement (DeepSeek's) would split text wrongly.
        ("tokenizer.ggml.pre", Some(Value::String("deepseek-llm".into())), "`deepseek-llm` is not supported"),
        ("tokenizer.ggml.pre", None, "absent"),
        ("tokenizer.ggml.tokens", None, "tokenizer.ggml.tokens"),
        ("tokenizer.ggml.merges", None, "tokenizer.ggml.merges"),
        ("tokenizer.ggml.model", Some(Value::String("bert".into())), "`bert` is not supported"),
        ("tokenizer.ggml.token_type", Some(Value::Array(vec![Value::I32(1); 3])), "3 entries"),
        ("tokenizer.ggml.eos_token_id", Some(Value::U32(5000)), "outside the vocabulary"),
        ("tokenizer.ggml.merges", Some(Value::Array(vec![Value::String("nospace".into())])), "bad merge"),
    ];
    for (key, value, named) in cases {
        let mut md = metadata(n);
        md.retain(|(k, _)| *k != key);
        if let Some(v) = value {
            md.push((key, v));
        }
        let path = scratch("tokenizer", &gguf(&md, &tensors(n)));
        let err = LlamaTokenizer::from_gguf(&path).err().unwrap_or_else(|| panic!("{key}: tokenizer loaded"));
        assert!(matches!(err, CandleBackendError::Metadata { .. }), "{key}: {err}");
        let text = err.to_string();
        assert!(text.contains(key) && text.contains(named), "{key}: `{text}` does not name `{named}`");
    }
}

/// Logits of the prompt `[1, 2, 3, 4, 5, 6]` (enough positions for RoPE to matter).
fn logits(name: &str, bytes: &[u8]) -> Vec<f32> {
    let model = load(name, bytes).unwrap();
    let mut cache = model.new_cache().unwrap();
    let mut out = Vec::new();
    model.forward(&[1, 2, 3, 4, 5, 6], &mut cache, &mut out).unwrap();
    out
}

#[test]
fn rope_scaling_metadata_is_applied_or_refused() {
    let n = vocab().len();
    let plain = logits("rope-plain", &tiny());
    // `none` scaling and a linear factor of 1 change nothing.
    let mut md = metadata(n);
    md.push(("llama.rope.scaling.type", Value::String("none".into())));
    md.push(("llama.rope.scale_linear", Value::F32(1.0)));
    assert_eq!(logits("rope-none", &gguf(&md, &tensors(n))), plain);
    // A linear factor, under either key, is the same scaling.
    let mut md = metadata(n);
    md.push(("llama.rope.scaling.type", Value::String("linear".into())));
    md.push(("llama.rope.scaling.factor", Value::F32(4.0)));
    let linear = logits("rope-linear", &gguf(&md, &tensors(n)));
    assert_ne!(linear, plain);
    let mut md = metadata(n);
    md.push(("llama.rope.scale_linear", Value::F32(4.0)));
    assert_eq!(logits("rope-legacy", &gguf(&md, &tensors(n))), linear);
    // Per-frequency factors (Llama 3.1+): every factor 4 is the linear scaling ×4.
    let factors = |values: Vec<f32>| {
        let mut ts = tensors(n);
        let t = Tensor::from_vec(values, HEAD_DIM / 2, &Device::Cpu).unwrap();
        ts.push(("rope_freqs.weight".into(), QTensor::quantize(&t, GgmlDType::F32).unwrap()));
        gguf(&metadata(n), &ts)
    };
    let by_factors = logits("rope-factors", &factors(vec![4.0; HEAD_DIM / 2]));
    let diff = by_factors.iter().zip(&linear).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-5, "factors of 4 vs linear ×4: {diff}");
    // A factor that is not positive, or a factor tensor of the wrong length, is refused.
    let mut zero = vec![1.0; HEAD_DIM / 2];
    zero[1] = 0.0;
    let err = load_err("rope-zero", &factors(zero));
    assert!(
        matches!(&err, CandleBackendError::InvalidParameter { name, .. } if *name == "rope_freqs.weight"),
        "{err}"
    );
    let mut ts = tensors(n);
    ts.push(("rope_freqs.weight".into(), weight("rope_freqs.weight", &[HEAD_DIM], GgmlDType::F32)));
    let err = load_err("rope-len", &gguf(&metadata(n), &ts));
    assert!(
        matches!(&err, CandleBackendError::BadShape { name, .. } if name == "rope_freqs.weight"),
        "{err}"
    );
}

/// `{arch}.attention.sliding_window` is applied (0 means none, as llama.cpp writes it).
#[test]
fn a_sliding_window_key_limits_attention() {
    let n = vocab().len();
    let plain = logits("window-none", &tiny());
    let with = |w: u32| {
        let mut md = metadata(n);
        md.push(("llama.attention.sliding_window", Value::U32(w)));
        logits(&format!("window-{w}"), &gguf(&md, &tensors(n)))
    };
    assert_eq!(with(0), plain);
    assert_eq!(with(6), plain, "a window as long as the prompt changes nothing");
    assert_ne!(with(2), plain);
}

/// A tensor the configuration does not use (here a Qwen2-style bias in a `llama` file)
/// refuses the file: dropping it would compute another model.
#[test]
fn a_tensor_the_architecture_does_not_use_is_refused() {
    let n = vocab().len();
    let mut ts = tensors(n);
    ts.push(("blk.1.attn_q.bias".into(), weight("blk.1.attn_q.bias", &[H], GgmlDType::F32)));
    match load_err("extra-tensor", &gguf(&metadata(n), &ts)) {
        CandleBackendError::UnexpectedTensor { name, more, .. } => {
            assert_eq!((name.as_str(), more), ("blk.1.attn_q.bias", 0))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn zero_alignment_does_not_panic() {
    // candle divides by `general.alignment`: 0 used to be a division by zero.
    let n = vocab().len();
    let mut md = metadata(n);
    md.push(("general.alignment", Value::U32(0)));
    let err = load_err("alignment", &gguf(&md, &tensors(n)));
    assert!(matches!(err, CandleBackendError::MalformedGguf { .. }), "{err}");
}
