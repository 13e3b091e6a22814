//! The tokenizer of a llama-family model, rebuilt from GGUF metadata (or read from a
//! `tokenizer.json`), and its chat template.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use perpetua_generator::{BoxError, ChatMessage, Tokenizer};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::error::{ModelError, Result};
use crate::gguf::read_gguf;

/// The GGUF pre-tokenizers (`tokenizer.ggml.pre`) this tokenizer implements; files
/// naming another are refused rather than tokenized with the wrong splits.
///
/// - `smollm`: digits one by one, then GPT-2's byte-level split (SmolLM2, StarCoder);
/// - `gpt-2`: GPT-2's byte-level split;
/// - `llama-bpe`: Llama 3's split (contractions in any case, runs of ≤ 3 digits), whole
///   vocabulary words taken before merges (`ignore_merges`), as Llama 3's tokenizer.json;
/// - `qwen2`: Qwen2/2.5/3's split (as Llama 3's, digits one by one).
///
/// The regexes are the families' own (their `tokenizer.json`), which llama.cpp's
/// `llama-vocab.cpp` cites as the source of its adaptations.
pub const SUPPORTED_PRE_TOKENIZERS: [&str; 4] = ["smollm", "gpt-2", "llama-bpe", "qwen2"];

/// Llama 3's pre-tokenizer regex (`tokenizer.ggml.pre = llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's pre-tokenizer regex (`tokenizer.ggml.pre = qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer a supported `tokenizer.ggml.pre` value stands for, and whether BPE
/// takes whole vocabulary words before merging (`ignore_merges`).
fn pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let byte_level = |use_regex| -> PreTokenizerWrapper { ByteLevel::new(false, true, use_regex).into() };
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let pattern = tokenizers::pre_tokenizers::split::SplitPattern::Regex(regex.to_string());
        Ok(tokenizers::pre_tokenizers::split::Split::new(
            pattern,
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?
        .into())
    };
    Ok(match pre {
        "smollm" => (Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into(), false),
        "gpt-2" => (byte_level(true), false),
        "llama-bpe" => (Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]).into(), true),
        "qwen2" => (Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)]).into(), false),
        other => {
            return Err(ModelError::metadata(
                "tokenizer.ggml.pre",
                format!("`{other}` is not supported (only {SUPPORTED_PRE_TOKENIZERS:?})"),
            ));
        }
    })
}

/// The two `tokenizer.json` kinds [`LlamaTokenizer::from_tokenizer_json`] reads.
#[derive(Clone, Copy)]
enum JsonStyle {
    /// GPT-2's byte-to-character table (a `ByteLevel` decoder).
    ByteLevel,
    /// `▁` for spaces and `<0xXX>` byte-fallback pieces (a decoder with `ByteFallback`
    /// or `▁` replaced by a space, or a `Metaspace` decoder).
    SentencePiece,
}

impl JsonStyle {
    /// The style of a BPE `tokenizer.json`, from its decoder; `None` for anything else.
    fn of(raw: &serde_json::Value) -> Option<Self> {
        if raw.pointer("/model/type").and_then(|t| t.as_str()) != Some("BPE") {
            return None;
        }
        let decoder = raw.get("decoder")?;
        let parts: Vec<&serde_json::Value> = match decoder.get("decoders").and_then(|d| d.as_array()) {
            Some(list) => list.iter().collect(),
            None => vec![decoder],
        };
        fn kind(v: &serde_json::Value) -> &str {
            v.get("type").and_then(|t| t.as_str()).unwrap_or("")
        }
        if parts.iter().any(|d| kind(d) == "ByteLevel") {
            Some(Self::ByteLevel)
        } else if parts.iter().any(|d| {
            matches!(kind(d), "ByteFallback" | "Metaspace")
                || (kind(d) == "Replace"
                    && d.pointer("/pattern/String").and_then(|p| p.as_str()) == Some("\u{2581}"))
        }) {
            Some(Self::SentencePiece)
        } else {
            None
        }
    }
}

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_UNKNOWN: i64 = 2;
/// Control tokens (`<|im_start|>`, `<s>`…): special, matched verbatim in the input.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
/// SentencePiece byte-fallback pieces `<0xXX>`.
const TOKEN_TYPE_BYTE: i64 = 6;

