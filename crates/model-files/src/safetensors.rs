//! Hugging Face checkpoint directories: `config.json` ([`HfConfig`], every field that
//! would change the computation checked) and the `*.safetensors` tensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::{Activation, Architecture, LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result};

/// The tensors of a Hugging Face llama checkpoint directory, taken out one by one.
pub struct SafetensorsDir {
    /// `config.json` as read.
    pub hf: HfConfig,
    /// The validated configuration it describes.
    pub config: LlamaConfig,
    tensors: HashMap<String, Tensor>,
}

impl SafetensorsDir {
    /// Read `config.json` (validated) and every `*.safetensors` file of `dir`.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let (hf, config) = HfConfig::read_raw(dir)?;

        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::MissingTensor {
                name: format!("any *.safetensors file in {}", dir.display()),
            });
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for f in &files {
            tensors.extend(candle_core::safetensors::load(f, device)?);
        }
        Ok(Self { hf, config, tensors })
    }

    /// After every tensor the configuration uses was taken: refuse a checkpoint that
    /// holds more (a bias or norm of another family would otherwise be dropped without
    /// a word). RoPE buffers some exporters save, and an `lm_head.weight` next to tied
    /// embeddings (the tie wins, as in transformers), are ignored.
    pub fn finish(&self) -> Result<()> {
        let mut left: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
            .filter(|k| !(self.hf.tie_word_embeddings && k.as_str() == "lm_head.weight"))
            .collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(name) => Err(ModelError::UnexpectedTensor {
                name: (*name).clone(),
                architecture: self.config.architecture,
                more: left.len() - 1,
            }),
        }
    }

    /// Remove tensor `name`, checking its dtype (f32/f16/bf16) and shape; as f32.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let t =
            self.tensors.remove(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}", t.dtype()),
            });
        }
        if t.dims() != expected {
            return Err(ModelError::BadShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// The `config.json` fields of a Hugging Face checkpoint that the forward uses, in
/// both the classic layout (`rope_theta`, `rope_scaling`) and transformers 5's
/// (`rope_parameters`). Every field that would change the computation and is not
/// implemented is checked and refused by [`HfConfig::to_config`].
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    max_position_embeddings: usize,
    /// As written; absent means the family's default (tied for Gemma only).
    #[serde(default, rename = "tie_word_embeddings")]
    tie: Option<bool>,
    /// The input and output embeddings are one matrix (resolved by [`Self::read_raw`]).
    #[serde(skip)]
    pub tie_word_embeddings: bool,
    /// `llama` (or absent, for old checkpoints), `mistral`, `qwen2`, `qwen3`, `phi3`,
    /// `gemma2`, `gemma3_text`.
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    /// Gemma's name for `hidden_act`.
    #[serde(default)]
    hidden_activation: Option<String>,
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    /// Gemma's soft-capping: absent means the family's default, `null` none.
    #[serde(default, deserialize_with = "present")]
    attn_logit_softcapping: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    final_logit_softcapping: Option<serde_json::Value>,
    /// Gemma 3's RoPE base of the windowed layers (before transformers 5).
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    /// Gemma 3: every `n`-th layer is global (before transformers 5's `layer_types`).
    #[serde(default)]
    sliding_window_pattern: Option<usize>,
    #[serde(default)]
    use_bidirectional_attention: Option<bool>,
}

/// A field that is present, `null` included (`Some(Value::Null)`); absent stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<serde_json::Value>, D::Error> {
    <serde_json::Value as serde::Deserialize>::deserialize(d).map(Some)
}

impl HfConfig {
    /// `dir/config.json`, parsed and turned into a validated [`LlamaConfig`].
    pub fn read(dir: &Path) -> Result<LlamaConfig> {
        Ok(Self::read_raw(dir)?.1)
    }

