"""Ollama (`ollama serve`): loopback forced through OLLAMA_HOST."""

from __future__ import annotations

from typing import Mapping

import httpx

from ai_server.config import EngineConfig


class Ollama:
    kind = "ollama"
    health_path = "/"
    install_hint = "install it with `brew install ollama` (macOS) or from ollama.com/download (Linux)"

    def argv(self, config: EngineConfig, program: str) -> list[str]:
        return [program, *config.command[1:]]

    def env(self, config: EngineConfig, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update(dict(config.env))
        # Last, so neither the user's shell nor engine.env can widen it.
        env["OLLAMA_HOST"] = f"127.0.0.1:{config.port}"
        return env

    async def models(self, client: httpx.AsyncClient) -> list[str]:
        response = await client.get("/api/tags")
        response.raise_for_status()
        return [m["name"] for m in response.json().get("models", [])]
