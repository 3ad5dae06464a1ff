"""`ai-server check`: the seed's test.sh, as a verification of a live installation.

Every check is PASS, FAIL or SKIP with a reason. It asks the supervisor what should be true,
then looks for itself: at the sockets, from the tailnet address, through the proxy.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import httpx
import psutil

from ai_server import audit, control
from ai_server import config as config_mod
from ai_server.errors import AiServerError
from ai_server.install import launchd, systemd
from ai_server.install.system import System
from ai_server.paths import Paths

BLOCKED = (("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/create"),
           ("POST", "/api/push"), ("POST", "/api/copy"))


@dataclass
class Result:
    group: str
    name: str
    outcome: str   # PASS, FAIL, SKIP
    detail: str = ""


class Skip(Exception):
    pass


class Checker:
    def __init__(self, paths: Paths, *, model: str | None = None, skip_model: bool = False,
                 skip_anthropic: bool = False, system: System | None = None):
        self.paths, self.model, self.skip_model, self.skip_anthropic = paths, model, skip_model, skip_anthropic
        self.system = system or System()
        self.results: list[Result] = []
        self.status: dict[str, Any] | None = None
        self.client = httpx.Client(timeout=120)

    # -- plumbing ------------------------------------------------------------------------------

    def check(self, group: str, name: str, test: Callable[[], str | None], needs: str | None = None) -> bool:
        if needs:
            self.results.append(Result(group, name, "SKIP", needs))
            return False
        try:
            detail = test() or ""
            self.results.append(Result(group, name, "PASS", detail))
            return True
        except Skip as why:
            self.results.append(Result(group, name, "SKIP", str(why)))
        except AssertionError as why:
            self.results.append(Result(group, name, "FAIL", str(why) or "failed"))
        except (httpx.HTTPError, OSError, ValueError, KeyError, AiServerError) as err:
            self.results.append(Result(group, name, "FAIL", f"{type(err).__name__}: {err}"))
        return False

    def child(self, name: str) -> dict[str, Any]:
        assert self.status is not None
        for child in self.status["children"]:
            if child["name"] == name or (name == "engine" and child["name"] != "haproxy"):
                return child
        raise AssertionError(f"no {name} child")

    @property
    def proxy_url(self) -> str:
        listen = (self.status or {}).get("proxy", {}).get("listen") or []
        if not listen:
            raise Skip("the proxy listens nowhere yet")
        return f"http://{listen[0]}"

    @property
    def engine_url(self) -> str:
        return f"http://{self.status['proxy']['engine_listen']}"  # type: ignore[index]

    # -- the checks ----------------------------------------------------------------------------

    def run(self) -> list[Result]:
        self._service()
        if self.status is None:
            return self.results
        proxied = self.status["proxy"].get("enabled", True)
        no_proxy = None if proxied else "the proxy is disabled (declined at install)"
        self._isolation(no_proxy)
        self._allowlist(no_proxy)
        model_reason = self._pick_model()
        self._openai(model_reason)
        self._anthropic(model_reason or ("--skip-anthropic-tests" if self.skip_anthropic else None))
        self._performance(no_proxy, model_reason)
        return self.results

    def _service(self) -> None:
        s = self.system
        platform = s.platform()

        def manager() -> str:
            if platform == "darwin":
                if not launchd.plist_path(s.home).exists():
                    raise Skip("no LaunchAgent installed (running by hand?)")
                assert s.run("launchctl", "print", f"gui/{s.uid}/{launchd.LABEL}").returncode == 0, \
                    f"{launchd.LABEL} is not loaded: `ai-server install`"
                return f"gui/{s.uid}/{launchd.LABEL}"
            if not systemd.unit_path(s.home, s.env).exists():
                raise Skip("no systemd user unit installed (running by hand?)")
            assert s.run("systemctl", "--user", "is-active", "--quiet", systemd.UNIT).returncode == 0, \
                f"{systemd.UNIT} is not active: `systemctl --user status {systemd.UNIT}`"
            return systemd.UNIT

        self.check("service", "service manager runs ai-server", manager)

        def supervisor() -> str:
            self.status = control.request(self.paths.control_socket, "status", timeout=10)
            return f"pid {self.status['supervisor']['pid']}"

        if not self.check("service", "supervisor answers", supervisor):
            return
        proxied = self.status["proxy"].get("enabled", True)

        def running(name: str) -> Callable[[], str]:
            def test() -> str:
                child = self.child(name)
                assert child["state"] == "RUNNING", f"{child['name']} is {child['state']}: {child['description']}"
                return child["description"]
            return test

        self.check("service", "HAProxy RUNNING", running("haproxy"),
                   None if proxied else "the proxy is disabled (declined at install)")
        self.check("service", "engine RUNNING", running("engine"))

        def not_root() -> str:
            pid = self.child("engine")["pid"]
            assert pid, "the engine is not running"
            proc = psutil.Process(pid)
            uid = proc.uids().real
            if uid == 0 and os.getuid() == 0:
                raise Skip("ai-server and this check both run as root here (a container?): nothing to tell apart")
            assert uid != 0, "the engine runs as root"
            assert uid == os.getuid(), f"the engine runs as {proc.username()}, not as you"
            return f"runs as {proc.username()}"

        self.check("service", "engine runs as this user, not root", not_root)

        def loopback() -> str:
            child = self.child("engine")
            assert child["pid"], f"the engine is not running: {child['description']}"
            listeners = audit.snapshot(child["pid"])
            found = audit.violations(listeners) if proxied else []
            assert not found, "; ".join(found)
            return ", ".join(sorted({f"{l.address}:{l.port}" for l in listeners})) or "nothing yet"

        self.check("service", "engine bound to loopback only" if proxied else "engine sockets",
                   loopback)

        def proxy_only_there() -> str:
            child = self.child("haproxy")
            assert child["pid"], "HAProxy is not running"
            wanted = set(self.status["proxy"]["listen"])  # type: ignore[index]
            seen = {f"[{l.address}]:{l.port}" if ":" in l.address else f"{l.address}:{l.port}"
                    for l in audit.snapshot(child["pid"])}
            assert seen, "HAProxy listens nowhere"
            assert seen <= wanted, f"HAProxy also listens on {', '.join(sorted(seen - wanted))}"
            return ", ".join(sorted(seen))

        self.check("service", "HAProxy listens on the tailnet address only", proxy_only_there,
                   None if proxied else "the proxy is disabled (declined at install)")

    def _isolation(self, no_proxy: str | None) -> None:
        def refused(address: str, port: int) -> bool:
            try:
                with socket.create_connection((address, port), timeout=2):
                    return False
            except OSError:
                return True

        def from_tailnet() -> str:
            listen = self.status["proxy"]["listen"]  # type: ignore[index]
            if not listen:
                raise Skip("no tailnet address yet")
            address = listen[0].rsplit(":", 1)[0].strip("[]")
            port = int(self.status["proxy"]["engine_listen"].rsplit(":", 1)[1])  # type: ignore[index]
            assert refused(address, port), f"the engine answers on {address}:{port}"
            return f"{address}:{port} refused"

        self.check("isolation", "engine unreachable from the tailnet address", from_tailnet, no_proxy)

        def everywhere() -> str:
            port = int(self.status["proxy"]["engine_listen"].rsplit(":", 1)[1])  # type: ignore[index]
            tried = []
            for addresses in psutil.net_if_addrs().values():
                for entry in addresses:
                    if entry.family in (socket.AF_INET, socket.AF_INET6) and not audit.is_loopback(entry.address):
                        address = entry.address.split("%")[0]
                        if address.startswith("fe80"):
                            continue
                        assert refused(address, port), f"the engine answers on {address}:{port}"
                        tried.append(address)
            return f"refused on {len(tried)} addresses"

        self.check("isolation", "engine unreachable on every other address", everywhere, no_proxy)

    def _allowlist(self, no_proxy: str | None) -> None:
        rules = config_mod.load_allowlist(self.paths.config_dir).rules
        for rule in rules:
            method = rule.methods[0]
            path = rule.path.replace(config_mod.MODEL_PLACEHOLDER, self.model or "x")

            def forwarded(method: str = method, path: str = path) -> str:
                response = self.client.request(method, self.proxy_url + path, json={} if method != "GET" else None)
                assert response.status_code not in (403, 405), f"{method} {path} answered {response.status_code}"
                return f"{response.status_code} from the engine"

            self.check("allowlist", f"{method} {rule.path} forwarded", forwarded, no_proxy)
        for method, path in BLOCKED:
            def blocked(method: str = method, path: str = path) -> str:
                response = self.client.request(method, self.proxy_url + path, json={})
                # Exactly 403, from the proxy: an engine's own 404 would pass the seed's test.
                assert response.status_code == 403, f"answered {response.status_code}, not 403"
                assert "allowlist" in response.text, "the 403 did not come from the proxy"
                return "403"
            self.check("allowlist", f"{method} {path} refused with 403", blocked, no_proxy)

        def hostile() -> str:
            response = self.client.get(self.proxy_url + "/v1/models/..%2f..%2fapi%2fpull")
            assert response.status_code == 403, f"answered {response.status_code}"
            return "403"

        self.check("allowlist", "encoded traversal refused", hostile, no_proxy)

    def _pick_model(self) -> str | None:
        if self.skip_model:
            return "--skip-model-tests"
        try:
            names = [m["id"] for m in self.client.get(self.base + "/v1/models").json().get("data", [])]
        except (httpx.HTTPError, ValueError, Skip):
            names = []
        if self.model:
            return None if self.model in names else f"model {self.model} is not on the server"
        warm = [w["model"] for w in (self.status or {}).get("warm", []) if w["state"] == "loaded"]
        self.model = next((m for m in warm if m in names), names[0] if names else None)
        return None if self.model else "no model on the server (`ai-server warm MODEL`)"

    @property
    def base(self) -> str:
        return self.proxy_url if self.status["proxy"].get("enabled", True) else self.engine_url  # type: ignore[index]

    def _chat(self, **extra: Any) -> httpx.Response:
        body = {"model": self.model, "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello"}], **extra}
        return self.client.post(self.base + "/v1/chat/completions", json=body)

    def _openai(self, skip: str | None) -> None:
        def models() -> str:
            data = self.client.get(self.base + "/v1/models").json()
            assert data.get("object") == "list" and data["data"], "no model list"
            return f"{len(data['data'])} models"

        self.check("openai", "GET /v1/models lists models", models, skip)

        def one_model() -> str:
            response = self.client.get(f"{self.base}/v1/models/{self.model}")
            if response.status_code == 404 and self.child("engine")["name"] == "llama-server":
                raise Skip("llama-server has no GET /v1/models/{model} (Ollama has)")
            assert response.status_code == 200 and response.json()["id"] == self.model, response.text[:200]
            return self.model or ""

        self.check("openai", "GET /v1/models/{model} returns the model", one_model, skip)

        def chat() -> str:
            response = self._chat()
            assert response.status_code == 200, response.text[:200]
            content = response.json()["choices"][0]["message"]["content"]
            assert content, "empty answer"
            return repr(content[:40])

        self.check("openai", "chat completion", chat, skip)

        def stream() -> str:
            chunks = 0
            with self.client.stream("POST", self.base + "/v1/chat/completions", json={
                    "model": self.model, "max_tokens": 16, "stream": True,
                    "messages": [{"role": "user", "content": "Say hello"}]}) as response:
                assert response.status_code == 200, f"answered {response.status_code}"
                assert response.headers.get("content-type", "").startswith("text/event-stream")
                lines = [l for l in response.iter_lines() if l.startswith("data: ")]
            chunks = len([l for l in lines if l != "data: [DONE]"])
            assert chunks >= 2 and lines[-1] == "data: [DONE]", f"{chunks} chunks, last {lines[-1:]}"
            return f"{chunks} SSE chunks"

        self.check("openai", "chat completion, streaming (SSE)", stream, skip)

        def json_mode() -> str:
            # A schema with a short string: structured output that a small model cannot run past
            # its token budget (Ollama 0.5+ and llama-server both take json_schema).
            schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                      "required": ["city"]}
            response = self._chat(max_tokens=200, response_format={"type": "json_schema", "json_schema": {
                "name": "city", "schema": schema}}, messages=[{"role": "user", "content": "Name a city, as JSON"}])
            assert response.status_code == 200, response.text[:200]
            content = response.json()["choices"][0]["message"]["content"]
            try:
                json.loads(content)
            except ValueError:
                raise AssertionError(f"not JSON: {content[:60]!r}") from None
            return "valid JSON"

        self.check("openai", "JSON mode", json_mode, skip)

        def tools() -> str:
            response = self._chat(tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}}}}])
            assert response.status_code == 200, response.text[:200]
            message = response.json()["choices"][0]["message"]
            return "tool call" if message.get("tool_calls") else "answered (the model chose not to call)"

        self.check("openai", "tool calling accepted", tools, skip)

        def responses() -> str:
            response = self.client.post(self.base + "/v1/responses", json={
                "model": self.model, "input": "Say hello", "max_output_tokens": 16})
            assert response.status_code == 200, response.text[:200]
            assert response.json().get("output"), "no output"
            return "ok"

        self.check("openai", "POST /v1/responses", responses, skip)

    def _anthropic(self, skip: str | None) -> None:
        headers = {"x-api-key": "unused", "anthropic-version": "2023-06-01"}

        def message(**extra: Any) -> httpx.Response:
            body = {"model": self.model, "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello"}], **extra}
            return self.client.post(self.base + "/v1/messages", json=body, headers=headers)

        def plain() -> str:
            response = message()
            assert response.status_code == 200, response.text[:200]
            data = response.json()
            assert data["type"] == "message" and data["content"][0]["type"] == "text"
            return repr(data["content"][0]["text"][:40])

        self.check("anthropic", "POST /v1/messages", plain, skip)

        def streaming() -> str:
            events = []
            with self.client.stream("POST", self.base + "/v1/messages", headers=headers, json={
                    "model": self.model, "max_tokens": 16, "stream": True,
                    "messages": [{"role": "user", "content": "Say hello"}]}) as response:
                assert response.status_code == 200, f"answered {response.status_code}"
                events = [l[7:] for l in response.iter_lines() if l.startswith("event: ")]
            core = [e for e in events if e != "ping"]
            assert core[:2] == ["message_start", "content_block_start"], core[:3]
            assert core[-3:] == ["content_block_stop", "message_delta", "message_stop"], core[-3:]
            assert "content_block_delta" in core
            return f"{len(core)} events in order"

        self.check("anthropic", "streaming event sequence", streaming, skip)

        def system_prompt() -> str:
            response = message(system="You answer in one word.")
            assert response.status_code == 200, response.text[:200]
            return "ok"

        self.check("anthropic", "system prompt", system_prompt, skip)

        def missing_model() -> str:
            response = self.client.post(self.base + "/v1/messages", headers=headers, json={
                "model": "no-such-model-ai-server-check", "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}]})
            assert 400 <= response.status_code < 500, f"answered {response.status_code}"
            return f"{response.status_code}"

        self.check("anthropic", "nonexistent model is an error", missing_model, skip)

    def _performance(self, no_proxy: str | None, model_skip: str | None) -> None:
        def timed(url: str, count: int = 40) -> float:
            samples = []
            with httpx.Client(timeout=10) as client:
                client.get(url)
                for _ in range(count):
                    started = time.perf_counter()
                    client.get(url)
                    samples.append((time.perf_counter() - started) * 1000)
            return statistics.median(samples)

        def latency() -> str:
            path = "/v1/models"
            added = statistics.median(timed(self.proxy_url + path, 20) - timed(self.engine_url + path, 20)
                                      for _ in range(3))
            assert added < 1.0, f"the proxy adds {added:.2f} ms (seed: < 1 ms)"
            return f"adds {added:.3f} ms at p50"

        self.check("performance", "proxy adds under 1 ms", latency, no_proxy)

        def first_token(url: str) -> float:
            # Read to the end: a stream dropped after its first chunk leaves the engine
            # generating, and the next request would queue behind it.
            started = time.perf_counter()
            first = None
            with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json={
                    "model": self.model, "max_tokens": 2, "stream": True,
                    "messages": [{"role": "user", "content": "Say hello"}]}) as response:
                for line in response.iter_lines():
                    if first is None and line.startswith("data: {"):
                        first = (time.perf_counter() - started) * 1000
            assert first is not None, "no chunk"
            return first

        def streaming() -> str:
            first_token(self.engine_url)
            direct, proxied = [], []
            for _ in range(5):  # alternately, so both see the same conditions
                direct.append(first_token(self.engine_url))
                proxied.append(first_token(self.proxy_url))
            d, p = statistics.median(direct), statistics.median(proxied)
            # HAProxy holding chunks back (MSG_MORE) would show as ~200 ms here.
            assert p - d < 100, f"first token {p:.0f} ms through the proxy, {d:.0f} ms direct"
            return f"first token {p:.0f} ms through the proxy, {d:.0f} ms direct"

        self.check("performance", "streaming is not buffered", streaming, no_proxy or model_skip)


def render_table(results: list[Result]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'':<11} {'CHECK':<{width}}  RESULT  DETAIL"]
    for r in results:
        lines.append(f"{r.group:<11} {r.name:<{width}}  {r.outcome:<6}  {r.detail}")
    counts = {o: sum(r.outcome == o for r in results) for o in ("PASS", "FAIL", "SKIP")}
    lines.append(f"\n{len(results)} checks: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return "\n".join(lines)


def as_json(results: list[Result]) -> str:
    return json.dumps({"checks": [asdict(r) for r in results],
                       "passed": sum(r.outcome == "PASS" for r in results),
                       "failed": sum(r.outcome == "FAIL" for r in results),
                       "skipped": sum(r.outcome == "SKIP" for r in results)}, indent=2)
