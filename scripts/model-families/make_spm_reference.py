#!/usr/bin/env python3
"""A small SentencePiece BPE vocabulary in a GGUF, with reference ids. NOT run
by CI: writes crates/backend-candle/tests/data/spm/ (`vocab.gguf`, `reference.json`).

Llama 2, Mistral v0.1, TinyLlama and Phi-3 GGUFs carry SentencePiece vocabularies
(`tokenizer.ggml.model = llama`: pieces, scores, token types, byte fallback). None can
be fetched here, so one is trained with the reference implementation, `sentencepiece`,
with Llama's settings (BPE, byte fallback, split digits, identity normalization, no
whitespace collapsing, a dummy prefix), written into a GGUF by llama.cpp's converter
(`--vocab-only`, its SentencePiece path), and the 300-string corpus of
make_pretok_reference.py is encoded with `sentencepiece` itself.

    pip install sentencepiece
    LLAMA_CPP=…/vendor/llama.cpp /tmp/refenv/bin/python scripts/model-families/make_spm_reference.py
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_pretok_reference  # noqa: E402  (the corpus)

OUT = os.path.join(HERE, "..", "..", "crates", "backend-candle", "tests", "data", "spm")
TINY = os.path.join(HERE, "..", "..", "crates", "backend-candle", "tests", "data", "families", "llama3")


def training_text():
    rng = random.Random(2)
    words = ("the quick brown fox jumps over the lazy dog while a detective dog sniffs the rain "
             "soaked alley and counts 12 clues in 2024 . , ! ? ' \" ( ) : ; - café naïve résumé "
             "日本語 テキスト 中文 文本 русский текст ελληνικά def return fn main println let x = 1 + 2 "
             "I'm you're they'll we've she'd it's don't").split(" ")
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) for _ in range(3000))


def train(tmp):
    """Train the vocabulary in `tmp` (deterministic); returns the `.model` path."""
    text = os.path.join(tmp, "train.txt")
    with open(text, "w") as f:
        f.write(training_text())
    prefix = os.path.join(tmp, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=prefix, model_type="bpe", vocab_size=600, byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return prefix + ".model"


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = train(tmp)[: -len(".model")]
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        # llama.cpp's converter needs a model directory: the tiny llama's config and
        # weights (only the vocabulary is written) with this tokenizer.model.
        model_dir = os.path.join(tmp, "model")
        os.makedirs(model_dir)
        config = json.load(open(os.path.join(TINY, "config.json")))
        config["vocab_size"] = sp.get_piece_size()
        config["bos_token_id"], config["eos_token_id"] = 1, 2
        json.dump(config, open(os.path.join(model_dir, "config.json"), "w"))
        shutil.copy(os.path.join(TINY, "model.safetensors"), model_dir)
        shutil.copy(prefix + ".model", os.path.join(model_dir, "tokenizer.model"))
        llama_cpp = os.path.abspath(os.environ["LLAMA_CPP"])
        code = (f"import sys; sys.path.insert(0, {llama_cpp!r}); sys.path.insert(0, {os.path.join(llama_cpp, 'gguf-py')!r});"
                f"import convert_hf_to_gguf as c; sys.argv = ['c', {model_dir!r}, '--vocab-only', '--outfile',"
                f" {os.path.join(OUT, 'vocab.gguf')!r}]; c.main()")
        subprocess.run([sys.executable, "-c", code], check=True)
    corpus = make_pretok_reference.corpus()
    ids = [sp.encode(t) for t in corpus]
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"source": "sentencepiece " + spm.__version__, "corpus": corpus, "ids": ids,
                   "decoded": [sp.decode(i) for i in ids]}, f, ensure_ascii=False)
    print(OUT, sp.get_piece_size(), "pieces,", sum(map(len, ids)), "ids")


if __name__ == "__main__":
    main()
