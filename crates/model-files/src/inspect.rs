//! What a model file holds, without loading its weights: `perpetua models inspect`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufReader;
use crate::safetensors::HfConfig;

/// A model file's configuration and tensor inventory, read from its headers only.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelInfo {
    /// `"gguf"` or `"safetensors"`.
    pub format: &'static str,
    /// The configuration the loaders would run (validated, with every refusal a
    /// loader applies to the metadata).
    pub config: LlamaConfig,
    /// Total number of weights over all tensors.
    pub parameters: u64,
    /// Tensor count per storage type (`"Q4_1"`, `"F32"`, `"BF16"`, …).
    pub tensor_types: BTreeMap<String, usize>,
}

impl ModelInfo {
    /// One line: format, architecture, size and tensor types, e.g.
    /// `gguf  llama  134.5 M  F32 ×61, Q4_1 ×150`.
    pub fn summary(&self) -> String {
        let types: Vec<String> = self.tensor_types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
        format!(
            "{}  {}  {:.1} M  {}",
            self.format,
            self.config.architecture,
            self.parameters as f64 / 1e6,
            types.join(", ")
        )
    }
}

impl std::fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(f, "format:        {}", self.format)?;
        writeln!(f, "architecture:  {}", c.architecture)?;
        writeln!(f, "parameters:    {} ({:.1} M)", self.parameters, self.parameters as f64 / 1e6)?;
        let types: Vec<String> = self.tensor_types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
        writeln!(f, "tensor types:  {}", types.join(", "))?;
        writeln!(f, "layers:        {}", c.n_layers)?;
        writeln!(f, "hidden:        {} (MLP {})", c.hidden_size, c.intermediate_size)?;
        writeln!(f, "heads:         {} query, {} key/value, width {}", c.n_heads, c.n_kv_heads, c.head_dim)?;
        writeln!(f, "vocabulary:    {}", c.vocab_size)?;
        writeln!(f, "context:       {}", c.max_context)?;
        writeln!(f, "rope:          theta {}, scaling {:?}", c.rope_theta, c.rope_scaling)?;
        let mut extras = Vec::new();
        if c.attention_bias {
            extras.push("q/k/v biases".to_string());
        }
        if c.qk_norm {
            extras.push("q/k norms".to_string());
        }
        if let Some(w) = c.sliding_window {
            match &c.sliding_layers {
                Some(layers) => {
                    let n = layers.iter().filter(|&&l| l).count();
                    extras.push(format!("sliding window {w} on {n} of {} layers", layers.len()));
                }
                None => extras.push(format!("sliding window {w}")),
            }
        }
        if let Some(theta) = c.rope_local_theta {
            extras.push(format!("windowed layers' rope theta {theta}"));
        }
        if c.hidden_act != crate::Activation::Silu {
            extras.push(format!("{:?} MLP", c.hidden_act));
        }
        if let Some(s) = c.embedding_scale {
            extras.push(format!("embeddings × {s:.3}"));
        }
        if c.attention_scale.is_some() {
            extras.push(format!("query scale {:.4}", c.query_scale()));
        }
        if let Some(cap) = c.attn_logit_softcap {
            extras.push(format!("attention soft-cap {cap}"));
        }
        if let Some(cap) = c.final_logit_softcap {
            extras.push(format!("logit soft-cap {cap}"));
        }
        if c.sandwich_norms {
            extras.push("post-attention/MLP norms".to_string());
        }
        write!(f, "extras:        {}", if extras.is_empty() { "none".to_string() } else { extras.join(", ") })
    }
}

/// Read `path`'s configuration and tensor inventory: a GGUF file's header, or a
/// checkpoint directory's `config.json` and `*.safetensors` headers. Errors are the
/// loaders' for the same file (an unsupported architecture or setting names the key).
pub fn inspect(path: impl AsRef<Path>) -> Result<ModelInfo> {
    let path = path.as_ref();
    if path.is_dir() {
        inspect_dir(path)
    } else if path.exists() {
        let mut file = GgufReader::open(path, &candle_core::Device::Cpu)?;
        let config = file.llama_config()?;
        let (parameters, tensor_types) = file.inventory();
        Ok(ModelInfo { format: "gguf", config, parameters, tensor_types })
    } else {
        Err(ModelError::ModelNotFound { path: path.to_path_buf() })
    }
}

fn inspect_dir(dir: &Path) -> Result<ModelInfo> {
    let config = HfConfig::read(dir)?;
    let mut parameters = 0u64;
    let mut tensor_types = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    for file in files {
        for (dtype, count) in safetensors_header(&file)? {
            parameters += count;
            *tensor_types.entry(dtype).or_insert(0) += 1;
        }
    }
    Ok(ModelInfo { format: "safetensors", config, parameters, tensor_types })
}

/// `(dtype, element count)` of every tensor in a safetensors file, from its header (an
/// 8-byte little-endian length, then that many bytes of JSON) without reading the data.
fn safetensors_header(file: &Path) -> Result<Vec<(String, u64)>> {
    use std::io::Read;
    let io = |source| ModelError::Io { path: file.to_path_buf(), source };
    let bad = |reason: String| ModelError::metadata(file.display().to_string(), reason);
    let mut f = std::fs::File::open(file).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(io)?.len();
    if len > file_len.saturating_sub(8) || len > 100 << 20 {
        return Err(bad(format!("header length {len} exceeds the file ({file_len} bytes)")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let mut out = Vec::with_capacity(header.len());
    for (name, t) in header.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let dtype =
            t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(format!("`{name}` has no dtype")))?;
        let shape =
            t.get("shape").and_then(|s| s.as_array()).ok_or_else(|| bad(format!("`{name}` has no shape")))?;
        let count = shape.iter().map(|d| d.as_u64().unwrap_or(0)).product();
        out.push((dtype.to_string(), count));
    }
    Ok(out)
}
