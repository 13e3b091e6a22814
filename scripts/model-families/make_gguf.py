#!/usr/bin/env python3
"""GGUF versions of the tiny checkpoints of make_tiny.py, written by llama.cpp's own
converter. NOT run by CI: the files are committed next to the safetensors,
and the Rust tests check that our GGUF loader computes what transformers computed.

llama.cpp's `convert_hf_to_gguf.py` and its `gguf` package come from the source
distribution of llama-cpp-python (which vendors llama.cpp):

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all:   # or fetch the sdist
    tar xzf llama_cpp_python-0.3.36.tar.gz
    /tmp/refenv/bin/pip install sentencepiece   # the converter imports it
    LLAMA_CPP=llama_cpp_python-0.3.36/vendor/llama.cpp /tmp/refenv/bin/python scripts/model-families/make_gguf.py

The tokenizer is make_tiny.py's (ids 0..=255 the bytes, 256 `<s>`, 257 `</s>`). The
converter identifies a BPE pre-tokenizer by hashing how it splits a test text and
  refuses hashes it does not know; this vocabulary is not one of them, so the script
answers `gpt-2` for it (the logits tests do not tokenize). Phi-3's and Gemma 2's
converters read only SentencePiece vocabularies, so they are given the byte-level one the
same way (Gemma 3's falls back to it by itself when there is no `tokenizer.model`).

Mistral: llama.cpp writes MistralForCausalLM as `llama` without the sliding window (and
runs it so), which is not the model transformers computes. Its conversions are written
as they come (`model-f32.gguf`, `model-q8_0.gguf`: what llama.cpp runs, its runtime
reference), and once more with the window declared (`model-f32-sliding.gguf`: the
converted F32 file plus `llama.attention.sliding_window = 5`, written with the `gguf`
package), which is the model transformers computes.
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "crates", "backend-candle", "tests", "data", "families")
FAMILIES = ["llama3", "llama-linear", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]
OUTTYPES = ["f32", "q8_0"]


WRAPPER = """
import sys
sys.path.insert(0, {llama_cpp!r})
sys.path.insert(0, {gguf_py!r})
import convert_hf_to_gguf as c
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
import conversion.phi as phi
phi.Phi3MiniModel.set_vocab = lambda self: self._set_vocab_gpt2()
import conversion.gemma as gemma
gemma.Gemma2Model.set_vocab = lambda self: self._set_vocab_gpt2()
sys.argv = ["convert_hf_to_gguf.py"] + {args!r}
c.main()
"""


def with_window(llama_cpp, src, dst):
    """`src` with `llama.attention.sliding_window` set from the checkpoint's config."""
    sys.path.insert(0, os.path.join(llama_cpp, "gguf-py"))
    sys.path.insert(0, HERE)
    import gguf
    import json
    from gguf_copy import copy_gguf
    window = json.load(open(os.path.join(os.path.dirname(src), "config.json")))["sliding_window"]
    copy_gguf(gguf, src, dst, extra=[("llama.attention.sliding_window", window, gguf.GGUFValueType.UINT32)])
    print("mistral with its window ->", dst, os.path.getsize(dst), "bytes")


def main():
    llama_cpp = os.path.abspath(os.environ["LLAMA_CPP"])
    only = sys.argv[1:]
    for family in [f for f in FAMILIES if not only or f in only]:
        src = os.path.join(DATA, family)
        with tempfile.TemporaryDirectory() as tmp:
            for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(src, f), tmp)
            for outtype in OUTTYPES:
                out = os.path.join(src, f"model-{outtype}.gguf")
                code = WRAPPER.format(llama_cpp=llama_cpp, gguf_py=os.path.join(llama_cpp, "gguf-py"),
                                      args=[tmp, "--outtype", outtype, "--outfile", out])
                subprocess.run([sys.executable, "-c", code], check=True)
                print(family, outtype, "->", out, os.path.getsize(out), "bytes")
        if family == "mistral":
            with_window(llama_cpp, os.path.join(src, "model-f32.gguf"), os.path.join(src, "model-f32-sliding.gguf"))


if __name__ == "__main__":
    main()
