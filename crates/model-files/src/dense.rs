//! A llama checkpoint as plain `f32` arrays, for backends that bring their own tensor
//! library (the burn backend): the same GGUF / safetensors reading, validation and
//! typed errors as `perpetua_candle::Llama::load`, with every quantized matrix
//! dequantized on the CPU (GGUF Q4_1 → f32 is exact: each weight is `d·q + m`).

use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufReader;
use crate::safetensors::SafetensorsDir;

/// A row-major `rows × cols` matrix (`data[r · cols + c]`), in the orientation of the
/// checkpoint: a linear map's weight is `(out_features, in_features)`.
#[derive(Clone, PartialEq)]
pub struct DenseMatrix {
    /// Rows (`out_features` for a linear map, `vocab_size` for embeddings).
    pub rows: usize,
    /// Columns (`in_features`).
    pub cols: usize,
    /// `rows · cols` values, row after row.
    pub data: Vec<f32>,
}

impl std::fmt::Debug for DenseMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DenseMatrix({} × {})", self.rows, self.cols)
    }
}

/// The weights of one transformer block.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseLayer {
    /// RMSNorm weight before attention, `hidden_size` values.
    pub attn_norm: Vec<f32>,
    /// Query projection `(n_heads · head_dim, hidden_size)`.
    pub wq: DenseMatrix,
    /// Key projection `(n_kv_heads · head_dim, hidden_size)`.
    pub wk: DenseMatrix,
    /// Value projection `(n_kv_heads · head_dim, hidden_size)`.
    pub wv: DenseMatrix,
    /// Attention output projection `(hidden_size, n_heads · head_dim)`.
    pub wo: DenseMatrix,
    /// RMSNorm weight before the MLP, `hidden_size` values.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate `(intermediate_size, hidden_size)`.
    pub w_gate: DenseMatrix,
    /// SwiGLU up projection `(intermediate_size, hidden_size)`.
    pub w_up: DenseMatrix,
    /// SwiGLU down projection `(hidden_size, intermediate_size)`.
    pub w_down: DenseMatrix,
    /// Biases of the query, key and value projections ([`LlamaConfig::attention_bias`]).
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm weights of queries and keys ([`LlamaConfig::qk_norm`], `head_dim` each).
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// Norms of the attention and MLP outputs ([`LlamaConfig::sandwich_norms`]).
    pub post_norms: Option<[Vec<f32>; 2]>,
}

/// A whole llama-family checkpoint in `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseWeights {
    /// Hyper-parameters (validated). `rope_interleaved` says how RoPE pairs dimensions:
    /// `true` for GGUF (whose q/k rows the converter permuted), `false` for Hugging Face.
    pub config: LlamaConfig,
    /// Token embeddings `(vocab_size, hidden_size)`.
    pub embeddings: DenseMatrix,
    /// The transformer blocks, in order.
    pub layers: Vec<DenseLayer>,
    /// Final RMSNorm weight, `hidden_size` values.
    pub final_norm: Vec<f32>,
    /// Output projection `(vocab_size, hidden_size)`; `None` when tied to the embeddings.
    pub output: Option<DenseMatrix>,
}