/// The byte of a `<0xXX>` piece.
fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() == 2 { u8::from_str_radix(hex, 16).ok() } else { None }
}

/// EOS ids (`eos_token_id`, `eot_token_id`) and the BOS id from GGUF metadata, each
/// checked to be inside the vocabulary.
fn special_ids(
    md: &HashMap<String, candle_core::quantized::gguf_file::Value>,
    n_tokens: usize,
) -> Result<(Vec<u32>, Option<u32>)> {
    let id = |key: &str| -> Option<u32> { md.get(key).and_then(|v| v.to_u32().ok()) };
    let mut eos_ids: Vec<u32> = [id("tokenizer.ggml.eos_token_id"), id("tokenizer.ggml.eot_token_id")]
        .into_iter()
        .flatten()
        .collect();
    eos_ids.dedup();
    let bos_id = id("tokenizer.ggml.bos_token_id");
    for (key, value) in [
        ("tokenizer.ggml.eos_token_id", id("tokenizer.ggml.eos_token_id")),
        ("tokenizer.ggml.eot_token_id", id("tokenizer.ggml.eot_token_id")),
        ("tokenizer.ggml.bos_token_id", bos_id),
    ] {
        if let Some(v) = value
            && v as usize >= n_tokens
        {
            return Err(ModelError::metadata(
                key,
                format!("token id {v} is outside the vocabulary of {n_tokens} tokens"),
            ));
        }
    }
    Ok((eos_ids, bos_id))
}

/// A byte-level BPE tokenizer (GPT-2 style, as SmolLM2 and most llama-family GGUFs
/// use) plus the model's special tokens, EOS ids and chat template.
///
/// From GGUF it rebuilds what llama.cpp does for the `smollm` pre-tokenizer: BPE over
/// `tokenizer.ggml.tokens` / `merges`, pre-tokenizer `Sequence[Digits(individual),
/// ByteLevel(add_prefix_space = false, use_regex = true)]`, and every token of type 3
/// (control) as a special token that is matched verbatim in the input.
#[derive(Clone)]
pub struct LlamaTokenizer {
    inner: tokenizers::Tokenizer,
    /// Raw bytes of every token id (specials: their text).
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    eos_ids: Vec<u32>,
    bos_id: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for LlamaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaTokenizer")
            .field("vocab_size", &self.bytes.len())
            .field("eos_ids", &self.eos_ids)
            .field("bos_id", &self.bos_id)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

/// GPT-2's byte ↔ printable-character table: byte `b` is written as `table[b]`.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            extra += 1;
            255 + extra
        };
        // Codes are < 256 + 256, all valid scalar values.
        table[usize::from(b)] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The bytes a byte-level token string stands for; characters outside the table
