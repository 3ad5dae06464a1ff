"""Engines: loopback proven by audit, warm-up, graceful restart (drain)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import psutil

from harness import Stack, check_report, finish, wait_for


def listening_on(port: int) -> list[str]:
    return [f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def test_engine_binding_everywhere_is_caught_killed_and_fatal(make_stack) -> None:
    # A stand-in that ignores OLLAMA_HOST and listens on 0.0.0.0, as a misconfigured engine might.
    stack = make_stack(engine_env={"FAKE_OLLAMA_BIND_ALL": "1"})
    stack.start(wait=False)
    wait_for(lambda: stack.log_file.exists() and stack.events("state", process="ollama", to="FATAL"), what="FATAL")
    engine = next(c for c in stack.status()["children"] if c["name"] == "ollama")
    assert engine["state"] == "FATAL"
    assert f"listens on 0.0.0.0:{stack.engine_port}" in engine["description"]
    assert engine["description"].startswith("security: engine not on loopback only")
    security = stack.events("security", process="ollama")
    assert len(security) == 1 and security[0]["level"] == "error"
    assert listening_on(stack.engine_port) == []  # killed: nothing left listening
    assert "security" in stack.cli("status").stdout
    assert stack.cli("status").returncode == 3


def stream_chat(stack: Stack, out: dict) -> None:
    body = {"model": "smollm2:135m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    try:
        with httpx.stream("POST", stack.url("/v1/chat/completions"), json=body, timeout=60) as response:
            out["lines"] = [ln for ln in response.iter_lines() if ln.startswith("data: ")]
        out["ended"] = time.time()
    except httpx.HTTPError as err:
        out["error"] = repr(err)


def test_restart_drains_then_lets_waiting_requests_through(make_stack) -> None:
    stack = make_stack(engine_env={"FAKE_OLLAMA_TOKENS": "60"})
    stack.start()
    old_pid = stack.child("ollama")["pid"]
    stack.hold()  # the generation stays in flight until the drain has been seen holding requests
    streamed: dict = {}
    streamer = threading.Thread(target=stream_chat, args=(stack, streamed))
    streamer.start()
    stack.wait_held(1)
    restart: dict = {}
    restarter = threading.Thread(target=lambda: restart.update(result=stack.cli("restart", "ollama")))
    restarter.start()
    wait_for(lambda: stack.events("hold"), what="requests held")
    during: dict = {}
    sender = threading.Thread(target=lambda: during.update(response=httpx.get(stack.url("/api/version"), timeout=60)))
    sender.start()  # sent while draining: waits, then served by the new engine
    wait_for(lambda: stack.proxy_sessions() == 2, what="the request in the proxy, beside the stream")
    assert stack.child("ollama")["pid"] == old_pid and not stack.events("drained")  # still draining
    stack.release()
    finish(streamer, restarter, sender)
    assert restart["result"].returncode == 0, restart["result"].stderr
    # The generation in flight finished intact, on the old engine ...
    assert "error" not in streamed and streamed["lines"][-1] == "data: [DONE]" and len(streamed["lines"]) == 62
    # ... and the request that arrived meanwhile succeeded, on the new one.
    assert during["response"].status_code == 200
    new_pid = stack.child("ollama")["pid"]
    assert new_pid != old_pid
    served = [r for r in stack.engine_requests() if r["target"] == "/api/version"]
    assert served[-1]["pid"] != old_pid
    drained = stack.events("drained")[-1]
    stopping = stack.events("state", process="ollama", to="STOPPING")[-1]
    assert drained["timestamp"] <= stopping["timestamp"]
    assert stack.events("release")


def test_requests_wait_while_a_crashed_engine_comes_back(stack: Stack) -> None:
    import os
    import signal
    old = stack.child("ollama")["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: stack.events("hold"), what="held after the crash")
    answer = httpx.get(stack.url("/api/tags"), timeout=60)  # no 503: it waits for the engine
    assert answer.status_code == 200
    assert stack.child("ollama")["pid"] != old


def test_warm_models_after_start_pull_then_load_past_a_failure(make_stack) -> None:
    stack = make_stack(engine_env={"FAKE_OLLAMA_MODELS": "smollm2:135m", "FAKE_OLLAMA_PULLABLE": "qwen2.5-coder:32b"})
    stack.write_config(stack.default_config()
                       + '\n[warm]\nmodels = ["smollm2:135m", "nosuch:7b", "qwen2.5-coder:32b"]\nkeep_alive = "2h"\n')
    stack.start()
    done = wait_for(lambda: len(stack.events("warm")) == 3 and stack.events("warm"), what="three warm outcomes")
    assert [(e["model"], e["outcome"]) for e in done] == [
        ("smollm2:135m", "loaded"), ("nosuch:7b", "failed"), ("qwen2.5-coder:32b", "loaded")]
    assert done[2]["detail"] == "pulled and loaded" and "file does not exist" in done[1]["detail"]
    # One at a time, in order, straight to the engine: pull then load for the missing one.
    targets = [(r["target"], json.loads(r.get("body") or "{}").get("model")) for r in stack.engine_requests()
               if r["target"] in ("/api/pull", "/api/generate")]
    assert [t for t, _ in targets] == ["/api/generate", "/api/pull", "/api/pull", "/api/generate"]
    status = stack.status()
    assert [(w["model"], w["state"]) for w in status["warm"]] == [
        ("smollm2:135m", "loaded"), ("nosuch:7b", "failed"), ("qwen2.5-coder:32b", "loaded")]
    human = stack.cli("status").stdout
    assert "warm: nosuch:7b failed" in human and "warm: qwen2.5-coder:32b loaded in" in human


def test_warm_command(make_stack) -> None:
    stack = make_stack(engine_env={"FAKE_OLLAMA_PULLABLE": "llama3"})
    stack.start()
    result = stack.cli("warm", "smollm2:135m", "llama3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("smollm2:135m: loaded in ") and lines[1].startswith("llama3: loaded in ")
    assert len(lines) == 2  # not a terminal: a plain line per model, no progress bars
    failed = stack.cli("warm", "--no-pull", "mistral", "smollm2:135m")
    assert failed.returncode == 1
    assert "mistral: not on this machine" in failed.stderr or "mistral is not on this machine" in failed.stderr
    assert "smollm2:135m: loaded" in failed.stdout
    pulls = [r for r in stack.engine_requests() if r["target"] == "/api/pull"]
    assert len(pulls) == 1  # llama3 only; --no-pull pulled nothing


def test_check_passes_on_a_healthy_stack_without_model_tests(stack: Stack) -> None:
    outcomes, details = check_report(stack, "--skip-model-tests")
    assert "FAIL" not in outcomes.values(), details
    assert outcomes["POST /api/pull refused with 403"] == "PASS"
    assert outcomes["chat completion"] == "SKIP"


class RogueProxy:
    """Something other than our HAProxy on the proxy's address, forwarding everything: what
    `check` is for. (ai-server itself refuses any allowlist that would let /api/pull through.)"""

    def __init__(self, host: str, port: int, engine_port: int):
        import http.server
        import threading

        class Forward(http.server.BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = httpx.request(self.command, f"http://127.0.0.1:{engine_port}{self.path}", content=body,
                                       headers={"Content-Type": self.headers.get("Content-Type") or "application/json"})
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Forward)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_check_catches_a_proxy_that_lets_pull_through(stack: Stack) -> None:
    assert stack.cli("stop", "haproxy").returncode == 0
    from harness import PROXY_HOST
    rogue = RogueProxy(PROXY_HOST, stack.proxy_port, stack.engine_port)
    try:
        outcomes, _ = check_report(stack, "--skip-model-tests", healthy=False)
    finally:
        rogue.close()
    assert outcomes["POST /api/pull refused with 403"] == "FAIL"
    assert outcomes["HAProxy RUNNING"] == "FAIL"


def test_check_catches_an_engine_on_every_interface(make_stack) -> None:
    stack = make_stack(engine_env={"FAKE_OLLAMA_BIND_ALL": "1"})
    stack.start(wait=False)
    wait_for(lambda: stack.log_file.exists() and stack.events("state", process="ollama", to="FATAL"), what="FATAL")
    outcomes, _ = check_report(stack, "--skip-model-tests", healthy=False)
    assert outcomes["engine RUNNING"] == "FAIL" and outcomes["engine bound to loopback only"] == "FAIL"


def test_a_hold_left_by_a_killed_supervisor_is_released_at_launch(stack: Stack) -> None:
    import signal
    stack.proc.send_signal(signal.SIGKILL)
    stack.proc.wait(10)
    (stack.state_dir / "hold.map").write_text("hold 1\n")  # as if it died mid-restart
    stack.start()
    assert [ln for ln in (stack.state_dir / "hold.map").read_text().splitlines() if not ln.startswith("#")] == ["hold 0"]
    # Not held: a held request would wait proxy.queue_timeout (120 s) for an engine that is up.
    assert httpx.get(stack.url("/api/tags"), timeout=60).status_code == 200


def test_check_passes_when_proxy_and_engine_share_a_port(make_stack) -> None:
    """The shipped layout: proxy and engine both on 11434, on different addresses. The
    isolation check used to connect to the proxy and report the engine reachable."""
    stack = make_stack()
    stack.engine_port = stack.proxy_port
    stack.write_config(stack.default_config())
    stack.start()
    outcomes, details = check_report(stack, "--skip-model-tests")
    assert outcomes["engine unreachable from the tailnet address"] == "PASS"
    assert outcomes["engine unreachable on every other address"] == "PASS"
    assert "FAIL" not in outcomes.values(), details


def test_check_fails_under_python_O_too(stack: Stack) -> None:
    """Verdicts used to be asserts: `python -O` turned every failure into a pass."""
    import subprocess
    import sys

    from harness import PROXY_HOST
    assert stack.cli("stop", "haproxy").returncode == 0
    rogue = RogueProxy(PROXY_HOST, stack.proxy_port, stack.engine_port)
    try:
        result = subprocess.run([sys.executable, "-O", "-m", "ai_server", "--config-dir", str(stack.config_dir),
                                 "check", "--json", "--skip-model-tests"], env=stack.env, capture_output=True,
                                text=True, timeout=120)
    finally:
        rogue.close()
    outcomes = {c["name"]: c["outcome"] for c in json.loads(result.stdout)["checks"]}
    assert result.returncode == 1
    assert outcomes["POST /api/pull refused with 403"] == "FAIL"
