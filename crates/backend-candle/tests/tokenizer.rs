//! Tokenizer acceptance: round trips on ≥ 1,000 varied strings, ids equal to
//! llama.cpp's for fixed strings, special tokens, EOS, the chat template.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;

use common::model_path;
use perpetua_candle::LlamaTokenizer;
use perpetua_generator::{ChatMessage, Tokenizer};
use proptest::prelude::*;

fn tok() -> &'static LlamaTokenizer {
    static TOK: OnceLock<LlamaTokenizer> = OnceLock::new();
    TOK.get_or_init(|| LlamaTokenizer::from_gguf(model_path()).expect("tokenizer from GGUF"))
}

/// Fragments the generator mixes: unicode, emoji (with ZWJ and modifiers), digits,
/// whitespace runs, code, special tokens.
const FRAGMENTS: &[&str] = &[
    "hello",
    " world",
    "The",
    " dog",
    " detective",
    "naïve",
    "café",
    "Zürich",
    "Привет",
    "мир",
    "日本語",
    "中文",
    "한국어",
    "العربية",
    "עברית",
    "🐶",
    "🕵️‍♂️",
    "👍🏽",
    "🎉",
    "🇫🇷",
    "0",
    "7",
    "42",
    "123456789",
    "3.14159",
    "1e-9",
    "-273.15",
    " ",
    "  ",
    "    ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\u{a0}",
    "\u{200b}",
    "fn main() {",
    "}",
    "let x = vec![1, 2, 3];",
    "def f(x):",
    "    return x**2",
    "#include <stdio.h>",
    "a->b",
    "x != y",
    "&&",
    "||",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<repo_name>",
    "<",
    "|",
    ">",
    "'s",
    "'ll",
    "n't",
    "\"quoted\"",
    "(paren)",
    "[bracket]",
    "{brace}",
    "...",
    "—",
    "–",
    "€100",
    "½",
    "ﬁ",
    "Ω",
    "\u{301}",
    "e\u{301}",
    "ÄÖÜß",
    "ǅ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\u{1F600}",
    "\u{7F}",
    "\u{1}",
];

/// Deterministic xorshift so the corpus is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn corpus(n: usize) -> Vec<String> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|i| {
            let parts = 1 + rng.below(12);
            let mut s = String::new();
            for _ in 0..parts {
                match rng.below(5) {
                    // Random code points from several planes (skipping surrogates).
                    0 => {
                        let ranges = [
                            (0x20, 0x7E),
                            (0xA0, 0x24F),
                            (0x370, 0x3FF),
                            (0x4E00, 0x4EFF),
                            (0x1F300, 0x1F64F),
                        ];
                        let (lo, hi) = ranges[rng.below(ranges.len())];
                        let c =
                            char::from_u32(lo + (rng.next() % (hi - lo + 1) as u64) as u32).unwrap_or('?');
                        s.push(c);
                    }
                    // A run of digits or whitespace.
                    1 => {
                        let run = 1 + rng.below(8);
                        let pool = if rng.below(2) == 0 { "0123456789" } else { " \t\n" };
                        for _ in 0..run {
                            s.push(pool.as_bytes()[rng.below(pool.len())] as char);
                        }
                    }
                    _ => s.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]),
                }
            }
            if i % 97 == 0 {
                s.clear(); // the empty string is a case too
            }
            s
        })
        .collect()
}

#[test]
fn encode_decode_round_trips_on_1200_varied_strings() {
    let tok = tok();
    let strings = corpus(1200);
    let mut tokens = 0;
    for s in &strings {
        let ids = tok.encode(s, false).unwrap();
        tokens += ids.len();
        assert_eq!(&tok.decode(&ids, false).unwrap(), s, "ids {ids:?}");
    }
    println!("{} strings, {tokens} tokens round-tripped", strings.len());
}

#[test]
fn ids_equal_llama_cpp_on_fixed_strings() {
    let data: serde_json::Value = serde_json::from_str(include_str!("data/llama_cpp_ids.json")).unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok().encode(text, false).unwrap(), expected, "text {text:?}");
    }
}

