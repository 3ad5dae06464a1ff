"""This machine's Tailscale addresses and names, and nothing that merely looks like them.

Carrier networks (phone hotspots, Starlink) hand out 100.64.0.0/10 too, so an address in that
range is not enough. With the tailscale CLI, only the addresses Tailscale reports as its own
count, and only while it is Running; without the CLI, only addresses on Tailscale's own
interface (tailscale0, or the utun holding Tailscale's fd7a:115c:a1e0::/48). Otherwise there is
no address, and the proxy waits, saying why.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import psutil

from ai_server.access import tailscale

TAILNET_V4 = ipaddress.ip_network("100.64.0.0/10")
TAILNET_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")


@dataclass(frozen=True)
class Detection:
    addresses: tuple[str, ...] = ()
    names: tuple[str, ...] = ()          # MagicDNS names of this machine (full, first label)
    problem: str | None = None           # why there is no address
    peers: tuple[tailscale.Peer, ...] = ()  # the other devices, for who is calling
    cert_domains: tuple[str, ...] = ()


def is_tailnet(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip in TAILNET_V4 if ip.version == 4 else ip in TAILNET_V6


def _address(entry: object) -> str:
    return str(getattr(entry, "address", "")).split("%", 1)[0]


def own_interface_addresses(interfaces: Mapping[str, Sequence[object]]) -> list[str]:
    """Tailnet addresses on Tailscale's own interface: named tailscale* (Linux), or holding an
    address in Tailscale's fd7a:115c:a1e0::/48 (its utun on macOS). Pure."""
    found = []
    for name, entries in interfaces.items():
        addresses = [_address(e) for e in entries]
        ours = name.startswith("tailscale") or any(
            is_tailnet(a) and ipaddress.ip_address(a).version == 6 for a in addresses if a)
        if ours:
            found += [a for a in addresses if is_tailnet(a)]
    return ordered(found)


def ordered(addresses: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(addresses))
    return sorted(unique, key=lambda a: (ipaddress.ip_address(a).version, a))


def detect() -> Detection:
    """Blocking (the CLI, the interfaces): call it off the event loop."""
    interfaces = psutil.net_if_addrs()
    local = {_address(e) for entries in interfaces.values() for e in entries}
    program = tailscale.cli()
    if program is None:
        own = own_interface_addresses(interfaces)
        return Detection(tuple(own), (), None if own else
                         "no tailscale CLI, and no Tailscale interface (tailscale0, or its utun) holds an address")
    try:
        status = tailscale.status(program)
    except tailscale.Unavailable as err:
        return Detection((), (), str(err))
    if not status.running:
        return Detection((), status.names, f"Tailscale is {status.state or 'not running'}", status.peers,
                         status.cert_domains)
    # Only what is really on an interface: binding anything else would fail.
    addresses = ordered(a for a in status.addresses if is_tailnet(a) and a in local)
    problem = None if addresses else (
        f"Tailscale reports {', '.join(status.addresses) or 'no address'}, not on any interface here yet")
    return Detection(tuple(addresses), status.names, problem, status.peers, status.cert_domains)


def resolve_listen(listen: Sequence[str], tailnet: Sequence[str]) -> tuple[str, ...]:
    """The concrete addresses to bind: `listen` with "tailscale" replaced by `tailnet`."""
    out: list[str] = []
    for item in listen:
        out.extend(tailnet if item == "tailscale" else [item])
    return tuple(dict.fromkeys(out))
