"""Pre-warm: load models one at a time, straight to the engine on loopback, past failures.

Pulls go to the engine directly: /api/pull is blocked at the proxy, on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ai_server.base import logs
from ai_server.base.errors import WarmError
from ai_server.config import WarmConfig
from ai_server.engines import Engine

# Loading a 70B model from disk takes minutes; a pull can take much longer.
LOAD_TIMEOUT = httpx.Timeout(connect=5.0, read=1800.0, write=60.0, pool=5.0)


@dataclass(frozen=True)
class Warmed:
    """One model's last warm-up, as status shows it."""
    model: str
    state: str = "pending"          # pending, pulling, loading, loaded, failed
    detail: str = ""
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "state": self.state, "detail": self.detail, "seconds": self.seconds}


@dataclass
class Outcome:
    """One model's warm-up as it goes."""
    model: str
    state: str = "pending"
    detail: str = ""
    seconds: float | None = None

    def frozen(self) -> Warmed:
        return Warmed(self.model, self.state, self.detail, self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return self.frozen().as_dict()


Progress = Callable[[Outcome, dict[str, Any]], None]


async def warm_models(engine: Engine, config: WarmConfig, base: str, models: list[str], pull: bool,
                      on_progress: Progress) -> list[Outcome]:
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
                done = await engine.warm(client, outcome.model, config, pull, progress)
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


class Warmer:
    """The outcomes status shows, the warm-up after every engine start, and `ai-server warm`."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self._task: asyncio.Task[Any] | None = None

    def after_start(self, engine: Engine, config: WarmConfig, base: str) -> None:
        """warm.models, one at a time, in the background; a newer start replaces an older run."""
        self.cancel()
        models = list(config.models)
        if not models:
            return
        self.outcomes = {m: Outcome(m) for m in models}
        self._task = asyncio.get_running_loop().create_task(
            warm_models(engine, config, base, models, config.pull, self._record), name="warm")

    async def on_demand(self, engine: Engine, config: WarmConfig, base: str, models: list[str],
                        pull: bool) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def progress(outcome: Outcome, event: dict[str, Any]) -> None:
            self._record(outcome, event)
            queue.put_nowait({"progress": {**event, "state": outcome.state, "seconds": outcome.seconds}})

        task = asyncio.create_task(warm_models(engine, config, base, models, pull, progress))
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield {"ok": True, "results": [o.as_dict() for o in task.result()]}
        finally:
            task.cancel()

    def _record(self, outcome: Outcome, event: dict[str, Any]) -> None:
        self.outcomes[outcome.model] = outcome

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def status(self) -> tuple[Warmed, ...]:
        return tuple(o.frozen() for o in self.outcomes.values())
