"""openai and anthropic: the APIs clients use, through the proxy, against a real model.

Requests are deterministic (temperature 0, a fixed seed and prompt), so a verdict does not
change from one run to the next. Where a stream breaks its protocol, the same request is sent
straight to the engine: if it breaks there too, the detail says the engine is at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx

from ai_server.check.registry import (
    Check,
    Context,
    Fail,
    Skip,
    check,
    expect,
    factory,
    needs_anthropic,
    needs_model,
    needs_status,
)

PROMPT = "Say hello"
DETERMINISTIC = {"temperature": 0, "seed": 42}
ANTHROPIC_HEADERS = {"x-api-key": "unused", "anthropic-version": "2023-06-01"}
ANTHROPIC_ORDER_HEAD = ["message_start", "content_block_start"]
ANTHROPIC_ORDER_TAIL = ["content_block_stop", "message_delta", "message_stop"]


@factory
def choose_model(ctx: Context) -> Iterable[Check]:
    """Not a check: picks the model the API checks use (--model, else a warmed one)."""
    if needs_status(ctx):
        return []
    if ctx.skip_model:
        ctx.model_problem = "--skip-model-tests"
        return []
    try:
        names = [m["id"] for m in ctx.client.get(ctx.base + "/v1/models").json().get("data", [])]
    except (httpx.HTTPError, ValueError, Skip, AttributeError):
        names = []
    if ctx.model:
        ctx.model_problem = None if ctx.model in names else f"model {ctx.model} is not on the server"
        return []
    warm = [w["model"] for w in (ctx.status or {}).get("warm", []) if w["state"] == "loaded"]
    ctx.model = next((m for m in warm if m in names), names[0] if names else None)
    ctx.model_problem = None if ctx.model else "no model on the server (`ai-server warm MODEL`)"
    return []


def chat(ctx: Context, base: str | None = None, **extra: Any) -> httpx.Response:
    body = {"model": ctx.model, "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}],
            **DETERMINISTIC, **extra}
    return ctx.client.post((base or ctx.base) + "/v1/chat/completions", json=body)


@check("openai", "GET /v1/models lists models", needs_model)
def models(ctx: Context) -> str:
    data = ctx.client.get(ctx.base + "/v1/models").json()
    expect(data.get("object") == "list" and data.get("data"), "no model list")
    return f"{len(data['data'])} models"


@check("openai", "GET /v1/models/{model} returns the model", needs_model)
def one_model(ctx: Context) -> str:
    response = ctx.client.get(f"{ctx.base}/v1/models/{ctx.model}")
    if response.status_code == 404 and ctx.child("engine")["name"] == "llama-server":
        raise Skip("llama-server has no GET /v1/models/{model} (Ollama has)")
    expect(response.status_code == 200, response.text[:200])
    expect(response.json().get("id") == ctx.model, f"answered for {response.json().get('id')!r}")
    return ctx.model or ""


@check("openai", "chat completion", needs_model)
def chat_completion(ctx: Context) -> str:
    response = chat(ctx)
    expect(response.status_code == 200, response.text[:200])
    content = response.json()["choices"][0]["message"]["content"]
    expect(content, "empty answer")
    return repr(content[:40])


@check("openai", "chat completion, streaming (SSE)", needs_model)
def chat_stream(ctx: Context) -> str:
    body = {"model": ctx.model, "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": PROMPT}],
            **DETERMINISTIC}
    with ctx.client.stream("POST", ctx.base + "/v1/chat/completions", json=body) as response:
        expect(response.status_code == 200, f"answered {response.status_code}")
        expect(response.headers.get("content-type", "").startswith("text/event-stream"),
               f"content-type {response.headers.get('content-type')!r}, not text/event-stream")
        lines = [ln for ln in response.iter_lines() if ln.startswith("data: ")]
    chunks = len([ln for ln in lines if ln != "data: [DONE]"])
    expect(chunks >= 2 and lines[-1:] == ["data: [DONE]"], f"{chunks} chunks, last {lines[-1:]}")
    return f"{chunks} SSE chunks"


@check("openai", "JSON mode", needs_model)
def json_mode(ctx: Context) -> str:
    # A schema with a short string: structured output a small model cannot run past its token
    # budget (Ollama 0.5+ and llama-server both take json_schema).
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    response = chat(ctx, max_tokens=200, messages=[{"role": "user", "content": "Name a city, as JSON"}],
                    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    expect(response.status_code == 200, response.text[:200])
    content = response.json()["choices"][0]["message"]["content"]
    try:
        json.loads(content)
    except ValueError:
        raise Fail(f"not JSON: {content[:60]!r}") from None
    return "valid JSON"


@check("openai", "tool calling accepted", needs_model)
def tools(ctx: Context) -> str:
    response = chat(ctx, tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}])
    expect(response.status_code == 200, response.text[:200])
    message = response.json()["choices"][0]["message"]
    return "tool call" if message.get("tool_calls") else "answered (the model chose not to call)"


@check("openai", "POST /v1/responses", needs_model)
def responses(ctx: Context) -> str:
    response = ctx.client.post(ctx.base + "/v1/responses", json={
        "model": ctx.model, "input": PROMPT, "max_output_tokens": 16, "temperature": 0})
    expect(response.status_code == 200, response.text[:200])
    expect(response.json().get("output"), "no output")
    return "ok"


def message(ctx: Context, **extra: Any) -> httpx.Response:
    body = {"model": ctx.model, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPT}], **extra}
    return ctx.client.post(ctx.base + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS)


@check("anthropic", "POST /v1/messages", needs_anthropic)
def messages(ctx: Context) -> str:
    response = message(ctx)
    expect(response.status_code == 200, response.text[:200])
    data = response.json()
    expect(data.get("type") == "message" and data["content"] and data["content"][0]["type"] == "text",
           f"not a text message: {json.dumps(data)[:120]}")
    return repr(data["content"][0]["text"][:40])


def stream_events(client: httpx.Client, base: str, model: str | None, prompt: str) -> list[str]:
    body = {"model": model, "max_tokens": 16, "stream": True, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}
    with client.stream("POST", base + "/v1/messages", headers=ANTHROPIC_HEADERS, json=body) as response:
        expect(response.status_code == 200, f"answered {response.status_code}")
        return [ln[7:] for ln in response.iter_lines() if ln.startswith("event: ")]


def order_problem(events: list[str]) -> str | None:
    core = [e for e in events if e != "ping"]
    if core[:2] != ANTHROPIC_ORDER_HEAD:
        return f"starts {core[:2]}, not {ANTHROPIC_ORDER_HEAD}"
    if core[-3:] != ANTHROPIC_ORDER_TAIL:
        return f"ends {core[-3:]}, not {ANTHROPIC_ORDER_TAIL}"
    if "content_block_delta" not in core:
        return "no content_block_delta"
    return None


def anthropic_stream_verdict(client: httpx.Client, base: str, engine: str, model: str | None,
                             prompt: str = PROMPT) -> str:
    """The event order through `base`; on a break, the same request straight to the engine
    tells whether the proxy or the engine broke it."""
    events = stream_events(client, base, model, prompt)
    problem = order_problem(events)
    if problem is None:
        return f"{len([e for e in events if e != 'ping'])} events in order"
    if base != engine:
        direct = order_problem(stream_events(client, engine, model, prompt))
        if direct is not None:
            raise Fail(f"the stream {problem}; the engine itself does the same without the proxy "
                       f"({direct}): an engine bug, not ai-server's")
    raise Fail(f"the stream {problem}")


@check("anthropic", "streaming event sequence", needs_anthropic)
def streaming(ctx: Context) -> str:
    return anthropic_stream_verdict(ctx.client, ctx.base, ctx.engine_url, ctx.model)


@check("anthropic", "system prompt", needs_anthropic)
def system_prompt(ctx: Context) -> str:
    response = message(ctx, system="You answer in one word.")
    expect(response.status_code == 200, response.text[:200])
    return "ok"


@check("anthropic", "nonexistent model is an error", needs_anthropic)
def missing_model(ctx: Context) -> str:
    response = ctx.client.post(ctx.base + "/v1/messages", headers=ANTHROPIC_HEADERS, json={
        "model": "no-such-model-ai-server-check", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    expect(400 <= response.status_code < 500, f"answered {response.status_code}")
    return f"{response.status_code}"
