#!/usr/bin/env python3
"""A SentencePiece-style `tokenizer.json`: what Llama 2, Mistral v0.1,
TinyLlama and Gemma checkpoint directories carry (BPE with byte fallback, `▁` word
markers). NOT run by CI: writes crates/backend-candle/tests/data/spm/hf/
(`tokenizer.json`, `tokenizer_config.json`, `reference.json`).

The vocabulary is make_spm_reference.py's (retrained, deterministic: checked against the
committed ids), converted by transformers' own converter (`SpmConverter`: merges ranked
by piece score, byte fallback) into Llama 2's legacy layout, and the 300-string corpus is
encoded by that tokenizer with HF `tokenizers` (`add_special_tokens=False`) — the
reference the Rust test holds our ids to.

    /tmp/refenv/bin/python scripts/model-families/make_spm_tokenizer_json.py
"""
import json
import os
import sys
import tempfile

import sentencepiece as spm
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_spm_reference  # noqa: E402

OUT = os.path.join(make_spm_reference.OUT, "hf")


def main():
    committed = json.load(open(os.path.join(make_spm_reference.OUT, "reference.json")))
    corpus = committed["corpus"]
    with tempfile.TemporaryDirectory() as tmp:
        model = make_spm_reference.train(tmp)
        sp = spm.SentencePieceProcessor(model_file=model)
        assert [sp.encode(t) for t in corpus] == committed["ids"], "retraining is not deterministic"
        # transformers' converter: BPE merges ranked by piece score, byte fallback, then
        # the legacy Llama layout of Llama 2 / Mistral v0.1 files (normalizer: prepend
        # `▁`, spaces to `▁`; decoder: `▁` to space, byte fallback, fuse, strip the
        # dummy prefix's space).
        from tokenizers import AddedToken, Tokenizer, decoders, normalizers
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf
        proto = import_protobuf().ModelProto()
        proto.ParseFromString(open(model, "rb").read())
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        fast = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
        fast.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        fast.pre_tokenizer = None
        fast.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                          decoders.Strip(" ", 1, 0)])
        fast.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
        os.makedirs(OUT, exist_ok=True)
        fast.save(os.path.join(OUT, "tokenizer.json"))
        with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                       "unk_token": "<unk>", "add_bos_token": True, "legacy": True}, f)
    fast = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))
    ids = [fast.encode(t, add_special_tokens=False).ids for t in corpus]
    same = sum(a == b for a, b in zip(ids, committed["ids"]))
    print(f"tokenizer.json equals sentencepiece on {same} of {len(corpus)} strings")
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"source": "transformers " + transformers.__version__, "ids": ids,
                   "decoded": [fast.decode(i) for i in ids]}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
