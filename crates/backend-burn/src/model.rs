//! The llama-architecture forward pass on burn: embeddings → `n_layers` × (RMSNorm →
//! grouped-query attention with RoPE → residual → RMSNorm → gated MLP → residual) →
//! RMSNorm → output projection, all in `f32`.

use std::path::Path;

use burn_tensor::activation::{silu, softmax};
use burn_tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use perpetua_kv_cache::{KvCache, with_rollback};
use perpetua_model_files::Activation;
use perpetua_model_files::LlamaConfig;
use perpetua_model_files::dense::{DenseMatrix, DenseWeights};

use crate::cache::LlamaCache;
use crate::error::{BurnBackendError, Result};

/// Positions per batched pass of a multi-token forward. The attention scores of a pass
/// are a `(kv heads, group · rows, visible)` f32 tensor (plus its mask and softmax), so
/// an unchunked 4,000-token prompt on SmolLM2 would allocate ≈ 576 MB per layer for
/// them; 128 rows bound it to ≈ 38 MB at the full 8,192-position context. A
/// `Generator` already feeds long prompts in chunks; this protects direct callers.
pub const PREFILL_ROWS: usize = 128;

/// How a model is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Device the weights and caches live on. Default: [`Device::default`], the first
    /// enabled backend in burn's priority order (GPUs before CPUs), so with only the
    /// default `ndarray` feature the CPU.
    pub device: Device,
    /// Capacity of caches made by [`LanguageModel::new_cache`](perpetua_generator::LanguageModel::new_cache)
    /// (default: the model's context length). At most the model's context.
    pub cache_capacity: Option<usize>,
}

struct Layer {
    /// `(1, hidden)`.
    attn_norm: Tensor<2>,
    /// `[W_q; W_k; W_v]ᵀ`: `(hidden, q_dim + 2 · kv_dim)`.
    wqkv: Tensor<2>,
    /// `W_oᵀ`: `(q_dim, hidden)`.
    wo: Tensor<2>,
    /// `(1, hidden)`.
    ffn_norm: Tensor<2>,
    /// `[W_gate; W_up]ᵀ`: `(hidden, 2 · intermediate)`.
    w_gate_up: Tensor<2>,
    /// `W_downᵀ`: `(intermediate, hidden)`.
    w_down: Tensor<2>,
    /// `[b_q; b_k; b_v]` as one `(1, q_dim + 2 · kv_dim)` row (Qwen2).
    qkv_bias: Option<Tensor<2>>,
    /// Per-head norms of queries and keys, `(1, 1, head_dim)` each (Qwen3, Gemma 3).
    qk_norm: Option<[Tensor<3>; 2]>,
    /// Norms of the attention and MLP outputs (Gemma).
    post_norms: Option<[Tensor<2>; 2]>,
}

