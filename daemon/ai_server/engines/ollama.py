"""Ollama (`ollama serve`): loopback forced through OLLAMA_HOST."""

from __future__ import annotations

import json
from collections.abc import Mapping

import httpx

from ai_server.base.errors import WarmError
from ai_server.base.netaddr import host_port
from ai_server.config import EngineConfig, WarmConfig
from ai_server.engines.base import Progress


def _full_name(model: str) -> str:
    """Ollama's own default: a name without a tag means :latest."""
    return model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"


class Ollama:
    kind = "ollama"
    health_path = "/"
    has_metrics = False  # Ollama has no /metrics (ollama #3144)
    install_hint = "install it with `brew install ollama` (macOS) or from ollama.com/download (Linux)"

    def argv(self, config: EngineConfig, program: str, bind: tuple[str, int]) -> list[str]:
        return [program, *config.command[1:]]

    def env(self, config: EngineConfig, base: Mapping[str, str], bind: tuple[str, int]) -> dict[str, str]:
        env = dict(base)
        env.update(dict(config.env))
        if config.parallel and "OLLAMA_NUM_PARALLEL" not in dict(config.env):
            # The proxy lets engine.parallel generations through at once: the engine runs as many.
            env["OLLAMA_NUM_PARALLEL"] = str(config.parallel)
        # Last, so neither the user's shell nor engine.env can widen it.
        env["OLLAMA_HOST"] = host_port(*bind)
        return env

    async def models(self, client: httpx.AsyncClient) -> list[str]:
        response = await client.get("/api/tags")
        response.raise_for_status()
        return [m["name"] for m in response.json().get("models", [])]

    async def metrics(self, client: httpx.AsyncClient) -> list[tuple[str, str]]:
        return []  # Ollama has no /metrics (ollama #3144)

    async def warm(self, client: httpx.AsyncClient, model: str, config: WarmConfig, pull: bool,
                   progress: Progress) -> str:
        done = "loaded"
        if _full_name(model) not in {_full_name(m) for m in await self.models(client)}:
            if not pull:
                raise WarmError(f"{model} is not on this machine (and pulling is off)")
            await self._pull(client, model, progress)
            done = "pulled and loaded"
        progress({"model": model, "status": "loading"})
        # An empty prompt is Ollama's documented way to load a model without generating.
        response = await client.post("/api/generate", json={"model": model, "keep_alive": config.keep_alive,
                                                            "stream": False})
        if response.status_code != 200:
            raise WarmError(f"load failed: {_error(response)}")
        return done

    async def _pull(self, client: httpx.AsyncClient, model: str, progress: Progress) -> None:
        async with client.stream("POST", "/api/pull", json={"model": model, "stream": True}) as response:
            if response.status_code != 200:
                await response.aread()
                raise WarmError(f"pull failed: {_error(response)}")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if "error" in event:
                    raise WarmError(f"pull failed: {event['error']}")
                progress({"model": model, "status": event.get("status", "pulling"),
                          "completed": event.get("completed"), "total": event.get("total")})
