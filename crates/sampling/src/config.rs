//! A serde sampling configuration that reads HF `generation_config.json`.
//!
//! Field names are HF `GenerationConfig`'s where HF has the setting (`temperature`,
//! `top_k`, `top_p`, `min_p`, `typical_p`, `epsilon_cutoff`, `eta_cutoff`,
//! `repetition_penalty`, `no_repeat_ngram_size`, `min_new_tokens`, `bad_words_ids`,
//! `suppress_tokens`, `do_sample`, `eos_token_id`), OpenAI's for its penalties and
//! bias (`frequency_penalty`, `presence_penalty`, `logit_bias`), llama.cpp's for its
//! samplers (`dry_*`, `top_n_sigma`, `xtc_*`, `mirostat*`), and ours for the rest.
//! Unknown fields are ignored (HF files hold many unrelated ones); an invalid value is
//! a typed error naming the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chain::{Chain, ChainBuilder, Stage};
use crate::processors::{
    AllowList, BannedSequences, BannedTokens, Dry, DynamicTemperature, EpsilonCutoff, EtaCutoff,
    FrequencyPresencePenalty, LogitBias, MinNewTokens, MinP, NoRepeatNGram, RepetitionPenalty, SuppressEos,
    Temperature, TopK, TopNSigma, TopP, Typical, Xtc,
};
use crate::samplers::{Greedy, Mirostat, MirostatV2};
use crate::{Result, SamplingError};

/// A token id or a list of them (HF writes `eos_token_id` either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

