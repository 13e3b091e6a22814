//! The OpenAI request body, parsed strictly (an unknown field is an error), and its
//! translation into a generation: prompt, [`SequenceOptions`], choice count, streaming.

use std::collections::BTreeMap;

use perpetua_generator::{ChatMessage, PerpetualMode, Prompt, SequenceOptions};
use perpetua_sampling::{SamplingConfig, SamplingError};
use serde::Deserialize;

use crate::ServerConfig;
use crate::error::ApiError;

/// Which endpoint a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `logprobs`: a flag (chat) or a count of alternatives (completions).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Logprobs {
    Flag(bool),
    Count(u32),
}

/// A completions `prompt`: text, one text in a list, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
}

/// A chat message's `content`: text, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Message {
    role: String,
    content: Content,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// Our extension `perpetual`: `true` (the recommended mode), a mode spec
/// (`"backstep+dry"`, see `PerpetualMode::parse`), or an object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Perpetual {
    Flag(bool),
    Spec(String),
    Options(PerpetualOptions),
}

/// `perpetual: {"strategy": SPEC, "backstep": N, "peak": T}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PerpetualOptions {
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    backstep: Option<usize>,
    /// Peak temperature as a multiple of the base one (methods 2 and 4).
    #[serde(default)]
    peak: Option<f32>,
}

/// The body of `POST /v1/chat/completions` and `/v1/completions`: OpenAI's fields, the
/// llama.cpp / vLLM extensions, and ours (`perpetual`). Unknown fields are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<PromptInput>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    logit_bias: Option<BTreeMap<String, f32>>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    // llama.cpp / vLLM extensions.
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    typical_p: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    min_tokens: Option<u64>,
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    dry_multiplier: Option<f32>,
    #[serde(default)]
    dry_base: Option<f32>,
    #[serde(default)]
    dry_allowed_length: Option<usize>,
    #[serde(default)]
    dry_penalty_last_n: Option<usize>,
    #[serde(default)]
    xtc_probability: Option<f32>,
    #[serde(default)]
    xtc_threshold: Option<f32>,
    #[serde(default)]
    top_n_sigma: Option<f32>,
    // Ours.
    #[serde(default)]
    perpetual: Option<Perpetual>,
}

/// A request, checked and translated: what the engine runs.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) prompt: Prompt,
    pub(crate) options: SequenceOptions,
    pub(crate) n: usize,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// Report log-probabilities with this many alternatives (`None`: none).
    pub(crate) logprobs: Option<usize>,
}

/// An OpenAI 400 naming `param`.
fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(Some(param), message)
}

fn sampling_error(e: SamplingError) -> ApiError {
    match &e {
        SamplingError::InvalidParameter { name, .. } => invalid(name, e.to_string()),
        _ => ApiError::invalid(None, e.to_string()),
    }
}

