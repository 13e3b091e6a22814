"""llama.cpp contender of `cargo xtask bench`, through llama-cpp-python.

One measurement per process (so VmHWM is this contender's peak RSS); prints one JSON
object on stdout. Reads the prompt and filler token ids written by the Rust side
(`e2e --mode tokens`), so llama.cpp evaluates exactly the same ids as the Rust
contenders (passed as a list: no tokenization here).

    python bench_llama_cpp.py --model M.gguf --tokens-file tokens.json --mode greedy --new-tokens 128
    python bench_llama_cpp.py ... --mode sampled --new-tokens 128
    python bench_llama_cpp.py ... --mode position --position 2000 --steps 32

- greedy: `eval(prompt)`, argmax of the last logits; then `new_tokens` times
  `eval([tok])` and argmax.
- sampled: llama.cpp's own sampler chain through `Llama.generate` (top_k=20, temp=1.0;
  top-p 1.0, min-p 0, typical 1.0 and repeat penalty 1.0 are no-ops), seed 1. The first
  token (prompt eval + one draw) is the prefill; `new_tokens` more draws are the decode.
- position: `eval(filler[:position])` (batches of 512), then `steps` greedy steps, the
  first feeding `filler[position]`.
- long: `new_tokens` sampled tokens (top-k 20, T 1.0, numpy RNG seeded, EOS
  logit masked) through an `n_ctx = window` context kept by llama.cpp's own context shift:
  when the next token would not fit, keep the prompt (`n_keep`), drop half of the rest
  (`llama_memory_seq_rm`) and move the kept tail back (`llama_memory_seq_add`, which
  re-rotates its keys inside the next `llama_decode`, so that cost lands in decode time,
  not in `roll_s`). The same amounts as perpetua's `ContextRoll::Shift`.

    python bench_llama_cpp.py ... --mode long --new-tokens 20000 --window 8192

- batch: `--batch B` sequences decoding together, one `llama_decode` of B tokens per
  step through llama.cpp's low-level `llama_batch` API (a context of its own with
  `n_seq_max = B`; `Llama`'s high-level calls run one sequence). The same ragged
  prompts as perpetua's `e2e --mode generate-batch` (sequence s: filler ids
  `[200 s, 200 s + 20 + 180 s / max(B - 1, 1))`), each prefilled alone but its last id;
  then `new_tokens` steps, the first feeding every prompt's last id; each sequence
  samples top-k 20 at T 1.0 with EOS masked (numpy, seeded). Aggregate decode rate =
  B · new_tokens ÷ the steps' time (prefills excluded), as perpetua's row.

    python bench_llama_cpp.py ... --mode batch --batch 8 --new-tokens 256
"""

import argparse
import json
import sys
import time


