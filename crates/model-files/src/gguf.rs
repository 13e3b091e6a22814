//! GGUF files: the header (metadata and tensor directory, checked against the file's
//! length), the family's hyper-parameters as llama.cpp reads them, and the tensors,
//! each checked for presence, type and shape before it is read.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};

use crate::config::{Activation, Architecture, LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result};

/// Whether candle can read and multiply tensors of `dtype` (F32, F16, BF16, the legacy
/// quants and the K-quants).
pub fn ggml_dtype_supported(dtype: GgmlDType) -> bool {
    use GgmlDType as G;
    matches!(
        dtype,
        G::F32
            | G::F16
            | G::BF16
            | G::Q4_0
            | G::Q4_1
            | G::Q5_0
            | G::Q5_1
            | G::Q8_0
            | G::Q2K
            | G::Q3K
            | G::Q4K
            | G::Q5K
            | G::Q6K
    )
}

/// Reads tensors of one GGUF file, checking presence, dtype and shape first.
pub struct GgufReader {
    content: gguf_file::Content,
    reader: BufReader<File>,
    device: Device,
    /// Names of the tensors read so far ([`Self::finish`]).
    taken: std::collections::HashSet<String>,
}

/// What a Gemma GGUF's keys set beyond the llama block ([`GgufReader::gemma_settings`]).
#[derive(Default)]
struct GemmaSettings {
    window: Option<usize>,
    sliding_layers: Option<Vec<bool>>,
    rope_local_theta: Option<f64>,
    attention_scale: Option<f64>,
    attn_logit_softcap: Option<f64>,
    final_logit_softcap: Option<f64>,
}

