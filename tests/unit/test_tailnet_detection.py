"""Which addresses are Tailscale's, and what a failing tailscale CLI leaves in force (pure)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ai_server.access import tailnet
from ai_server.access.tailscale import Peer, Status, parse

PEER = Peer(("100.64.0.2",), "laptop", "laptop.tail1234.ts.net", "alice@example.com", (), "nL1CNTRL", "tail1234.ts.net")


def addrs(*values: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(address=v) for v in values]


def test_only_tailscales_own_interfaces_count_without_the_cli() -> None:
    """A router advertisement can put an fd7a:115c:a1e0:: address on a LAN interface, and a
    carrier a 100.64/10 one: that made en0 count as Tailscale's. Only tailscale* and a utun
    holding Tailscale's ULA do now. (Fails on the old own_interface_addresses, which took any
    interface holding an fd7a:115c:a1e0::/48 address.)"""
    interfaces = {
        "en0": addrs("192.168.1.5", "fd7a:115c:a1e0::99", "100.64.7.7"),          # the LAN, after an RA
        "wlan0": addrs("100.100.3.3", "fd7a:115c:a1e0:ab12::1%wlan0"),
        "utun3": addrs("100.101.102.103", "fd7a:115c:a1e0::1234"),                # macOS's Tailscale tunnel
        "utun4": addrs("100.90.0.1"),                                            # another VPN's tunnel
        "tailscale0": addrs("100.70.0.1", "fe80::1%tailscale0"),
    }
    assert tailnet.own_interface_addresses(interfaces) == ["100.101.102.103", "100.70.0.1", "fd7a:115c:a1e0::1234"]
    assert tailnet.own_interface_addresses({"eth0": addrs("fd7a:115c:a1e0::5", "100.64.0.5")}) == []


def test_a_failing_cli_keeps_the_last_peer_map_stale_since_its_first_failure() -> None:
    known = tailnet.from_status(Status(True, "Running", ("100.64.0.1",), ("mymac.tail1234.ts.net", "mymac"), (PEER,),
                                       suffix="tail1234.ts.net"), {"100.64.0.1"})
    assert known.peers_known and known.stale_since is None and known.addresses == ("100.64.0.1",)
    first = tailnet.degraded(known, ["100.64.0.1"], "`tailscale status` did not answer within 5 s", "2026-12-03T10:00:00Z")
    assert first.peers == (PEER,) and first.peers_known and first.stale_since == "2026-12-03T10:00:00Z"
    assert first.addresses == ("100.64.0.1",) and first.names == known.names and first.problem is None
    later = tailnet.degraded(first, ["100.64.0.1"], "garbage", "2026-12-03T10:05:00Z")
    assert later.stale_since == "2026-12-03T10:00:00Z" and later.cli_problem == "garbage"
    # An address no longer on Tailscale's own interface is not listened on while the CLI is out.
    gone = tailnet.degraded(first, [], "down", "2026-12-03T10:06:00Z")
    assert gone.addresses == () and gone.peers == (PEER,) and "no Tailscale interface holds 100.64.0.1" in (gone.problem or "")


def test_with_no_map_yet_nobody_is_known() -> None:
    never = tailnet.degraded(None, [], "failed to connect to local tailscaled", "2026-12-03T10:00:00Z")
    assert not never.peers_known and never.peers == () and never.stale_since is None
    assert never.problem == "failed to connect to local tailscaled"
    bound = tailnet.degraded(None, ["100.64.0.1"], "down", "now")
    assert bound.addresses == ("100.64.0.1",) and not bound.peers_known and bound.problem is None
    assert not tailnet.without_cli([]).peers_known
    stopped = tailnet.from_status(Status(False, "Stopped"), set())
    assert not stopped.peers_known and stopped.addresses == () and stopped.problem == "Tailscale is Stopped"


def test_only_a_running_tailnet_with_its_suffix_gives_a_peer_map() -> None:
    """Two statuses the CLI can print were taken as a peer map (attacker's finding on issue 16).
    Without MagicDNSSuffix and Self.DNSName every peer's device name was "": a device that
    clients.toml restricts by name fell to [defaults]. NeedsLogin or Starting may list a stale
    netmap. Neither is a map now: the last one stays, stale, or nobody is known."""
    peer = {"ID": "nL1CNTRL", "DNSName": "laptop.tail1234.ts.net.", "HostName": "laptop", "UserID": 2,
            "TailscaleIPs": ["100.64.0.2"]}
    users = {"2": {"LoginName": "alice@example.com"}}
    bare = parse(json.dumps({"BackendState": "Running", "TailscaleIPs": ["100.64.0.1"], "Self": {"TailscaleIPs": ["100.64.0.1"]},
                             "Peer": {"k": peer}, "User": users}))
    assert bare.peers[0].device == "" and bare.suffix == ""
    never = tailnet.from_status(bare, {"100.64.0.1"}, None, "2026-12-03T10:00:00Z")
    assert not never.peers_known and never.peers == () and never.cli_problem == tailnet.NO_SUFFIX
    assert never.addresses == ("100.64.0.1",)
    good = parse(json.dumps({"BackendState": "Running", "TailscaleIPs": ["100.64.0.1"], "MagicDNSSuffix": "tail1234.ts.net",
                             "Self": {"TailscaleIPs": ["100.64.0.1"]}, "Peer": {"k": peer}, "User": users}))
    known = tailnet.from_status(good, {"100.64.0.1"})
    assert known.peers_known and known.peers[0].device == "laptop"
    kept = tailnet.from_status(bare, {"100.64.0.1"}, known, "2026-12-03T10:00:00Z")
    assert kept.peers == known.peers and kept.peers_known and kept.stale_since == "2026-12-03T10:00:00Z"
    for state in ("NeedsLogin", "Starting", "Stopped"):
        waiting = tailnet.from_status(parse(json.dumps({"BackendState": state, "MagicDNSSuffix": "tail1234.ts.net",
                                                        "Peer": {"k": peer}, "User": users})), set())
        assert not waiting.peers_known and waiting.peers == () and waiting.addresses == (), state
