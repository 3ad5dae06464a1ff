"""Refusals as real SDKs show them (issue 19, points 1 and 2): each exception's text names the
reason, in the error shape of the API it calls (OpenAI on /v1/*, Anthropic on /v1/messages*,
Ollama on /api/*), and a client that waits the Retry-After it was given is served — the openai
SDK with max_retries gets through on its own. Against the Ollama stand-in, with token clients."""

from __future__ import annotations

import os
from collections.abc import Callable

import anthropic
import ollama
import openai
import pytest

from ai_server.access.clients import token_hash
from harness import Stack, wait_for

MODEL = "smollm2:135m"
HI = [{"role": "user", "content": "hi"}]


def token(name: str) -> str:
    return "ais_" + (name.replace("-", "") * 43)[:43]


CLIENTS = "\n".join([
    f'[[client]]\nname = "picky"\ntoken_sha256 = "{token_hash(token("picky"))}"\nmodels = ["smollm2:*"]\n',
    *(f'[[client]]\nname = "slow-{sdk}"\ntoken_sha256 = "{token_hash(token("slow-" + sdk))}"\nrpm = 2\n'
      for sdk in ("openai", "anthropic", "ollama", "llm", "litellm")),
    f'[[client]]\nname = "patient"\ntoken_sha256 = "{token_hash(token("patient"))}"\nrpm = 4\n',
])


@pytest.fixture
def policed(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack()
    (stack.config_dir / "clients.toml").write_text(CLIENTS)
    stack.start()
    return stack


def info_names_reason(text: str, reason: str) -> bool:
    """The text a user reads says why: the reason's word and what it means."""
    return reason in text and {"model": "not allowed", "rpm": "per minute", "path": "not"}[reason] in text


def refusal(call: Callable[[], object]) -> str:
    """What the SDK tells its user: the exception's text."""
    with pytest.raises(Exception) as info:
        call()
    return str(info.value)


def test_openai_sdk_shows_the_reason(policed: Stack) -> None:
    picky = openai.OpenAI(base_url=policed.url("/v1"), api_key=token("picky"), max_retries=0)
    path = refusal(lambda: picky.completions.create(model=MODEL, prompt="hi"))
    assert "allowlist" in path
    model = refusal(lambda: picky.chat.completions.create(model="llama3.1:8b", messages=HI))
    assert info_names_reason(model, "model")
    slow = openai.OpenAI(base_url=policed.url("/v1"), api_key=token("slow-openai"), max_retries=0)
    for _ in range(2):
        slow.chat.completions.create(model=MODEL, messages=HI)
    rate = refusal(lambda: slow.chat.completions.create(model=MODEL, messages=HI))
    assert info_names_reason(rate, "rpm")


def test_anthropic_sdk_shows_the_reason(policed: Stack) -> None:
    picky = anthropic.Anthropic(base_url=policed.url(""), api_key=token("picky"), max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        picky.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=HI)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "permission_error"
    assert info_names_reason(str(info.value), "model")


def test_ollama_client_shows_the_reason(policed: Stack) -> None:
    assert policed.cli("allow", "preset", "ollama-native").returncode == 0
    picky = ollama.Client(host=policed.url(""), headers={"Authorization": f"Bearer {token('picky')}"})

    def refused_model() -> str | None:
        with pytest.raises(ollama.ResponseError) as info:
            picky.chat(model="llama3.1:8b", messages=HI)
        text = info.value.error
        return None if "allowlist" in text else text  # (until the preset is enforced)

    text = wait_for(refused_model, 10, what="the preset enforced")
    assert info_names_reason(text, "model")


def test_llm_and_litellm_show_the_reason(policed: Stack, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path))
    monkeypatch.setenv("LLM_LOAD_PLUGINS", "")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: forbidden\n  model_name: llama3.1:8b\n  api_base: {policed.url('/v1')}\n  api_key_name: ais\n")
    import llm
    with pytest.raises(Exception) as info:
        llm.get_model("forbidden").prompt("hi", key=token("picky")).text()
    assert info_names_reason(str(info.value), "model")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    litellm.suppress_debug_info = True
    text = refusal(lambda: litellm.completion(model="openai/llama3.1:8b", messages=HI, api_base=policed.url("/v1"),
                                              api_key=token("picky"), num_retries=0))
    assert info_names_reason(text, "model")


def test_the_openai_sdk_waits_the_retry_after_and_is_served(policed: Stack) -> None:
    patient = openai.OpenAI(base_url=policed.url("/v1"), api_key=token("patient"), max_retries=4, timeout=120)
    for _ in range(4):  # the client's whole minute
        patient.chat.completions.create(model=MODEL, messages=HI)
    reply = patient.chat.completions.create(model=MODEL, messages=HI)  # refused first, then served
    assert reply.choices[0].message.content
    refused = wait_for(lambda: [e for e in policed.events("request") if e.get("who") == "patient" and e["status"] == 429],
                       10, what="the refusal logged")
    assert refused, "the SDK was refused at least once and waited"