/// A llama-family causal language model on burn, from GGUF (dequantized to `f32` at
/// load) or safetensors.
///
/// One model definition for every burn backend: the [`Device`] in [`LoadOptions`]
/// decides where it runs (`Device::ndarray()`, `Device::wgpu(..)`, `Device::cuda(0)`,
/// each behind the feature of the same name). Weights are immutable after loading;
/// every sequence has its own [`LlamaCache`].
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    /// `(vocab, hidden)`.
    embeddings: Tensor<2>,
    layers: Vec<Layer>,
    /// `(1, hidden)`.
    final_norm: Tensor<2>,
    /// Output projection transposed, `(hidden, vocab)`.
    output: Tensor<2>,
    /// `(max_context, head_dim / 2)` tables of `cos(p·θ_i)` and `sin(p·θ_i)`.
    rope_cos: Tensor<2>,
    rope_sin: Tensor<2>,
    /// The sliding-window layers' own tables ([`LlamaConfig::rope_local_theta`]).
    rope_local: Option<(Tensor<2>, Tensor<2>)>,
    cache_capacity: usize,
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
    /// Load a GGUF file or a Hugging Face safetensors directory ([`DenseWeights::load`]:
    /// every quantized matrix is dequantized to `f32` on the CPU, then uploaded to
    /// `options.device`).
    ///
    /// Errors: [`BurnBackendError::Load`] for missing or malformed files (the shared
    /// reader's typed error inside), [`BurnBackendError::InvalidParameter`] for a cache
    /// capacity outside `1..=max_context`.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        Self::from_dense(DenseWeights::load(path)?, options)
    }

    /// Build the model from weights already in memory (consumed: each matrix is
    /// transposed once into the `(in, out)` layout the matmuls read).
    ///
    /// Errors: [`BurnBackendError::Load`] when [`DenseWeights::validate`] refuses the
    /// weights (an invalid configuration, a layer count or tensor shape that does not
    /// match it), [`BurnBackendError::InvalidParameter`] for the cache capacity.
    pub fn from_dense(weights: DenseWeights, options: &LoadOptions) -> Result<Self> {
        weights.validate()?;
        let DenseWeights { config, embeddings, layers, final_norm, output } = weights;
        let cache_capacity = options.cache_capacity.unwrap_or(config.max_context);
        if cache_capacity == 0 || cache_capacity > config.max_context {
            return Err(BurnBackendError::invalid(
                "cache_capacity",
                cache_capacity,
                "must be in 1..=the model's context length",
            ));
        }
        let device = &options.device;
        let row = |v: Vec<f32>| -> Tensor<2> {
            let n = v.len();
            Tensor::from_data(TensorData::new(v, [1, n]), (device, DType::F32))
        };
        let transposed = |ms: &[&DenseMatrix]| transposed_stack(ms, device);
        let output = transposed(&[output.as_ref().unwrap_or(&embeddings)]);
        let head = |v: Vec<f32>| -> Tensor<3> {
            let n = v.len();
            Tensor::from_data(TensorData::new(v, [1, 1, n]), (device, DType::F32))
        };
        let layers = layers
            .into_iter()
            .map(|l| Layer {
                wqkv: transposed(&[&l.wq, &l.wk, &l.wv]),
                qkv_bias: l.qkv_bias.map(|[q, k, v]| row([q, k, v].concat())),
                qk_norm: l.qk_norm.map(|[q, k]| [head(q), head(k)]),
                wo: transposed(&[&l.wo]),
                w_gate_up: transposed(&[&l.w_gate, &l.w_up]),
                w_down: transposed(&[&l.w_down]),
                attn_norm: row(l.attn_norm),
                ffn_norm: row(l.ffn_norm),
                post_norms: l.post_norms.map(|[a, f]| [row(a), row(f)]),
            })
            .collect();
        let DenseMatrix { rows, cols, data } = embeddings;
        let embeddings = Tensor::from_data(TensorData::new(data, [rows, cols]), (device, DType::F32));
        let (rope_cos, rope_sin) = rope_tables(&config, config.rope_tables(), device);
        let rope_local = config.local_rope_tables().map(|tables| rope_tables(&config, tables, device));
        Ok(Self {
            device: device.clone(),
            embeddings,
            layers,
            final_norm: row(final_norm),
            output,
            rope_cos,
            rope_sin,
            rope_local,
            cache_capacity,
            config,
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
        if capacity == 0 || capacity > self.config.max_context {
            return Err(BurnBackendError::invalid(
                "cache capacity",
                capacity,
                "must be in 1..=the model's context length",
            ));
        }
        Ok(LlamaCache::new(
            self.config.n_layers,
            self.config.n_kv_heads,
            self.config.head_dim,
            capacity,
            &self.device,
        ))
    }

    /// Feed `tokens` at positions `cache.seq_len()..` and return the last position's
    /// logits as a `(1, vocab_size)` tensor on the model's device.
    ///
    /// Errors (the cache keeps its length): empty `tokens`, an id `>= vocab_size`, a
    /// cache of another model shape, [`CacheError::CapacityExceeded`](perpetua_kv_cache::CacheError::CapacityExceeded).
    pub fn forward_logits(&self, tokens: &[u32], cache: &mut LlamaCache) -> Result<Tensor<2>> {
        let mut last = None;
        self.in_chunks(tokens, cache, |x| last = Some(x))?;
        let x = last.ok_or_else(|| BurnBackendError::invalid("tokens", "[]", "must not be empty"))?;
        let rows = x.dims()[0];
        let last = x.slice([rows - 1..rows, 0..self.config.hidden_size]);
        Ok(self.softcap_logits(self.rms_norm(last, &self.final_norm).matmul(self.output.clone())))
    }

    /// Like [`forward_logits`](Self::forward_logits), but the logits of *every* fed
    /// position, `(n, vocab_size)` (row `i` predicts the token after `tokens[i]`), from
    /// batched passes of up to [`PREFILL_ROWS`] positions.
    pub fn forward_logits_all(&self, tokens: &[u32], cache: &mut LlamaCache) -> Result<Tensor<2>> {
        let mut rows = Vec::new();
        self.in_chunks(tokens, cache, |x| {
            rows.push(self.softcap_logits(self.rms_norm(x, &self.final_norm).matmul(self.output.clone())))
        })?;
        Ok(Tensor::cat(rows, 0))
    }

    /// Run `tokens` through [`hidden_states`](Self::hidden_states) [`PREFILL_ROWS`] at a
    /// time, committing each chunk, and hand each chunk's residual stream to `each`. On
    /// an error the cache goes back to its length before the call.
    fn in_chunks(
        &self,
        tokens: &[u32],
        cache: &mut LlamaCache,
        mut each: impl FnMut(Tensor<2>),
    ) -> Result<()> {
        // Checked for the whole input first, so a later chunk cannot fail on them.
        self.check_input(tokens, cache)?;
        with_rollback(cache, |cache| {
            for chunk in tokens.chunks(PREFILL_ROWS) {
                let x = self.hidden_states(chunk, cache)?;
                cache.commit(chunk.len())?;
                each(x);
            }
            Ok(())
        })
    }

    /// The errors a forward pass can meet, checked before anything is computed: empty
    /// `tokens`, an id outside the vocabulary, a cache of another model shape, no room.
    fn check_input(&self, tokens: &[u32], cache: &LlamaCache) -> Result<()> {
        let cfg = &self.config;
        if tokens.is_empty() {
            return Err(BurnBackendError::invalid("tokens", "[]", "must not be empty"));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(BurnBackendError::invalid("token id", bad, "is not in the vocabulary"));
        }
        if cache.n_layers() != self.layers.len() || cache.geometry() != (cfg.n_kv_heads, cfg.head_dim) {
            return Err(BurnBackendError::invalid(
                "cache",
                format!("{} layers, (kv heads, head dim) {:?}", cache.n_layers(), cache.geometry()),
                "was made for another model shape",
            ));
        }
        cache.ensure_room(tokens.len())?;
        Ok(())
    }

    /// The residual stream `(n, hidden)` after every layer for `tokens` at positions
    /// `cache.seq_len()..`: writes the new keys/values into the cache and leaves
    /// committing the length to the caller. Its only caller, [`in_chunks`](Self::in_chunks),
    /// checks the whole input (ids, cache shape, room) once and bounds `n`: attention
    /// here is one batched pass with a `(kv heads, group · n, visible)` score tensor.
    fn hidden_states(&self, tokens: &[u32], cache: &mut LlamaCache) -> Result<Tensor<2>> {
        let cfg = &self.config;
        let n = tokens.len();
        let pos = cache.seq_len();
        let (heads, kv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let group = heads / kv;
        let (q_dim, kv_dim, ffn) = (heads * hd, kv * hd, cfg.intermediate_size);
        let scale = cfg.query_scale();
        let visible = pos + n;

        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &self.device);
        let mut x = self.embeddings.clone().select(0, ids);
        if let Some(s) = cfg.embedding_scale {
            // Rounded to f32 first, as transformers multiplies in the activations' dtype.
            x = x.mul_scalar(f64::from(s as f32));
        }
        let half = hd / 2;
        let angles = |(cos, sin): (&Tensor<2>, &Tensor<2>)| {
            let cut = |t: &Tensor<2>| t.clone().slice([pos..visible, 0..half]).reshape([n, 1, half]);
            (cut(cos), cut(sin))
        };
        let global = angles((&self.rope_cos, &self.rope_sin));
        let local = self.rope_local.as_ref().map(|(c, s)| angles((c, s)));
        // Masks over (query row (g, i), key j): j > pos + i is hidden (causal), and on
        // windowed layers also j <= pos + i − window. Decode (n = 1) needs none unless a
        // window cuts into what it sees.
        let mask_for = |window: Option<usize>| {
            let cut = window.is_some_and(|w| visible > w);
            (n > 1 || cut).then(|| {
                let mut hidden = Vec::with_capacity(group * n * visible);
                for _ in 0..group {
                    for i in 0..n {
                        let first = window.map_or(0, |w| (pos + i + 1).saturating_sub(w));
                        hidden.extend((0..visible).map(|j| j > pos + i || j < first));
                    }
                }
                Tensor::<3, Bool>::from_data(TensorData::new(hidden, [1, group * n, visible]), &self.device)
                    .expand([kv, group * n, visible])
            })
        };
        let full_mask = mask_for(None);
        let window_mask = cfg.sliding_window.and_then(|w| mask_for(Some(w)));

        for (i, layer) in self.layers.iter().enumerate() {
            let sliding = cfg.is_sliding_layer(i);
            let (cos, sin) = match (&local, sliding) {
                (Some(local), true) => local,
                _ => &global,
            };
            let mask = if sliding { &window_mask } else { &full_mask };
            let h = self.rms_norm(x.clone(), &layer.attn_norm);
            let mut qkv = h.matmul(layer.wqkv.clone());
            if let Some(bias) = &layer.qkv_bias {
                qkv = qkv + bias.clone();
            }
            let mut q = qkv.clone().slice([0..n, 0..q_dim]).reshape([n, heads, hd]);
            let mut k = qkv.clone().slice([0..n, q_dim..q_dim + kv_dim]).reshape([n, kv, hd]);
            let v = qkv.slice([0..n, q_dim + kv_dim..q_dim + 2 * kv_dim]).reshape([n, kv, hd]);
            if let Some([wq, wk]) = &layer.qk_norm {
                q = self.rms_norm_heads(q, wq);
                k = self.rms_norm_heads(k, wk);
            }
            let q = self.rope(q, cos, sin);
            let k = self.rope(k, cos, sin);
            // (kv, n, hd) rows for the cache.
            let (k_all, v_all) = cache.write_and_view(i, k.swap_dims(0, 1), v.swap_dims(0, 1))?;
            // Query head h = j · group + g reads KV head j: rows (g, i) of KV head j.
            let q = q.reshape([n, kv, group, hd]).permute([1, 2, 0, 3]).reshape([kv, group * n, hd]);
            let mut scores = q.matmul(k_all.swap_dims(1, 2)).mul_scalar(scale);
            if let Some(cap) = cfg.attn_logit_softcap {
                scores = scores.div_scalar(cap).tanh().mul_scalar(cap);
            }
            let scores = match mask {
                Some(mask) => scores.mask_fill(mask.clone(), f32::NEG_INFINITY),
                None => scores,
            };
            let y = softmax(scores, 2).matmul(v_all);
            let y = y.reshape([kv, group, n, hd]).permute([2, 0, 1, 3]).reshape([n, q_dim]);
            let mut y = y.matmul(layer.wo.clone());
            if let Some([post_attn, _]) = &layer.post_norms {
                y = self.rms_norm(y, post_attn);
            }
            x = x + y;

            let h = self.rms_norm(x.clone(), &layer.ffn_norm);
            let gate_up = h.matmul(layer.w_gate_up.clone());
            let gate = gate_up.clone().slice([0..n, 0..ffn]);
            let up = gate_up.slice([0..n, ffn..2 * ffn]);
            let gate = match cfg.hidden_act {
                Activation::GeluTanh => gelu_tanh(gate),
                _ => silu(gate),
            };
            let mut y = (gate * up).matmul(layer.w_down.clone());
            if let Some([_, post_ffn]) = &layer.post_norms {
                y = self.rms_norm(y, post_ffn);
            }
            x = x + y;
        }
        Ok(x)
    }

    /// [`LlamaConfig::final_logit_softcap`]: `cap · tanh(logits / cap)`.
    fn softcap_logits(&self, logits: Tensor<2>) -> Tensor<2> {
        match self.config.final_logit_softcap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        }
    }

    /// RMSNorm over the last dimension of `(n, heads, head_dim)` with `(1, 1, head_dim)`
    /// weights (per-head q/k norms).
    fn rms_norm_heads(&self, x: Tensor<3>, w: &Tensor<3>) -> Tensor<3> {
        let inv = x.clone().powf_scalar(2.0).mean_dim(2).add_scalar(self.config.rms_norm_eps).sqrt().recip();
        x * inv * w.clone()
    }

    /// `x / sqrt(mean(x²) + eps) · w` over the last dimension of `(n, hidden)`.
    fn rms_norm(&self, x: Tensor<2>, w: &Tensor<2>) -> Tensor<2> {
        let inv = x.clone().powf_scalar(2.0).mean_dim(1).add_scalar(self.config.rms_norm_eps).sqrt().recip();
        x * inv * w.clone()
    }

    /// A context shift of `cache` ([`LanguageModel::shift_cache`]): drop positions
    /// `start..start + n`, move the rest down and rotate their keys by `−n` positions
    /// (the table's angles for `n`: `cos(nθ)`, `−sin(nθ)`), as the candle backend does.
    /// Kept entries still reflect the dropped text they attended to.
    ///
    /// [`LanguageModel::shift_cache`]: perpetua_generator::LanguageModel::shift_cache
    pub fn shift_cache(&self, cache: &mut LlamaCache, start: usize, n: usize) -> Result<()> {
        if n >= self.config.max_context {
            return Err(BurnBackendError::invalid("shift", n, "must be below the model's max_context"));
        }
        let half = self.config.head_dim / 2;
        cache.shift(start, n, |layer, keys| {
            let m = keys.dims()[0];
            // Each layer's own table (Gemma 3's windowed layers have their own base).
            let (cos, sin) = match &self.rope_local {
                Some(local) if self.config.is_sliding_layer(layer) => (&local.0, &local.1),
                _ => (&self.rope_cos, &self.rope_sin),
            };
            let cos = cos.clone().slice([n..n + 1, 0..half]).reshape([1, 1, half]).expand([m, 1, half]);
            let sin = sin.clone().slice([n..n + 1, 0..half]).neg().reshape([1, 1, half]).expand([m, 1, half]);
            self.rope(keys, &cos, &sin)
        })?;
        Ok(())
    }

    /// Rotate `(n, heads, head_dim)` queries/keys by their positions' angles
    /// (`cos`/`sin`: `(n, 1, head_dim / 2)`).
    fn rope(&self, x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
        let [n, h, d] = x.dims();
        let half = d / 2;
        if self.config.rope_interleaved {
            // Pairs (2i, 2i + 1).
            let pairs = x.reshape([n, h, half, 2]);
            let even = pairs.clone().slice([0..n, 0..h, 0..half, 0..1]).reshape([n, h, half]);
            let odd = pairs.slice([0..n, 0..h, 0..half, 1..2]).reshape([n, h, half]);
            let r_even = even.clone() * cos.clone() - odd.clone() * sin.clone();
            let r_odd = even * sin.clone() + odd * cos.clone();
            Tensor::stack::<4>(vec![r_even, r_odd], 3).reshape([n, h, d])
        } else {
            // Pairs (i, i + d/2).
            let first = x.clone().slice([0..n, 0..h, 0..half]);
            let second = x.slice([0..n, 0..h, half..d]);
            let r_first = first.clone() * cos.clone() - second.clone() * sin.clone();
            let r_second = second * cos.clone() + first * sin.clone();
            Tensor::cat(vec![r_first, r_second], 2)
        }
    }
}

