#!/usr/bin/env python3
"""Dev script: produce llama.cpp's token ids for fixed strings, as test data.

Run once (not in CI):
    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python
    /tmp/llvenv/bin/python crates/backend-candle/scripts/llama_cpp_ids.py \
        ~/.cache/perpetua/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        > crates/backend-candle/tests/data/llama_cpp_ids.json

Ids come from llama.cpp's own tokenizer (vocab only, no BOS, special tokens parsed),
which `tests/tokenizer.rs` compares against ours.
"""
import json
import sys

import llama_cpp

STRINGS = [
    "Hello, world!",
    "The capital of France is Paris.",
    "  leading spaces and trailing   ",
    "1234567890",
    "Pi is 3.14159265358979, e is 2.71828.",
    "I've been there; you'll see, they're fine. We'd go.",
    "naïve café, Zürich, São Paulo, Ærøskøbing",
    "Привет, мир! Как дела?",
    "日本語のテキストと中文文本",
    "emoji: 🐶🕵️‍♂️🎉 and 👍🏽",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}",
    "tabs\tand\nnewlines\n\n\nand\r\ncarriage returns",
    "<|im_start|>user\nWrite a book about a dog that can talk and is a detective.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after end",
    "mixed<|im_end|>special<|im_start|>tokens",
    "URL: https://example.com/path?query=1&b=2#frag",
    "email@example.org, @handle, #hashtag, $100.00, 50%",
    "ALL CAPS SENTENCE WITH NUMBERS 2024 AND 1999",
    "   ",
    "a",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "The year 2025 had 365 days; 12 months; 52 weeks.",
    "Once upon a time, there was a dog named Max who could talk.",
    "!!!???...,,,;;;:::---___===+++",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
]


def main() -> None:
    llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    out = []
    for s in STRINGS:
        ids = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        out.append({"text": s, "ids": ids})
    # One case per line keeps diffs of the test data readable.
    header = {"llama_cpp_python": llama_cpp.__version__, "model": sys.argv[1].split("/")[-1]}
    sys.stdout.write(json.dumps(header, ensure_ascii=False)[:-1] + ', "cases": [\n')
    sys.stdout.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in out))
    sys.stdout.write("\n]}")
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
