#!/usr/bin/env python3
"""Reference token ids for the GGUF BPE pre-tokenizers we implement. NOT run
by CI: writes crates/backend-candle/tests/data/pretokenizer_ids.json.

For each `tokenizer.ggml.pre` value, the tokenizer that value stands for is built with
Hugging Face `tokenizers` the way the family's own `tokenizer.json` defines it (the regex
below is the original one from that file, which llama.cpp's `llama-vocab.cpp` quotes as
the source of its adapted regex), over the default model's (SmolLM2's) vocabulary and
merges read from its GGUF, plus the 5 tokens of EXTRA. A 300-string corpus (mixed scripts, digits, code, whitespace
runs, emoji, contractions in both cases) is encoded with each; the Rust test writes
vocab-only GGUFs with each `pre` value and checks our ids equal these.

    /tmp/refenv/bin/python scripts/model-families/make_pretok_reference.py ~/.cache/perpetua/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import os
import random
import sys

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, decoders

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "backend-candle", "tests", "data", "pretokenizer_ids.json")

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


EXTRA = ["123", "000", "202", "999", "314"]


def pre_tokenizer(pre):
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    regex = {"llama-bpe": LLAMA3, "qwen2": QWEN2}[pre]
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def corpus():
    rng = random.Random(19)
    fixed = [
        "", " ", "  ", "\n", "\n\n\n", "\t", " \t\n ", "Hello, world!", "hello world", "HELLO WORLD",
        "I'm here, you're there, they'll go, we've been, she'd say, it's fine.",
        "I'M HERE, YOU'RE THERE, THEY'LL GO, WE'VE BEEN, SHE'D SAY, IT'S FINE.",
        "don't DON'T Don'T", "3.14159", "1234567890", "12 345 6789 1000000", "x=1+2*3/4-5",
        "def f(x):\n    return x ** 2  # square\n", "fn main() {\n\tprintln!(\"{}\", 42);\n}",
        "<html><body class=\"a b\">text</body></html>", "a\r\nb\r\n\r\nc", "   leading and trailing   ",
        "日本語のテキスト", "中文文本，标点。", "Ελληνικά κείμενα", "Русский текст, ёжик.", "עברית",
        "العربية", "हिन्दी पाठ", "한국어 텍스트", "emoji 😀🎉👍🏽 and 🇫🇷 flags", "café naïve résumé",
        "tab\tseparated\tvalues", "multiple     spaces", "trailing newline\n", "\n leading newline",
        "mixed123abc456", "CamelCaseWordsHere", "snake_case_words", "kebab-case-words",
        "email@example.com https://example.org/path?q=1&r=2", "$100.00 €50 ¥1000 £7",
        "((nested [brackets] {here}))", "!!!???...", "'quoted' \"double\" `back`", "a'b'c",
        "The year 2024 had 366 days.", "Unicode ½ ¾ ² ³ ∑ ∞ ≠", "\u00a0non-breaking\u00a0space",
        "zero\u200bwidth", "line1\nline2\n\nline4", "    indented code", "ends with spaces   ",
    ]
    pieces = ["the", "The", "THE", " ", "  ", "\n", "\t", "'s", "'LL", "'re", "123", "4", "56789",
              "日本", "語", "ё", "é", "😀", "🎉", "!", "?", ".", ",", "-", "_", "(", ")", "{", "}",
              "::", "->", "==", "http", "://", "x", "y", "z", "foo", "Bar", "BAZ", "\r\n", "ﬁ", "ß",
              "İ", "ǅ", "€", "%", "#", "@", "  \n", " \n ", "0", "00", "000", "0000"]
    out = list(fixed)
    while len(out) < 300:
        n = rng.randint(1, 14)
        out.append("".join(rng.choice(pieces) for _ in range(n)))
    return out


def main():
    sys.path.insert(0, os.path.join(os.environ["LLAMA_CPP"], "gguf-py"))
    import gguf
    r = gguf.GGUFReader(sys.argv[1])
    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in r.fields["tokenizer.ggml.token_type"].data]
    # Three-digit words without merges that reach them: only Llama 3's split (digit runs
    # of up to 3) with `ignore_merges` produces them, so the test tells llama-bpe from
    # qwen2 (SmolLM2's own vocabulary has single digits only).
    tokens = tokens + EXTRA
    types = types + [1] * len(EXTRA)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in merges]
    texts = corpus()
    ids = {}
    for pre in ["smollm", "gpt-2", "llama-bpe", "qwen2"]:
        bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=(pre == "llama-bpe"))
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizer(pre)
        tok.decoder = decoders.ByteLevel()
        # Control tokens (type 3) are matched verbatim, as in the GGUF tokenizer.
        tok.add_special_tokens([t for t, ty in zip(tokens, types) if ty == 3])
        ids[pre] = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    with open(OUT, "w") as f:
        json.dump({"source": "HF tokenizers " + __import__("tokenizers").__version__, "corpus": texts, "ids": ids}, f,
                  ensure_ascii=False)
    print(OUT, {k: sum(map(len, v)) for k, v in ids.items()})


if __name__ == "__main__":
    main()