impl GgufReader {
    /// Open `path` and parse its header ([`read_gguf`]); tensors are read on `device`.
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        let (content, reader) = read_gguf(path)?;
        Ok(Self { content, reader, device: device.clone(), taken: Default::default() })
    }

    /// The hyper-parameters from the metadata (`{arch}.*` keys), validated.
    /// `general.architecture` may be `llama`, `qwen2`, `qwen3` or `phi3` (llama.cpp writes
    /// Mistral checkpoints as `llama`, without their window, and so runs them).
    pub fn llama_config(&mut self) -> Result<LlamaConfig> {
        let arch = self
            .metadata("general.architecture")?
            .to_string()
            .map_err(|e| ModelError::metadata("general.architecture", e.to_string()))?
            .clone();
        let architecture = match arch.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "phi3" => Architecture::Phi3,
            "gemma2" => Architecture::Gemma2,
            "gemma3" => Architecture::Gemma3,
            _ => return Err(ModelError::UnsupportedArchitecture(arch)),
        };
        let gemma = architecture.norm_weights_offset();
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = self.metadata_usize(&key("embedding_length"))?;
        let n_heads = self.metadata_usize(&key("attention.head_count"))?;
        let n_kv_heads = match self.metadata_usize(&key("attention.head_count_kv")) {
            Ok(n) => n,
            Err(_) => n_heads,
        };
        if n_heads == 0 {
            return Err(ModelError::metadata(key("attention.head_count"), "zero"));
        }
        // Qwen3 writes its head width (which need not be hidden / heads) as key_length.
        let head_dim = match self.metadata_usize(&key("attention.key_length")) {
            Ok(d) => d,
            Err(_) => hidden_size / n_heads,
        };
        if let Ok(v) = self.metadata_usize(&key("attention.value_length"))
            && v != head_dim
        {
            return Err(ModelError::metadata(
                key("attention.value_length"),
                format!("{v} differs from the key width {head_dim}"),
            ));
        }
        if let Ok(rope_dim) = self.metadata_usize(&key("rope.dimension_count"))
            && rope_dim != head_dim
        {
            return Err(ModelError::metadata(
                key("rope.dimension_count"),
                format!("partial rotary ({rope_dim} of {head_dim} dims) is not supported"),
            ));
        }
        // llama.cpp's standard window: a position sees itself and the `n - 1` before it,
        // as transformers' (0: none, which is how the converter marks Phi-4).
        let sliding_window = match self.content.metadata.get(&key("attention.sliding_window")) {
            None => None,
            Some(_) => Some(self.metadata_usize(&key("attention.sliding_window"))?).filter(|&w| w > 0),
        };
        if self.content.metadata.contains_key(&key("rope.scaling.attn_factor")) {
            return Err(ModelError::metadata(key("rope.scaling.attn_factor"), "is not supported"));
        }
        let rope_scaling = self.rope_scaling(&arch, head_dim)?;
        let rope_theta = self.metadata_f64(&key("rope.freq_base")).unwrap_or(10_000.0);
        let n_layers = self.metadata_usize(&key("block_count"))?;
        let gemma_settings = match gemma {
            true => self.gemma_settings(
                &arch,
                architecture,
                sliding_window,
                rope_theta,
                n_layers,
                hidden_size / n_heads,
            )?,
            false => {
                let only_gemma = [
                    "attention.sliding_window_pattern",
                    "rope.freq_base_swa",
                    "attn_logit_softcapping",
                    "final_logit_softcapping",
                ];
                if let Some(k) = only_gemma.into_iter().find(|k| self.content.metadata.contains_key(&key(k)))
                {
                    return Err(ModelError::metadata(key(k), format!("is not supported for {arch}")));
                }
                GemmaSettings::default()
            }
        };
        let vocab_size = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => return Err(ModelError::MissingTensor { name: "token_embd.weight".into() }),
        };
        let config = LlamaConfig {
            hidden_size,
            intermediate_size: self.metadata_usize(&key("feed_forward_length"))?,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: self.metadata_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta,
            max_context: self.metadata_usize(&key("context_length"))?,
            // llama.cpp's converter permutes llama's q/k rows for pairwise RoPE; the
            // other families' it leaves alone, and runs them with NeoX (half-split) RoPE.
            rope_interleaved: architecture == Architecture::Llama,
            architecture,
            rope_scaling,
            attention_bias: architecture == Architecture::Qwen2,
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            sliding_window: gemma_settings.window.or(sliding_window),
            sliding_layers: gemma_settings.sliding_layers,
            rope_local_theta: gemma_settings.rope_local_theta,
            hidden_act: if gemma { Activation::GeluTanh } else { Activation::Silu },
            embedding_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            attention_scale: gemma_settings.attention_scale,
            attn_logit_softcap: gemma_settings.attn_logit_softcap,
            final_logit_softcap: gemma_settings.final_logit_softcap,
            sandwich_norms: gemma,
        };
        config.validate()?;
        Ok(config)
    }

    /// RoPE scaling from `{arch}.rope.scaling.*` (`linear`; the legacy
    /// `rope.scale_linear`) or a `rope_freqs.weight` tensor (Llama 3.1+). YaRN and the
    /// rest change attention too and are refused with the key.
    fn rope_scaling(&mut self, arch: &str, head_dim: usize) -> Result<RopeScaling> {
        let key = |k: &str| format!("{arch}.{k}");
        let mut scaling = RopeScaling::None;
        let kind_key = key("rope.scaling.type");
        if let Some(v) = self.content.metadata.get(&kind_key) {
            let kind = v.to_string().map_err(|e| ModelError::metadata(&kind_key, e.to_string()))?.clone();
            match kind.as_str() {
                "none" => {}
                "linear" => {
                    scaling = RopeScaling::Linear { factor: self.metadata_f64(&key("rope.scaling.factor"))? }
                }
                _ => {
                    return Err(ModelError::metadata(
                        &kind_key,
                        format!("RoPE scaling `{kind}` is not supported (none, linear)"),
                    ));
                }
            }
        }
        let legacy = key("rope.scale_linear");
        if self.content.metadata.contains_key(&legacy) {
            let factor = self.metadata_f64(&legacy)?;
            if factor != 1.0 {
                if scaling != RopeScaling::None {
                    return Err(ModelError::metadata(&legacy, "given next to rope.scaling.type"));
                }
                scaling = RopeScaling::Linear { factor };
            }
        }
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            if scaling != RopeScaling::None {
                return Err(ModelError::metadata(
                    "rope_freqs.weight",
                    "per-frequency factors next to a linear scaling are not supported",
                ));
            }
            let t = self.tensor("rope_freqs.weight", &[head_dim / 2])?.dequantize(&Device::Cpu)?;
            scaling = RopeScaling::Factors(t.to_vec1::<f32>()?);
        }
        Ok(scaling)
    }

    /// Gemma's settings as llama.cpp reads them from `{arch}.*` keys, with its defaults
    /// where a key is absent:
    /// - the window (Gemma 2: 4,096 by default; Gemma 3: none without the key) on the
    ///   layers of `attention.sliding_window_pattern`, a per-layer flag array or a period
    ///   `p` (layer `i` windowed when `i % p < p − 1`; Gemma 2: 2, Gemma 3: 6);
    /// - soft-capping: Gemma 2 attention 50 and final 30 unless the keys say otherwise,
    ///   Gemma 3 final only when its key is there;
    /// - Gemma 3's windowed layers rotate with `rope.freq_base_swa` (10,000), unscaled;
    /// - queries are scaled by `1/√head_dim`, except in the 27B models (46 and 62
    ///   layers), which use `1/√(hidden / heads)`: GGUF has no key for Gemma's
    ///   `query_pre_attn_scalar`, llama.cpp recognises the model by its depth.
    fn gemma_settings(
        &self,
        arch: &str,
        architecture: Architecture,
        window: Option<usize>,
        rope_theta: f64,
        n_layers: usize,
        hidden_per_head: usize,
    ) -> Result<GemmaSettings> {
        let key = |k: &str| format!("{arch}.{k}");
        let gemma2 = architecture == Architecture::Gemma2;
        let optional = |k: &str| -> Result<Option<f64>> {
            match self.content.metadata.contains_key(&key(k)) {
                true => Ok(Some(self.metadata_f64(&key(k))?)),
                false => Ok(None),
            }
        };
        let window = if gemma2 { Some(window.unwrap_or(4096)) } else { window };
        let pattern_key = key("attention.sliding_window_pattern");
        let sliding_layers = match self.content.metadata.get(&pattern_key) {
            _ if window.is_none() => None,
            Some(gguf_file::Value::Array(flags)) => {
                let flags = flags
                    .iter()
                    .map(gguf_file::Value::to_bool)
                    .collect::<candle_core::Result<Vec<bool>>>()
                    .map_err(|e| ModelError::metadata(&pattern_key, e.to_string()))?;
                if flags.len() != n_layers {
                    return Err(ModelError::metadata(
                        &pattern_key,
                        format!("{} flags for {n_layers} layers", flags.len()),
                    ));
                }
                Some(flags)
            }
            found => {
                let p = match found {
                    Some(_) => self.metadata_usize(&pattern_key)?,
                    None if gemma2 => 2,
                    None => 6,
                };
                Some((0..n_layers).map(|i| p == 0 || i % p < p - 1).collect())
            }
        };
        let cap = |value: Option<f64>| value.filter(|&c| c != 0.0);
        let attn = optional("attn_logit_softcapping")?;
        let (attn_logit_softcap, final_logit_softcap) = match gemma2 {
            true => (
                cap(Some(attn.unwrap_or(50.0))),
                cap(Some(optional("final_logit_softcapping")?.unwrap_or(30.0))),
            ),
            false => {
                if let Some(c) = attn {
                    return Err(ModelError::metadata(
                        key("attn_logit_softcapping"),
                        format!("{c}: attention soft-capping is supported for gemma2 only"),
                    ));
                }
                (None, cap(optional("final_logit_softcapping")?))
            }
        };
        let local_base = optional("rope.freq_base_swa")?;
        let rope_local_theta = match gemma2 {
            // Gemma 2's windowed layers rotate like its global ones.
            true => match local_base {
                Some(b) if b != rope_theta => {
                    return Err(ModelError::metadata(
                        key("rope.freq_base_swa"),
                        format!("{b}: a RoPE base per layer type is supported for gemma3 only"),
                    ));
                }
                _ => None,
            },
            false => window.map(|_| local_base.unwrap_or(10_000.0)),
        };
        let attention_scale = match (architecture, n_layers) {
            (Architecture::Gemma2, 46) | (Architecture::Gemma3, 62) => 1.0 / (hidden_per_head as f64).sqrt(),
            _ => {
                1.0 / (self.metadata_usize(&key("attention.key_length")).unwrap_or(hidden_per_head) as f64)
                    .sqrt()
            }
        };
        Ok(GemmaSettings {
            window,
            sliding_layers,
            rope_local_theta,
            attention_scale: Some(attention_scale),
            attn_logit_softcap,
            final_logit_softcap,
        })
    }

    /// After the loader read every tensor its configuration uses: refuse a file that
    /// holds more (another family's biases or norms would otherwise be dropped).
    pub fn finish(&self, architecture: Architecture) -> Result<()> {
        let mut left: Vec<&String> =
            self.content.tensor_infos.keys().filter(|k| !self.taken.contains(*k)).collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(name) => Err(ModelError::UnexpectedTensor {
                name: (*name).clone(),
                architecture,
                more: left.len() - 1,
            }),
        }
    }

    /// Read tensor `name`, which must exist, be of a type candle can multiply and have
    /// shape `expected`; recorded as used for [`Self::finish`].
    pub fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        if !ggml_dtype_supported(info.ggml_dtype) {
            return Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}", info.ggml_dtype),
            });
        }
        if info.shape.dims() != expected {
            return Err(ModelError::BadShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: info.shape.dims().to_vec(),
            });
        }
        self.taken.insert(name.to_string());
        Ok(self.content.tensor(&mut self.reader, name, &self.device)?)
    }

    /// Total weights and tensor count per GGML type, from the tensor directory.
    pub fn inventory(&self) -> (u64, std::collections::BTreeMap<String, usize>) {
        let mut types = std::collections::BTreeMap::new();
        let mut parameters = 0u64;
        for info in self.content.tensor_infos.values() {
            parameters += info.shape.elem_count() as u64;
            *types.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        }
        (parameters, types)
    }

    /// Whether the file holds a tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn metadata(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content.metadata.get(key).ok_or_else(|| ModelError::metadata(key, "absent"))
    }

    fn metadata_usize(&self, key: &str) -> Result<usize> {
        let value = self.metadata(key)?;
        let n = value
            .to_u32()
            .map(u64::from)
            .or_else(|_| value.to_u64())
            .map_err(|e| ModelError::metadata(key, e.to_string()))?;
        usize::try_from(n).map_err(|e| ModelError::metadata(key, e.to_string()))
    }

    fn metadata_f64(&self, key: &str) -> Result<f64> {
        let value = self.metadata(key)?;
        value
            .to_f32()
            .map(f64::from)
            .or_else(|_| value.to_f64())
            .map_err(|e| ModelError::metadata(key, e.to_string()))
    }
}