#[test]
fn special_tokens_eos_and_bytes() {
    let tok = tok();
    assert_eq!(tok.vocab_size(), 49_152);
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!(im_end, 2);
    assert_eq!(tok.eos_ids(), &[2]);
    assert!(tok.is_special(2) && tok.is_special(tok.token_id("<|im_start|>").unwrap()));
    assert!(!tok.is_special(tok.token_id("hello").unwrap()));
    let specials = (0..49_152).filter(|&i| tok.is_special(i)).count();
    assert_eq!(specials, 17);
    // "<|im_end|>" in text is the special token, not its characters.
    assert_eq!(tok.encode("<|im_end|>", false).unwrap(), vec![2]);
    assert_eq!(tok.decode(&[2], true).unwrap(), "");
    assert_eq!(&*tok.token_bytes(2).unwrap(), b"<|im_end|>");
    // " world" is one byte-level token whose bytes start with a space.
    let ids = tok.encode(" world", false).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(&*tok.token_bytes(ids[0]).unwrap(), b" world");
    assert!(tok.token_bytes(49_152).is_none());
    assert!(tok.decode(&[49_152], false).is_err());
    // Concatenated token bytes are the UTF-8 of the text, even mid-character.
    let text = "🐶 détective";
    let ids = tok.encode(text, false).unwrap();
    let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).unwrap().into_owned()).collect();
    assert_eq!(bytes, text.as_bytes());
}

#[test]
fn chat_template_renders_smollm2_chatml() {
    let rendered =
        tok().apply_chat_template(&[ChatMessage::user("Hi there")], true).expect("template present").unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );
    let with_system = tok()
        .apply_chat_template(&[ChatMessage::system("Be brief."), ChatMessage::user("Hi")], false)
        .unwrap()
        .unwrap();
    assert_eq!(with_system, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Byte-level BPE is lossless: decode(encode(s)) == s for every string.
    #[test]
    fn round_trip_any_string(s in "\\PC{0,40}") {
        let ids = tok().encode(&s, false).unwrap();
        prop_assert_eq!(tok().decode(&ids, false).unwrap(), s);
    }

    /// Every id encode returns is in the vocabulary and maps to bytes.
    #[test]
    fn encoded_ids_have_bytes(s in "[a-z0-9 \\n]{0,40}") {
        for id in tok().encode(&s, false).unwrap() {
            prop_assert!(tok().token_bytes(id).is_some());
        }
    }
}

