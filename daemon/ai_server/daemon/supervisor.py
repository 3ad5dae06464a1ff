"""`ai-server run`: one process, one event loop, owning HAProxy and the engine.

    launch:   state dir ours -> lock -> stop leftovers -> read config (off the loop) -> preflight
              -> haproxy.cfg checked -> log receiver, control socket -> children by priority
    running:  children restart themselves (process.py); a saved file or `reload` is read, planned
              (reload.py) and applied; an engine restart runs on its own, never blocking a reload
    shutdown: mood SHUTDOWN (nothing starts again) -> restarts and warm-ups cancelled -> held
              requests released -> children stopped in reverse priority, inside launchd's 20 s
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping

import httpx

from ai_server import desired as desired_mod
from ai_server import haproxy
from ai_server.access import allowlist
from ai_server.base import logs
from ai_server.base.errors import AiServerError, ConfigError, HaproxyRuntimeError
from ai_server.base.files import private_dir
from ai_server.base.paths import Paths
from ai_server.children import records
from ai_server.children.engine import EngineChild
from ai_server.children.lifecycle import Clock
from ai_server.children.process import Child, Role
from ai_server.children.proxy import ProxyChild, answers_models
from ai_server.children.states import Mood, State
from ai_server.daemon import control, observers, preflight
from ai_server.daemon.commands import Commands
from ai_server.desired import Desired
from ai_server.engines import model_list
from ai_server.fleet import nodes
from ai_server.fleet.fleet import Fleet
from ai_server.haproxy import tls
from ai_server.haproxy.logfmt import parse_log
from ai_server.observe import health, http, metrics
from ai_server.observe.alerts import Alerts, Change, Rules
from ai_server.observe.dashboard.app import Dashboard
from ai_server.observe.feed import Feed
from ai_server.observe.records import Ended, Record, RecordBus
from ai_server.observe.webhook import Deliverer

TAILNET_POLL_S = 5.0
ALERTS_EVERY_S = 1.0
CONFIG_FILES = frozenset({"ai-server.toml", "allowlist.toml", "clients.toml"})


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _LogReceiver(asyncio.DatagramProtocol):
    """HAProxy's log datagrams -> request records. Its other notices are also on its stderr."""

    def __init__(self, on_request: Callable[[dict[str, Any]], None]) -> None:
        self.on_request = on_request

    def datagram_received(self, data: bytes, addr: Any) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            fields = parse_log(line)
            if fields is not None:
                self.on_request(fields)