/// (tokens that were added as plain text) contribute their UTF-8.
fn token_string_to_bytes(token: &str, char_to_byte: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match char_to_byte.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn char_to_byte_map() -> HashMap<char, u8> {
    byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl LlamaTokenizer {
    /// Rebuild the tokenizer from a GGUF file's metadata (`tokenizer.ggml.*`,
    /// `tokenizer.chat_template`). Only `tokenizer.ggml.model = "gpt2"` (byte-level BPE)
    /// with `tokenizer.ggml.pre` in [`SUPPORTED_PRE_TOKENIZERS`] is supported; anything
    /// else is a [`ModelError::Metadata`] naming the key.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let (content, _) = read_gguf(path.as_ref())?;
        let md = &content.metadata;
        let get = |key: &str| md.get(key).ok_or_else(|| ModelError::metadata(key, "absent"));
        let string_array = |key: &str| -> Result<Vec<String>> {
            get(key)?
                .to_vec()
                .map_err(|e| ModelError::metadata(key, e.to_string()))?
                .iter()
                .map(|v| v.to_string().cloned().map_err(|e| ModelError::metadata(key, e.to_string())))
                .collect()
        };

        let model = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| ModelError::metadata("tokenizer.ggml.model", e.to_string()))?;
        if model == "llama" {
            return Self::sentencepiece(md);
        }
        if model != "gpt2" {
            return Err(ModelError::metadata(
                "tokenizer.ggml.model",
                format!("`{model}` is not supported (byte-level BPE `gpt2`, SentencePiece `llama`)"),
            ));
        }
        // The pre-tokenizer decides how text is split before BPE; building SmolLM2's for
        // another model's vocabulary (Llama 3's `llama-bpe`, Qwen2's `qwen2`, …) would
        // tokenize wrongly without a word. Refuse what we do not implement.
        let pre = match md.get("tokenizer.ggml.pre") {
            Some(v) => {
                v.to_string().map_err(|e| ModelError::metadata("tokenizer.ggml.pre", e.to_string()))?.clone()
            }
            None => {
                return Err(ModelError::metadata(
                    "tokenizer.ggml.pre",
                    "absent: the pre-tokenizer cannot be chosen (supported: smollm, gpt-2, llama-bpe, qwen2)",
                ));
            }
        };
        let (pre_tokenizer, ignore_merges) = pre_tokenizer(&pre)?;
        let tokens = string_array("tokenizer.ggml.tokens")?;
        let merges = string_array("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| ModelError::metadata("tokenizer.ggml.token_type", e.to_string()))?
                .iter()
                .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(ModelError::metadata(
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", types.len(), tokens.len()),
            ));
        }

        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| ModelError::metadata("tokenizer.ggml.merges", format!("bad merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        let special: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&special)
            .filter(|(_, s)| **s)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(added).map_err(tok_err)?;

        let char_to_byte = char_to_byte_map();
        let bytes = tokens
            .iter()
            .zip(&special)
            .map(|(t, &s)| if s { t.as_bytes().to_vec() } else { token_string_to_bytes(t, &char_to_byte) })
            .collect();
        Self::with_gguf_specials(inner, bytes, special, md, false)
    }

    /// Read a Hugging Face `tokenizer.json`: byte-level BPE (GPT-2 style: SmolLM2,
    /// Llama 3, Qwen) or SentencePiece-style BPE (`▁` word markers and `<0xXX>` byte
    /// fallback: Llama 2, Mistral v0.1, TinyLlama, Gemma), encoded by the file's own
    /// normalizer, pre-tokenizer and model. Special tokens are its added tokens marked
    /// `special`; EOS ids are those among `eos_tokens` (e.g. `["<|im_end|>"]`) that
    /// exist. No BOS is added and there is no chat template until
    /// [`with_chat_template`](Self::with_chat_template). Another kind of tokenizer
    /// (WordPiece, Unigram, a byte-level BPE without its decoder) is refused with
    /// [`ModelError::Tokenizer`], since its token bytes would be decoded wrongly.
    pub fn from_tokenizer_json(path: impl AsRef<Path>, eos_tokens: &[&str]) -> Result<Self> {
        let path = path.as_ref();
        let raw: serde_json::Value = std::fs::read_to_string(path)
            .map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
            .and_then(|t| serde_json::from_str(&t).map_err(|e| ModelError::Tokenizer(e.to_string())))?;
        let style = JsonStyle::of(&raw).ok_or_else(|| {
            let model_type = raw.pointer("/model/type").and_then(|t| t.as_str()).unwrap_or("?");
            ModelError::Tokenizer(format!(
                "{}: only byte-level and SentencePiece-style BPE tokenizers are supported (this one is `{model_type}` with decoder {})",
                path.display(),
                raw.get("decoder").map_or("none".to_string(), |d| d.to_string().chars().take(80).collect())
            ))
        })?;
        let inner = tokenizers::Tokenizer::from_file(path).map_err(tok_err)?;
        let size = inner.get_vocab_size(true);
        let char_to_byte = char_to_byte_map();
        let added = inner.get_added_tokens_decoder();
        let mut special = vec![false; size];
        let mut bytes = Vec::with_capacity(size);
        for id in 0..size as u32 {
            let s = added.get(&id).is_some_and(|t| t.special);
            if let Some(slot) = special.get_mut(id as usize) {
                *slot = s;
            }
            let text = inner.id_to_token(id).unwrap_or_default();
            bytes.push(match style {
                _ if s => text.into_bytes(),
                JsonStyle::ByteLevel => token_string_to_bytes(&text, &char_to_byte),
                JsonStyle::SentencePiece => {
                    byte_piece(&text).map_or_else(|| text.replace('\u{2581}', " ").into_bytes(), |b| vec![b])
                }
            });
        }
        let eos_ids = eos_tokens.iter().filter_map(|t| inner.token_to_id(t)).collect();
        Ok(Self { inner, bytes, special, eos_ids, bos_id: None, add_bos: false, chat_template: None })
    }

    /// A SentencePiece BPE vocabulary from GGUF (`tokenizer.ggml.model = llama`: Llama 2,
    /// Mistral v0.1, TinyLlama, Phi-3), as llama.cpp and `sentencepiece` tokenize it: a
    /// `▁` prepended (unless `tokenizer.ggml.add_space_prefix` is false) and spaces
    /// written as `▁`, then adjacent pieces merged best score first (the merges are
    /// derived from `tokenizer.ggml.scores`: a split `l + r` of a normal piece merges with
    /// that piece's score), characters outside the vocabulary as `<0xXX>` byte pieces.
    fn sentencepiece(md: &HashMap<String, candle_core::quantized::gguf_file::Value>) -> Result<Self> {
        use tokenizers::normalizers::{Prepend, Replace, Sequence as Normalizers};
        let key_err = |key: &str, e: candle_core::Error| ModelError::metadata(key, e.to_string());
        let array = |key: &str| md.get(key).ok_or_else(|| ModelError::metadata(key, "absent"));
        let tokens: Vec<String> = array("tokenizer.ggml.tokens")?
            .to_vec()
            .map_err(|e| key_err("tokenizer.ggml.tokens", e))?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| key_err("tokenizer.ggml.tokens", e)))
            .collect::<Result<_>>()?;
        let scores: Vec<f32> = array("tokenizer.ggml.scores")?
            .to_vec()
            .map_err(|e| key_err("tokenizer.ggml.scores", e))?
            .iter()
            .map(|v| v.to_f32().map_err(|e| key_err("tokenizer.ggml.scores", e)))
            .collect::<Result<_>>()?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| key_err("tokenizer.ggml.token_type", e))?
                .iter()
                .map(|t| t.to_i32().map(i64::from).unwrap_or(TOKEN_TYPE_NORMAL))
                .collect(),
            None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
        };
        for (key, n) in [("tokenizer.ggml.scores", scores.len()), ("tokenizer.ggml.token_type", types.len())]
        {
            if n != tokens.len() {
                return Err(ModelError::metadata(key, format!("{n} entries for {} tokens", tokens.len())));
            }
        }
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        // Merges from scores, as transformers converts a SentencePiece model: every split
        // of a normal piece into two vocabulary pieces, best piece score first.
        let mut merges: Vec<(f32, u32, u32, String, String)> = Vec::new();
        for (piece, (&score, &ty)) in tokens.iter().zip(scores.iter().zip(&types)) {
            if ty != TOKEN_TYPE_NORMAL {
                continue;
            }
            for (at, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(at);
                if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                    merges.push((score, il, ir, l.to_string(), r.to_string()));
                }
            }
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let merges = merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect();
        let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
        if let Some(unk) = tokens.iter().zip(&types).find(|(_, t)| **t == TOKEN_TYPE_UNKNOWN) {
            bpe = bpe.unk_token(unk.0.clone());
        }
        let mut inner = tokenizers::Tokenizer::new(bpe.build().map_err(tok_err)?);
        let space_prefix =
            md.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(true);
        let mut normalizers = Vec::new();
        if space_prefix {
            normalizers.push(Prepend::new("\u{2581}".to_string()).into());
        }
        normalizers.push(Replace::new(" ", "\u{2581}").map_err(tok_err)?.into());
        inner.with_normalizer(Some(Normalizers::new(normalizers))).map_err(tok_err)?;
        let special: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TOKEN_TYPE_CONTROL))
            .collect();
        inner.add_tokens(added).map_err(tok_err)?;
        let bytes = tokens
            .iter()
            .zip(&types)
            .map(|(t, &ty)| match ty {
                TOKEN_TYPE_BYTE => byte_piece(t).map_or_else(|| t.as_bytes().to_vec(), |b| vec![b]),
                TOKEN_TYPE_CONTROL => t.as_bytes().to_vec(),
                _ => t.replace('\u{2581}', " ").into_bytes(),
            })
            .collect();
        // llama.cpp adds BOS by default for SentencePiece vocabularies.
        Self::with_gguf_specials(inner, bytes, special, md, true)
    }

    /// The tokenizer with the GGUF metadata's EOS/BOS ids, `add_bos_token` (else
    /// `default_add_bos`) and chat template.
    fn with_gguf_specials(
        inner: tokenizers::Tokenizer,
        bytes: Vec<Vec<u8>>,
        special: Vec<bool>,
        md: &HashMap<String, candle_core::quantized::gguf_file::Value>,
        default_add_bos: bool,
    ) -> Result<Self> {
        let (eos_ids, bos_id) = special_ids(md, bytes.len())?;
        Ok(Self {
            inner,
            bytes,
            special,
            eos_ids,
            bos_id,
            add_bos: md
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(default_add_bos),
            chat_template: md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned(),
        })
    }

    /// The tokenizer of a model path, as `perpetua_candle::Llama::load` takes it:
    /// a directory is a Hugging Face checkpoint ([`Self::from_hf_dir`]), a file a GGUF
    /// ([`Self::from_gguf`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() { Self::from_hf_dir(path) } else { Self::from_gguf(path) }
    }

    /// Read the tokenizer of a Hugging Face checkpoint directory, as transformers does:
    /// `tokenizer.json` (required; its own pre-tokenizer, so every byte-level BPE family
    /// splits text as upstream), and from `tokenizer_config.json` the BOS token,
    /// `add_bos_token` and the chat template (or `chat_template.jinja`, transformers 5's
    /// file). EOS ids: the config's `eos_token` and every `eos_token_id` of
    /// `generation_config.json` and `config.json` (Llama 3 and Qwen list several).
    ///
    /// Byte-level BPE (SmolLM2, Llama 3, Qwen2/3, GPT-2 style) and SentencePiece-style
    /// BPE (`▁` word markers, byte fallback; Llama 2, Mistral v0.1, TinyLlama, Gemma) are
    /// read ([`Self::from_tokenizer_json`]); anything else is refused with
    /// [`ModelError::Tokenizer`]. Decoding a SentencePiece-style vocabulary keeps the
    /// dummy prefix's space in front of the first word, as the GGUF path does.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let read_json = |name: &str, required: bool| -> Result<Option<serde_json::Value>> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| ModelError::metadata(name, e.to_string())),
                Err(source) if required || source.kind() != std::io::ErrorKind::NotFound => {
                    Err(ModelError::Io { path, source })
                }
                Err(_) => Ok(None),
            }
        };
        if !dir.join("tokenizer.json").is_file() {
            return Err(ModelError::Io {
                path: dir.join("tokenizer.json"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let config = read_json("tokenizer_config.json", false)?.unwrap_or_default();
        // A special token is a string or `{"content": …}`.
        let token_text = |v: Option<&serde_json::Value>| -> Option<String> {
            let v = v?;
            v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str())).map(str::to_string)
        };
        let eos_text = token_text(config.get("eos_token"));
        let mut tokenizer = Self::from_tokenizer_json(dir.join("tokenizer.json"), &[])?;
        let vocab = tokenizer.vocab_size();
        let mut eos_ids: Vec<u32> = eos_text.and_then(|t| tokenizer.token_id(&t)).into_iter().collect();
        for name in ["generation_config.json", "config.json"] {
            let ids = read_json(name, false)?.and_then(|c| c.get("eos_token_id").cloned());
            let ids: Vec<u64> = match ids {
                Some(serde_json::Value::Number(n)) => n.as_u64().into_iter().collect(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(serde_json::Value::as_u64).collect(),
                _ => Vec::new(),
            };
            for id in ids {
                let id = u32::try_from(id).ok().filter(|&i| (i as usize) < vocab).ok_or_else(|| {
                    ModelError::metadata(
                        format!("{name}: eos_token_id"),
                        format!("{id} is outside the vocabulary of {vocab} tokens"),
                    )
                })?;
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        tokenizer.eos_ids = eos_ids;
        tokenizer.bos_id = token_text(config.get("bos_token")).and_then(|t| tokenizer.token_id(&t));
        tokenizer.add_bos = config.get("add_bos_token").and_then(serde_json::Value::as_bool).unwrap_or(false);
        tokenizer.chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            // A list of named templates: the `default` one.
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template").and_then(|t| t.as_str()).map(str::to_string)),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        Ok(tokenizer)
    }

    /// Replace the chat template (Jinja, Hugging Face conventions).
    pub fn with_chat_template(mut self, template: impl Into<String>) -> Self {
        self.chat_template = Some(template.into());
        self
    }

    /// The raw chat template, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The id of a token given by its exact vocabulary string (`"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encode, returning a typed error.
    pub fn encode_ids(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if add_special && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decode by concatenating token bytes (invalid UTF-8 → U+FFFD).
    pub fn decode_ids(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut buf = Vec::new();
        for &id in ids {
            let i = id as usize;
            let bytes = self
                .bytes
                .get(i)
                .ok_or_else(|| ModelError::invalid("token id", id, "is not in the vocabulary"))?;
            if skip_special && self.special.get(i).copied().unwrap_or(false) {
                continue;
            }
            buf.extend_from_slice(bytes);
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Render the chat template with Hugging Face's Jinja settings (`trim_blocks`,
    /// `lstrip_blocks`) and variables (`messages`, `add_generation_prompt`,
    /// `bos_token`, `eos_token`). `None` without a template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Option<Result<String>> {
        let template = self.chat_template.as_deref()?;
        let token_text = |id: Option<u32>| {
            id.and_then(|i| self.bytes.get(i as usize))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let bos_token = token_text(self.bos_id);
        let eos_token = token_text(self.eos_ids.first().copied());
        let render = || -> std::result::Result<String, minijinja::Error> {
            let mut env = minijinja::Environment::new();
            env.set_trim_blocks(true);
            env.set_lstrip_blocks(true);
            env.add_function(
                "raise_exception",
                |msg: String| -> std::result::Result<String, minijinja::Error> {
                    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
                },
            );
            // transformers' template globals: Llama 3.x dates its system prompt with it.
            env.add_function("strftime_now", |format: String| strftime_now(&format));
            let tmpl = env.template_from_str(template)?;
            tmpl.render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
        };
        Some(render().map_err(|e| ModelError::ChatTemplate(e.to_string())))
    }
}

impl Tokenizer for LlamaTokenizer {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, BoxError> {
        Ok(self.encode_ids(text, add_special)?)
    }

    fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        self.bytes.get(id as usize).map(|b| Cow::Borrowed(b.as_slice()))
    }

    fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, BoxError> {
        Ok(self.decode_ids(ids, skip_special)?)
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Option<Result<String, BoxError>> {
        self.render_chat(messages, add_generation_prompt).map(|r| r.map_err(Into::into))
    }
}

/// The current UTC time formatted like Python's `strftime` (what transformers' chat
/// templates call as `strftime_now`): `%Y %y %m %d %e %B %b %A %a %H %M %S %j %%`; an
/// unknown directive is an error naming it.
fn strftime_now(format: &str) -> std::result::Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_utc(secs, format)
}

fn format_utc(secs: u64, format: &str) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian; Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day_of_year = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let (m, d) = ((month - 1) as usize, day);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('B') => out.push_str(MONTHS[m]),
            Some('b') => out.push_str(&MONTHS[m][..3]),
            Some('A') => out.push_str(DAYS[days.rem_euclid(7) as usize]),
            Some('a') => out.push_str(&DAYS[days.rem_euclid(7) as usize][..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: directive %{} is not supported",
                        other.map_or(String::new(), String::from)
                    ),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn utc_dates_format_like_python_strftime() {
        // Values from Python: time.strftime(fmt, time.gmtime(secs)).
        let cases = [
            (0, "%d %b %Y", "01 Jan 1970"),
            (951_782_400, "%Y-%m-%d %A %j", "2000-02-29 Tuesday 060"),
            (1_721_952_000, "%d %B %y %a", "26 July 24 Fri"),
            (1_764_720_000 + 3_723, "%H:%M:%S %% %e", "01:02:03 %  3"),
            (4_107_542_399, "%Y-%m-%d %H:%M:%S", "2100-02-28 23:59:59"),
        ];
        for (secs, format, want) in cases {
            assert_eq!(format_utc(secs, format).unwrap(), want, "{secs} {format}");
        }
        assert!(format_utc(0, "%Q").is_err());
    }
}
