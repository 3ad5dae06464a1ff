"""No engine: a machine that only fronts others (`[engine] kind = "none"` with [[node]]s)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from ai_server.base.errors import WarmError
from ai_server.config import EngineConfig, WarmConfig
from ai_server.engines.base import Progress


class NoEngine:
    kind = "none"
    health_path = "/"
    has_metrics = False
    install_hint = ""

    def argv(self, config: EngineConfig, program: str, bind: tuple[str, int]) -> list[str]:
        return []

    def env(self, config: EngineConfig, base: Mapping[str, str], bind: tuple[str, int]) -> dict[str, str]:
        return {}

    async def models(self, client: httpx.AsyncClient) -> list[str]:
        return []

    async def metrics(self, client: httpx.AsyncClient) -> list[tuple[str, str]]:
        return []

    async def warm(self, client: httpx.AsyncClient, model: str, config: WarmConfig, pull: bool,
                   progress: Progress) -> str:
        raise WarmError("this machine has no engine (engine.kind = \"none\"): warm the models on the nodes")