impl DenseWeights {
    /// Load a GGUF file or a Hugging Face safetensors directory (`config.json` +
    /// `*.safetensors`), dequantizing every tensor to `f32`.
    ///
    /// Errors: exactly those of `perpetua_candle::Llama::load` —
    /// [`ModelError::ModelNotFound`], malformed files, missing tensors, bad
    /// shapes, unsupported dtypes or architectures.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_safetensors_dir(path)
        } else if path.exists() {
            Self::from_gguf(path)
        } else {
            Err(ModelError::ModelNotFound { path: path.to_path_buf() })
        }
    }

    /// Load a llama-architecture GGUF file (any type `perpetua_candle::Llama::from_gguf`
    /// reads), dequantized.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let mut file = GgufReader::open(path.as_ref(), &Device::Cpu)?;
        let config = file.llama_config()?;
        let (h, q_dim, kv_dim, ffn) = dims(&config);
        let mut read = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t: QTensor = file.tensor(name, shape)?;
            Ok(t.dequantize(&Device::Cpu)?)
        };
        let fused = config.architecture == crate::Architecture::Phi3;
        let d = config.head_dim;
        let embeddings = matrix(read("token_embd.weight", &[config.vocab_size, h])?)?;
        let final_norm = vector(read("output_norm.weight", &[h])?)?;
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("blk.{i}");
            let mut m = |name: &str, rows: usize, cols: usize| {
                matrix(read(&format!("{p}.{name}.weight"), &[rows, cols])?)
            };
            // Phi-3 keeps q/k/v in one `attn_qkv` and gate/up in one `ffn_up` (gate first).
            let [wq, wk, wv] = match fused {
                true => split_rows(m("attn_qkv", q_dim + 2 * kv_dim, h)?, [q_dim, kv_dim, kv_dim]),
                false => [m("attn_q", q_dim, h)?, m("attn_k", kv_dim, h)?, m("attn_v", kv_dim, h)?],
            };
            let wo = m("attn_output", h, q_dim)?;
            let [w_gate, w_up] = match fused {
                true => split_rows(m("ffn_up", 2 * ffn, h)?, [ffn, ffn]),
                false => [m("ffn_gate", ffn, h)?, m("ffn_up", ffn, h)?],
            };
            let w_down = m("ffn_down", h, ffn)?;
            let mut v = |name: &str, len: usize| vector(read(&format!("{p}.{name}"), &[len])?);
            layers.push(DenseLayer {
                attn_norm: v("attn_norm.weight", h)?,
                wq,
                wk,
                wv,
                wo,
                ffn_norm: v("ffn_norm.weight", h)?,
                w_gate,
                w_up,
                w_down,
                qkv_bias: match config.attention_bias {
                    true => {
                        Some([v("attn_q.bias", q_dim)?, v("attn_k.bias", kv_dim)?, v("attn_v.bias", kv_dim)?])
                    }
                    false => None,
                },
                qk_norm: match config.qk_norm {
                    true => Some([v("attn_q_norm.weight", d)?, v("attn_k_norm.weight", d)?]),
                    false => None,
                },
                post_norms: match config.sandwich_norms {
                    true => Some([v("post_attention_norm.weight", h)?, v("post_ffw_norm.weight", h)?]),
                    false => None,
                },
            });
        }
        let output = if file.has("output.weight") {
            Some(matrix(file.tensor("output.weight", &[config.vocab_size, h])?.dequantize(&Device::Cpu)?)?)
        } else {
            None
        };
        file.finish(config.architecture)?;
        Ok(Self { config, embeddings, layers, final_norm, output })
    }

    /// Load a Hugging Face llama checkpoint directory (f32 / f16 / bf16, as f32).
    pub fn from_safetensors_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let mut st = SafetensorsDir::open(dir.as_ref(), &Device::Cpu)?;
        let config = st.config.clone();
        let (h, q_dim, kv_dim, ffn) = dims(&config);
        let embeddings = matrix(st.take("model.embed_tokens.weight", &[config.vocab_size, h])?)?;
        let output = if st.hf.tie_word_embeddings {
            None
        } else {
            Some(matrix(st.take("lm_head.weight", &[config.vocab_size, h])?)?)
        };
        // Gemma stores norm weights as `w − 1`: the one is added back (as HF's norm does).
        let offset = config.architecture.norm_weights_offset();
        let norm = |st: &mut SafetensorsDir, name: &str, len: usize| -> Result<Vec<f32>> {
            let w = st.take(name, &[len])?;
            vector(if offset { (w + 1.0)? } else { w })
        };
        let final_norm = norm(&mut st, "model.norm.weight", h)?;
        let fused = config.architecture == crate::Architecture::Phi3;
        let d = config.head_dim;
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("model.layers.{i}");
            let name = |n: &str| format!("{p}.{n}");
            // Gemma's `post_attention_layernorm` follows attention; llama's precedes the MLP.
            let (attn_norm, ffn_norm, post_norms) = if config.sandwich_norms {
                let attn = norm(&mut st, &name("input_layernorm.weight"), h)?;
                let post_attn = norm(&mut st, &name("post_attention_layernorm.weight"), h)?;
                let ffn = norm(&mut st, &name("pre_feedforward_layernorm.weight"), h)?;
                let post_ffn = norm(&mut st, &name("post_feedforward_layernorm.weight"), h)?;
                (attn, ffn, Some([post_attn, post_ffn]))
            } else {
                let attn = norm(&mut st, &name("input_layernorm.weight"), h)?;
                (attn, norm(&mut st, &name("post_attention_layernorm.weight"), h)?, None)
            };
            let qk_norm = match config.qk_norm {
                true => Some([
                    norm(&mut st, &name("self_attn.q_norm.weight"), d)?,
                    norm(&mut st, &name("self_attn.k_norm.weight"), d)?,
                ]),
                false => None,
            };
            let qkv_bias = match config.attention_bias {
                true => Some([
                    vector(st.take(&name("self_attn.q_proj.bias"), &[q_dim])?)?,
                    vector(st.take(&name("self_attn.k_proj.bias"), &[kv_dim])?)?,
                    vector(st.take(&name("self_attn.v_proj.bias"), &[kv_dim])?)?,
                ]),
                false => None,
            };
            let mut m = |n: &str, rows: usize, cols: usize| {
                matrix(st.take(&name(&format!("{n}.weight")), &[rows, cols])?)
            };
            let [wq, wk, wv] = match fused {
                true => split_rows(m("self_attn.qkv_proj", q_dim + 2 * kv_dim, h)?, [q_dim, kv_dim, kv_dim]),
                false => [
                    m("self_attn.q_proj", q_dim, h)?,
                    m("self_attn.k_proj", kv_dim, h)?,
                    m("self_attn.v_proj", kv_dim, h)?,
                ],
            };
            let wo = m("self_attn.o_proj", h, q_dim)?;
            let [w_gate, w_up] = match fused {
                true => split_rows(m("mlp.gate_up_proj", 2 * ffn, h)?, [ffn, ffn]),
                false => [m("mlp.gate_proj", ffn, h)?, m("mlp.up_proj", ffn, h)?],
            };
            let w_down = m("mlp.down_proj", h, ffn)?;
            layers.push(DenseLayer {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                ffn_norm,
                w_gate,
                w_up,
                w_down,
                qkv_bias,
                qk_norm,
                post_norms,
            });
        }
        st.finish()?;
        Ok(Self { config, embeddings, layers, final_norm, output })
    }

    /// Check what a hand-built (or edited) value must satisfy before a backend sizes
    /// tensors from it: a valid [`LlamaConfig`], `config.n_layers` layers, and every
    /// matrix and norm vector of the shape the configuration implies, with
    /// `rows · cols` values. The loaders return validated weights.
    ///
    /// Errors: [`ModelError::InvalidParameter`] for the configuration,
    /// [`ModelError::BadShape`] naming the first tensor that does not fit.
    pub fn validate(&self) -> Result<()> {
        let c = &self.config;
        c.validate()?;
        if self.layers.len() != c.n_layers {
            return Err(ModelError::invalid("layers", self.layers.len(), "differs from config.n_layers"));
        }
        let (h, q_dim, kv_dim, ffn) = dims(c);
        let check = |name: String, m: &DenseMatrix, rows: usize, cols: usize| -> Result<()> {
            if m.rows != rows || m.cols != cols || m.data.len() != rows.saturating_mul(cols) {
                return Err(ModelError::BadShape {
                    name,
                    expected: vec![rows, cols],
                    actual: vec![m.rows, m.cols, m.data.len()],
                });
            }
            Ok(())
        };
        let norm = |name: String, v: &[f32]| -> Result<()> {
            if v.len() != h {
                return Err(ModelError::BadShape { name, expected: vec![h], actual: vec![v.len()] });
            }
            Ok(())
        };
        check("embeddings".into(), &self.embeddings, c.vocab_size, h)?;
        if let Some(output) = &self.output {
            check("output".into(), output, c.vocab_size, h)?;
        }
        norm("final_norm".into(), &self.final_norm)?;
        for (i, l) in self.layers.iter().enumerate() {
            let name = |t: &str| format!("layers[{i}].{t}");
            norm(name("attn_norm"), &l.attn_norm)?;
            norm(name("ffn_norm"), &l.ffn_norm)?;
            check(name("wq"), &l.wq, q_dim, h)?;
            check(name("wk"), &l.wk, kv_dim, h)?;
            check(name("wv"), &l.wv, kv_dim, h)?;
            check(name("wo"), &l.wo, h, q_dim)?;
            check(name("w_gate"), &l.w_gate, ffn, h)?;
            check(name("w_up"), &l.w_up, ffn, h)?;
            check(name("w_down"), &l.w_down, h, ffn)?;
            let sized = |what: &str, v: &[f32], len: usize| -> Result<()> {
                if v.len() != len {
                    return Err(ModelError::BadShape {
                        name: name(what),
                        expected: vec![len],
                        actual: vec![v.len()],
                    });
                }
                Ok(())
            };
            let present = [
                ("qkv_bias", l.qkv_bias.is_some(), c.attention_bias),
                ("qk_norm", l.qk_norm.is_some(), c.qk_norm),
                ("post_norms", l.post_norms.is_some(), c.sandwich_norms),
            ];
            if let Some((what, _, _)) = present.into_iter().find(|(_, has, wanted)| has != wanted) {
                return Err(ModelError::invalid(
                    "dense layer",
                    name(what),
                    "presence differs from the config",
                ));
            }
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                sized("qkv_bias[0]", bq, q_dim)?;
                sized("qkv_bias[1]", bk, kv_dim)?;
                sized("qkv_bias[2]", bv, kv_dim)?;
            }
            if let Some([nq, nk]) = &l.qk_norm {
                sized("qk_norm[0]", nq, c.head_dim)?;
                sized("qk_norm[1]", nk, c.head_dim)?;
            }
            if let Some([pa, pf]) = &l.post_norms {
                sized("post_norms[0]", pa, h)?;
                sized("post_norms[1]", pf, h)?;
            }
        }
        Ok(())
    }

    /// The output projection: [`output`](Self::output), or the embeddings when tied.
    pub fn output_or_embeddings(&self) -> &DenseMatrix {
        self.output.as_ref().unwrap_or(&self.embeddings)
    }
}

/// `m`'s rows cut into consecutive blocks of `sizes` rows (a fused projection's parts).
fn split_rows<const N: usize>(m: DenseMatrix, sizes: [usize; N]) -> [DenseMatrix; N] {
    let mut start = 0;
    sizes.map(|rows| {
        let data = m.data[start * m.cols..(start + rows) * m.cols].to_vec();
        start += rows;
        DenseMatrix { rows, cols: m.cols, data }
    })
}

/// `(hidden, q_dim, kv_dim, ffn)` widths.
fn dims(c: &LlamaConfig) -> (usize, usize, usize, usize) {
    (c.hidden_size, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.intermediate_size)
}

fn matrix(t: Tensor) -> Result<DenseMatrix> {
    let (rows, cols) = t.dims2()?;
    Ok(DenseMatrix { rows, cols, data: t.flatten_all()?.to_vec1::<f32>()? })
}

fn vector(t: Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}
