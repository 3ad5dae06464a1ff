"""What haproxy.cfg is rendered from (RenderInput), and the small helpers every section uses."""

from __future__ import annotations

from dataclasses import dataclass

from ai_server.base.netaddr import parse_ip
from ai_server.config import Config


@dataclass(frozen=True)
class RenderInput:
    config: Config
    addresses: tuple[str, ...]
    engine_health_path: str = "/"
    # HAProxy built with Lua (Debian's and Homebrew's are): requests can be held while the
    # engine restarts, and the model a body names read. Without it they get 503 for the few
    # seconds a restart takes, and model-restricted clients are refused.
    lua: bool = True
    # HTTPS with tls.pem (the MagicDNS certificate, proxy.tls = "tailscale").
    tls: bool = False
    # Fronting [[node]]s: each model backend's servers, as the supervisor last set them
    # ("ready", "drain"), so a reload starts where the running proxy was; and each
    # node's slots.
    node_states: tuple[tuple[tuple[str, str], str], ...] = ()
    node_slots: tuple[tuple[str, int], ...] = ()


def bind_address(address: str, port: int) -> str:
    ip = parse_ip(address)
    return f"ipv{ip.version}@{ip}:{port}"


def ms(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}ms"
