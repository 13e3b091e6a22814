//! [`BenchRecord`]: one measurement of `cargo xtask bench`, as the Rust contenders
//! (`examples/e2e.rs`) and llama.cpp's (`xtask/bench_llama_cpp.py`) print it, one JSON
//! object per process, and as the xtask reads it back to write the report. Every field
//! a mode does not measure is absent (`None`); keys this type does not name are kept in
//! [`extra`](BenchRecord::extra).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a decode run measured: the fields of a `Generation`'s counts and timings that
/// the report uses (llama.cpp reports the same names for its own loop).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecodeRecord {
    /// Prompt tokens fed by the prefill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_tokens: Option<usize>,
    /// Decode forward passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_passes: Option<usize>,
    /// Tokens kept in the output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_tokens: Option<usize>,
    /// Prefill time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_s: Option<f64>,
    /// Decode loop time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_s: Option<f64>,
    /// Model forward time inside the decode loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_s: Option<f64>,
    /// Sampling time inside the decode loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_s: Option<f64>,
    /// `prefill_tokens / prefill_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_tok_s: Option<f64>,
    /// `forward_passes / decode_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_tok_s: Option<f64>,
    /// `sampling_s / decode_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_share: Option<f64>,
}

/// One measurement (one contender, one mode, one process).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BenchRecord {
    /// `perpetua`, `perpetua-exact`, `candle-transformers` or `llama.cpp`.
    pub contender: String,
    /// `greedy`, `sampled`, `position`, `perpetual`, `long` or `tokens`.
    pub mode: String,
    /// The round of `cargo xtask bench` (set by the xtask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<usize>,
    /// Prompt length in tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<usize>,
    /// The process's peak RSS (`VmHWM`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// The process's wall time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// Model load time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_s: Option<f64>,
    /// `greedy` / `sampled` / `position`: the decode run.
    #[serde(flatten)]
    pub decode: DecodeRecord,
    /// `greedy` / `sampled`: the generated ids (the first from the prefill's logits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<u32>>,
    /// `position`: positions filled before the timed steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// `position`: timed decode steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// `position`: the fill's time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_s: Option<f64>,
    /// `position`: `position / fill_s` (set by the xtask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_tok_s: Option<f64>,
    /// `position`: why a contender could not run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// `perpetual` / `long`: new tokens asked for (or made).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_tokens: Option<usize>,
    /// `perpetual`: the run and its counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perpetual: Option<PerpetualRecord>,
    /// `long`: the context window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// `long`: wall time (prefill and rolls included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_s: Option<f64>,
    /// `long`: new tokens ÷ wall time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tok_s: Option<f64>,
    /// `long`: context rolls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolls: Option<usize>,
    /// `long`: roll time in total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll_s: Option<f64>,
    /// `long`: roll time per roll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll_s_each: Option<f64>,
    /// `long`: tokens re-prefilled by rolls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reprefilled_tokens: Option<usize>,
    /// `long`: finish reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish: Option<String>,
    /// `long`: the least RSS sampled every 1,000 tokens after the first roll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_first_roll_min_mib: Option<f64>,
    /// `long`: the most RSS sampled every 1,000 tokens after the first roll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_first_roll_max_mib: Option<f64>,
    /// llama.cpp: package versions and its system info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<Value>,
    /// Thread settings of the process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<Value>,
    /// Keys this type does not name (kept as they were).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `perpetual` mode: a perpetual run and a plain run with as many forward passes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PerpetualRecord {
    /// The mode's spec.
    pub spec: String,
    /// The perpetual run.
    pub run: DecodeRecord,
    /// Its wall time.
    pub wall_s: f64,
    /// Its finish reason.
    pub finish: String,
    /// Back steps, of which loop back steps.
    pub backsteps: usize,
    /// Back steps a strategy asked for after a token.
    pub loop_backsteps: usize,
    /// Tokens the back steps removed.
    pub tokens_removed: usize,
    /// EOS draws replaced.
    pub eos_avoided: usize,
    /// Context rolls.
    pub context_rolls: usize,
    /// The plain run (`StopAtEos`, the same number of forward passes).
    pub plain: DecodeRecord,
    /// Its wall time.
    pub plain_wall_s: f64,
    /// Its finish reason.
    pub plain_finish: String,
    /// `forward_passes == generated + removed`.
    pub identity_generated_plus_removed: bool,
    /// The exact accounting: `forward_passes == generated + removed + EOS back steps`.
    pub identity_with_eos_steps: bool,
    /// No re-prefill happened (no roll; the prefill fed the prompt but its last token).
    pub no_reprefill: bool,
}

impl BenchRecord {
    /// A record of `contender` in `mode`.
    pub fn new(contender: &str, mode: &str) -> Self {
        Self { contender: contender.to_owned(), mode: mode.to_owned(), ..Self::default() }
    }
}

/// `n / s`, 0 when nothing was timed.
pub fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

/// `n` with thousands separators (`12,345`).
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_output_reads_and_unknown_keys_survive_a_round_trip() {
        let line = r#"{"contender": "llama.cpp", "mode": "greedy", "prompt_tokens": 44, "n_ctx": 256,
            "load_s": 0.1, "prefill_tokens": 44, "forward_passes": 32, "prefill_s": 0.2, "decode_s": 0.5,
            "prefill_tok_s": 220.0, "decode_tok_s": 64.0, "ids": [1, 2, 3],
            "versions": {"python": "3.13"}, "peak_rss_mib": 171.0, "wall_s": 1.0}"#;
        let r: BenchRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r.contender, "llama.cpp");
        assert_eq!(r.decode.decode_tok_s, Some(64.0));
        assert_eq!(r.ids.as_deref(), Some(&[1, 2, 3][..]));
        assert_eq!(r.extra.get("n_ctx"), Some(&Value::from(256)));
        let back: BenchRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(8192), "8,192");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
