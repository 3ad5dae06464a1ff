"""`ai-server run`: one process, one event loop, owning HAProxy and the engine.

    launch:   lock state dir -> stop leftovers -> load config -> preflight -> render haproxy.cfg
              -> log receiver, control socket -> start engine, then haproxy
    running:  children restart themselves (process.py); config saves and `reload` re-render and
              reload only what changed; the tailnet address is followed
    shutdown: (SIGTERM/SIGINT) haproxy drains and stops first, then the engine; all inside
              launchd's 20 s ExitTimeOut
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Mapping

import httpx

from ai_server import config as config_mod
from ai_server import audit, control, haproxy, logs, preflight, records, tailnet, warm
from ai_server.config import Allowlist, Config
from ai_server.drain import Hold
from ai_server.engines import Engine, engine_for, host_port
from ai_server.errors import AiServerError, ConfigError
from ai_server.lifecycle import Clock
from ai_server.paths import Paths
from ai_server.process import Child, Spec
from ai_server.states import ALIVE, State

TAILNET_POLL_S = 5.0


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _LogReceiver(asyncio.DatagramProtocol):
    """HAProxy's log datagrams -> `request` events (and its notices -> `output` events)."""

    def __init__(self) -> None:
        self.log = logs.get()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            fields = haproxy.parse_log(line)
            if fields is not None:
                self.log.info("request", process="haproxy", **fields)
            # Anything else is a notice HAProxy also prints on stderr, which is logged already.


