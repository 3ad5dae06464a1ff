"""Prove the engine listens on loopback only: every listening socket of its whole process tree.

Forcing OLLAMA_HOST (or --host) is the request; this is the check. `snapshot` reads the sockets
with psutil; `violations` judges a snapshot and is pure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import psutil

from ai_server.base.netaddr import host_port


@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    address: str
    port: int


def snapshot(pid: int) -> list[Listener]:
    """Listening TCP sockets (and bound UDP ones) of `pid` and all its descendants."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    found = []
    for proc in family:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                listening = conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr)  # 2: UDP
                if listening and conn.laddr:
                    found.append(Listener(proc.pid, name, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def violations(listeners: list[Listener], also: frozenset[str] = frozenset()) -> list[str]:
    """What listens beyond loopback (and the `also` addresses), as readable lines."""
    return [f"{ln.name} (pid {ln.pid}) listens on {host_port(ln.address, ln.port)}"
            for ln in listeners if not is_loopback(ln.address) and ln.address not in also]


def check(pid: int, also: frozenset[str] = frozenset()) -> str | None:
    """None when the engine's tree listens on loopback only (or on `also`, in the proxy-less
    mode); else the finding, for FATAL."""
    found = violations(snapshot(pid), also)
    if not found:
        return None
    where = "loopback only" if not also else "loopback and " + ", ".join(sorted(also)) + " only"
    return f"security: engine not on {where}: " + "; ".join(found)
