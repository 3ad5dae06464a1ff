"""This machine's Tailscale addresses: the `tailscale` CLI where present, else the interfaces."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from typing import Iterable, Mapping, Sequence

import psutil

TAILNET_V4 = ipaddress.ip_network("100.64.0.0/10")
TAILNET_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")
CLI_PATHS = ("/Applications/Tailscale.app/Contents/MacOS/Tailscale",)


def is_tailnet(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip in TAILNET_V4 if ip.version == 4 else ip in TAILNET_V6


def from_interfaces(interfaces: Mapping[str, Sequence[object]]) -> list[str]:
    """Tailnet addresses among psutil.net_if_addrs()-shaped data (pure)."""
    found = []
    for addresses in interfaces.values():
        for entry in addresses:
            address = getattr(entry, "address", "")
            if is_tailnet(address):
                found.append(address.split("%", 1)[0])
    return _ordered(found)


def from_cli_output(text: str) -> list[str]:
    return _ordered(line.strip() for line in text.splitlines() if is_tailnet(line.strip()))


def _ordered(addresses: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(addresses))
    return sorted(unique, key=lambda a: (ipaddress.ip_address(a).version, a))


def _cli() -> str | None:
    return shutil.which("tailscale") or next((p for p in CLI_PATHS if shutil.which(p)), None)


def detect() -> list[str]:
    """The tailnet addresses this machine holds now; empty when Tailscale is not up."""
    local = from_interfaces(psutil.net_if_addrs())
    cli = _cli()
    if cli:
        try:
            result = subprocess.run([cli, "ip"], capture_output=True, text=True, timeout=5)
            if result.returncode == 0:
                # Only what is really on an interface: binding anything else would fail.
                return [a for a in from_cli_output(result.stdout) if a in local] or local
        except (OSError, subprocess.TimeoutExpired):
            pass
    return local


def resolve_listen(listen: Sequence[str], tailnet: Sequence[str]) -> tuple[str, ...]:
    """The concrete addresses to bind: `listen` with "tailscale" replaced by `tailnet`."""
    out: list[str] = []
    for item in listen:
        out.extend(tailnet if item == "tailscale" else [item])
    return tuple(dict.fromkeys(out))