class Supervisor:
    def __init__(self, paths: Paths, *, clock: Clock = time.monotonic, environ: Mapping[str, str] | None = None):
        self.paths = paths
        self.clock = clock
        self.environ = dict(os.environ if environ is None else environ)
        self.log = logs.get()
        self.config = Config()
        self.allowlist = Allowlist()
        self.engine: Engine = engine_for("ollama")
        self.children: dict[str, Child] = {}
        self.addresses: tuple[str, ...] = ()
        self.config_error: str | None = None
        self.loaded_at: str | None = None
        self._haproxy_bin = ""
        self._engine_bin = ""
        self._stopping = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.hold = Hold(paths.haproxy_stats_socket, paths.state_dir, clock, self.log,
                         lambda: "haproxy" in self.children and self.children["haproxy"].state == State.RUNNING)
        self._restarting = False
        self.warmed: dict[str, warm.Outcome] = {}
        self._warm_task: asyncio.Task[Any] | None = None

    # -- launch ----------------------------------------------------------------------------------

    def load_and_check(self) -> None:
        """Everything that can refuse to start, before anything is started."""
        self.config = config_mod.load(self.paths.config_dir)
        self.allowlist = config_mod.load_allowlist(self.paths.config_dir)
        self.engine = engine_for(self.config.engine.kind)
        proxied = self.config.proxy.enabled
        if proxied:
            self._haproxy_bin = preflight.require_program("haproxy", "HAProxy", preflight.haproxy_hint(), self.environ)
            self.hold.available = haproxy.has_lua(self._haproxy_bin)
        self._engine_bin = preflight.require_program(
            self.config.engine.command[0], self.engine.kind, self.engine.install_hint, self.environ)
        self.addresses = self._resolve_addresses(self.config)
        bind = self.engine_bind
        if bind is not None:
            preflight.check_bindable(*bind, f"engine ({self.engine.kind})",
                                     "engine.port" if proxied else "proxy.listen / proxy.port")
        if proxied:
            for address in self.addresses:
                preflight.check_bindable(address, self.config.proxy.port, "proxy", "proxy.listen / proxy.port")
            # A supervisor killed while holding requests leaves "hold 1" behind: start released.
            (self.paths.state_dir / haproxy.HOLD_MAP).write_text("hold 0\n", encoding="utf-8")
            self._install()
        self.loaded_at = _now_iso()

    @property
    def engine_bind(self) -> tuple[str, int] | None:
        """Where the engine listens: loopback behind the proxy; without the proxy (declined at
        install), the first tailnet address itself, never every interface. None: no address yet."""
        if self.config.proxy.enabled:
            return ("127.0.0.1", self.config.engine.port)
        if not self.addresses:
            return None
        ipv4 = [a for a in self.addresses if ":" not in a]
        return ((ipv4 or list(self.addresses))[0], self.config.proxy.port)

    async def main(self) -> int:
        paths = self.paths
        paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = records.acquire_lock(paths.lock_file)
        try:
            leftovers = records.stop_leftovers(paths.children_file)
            self.load_and_check()
            logs.configure(paths.log_file, self.config.log.max_bytes, self.config.log.backups)
            self.log.info("starting", pid=os.getpid(), config_dir=str(paths.config_dir),
                          state_dir=str(paths.state_dir), addresses=list(self.addresses))
            if leftovers:
                self.log.warning("leftovers_stopped", processes=leftovers,
                                 reason="a previous supervisor died without stopping its children")
            loop = asyncio.get_running_loop()
            log_transport = await self._open_log_socket()
            server = await control.serve(paths.control_socket, self._handle)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload_wanted.set)

            engine = self._make_engine_child()
            proxy = self._make_haproxy_child() if self.config.proxy.enabled else None
            if self.engine_bind is not None:
                await engine.start("launch")
                # The proxy's first health check should find the engine answering, not refusing.
                await engine.settled(self.config.restart.startsecs + self.config.engine.start_timeout)
            if proxy is not None and self.addresses:
                await proxy.start("launch")
            self._tasks = [asyncio.create_task(self._watch_config(), name="config-watcher"),
                           asyncio.create_task(self.hold.run(), name="hold"),
                           asyncio.create_task(self._reload_on_signal(), name="reload-signal"),
                           asyncio.create_task(self._follow_tailnet(), name="tailnet")]
            await self._stopping.wait()
            self.log.info("shutdown", reason="signal received")
            await self._shutdown()
            server.close()
            log_transport.close()
            for task in self._tasks:
                task.cancel()
            self.log.info("stopped")
            return 0
        finally:
            paths.control_socket.unlink(missing_ok=True)
            lock.close()

    # -- children --------------------------------------------------------------------------------

    def _on_transition(self, name: str, old: State, new: State, reason: str) -> None:
        level = "warning" if new in (State.BACKOFF, State.EXITED, State.FATAL) else "info"
        getattr(self.log, level)("state", process=name, **{"from": old.value, "to": new.value}, reason=reason)
        if name == self.engine.kind:
            # While the engine is coming back, requests wait in the proxy rather than fail.
            if new in (State.EXITED, State.BACKOFF):
                self.hold.want(True)
            elif new == State.RUNNING or new == State.FATAL or (new == State.STOPPED and not self._restarting):
                self.hold.want(False)
            if new == State.RUNNING and self.config.warm.models:
                self._start_warm()

    # -- pre-warming ------------------------------------------------------------------------------

    def _start_warm(self) -> None:
        """After every engine (re)start: warm.models, one at a time, in the background."""
        if self._warm_task is not None:
            self._warm_task.cancel()
        models = list(self.config.warm.models)
        self.warmed = {m: warm.Outcome(m) for m in models}
        self._warm_task = asyncio.get_running_loop().create_task(
            warm.warm_models(self.engine, self.config, self.engine_url, models, self.config.warm.pull,
                             self._warm_progress),
            name="warm")

    def _warm_progress(self, outcome: warm.Outcome, event: dict[str, Any]) -> None:
        self.warmed[outcome.model] = outcome

    async def _warm_on_demand(self, models: list[str], pull: bool) -> AsyncIterator[dict[str, Any]]:
        child = self.engine_child
        if child.state != State.RUNNING:
            yield {"ok": False, "error": f"{child.name} is {child.state.value}, not RUNNING: nothing to warm"}
            return
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def progress(outcome: warm.Outcome, event: dict[str, Any]) -> None:
            self.warmed[outcome.model] = outcome
            queue.put_nowait({"progress": {**event, "state": outcome.state, "seconds": outcome.seconds}})

        task = asyncio.create_task(warm.warm_models(self.engine, self.config, self.engine_url, models, pull, progress))
        while not task.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        yield {"ok": True, "results": [o.as_dict() for o in task.result()]}

    async def restart_engine(self, reason: str, new_kind: str | None = None, fresh: bool = False) -> None:
        """Drain, stop, start again; requests that arrive meanwhile wait in the proxy."""
        self._restarting = True
        try:
            await self.hold.drain(self.engine.kind, self.config.engine.drain_timeout)
            current = self.engine_child
            await current.stop(reason)
            if new_kind is not None and new_kind != current.name:
                await current.close()
                del self.children[current.name]
                self.engine = engine_for(new_kind)
                self._make_engine_child()
            await self.engine_child.start(reason, fresh)
        finally:
            self._restarting = False
        if self.engine_child.state not in (State.STARTING, State.RUNNING, State.BACKOFF):
            self.hold.want(False)

    def _write_records(self) -> None:
        records.write(self.paths.children_file, {n: c.record() for n, c in self.children.items()})

    def _engine_spec(self) -> Spec:
        cfg, bind = self.config.engine, self._engine_address
        return Spec(argv=tuple(self.engine.argv(cfg, self._engine_bin, bind)),
                    env=self.engine.env(cfg, self.environ, bind),
                    stop_signal=signal.SIGTERM, stop_timeout=self.config.restart.stop_timeout)

    def _haproxy_spec(self) -> Spec:
        # -W master-worker, -db foreground: the master keeps its pid across reloads (SIGUSR2)
        # and SIGUSR1 makes it stop gracefully, letting workers finish their responses.
        return Spec(argv=(self._haproxy_bin, "-W", "-db", "-f", str(self.paths.haproxy_cfg)),
                    env=dict(self.environ), stop_signal=signal.SIGUSR1,
                    stop_timeout=self.config.proxy.drain_timeout + 1.0)

    def _make_engine_child(self) -> Child:
        child = Child(self.engine.kind, self._engine_spec, self.config.restart, self.clock, self._on_transition,
                      ready=self._engine_answers, start_timeout=self.config.engine.start_timeout,
                      audit=self._audit, on_change=self._write_records)
        self.children[child.name] = child
        return child

    def _make_haproxy_child(self) -> Child:
        if "haproxy" not in self.children:
            self.children["haproxy"] = Child(
                "haproxy", self._haproxy_spec, self.config.restart, self.clock, self._on_transition,
                ready=self._proxy_listens, start_timeout=30.0, on_change=self._write_records)
        return self.children["haproxy"]

    @property
    def engine_child(self) -> Child:
        return self.children[self.engine.kind]

    def _audit(self, pid: int) -> str | None:
        bind = self.engine_bind
        also = frozenset() if self.config.proxy.enabled or bind is None else frozenset({bind[0]})
        return audit.check(pid, also)

    @property
    def _engine_address(self) -> tuple[str, int]:
        # Before a tailnet address exists (proxy-less mode) the engine is not started; loopback
        # is only a placeholder for the spec and URL.
        return self.engine_bind or ("127.0.0.1", self.config.engine.port)

    @property
    def engine_url(self) -> str:
        return f"http://{host_port(self._engine_address)}"

    async def _engine_answers(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"{self.engine_url}{self.engine.health_path}")
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    async def _proxy_listens(self) -> bool:
        for address in self.addresses:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, self.config.proxy.port), 1.0)
                writer.close()
            except (OSError, asyncio.TimeoutError):
                return False
        return True

    async def _shutdown(self) -> None:
        # The proxy first, so no new request reaches an engine that is about to go.
        if "haproxy" in self.children:
            await self.children["haproxy"].stop("shutdown")
        for name, child in list(self.children.items()):
            if name != "haproxy":
                await child.stop("shutdown")
        for child in self.children.values():
            await child.close()
        self.paths.children_file.unlink(missing_ok=True)

    # -- config ----------------------------------------------------------------------------------

    def _resolve_addresses(self, cfg: Config) -> tuple[str, ...]:
        needs_tailnet = "tailscale" in cfg.proxy.listen
        return tailnet.resolve_listen(cfg.proxy.listen, tailnet.detect() if needs_tailnet else [])

    def _install(self, cfg: Config | None = None, allowlist: Allowlist | None = None,
                 addresses: tuple[str, ...] | None = None) -> bool:
        """Write haproxy.cfg and the allowlist maps, checked. True when haproxy.cfg changed."""
        return haproxy.install(self._haproxy_bin, self._render_input(cfg or self.config, addresses),
                               allowlist or self.allowlist, self.paths.haproxy_cfg)

    def _render_input(self, cfg: Config, addresses: tuple[str, ...] | None = None) -> haproxy.RenderInput:
        return haproxy.RenderInput(
            config=cfg, addresses=self.addresses if addresses is None else addresses,
            log_socket=self.paths.haproxy_log_socket, stats_socket=self.paths.haproxy_stats_socket,
            paths_map=self.paths.paths_map, routes_map=self.paths.routes_map,
            engine_health_path=engine_for(cfg.engine.kind).health_path, hold=self.hold.available)

    async def reload(self, why: str) -> dict[str, Any]:
        """Re-read both files; apply what changed; on any error keep the last good config."""
        async with self._reload_lock:
            try:
                new = config_mod.load(self.paths.config_dir)
                allowlist = config_mod.load_allowlist(self.paths.config_dir)
                addresses = self._resolve_addresses(new)
                kind = engine_for(new.engine.kind)
                engine_bin = preflight.require_program(new.engine.command[0], kind.kind, kind.install_hint, self.environ)
                # Addresses already bound by the running proxy are ours; only new ones can clash.
                fresh = addresses if new.proxy.port != self.config.proxy.port else tuple(set(addresses) - set(self.addresses))
                for address in fresh:
                    preflight.check_bindable(address, new.proxy.port, "proxy", "proxy.listen / proxy.port")
                if new.proxy.enabled != self.config.proxy.enabled:
                    raise ConfigError(self.paths.config_file.name, "changing proxy.enabled needs a restart of ai-server "
                                      "(`ai-server install` again, or restart the service)", key="proxy.enabled")
                rules_changed = allowlist != self.allowlist
                proxy_changed = (new.proxy != self.config.proxy or addresses != self.addresses
                                 or new.engine.port != self.config.engine.port or new.engine.kind != self.config.engine.kind)
                if not new.proxy.enabled:
                    cfg_changed = rules_changed = False
                else:
                    cfg_changed = self._install(new, allowlist, addresses) if proxy_changed or rules_changed else False
            except AiServerError as err:
                self.config_error = str(err)
                fields = {"file": err.file, "line": err.line, "key": err.key} if isinstance(err, ConfigError) else {}
                self.log.error("config_error", error=str(err), trigger=why, **fields,
                               reason="the last good config stays in force")
                return {"ok": False, "error": f"{err} (the last good config stays in force)"}
            old = self.config
            self.config, self.allowlist, self.addresses = new, allowlist, addresses
            self._engine_bin = engine_bin
            self.config_error = None
            self.loaded_at = _now_iso()
            changed = await self._apply(old, new, cfg_changed, rules_changed, proxy_changed)
            self.log.info("reloaded", trigger=why, changed=changed, rules=len(allowlist.rules))
            return {"ok": True, "changed": changed}

    async def _apply(self, old: Config, new: Config, cfg_changed: bool, rules_changed: bool,
                     proxy_changed: bool = False) -> list[str]:
        changed = []
        if new.log != old.log:
            logs.configure(self.paths.log_file, new.log.max_bytes, new.log.backups)
            changed.append("log")
        for child in self.children.values():
            child.set_policy(new.restart, new.engine.start_timeout)
        # Without the proxy, the engine's own address follows proxy.listen and proxy.port.
        rebind = not new.proxy.enabled and proxy_changed
        if new.engine != old.engine or new.restart != old.restart or rebind:
            if self.engine_bind is None:
                await self.engine_child.stop("no address to listen on")
            else:
                await self.restart_engine("engine config changed", new_kind=new.engine.kind)
            changed.append("engine")
        if cfg_changed:
            await self._apply_proxy("config changed")
            changed.append("proxy")
        elif rules_changed:
            await self._swap_rules()
        if rules_changed:
            changed.append("allowlist")
        return changed

    async def _swap_rules(self) -> None:
        """New allowlist into the running proxy without a reload; a reload if that fails."""
        child = self.children.get("haproxy")
        if child is None or child.state not in ALIVE:
            await self._apply_proxy("allowlist changed")
            return
        try:
            await asyncio.to_thread(haproxy.swap_maps, self.paths.haproxy_stats_socket,
                                    self._render_input(self.config), self.allowlist)
            self.log.info("allowlist_swapped", process="haproxy", rules=len(self.allowlist.rules))
        except (AiServerError, OSError) as err:
            self.log.warning("allowlist_swap_failed", process="haproxy", error=str(err), reason="reloading instead")
            await self._apply_proxy("allowlist changed")

    async def _apply_proxy(self, reason: str) -> None:
        """Make HAProxy serve the freshly rendered haproxy.cfg."""
        if not self.config.proxy.enabled:
            return
        if not self.addresses:
            if "haproxy" in self.children:
                await self.children["haproxy"].stop("no address to listen on")
            return
        child = self._make_haproxy_child()
        if child.state in ALIVE and child.pid is not None:
            # Master-worker reload: the master re-reads the file, new workers take over the
            # listening sockets, old workers finish what they are serving and exit.
            kill_group_leader(child.pid, signal.SIGUSR2)
            self.log.info("proxy_reload", process="haproxy", pid=child.pid, reason=reason)
        else:
            await child.start(reason)

    async def _watch_config(self) -> None:
        import watchfiles

        names = {"ai-server.toml", "allowlist.toml"}
        self.paths.config_dir.mkdir(parents=True, exist_ok=True)
        async for changes in watchfiles.awatch(self.paths.config_dir, debounce=100, step=50,
                                               watch_filter=lambda _, p: os.path.basename(p) in names,
                                               stop_event=self._stopping):
            files = sorted({os.path.basename(p) for _, p in changes})
            await self._reload_guarded(f"saved {', '.join(files)}")

    async def _reload_guarded(self, why: str) -> None:
        """For the background loops: a bug in one reload must not end hot reload for good."""
        try:
            await self.reload(why)
        except Exception:
            self.log.exception("reload_failed", trigger=why)

    async def _reload_on_signal(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            await self._reload_guarded("SIGHUP")

    async def _follow_tailnet(self) -> None:
        """Bind the tailnet address when it appears or changes; never fall back to anything else."""
        while True:
            await asyncio.sleep(TAILNET_POLL_S)
            if "tailscale" not in self.config.proxy.listen:
                continue
            addresses = self._resolve_addresses(self.config)
            if addresses != self.addresses:
                self.log.info("tailnet_changed", old=list(self.addresses), new=list(addresses))
                await self._reload_guarded("tailnet address changed")

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
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(_LogReceiver, sock=sock)
        return transport

    # -- control ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        waiting = None if self.addresses else "waiting for a tailnet address (is Tailscale up?)"
        bind = self.engine_bind
        children = []
        for child in self.children.values():
            snap = child.snapshot()
            description = snap.description
            if child.name == "haproxy" and waiting and snap.state == State.STOPPED:
                description = waiting
            children.append({"name": snap.name, "state": snap.state.value, "pid": snap.pid,
                             "uptime_s": None if snap.uptime_s is None else round(snap.uptime_s, 1),
                             "restarts": snap.restarts, "failures": snap.failures,
                             "description": description})
        return {
            "children": children,
            "proxy": {
                "listen": [f"[{a}]:{self.config.proxy.port}" if ":" in a else f"{a}:{self.config.proxy.port}"
                           for a in self.addresses],
                "waiting": waiting,
                "enabled": self.config.proxy.enabled,
                "engine_listen": None if bind is None else host_port(bind),
                "rules": len(self.allowlist.rules),
                "loaded_at": self.loaded_at,
                "config_error": self.config_error,
            },
            "warm": [o.as_dict() for o in self.warmed.values()],
            "supervisor": {"pid": os.getpid()},
        }

    def _targets(self, name: str) -> list[Child]:
        if name == "all":
            # The engine before the proxy when starting; stop handles its own order.
            return sorted(self.children.values(), key=lambda c: c.name == "haproxy")
        if name not in self.children:
            known = ", ".join(sorted(self.children)) or "none"
            raise AiServerError(f"no child named {name!r} (children: {known}, or all)")
        return [self.children[name]]

    async def _handle(self, command: str, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            if command == "status":
                yield {"ok": True, **self.status()}
            elif command in ("start", "stop", "restart"):
                targets = self._targets(str(args.get("name", "")))
                if command == "stop":
                    targets = sorted(targets, key=lambda c: c.name != "haproxy")
                for child in targets:
                    reason = f"requested by {command}"
                    if command == "stop":
                        await child.stop(reason)
                    elif command == "start":
                        await child.start(reason, fresh=True)
                    elif child.name == self.engine.kind and len(targets) == 1:
                        await self.restart_engine(reason, fresh=True)
                    else:
                        await child.restart(reason, fresh=True)
                    if command != "stop":
                        await child.settled(child.lc.policy.startsecs + child.start_timeout)
                yield {"ok": True, **self.status()}
            elif command == "reload":
                yield await self.reload("requested by reload")
            elif command == "warm":
                models = [str(m) for m in args.get("models") or []]
                async for message in self._warm_on_demand(models, bool(args.get("pull", True))):
                    yield message
            else:
                yield {"ok": False, "error": f"unknown command {command!r}"}
        except AiServerError as err:
            yield {"ok": False, "error": str(err)}


def kill_group_leader(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
