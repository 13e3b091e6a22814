//! The llama-architecture forward pass: embeddings → `n_layers` × (RMSNorm →
//! grouped-query attention with RoPE → residual → RMSNorm → SwiGLU MLP → residual) →
//! RMSNorm → output projection.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use perpetua_kv_cache::KvCache;

use crate::attention;
use crate::cache::{KvView, LlamaCache};
use crate::error::{CandleBackendError, Result};

/// The model families this backend runs: the llama block with the variations each
/// family adds (all are switched by explicit [`LlamaConfig`] fields, this names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Architecture {
    /// Llama 1/2/3, SmolLM2, TinyLlama: the plain block (optionally with RoPE scaling).
    #[default]
    Llama,
    /// Mistral: llama with an optional sliding attention window.
    Mistral,
    /// Qwen2 / Qwen2.5: llama with q/k/v biases.
    Qwen2,
    /// Qwen3: llama with a per-head RMSNorm of queries and keys before RoPE.
    Qwen3,
    /// Phi-3: llama with q/k/v and gate/up each stored as one fused matrix, and an
    /// optional sliding window.
    Phi3,
    /// Gemma 2: embeddings scaled by `√hidden_size`, RMSNorm weights stored as an offset
    /// from one, a norm after attention and after the MLP too, GeGLU (tanh GELU),
    /// attention-logit and final-logit soft-capping, a sliding window on alternate
    /// layers, queries scaled by `query_pre_attn_scalar^-½`.
    Gemma2,
    /// Gemma 3 (text, Hugging Face's `gemma3_text`): Gemma 2's block with a per-head
    /// q/k RMSNorm instead of attention soft-capping, five sliding-window layers to one
    /// global layer, and the windowed layers rotating with their own RoPE base.
    Gemma3,
}

impl Architecture {
    /// The name Hugging Face's `model_type` and GGUF's `general.architecture` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Gemma stores RMSNorm weights as `w − 1` (its norm multiplies by `1 + w`);
    /// safetensors loaders add the one back (llama.cpp's converter already did in GGUF).
    fn norm_weights_offset(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }
}

/// The gate activation of the gated MLP, `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Activation {
    /// SwiGLU, `silu(x) = x · σ(x)`: llama, Mistral, Qwen, Phi-3.
    #[default]
    Silu,
    /// GeGLU with GELU's tanh approximation (`gelu_pytorch_tanh`): Gemma.
    GeluTanh,
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How RoPE frequencies are rescaled for a longer context than the model was
/// pre-trained on. Each variant changes the per-dimension frequency `θ_i` only (none
/// of these rescales the attention logits), as Hugging Face's `rope_scaling` does.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum RopeScaling {
    /// Plain RoPE.
    #[default]
    None,
    /// Position interpolation (`rope_type = "linear"`): `θ_i / factor`.
    Linear {
        /// The divisor, `> 0`.
        factor: f64,
    },
    /// Llama 3.1's (`rope_type = "llama3"`): with wavelength `λ_i = 2π/θ_i` and
    /// `L = original_max_position`, frequencies with `λ_i < L/high_freq_factor` are
    /// kept, those with `λ_i > L/low_freq_factor` divided by `factor`, and the band
    /// between interpolated smoothly: `(1 − s)·θ_i/factor + s·θ_i`,
    /// `s = (L/λ_i − low_freq_factor) / (high_freq_factor − low_freq_factor)`.
    Llama3 {
        /// Divisor of the low frequencies, `> 0`.
        factor: f64,
        /// Lower edge of the smoothed band, `> 0`.
        low_freq_factor: f64,
        /// Upper edge of the smoothed band, `> low_freq_factor`.
        high_freq_factor: f64,
        /// The pre-training context `L`, `> 0`.
        original_max_position: usize,
    },
    /// One divisor per frequency, `θ_i / factors[i]` (`head_dim / 2` values, each
    /// `> 0`): GGUF's `rope_freqs.weight`, in which llama.cpp's converter stores Llama
    /// 3.1's scaling.
    Factors(Vec<f32>),
}

