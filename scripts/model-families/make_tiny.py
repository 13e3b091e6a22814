#!/usr/bin/env python3
"""Tiny random-weight checkpoints of each supported model family, with reference logits
from Hugging Face transformers. NOT run by CI: its output is committed under
crates/backend-candle/tests/data/families/ and the Rust tests compare against it.

Per family: a 2-layer, hidden-64 model with the family's special features switched on
(small enough that every feature is exercised inside a 20-token sequence), saved as
`config.json` + `model.safetensors` (f32) + `tokenizer.json` / `tokenizer_config.json`
(the generator's ByteTokenizer as an HF tokenizer), and `reference.json` holding the token ids and
the logits HF computes for them: `logits` = the last position of a 12-token prefill, then
8 decode steps (one token each, HF's KV cache); `full` = every position of the 20 tokens
in one pass. All in f32 with eager attention. Norm weights and biases are randomised too
(HF initialises them to 1 and 0), so a loader that drops one cannot pass.

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers safetensors
    /tmp/refenv/bin/python scripts/model-families/make_tiny.py
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "backend-candle", "tests", "data", "families")
VOCAB = 258  # ids 0..=255 are bytes, 256 BOS, 257 EOS: the generator's ByteTokenizer
PREFILL = 12
DECODE = 8

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=256,
    eos_token_id=257,
)

FAMILIES = {
    # Llama 3.1-style RoPE scaling; head_dim 16 and original context 64 put the 8
    # frequencies in all three bands (kept, smoothed, divided by the factor).
    "llama3": dict(
        model_type="llama",
        rope_scaling=dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    # Linear position interpolation (`rope_scaling.rope_type = linear`).
    "llama-linear": dict(model_type="llama", rope_scaling=dict(rope_type="linear", factor=4.0)),
    # A sliding window of 5 positions: the 20-token sequence crosses it 15 times.
    "mistral": dict(model_type="mistral", sliding_window=5, head_dim=16),
    # q/k/v biases.
    "qwen2": dict(model_type="qwen2", use_sliding_window=False),
    # Fused qkv_proj and gate_up_proj, and a sliding window of 6 positions.
    "phi3": dict(model_type="phi3", sliding_window=6, pad_token_id=257),
    # q/k RMSNorm per head, and head_dim 32 != hidden / heads (= 16).
    "qwen3": dict(model_type="qwen3", head_dim=32, use_sliding_window=False, attention_bias=False),
    # Gemma 2: √hidden embedding scale, norms as offsets from 1 (randomised below like
    # every norm), post-attention and post-MLP norms, GeGLU, a window of 5 positions on
    # layer 0 (layer 1 global), and soft-capping with caps small enough (2 on attention
    # scores, 3 on logits) that random weights reach them. head_dim 32 != hidden/heads,
    # and query_pre_attn_scalar = head_dim as in Gemma 2 2B/9B: GGUF has no key for
    # it, llama.cpp scales by 1/sqrt(head_dim) below 27B, so the converted file computes
    # the same model.
    "gemma2": dict(model_type="gemma2", head_dim=32, query_pre_attn_scalar=32, sliding_window=5,
                   attn_logit_softcapping=2.0, final_logit_softcapping=3.0, tie_word_embeddings=True),
    # Gemma 3: Gemma 2's block with q/k norms instead of attention soft-capping, six
    # layers so that the default pattern windows layers 0-4 and leaves layer 5 global,
    # the windowed layers rotating with base 10,000, the global one with 10^6 and a
    # linear RoPE scaling (as Gemma 3 4B+).
    "gemma3": dict(model_type="gemma3_text", num_hidden_layers=6, head_dim=32, query_pre_attn_scalar=32,
                   sliding_window=5, tie_word_embeddings=True,
                   rope_parameters={
                       "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                       "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                   }),
}


def byte_table():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def write_tokenizer(d):
    """The generator's ByteTokenizer as a Hugging Face tokenizer: ids 0..=255 are the
    bytes (GPT-2's byte-to-character table, no merges), 256 `<s>`, 257 `</s>`, with a
    small ChatML-like chat template."""
    table = byte_table()
    vocab = {table[b]: b for b in range(256)}
    vocab["<s>"] = 256
    vocab["</s>"] = 257
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": 256, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True},
            {"id": 257, "content": "</s>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True},
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        # Every special named, so no tokenizer class adds its own default (transformers
        # maps qwen2 to Qwen2Tokenizer, which would add `<|endoftext|>` as id 258).
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "</s>", "pad_token": "</s>", "add_bos_token": False,
                   "chat_template": CHAT_TEMPLATE}, f)


def build(name, extra):
    torch.manual_seed(sum(map(ord, name)))
    kw = dict(COMMON)
    kw.update(extra)
    if "rope_parameters" in kw:
        kw.pop("rope_theta")
    model_type = kw.pop("model_type")
    config = AutoConfig.for_model(model_type, **kw)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32, attn_implementation="eager")
    # from_config initialises norms to 1 and biases to 0: randomise them too, so a
    # loader that drops a norm or a bias cannot pass.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.eval()

    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for junk in ("generation_config.json",):
        p = os.path.join(d, junk)
        if os.path.exists(p):
            os.remove(p)

    write_tokenizer(d)

    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 256, (PREFILL + DECODE,), generator=g).tolist()  # 20 ids
    logits = []
    with torch.no_grad():
        out = model(torch.tensor([tokens[:PREFILL]]), use_cache=True)
        logits.append(out.logits[0, -1].tolist())
        past = out.past_key_values
        for t in tokens[PREFILL:PREFILL + DECODE]:
            out = model(torch.tensor([[t]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits.append(out.logits[0, -1].tolist())
        # Also the whole sequence in one pass (every position), a second check.
        full = model(torch.tensor([tokens])).logits[0].tolist()
    ref = dict(
        family=name,
        transformers=transformers.__version__,
        torch=torch.__version__,
        tokens=tokens,
        prefill=PREFILL,
        logits=logits,
        full=full,
    )
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(name, "->", d, "params", sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    only = sys.argv[1:]
    for name, extra in FAMILIES.items():
        if not only or name in only:
            build(name, extra)
