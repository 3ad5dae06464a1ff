"""The engine under supervision: pinned to loopback (forced, then audited), drained before a
restart so no generation is cut, warmed after every start.

Restarts run one at a time in their own task. A reload asks for one and goes on: an
allowlist saved while the engine drains is enforced at once, not after the drain.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ai_server.base import logs
from ai_server.base.netaddr import host_port
from ai_server.children import audit
from ai_server.children.context import Context
from ai_server.children.drain import Hold
from ai_server.children.process import Child, Role, Spec
from ai_server.children.states import State
from ai_server.children.warm import Warmer
from ai_server.desired import Desired, Plan
from ai_server.engines import Engine, engine_for, model_list


class EngineChild:
    """`desired` is what this child last applied, `program` the engine's command[0] as
    preflight found it, `driver` the Engine that kind names (how to run and talk to it)."""

    def __init__(self, ctx: Context, desired: Desired, program: str, hold: Hold):
        self.ctx, self.desired, self.program, self.hold = ctx, desired, program, hold
        self.driver: Engine = engine_for(desired.config.engine.kind)
        self.warmer = Warmer()
        self.child = self._make_child()
        self._lock = asyncio.Lock()
        self._restarting = False
        self._wanted: tuple[str, bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._metrics_client: httpx.AsyncClient | None = None
        self.log = logs.get()

    # -- how it runs -------------------------------------------------------------------------------

    @property
    def bind(self) -> tuple[str, int] | None:
        return self.desired.engine_bind

    @property
    def address(self) -> tuple[str, int]:
        # Before a tailnet address exists (proxy-less mode) the engine is not started; loopback
        # is only a placeholder for the spec and URL.
        return self.bind or ("127.0.0.1", self.desired.config.engine.port)

    @property
    def url(self) -> str:
        return f"http://{host_port(*self.address)}"

    @property
    def serving_url(self) -> str | None:
        """Where a front reads its own engine's models: straight on loopback, once it runs."""
        return self.url if self.present and self.child.state == State.RUNNING else None

    def spec(self) -> Spec:
        cfg = self.desired.config
        return Spec(argv=tuple(self.driver.argv(cfg.engine, self.program, self.address)),
                    env=self.driver.env(cfg.engine, self.ctx.environ, self.address),
                    stop_signal=signal.SIGTERM, stop_timeout=cfg.restart.stop_timeout)

    def _make_child(self) -> Child:
        cfg = self.desired.config
        return Child(self.driver.kind, Role.ENGINE, self.spec, cfg.restart, self.ctx, ready=self.answers,
                     start_timeout=cfg.engine.start_timeout, audit=self.audit, on_transition=self._transition)

    async def answers(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"{self.url}{self.driver.health_path}")
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    def audit(self, pid: int) -> str | None:
        bind = self.bind
        also = frozenset() if self.desired.config.proxy.enabled or bind is None else frozenset({bind[0]})
        return audit.check(pid, also)

    def _transition(self, name: str, old: State, new: State, reason: str) -> None:
        # While the engine is coming back, requests wait in the proxy rather than fail.
        if new in (State.EXITED, State.BACKOFF):
            self.hold.want(True)
        elif new in (State.RUNNING, State.FATAL) or (new == State.STOPPED and not self._restarting):
            self.hold.want(False)
        if new == State.RUNNING and not self.ctx.mood.shutting_down:
            self.warmer.after_start(self.driver, self.desired.config.warm, self.url)

    # -- control -------------------------------------------------------------------------------------

    @property
    def present(self) -> bool:
        """This machine has an engine (not a front with engine.kind = "none")."""
        return self.driver.kind != "none"

    async def start(self, reason: str, fresh: bool = False) -> None:
        if self.bind is None or not self.present:
            return
        await self.child.start(reason, fresh)

    async def stop(self, reason: str) -> None:
        await self.child.stop(reason)

    def apply(self, desired: Desired, plan: Plan, program: str) -> None:
        """What a reload hands the engine: kept for its next start; a new restart policy and
        timeouts at once; a restart, in the background, when how it runs changed."""
        self.desired, self.program = desired, program
        if plan.policy:
            self._set_policy()
        if plan.engine is not None:
            self.request_restart(plan.engine)

    def _set_policy(self) -> None:
        cfg = self.desired.config
        self.child.set_policy(cfg.restart, cfg.engine.start_timeout)

    async def restart(self, reason: str, fresh: bool = False) -> None:
        """Drain, stop, start again (as the kind the config now names); one at a time.
        Requests that arrive meanwhile wait in the proxy."""
        async with self._lock:
            if self.ctx.mood.shutting_down:
                return
            self._restarting = True
            try:
                await self.hold.drain(self.child.name, self.desired.config.engine.drain_timeout)
                if self.ctx.mood.shutting_down:
                    return
                await self.child.stop(reason)
                kind = self.desired.config.engine.kind
                if kind != self.driver.kind:
                    await self.child.close()
                    self.driver = engine_for(kind)
                    self.child = self._make_child()
                self._set_policy()
                if self.present and self.bind is None:
                    self.log.info("engine_waiting", process=self.child.name, reason="no address to listen on")
                elif self.present:  # (kind = "none": a front only, nothing to start)
                    await self.child.start(reason, fresh)
            finally:
                self._restarting = False
            if self.child.state not in (State.STARTING, State.RUNNING, State.BACKOFF):
                self.hold.want(False)

    def request_restart(self, reason: str) -> None:
        """A restart in the background: a reload does not wait for a drain. Requests that
        arrive while one runs are merged into one more run, with the config of that moment."""
        self._wanted = (reason, False)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._restarts(), name="engine-restart")

    async def _restarts(self) -> None:
        while self._wanted is not None and not self.ctx.mood.shutting_down:
            reason, fresh = self._wanted
            self._wanted = None
            try:
                await self.restart(reason, fresh)
            except Exception:  # a bug here must not end restarts for good
                self.log.exception("restart_failed", process=self.child.name, reason=reason)

    async def metrics(self) -> list[tuple[str, str]]:
        """The engine's own metrics text, per model (none when it has none)."""
        if self.child.state != State.RUNNING or not self.driver.has_metrics:
            return []
        if self._metrics_client is None or str(self._metrics_client.base_url) != self.url:
            # One client for every scrape: making one costs more than the scrape (an SSL context).
            self._metrics_client = httpx.AsyncClient(base_url=self.url, timeout=1.0)
        try:
            return await self.driver.metrics(self._metrics_client)
        except (httpx.HTTPError, ValueError, KeyError):
            return []

    async def model_list(self) -> str | None:
        """The engine's model list, cleaned for the proxy to answer with (engines/model_list.py),
        while it runs; None when it does not, or does not answer (the last list stays in force)."""
        url = self.serving_url
        if url is None:
            return None
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                return await model_list.read(client)
        except (httpx.HTTPError, ValueError) as err:
            self.log.warning("engine_models_failed", process=self.child.name, error=f"{type(err).__name__}: {err}"[:300])
            return None

    async def settled(self) -> State:
        return await self.child.settled()

    async def warm(self, models: list[str], pull: bool) -> AsyncIterator[dict[str, Any]]:
        if not self.present:
            yield {"ok": False, "error": "this machine has no engine (engine.kind = \"none\"): warm the models on the nodes"}
            return
        if self.child.state != State.RUNNING:
            yield {"ok": False, "error": f"{self.child.name} is {self.child.state.value}, not RUNNING: nothing to warm"}
            return
        async for message in self.warmer.on_demand(self.driver, self.desired.config.warm, self.url, models, pull):
            yield message

    async def quiesce(self) -> None:
        """At shutdown, before the children stop: no restart and no warm-up goes on."""
        self._wanted = None
        self.warmer.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
