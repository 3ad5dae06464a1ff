"""HAProxy under supervision: its config written and checked, rules swapped in live, reloads
in place, and started or stopped as tailnet addresses come and go."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, replace

from ai_server import haproxy
from ai_server.access import tailscale
from ai_server.base import logs
from ai_server.base.errors import HaproxyRuntimeError
from ai_server.base.files import atomic_write
from ai_server.children.context import Context
from ai_server.children.drain import Hold
from ai_server.children.process import Child, Role, Spec
from ai_server.children.states import ALIVE, State
from ai_server.config import Config
from ai_server.desired import Desired, Plan
from ai_server.engines import engine_for
from ai_server.fleet.fleet import Fleet
from ai_server.haproxy import maps, runtime, tls
from ai_server.haproxy.maps import MapFile
from ai_server.haproxy.render import PRIORITY_CLASSES, RenderInput, ollama_names

# HAProxy itself starts in well under a second; this only bounds a hung start.
START_TIMEOUT = 30.0


def by_client(rows: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The clients table by client name: an unknown device is counted on its own key
    (unknown@<address>, so one cannot use up another's rate), summed here as "unknown"."""
    out: dict[str, dict[str, int]] = {}
    for key, row in rows.items():
        total = out.setdefault(key.split("@", 1)[0], {})
        for counter, value in row.items():
            total[counter] = total.get(counter, 0) + value
    return out


def answers_models(cfg: Config) -> bool:
    """Whether the proxy answers /v1/models itself (render.py's _engine_models_answer)."""
    return cfg.proxy.enabled and cfg.engine.kind == "llama-server" and not cfg.fronting


@dataclass(frozen=True)
class Staged:
    """What a reload wrote for the proxy (checked, not yet served)."""
    config_changed: bool = False       # haproxy.cfg itself: a reload in place
    certificate_changed: bool = False  # a new certificate for the running proxy
    tls_changed: bool = False          # HTTPS became possible (or not): it listens differently


@dataclass(frozen=True)
class Load:
    """What the proxy is carrying now, from HAProxy's own counters."""
    inflight: int                     # generation requests holding an engine slot
    slots: int
    queued: dict[str, int]            # waiting for a slot, by priority class
    oldest_wait_s: float
    clients: dict[str, int]           # requests in progress (queued or running), by client, when any
    last_minute: dict[str, int]       # requests in the last minute, by client
    requests_total: int               # every request HAProxy received

    def as_json(self) -> dict[str, object]:
        return {"inflight": self.inflight, "slots": self.slots, "queued": self.queued,
                "oldest_wait_s": self.oldest_wait_s, "clients": self.clients, "requests_total": self.requests_total}