    /// The parsed file and its validated configuration.
    pub fn read_raw(dir: &Path) -> Result<(Self, LlamaConfig)> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|source| ModelError::Io { path: config_path.clone(), source })?;
        let mut hf: Self =
            serde_json::from_str(&text).map_err(|e| ModelError::metadata("config.json", e.to_string()))?;
        let config = hf.to_config()?;
        hf.tie_word_embeddings = hf.tie.unwrap_or(config.architecture.norm_weights_offset());
        config.validate()?;
        Ok((hf, config))
    }

    /// The [`LlamaConfig`] this file describes, or a typed error naming the first key
    /// whose setting is not implemented (not yet [`LlamaConfig::validate`]d).
    pub fn to_config(&self) -> Result<LlamaConfig> {
        let model_type = self.model_type.as_deref().unwrap_or("llama");
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "phi3" => Architecture::Phi3,
            "gemma2" => Architecture::Gemma2,
            "gemma3_text" => Architecture::Gemma3,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let gemma = architecture.norm_weights_offset();
        let hidden_act = self.activation(gemma)?;
        if self.use_bidirectional_attention == Some(true) {
            return Err(ModelError::metadata(
                "use_bidirectional_attention",
                "true (an encoder) is not supported",
            ));
        }
        if self.mlp_bias == Some(true) {
            return Err(ModelError::metadata("mlp_bias", "MLP biases are not supported"));
        }
        // Qwen2 always has q/k/v biases (and no `attention_bias` key); elsewhere the key
        // would also put a bias on the output projection, which is not implemented.
        let attention_bias = architecture == Architecture::Qwen2;
        if !attention_bias && self.attention_bias == Some(true) {
            return Err(ModelError::metadata(
                "attention_bias",
                format!("true is not supported for `{model_type}`"),
            ));
        }
        if let Some(f) = self.partial_rotary_factor.filter(|&f| f != 1.0) {
            return Err(ModelError::metadata(
                "partial_rotary_factor",
                format!("{f} is not supported (only full rotary)"),
            ));
        }
        let (sliding_window, sliding_layers) = self.attention_window(architecture)?;
        let (rope_theta, rope_scaling, rope_local_theta) = self.rope(architecture)?;
        if self.num_attention_heads == 0 {
            return Err(ModelError::metadata("num_attention_heads", "zero"));
        }
        // Gemma's class defaults where the file leaves a key out (transformers writes
        // only what differs from them): softcaps 50 / 30 for Gemma 2, none for Gemma 3.
        let softcap = |key: &'static str, value: &Option<serde_json::Value>, default: Option<f64>| match value
        {
            None => Ok(default),
            Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| ModelError::metadata(key, "not a number")),
        };
        let (attn_default, final_default) =
            if architecture == Architecture::Gemma2 { (Some(50.0), Some(30.0)) } else { (None, None) };
        let attn_logit_softcap =
            softcap("attn_logit_softcapping", &self.attn_logit_softcapping, attn_default)?;
        let final_logit_softcap =
            softcap("final_logit_softcapping", &self.final_logit_softcapping, final_default)?;
        if !gemma && let Some(c) = attn_logit_softcap.or(final_logit_softcap).or(self.query_pre_attn_scalar) {
            return Err(ModelError::metadata(
                "attn_logit_softcapping",
                format!("{c}: Gemma's scoring keys are supported for gemma2 and gemma3_text only"),
            ));
        }
        let attention_scale = gemma.then(|| 1.0 / self.query_pre_attn_scalar.unwrap_or(256.0).sqrt());
        Ok(LlamaConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads),
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            max_context: self.max_position_embeddings,
            rope_interleaved: false,
            architecture,
            rope_scaling,
            attention_bias,
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            sliding_window,
            sliding_layers,
            rope_local_theta,
            hidden_act,
            embedding_scale: gemma.then(|| (self.hidden_size as f64).sqrt()),
            attention_scale,
            attn_logit_softcap,
            final_logit_softcap,
            sandwich_norms: gemma,
        })
    }

    /// `hidden_act` (or Gemma's `hidden_activation`): `silu`, or for Gemma
    /// `gelu_pytorch_tanh` (its default).
    fn activation(&self, gemma: bool) -> Result<Activation> {
        let (key, act) = match (&self.hidden_activation, &self.hidden_act) {
            (Some(a), _) => ("hidden_activation", Some(a.as_str())),
            (None, a) => ("hidden_act", a.as_deref()),
        };
        match (gemma, act) {
            (false, None | Some("silu")) => Ok(Activation::Silu),
            (true, None | Some("gelu_pytorch_tanh")) => Ok(Activation::GeluTanh),
            (_, Some(other)) => Err(ModelError::metadata(
                key,
                format!(
                    "`{other}` is not supported (only `{}` for this family)",
                    if gemma { "gelu_pytorch_tanh" } else { "silu" }
                ),
            )),
        }
    }

    /// The sliding window every layer uses: Mistral's and Phi-3's `sliding_window`;
    /// Qwen's `use_sliding_window` applies it to some layers only, which is refused, as
    /// is any `layer_types` entry other than full attention outside Mistral.
    fn attention_window(&self, architecture: Architecture) -> Result<(Option<usize>, Option<Vec<bool>>)> {
        if architecture.norm_weights_offset() {
            return self.gemma_window(architecture);
        }
        let window = match architecture {
            Architecture::Mistral | Architecture::Phi3 => self.sliding_window,
            _ if self.use_sliding_window == Some(true) => {
                return Err(ModelError::metadata(
                    "use_sliding_window",
                    "true (a window on some layers only) is not supported",
                ));
            }
            _ => None,
        };
        let expected = if window.is_some() { "sliding_attention" } else { "full_attention" };
        if let Some(t) = self.layer_types.iter().flatten().find(|&t| t != expected) {
            return Err(ModelError::metadata(
                "layer_types",
                format!("`{t}` is not supported for this config (every layer must be `{expected}`)"),
            ));
        }
        Ok((window, None))
    }

    /// Gemma's alternating layers: `layer_types` when written (transformers ≥ 4.5x),
    /// else the family's pattern (Gemma 2: every other layer from the first; Gemma 3:
    /// `sliding_window_pattern`, default 6, the last of each group global), over a
    /// window of `sliding_window` positions (default 4,096).
    fn gemma_window(&self, architecture: Architecture) -> Result<(Option<usize>, Option<Vec<bool>>)> {
        let n = self.num_hidden_layers;
        let layers = match &self.layer_types {
            Some(types) => {
                if types.len() != n {
                    return Err(ModelError::metadata(
                        "layer_types",
                        format!("{} entries for {n} layers", types.len()),
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(ModelError::metadata(
                            "layer_types",
                            format!("`{other}` is not supported (sliding_attention, full_attention)"),
                        )),
                    })
                    .collect::<Result<Vec<bool>>>()?
            }
            None => {
                let p = match architecture {
                    Architecture::Gemma2 => 2,
                    _ => self.sliding_window_pattern.unwrap_or(6),
                };
                if p == 0 {
                    return Err(ModelError::metadata("sliding_window_pattern", "zero"));
                }
                (0..n).map(|i| (i + 1) % p != 0).collect()
            }
        };
        Ok((Some(self.sliding_window.unwrap_or(4096)), Some(layers)))
    }

    /// `rope_theta` and the scaling, from `rope_parameters` (transformers ≥ 5) or
    /// `rope_theta` + `rope_scaling`.
    ///
    /// Gemma 3 also returns the windowed layers' base: `rope_parameters.sliding_attention`
    /// (transformers ≥ 5, which splits the parameters by layer type) or
    /// `rope_local_base_freq` (default 10,000); its global layers default to 10⁶.
    fn rope(&self, architecture: Architecture) -> Result<(f64, RopeScaling, Option<f64>)> {
        let (params, key) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) if !p.is_null() => (Some(p), "rope_parameters"),
            (_, Some(s)) if !s.is_null() => (Some(s), "rope_scaling"),
            _ => (None, "rope_scaling"),
        };
        if architecture != Architecture::Gemma3 {
            if let Some(f) = self.rope_local_base_freq {
                return Err(ModelError::metadata(
                    "rope_local_base_freq",
                    format!("{f}: a RoPE base per layer type is supported for gemma3_text only"),
                ));
            }
            let (theta, scaling) = Self::rope_set(params, key, self.rope_theta.unwrap_or(10_000.0))?;
            return Ok((theta, scaling, None));
        }
        let global_default = self.rope_theta.unwrap_or(1_000_000.0);
        let local_default = self.rope_local_base_freq.unwrap_or(10_000.0);
        let by_type =
            params.filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
        let ((theta, scaling), (local, local_scaling)) = match by_type {
            Some(p) => (
                Self::rope_set(p.get("full_attention"), "rope_parameters.full_attention", global_default)?,
                Self::rope_set(
                    p.get("sliding_attention"),
                    "rope_parameters.sliding_attention",
                    local_default,
                )?,
            ),
            None => (Self::rope_set(params, key, global_default)?, (local_default, RopeScaling::None)),
        };
        if local_scaling != RopeScaling::None {
            return Err(ModelError::metadata(
                "rope_parameters.sliding_attention.rope_type",
                "scaling the windowed layers' RoPE is not supported",
            ));
        }
        Ok((theta, scaling, Some(local)))
    }

    /// One set of RoPE parameters (`rope_theta`, `rope_type` and its fields) from the
    /// object `params` named `key`; `theta` when it has no `rope_theta`.
    fn rope_set(params: Option<&serde_json::Value>, key: &str, theta: f64) -> Result<(f64, RopeScaling)> {
        let params = params.filter(|p| !p.is_null());
        let field = |name: &str| params.and_then(|p| p.get(name)).filter(|v| !v.is_null());
        let number = |name: &str| -> Result<f64> {
            field(name)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| ModelError::metadata(format!("{key}.{name}"), "absent or not a number"))
        };
        if let Some(f) =
            field("partial_rotary_factor").and_then(serde_json::Value::as_f64).filter(|&f| f != 1.0)
        {
            return Err(ModelError::metadata(
                format!("{key}.partial_rotary_factor"),
                format!("{f} is not supported (only full rotary)"),
            ));
        }
        let theta = match field("rope_theta") {
            Some(_) => number("rope_theta")?,
            None => theta,
        };
        let kind = field("rope_type").or_else(|| field("type")).map(|v| v.as_str().unwrap_or("?"));
        let scaling = match kind {
            None | Some("default") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear { factor: number("factor")? },
            Some("llama3") => {
                let original = number("original_max_position_embeddings")?;
                RopeScaling::Llama3 {
                    factor: number("factor")?,
                    low_freq_factor: number("low_freq_factor")?,
                    high_freq_factor: number("high_freq_factor")?,
                    original_max_position: if original.fract() == 0.0 && original > 0.0 {
                        original as usize
                    } else {
                        0
                    },
                }
            }
            Some(other) => {
                return Err(ModelError::metadata(
                    format!("{key}.rope_type"),
                    format!("`{other}` is not supported (default, linear, llama3)"),
                ));
            }
        };
        Ok((theta, scaling))
    }
}
