#!/usr/bin/env python3
"""A Gemma-style SentencePiece GGUF vocabulary and llama.cpp's ids for it.
NOT run by CI: writes crates/backend-candle/tests/data/spm/gemma-style.gguf and
gemma-style.json.

Gemma's GGUF vocabularies differ from Llama 2's in what the tokenizer test of
make_spm_reference.py does not cover: `tokenizer.ggml.add_space_prefix = false` (no
dummy `▁` in front of the text) and turn markers (`<start_of_turn>`, `<end_of_turn>`)
as control tokens that are matched verbatim in the input. This script takes the
committed vocab.gguf, sets `add_space_prefix` to false and appends the two markers as
control tokens (score 0), then tokenizes the 300-string corpus and a few chat-shaped
strings with llama.cpp (`add_bos=False`, special tokens parsed) through llama-cpp-python
0.3.36 (the bench venv) and the `gguf` package of its sdist (see make_gguf.py):

    LLAMA_CPP=llama_cpp_python-0.3.36/vendor/llama.cpp target/bench-venv/bin/python \\
        scripts/model-families/make_spm_gemma_style.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SPM = os.path.join(HERE, "..", "..", "crates", "backend-candle", "tests", "data", "spm")
MARKERS = ["<start_of_turn>", "<end_of_turn>"]
CHATS = [
    "<start_of_turn>user\nHi there!<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\n  two  spaces<end_of_turn>",
    "no markers at all",
    "<end_of_turn><start_of_turn>",
]


def main():
    sys.path.insert(0, os.path.join(os.environ["LLAMA_CPP"], "gguf-py"))
    import gguf
    import llama_cpp
    from llama_cpp import Llama

    src = os.path.join(SPM, "vocab.gguf")
    dst = os.path.join(SPM, "gemma-style.gguf")
    from gguf_copy import DROP, copy_gguf
    edits = {
        "tokenizer.ggml.add_space_prefix": lambda v: DROP,
        "tokenizer.ggml.tokens": lambda v: v + MARKERS,
        "tokenizer.ggml.scores": lambda v: v + [0.0] * len(MARKERS),
        "tokenizer.ggml.token_type": lambda v: v + [3] * len(MARKERS),
    }
    copy_gguf(gguf, src, dst, edit=lambda name, v: edits.get(name, lambda v: v)(v),
              extra=[("tokenizer.ggml.add_space_prefix", False, gguf.GGUFValueType.BOOL)], tensors=False)

    corpus = json.load(open(os.path.join(SPM, "reference.json")))["corpus"]
    texts = corpus + CHATS
    m = Llama(model_path=dst, vocab_only=True, verbose=False)
    ids = [m.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    with open(os.path.join(SPM, "gemma-style.json"), "w") as f:
        json.dump({"source": "llama-cpp-python " + llama_cpp.__version__, "texts": texts, "ids": ids}, f,
                  ensure_ascii=False)
    print(dst, os.path.getsize(dst), "bytes;", len(texts), "strings;", ids[-4:])


if __name__ == "__main__":
    main()