def status_mib(field):
    """A /proc/self/status memory field (`VmHWM:`, `VmRSS:`), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return None


def peak_rss_mib():
    return status_mib("VmHWM:")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tokens-file", required=True)
    p.add_argument("--mode", required=True, choices=["greedy", "sampled", "position", "long", "batch"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--window", type=int, default=8192)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--position", type=int, default=100)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    started = time.perf_counter()
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    with open(a.tokens_file) as f:
        tokens = json.load(f)
    prompt = [int(t) for t in tokens["prompt"]]
    filler = [int(t) for t in tokens["filler"]]

    if a.mode == "batch":
        needed = 8  # the batch runs in a context of its own (batch_run)
    elif a.mode == "long":
        needed = a.window
    elif a.mode == "position":
        if len(filler) < a.position + 1:
            sys.exit(f"filler has {len(filler)} ids, position {a.position} needs {a.position + 1}")
        needed = a.position + a.steps + 8
    else:
        needed = len(prompt) + a.new_tokens + 8
    # llama.cpp allocates its (f16) KV cache for n_ctx up front: size it to the run.
    n_ctx = a.window if a.mode == "long" else max(512, -(-needed // 256) * 256)

    t = time.perf_counter()
    llm = Llama(
        model_path=a.model,
        n_ctx=n_ctx,
        n_batch=512,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        seed=a.seed,
        logits_all=False,
        verbose=False,
    )
    load_s = time.perf_counter() - t
    n_vocab = llm.n_vocab()

    def argmax_last():
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_vocab,))
        return int(np.argmax(logits))

    out = {"contender": "llama.cpp", "mode": a.mode, "prompt_tokens": len(prompt), "n_ctx": n_ctx, "load_s": load_s}
    if a.mode == "greedy":
        t = time.perf_counter()
        llm.eval(prompt)
        tok = argmax_last()
        prefill_s = time.perf_counter() - t
        ids = [tok]
        t = time.perf_counter()
        for _ in range(a.new_tokens):
            llm.eval([tok])
            tok = argmax_last()
            ids.append(tok)
        decode_s = time.perf_counter() - t
        out.update(prefill_tokens=len(prompt), forward_passes=a.new_tokens, prefill_s=prefill_s, decode_s=decode_s,
                   prefill_tok_s=len(prompt) / prefill_s, decode_tok_s=a.new_tokens / decode_s, ids=ids)
    elif a.mode == "sampled":
        gen = llm.generate(prompt, top_k=20, top_p=1.0, min_p=0.0, typical_p=1.0, temp=1.0, repeat_penalty=1.0)
        t = time.perf_counter()
        ids = [next(gen)]
        prefill_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(a.new_tokens):
            ids.append(next(gen))
        decode_s = time.perf_counter() - t
        gen.close()
        out.update(prefill_tokens=len(prompt), forward_passes=a.new_tokens, prefill_s=prefill_s, decode_s=decode_s,
                   prefill_tok_s=len(prompt) / prefill_s, decode_tok_s=a.new_tokens / decode_s, ids=ids)
    elif a.mode == "long":
        out.update(long_run(llm, llama_cpp, np, prompt, a, n_vocab, argmax_last))
    elif a.mode == "batch":
        out.update(batch_run(llm, llama_cpp, np, filler, a, n_vocab))
    else:
        t = time.perf_counter()
        llm.eval(filler[: a.position])
        fill_s = time.perf_counter() - t
        tok = filler[a.position]
        t = time.perf_counter()
        for _ in range(a.steps):
            llm.eval([tok])
            tok = argmax_last()
        decode_s = time.perf_counter() - t
        out.update(position=a.position, steps=a.steps, fill_s=fill_s, decode_s=decode_s,
                   decode_tok_s=a.steps / decode_s)

    out["versions"] = {
        "llama_cpp_python": llama_cpp.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
    }
    out["threads"] = {"n_threads": a.threads, "n_threads_batch": a.threads}
    out["peak_rss_mib"] = peak_rss_mib()
    out["wall_s"] = time.perf_counter() - started
    print(json.dumps(out))


def long_run(llm, llama_cpp, np, prompt, a, n_vocab, _argmax):
    """`--mode long`: sampled tokens through a rolled context (see the module docs)."""
    eos = llm.token_eos()
    rng = np.random.default_rng(a.seed)
    mem = llama_cpp.llama_get_memory(llm.ctx)
    n_keep = len(prompt)
    if n_keep * 2 > a.window:
        sys.exit(f"the prompt ({n_keep} ids) must fit in half the window ({a.window})")
    started = time.perf_counter()
    llm.eval(prompt)
    generated, rolls, roll_s = 0, 0, 0.0
    rss_after_roll = []
    while generated < a.new_tokens:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_vocab,)).copy()
        logits[eos] = -np.inf
        top = np.argpartition(logits, -20)[-20:]
        z = logits[top] - logits[top].max()
        p = np.exp(z)
        tok = int(top[rng.choice(20, p=p / p.sum())])
        generated += 1
        if generated % 1000 == 0 and rolls > 0:
            rss_after_roll.append(status_mib("VmRSS:"))
        if llm.n_tokens + 1 > a.window:
            t = time.perf_counter()
            n_past = llm.n_tokens
            n_discard = (n_past - n_keep) // 2
            llama_cpp.llama_memory_seq_rm(mem, 0, n_keep, n_keep + n_discard)
            llama_cpp.llama_memory_seq_add(mem, 0, n_keep + n_discard, n_past, -n_discard)
            llm.input_ids[n_keep : n_past - n_discard] = llm.input_ids[n_keep + n_discard : n_past]
            llm.n_tokens = n_past - n_discard
            roll_s += time.perf_counter() - t
            rolls += 1
        llm.eval([tok])
    run_s = time.perf_counter() - started
    return dict(new_tokens=generated, window=a.window, run_s=run_s, tok_s=generated / run_s, rolls=rolls,
                roll_s=roll_s, roll_s_each=roll_s / rolls if rolls else 0.0,
                rss_after_first_roll_min_mib=min(rss_after_roll) if rss_after_roll else None,
                rss_after_first_roll_max_mib=max(rss_after_roll) if rss_after_roll else None)


def batch_run(llm, llama_cpp, np, filler, a, n_vocab):
    """`--mode batch`: B sequences per `llama_decode` (see the module docs)."""
    b = a.batch
    if b < 1 or len(filler) < 200 * b:
        sys.exit(f"--batch {b}: needs 1..={len(filler) // 200} sequences")
    lens = [min(200, 20 + (s * 180) // max(max(b, 2) - 1, 1)) for s in range(b)]
    prompts = [filler[200 * s : 200 * s + n] for s, n in enumerate(lens)]
    per_seq = -(-(200 + a.new_tokens + 8) // 256) * 256
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = per_seq * b
    params.n_batch = 512
    params.n_ubatch = 512
    params.n_seq_max = b
    params.n_threads = a.threads
    params.n_threads_batch = a.threads
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if not ctx:
        sys.exit("llama_init_from_model failed")
    batch = llama_cpp.llama_batch_init(512, 0, b)
    eos = llm.token_eos()
    rng = np.random.default_rng(a.seed)

    def decode(entries):
        """entries: (token, position, sequence, wants logits)."""
        for i, (tok, pos, seq, wants) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = wants
        batch.n_tokens = len(entries)
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            sys.exit(f"llama_decode returned {rc}")

    def sample(i):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()
        logits[eos] = -np.inf
        top = np.argpartition(logits, -20)[-20:]
        z = logits[top] - logits[top].max()
        p = np.exp(z)
        return int(top[rng.choice(20, p=p / p.sum())])

    t = time.perf_counter()
    for s, prompt in enumerate(prompts):
        decode([(tok, pos, s, False) for pos, tok in enumerate(prompt[:-1])])
    prefill_s = time.perf_counter() - t
    nxt = [prompt[-1] for prompt in prompts]
    pos = [len(prompt) - 1 for prompt in prompts]
    t = time.perf_counter()
    for _ in range(a.new_tokens):
        decode([(nxt[s], pos[s], s, True) for s in range(b)])
        nxt = [sample(s) for s in range(b)]
        pos = [p + 1 for p in pos]
    decode_s = time.perf_counter() - t
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    generated = b * a.new_tokens
    return dict(batch=b, new_tokens=a.new_tokens, prefill_tokens=sum(lens) - b, prefill_s=prefill_s,
                decode_s=decode_s, forward_passes=a.new_tokens, decode_tok_s=generated / decode_s,
                generated_tokens=generated, batch_n_ctx=params.n_ctx)


if __name__ == "__main__":
    main()
