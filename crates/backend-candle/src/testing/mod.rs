//! Test doubles (feature `testing`): a tiny random Hugging Face llama checkpoint (2
//! layers, hidden 64, grouped-query attention, untied output head) that tests write to a
//! directory and load with either backend, and in [`kernels`] the hot CPU kernels with
//! their baselines for the kernel benchmark.

pub mod kernels;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{CandleBackendError, Result};

/// `config.json` of [`tiny_llama_weights`]: vocabulary 101, hidden 64, intermediate 96,
/// 2 layers, 4 query heads over 2 key/value heads, context 64, untied head.
pub const TINY_LLAMA_CONFIG: &str = r#"{
  "hidden_size": 64, "intermediate_size": 96, "vocab_size": 101,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
  "tie_word_embeddings": false
}"#;

/// Random f32 weights of [`TINY_LLAMA_CONFIG`] under the Hugging Face tensor names
/// (scaled so the logits stay in a realistic range).
pub fn tiny_llama_weights() -> Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f64| -> Result<()> {
        w.insert(name, (Tensor::randn(0f32, 1f32, shape, &dev)? * scale)?);
        Ok(())
    };
    put("model.embed_tokens.weight".into(), &[101, 64], 1.0)?;
    put("lm_head.weight".into(), &[101, 64], 0.2)?;
    put("model.norm.weight".into(), &[64], 1.0)?;
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        put(format!("{p}.self_attn.q_proj.weight"), &[64, 64], 0.15)?;
        put(format!("{p}.self_attn.k_proj.weight"), &[32, 64], 0.15)?;
        put(format!("{p}.self_attn.v_proj.weight"), &[32, 64], 0.15)?;
        put(format!("{p}.self_attn.o_proj.weight"), &[64, 64], 0.15)?;
        put(format!("{p}.mlp.gate_proj.weight"), &[96, 64], 0.15)?;
        put(format!("{p}.mlp.up_proj.weight"), &[96, 64], 0.15)?;
        put(format!("{p}.mlp.down_proj.weight"), &[64, 96], 0.15)?;
        put(format!("{p}.input_layernorm.weight"), &[64], 1.0)?;
        put(format!("{p}.post_attention_layernorm.weight"), &[64], 1.0)?;
    }
    Ok(w)
}

/// Write `weights` as a checkpoint directory (`config.json` = [`TINY_LLAMA_CONFIG`],
/// `model.safetensors` in `dtype`).
pub fn write_tiny_llama(dir: &Path, weights: &HashMap<String, Tensor>, dtype: DType) -> Result<()> {
    let io = |source| CandleBackendError::Io { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("config.json"), TINY_LLAMA_CONFIG).map_err(io)?;
    let converted = weights
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    candle_core::safetensors::save(&converted, dir.join("model.safetensors"))?;
    Ok(())
}
