"""isolation: nothing but the proxy answers where the engine listens, from any address but loopback.

By default the proxy and the engine share port 11434 (on different addresses), so a
connection that succeeds is not yet a failure: it fails only when the engine owns the socket,
or when what answers is not the proxy (which refuses a forbidden path with its own 403).
"""

from __future__ import annotations

import socket

import httpx
import psutil

from ai_server.base.netaddr import host_port, parse_ip
from ai_server.check.registry import Context, Fail, Skip, check, needs_proxy
from ai_server.check.service import process_tree
from ai_server.children import audit
from ai_server.daemon.preflight import listener_pid

PROBE_PATH = "/api/pull"  # never on an allowlist that passes `check`: the proxy answers it


def _connects(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def _proxy_refuses(address: str, port: int) -> bool:
    """Whether what answers at address:port is our proxy: its JSON 403 for a forbidden path."""
    try:
        response = httpx.post(f"http://{host_port(address, port)}{PROBE_PATH}", json={}, timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 403 and "allowlist" in response.text


def verdict(ctx: Context, address: str, port: int) -> str | None:
    """None when the engine cannot be reached at address:port; else what reached it."""
    if not _connects(address, port):
        return None
    owner = listener_pid(address, port)
    engine, proxy = process_tree(ctx.child("engine")["pid"]), process_tree(ctx.child("haproxy")["pid"])
    if owner is not None and owner in engine:
        return f"the engine (pid {owner}) answers on {host_port(address, port)}"
    if (owner is None or owner in proxy) and _proxy_refuses(address, port):
        return None
    who = f"pid {owner}" if owner is not None else "something"
    return f"{who} answers on {host_port(address, port)}, and it is not the proxy"


def _engine_port(ctx: Context) -> int:
    return int(ctx.engine_url.rsplit(":", 1)[1])


@check("isolation", "engine unreachable from the tailnet address", needs_proxy)
def from_tailnet(ctx: Context) -> str:
    listen = ctx.status["proxy"]["listen"]  # type: ignore[index]
    if not listen:
        raise Skip("no tailnet address yet")
    address = listen[0].rsplit(":", 1)[0].strip("[]")
    engine_host = ctx.engine_url.removeprefix("http://").rsplit(":", 1)[0].strip("[]")
    if address == engine_host:
        # The demo: the proxy on the engine's own loopback address, where the engine answers by
        # design. There is no tailnet address to test from.
        raise Skip(f"the proxy listens on {listen[0]}, the engine's own loopback address, not a tailnet one "
                   "(the demo; a real install listens on \"tailscale\")")
    port = _engine_port(ctx)
    found = verdict(ctx, address, port)
    if found:
        raise Fail(found)
    if _connects(address, port):
        return f"{host_port(address, port)}: only the proxy answers there"
    return f"{host_port(address, port)} refused"


@check("isolation", "engine unreachable on every other address", needs_proxy)
def everywhere(ctx: Context) -> str:
    port = _engine_port(ctx)
    tried = []
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family not in (socket.AF_INET, socket.AF_INET6) or audit.is_loopback(entry.address):
                continue
            address = entry.address.split("%")[0]
            if parse_ip(address).is_link_local:
                continue
            found = verdict(ctx, address, port)
            if found:
                raise Fail(found)
            tried.append(address)
    return f"refused on {len(tried)} addresses"
