"""The one small interface every engine kind implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx

from ai_server.config import EngineConfig, WarmConfig

Progress = Callable[[dict[str, Any]], None]


class Engine(Protocol):
    kind: str
    # Path HAProxy's health check and our readiness check ask for; 200 means serving.
    health_path: str
    install_hint: str
    # Serves Prometheus metrics of its own (llama-server with --metrics).
    has_metrics: bool

    def argv(self, config: EngineConfig, program: str, bind: tuple[str, int]) -> list[str]:
        """The command line, with `program` the resolved path of command[0]."""

    def env(self, config: EngineConfig, base: Mapping[str, str], bind: tuple[str, int]) -> dict[str, str]:
        """The environment: `base`, then engine.env, then what pins it to `bind` (loopback)."""

    async def models(self, client: httpx.AsyncClient) -> list[str]:
        """Names of the models the engine can serve."""

    async def metrics(self, client: httpx.AsyncClient) -> list[tuple[str, str]]:
        """(model, Prometheus exposition) for each model the engine reports metrics for."""

    async def warm(self, client: httpx.AsyncClient, model: str, config: WarmConfig, pull: bool,
                   progress: Progress) -> str:
        """Make `model` answer fast: pull if missing (when `pull`), then load. Returns what was
        done ("loaded", "pulled and loaded"); raises WarmError."""
