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
    p.add_argument("--mode", required=True, choices=["greedy", "sampled", "position", "long"])
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

    if a.mode == "long":
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


if __name__ == "__main__":
    main()
