"""Load test of `perpetua serve` with the official `openai` client (async, streaming).

    python benches/serve_load.py BASE_URL [--clients 16] [--requests 3] [--max-tokens 128]

First one client alone (the single-client baseline, same settings, measured in the same
run), then CLIENTS concurrent clients x REQUESTS requests each. Every response must be
complete and well formed: one finish_reason per request, `length` (ignore_eos keeps every
request at max_tokens), usage.completion_tokens = max_tokens, text non-empty. Prints
p50/p95 latency, time to first chunk and aggregate tok/s for both, and their ratio, as
JSON on the last line. Run against `perpetua serve` (release build), e.g.
    target/release/perpetua serve --port 8090 & python benches/serve_load.py http://127.0.0.1:8090/v1
"""

import argparse
import asyncio
import json
import statistics
import sys
import time

from openai import AsyncOpenAI

PROMPTS = [
    "Write a story about a lighthouse keeper.",
    "Explain how rain forms.",
    "Describe a busy market in the morning.",
    "Write a letter to a friend about a trip.",
]


async def one_request(client, model, i, max_tokens):
    start = time.perf_counter()
    first = None
    text, finishes, usage = [], [], None
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        max_tokens=max_tokens,
        seed=i,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"top_k": 20, "ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                if first is None:
                    first = time.perf_counter() - start
                text.append(c.delta.content)
            if c.finish_reason:
                finishes.append(c.finish_reason)
    latency = time.perf_counter() - start
    assert finishes == ["length"], finishes
    assert usage is not None and usage.completion_tokens == max_tokens, usage
    assert "".join(text), "empty text"
    return latency, first, usage.completion_tokens


async def run(base_url, model, clients, requests, max_tokens):
    client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)

    async def worker(c):
        return [await one_request(client, model, c * requests + r, max_tokens) for r in range(requests)]

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(worker(c) for c in range(clients))) for r in rs]
    wall = time.perf_counter() - start
    lat = sorted(r[0] for r in results)
    ttft = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tok_s": round(tokens / wall, 1),
        "latency_p50_s": round(statistics.median(lat), 2),
        "latency_p95_s": round(pick(lat, 0.95), 2),
        "first_chunk_p50_s": round(statistics.median(ttft), 2),
        "first_chunk_p95_s": round(pick(ttft, 0.95), 2),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    a = p.parse_args()
    async def model_id():
        return (await AsyncOpenAI(base_url=a.base_url, api_key="none").models.list()).data[0].id

    model = asyncio.run(model_id())
    single = asyncio.run(run(a.base_url, model, 1, a.requests, a.max_tokens))
    print("single client:", json.dumps(single), file=sys.stderr)
    loaded = asyncio.run(run(a.base_url, model, a.clients, a.requests, a.max_tokens))
    print(f"{a.clients} clients:", json.dumps(loaded), file=sys.stderr)
    print(json.dumps({"single": single, "loaded": loaded, "tok_s_ratio": round(loaded["tok_s"] / single["tok_s"], 2)}))


if __name__ == "__main__":
    main()
