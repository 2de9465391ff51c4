"""The official OpenAI Python SDK against the Tollgate proxy and mock providers.

Run by tests/sdk/run.sh, which starts nats-server, the mock providers
(`mock_providers`) and `tollgate serve`, creates a project with the plan in
run.sh, and passes:

  TOLLGATE_PROXY_URL    http://127.0.0.1:PORT (the proxy, without /v1)
  TOLLGATE_PROJECT_KEY  pk_… of the project
  TOLLGATE_INGEST_URL   http://127.0.0.1:PORT (the ingest API)
  TOLLGATE_SECRET_KEY   sk_… of the project (for GET /v1/usage)
  TOLLGATE_HANGUP_PORT  the port of the project's custom provider `hangup`,
                        on which nothing listens until a test does

The mocks answer with their default reply and report a fixed input token
count (TOLLGATE_MOCK_INPUT_TOKENS, 11 unless run.sh says otherwise); output
tokens are the number of reply pieces (words) sent.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import time
import uuid
import wave
from decimal import Decimal

import httpx
import openai
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

PROXY_URL = os.environ["TOLLGATE_PROXY_URL"].rstrip("/")
PROJECT_KEY = os.environ["TOLLGATE_PROJECT_KEY"]
INGEST_URL = os.environ["TOLLGATE_INGEST_URL"].rstrip("/")
SECRET_KEY = os.environ["TOLLGATE_SECRET_KEY"]
HANGUP_PORT = int(os.environ["TOLLGATE_HANGUP_PORT"])

# What the mocks say (tests/testkit/src/mock_providers.rs, MockBehavior::default).
REPLY = "Hello from the mock provider, nice to meet you."
INPUT_TOKENS = int(os.environ.get("TOLLGATE_MOCK_INPUT_TOKENS", "11"))
# The mock cuts the reply into word pieces, one output token each.
OUTPUT_TOKENS = len(REPLY.split(" "))

MODELS = ["gpt-4o", "claude-3-5-sonnet-20240620", "gemini-2.0-flash", "grok-2-1212"]

LIMIT_MESSAGE = "Free plan limit reached: 2/2 requests per minute. Upgrade!"
DEEP_LINK = "myapp://upgrade"

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the SDK test suite, please."},
]


def new_identity(label: str) -> str:
    return f"sdk-{label}-{uuid.uuid4().hex[:12]}"


def make_client(
    identity: str, project_key: str = PROJECT_KEY, tier: str | None = None
) -> openai.OpenAI:
    headers = {"x-project-key": project_key, "x-identity": identity}
    if tier is not None:
        headers["x-tier"] = tier
    return openai.OpenAI(
        base_url=PROXY_URL + "/v1",
        api_key="sk-test-provider-key",
        default_headers=headers,
        max_retries=0,
        timeout=30.0,
    )


def usage_view(identity: str, tier: str | None = None) -> dict:
    params = {"identity": identity}
    if tier is not None:
        params["tier"] = tier
    r = httpx.get(
        INGEST_URL + "/v1/usage",
        params=params,
        headers={"authorization": f"Bearer {SECRET_KEY}"},
        timeout=10.0,
    )
    assert r.status_code == 200, r.text
    return r.json()


def used(view: dict, unit: str, window: str) -> float | None:
    for limit in view["limits"]:
        if limit["unit"] == unit and limit["window"] == window and "model" not in limit:
            return float(limit["used"])
    return None


def assert_requests_used(
    identity: str, expected: int, window: str = "day", tier: str | None = None
) -> None:
    """Commits land after the response: poll the ledger's view until they show."""
    deadline = time.monotonic() + 10.0
    while True:
        view = usage_view(identity, tier)
        seen = used(view, "requests", window)
        if seen == expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"{identity}: requests/{window} used is {seen}, expected {expected}: {view}"
            )
        time.sleep(0.1)


