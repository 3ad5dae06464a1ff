"""`ai-server run`: one process, one event loop, owning HAProxy and the engine.

    run:      state dir ours -> lock -> stop leftovers -> Supervisor.prepare -> serve
    prepare:  read the config (off the loop) -> preflight -> the ledger opened, a new request log
              (the one a killed supervisor left is read first, in serve) -> the children, each
              handed the Desired it runs -> haproxy.cfg checked. Everything that can refuse to
              start refuses here.
    serve:    control socket, /metrics -> background tasks (launch first; metering reads the
              request log) -> wait for a signal -> shutdown
    reload:   read, plan (desired.plan), stage (written and checked, nothing running touched),
              then hand each child what it applies; an engine restart runs on its own
    shutdown: mood SHUTDOWN (nothing starts again) -> restarts and warm-ups cancelled -> held
              requests released -> children stopped in reverse priority, inside launchd's 20 s
              -> what HAProxy logged last read into the ledger

Data flows one way: the supervisor holds the Desired in force and hands it down (`apply`);
children keep what they were given and never read the supervisor back. What others read of
the daemon is `snapshot()`, a value (observe/snapshot.py).

Extension points:
- a background task: one more (name, coroutine) in `_background()`. It is cancelled at
  shutdown, after the mood turns SHUTDOWN; a loop that can fail should log and go on, as
  `_follow_nodes` does.
- a new subscriber to request records, or a new observing task: daemon/observers.py.
- a new snapshot field: observe/snapshot.py, filled in `snapshot()`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ai_server import desired as desired_mod
from ai_server import haproxy
from ai_server.access import tailnet
from ai_server.base import logs
from ai_server.base.errors import AiServerError, ConfigError, HaproxyRuntimeError
from ai_server.base.files import private_dir
from ai_server.base.paths import Paths
from ai_server.children import records
from ai_server.children.context import Context
from ai_server.children.engine import EngineChild
from ai_server.children.lifecycle import Clock
from ai_server.children.process import Child, Role
from ai_server.children.proxy import Load, ProxyChild, answers_models
from ai_server.children.states import State
from ai_server.daemon import background, control, preflight
from ai_server.daemon.commands import Commands
from ai_server.daemon.observers import Observers
from ai_server.desired import Desired
from ai_server.fleet import nodes
from ai_server.fleet.fleet import Fleet
from ai_server.observe import metrics
from ai_server.observe.snapshot import Snapshot, Tls
from ai_server.observe.usage.metering import Metering


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def run(paths: Paths, environ: Mapping[str, str] | None = None, clock: Clock = time.monotonic) -> int:
    """`ai-server run`, start to exit."""
    private_dir(paths.state_dir, "state dir")
    private_dir(paths.log_dir, "log dir")
    lock = records.acquire_lock(paths.lock_file)
    try:
        leftovers = await records.stop_leftovers(paths.children_file)
        supervisor = await Supervisor.prepare(Context.of(paths, os.environ if environ is None else environ, clock))
        return await supervisor.serve(leftovers)
    finally:
        paths.control_socket.unlink(missing_ok=True)
        lock.close()


class Supervisor:
    def __init__(self, ctx: Context, desired: Desired, proxy: ProxyChild, engine: EngineChild, fleet: Fleet,
                 metering: Metering):
        self.ctx, self.paths = ctx, ctx.paths
        self.desired = desired
        self.proxy, self.engine, self.fleet, self.metering = proxy, engine, fleet, metering
        self.log = logs.get()
        self.config_error: str | None = None
        self.loaded_at: str | None = _now_iso()
        self.commands = Commands(self)
        self.stats_socket = ctx.paths.haproxy_stats_socket
        self.observers = Observers(self, metering)
        self.records = self.observers.records  # request records: subscribe here (observe/records.py)
        self._stopping = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        # Sizes when last read: any reload waits while a file that had content is empty.
        self._sizes = background.config_sizes(self.paths.config_dir)

    @classmethod
    async def prepare(cls, ctx: Context) -> Supervisor:
        """Everything that can refuse to start, before anything is started."""
        desired = await asyncio.to_thread(desired_mod.read, ctx.paths.config_dir)
        programs = preflight.check(desired, ctx.environ)
        proxied = desired.config.proxy.enabled
        fleet = Fleet(ctx.paths)
        fleet.configure(desired.config)
        # The request log HAProxy appends to (and the ledger it is read into), before HAProxy.
        metering = Metering(ctx.paths.state_dir, desired, stats_socket=ctx.paths.haproxy_stats_socket)
        log_fd = await asyncio.to_thread(metering.prepare)
        proxy = ProxyChild(ctx, desired, programs.haproxy, proxied and haproxy.has_lua(programs.haproxy), fleet, log_fd)
        engine = EngineChild(ctx, desired, programs.engine, proxy.hold)
        if proxied:
            # A supervisor killed while holding requests leaves "hold 1" behind: start released.
            haproxy.set_hold_file(ctx.paths.state_dir, False)
            await asyncio.to_thread(proxy.prepare_tls, desired)
            await fleet.refresh(proxy_running=False, local_url=None)
            await asyncio.to_thread(proxy.install, desired)
        return cls(ctx, desired, proxy, engine, fleet, metering)

    @property
    def children(self) -> list[Child]:
        """Every child, in start order (by role priority)."""
        found = ([self.engine.child] if self.engine.present else []) + (
            [self.proxy.child] if self.desired.config.proxy.enabled else [])
        return sorted(found, key=lambda c: c.role.priority)

    # -- the main loop ---------------------------------------------------------------------------

    async def serve(self, leftovers: list[str] | None = None) -> int:
        cfg = self.desired.config
        logs.configure(self.paths.log_file, cfg.log.max_bytes, cfg.log.backups)
        self.log.info("starting", pid=os.getpid(), config_dir=str(self.paths.config_dir),
                      state_dir=str(self.paths.state_dir), addresses=list(self.desired.addresses))
        if leftovers:
            self.log.warning("leftovers_stopped", processes=leftovers,
                             reason="a previous supervisor died without stopping its children")
        async with self._listening():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload_wanted.set)
            # Launch runs as a task like the rest, so a SIGTERM during it is not kept waiting.
            self._tasks = [asyncio.create_task(coro, name=name) for name, coro in self._background()]
            await self._stopping.wait()
            await self._shutdown()
        self.log.info("stopped")
        return 0

    def _background(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        reload, desired = self._reload_guarded, lambda: self.desired
        return [("launch", self._start_all("launch")),
                ("config-watcher", background.watch_config(self.paths.config_dir, self._stopping, reload)),
                ("hold", self.proxy.hold.run()),
                ("reload-signal", background.reload_on(self._reload_wanted, reload, "SIGHUP")),
                ("tailnet", background.follow_tailnet(desired, self.apply_tailnet)),
                ("nodes", background.every(nodes.POLL_S, self._refresh_nodes, "nodes_refresh")),
                ("engine-models", background.every(nodes.POLL_S, self._refresh_engine_models, "engine_models")),
                ("tls-renewal", background.renew_certificate(lambda: self.proxy.tls_ready,
                                                             lambda: self.desired.config.proxy.tls == "tailscale", reload)),
                ("metering", self.metering.run(self.records.publish, self.proxy.set_over_quota)),
                *self.observers.tasks()]

    @asynccontextmanager
    async def _listening(self) -> AsyncIterator[None]:
        """The control socket, /metrics and the dashboard, for as long as we serve."""
        server = await control.serve(self.paths.control_socket, self.commands.handle)
        await self.observers.apply(self.desired)
        try:
            yield
        finally:
            server.close()
            self.observers.close()

    # -- what others read ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        desired = self.desired
        waiting = self.proxy.waiting if desired.config.proxy.enabled else None
        children = []
        for child in self.children:
            snap = child.snapshot()
            if child.role is Role.PROXY and waiting and snap.state == State.STOPPED:
                snap = replace(snap, description=waiting)
            children.append(snap)
        certificate = self.proxy.certificate
        audited = self.engine.child.last_audit
        return Snapshot(
            desired=desired, children=tuple(children), mood=self.ctx.mood.now, pid=os.getpid(),
            proxy_waiting=waiting, engine_listen=self.engine.bind if self.engine.present else None,
            loaded_at=self.loaded_at, config_error=self.config_error,
            tls=None if desired.config.proxy.tls != "tailscale" else Tls(
                getattr(certificate, "domain", None), getattr(certificate, "not_after", None), self.proxy.tls_problem),
            nodes=tuple(sorted(self.fleet.states)), warm=self.engine.warmer.status(),
            audit_age_s=None if audited is None else self.ctx.clock() - audited, slots=desired.config.engine.slots,
            usage=self.metering.state())

    async def node_rows(self) -> list[dict[str, Any]]:
        """A front's nodes: health, models, load (HAProxy's stats); none elsewhere."""
        return await asyncio.to_thread(self.fleet.rows) if self.fleet.active else []

    async def engine_samples(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        """The engine's own metrics, renamed ai_server_engine_*."""
        return [s for model, text in await self.engine.metrics() for s in metrics.engine_samples(text, model)]

    async def load(self) -> Load | None:
        """What HAProxy is carrying now; None when it does not answer."""
        if not self.desired.config.proxy.enabled or self.proxy.child.state != State.RUNNING:
            return None
        try:
            return await asyncio.to_thread(self.proxy.load)
        except HaproxyRuntimeError:
            return None

    # -- what commands do ------------------------------------------------------------------------

    def _named(self, names: list[str]) -> list[Child]:
        return [c for c in self.children if c.name in names]  # in start order

    async def start(self, names: list[str], reason: str) -> None:
        """Start each and wait until it is past STARTING, as supervisorctl does."""
        for child in self._named(names):
            if child.role is Role.ENGINE:
                await self.engine.start(reason, fresh=True)
                await child.settled()
                await self._refresh_engine_models()  # before the proxy starts: it answers /v1/models from it
            else:
                await self.proxy.start(reason)
                await child.settled()

    async def stop(self, names: list[str], reason: str) -> None:
        for child in reversed(self._named(names)):
            await child.stop(reason)

    async def restart(self, names: list[str], reason: str) -> None:
        if self._named(names) == [self.engine.child]:
            # Alone, the engine is drained first: no generation in flight is cut.
            await self.engine.restart(reason, fresh=True)
            await self.engine.settled()
            return
        await self.stop(names, reason)
        await self.start(names, reason)

    async def _start_all(self, reason: str) -> None:
        await self.start([c.name for c in self.children], reason)

    def warm(self, models: list[str], pull: bool) -> AsyncIterator[dict[str, Any]]:
        return self.engine.warm(models, pull)

    async def nodes(self, action: str | None, name: str) -> list[dict[str, Any]]:
        if not self.fleet.active:
            raise AiServerError("this ai-server fronts no nodes (no [[node]] in ai-server.toml)")
        if action in ("drain", "undrain"):
            await self.fleet.set_drained(name, action == "drain")
        return await asyncio.to_thread(self.fleet.rows)

    # -- reload ----------------------------------------------------------------------------------

    async def reload(self, why: str) -> dict[str, Any]:
        """Re-read the files, once none is caught half-saved; apply what changed; on any
        error keep the last good config."""
        self._sizes, gone = await background.settle(self.paths.config_dir, self._sizes, self.ctx.clock)
        if gone:
            # Empty is never taken as meant: it would be every default (no `[unknown] deny`, no
            # limits). A file that means "nothing" says so with a comment.
            return self._refused(ConfigError(gone[0], "empty or gone; write a comment in it to mean an empty file"), why)
        return await self._apply(why, lambda: desired_mod.read(self.paths.config_dir, self.desired))

    async def apply_tailnet(self, view: tailnet.Detection, why: str) -> dict[str, Any]:
        """The config in force with a new tailnet view, the files not read again: a tailnet
        change (which a device can cause at will) must never apply a file caught half-saved."""
        return await self._apply(why, lambda: desired_mod.with_view(self.desired, view))

    async def _apply(self, why: str, read: Callable[[], Desired]) -> dict[str, Any]:
        """What `read` gives (called under the lock, off the loop), planned, staged and applied.

        The lock covers reading, checking and the proxy; an engine restart only begins here,
        so a save is never queued behind a drain."""
        async with self._reload_lock:
            if self.ctx.mood.shutting_down:
                return {"ok": False, "error": "ai-server is shutting down"}
            try:
                new = await asyncio.to_thread(read)
                plan = desired_mod.plan(self.desired, new, self.paths.config_file.name)
                programs = preflight.check(new, self.ctx.environ, running=self.desired)
                if plan.nodes:
                    self.fleet.configure(new.config)
                    await self.fleet.refresh(proxy_running=False, local_url=self.engine.serving_url)
                staged = await asyncio.to_thread(self.proxy.stage, new, plan)
            except AiServerError as err:
                return self._refused(err, why)
            self.desired, self.config_error, self.loaded_at = new, None, _now_iso()
            if plan.log:
                logs.configure(self.paths.log_file, new.config.log.max_bytes, new.config.log.backups)
            await self.proxy.apply(new, plan, staged)
            self.engine.apply(new, plan, programs.engine)
            self.metering.apply(new)
            if self.fleet.active:  # `reload` reads every node again, changed or not
                await self._refresh_nodes()
            await self.observers.apply(new)
            self.observers.recorder.reload(ok=True)
            self.log.info("reloaded", trigger=why, changed=plan.changed(), rules=len(new.allowlist.rules))
            return {"ok": True, "changed": plan.changed()}

    def _refused(self, err: AiServerError, why: str) -> dict[str, Any]:
        self.config_error = str(err)
        self.observers.recorder.reload(ok=False)
        fields = {"file": err.file, "line": err.line, "key": err.key} if isinstance(err, ConfigError) else {}
        self.log.error("config_error", error=str(err), trigger=why, **fields, reason="the last good config stays in force")
        return {"ok": False, "error": f"{err} (the last good config stays in force)"}

    async def _reload_guarded(self, why: str) -> None:
        """For the background work: a bug in one reload must not end hot reload for good."""
        try:
            await self.reload(why)
        except Exception:
            self.log.exception("reload_failed", trigger=why)

    async def _refresh_nodes(self) -> None:
        await self.fleet.refresh(proxy_running=self.proxy.running(), local_url=self.engine.serving_url)

    async def _refresh_engine_models(self) -> None:
        """llama-server's model list, cleaned, for the proxy to answer /v1/models with."""
        if answers_models(self.desired.config) and (answer := await self.engine.model_list()) is not None:
            await self.proxy.set_engine_models(answer)

    # -- shutdown --------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self.ctx.mood.shut_down()
        self.log.info("shutdown", reason="signal received")
        for task in self._tasks:
            task.cancel()
        await _settle(self.engine.quiesce(), "engine operations")
        # Requests held for an engine restart go through to the engine, still up, instead of
        # waiting in a proxy that is about to stop.
        await _settle(asyncio.to_thread(self.proxy.hold.release_now), "release held requests")
        for child in reversed(self.children):
            await child.stop("shutdown")
        for child in self.children:
            await child.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # HAProxy is gone: what it logged last (streams it cut on the way out) into the ledger.
        await _settle(self.metering.tick(self.records.publish), "read the request log")
        self.metering.close()
        self.ctx.records.close()


async def _settle(work: Awaitable[Any], what: str) -> None:
    try:
        await asyncio.wait_for(work, 2.0)
    except Exception as err:  # shutdown goes on whatever one step does
        logs.get().warning("shutdown_step_failed", step=what, error=repr(err))