class Supervisor:
    def __init__(self, paths: Paths, *, clock: Clock = time.monotonic, environ: Mapping[str, str] | None = None):
        self.paths = paths
        self.clock = clock
        self.environ = dict(os.environ if environ is None else environ)
        self.log = logs.get()
        self.mood = Mood.RUNNING
        self.desired = Desired()
        self.config_error: str | None = None
        self.loaded_at: str | None = None
        self.commands = Commands(self)
        self._stopping = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.recorder = metrics.Recorder()
        # Request records (observe/records.py): the `request` log event, metrics, and whoever
        # else subscribes (the dashboard, alerts).
        self.records = RecordBus()
        self.records.subscribe(self._log_request)
        self.records.subscribe(self.recorder.record)
        # The dashboard's requests, and the alerts (refusals count towards "probing").
        self.feed = Feed()
        self.alerts = Alerts()
        self.records.subscribe(self.feed.record)
        self.records.subscribe(self.alerts.record)
        self.webhook = Deliverer(observers.host_name())
        self.dashboard = Dashboard(self.feed, lambda: observers.dashboard_state(self), lambda: observers.audience(self),
                                   self._scrape, observers.host_name())
        self._http = http.Server(self.dashboard)
        self._metrics_at: list[tuple[str, int]] | None = None

    @property
    def children(self) -> list[Child]:
        """Every child, in start order (by role priority)."""
        found = ([self.engine.child] if self.engine.present else []) + (
            [self.proxy.child] if self.desired.config.proxy.enabled else [])
        return sorted(found, key=lambda c: c.role.priority)

    # -- launch ----------------------------------------------------------------------------------

    async def main(self) -> int:
        private_dir(self.paths.state_dir, "state dir")
        private_dir(self.paths.log_dir, "log dir")
        lock = records.acquire_lock(self.paths.lock_file)
        try:
            leftovers = await records.stop_leftovers(self.paths.children_file)
            await self._load()
            logs.configure(self.paths.log_file, self.desired.config.log.max_bytes, self.desired.config.log.backups)
            self.log.info("starting", pid=os.getpid(), config_dir=str(self.paths.config_dir),
                          state_dir=str(self.paths.state_dir), addresses=list(self.desired.addresses))
            if leftovers:
                self.log.warning("leftovers_stopped", processes=leftovers,
                                 reason="a previous supervisor died without stopping its children")
            log_transport = await self._open_log_socket()
            server = await control.serve(self.paths.control_socket, self.commands.handle)
            await self._serve_metrics()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload_wanted.set)
            # Launch runs as a task like the rest, so a SIGTERM during it is not kept waiting.
            self._tasks = [asyncio.create_task(coro, name=name) for name, coro in (
                ("launch", self._start_all("launch")), ("config-watcher", self._watch_config()),
                ("hold", self.proxy.hold.run()), ("reload-signal", self._reload_on_signal()),
                ("tailnet", self._follow_tailnet()), ("nodes", self._follow_nodes()),
                ("engine-models", self._follow_engine_models()),
                ("tls-renewal", self._renew_tls()), ("dashboard", self.dashboard.run()),
                ("alerts", self._watch_alerts()), ("webhook", self.webhook.run()))]
            await self._stopping.wait()
            await self._shutdown()
            server.close()
            log_transport.close()
            self._http.close()
            self.log.info("stopped")
            return 0
        finally:
            self.paths.control_socket.unlink(missing_ok=True)
            lock.close()

    async def _load(self) -> None:
        """Everything that can refuse to start, before anything is started."""
        self.desired = await asyncio.to_thread(desired_mod.read, self.paths.config_dir)
        self.fleet = Fleet(self.paths, self._local_node_url, lambda: self.desired.config.engine.slots)
        self.fleet.configure(self.desired.config)
        self.proxy = ProxyChild(self.paths, lambda: self.desired, self.environ, self.clock, self._on_transition,
                                lambda: self.mood, on_change=self._write_records, fleet=self.fleet)
        self.engine = EngineChild(lambda: self.desired, self.environ, self.clock, self._on_transition,
                                  lambda: self.mood, self.proxy.hold, on_change=self._write_records)
        programs = preflight.check(self.desired, self.environ)
        self.engine.program, self.proxy.program = programs.engine, programs.haproxy
        if self.desired.config.proxy.enabled:
            self.proxy.hold.available = haproxy.has_lua(programs.haproxy)
            # A supervisor killed while holding requests leaves "hold 1" behind: start released.
            haproxy.set_hold_file(self.paths.state_dir, False)
            await asyncio.to_thread(self.proxy.prepare_tls, self.desired)
            await self.fleet.refresh(proxy_running=False)
            await asyncio.to_thread(self.proxy.install, self.desired)
        self.loaded_at = _now_iso()
        self._configure_alerts()

    async def _start_all(self, reason: str) -> None:
        for child in self.children:
            await self.start_child(child, reason)

    async def start_child(self, child: Child, reason: str) -> None:
        """Start one child and wait until it is past STARTING, as supervisorctl does."""
        if child.role is Role.ENGINE:
            await self.engine.start(reason, fresh=True)
            await self.engine.settled()
            await self._refresh_engine_models()  # before the proxy starts: it answers /v1/models from it
        else:
            await self.proxy.start(reason)
            await child.settled(child.lc.policy.startsecs + child.start_timeout)

    def _local_node_url(self) -> str | None:
        """Where a front reads its own engine's models: straight on loopback, once it runs."""
        return self.engine.url if self.engine.present and self.engine.child.state == State.RUNNING else None

    def _on_transition(self, name: str, old: State, new: State, reason: str) -> None:
        """The one place every state change of every child is logged."""
        level = "warning" if new in (State.BACKOFF, State.EXITED, State.FATAL) else "info"
        getattr(self.log, level)("state", process=name, **{"from": old.value, "to": new.value}, reason=reason)

    def _write_records(self) -> None:
        records.write(self.paths.children_file, {c.name: c.record() for c in self.children})

    # -- reload ----------------------------------------------------------------------------------

    async def reload(self, why: str) -> dict[str, Any]:
        """Re-read the files; apply what changed; on any error keep the last good config.

        The lock covers reading, checking and the proxy; an engine restart only begins here,
        so a save is never queued behind a drain."""
        async with self._reload_lock:
            if self.mood is Mood.SHUTDOWN:
                return {"ok": False, "error": "ai-server is shutting down"}
            try:
                new = await asyncio.to_thread(desired_mod.read, self.paths.config_dir)
                plan = desired_mod.plan(self.desired, new, self.paths.config_file.name)
                programs = preflight.check(new, self.environ, running=self.desired)
                cfg_changed = False
                if plan.nodes:
                    self.fleet.configure(new.config)
                    await self.fleet.refresh(proxy_running=False)
                had_tls = self.proxy.tls_ready
                cert_changed = await asyncio.to_thread(self.proxy.prepare_tls, new)
                tls_appeared = self.proxy.tls_ready != had_tls
                if plan.proxy or plan.rules or tls_appeared:
                    cfg_changed = await asyncio.to_thread(self.proxy.install, new)
            except AiServerError as err:
                self.config_error = str(err)
                self.recorder.reload(ok=False)
                fields = {"file": err.file, "line": err.line, "key": err.key} if isinstance(err, ConfigError) else {}
                self.log.error("config_error", error=str(err), trigger=why, **fields,
                               reason="the last good config stays in force")
                return {"ok": False, "error": f"{err} (the last good config stays in force)"}
            self.desired, self.config_error, self.loaded_at = new, None, _now_iso()
            self.engine.program = programs.engine
            if plan.log:
                logs.configure(self.paths.log_file, new.config.log.max_bytes, new.config.log.backups)
            if plan.policy:
                self.engine.set_policy()
                self.proxy.set_policy()
            if tls_appeared:
                plan = replace(plan, proxy=True)
            await self.proxy.apply(plan, cfg_changed)
            if cert_changed and not cfg_changed:
                await self.proxy.swap_certificate()
            if plan.engine is not None:
                self.engine.request_restart(plan.engine)
            if self.fleet.active:  # `reload` reads every node again, changed or not
                await self._refresh_nodes()
            await self._serve_metrics()
            self._configure_alerts()
            self.recorder.reload(ok=True)
            self.log.info("reloaded", trigger=why, changed=plan.changed(), rules=len(new.allowlist.rules))
            return {"ok": True, "changed": plan.changed()}

    async def _reload_guarded(self, why: str) -> None:
        """For the background loops: a bug in one reload must not end hot reload for good."""
        try:
            await self.reload(why)
        except Exception:
            self.log.exception("reload_failed", trigger=why)

    async def _watch_config(self) -> None:
        import watchfiles

        self.paths.config_dir.mkdir(parents=True, exist_ok=True)
        async for changes in watchfiles.awatch(self.paths.config_dir, debounce=100, step=50,
                                               watch_filter=lambda _, p: os.path.basename(p) in CONFIG_FILES,
                                               stop_event=self._stopping):
            files = sorted({os.path.basename(p) for _, p in changes})
            await self._reload_guarded(f"saved {', '.join(files)}")

    async def _reload_on_signal(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            await self._reload_guarded("SIGHUP")

    async def _follow_tailnet(self) -> None:
        """Bind the tailnet address when it appears or changes; never fall back to anything else."""
        while True:
            await asyncio.sleep(TAILNET_POLL_S)
            # The tailnet's peers matter as soon as clients.toml names one.
            if "tailscale" not in self.desired.config.proxy.listen and not self.desired.clients.clients:
                continue
            now = await asyncio.to_thread(desired_mod.with_tailnet, self.desired)
            old = self.desired
            if (now.addresses, now.names, now.tailnet_problem, now.peers) != (
                    old.addresses, old.names, old.tailnet_problem, old.peers):
                self.log.info("tailnet_changed", old=list(old.addresses), new=list(now.addresses), names=list(now.names),
                              problem=now.tailnet_problem, peers=len(now.peers))
                await self._reload_guarded("tailnet changed")

    async def _follow_nodes(self) -> None:
        """Every node's models, read again every 5 s and handed to HAProxy (no reload)."""
        while True:
            try:
                await self._refresh_nodes()
            except Exception:  # a bug here must not stop the reading for good
                self.log.exception("nodes_refresh_failed")
            await asyncio.sleep(nodes.POLL_S)

    async def _follow_engine_models(self) -> None:
        """llama-server's model list, cleaned for the proxy to answer with, every 5 s."""
        while True:
            await asyncio.sleep(nodes.POLL_S)
            await self._refresh_engine_models()

    async def _refresh_engine_models(self) -> None:
        url = self._local_node_url()
        if url is None or not answers_models(self.desired.config):
            return
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                answer = await model_list.read(client)
        except (httpx.HTTPError, ValueError) as err:  # the last list read stays in force
            self.log.warning("engine_models_failed", process=self.engine.child.name, error=f"{type(err).__name__}: {err}"[:300])
            return
        await self.proxy.set_engine_models(answer)

    async def _refresh_nodes(self) -> None:
        try:
            await self.fleet.refresh(proxy_running=self.proxy.running())
        except HaproxyRuntimeError as err:
            self.fleet.forget_applied()
            self.log.warning("nodes_apply_failed", error=str(err), reason="trying again at the next read")

    async def _renew_tls(self) -> None:
        """`tailscale cert` every 12 hours (it renews before expiry; a new one is swapped in), and
        every minute while the proxy waits for its first one."""
        while True:
            await asyncio.sleep(tls.RENEW_EVERY_S if self.proxy.tls_ready else tls.RETRY_S)
            if self.desired.config.proxy.tls == "tailscale":
                await self._reload_guarded("certificate renewal")

    async def _open_log_socket(self) -> asyncio.DatagramTransport:
        path = self.paths.haproxy_log_socket
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        # Room for bursts; past it HAProxy drops log lines rather than waiting for us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _LogReceiver(self._count_request), sock=sock)
        return transport

    def _count_request(self, fields: dict[str, Any]) -> None:
        route = allowlist.route(self.desired.allowlist, str(fields.get("path") or ""))
        now = time.time()
        total = fields.get("t_total_ms")
        received = now - (total / 1000 if isinstance(total, int) and total > 0 else 0.0)
        self.records.publish(Ended(
            id="", client=str(fields["who"]), address=str(fields["client"]), port=fields["client_port"],  # type: ignore[arg-type]
            method=str(fields["method"]), path=str(fields["path"]), query=fields["query"], route=route,  # type: ignore[arg-type]
            model=fields["model"], node=fields["node"], priority=fields["priority"], status=fields["status"],  # type: ignore[arg-type]
            received_at=received, ended_at=now, forwarded=bool(fields["forwarded"]), queued=bool(fields["queue"]),
            bytes_in=fields["bytes_in"], bytes_out=fields["bytes_out"], termination=str(fields["termination"]),  # type: ignore[arg-type]
            t_request_ms=fields["t_request_ms"], t_queue_ms=fields["t_queue_ms"], t_connect_ms=fields["t_connect_ms"],  # type: ignore[arg-type]
            t_response_ms=fields["t_response_ms"], t_total_ms=fields["t_total_ms"]))  # type: ignore[arg-type]

    def _log_request(self, record: Record) -> None:
        if isinstance(record, Ended):
            self.log.info("request", process="haproxy", **record.log_fields())

    # -- metrics ---------------------------------------------------------------------------------

    def _metrics_addresses(self) -> list[tuple[str, int]]:
        wanted: list[tuple[str, int]] = []
        for item in self.desired.config.metrics.listen:
            if item == "tailscale":
                wanted += [(a, metrics.DEFAULT_PORT) for a in self.desired.addresses]
            else:
                host, _, port = item.rpartition(":")
                wanted.append((host.strip("[]"), int(port)))
        return list(dict.fromkeys(wanted))

    async def _serve_metrics(self) -> None:
        """(Re)bind /metrics and the dashboard when [metrics] listen or the tailnet address it names changes."""
        wanted = self._metrics_addresses()
        if wanted == self._metrics_at:
            return
        await self._http.bind(wanted)
        self._metrics_at = wanted

    # -- alerts ----------------------------------------------------------------------------------

    def _configure_alerts(self) -> None:
        a = self.desired.config.alerts
        self.alerts.rules = Rules(a.restarts, a.restart_minutes, a.refusals_per_minute)
        self.webhook.configure(a.webhook, a.format)

    async def _watch_alerts(self) -> None:
        """Every second: the conditions over what the supervisor sees; each change logged and sent."""
        while True:
            try:
                for change in self.alerts.observe(await observers.seen(self)):
                    self._alert(change)
            except Exception:  # a bug here must not end alerting for good
                self.log.exception("alerts_failed")
            await asyncio.sleep(ALERTS_EVERY_S)

    def _alert(self, change: Change) -> None:
        alert = change.alert
        level = "info" if change.state == "resolved" else ("error" if alert.severity == "critical" else "warning")
        getattr(self.log, level)("alert", condition=alert.condition, state=change.state, message=change.message,
                                 subject=alert.subject, severity=alert.severity)
        self.webhook.send(change)

    async def _scrape(self) -> str:
        live = metrics.Live(
            children=[(c.name, c.state == State.RUNNING, c.snapshot().restarts) for c in self.children],
            slots=self.desired.config.engine.slots,
            warm=[(w["model"], w["state"], w["seconds"]) for w in self.engine.warmer.status()])
        audited = self.engine.child.last_audit
        live.audit_age_s = None if audited is None else self.clock() - audited
        load = await self.commands.load()
        if load is not None:
            live.inflight, live.queued, live.oldest_wait_s = load["inflight"], load["queued"], load["oldest_wait_s"]
            live.clients_inflight, live.proxy_requests = load["clients"], load["requests_total"]
        live.engine = [s for model, text in await self.engine.metrics() for s in metrics.engine_samples(text, model)]
        return metrics.render(self.recorder, live) + health.render(await observers.seen(self), self.alerts.open_alerts())

    # -- shutdown --------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self.mood = Mood.SHUTDOWN
        self.log.info("shutdown", reason="signal received")
        for task in self._tasks:
            task.cancel()
        await self._settle(self.engine.quiesce(), "engine operations")
        # Requests held for an engine restart go through to the engine, still up, instead of
        # waiting in a proxy that is about to stop.
        await self._settle(asyncio.to_thread(self.proxy.hold.release_now), "release held requests")
        for child in reversed(self.children):
            await child.stop("shutdown")
        for child in self.children:
            await child.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.paths.children_file.unlink(missing_ok=True)

    async def _settle(self, work: Awaitable[Any], what: str) -> None:
        try:
            await asyncio.wait_for(work, 2.0)
        except Exception as err:  # shutdown goes on whatever one step does
            self.log.warning("shutdown_step_failed", step=what, error=repr(err))
