"""Holding requests in HAProxy while the engine restarts, and draining it before a restart.

Ollama's SIGTERM cuts open streams, and a stopped engine makes HAProxy answer 503. So around
a restart, allowed requests wait in the proxy (hold.lua, switched by hold.map through the
runtime API) and the supervisor waits for the generations in flight before stopping the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from ai_server.base import logs
from ai_server.base.errors import HaproxyRuntimeError
from ai_server.children.lifecycle import Clock
from ai_server.haproxy import maps, runtime, set_hold_file


class Hold:
    """`available`: HAProxy is built with Lua (Debian's and Homebrew's are); without it nothing
    is held and requests get 503 while the engine restarts. `proxy_running` is the owning
    ProxyChild's own answer."""

    def __init__(self, stats_socket: Path, state_dir: Path, clock: Clock, available: bool,
                 proxy_running: Callable[[], bool]):
        self.stats_socket, self.state_dir, self.clock = stats_socket, state_dir, clock
        self.log = logs.get()
        self.proxy_running = proxy_running
        self.available = available
        self.wanted = False
        self.held = False
        self._changed = asyncio.Event()

    def want(self, on: bool) -> None:
        self.wanted = on
        self._changed.set()

    async def run(self) -> None:
        """Applies the latest wish; releases only once HAProxy sees the engine up again."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            want = self.wanted
            if want == self.held or not self.available or not self.proxy_running():
                continue
            if not want:
                await self._engine_up_in_proxy(timeout=5.0)
                if self.wanted:
                    continue
            try:
                await asyncio.to_thread(self._set, want)
                self.held = want
                self.log.info("hold" if want else "release", process="haproxy",
                              reason="engine restarting" if want else "engine back")
            except HaproxyRuntimeError as err:
                self.log.warning("hold_failed", process="haproxy", error=str(err))

    def _set(self, on: bool) -> None:
        """Hold (or release) requests: the live map, and the file a reloaded worker will read."""
        set_hold_file(self.state_dir, on)
        runtime.set_value(self.stats_socket, maps.HOLD, "hold", "1" if on else "0")

    def release_now(self) -> None:
        """Release at once, without waiting for the engine (shutdown). Blocking."""
        self.wanted = False
        if self.available and self.held:
            self._set(False)
            self.held = False
            self.log.info("release", process="haproxy", reason="shutting down")

    async def _engine_up_in_proxy(self, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            try:
                row = await asyncio.to_thread(runtime.server_stats, self.stats_socket)
                if row.get("status", "").startswith("UP"):
                    return True
            except HaproxyRuntimeError:
                pass
            await asyncio.sleep(0.05)
        return False

    async def drain(self, engine: str, timeout: float) -> None:
        """Hold new requests and wait for the ones in flight to finish (at most `timeout`)."""
        if not self.available or not self.proxy_running():
            return
        self.want(True)
        deadline = self.clock() + 5.0
        while not self.held and self.clock() < deadline:
            await asyncio.sleep(0.02)
        started = self.clock()
        in_flight = -1
        while self.clock() < started + timeout:
            try:
                row = await asyncio.to_thread(runtime.server_stats, self.stats_socket)
                in_flight = int(row.get("scur") or 0)
            except (HaproxyRuntimeError, ValueError):
                break
            if in_flight == 0:
                break
            await asyncio.sleep(0.1)
        if in_flight > 0:
            self.log.warning("drain_timeout", process=engine, in_flight=in_flight,
                             reason=f"engine.drain_timeout ({timeout:g}s) reached")
        else:
            self.log.info("drained", process=engine, seconds=round(self.clock() - started, 2))
