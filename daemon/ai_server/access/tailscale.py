"""`tailscale status --json`, read into what ai-server uses: this machine's addresses and names,
and who each peer is. Shapes as in tailscale's ipn/ipnstate (Status, PeerStatus) and tailcfg
(UserProfile, StableNodeID).

What each field is worth as an identity (ipnstate.PeerStatus):
- TailscaleIPs: assigned by the control plane, and WireGuard authenticates every packet from
  them: the address a connection comes from is the peer's own.
- ID (tailcfg.StableNodeID): the node's identity in the control plane, never reused and never
  changed by anything the device does.
- DNSName: the MagicDNS name, `<machine name>.<tailnet>.ts.net`. The control plane keeps
  machine names unique in a tailnet: a new device gets its OS hostname, made unique with -1,
  -2 (tailscale.com/kb/1098/machine-names); admins can rename it. A device cannot take a name
  another device holds, but any name that is free. A node shared in from another tailnet
  carries that tailnet's suffix, so only names under this tailnet's own suffix are ours.
- HostName: whatever the device reports about itself. Shown to people, never trusted.
- UserID -> User[].LoginName, Tags: set by the control plane (login, ACL tag owners).

Everything read here ends up in HAProxy maps, so names are checked against DNS syntax and
addresses parsed; anything else is dropped, never passed on.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ai_server.base.netaddr import is_dns_name

CLI_PATHS = ("/Applications/Tailscale.app/Contents/MacOS/Tailscale",)
# A slow CLI is a failing one: the supervisor reads it every few seconds.
TIMEOUT_S = 5.0
_NODE_ID = re.compile(r"[A-Za-z0-9]{1,64}")


@dataclass(frozen=True)
class Peer:
    addresses: tuple[str, ...]
    host_name: str          # HostInfo's hostname: what the device says, shown to people only
    dns_name: str           # "alices-macbook.tail1234.ts.net" (no trailing dot, lower case)
    user: str               # the owner's LoginName, "" when unknown
    tags: tuple[str, ...]
    node_id: str = ""       # tailcfg.StableNodeID, "nXXXXCNTRL"
    # This tailnet's MagicDNS suffix: the peer's first label names it only under it.
    suffix: str = ""

    @property
    def device(self) -> str:
        """The first label of its MagicDNS name, when that name is in this tailnet (a node
        shared in from another tailnet has only its full name); else ""."""
        label, _, rest = self.dns_name.partition(".")
        return label if rest and rest == self.suffix else ""


@dataclass(frozen=True)
class Status:
    running: bool
    state: str                                 # BackendState: Running, Stopped, NeedsLogin, ...
    addresses: tuple[str, ...] = ()            # this machine's TailscaleIPs
    names: tuple[str, ...] = ()                # this machine's MagicDNS name and its first label
    peers: tuple[Peer, ...] = field(default=())
    cert_domains: tuple[str, ...] = ()         # names `tailscale cert` can get a certificate for
    suffix: str = ""                           # this tailnet's MagicDNS suffix ("" when it gives none)


def _addresses(values: Any) -> tuple[str, ...]:
    out = []
    for value in values if isinstance(values, list) else []:
        try:
            out.append(str(ipaddress.ip_address(str(value))))
        except ValueError:
            continue
    return tuple(out)


def _name(value: Any) -> str:
    text = str(value or "").rstrip(".")
    return text.lower() if text and is_dns_name(text) else ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _suffix(data: dict[str, Any], own: str) -> str:
    """This tailnet's MagicDNS suffix: MagicDNSSuffix, else what follows this machine's label."""
    declared = _name(data.get("MagicDNSSuffix"))
    return declared or own.partition(".")[2]


def parse(text: str) -> Status:
    """Status from `tailscale status --json`. ValueError when it is not that JSON."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    state = _text(data.get("BackendState"))
    users = {str(k): _text(v.get("LoginName")) for k, v in (data.get("User") or {}).items() if isinstance(v, dict)}
    me: dict[str, Any] = data["Self"] if isinstance(data.get("Self"), dict) else {}
    own = _name(me.get("DNSName"))
    suffix = _suffix(data, own)
    names = tuple(dict.fromkeys(n for n in (own, own.split(".", 1)[0]) if n))
    peers = []
    for entry in (data.get("Peer") or {}).values() if isinstance(data.get("Peer"), dict) else ():
        if not isinstance(entry, dict):
            continue
        tags = tuple(t for t in (entry.get("Tags") or []) if isinstance(t, str))
        node_id = _text(entry.get("ID"))
        peers.append(Peer(_addresses(entry.get("TailscaleIPs")), _text(entry.get("HostName")),
                          _name(entry.get("DNSName")), users.get(str(entry.get("UserID")), ""), tags,
                          node_id if _NODE_ID.fullmatch(node_id) else "", suffix))
    cert_domains = tuple(n for n in (_name(d) for d in data.get("CertDomains") or []) if n)
    return Status(state == "Running", state, _addresses(data.get("TailscaleIPs") or me.get("TailscaleIPs")),
                  names, tuple(peers), cert_domains, suffix)


def cli() -> str | None:
    return shutil.which("tailscale") or next((p for p in CLI_PATHS if shutil.which(p)), None)


def _clean(text: str) -> str:
    """What the CLI said, fit for a status line: control bytes shown as \\xNN, at most 200 characters."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:200])


class Unavailable(Exception):
    """The CLI is there but gives no status: tailscaled not running, too slow, or not its
    JSON. The message says why."""


def status(program: str) -> Status:
    try:
        result = subprocess.run([program, "status", "--json"], capture_output=True, text=True, timeout=TIMEOUT_S,
                                errors="replace")
    except subprocess.TimeoutExpired:
        raise Unavailable(f"`tailscale status` did not answer within {TIMEOUT_S:g} s") from None
    except OSError as err:
        raise Unavailable(f"`tailscale status` failed: {err}") from None
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        raise Unavailable(f"`tailscale status`: {_clean(last[0])}")
    try:
        return parse(result.stdout)
    # RecursionError: JSON nested deeper than Python parses is garbage like any other.
    except (ValueError, TypeError, AttributeError, RecursionError) as err:
        raise Unavailable(f"`tailscale status --json` gave something else: {_clean(str(err))}") from None
