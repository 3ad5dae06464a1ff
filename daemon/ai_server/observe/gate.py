"""Who may see the dashboard and /metrics (pure).

On loopback: anyone on this machine, as for the engine's own port (loopback is shared by every
local user; see the README's threat model). Anywhere else: only an `admin = true` client of
clients.toml, identified exactly as the proxy identifies callers: a token (`ais_...` in
`Authorization: Bearer` or `x-api-key`), else the tailnet peer the connection comes from (on a
tailnet listener only), else nobody. A header that tries to be a token and is not a known one is
401, never the device's identity. And first, as on the proxy, the Host must name this server
(DNS rebinding: a page on another name must not read it through a browser): 421 otherwise.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ai_server.access.clients import TOKEN, UNKNOWN, Clients, token_hash
from ai_server.access.tailscale import Peer
from ai_server.base.netaddr import parse_ip

TAILNET_RANGES = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48"))
_HOST = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?")


@dataclass(frozen=True)
class Audience:
    """What the gate judges by: clients.toml, the tailnet's peers, this server's names."""
    clients: Clients = Clients()
    peers: tuple[Peer, ...] = ()
    names: tuple[str, ...] = ()           # MagicDNS names and proxy.server_names, lower case


@dataclass(frozen=True)
class Verdict:
    status: int                 # 200, or 401 / 403 / 421 / 400
    who: str                    # the client's name, "local" on loopback, or "unknown"
    reason: str


def is_loopback(address: str) -> bool:
    try:
        return parse_ip(address).is_loopback
    except ValueError:
        return False


def is_tailnet(address: str) -> bool:
    try:
        ip = parse_ip(address)
    except ValueError:
        return False
    return any(ip in net for net in TAILNET_RANGES)


def host_ok(host: str | None, local: tuple[str, int], audience: Audience) -> bool:
    """The Host names this server: the address it was called on (with or without the port),
    a MagicDNS name or proxy.server_names entry, or localhost on a loopback listener."""
    if not host or "\n" in host:
        return False
    found = _HOST.fullmatch(host.strip().lower())
    if found is None:
        return False
    name, port = found.group(1), found.group(2)
    if port is not None and int(port) != local[1]:
        return False
    name = name.strip("[]").rstrip(".")
    if name in ("localhost",):
        return is_loopback(local[0])
    try:
        return parse_ip(name) == parse_ip(local[0])
    except ValueError:
        return name in audience.names


def _token(authorization: str | None, api_key: str | None) -> tuple[str | None, bool]:
    """The token a request carries, and whether it tried to carry one (as the proxy reads it)."""
    tried = any(v is not None and "ais_" in v for v in (authorization, api_key))
    bearer = authorization[7:] if authorization and authorization[:7].lower() == "bearer " else None
    tokens = [t for t in (bearer, api_key) if t is not None and TOKEN.fullmatch(t)]
    if len(set(tokens)) > 1:
        return None, True
    return (tokens[0] if tokens else None), tried


def identify(peer: str, local: str, authorization: str | None, api_key: str | None,
             audience: Audience) -> tuple[str | None, str]:
    """The client a caller is, as the proxy has it; None with the reason when a token fails."""
    if (authorization is not None and "\n" in authorization) or (api_key is not None and "\n" in api_key):
        return None, "more than one Authorization or x-api-key header"
    token, tried = _token(authorization, api_key)
    if token is not None:
        name = audience.clients.tokens().get(token_hash(token))
        if name is not None:
            return name, "token"
    if tried:
        return None, "unknown or malformed ai-server token"
    if is_tailnet(local):
        try:
            address = str(parse_ip(peer))
        except ValueError:
            return UNKNOWN, "no address"
        name = audience.clients.peer_table(audience.peers).get(address)
        if name is not None:
            return name, "tailnet peer"
    return UNKNOWN, "not a client in clients.toml"


def judge(host: str | None, peer: str, local: tuple[str, int], authorization: str | None, api_key: str | None,
          audience: Audience) -> Verdict:
    if not host_ok(host, local, audience):
        return Verdict(421, UNKNOWN, "this Host does not name this server (proxy.server_names)")
    if is_loopback(local[0]) and is_loopback(peer):
        return Verdict(200, "local", "loopback")
    who, how = identify(peer, local[0], authorization, api_key, audience)
    if who is None:
        return Verdict(401, UNKNOWN, how)
    client = audience.clients.named(who)
    if client is None or not client.admin:
        return Verdict(403, who, "only admin = true clients (clients.toml) may see this from the network")
    return Verdict(200, who, how)