/// Open a GGUF file and parse its header (metadata + tensor directory).
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>)> {
    let file = File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::ModelNotFound { path: path.to_path_buf() }
        } else {
            ModelError::Io { path: path.to_path_buf(), source }
        }
    })?;
    let malformed = |reason: String| ModelError::MalformedGguf { path: path.to_path_buf(), reason };
    let file_len =
        file.metadata().map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?.len();
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 4];
    if reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(malformed(format!(
            "not a GGUF file: it starts with {:02x?} ({file_len} bytes), expected the magic `GGUF`",
            &magic[..(file_len.min(4) as usize)]
        )));
    }
    reader.seek(SeekFrom::Start(0)).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    // candle's reader bounds every length by the file size; a panic inside it (a
    // header value it does not expect) is still a malformed file, not a crash.
    let content =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gguf_file::Content::read(&mut reader)))
            .map_err(|_| malformed("the GGUF header reader panicked on this file".into()))?
            .map_err(|e| {
                // candle appends a backtrace when RUST_BACKTRACE is set: keep the message.
                let full = e.to_string();
                let reason = full.lines().next().unwrap_or_default().trim().to_owned();
                match reason
                    .strip_prefix("unknown dtype for tensor ")
                    .and_then(|code| code.trim().parse().ok())
                {
                    Some(code) => ModelError::UnsupportedTensorType { path: path.to_path_buf(), code },
                    None => malformed(reason),
                }
            })?;
    check_tensor_extents(&content, file_len).map_err(malformed)?;
    Ok((content, reader))
}

/// Every tensor's bytes must lie inside the file: a truncated download fails here, at
/// load, naming the first tensor cut off, instead of midway through reading weights.
fn check_tensor_extents(content: &gguf_file::Content, file_len: u64) -> std::result::Result<(), String> {
    let mut infos: Vec<_> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(name, info)| (info.offset, name.as_str()));
    for (name, info) in infos {
        let dims = info.shape.dims();
        let elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = elems
            .filter(|e| e % block == 0)
            .and_then(|e| (e / block).checked_mul(info.ggml_dtype.type_size() as u64))
            .ok_or_else(|| {
                format!("tensor `{name}` has an impossible shape {dims:?} for {:?}", info.ggml_dtype)
            })?;
        let start = content.tensor_data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(bytes));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_len => {}
            _ => {
                return Err(format!(
                    "truncated: tensor `{name}` needs {bytes} bytes at offset {}, the file has {file_len} bytes",
                    content.tensor_data_offset.saturating_add(info.offset)
                ));
            }
        }
    }
    Ok(())
}