impl Request {
    /// Parse a body. Errors: malformed JSON, a wrong type, an unknown field (OpenAI's
    /// error shape, the field named).
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(body).map_err(|e| {
            let message = e.to_string();
            let param = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string);
            ApiError::invalid(param.as_deref(), format!("invalid request body: {message}"))
        })
    }

    /// Check the request against `endpoint` and the server's limits and translate it.
    /// `fallback_seed` seeds requests that give none.
    pub(crate) fn into_parsed(
        self,
        endpoint: Endpoint,
        config: &ServerConfig,
        fallback_seed: u64,
    ) -> Result<Parsed, ApiError> {
        let prompt = self.prompt_of(endpoint)?;
        let n = match self.n {
            None => 1,
            Some(n) if n >= 1 && n <= config.max_n as u64 => n as usize,
            Some(n) => return Err(invalid("n", format!("n = {n}: must be in 1..={}", config.max_n))),
        };
        let max_tokens = match (endpoint, self.max_completion_tokens, self.max_tokens) {
            (Endpoint::Chat, Some(m), _) => Some(("max_completion_tokens", m)),
            (_, _, Some(m)) => Some(("max_tokens", m)),
            (Endpoint::Completions, Some(_), None) => {
                return Err(invalid("max_completion_tokens", "not a completions field: use max_tokens"));
            }
            _ => None,
        };
        let max_tokens = match max_tokens {
            None => config.default_max_tokens,
            Some((_, m)) if m >= 1 && m <= config.max_tokens_limit as u64 => m as usize,
            Some((name, m)) => {
                return Err(invalid(
                    name,
                    format!("{name} = {m}: must be in 1..={}", config.max_tokens_limit),
                ));
            }
        };
        let logprobs = match (endpoint, &self.logprobs, self.top_logprobs) {
            (_, None, None) | (Endpoint::Chat, Some(Logprobs::Flag(false)), None) => None,
            (Endpoint::Chat, Some(Logprobs::Flag(true)), top) => Some(top.unwrap_or(0) as usize),
            (Endpoint::Chat, _, Some(_)) => {
                return Err(invalid("top_logprobs", "top_logprobs needs logprobs = true"));
            }
            (Endpoint::Chat, Some(Logprobs::Count(_)), None) => {
                return Err(invalid("logprobs", "a chat request's logprobs is true or false"));
            }
            (Endpoint::Completions, Some(Logprobs::Count(k)), None) => Some(*k as usize),
            (Endpoint::Completions, _, _) => {
                return Err(invalid("logprobs", "a completions request's logprobs is a count (0..=20)"));
            }
        };
        if let Some(k) = logprobs
            && k > 20
        {
            return Err(invalid("top_logprobs", format!("{k}: at most 20 alternatives")));
        }
        let stops = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stops.len() > 16 {
            return Err(invalid("stop", format!("{} stop strings: at most 16", stops.len())));
        }
        if stops.iter().any(String::is_empty) {
            return Err(invalid("stop", "a stop string must not be empty"));
        }
        let min_tokens = self.min_tokens.map(|m| m.min(max_tokens as u64) as usize);
        let sampling = SamplingConfig {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k.map(|k| k as usize),
            min_p: self.min_p,
            typical_p: self.typical_p,
            top_n_sigma: self.top_n_sigma,
            xtc_probability: self.xtc_probability,
            xtc_threshold: self.xtc_threshold,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            dry_multiplier: self.dry_multiplier,
            dry_base: self.dry_base,
            dry_allowed_length: self.dry_allowed_length,
            dry_penalty_last_n: self.dry_penalty_last_n,
            logit_bias: self.logit_bias,
            suppress_eos: self.ignore_eos,
            ..SamplingConfig::default()
        };
        for (name, value, range) in [
            ("temperature", self.temperature, 0.0..=2.0),
            ("presence_penalty", self.presence_penalty, -2.0..=2.0),
            ("frequency_penalty", self.frequency_penalty, -2.0..=2.0),
        ] {
            if let Some(v) = value
                && !range.contains(&v)
            {
                return Err(invalid(
                    name,
                    format!("{name} = {v}: must be in {}..={}", range.start(), range.end()),
                ));
            }
        }
        let chain = sampling.chain().map_err(sampling_error)?;
        let mut options = SequenceOptions::default()
            .seed(self.seed.map_or(fallback_seed, |s| s as u64))
            .max_new_tokens(max_tokens)
            .stop_strings(stops)
            .top_logprobs(logprobs.unwrap_or(0))
            .chain(chain);
        if let Some(m) = min_tokens {
            options = options.min_new_tokens(m);
        }
        if let Some(mode) = self.perpetual.map(perpetual_mode).transpose()?.flatten() {
            options = options.perpetual(mode);
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(invalid("stream_options", "stream_options needs stream = true"));
        }
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok(Parsed { prompt, options, n, stream, include_usage, logprobs })
    }

    fn prompt_of(&self, endpoint: Endpoint) -> Result<Prompt, ApiError> {
        match endpoint {
            Endpoint::Chat => {
                if self.prompt.is_some() {
                    return Err(invalid("prompt", "a chat request has messages, not a prompt"));
                }
                let messages = self.messages.as_ref().ok_or_else(|| invalid("messages", "missing"))?;
                if messages.is_empty() {
                    return Err(invalid("messages", "at least one message"));
                }
                let mut chat = Vec::with_capacity(messages.len());
                for (i, m) in messages.iter().enumerate() {
                    let role = match m.role.as_str() {
                        "system" | "developer" => "system",
                        "user" => "user",
                        "assistant" => "assistant",
                        other => {
                            return Err(invalid(
                                &format!("messages[{i}].role"),
                                format!("role `{other}`: system, developer, user or assistant"),
                            ));
                        }
                    };
                    let content = match &m.content {
                        Content::Text(t) => t.clone(),
                        Content::Parts(parts) => {
                            let mut text = String::new();
                            for part in parts {
                                match (part.kind.as_str(), &part.text) {
                                    ("text", Some(t)) => text.push_str(t),
                                    (kind, _) => {
                                        return Err(invalid(
                                            &format!("messages[{i}].content"),
                                            format!("content part `{kind}`: only text parts are supported"),
                                        ));
                                    }
                                }
                            }
                            text
                        }
                    };
                    chat.push(ChatMessage::new(role, content));
                }
                Ok(Prompt::Chat(chat))
            }
            Endpoint::Completions => {
                if self.messages.is_some() {
                    return Err(invalid("messages", "a completions request has a prompt, not messages"));
                }
                match &self.prompt {
                    None => Err(invalid("prompt", "missing")),
                    Some(PromptInput::Text(t)) => Ok(Prompt::Text(t.clone())),
                    Some(PromptInput::Ids(ids)) => Ok(Prompt::Ids(ids.clone())),
                    Some(PromptInput::Texts(texts)) if texts.len() == 1 => Ok(Prompt::Text(texts[0].clone())),
                    Some(PromptInput::Texts(texts)) => Err(invalid(
                        "prompt",
                        format!(
                            "{} prompts: one prompt per request (use n for several samples)",
                            texts.len()
                        ),
                    )),
                }
            }
        }
    }
}