class ProxyChild:
    """`desired` is what this child last applied, `program` haproxy as preflight found it.
    `lua`: the haproxy binary has Lua, so requests can be held while the engine restarts.
    `log_fd`: the request log (observe/usage/spool.py), open for appending, which HAProxy
    inherits at that number and logs to."""

    def __init__(self, ctx: Context, desired: Desired, program: str, lua: bool, fleet: Fleet, log_fd: int):
        self.ctx, self.desired, self.program, self.fleet = ctx, desired, program, fleet
        self.paths = ctx.paths
        self.log_fd = log_fd
        # Who is over a quota now (maps.quota_map's entries): the supervisor sets it.
        self.over_quota: dict[str, tuple[str, float, int, float, str]] = {}
        self.log = logs.get()
        self.hold = Hold(self.paths.haproxy_stats_socket, self.paths.state_dir, ctx.clock, lua, self.running)
        self.child = Child("haproxy", Role.PROXY, self.spec, desired.config.restart, ctx,
                           ready=self.listens, start_timeout=START_TIMEOUT)
        self.certificate: tls.Certificate | None = None
        self.tls_problem: str | None = None
        self.engine_models: str | None = None  # /v1/models as the proxy answers it (llama-server)
        # Why it was not started, or stopped, for want of an address or a certificate: once
        # that arrives it starts, however the reload that brings it is triggered.
        self.held_back: str | None = None

    @property
    def waiting(self) -> str | None:
        """Why the proxy cannot serve yet, or None."""
        desired = self.desired
        if not desired.addresses:
            return f"waiting for a tailnet address: {desired.tailnet_problem or 'is Tailscale up?'}"
        if desired.config.proxy.tls == "tailscale" and not self.tls_ready:
            return f"waiting for an HTTPS certificate: {self.tls_problem or 'not asked for yet'}"
        return None

    @property
    def tls_ready(self) -> bool:
        return (self.paths.state_dir / tls.PEM).exists() and self.certificate is not None

    def prepare_tls(self, desired: Desired) -> bool:
        """Get or renew the certificate when proxy.tls = "tailscale". Blocking. True when the
        certificate HAProxy should serve changed. A failure keeps the one it has."""
        if desired.config.proxy.tls != "tailscale":
            self.certificate, self.tls_problem = None, None
            return False
        program, domain = tailscale.cli(), desired.tls_domain
        if program is None:
            self.tls_problem = 'proxy.tls = "tailscale" needs the tailscale CLI'
            return False
        if domain is None:
            self.tls_problem = "this machine has no MagicDNS name yet (is Tailscale up, with MagicDNS on?)"
            return False
        try:
            self.certificate, changed = tls.obtain(program, domain, self.paths.state_dir)
        except tls.TlsError as err:
            self.tls_problem = str(err)
            self.log.warning("tls_failed", process="haproxy", domain=domain, error=str(err))
            return False
        self.tls_problem = None
        if changed:
            self.log.info("tls_certificate", process="haproxy", domain=domain, not_after=self.certificate.not_after)
        return changed

    def load(self) -> Load:
        """What the queue and the engine's slots hold now, from HAProxy. Blocking;
        HaproxyRuntimeError when HAProxy does not answer."""
        sock = self.paths.haproxy_stats_socket
        rows = {(r.get("pxname"), r.get("svname")): r for r in runtime.stats(sock)}
        everything, running = runtime.table(sock, "classes"), runtime.table(sock, "running_classes")
        queued = {c: max(0, everything.get(c, {}).get("use", 0) - running.get(c, {}).get("use", 0))
                  for c in PRIORITY_CLASSES}
        clients = by_client(runtime.table(sock, "clients"))
        front = rows.get(("ai_server", "FRONTEND"), {})
        return Load(
            # Streams tracking a class at the gate: requests holding a slot (the gate's own
            # session count would include HAProxy's idle connections to it).
            inflight=sum(row["use"] for row in running.values()),
            slots=self.desired.config.engine.slots,
            queued=queued,
            oldest_wait_s=runtime.oldest_queued(sock, "generate") if any(queued.values()) else 0.0,
            clients={name: row["use"] for name, row in clients.items() if row["use"]},
            last_minute={name: row.get("http_req_rate", 0) for name, row in clients.items()},
            requests_total=int(front.get("req_tot") or 0),
        )

    async def swap_certificate(self) -> None:
        """The renewed certificate into the running proxy, without a reload."""
        if self.child.state not in ALIVE:
            return
        pem = (self.paths.state_dir / tls.PEM).read_text(encoding="utf-8")
        try:
            await asyncio.to_thread(runtime.set_ssl_cert, self.paths.haproxy_stats_socket, tls.PEM, pem)
            self.log.info("tls_swapped", process="haproxy")
        except HaproxyRuntimeError as err:
            self.log.warning("tls_swap_failed", process="haproxy", error=str(err), reason="reloading instead")
            self.child.signal(signal.SIGUSR2)

    def running(self) -> bool:
        return self.child.state == State.RUNNING

    def spec(self) -> Spec:
        # -W master-worker, -db foreground: the master keeps its pid across reloads (SIGUSR2)
        # and SIGUSR1 makes it stop gracefully, letting workers finish their responses.
        # It runs in the state dir: haproxy.cfg names its sockets and files relative to it.
        # -dMglobal keeps freed buffers in HAProxy's shared pool: they are as large as the
        # biggest body (tune.bufsize), too large for its per-thread cache, and without it every
        # request would map and unmap several of them (measured: +0.2 ms a request).
        return Spec(argv=(self.program, "-W", "-db", "-dMglobal", "-f", str(self.paths.haproxy_cfg)),
                    env=dict(self.ctx.environ), stop_signal=signal.SIGUSR1,
                    stop_timeout=self.desired.config.proxy.drain_timeout + 1.0, cwd=str(self.paths.state_dir),
                    pass_fds=(self.log_fd,))

    async def listens(self) -> bool:
        desired = self.desired
        for address in desired.addresses:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, desired.config.proxy.port), 1.0)
                writer.close()
            except (TimeoutError, OSError):
                return False
        return True

    def render_input(self, desired: Desired) -> RenderInput:
        return RenderInput(config=desired.config, addresses=desired.addresses,
                                   engine_health_path=engine_for(desired.config.engine.kind).health_path,
                                   lua=self.hold.available,
                                   tls=desired.config.proxy.tls == "tailscale" and self.tls_ready,
                                   node_states=self.fleet.render_states(), node_slots=self.fleet.render_slots(),
                                   log_fd=self.log_fd)

    def maps(self, desired: Desired) -> list[MapFile]:
        """The maps this child swaps in live, in that order: the allowlist's routes before its
        paths, then Host names, then who may use what. (Where models go is the Fleet's.)"""
        cfg = desired.config
        files = maps.every_map(desired.allowlist, desired.addresses, cfg.proxy.port, [*desired.names, *cfg.proxy.server_names],
                               desired.clients, desired.peers, ollama_names(cfg), cfg.proxy.fronts,
                               peers_known=desired.peers_known, idle_timeout=cfg.proxy.idle_timeout,
                               over_quota=self.over_quota)
        return files + ([maps.engine_models_map(self.engine_models)] if answers_models(cfg) else [])

    async def set_engine_models(self, answer: str) -> None:
        """A new clean /v1/models: into the running proxy, or its map file for the next start."""
        if answer == self.engine_models:
            return
        self.engine_models = answer
        item = maps.engine_models_map(answer)
        if self.child.state in ALIVE:
            try:
                await asyncio.to_thread(runtime.swap, self.paths.haproxy_stats_socket, [item])
                return
            except HaproxyRuntimeError as err:  # the file below; the next read swaps it again
                self.engine_models = None
                self.log.warning("maps_swap_failed", process="haproxy", error=str(err), map=item.name)
        await asyncio.to_thread(atomic_write, self.paths.state_dir / item.name, item.text())

    def install(self, desired: Desired) -> bool:
        """Write haproxy.cfg and every map it reads for `desired`, checked by `haproxy -c` first.
        Blocking. True when haproxy.cfg itself changed."""
        every = [*self.maps(desired), *self.fleet.maps()]
        return haproxy.install(self.program, self.render_input(desired), every, self.paths.state_dir)

    def stage(self, desired: Desired, plan: Plan) -> Staged:
        """For a reload, before anything running changes: the certificate asked for, then
        haproxy.cfg and the maps written and checked, when the plan touches them. Blocking."""
        had_tls = self.tls_ready
        certificate_changed = self.prepare_tls(desired)
        tls_changed = self.tls_ready != had_tls
        config_changed = self.install(desired) if plan.proxy or plan.rules or tls_changed else False
        return Staged(config_changed, certificate_changed, tls_changed)

    async def start(self, reason: str) -> None:
        waiting = self.waiting
        if waiting:
            self.held_back = waiting
            self.log.info("proxy_waiting", process=self.child.name, reason=waiting)
            return
        self.held_back = None
        await self.child.start(reason)

    async def apply(self, desired: Desired, plan: Plan, staged: Staged) -> None:
        """Serve `desired`, which stage() wrote: rules swapped live, a reload in place, a start
        or a stop, as the plan needs; and keep it."""
        self.desired = desired
        if plan.policy:
            self.child.set_policy(desired.config.restart)
        await self._serve(replace(plan, proxy=True) if staged.tls_changed else plan, staged.config_changed)
        if staged.certificate_changed and not staged.config_changed:
            await self.swap_certificate()

    async def _serve(self, plan: Plan, cfg_changed: bool) -> None:
        if not self.desired.config.proxy.enabled or not (plan.proxy or plan.rules):
            return
        state = self.child.state
        waiting = self.waiting
        if waiting:
            self.held_back = waiting
            await self.child.stop(waiting)
        elif state not in ALIVE:
            # What it waited for arrived (an address, a certificate), or a new config may mend
            # a proxy that kept failing; one stopped on request stays stopped.
            if self.held_back or plan.addresses or state in (State.FATAL, State.BACKOFF, State.EXITED):
                self.held_back = None
                await self.child.start("config changed")
        elif cfg_changed:
            # Master-worker reload: the master re-reads the file, new workers take over the
            # listening sockets, old workers finish what they are serving and exit.
            self.child.signal(signal.SIGUSR2)
            self.fleet.forget_applied()
            self.log.info("proxy_reload", process="haproxy", pid=self.child.pid,
                          reason="addresses changed" if plan.addresses else "config changed")
        elif plan.rules:
            await self.swap_rules()

    async def set_over_quota(self, refused: dict[str, tuple[str, float, int, float, str]]) -> None:
        """Who is over a quota now (maps.quota_map's entries): into the running proxy, and the
        map file it starts from. A failed swap reloads, which reads that file."""
        self.over_quota = dict(refused)
        item = maps.quota_map(self.over_quota)
        await asyncio.to_thread(atomic_write, self.paths.state_dir / item.name, item.text())
        if self.child.state not in ALIVE:
            return
        try:
            await asyncio.to_thread(runtime.swap, self.paths.haproxy_stats_socket, [item])
        except HaproxyRuntimeError as err:
            self.log.warning("maps_swap_failed", process="haproxy", error=str(err), map=item.name, reason="reloading instead")
            self.child.signal(signal.SIGUSR2)

    async def swap_rules(self) -> None:
        """New allowlist into the running proxy without a reload; a reload if that fails."""
        desired = self.desired
        try:
            await asyncio.to_thread(runtime.swap, self.paths.haproxy_stats_socket, self.maps(desired))
            self.log.info("maps_swapped", process="haproxy", rules=len(desired.allowlist.rules),
                          clients=len(desired.clients.clients))
        except HaproxyRuntimeError as err:
            self.log.warning("maps_swap_failed", process="haproxy", error=str(err), reason="reloading instead")
            self.child.signal(signal.SIGUSR2)