/// Sampling settings, deserialisable from HF `generation_config.json` and JSON of our
/// own; [`SamplingConfig::chain`] validates and builds the [`Chain`].
///
/// Absent fields (and values at which HF skips a warper: `top_k = 0`, `top_p = 1`,
/// `typical_p = 1`, `epsilon_cutoff = 0`, `eta_cutoff = 0`, `repetition_penalty = 1`,
/// `no_repeat_ngram_size = 0`, `temperature = 1`) add no stage. Stages go in the
/// default order of [`Stage`].
///
/// Differences from HF, on purpose: HF's `GenerationConfig` defaults `do_sample` to
/// `false` and `top_k` to 50; here nothing is implied: an absent `do_sample` samples
/// (unless `temperature = 0`, which is greedy) and an absent `top_k` adds no top-k.
/// With `do_sample = false`, the warpers (temperature and truncations) are skipped and
/// the sampler is greedy, while penalties and masks still apply, as in HF.
///
/// ```
/// use perpetua_sampling::SamplingConfig;
///
/// // A Llama-3-style generation_config.json: unknown fields are ignored.
/// let json = r#"{"bos_token_id": 128000, "eos_token_id": [128001, 128009],
///               "do_sample": true, "temperature": 0.6, "top_p": 0.9,
///               "transformers_version": "4.40.0"}"#;
/// let config = SamplingConfig::from_json_str(json)?;
/// assert_eq!(config.eos_token_ids(), vec![128001, 128009]);
/// let chain = config.chain()?;
/// assert_eq!(chain.stage_names().collect::<Vec<_>>(), ["temperature", "top_p"]);
///
/// let bad = SamplingConfig::from_json_str(r#"{"top_p": 1.5}"#)?;
/// assert!(bad.chain().is_err()); // invalid parameter `top_p` = 1.5
/// # Ok::<(), perpetua_sampling::SamplingError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// HF `do_sample`: `false` = greedy (warpers skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    /// HF `temperature` (`0` = greedy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// HF `top_k` (`0` = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// HF `top_p` (`1` = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// HF `min_p`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// HF `typical_p` (`1` = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typical_p: Option<f32>,
    /// HF `epsilon_cutoff` (`0` = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_cutoff: Option<f32>,
    /// HF `eta_cutoff` (`0` = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_cutoff: Option<f32>,
    /// llama.cpp `top_n_sigma`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_n_sigma: Option<f32>,
    /// llama.cpp `xtc_probability` (with `xtc_threshold`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xtc_probability: Option<f32>,
    /// llama.cpp `xtc_threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xtc_threshold: Option<f32>,
    /// Seed of XTC's own RNG (ours; default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xtc_seed: Option<u64>,
    /// llama.cpp `dynatemp_range` `δ`: when `> 0`, the temperature stage is a
    /// [`DynamicTemperature`] over `[max(0, T − δ), T + δ]` (`T` = `temperature`, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynatemp_range: Option<f32>,
    /// llama.cpp `dynatemp_exponent` (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynatemp_exponent: Option<f32>,
    /// llama.cpp `mirostat`: `0`/absent = off, `1` = [`Mirostat`] (m = 100),
    /// `2` = [`MirostatV2`]; replaces the multinomial sampler (the configured stages
    /// still run before it; llama.cpp runs only temperature there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirostat: Option<u8>,
    /// llama.cpp `mirostat_tau` (default 5.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirostat_tau: Option<f32>,
    /// llama.cpp `mirostat_eta` (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirostat_eta: Option<f32>,
    /// HF `repetition_penalty` (`1` = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Window of the repetition penalty in tokens (ours; `0`/absent = whole history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty_last_n: Option<usize>,
    /// Whether prompt tokens count for the repetition penalty (ours; default `true`, as HF).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty_include_prompt: Option<bool>,
    /// OpenAI `frequency_penalty`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// OpenAI `presence_penalty`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// Window of the frequency/presence penalties (ours; `0`/absent = all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_presence_last_n: Option<usize>,
    /// Whether prompt tokens count for frequency/presence (ours; default `false`, as OpenAI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_presence_include_prompt: Option<bool>,
    /// llama.cpp `dry_multiplier` (`0`/absent = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_multiplier: Option<f32>,
    /// llama.cpp `dry_base` (default 1.75).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_base: Option<f32>,
    /// llama.cpp `dry_allowed_length` (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_allowed_length: Option<usize>,
    /// DRY window (`0`/absent = whole context; see [`Dry`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_penalty_last_n: Option<usize>,
    /// DRY sequence breakers as token-id sequences (see [`Dry`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_sequence_breakers: Option<Vec<Vec<u32>>>,
    /// HF `no_repeat_ngram_size` (`0` = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_repeat_ngram_size: Option<usize>,
    /// HF `min_new_tokens`: EOS masked for the first `min_new_tokens` tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_new_tokens: Option<usize>,
    /// HF `bad_words_ids`: banned token sequences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    /// HF `suppress_tokens`: banned token ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppress_tokens: Option<Vec<u32>>,
    /// vLLM `allowed_token_ids`: only these may be sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_token_ids: Option<Vec<u32>>,
    /// Mask every EOS id at every step (ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppress_eos: Option<bool>,
    /// HF `remove_invalid_values`: repair NaN / `+inf` logits instead of failing
    /// ([`NonFinitePolicy::Sanitize`](crate::NonFinitePolicy)). Default off: an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_invalid_values: Option<bool>,
    /// OpenAI `logit_bias`: token id (a JSON object key, so a string) → additive bias.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// HF `eos_token_id`: the model's EOS id(s), for the generator's context (not a stage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<OneOrMany>,
}

