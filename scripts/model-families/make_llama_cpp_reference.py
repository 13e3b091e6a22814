#!/usr/bin/env python3
"""llama.cpp's own logits for each converted GGUF of make_gguf.py: the
runtime reference for the quantized files. NOT run by CI: writes
`crates/backend-candle/tests/data/families/<family>/llama_cpp.json`, which the Rust tests
compare against.

Per family and file (`model-f32.gguf`, `model-q8_0.gguf`): the logits of every position
of reference.json's 20 tokens, evaluated by llama.cpp in one batch — through
llama-cpp-python (the bench venv's, `cargo xtask bench` installs it), without flash
attention, 2 threads: `f32` the F32 file with an f32 KV cache, `q8_0` the Q8_0 file with
llama.cpp's default f16 cache, `q8_0_f32_cache` the Q8_0 file with an f32 cache. The
last two differ only in the cache's rounding: how far llama.cpp's own logits move under
it is the tests' measure of how sensitive a tiny random model is to rounding.

The byte vocabulary of make_tiny.py has no merges, which llama.cpp's loader requires
of a `gpt2` vocabulary: the script evaluates a copy of each file with one merge added
(ids are fed directly, nothing is tokenized). The copy is written by gguf_copy.py with the `gguf`
package of the llama-cpp-python sdist (see make_gguf.py), which needs pyyaml and tqdm:

    target/bench-venv/bin/pip install pyyaml tqdm
    LLAMA_CPP=llama_cpp_python-0.3.36/vendor/llama.cpp target/bench-venv/bin/python \\
        scripts/model-families/make_llama_cpp_reference.py
"""
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DATA = os.path.join(HERE, "..", "..", "crates", "backend-candle", "tests", "data", "families")
FAMILIES = ["llama3", "llama-linear", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1


def with_merge(gguf, src, dst):
    """`src` with one BPE merge, which llama.cpp's loader requires of a `gpt2` vocabulary."""
    from gguf_copy import copy_gguf
    copy_gguf(gguf, src, dst, extra=[("tokenizer.ggml.merges", ["Ġ Ġ"], gguf.GGUFValueType.ARRAY)])


def main():
    llama_cpp_dir = os.path.abspath(os.environ["LLAMA_CPP"])
    sys.path.insert(0, os.path.join(llama_cpp_dir, "gguf-py"))
    import gguf
    import llama_cpp
    from llama_cpp import Llama

    only = sys.argv[1:]
    for family in [f for f in FAMILIES if not only or f in only]:
        d = os.path.join(DATA, family)
        ref = json.load(open(os.path.join(d, "reference.json")))
        tokens = ref["tokens"]
        out = dict(family=family, llama_cpp_python=llama_cpp.__version__, tokens=tokens)
        runs = (("f32", "f32", GGML_TYPE_F32), ("q8_0", "q8_0", GGML_TYPE_F16), ("q8_0_f32_cache", "q8_0", GGML_TYPE_F32))
        for key, kind, kv in runs:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.gguf")
                with_merge(gguf, os.path.join(d, f"model-{kind}.gguf"), path)
                m = Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                          type_k=kv, type_v=kv, flash_attn=False)
                m.eval(tokens)
                scores = np.array(m.scores[: len(tokens)], dtype=np.float32)
                del m
            hf = np.array(ref["full"], dtype=np.float32)
            print(f"{family} {key}: llama.cpp vs transformers max |dlogit| {np.abs(scores - hf).max():.2e}")
            out[key] = scores.tolist()
        with open(os.path.join(d, "llama_cpp.json"), "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