/// The mode a `perpetual` field asks for (`None`: `false`, no mode).
fn perpetual_mode(p: Perpetual) -> Result<Option<PerpetualMode>, ApiError> {
    let parse = |spec: &str| {
        PerpetualMode::parse(spec).map_err(|e| invalid("perpetual.strategy", format!("`{spec}`: {e}")))
    };
    let mode = match p {
        Perpetual::Flag(false) => return Ok(None),
        Perpetual::Flag(true) => PerpetualMode::recommended(),
        Perpetual::Spec(spec) => parse(&spec)?,
        Perpetual::Options(o) => {
            let mut mode = match &o.strategy {
                Some(spec) => parse(spec)?,
                None => PerpetualMode::recommended(),
            };
            if let Some(b) = o.backstep {
                mode.backstep = Some(b);
            }
            if let Some(t) = o.peak {
                mode.peak = Some(
                    perpetua_perpetual::Peak::times(t)
                        .map_err(|e| invalid("perpetual.peak", e.to_string()))?,
                );
            }
            mode
        }
    };
    mode.validate().map_err(|e| invalid("perpetual", e.to_string()))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// JSON values of every kind, nested a little.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-z<|> ]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The request's own field names, with values of any type.
    fn request_like() -> impl Strategy<Value = Value> {
        let names = prop::sample::select(vec![
            "model",
            "messages",
            "prompt",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "n",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "stream",
            "stream_options",
            "top_k",
            "min_p",
            "min_tokens",
            "ignore_eos",
            "dry_multiplier",
            "xtc_probability",
            "perpetual",
            "unknown",
        ]);
        let value = prop_oneof![
            any_json(),
            Just(json!([{"role": "user", "content": "hi"}])),
            Just(json!({"strategy": "backstep", "backstep": 0})),
            Just(json!("perpetual+dry")),
            (-5.0f64..5.0).prop_map(Value::from),
            (0u64..100_000).prop_map(Value::from),
        ];
        proptest::collection::btree_map(names, value, 0..8)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    proptest! {
        /// No body makes the parser panic: arbitrary bytes, arbitrary JSON, and the
        /// request's fields with values of any type, on both endpoints.
        #[test]
        fn no_body_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            value in any_json(),
            request in request_like(),
        ) {
            let config = ServerConfig::new("m");
            for body in [bytes, value.to_string().into_bytes(), request.to_string().into_bytes()] {
                if let Ok(parsed) = Request::parse(&body) {
                    for endpoint in [Endpoint::Chat, Endpoint::Completions] {
                        let again = Request::parse(&body).unwrap();
                        let _ = again.into_parsed(endpoint, &config, 1);
                    }
                    drop(parsed);
                }
            }
        }

        /// Accepted limits hold: n, max_tokens and top_logprobs within the server's
        /// bounds, otherwise a 400 naming the field.
        #[test]
        fn limits_are_enforced(n in 0u64..20, max in 0u64..40_000, top in 0u32..30) {
            let config = ServerConfig::new("m");
            let body = json!({"messages": [{"role": "user", "content": "hi"}], "n": n, "max_tokens": max,
                              "logprobs": true, "top_logprobs": top});
            match Request::parse(body.to_string().as_bytes()).unwrap().into_parsed(Endpoint::Chat, &config, 1) {
                Ok(p) => {
                    prop_assert!((1..=config.max_n).contains(&p.n));
                    prop_assert_eq!(p.options.max_new_tokens, Some(max as usize));
                    prop_assert!(max >= 1 && max as usize <= config.max_tokens_limit);
                    prop_assert_eq!(p.logprobs, Some(top as usize));
                    prop_assert!(top <= 20);
                }
                Err(e) => {
                    prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                    let param = e.param.unwrap();
                    prop_assert!(["n", "max_tokens", "top_logprobs"].contains(&param.as_str()), "{}", param);
                }
            }
        }
    }

    #[test]
    fn endpoints_take_their_own_prompt_kind_and_perpetual_forms() {
        let config = ServerConfig::new("m");
        let parse = |body: Value, endpoint| {
            Request::parse(body.to_string().as_bytes()).unwrap().into_parsed(endpoint, &config, 1)
        };
        let err = parse(json!({"prompt": "x"}), Endpoint::Chat).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("prompt"));
        let err = parse(json!({"messages": [{"role": "user", "content": "x"}]}), Endpoint::Completions)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        let ok = parse(json!({"prompt": [1, 2, 3], "perpetual": true}), Endpoint::Completions).unwrap();
        assert_eq!(ok.options.perpetual.map(|m| m.spec()), Some(PerpetualMode::recommended().spec()));
        let ok = parse(
            json!({"prompt": "x", "perpetual": {"strategy": "backstep", "backstep": 4}}),
            Endpoint::Completions,
        )
        .unwrap();
        assert_eq!(ok.options.perpetual.unwrap().backstep, Some(4));
        let err = parse(json!({"prompt": "x", "perpetual": "nonsense"}), Endpoint::Completions).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("perpetual.strategy"));
        let err = parse(json!({"messages": [{"role": "tool", "content": "x"}]}), Endpoint::Chat).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        let ok =
            parse(json!({"prompt": "x", "perpetual": false, "seed": -1}), Endpoint::Completions).unwrap();
        assert!(ok.options.perpetual.is_none());
        assert_eq!(ok.options.seed, Some(u64::MAX));
    }
}
