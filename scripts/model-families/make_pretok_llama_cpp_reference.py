#!/usr/bin/env python3
"""llama.cpp's token ids for the tokenizer corpus: the runtime reference for
every GGUF pre-tokenizer we implement and for SentencePiece vocabularies. NOT run by CI:
writes crates/backend-candle/tests/data/pretokenizer_ids_llama_cpp.json, which
tests/tokenizer.rs compares our ids with (next to the Hugging Face / sentencepiece
references of make_pretok_reference.py and make_spm_reference.py).

- BPE: for each `tokenizer.ggml.pre` value, a vocab-only GGUF built exactly as the Rust
  test builds it (the default model's tokenizer metadata, that `pre`, plus the five
  three-digit words of EXTRA), tokenized by llama.cpp.
- SentencePiece: tests/data/spm/vocab.gguf as committed.

Each of the 300 corpus strings is tokenized with `add_bos=False` and special-token parsing
on (as `LlamaTokenizer::encode(text, false)`), through llama-cpp-python 0.3.36 (the bench
venv), with the `gguf` package of its sdist (see make_gguf.py):

    LLAMA_CPP=llama_cpp_python-0.3.36/vendor/llama.cpp target/bench-venv/bin/python \\
        scripts/model-families/make_pretok_llama_cpp_reference.py ~/.cache/perpetua/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DATA = os.path.join(HERE, "..", "..", "crates", "backend-candle", "tests", "data")
EXTRA = ["123", "000", "202", "999", "314"]


def vocab_only_copy(gguf, src, dst, pre):
    """`src`'s metadata (no tensors) with `pre` and EXTRA appended to the vocabulary."""
    from gguf_copy import copy_gguf
    edits = {
        "tokenizer.ggml.pre": lambda v: pre,
        "tokenizer.ggml.tokens": lambda v: v + EXTRA,
        "tokenizer.ggml.token_type": lambda v: v + [1] * len(EXTRA),
    }
    copy_gguf(gguf, src, dst, edit=lambda name, v: edits.get(name, lambda v: v)(v), tensors=False)


def tokenize_all(path, texts):
    from llama_cpp import Llama
    m = Llama(model_path=path, vocab_only=True, verbose=False)
    return [m.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]


def main():
    sys.path.insert(0, os.path.join(os.environ["LLAMA_CPP"], "gguf-py"))
    import gguf
    import llama_cpp

    hf = json.load(open(os.path.join(DATA, "pretokenizer_ids.json")))
    texts = hf["corpus"]
    out = {"source": "llama-cpp-python " + llama_cpp.__version__, "ids": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in hf["ids"]:
            path = os.path.join(tmp, f"{pre}.gguf")
            vocab_only_copy(gguf, sys.argv[1], path, pre)
            ids = tokenize_all(path, texts)
            same = sum(a == b for a, b in zip(ids, hf["ids"][pre]))
            print(f"{pre}: llama.cpp equals HF tokenizers on {same} of {len(texts)} strings")
            out["ids"][pre] = ids
    spm = json.load(open(os.path.join(DATA, "spm", "reference.json")))
    ids = tokenize_all(os.path.join(DATA, "spm", "vocab.gguf"), spm["corpus"])
    same = sum(a == b for a, b in zip(ids, spm["ids"]))
    print(f"sentencepiece: llama.cpp equals sentencepiece on {same} of {len(spm['corpus'])} strings")
    out["spm"] = ids
    with open(os.path.join(DATA, "pretokenizer_ids_llama_cpp.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
