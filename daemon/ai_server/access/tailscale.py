"""`tailscale status --json`, read into what ai-server uses: this machine's addresses and names,
and who owns each peer address. Shapes as in tailscale's ipn/ipnstate (Status, PeerStatus) and
tailcfg (UserProfile).

Everything read here ends up in HAProxy maps, so names are checked against DNS syntax and
addresses parsed; anything else is dropped, never passed on.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ai_server.base.netaddr import is_dns_name

CLI_PATHS = ("/Applications/Tailscale.app/Contents/MacOS/Tailscale",)


@dataclass(frozen=True)
class Peer:
    addresses: tuple[str, ...]
    host_name: str          # HostInfo's hostname: shown to people, not DNS
    dns_name: str           # "alices-macbook.tail1234.ts.net" (no trailing dot)
    user: str               # the owner's LoginName, "" when unknown
    tags: tuple[str, ...]

    @property
    def device(self) -> str:
        """The first label of its MagicDNS name."""
        return self.dns_name.split(".", 1)[0]


@dataclass(frozen=True)
class Status:
    running: bool
    state: str                                 # BackendState: Running, Stopped, NeedsLogin, ...
    addresses: tuple[str, ...] = ()            # this machine's TailscaleIPs
    names: tuple[str, ...] = ()                # this machine's MagicDNS name and its first label
    peers: tuple[Peer, ...] = field(default=())
    cert_domains: tuple[str, ...] = ()         # names `tailscale cert` can get a certificate for


def _addresses(values: Any) -> tuple[str, ...]:
    out = []
    for value in values or []:
        try:
            out.append(str(ipaddress.ip_address(str(value))))
        except ValueError:
            continue
    return tuple(out)


def _name(value: Any) -> str:
    text = str(value or "").rstrip(".")
    return text.lower() if text and is_dns_name(text) else ""


def parse(text: str) -> Status:
    """Status from `tailscale status --json`. ValueError when it is not that JSON."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    state = str(data.get("BackendState") or "")
    users = {str(k): str((v or {}).get("LoginName") or "") for k, v in (data.get("User") or {}).items()
             if isinstance(v, dict)}
    me = data.get("Self") or {}
    own = _name(me.get("DNSName"))
    names = tuple(dict.fromkeys(n for n in (own, own.split(".", 1)[0]) if n))
    peers = []
    for entry in (data.get("Peer") or {}).values():
        if not isinstance(entry, dict):
            continue
        tags = tuple(str(t) for t in (entry.get("Tags") or []) if isinstance(t, str))
        peers.append(Peer(_addresses(entry.get("TailscaleIPs")), str(entry.get("HostName") or ""),
                          _name(entry.get("DNSName")), users.get(str(entry.get("UserID")), ""), tags))
    cert_domains = tuple(n for n in (_name(d) for d in data.get("CertDomains") or []) if n)
    return Status(state == "Running", state, _addresses(data.get("TailscaleIPs") or me.get("TailscaleIPs")),
                  names, tuple(peers), cert_domains)


def cli() -> str | None:
    return shutil.which("tailscale") or next((p for p in CLI_PATHS if shutil.which(p)), None)


class Unavailable(Exception):
    """The CLI is there but gives no status: tailscaled not running, say. The message says why."""


def status(program: str) -> Status:
    try:
        result = subprocess.run([program, "status", "--json"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise Unavailable(f"`tailscale status` failed: {err}") from None
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        raise Unavailable(f"`tailscale status`: {last[0][:200]}")
    try:
        return parse(result.stdout)
    except ValueError as err:
        raise Unavailable(f"`tailscale status --json` gave something else: {err}") from None
