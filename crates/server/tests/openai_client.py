"""The official `openai` Python client against a running `perpetua-server`.

Run by `crates/server/tests/openai_clients.rs` (which starts the server on a free
loopback port) as `python openai_client.py BASE_URL API_KEY MODEL`. Each check
asserts; the last line printed is a JSON summary the Rust test reads.
"""

import json
import sys

import openai
from openai import OpenAI

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
summary = {"openai_version": openai.__version__}
messages = [{"role": "user", "content": "Name three colours."}]

# Chat, not streamed; the same seed twice gives the same text.
a = client.chat.completions.create(model=model, messages=messages, max_tokens=12, seed=7)
b = client.chat.completions.create(model=model, messages=messages, max_tokens=12, seed=7)
assert a.object == "chat.completion", a
assert a.choices[0].message.role == "assistant"
assert a.choices[0].message.content, a
assert a.choices[0].finish_reason in ("stop", "length"), a
assert a.choices[0].message.content == b.choices[0].message.content, (a, b)
assert a.usage.completion_tokens <= 12 and a.usage.prompt_tokens > 0, a.usage
assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
summary["chat"] = a.choices[0].message.content

# n = 2: two choices, indexed, both counted in the usage.
two = client.chat.completions.create(model=model, messages=messages, max_tokens=10, n=2, seed=3)
assert [c.index for c in two.choices] == [0, 1], two
assert two.usage.completion_tokens >= 2, two.usage
summary["n2"] = [c.message.content for c in two.choices]

# Streamed chat: the chunks add up to the non-streamed text of the same seed; the usage
# chunk comes last when asked.
chunks = list(
    client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=12,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == a.choices[0].message.content, (text, a.choices[0].message.content)
assert chunks[0].choices[0].delta.role == "assistant"
finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finals == [a.choices[0].finish_reason], finals
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == a.usage.completion_tokens
summary["stream_chunks"] = len(chunks)

# A stop string ends the text before it (and is not included).
stopped = client.chat.completions.create(
    model=model, messages=messages, max_tokens=40, seed=7, stop=[a.choices[0].message.content[3:6]]
)
assert stopped.choices[0].finish_reason == "stop", stopped
assert a.choices[0].message.content[3:6] not in stopped.choices[0].message.content
summary["stop"] = stopped.choices[0].message.content

# A perpetual request reaches max_tokens: finish_reason length, every token counted,
# and no EOS among the kept tokens (log-probabilities name each token).
perpetual = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hi."}],
    max_tokens=48,
    seed=1,
    logprobs=True,
    top_logprobs=2,
    extra_body={"perpetual": True},
)
choice = perpetual.choices[0]
assert choice.finish_reason == "length", choice
assert perpetual.usage.completion_tokens == 48, perpetual.usage
tokens = [t.token for t in choice.logprobs.content]
assert len(tokens) == 48, len(tokens)
assert "<|im_end|>" not in tokens, tokens
assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
summary["perpetual_tokens"] = len(tokens)

# Text completions, streamed and not.
completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, seed=2)
assert completion.object == "text_completion" and completion.choices[0].text, completion
streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, seed=2, stream=True)
    if c.choices
)
assert streamed == completion.choices[0].text, (streamed, completion.choices[0].text)
summary["completion"] = completion.choices[0].text

# Errors arrive as the client's typed exceptions.
try:
    client.chat.completions.create(model=model, messages=messages, extra_body={"no_such_field": 1})
    raise AssertionError("an unknown field was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "no_such_field", e.body
    summary["unknown_field"] = e.body["message"]
try:
    OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong API key was accepted")
except openai.AuthenticationError as e:
    summary["wrong_key"] = e.status_code
assert [m.id for m in client.models.list()] == [model]

print(json.dumps(summary))
