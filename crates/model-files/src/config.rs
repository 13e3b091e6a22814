//! Hyper-parameters of the llama-family models ([`LlamaConfig`]) and what they name:
//! the families ([`Architecture`]), RoPE scaling ([`RopeScaling`]), the MLP gate
//! ([`Activation`]). Backend-neutral: the RoPE tables are plain `Vec<f32>`s.

use crate::error::{ModelError, Result};

/// The model families the backends run: the llama block with the variations each
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
    pub fn norm_weights_offset(self) -> bool {
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
                Err(ModelError::invalid(name, v, "must be finite and positive"))
            }
        };
        match *self {
            Self::None => Ok(()),
            Self::Linear { factor } => positive("rope_scaling.factor", factor),
            Self::Factors(ref factors) => match factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                Some(&bad) => {
                    Err(ModelError::invalid("rope_freqs.weight", bad, "must be finite and positive"))
                }
                None => Ok(()),
            },
            Self::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                positive("rope_scaling.factor", factor)?;
                positive("rope_scaling.low_freq_factor", low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(ModelError::invalid(
                        "rope_scaling.high_freq_factor",
                        high_freq_factor,
                        "must exceed low_freq_factor",
                    ));
                }
                if original_max_position == 0 {
                    return Err(ModelError::invalid(
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

    /// Check every field for what the forward passes assume: positive sizes, bounded
    /// allocations (context, layers, heads), `n_kv_heads` dividing `n_heads`, an even
    /// head width, finite positive RoPE bases, scales and caps, one window flag per
    /// layer. The loaders call it; a configuration edited by hand should be checked too.
    pub fn validate(&self) -> Result<()> {
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
                return Err(ModelError::invalid(name, value, "must be positive"));
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
                return Err(ModelError::invalid(name, value, reason));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ModelError::invalid("n_kv_heads", self.n_kv_heads, "must divide n_heads"));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::invalid("head_dim", self.head_dim, "must be even"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ModelError::invalid("rope_theta", self.rope_theta, "must be finite and positive"));
        }
        if let RopeScaling::Factors(f) = &self.rope_scaling
            && f.len() != self.head_dim / 2
        {
            return Err(ModelError::invalid("rope_freqs.weight length", f.len(), "must be head_dim / 2"));
        }
        if self.sliding_window == Some(0) {
            return Err(ModelError::invalid("sliding_window", 0, "must be positive"));
        }
        if let Some(layers) = &self.sliding_layers
            && layers.len() != self.n_layers
        {
            return Err(ModelError::invalid("sliding layers", layers.len(), "must be one per layer"));
        }
        if self.rope_local_theta.is_some() && self.sliding_window.is_none() {
            return Err(ModelError::invalid(
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
                return Err(ModelError::invalid(name, v, "must be finite and positive"));
            }
        }
        self.rope_scaling.validate()
    }
}