/// Every supported `tokenizer.ggml.pre` value: the default model's vocabulary
/// and merges written into a vocab-only GGUF with that value must tokenize a 300-string
/// corpus (mixed scripts, digits, code, whitespace runs, emoji, contractions in both
/// cases) exactly as the family's own pre-tokenizer does — reference ids from Hugging
/// Face `tokenizers` with the family's `tokenizer.json` definition
/// (`scripts/model-families/make_pretok_reference.py`), equal to llama.cpp's on the same
/// file (`make_pretok_llama_cpp_reference.py`) — and decode back to the text.
/// Five three-digit words are added to the vocabulary so that Llama 3's split (digit
/// runs of up to 3, whole words before merges) differs from Qwen2's (digits one by one).
#[test]
fn every_supported_pre_tokenizer_matches_its_reference() {
    use candle_core::quantized::gguf_file::{self, Value};
    let data: serde_json::Value = serde_json::from_str(include_str!("data/pretokenizer_ids.json")).unwrap();
    let llama_cpp: serde_json::Value =
        serde_json::from_str(include_str!("data/pretokenizer_ids_llama_cpp.json")).unwrap();
    let corpus: Vec<String> = serde_json::from_value(data["corpus"].clone()).unwrap();
    assert_eq!(corpus.len(), 300);
    let mut file = std::fs::File::open(model_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let dir = std::env::temp_dir().join(format!("perpetua-pretok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for pre in perpetua_candle::SUPPORTED_PRE_TOKENIZERS {
        let want: Vec<Vec<u32>> = serde_json::from_value(data["ids"][pre].clone()).unwrap();
        // The runtime reference: llama.cpp on the same vocab-only file
        // (`make_pretok_llama_cpp_reference.py`), which agrees with HF on all 300.
        let theirs: Vec<Vec<u32>> = serde_json::from_value(llama_cpp["ids"][pre].clone()).unwrap();
        assert_eq!(theirs, want, "{pre}: the two references disagree");
        let pre_value = Value::String(pre.to_string());
        // Plus EXTRA's three-digit words, which no merge reaches (as the reference).
        let mut tokens = content.metadata["tokenizer.ggml.tokens"].to_vec().unwrap().clone();
        let mut types = content.metadata["tokenizer.ggml.token_type"].to_vec().unwrap().clone();
        for extra in ["123", "000", "202", "999", "314"] {
            tokens.push(Value::String(extra.into()));
            types.push(Value::I32(1));
        }
        let (tokens, types) = (Value::Array(tokens), Value::Array(types));
        let replaced = ["tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"];
        let metadata: Vec<(&str, &Value)> = content
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer.") && !replaced.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v))
            .chain([(replaced[0], &pre_value), (replaced[1], &tokens), (replaced[2], &types)])
            .collect();
        let path = dir.join(format!("{pre}.gguf"));
        let mut out = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut out, &metadata, &[]).unwrap();
        drop(out);
        let tok = LlamaTokenizer::from_gguf(&path).unwrap();
        let mut wrong = Vec::new();
        for (text, want) in corpus.iter().zip(&want) {
            let got = tok.encode(text, false).unwrap();
            if &got != want {
                wrong.push(format!("{text:?}: got {got:?}, want {want:?}"));
            }
            assert_eq!(&tok.decode_ids(&got, false).unwrap(), text, "{pre}: round trip");
        }
        println!("{pre}: {} of {} strings as the reference", corpus.len() - wrong.len(), corpus.len());
        assert!(
            wrong.is_empty(),
            "{pre}: {} strings differ, e.g. {}",
            wrong.len(),
            wrong[..wrong.len().min(3)].join("; ")
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// SentencePiece vocabularies from GGUF (`tokenizer.ggml.model = llama`; Llama 2,
/// Mistral v0.1, TinyLlama, Phi-3): a vocabulary trained by `sentencepiece` with Llama's
/// settings and written by llama.cpp's converter
/// (`scripts/model-families/make_spm_reference.py`) must tokenize the 300-string corpus
/// exactly as `sentencepiece` does (byte fallback, dummy prefix, whitespace pieces),
/// and decode back to the text with the dummy prefix's space in front.
#[test]
fn sentencepiece_vocabularies_match_sentencepiece() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/spm");
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/reference.json")).unwrap()).unwrap();
    let corpus: Vec<String> = serde_json::from_value(data["corpus"].clone()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(data["ids"].clone()).unwrap();
    // llama.cpp on the same file agrees with sentencepiece on all 300 strings.
    let llama_cpp: serde_json::Value =
        serde_json::from_str(include_str!("data/pretokenizer_ids_llama_cpp.json")).unwrap();
    let theirs: Vec<Vec<u32>> = serde_json::from_value(llama_cpp["spm"].clone()).unwrap();
    assert_eq!(theirs, want, "sentencepiece and llama.cpp disagree");
    let tok = LlamaTokenizer::from_gguf(format!("{dir}/vocab.gguf")).unwrap();
    let mut wrong = Vec::new();
    for (text, want) in corpus.iter().zip(&want) {
        let got = tok.encode(text, false).unwrap();
        if &got != want {
            wrong.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        let decoded = tok.decode_ids(&got, false).unwrap();
        let expected = if text.is_empty() { String::new() } else { format!(" {text}") };
        assert_eq!(decoded, expected, "round trip of {text:?}");
    }
    println!("sentencepiece: {} of {} strings as the reference", corpus.len() - wrong.len(), corpus.len());
    assert!(
        wrong.is_empty(),
        "{} strings differ, e.g. {}",
        wrong.len(),
        wrong[..wrong.len().min(3)].join("; ")
    );
    // BOS is added by default for SentencePiece vocabularies (llama.cpp's default), EOS is `</s>`.
    assert_eq!(tok.encode("a", true).unwrap()[0], 1);
    assert_eq!(tok.eos_ids(), [2]);
}

/// Gemma-style SentencePiece GGUF vocabularies: `tokenizer.ggml.add_space_prefix =
/// false` (no dummy `▁` before the text) and turn markers as control tokens matched
/// verbatim in the input. The committed vocabulary with those two changes
/// (`scripts/model-families/make_spm_gemma_style.py`) must tokenize the 300-string
/// corpus and chat-shaped strings exactly as llama.cpp does on the same file, and
/// decode back to the text (no leading space this time).
#[test]
fn gemma_style_sentencepiece_vocabularies_match_llama_cpp() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/spm");
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/gemma-style.json")).unwrap()).unwrap();
    let texts: Vec<String> = serde_json::from_value(data["texts"].clone()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(data["ids"].clone()).unwrap();
    let tok = LlamaTokenizer::from_gguf(format!("{dir}/gemma-style.gguf")).unwrap();
    let start = tok.token_id("<start_of_turn>").unwrap();
    assert!(tok.is_special(start));
    let mut wrong = Vec::new();
    for (text, want) in texts.iter().zip(&want) {
        let got = tok.encode(text, false).unwrap();
        if &got != want {
            wrong.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        assert_eq!(&tok.decode_ids(&got, false).unwrap(), text, "round trip of {text:?}");
    }
    println!(
        "gemma-style sentencepiece: {} of {} strings as llama.cpp",
        texts.len() - wrong.len(),
        texts.len()
    );
    assert!(wrong.is_empty(), "{} differ, e.g. {}", wrong.len(), wrong[..wrong.len().min(3)].join("; "));
    // The markers are parsed as one token each, never spelled out.
    assert_eq!(want[300][0], start);
}