impl SamplingConfig {
    /// Parse JSON (unknown fields ignored). Errors: malformed JSON or a field of the
    /// wrong type ([`SamplingError::Config`], with serde's line and column).
    pub fn from_json_str(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| SamplingError::Config(e.to_string()))
    }

    /// Read and parse a JSON file, e.g. a model's `generation_config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| SamplingError::Config(format!("{}: {e}", path.display())))?;
        Self::from_json_str(&text).map_err(|e| match e {
            SamplingError::Config(msg) => SamplingError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// The EOS ids of `eos_token_id` (empty when absent).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            None => Vec::new(),
            Some(OneOrMany::One(id)) => vec![*id],
            Some(OneOrMany::Many(ids)) => ids.clone(),
        }
    }

    /// Whether this config samples (rather than decodes greedily).
    pub fn samples(&self) -> bool {
        self.do_sample.unwrap_or(true) && self.temperature != Some(0.0)
    }

    /// Check every value (the same checks as [`chain`](Self::chain)).
    pub fn validate(&self) -> Result<()> {
        self.builder().map(drop)
    }

    /// Validate and build the chain.
    pub fn chain(&self) -> Result<Chain> {
        Ok(self.builder()?.build())
    }

    /// Validate and return a builder with this config's stages, to add custom stages.
    pub fn builder(&self) -> Result<ChainBuilder> {
        let mut b = ChainBuilder::new();

        if let Some(map) = &self.logit_bias {
            let mut pairs = Vec::with_capacity(map.len());
            for (key, &bias) in map {
                let id: u32 = key
                    .trim()
                    .parse()
                    .map_err(|_| SamplingError::invalid("logit_bias", key, "keys must be token ids"))?;
                pairs.push((id, bias));
            }
            b = b.stage(Stage::LogitBias, LogitBias::new(pairs)?);
        }
        if let Some(penalty) = self.repetition_penalty {
            let p = RepetitionPenalty::new(penalty)?
                .with_last_n(self.repetition_penalty_last_n.unwrap_or(0))
                .with_include_prompt(self.repetition_penalty_include_prompt.unwrap_or(true));
            if penalty != 1.0 {
                b = b.stage(Stage::RepetitionPenalty, p);
            }
        }
        let (frequency, presence) =
            (self.frequency_penalty.unwrap_or(0.0), self.presence_penalty.unwrap_or(0.0));
        let fp = FrequencyPresencePenalty::new(frequency, presence)?;
        if frequency != 0.0 || presence != 0.0 {
            b = b.stage(
                Stage::FrequencyPresencePenalty,
                fp.with_last_n(self.frequency_presence_last_n.unwrap_or(0))
                    .with_include_prompt(self.frequency_presence_include_prompt.unwrap_or(false)),
            );
        }
        if let Some(multiplier) = self.dry_multiplier {
            let dry = Dry::new(
                multiplier,
                self.dry_base.unwrap_or(1.75),
                self.dry_allowed_length.unwrap_or(2),
                self.dry_penalty_last_n.unwrap_or(0),
                self.dry_sequence_breakers.clone().unwrap_or_default(),
            )?;
            if multiplier != 0.0 {
                b = b.stage(Stage::Dry, dry);
            }
        }
        if let Some(n) = self.no_repeat_ngram_size
            && n > 0
        {
            b = b.stage(Stage::NoRepeatNGram, NoRepeatNGram::new(n)?);
        }
        if let Some(ids) = &self.suppress_tokens
            && !ids.is_empty()
        {
            b = b.stage(Stage::BannedTokens, BannedTokens::new(ids.iter().copied()));
        }
        if let Some(seqs) = &self.bad_words_ids
            && !seqs.is_empty()
        {
            b = b.stage(
                Stage::BannedSequences,
                BannedSequences::new(seqs.iter().cloned()).map_err(|_| {
                    SamplingError::invalid(
                        "bad_words_ids",
                        format!("{seqs:?}"),
                        "sequences must be non-empty",
                    )
                })?,
            );
        }
        if let Some(ids) = &self.allowed_token_ids {
            b = b.stage(
                Stage::AllowList,
                AllowList::new(ids.iter().copied()).map_err(|_| {
                    SamplingError::invalid("allowed_token_ids", "[]", "must list at least one id")
                })?,
            );
        }
        if let Some(min) = self.min_new_tokens
            && min > 0
        {
            b = b.stage(Stage::MinNewTokens, MinNewTokens::new(min));
        }
        if self.suppress_eos == Some(true) {
            b = b.stage(Stage::SuppressEos, SuppressEos::new());
        }
        if self.remove_invalid_values == Some(true) {
            b = b.non_finite_policy(crate::NonFinitePolicy::Sanitize);
        }

        // Warpers: validated even when greedy skips them, so a typo never hides.
        let warpers = self.warpers()?;
        let mirostat: Option<Box<dyn crate::Sampler>> = match self.mirostat.unwrap_or(0) {
            0 => None,
            1 => Some(Box::new(Mirostat::new(
                self.mirostat_tau.unwrap_or(5.0),
                self.mirostat_eta.unwrap_or(0.1),
                100,
            )?)),
            2 => Some(Box::new(MirostatV2::new(
                self.mirostat_tau.unwrap_or(5.0),
                self.mirostat_eta.unwrap_or(0.1),
            )?)),
            other => return Err(SamplingError::invalid("mirostat", other, "must be 0, 1 or 2")),
        };
        if self.samples() {
            for (stage, p) in warpers {
                b = b.stage_boxed(stage, p);
            }
            if let Some(sampler) = mirostat {
                b = b.sampler_boxed(sampler);
            }
        } else {
            b = b.sampler(Greedy);
        }
        Ok(b)
    }

    /// The temperature and truncation stages, validated, skipping HF's no-op values.
    fn warpers(&self) -> Result<Vec<(Stage, Box<dyn crate::LogitsProcessor>)>> {
        let mut out: Vec<(Stage, Box<dyn crate::LogitsProcessor>)> = Vec::new();
        let range = self.dynatemp_range.unwrap_or(0.0);
        if !range.is_finite() || range < 0.0 {
            return Err(SamplingError::invalid("dynatemp_range", range, "must be finite and >= 0"));
        }
        if range > 0.0 {
            let t = self.temperature.unwrap_or(1.0);
            Temperature::new(t)?;
            let stage = DynamicTemperature::new(
                (t - range).max(0.0),
                t + range,
                self.dynatemp_exponent.unwrap_or(1.0),
            )?;
            out.push((Stage::Temperature, Box::new(stage)));
        } else if let Some(t) = self.temperature {
            let stage = Temperature::new(t)?;
            if t != 1.0 {
                out.push((Stage::Temperature, Box::new(stage)));
            }
        }
        if let Some(k) = self.top_k
            && k > 0
        {
            out.push((Stage::TopK, Box::new(TopK::new(k)?)));
        }
        if let Some(p) = self.top_p {
            let stage = TopP::new(p)?;
            if p != 1.0 {
                out.push((Stage::TopP, Box::new(stage)));
            }
        }
        if let Some(p) = self.min_p {
            out.push((Stage::MinP, Box::new(MinP::new(p)?)));
        }
        if let Some(p) = self.typical_p {
            let stage = Typical::new(p)?;
            if p != 1.0 {
                out.push((Stage::Typical, Box::new(stage)));
            }
        }
        // 0 is HF's "off" (outside the constructor's domain 0 < x < 1).
        if let Some(e) = self.epsilon_cutoff
            && e != 0.0
        {
            out.push((Stage::EpsilonCutoff, Box::new(EpsilonCutoff::new(e)?)));
        }
        // 0 is HF's "off" (outside the constructor's domain 0 < x < 1).
        if let Some(e) = self.eta_cutoff
            && e != 0.0
        {
            out.push((Stage::EtaCutoff, Box::new(EtaCutoff::new(e)?)));
        }
        if let Some(n) = self.top_n_sigma {
            out.push((Stage::TopNSigma, Box::new(TopNSigma::new(n)?)));
        }
        match (self.xtc_probability, self.xtc_threshold) {
            (None, None) => {}
            (probability, threshold) => {
                // llama.cpp defaults: probability 0 (off), threshold 0.1.
                let probability = probability.unwrap_or(0.0);
                let stage = Xtc::new(probability, threshold.unwrap_or(0.1), self.xtc_seed.unwrap_or(0))?;
                if probability > 0.0 {
                    out.push((Stage::Xtc, Box::new(stage)));
                }
            }
        }
        Ok(out)
    }
}
