"""The official `ollama` Python client through the proxy, before and after `ai-server allow
preset ollama-native`, against the Ollama stand-in (which answers as Ollama's routes.go does)."""

from __future__ import annotations

import httpx
import ollama
import pytest

from harness import Stack, wait_for

MODEL = "smollm2:135m"


def enforced(stack: Stack, path: str) -> bool:
    return httpx.post(stack.url(path), json={"model": MODEL}, timeout=10).status_code != 403


def test_the_ollama_client_needs_the_preset_and_then_chats_generates_embeds_and_shows(stack: Stack) -> None:
    client = ollama.Client(host=stack.url(""), timeout=30)
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 403
    assert not any(r["target"] == "/api/chat" for r in stack.engine_requests())

    added = stack.cli("allow", "preset", "ollama-native")
    assert added.returncode == 0 and "allowed POST /api/chat" in added.stdout, added.stderr
    wait_for(lambda: enforced(stack, "/api/chat"), what="the preset enforced")

    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.message.role == "assistant" and reply.message.content and reply.done
    streamed = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert len(streamed) > 2 and streamed[-1].done and "".join(p.message.content for p in streamed)
    generated = client.generate(model=MODEL, prompt="Once upon a time")
    assert generated.response and generated.done and generated.eval_count
    embedded = client.embed(model=MODEL, input=["one", "two"])
    assert len(embedded.embeddings) == 2 and embedded.embeddings[0] != embedded.embeddings[1]
    assert abs(sum(v * v for v in embedded.embeddings[0]) - 1) < 1e-3  # Ollama normalizes
    assert client.embeddings(model=MODEL, prompt="one").embedding == pytest.approx(embedded.embeddings[0], abs=1e-5)
    shown = client.show(MODEL)
    assert shown.details is not None and shown.details.family == "llama" and "completion" in (shown.capabilities or [])
    assert MODEL in [m.model for m in client.list().models]
    assert MODEL in [m.model for m in client.ps().models]

    with pytest.raises(ollama.ResponseError) as missing:
        client.show("no-such-model")
    assert missing.value.status_code == 404 and "not found" in missing.value.error
    # The preset never opens model management.
    with pytest.raises(ollama.ResponseError) as pull:
        client.pull(MODEL)
    assert pull.value.status_code == 403
    with pytest.raises(ollama.ResponseError) as delete:
        client.delete(MODEL)
    assert delete.value.status_code == 403
    assert not any(r["target"] in ("/api/pull", "/api/delete") for r in stack.engine_requests())


def test_litellm_ollama_chat_works_after_the_preset(stack: Stack) -> None:
    import os
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet
    litellm = pytest.importorskip("litellm")
    litellm.suppress_debug_info = True
    assert stack.cli("allow", "preset", "ollama-native").returncode == 0
    wait_for(lambda: enforced(stack, "/api/chat"), what="the preset enforced")
    model, base = f"ollama_chat/{MODEL}", stack.url("")
    reply = litellm.completion(model=model, api_base=base, messages=[{"role": "user", "content": "hi"}], num_retries=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    chunks = list(litellm.completion(model=model, api_base=base, stream=True, num_retries=0,
                                     messages=[{"role": "user", "content": "hi"}]))
    assert len(chunks) > 2 and "".join(c.choices[0].delta.content or "" for c in chunks)
    embedded = litellm.embedding(model=f"ollama/{MODEL}", api_base=base, input=["one"])
    assert len(embedded.data[0]["embedding"]) == 8
    assert {r["target"] for r in stack.engine_requests()} >= {"/api/chat", "/api/embed"}