impl RopeScaling {
    /// The frequencies `θ_i` after scaling, computed in f32 as Hugging Face does.
    fn apply(&self, inv_freq: &mut [f32]) {
        match *self {
            Self::None => {}
            Self::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor as f32),
            Self::Factors(ref factors) => inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d),
            Self::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                let (factor, low, high) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32);
                let old = original_max_position as f32;
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(CandleBackendError::invalid(name, v, "must be finite and positive"))
            }
        };
        match *self {
            Self::None => Ok(()),
            Self::Linear { factor } => positive("rope_scaling.factor", factor),
            Self::Factors(ref factors) => match factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                Some(&bad) => {
                    Err(CandleBackendError::invalid("rope_freqs.weight", bad, "must be finite and positive"))
                }
                None => Ok(()),
            },
            Self::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                positive("rope_scaling.factor", factor)?;
                positive("rope_scaling.low_freq_factor", low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(CandleBackendError::invalid(
                        "rope_scaling.high_freq_factor",
                        high_freq_factor,
                        "must exceed low_freq_factor",
                    ));
                }
                if original_max_position == 0 {
                    return Err(CandleBackendError::invalid(
                        "rope_scaling.original_max_position_embeddings",
                        0,
                        "must be positive",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Hyper-parameters of a llama-family model.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LlamaConfig {
    /// Width of the residual stream (`n_embd`).
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (`n_heads` must be a multiple: grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head (`hidden_size / n_heads` for llama).
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// RMSNorm epsilon: `y = x / sqrt(mean(x²) + eps) · w`.
    pub rms_norm_eps: f64,
    /// RoPE base: `θ_i = base^(−2i/head_dim)`.
    pub rope_theta: f64,
    /// Longest context (positions) the model was trained for; the RoPE table covers it.
    pub max_context: usize,
    /// RoPE pairing: `true` pairs dimensions `(2i, 2i+1)` (GGUF llama, whose q/k rows are
    /// permuted by the converter), `false` pairs `(i, i + d/2)` (Hugging Face checkpoints).
    pub rope_interleaved: bool,
    /// The family ([`Architecture`]); the fields below are what it switches on.
    pub architecture: Architecture,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Queries, keys and values have biases (Qwen2).
    pub attention_bias: bool,
    /// Queries and keys go through a per-head RMSNorm (weights of `head_dim`) before
    /// RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Each position attends to at most this many positions, itself included
    /// (Mistral's sliding window); `None`: the whole context.
    pub sliding_window: Option<usize>,
    /// Which layers use [`sliding_window`](Self::sliding_window) (`n_layers` flags;
    /// Gemma alternates windowed and global layers). `None`: every layer.
    pub sliding_layers: Option<Vec<bool>>,
    /// RoPE base of the sliding-window layers, which rotate without
    /// [`rope_scaling`](Self::rope_scaling) (Gemma 3's `rope_local_base_freq`). `None`:
    /// every layer uses [`rope_theta`](Self::rope_theta) and the scaling.
    pub rope_local_theta: Option<f64>,
    /// The MLP's gate activation.
    pub hidden_act: Activation,
    /// Embeddings are multiplied by this before the first layer (Gemma: `√hidden_size`).
    pub embedding_scale: Option<f64>,
    /// Multiplier of `q·k` in attention; `None`: `1/√head_dim` (Gemma:
    /// `query_pre_attn_scalar^-½`).
    pub attention_scale: Option<f64>,
    /// Attention scores become `cap · tanh(score / cap)` (Gemma 2).
    pub attn_logit_softcap: Option<f64>,
    /// Logits become `cap · tanh(logit / cap)` (Gemma 2).
    pub final_logit_softcap: Option<f64>,
    /// A norm on the attention output and on the MLP output before each residual add
    /// (Gemma's `post_attention_layernorm` / `post_feedforward_layernorm`).
    pub sandwich_norms: bool,
}

/// The longest context a configuration may declare (2,097,152 positions; the RoPE
/// tables for it take `max_context × head_dim × 4` bytes, 1 GiB at head_dim 128).
pub const MAX_CONTEXT: usize = 1 << 21;

impl LlamaConfig {
    /// Row-major `(max_context, head_dim/2)` tables `cos(p·θ_i)`, `sin(p·θ_i)` with
    /// `θ_i = base^(−2i/head_dim)`, over the model's whole context (candle-transformers
    /// stops its table at 4,096).
    ///
    /// Computed in f32 exactly as candle-transformers and Hugging Face do (`θ_i` in f32,
    /// `p·θ_i` one f32 product, f32 `cos`/`sin`): this quantized model is sensitive enough
    /// that a one-ulp different table (say from f64) moves logits by up to ~0.6 through
    /// flipped activation-quantization roundings, which would break parity with the
    /// reference implementations.
    ///
    /// Shared by every backend (the burn backend rotates by the same angles).
    pub fn rope_tables(&self) -> (Vec<f32>, Vec<f32>) {
        self.rope_tables_for(self.rope_theta, &self.rope_scaling)
    }

    /// The tables of the sliding-window layers when they rotate with their own base
    /// ([`rope_local_theta`](Self::rope_local_theta), unscaled), as [`Self::rope_tables`].
    pub fn local_rope_tables(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        self.rope_local_theta.map(|theta| self.rope_tables_for(theta, &RopeScaling::None))
    }

    /// Whether layer `layer` attends through the sliding window.
    pub fn is_sliding_layer(&self, layer: usize) -> bool {
        self.sliding_window.is_some()
            && self.sliding_layers.as_ref().is_none_or(|l| l.get(layer).copied().unwrap_or(false))
    }

    /// The multiplier of `q·k`: [`attention_scale`](Self::attention_scale) or `1/√head_dim`.
    pub fn query_scale(&self) -> f64 {
        self.attention_scale.unwrap_or_else(|| 1.0 / (self.head_dim as f64).sqrt())
    }

    fn rope_tables_for(&self, theta: f64, scaling: &RopeScaling) -> (Vec<f32>, Vec<f32>) {
        let base = theta as f32;
        let mut inv_freq: Vec<f32> = (0..self.head_dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / self.head_dim as f32))
            .collect();
        scaling.apply(&mut inv_freq);
        let mut cos = Vec::with_capacity(self.max_context * inv_freq.len());
        let mut sin = Vec::with_capacity(self.max_context * inv_freq.len());
        for p in 0..self.max_context {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        (cos, sin)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_context", self.max_context),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(CandleBackendError::invalid(name, value, "must be positive"));
            }
        }
        // Upper bounds: a header is not trusted to size allocations (the RoPE tables hold
        // max_context × head_dim floats, the layer list n_layers entries) before the
        // tensors that would justify them are read.
        let bounded = [
            ("max_context", self.max_context, MAX_CONTEXT, "must be at most 2^21 positions"),
            ("n_layers", self.n_layers, 4096, "must be at most 4096"),
            ("n_heads", self.n_heads, 4096, "must be at most 4096"),
            ("head_dim", self.head_dim, 4096, "must be at most 4096"),
        ];
        for (name, value, max, reason) in bounded {
            if value > max {
                return Err(CandleBackendError::invalid(name, value, reason));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(CandleBackendError::invalid("n_kv_heads", self.n_kv_heads, "must divide n_heads"));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(CandleBackendError::invalid("head_dim", self.head_dim, "must be even"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(CandleBackendError::invalid(
                "rope_theta",
                self.rope_theta,
                "must be finite and positive",
            ));
        }
        if let RopeScaling::Factors(f) = &self.rope_scaling
            && f.len() != self.head_dim / 2
        {
            return Err(CandleBackendError::invalid(
                "rope_freqs.weight length",
                f.len(),
                "must be head_dim / 2",
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(CandleBackendError::invalid("sliding_window", 0, "must be positive"));
        }
        if let Some(layers) = &self.sliding_layers
            && layers.len() != self.n_layers
        {
            return Err(CandleBackendError::invalid("sliding layers", layers.len(), "must be one per layer"));
        }
        if self.rope_local_theta.is_some() && self.sliding_window.is_none() {
            return Err(CandleBackendError::invalid(
                "rope_local_base_freq",
                self.rope_local_theta.unwrap_or_default(),
                "needs a sliding window",
            ));
        }
        let positive = [
            ("rope_local_base_freq", self.rope_local_theta),
            ("embedding scale", self.embedding_scale),
            ("attention scale", self.attention_scale),
            ("attn_logit_softcapping", self.attn_logit_softcap),
            ("final_logit_softcapping", self.final_logit_softcap),
        ];
        for (name, value) in positive {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0)
            {
                return Err(CandleBackendError::invalid(name, v, "must be finite and positive"));
            }
        }
        self.rope_scaling.validate()
    }
}

/// How a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Device the weights and caches live on (default: CPU).
    pub device: Device,
    /// Capacity of caches made by [`LanguageModel::new_cache`](perpetua_generator::LanguageModel::new_cache)
    /// (default: the model's context length). At most the model's context.
    pub cache_capacity: Option<usize>,
    /// Re-quantize every block-quantized matrix (Q4_0, Q4_1, Q4_K, Q6_K, …; never
    /// F32/F16/BF16) to this type at load. `None` keeps the file's types bit for bit.
    ///
    /// Default: `Some(Q8_0)`. candle's Q8_0 kernels are the fastest it has on CPUs
    /// without AVX2 (Q4_1 has no SIMD path at all), and re-quantizing a ≤ 6-bit weight
    /// to 8 bits per weight adds at most half a Q8_0 step of rounding: measured on
    /// SmolLM2 Q4_1, 1.81× decode and 2.6× prefill (docs/PERFORMANCE.md). Use
    /// [`LoadOptions::exact`] for bit-parity with other runtimes on the same file.
    pub requantize: Option<GgmlDType>,
    /// The attention kernel (default: [`Attention::Fused`]).
    pub attention: Attention,
    /// Element type of the KV cache (default: [`KvDtype::F16`]).
    pub kv_dtype: KvDtype,
}

/// Element type the KV cache stores keys and values in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KvDtype {
    /// IEEE half precision: half the memory and half the bytes read per decode step,
    /// which is what decode at long context is bound by (measured in
    /// docs/PERFORMANCE.md). Keys and values are rounded to 11 significant bits as
    /// they are written (relative error ≤ 2⁻¹¹, the precision llama.cpp's default
    /// cache also keeps); attention itself still computes in f32.
    #[default]
    F16,
    /// f32: the values exactly as computed. [`LoadOptions::exact`] uses it (bit parity
    /// with candle-transformers).
    F32,
    /// 8-bit codes with one f32 scale per cached row (the `head_dim` values of one
    /// position and KV head): `max |x| / 127`, codes `round(x / scale)`. 68 bytes per
    /// row of 64 instead of 128 in f16, so decode at long context reads 1.9× fewer
    /// bytes; each value is off by at most half a step (`max |x| / 254` of its row).
    /// CPU only (loading with another device is an error). A memory option: on the
    /// machine of docs/PERFORMANCE.md it decodes at 0.90× the f16 cache at 4,000
    /// positions (the conversion costs more than the bytes saved); its logit cost is
    /// measured there too.
    Q8,
}

impl KvDtype {
    fn dtype(self) -> DType {
        match self {
            Self::F16 => DType::F16,
            Self::F32 => DType::F32,
            Self::Q8 => DType::U8,
        }
    }
}

/// Which attention implementation the forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Attention {
    /// On the CPU, a fused grouped-query kernel that reads each cached key/value row
    /// once per KV head instead of once per query head (2.9× fewer bytes for
    /// SmolLM2's 9:3 heads): decode at long context is bound by those reads. Its sums
    /// run in another order than candle's matmuls, so logits differ from
    /// candle-transformers by float rounding. On other devices it falls back to
    /// [`Attention::Reference`].
    #[default]
    Fused,
    /// candle matmuls, one query head at a time: bit-identical to candle-transformers'
    /// `quantized_llama` (which repeats K/V per query head).
    Reference,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            cache_capacity: None,
            requantize: Some(GgmlDType::Q8_0),
            attention: Attention::Fused,
            kv_dtype: KvDtype::F16,
        }
    }
}

impl LoadOptions {
    /// The file's weight types bit for bit (no re-quantization), an f32 KV cache and
    /// the reference attention, on the CPU: logits then equal candle-transformers'
    /// `quantized_llama` on the same file exactly.
    pub fn exact() -> Self {
        Self { requantize: None, attention: Attention::Reference, kv_dtype: KvDtype::F32, ..Self::default() }
    }
}

struct Layer {
    attn_norm: Tensor,
    /// `[W_q; W_k; W_v]`.
    qkv: Fused,
    /// Biases of the query, key and value projections ([`LlamaConfig::attention_bias`]).
    qkv_bias: Option<[Tensor; 3]>,
    /// Per-head RMSNorm weights of queries and keys ([`LlamaConfig::qk_norm`]).
    qk_norm: Option<[Tensor; 2]>,
    wo: QMatMul,
    ffn_norm: Tensor,
    /// `[W_gate; W_up]`.
    gate_up: Fused,
    w_down: QMatMul,
    /// Norms of the attention output and of the MLP output before their residual adds
    /// ([`LlamaConfig::sandwich_norms`]).
    post_norms: Option<[Tensor; 2]>,
}

/// Linear maps of one input. Quantized weights of one dtype are stacked row-wise into
/// a single matmul: each output element is the same dot product of the same quantized
/// activation row either way, so stacking is exact (bit for bit) and saves a weight
/// pass setup, an activation quantization and a thread-pool dispatch per map.
struct Fused {
    /// Matmuls and the output widths each one yields, in order.
    parts: Vec<(QMatMul, Vec<usize>)>,
}

impl Fused {
    /// One matmul per map.
    fn separate(maps: Vec<(QMatMul, usize)>) -> Self {
        Self { parts: maps.into_iter().map(|(m, w)| (m, vec![w])).collect() }
    }

    /// Stack `(rows_i, cols)` weights into one `(Σ rows_i, cols)` matmul when they share
    /// a quantized dtype and whole blocks per row; otherwise one matmul each.
    fn stack(weights: Vec<QTensor>, device: &Device) -> Result<Self> {
        let dims: Vec<(usize, usize)> =
            weights.iter().map(|w| w.shape().dims2()).collect::<candle_core::Result<_>>()?;
        let dtype = weights.first().map(QTensor::dtype);
        let stackable = dtype.is_some_and(|d| {
            !matches!(d, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
                && weights.iter().all(|w| w.dtype() == d)
                && dims.iter().all(|&(_, c)| c == dims[0].1 && c % d.block_size() == 0)
        });
        match dtype {
            Some(dtype) if stackable && weights.len() > 1 => {
                let mut bytes = Vec::new();
                for w in &weights {
                    bytes.extend_from_slice(&w.data()?);
                }
                let rows = dims.iter().map(|d| d.0).sum();
                let stacked = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    &bytes,
                    vec![rows, dims[0].1],
                    device,
                )?;
                let widths = dims.iter().map(|d| d.0).collect();
                Ok(Self { parts: vec![(QMatMul::from_arc(Arc::new(stacked))?, widths)] })
            }
            _ => Ok(Self::separate(
                weights
                    .into_iter()
                    .zip(&dims)
                    .map(|(w, d)| Ok((QMatMul::from_arc(Arc::new(w))?, d.0)))
                    .collect::<Result<_>>()?,
            )),
        }
    }

    /// The `N` outputs `x·W_iᵀ` (views into the stacked output when fused).
    fn forward<const N: usize>(&self, x: &Tensor) -> Result<[Tensor; N]> {
        self.forward_with(x, linear)
    }

    /// As [`Self::forward`], each matrix applied with `linear`.
    fn forward_with<const N: usize>(
        &self,
        x: &Tensor,
        linear: impl Fn(&QMatMul, &Tensor) -> Result<Tensor>,
    ) -> Result<[Tensor; N]> {
        let mut out = Vec::with_capacity(N);
        for (m, widths) in &self.parts {
            let y = linear(m, x)?;
            if let [_] = widths.as_slice() {
                out.push(y);
                continue;
            }
            let mut start = 0;
            for &w in widths {
                out.push(y.narrow(candle_core::D::Minus1, start, w)?);
                start += w;
            }
        }
        let got = out.len();
        out.try_into().map_err(|_| {
            CandleBackendError::invalid("fused projection outputs", got, "differs from the maps requested")
        })
    }
}

/// A llama-family causal language model on candle, from GGUF or safetensors.
///
/// Weights are immutable after loading; every sequence has its own [`LlamaCache`].
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    embeddings: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
    output: QMatMul,
    /// `(max_context, head_dim / 2)` tables of `cos(p·θ_i)` and `sin(p·θ_i)`.
    rope_cos: Tensor,
    rope_sin: Tensor,
    /// The sliding-window layers' own tables ([`LlamaConfig::rope_local_theta`]).
    rope_local: Option<(Tensor, Tensor)>,
    cache_capacity: usize,
    /// [`Attention::Fused`] on a CPU device.
    fused_attention: bool,
    /// Element type of the caches this model makes.
    kv_dtype: DType,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .field("device", &self.device)
            .field("cache_capacity", &self.cache_capacity)
            .finish_non_exhaustive()
    }
}

