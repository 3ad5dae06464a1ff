"""Checks before `run` starts anything: programs installed, ports free, addresses ours."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from ai_server.base.errors import PreflightError
from ai_server.engines import engine_for

if TYPE_CHECKING:
    from ai_server.desired import Desired

HOMEBREW_BINS = ("/opt/homebrew/bin", "/usr/local/bin", "/home/linuxbrew/.linuxbrew/bin")


def search_path(env: Mapping[str, str]) -> str:
    parts = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p]
    return os.pathsep.join(parts + [b for b in HOMEBREW_BINS if b not in parts])


def find_program(name: str, env: Mapping[str, str]) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name, path=search_path(env))


def require_program(name: str, what: str, hint: str, env: Mapping[str, str]) -> str:
    found = find_program(name, env)
    if found is None:
        raise PreflightError(f"{what} is not installed ({name} not found on PATH or in Homebrew's folders): {hint}")
    return found


def haproxy_hint() -> str:
    if sys.platform == "darwin":
        return "install it with `brew install haproxy`"
    return "install it with `sudo apt-get install haproxy` (Debian/Ubuntu) or `sudo dnf install haproxy` (Fedora)"


def listener_pid(address: str | None, port: int) -> int | None:
    """The pid listening on `port` (at `address`, or on a wildcard covering it), if visible."""
    def matches(conn: psutil._common.sconn) -> bool:  # type: ignore[name-defined]
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            return False
        return address is None or conn.laddr.ip in (address, "0.0.0.0", "::")

    try:
        for conn in psutil.net_connections(kind="inet"):
            if matches(conn):
                return conn.pid
    except psutil.AccessDenied:
        pass
    # macOS lets only root list every socket; our own user's processes are still visible.
    for proc in psutil.process_iter(["pid"]):
        try:
            if any(matches(c) for c in proc.net_connections(kind="inet")):
                return proc.pid
        except psutil.Error:
            continue
    return None


def port_holder(port: int) -> str | None:
    """Who listens on `port`, as 'name (pid N: exe)', if we are allowed to see it."""
    pid = listener_pid(None, port)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        command = " ".join(proc.cmdline()[:3]) or proc.exe()
        return f"{proc.name()} (pid {pid}: {command})"
    except psutil.Error:
        return f"pid {pid}"


def _culprit_hint(holder: str | None) -> str:
    if holder and "ollama" in holder.lower():
        return ("; the Ollama menu-bar app or `brew services` is probably running it: quit the app, "
                "or run `brew services stop ollama`")
    return ""


def check_bindable(address: str, port: int, what: str, setting: str) -> None:
    """Raise PreflightError unless `address:port` could be bound right now."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise PreflightError(f"{what}: {address} is not an address of this machine (check {setting})") from None
            if err.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                raise PreflightError(
                    f"{what}: port {port} on {address} is already taken by {holder or 'another process'}"
                    f"{_culprit_hint(holder)}; or change {setting}") from None
            raise PreflightError(f"{what}: cannot bind {address}:{port}: {err.strerror}") from None


@dataclass(frozen=True)
class Programs:
    haproxy: str  # "" when the proxy is disabled
    engine: str


def check(desired: Desired, environ: Mapping[str, str], running: Desired | None = None) -> Programs:
    """Everything that can refuse `desired` before anything changes: the programs exist, and
    the addresses it binds are free. At launch (`running` None) every address is checked; on
    a reload only those the running children do not hold already."""
    cfg = desired.config
    driver = engine_for(cfg.engine.kind)
    proxied = cfg.proxy.enabled
    haproxy = require_program("haproxy", "HAProxy", haproxy_hint(), environ) if proxied else ""
    if driver.kind == "none":
        engine = ""
    else:
        engine = require_program(cfg.engine.command[0], driver.kind, driver.install_hint, environ)
    bind = desired.engine_bind
    if driver.kind != "none" and bind is not None and (running is None or bind != running.engine_bind):
        check_bindable(*bind, f"engine ({driver.kind})", "engine.port" if proxied else "proxy.listen / proxy.port")
    if proxied:
        held = () if running is None or running.config.proxy.port != cfg.proxy.port else running.addresses
        for address in desired.addresses:
            if address not in held:
                check_bindable(address, cfg.proxy.port, "proxy", "proxy.listen / proxy.port")
    return Programs(haproxy, engine)
