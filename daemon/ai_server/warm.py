"""Pre-warm: load models one at a time, straight to the engine on loopback, past failures.

Pulls go to the engine directly: /api/pull is blocked at the proxy, on purpose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from ai_server import logs
from ai_server.config import Config
from ai_server.engines import Engine, WarmError

# Loading a 70B model from disk takes minutes; a pull can take much longer.
LOAD_TIMEOUT = httpx.Timeout(connect=5.0, read=1800.0, write=60.0, pool=5.0)


@dataclass
class Outcome:
    model: str
    state: str = "pending"          # pending, pulling, loading, loaded, failed
    detail: str = ""
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "state": self.state, "detail": self.detail, "seconds": self.seconds}


async def warm_models(engine: Engine, config: Config, base: str, models: list[str], pull: bool,
                      on_progress: Callable[[Outcome, dict[str, Any]], None]) -> list[Outcome]:
    log = logs.get()
    outcomes = [Outcome(m) for m in models]
    async with httpx.AsyncClient(base_url=base, timeout=LOAD_TIMEOUT) as client:
        for outcome in outcomes:
            started = time.monotonic()

            def progress(event: dict[str, Any], outcome: Outcome = outcome) -> None:
                status = str(event.get("status", ""))
                outcome.state = "loading" if status == "loading" else "pulling"
                outcome.detail = status
                on_progress(outcome, event)

            try:
                done = await engine.warm(client, outcome.model, config.warm, pull, progress)
                outcome.state, outcome.detail = "loaded", done
            except WarmError as err:
                outcome.state, outcome.detail = "failed", str(err)
            except httpx.HTTPError as err:
                outcome.state, outcome.detail = "failed", f"engine did not answer: {err!r}"
            outcome.seconds = round(time.monotonic() - started, 2)
            on_progress(outcome, {"model": outcome.model, "status": outcome.state})
            level = "info" if outcome.state == "loaded" else "warning"
            getattr(log, level)("warm", process=engine.kind, model=outcome.model, outcome=outcome.state,
                                detail=outcome.detail, seconds=outcome.seconds)
    return outcomes