/// `[M_1; M_2; …]ᵀ` as one `(cols, Σ rows_i)` tensor: the matrices share `cols`.
fn transposed_stack(ms: &[&DenseMatrix], device: &Device) -> Tensor<2> {
    let cols = ms.first().map_or(0, |m| m.cols);
    let rows: usize = ms.iter().map(|m| m.rows).sum();
    let mut t = vec![0.0_f32; rows * cols];
    let mut r0 = 0;
    for m in ms {
        for (r, row) in m.data.chunks_exact(cols).enumerate() {
            for (c, &w) in row.iter().enumerate() {
                t[c * rows + r0 + r] = w;
            }
        }
        r0 += m.rows;
    }
    Tensor::from_data(TensorData::new(t, [cols, rows]), (device, DType::F32))
}

/// GELU with its tanh approximation (`gelu_pytorch_tanh`, Gemma's MLP):
/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`.
fn gelu_tanh(x: Tensor<2>) -> Tensor<2> {
    let inner = (x.clone() + x.clone().powf_scalar(3.0).mul_scalar(0.044715))
        .mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// RoPE tables ([`LlamaConfig::rope_tables`], the candle backend's own, so both
/// backends rotate by identical angles) as `(max_context, head_dim/2)` tensors.
fn rope_tables(
    config: &LlamaConfig,
    (cos, sin): (Vec<f32>, Vec<f32>),
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let shape = [config.max_context, config.head_dim / 2];
    let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, shape), (device, DType::F32));
    (table(cos), table(sin))
}

/// Read a `(rows, vocab)` logits tensor back to the host into `out` (cleared first).
fn read_into(logits: Tensor<2>, out: &mut Vec<f32>) -> Result<()> {
    let data = logits
        .try_into_data()
        .map_err(|e| BurnBackendError::Device(format!("reading logits back: {e:?}")))?;
    let values =
        data.as_slice::<f32>().map_err(|e| BurnBackendError::Device(format!("logits are not f32: {e:?}")))?;
    out.clear();
    out.extend_from_slice(values);
    Ok(())
}

impl perpetua_generator::LanguageModel for Llama {
    type Cache = LlamaCache;
    type Error = BurnBackendError;

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
        // Through the read-back: an error anywhere leaves the cache's length.
        with_rollback(cache, |cache| read_into(self.forward_logits(tokens, cache)?, out))
    }

    /// In place ([`Llama::shift_cache`]).
    fn shift_cache(&self, cache: &mut LlamaCache, start: usize, n: usize) -> Result<bool> {
        Llama::shift_cache(self, cache, start, n)?;
        Ok(true)
    }

    /// One batched pass ([`Llama::forward_logits_all`]).
    fn forward_all(&self, tokens: &[u32], cache: &mut LlamaCache, out: &mut Vec<f32>) -> Result<()> {
        with_rollback(cache, |cache| read_into(self.forward_logits_all(tokens, cache)?, out))
    }
}