@pytest.mark.parametrize("model", MODELS)
def test_non_streamed_chat(model: str) -> None:
    identity = new_identity("plain")
    client = make_client(identity)
    completion = client.chat.completions.create(model=model, messages=MESSAGES)

    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.id
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == REPLY
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == INPUT_TOKENS
    assert completion.usage.completion_tokens == OUTPUT_TOKENS
    assert completion.usage.total_tokens == INPUT_TOKENS + OUTPUT_TOKENS

    assert_requests_used(identity, 1)


@pytest.mark.parametrize("model", MODELS)
def test_streamed_chat(model: str) -> None:
    identity = new_identity("stream")
    client = make_client(identity)
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)

    chunks = list(stream)  # ends cleanly at `data: [DONE]`, or raises
    assert chunks, "no chunks"
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None for c in chunks), "usage sent without include_usage"
    text = "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices
    )
    assert text == REPLY
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop", finishes
    assert all(f is None for f in finishes[:-1]), finishes
    assert len({c.id for c in chunks}) == 1 and chunks[0].id, "one id per streamed answer, as OpenAI"

    assert_requests_used(identity, 1)


@pytest.mark.parametrize("model", MODELS)
def test_streamed_chat_with_usage(model: str) -> None:
    identity = new_identity("stream-usage")
    client = make_client(identity)
    with client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)

    assert chunks
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None, last
    assert last.usage.prompt_tokens == INPUT_TOKENS
    assert last.usage.completion_tokens == OUTPUT_TOKENS
    assert last.usage.total_tokens == INPUT_TOKENS + OUTPUT_TOKENS
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY

    assert_requests_used(identity, 1)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
CLAUDE = "claude-3-5-sonnet-20240620"


