"""This machine's Tailscale addresses and names, the tailnet's peers, and nothing that merely
looks like them.

Carrier networks (phone hotspots, Starlink) hand out 100.64.0.0/10 too, and a router
advertisement can put an fd7a:115c:a1e0::/48 address on a LAN interface, so an address in
those ranges is not enough. With the tailscale CLI, only the addresses Tailscale reports as
its own count, and only while it is Running. Without the CLI, or while it fails, only
addresses on an interface that only Tailscale makes: tailscale0 (Linux), or a utun holding
Tailscale's fd7a:115c:a1e0::/48 (macOS). Otherwise there is no address, and the proxy waits,
saying why.

Who the peers are comes only from the CLI. When it fails (tailscaled down, too slow, not its
JSON), the last peer map it gave stays in force, marked stale since the first failure: a
failing CLI never turns known devices into strangers. Before any map was read, nobody is known
(peers_known is False), and the proxy says so rather than guess (see haproxy/request.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

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
    peers_known: bool = False            # `peers` is a map the CLI gave (now, or before it failed)
    stale_since: str | None = None       # the CLI has failed since then; `peers` is its last map
    cli_problem: str | None = None       # why the CLI gives nothing now


def is_tailnet(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip in TAILNET_V4 if ip.version == 4 else ip in TAILNET_V6


def _address(entry: object) -> str:
    return str(getattr(entry, "address", "")).split("%", 1)[0]


def _is_v6_tailnet(address: str) -> bool:
    return is_tailnet(address) and ":" in address


def own_interface_addresses(interfaces: Mapping[str, Sequence[object]]) -> list[str]:
    """Tailnet addresses on an interface only Tailscale makes: named tailscale* (Linux), or a
    utun (macOS's tunnels) holding Tailscale's fd7a:115c:a1e0::/48. An Ethernet or Wi-Fi
    interface never counts, whatever addresses it holds. Pure."""
    found = []
    for name, entries in interfaces.items():
        addresses = [a for a in (_address(e) for e in entries) if a]
        ours = name.startswith("tailscale") or (name.startswith("utun") and any(map(_is_v6_tailnet, addresses)))
        if ours:
            found += [a for a in addresses if is_tailnet(a)]
    return ordered(found)


def ordered(addresses: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(addresses))
    return sorted(unique, key=lambda a: (ipaddress.ip_address(a).version, a))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def without_cli(own: Sequence[str]) -> Detection:
    """No tailscale CLI: addresses from Tailscale's own interface only, and no peer map ever."""
    return Detection(tuple(own), (), None if own else
                     "no tailscale CLI, and no Tailscale interface (tailscale0, or its utun) holds an address",
                     cli_problem="no tailscale CLI: who is calling from the tailnet cannot be known")


def degraded(previous: Detection | None, own: Sequence[str], problem: str, now: str) -> Detection:
    """The CLI failed. What it said last stays (peers, names), stale since its first failure;
    an address stays only while it is on Tailscale's own interface, as without the CLI. Pure."""
    if previous is None or not previous.peers_known:
        return Detection(tuple(own), (), None if own else problem, cli_problem=problem)
    addresses = tuple(a for a in previous.addresses if a in own)
    return replace(previous, addresses=addresses, stale_since=previous.stale_since or now, cli_problem=problem,
                   problem=None if addresses else f"{problem}; no Tailscale interface holds "
                   f"{', '.join(previous.addresses) or 'an address'}")


NO_SUFFIX = "tailscale status gives no MagicDNS suffix: devices cannot be told apart by name"


def from_status(status: tailscale.Status, local: set[str], previous: Detection | None = None,
                now: str = "") -> Detection:
    """What a status the CLI gave says. Pure.

    Only a Running backend's peers are a map: Starting or NeedsLogin may list a stale netmap,
    or none. And a status without this tailnet's MagicDNS suffix (ipnstate fills it whether or
    not MagicDNS is on) gives every peer an empty device name: each one that clients.toml names
    by device would fall to [defaults]. That is a CLI failing, and the last map stays."""
    if not status.running:
        state = status.state or "not running"
        return Detection((), status.names, f"Tailscale is {state}", cert_domains=status.cert_domains,
                         cli_problem=f"Tailscale is {state}: who is calling cannot be known")
    if not status.suffix:
        return degraded(previous, own_addresses(status, local), NO_SUFFIX, now or now_iso())
    addresses = own_addresses(status, local)
    problem = None if addresses else (
        f"Tailscale reports {', '.join(status.addresses) or 'no address'}, not on any interface here yet")
    return Detection(tuple(addresses), status.names, problem, status.peers, status.cert_domains, peers_known=True)


def own_addresses(status: tailscale.Status, local: set[str]) -> list[str]:
    # Only what is really on an interface: binding anything else would fail.
    return ordered(a for a in status.addresses if is_tailnet(a) and a in local)


def detect(previous: Detection | None = None, now: str | None = None) -> Detection:
    """Blocking (the CLI, the interfaces): call it off the event loop. `previous`: what the
    last call found, kept while the CLI fails."""
    interfaces = psutil.net_if_addrs()
    own = own_interface_addresses(interfaces)
    program = tailscale.cli()
    if program is None:
        return without_cli(own)
    try:
        status = tailscale.status(program)
    except tailscale.Unavailable as err:
        return degraded(previous, own, str(err), now or now_iso())
    local = {_address(e) for entries in interfaces.values() for e in entries}
    return from_status(status, local, previous, now or now_iso())


def resolve_listen(listen: Sequence[str], tailnet: Sequence[str]) -> tuple[str, ...]:
    """The concrete addresses to bind: `listen` with "tailscale" replaced by `tailnet`."""
    out: list[str] = []
    for item in listen:
        out.extend(tailnet if item == "tailscale" else [item])
    return tuple(dict.fromkeys(out))
