"""The nodes a front serves from, kept current: what each has (nodes.discover, every 5 s, at
start and on reload), and HAProxy told through its runtime API — which servers of each model
backend are ready, their maxconn, and which backend a model goes to. No reload."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ai_server.access.clients import FRONT
from ai_server.base import logs
from ai_server.base.errors import AiServerError, HaproxyRuntimeError
from ai_server.base.paths import Paths
from ai_server.config import LOCAL_NODE, Config
from ai_server.fleet import nodes
from ai_server.haproxy import maps, names, runtime
from ai_server.haproxy.maps import MapFile
from ai_server.haproxy.names import MODEL_BACKENDS

DISCOVERY_TIMEOUT = httpx.Timeout(3.0)


class Fleet:
    """The one owner of the node maps: it builds them (for haproxy.cfg's files and for the
    running proxy) and swaps them in."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.states: dict[str, nodes.NodeState] = {}
        self.urls: dict[str, str] = {}
        self.local_slots = 4
        self.assignment: dict[str, str] = {}
        self.applied: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()
        self.log = logs.get()

    # -- what it serves from -----------------------------------------------------------------------

    def configure(self, cfg: Config) -> None:
        """The nodes the config names (and the local engine, if this machine has one)."""
        wanted = {n.name: n.url for n in cfg.nodes}
        if cfg.nodes and cfg.engine.kind != "none":
            wanted[LOCAL_NODE] = ""
        for name in list(self.states):
            if name not in wanted:
                del self.states[name]
        for name in wanted:
            self.states.setdefault(name, nodes.NodeState(name))
        self.urls = wanted
        self.local_slots = cfg.engine.slots

    @property
    def active(self) -> bool:
        return bool(self.states)

    def maps(self) -> list[MapFile]:
        """Where models go and the front's union answers; none when this fronts no nodes."""
        return maps.node_maps(self.assignment, nodes.union(self.states.values())) if self.active else []

    def render_states(self) -> tuple[tuple[tuple[str, str], str], ...]:
        return tuple(sorted(nodes.server_states(self.assignment, self.states.values()).items()))

    def render_slots(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted((name, state.slots) for name, state in self.states.items()))

    # -- keeping it current ------------------------------------------------------------------------

    async def refresh(self, proxy_running: bool, local_url: str | None) -> bool:
        """Read every node (`local_url`: this machine's engine, when it runs); tell the running
        proxy (when it does not answer, everything is set again at the next refresh). True when
        where models go changed."""
        if not self.active:
            return False
        async with self._lock:
            await asyncio.gather(*(self._discover(name, local_url) for name in self.states))
            before = dict(self.assignment)
            every = {model for state in self.states.values() for model in state.models}
            self.assignment = nodes.assign(self.assignment, {name: state.models for name, state in self.states.items()})
            dropped = sorted(every - set(self.assignment))
            if dropped:
                self.log.warning("nodes_too_many_models", models=dropped[:10], count=len(dropped),
                                 reason=f"a front routes at most {MODEL_BACKENDS} models")
            if proxy_running:
                try:
                    await asyncio.to_thread(self.apply)
                except HaproxyRuntimeError as err:
                    self.forget_applied()
                    self.log.warning("nodes_apply_failed", error=str(err), reason="trying again at the next read")
            return self.assignment != before

    async def _discover(self, name: str, local_url: str | None) -> None:
        state = self.states[name]
        url = self.urls.get(name) or local_url
        if not url:
            state.last_error = "the local engine is not running"
            return
        slots = self.local_slots if name == LOCAL_NODE else None
        # A node believes this name from its proxy.fronts only, so one whose [unknown] is
        # "deny" still answers its front's discovery.
        headers = {} if name == LOCAL_NODE else {"X-Ai-Server-Client": FRONT}
        async with httpx.AsyncClient(base_url=url, timeout=DISCOVERY_TIMEOUT, headers=headers) as client:
            await nodes.discover(client, state, slots)

    def apply(self, force: bool = False) -> None:
        """Server states and maxconn first, then the model map, so no model is sent to a
        backend whose servers are not set yet. Blocking; HaproxyRuntimeError when HAProxy does
        not answer (the next refresh tries again)."""
        sock = self.paths.haproxy_stats_socket
        wanted = nodes.server_states(self.assignment, self.states.values())
        wanted.update({("any_node", name): "drain" if state.drained else "ready" for name, state in self.states.items()})
        commands = [f"set server {b}/{s} state {state}" for (b, s), state in sorted(wanted.items())
                    if force or self.applied.get((b, s)) != state]
        for name, state in self.states.items():
            for backend in [f"m{i}" for i in range(MODEL_BACKENDS)] + ["any_node"]:
                for server in (name, names.backup_name(name)) if backend != "any_node" else (name,):
                    if force or self.applied.get((backend, f"maxconn:{server}")) != str(state.slots):
                        commands.append(f"set maxconn server {backend}/{server} {state.slots}")
                        self.applied[(backend, f"maxconn:{server}")] = str(state.slots)
        for start in range(0, len(commands), 200):
            answer = runtime.command(sock, ";".join(commands[start:start + 200])).strip()
            problems = [line for line in answer.splitlines() if line.strip() and "No such" in line]
            if problems:
                raise HaproxyRuntimeError(f"setting node servers: {problems[0]}")
        self.applied.update(wanted)
        runtime.swap(sock, self.maps())

    def forget_applied(self) -> None:
        """After HAProxy reloads, its servers start as the config rendered them: set all again."""
        self.applied = {}

    # -- drain -------------------------------------------------------------------------------------

    async def set_drained(self, name: str, drained: bool) -> None:
        if name not in self.states:
            known = ", ".join(sorted(self.states)) or "none"
            raise AiServerError(f"no node named {name!r} (nodes: {known})")
        self.states[name].drained = drained
        self.log.info("node_drained" if drained else "node_undrained", node=name)
        async with self._lock:
            await asyncio.to_thread(self.apply)

    # -- seeing it ---------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """Each node: health, models (loaded or not), in flight, queue, last error. Blocking."""
        try:
            rows = runtime.stats(self.paths.haproxy_stats_socket)
        except HaproxyRuntimeError:
            rows = []
        out = []
        for name, state in sorted(self.states.items()):
            servers = [r for r in rows if (r.get("pxname", "").startswith("m") or r.get("pxname") == "any_node")
                       and r.get("svname") in (name, names.backup_name(name))]
            health = next((r.get("status", "") for r in rows
                          if r.get("pxname") == f"node_{name}" and r.get("svname") == name), "")
            out.append({
                "name": name, "url": self.urls.get(name) or "(this machine's engine)",
                "state": "DRAIN" if state.drained else (health.split(" ")[0] or "UNKNOWN"),
                "models": {state.listed.get(k, k): loaded for k, loaded in sorted(state.models.items())
                           if k == state.listed.get(k, k).lower()},
                "slots": state.slots,
                "in_flight": sum(int(r.get("scur") or 0) for r in servers),
                "queued": sum(int(r.get("qcur") or 0) for r in servers),
                "last_error": state.last_error,
            })
        return out