def test_tool_call_through_claude() -> None:
    """Claude's tool_use comes back as OpenAI's tool_calls, which the SDK parses.

    The mock answers a forced tool with a call to it alone, with input `{}`.
    """
    identity = new_identity("tools")
    client = make_client(identity)
    completion = client.chat.completions.create(
        model=CLAUDE, messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice=FORCE_WEATHER
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1, calls
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {}
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == INPUT_TOKENS

    assert_requests_used(identity, 1)


def test_streamed_tool_call_through_claude() -> None:
    identity = new_identity("tools-stream")
    client = make_client(identity)
    stream = client.chat.completions.create(
        model=CLAUDE,
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        tool_choice=FORCE_WEATHER,
        stream=True,
    )

    chunks = list(stream)
    assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
    # Assembled the way OpenAI documents: deltas of one call share its index.
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            if delta.id:
                assert call["id"] is None, "a call's id comes once"
                call["id"] = delta.id
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert list(calls) == [0], calls
    assert calls[0]["id"] and calls[0]["name"] == "get_weather", calls
    assert json.loads(calls[0]["arguments"]) == {}, calls
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls", finishes

    assert_requests_used(identity, 1)


def wav_silence(seconds: int, rate: int = 16000) -> bytes:
    """A 16-bit mono PCM WAV file, as Python's `wave` writes one."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * rate * seconds)
    return buffer.getvalue()


def test_audio_input_is_charged_at_the_audio_price() -> None:
    identity = new_identity("audio")
    client = make_client(identity, tier="metered")
    audio = base64.b64encode(wav_silence(2)).decode()
    completion = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is said in this recording?"},
                    {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == REPLY
    # The mock counts 10 tokens a second of WAV, OpenAI's published rate.
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == INPUT_TOKENS + 20
    details = completion.usage.prompt_tokens_details
    assert details is not None and details.audio_tokens == 20
    # gpt-4o-audio-preview's prices: text input $0.0000025, audio input
    # $0.0001 (40 times), output $0.00001 a token.
    expected = (
        INPUT_TOKENS * Decimal("0.0000025")
        + 20 * Decimal("0.0001")
        + OUTPUT_TOKENS * Decimal("0.00001")
    )
    deadline = time.monotonic() + 10.0
    while True:
        view = usage_view(identity, "metered")
        usd = [Decimal(l["used"]) for l in view["limits"] if l["unit"] == "usd"]
        if usd == [expected]:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"usd used {usd}, expected {expected}: {view}")
        time.sleep(0.1)


def wait_for_a_fresh_minute(margin_s: float = 15.0) -> None:
    """The `tiny` tier counts per calendar minute: start its calls well inside one."""
    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60 - into + 0.2)


def test_limit_hit_raises_rate_limit_error_with_the_custom_message() -> None:
    identity = new_identity("tiny")
    client = make_client(identity)
    wait_for_a_fresh_minute()
    for _ in range(2):
        completion = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-tier": "tiny"}
        )
        assert completion.choices[0].message.content == REPLY

    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-tier": "tiny"}
        )

    e = err.value
    assert e.status_code == 429
    assert "Free plan limit reached" in e.message
    assert LIMIT_MESSAGE in str(e)
    assert isinstance(e.body, dict), e.body
    assert e.body["message"] == LIMIT_MESSAGE
    assert e.body.get("deep_link") == DEEP_LINK
    assert e.code == "limit_exceeded"
    assert e.type == "rate_limit_exceeded"
    retry_after = e.response.headers["retry-after"]
    assert retry_after.isdigit() and 0 < int(retry_after) <= 60, retry_after
    assert e.response.headers["x-ratelimit-remaining-requests"] == "0"

    # The refused call is not counted; the two answered ones are.
    assert_requests_used(identity, 2, window="minute", tier="tiny")


def test_streamed_call_over_the_limit_raises_rate_limit_error_too() -> None:
    identity = new_identity("tiny-stream")
    client = make_client(identity)
    wait_for_a_fresh_minute()
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model="claude-3-5-sonnet-20240620",
                messages=MESSAGES,
                stream=True,
                extra_headers={"x-tier": "tiny"},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY

    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(
            model="claude-3-5-sonnet-20240620",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-tier": "tiny"},
        )
    assert err.value.status_code == 429
    assert err.value.body["message"] == LIMIT_MESSAGE


def test_models_list_contains_gpt_4o() -> None:
    client = make_client(new_identity("models"))
    models = list(client.models.list())
    assert models
    assert all(isinstance(m, Model) for m in models)
    assert "gpt-4o" in [m.id for m in models]


def test_models_retrieve_finds_a_listed_model_and_not_others() -> None:
    client = make_client(new_identity("retrieve"))
    for model_id in ["gpt-4o", "gemini/gemini-2.0-flash"]:
        model = client.models.retrieve(model_id)
        assert isinstance(model, Model)
        assert model.id == model_id
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.code == "model_not_found"


def test_unknown_project_key_is_an_authentication_error() -> None:
    client = make_client(new_identity("badkey"), project_key="pk_does_not_exist")
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.status_code == 401
    assert err.value.code == "invalid_project_key"


def test_a_call_charged_after_the_provider_hung_up_is_not_retried() -> None:
    """The provider reads the request and hangs up: it may bill for it, so the
    proxy charges the hold and answers 502 with `x-should-retry: false`. The
    SDK, left at its default of 2 retries, must not send it again."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", HANGUP_PORT))
    server.listen()
    accepted = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.recv(65536)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    identity = new_identity("hangup")
    client = openai.OpenAI(
        base_url=PROXY_URL + "/v1",
        api_key="sk-test-provider-key",
        default_headers={"x-project-key": PROJECT_KEY, "x-identity": identity},
        timeout=30.0,
    )
    assert client.max_retries == 2
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="hangup/m", messages=MESSAGES)
    finally:
        server.close()
    assert len(accepted) == 1, f"the SDK sent the charged call {len(accepted)} times"
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.code == "upstream_interrupted"
    assert_requests_used(identity, 1)
