//! The llama-architecture forward pass: embeddings → `n_layers` × (RMSNorm →
//! grouped-query attention with RoPE → residual → RMSNorm → SwiGLU MLP → residual) →
//! RMSNorm → output projection.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use perpetua_generator::{BatchError, BatchItem};
use perpetua_kv_cache::{KvCache, with_rollback};
use perpetua_model_files::{
    Activation, Architecture, GgufReader, LlamaConfig, SafetensorsDir, ggml_dtype_supported,
};

use crate::cache::{KvView, LlamaCache};
use crate::error::{CandleBackendError, Result};
use crate::kernels::linear::{linear, linear_rows};
use crate::kernels::{attention, rope};

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

/// Query positions per chunk of [`Attention::Batched`]: a chunk's scores take
/// `n_heads · rows · keys` f32 (SmolLM2 at 8,192 keys: 9 · 256 · 8,192 · 4 B = 72 MiB).
const BATCHED_QUERY_ROWS: usize = 256;

/// Which attention implementation the forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Attention {
    /// On the CPU, a fused grouped-query kernel that reads each cached key/value row
    /// once per KV head instead of once per query head (2.9× fewer bytes for
    /// SmolLM2's 9:3 heads): decode at long context is bound by those reads. Its sums
    /// run in another order than candle's matmuls, so logits differ from
    /// candle-transformers by float rounding. On other devices it falls back to
    /// [`Attention::Batched`].
    #[default]
    Fused,
    /// candle matmuls, one query head at a time: bit-identical to candle-transformers'
    /// `quantized_llama` (which repeats K/V per query head). Batch-invariant: a prefill
    /// runs each position's decode computation, so a prefill equals feeding its tokens
    /// one by one — at the cost of `positions × heads` small operations per layer,
    /// which on a GPU are that many kernel launches.
    Reference,
    /// Every query head and position of a sequence in one pair of matmuls per layer
    /// (grouped-query heads share their KV head's cache view, no copy; a causal and
    /// sliding-window mask for prefills): a constant number of operations per layer,
    /// the path for GPUs (the default of [`LoadOptions::on`] a GPU, and what
    /// [`Attention::Fused`] falls back to there). Not batch-invariant: the matmuls'
    /// summation order depends on the number of positions in the pass, so a prefill
    /// and a token-by-token run of the same tokens differ by float rounding.
    Batched,
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
    /// The defaults for `device`: on the CPU, [`LoadOptions::default`]; on a GPU, the
    /// file's weight types kept (the Q8_0 re-quantization speeds up candle's CPU
    /// kernels and would only widen a quantized file in GPU memory), an f16 cache, and
    /// [`Attention::Batched`] (the fused kernel is CPU-only; the reference one launches
    /// a kernel per head and position).
    ///
    /// ```
    /// use perpetua_candle::{Device, LoadOptions};
    ///
    /// assert_eq!(LoadOptions::on(Device::Cpu).requantize, LoadOptions::default().requantize);
    /// ```
    pub fn on(device: Device) -> Self {
        if device.is_cpu() {
            return Self::default();
        }
        Self { device, requantize: None, attention: Attention::Batched, ..Self::default() }
    }

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
    embeddings: Embeddings,
    layers: Vec<Layer>,
    final_norm: Tensor,
    output: QMatMul,
    /// `(max_context, head_dim / 2)` tables of `cos(p·θ_i)` and `sin(p·θ_i)`.
    rope_cos: Tensor,
    rope_sin: Tensor,
    /// The sliding-window layers' own tables ([`LlamaConfig::rope_local_theta`]).
    rope_local: Option<(Tensor, Tensor)>,
    cache_capacity: usize,
    /// The attention that runs: the one asked for, except that [`Attention::Fused`]
    /// off the CPU runs as [`Attention::Batched`].
    attention: Attention,
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
    /// (candle's `QMatMul`); the token embedding stays in the file's blocks, its rows
    /// dequantized as they are looked up ([`Embeddings`]), and, when `output.weight` is
    /// absent, serves as the output projection too (tied embeddings). Requantizing
    /// (`LoadOptions::requantize`) goes a few rows at a time, so no whole matrix is ever
    /// widened to f32.
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
                    requantize_rows(&t, target, &device)?
                }
                _ => t,
            })
        };
        let matmul = |t: QTensor| -> Result<QMatMul> { Ok(QMatMul::from_arc(Arc::new(requant(t)?))?) };

        let embd_q = file.tensor("token_embd.weight", &[config.vocab_size, h])?;
        let embeddings = Embeddings::new(&embd_q, &device)?;
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
        let table = take("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let output = if hf.tie_word_embeddings {
            QMatMul::Tensor(table.clone())
        } else {
            QMatMul::Tensor(take("lm_head.weight", &[config.vocab_size, h])?)
        };
        let embeddings = Embeddings::Dense(table);
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
        embeddings: Embeddings,
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
            attention: match options.attention {
                Attention::Fused if !options.device.is_cpu() => Attention::Batched,
                attention => attention,
            },
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

    /// What this model holds, by part, and what each cache position adds: the bytes a
    /// load commits on its device (`perpetua generate -v` prints it).
    ///
    /// ```no_run
    /// use perpetua_candle::{Llama, LoadOptions};
    ///
    /// let model = Llama::load(perpetua_candle::default_model_path()?, &LoadOptions::default())?;
    /// let report = model.memory_report();
    /// println!("{report}"); // weights 106.0 MiB, …
    /// assert!(report.with_cache(1024) > report.model_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn memory_report(&self) -> MemoryReport {
        let tensor = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let matmul = |m: &QMatMul| match m {
            QMatMul::QTensor(q) => q.storage_size_in_bytes() as u64,
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => tensor(t),
        };
        // candle repacks a Q8_0 matrix it multiplies on AVX-512-VNNI / AVX-VNNI CPUs
        // into a second, same-sized copy at first use (see `kernels::linear`).
        let packed = |m: &QMatMul| match m {
            QMatMul::QTensor(q)
                if self.device.is_cpu()
                    && q.dtype() == GgmlDType::Q8_0
                    && matches!(q.shape().dims(), &[n, k] if crate::kernels::linear::candle_uses_vnni_q8_0(n, k)) =>
            {
                q.storage_size_in_bytes() as u64
            }
            _ => 0,
        };
        let (mut weights, mut packed_copies, mut tables) = (matmul(&self.output), packed(&self.output), 0);
        for layer in &self.layers {
            let mats = layer.qkv.parts.iter().chain(&layer.gate_up.parts).map(|(m, _)| m);
            for m in mats.chain([&layer.wo, &layer.w_down]) {
                weights += matmul(m);
                packed_copies += packed(m);
            }
            let norms = [&layer.attn_norm, &layer.ffn_norm].into_iter();
            let bias = layer.qkv_bias.iter().flatten();
            let extra = bias.chain(layer.qk_norm.iter().flatten()).chain(layer.post_norms.iter().flatten());
            tables += norms.chain(extra).map(tensor).sum::<u64>();
        }
        tables += tensor(&self.final_norm) + tensor(&self.rope_cos) + tensor(&self.rope_sin);
        if let Some((cos, sin)) = &self.rope_local {
            tables += tensor(cos) + tensor(sin);
        }
        let embeddings = match &self.embeddings {
            Embeddings::Dense(t) => tensor(t),
            Embeddings::Quantized { bytes, .. } => bytes.len() as u64,
        };
        let c = &self.config;
        let per_row = match self.kv_dtype {
            // Codes plus one f32 scale per (position, head).
            DType::U8 => c.head_dim as u64 + 4,
            dtype => (c.head_dim * dtype.size_in_bytes()) as u64,
        };
        MemoryReport {
            device: format!("{:?}", self.device),
            weights,
            packed_copies,
            embeddings,
            tables,
            cache_per_position: 2 * (c.n_layers * c.n_kv_heads) as u64 * per_row,
            cache_capacity: self.cache_capacity,
        }
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
        self.check_segment(tokens, cache)?;
        let x = self.hidden_states(&mut [Segment { tokens, cache }], false)?;
        let n = tokens.len();
        let last = x.narrow(0, n - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, self.config.rms_norm_eps as f32)?;
        let logits = self.softcap_logits(self.output.forward(&last)?.squeeze(0)?)?;
        cache.commit(n)?;
        Ok(logits)
    }

    /// Several sequences in one pass: item `i` feeds `batch[i].0` at positions
    /// `batch[i].1.seq_len()..` of its own cache; returns the logits of each item's last
    /// position as a `(batch.len(), vocab_size)` f32 tensor. The linear maps run on the
    /// rows of every item at once — a decode step of 8 sequences reads the weights once,
    /// not 8 times — and attention runs per item on its own cache, with no padding.
    /// Ragged: a prefill of one item and decode steps of others share the pass. Each
    /// item's logits are bit-identical to [`forward_logits`](Self::forward_logits) of
    /// that item alone (every kernel computes a row alone).
    ///
    /// Errors: an item's own error (empty tokens, an id outside the vocabulary, a cache
    /// of another model, no room) with its index, before anything is computed; every
    /// cache keeps its length on any error.
    pub fn forward_logits_batch(
        &self,
        batch: &mut [(&[u32], &mut LlamaCache)],
    ) -> std::result::Result<Tensor, (Option<usize>, CandleBackendError)> {
        if batch.is_empty() {
            return Err((None, CandleBackendError::invalid("batch", "[]", "must hold >= 1 sequence")));
        }
        for (i, (tokens, cache)) in batch.iter_mut().enumerate() {
            self.check_segment(tokens, cache).map_err(|e| (Some(i), e))?;
        }
        let lens: Vec<usize> = batch.iter().map(|(_, c)| c.seq_len()).collect();
        let result = (|| {
            let mut segments: Vec<Segment<'_>> =
                batch.iter_mut().map(|(tokens, cache)| Segment { tokens, cache }).collect();
            let x = self.hidden_states(&mut segments, false)?;
            let mut last = Vec::with_capacity(segments.len());
            let mut row = 0;
            for seg in &segments {
                row += seg.tokens.len();
                last.push(x.narrow(0, row - 1, 1)?);
            }
            let last = Tensor::cat(&last, 0)?;
            let last = candle_nn::ops::rms_norm(&last, &self.final_norm, self.config.rms_norm_eps as f32)?;
            let logits = self.softcap_logits(linear(&self.output, &last)?)?;
            for seg in &mut segments {
                seg.cache.commit(seg.tokens.len())?;
            }
            Ok(logits)
        })();
        result.map_err(|e| {
            for ((_, cache), &len) in batch.iter_mut().zip(&lens) {
                if cache.seq_len() > len {
                    let _ = cache.truncate(len);
                }
            }
            (None, e)
        })
    }

    /// Like [`forward_logits`](Self::forward_logits), but returns the logits of *every*
    /// fed position as an `(n, vocab_size)` f32 tensor (row `i` predicts the token after
    /// `tokens[i]`): one batched pass where a loop of single-token forwards would read
    /// the weights `n` times. Speculative decoding verifies its draft tokens with it.
    ///
    /// The same layers as `forward_logits`, except that linear maps go through
    /// `linear_rows` (f32 weights: each weight row read once for all rows, where gemm
    /// would pack the whole matrix per call) and the final norm and output projection
    /// run on every row. Sums run in another order than one-row decoding, so logits
    /// may differ from `forward_logits` by float rounding.
    ///
    /// Errors: as `forward_logits` (the cache keeps its length).
    pub fn forward_logits_all(&self, tokens: &[u32], cache: &mut LlamaCache) -> Result<Tensor> {
        self.check_segment(tokens, cache)?;
        let x = self.hidden_states(&mut [Segment { tokens, cache }], true)?;
        let x = candle_nn::ops::rms_norm(&x, &self.final_norm, self.config.rms_norm_eps as f32)?;
        let logits = self.softcap_logits(linear_rows(&self.output, &x)?)?;
        cache.commit(tokens.len())?;
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

    /// Check one sequence's part of a forward pass and make room for it in its cache:
    /// empty `tokens`, an id outside the vocabulary, a cache of another model, no room
    /// ([`CacheError::CapacityExceeded`](perpetua_kv_cache::CacheError::CapacityExceeded)).
    /// The cache's length is unchanged (its buffers may grow).
    fn check_segment(&self, tokens: &[u32], cache: &mut LlamaCache) -> Result<()> {
        if tokens.is_empty() {
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
        cache.reserve(tokens.len())
    }

    /// The residual stream `(rows, hidden_size)` after every layer, for the segments'
    /// tokens one after another (segment `s` at positions `cache_s.seq_len()..` of its
    /// own cache): the linear maps and norms run on all rows at once (the weights read
    /// once per pass, whatever the number of sequences); with [`Attention::Fused`] RoPE
    /// and attention for all segments together, each over its own cache
    /// ([`fused_attention_of`](Self::fused_attention_of)), otherwise per segment
    /// ([`attention_of`](Self::attention_of)). Writes the new keys/values and leaves committing the lengths to
    /// the caller; the segments were checked ([`check_segment`](Self::check_segment)).
    /// Every kernel computes a row alone (batch invariance), so a sequence's rows are
    /// the same bits whatever else is in the pass. `few_rows` routes linear maps
    /// through [`linear_rows`] (verification passes).
    fn hidden_states(&self, segments: &mut [Segment<'_>], few_rows: bool) -> Result<Tensor> {
        let cfg = &self.config;
        let eps = cfg.rms_norm_eps as f32;
        let linear = |m: &QMatMul, x: &Tensor| if few_rows { linear_rows(m, x) } else { linear(m, x) };
        // (first row, rows, first position) of each segment.
        let mut spans = Vec::with_capacity(segments.len());
        let mut rows = 0;
        for seg in segments.iter() {
            spans.push((rows, seg.tokens.len(), seg.cache.seq_len()));
            rows += seg.tokens.len();
        }
        let tokens: Vec<u32> = segments.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        // Each row's position, for RoPE in every layer.
        let positions: Vec<usize> = spans.iter().flat_map(|&(_, n, pos)| pos..pos + n).collect();
        let ids = Tensor::new(tokens.as_slice(), &self.device)?;
        let mut x = self.embeddings.lookup(&tokens, &ids, &self.device)?;
        if let Some(scale) = cfg.embedding_scale {
            // HF multiplies by the scale rounded to the activations' dtype (f32).
            x = (x * f64::from(scale as f32))?;
        }

        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let [mut q, mut k, mut v] =
                if few_rows { fused_rows::<3>(&layer.qkv, &h)? } else { layer.qkv.forward::<3>(&h)? };
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                (q, k, v) = (q.broadcast_add(bq)?, k.broadcast_add(bk)?, v.broadcast_add(bv)?);
            }
            let y = if self.attention == Attention::Fused {
                self.fused_attention_of(i, layer, (q, k, v), segments, (&spans, &positions))?
            } else {
                let mut ys = Vec::with_capacity(segments.len());
                for (seg, &(r0, n, pos)) in segments.iter_mut().zip(&spans) {
                    let (q, k, v) = if spans.len() == 1 {
                        (q.clone(), k.clone(), v.clone())
                    } else {
                        (q.narrow(0, r0, n)?, k.narrow(0, r0, n)?, v.narrow(0, r0, n)?)
                    };
                    ys.push(self.attention_of(i, layer, (q, k, v), seg.cache, pos)?);
                }
                if ys.len() == 1 { ys.swap_remove(0) } else { Tensor::cat(&ys, 0)? }
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
            let gu = match cfg.hidden_act {
                Activation::Silu => match silu_mul(&gate, &up)? {
                    Some(gu) => gu,
                    None => (candle_nn::ops::silu(&gate)? * up)?,
                },
                Activation::GeluTanh => (gate.gelu()? * up)?,
                other => {
                    return Err(CandleBackendError::invalid(
                        "hidden_act",
                        format!("{other:?}"),
                        "is not implemented by the candle backend",
                    ));
                }
            };
            let mut y = linear(&layer.w_down, &gu)?;
            if let Some([_, post_ffn]) = &layer.post_norms {
                y = candle_nn::ops::rms_norm(&y, post_ffn, eps)?;
            }
            x = (y + x)?;
        }
        Ok(x)
    }

    /// [`Attention::Fused`] attention of layer `i` for every segment of a pass at once:
    /// `(q, k, v)` hold all segments' rows (`spans`: each one's first row, rows and first
    /// position; `positions`: every row's position, the same for every layer). q/k norms and RoPE run on all rows together (each row rotated by its
    /// own position's angles, gathered from the tables), each segment's keys/values are
    /// written into its cache, and one [`attention::attend_sequences`] call runs every
    /// segment's rows over its own cache; returns `(rows, n_heads · head_dim)`. Every
    /// step is per row (same arithmetic as a lone segment), so batching changes no bit.
    fn fused_attention_of(
        &self,
        i: usize,
        layer: &Layer,
        (q, k, v): (Tensor, Tensor, Tensor),
        segments: &mut [Segment<'_>],
        (spans, positions): (&[(usize, usize, usize)], &[usize]),
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let rows = q.dim(0)?;
        let (heads, kv_heads, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (q, k) = self.qk_normed(layer, (q, k), rows)?;
        // (rows, heads, head_dim): one contiguous row of heads per query position.
        let q = self.rotate_rows(i, &q, heads, positions)?;
        let k = self.rotate_rows(i, &k, kv_heads, positions)?;
        let mut views = Vec::with_capacity(spans.len());
        let width = kv_heads * d;
        let k_rows = k.reshape((rows, width))?;
        for (seg, &(r0, n, _)) in segments.iter_mut().zip(spans) {
            // Straight from the rows into an f32/f16 cache; otherwise as (n_kv_heads, n,
            // head_dim) tensors.
            let direct = with_rows(&k_rows, width, |ks, k_stride| {
                with_rows(&v, width, |vs, v_stride| {
                    seg.cache.write_rows_and_view(
                        i,
                        (&ks[r0 * k_stride..], k_stride),
                        (&vs[r0 * v_stride..], v_stride),
                        n,
                    )
                })
            });
            let written = match direct {
                Some(Some(written)) => written?,
                _ => None,
            };
            let view = match written {
                Some(view) => view,
                None => {
                    let v = v.reshape((rows, kv_heads, d))?;
                    let (k, v) = (k.narrow(0, r0, n)?.transpose(0, 1)?, v.narrow(0, r0, n)?.transpose(0, 1)?);
                    seg.cache.write_and_view(i, &k.contiguous()?, &v.contiguous()?)?
                }
            };
            views.push(view);
        }
        self.attend_fused(i, &q, &views, spans)
    }

    /// The `(rows, heads · head_dim)` projection `x` (on the CPU, f32; rows may be
    /// strided, e.g. a narrow of the fused projection) rotated row by row, row `r` at
    /// `positions[r]` of layer `layer`'s angle tables ([`rope::rotate`]): `(rows, heads,
    /// head_dim)`, contiguous.
    fn rotate_rows(&self, layer: usize, x: &Tensor, heads: usize, positions: &[usize]) -> Result<Tensor> {
        let d = self.config.head_dim;
        let (cos, sin) = self.layer_rope(layer);
        let ((cs, cl), (ss, sl)) = (cos.storage_and_layout(), sin.storage_and_layout());
        let (candle_core::Storage::Cpu(cs), candle_core::Storage::Cpu(ss)) = (&*cs, &*ss) else {
            return Err(CandleBackendError::invalid(
                "rope device",
                "non-CPU",
                "fused attention runs on the CPU",
            ));
        };
        let (cs, ss) = (cs.as_slice::<f32>()?, ss.as_slice::<f32>()?);
        let (Some(cs), Some(ss)) = (
            cs.get(cl.start_offset()..).filter(|_| cl.is_contiguous()),
            ss.get(sl.start_offset()..).filter(|_| sl.is_contiguous()),
        ) else {
            return Err(CandleBackendError::invalid("rope tables", format!("{cl:?}"), "must be contiguous"));
        };
        let mut out = vec![0.0_f32; positions.len() * heads * d];
        let rotated = with_rows(x, heads * d, |xs, row_stride| {
            rope::rotate(
                xs,
                row_stride,
                (heads, d),
                positions,
                (cs, ss),
                self.config.rope_interleaved,
                &mut out,
            )
        });
        match rotated {
            None => {
                return Err(CandleBackendError::invalid(
                    "rope input layout",
                    format!("{:?}", x.layout()),
                    "needs CPU f32 (rows, heads · head_dim) with contiguous rows",
                ));
            }
            Some(None) => {
                return Err(CandleBackendError::invalid(
                    "rope positions",
                    positions.iter().max().copied().unwrap_or(0),
                    "exceed the angle tables or the input rows",
                ));
            }
            Some(Some(())) => {}
        }
        Ok(Tensor::from_vec(out, (positions.len(), heads, d), &self.device)?)
    }

    /// The `(rows, heads · head_dim)` query and key projections of a pass, each head
    /// RMS-normed where the family norms them ([`LlamaConfig::qk_norm`]); as they are
    /// otherwise.
    fn qk_normed(&self, layer: &Layer, (q, k): (Tensor, Tensor), rows: usize) -> Result<(Tensor, Tensor)> {
        let Some([wq, wk]) = &layer.qk_norm else { return Ok((q, k)) };
        let cfg = &self.config;
        let (eps, d) = (cfg.rms_norm_eps as f32, cfg.head_dim);
        let norm = |x: &Tensor, heads: usize, w: &Tensor| -> Result<Tensor> {
            Ok(candle_nn::ops::rms_norm(&x.reshape((rows, heads, d))?.contiguous()?, w, eps)?
                .reshape((rows, heads * d))?)
        };
        Ok((norm(&q, cfg.n_heads, wq)?, norm(&k, cfg.n_kv_heads, wk)?))
    }

    /// Attention of layer `i` for one segment through the candle-op kernels
    /// ([`Attention::Reference`], [`Attention::Batched`]): its `n` rows of `(q, k, v)`
    /// projections at positions `pos..pos + n` of `cache` — q/k norms, RoPE, the new
    /// keys/values written into the cache, then attention over the cache; returns `(n,
    /// n_heads · head_dim)`.
    fn attention_of(
        &self,
        i: usize,
        layer: &Layer,
        (q, k, v): (Tensor, Tensor, Tensor),
        cache: &mut LlamaCache,
        pos: usize,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let n = q.dim(0)?;
        let (cos, sin) = self.layer_rope(i);
        let (cos, sin) = (cos.narrow(0, pos, n)?, sin.narrow(0, pos, n)?);
        let (q, k) = self.qk_normed(layer, (q, k), n)?;
        let q = self.rope(q.reshape((1, n, cfg.n_heads, cfg.head_dim))?, &cos, &sin)?;
        let k = self.rope(k.reshape((1, n, cfg.n_kv_heads, cfg.head_dim))?, &cos, &sin)?.squeeze(0)?;
        let v = v.reshape((n, cfg.n_kv_heads, cfg.head_dim))?.transpose(0, 1)?.contiguous()?;
        let view = cache.write_and_view(i, &k, &v)?;
        // (n, n_heads, head_dim): one contiguous row of heads per query position.
        let q = q.squeeze(0)?.transpose(0, 1)?.contiguous()?;
        // These paths compute with candle matmuls in f32: widen an f16 cache's views,
        // decode a Q8 cache's. Only the positions some query of this pass sees — from
        // the first query's window start on — are widened (on a sliding-window layer
        // O(window), not O(context)); `first` is where `k_all`/`v_all` begin.
        let first = self.window_start(i, pos + 1);
        let seen = pos + n - first;
        let (k_all, v_all) = match &view.scales {
            Some((ks, vs)) => (
                dequantize_q8(&view.k.narrow(1, first, seen)?, &ks.narrow(1, first, seen)?)?,
                dequantize_q8(&view.v.narrow(1, first, seen)?, &vs.narrow(1, first, seen)?)?,
            ),
            None => {
                let (k, v) = (view.k.narrow(1, first, seen)?, view.v.narrow(1, first, seen)?);
                if k.dtype() == DType::F32 {
                    (k, v)
                } else {
                    (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?)
                }
            }
        };
        let y = if self.attention == Attention::Batched {
            self.attend_batched(i, &q, (&k_all, &v_all, first), pos)?
        } else if n == 1 {
            self.attend(&q, &k_all, &v_all)?
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
                    let start = self.window_start(i, visible);
                    self.attend(
                        &q.narrow(0, j, 1)?,
                        &k_all.narrow(1, start - first, visible - start)?,
                        &v_all.narrow(1, start - first, visible - start)?,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&rows, 0)?
        };
        Ok(y)
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

    /// [`Attention::Batched`]: queries `(n, n_heads, head_dim)` at positions
    /// `pos..pos + n` over keys/values `(n_kv_heads, pos + n - first, head_dim)` (f32)
    /// of positions `first..pos + n`; returns `(n, n_heads · head_dim)`. The `group`
    /// query heads of a KV head and a chunk of positions form one `(group · rows,
    /// head_dim)` matrix per KV head, so a chunk is two batched matmuls and a softmax;
    /// a query attends to the positions up to its own (and within its window on a
    /// sliding-window layer) through an additive mask, built for prefills (a decode step
    /// sees every key it is given). Queries go [`BATCHED_QUERY_ROWS`] at a time, which
    /// bounds the scores' memory (`n_heads · rows · keys` f32) for long prompts.
    fn attend_batched(
        &self,
        layer: usize,
        q: &Tensor,
        (k, v, first): (&Tensor, &Tensor, usize),
        pos: usize,
    ) -> Result<Tensor> {
        let n = q.dim(0)?;
        let mut chunks = Vec::with_capacity(n.div_ceil(BATCHED_QUERY_ROWS));
        for c0 in (0..n).step_by(BATCHED_QUERY_ROWS) {
            let rows = BATCHED_QUERY_ROWS.min(n - c0);
            // This chunk's keys: from its first query's window start to its last query.
            let start = self.window_start(layer, pos + c0 + 1);
            let len = pos + c0 + rows - start;
            let (k, v) = (k.narrow(1, start - first, len)?, v.narrow(1, start - first, len)?);
            chunks.push(self.attend_batched_rows(
                layer,
                &q.narrow(0, c0, rows)?,
                &k,
                &v,
                (pos + c0, start),
            )?);
        }
        Ok(if chunks.len() == 1 { chunks.swap_remove(0) } else { Tensor::cat(&chunks, 0)? })
    }

    /// One chunk of [`attend_batched`](Self::attend_batched): queries `(n, n_heads,
    /// head_dim)` at positions `pos..pos + n` over keys/values of positions
    /// `first..pos + n`.
    fn attend_batched_rows(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (pos, first): (usize, usize),
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let n = q.dim(0)?;
        let (heads, kv_heads, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let group = heads / kv_heads;
        let len = pos + n - first;
        let q = q.transpose(0, 1)?.contiguous()?.reshape((kv_heads, group * n, d))?;
        let mut att = (q.matmul(&k.t()?)? * cfg.query_scale())?;
        if let Some(cap) = cfg.attn_logit_softcap {
            att = ((att / cap)?.tanh()? * cap)?;
        }
        // Query `i` (position pos + i) sees keys from its window start to its own
        // position: key `j` is position first + j. A single query sees all `len` keys
        // by the choice of `first`; from two queries on, the first does not see the
        // last key. Window starts never decrease, so every row's range lies in `0..len`.
        if n > 1 {
            let mut mask = vec![f32::NEG_INFINITY; n * len];
            for (i, row) in mask.chunks_exact_mut(len).enumerate() {
                let seen = self.window_start(layer, pos + i + 1) - first..=pos + i - first;
                row[seen].fill(0.0);
            }
            let mask = Tensor::from_vec(mask, (n, len), q.device())?;
            att = att.reshape((kv_heads, group, n, len))?.broadcast_add(&mask)?.reshape((
                kv_heads,
                group * n,
                len,
            ))?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(v)?; // (kv_heads, group · n, d) = (heads, n, d) in head order
        Ok(y.reshape((heads, n, d))?.transpose(0, 1)?.contiguous()?.reshape((n, heads * d))?)
    }

    /// [`Attention::Fused`] over several segments: queries `(rows, n_heads, head_dim)`,
    /// segment `s`'s rows (`spans[s]`: first row, rows, first position) at positions
    /// `pos..pos + n` over its cache views `views[s]` (`(n_kv_heads, pos + n, head_dim)`);
    /// returns `(rows, n_heads · head_dim)`. Row `i` of a segment attends to positions
    /// `0..=pos + i` with exactly the computation a one-token decode at that position
    /// runs (batch invariance), whatever the other segments are.
    fn attend_fused(
        &self,
        layer: usize,
        q: &Tensor,
        views: &[KvView],
        spans: &[(usize, usize, usize)],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let width = cfg.n_heads * cfg.head_dim;
        let rows: usize = spans.iter().map(|&(_, n, _)| n).sum();
        let (q_store, q_layout) = q.storage_and_layout();
        let candle_core::Storage::Cpu(qs) = &*q_store else {
            return Err(CandleBackendError::invalid(
                "attention device",
                "non-CPU",
                "fused attention runs on the CPU",
            ));
        };
        let qs = qs.as_slice::<f32>()?;
        let q_start = q_layout.start_offset();
        let Some(qs) = qs.get(q_start..q_start + rows * width).filter(|_| q_layout.is_contiguous()) else {
            return Err(CandleBackendError::invalid(
                "attention layout",
                format!("{q_layout:?}"),
                "fused attention needs contiguous queries",
            ));
        };
        // Every segment's cache storage, held while the kernel reads it.
        let stores: Vec<_> = views
            .iter()
            .map(|view| {
                let scales =
                    view.scales.as_ref().map(|(ks, vs)| (ks.storage_and_layout(), vs.storage_and_layout()));
                (view.k.storage_and_layout(), view.v.storage_and_layout(), scales)
            })
            .collect();
        let mut parts = Vec::with_capacity(views.len());
        for ((k, v, scales), &(r0, n, pos)) in stores.iter().zip(spans) {
            let kv = cache_buffers(k, v, scales.as_ref())?;
            // The cache views are `narrow`s of `(n_kv_heads, capacity, head_dim)`
            // buffers: offset 0, head stride `capacity · head_dim`, rows contiguous.
            let ((_, k_layout), (_, v_layout)) = (k, v);
            let head_stride = k_layout.stride().first().copied().unwrap_or(0) / cfg.head_dim.max(1);
            let needed = cfg.n_kv_heads * head_stride * cfg.head_dim;
            let layout_ok = k_layout.start_offset() == 0
                && v_layout.start_offset() == 0
                && k_layout.stride() == v_layout.stride()
                && k_layout.stride().get(1..) == Some(&[cfg.head_dim, 1][..])
                && kv.len() >= needed
                && kv.scales_len() >= cfg.n_kv_heads * head_stride
                && pos + n <= head_stride;
            if !layout_ok {
                return Err(CandleBackendError::invalid(
                    "attention layout",
                    format!("{k_layout:?}"),
                    "fused attention needs the cache's own buffers",
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
            parts.push((kv, geometry, &qs[r0 * width..(r0 + n) * width], pos));
        }
        // Row `i` of a segment sees the positions up to its own (`pos + i`), within the
        // window.
        let seen: Vec<_> = parts
            .iter()
            .map(|&(_, _, _, pos)| {
                move |i: usize| {
                    let visible = pos + i + 1;
                    self.window_start(layer, visible)..visible
                }
            })
            .collect();
        let mut out = vec![0.0_f32; rows * width];
        // One call for all segments when their caches share an element type (caches of
        // one model do); otherwise one call per segment.
        if !attend_parts(&parts, &seen, &mut out) {
            // A single part's cache has one element type: each call writes.
            let mut at = 0;
            for (part, seen) in parts.iter().zip(&seen) {
                let n = part.2.len();
                let one = attend_parts(
                    std::slice::from_ref(part),
                    std::slice::from_ref(seen),
                    &mut out[at..at + n],
                );
                debug_assert!(one, "one segment's cache has one element type");
                at += n;
            }
        }
        drop((q_store, stores));
        Ok(Tensor::from_vec(out, (rows, width), &self.device)?)
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

/// `f(values, row stride)` over a CPU f32 matrix of `cols` columns whose rows are
/// contiguous (a narrow of a wider matrix included): `values` starts at its first
/// element. `None` for anything else (another device or dtype, other strides).
fn with_rows<R>(t: &Tensor, cols: usize, f: impl FnOnce(&[f32], usize) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { return None };
    let values = cpu.as_slice::<f32>().ok()?.get(layout.start_offset()..)?;
    match (layout.dims(), layout.stride()) {
        ([_, c], [row_stride, 1]) if *c == cols => Some(f(values, *row_stride)),
        _ => None,
    }
}

/// `silu(gate) · up` on the CPU in one pass ([`kernels::activation::silu_mul`], the
/// bits candle's two ops give); `None` where the operands are not CPU f32 matrices with
/// contiguous rows (the caller then runs candle's ops).
fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    let Ok((rows, cols)) = gate.dims2() else { return Ok(None) };
    if up.dims2().ok() != Some((rows, cols)) || !gate.device().is_cpu() || !up.device().is_cpu() {
        return Ok(None);
    }
    let mut out = vec![0.0_f32; rows * cols];
    let done = with_rows(gate, cols, |g, gs| {
        with_rows(up, cols, |u, us| {
            crate::kernels::activation::silu_mul((g, gs), (u, us), (rows, cols), &mut out)
        })
    });
    Ok(match done {
        Some(Some(Some(()))) => Some(Tensor::from_vec(out, (rows, cols), gate.device())?),
        _ => None,
    })
}

/// A segment's part of a fused attention call: its cache buffers, geometry, query rows
/// and first position.
type Part<'a> = (Kv<'a>, attention::Geometry, &'a [f32], usize);

/// A cache view's storage (its read guard) and layout.
type Store<'l, G> = (G, &'l candle_core::Layout);

/// The CPU buffers behind a cache view's keys and values (and a Q8 cache's scales).
fn cache_buffers<'a, G: std::ops::Deref<Target = candle_core::Storage>>(
    k: &'a Store<'_, G>,
    v: &'a Store<'_, G>,
    scales: Option<&'a (Store<'_, G>, Store<'_, G>)>,
) -> Result<Kv<'a>> {
    let (candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(vs)) = (&*k.0, &*v.0) else {
        return Err(CandleBackendError::invalid(
            "attention device",
            "non-CPU",
            "fused attention runs on the CPU",
        ));
    };
    Ok(match (ks, vs, scales) {
        (candle_core::CpuStorage::F16(ks), candle_core::CpuStorage::F16(vs), None) => Kv::F16(ks, vs),
        (
            candle_core::CpuStorage::U8(ks),
            candle_core::CpuStorage::U8(vs),
            Some(((kss, ksl), (vss, vsl))),
        ) => {
            let (candle_core::Storage::Cpu(kss), candle_core::Storage::Cpu(vss)) = (&**kss, &**vss) else {
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
    })
}

/// [`attention::attend_sequences`] over `parts` (with `seen[s]` the positions of
/// segment `s`'s rows) into `out`, when every part's cache has the same element type;
/// `false` (nothing written) when they differ.
fn attend_parts(
    parts: &[Part<'_>],
    seen: &[impl Fn(usize) -> std::ops::Range<usize> + Sync],
    out: &mut [f32],
) -> bool {
    fn rows_of<'a, T>(
        parts: &'a [Part<'a>],
        seen: &'a [impl Fn(usize) -> std::ops::Range<usize> + Sync],
        pick: impl Fn(&Kv<'a>) -> Option<((&'a [T], &'a [T]), Option<(&'a [f32], &'a [f32])>)>,
    ) -> Option<Vec<attention::Rows<'a, T>>> {
        parts
            .iter()
            .zip(seen)
            .map(|((kv, g, q, _), seen)| {
                let (kv, scales) = pick(kv)?;
                Some(attention::Rows { g: *g, q, kv, scales, seen })
            })
            .collect()
    }
    if let Some(rows) = rows_of(parts, seen, |kv| match kv {
        Kv::F32(k, v) => Some(((*k, *v), None)),
        _ => None,
    }) {
        attention::attend_sequences(&rows, out);
    } else if let Some(rows) = rows_of(parts, seen, |kv| match kv {
        Kv::F16(k, v) => Some(((*k, *v), None)),
        _ => None,
    }) {
        attention::attend_sequences(&rows, out);
    } else if let Some(rows) = rows_of(parts, seen, |kv| match kv {
        Kv::Q8(k, v, ks, vs) => Some(((*k, *v), Some((*ks, *vs)))),
        _ => None,
    }) {
        attention::attend_sequences(&rows, out);
    } else {
        return false;
    }
    true
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

/// One sequence's part of a forward pass: its tokens and its cache.
struct Segment<'c> {
    tokens: &'c [u32],
    cache: &'c mut LlamaCache,
}

/// What a loaded [`Llama`] holds, by part, in bytes ([`Llama::memory_report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryReport {
    /// Where the model lives (`Cpu`, `Cuda(…)`).
    pub device: String,
    /// The layers' matrices and the output head, in the types they run in (Q8_0 after
    /// the default re-quantization).
    pub weights: u64,
    /// Packed copies candle's CPU kernels make of some matrices at their first use
    /// (Q8_0 matrices on AVX-512-VNNI / AVX-VNNI CPUs); 0 elsewhere.
    pub packed_copies: u64,
    /// The token embedding table (kept in the file's blocks when it can be).
    pub embeddings: u64,
    /// Norm weights, biases and RoPE tables.
    pub tables: u64,
    /// What one position of one sequence's cache holds (every layer's keys and values).
    pub cache_per_position: u64,
    /// Positions one cache may grow to.
    pub cache_capacity: usize,
}

impl MemoryReport {
    /// The model's bytes: weights, packed copies, embeddings, tables.
    pub fn model_bytes(&self) -> u64 {
        self.weights + self.packed_copies + self.embeddings + self.tables
    }

    /// The model's bytes and one cache allocated for `positions` (a cache grows by
    /// doubling from its first 256 positions, up to its capacity).
    pub fn with_cache(&self, positions: usize) -> u64 {
        // A cache appended to one position at a time (how decoding grows it).
        let cursor = perpetua_kv_cache::CacheCursor::new(self.cache_capacity);
        let mut allocated = cursor.initial_allocation();
        while allocated < positions.min(self.cache_capacity) {
            allocated = cursor.grown_allocation(allocated, allocated + 1);
        }
        self.model_bytes() + allocated as u64 * self.cache_per_position
    }
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "{}: weights {:.1} MiB, packed copies {:.1} MiB, embeddings {:.1} MiB, tables {:.1} MiB \
             (model {:.1} MiB); cache {:.1} KiB per position, up to {} positions ({:.1} MiB)",
            self.device,
            mib(self.weights),
            mib(self.packed_copies),
            mib(self.embeddings),
            mib(self.tables),
            mib(self.model_bytes()),
            self.cache_per_position as f64 / 1024.0,
            self.cache_capacity,
            mib(self.cache_per_position * self.cache_capacity as u64),
        )
    }
}

/// The token embedding table: dense (safetensors, f32/f16 GGUF tables), or kept in the
/// file's quantized blocks with each looked-up row dequantized (the same values as
/// dequantizing the whole table: blocks never straddle rows), which keeps the widened
/// table (113 MB for SmolLM2) out of memory.
enum Embeddings {
    Dense(Tensor),
    Quantized {
        /// The table's blocks, row after row (host memory).
        bytes: Vec<u8>,
        dtype: GgmlDType,
        row_bytes: usize,
        hidden: usize,
    },
}

impl Embeddings {
    /// The table of a GGUF tensor `(vocab, hidden)`: quantized rows where the row is a
    /// whole number of blocks, else dense f32.
    fn new(table: &QTensor, device: &Device) -> Result<Self> {
        let dtype = table.dtype();
        let (_, hidden) = table.shape().dims2()?;
        let block = dtype.block_size();
        if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) || hidden % block != 0 {
            return Ok(Self::Dense(table.dequantize(device)?));
        }
        let row_bytes = hidden / block * dtype.type_size();
        Ok(Self::Quantized { bytes: table.data()?.into_owned(), dtype, row_bytes, hidden })
    }

    /// Rows `tokens` (also given as the `ids` tensor on `device`) as `(n, hidden)` f32.
    fn lookup(&self, tokens: &[u32], ids: &Tensor, device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(table) => Ok(table.index_select(ids, 0)?),
            Self::Quantized { bytes, dtype, row_bytes, hidden } => {
                let mut rows = Vec::with_capacity(tokens.len() * row_bytes);
                for &t in tokens {
                    let at = t as usize * row_bytes;
                    let row = bytes.get(at..at + row_bytes).ok_or_else(|| {
                        CandleBackendError::invalid("token id", t, "is not in the embedding table")
                    })?;
                    rows.extend_from_slice(row);
                }
                let storage = QStorage::from_data(Cow::Owned(rows), &Device::Cpu, *dtype)?;
                let x = QTensor::new(storage, (tokens.len(), *hidden))?.dequantize(&Device::Cpu)?;
                Ok(if device.is_cpu() { x } else { x.to_device(device)? })
            }
        }
    }
}

/// Rows of `t` (2-D) at a time into `target`: each chunk dequantized and quantized
/// again, the blocks concatenated. Identical to quantizing the whole dequantized matrix
/// (a block never straddles two rows) without widening it all to f32 at once. On other
/// devices than the CPU, or for tensors that are not 2-D, the whole matrix at once.
fn requantize_rows(t: &QTensor, target: GgmlDType, device: &Device) -> Result<QTensor> {
    /// Rows per chunk: a few MB of f32 for the widest matrices here.
    const ROWS: usize = 1024;
    let Ok((rows, cols)) = t.shape().dims2() else {
        return Ok(QTensor::quantize(&t.dequantize(device)?, target)?);
    };
    if !device.is_cpu() || cols % t.dtype().block_size() != 0 || cols % target.block_size() != 0 {
        return Ok(QTensor::quantize(&t.dequantize(device)?, target)?);
    }
    let row_bytes = cols / t.dtype().block_size() * t.dtype().type_size();
    let data = t.data()?;
    let mut out = Vec::with_capacity(rows * cols / target.block_size() * target.type_size());
    for start in (0..rows).step_by(ROWS) {
        let n = ROWS.min(rows - start);
        let chunk = &data[start * row_bytes..(start + n) * row_bytes];
        let storage = QStorage::from_data(Cow::Borrowed(chunk), device, t.dtype())?;
        let x = QTensor::new(storage, (n, cols))?.dequantize(device)?;
        out.extend_from_slice(&QTensor::quantize(&x, target)?.data()?);
    }
    Ok(QTensor::new(QStorage::from_data(Cow::Owned(out), device, target)?, (rows, cols))?)
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
        Llama::new_cache_with_capacity(self, self.cache_capacity)
    }

    fn new_cache_with_capacity(&self, capacity: usize) -> Result<LlamaCache> {
        Llama::new_cache_with_capacity(self, capacity)
    }

    fn forward(&self, tokens: &[u32], cache: &mut LlamaCache, out: &mut Vec<f32>) -> Result<()> {
        // Through the copy to `out`: an error anywhere leaves the cache's length.
        with_rollback(cache, |cache| self.forward_into(tokens, cache, out))
    }

    /// In place ([`Llama::shift_cache`]).
    fn shift_cache(&self, cache: &mut LlamaCache, start: usize, n: usize) -> Result<bool> {
        Llama::shift_cache(self, cache, start, n)?;
        Ok(true)
    }

    /// One pass for every sequence ([`Llama::forward_logits_batch`]): the weights read
    /// once for all rows.
    fn forward_batch(
        &self,
        batch: &mut [BatchItem<'_, LlamaCache>],
        out: &mut Vec<f32>,
    ) -> std::result::Result<(), BatchError<CandleBackendError>> {
        let mut items: Vec<(&[u32], &mut LlamaCache)> =
            batch.iter_mut().map(|item| (item.tokens, &mut *item.cache)).collect();
        let lens: Vec<usize> = items.iter().map(|(_, c)| c.seq_len()).collect();
        let logits =
            self.forward_logits_batch(&mut items).map_err(|(index, source)| BatchError { index, source })?;
        let copy = (|| -> Result<()> {
            out.clear();
            out.extend(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            Ok(())
        })();
        copy.map_err(|source| {
            // The pass went through but its logits did not reach the caller: undo it.
            for ((_, cache), &len) in items.iter_mut().zip(&lens) {
                let _ = cache.truncate(len);
            }
            BatchError { index: None, source }
        })
    }

    /// One batched pass ([`Llama::forward_logits_all`]) instead of the default
    /// token-by-token loop.
    fn forward_all(&self, tokens: &[u32], cache: &mut LlamaCache, out: &mut Vec<f32>) -> Result<()> {
        with_rollback(cache, |cache| {
            let logits = self.forward_logits_all(tokens, cache)?.to_dtype(DType::F32)?;
            out.clear();
            out.extend(logits.flatten_all()?.to_vec1::<f32>()?);
            Ok(())
        })
    }
}

impl Llama {
    /// [`LanguageModel::forward`](perpetua_generator::LanguageModel::forward) before
    /// its rollback: the last position's logits copied into `out`.
    fn forward_into(&self, tokens: &[u32], cache: &mut LlamaCache, out: &mut Vec<f32>) -> Result<()> {
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
}

/// [`Fused`]'s outputs through [`linear_rows`].
fn fused_rows<const N: usize>(f: &Fused, x: &Tensor) -> Result<[Tensor; N]> {
    f.forward_with(x, linear_rows)
}