fn ggml_dtype_supported(dtype: GgmlDType) -> bool {
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
pub(crate) struct GgufReader {
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
    pub(crate) fn open(path: &Path, device: &Device) -> Result<Self> {
        let (content, reader) = read_gguf(path)?;
        Ok(Self { content, reader, device: device.clone(), taken: Default::default() })
    }

    /// The hyper-parameters from the metadata (`{arch}.*` keys), validated.
    /// `general.architecture` may be `llama`, `qwen2`, `qwen3` or `phi3` (llama.cpp writes
    /// Mistral checkpoints as `llama`, without their window, and so runs them).
    pub(crate) fn llama_config(&mut self) -> Result<LlamaConfig> {
        let arch = self
            .metadata("general.architecture")?
            .to_string()
            .map_err(|e| CandleBackendError::metadata("general.architecture", e.to_string()))?
            .clone();
        let architecture = match arch.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "phi3" => Architecture::Phi3,
            "gemma2" => Architecture::Gemma2,
            "gemma3" => Architecture::Gemma3,
            _ => return Err(CandleBackendError::UnsupportedArchitecture(arch)),
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
            return Err(CandleBackendError::metadata(key("attention.head_count"), "zero"));
        }
        // Qwen3 writes its head width (which need not be hidden / heads) as key_length.
        let head_dim = match self.metadata_usize(&key("attention.key_length")) {
            Ok(d) => d,
            Err(_) => hidden_size / n_heads,
        };
        if let Ok(v) = self.metadata_usize(&key("attention.value_length"))
            && v != head_dim
        {
            return Err(CandleBackendError::metadata(
                key("attention.value_length"),
                format!("{v} differs from the key width {head_dim}"),
            ));
        }
        if let Ok(rope_dim) = self.metadata_usize(&key("rope.dimension_count"))
            && rope_dim != head_dim
        {
            return Err(CandleBackendError::metadata(
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
            return Err(CandleBackendError::metadata(key("rope.scaling.attn_factor"), "is not supported"));
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
                    return Err(CandleBackendError::metadata(key(k), format!("is not supported for {arch}")));
                }
                GemmaSettings::default()
            }
        };
        let vocab_size = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => return Err(CandleBackendError::MissingTensor { name: "token_embd.weight".into() }),
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
            let kind =
                v.to_string().map_err(|e| CandleBackendError::metadata(&kind_key, e.to_string()))?.clone();
            match kind.as_str() {
                "none" => {}
                "linear" => {
                    scaling = RopeScaling::Linear { factor: self.metadata_f64(&key("rope.scaling.factor"))? }
                }
                _ => {
                    return Err(CandleBackendError::metadata(
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
                    return Err(CandleBackendError::metadata(&legacy, "given next to rope.scaling.type"));
                }
                scaling = RopeScaling::Linear { factor };
            }
        }
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            if scaling != RopeScaling::None {
                return Err(CandleBackendError::metadata(
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
                    .map_err(|e| CandleBackendError::metadata(&pattern_key, e.to_string()))?;
                if flags.len() != n_layers {
                    return Err(CandleBackendError::metadata(
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
                    return Err(CandleBackendError::metadata(
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
                    return Err(CandleBackendError::metadata(
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
    pub(crate) fn finish(&self, architecture: Architecture) -> Result<()> {
        let mut left: Vec<&String> =
            self.content.tensor_infos.keys().filter(|k| !self.taken.contains(*k)).collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(name) => Err(CandleBackendError::UnexpectedTensor {
                name: (*name).clone(),
                architecture,
                more: left.len() - 1,
            }),
        }
    }

    pub(crate) fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| CandleBackendError::MissingTensor { name: name.to_string() })?;
        if !ggml_dtype_supported(info.ggml_dtype) {
            return Err(CandleBackendError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}", info.ggml_dtype),
            });
        }
        if info.shape.dims() != expected {
            return Err(CandleBackendError::BadShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: info.shape.dims().to_vec(),
            });
        }
        self.taken.insert(name.to_string());
        Ok(self.content.tensor(&mut self.reader, name, &self.device)?)
    }

    /// Total weights and tensor count per GGML type, from the tensor directory.
    pub(crate) fn inventory(&self) -> (u64, std::collections::BTreeMap<String, usize>) {
        let mut types = std::collections::BTreeMap::new();
        let mut parameters = 0u64;
        for info in self.content.tensor_infos.values() {
            parameters += info.shape.elem_count() as u64;
            *types.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        }
        (parameters, types)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn metadata(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content.metadata.get(key).ok_or_else(|| CandleBackendError::metadata(key, "absent"))
    }

    fn metadata_usize(&self, key: &str) -> Result<usize> {
        let value = self.metadata(key)?;
        let n = value
            .to_u32()
            .map(u64::from)
            .or_else(|_| value.to_u64())
            .map_err(|e| CandleBackendError::metadata(key, e.to_string()))?;
        usize::try_from(n).map_err(|e| CandleBackendError::metadata(key, e.to_string()))
    }

    fn metadata_f64(&self, key: &str) -> Result<f64> {
        let value = self.metadata(key)?;
        value
            .to_f32()
            .map(f64::from)
            .or_else(|_| value.to_f64())
            .map_err(|e| CandleBackendError::metadata(key, e.to_string()))
    }
}

/// Open a GGUF file and parse its header (metadata + tensor directory).
pub(crate) fn read_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>)> {
    let file = File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CandleBackendError::ModelNotFound { path: path.to_path_buf() }
        } else {
            CandleBackendError::Io { path: path.to_path_buf(), source }
        }
    })?;
    let malformed = |reason: String| CandleBackendError::MalformedGguf { path: path.to_path_buf(), reason };
    let file_len =
        file.metadata().map_err(|source| CandleBackendError::Io { path: path.to_path_buf(), source })?.len();
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 4];
    if reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(malformed(format!(
            "not a GGUF file: it starts with {:02x?} ({file_len} bytes), expected the magic `GGUF`",
            &magic[..(file_len.min(4) as usize)]
        )));
    }
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|source| CandleBackendError::Io { path: path.to_path_buf(), source })?;
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
                    Some(code) => {
                        CandleBackendError::UnsupportedTensorType { path: path.to_path_buf(), code }
                    }
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

impl Llama {
    /// Load from a GGUF file, or from a directory holding `config.json` and
    /// `*.safetensors` (Hugging Face layout).
    ///
    /// Errors: [`CandleBackendError::ModelNotFound`] when the path does not exist;
    /// typed errors for malformed files (missing tensor/metadata, bad shapes,
    /// unsupported dtypes).
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_safetensors_dir(path, options)
        } else if path.exists() {
            Self::from_gguf(path, options)
        } else {
            Err(CandleBackendError::ModelNotFound { path: path.to_path_buf() })
        }
    }

    /// Load a llama-architecture GGUF file. Quantized matrices stay quantized
    /// (candle's `QMatMul`); the token embedding is dequantized to f32 for lookup and,
    /// when `output.weight` is absent, reused quantized as the output projection (tied
    /// embeddings).
    pub fn from_gguf(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        if let Some(target) = options.requantize
            && !ggml_dtype_supported(target)
        {
            return Err(CandleBackendError::invalid(
                "requantize",
                format!("{target:?}"),
                "is not a weight type candle can multiply",
            ));
        }
        let mut file = GgufReader::open(path, &options.device)?;
        let config = file.llama_config()?;
        let (h, q_dim, kv_dim, ffn) = (
            config.hidden_size,
            config.n_heads * config.head_dim,
            config.n_kv_heads * config.head_dim,
            config.intermediate_size,
        );
        let device = options.device.clone();
        let requantize = options.requantize;
        let norm = |t: QTensor| -> Result<Tensor> { Ok(t.dequantize(&device)?) };
        let requant = |t: QTensor| -> Result<QTensor> {
            Ok(match requantize {
                Some(target)
                    if t.dtype() != target
                        && !matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) =>
                {
                    QTensor::quantize(&t.dequantize(&device)?, target)?
                }
                _ => t,
            })
        };
        let matmul = |t: QTensor| -> Result<QMatMul> { Ok(QMatMul::from_arc(Arc::new(requant(t)?))?) };

        let embd_q = file.tensor("token_embd.weight", &[config.vocab_size, h])?;
        let embeddings = embd_q.dequantize(&device)?;
        let output = if file.has("output.weight") {
            matmul(file.tensor("output.weight", &[config.vocab_size, h])?)?
        } else {
            matmul(embd_q)?
        };
        let final_norm = norm(file.tensor("output_norm.weight", &[h])?)?;
        let fused_weights = config.architecture == Architecture::Phi3;
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn_norm: norm(file.tensor(&format!("{p}.attn_norm.weight"), &[h])?)?,
                qkv_bias: match config.attention_bias {
                    true => Some([
                        norm(file.tensor(&format!("{p}.attn_q.bias"), &[q_dim])?)?,
                        norm(file.tensor(&format!("{p}.attn_k.bias"), &[kv_dim])?)?,
                        norm(file.tensor(&format!("{p}.attn_v.bias"), &[kv_dim])?)?,
                    ]),
                    false => None,
                },
                qk_norm: match config.qk_norm {
                    true => Some([
                        norm(file.tensor(&format!("{p}.attn_q_norm.weight"), &[config.head_dim])?)?,
                        norm(file.tensor(&format!("{p}.attn_k_norm.weight"), &[config.head_dim])?)?,
                    ]),
                    false => None,
                },
                // Phi-3 files keep q/k/v in one `attn_qkv` and gate/up in one `ffn_up`
                // (gate rows first): one matmul each, its output split.
                qkv: if fused_weights {
                    let w = matmul(file.tensor(&format!("{p}.attn_qkv.weight"), &[q_dim + 2 * kv_dim, h])?)?;
                    Fused { parts: vec![(w, vec![q_dim, kv_dim, kv_dim])] }
                } else {
                    Fused::stack(
                        vec![
                            requant(file.tensor(&format!("{p}.attn_q.weight"), &[q_dim, h])?)?,
                            requant(file.tensor(&format!("{p}.attn_k.weight"), &[kv_dim, h])?)?,
                            requant(file.tensor(&format!("{p}.attn_v.weight"), &[kv_dim, h])?)?,
                        ],
                        &device,
                    )?
                },
                wo: matmul(file.tensor(&format!("{p}.attn_output.weight"), &[h, q_dim])?)?,
                ffn_norm: norm(file.tensor(&format!("{p}.ffn_norm.weight"), &[h])?)?,
                gate_up: if fused_weights {
                    let w = matmul(file.tensor(&format!("{p}.ffn_up.weight"), &[2 * ffn, h])?)?;
                    Fused { parts: vec![(w, vec![ffn, ffn])] }
                } else {
                    Fused::stack(
                        vec![
                            requant(file.tensor(&format!("{p}.ffn_gate.weight"), &[ffn, h])?)?,
                            requant(file.tensor(&format!("{p}.ffn_up.weight"), &[ffn, h])?)?,
                        ],
                        &device,
                    )?
                },
                w_down: matmul(file.tensor(&format!("{p}.ffn_down.weight"), &[h, ffn])?)?,
                post_norms: match config.sandwich_norms {
                    true => Some([
                        norm(file.tensor(&format!("{p}.post_attention_norm.weight"), &[h])?)?,
                        norm(file.tensor(&format!("{p}.post_ffw_norm.weight"), &[h])?)?,
                    ]),
                    false => None,
                },
            });
        }
        file.finish(config.architecture)?;
        Self::assemble(config, options, embeddings, layers, final_norm, output)
    }

    /// Load a Hugging Face llama checkpoint: `config.json` plus one or more
    /// `*.safetensors` files (f32, f16 or bf16; computed in f32).
    pub fn from_safetensors_dir(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let mut st = SafetensorsDir::open(dir.as_ref(), &options.device)?;
        let (hf, config) = (st.hf.clone(), st.config.clone());
        let offset = config.architecture.norm_weights_offset();
        // Norm weights, with Gemma's `1 + w` folded in (the f32 sum HF's norm computes).
        let take_norm = |st: &mut SafetensorsDir, name: &str, expected: &[usize]| -> Result<Tensor> {
            let w = st.take(name, expected)?;
            Ok(if offset { (w + 1.0)? } else { w })
        };
        let final_norm = take_norm(&mut st, "model.norm.weight", &[config.hidden_size])?;
        let mut norms = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("model.layers.{i}");
            let mut get = |name: &str, shape: &[usize]| take_norm(&mut st, &format!("{p}.{name}"), shape);
            let h = [config.hidden_size];
            let d = [config.head_dim];
            // Gemma's `post_attention_layernorm` follows attention; llama's (the same
            // name) precedes the MLP.
            let (attn, ffn, post) = if config.sandwich_norms {
                let attn = get("input_layernorm.weight", &h)?;
                let post_attn = get("post_attention_layernorm.weight", &h)?;
                let ffn = get("pre_feedforward_layernorm.weight", &h)?;
                (attn, ffn, Some([post_attn, get("post_feedforward_layernorm.weight", &h)?]))
            } else {
                (get("input_layernorm.weight", &h)?, get("post_attention_layernorm.weight", &h)?, None)
            };
            let qk = match config.qk_norm {
                true => Some([get("self_attn.q_norm.weight", &d)?, get("self_attn.k_norm.weight", &d)?]),
                false => None,
            };
            norms.push((attn, ffn, post, qk));
        }
        let mut take = |name: &str, expected: &[usize]| st.take(name, expected);
        let (h, q_dim, kv_dim, ffn) = (
            config.hidden_size,
            config.n_heads * config.head_dim,
            config.n_kv_heads * config.head_dim,
            config.intermediate_size,
        );
        let embeddings = take("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let output = if hf.tie_word_embeddings {
            QMatMul::Tensor(embeddings.clone())
        } else {
            QMatMul::Tensor(take("lm_head.weight", &[config.vocab_size, h])?)
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for (i, (attn_norm, ffn_norm, post_norms, qk_norm)) in norms.into_iter().enumerate() {
            let p = format!("model.layers.{i}");
            let mut get = |name: &str, shape: &[usize]| take(&format!("{p}.{name}"), shape);
            let fused_weights = config.architecture == Architecture::Phi3;
            let qkv = if fused_weights {
                let w = get("self_attn.qkv_proj.weight", &[q_dim + 2 * kv_dim, h])?;
                Fused { parts: vec![(QMatMul::Tensor(w), vec![q_dim, kv_dim, kv_dim])] }
            } else {
                Fused::separate(vec![
                    (QMatMul::Tensor(get("self_attn.q_proj.weight", &[q_dim, h])?), q_dim),
                    (QMatMul::Tensor(get("self_attn.k_proj.weight", &[kv_dim, h])?), kv_dim),
                    (QMatMul::Tensor(get("self_attn.v_proj.weight", &[kv_dim, h])?), kv_dim),
                ])
            };
            let qkv_bias = match config.attention_bias {
                true => Some([
                    get("self_attn.q_proj.bias", &[q_dim])?,
                    get("self_attn.k_proj.bias", &[kv_dim])?,
                    get("self_attn.v_proj.bias", &[kv_dim])?,
                ]),
                false => None,
            };
            layers.push(Layer {
                qkv,
                qkv_bias,
                qk_norm,
                wo: QMatMul::Tensor(get("self_attn.o_proj.weight", &[h, q_dim])?),
                gate_up: if fused_weights {
                    let w = get("mlp.gate_up_proj.weight", &[2 * ffn, h])?;
                    Fused { parts: vec![(QMatMul::Tensor(w), vec![ffn, ffn])] }
                } else {
                    Fused::separate(vec![
                        (QMatMul::Tensor(get("mlp.gate_proj.weight", &[ffn, h])?), ffn),
                        (QMatMul::Tensor(get("mlp.up_proj.weight", &[ffn, h])?), ffn),
                    ])
                },
                w_down: QMatMul::Tensor(get("mlp.down_proj.weight", &[h, ffn])?),
                attn_norm,
                ffn_norm,
                post_norms,
            });
        }
        st.finish()?;
        Self::assemble(config, options, embeddings, layers, final_norm, output)
    }

    fn assemble(
        config: LlamaConfig,
        options: &LoadOptions,
        embeddings: Tensor,
        layers: Vec<Layer>,
        final_norm: Tensor,
        output: QMatMul,
    ) -> Result<Self> {
        let cache_capacity = options.cache_capacity.unwrap_or(config.max_context);
        if cache_capacity == 0 || cache_capacity > config.max_context {
            return Err(CandleBackendError::invalid(
                "cache_capacity",
                cache_capacity,
                "must be in 1..=the model's context length",
            ));
        }
        if options.kv_dtype == KvDtype::Q8 && !options.device.is_cpu() {
            return Err(CandleBackendError::invalid(
                "kv_dtype",
                "Q8",
                "the 8-bit KV cache runs on the CPU only; use F16 on other devices",
            ));
        }
        let (rope_cos, rope_sin) = rope_tables(&config, config.rope_tables(), &options.device)?;
        let rope_local = match config.local_rope_tables() {
            Some(tables) => Some(rope_tables(&config, tables, &options.device)?),
            None => None,
        };
        Ok(Self {
            config,
            device: options.device.clone(),
            embeddings,
            layers,
            final_norm,
            output,
            rope_cos,
            rope_sin,
            rope_local,
            cache_capacity,
            fused_attention: options.attention == Attention::Fused && options.device.is_cpu(),
            kv_dtype: options.kv_dtype.dtype(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache holding up to `capacity` positions (`1..=max_context`).
    pub fn new_cache_with_capacity(&self, capacity: usize) -> Result<LlamaCache> {
        if capacity > self.config.max_context {
            return Err(CandleBackendError::invalid(
                "cache capacity",
                capacity,
                "exceeds the model's context length",
            ));
        }
        LlamaCache::new(
            self.config.n_layers,
            self.config.n_kv_heads,
            self.config.head_dim,
            capacity,
            self.kv_dtype,
            &self.device,
        )
    }

    /// Feed `tokens` at positions `cache.seq_len()..` and return the last position's
    /// logits as a `(vocab_size,)` f32 tensor on the model's device.
    ///
    /// Errors (the cache keeps its length): empty `tokens`, an id `>= vocab_size`, a
    /// cache of another model shape, [`CacheError::CapacityExceeded`](perpetua_kv_cache::CacheError::CapacityExceeded).
    pub fn forward_logits(&self, tokens: &[u32], cache: &mut LlamaCache) -> Result<Tensor> {
        let x = self.hidden_states(tokens, cache, false)?;
        let n = tokens.len();
        let last = x.narrow(0, n - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, self.config.rms_norm_eps as f32)?;
        let logits = self.softcap_logits(self.output.forward(&last)?.squeeze(0)?)?;
        cache.commit(n);
        Ok(logits)
    }

    /// Like [`forward_logits`](Self::forward_logits), but returns the logits of *every*
    /// fed position as an `(n, vocab_size)` f32 tensor (row `i` predicts the token after
    /// `tokens[i]`): one batched pass where a loop of single-token forwards would read
    /// the weights `n` times. Speculative decoding verifies its draft tokens with it.
    ///
    /// The same layers as `forward_logits`, except that linear maps go through
    /// [`linear_rows`] (f32 weights: each weight row read once for all rows, where gemm
    /// would pack the whole matrix per call) and the final norm and output projection
    /// run on every row. Sums run in another order than one-row decoding, so logits
    /// may differ from `forward_logits` by float rounding.
    ///
    /// Errors: as `forward_logits` (the cache keeps its length).
    pub fn forward_logits_all(&self, tokens: &[u32], cache: &mut LlamaCache) -> Result<Tensor> {
        let x = self.hidden_states(tokens, cache, true)?;
        let x = candle_nn::ops::rms_norm(&x, &self.final_norm, self.config.rms_norm_eps as f32)?;
        let logits = self.softcap_logits(linear_rows(&self.output, &x)?)?;
        cache.commit(tokens.len());
        Ok(logits)
    }

    /// [`LlamaConfig::final_logit_softcap`]: `cap · tanh(logits / cap)`.
    fn softcap_logits(&self, logits: Tensor) -> Result<Tensor> {
        Ok(match self.config.final_logit_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    /// The RoPE tables layer `layer` rotates by: the local ones on a sliding-window
    /// layer of a model that has them ([`LlamaConfig::rope_local_theta`]).
    fn layer_rope(&self, layer: usize) -> (&Tensor, &Tensor) {
        match &self.rope_local {
            Some((cos, sin)) if self.config.is_sliding_layer(layer) => (cos, sin),
            _ => (&self.rope_cos, &self.rope_sin),
        }
    }

    /// The residual stream `(n, hidden_size)` after every layer, for `tokens` at
    /// positions `cache.seq_len()..`: validates the input, writes the new keys/values
    /// into the cache, and leaves committing the length to the caller. `few_rows`
    /// routes linear maps through [`linear_rows`] (verification passes).
    fn hidden_states(&self, tokens: &[u32], cache: &mut LlamaCache, few_rows: bool) -> Result<Tensor> {
        let n = tokens.len();
        if n == 0 {
            return Err(CandleBackendError::invalid("tokens", "[]", "must not be empty"));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(CandleBackendError::invalid("token id", bad, "is not in the vocabulary"));
        }
        if cache.n_layers() != self.layers.len() {
            return Err(CandleBackendError::invalid(
                "cache layers",
                cache.n_layers(),
                "differs from the model's layer count",
            ));
        }
        cache.ensure_room(n)?;
        let pos = cache.seq_len();
        let cfg = &self.config;
        let eps = cfg.rms_norm_eps as f32;
        let linear = |m: &QMatMul, x: &Tensor| if few_rows { linear_rows(m, x) } else { linear(m, x) };

        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?;
        if let Some(scale) = cfg.embedding_scale {
            // HF multiplies by the scale rounded to the activations' dtype (f32).
            x = (x * f64::from(scale as f32))?;
        }

        for (i, layer) in self.layers.iter().enumerate() {
            let (cos, sin) = self.layer_rope(i);
            let (cos, sin) = (cos.narrow(0, pos, n)?, sin.narrow(0, pos, n)?);
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let [mut q, mut k, mut v] =
                if few_rows { fused_rows::<3>(&layer.qkv, &h)? } else { layer.qkv.forward::<3>(&h)? };
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                (q, k, v) = (q.broadcast_add(bq)?, k.broadcast_add(bk)?, v.broadcast_add(bv)?);
            }
            let mut q = q.reshape((1, n, cfg.n_heads, cfg.head_dim))?;
            let mut k = k.reshape((1, n, cfg.n_kv_heads, cfg.head_dim))?;
            if let Some([wq, wk]) = &layer.qk_norm {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, wq, eps)?;
                k = candle_nn::ops::rms_norm(&k.contiguous()?, wk, eps)?;
            }
            let q = self.rope(q, &cos, &sin)?;
            let k = self.rope(k, &cos, &sin)?;
            let k = k.squeeze(0)?;
            let v = v.reshape((n, cfg.n_kv_heads, cfg.head_dim))?.transpose(0, 1)?.contiguous()?;
            let view = cache.write_and_view(i, &k, &v)?;
            // (n, n_heads, head_dim): one contiguous row of heads per query position.
            let q = q.squeeze(0)?.transpose(0, 1)?.contiguous()?;
            // The reference paths compute with candle matmuls in f32: widen an f16
            // cache's views, decode a Q8 cache's (the fused kernel reads both directly).
            let (k_all, v_all) = match &view.scales {
                _ if self.fused_attention => (view.k.clone(), view.v.clone()),
                Some((ks, vs)) => (dequantize_q8(&view.k, ks)?, dequantize_q8(&view.v, vs)?),
                None if view.k.dtype() == DType::F32 => (view.k.clone(), view.v.clone()),
                None => (view.k.to_dtype(DType::F32)?, view.v.to_dtype(DType::F32)?),
            };
            let y = if self.fused_attention {
                self.attend_fused(i, &q, &view, pos)?
            } else if n == 1 {
                let first = self.window_start(i, pos + 1);
                let seen = pos + 1 - first;
                self.attend(&q, &k_all.narrow(1, first, seen)?, &v_all.narrow(1, first, seen)?)?
            } else {
                // Batch-invariant prefill: each query position runs exactly the decode
                // computation over its causal prefix (no mask, same matmul shapes), so a
                // prefill is bit-identical to feeding the same tokens one by one. With a
                // single batched matmul, gemm's blocking changes the summation order with
                // the row count, and this quantized model turns those ulp differences
                // into logit differences of ~0.7 — truncate-and-refeed could not
                // reproduce a prefill.
                let rows = (0..n)
                    .map(|j| {
                        let visible = pos + j + 1;
                        let first = self.window_start(i, visible);
                        self.attend(
                            &q.narrow(0, j, 1)?,
                            &k_all.narrow(1, first, visible - first)?,
                            &v_all.narrow(1, first, visible - first)?,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            };
            let mut y = linear(&layer.wo, &y)?;
            if let Some([post_attn, _]) = &layer.post_norms {
                y = candle_nn::ops::rms_norm(&y, post_attn, eps)?;
            }
            x = (y + x)?;

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up] = if few_rows {
                fused_rows::<2>(&layer.gate_up, &h)?
            } else {
                layer.gate_up.forward::<2>(&h)?
            };
            let gate = match cfg.hidden_act {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let mut y = linear(&layer.w_down, &(gate * up)?)?;
            if let Some([_, post_ffn]) = &layer.post_norms {
                y = candle_nn::ops::rms_norm(&y, post_ffn, eps)?;
            }
            x = (y + x)?;
        }
        Ok(x)
    }

    /// The first position a query of layer `layer` that sees `visible` positions
    /// attends to: `0`, or on a sliding-window layer the start of the last
    /// [`LlamaConfig::sliding_window`] positions.
    fn window_start(&self, layer: usize, visible: usize) -> usize {
        match self.config.sliding_window {
            Some(w) if self.config.is_sliding_layer(layer) => visible.saturating_sub(w),
            _ => 0,
        }
    }

    /// Attention of one query position `q` `(1, n_heads, head_dim)` over keys/values
    /// `(n_kv_heads, visible, head_dim)`; returns `(1, n_heads · head_dim)`.
    ///
    /// Grouped-query attention without copying K/V: query head `h` reads the cached
    /// views of KV head `h / group`; `softmax(q_h·K_jᵀ/√d)·V_j`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let group = cfg.n_heads / cfg.n_kv_heads;
        let scale = cfg.query_scale();
        // One query head at a time (m = 1, gemm's gemv path), exactly the products
        // candle-transformers computes after repeating K/V: batched over the `group`
        // heads of a KV head (m = group), gemm blocks the reductions differently from
        // ~86 positions on, and on this quantized model those ulp differences grow into
        // logit differences of ~0.5 and different greedy tokens. Measured: the batched
        // form is no faster here (decode at position 4,000 is bound by reading the f32
        // K/V, ~6 MB per layer, which the per-head loop re-reads from cache).
        let q = q.reshape((cfg.n_heads, 1, cfg.head_dim))?;
        let mut heads = Vec::with_capacity(cfg.n_heads);
        for j in 0..cfg.n_kv_heads {
            let k_t = k.narrow(0, j, 1)?.t()?;
            let v_j = v.narrow(0, j, 1)?;
            for g in 0..group {
                let q_h = q.narrow(0, j * group + g, 1)?;
                let mut att = (q_h.matmul(&k_t)? * scale)?;
                if let Some(cap) = cfg.attn_logit_softcap {
                    att = ((att / cap)?.tanh()? * cap)?;
                }
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                heads.push(att.matmul(&v_j)?);
            }
        }
        Ok(Tensor::cat(&heads, 2)?.reshape((1, cfg.n_heads * cfg.head_dim))?)
    }

    /// [`Attention::Fused`]: queries `(n, n_heads, head_dim)` at positions `pos..pos + n`
    /// over the cache views `(n_kv_heads, pos + n, head_dim)`; returns
    /// `(n, n_heads · head_dim)`. Row `i` attends to positions `0..=pos + i` with exactly
    /// the computation a one-token decode at that position runs (batch invariance).
    fn attend_fused(&self, layer: usize, q: &Tensor, view: &KvView, pos: usize) -> Result<Tensor> {
        let cfg = &self.config;
        let n = q.dim(0)?;
        let width = cfg.n_heads * cfg.head_dim;
        let (q_store, q_layout) = q.storage_and_layout();
        let (k_store, k_layout) = view.k.storage_and_layout();
        let (v_store, v_layout) = view.v.storage_and_layout();
        let (candle_core::Storage::Cpu(qs), candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(vs)) =
            (&*q_store, &*k_store, &*v_store)
        else {
            return Err(CandleBackendError::invalid(
                "attention device",
                "non-CPU",
                "fused attention runs on the CPU",
            ));
        };
        let qs = qs.as_slice::<f32>()?;
        // Q8: the scale tensors' storage, `(n_kv_heads, capacity)` like the rows.
        let scale_store =
            view.scales.as_ref().map(|(ks, vs)| (ks.storage_and_layout(), vs.storage_and_layout()));
        let kv = match (ks, vs, &scale_store) {
            (candle_core::CpuStorage::F16(ks), candle_core::CpuStorage::F16(vs), None) => Kv::F16(ks, vs),
            (
                candle_core::CpuStorage::U8(ks),
                candle_core::CpuStorage::U8(vs),
                Some(((kss, ksl), (vss, vsl))),
            ) => {
                let (candle_core::Storage::Cpu(kss), candle_core::Storage::Cpu(vss)) = (&**kss, &**vss)
                else {
                    return Err(CandleBackendError::invalid(
                        "attention device",
                        "non-CPU",
                        "Q8 scales off the CPU",
                    ));
                };
                if ksl.start_offset() != 0 || vsl.start_offset() != 0 {
                    return Err(CandleBackendError::invalid(
                        "attention layout",
                        format!("{ksl:?}"),
                        "Q8 scales must be the cache's own buffers",
                    ));
                }
                Kv::Q8(ks, vs, kss.as_slice::<f32>()?, vss.as_slice::<f32>()?)
            }
            _ => Kv::F32(ks.as_slice::<f32>()?, vs.as_slice::<f32>()?),
        };
        // The cache views are `narrow`s of `(n_kv_heads, capacity, head_dim)` buffers:
        // offset 0, head stride `capacity · head_dim`, rows contiguous.
        let head_stride = k_layout.stride().first().copied().unwrap_or(0) / cfg.head_dim.max(1);
        let needed = cfg.n_kv_heads * head_stride * cfg.head_dim;
        let layout_ok = q_layout.is_contiguous()
            && k_layout.start_offset() == 0
            && v_layout.start_offset() == 0
            && k_layout.stride() == v_layout.stride()
            && k_layout.stride().get(1..) == Some(&[cfg.head_dim, 1][..])
            && kv.len() >= needed
            && kv.scales_len() >= cfg.n_kv_heads * head_stride
            && pos + n <= head_stride
            && qs.len() >= q_layout.start_offset() + n * width;
        if !layout_ok {
            return Err(CandleBackendError::invalid(
                "attention layout",
                format!("{:?} / {:?}", q_layout, k_layout),
                "fused attention needs contiguous queries and the cache's own buffers",
            ));
        }
        let geometry = attention::Geometry {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            head_stride,
            scale: cfg.query_scale() as f32,
            softcap: cfg.attn_logit_softcap.map(|c| c as f32),
        };
        let qs = &qs[q_layout.start_offset()..q_layout.start_offset() + n * width];
        let mut out = vec![0.0_f32; n * width];
        // Row `i` sees the positions up to its own (`pos + i`), within the window.
        let seen = |i: usize| {
            let visible = pos + i + 1;
            self.window_start(layer, visible)..visible
        };
        match kv {
            Kv::F32(ks, vs) => attention::attend_rows(geometry, qs, (ks, vs), None, seen, &mut out),
            Kv::F16(ks, vs) => attention::attend_rows(geometry, qs, (ks, vs), None, seen, &mut out),
            Kv::Q8(ks, vs, kss, vss) => {
                attention::attend_rows(geometry, qs, (ks, vs), Some((kss, vss)), seen, &mut out)
            }
        }
        drop((q_store, k_store, v_store, scale_store));
        Ok(Tensor::from_vec(out, (n, width), &self.device)?)
    }

    /// Rotate `(1, n, heads, head_dim)` queries/keys; returns `(1, heads, n, head_dim)`.
    fn rope(&self, x: Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        self.rope_bhtd(&x.transpose(1, 2)?.contiguous()?, cos, sin)
    }

    /// Rotate contiguous `(1, heads, n, head_dim)` queries/keys by the `(n, head_dim/2)`
    /// angle tables.
    fn rope_bhtd(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(if self.config.rope_interleaved {
            candle_nn::rotary_emb::rope_i(x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(x, cos, sin)?
        })
    }

    /// A context shift of `cache` ([`LanguageModel::shift_cache`]): drop positions
    /// `start..start + n`, move the rest down and rotate their keys by `−n` positions
    /// (one more rotation by the table's angles for `n`: `cos(nθ)`, `−sin(nθ)`), in
    /// place, for f32, f16 and Q8 caches.
    ///
    /// The rotation is exact in real arithmetic; in f32 the rotated key differs from
    /// one computed at the new position by rounding of the two angle products (a few
    /// ulp), f16 and Q8 caches round it once more. What is *not* reproduced is the
    /// context: kept entries were computed attending to the dropped tokens, so logits
    /// after a shift differ from a fresh prefill of the kept tokens (measured in the
    /// `cache_shift` tests).
    ///
    /// [`LanguageModel::shift_cache`]: perpetua_generator::LanguageModel::shift_cache
    pub fn shift_cache(&self, cache: &mut LlamaCache, start: usize, n: usize) -> Result<()> {
        if cache.n_layers() != self.layers.len() {
            return Err(CandleBackendError::invalid(
                "cache layers",
                cache.n_layers(),
                "differs from the model's layer count",
            ));
        }
        if n >= self.config.max_context {
            return Err(CandleBackendError::invalid("shift", n, "must be below the model's max_context"));
        }
        let half = self.config.head_dim / 2;
        cache.shift(start, n, |layer, keys| {
            let (h, m, d) = keys.dims3()?;
            let (cos, sin) = self.layer_rope(layer);
            let cos = cos.narrow(0, n, 1)?.broadcast_as((m, half))?.contiguous()?;
            let sin = sin.narrow(0, n, 1)?.neg()?.broadcast_as((m, half))?.contiguous()?;
            let rotated = self.rope_bhtd(&keys.reshape((1, h, m, d))?.contiguous()?, &cos, &sin)?;
            Ok(rotated.reshape((h, m, d))?)
        })
    }
}

/// A layer's cache buffers as the fused kernel reads them.
#[derive(Clone, Copy)]
enum Kv<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [half::f16], &'a [half::f16]),
    /// Codes of keys and values, then the scales of their rows.
    Q8(&'a [u8], &'a [u8], &'a [f32], &'a [f32]),
}

impl Kv<'_> {
    /// Elements in the shorter of the two buffers.
    fn len(&self) -> usize {
        match self {
            Self::F32(k, v) => k.len().min(v.len()),
            Self::F16(k, v) => k.len().min(v.len()),
            Self::Q8(k, v, _, _) => k.len().min(v.len()),
        }
    }

    /// Rows the scale buffers cover (unbounded without scales).
    fn scales_len(&self) -> usize {
        match self {
            Self::Q8(_, _, ks, vs) => ks.len().min(vs.len()),
            _ => usize::MAX,
        }
    }
}

/// A Q8 view `(n_kv_heads, visible, head_dim)` decoded to f32 with its
/// `(n_kv_heads, visible)` row scales, for the reference attention.
pub(crate) fn dequantize_q8(codes: &Tensor, scales: &Tensor) -> Result<Tensor> {
    let centred = (codes.to_dtype(DType::F32)? - f64::from(crate::cache::Q8_ZERO))?;
    Ok(centred.broadcast_mul(&scales.unsqueeze(2)?)?)
}

/// RoPE tables ([`LlamaConfig::rope_tables`]) as `(max_context, head_dim/2)` tensors.
fn rope_tables(
    config: &LlamaConfig,
    (cos, sin): (Vec<f32>, Vec<f32>),
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = config.head_dim / 2;
    Ok((
        Tensor::from_vec(cos, (config.max_context, half), device)?,
        Tensor::from_vec(sin, (config.max_context, half), device)?,
    ))
}

/// The tensors of a Hugging Face llama checkpoint directory, taken out one by one.
pub(crate) struct SafetensorsDir {
    pub(crate) hf: HfConfig,
    pub(crate) config: LlamaConfig,
    tensors: HashMap<String, Tensor>,
}

impl SafetensorsDir {
    /// Read `config.json` (validated) and every `*.safetensors` file of `dir`.
    pub(crate) fn open(dir: &Path, device: &Device) -> Result<Self> {
        let (hf, config) = HfConfig::read_raw(dir)?;

        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| CandleBackendError::Io { path: dir.to_path_buf(), source })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(CandleBackendError::MissingTensor {
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
    pub(crate) fn finish(&self) -> Result<()> {
        let mut left: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
            .filter(|k| !(self.hf.tie_word_embeddings && k.as_str() == "lm_head.weight"))
            .collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(name) => Err(CandleBackendError::UnexpectedTensor {
                name: (*name).clone(),
                architecture: self.config.architecture,
                more: left.len() - 1,
            }),
        }
    }

    /// Remove tensor `name`, checking its dtype (f32/f16/bf16) and shape; as f32.
    pub(crate) fn take(&mut self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| CandleBackendError::MissingTensor { name: name.to_string() })?;
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(CandleBackendError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}", t.dtype()),
            });
        }
        if t.dims() != expected {
            return Err(CandleBackendError::BadShape {
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
pub(crate) struct HfConfig {
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
    pub(crate) tie_word_embeddings: bool,
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
    pub(crate) fn read(dir: &Path) -> Result<LlamaConfig> {
        Ok(Self::read_raw(dir)?.1)
    }

    /// The parsed file and its validated configuration.
    pub(crate) fn read_raw(dir: &Path) -> Result<(Self, LlamaConfig)> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|source| CandleBackendError::Io { path: config_path.clone(), source })?;
        let mut hf: Self = serde_json::from_str(&text)
            .map_err(|e| CandleBackendError::metadata("config.json", e.to_string()))?;
        let config = hf.to_config()?;
        hf.tie_word_embeddings = hf.tie.unwrap_or(config.architecture.norm_weights_offset());
        config.validate()?;
        Ok((hf, config))
    }

    pub(crate) fn to_config(&self) -> Result<LlamaConfig> {
        let model_type = self.model_type.as_deref().unwrap_or("llama");
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "phi3" => Architecture::Phi3,
            "gemma2" => Architecture::Gemma2,
            "gemma3_text" => Architecture::Gemma3,
            other => return Err(CandleBackendError::UnsupportedArchitecture(other.to_string())),
        };
        let gemma = architecture.norm_weights_offset();
        let hidden_act = self.activation(gemma)?;
        if self.use_bidirectional_attention == Some(true) {
            return Err(CandleBackendError::metadata(
                "use_bidirectional_attention",
                "true (an encoder) is not supported",
            ));
        }
        if self.mlp_bias == Some(true) {
            return Err(CandleBackendError::metadata("mlp_bias", "MLP biases are not supported"));
        }
        // Qwen2 always has q/k/v biases (and no `attention_bias` key); elsewhere the key
        // would also put a bias on the output projection, which is not implemented.
        let attention_bias = architecture == Architecture::Qwen2;
        if !attention_bias && self.attention_bias == Some(true) {
            return Err(CandleBackendError::metadata(
                "attention_bias",
                format!("true is not supported for `{model_type}`"),
            ));
        }
        if let Some(f) = self.partial_rotary_factor.filter(|&f| f != 1.0) {
            return Err(CandleBackendError::metadata(
                "partial_rotary_factor",
                format!("{f} is not supported (only full rotary)"),
            ));
        }
        let (sliding_window, sliding_layers) = self.attention_window(architecture)?;
        let (rope_theta, rope_scaling, rope_local_theta) = self.rope(architecture)?;
        if self.num_attention_heads == 0 {
            return Err(CandleBackendError::metadata("num_attention_heads", "zero"));
        }
        // Gemma's class defaults where the file leaves a key out (transformers writes
        // only what differs from them): softcaps 50 / 30 for Gemma 2, none for Gemma 3.
        let softcap = |key: &'static str, value: &Option<serde_json::Value>, default: Option<f64>| match value
        {
            None => Ok(default),
            Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| CandleBackendError::metadata(key, "not a number")),
        };
        let (attn_default, final_default) =
            if architecture == Architecture::Gemma2 { (Some(50.0), Some(30.0)) } else { (None, None) };
        let attn_logit_softcap =
            softcap("attn_logit_softcapping", &self.attn_logit_softcapping, attn_default)?;
        let final_logit_softcap =
            softcap("final_logit_softcapping", &self.final_logit_softcapping, final_default)?;
        if !gemma && let Some(c) = attn_logit_softcap.or(final_logit_softcap).or(self.query_pre_attn_scalar) {
            return Err(CandleBackendError::metadata(
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
            (_, Some(other)) => Err(CandleBackendError::metadata(
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
                return Err(CandleBackendError::metadata(
                    "use_sliding_window",
                    "true (a window on some layers only) is not supported",
                ));
            }
            _ => None,
        };
        let expected = if window.is_some() { "sliding_attention" } else { "full_attention" };
        if let Some(t) = self.layer_types.iter().flatten().find(|&t| t != expected) {
            return Err(CandleBackendError::metadata(
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
                    return Err(CandleBackendError::metadata(
                        "layer_types",
                        format!("{} entries for {n} layers", types.len()),
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(CandleBackendError::metadata(
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
                    return Err(CandleBackendError::metadata("sliding_window_pattern", "zero"));
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
                return Err(CandleBackendError::metadata(
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
            return Err(CandleBackendError::metadata(
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
            field(name).and_then(serde_json::Value::as_f64).ok_or_else(|| {
                CandleBackendError::metadata(format!("{key}.{name}"), "absent or not a number")
            })
        };
        if let Some(f) =
            field("partial_rotary_factor").and_then(serde_json::Value::as_f64).filter(|&f| f != 1.0)
        {
            return Err(CandleBackendError::metadata(
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
                return Err(CandleBackendError::metadata(
                    format!("{key}.rope_type"),
                    format!("`{other}` is not supported (default, linear, llama3)"),
                ));
            }
        };
        Ok((theta, scaling))
    }
}

impl perpetua_generator::LanguageModel for Llama {
    type Cache = LlamaCache;
    type Error = CandleBackendError;

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_context(&self) -> usize {
        self.config.max_context
    }

    fn new_cache(&self) -> Result<LlamaCache> {
        self.new_cache_with_capacity(self.cache_capacity)
    }

    fn forward(&self, tokens: &[u32], cache: &mut LlamaCache, out: &mut Vec<f32>) -> Result<()> {
        let logits = self.forward_logits(tokens, cache)?;
        let logits = logits.to_dtype(DType::F32)?;
        out.clear();
        // Host copy without an intermediate Vec on CPU.
        let (storage, layout) = logits.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(cpu) => {
                let data = cpu.as_slice::<f32>()?;
                let start = layout.start_offset();
                let row = data.get(start..start + self.config.vocab_size).ok_or_else(|| {
                    CandleBackendError::invalid("logits length", data.len(), "shorter than vocab_size")
                })?;
                out.extend_from_slice(row);
            }
            _ => {
                drop(storage);
                out.extend(logits.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }

    /// In place ([`Llama::shift_cache`]).
    fn shift_cache(&self, cache: &mut LlamaCache, start: usize, n: usize) -> Result<bool> {
        Llama::shift_cache(self, cache, start, n)?;
        Ok(true)
    }

    /// One batched pass ([`Llama::forward_logits_all`]) instead of the default
    /// token-by-token loop.
    fn forward_all(&self, tokens: &[u32], cache: &mut LlamaCache, out: &mut Vec<f32>) -> Result<()> {
        let logits = self.forward_logits_all(tokens, cache)?.to_dtype(DType::F32)?;
        out.clear();
        out.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}

/// `x · Wᵀ` for `x` of shape `(rows, k)`: Q8_0 weights with more than one row go
/// through [`crate::qgemm::matmul`] on AVX2 CPUs (register-tiled, bit-identical to candle's
/// kernel, so a prefill row still equals a decode step), everything else through
/// `QMatMul::forward`.
fn linear(m: &QMatMul, x: &Tensor) -> Result<Tensor> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    if let QMatMul::QTensor(w) = m
        && w.dtype() == GgmlDType::Q8_0
        && x.dtype() == DType::F32
        && x.device().is_cpu()
        && let Ok((rows, k)) = x.dims2()
        && rows > 1
        && let Ok((n, wk)) = w.shape().dims2()
        && wk == k
    {
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let start = layout.start_offset();
            let xs = cpu.as_slice::<f32>()?.get(start..start + rows * k);
            let bytes = w.data()?;
            let mut out = vec![0.0_f32; rows * n];
            if let Some(xs) = xs
                && crate::qgemm::matmul(xs, rows, k, &bytes, n, &mut out).is_some()
            {
                drop(storage);
                return Ok(Tensor::from_vec(out, (rows, n), x.device())?);
            }
        }
    }
    Ok(m.forward(x)?)
}

/// Most rows [`linear_rows`] handles with its weight-stationary kernel.
const FEW_ROWS: usize = 16;

/// `x · Wᵀ` for `x` of shape `(n, k)`. For f32 weights (`QMatMul::Tensor`) and
/// `2 <= n <= FEW_ROWS` it reads each weight row once and dots it with every input row:
/// a verification pass of a few tokens then costs about one decode step of weight
/// traffic, where gemm would first pack the whole weight matrix. Anything else goes to
/// [`linear`] (quantized kernels already tile rows).
fn linear_rows(m: &QMatMul, x: &Tensor) -> Result<Tensor> {
    let QMatMul::Tensor(w) = m else {
        return linear(m, x);
    };
    let (n, k) = x.dims2()?;
    if w.dtype() != DType::F32
        || x.dtype() != DType::F32
        || !(2..=FEW_ROWS).contains(&n)
        || !w.device().is_cpu()
    {
        return linear(m, x);
    }
    let (out_dim, wk) = w.dims2()?;
    if wk != k {
        return linear(m, x);
    }
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        drop(storage);
        return linear(m, x);
    };
    let start = layout.start_offset();
    let ws = cpu.as_slice::<f32>()?.get(start..start + out_dim * k).ok_or_else(|| {
        CandleBackendError::invalid("weight length", out_dim * k, "exceeds the weight storage")
    })?;
    // out_t[j · n + r] = W_j · x_r, in chunks of output features across candle's
    // threads (the last chunk padded, then cut off).
    const FEATURES: usize = 64;
    let mut out_t = Vec::new();
    attention::run_tasks(out_dim.div_ceil(FEATURES), FEATURES * n, &mut out_t, |c, chunk| {
        for (f, out) in chunk.chunks_exact_mut(n).enumerate() {
            let j = c * FEATURES + f;
            let Some(w_j) = ws.get(j * k..(j + 1) * k) else { break };
            for (r, o) in out.iter_mut().enumerate() {
                *o = attention::dot(w_j, &xs[r * k..(r + 1) * k]);
            }
        }
    });
    out_t.truncate(out_dim * n);
    drop(storage);
    Ok(Tensor::from_vec(out_t, (out_dim, n), x.device())?.t()?.contiguous()?)
}

/// [`Fused`]'s outputs through [`linear_rows`].
fn fused_rows<const N: usize>(f: &Fused, x: &Tensor) -> Result<[Tensor; N]> {
    f.forward_with(x, linear_rows)
}
